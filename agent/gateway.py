"""The model gateway: every model call foster makes goes through `complete()` (or `embed()`, for a knn
bundle's remote embedding model), i.e. through litellm.

Any litellm model string works; `local/...` reaches the in-process provider (embedded GGUF
models, PEFT adapters, registered fakes). Named models (a models file: several deployments per
name, rpm/tpm limits, weights, fallbacks) are a `Models` built per run or per server and passed to
each call; their calls go through a litellm.Router. Endpoints and keys are never registered in
the process nor written anywhere. Every call is counted in the process-wide `Ledger` and in any
ledger a run installed with `use_ledger`; inside `use_ledger`, a bundle's remote embeddings are
sent through `embed()` too (prompts.embedding.use_remote_embedder), so they are counted as well.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any
from pathlib import Path

from pydantic import BaseModel

from foster.agent.local.backend import UnknownModelError
from foster.agent.models_file import Deployment, ModelsFile
from foster.agent.local.catalog import local_models as _local_models

__all__ = [
    "Completion",
    "Deployment",
    "Embeddings",
    "Ledger",
    "Models",
    "ModelsFile",
    "UnknownModelError",
    "check_model",
    "complete",
    "count_tokens",
    "embed",
    "ledger",
    "local_models",
    "model_spec",
    "use_ledger",
    "use_models",
]

LOCAL_PREFIX = "local/"


class Completion(BaseModel):
    """What one `complete()` call returned: n texts plus what they cost."""

    model: str
    texts: list[str]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    latency_s: float = 0.0
    recalled: bool = False  # answered from a bundle's recorded answers: no model was asked (agent/target.py)

    @property
    def text(self) -> str:
        return self.texts[0] if self.texts else ""


@dataclass
class Embeddings:
    """What one `embed()` call returned: one vector per text, as the provider answered them (not
    normalised), plus what they cost. A plain dataclass: thousands of floats are not validated."""

    model: str
    vectors: list[Any] = field(default_factory=list)
    prompt_tokens: int = 0
    cost: float = 0.0
    latency_s: float = 0.0


# ---------------------------------------------------------------------------------------------
# Models: a models file made callable. One per run (from its config) and one per server (from
# `foster serve --models-file`); handed to `complete(models=...)`, never registered process-wide.


class Models:
    """Named models and their deployments, behind one litellm.Router built on first use.

    A name whose only deployment is a `local/` model is called in-process directly; every other
    named model goes through the Router (load balancing by weight, rpm/tpm limits, retries on
    another replica, cooldown of failing replicas, fallbacks). Names not in the file are litellm
    model strings passed through unchanged.
    """

    def __init__(self, file: ModelsFile | None = None):
        self.file = file or ModelsFile()
        self._router = None
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: str | Path) -> Models:
        return cls(ModelsFile.load(path))

    @classmethod
    def for_run(cls, models_file: str | Path | None = None, endpoints: dict | None = None) -> Models:
        """A run's models: its models file plus its per-model endpoint flags."""
        file = ModelsFile.load(models_file) if models_file else ModelsFile()
        return cls(file.with_endpoints(endpoints or {}))

    def __contains__(self, name: str) -> bool:
        return name in self.file.models

    def spec(self, name: str) -> Deployment:
        """The first deployment of `name` (what checks and token counts look at), or `name` itself."""
        deployments = self.file.models.get(name)
        return deployments[0] if deployments else Deployment(model=name)

    def routed(self, name: str) -> bool:
        deployments = self.file.models.get(name)
        if not deployments:
            return False
        return not (len(deployments) == 1 and deployments[0].local and name not in self.file.fallbacks)

    @property
    def router(self):
        with self._lock:
            if self._router is None:
                litellm = _litellm()
                limited = any(d.rpm or d.tpm for ds in self.file.models.values() for d in ds)
                self._router = litellm.Router(
                    model_list=self.file.router_model_list(),
                    fallbacks=[{name: names} for name, names in self.file.fallbacks.items()] or None,
                    num_retries=self.file.num_retries,
                    allowed_fails=self.file.allowed_fails,
                    cooldown_time=self.file.cooldown_s,
                    routing_strategy="simple-shuffle",  # weighted by `weight`
                    # rpm/tpm are enforced before a request is sent; complete() waits and asks again
                    optional_pre_call_checks=["enforce_model_rate_limits"] if limited else None,
                )
            return self._router


