"""evaluate: the exported bundles, loaded from disk and rendered as they ship, on the held-out probes."""
from __future__ import annotations

import json
import threading
import time
from collections import defaultdict

from foster.agent import metrics
from foster.agent.context import RunContext, StopRun, node_timer, stable_seed
from foster.agent.state import State
from foster.agent.target import ask
from langgraph.runtime import Runtime

_cache_lock = threading.RLock()  # put() flushes while holding it


class AnswerCache:
    """Target answers by (bundle, target, probe, temperature, sample): a resumed evaluation asks nothing twice."""

    def __init__(self, ctx: RunContext):
        self.path = ctx.dir / "answers.json"
        self.data: dict = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.dirty = 0

    def get(self, key: str):
        return self.data.get(key)

    def put(self, key: str, value: dict) -> None:
        with _cache_lock:
            self.data[key] = value
            self.dirty += 1
            if self.dirty >= 10:
                self.flush()

    def flush(self) -> None:
        from foster.store.runs import write_json_atomic

        with _cache_lock:  # targets are evaluated in parallel threads: never dump a dict being written
            if self.dirty:
                write_json_atomic(self.path, self.data)
                self.dirty = 0


def _scorer(ctx: RunContext, kind: str):
    from foster.agent.scorers import resolve

    return resolve(ctx.config.fidelity, kind, ctx.config.judge)


def _score(ctx: RunContext, kind: str, inventory: list[str], answers: list[str], refs: list[str],
           inputs: list[str]) -> tuple[list[float], str]:
    """Scores by the configured scorer (agent/scorers.py: the one registry evaluation, bench and UI share)."""
    from foster.agent.scorers import Scoring

    how = Scoring(kind=kind, inventory=inventory, judge=ctx.config.judge, complete=ctx.complete)
    scorer = _scorer(ctx, kind)
    return scorer.scores(answers, refs, inputs, how), scorer.method(how)


def _is_exact(r: dict, scorer_exact: bool) -> bool:
    """Whether a variant's scores are 0/1 matches (Wilson) or similarities (bootstrap); a free-text
    variant is scored by its primary metric (agent/freetext.py)."""
    primary = (r.get("freetext") or {}).get("primary")
    return primary in ("exact", "structure") if primary else scorer_exact


def _lint_errors(r: dict) -> bool:
    return any(f.get("severity") == "error" for f in r.get("lint") or [])


def ship_choice(results: list[dict]) -> tuple[dict, dict]:
    """The variant to ship: among lint-clean, non-baseline variants whose held-out fidelity lies within
    the 95 % interval of the best one, the one with the fewest prompt tokens per call (o200k_base).
    Each result carries fidelity, interval, tokens, baseline and lint."""
    def tokens(r):
        return (r.get("tokens") or {}).get("o200k_base", 0)

    clean = [r for r in results if not _lint_errors(r)]
    eligible = [r for r in clean if not r.get("baseline")] or clean or results
    top = max(eligible, key=lambda r: (r["fidelity"], -tokens(r)))
    floor = (top.get("interval") or {}).get("low", top["fidelity"])
    within = [r for r in eligible if r["fidelity"] >= floor]
    chosen = min(within, key=lambda r: (tokens(r), -r["fidelity"]))
    blocked = [r["variant"] for r in results if _lint_errors(r)]
    return chosen, {"rule": "fewest prompt tokens per call among lint-clean variants within the best's 95 % interval",
                    "best_fidelity": top["variant"], "floor": round(floor, 4),
                    "within_interval": [r["variant"] for r in within], "chosen": chosen["variant"],
                    "blocked_by_lint": blocked}


