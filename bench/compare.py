"""foster against the no-LLM copy, zero-shot and plain DSPy: same teacher observations, held-out split, targets and budget.

    python -m bench.compare [--quick] [--domains ticket_routing house_style clinc_travel] [--targets local/... ...]

For each domain one foster run (every target at once) probes the teacher and characterizes it;
every arm then uses that run's probes, its train/held-out split and the teacher's answers as labels,
per target:

  copy        the teacher's answer on the nearest train probe (MiniLM), no model call at all;
  zero-shot   the target with the task description as its system prompt;
  dspy-gepa,  a user's plain DSPy program (bench/dspy_arms.py): GEPA, MIPROv2 auto="light" and
  dspy-mipro, KNNFewShot (the k nearest train probes as demos, foster's closest peer), evaluated as
  dspy-knn    DSPy runs them;
  foster      the whole pipeline's shipped bundle for that target, read from its report.json.

Budget: per target, the DSPy arms may make as many target calls as foster made to that target
outside its held-out evaluation (probe synthesis when the target is the generator, plus the tuner).
Past it a call is not made and the answer is empty. Every arm is scored on the same held-out probes
by the same scorer (agent/scorers.py: exact after normalization for closed answers, MiniLM cosine
for free text) with n and a 95 % interval (Wilson / bootstrap), and its paired difference to the
shipped bundle and to the copy, each with its own interval.

Writes bench/results/compare-<date>.json and .md and prints the table.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import platform
import re
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = ("local/smollm2-135m-instruct", "local/gemma3-270m")
TARGET = TARGETS[0]
# issue 10: on closed answers the shipped bundle at least matches copying; half of the 373 prompt
# tokens per call the mined knn bundle used before, at a fidelity within the interval of the best variant
GOALS = {"shipped_vs_copy": ">= copy (closed answers)", "prompt_tokens_per_call": 373 / 2, "in_model_share": 0.9}
ARMS = ("copy", "zero-shot", "dspy-gepa", "dspy-mipro", "dspy-knn", "foster")


@dataclass(frozen=True)
class Domain:
    """A benchmark domain: a teacher that still answers, its historical inputs and the task."""

    name: str
    teacher: str
    inputs: str
    task: str
    max_new_tokens: int


@dataclass(frozen=True)
class Settings:
    """How big a run is; foster's knobs, the DSPy arms follow from what foster spent."""

    budget_calls: int = 60  # foster's optimizer budget per target per round
    max_rounds: int = 2
    synth_per_kind: int = 2
    samples: int = 1  # teacher (and arm) samples per non-zero temperature
    temperatures: tuple[float, ...] = (0.0, 1.0)  # greedy decides fidelity; one T=1 sample feeds calibration
    holdout_fraction: float = 0.4
    threshold: float = 0.9
    knn_k: int = 4  # foster's seed k and dspy.KNNFewShot's k
    seed: int = 0
    num_threads: int = 1  # 2 cores and one llama.cpp model: more threads only queue on its lock

    def sample_plan(self) -> list[tuple[float, int]]:
        return [(t, i) for t in self.temperatures if t > 0 for i in range(self.samples)]


FULL = Settings()
QUICK = Settings(budget_calls=30, max_rounds=1, synth_per_kind=1, samples=1)


def domains() -> dict[str, Domain]:
    """The demo domain (closed labels, templated), the house-style rewrite (free text, templated) and
    CLINC150's travel domain (closed labels with an out-of-scope class, real queries, CC BY 3.0)."""
    tr, hs, ct = EXAMPLES / "ticket_routing", EXAMPLES / "house_style", EXAMPLES / "clinc_travel"
    demo = json.loads((tr / "demo.json").read_text())
    return {
        "ticket_routing": Domain("ticket_routing", f"local/smollm2-135m-instruct@{tr / 'teacher'}",
                                 str(tr / demo.get("inputs", "data/inputs.jsonl")), demo["task"],
                                 int(demo.get("max_new_tokens", 12))),
        "house_style": Domain("house_style", f"local/smollm2-135m-instruct@{hs / 'teacher'}",
                              str(hs / "data" / "history.jsonl"),
                              "Rewrite the customer message as a one-line ticket summary in the support desk's house style.",
                              32),
        "clinc_travel": Domain("clinc_travel", f"local/smollm2-135m-instruct@{ct / 'teacher'}",
                               str(ct / "data" / "inputs.jsonl"),
                               "Classify a travel assistant query into its intent, or oos when it is out of scope.", 12),
    }


