"""The model gateway: every model call foster makes goes through `complete()`, i.e. through litellm.

Any litellm model string works; `local/...` reaches the in-process provider (embedded GGUF
models, PEFT adapters, registered fakes). Per-model endpoints and keys come from a `ModelSpec`
registry (flags or a models YAML file) and are never written anywhere else. Every call is counted
in the process-wide `Ledger` and in any ledger a run installed with `use_ledger`.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from pydantic import BaseModel, Field, SecretStr

from foster.agent.local.registry import UnknownModelError
from foster.agent.local.registry import local_models as _local_models

__all__ = [
    "Completion",
    "Ledger",
    "ModelSpec",
    "UnknownModelError",
    "check_model",
    "complete",
    "count_tokens",
    "ledger",
    "load_models_file",
    "local_models",
    "model_spec",
    "register_model_spec",
    "unregister_model_spec",
    "use_ledger",
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

    @property
    def text(self) -> str:
        return self.texts[0] if self.texts else ""


# ---------------------------------------------------------------------------------------------
# Model specs: where a named model lives and how to authenticate


class ModelSpec(BaseModel):
    """A named model: its litellm string and, for remote models, endpoint and key (never saved)."""

    name: str = Field(description="what foster calls the model (a bundle's teacher/target id)")
    model: str = Field(description="the litellm model string")
    api_base: str | None = Field(default=None, description="endpoint, e.g. an OpenAI-compatible URL")
    api_key_env: str | None = Field(default=None, description="environment variable holding the key")
    api_key: SecretStr | None = Field(default=None, description="the key itself (from a flag)", repr=False)

    def key(self) -> str | None:
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        if self.api_key_env:
            return os.environ.get(self.api_key_env)
        return None


_SPECS: dict[str, ModelSpec] = {}
_SPECS_LOCK = threading.Lock()


def register_model_spec(spec: ModelSpec) -> ModelSpec:
    with _SPECS_LOCK:
        _SPECS[spec.name] = spec
    return spec


def unregister_model_spec(name: str) -> None:
    with _SPECS_LOCK:
        _SPECS.pop(name, None)


def model_spec(name: str) -> ModelSpec:
    """The registered spec for `name`, or a bare spec that passes `name` to litellm unchanged."""
    with _SPECS_LOCK:
        spec = _SPECS.get(name)
    return spec if spec is not None else ModelSpec(name=name, model=name)


def load_models_file(path: str | Path) -> list[ModelSpec]:
    """Register every `{name: {model, api_base, api_key_env}}` entry of a YAML file."""
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of model name -> {{model, api_base, api_key_env}}")
    specs = []
    for name, entry in data.items():
        entry = {"model": entry} if isinstance(entry, str) else dict(entry or {})
        entry.setdefault("model", name)
        specs.append(register_model_spec(ModelSpec(name=str(name), **entry)))
    return specs


# ---------------------------------------------------------------------------------------------
# The ledger: calls, tokens, cost and time per model


@dataclass
class ModelUsage:
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    seconds: float = 0.0
    errors: int = 0


class Ledger:
    """Thread-safe usage per model; `snapshot()` is a plain dict for reports."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._usage: dict[str, ModelUsage] = {}

    def record(self, model: str, *, prompt_tokens: int = 0, completion_tokens: int = 0, cost: float = 0.0, seconds: float = 0.0, error: bool = False) -> None:
        with self._lock:
            u = self._usage.setdefault(model, ModelUsage())
            u.calls += 1
            u.prompt_tokens += prompt_tokens
            u.completion_tokens += completion_tokens
            u.cost += cost
            u.seconds += seconds
            u.errors += int(error)

    def snapshot(self) -> dict[str, dict]:
        """{model: {calls, prompt_tokens, completion_tokens, cost, seconds, errors}}"""
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

    Context variables do not follow work into a plain ThreadPoolExecutor; submit
    `contextvars.copy_context().run` there to keep counting into the run's ledger.
    """
    run_ledger = run_ledger or Ledger()
    token = _RUN_LEDGERS.set((*_RUN_LEDGERS.get(), run_ledger))
    try:
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


def _litellm():
    import litellm

    from foster.agent.local.provider import ensure_registered

    litellm.suppress_debug_info = True  # no multi-line "Provider List" banners on our stdout
    ensure_registered()
    return litellm


def is_local(model: str) -> bool:
    return model_spec(model).model.startswith(LOCAL_PREFIX)


def check_model(model: str) -> None:
    """Raise UnknownModelError (one line) unless `model` names a provider/alias we can call.

    Local names are checked against the registry and the file system; weights are not loaded.
    """
    spec = model_spec(model)
    if spec.model.startswith(LOCAL_PREFIX):
        from foster.agent.local import registry

        registry.check(spec.model)
        return
    litellm = _litellm()
    try:
        litellm.get_llm_provider(model=spec.model, api_base=spec.api_base)
    except Exception as exc:  # litellm raises BadRequestError with a multi-line message
        provider = spec.model.split("/", 1)[0] if "/" in spec.model else spec.model
        raise UnknownModelError(f"unknown model provider {provider!r} in {spec.model!r} (not a litellm provider, nor local/)") from exc


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
) -> Completion:
    """Call `model` once (n samples) with chat `messages` or a completion `prompt`.

    Local models are sampled n times with seed, seed+1, ...; they are not retried (their failures
    are deterministic). `api_base` / `api_key` override the model's registered spec.
    """
    if (messages is None) == (prompt is None):
        raise ValueError("complete() takes exactly one of messages= or prompt=")
    spec = model_spec(model)
    check_model(model)
    litellm = _litellm()
    local = spec.model.startswith(LOCAL_PREFIX)
    kwargs: dict = dict(
        model=spec.model,
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_tokens,
        n=n,
        num_retries=0 if local else num_retries,
    )
    if stop:
        kwargs["stop"] = [stop] if isinstance(stop, str) else list(stop)
    if seed is not None:
        kwargs["seed"] = seed
    if timeout is not None:
        kwargs["timeout"] = timeout
    if not local:
        kwargs["drop_params"] = True  # e.g. a provider without `seed` still answers
        base, key = api_base or spec.api_base, api_key or spec.key()
        if base:
            kwargs["api_base"] = base
        if key:
            kwargs["api_key"] = key

    start = time.perf_counter()
    try:
        if prompt is not None:  # the local provider sees text_completion and sends it verbatim
            response = litellm.text_completion(prompt=prompt, **kwargs)
            texts = [c.text or "" for c in response.choices]
        else:
            response = litellm.completion(messages=messages, **kwargs)
            texts = [c.message.content or "" for c in response.choices]
    except Exception:
        _record(model, seconds=time.perf_counter() - start, error=True)
        raise
    latency = time.perf_counter() - start
    usage = getattr(response, "usage", None)
    prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
    completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
    cost = 0.0 if local else _cost(litellm, response)
    _record(model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, cost=cost, seconds=latency)
    return Completion(
        model=model,
        texts=texts,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost=cost,
        latency_s=latency,
    )


def _cost(litellm, response) -> float:
    try:
        return float(litellm.completion_cost(completion_response=response) or 0.0)
    except Exception:  # models missing from litellm's cost map (self-hosted endpoints) cost 0
        return 0.0


def count_tokens(model: str, text: str) -> int | None:
    """`text` in the local model's own tokens (loads it); None for remote models and fakes."""
    spec = model_spec(model)
    if not spec.model.startswith(LOCAL_PREFIX):
        return None
    from foster.agent.local import registry

    return registry.resolve(spec.model).count_tokens(text)


