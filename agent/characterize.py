"""characterize: the behavioural spec — answer inventory, distributions, clusters, refusals, ceiling."""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from langgraph.runtime import Runtime

from foster.agent import metrics
from foster.agent.context import RunContext, node_timer
from foster.agent.state import State

REFUSAL = re.compile(r"\b(i can(no|')t|i am unable|i'm unable|i won't|as an ai|i'm sorry|i apologi[sz]e)\b", re.I)
HEDGE = re.compile(r"\b(maybe|perhaps|not sure|it depends|possibly|might be|i think)\b", re.I)


def answer_kind(outputs: list[str]) -> str:
    """Closed answers (labels) when a few short answers repeat; free text otherwise."""
    norm = [metrics.normalize(o, kind="label") for o in outputs]
    distinct = len(set(norm))
    words = sorted(len(o.split()) for o in outputs) or [0]
    median_words = words[len(words) // 2]
    return "closed" if distinct <= max(12, 0.25 * len(outputs)) and median_words <= 5 else "free"


def cluster(texts: list[str], seed: int, vectors=None) -> list[int]:
    """KMeans over the texts' embeddings (`vectors` when the caller has them already)."""
    from sklearn.cluster import KMeans

    from foster.prompts.embedding import embed

    if len(texts) < 4:
        return [0] * len(texts)
    k = min(8, max(2, len(texts) // 10))
    x = vectors if vectors is not None and len(vectors) == len(texts) else embed(texts)
    return [int(c) for c in KMeans(n_clusters=k, random_state=seed, n_init=4).fit_predict(x)]


def build_spec(probes: list[dict], teacher: dict[str, list[dict]], seed: int = 0) -> dict:
    all_outputs = [o["output"] for p in probes for o in teacher.get(p["id"], [])]
    kind = answer_kind(all_outputs)
    raw_modes = Counter(metrics.normalize(o, kind="label") for o in all_outputs)
    # the inventory is what the teacher gives as a greedy answer or a probe's mode: a one-off sample at
    # T=1 (a misspelt or stuttered label) is noise, not a label the target should be offered
    modal: set[str] = set()
    for p in probes:
        obs = teacher.get(p["id"], [])
        labels = [metrics.normalize(o["output"], kind="label") for o in obs]
        modal.update(metrics.normalize(o["output"], kind="label") for o in obs if o["t"] == 0 and o["i"] == 0)
        if labels:
            modal.add(metrics.mode(metrics.distribution(labels)))
    inventory = [a for a, _ in raw_modes.most_common() if a in modal] if kind == "closed" else []
    per: dict[str, dict] = {}
    for p in probes:
        outs = [o["output"] for o in teacher.get(p["id"], [])]
        norm = [metrics.normalize(o, inventory, kind) for o in outs]
        dist = metrics.distribution(norm)
        greedy = next((o["output"] for o in teacher.get(p["id"], []) if o["t"] == 0), outs[0] if outs else "")
        per[p["id"]] = {
            "mode": metrics.mode(dist) if kind == "closed" else greedy.strip(),
            "dist": dist, "entropy": round(metrics.entropy(dist), 4),
            "samples": [o.strip() for o in outs],
            # only the stratified subset is sampled at every temperature: the others' dist is their greedy
            # answer alone and says nothing about the teacher's uncertainty there
            "sampled": len(outs) > 1,
        }
    labels = cluster([p["text"] for p in probes], seed)
    for p, c in zip(probes, labels):
        p["cluster"] = c
        per[p["id"]]["cluster"] = c
    clusters: dict[int, dict] = {}
    for p in probes:
        cl = clusters.setdefault(p["cluster"], {"cluster": p["cluster"], "size": 0, "answers": Counter(), "examples": []})
        cl["size"] += 1
        cl["answers"][per[p["id"]]["mode"][:60]] += 1
        if len(cl["examples"]) < 3:
            cl["examples"].append(p["text"])
    for cl in clusters.values():
        cl["answers"] = dict(cl["answers"].most_common(5))
    # the ceiling is the teacher's self-agreement, so it is measured where it was sampled
    measured = {i: v for i, v in per.items() if v["sampled"]} or per
    if kind == "closed":
        ceiling = metrics.mean(metrics.self_agreement(v["dist"]) for v in measured.values())
        ceiling_method = f"mean Σ p² over teacher samples on the {len(measured)} probes sampled at every temperature"
    else:
        sims = []
        for v in measured.values():
            s = v["samples"]
            if len(s) > 1:
                sims.append(metrics.mean(metrics.text_similarity(s[:-1], s[1:])))
        ceiling = metrics.mean(sims) if sims else 1.0
        ceiling_method = (f"mean embedding cosine between consecutive teacher samples on the {len(measured)} "
                          "probes sampled at every temperature")
    heldout = [p["id"] for p in probes if p["split"] == "heldout"]
    held_measured = [i for i in heldout if i in measured]
    return {
        "answer_kind": kind,
        "format": "label" if kind == "closed" else "text",
        "inventory": {a: raw_modes[a] for a in inventory},
        "probes": per,
        "clusters": sorted(clusters.values(), key=lambda c: -c["size"]),
        "refusal_rate": metrics.mean(bool(REFUSAL.search(o)) for o in all_outputs),
        "hedge_rate": metrics.mean(bool(HEDGE.search(o)) for o in all_outputs),
        "ceiling": round(ceiling, 4),
        "ceiling_heldout": round(metrics.mean(metrics.self_agreement(per[i]["dist"]) for i in held_measured), 4)
        if kind == "closed" and held_measured else None,
        "ceiling_method": ceiling_method,
        "ceiling_n": len(measured), "ceiling_heldout_n": len(held_measured),
        "n_sampled": sum(1 for v in per.values() if v["sampled"]),
        "n_probes": len(probes), "n_heldout": len(heldout),
        "probe_kinds": dict(Counter(p["kind"] for p in probes)),
    }


ACCEPTANCE_TEST = '''"""Acceptance test exported by foster: does MODEL reproduce the teacher's recorded behaviour?

Run:  FOSTER_ACCEPT_MODEL=local/smollm2-135m-instruct [FOSTER_ACCEPT_BUNDLE=best_bundle.json] pytest {name}
"""
import json
import os
from pathlib import Path

import pytest

SPEC = json.loads((Path(__file__).parent / "spec.json").read_text())
CASES = [c for c in SPEC["cases"]]


def _answer(text):
    from foster.agent.gateway import complete
    from foster.prompts.bundle import Bundle

    model = os.environ.get("FOSTER_ACCEPT_MODEL", SPEC["default_model"])
    bundle_path = os.environ.get("FOSTER_ACCEPT_BUNDLE")
    if bundle_path:
        b = Bundle.load(bundle_path)
        return complete(model, messages=b.messages(text), temperature=0, max_tokens=SPEC["max_tokens"]).texts[0]
    return complete(model, messages=[{{"role": "user", "content": text}}], temperature=0,
                    max_tokens=SPEC["max_tokens"]).texts[0]


def test_agreement_with_teacher():
    from foster.agent.metrics import mean, normalize, text_similarity

    answers = [_answer(c["input"]) for c in CASES]
    if SPEC["answer_kind"] == "closed":
        inv = list(SPEC["inventory"])
        score = mean(normalize(a, inv, "closed") == c["teacher_mode"] for a, c in zip(answers, CASES))
    else:
        score = mean(text_similarity(answers, [c["teacher_mode"] for c in CASES]))
    threshold = float(os.environ.get("FOSTER_ACCEPT_THRESHOLD", SPEC["threshold"]))
    assert score >= threshold, f"agreement {{score:.3f}} < {{threshold}}"
'''


def export_spec(run_dir: Path, spec: dict, probes: list[dict], threshold: float, default_model: str,
                max_tokens: int) -> Path:
    from foster.store.runs import write_json_atomic, write_text_atomic

    cases = [{"probe_id": p["id"], "input": p["text"], "teacher_mode": spec["probes"][p["id"]]["mode"],
              "teacher_dist": spec["probes"][p["id"]]["dist"]} for p in probes if p["split"] == "heldout"]
    d = run_dir / "spec"
    write_json_atomic(d / "spec.json", {**{k: v for k, v in spec.items() if k != "probes"}, "cases": cases,
                                        "threshold": threshold, "default_model": default_model,
                                        "max_tokens": max_tokens})
    name = "test_acceptance.py"
    write_text_atomic(d / name, ACCEPTANCE_TEST.format(name=name))
    return d


def characterize(state: State, runtime: Runtime[RunContext]) -> dict:
    """Turn the teacher's observations into the behavioural spec and export it as an acceptance test."""
    ctx = runtime.context
    ctx.registry.update(ctx.run_id, node="characterize")
    with node_timer(state, "characterize") as times:
        probes = [dict(p) for p in state["probes"]]
        spec = build_spec(probes, state["teacher"], ctx.config.seed)
        spec["probing"] = dict(state.get("probing") or {})  # what was probed, left out, and how fast
        export_spec(ctx.dir, spec, probes, ctx.config.threshold, ctx.config.targets[0], ctx.config.max_new_tokens)
        ctx.progress("characterize", 1, 1, f"{spec['answer_kind']} answers, ceiling {spec['ceiling']:.3f}")
    return {"probes": probes, "spec": spec, "node_seconds": times}
