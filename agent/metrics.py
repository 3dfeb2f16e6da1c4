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


# --- intervals (DESIGN.md: every fidelity carries n and a 95 % interval) ------------------------------

Z95 = 1.959963984540054
BOOTSTRAP_RESAMPLES = 2000


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion: honest at n = 12 and at 0 or n successes, where the
    normal approximation collapses to a zero-width interval."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _resample_means(values: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(BOOTSTRAP_RESAMPLES, len(values)))
    return values[idx].mean(axis=1)


def bootstrap(scores, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap over probes of the mean score (similarity fidelities)."""
    values = np.asarray(list(scores), dtype=float)
    if len(values) == 0:
        return 0.0, 1.0
    means = _resample_means(values, seed)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def fidelity_interval(scores, exact: bool, seed: int = 0) -> dict:
    """{value, n, low, high, method}: Wilson for exact match, bootstrap over probes for similarity."""
    values = [float(s) for s in scores]
    n = len(values)
    if exact:
        low, high = wilson(sum(1 for s in values if s >= 0.5), n)
        method = "wilson"
    else:
        low, high = bootstrap(values, seed)
        method = "bootstrap"
    return {"value": round(mean(values), 4), "n": n, "low": round(low, 4), "high": round(high, 4), "method": method}


def ratio_interval(numerator, denominator, seed: int = 0) -> dict:
    """mean(numerator) / mean(denominator) with a 95 % percentile-bootstrap interval, each side resampled
    over its own probes: a fraction of the ceiling, where the ceiling is itself an estimate on the probes
    the teacher was sampled on (a few dozen), so its noise belongs in the interval too."""
    x, y = np.asarray(list(numerator), dtype=float), np.asarray(list(denominator), dtype=float)
    if len(x) == 0 or len(y) == 0 or y.mean() <= 0:
        return {"value": None, "n": len(x), "n_ceiling": len(y), "low": None, "high": None, "method": "bootstrap ratio"}
    num, den = _resample_means(x, seed), _resample_means(y, seed + 1)
    ratios = num / np.where(den > 0, den, np.nan)
    ratios = ratios[~np.isnan(ratios)]
    return {"value": round(float(x.mean() / y.mean()), 4), "n": len(x), "n_ceiling": len(y),
            "low": round(float(np.percentile(ratios, 2.5)), 4), "high": round(float(np.percentile(ratios, 97.5)), 4),
            "method": "bootstrap ratio (each side resampled over its own probes)"}


def paired_difference(a, b, seed: int = 0) -> dict:
    """mean(a - b) over the same probes with a paired bootstrap 95 % interval: two variants (or a
    variant and the copy baseline) are compared on the probes they share, not by their two
    separate intervals."""
    x, y = np.asarray(list(a), dtype=float), np.asarray(list(b), dtype=float)
    if len(x) != len(y):
        raise ValueError(f"paired difference needs the same probes: {len(x)} vs {len(y)} scores")
    if len(x) == 0:
        return {"value": 0.0, "n": 0, "low": -1.0, "high": 1.0, "method": "paired bootstrap"}
    d = x - y
    means = _resample_means(d, seed)
    return {"value": round(float(d.mean()), 4), "n": len(d), "low": round(float(np.percentile(means, 2.5)), 4),
            "high": round(float(np.percentile(means, 97.5)), 4), "method": "paired bootstrap"}


def fmt_interval(iv: dict | None, nd: int = 3) -> str:
    """'0.825 [0.68, 0.91] n=40' — how every fidelity is printed."""
    if not iv:
        return "–"
    return f"{iv['value']:.{nd}f} [{iv['low']:.2f}, {iv['high']:.2f}] n={iv['n']}"