# --- the shared scorer ----------------------------------------------------------------------------


class Scorer:
    """foster's held-out scorer (agent/scorers.py, --fidelity auto), applied to every arm."""

    def __init__(self, kind: str, inventory: list[str]):
        from foster.agent.scorers import Scoring, resolve

        self.kind, self.inventory = kind, list(inventory)
        self.scorer = resolve("auto", kind)
        self.how = Scoring(kind=kind, inventory=self.inventory)

    @property
    def method(self) -> str:
        return self.scorer.method(self.how)

    @property
    def exact(self) -> bool:
        return self.scorer.exact

    def scores(self, answers: list[str], refs: list[str]) -> list[float]:
        return self.scorer.scores(answers, refs, None, self.how)

    def one(self, answer: str, ref: str) -> float:
        return self.scores([answer or ""], [ref])[0]

    def interval(self, scores: list[float]) -> dict:
        from foster.agent import metrics

        return metrics.fidelity_interval(scores, self.exact)

    def dist(self, outputs: list[str]) -> dict[str, float]:
        from foster.agent import metrics

        return metrics.distribution([metrics.normalize(o, self.inventory, self.kind) for o in outputs])


@dataclass
class Shared:
    """What foster's probe/characterize pass gives every arm."""

    kind: str
    inventory: list[str]
    train: list[dict]  # {id, text, mode, dist}
    heldout: list[dict]
    ceiling: float
    scorer: Scorer = field(repr=False, default=None)  # type: ignore[assignment]


# --- timing and counting ---------------------------------------------------------------------------


@contextlib.contextmanager
def measured(target: str):
    """Wall time and everything the gateway counted inside the block (all threads that copy the context)."""
    from foster.agent import gateway

    out: dict[str, Any] = {}
    start = time.perf_counter()
    with gateway.use_ledger() as ledger:
        yield out
    out["wall_s"] = time.perf_counter() - start
    out["usage"] = ledger.snapshot()
    out.update(_usage_figures(out["usage"], target, out["wall_s"]))


def _usage_figures(usage: dict, target: str, wall_s: float) -> dict:
    t = usage.get(target, {})
    model_s = sum(u.get("seconds", 0.0) for u in usage.values())
    return {"target_calls": t.get("calls", 0),
            "target_tokens": t.get("prompt_tokens", 0) + t.get("completion_tokens", 0),
            "model_s": round(model_s, 2), "in_model_share": round(model_s / wall_s, 4) if wall_s else None}


def _o200k(text: str) -> int:
    from foster.prompts.tokens import count

    return count(text, "o200k_base") if text else 0


# --- foster ----------------------------------------------------------------------------------------


def run_foster(domain: Domain, settings: Settings, targets: tuple[str, ...]) -> dict:
    """One foster run on every target; returns its report, final graph state and what it spent."""
    from foster.agent.runs import run_state, start_run
    from foster.store.runs import RunRegistry

    config = {"teacher": domain.teacher, "targets": list(targets), "inputs": domain.inputs, "task": domain.task,
              "temperatures": list(settings.temperatures), "samples": settings.samples,
              "synth_per_kind": settings.synth_per_kind, "optimizer": "auto", "budget_calls": settings.budget_calls,
              "knn_k": settings.knn_k, "max_rounds": settings.max_rounds, "lora_fallback": False,
              "max_new_tokens": domain.max_new_tokens, "holdout_fraction": settings.holdout_fraction,
              "threshold": settings.threshold, "seed": settings.seed,
              "run_id": f"bench-{domain.name}-{time.strftime('%Y%m%d-%H%M%S')}"}
    with measured(targets[0]) as m:
        run_id = start_run(config)
    run_dir = RunRegistry().run_dir(run_id)
    report = json.loads((run_dir / "report.json").read_text())
    state = run_state(run_id)
    eval_calls = _eval_calls(run_dir, targets)
    grid = json.loads((run_dir / "grid.json").read_text()) if (run_dir / "grid.json").exists() else {"rows": []}
    return {"run_id": run_id, "run_dir": str(run_dir), "config": config, "report": report, "state": state,
            "measured": m, "eval_calls": eval_calls, "grid": grid}