def evaluate_variant(ctx: RunContext, cache: AnswerCache, bundle, target: str, probes: list[dict],
                     sample: bool) -> dict:
    """Greedy answers (and, if asked, samples at the teacher's temperatures) for one bundle on one target.

    Calls run concurrently up to the target's bound (8 for an endpoint, 1 for an in-process model);
    each answer is cached the moment it returns, so a resumed evaluation asks nothing twice."""
    from foster.agent.gateway import map_concurrently
    from foster.agent.probe import call_limit

    c = ctx.config
    plan = [(t, i) for t, i in c.sample_plan() if t > 0] if sample else []
    jobs = [(p, t, i) for p in probes for t, i in [(0.0, 0)] + plan]

    def one(job):
        p, t, i = job
        key = f"{bundle.id}|{target}|{p['id']}|{t}|{i}"
        hit = cache.get(key)
        if hit is None:
            res = ask(bundle, target, p["text"], ctx.complete, temperature=t, max_tokens=c.max_new_tokens,
                      seed=stable_seed(c.seed, "target", p["id"], t, i))
            hit = {"text": res.texts[0], "latency_s": res.latency_s, "cost": res.cost,
                   "recalled": res.recalled}  # no model call: budgets count calls, not answers
            cache.put(key, hit)
        return hit

    hits: list = [None] * len(jobs)
    for n, hit in map_concurrently(one, jobs, call_limit(ctx, target)):
        hits[n] = hit
    greedy, latency, cost, samples = [], [], 0.0, {}
    for (p, t, _), hit in zip(jobs, hits):
        if t == 0:
            greedy.append(hit["text"]); latency.append(hit["latency_s"])
        samples.setdefault(p["id"], []).append(hit["text"])
        cost += hit.get("cost") or 0.0
    return {"greedy": greedy, "samples": samples, "latency_s": metrics.mean(latency), "cost": cost}


def nearest_copy(train: list[dict], heldout: list[dict], spec: dict) -> list[str]:
    """The no-LLM baseline: the teacher's answer on the nearest recorded probe."""
    if not train:
        return ["" for _ in heldout]
    sims = metrics.cosine_matrix([p["text"] for p in heldout], [p["text"] for p in train])
    return [spec["probes"][train[int(j)]["id"]]["mode"] for j in sims.argmax(axis=1)]


def _distribution_summary(kind, inventory, outs):
    return metrics.distribution([metrics.normalize(o, inventory, kind) for o in outs])


