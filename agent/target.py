"""Asking a target through a bundle: the one rendering path shared by evaluation, optimization and serving."""
from __future__ import annotations

import os
from collections.abc import Callable

from foster.agent.local.catalog import PROVIDER, embedded


def is_completion(model: str) -> bool:
    """Base (non-chat) models are asked completion-style: the bundle renders a plain few-shot prompt.
    Which embedded models are base models is the catalog's; FOSTER_COMPLETION_TARGETS adds others."""
    extra = {m.strip() for m in os.environ.get("FOSTER_COMPLETION_TARGETS", "").split(",") if m.strip()}
    if model in extra:
        return True
    entry = embedded(model)
    return model.startswith(PROVIDER + "/") and entry is not None and not entry.chat


def render_request(bundle, model: str, user_input: str) -> dict:
    """The exact request a bundle produces for a model: messages for chat targets, a prompt for base ones."""
    if is_completion(model):
        return {"prompt": bundle.prompt(user_input), "stop": list(bundle.stop)}
    return {"messages": bundle.messages(user_input)}


def ask(bundle, model: str, user_input: str, complete: Callable | None = None, **kw):
    """One target call through the bundle; `complete` is the gateway's (or a run's capped) complete().
    An input the bundle recalls (close enough to a recorded one, `Bundle.recall`) is answered with the
    recorded answer and no call: every sample is that answer, as serving returns it."""
    recalled = bundle.recall(user_input)
    if recalled is not None:
        from foster.agent.gateway import Completion

        return Completion(model=model, texts=[recalled] * max(1, int(kw.get("n") or 1)), recalled=True)
    if complete is None:
        from foster.agent.gateway import complete
    req = render_request(bundle, model, user_input)
    if "stop" in req and kw.get("stop"):
        req["stop"] = list(dict.fromkeys(req["stop"] + list(kw.pop("stop"))))
    return complete(model, **req, **kw)