_MODELS: contextvars.ContextVar[Models | None] = contextvars.ContextVar("foster_models", default=None)


@contextlib.contextmanager
def use_models(models: Models | None) -> Iterator[Models | None]:
    """`complete()` calls in this context (and in contexts copied from it) use `models` by default.

    Scoped like `use_ledger`: when the block ends, nothing of it is left in the process.
    """
    token = _MODELS.set(models)
    try:
        yield models
    finally:
        _MODELS.reset(token)


def _models(models: Models | None) -> Models | None:
    return models if models is not None else _MODELS.get()


def model_spec(name: str, models: Models | None = None) -> Deployment:
    """Where `name` lives: its first deployment in `models` (or the context's), else `name` unchanged."""
    models = _models(models)
    return models.spec(name) if models is not None else Deployment(model=name)


# ---------------------------------------------------------------------------------------------
# The ledger: calls, tokens, cost and time per model


@dataclass
class ModelUsage:
    calls: int = 0  # complete() calls, answered or failed
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    seconds: float = 0.0
    errors: int = 0  # calls that failed after their retries
    requests: int = 0  # requests sent: a retried call sends several
    retries: int = 0
    timeouts: int = 0  # requests that ran past the call's timeout (retried or not)


class Ledger:
    """Thread-safe usage per model; `snapshot()` is a plain dict for reports."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._usage: dict[str, ModelUsage] = {}

    def record(self, model: str, *, prompt_tokens: int = 0, completion_tokens: int = 0, cost: float = 0.0, seconds: float = 0.0, error: bool = False,
               requests: int = 1, timeouts: int = 0) -> None:
        with self._lock:
            u = self._usage.setdefault(model, ModelUsage())
            u.calls += 1
            u.requests += requests
            u.retries += max(0, requests - 1)
            u.timeouts += timeouts
            u.prompt_tokens += prompt_tokens
            u.completion_tokens += completion_tokens
            u.cost += cost
            u.seconds += seconds
            u.errors += int(error)

    def snapshot(self) -> dict[str, dict]:
        """{model: {calls, prompt_tokens, completion_tokens, cost, seconds, errors, requests, retries, timeouts}}"""
        with self._lock:
            return {model: asdict(u) for model, u in self._usage.items()}

    def totals(self) -> dict:
        total = ModelUsage()
        for u in self.snapshot().values():
            for key, value in u.items():
                setattr(total, key, getattr(total, key) + value)
        return asdict(total)

    def reset(self) -> None:
        with self._lock:
            self._usage.clear()


_PROCESS_LEDGER = Ledger()
_RUN_LEDGERS: contextvars.ContextVar[tuple[Ledger, ...]] = contextvars.ContextVar("foster_ledgers", default=())


def ledger() -> Ledger:
    """The innermost ledger installed by `use_ledger`, else the process-wide one."""
    stack = _RUN_LEDGERS.get()
    return stack[-1] if stack else _PROCESS_LEDGER


def process_ledger() -> Ledger:
    return _PROCESS_LEDGER


@contextlib.contextmanager
def use_ledger(run_ledger: Ledger | None = None) -> Iterator[Ledger]:
    """Also count calls made in this context into `run_ledger` (the process ledger still counts).

    A knn bundle's remote embeddings made here go through `embed()` and count too, unless the
    context already sends them elsewhere (a run's capped `RunContext.embed`).
    Context variables do not follow work into a plain ThreadPoolExecutor; submit
    `contextvars.copy_context().run` there to keep counting into the run's ledger.
    """
    from foster.prompts.embedding import remote_embedder, use_remote_embedder

    run_ledger = run_ledger or Ledger()
    token = _RUN_LEDGERS.set((*_RUN_LEDGERS.get(), run_ledger))
    try:
        with use_remote_embedder(remote_embedder() or embed_rows):
            yield run_ledger
    finally:
        _RUN_LEDGERS.reset(token)


def _record(model: str, **usage) -> None:
    ledgers = {id(_PROCESS_LEDGER): _PROCESS_LEDGER}
    ledgers.update((id(item), item) for item in _RUN_LEDGERS.get())
    for item in ledgers.values():
        item.record(model, **usage)


# ---------------------------------------------------------------------------------------------
# Checking and calling models


DEFAULT_TIMEOUT = 120.0  # seconds per remote request; a hung endpoint fails (and is retried) instead of stalling a run


def default_timeout() -> float:
    """Seconds a remote request may take ($FOSTER_TIMEOUT, default 120)."""
    try:
        value = float(os.environ.get("FOSTER_TIMEOUT") or DEFAULT_TIMEOUT)
    except ValueError:
        return DEFAULT_TIMEOUT
    return value if value > 0 else DEFAULT_TIMEOUT


# Requests and timeouts of the complete() call running in this context: litellm retries inside one
# litellm.completion(), so only its callbacks see each request. [requests, timeouts]
_ATTEMPTS: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("foster_attempts", default=None)


def _attempt_counter():
    from litellm.integrations.custom_logger import CustomLogger

    class AttemptCounter(CustomLogger):
        """Counts each request litellm sends (a Router's retries included), for the ledger."""

        def log_pre_api_call(self, model, messages, kwargs):
            counts = _ATTEMPTS.get()
            if counts is not None:
                counts[0] += 1

    return AttemptCounter()


_COUNTER = None


def _litellm():
    global _COUNTER
    import litellm

    from foster.agent.local.provider import ensure_registered

    litellm.suppress_debug_info = True  # no multi-line "Provider List" banners on our stdout
    ensure_registered()
    if _COUNTER is None:
        _COUNTER = _attempt_counter()
    if _COUNTER not in litellm.callbacks:  # again after anything (a test) resets litellm's callback lists
        litellm.callbacks.append(_COUNTER)
    return litellm


def is_local(model: str, models: Models | None = None) -> bool:
    return model_spec(model, models).model.startswith(LOCAL_PREFIX)


def check_model(model: str, models: Models | None = None) -> None:
    """Raise UnknownModelError (one line) unless `model` names a provider/alias we can call.

    A named model's every deployment is checked. Local names are checked against the registry
    and the file system; weights are not loaded.
    """
    models = _models(models)
    specs = models.file.models.get(model) if models is not None else None
    for spec in specs or [Deployment(model=model)]:
        if spec.model.startswith(LOCAL_PREFIX):
            from foster.agent.local import registry

            registry.check(spec.model)
            continue
        litellm = _litellm()
        try:
            litellm.get_llm_provider(model=spec.model, api_base=spec.api_base)
        except Exception as exc:  # litellm raises BadRequestError with a multi-line message
            provider = spec.model.split("/", 1)[0] if "/" in spec.model else spec.model
            raise UnknownModelError(f"unknown model provider {provider!r} in {spec.model!r} (not a litellm provider, nor local/)") from exc


def _request(caller: str, model: str, messages: list[dict] | None, prompt: str | None, *, models: Models | None,
             temperature: float, top_p: float, max_tokens: int, stop: list[str] | str | None, seed: int | None,
             timeout: float | None, api_base: str | None = None, api_key: str | None = None):
    """What complete() and stream() share: (models, spec, routed, local, litellm kwargs) for one call.

    A routed name goes through its Router; a local model is called in-process with no timeout or
    dropped params; any other model gets its endpoint and key (explicit ones win) and a timeout.
    """
    if (messages is None) == (prompt is None):
        raise ValueError(f"{caller}() takes exactly one of messages= or prompt=")
    models = _models(models)
    routed = models is not None and api_base is None and api_key is None and models.routed(model)
    spec = model_spec(model, models)
    check_model(model, models)
    local = spec.model.startswith(LOCAL_PREFIX) and not routed
    kwargs: dict = dict(model=model if routed else spec.model, temperature=temperature, top_p=top_p,
                        max_tokens=max_tokens)
    if stop:
        kwargs["stop"] = [stop] if isinstance(stop, str) else list(stop)
    if seed is not None:
        kwargs["seed"] = seed
    if not local:
        kwargs["drop_params"] = True  # e.g. a provider without `seed` still answers
    kwargs.update(_connection(spec, routed=routed, local=local, timeout=timeout, api_base=api_base, api_key=api_key))
    return models, spec, routed, local, kwargs


def _connection(spec: Deployment, *, routed: bool, local: bool, timeout: float | None, api_base: str | None = None,
                api_key: str | None = None) -> dict:
    """Timeout, endpoint and key of one request. A remote request gets a timeout (the default unless
    given); a direct one its deployment's endpoint and key (explicit ones win), the key read from the
    environment now. A Router holds its deployments' own; a local model needs none."""
    out: dict = {}
    if not local:
        timeout = default_timeout() if timeout is None else timeout
    if timeout is not None:
        out["timeout"] = timeout
    if not local and not routed:
        base, key = api_base or spec.api_base, api_key or spec.key()
        if base:
            out["api_base"] = base
        if key:
            out["api_key"] = key
    return out


def complete(
    model: str,
    messages: list[dict] | None = None,
    prompt: str | None = None,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    max_tokens: int = 64,
    stop: list[str] | str | None = None,
    seed: int | None = None,
    n: int = 1,
    num_retries: int = 2,
    timeout: float | None = None,
    api_base: str | None = None,
    api_key: str | None = None,
    models: Models | None = None,
) -> Completion:
    """Call `model` once (n samples) with chat `messages` or a completion `prompt`.

    `models` (default: the one installed by `use_models`) resolves named models; a routed name is
    called through its Router, which picks a deployment, retries on another and waits out rpm/tpm
    limits. Local models are sampled n times with seed, seed+1, ...; they are not retried (their
    failures are deterministic). `api_base` / `api_key` call `model` directly at that endpoint.
    """
    models, spec, routed, local, kwargs = _request("complete", model, messages, prompt, models=models, api_base=api_base,
                                                   api_key=api_key, temperature=temperature, top_p=top_p,
                                                   max_tokens=max_tokens, stop=stop, seed=seed, timeout=timeout)
    litellm = _litellm()
    kwargs["n"] = n
    if not routed:  # the Router retries by its own policy (on another deployment when it can)
        kwargs["num_retries"] = 0  # retried below, one litellm call per request, so each is counted
    if not local:
        kwargs["max_retries"] = 0  # the provider SDK's own retries would be invisible: litellm's num_retries retries
    timeout = kwargs.get("timeout")

    def send():  # the Router is built on first use, inside the try: a failure to build it is a failed call
        caller = models.router if routed else litellm
        if prompt is not None:  # the local provider sees text_completion and sends it verbatim
            return caller.text_completion(prompt=prompt, **kwargs)
        return caller.completion(messages=messages, **kwargs)

    start = time.perf_counter()
    counts = [0, 0]
    attempts = _ATTEMPTS.set(counts)
    try:
        if routed:
            response = _routed(send, timeout)
        else:
            response = _with_retries(litellm, send, 0 if local else num_retries, counts)
        if prompt is not None:
            texts = [c.text or "" for c in response.choices]
        else:
            texts = [c.message.content or "" for c in response.choices]
    except Exception as exc:
        timed_out = counts[1] or int(routed and isinstance(exc, litellm.Timeout))
        _record(model, seconds=time.perf_counter() - start, error=True, requests=max(1, counts[0]), timeouts=timed_out)
        raise
    finally:
        _ATTEMPTS.reset(attempts)
    latency = time.perf_counter() - start
    usage = getattr(response, "usage", None)
    prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
    completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
    cost = 0.0 if local else _cost(litellm, response)
    _record(model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, cost=cost, seconds=latency,
            requests=max(1, counts[0]), timeouts=counts[1])
    return Completion(
        model=model,
        texts=texts,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost=cost,
        latency_s=latency,
    )


def stream(
    model: str,
    messages: list[dict] | None = None,
    prompt: str | None = None,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    max_tokens: int = 64,
    stop: list[str] | str | None = None,
    seed: int | None = None,
    timeout: float | None = None,
    models: Models | None = None,
) -> Iterator[str]:
    """`complete()`'s streaming twin (one sample): the same model resolution (a routed name goes
    through its Router), the same checks and the same ledger, yielding text pieces as they arrive.

    Usage is what the provider reports at the end of the stream; when it reports none, the text is
    counted in the model's own tokens (local) or with tiktoken, never as one token per chunk.
    """
    models, spec, routed, local, kwargs = _request("stream", model, messages, prompt, models=models, temperature=temperature,
                                                   top_p=top_p, max_tokens=max_tokens, stop=stop, seed=seed,
                                                   timeout=timeout)
    litellm = _litellm()
    kwargs["stream"] = True
    caller = models.router if routed else litellm
    start = time.perf_counter()
    pieces: list[str] = []
    usage = None
    try:
        if prompt is not None:
            chunks = caller.text_completion(prompt=prompt, **kwargs)
        else:
            chunks = caller.completion(messages=messages, stream_options={"include_usage": True}, **kwargs)
        for chunk in chunks:
            usage = getattr(chunk, "usage", None) or usage
            choice = chunk.choices[0] if chunk.choices else None
            text = (getattr(choice, "text", None) if prompt is not None else getattr(choice.delta, "content", None)) if choice else None
            if text:
                pieces.append(text)
                yield text
    except Exception:
        _record(model, seconds=time.perf_counter() - start, error=True, requests=1)
        raise
    prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
    completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
    if not completion_tokens and pieces:
        completion_tokens = _count_text(model, "".join(pieces), models)
    _record(model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, seconds=time.perf_counter() - start,
            requests=1)


def embed(model: str, texts: list[str], *, num_retries: int = 2, timeout: float | None = None,
          models: Models | None = None) -> Embeddings:
    """Embed `texts` with litellm embedding model `model`: one vector per text, in order.

    Resolved like complete(): a routed name through its Router, a named deployment with its endpoint
    and key variable, any other name with the provider's own key variable; timeout-bounded, retried
    on transient failures, and counted in the ledgers, one call per request of at most REMOTE_BATCH
    texts. `model` is a name only: nothing here takes an endpoint from the caller. A failure raises
    EmbeddingError, one line naming the model. The in-process `local/` provider has no embeddings.
    """
    from foster.prompts.embedding import REMOTE_BATCH, embedding_failure, response_vectors

    texts = [str(t) for t in texts]
    models = _models(models)
    deployments = (models.file.models.get(model) if models is not None else None) or [model_spec(model, models)]
    if any(d.local for d in deployments):
        raise UnknownModelError(f"{model!r}: foster's in-process local/ provider has no embedding models")
    check_model(model, models)
    routed = models is not None and models.routed(model)
    spec = model_spec(model, models)
    litellm = _litellm()
    kwargs: dict = dict(model=model if routed else spec.model, drop_params=True,
                        **_connection(spec, routed=routed, local=False, timeout=timeout))
    if not routed:  # retried below, one request per litellm call, so each is counted (as in complete())
        kwargs.update(num_retries=0, max_retries=0)
    out = Embeddings(model=model)
    for begin in range(0, len(texts), REMOTE_BATCH):
        batch = texts[begin : begin + REMOTE_BATCH]

        def send(batch=batch):
            return (models.router if routed else litellm).embedding(input=batch, **kwargs)

        start = time.perf_counter()
        counts = [0, 0]
        attempts = _ATTEMPTS.set(counts)
        try:
            response = _routed(send, kwargs["timeout"]) if routed else _with_retries(litellm, send, num_retries, counts)
            rows = response_vectors(response)
        except Exception as exc:
            timed_out = counts[1] or int(routed and isinstance(exc, litellm.Timeout))
            _record(model, seconds=time.perf_counter() - start, error=True, requests=max(1, counts[0]), timeouts=timed_out)
            raise embedding_failure(model, exc) from exc
        finally:
            _ATTEMPTS.reset(attempts)
        latency = time.perf_counter() - start
        usage = getattr(response, "usage", None)
        tokens = int(getattr(usage, "prompt_tokens", 0) or getattr(usage, "total_tokens", 0) or 0)
        cost = _cost(litellm, response)
        _record(model, prompt_tokens=tokens, cost=cost, seconds=latency, requests=max(1, counts[0]), timeouts=counts[1])
        out.vectors.extend(rows)
        out.prompt_tokens += tokens
        out.cost += cost
        out.latency_s += latency
    return out


def embed_rows(model: str, texts: list[str]) -> list[Any]:
    """`embed()`'s vectors: what prompts.embedding sends a bundle's remote embeddings through."""
    return embed(model, texts).vectors


def _count_text(model: str, text: str, models: Models | None) -> int:
    """Tokens of `text`: the local model's own tokenizer when there is one, else tiktoken's o200k."""
    try:
        counted = count_tokens(model, text, models)
    except Exception:  # a fake or an unloadable local model: tiktoken is a fair count
        counted = None
    if counted is None:
        import tiktoken

        counted = len(tiktoken.get_encoding("o200k_base").encode(text))
    return int(counted)


def _with_retries(litellm, send: Callable[[], Any], retries: int, counts: list[int]):
    """`send()` (one litellm request) retried on what a retry can fix (timeouts, lost connections, 429, 5xx),
    so the ledger sees every request and every timeout. counts: [requests, timeouts]."""
    transient = (litellm.Timeout, litellm.APIConnectionError, litellm.RateLimitError, litellm.InternalServerError,
                 litellm.ServiceUnavailableError)
    for attempt in range(retries + 1):
        sent = counts[0]
        try:
            return send()
        except transient as exc:
            counts[1] += int(isinstance(exc, litellm.Timeout))
            if attempt == retries:
                raise
            time.sleep(min(4.0, 0.25 * 2**attempt))
        finally:
            counts[0] = max(counts[0], sent + 1)  # the callback counted it, or we do
    raise AssertionError("unreachable")


RATE_LIMIT_WAIT_S = 600.0  # how long one call may wait for rpm/tpm capacity before it fails


def _routed(send: Callable[[], Any], timeout: float | None):
    """`send()`, one call through the Router; when every deployment is at its rpm/tpm limit, wait and ask again.

    The Router refuses (RateLimitError, no request sent) rather than queue; waiting here is what
    turns a deployment's rpm into a bound on the call rate. Limits are counted per minute, so the
    wait is bounded by RATE_LIMIT_WAIT_S (or a longer `timeout`), not by one request's timeout.
    """
    import litellm

    deadline = time.monotonic() + max(timeout or 0.0, RATE_LIMIT_WAIT_S)
    attempt = 0
    while True:
        try:
            return send()
        except litellm.RateLimitError as exc:
            if "Model rate limit exceeded" not in str(exc):
                raise  # the provider's own 429, after the Router's retries
            to_next_minute = 60.0 - time.time() % 60.0 + 0.05
            delay = min(0.05 * 2 ** min(attempt, 10), to_next_minute)
            if time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            attempt += 1


def _cost(litellm, response) -> float:
    try:
        return float(litellm.completion_cost(completion_response=response) or 0.0)
    except Exception:  # models missing from litellm's cost map (self-hosted endpoints) cost 0
        return 0.0


def count_tokens(model: str, text: str, models: Models | None = None) -> int | None:
    """`text` in the local model's own tokens (loads it); None for remote models and fakes."""
    spec = model_spec(model, models)
    if not spec.model.startswith(LOCAL_PREFIX):
        return None
    from foster.agent.local import registry

    return registry.resolve(spec.model).count_tokens(text)


def local_models() -> list[tuple[str, bool, str]]:
    """(alias, weights installed, GGUF path) for every embedded model."""
    return _local_models()


# ---------------------------------------------------------------------------------------------
# Many calls to one model at once


def default_concurrency(model: str, models: Models | None = None) -> int:
    """Calls one model may have in flight: 1 for in-process local models (CPU-bound, a lock per model
    anyway), FOSTER_REMOTE_CONCURRENCY (8) for endpoints, whose latency is mostly waiting."""
    import os

    if is_local(model, models):
        return max(1, int(os.environ.get("FOSTER_LOCAL_CONCURRENCY", 1)))
    return max(1, int(os.environ.get("FOSTER_REMOTE_CONCURRENCY", 8)))


def map_concurrently(fn, items: list, limit: int) -> Iterator[tuple[int, object]]:
    """Run `fn(item)` for every item with at most `limit` in flight; yield (index, result) as each finishes.

    Each call runs in a copy of the caller's context, so the run's ledger and models follow it into
    the worker thread. The first exception cancels what has not started, lets the calls in flight
    finish (whatever `fn` stores as it returns stays stored) and is raised.
    """
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    if limit <= 1 or len(items) <= 1:
        for i, item in enumerate(items):
            yield i, fn(item)
        return
    with ThreadPoolExecutor(max_workers=min(limit, len(items)), thread_name_prefix="foster-call") as pool:
        futures = {pool.submit(contextvars.copy_context().run, fn, item): i for i, item in enumerate(items)}
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    yield futures[f], f.result()
        finally:
            for f in pending:
                f.cancel()
