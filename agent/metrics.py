"""The shared definitions: answer distributions, ceiling, agreement, calibration gap (see DESIGN.md)."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np


def normalize(text: str, answers: list[str] | None = None, kind: str = "label") -> str:
    """The same normalization serving and evaluation use (prompts' normalize_answer)."""
    from foster.prompts.bundle import OutputContract, normalize_answer

    return normalize_answer(text or "", OutputContract(format="label" if kind == "closed" or kind == "label" else "text",
                                                      answers=answers or []))


def distribution(answers: list[str]) -> dict[str, float]:
    if not answers:
        return {}
    c = Counter(answers)
    n = sum(c.values())
    return {a: k / n for a, k in c.most_common()}


def mode(dist: dict[str, float]) -> str:
    # ties break on the answer text so the mode is stable across runs
    return max(sorted(dist), key=lambda a: dist[a]) if dist else ""


def entropy(dist: dict[str, float]) -> float:
    return -sum(p * math.log2(p) for p in dist.values() if p > 0)


def self_agreement(dist: dict[str, float]) -> float:
    """Σ p²: the chance two samples from the distribution agree."""
    return sum(p * p for p in dist.values())


def sampled_agreement(t: dict[str, float], s: dict[str, float]) -> float:
    """The chance a teacher sample and a target sample agree."""
    return sum(p * s.get(a, 0.0) for a, p in t.items())


def js_divergence(t: dict[str, float], s: dict[str, float]) -> float:
    """Jensen–Shannon divergence in bits (0 identical … 1 disjoint)."""
    keys = set(t) | set(s)
    if not keys:
        return 0.0
    m = {k: 0.5 * (t.get(k, 0) + s.get(k, 0)) for k in keys}

    def kl(p):
        return sum(p.get(k, 0) * math.log2(p.get(k, 0) / m[k]) for k in keys if p.get(k, 0) > 0)

    return 0.5 * kl(t) + 0.5 * kl(s)


def cosine_matrix(a: list[str], b: list[str]) -> np.ndarray:
    from foster.prompts.embedding import embed

    return embed(a) @ embed(b).T


def text_similarity(a: list[str], b: list[str]) -> list[float]:
    """Pairwise embedding cosine of a[i] with b[i] (free-text fidelity)."""
    if not a:
        return []
    from foster.prompts.embedding import embed

    ea, eb = embed(a), embed(b)
    return [float(max(0.0, x)) for x in (ea * eb).sum(axis=1)]


def mean(xs) -> float:
    xs = list(xs)
    return float(sum(xs) / len(xs)) if xs else 0.0
