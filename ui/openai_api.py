"""Drop-in serving: /v1/chat/completions, /v1/completions and /v1/models answer in the OpenAI shape from a bundle.

`model` names a deployment (an alias such as the retired fine-tune's id) or a bundle id. The
bundle renders the request with the same code evaluation used (`agent.target.render_request`:
messages for chat targets, a few-shot prompt for base targets) and the target is called through
litellm. The input the bundle renders (and retrieves its examples for) is the last user message of
a chat request, or the prompt of a completion request. The bundle's system prompt and examples come
first; the client's own system message and earlier turns follow, all kept, before that input. A
client that sends the bundle's own rendering (an export replayed, e.g. promptfoo's config) is
answered as if it had sent the input alone: the bundle is applied once.
Under a label output contract the answer is normalized as evaluation normalized it, so a client
receives the label that was measured ("Billing." becomes "Billing").

OpenAI parameters foster cannot honour (`tools`, a `response_format` other than text, `logprobs`,
...) are refused with 400 and OpenAI's error shape naming the parameter, and so are invalid bodies:
a client never gets an answer that silently ignored what it asked for.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import anyio
from fastapi import APIRouter, Path
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field

from foster.ui.catalog import catalog
from foster.ui.deployments import Deployment, deployment_store, shadow_in_background, should_shadow
from foster.ui.errors import ApiError, error_body, validation_message

DEFAULT_MAX_TOKENS = 256
MAX_N = 8



class OpenAIRoute(APIRoute):
    """OpenAI answers an invalid body with 400 (foster's own REST routes keep FastAPI's 422)."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def openai_handler(request):
            try:
                return await handler(request)
            except RequestValidationError as exc:
                message, param = validation_message(exc.errors())
                return JSONResponse(error_body(400, message, "invalid_request_error", param), status_code=400)

        return openai_handler


def _error_schema(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"example": error_body(
        400, "invalid request: ...", "invalid_request_error", "messages")}}}


ERRORS = {
    400: _error_schema("invalid body or an unsupported parameter (OpenAI's error shape; `param` names it)"),
    404: _error_schema("no deployment or bundle of that name"),
    502: _error_schema("the target model failed"),
    503: _error_schema("the target model is not available on this server"),
}

router = APIRouter(route_class=OpenAIRoute)

# Shadow requests run here, after the client has its answer; two workers keep a slow teacher from
# piling up threads (excess requests queue).
_SHADOW_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="foster-shadow")


# ---------------------------------------------------------------------------------------------
# Request bodies (the OpenAI fields foster honours; those it cannot honour are refused, others ignored)


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str = "text"
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content if part.type == "text")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


# OpenAI parameters foster does not implement, and the values that ask nothing of it (absent,
# null, or these): anything else is a 400 naming the parameter.
UNSUPPORTED: dict[str, tuple] = {
    "tools": ([],), "tool_choice": ("none",), "functions": ([],), "function_call": ("none",),
    "parallel_tool_calls": (), "logprobs": (False,), "top_logprobs": (0,), "logit_bias": ({},),
    "response_format": ({"type": "text"},), "audio": (), "modalities": (["text"],), "prediction": (),
    "web_search_options": (), "presence_penalty": (0, 0.0), "frequency_penalty": (0, 0.0), "best_of": (1,),
    "suffix": ("",),
}


def refuse_unsupported(body: BaseModel) -> None:
    for name, value in (body.model_extra or {}).items():
        if name in UNSUPPORTED and value is not None and value not in UNSUPPORTED[name]:
            raise ApiError(400, f"Unsupported parameter: '{name}' is not supported by foster's drop-in endpoint "
                                f"(a bundle answers with plain text{'; send response_format type text or omit it' if name == 'response_format' else ''})",
                           code="unsupported_parameter", param=name)


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, description="a deployment name (alias) or a bundle id")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="default 0: bundles are evaluated greedily")
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=MAX_N)
    max_tokens: int | None = Field(None, ge=1, le=32768)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    def stops(self) -> list[str]:
        if not self.stop:
            return []
        return [self.stop] if isinstance(self.stop, str) else [s for s in self.stop if s]


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=32768)


class CompletionRequest(_Sampling):
    prompt: str | list[str] = Field(description="the input (or inputs) the bundle renders")
    echo: bool = False


# ---------------------------------------------------------------------------------------------
# Resolving `model`