def evaluate_target(ctx, cache, target, variants, probes, spec, known: dict | None = None,
                    progress=None) -> tuple[dict, list[dict], dict]:
    from foster.prompts.bundle import Bundle

    kind, inventory = spec["answer_kind"], list(spec["inventory"])
    held = [p for p in probes if p["split"] == "heldout"]
    train = [p for p in probes if p["split"] == "train"]
    refs = [spec["probes"][p["id"]]["mode"] for p in held]
    inputs = [p["text"] for p in held]
    results, columns, answers = [], [], {}
    # an optimizer's proposal that did not beat its seed on validation is reported, never evaluated or shipped
    rejected = [{"variant": v["name"], "reason": v["rejected"], "validation": v.get("validation")}
                for v in variants if v.get("rejected")]
    variants = [v for v in variants if not v.get("rejected")]
    total = len(variants)
    for n, v in enumerate(variants):
        bundle = Bundle.load(v["path"])  # the exported file, never an in-memory program
        t0 = time.time()
        ev = evaluate_variant(ctx, cache, bundle, target, held, sample=False)
        scores, method = _score(ctx, kind, inventory, ev["greedy"], refs, inputs)
        tokens = bundle.token_counts()
        res = {"variant": v["name"], "bundle_id": bundle.id, "path": v["path"], "baseline": v.get("baseline", False),
               "fidelity": round(metrics.mean(scores), 4), "tokens": tokens, "latency_s": round(ev["latency_s"], 4),
               "cost": ev["cost"], "seconds": round(time.time() - t0, 2), "_scores": scores, "_greedy": ev["greedy"],
               "lint": [f.as_dict() for f in bundle.lint(**(known or {}))]}
        if bundle.selection.recall_above is not None:  # how many held-out inputs never reached the target
            res["recalled"] = {"n": sum(bundle.recall(p["text"]) is not None for p in held), "of": len(held),
                               "threshold": bundle.selection.recall_above, "chosen_on": v.get("recall_choice")}
        results.append(res)
        message = f"{target} {v['name']}: fidelity {res['fidelity']:.3f}"
        progress(message) if progress else ctx.progress("evaluate", n + 1, total, message)
    cache.flush()
    free = None
    if kind == "free":  # exact, structure and similarity side by side; the primary one scores (agent/freetext.py)
        from foster.agent import freetext

        free, method = freetext.evaluate_free(ctx, spec, held, train, refs, results, method)
    scorer_exact = _scorer(ctx, kind).exact
    for r in results:
        r["interval"] = r.get("interval") or metrics.fidelity_interval(r["_scores"], _is_exact(r, scorer_exact))
    best, selection = ship_choice(results)
    zero = next((r for r in results if r["variant"] == "zero-shot"), None)
    # sampled behaviour for the best bundle and the zero-shot baseline: calibration against the teacher, on
    # the held-out probes the teacher was sampled on (agent/probe.py); elsewhere its "distribution" is one answer
    held_cal = [p for p in held if spec["probes"][p["id"]].get("sampled", True)] or held
    for r in [best] + ([zero] if zero and zero is not best else []):
        ev = evaluate_variant(ctx, cache, Bundle.load(r["path"]), target, held_cal, sample=True)
        r["calibration_n"] = len(held_cal)
        if kind == "free":  # exact strings never match across samples: calibrate by meaning classes
            r.update(freetext.calibrate_free(ctx, spec, held_cal, ev["samples"]))
            continue
        sa, js = [], []
        for p in held_cal:
            t_dist = spec["probes"][p["id"]]["dist"]
            s_dist = _distribution_summary(kind, inventory, ev["samples"][p["id"]])
            sa.append(metrics.sampled_agreement(t_dist, s_dist))
            js.append(metrics.js_divergence(t_dist, s_dist))
            answers.setdefault(p["id"], {})[f"{target}::{r['variant']}::dist"] = s_dist
        r["sampled_agreement"] = round(metrics.mean(sa), 4)
        r["calibration_gap"] = round(metrics.mean(js), 4)
        r["calibration_gap_interval"] = metrics.fidelity_interval(js, exact=False)  # bootstrap over the sampled probes
    cache.flush()
    # divergence clusters: where the best bundle agrees least with the teacher
    by_cl: dict[int, list[float]] = defaultdict(list)
    for p, s in zip(held, best["_scores"]):
        by_cl[spec["probes"][p["id"]].get("cluster", 0)].append(s)
    clusters = sorted(({"cluster": cl, "fidelity": round(metrics.mean(v), 4), "size": len(v),
                        "examples": [p["text"] for p, s in zip(held, best["_scores"])
                                     if spec["probes"][p["id"]].get("cluster", 0) == cl and s < 1][:3]}
                       for cl, v in by_cl.items()), key=lambda c: c["fidelity"])
    divergent = [c for c in clusters if c["fidelity"] < 1][:3]
    copy = nearest_copy(train, held, spec)
    copy_scores, copy_method = _score(ctx, kind, inventory, copy, refs, inputs) if ctx.config.fidelity != "judge" else ([], "")
    copy_panel = None
    if free and copy_scores:  # the copy read under the same metric as the variants beside it
        sims = copy_scores if copy_method.startswith("embedding") else None
        copy_panel, copy_scores = freetext.copy_panel(ctx, free, copy, refs, sims)
    top = max(results, key=lambda r: r["fidelity"])
    for r in results:  # paired differences on the same held-out probes, each with its own interval
        r["vs_best"] = metrics.paired_difference(r["_scores"], top["_scores"])
        if copy_scores and kind == "closed":
            r["vs_copy"] = metrics.paired_difference(r["_scores"], copy_scores)
    copy_figure = metrics.fidelity_interval(copy_scores, scorer_exact) if copy_scores else None
    if copy_panel:
        copy_figure = copy_panel[copy_panel["primary"] if free.get("scores_verdict") else "similarity"]
    copy_words = copy_verdict(best, copy_figure) if kind == "closed" else None
    for r in results:
        columns.append({"key": f"{target}::{r['variant']}", "target": target, "variant": r["variant"],
                        "bundle_id": r["bundle_id"], "fidelity": r["fidelity"], "interval": r.get("interval"),
                        "ceiling": spec.get("ceiling_heldout") or spec["ceiling"],
                        "calibration_gap": r.get("calibration_gap"), "tokens": r["tokens"].get("o200k_base"),
                        "latency_s": r["latency_s"], "cost": r["cost"]})
        for p, a, s in zip(held, r["_greedy"], r["_scores"]):
            answers.setdefault(p["id"], {})[f"{target}::{r['variant']}"] = {"answer": a.strip(), "agree": s >= 0.999 if kind == "closed" else s >= 0.8, "score": round(s, 4)}
    strip = lambda r: {k: v for k, v in r.items() if not k.startswith("_")}
    ceiling = spec.get("ceiling_heldout") or spec["ceiling"]
    summary = {
        "zero_shot": strip(zero) if zero else None,
        "hand_written": strip(next((r for r in results if r["variant"] == "hand-written"), {})) or None,
        "nearest_copy": {"fidelity": round(metrics.mean(copy_scores), 4) if copy_scores else None,
                         "interval": copy_figure, "verdict": copy_words, "freetext": copy_panel,
                         "note": "the nearest train probe's teacher answer, copied with no LLM"},
        "selection": selection, "rejected": rejected,
        "best": strip(best), "variants": [strip(r) for r in results],
        "ceiling": ceiling, "calibration_gap": best.get("calibration_gap"),
        "calibration_gap_interval": best.get("calibration_gap_interval"),
        "sampled_agreement": best.get("sampled_agreement"),
        "divergence_clusters": divergent, "fidelity_method": method,
    }
    # per-probe values behind the ceiling and the best variant's figure: a fraction of the ceiling gets an
    # interval that carries both estimates' noise (metrics.ratio_interval)
    ceiling_scores = [metrics.self_agreement(spec["probes"][p["id"]]["dist"]) for p in held
                      if (spec["probes"].get(p["id"]) or {}).get("sampled") and spec["probes"][p["id"]].get("dist")]
    if free:
        summary["freetext"] = {**free, "calibration_method": best.get("calibration_method")}
        if ctx.config.fidelity == "auto":  # the ceiling of the metric that scores: the teacher against itself under it
            summary["ceiling"] = free["ceiling"].get(free["primary"]) or summary["ceiling"]
            ceiling_scores = free["ceiling_scores"].get(free["primary"]) or ceiling_scores
    if kind == "closed" or (free and ctx.config.fidelity == "auto"):
        summary["ceiling_scores"] = [round(x, 4) for x in ceiling_scores]
        # the ceiling is itself an estimate over the sampled held-out probes: its own n and interval
        summary["ceiling_interval"] = metrics.fidelity_interval(ceiling_scores, exact=False, seed=ctx.config.seed)
        summary["best_scores"] = [round(x, 4) for x in best["_scores"]]
        summary["best_fraction_of_ceiling"] = metrics.ratio_interval(best["_scores"], ceiling_scores, seed=ctx.config.seed)
    return summary, columns, answers


