"""How a target's answer is scored against the teacher's: one registry for evaluation, the bench and the UI.

A scorer is registered under a name (`exact`, `embedding`, `judge`) with `@scorer(name)` and
scores a batch: `fn(answers, refs, inputs, how) -> list[float]` in 0..1. `resolve("auto", ...)`
picks exact match for closed answers and, for free text, the judge when one is configured, else
the embedding. `exact` says which interval a fidelity gets (Wilson for exact match, bootstrap
over probes for similarities).
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SCORERS", "Scorer", "Scoring", "resolve", "scorer"]


@dataclass
class Scoring:
    """What a scorer may need besides the answers: the answer kind and inventory (normalization),
    the judge model and how to call it (a run's `ctx.complete`, so calls land on its ledger)."""

    kind: str = "closed"
    inventory: list[str] = field(default_factory=list)
    judge: str | None = None
    complete: Callable[..., Any] | None = None


ScoreFn = Callable[[list[str], list[str], list[str], Scoring], list[float]]


@dataclass(frozen=True)
class Scorer:
    name: str
    fn: ScoreFn
    describe: Callable[[Scoring], str]
    exact: bool  # scores are 0/1 matches: the interval is Wilson's

    def scores(self, answers: list[str], refs: list[str], inputs: list[str] | None = None,
               how: Scoring | None = None) -> list[float]:
        how = how or Scoring()
        return self.fn(list(answers), list(refs), list(inputs or [""] * len(answers)), how)

    def method(self, how: Scoring | None = None) -> str:
        return self.describe(how or Scoring())


SCORERS: dict[str, Scorer] = {}


def scorer(name: str, describe: Callable[[Scoring], str], exact: bool = False) -> Callable[[ScoreFn], ScoreFn]:
    """Register `fn(answers, refs, inputs, how) -> scores` under `name`."""

    def register(fn: ScoreFn) -> ScoreFn:
        SCORERS[name] = Scorer(name, fn, describe, exact)
        return fn

    return register


def resolve(method: str, kind: str, judge: str | None = None) -> Scorer:
    """The scorer a `--fidelity` value names; "auto" = exact for closed answers, judge or embedding for free text."""
    if method == "auto":
        method = "exact" if kind == "closed" else ("judge" if judge else "embedding")
    if method not in SCORERS:
        raise ValueError(f"unknown fidelity method {method!r}: choose auto or one of {', '.join(SCORERS)}")
    if method == "judge" and not judge:
        raise ValueError("--fidelity judge needs --judge MODEL")
    return SCORERS[method]


@scorer("exact", lambda how: "exact match after normalization", exact=True)
def _exact(answers, refs, inputs, how):
    from foster.agent import metrics

    return [float(metrics.normalize(a, how.inventory, how.kind) == r) for a, r in zip(answers, refs)]


@scorer("embedding", lambda how: "embedding cosine (all-MiniLM-L6-v2) to the teacher's greedy answer")
def _embedding(answers, refs, inputs, how):
    from foster.agent import metrics

    return metrics.text_similarity(answers, refs)


@scorer("judge", lambda how: f"judge:{how.judge} (0-10 scaled to 0-1)")
def _judge(answers, refs, inputs, how):
    from foster.prompts.templates import render

    complete = how.complete
    if complete is None:
        from foster.agent.gateway import complete
    scores = []
    for x, a, r in zip(inputs, answers, refs):
        res = complete(how.judge, messages=[{"role": "user", "content": render(
            "judge", "score", input=x, reference=r, candidate=a)}], temperature=0, max_tokens=4)
        m = re.search(r"\d+(\.\d+)?", res.texts[0])
        scores.append(min(1.0, float(m.group()) / 10) if m else 0.0)
    return scores
