"""decide: threshold met, still improving, or plateau below threshold; and where the run goes next."""
from __future__ import annotations

from typing import Literal

from langgraph.runtime import Runtime

from foster.agent.context import RunContext
from foster.agent.probe import can_add_probes
from foster.agent.state import State

Next = Literal["probe", "lora", "bundle"]


def verdict(history: list[float], threshold: float, rnd: int, max_rounds: int, min_gain: float,
            stop_reason: str | None = None, no_new_probes: str | None = None) -> str:
    """`no_new_probes` says why a further round could add no probe: then none runs (it would re-optimize
    and re-evaluate the same probes to the same figures) and the verdict is decided without it."""
    best = max(history) if history else 0.0
    if stop_reason:
        return f"stopped: {stop_reason}"
    if best >= threshold:
        return "threshold met"
    gained = len(history) < 2 or history[-1] - max(history[:-1]) >= min_gain
    if rnd < max_rounds and gained and not no_new_probes:
        return "still improving"
    return "plateau below threshold"


def next_node(verdict_: str | None, lora_fallback: bool) -> Next:
    if verdict_ == "still improving":
        return "probe"
    if verdict_ == "plateau below threshold" and lora_fallback:
        return "lora"
    return "bundle"


def decide(state: State, runtime: Runtime[RunContext]) -> dict:
    """Name the run's verdict from the fidelity history, and the node that follows."""
    c = runtime.context.config
    history, rnd = state.get("history") or [], state.get("round", 1)
    blocked = can_add_probes(c, len(state.get("probes") or []))
    v = verdict(history, c.threshold, rnd, c.max_rounds, c.min_gain, state.get("stop_reason"), blocked)
    reason = None
    if v == "plateau below threshold" and blocked and verdict(history, c.threshold, rnd, c.max_rounds,
                                                               c.min_gain) == "still improving":
        reason = f"no further round: {blocked}"
        runtime.context.registry.append_event(runtime.context.run_id, "decide", "progress", reason)
    return {"verdict": v, "verdict_reason": reason, "next": next_node(v, c.lora_fallback)}


def route(state: State) -> Next:
    # The choice is made in decide and kept in state: LangGraph runs this router without a Runtime when a
    # finished run is forked with update_state(..., as_node="decide") (`foster lora RUN`).
    return state.get("next") or next_node(state.get("verdict"), True)
