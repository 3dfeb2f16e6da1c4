"""The adapter scored exactly like a bundle, and the general-capability regression check.

The held-out score goes through agent.evaluate.evaluate_target with the adapter's bundle (the
rendering the adapter was trained on) on the `local/<target>@<adapter dir>` model: the same greedy
answers, normalisation, fidelity method, ceiling and calibration gap as every bundle in the report.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from foster.agent import metrics
from foster.agent.context import RunContext, stable_seed


class AdapterAnswerCache:
    """agent.evaluate.AnswerCache's interface, keyed to one adapter's weights: a retrained adapter in the
    same directory is never scored from the old one's answers."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict = json.loads(path.read_text()) if path.exists() else {}
        self.dirty = 0

    def get(self, key: str):
        return self.data.get(key)

    def put(self, key: str, value: dict) -> None:
        self.data[key] = value
        self.dirty += 1
        if self.dirty >= 20:
            self.flush()

    def flush(self) -> None:
        from foster.store.runs import write_json_atomic

        if self.dirty:
            write_json_atomic(self.path, self.data)
            self.dirty = 0


def weights_hash(adapter_dir: str | Path | None, model: str) -> str:
    h = hashlib.sha256(model.encode())
    if adapter_dir:
        for name in ("adapter_model.safetensors", "adapter.gguf"):
            p = Path(adapter_dir) / name
            if p.exists():
                h.update(p.read_bytes())
    return h.hexdigest()[:12]


def heldout(ctx: RunContext, job: Path, model: str, bundle_path: str, state: dict, adapter_dir: str | None) -> tuple[dict, list, dict]:
    """(summary, grid columns, grid answers) for the adapter model on the run's held-out probes."""
    from foster.agent.evaluate import evaluate_target

    cache = AdapterAnswerCache(job / f"answers-{weights_hash(adapter_dir, model)}.json")
    summary, columns, answers = evaluate_target(ctx, cache, model, [{"name": "lora", "path": bundle_path}],
                                                state["probes"], state["spec"])
    cache.flush()
    return summary, columns, answers


GENERAL_CATEGORIES = ("instructions", "reasoning", "formatting")


def general_prompts() -> list[tuple[str, str]]:
    """(category, prompt) for the fixed general set shipped as data (prompts/templates/general.yaml)."""
    import os

    from foster.prompts.templates import render

    # FOSTER_LORA_GENERAL_PER_CATEGORY: the first k of each category (a quick benchmark on a busy machine);
    # the report always states n
    k = int(os.environ.get("FOSTER_LORA_GENERAL_PER_CATEGORY", "0") or 0) or None
    return [(c, p) for c in GENERAL_CATEGORIES
            for p in [x.strip() for x in render("general", c).splitlines() if x.strip()][:k]]


def general_capability(ctx: RunContext, target: str, model: str, max_tokens: int = 48) -> dict:
    """Target + adapter against the plain target on the fixed general prompts, greedy, as agreement with
    the plain target's own answers (embedding cosine, bootstrap interval over prompts; exact match
    beside it), overall and per category. `cost_points` is what the adapter cost: 100 × (1 − agreement);
    the plain target's own T=0.7 sample against its greedy answer is the scale sampling noise alone gives, and
    `beyond_noise_points` the paired difference between the two (points the adapter moved past that noise)."""
    items = general_prompts()
    plain, adapted, sampled = [], [], []
    for n, (_, p) in enumerate(items):
        msgs = [{"role": "user", "content": p}]
        seed = stable_seed(ctx.config.seed, "lora-general-check", n)
        ask = lambda m, t=0.0: ctx.complete(m, messages=msgs, temperature=t, max_tokens=max_tokens,  # noqa: E731
                                            seed=seed).texts[0].strip()
        plain.append(ask(target))
        adapted.append(ask(model))
        sampled.append(ask(target, 0.7))
        ctx.progress("lora", n + 1, len(items), "general-capability check")
    sims = metrics.text_similarity(adapted, plain)
    own = metrics.text_similarity(sampled, plain)
    agreement = metrics.fidelity_interval(sims, exact=False, seed=ctx.config.seed)
    # what the adapter moved beyond what sampling alone moves: the plain target's own T=0.7 answer against its
    # greedy one, prompt by prompt; a positive figure is a change sampling noise does not explain
    beyond = metrics.paired_difference(own, sims, seed=ctx.config.seed)
    by_cat = {c: round(metrics.mean(s for (k, _), s in zip(items, sims) if k == c), 4) for c in GENERAL_CATEGORIES}
    return {"agreement": agreement["value"], "interval": [agreement["low"], agreement["high"]],
            "cost_points": round(100 * (1 - agreement["value"]), 1),
            "cost_interval": [round(100 * (1 - agreement["high"]), 1), round(100 * (1 - agreement["low"]), 1)],
            "beyond_noise_points": round(100 * beyond["value"], 1),
            "beyond_noise_interval": [round(100 * beyond["low"], 1), round(100 * beyond["high"], 1)],
            "by_category": by_cat,
            "exact": round(metrics.mean(a == b for a, b in zip(adapted, plain)), 4),
            # the scale to read it on: the plain target's own sample at T=0.7 against its greedy answer
            "plain_sampled_agreement": round(metrics.mean(own), 4),
            "n": len(items), "max_tokens": max_tokens,
            "method": "embedding cosine (all-MiniLM-L6-v2) of target+adapter's greedy answer to the plain target's, "
                      "bootstrap 95 % interval over prompts",
            "rows": [{"category": c, "prompt": p, "plain": b, "adapter": a, "plain_sampled": x, "similarity": round(s, 4)}
                     for (c, p), a, b, x, s in zip(items, adapted, plain, sampled, sims)]}
