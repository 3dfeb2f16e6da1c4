"""Real or synthetic? A logistic regression on MiniLM embeddings decides which generated inputs to keep.

Trans-LoRA keeps the synthetic inputs a discriminator cannot tell from the real ones. Each candidate
is scored by a model that never saw it (k-fold over the candidates), so a candidate is not judged
by a boundary drawn around itself.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Judgement:
    text: str
    p_real: float
    kept: bool


class Discriminator:
    """P(real | text) from a balanced logistic regression on the texts' embeddings."""

    def __init__(self, c: float = 4.0, seed: int = 0):
        self.c, self.seed = c, seed
        self.model = None

    def fit(self, real: list[str], synthetic: list[str]) -> Discriminator:
        from foster.prompts.embedding import embed

        return self.fit_vectors(embed(real), embed(synthetic))

    def fit_vectors(self, real: np.ndarray, synthetic: np.ndarray) -> Discriminator:
        from sklearn.linear_model import LogisticRegression

        x = np.vstack([real, synthetic])
        y = np.r_[np.ones(len(real)), np.zeros(len(synthetic))]
        self.model = LogisticRegression(C=self.c, class_weight="balanced", max_iter=2000,
                                        random_state=self.seed).fit(x, y)
        return self

    def p_real(self, texts: list[str]) -> np.ndarray:
        from foster.prompts.embedding import embed

        return self.p_real_vectors(embed(texts))

    def p_real_vectors(self, vectors: np.ndarray) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("fit the discriminator first")
        return self.model.predict_proba(vectors)[:, 1]


def judge(real: list[str], candidates: list[str], threshold: float = 0.5, folds: int = 5,
          seed: int = 0) -> list[Judgement]:
    """Keep the candidates a discriminator, trained on the real inputs against the *other* candidates,
    still scores as real (P(real) >= threshold)."""
    from foster.prompts.embedding import embed

    if not candidates:
        return []
    if len(real) < 2:  # nothing to learn "real" from: keep everything, say so with p_real = 1
        return [Judgement(t, 1.0, True) for t in candidates]
    r, s = embed(real), embed(candidates)
    k = max(2, min(folds, len(candidates)))
    order = np.random.default_rng(seed).permutation(len(candidates))
    scores = np.zeros(len(candidates))
    for f in range(k):
        held = order[f::k]
        rest = np.setdiff1d(order, held)
        if len(rest) == 0:
            scores[held] = 1.0
            continue
        d = Discriminator(seed=seed).fit_vectors(r, s[rest])
        scores[held] = d.p_real_vectors(s[held])
    return [Judgement(t, round(float(p), 4), bool(p >= threshold)) for t, p in zip(candidates, scores)]
