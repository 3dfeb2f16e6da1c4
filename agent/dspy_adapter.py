"""DSPy speaking the bundle's language: what an optimizer tries is exactly what a bundle ships.

`BundleAdapter` renders a predictor's instructions and demos as a `Bundle` and sends that bundle's
own `messages()` (chat targets) or `prompt()` (base targets), so there is one renderer for DSPy,
evaluation and serving. DSPy's ChatAdapter markers (`[[ ## answer ## ]]`) are never shown to the
target: a 135M model does not keep them and its answers came out as noise.

`gateway_lm` is a `dspy.LM` whose calls go through `agent.gateway.complete` (litellm, the `local/`
provider, the run's ledger), counted by a `CallCounter` that can also refuse calls past a budget.
"""

from __future__ import annotations

import contextvars
import json
import re
import threading
from typing import Any

import dspy
from dspy.lm15 import Message, Response, Usage, response_to_events

from foster.agent.program import ANSWER, INPUT  # the one program shape: `input -> answer`
from foster.prompts.bundle import Bundle, Example

__all__ = [
    "ANSWER",
    "INPUT",
    "BundleAdapter",
    "CallCounter",
    "GatewayEngine",
    "PlainTextAdapter",
    "gateway_lm",
    "render_bundle",
]


def default_instructions(signature: Any) -> str:
    """The text DSPy puts in a signature that was given no instructions."""
    inputs = ", ".join(f"`{name}`" for name in signature.input_fields)
    outputs = ", ".join(f"`{name}`" for name in signature.output_fields)
    return f"Given the fields {inputs}, produce the fields {outputs}."


def instructions_of(signature: Any) -> str:
    """A signature's instructions as a bundle's system prompt ("" for DSPy's placeholder)."""
    text = signature.instructions or ""
    return "" if text.strip() == default_instructions(signature) else text


def demo_examples(demos: list[Any]) -> list[Example]:
    """DSPy demos (Examples or dicts with input and answer) as bundle examples; incomplete ones dropped."""
    examples = []
    for demo in demos or []:
        get = demo.get if hasattr(demo, "get") else (lambda key, default=None, d=demo: getattr(d, key, default))
        source, output = get(INPUT, None), get(ANSWER, None)
        if source is not None and output is not None:
            examples.append(Example(input=str(source), output=str(output)))
    return examples


def render_bundle(base: Bundle, instructions: str, demos: list[Any]) -> Bundle:
    """`base` with these instructions as its system prompt and, unless its examples are retrieved
    per input (knn), these demos as its fixed examples. A cheap copy: it is made on every call."""
    update: dict[str, Any] = {"system_prompt": instructions}
    if base.selection.kind != "knn":
        update["examples"] = demo_examples(demos)
    return base.model_copy(update=update)