def copy_verdict(best: dict, copy: dict | None) -> str | None:
    """In words, for closed answers: does copying the nearest recorded answer (no LLM) beat the shipped bundle?"""
    if not copy:
        return None
    diff = best.get("vs_copy") or {}
    name, f, c = best["variant"], best["fidelity"], copy["value"]
    if diff and diff["low"] > 0:
        return f"the shipped bundle ({name}, {f:.3f}) beats copying the nearest recorded answer ({c:.3f})"
    if diff and diff["high"] < 0:
        return (f"copying the nearest recorded answer with no LLM ({c:.3f}) beats the shipped bundle ({name}, {f:.3f}): "
                "serve the copy, or improve the bundle before cutting over")
    if c > f:
        return (f"copying the nearest recorded answer with no LLM ({c:.3f}) scores above the shipped bundle "
                f"({name}, {f:.3f}); the difference is within the interval")
    return f"the shipped bundle ({name}, {f:.3f}) and copying the nearest recorded answer ({c:.3f}) are within the interval"


def build_report(ctx: RunContext, state: dict, per_target: dict, method: str) -> dict:
    spec = state["spec"]
    ceiling, ceiling_method = spec.get("ceiling_heldout") or spec["ceiling"], spec["ceiling_method"]
    free = next((s["freetext"] for s in per_target.values() if s.get("freetext")), None)
    if free and free.get("scores_verdict") and free["ceiling"].get(free["primary"]) is not None:
        # the verdict reads the primary metric: so does the ceiling beside it (the embedding one stays named)
        ceiling_method = (f"the teacher against itself under the primary metric ({free['primary']}) on the held-out "
                          f"probes; by embedding cosine: {ceiling:.3f} ({ceiling_method})")
        ceiling = free["ceiling"][free["primary"]]
    return {
        "run_id": ctx.run_id, "teacher": ctx.config.teacher_id, "path": ctx.config.path,
        "answer_kind": spec["answer_kind"], "fidelity_method": method, "threshold": ctx.config.threshold,
        "round": state.get("round", 1), "ceiling": ceiling,
        "ceiling_all_probes": spec["ceiling"], "ceiling_method": ceiling_method,
        "refusal_rate": spec["refusal_rate"], "hedge_rate": spec["hedge_rate"],
        "held_out": spec["n_heldout"], "train": spec["n_probes"] - spec["n_heldout"],
        "probe_kinds": spec["probe_kinds"], "targets": per_target,
        "notes": (["recorded outputs are the teacher's only answers: they carry the old model's errors, and the ceiling "
                   "is 1 by construction"] if ctx.config.path == "records" else []) +
                 (["re-label path: 'teacher' answers are the corpus's gold labels"] if ctx.config.path == "relabel" else []) +
                 ([f"primary metric {ctx.config.primary_metric} not used: it chooses among free-text figures, and this "
                   "teacher's answers are closed labels (scored by exact match)"]
                  if ctx.config.primary_metric != "auto" and spec["answer_kind"] != "free" else []),
    }


