"""optimize (node): foster's own tuner per target, then (with a reflection model, or when asked) DSPy beside it.

Both are measured on a validation split carved from the train probes (never the held-out ones). The
tuner's configuration, or a DSPy proposal, replaces the mined seed only when it beats it there by
more than the interval, and a proposal with a lint error never enters the race.
"""
from __future__ import annotations

from foster.agent.context import RunContext, StopRun, node_timer
from foster.agent.state import State
from foster.agent.target import is_completion
from langgraph.runtime import Runtime

VALIDATION_FRACTION, VALIDATION_MIN, VALIDATION_MAX = 0.25, 8, 40


def dspy_optimizer(optimizer: str, miner: str | None) -> str | None:
    """Which DSPy optimizer runs beside the tuner: the one asked for, or by default GEPA only when a
    reflection model (--miner) is given; a small target reflecting on its own prompt adds nothing."""
    from foster.agent.optimize import TUNER

    if optimizer not in TUNER:
        return optimizer
    return "gepa" if optimizer == "auto" and miner else None


def optimize(state: State, runtime: Runtime[RunContext]) -> dict:
    """Tune k, the pool, fixed vs retrieved examples and the rules per target; run DSPy beside it when asked."""
    from foster.agent.mine import known_for_lint
    from foster.agent.optimize import (
        TrainItem,
        accept_proposal,
        carve_validation,
        tune,
        validation_scores,
    )
    from foster.agent.optimize import optimize as run_optimizer
    from foster.prompts.bundle import Bundle

    ctx = runtime.context
    ctx.registry.update(ctx.run_id, node="optimize")
    c = ctx.config
    rnd = state.get("round", 1)
    spec = state["spec"]
    cands = state.get("candidates") or []
    variants = {t: [x for x in cands if not x.get("rejected")] for t in c.targets}
    stop = state.get("stop_reason")
    known = known_for_lint(cands)
    with node_timer(state, "optimize") as times:
        seed_entry = next((x for x in cands if x["name"] == "miner-knn" and not _lint_errors(x)), None) or \
            next((x for x in cands if x["name"] == "mined-knn"), None)
        ingredients = next((x.get("ingredients") for x in cands if x["name"] == "mined-knn"), None) or {}
        base = Bundle.load(seed_entry["path"]) if seed_entry else None
        by_text = {p["text"]: p for p in state["probes"] if p["split"] == "train"}
        # validation comes from the seed's own pool: in-distribution train inputs with the teacher's answers
        items = [TrainItem(input=e.input, teacher_mode=spec["probes"][by_text[e.input]["id"]]["mode"],
                           teacher_dist=spec["probes"][by_text[e.input]["id"]]["dist"])
                 for e in (base.examples if base else []) if e.input in by_text]
        n_val = max(VALIDATION_MIN, min(VALIDATION_MAX, round(VALIDATION_FRACTION * len(items))))
        n_val = max(1, min(n_val, len(items) // 2, c.budget_calls // 2))
        val, rest = carve_validation(items, n_val, seed=c.seed)
        score = _free_text_score(ctx, spec, state["probes"])
        dspy_name = dspy_optimizer(c.optimizer, c.miner)
        for n, target in enumerate(c.targets):
            if base is None or not val or stop:
                break
            try:
                ctx.check()
                # re-label: the run measures and teaches the target itself; copying the nearest gold label
                # is the copy baseline the report already shows
                res = tune(base, val, target, ingredients=ingredients, budget_calls=c.budget_calls,
                           max_tokens=c.max_new_tokens, seed=c.seed, complete=ctx.complete, score=score,
                           recall=c.path != "relabel", more=rest, recall_calls=c.recall_calls)
                ctx.registry.append_event(ctx.run_id, "optimize", "progress",
                                          f"{target}: tuner kept {res.log.get('chosen')}, compact "
                                          f"{res.log.get('compact')} ({res.calls_used} calls); recall rule "
                                          + (f"at cosine {res.log['recall'].get('threshold')} on {res.log['recall'].get('base')}"
                                             if res.recall else "not taken"), log=res.log)
                for name, b in (("tuned", res.tuned if res.log.get("chosen") not in (None, "seed") else None),
                                ("compact", res.compact), ("recall", res.recall)):
                    if b is not None:
                        entry = _save(ctx, b, name, target, n, rnd, calls_used=res.calls_used, known=known)
                        if name == "recall":  # what the threshold was chosen on, for the report
                            entry["recall_choice"] = {k: res.log["recall"].get(k) for k in
                                                      ("threshold", "validation", "evidence", "score", "without", "copy")}
                        variants[target].append(entry)
                if dspy_name:
                    with ctx.scope():  # DSPy's calls: the run's ledger and models
                        out = run_optimizer(base, [*rest] or val, target, optimizer=dspy_name,
                                            budget_calls=c.budget_calls, reflection_lm=c.miner, seed=c.seed,
                                            completion=is_completion(target), max_tokens=c.max_new_tokens,
                                            score=score)
                    seed_scores = res.seed_scores or validation_scores(base, val, target, max_tokens=c.max_new_tokens,
                                                                       seed=c.seed, complete=ctx.complete, score=score)
                    ok, why = accept_proposal(out.bundle, seed_scores, val, target, max_tokens=c.max_new_tokens,
                                              seed=c.seed, lint_known=known, complete=ctx.complete, score=score)
                    entry = _save(ctx, out.bundle, dspy_name, target, n, rnd, calls_used=out.calls_used, known=known)
                    if not ok:
                        entry["rejected"] = why["reason"]
                    entry["validation"] = why
                    variants[target].append(entry)
                    ctx.registry.append_event(ctx.run_id, "optimize", "progress",
                                              f"{target}: {dspy_name} used {out.calls_used} calls; "
                                              f"{'accepted' if ok else 'kept the seed: ' + why['reason']}", log=out.log)
            except StopRun as e:
                stop = str(e)
                break
            except Exception as e:  # a failed optimizer leaves the mined candidates in the race
                ctx.registry.append_event(ctx.run_id, "optimize", "error", f"{target}: {type(e).__name__}: {e}")
            ctx.progress("optimize", n + 1, len(c.targets), target)
    return {"variants": variants, "stop_reason": stop, "usage": ctx.usage(), "node_seconds": times}


def _free_text_score(ctx: RunContext, spec: dict, probes: list[dict]):
    """For a free-text teacher scored automatically, the primary metric (exact or structure) as the
    validation score; None keeps the optimizers' default (exact labels, or similarity for free text)."""
    if spec.get("answer_kind") != "free" or ctx.config.fidelity != "auto":
        return None
    from foster.agent.freetext import validation_metric

    score = validation_metric(spec, [p for p in probes if p["split"] == "train"], ctx.config.primary_metric)
    if score is not None:
        ctx.registry.append_event(ctx.run_id, "optimize", "progress",
                                  f"free text: the tuner scores validation by {score.metric} agreement (the primary metric)")
    return score


def _lint_errors(entry: dict) -> list[dict]:
    return [f for f in entry.get("lint") or [] if f.get("severity") == "error"]


def _save(ctx: RunContext, bundle, name: str, target: str, n: int, rnd: int, *, calls_used: int, known: dict) -> dict:
    """Export an optimized bundle for evaluation; its lint findings ride with it."""
    bundle.name = name
    bundle.targets = [target]
    bundle.provenance.run_id = ctx.run_id
    path = bundle.save(ctx.dir / "bundles" / f"{name}-t{n}-r{rnd}")
    return {"name": name, "path": str(path), "baseline": False, "calls_used": calls_used,
            "lint": [f.as_dict() for f in bundle.lint(**known)]}