class BundleAdapter(dspy.Adapter):
    """Renders the `input -> answer` predictor as the bundle's plain messages (or completion prompt)
    and reads the whole completion as the answer. Any other signature (an optimizer's own proposer
    or reflection modules) goes to `fallback`, DSPy's ChatAdapter by default."""

    def __init__(self, base: Bundle, *, completion: bool = False, fallback: dspy.Adapter | None = None):
        super().__init__()
        self.base = base
        self.completion = completion
        self.fallback = fallback or dspy.ChatAdapter()
        self._neighbours: dict[str, list[Example]] = {}
        # DSPy formats in its own worker threads: the run's context (its remote embedder) is restored there
        self._context = contextvars.copy_context()

    @staticmethod
    def handles(signature: Any) -> bool:
        return list(signature.input_fields) == [INPUT] and list(signature.output_fields) == [ANSWER]

    def bundle(self, signature: Any, demos: list[Any]) -> Bundle:
        """The bundle this predictor state ships as."""
        return render_bundle(self.base, instructions_of(signature), demos)

    def _options(self, signature: Any, demos: list[Any], lm_kwargs: dict[str, Any]) -> dict[str, Any]:
        if not self.completion:
            return lm_kwargs
        stop = list(self.bundle(signature, demos).stop)
        extra = lm_kwargs.get("stop") or []
        extra = [extra] if isinstance(extra, str) else list(extra)
        return {**lm_kwargs, "stop": list(dict.fromkeys(stop + extra))}

    def __call__(self, lm, lm_kwargs, signature, demos, inputs):
        if not self.handles(signature):
            return self.fallback(lm, lm_kwargs, signature, demos, inputs)
        return super().__call__(lm, self._options(signature, demos, lm_kwargs), signature, demos, inputs)

    async def acall(self, lm, lm_kwargs, signature, demos, inputs):
        if not self.handles(signature):
            return await self.fallback.acall(lm, lm_kwargs, signature, demos, inputs)
        return await super().acall(lm, self._options(signature, demos, lm_kwargs), signature, demos, inputs)

    def _retrieved(self, bundle: Bundle, user_input: str) -> Bundle:
        """A knn bundle with this input's neighbours (chosen by the bundle itself, once per input:
        optimizers ask the same probes again and again) as fixed examples: it renders the same."""
        if bundle.selection.kind != "knn":
            return bundle
        if user_input not in self._neighbours:
            self._neighbours[user_input] = self._context.copy().run(self.base.select_examples, user_input)
        fixed = bundle.selection.model_copy(update={"kind": "fixed"})
        return bundle.model_copy(update={"examples": self._neighbours[user_input], "selection": fixed})

    def format(self, signature, demos, inputs) -> list[dict[str, Any]]:
        user_input = str(inputs[INPUT])
        bundle = self._retrieved(self.bundle(signature, demos), user_input)
        if self.completion:
            # One user message holding the completion prompt; GatewayEngine(completion=True) sends it raw.
            return [{"role": "user", "content": bundle.prompt(user_input)}]
        return bundle.messages(user_input)

    def parse(self, signature, completion: str) -> dict[str, Any]:
        return {ANSWER: completion}

    def _call_postprocess(self, processed_signature, original_signature, outputs, lm, lm_kwargs):
        if not self.handles(original_signature):
            return super()._call_postprocess(processed_signature, original_signature, outputs, lm, lm_kwargs)
        # An empty answer is an answer (it disagrees with the teacher); DSPy would raise on it.
        texts = [(o.get("text") if isinstance(o, dict) else o) or "" for o in outputs]
        return [self.parse(original_signature, text) for text in texts]


class PlainTextAdapter(dspy.Adapter):
    """For an optimizer's own one-output modules (GEPA's instruction proposer, MIPROv2's proposers)
    run on a small local model: the task as the system message, the inputs as plain labelled text,
    and the whole reply (code fences stripped) as the output. Small models keep neither DSPy's
    `[[ ## field ## ]]` markers nor JSON; signatures with several outputs go to ChatAdapter."""

    def __init__(self, fallback: dspy.Adapter | None = None):
        super().__init__()
        self.fallback = fallback or dspy.ChatAdapter()

    @staticmethod
    def handles(signature: Any) -> bool:
        return len(signature.output_fields) == 1

    def __call__(self, lm, lm_kwargs, signature, demos, inputs):
        if not self.handles(signature):
            return self.fallback(lm, lm_kwargs, signature, demos, inputs)
        return super().__call__(lm, lm_kwargs, signature, demos, inputs)

    async def acall(self, lm, lm_kwargs, signature, demos, inputs):
        if not self.handles(signature):
            return await self.fallback.acall(lm, lm_kwargs, signature, demos, inputs)
        return await super().acall(lm, lm_kwargs, signature, demos, inputs)

    @staticmethod
    def _text(value: Any) -> str:
        if isinstance(value, str):
            return value
        if isinstance(value, (list, tuple)) and all(isinstance(v, dict) for v in value):
            return "\n\n".join(f"Example {i}:\n" + PlainTextAdapter._text(v) for i, v in enumerate(value, 1))
        if isinstance(value, dict):
            return "\n".join(f"{key}: {PlainTextAdapter._text(item)}" for key, item in value.items())
        return json.dumps(value, ensure_ascii=False, default=str)

    def _user(self, signature, values: dict[str, Any]) -> str:
        parts = []
        for name, info in signature.input_fields.items():
            if name in values and values[name] is not None:
                label = (info.json_schema_extra or {}).get("desc") or name
                parts.append(f"{label}\n{self._text(values[name])}")
        (output, info), = signature.output_fields.items()
        desc = (info.json_schema_extra or {}).get("desc") or output
        parts.append(f"Reply with the {output.replace('_', ' ')} only ({desc}).")
        return "\n\n".join(parts)

    def format(self, signature, demos, inputs) -> list[dict[str, Any]]:
        (output,) = signature.output_fields
        messages = [{"role": "system", "content": signature.instructions}]
        for demo in demos or []:
            if demo.get(output) is not None:
                messages.append({"role": "user", "content": self._user(signature, dict(demo))})
                messages.append({"role": "assistant", "content": str(demo[output])})
        messages.append({"role": "user", "content": self._user(signature, inputs)})
        return messages

    def parse(self, signature, completion: str) -> dict[str, Any]:
        (output,) = signature.output_fields
        text = completion.strip()
        fenced = re.search(r"```[^\n]*\n(.*?)(?:```|$)", text, re.DOTALL)
        if fenced and fenced.group(1).strip():
            text = fenced.group(1).strip()
        return {output: text}