def evaluate(state: State, runtime: Runtime[RunContext]) -> dict:
    """Score every exported variant on every target on the held-out probes; write grid.json and report.json."""
    from foster.agent.gateway import map_concurrently
    from foster.agent.mine import known_for_lint
    from foster.store.runs import write_json_atomic

    ctx = runtime.context
    ctx.registry.update(ctx.run_id, node="evaluate")
    with node_timer(state, "evaluate") as times:
        cache = AnswerCache(ctx)
        per_target, columns, rows_answers, method = {}, [], {}, ""
        stop = state.get("stop_reason")
        targets = list(ctx.config.targets)
        known = known_for_lint(state.get("candidates") or [])

        def variants_of(target):
            return (state.get("variants") or {}).get(target) or state.get("candidates") or []

        # one count over every target's variants, so parallel targets move one progress bar forward
        total = sum(1 for t in targets for v in variants_of(t) if not v.get("rejected"))  # rejected ones are not run
        finished, lock = [0], threading.Lock()

        def tick(message: str) -> None:
            with lock:
                finished[0] += 1
                ctx.progress("evaluate", finished[0], total, message)

        def one(target):
            return evaluate_target(ctx, cache, target, variants_of(target), state["probes"], state["spec"],
                                   known=known, progress=tick)

        # Targets are different models: on this 2-core machine two in-process models (one llama.cpp
        # thread each) evaluate side by side in about the time of one; endpoints just wait in parallel.
        done: dict[str, tuple] = {}
        try:
            for n, out in map_concurrently(one, targets, min(len(targets), 4)):
                done[targets[n]] = out
        except StopRun as e:
            stop = str(e)
        for target in targets:  # in configured order, whatever finished first
            if target not in done:
                continue
            summary, cols, ans = done[target]
            per_target[target], method = summary, summary["fidelity_method"]
            columns += cols
            for pid, a in ans.items():
                rows_answers.setdefault(pid, {}).update(a)
        cache.flush()
        spec = state["spec"]
        rows = [{"probe_id": p["id"], "input": p["text"], "cluster": spec["probes"][p["id"]].get("cluster"),
                 "teacher": {"mode": spec["probes"][p["id"]]["mode"], "dist": spec["probes"][p["id"]]["dist"]},
                 "answers": rows_answers.get(p["id"], {})} for p in state["probes"] if p["split"] == "heldout"]
        if per_target:
            write_json_atomic(ctx.dir / "grid.json", {"columns": columns, "rows": rows})
        report = build_report(ctx, state, per_target, method) if per_target else (state.get("evaluation") or {})
        best = dict(state.get("best") or {})
        for target, s in per_target.items():
            if s["best"]["fidelity"] >= best.get("fidelity", -1):
                best = {"target": target, "variant": s["best"]["variant"], "path": s["best"]["path"],
                        "fidelity": s["best"]["fidelity"], "bundle_id": s["best"]["bundle_id"],
                        "interval": s["best"].get("interval")}
        history = list(state.get("history") or [])
        if per_target:
            history.append(max(s["best"]["fidelity"] for s in per_target.values()))
    return {"evaluation": report, "best": best, "history": history, "stop_reason": stop,
            "usage": ctx.usage(), "node_seconds": times}