def _eval_calls(run_dir: Path, targets) -> dict[str, int]:
    """Held-out evaluation calls per target: AnswerCache keys are bundle|target|probe|temperature|sample, and
    an answer a recall rule gave made no call (flagged; before the flag, the only answers with no latency),
    so the calls left for the optimizers' budget are not undercounted."""
    path = Path(run_dir) / "answers.json"
    answers = json.loads(path.read_text()) if path.exists() else {}
    called = [k for k, v in answers.items() if not v.get("recalled", v.get("latency_s", 1.0) == 0.0)]
    return {t: sum(1 for k in called if k.split("|")[1] == t) for t in targets}


def load_foster(run_dir: Path) -> dict:
    """A finished foster run, read back as `run_foster` returns it, so the arms can run later (or one
    process per target) on exactly its probes, split and answers. FOSTER_HOME must be the run's home."""
    from foster.agent.runs import run_state

    run_dir = Path(run_dir)
    report = json.loads((run_dir / "report.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    targets = list(report["targets"])
    usage, wall = report.get("usage") or {}, float(report.get("wall_seconds") or 0.0)
    m = {"wall_s": wall, "usage": usage, **_usage_figures(usage, targets[0], wall)}
    eval_calls = _eval_calls(run_dir, targets)
    grid = json.loads((run_dir / "grid.json").read_text()) if (run_dir / "grid.json").exists() else {"rows": []}
    return {"run_id": report["run_id"], "run_dir": str(run_dir), "config": config, "report": report,
            "state": run_state(report["run_id"]), "measured": m, "eval_calls": eval_calls, "grid": grid}


def shared_from(foster: dict) -> Shared:
    state, report = foster["state"], foster["report"]
    spec = state["spec"]

    def rows(split):
        return [{"id": p["id"], "text": p["text"], "mode": spec["probes"][p["id"]]["mode"],
                 "dist": spec["probes"][p["id"]]["dist"]} for p in state["probes"] if p["split"] == split]

    kind, inventory = spec["answer_kind"], list(spec["inventory"])
    return Shared(kind=kind, inventory=inventory, train=rows("train"), heldout=rows("heldout"),
                  ceiling=report.get("ceiling"), scorer=Scorer(kind, inventory))


def foster_arm(foster: dict, shared: Shared, target: str) -> dict:
    from foster.prompts.bundle import Bundle

    report, m = foster["report"], foster["measured"]
    t = report["targets"][target]
    best = t["best"]
    bundle = Bundle.load(best["path"])
    shipped = _o200k(bundle.system_prompt) + sum(_o200k(f"{e.input}\n{e.output}") for e in bundle.examples)
    usage = report.get("usage") or m["usage"]
    figures = _usage_figures(usage, target, m["wall_s"])
    eval_calls = foster["eval_calls"].get(target, 0)
    by_probe = {row["probe_id"]: row["answers"].get(f"{target}::{best['variant']}", {}) for row in foster["grid"]["rows"]}
    scores = [float(by_probe.get(p["id"], {}).get("score", 0.0)) for p in shared.heldout]
    top = max(t.get("variants", []) or [best], key=lambda v: v["fidelity"])
    return {
        "arm": "foster", "fidelity": best["fidelity"], "interval": best.get("interval") or shared.scorer.interval(scores),
        "sampled_agreement": best.get("sampled_agreement"), "calibration_gap": best.get("calibration_gap"),
        "variant": best["variant"], "opt_calls": figures["target_calls"] - eval_calls, "eval_calls": eval_calls,
        "target_calls": figures["target_calls"], "target_tokens": figures["target_tokens"],
        "all_calls": sum(u.get("calls", 0) for u in usage.values()),
        "wall_s": round(m["wall_s"], 1), "report_wall_s": report.get("wall_seconds"), "model_s": figures["model_s"],
        "in_model_share": figures["in_model_share"],
        "prompt_tokens": (best.get("tokens") or {}).get("o200k_base"), "shipped_tokens": shipped,
        "verdict": report.get("verdict"), "rounds": report.get("rounds"), "node_seconds": report.get("node_seconds"),
        "variants": {v["variant"]: v["fidelity"] for v in t.get("variants", [])},
        "variant_tokens": {v["variant"]: (v.get("tokens") or {}).get("o200k_base") for v in t.get("variants", [])},
        "best_variant": {"variant": top["variant"], "fidelity": top["fidelity"], "interval": top.get("interval")},
        "selection": t.get("selection"), "lint": best.get("lint"),
        "report_zero_shot": (t.get("zero_shot") or {}).get("fidelity"),
        "nearest_copy": (t.get("nearest_copy") or {}).get("fidelity"),
        "usage": usage, "run_id": foster["run_id"], "_scores": scores,
    }


# --- held-out evaluation of an arm -----------------------------------------------------------------


def evaluate_arm(shared: Shared, settings: Settings, answer: Callable[[str, float, int], str]) -> dict:
    """Greedy answers on the held-out probes, then samples at the teacher's temperatures."""
    from foster.agent import metrics
    from foster.agent.context import stable_seed

    greedy = [answer(p["text"], 0.0, stable_seed(settings.seed, "target", p["id"], 0.0, 0)) for p in shared.heldout]
    scores = shared.scorer.scores(greedy, [p["mode"] for p in shared.heldout])
    agree, gaps = [], []
    for p, g in zip(shared.heldout, greedy):
        outs = [g] + [answer(p["text"], t, stable_seed(settings.seed, "target", p["id"], t, i))
                      for t, i in settings.sample_plan()]
        s_dist = shared.scorer.dist(outs)
        agree.append(metrics.sampled_agreement(p["dist"], s_dist))
        gaps.append(metrics.js_divergence(p["dist"], s_dist))
    return {"fidelity": round(metrics.mean(scores), 4), "interval": shared.scorer.interval(scores),
            "sampled_agreement": round(metrics.mean(agree), 4), "calibration_gap": round(metrics.mean(gaps), 4),
            "_scores": scores,
            "answers": [{"input": p["text"], "teacher": p["mode"], "answer": a, "score": round(s, 4)}
                        for p, a, s in zip(shared.heldout, greedy, scores)]}


def copy_arm(shared: Shared) -> dict:
    """No model at all: the teacher's answer on the nearest train probe (foster's own copy baseline)."""
    from foster.agent import metrics

    if not shared.train:
        copied = ["" for _ in shared.heldout]
    else:
        sims = metrics.cosine_matrix([p["text"] for p in shared.heldout], [p["text"] for p in shared.train])
        copied = [shared.train[int(j)]["mode"] for j in sims.argmax(axis=1)]
    scores = shared.scorer.scores(copied, [p["mode"] for p in shared.heldout])
    return {"arm": "copy", "fidelity": round(metrics.mean(scores), 4), "interval": shared.scorer.interval(scores),
            "opt_calls": 0, "eval_calls": 0, "target_calls": 0, "target_tokens": 0, "wall_s": 0.0,
            "prompt_tokens": 0, "shipped_tokens": 0, "_scores": scores}


def zero_shot_arm(foster: dict, shared: Shared, settings: Settings, target: str, max_new_tokens: int) -> dict:
    """foster's zero-shot bundle (the task description as the system prompt), asked as it ships."""
    from foster.agent.target import ask
    from foster.prompts.bundle import Bundle

    path = next(Path(foster["run_dir"], "bundles").glob("zero-shot-r1.json"))
    bundle = Bundle.load(path)
    with measured(target) as m:
        ev = evaluate_arm(shared, settings, lambda x, t, s: ask(bundle, target, x, temperature=t,
                                                                max_tokens=max_new_tokens, seed=s).text)
    tokens = bundle.token_counts()["o200k_base"]
    return {"arm": "zero-shot", **_strip(ev), "opt_calls": 0, "eval_calls": m["target_calls"], **_figures(m),
            "prompt_tokens": tokens, "shipped_tokens": tokens, "_scores": ev["_scores"], "answers": ev["answers"]}


def _strip(ev: dict) -> dict:
    return {k: v for k, v in ev.items() if k != "answers" and not k.startswith("_")}


def _figures(m: dict) -> dict:
    return {"target_calls": m["target_calls"], "target_tokens": m["target_tokens"], "wall_s": round(m["wall_s"], 1),
            "model_s": m["model_s"], "in_model_share": m["in_model_share"]}


# --- one domain, every target, all arms ------------------------------------------------------------


def run_target(foster: dict, shared: Shared, domain: Domain, settings: Settings, target: str,
               arms: tuple[str, ...] = ARMS, log: Callable[[str], None] = print) -> dict:
    from foster.agent import metrics

    from bench.dspy_arms import DSPY_ARMS, dspy_arm

    budget = max(1, foster["measured"]["usage"].get(target, {}).get("calls", 0) - foster["eval_calls"].get(target, 0))
    tag = f"[{domain.name} · {target}]"
    log(f"{tag} DSPy budget {budget} target calls")
    results: dict[str, dict] = {}
    if "copy" in arms:
        results["copy"] = copy_arm(shared)
    if "zero-shot" in arms:
        results["zero-shot"] = zero_shot_arm(foster, shared, settings, target, domain.max_new_tokens)
    for name, fn in DSPY_ARMS.items():
        if name in arms:
            results[name] = dspy_arm(name, fn, shared, settings, domain, target, budget)
            r = results[name]
            log(f"{tag} {name} fidelity {metrics.fmt_interval(r['interval'])} ({r['opt_calls']} calls, "
                f"{r['opt_calls_refused']} refused){' ERROR ' + r['error'] if r['error'] else ''}")
    results["foster"] = foster_arm(foster, shared, target)
    shipped, copied = results["foster"]["_scores"], results.get("copy", {}).get("_scores")
    for r in results.values():
        r["ceiling"] = shared.ceiling
        r["vs_foster"] = metrics.paired_difference(r["_scores"], shipped)
        if copied is not None:
            r["vs_copy"] = metrics.paired_difference(r["_scores"], copied)
    for name, r in results.items():
        log(f"{tag} {name}: {metrics.fmt_interval(r['interval'])}, {r.get('prompt_tokens')} prompt tokens/call")
    for r in results.values():
        r.pop("_scores", None)
    return {"budget_calls": budget, "arms": results, "goals": goals(results, shared.kind)}


def run_domain(domain: Domain, settings: Settings, targets: tuple[str, ...] = TARGETS, arms: tuple[str, ...] = ARMS,
               log: Callable[[str], None] = print, out: dict | None = None, save: Callable[[], None] = lambda: None,
               from_run: Path | None = None) -> dict:
    """Fills `out` as it goes and calls `save()` after the foster run and after every target, so a
    stopped benchmark keeps what it measured."""
    out = {} if out is None else out
    if from_run:
        log(f"[{domain.name}] foster run read back from {from_run}")
        foster = load_foster(from_run)
    else:
        log(f"[{domain.name}] foster run on {', '.join(targets)} (probe, characterize, mine, optimize, evaluate) ...")
        foster = run_foster(domain, settings, targets)
    shared = shared_from(foster)
    log(f"[{domain.name}] {len(shared.train)} train / {len(shared.heldout)} held-out probes, {shared.kind} answers")
    out.update({"domain": asdict(domain), "answer_kind": shared.kind, "fidelity_method": shared.scorer.method,
                "train_probes": len(shared.train), "heldout_probes": len(shared.heldout), "ceiling": shared.ceiling,
                "foster_run": foster["run_id"], "foster_run_dir": foster["run_dir"], "targets": {}})
    save()
    for target in targets:
        try:
            out["targets"][target] = run_target(foster, shared, domain, settings, target, arms, log)
        except Exception as e:  # one failing target does not hide the other
            traceback.print_exc()
            out["targets"][target] = {"error": f"{type(e).__name__}: {e}"}
        save()
    return out


def goals(arms: dict, kind: str) -> dict:
    f, c = arms.get("foster"), arms.get("copy")
    out: dict[str, Any] = {}
    if f and c and kind == "closed":
        d = f.get("vs_copy") or {}
        out["shipped_vs_copy"] = {"value": f"{f['fidelity']:.3f} vs {c['fidelity']:.3f} (difference "
                                           f"{d.get('value', 0):+.3f} [{d.get('low', 0):+.2f}, {d.get('high', 0):+.2f}])",
                                  "goal": GOALS["shipped_vs_copy"], "met": f["fidelity"] >= c["fidelity"]}
    if f and f.get("prompt_tokens") is not None:
        best = f.get("best_variant") or {}
        floor = (best.get("interval") or {}).get("low", best.get("fidelity", 0.0))
        within = f["fidelity"] >= floor
        out["prompt_tokens_per_call"] = {
            "value": f"{f['prompt_tokens']} tokens at {f['fidelity']:.3f} (best variant {best.get('variant')} "
                     f"{best.get('fidelity', 0):.3f}, interval floor {floor:.3f})",
            "goal": f"<= {GOALS['prompt_tokens_per_call']:.0f} within the best's interval",
            "met": f["prompt_tokens"] <= GOALS["prompt_tokens_per_call"] and within}
    if f and f.get("in_model_share") is not None:
        out["in_model_share"] = {"value": f["in_model_share"], "goal": f">= {GOALS['in_model_share']}",
                                 "met": f["in_model_share"] >= GOALS["in_model_share"]}
    return out


# --- output ----------------------------------------------------------------------------------------


COLUMNS = [("domain", "domain"), ("target", "target"), ("arm", "arm"), ("interval", "fidelity [95 %] n"),
           ("vs_foster", "− shipped [95 %]"), ("vs_copy", "− copy [95 %]"), ("ceiling", "ceiling"),
           ("calibration_gap", "cal. gap"), ("opt_calls", "opt calls"), ("target_calls", "target calls"),
           ("wall_s", "wall s"), ("prompt_tokens", "prompt tok/call")]


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "–"
    if key == "interval":
        return f"{value['value']:.3f} [{value['low']:.2f}, {value['high']:.2f}] {value['n']}"
    if key in ("vs_foster", "vs_copy"):
        return f"{value['value']:+.3f} [{value['low']:+.2f}, {value['high']:+.2f}]"
    if key == "in_model_share":
        return f"{100 * value:.0f} %"
    if isinstance(value, float):
        return f"{value:.1f}" if key == "wall_s" else f"{value:.3f}"
    return str(value)


def table(result: dict) -> str:
    lines = ["| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for name, d in result["domains"].items():
        if "error" in d:
            lines.append(f"| {name} | failed: {d['error']} |" + " |" * (len(COLUMNS) - 2))
            continue
        if "targets" not in d:  # a partial save while foster's run is still going
            lines.append(f"| {name} | (foster run in progress) |" + " |" * (len(COLUMNS) - 2))
            continue
        for target, t in d["targets"].items():
            if "error" in t:
                lines.append(f"| {name} | {target} | failed: {t['error']} |" + " |" * (len(COLUMNS) - 3))
                continue
            for arm in ARMS:
                r = t["arms"].get(arm)
                if r is None:
                    continue
                label = arm + (f" ({r['variant']})" if arm == "foster" else "") + (" (error)" if r.get("error") else "")
                row = {**r, "domain": name, "target": target.removeprefix("local/"), "arm": label}
                lines.append("| " + " | ".join(_cell(k, row.get(k)) for k, _ in COLUMNS) + " |")
    return "\n".join(lines)


def markdown(result: dict) -> str:
    out = [f"# foster vs the copy, zero-shot and plain DSPy — {result['date']} ({result['mode']})", "",
           f"Command: `{result['command']}`  ",
           (f"Targets: {', '.join(f'`{t}`' for t in result['targets'])}; machine: "
            f"{result['machine']['platform']}, {result['machine']['cpus']} CPUs; total {result['wall_s']:.0f} s"), "",
           table(result), ""]
    for name, d in result["domains"].items():
        if "error" in d or "targets" not in d:
            continue
        out.append(f"**{name}** ({d['answer_kind']} answers; fidelity = {d['fidelity_method']}; "
                   f"{d['train_probes']} train / {d['heldout_probes']} held-out probes; foster run `{d['foster_run']}`)")
        for target, t in d["targets"].items():
            if "error" in t:
                continue
            f = t["arms"]["foster"]
            out.append(f"- `{target}`: DSPy budget {t['budget_calls']} target calls; shipped `{f['variant']}` "
                       f"(verdict {f.get('verdict')}; lint findings {len(f.get('lint') or [])})")
            for key, g in t["goals"].items():
                out.append(f"  - {key}: {g['value']} (goal {g['goal']}): {'met' if g['met'] else 'NOT met'}")
            for arm in ("dspy-gepa", "dspy-mipro", "dspy-knn"):
                r = t["arms"].get(arm) or {}
                if r.get("error"):
                    # the first line only: parse errors quote the whole LM response over many lines
                    out.append(f"  - {arm} error: {r['error'].strip().splitlines()[0]}")
        out.append("")
    return "\n".join(out) + "\n"


def run(quick: bool | None = None, names: list[str] | None = None, targets: tuple[str, ...] | list[str] = TARGETS,
        home: str | None = None, out_dir: Path | None = None, domain_list: list[Domain] | None = None,
        settings: Settings | None = None, arms: tuple[str, ...] = ARMS, from_run: Path | None = None,
        name: str = "") -> dict:
    """All domains, all targets, all arms; writes results/compare-<date>.json|md and prints the table."""
    import foster.agent  # noqa: F401  (offline environment before litellm)

    targets = tuple(targets)
    if quick is None:
        quick = os.environ.get("FOSTER_BENCH_QUICK", "") not in ("", "0")
    settings = settings or (QUICK if quick else FULL)
    os.environ.setdefault("TQDM_DISABLE", "1")  # DSPy's and GEPA's progress bars, per example
    import dspy  # noqa: F401  (configures its loggers at import; quieten them after)

    for noisy in ("dspy", "optuna", "gepa", "LiteLLM", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # one traceback per unparsable answer; they are counted in parse_failures instead
    logging.getLogger("dspy.utils.parallelizer").setLevel(logging.CRITICAL)
    chosen = domain_list or [d for n, d in domains().items() if not names or n in names]
    # A fresh data directory: the benchmark neither reads observations of earlier runs (that would
    # hide teacher calls) nor leaves runs in the user's list.
    if from_run:  # the arms on a finished run: its own data directory
        from_run = Path(from_run).resolve()
        home = str(from_run.parents[1])
    home = home or tempfile.mkdtemp(prefix="foster-bench-")
    previous = os.environ.get("FOSTER_HOME")
    os.environ["FOSTER_HOME"] = home
    started = time.perf_counter()
    out_dir = out_dir or RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"compare-{dt.date.today().isoformat()}{'-quick' if quick else ''}{'-' + name if name else ''}"
    result: dict[str, Any] = {
        "benchmark": "compare", "date": dt.datetime.now().isoformat(timespec="seconds"),
        "mode": "quick" if quick else "full", "command": " ".join(["python -m bench.compare", *sys.argv[1:]]),
        "targets": list(targets), "settings": asdict(settings), "foster_home": home,
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "load_average_at_start": os.getloadavg()},
        "goals": GOALS, "domains": {},
    }
    def save() -> None:
        result["wall_s"] = round(time.perf_counter() - started, 1)
        result["machine"]["load_average_at_end"] = os.getloadavg()
        stem.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str) + "\n")
        stem.with_suffix(".md").write_text(markdown(result))

    try:
        for d in chosen:
            result["domains"][d.name] = {}
            try:
                run_domain(d, settings, targets, arms, out=result["domains"][d.name], save=save, from_run=from_run)
            except Exception as e:  # one failing domain does not hide the other
                traceback.print_exc()
                result["domains"][d.name] = {"error": f"{type(e).__name__}: {e}"}
    finally:
        if previous is None:
            os.environ.pop("FOSTER_HOME", None)
        else:
            os.environ["FOSTER_HOME"] = previous
    save()
    print(table(result))
    print(f"wrote {stem}.json and {stem}.md")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round, smaller budget (about half the time)")
    parser.add_argument("--domains", nargs="*", choices=sorted(domains()), help="default: all")
    parser.add_argument("--targets", nargs="*", default=list(TARGETS))
    parser.add_argument("--arms", nargs="*", choices=ARMS, default=list(ARMS), help="default: all (foster always runs)")
    parser.add_argument("--from-run", type=Path, metavar="RUN_DIR",
                        help="run the arms on a finished foster run (FOSTER_HOME/runs/RUN_ID) of the one --domains "
                             "given, instead of a new run; with --targets T, one process per target can run side by side")
    parser.add_argument("--name", default="", help="a suffix for the results files (compare-<date>-NAME.json|md)")
    parser.add_argument("--seed", type=int, help="the run's seed (default 0): another seed draws another held-out "
                        "split, so a change can be checked on probes that did not motivate it")
    args = parser.parse_args(argv)
    if args.from_run and (not args.domains or len(args.domains) != 1):
        parser.error("--from-run needs exactly one --domains (the domain that run probed)")
    if args.from_run and not (args.from_run / "report.json").is_file():
        parser.error(f"--from-run {args.from_run}: no report.json (not a finished foster run)")
    if args.name and not re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", args.name):
        parser.error("--name: letters, digits, '.', '_' and '-' only (it is part of a file name)")
    if args.seed is not None and args.seed < 0:
        parser.error(f"--seed must be 0 or more, got {args.seed}")
    settings = None
    if args.seed is not None:
        settings = dataclasses.replace(QUICK if args.quick else FULL, seed=args.seed)
    run(quick=args.quick, names=args.domains, targets=args.targets, arms=tuple(args.arms), from_run=args.from_run,
        name=args.name, settings=settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