@dataclass
class Served:
    """What a request's `model` resolved to."""

    name: str
    bundle: Any
    target: str
    deployment: Deployment | None


def resolve(model: str) -> Served:
    """A deployment by name, else a bundle by id; 404 in the OpenAI shape otherwise."""
    deployment = deployment_store().get(model)
    bundle_id = deployment.bundle_id if deployment else model
    bundle = catalog().load(bundle_id)
    if bundle is None:
        if deployment is not None:
            raise ApiError(404, f"deployment {model!r} serves bundle {bundle_id!r}, which no longer exists",
                           code="model_not_found", param="model")
        raise ApiError(404, f"The model `{model}` does not exist: name a deployment (GET /v1/deployments) "
                            "or a bundle id (GET /v1/bundles)", code="model_not_found", param="model")
    target = (deployment.target if deployment and deployment.target else None) or bundle.targets[0]
    return Served(name=model, bundle=bundle, target=target, deployment=deployment)


def _input_of(messages: list[ChatMessage]) -> tuple[str, list[dict], list[dict]]:
    """(the input the bundle renders: the last user message, the client's messages before it, after it)."""
    plain = []
    for i, message in enumerate(messages):
        if message.role in ("tool", "function"):
            raise ApiError(400, f"Unsupported parameter: messages[{i}].role {message.role!r}: foster's drop-in endpoint "
                                "does not call tools", code="unsupported_parameter", param=f"messages[{i}].role")
        if isinstance(message.content, list) and any(part.type != "text" for part in message.content):
            raise ApiError(400, f"Unsupported parameter: messages[{i}].content: only text parts are supported",
                           code="unsupported_parameter", param=f"messages[{i}].content")
        # "developer" is OpenAI's newer name for a system message; small chat templates know only "system"
        plain.append({"role": "system" if message.role == "developer" else message.role, "content": message.text()})
    last = max((i for i, m in enumerate(messages) if m.role == "user"), default=None)
    if last is None:
        raise ApiError(400, "invalid request: messages: no user message (the last user message is the input the bundle renders)",
                       code="invalid_request_error", param="messages")
    return plain[last]["content"], plain[:last], plain[last + 1:]


def _finalize(served: Served, text: str) -> str:
    if served.bundle.output_contract.format == "label":
        return served.bundle.normalize(text)
    return text


# ---------------------------------------------------------------------------------------------
# Calling the target


async def render_async(served: Served, user_input: str, stops: list[str], before: list[dict] | None = None,
                       after: list[dict] | None = None) -> dict:
    """render(), off the event loop when the bundle retrieves its examples (that embeds the input)."""
    if served.bundle.selection.kind == "knn" and served.bundle.examples:
        return await anyio.to_thread.run_sync(render, served, user_input, stops, before, after)
    return render(served, user_input, stops, before, after)


def with_conversation(request: dict, bundle, user_input: str, before: list[dict], after: list[dict]) -> dict:
    """The bundle's request with the client's own messages kept: the bundle's system prompt and
    examples first, then the client's system message and earlier turns, then the input (and any
    turns the client sent after it). A base target sees them as text in its few-shot prompt: system
    text under the bundle's, each user/assistant pair as one more Input/Output pair."""
    if not before and not after:
        return request
    if "messages" in request:
        *head, last = request["messages"]
        return {**request, "messages": [*head, *before, last, *after]}
    from foster.prompts import templates
    from foster.prompts.bundle import Example, default_completion_template

    system = "\n\n".join(filter(None, [bundle.system_prompt, *(m["content"] for m in before if m["role"] == "system")]))
    turns = [m for m in before if m["role"] != "system"]
    pairs = [Example(input=u["content"], output=a["content"]) for u, a in zip(turns, turns[1:])
             if u["role"] == "user" and a["role"] == "assistant"]
    prompt = templates.render_string(bundle.completion_template or default_completion_template(), system_prompt=system,
                                     examples=[*bundle.select_examples(user_input), *pairs], input=user_input,
                                     output_contract=bundle.output_contract)
    return {**request, "prompt": prompt}


