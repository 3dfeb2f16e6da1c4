"""The `local/` litellm provider: every in-process backend reachable as `litellm.completion("local/...")`.

Registered in `litellm.custom_provider_map` by `ensure_registered()`, so litellm, DSPy
(`dspy.LM("local/...")`) and the OpenAI-compatible endpoint all reach embedded models and fakes
through the same path. A request with `foster_raw_prompt=True` (or one made by
`litellm.text_completion`) is a completion: its single user message is the prompt, sent verbatim.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import litellm
from litellm.llms.custom_llm import CustomLLM, CustomLLMError
from litellm.types.utils import Choices, GenericStreamingChunk, Message, ModelResponse, Usage

from foster.agent.local import registry
from foster.agent.local.backend import Generation, LocalRequest, message_text

PROVIDER = "local"
RAW_PROMPT_FLAG = "foster_raw_prompt"
_ZERO_COST_HEADERS = {"llm_provider-x-litellm-response-cost": 0.0}


def _as_stop(value: Any) -> tuple[str, ...]:
    if not value:
        return ()
    return (value,) if isinstance(value, str) else tuple(str(s) for s in value)


def build_request(messages: list, optional_params: dict | None, litellm_params: dict | None = None) -> tuple[LocalRequest, int]:
    """The LocalRequest for sample 0 and the number of samples asked (n)."""
    params = dict(optional_params or {})
    extra = params.pop("extra_body", None) or {}
    params = {**extra, **params}
    lp = litellm_params or {}
    raw = bool(params.get(RAW_PROMPT_FLAG) or lp.get(RAW_PROMPT_FLAG) or lp.get("text_completion"))
    max_tokens = params.get("max_tokens") or params.get("max_completion_tokens") or 64
    temperature = params.get("temperature")
    top_p = params.get("top_p")
    seed = params.get("seed")
    common = dict(
        temperature=0.0 if temperature is None else float(temperature),
        top_p=1.0 if top_p is None else float(top_p),
        max_tokens=int(max_tokens),
        stop=_as_stop(params.get("stop")),
        seed=None if seed is None else int(seed),
    )
    if raw:
        prompt = "\n\n".join(message_text(m) for m in messages)  # one message: verbatim
        request = LocalRequest(prompt=prompt, **common)
    else:
        request = LocalRequest(messages=tuple(dict(m) for m in messages), **common)
    return request, max(1, int(params.get("n") or 1))


def _price_at_zero(model: str) -> None:
    """Local models cost nothing; an entry in litellm's cost map lets completion_cost() say so."""
    key = f"{PROVIDER}/{registry.strip_provider(model)}"
    if key not in litellm.model_cost:
        litellm.model_cost[key] = {
            "input_cost_per_token": 0.0,
            "output_cost_per_token": 0.0,
            "litellm_provider": PROVIDER,
            "mode": "chat",
        }


def fill_response(model_response: ModelResponse, model: str, generations: list[Generation]) -> ModelResponse:
    """Choices, usage (prompt counted once, as OpenAI does for n > 1) and a zero cost."""
    _price_at_zero(model)
    model_response.choices = [
        Choices(index=i, finish_reason=g.finish_reason, message=Message(role="assistant", content=g.text))
        for i, g in enumerate(generations)
    ]
    model_response.model = f"{PROVIDER}/{registry.strip_provider(model)}"
    prompt_tokens = generations[0].prompt_tokens if generations else 0
    completion_tokens = sum(g.completion_tokens for g in generations)
    model_response.usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, total_tokens=prompt_tokens + completion_tokens)
    hidden = getattr(model_response, "_hidden_params", None)
    if isinstance(hidden, dict):
        hidden["additional_headers"] = {**(hidden.get("additional_headers") or {}), **_ZERO_COST_HEADERS}
        hidden["response_cost"] = 0.0
    return model_response


def _chunk(text: str, index: int, finished: bool = False, finish_reason: str = "", usage: dict | None = None) -> GenericStreamingChunk:
    return GenericStreamingChunk(
        text=text,
        is_finished=finished,
        finish_reason=finish_reason,
        usage=usage,
        index=index,
        tool_use=None,
    )


class LocalProvider(CustomLLM):
    """litellm's view of the local registry: resolve the name, sample n times, report usage."""

    def completion(self, model: str, messages: list, api_base: str, custom_prompt_dict: dict, model_response: ModelResponse, print_verbose, encoding, api_key, logging_obj, optional_params: dict, acompletion=None, litellm_params=None, logger_fn=None, headers={}, timeout=None, client=None) -> ModelResponse:  # noqa: B006 - litellm's signature
        backend = registry.resolve(model)
        request, n = build_request(messages, optional_params, litellm_params)
        generations = [backend.generate(request.sample(i)) for i in range(n)]
        return fill_response(model_response, model, generations)

    def streaming(self, model: str, messages: list, api_base: str, custom_prompt_dict: dict, model_response: ModelResponse, print_verbose, encoding, api_key, logging_obj, optional_params: dict, acompletion=None, litellm_params=None, logger_fn=None, headers={}, timeout=None, client=None) -> Iterator[GenericStreamingChunk]:  # noqa: B006
        backend = registry.resolve(model)
        request, n = build_request(messages, optional_params, litellm_params)
        if n > 1:  # litellm's stream wrapper merges choices into one; refuse rather than garble
            raise CustomLLMError(status_code=400, message="local models stream one sample: use n=1 with stream=True")
        _price_at_zero(model)
        prompt_tokens = completion_tokens = 0
        finish = "stop"
        for piece in backend.stream(request):
            if piece.text:
                yield _chunk(piece.text, 0)
            if piece.prompt_tokens or piece.completion_tokens:
                prompt_tokens, completion_tokens, finish = piece.prompt_tokens, piece.completion_tokens, piece.finish_reason
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}
        yield _chunk("", 0, finished=True, finish_reason=finish, usage=usage)

    async def acompletion(self, *args, **kwargs) -> ModelResponse:
        # The weights are guarded by a lock per model: a worker thread keeps the event loop free.
        return await asyncio.to_thread(self.completion, *args, **kwargs)

    async def astreaming(self, *args, **kwargs) -> AsyncIterator[GenericStreamingChunk]:
        chunks = self.streaming(*args, **kwargs)
        done = object()
        try:
            while (chunk := await asyncio.to_thread(next, chunks, done)) is not done:
                yield chunk
        finally:
            chunks.close()


_REGISTER_LOCK = threading.Lock()
_PROVIDER_INSTANCE: LocalProvider | None = None


def ensure_registered() -> LocalProvider:
    """Put the `local` provider in litellm.custom_provider_map (idempotent, also after a reset)."""
    import litellm

    global _PROVIDER_INSTANCE
    with _REGISTER_LOCK:
        if _PROVIDER_INSTANCE is None:
            _PROVIDER_INSTANCE = LocalProvider()
        if not any(item.get("provider") == PROVIDER for item in litellm.custom_provider_map):
            litellm.custom_provider_map = [
                *litellm.custom_provider_map,
                {"provider": PROVIDER, "custom_handler": _PROVIDER_INSTANCE},
            ]
        from litellm.utils import custom_llm_setup

        custom_llm_setup()  # adds `local` to litellm.provider_list / _custom_providers
    return _PROVIDER_INSTANCE
