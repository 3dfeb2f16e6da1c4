"""Scripted fake models, served through the same `local/` provider path as real weights."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable

from foster.agent.local.backend import Backend, Generation, LocalRequest, truncate_at_stop


def _words(value: object) -> int:
    if isinstance(value, str):
        return len(value.split())
    return sum(len(str(m.get("content") or "").split()) for m in value)  # messages


class ScriptedBackend(Backend):
    """A fake model whose answer is `fn(request)`.

    `fn` takes either the `LocalRequest` (messages or prompt, temperature, top_p, max_tokens, stop,
    seed, sample_index) or, in the older four-argument form,
    `(messages_or_prompt, temperature, seed, sample_index)`. Stop strings are applied to what it
    returns, as a real model would stop there. `.calls` counts samples served; `.requests` keeps them.
    """

    def __init__(self, fn: Callable[..., str]):
        self.fn = fn
        self._positional = _positional_arity(fn) >= 4
        self._lock = threading.Lock()
        self.calls = 0
        self.requests: list[LocalRequest] = []

    def generate(self, request: LocalRequest) -> Generation:
        with self._lock:
            self.calls += 1
            self.requests.append(request)
        if self._positional:
            text = self.fn(request.messages_or_prompt, request.temperature, request.seed, request.sample_index)
        else:
            text = self.fn(request)
        text, _ = truncate_at_stop(str(text), request.stop)
        return Generation(
            text=text,
            prompt_tokens=_words(request.messages_or_prompt),
            completion_tokens=len(text.split()),
            finish_reason="stop",
        )


def _positional_arity(fn: Callable) -> int:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 1
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return 4
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)