def without_the_bundles_own_part(bundle, user_input: str, request: dict, before: list[dict]) -> list[dict]:
    """The client's messages before its input, less the bundle's own rendering of that input.

    A client replaying an export (promptfoo's config, the openai export's request) sends what
    `Bundle.messages()` renders: the bundle's system prompt and examples, then the input. Kept as the
    client's conversation, they would reach the target twice, a different question from the one
    evaluation asked (the embedded SmolLM2 then changed up to 3 of 8 greedy answers). Only an exact
    match is the bundle's: any other system message or turn is the client's own and kept.
    """
    if not before:
        return before
    rendered = request["messages"] if "messages" in request else bundle.messages(user_input)
    return [] if before == rendered[:-1] else before


def render(served: Served, user_input: str, stops: list[str], before: list[dict] | None = None,
           after: list[dict] | None = None) -> dict:
    """The request the bundle makes for this target (agent.target: the path evaluation used), with
    the client's conversation kept."""
    from foster.agent.target import render_request

    request = render_request(served.bundle, served.target, user_input)
    before = without_the_bundles_own_part(served.bundle, user_input, request, before or [])
    if not before and not after:  # a bare input close to a recorded one: the recorded answer, as evaluated
        recalled = served.bundle.recall(user_input)
        if recalled is not None:
            return {**request, "recalled": recalled}
    request = with_conversation(request, served.bundle, user_input, before, after or [])
    if "prompt" in request:
        request["stop"] = list(dict.fromkeys([*request.get("stop", []), *stops]))
    elif stops:
        request["stop"] = stops
    return request


def _params(body: _Sampling, max_tokens: int | None) -> dict:
    params: dict[str, Any] = {
        "temperature": 0.0 if body.temperature is None else body.temperature,
        "max_tokens": max_tokens or DEFAULT_MAX_TOKENS,
    }
    if body.top_p is not None:
        params["top_p"] = body.top_p
    if body.seed is not None:
        params["seed"] = body.seed
    return params


def _call(served: Served, request: dict, params: dict, n: int):
    """The gateway call, and how long all of it took (checks and ledger included)."""
    from foster.agent.gateway import complete

    start = time.perf_counter()
    if "recalled" in request:
        from foster.agent.gateway import Completion

        result = Completion(model=served.target, texts=[request["recalled"]] * n, recalled=True)
    else:
        result = complete(served.target, n=n, **request, **params)
    return result, time.perf_counter() - start


def _target_error(served: Served, exc: Exception) -> ApiError:
    from foster.agent.gateway import UnknownModelError

    if isinstance(exc, UnknownModelError):
        return ApiError(503, f"target {served.target} of {served.name!r} is not available here: {exc}", code="target_unavailable")
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ApiError(502, f"target {served.target} failed: {message}", code="target_error")


async def _complete(served: Served, request: dict, params: dict, n: int):
    """(Completion, seconds spent in the gateway) from a worker thread, so the event loop stays free."""
    try:
        return await anyio.to_thread.run_sync(lambda: _call(served, request, params, n))
    except ApiError:
        raise
    except Exception as exc:
        raise _target_error(served, exc) from exc


def stream_texts(served: Served, request: dict, params: dict) -> Iterator[str]:
    """Text pieces from the target as it streams them (one sample), through the gateway's one
    `stream()`: the same model resolution, Router and ledger as evaluation's `complete()`."""
    from foster.agent.gateway import stream

    if "recalled" in request:
        return iter([request["recalled"]])
    return stream(served.target, **request, **params)


# ---------------------------------------------------------------------------------------------
# Responses


def _shadow(served: Served, user_input: str, text: str, max_tokens: int) -> None:
    if should_shadow(served.deployment):
        _SHADOW_POOL.submit(shadow_in_background, served.deployment, served.bundle, served.target, user_input, text, max_tokens)


def _headers(served: Served, target_s: float, total_start: float, recalled: bool = False) -> dict[str, str]:
    total = (time.perf_counter() - total_start) * 1000
    return {
        "x-foster-bundle": served.bundle.id,
        "x-foster-target": served.target,
        "x-foster-recalled": "1" if recalled else "0",  # answered from the bundle's recorded answers
        # what the service itself added: total time in the handler minus the target call
        "server-timing": f"target;dur={target_s * 1000:.2f}, total;dur={total:.2f}",
    }


def _sse(data: dict | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload}\n\n".encode()


async def _aiter_sync(iterator: Iterator[str]) -> AsyncIterator[str]:
    done = object()
    while (item := await anyio.to_thread.run_sync(next, iterator, done)) is not done:
        yield item


