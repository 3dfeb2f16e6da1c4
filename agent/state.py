"""What a caller gives the graph (InputState) and what the graph carries (State)."""
from __future__ import annotations

from typing import Any, TypedDict


class InputState(TypedDict):
    run_id: str
    config: dict


class State(InputState, total=False):
    round: int
    probes: list[dict]  # {id, text, kind, split, round, gold}
    teacher: dict[str, list[dict]]  # probe id -> [{t, i, output}]
    spec: dict  # the behavioural spec from characterize
    candidates: list[dict]  # mined variants: {name, path}
    variants: dict[str, list[dict]]  # target -> [{name, path}] incl. optimized ones
    evaluation: dict  # the latest report
    history: list[float]  # best held-out fidelity per round
    best: dict  # {target, variant, path, fidelity}
    verdict: str
    stop_reason: str | None
    usage: dict[str, dict[str, Any]]
    node_seconds: dict[str, float]
