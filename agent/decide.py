"""decide: threshold met, still improving, or plateau below threshold."""
from __future__ import annotations

from typing import Literal

from foster.agent.context import context


def verdict(history: list[float], threshold: float, rnd: int, max_rounds: int, min_gain: float,
            stop_reason: str | None = None) -> str:
    best = max(history) if history else 0.0
    if stop_reason:
        return f"stopped: {stop_reason}"
    if best >= threshold:
        return "threshold met"
    gained = len(history) < 2 or history[-1] - max(history[:-1]) >= min_gain
    if rnd < max_rounds and gained:
        return "still improving"
    return "plateau below threshold"


def decide(state: dict) -> dict:
    """Name the run's verdict from the fidelity history."""
    c = context(state).config
    return {"verdict": verdict(state.get("history") or [], c.threshold, state.get("round", 1), c.max_rounds,
                               c.min_gain, state.get("stop_reason"))}


def route(state: dict) -> Literal["probe", "lora", "bundle"]:
    v = state.get("verdict")
    if v == "still improving":
        return "probe"
    if v == "plateau below threshold" and (state.get("config") or {}).get("lora_fallback", True):
        return "lora"
    return "bundle"