async def _open_stream(served: Served, request: dict, params: dict) -> tuple[str | None, AsyncIterator[str]]:
    """Start the target's stream and take its first piece, so a failing target is an HTTP error,
    not an error in the middle of a 200 stream."""
    texts = _aiter_sync(stream_texts(served, request, params))
    try:
        first = await texts.__anext__()
    except StopAsyncIteration:
        first = None
    except Exception as exc:
        raise _target_error(served, exc) from exc
    return first, texts


def _stream_response(chunks: AsyncIterator[bytes], served: Served) -> StreamingResponse:
    return StreamingResponse(
        chunks,
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-foster-bundle": served.bundle.id, "x-foster-target": served.target},
    )


@router.post("/chat/completions", summary="Chat completion from a deployed bundle (OpenAI-compatible)", responses=ERRORS)
async def chat_completions(body: ChatCompletionRequest):
    total_start = time.perf_counter()
    refuse_unsupported(body)
    served = resolve(body.model)
    user_input, before, after = _input_of(body.messages)
    request = await render_async(served, user_input, body.stops(), before, after)
    max_tokens = body.max_completion_tokens or body.max_tokens
    params = _params(body, max_tokens)
    completion_id = "chatcmpl-" + uuid.uuid4().hex
    created = int(time.time())
    head = {"id": completion_id, "created": created, "model": body.model, "system_fingerprint": f"foster-{served.bundle.id}"}

    if not body.stream:
        result, target_s = await _complete(served, request, params, body.n)
        texts = [_finalize(served, t) for t in result.texts]
        _shadow(served, user_input, texts[0], params["max_tokens"])
        return JSONResponse(
            {
                **head,
                "object": "chat.completion",
                "choices": [
                    {"index": i, "message": {"role": "assistant", "content": t}, "logprobs": None, "finish_reason": "stop"}
                    for i, t in enumerate(texts)
                ],
                "usage": {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                          "total_tokens": result.prompt_tokens + result.completion_tokens},
            },
            headers=_headers(served, target_s, total_start, result.recalled),
        )

    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(index: int, delta: dict, finish: str | None = None) -> bytes:
        return _sse({**head, "object": "chat.completion.chunk",
                     "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}]})

    if body.n > 1 or served.bundle.output_contract.format == "label":
        # several samples, or a label that must be normalized whole: answer first, then stream it
        result, _ = await _complete(served, request, params, body.n)
        texts = [_finalize(served, t) for t in result.texts]
        _shadow(served, user_input, texts[0], params["max_tokens"])

        async def buffered() -> AsyncIterator[bytes]:
            for i, text in enumerate(texts):
                yield chunk(i, {"role": "assistant", "content": ""})
                yield chunk(i, {"content": text})
                yield chunk(i, {}, "stop")
            if include_usage:
                yield _sse({**head, "object": "chat.completion.chunk", "choices": [],
                            "usage": {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                                      "total_tokens": result.prompt_tokens + result.completion_tokens}})
            yield _sse("[DONE]")

        return _stream_response(buffered(), served)

    first, texts = await _open_stream(served, request, params)

    async def streamed() -> AsyncIterator[bytes]:
        answer: list[str] = []
        yield chunk(0, {"role": "assistant", "content": ""})
        try:
            if first:
                answer.append(first)
                yield chunk(0, {"content": first})
            async for piece in texts:
                answer.append(piece)
                yield chunk(0, {"content": piece})
        except Exception as exc:  # the client is mid-stream: say so in the stream, then end it
            yield _sse(error_body(502, f"target {served.target} failed mid-stream: {exc}", "target_error"))
            yield _sse("[DONE]")
            return
        yield chunk(0, {}, "stop")
        if include_usage:
            yield _sse({**head, "object": "chat.completion.chunk", "choices": [],
                        "usage": {"prompt_tokens": 0, "completion_tokens": len(answer), "total_tokens": len(answer)}})
        yield _sse("[DONE]")
        _shadow(served, user_input, "".join(answer), params["max_tokens"])

    return _stream_response(streamed(), served)


@router.post("/completions", summary="Text completion from a deployed bundle (OpenAI-compatible)", responses=ERRORS)
async def completions(body: CompletionRequest):
    total_start = time.perf_counter()
    refuse_unsupported(body)
    served = resolve(body.model)
    inputs = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
    if not inputs:
        raise ApiError(400, "invalid request: prompt: give one input or a list of inputs", code="invalid_request_error", param="prompt")
    if len(inputs) > 16:
        raise ApiError(400, "invalid request: prompt: at most 16 inputs per request", code="invalid_request_error", param="prompt")
    params = _params(body, body.max_tokens)
    completion_id = "cmpl-" + uuid.uuid4().hex
    head = {"id": completion_id, "created": int(time.time()), "model": body.model,
            "system_fingerprint": f"foster-{served.bundle.id}"}

    def choice(index: int, text: str, finish: str | None) -> dict:
        return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}

    if body.stream and body.n == 1 and len(inputs) == 1 and served.bundle.output_contract.format != "label":
        request = await render_async(served, inputs[0], body.stops())
        first, texts = await _open_stream(served, request, params)

        async def streamed() -> AsyncIterator[bytes]:
            answer: list[str] = []
            prefix = inputs[0] if body.echo else ""
            try:
                if first or prefix:
                    answer.append(first or "")
                    yield _sse({**head, "object": "text_completion", "choices": [choice(0, prefix + (first or ""), None)]})
                async for piece in texts:
                    answer.append(piece)
                    yield _sse({**head, "object": "text_completion", "choices": [choice(0, piece, None)]})
            except Exception as exc:
                yield _sse(error_body(502, f"target {served.target} failed mid-stream: {exc}", "target_error"))
                yield _sse("[DONE]")
                return
            yield _sse({**head, "object": "text_completion", "choices": [choice(0, "", "stop")]})
            yield _sse("[DONE]")
            _shadow(served, inputs[0], "".join(answer), params["max_tokens"])

        return _stream_response(streamed(), served)

    choices: list[dict] = []
    prompt_tokens = completion_tokens = 0
    target_s = 0.0
    recalled = True
    for i, user_input in enumerate(inputs):
        request = await render_async(served, user_input, body.stops())
        result, seconds = await _complete(served, request, params, body.n)
        recalled = recalled and result.recalled
        texts = [_finalize(served, t) for t in result.texts]
        _shadow(served, user_input, texts[0], params["max_tokens"])
        prefix = user_input if body.echo else ""
        choices += [choice(i * body.n + j, prefix + t, "stop") for j, t in enumerate(texts)]
        prompt_tokens += result.prompt_tokens
        completion_tokens += result.completion_tokens
        target_s += seconds
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
             "total_tokens": prompt_tokens + completion_tokens}

    if not body.stream:
        return JSONResponse({**head, "object": "text_completion", "choices": choices, "usage": usage},
                            headers=_headers(served, target_s, total_start, recalled))

    async def buffered() -> AsyncIterator[bytes]:
        for c in choices:
            yield _sse({**head, "object": "text_completion", "choices": [{**c, "finish_reason": None}]})
            yield _sse({**head, "object": "text_completion", "choices": [choice(c["index"], "", "stop")]})
        yield _sse("[DONE]")

    return _stream_response(buffered(), served)