def local_models() -> list[tuple[str, bool, str]]:
    """(alias, weights installed, GGUF path) for every embedded model."""
    return _local_models()


# ---------------------------------------------------------------------------------------------
# Many calls to one model at once


def default_concurrency(model: str) -> int:
    """Calls one model may have in flight: 1 for in-process local models (CPU-bound, a lock per model
    anyway), FOSTER_REMOTE_CONCURRENCY (8) for endpoints, whose latency is mostly waiting."""
    import os

    if is_local(model):
        return max(1, int(os.environ.get("FOSTER_LOCAL_CONCURRENCY", 1)))
    return max(1, int(os.environ.get("FOSTER_REMOTE_CONCURRENCY", 8)))


def map_concurrently(fn, items: list, limit: int) -> Iterator[tuple[int, object]]:
    """Run `fn(item)` for every item with at most `limit` in flight; yield (index, result) as each finishes.

    Each call runs in a copy of the caller's context, so the run's ledger and models follow it into
    the worker thread. The first exception cancels what has not started, lets the calls in flight
    finish (whatever `fn` stores as it returns stays stored) and is raised.
    """
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    if limit <= 1 or len(items) <= 1:
        for i, item in enumerate(items):
            yield i, fn(item)
        return
    with ThreadPoolExecutor(max_workers=min(limit, len(items)), thread_name_prefix="foster-call") as pool:
        futures = {pool.submit(contextvars.copy_context().run, fn, item): i for i, item in enumerate(items)}
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for f in done:
                    yield futures[f], f.result()
        finally:
            for f in pending:
                f.cancel()