class CallCounter:
    """Calls made through one or more engines. Past `limit` the model is not called and the answer
    is empty (it scores as a disagreement), so no optimizer can outspend its budget. A counter with
    a `parent` also counts, and is limited, there (the target's program and proposer calls share
    one budget)."""

    def __init__(self, limit: int | None = None, parent: CallCounter | None = None):
        self.limit = limit
        self.parent = parent
        self.calls = 0
        self.refused = 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            allowed = (self.limit is None or self.calls < self.limit) and (self.parent is None or self.parent.take())
            if allowed:
                self.calls += 1
            else:
                self.refused += 1
            return allowed

    @property
    def remaining(self) -> int | None:
        own = None if self.limit is None else max(0, self.limit - self.calls)
        above = None if self.parent is None else self.parent.remaining
        return above if own is None else own if above is None else min(own, above)


def _system_text(system: Any) -> str | None:
    if system is None or isinstance(system, str):
        return system
    return "".join(getattr(part, "text", "") or "" for part in system)


class GatewayEngine:
    """A DSPy engine (`complete(Request) -> Response`) that calls `agent.gateway.complete`.

    `completion=True` sends the single user message as a raw completion prompt (base targets).
    The caller's context (the run's ledger) is captured here and restored in DSPy's worker threads.
    """

    def __init__(self, model: str, *, completion: bool = False, counter: CallCounter | None = None):
        self.model = model
        self.completion = completion
        self.counter = counter or CallCounter()
        self.errors: list[str] = []
        self._context = contextvars.copy_context()

    def complete(self, request) -> Response:
        config = request.config
        options: dict[str, Any] = {
            "temperature": 0.0 if config.temperature is None else float(config.temperature),
            "max_tokens": config.max_tokens or 64,
        }
        if config.top_p is not None:
            options["top_p"] = float(config.top_p)
        if config.stop:
            options["stop"] = list(config.stop)
        if config.seed is not None:
            options["seed"] = int(config.seed)
        messages = []
        system = _system_text(request.system)
        if system is not None:
            messages.append({"role": "system", "content": system})
        messages.extend({"role": m.role, "content": m.text or ""} for m in request.messages)

        text, prompt_tokens, completion_tokens = "", 0, 0
        if self.counter.take():
            from foster.agent import gateway

            if self.completion:
                call = dict(prompt="\n\n".join(m["content"] for m in messages))
            else:
                call = dict(messages=messages)
            result = self._context.copy().run(gateway.complete, self.model, **call, **options)
            text, prompt_tokens, completion_tokens = result.text, result.prompt_tokens, result.completion_tokens
        return Response(
            id=None,
            model=self.model,
            message=Message.assistant(text),
            finish_reason="stop",
            usage=Usage(input_tokens=prompt_tokens, output_tokens=completion_tokens),
        )

    def stream(self, request):
        return response_to_events(self.complete(request))

    def close(self) -> None:
        pass


def gateway_lm(
    model: str,
    *,
    completion: bool = False,
    temperature: float = 0.0,
    max_tokens: int = 24,
    counter: CallCounter | None = None,
) -> dspy.LM:
    """A `dspy.LM` for `model` whose every call goes through the gateway, uncached and unretried
    (the gateway retries remote models itself), counted by `counter`."""
    from foster.agent.gateway import check_model

    check_model(model)
    engine = GatewayEngine(model, completion=completion, counter=counter)
    return dspy.LM(model, engine=engine, cache=False, num_retries=0, temperature=temperature, max_tokens=max_tokens)
