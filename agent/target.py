"""Asking a target through a bundle: the one rendering path shared by evaluation, optimization and serving."""
from __future__ import annotations

import os
from typing import Callable

# Base (non-chat) models are served completion-style: the bundle renders a plain few-shot prompt.
BASE_MODELS = {"local/gemma3-270m"}


def is_completion(model: str) -> bool:
    extra = {m.strip() for m in os.environ.get("FOSTER_COMPLETION_TARGETS", "").split(",") if m.strip()}
    return model in BASE_MODELS or model in extra or model.split("@")[0] in BASE_MODELS


def render_request(bundle, model: str, user_input: str) -> dict:
    """The exact request a bundle produces for a model: messages for chat targets, a prompt for base ones."""
    if is_completion(model):
        return {"prompt": bundle.prompt(user_input), "stop": list(bundle.stop)}
    return {"messages": bundle.messages(user_input)}


def ask(bundle, model: str, user_input: str, complete: Callable | None = None, **kw):
    """One target call through the bundle; `complete` is the gateway's (or a run's capped) complete()."""
    if complete is None:
        from foster.agent.gateway import complete
    req = render_request(bundle, model, user_input)
    if "stop" in req and kw.get("stop"):
        req["stop"] = list(dict.fromkeys(req["stop"] + list(kw.pop("stop"))))
    return complete(model, **req, **kw)