def _model_card(deployment: Deployment) -> dict:
    served = deployment.served
    return {"id": deployment.name, "object": "model", "created": int(deployment.created_at or time.time()),
            "owned_by": "foster", "bundle_id": deployment.bundle_id, "target": deployment.target,
            "version": deployment.active, "shadowed_by": deployment.shadow.teacher if deployment.shadow else None,
            "run_id": served.run_id if served else None}


@router.get("/models", summary="Deployment names this server answers for (OpenAI-compatible)")
async def list_models():
    """Deployments by name (a bundle id is still accepted as `model`, but not listed: names are
    what clients configure)."""
    return {"object": "list", "data": [_model_card(d) for d in deployment_store().all()]}


@router.get("/models/{model:path}", summary="One deployment as an OpenAI model (models.retrieve)",
            responses={404: ERRORS[404]})
async def retrieve_model(model: str = Path(max_length=300, description="a deployment name (or a bundle id)")):
    deployment = deployment_store().get(model)
    if deployment is not None:
        return _model_card(deployment)
    entry = catalog().find(model)
    if entry is None:
        raise ApiError(404, f"The model `{model}` does not exist: name a deployment (GET /v1/models)",
                       code="model_not_found", param="model")
    return {"id": entry.id, "object": "model", "created": int(entry.mtime), "owned_by": "foster",
            "bundle_id": entry.id, "target": entry.targets[0] if entry.targets else None}
