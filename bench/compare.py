"""foster against plain DSPy optimizers: same teacher observations, held-out split, target and budget.

    python -m bench.compare [--quick] [--domains ticket_routing house_style]

For each domain one foster run probes the teacher and characterizes it; every arm then uses that
run's probes, its train/held-out split and the teacher's answers as labels:

  zero-shot   the target with the task description as its system prompt;
  dspy-gepa   a user's plain DSPy program, dspy.Predict("input -> answer") with the task as its
  dspy-mipro  instructions and DSPy's default ChatAdapter, compiled with dspy.GEPA (budgeted in metric
              calls) or dspy.MIPROv2(auto="light") on the train probes, evaluated as DSPy runs it;
  foster      the whole pipeline (agent.runs.start_run), read from its report.json.

Budget: the DSPy optimizers may make as many target calls as foster made outside its held-out
evaluation (probe synthesis + optimizer, proposer calls included when the proposer is the target).
Past it, a call is not made and the answer is empty, as in foster's own optimizer. Every arm is
scored on the same held-out probes by the same scorer (exact after normalization for closed
answers, MiniLM embedding cosine for free text), the teacher's sampled answers give the ceiling
and, with the arm's samples at the teacher's temperatures, the calibration gap.

Writes bench/results/compare-<date>.json and .md and prints the table.
"""

from __future__ import annotations

import argparse
import contextlib
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
RESULTS = Path(__file__).resolve().parent / "results"
TARGET = "local/smollm2-135m-instruct"
GOALS = {"fidelity_points_over_gepa": 10.0, "bundle_tokens_vs_gepa": 0.5, "in_model_share": 0.9}
ARMS = ("zero-shot", "dspy-gepa", "dspy-mipro", "foster")


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
    samples: int = 2  # teacher (and arm) samples per non-zero temperature
    temperatures: tuple[float, ...] = (0.0, 0.7, 1.0)
    holdout_fraction: float = 0.4
    threshold: float = 0.9
    seed: int = 0
    num_threads: int = 1  # 2 cores and one llama.cpp model: more threads only queue on its lock

    def sample_plan(self) -> list[tuple[float, int]]:
        return [(t, i) for t in self.temperatures if t > 0 for i in range(self.samples)]


FULL = Settings()
QUICK = Settings(budget_calls=30, max_rounds=1, synth_per_kind=1, samples=1)


def domains() -> dict[str, Domain]:
    """The demo domain (closed labels) and the house-style rewrite (free text)."""
    tr, hs = EXAMPLES / "ticket_routing", EXAMPLES / "house_style"
    demo = json.loads((tr / "demo.json").read_text())
    return {
        "ticket_routing": Domain("ticket_routing", f"local/smollm2-135m-instruct@{tr / 'teacher'}",
                                 str(tr / "data" / "inputs.jsonl"), demo["task"], int(demo.get("max_new_tokens", 12))),
        "house_style": Domain("house_style", f"local/smollm2-135m-instruct@{hs / 'teacher'}",
                              str(hs / "data" / "inputs.jsonl"),
                              "Rewrite the customer message as a one-line ticket summary in the support desk's house style.",
                              32),
    }


# --- the shared scorer ----------------------------------------------------------------------------


class Scorer:
    """foster's held-out scorer (agent/evaluate.py with --fidelity auto), applied to every arm."""

    def __init__(self, kind: str, inventory: list[str]):
        self.kind, self.inventory = kind, list(inventory)

    @property
    def method(self) -> str:
        return "exact match after normalization" if self.kind == "closed" else \
            "embedding cosine (all-MiniLM-L6-v2) to the teacher's greedy answer"

    def scores(self, answers: list[str], refs: list[str]) -> list[float]:
        from foster.agent import metrics

        if self.kind == "closed":
            return [float(metrics.normalize(a, self.inventory, "closed") == r) for a, r in zip(answers, refs)]
        return metrics.text_similarity(answers, refs)

    def one(self, answer: str, ref: str) -> float:
        return self.scores([answer or ""], [ref])[0]

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


def run_foster(domain: Domain, settings: Settings, target: str) -> dict:
    """One foster run; returns its report, final graph state and what it spent."""
    from foster.agent.runs import run_state, start_run
    from foster.store.runs import RunRegistry

    config = {"teacher": domain.teacher, "targets": [target], "inputs": domain.inputs, "task": domain.task,
              "temperatures": list(settings.temperatures), "samples": settings.samples,
              "synth_per_kind": settings.synth_per_kind, "optimizer": "gepa", "budget_calls": settings.budget_calls,
              "max_rounds": settings.max_rounds, "lora_fallback": False, "max_new_tokens": domain.max_new_tokens,
              "holdout_fraction": settings.holdout_fraction, "threshold": settings.threshold, "seed": settings.seed,
              "run_id": f"bench-{domain.name}-{time.strftime('%Y%m%d-%H%M%S')}"}
    with measured(target) as m:
        run_id = start_run(config)
    run_dir = RunRegistry().run_dir(run_id)
    report = json.loads((run_dir / "report.json").read_text())
    state = run_state(run_id)
    answers = run_dir / "answers.json"
    eval_calls = len(json.loads(answers.read_text())) if answers.exists() else 0
    return {"run_id": run_id, "run_dir": str(run_dir), "config": config, "report": report, "state": state,
            "measured": m, "eval_calls": eval_calls}


def shared_from(foster: dict) -> Shared:
    state, report = foster["state"], foster["report"]
    spec = state["spec"]

    def rows(split):
        return [{"id": p["id"], "text": p["text"], "mode": spec["probes"][p["id"]]["mode"],
                 "dist": spec["probes"][p["id"]]["dist"]} for p in state["probes"] if p["split"] == split]

    kind, inventory = spec["answer_kind"], list(spec["inventory"])
    return Shared(kind=kind, inventory=inventory, train=rows("train"), heldout=rows("heldout"),
                  ceiling=report.get("ceiling"), scorer=Scorer(kind, inventory))


def foster_arm(foster: dict, target: str) -> dict:
    from foster.prompts.bundle import Bundle

    report, m = foster["report"], foster["measured"]
    t = report["targets"][target]
    best = t["best"]
    path = (report.get("best_bundle") or {}).get("path") or best.get("path")
    bundle = Bundle.load(path)
    shipped = _o200k(bundle.system_prompt) + sum(_o200k(f"{e.input}\n{e.output}") for e in bundle.examples)
    usage = report.get("usage") or m["usage"]
    wall = report.get("wall_seconds") or m["wall_s"]
    figures = _usage_figures(usage, target, m["wall_s"])
    return {
        "arm": "foster", "fidelity": best["fidelity"], "sampled_agreement": best.get("sampled_agreement"),
        "calibration_gap": best.get("calibration_gap"), "variant": best["variant"],
        "opt_calls": figures["target_calls"] - foster["eval_calls"], "eval_calls": foster["eval_calls"],
        "target_calls": figures["target_calls"], "target_tokens": figures["target_tokens"],
        "all_calls": sum(u.get("calls", 0) for u in usage.values()),
        "wall_s": round(m["wall_s"], 1), "report_wall_s": wall, "model_s": figures["model_s"],
        "in_model_share": figures["in_model_share"],
        "prompt_tokens": (best.get("tokens") or {}).get("o200k_base"), "shipped_tokens": shipped,
        "verdict": report.get("verdict"), "rounds": report.get("rounds"), "node_seconds": report.get("node_seconds"),
        "variants": {v["variant"]: v["fidelity"] for v in t.get("variants", [])},
        "report_zero_shot": (t.get("zero_shot") or {}).get("fidelity"),
        "nearest_copy": (t.get("nearest_copy") or {}).get("fidelity"),
        "usage": usage, "run_id": foster["run_id"],
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
    return {"fidelity": round(metrics.mean(scores), 4), "sampled_agreement": round(metrics.mean(agree), 4),
            "calibration_gap": round(metrics.mean(gaps), 4),
            "answers": [{"input": p["text"], "teacher": p["mode"], "answer": a, "score": round(s, 4)}
                        for p, a, s in zip(shared.heldout, greedy, scores)]}


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
            "prompt_tokens": tokens, "shipped_tokens": tokens, "answers": ev["answers"]}


# --- plain DSPy ------------------------------------------------------------------------------------


_FIELD = re.compile(r"\[\[ ## (\w+) ## \]\]")


def _empty_reply(request) -> str:
    """What a refused call answers: the output fields ChatAdapter asked for, each empty, so DSPy
    parses it (and the metric scores it) instead of failing over to another call."""
    text = ""
    for m in reversed(list(request.messages)):
        if getattr(m, "role", "") == "user":
            text = m.text or ""
            break
    asked = text[text.rfind("Respond with"):] if "Respond with" in text else ""
    fields = [f for f in dict.fromkeys(_FIELD.findall(asked)) if f != "completed"]
    return "".join(f"[[ ## {f} ## ]]\n\n" for f in fields) + "[[ ## completed ## ]]"


def budget_engine(model: str, counter):
    """A DSPy engine that sends calls through foster's gateway (litellm, counted on the ledger) and
    stops calling the model once `counter` is spent. `.raw` keeps every text it returned."""
    from dspy.lm15 import Message, Response, Usage

    from foster.agent.dspy_adapter import GatewayEngine

    class BudgetEngine(GatewayEngine):
        raw: list[str]

        def complete(self, request):
            if self.counter.limit is not None and self.counter.calls >= self.counter.limit:
                self.counter.refused += 1
                response = Response(id=None, model=self.model, message=Message.assistant(_empty_reply(request)),
                                    finish_reason="stop", usage=Usage(input_tokens=0, output_tokens=0))
            else:
                response = super().complete(request)
            self.raw.append(response.message.text or "")
            return response

    engine = BudgetEngine(model, counter=counter)
    engine.raw = []
    return engine


def budget_lm(engine, *, temperature: float = 0.0, max_tokens: int = 24):
    """A plain dspy.LM on `engine`, uncached and unretried, so every call is a counted call."""
    import dspy

    return dspy.LM(engine.model, engine=engine, cache=False, num_retries=0, temperature=temperature,
                   max_tokens=max_tokens)


def _examples(rows: list[dict]):
    import dspy

    return [dspy.Example(input=r["text"], answer=r["mode"]).with_inputs("input") for r in rows]


def _answer_of(pred) -> str:
    value = getattr(pred, "answer", None)
    return "" if value is None else str(value)


def plain_program(task: str):
    import dspy

    return dspy.Predict(dspy.Signature("input -> answer", task))


def dspy_prompt_tokens(program) -> int:
    """What the compiled program sends besides the input: ChatAdapter's system message, demos and
    the user-message frame, message contents only (as bundles are counted)."""
    import dspy

    predictor = program.predictors()[0]
    messages = dspy.ChatAdapter().format(predictor.signature, predictor.demos, {"input": ""})
    return sum(_o200k(m["content"] if isinstance(m["content"], str) else str(m["content"])) for m in messages)


def dspy_arm(name: str, compile_fn: Callable, shared: Shared, settings: Settings, domain: Domain, target: str,
             budget: int) -> dict:
    """Compile a plain program with `compile_fn(program, trainset, metric, lm, budget)` under the call
    budget, then evaluate it on the held-out probes as DSPy runs it."""
    import dspy

    from foster.agent.dspy_adapter import CallCounter

    counter = CallCounter(limit=budget)
    program = plain_program(domain.task)
    scorer = shared.scorer
    error, log = None, {}

    def metric(gold, pred, trace=None, pred_name=None, pred_trace=None):
        return scorer.one(_answer_of(pred), gold.answer)

    with measured(target) as m:
        lm = budget_lm(budget_engine(target, counter), max_tokens=domain.max_new_tokens)
        try:
            with dspy.context(lm=lm):
                program = compile_fn(program, _examples(shared.train), metric, lm, budget, log)
        except Exception as e:  # an optimizer that crashes leaves the uncompiled program, and says so
            error = f"{type(e).__name__}: {e}"
            log["traceback"] = traceback.format_exc(limit=4)
        opt_calls, refused = counter.calls, counter.refused
        engine = budget_engine(target, CallCounter())
        eval_lm = budget_lm(engine, max_tokens=domain.max_new_tokens)
        failures, raw_greedy = [0], {}

        def answer(x: str, t: float, seed: int) -> str:
            mark = len(engine.raw)
            try:
                with dspy.context(lm=eval_lm):
                    text = _answer_of(program(input=x, config={"temperature": t, "seed": seed}))
            except Exception:  # the adapter could not parse the target: DSPy raises, the user gets nothing
                failures[0] += 1
                text = ""
            if t == 0:  # what the target said first, markers and all, whether DSPy could parse it or not
                raw_greedy[x] = text if text else (engine.raw[mark] if len(engine.raw) > mark else "")
            return text

        ev = evaluate_arm(shared, settings, answer)
        lenient = shared.scorer.scores([raw_greedy.get(p["text"], "") for p in shared.heldout],
                                       [p["mode"] for p in shared.heldout])
    predictor = program.predictors()[0]
    return {"arm": name, **_strip(ev), "opt_calls": opt_calls, "opt_calls_refused": refused, "budget": budget,
            "eval_calls": m["target_calls"] - opt_calls, **_figures(m),
            "prompt_tokens": dspy_prompt_tokens(program), "shipped_tokens": dspy_prompt_tokens(program),
            "instructions": predictor.signature.instructions, "demos": len(predictor.demos or []),
            "parse_failures": failures[0], "fidelity_if_unparsed_read_raw": round(sum(lenient) / max(1, len(lenient)), 4),
            "error": error, "log": log,
            "answers": [{**a, "raw": raw_greedy.get(a["input"], "")} for a in ev["answers"]]}


def compile_gepa(program, trainset, metric, lm, budget, log):
    """GEPA as its docs show it: a feedback metric, train/val halves, the budget in metric calls.
    The only model at hand (the target) reflects; its calls count against the same budget."""
    import random

    import dspy

    def feedback_metric(gold, pred, trace=None, pred_name=None, pred_trace=None):
        answer = _answer_of(pred)
        score = metric(gold, pred)
        text = "Correct." if score >= 0.999 else f"Expected answer: {gold.answer!r}. Your answer: {answer!r}."
        return dspy.Prediction(score=score, feedback=text)

    items = list(trainset)
    random.Random(0).shuffle(items)
    half = max(1, len(items) // 2)
    train, val = items[:half], items[half:] or items[:half]
    gepa = dspy.GEPA(metric=feedback_metric, max_metric_calls=budget, reflection_lm=lm, num_threads=1,
                     track_stats=True, seed=0)
    optimized = gepa.compile(program, trainset=train, valset=val)
    results = getattr(optimized, "detailed_results", None)
    if results is not None:
        log.update(candidates=len(results.candidates), val_scores=list(results.val_aggregate_scores))
    log.update(train=len(train), val=len(val))
    return optimized


def compile_mipro(program, trainset, metric, lm, budget, log):
    """MIPROv2 auto="light" with the target as task and prompt model; its own sizing, capped by the budget."""
    import dspy

    mipro = dspy.MIPROv2(metric=metric, auto="light", prompt_model=lm, task_model=lm, num_threads=1, seed=0,
                         verbose=False)
    optimized = mipro.compile(program, trainset=trainset)
    log.update(score=getattr(optimized, "score", None))
    return optimized


def _strip(ev: dict) -> dict:
    return {k: v for k, v in ev.items() if k != "answers"}


def _figures(m: dict) -> dict:
    return {"target_calls": m["target_calls"], "target_tokens": m["target_tokens"], "wall_s": round(m["wall_s"], 1),
            "model_s": m["model_s"], "in_model_share": m["in_model_share"]}


# --- one domain, all arms --------------------------------------------------------------------------


def run_domain(domain: Domain, settings: Settings, target: str = TARGET, arms: tuple[str, ...] = ARMS,
               log: Callable[[str], None] = print) -> dict:
    log(f"[{domain.name}] foster run (probe, characterize, mine, optimize, evaluate) ...")
    foster = run_foster(domain, settings, target)
    shared = shared_from(foster)
    budget = max(1, foster["measured"]["target_calls"] - foster["eval_calls"])
    log(f"[{domain.name}] {len(shared.train)} train / {len(shared.heldout)} held-out probes, {shared.kind} answers; "
        f"DSPy budget {budget} target calls")
    results: dict[str, dict] = {}
    if "zero-shot" in arms:
        results["zero-shot"] = zero_shot_arm(foster, shared, settings, target, domain.max_new_tokens)
        log(f"[{domain.name}] zero-shot fidelity {results['zero-shot']['fidelity']:.3f}")
    for name, fn in (("dspy-gepa", compile_gepa), ("dspy-mipro", compile_mipro)):
        if name in arms:
            results[name] = dspy_arm(name, fn, shared, settings, domain, target, budget)
            r = results[name]
            log(f"[{domain.name}] {name} fidelity {r['fidelity']:.3f} ({r['opt_calls']} calls, "
                f"{r['opt_calls_refused']} refused){' ERROR ' + r['error'] if r['error'] else ''}")
    results["foster"] = foster_arm(foster, target)
    log(f"[{domain.name}] foster fidelity {results['foster']['fidelity']:.3f} ({results['foster']['variant']})")
    for r in results.values():
        r["ceiling"] = shared.ceiling
    return {"domain": asdict(domain), "answer_kind": shared.kind, "fidelity_method": shared.scorer.method,
            "train_probes": len(shared.train), "heldout_probes": len(shared.heldout), "budget_calls": budget,
            "ceiling": shared.ceiling, "foster_run": foster["run_id"], "arms": results,
            "goals": goals(results)}


def goals(arms: dict) -> dict:
    f, g = arms.get("foster"), arms.get("dspy-gepa")
    out: dict[str, Any] = {}
    if f and g:
        gain = 100 * (f["fidelity"] - g["fidelity"])
        out["fidelity_points_over_gepa"] = {"value": round(gain, 1), "goal": f">= {GOALS['fidelity_points_over_gepa']}",
                                            "met": gain >= GOALS["fidelity_points_over_gepa"]}
        if f.get("prompt_tokens") and g.get("prompt_tokens"):
            ratio = f["prompt_tokens"] / g["prompt_tokens"]
            out["bundle_tokens_vs_gepa"] = {"value": round(ratio, 3), "goal": f"<= {GOALS['bundle_tokens_vs_gepa']}",
                                            "met": ratio <= GOALS["bundle_tokens_vs_gepa"]}
    if f and f.get("in_model_share") is not None:
        out["in_model_share"] = {"value": f["in_model_share"], "goal": f">= {GOALS['in_model_share']}",
                                 "met": f["in_model_share"] >= GOALS["in_model_share"]}
    return out


# --- output ----------------------------------------------------------------------------------------


COLUMNS = [("domain", "domain"), ("arm", "arm"), ("fidelity", "fidelity"), ("ceiling", "ceiling"),
           ("calibration_gap", "cal. gap"), ("opt_calls", "opt calls"), ("target_calls", "target calls"),
           ("target_tokens", "target tokens"), ("wall_s", "wall s"), ("in_model_share", "in model calls"),
           ("prompt_tokens", "prompt tok/call"), ("shipped_tokens", "shipped tok")]


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "–"
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
        for arm in ARMS:
            r = d["arms"].get(arm)
            if r is None:
                continue
            row = {**r, "domain": name, "arm": arm + (" (error)" if r.get("error") else "")}
            lines.append("| " + " | ".join(_cell(k, row.get(k)) for k, _ in COLUMNS) + " |")
    return "\n".join(lines)


def markdown(result: dict) -> str:
    out = [f"# foster vs plain DSPy — {result['date']} ({result['mode']})", "",
           f"Command: `{result['command']}`  ", f"Target: `{result['target']}`; machine: {result['machine']['platform']}, "
           f"{result['machine']['cpus']} CPUs; total {result['wall_s']:.0f} s", "", table(result), ""]
    for name, d in result["domains"].items():
        if "error" in d:
            continue
        out.append(f"**{name}** ({d['answer_kind']} answers; fidelity = {d['fidelity_method']}; "
                   f"{d['train_probes']} train / {d['heldout_probes']} held-out probes; DSPy budget "
                   f"{d['budget_calls']} target calls; foster run `{d['foster_run']}`, best variant "
                   f"`{d['arms']['foster']['variant']}`, verdict: {d['arms']['foster'].get('verdict')})")
        for key, g in d["goals"].items():
            out.append(f"- {key}: {g['value']} (goal {g['goal']}): {'met' if g['met'] else 'NOT met'}")
        for arm in ("dspy-gepa", "dspy-mipro"):
            r = d["arms"].get(arm) or {}
            if r.get("error"):
                # the first line only: parse errors quote the whole LM response over many lines
                out.append(f"- {arm} error: {r['error'].strip().splitlines()[0]}")
        out.append("")
    return "\n".join(out) + "\n"


def run(quick: bool | None = None, names: list[str] | None = None, target: str = TARGET,
        home: str | None = None, out_dir: Path | None = None, domain_list: list[Domain] | None = None,
        settings: Settings | None = None) -> dict:
    """All domains, all arms; writes results/compare-<date>.json|md and prints the table."""
    import foster.agent  # noqa: F401  (offline environment before litellm)

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
    home = home or tempfile.mkdtemp(prefix="foster-bench-")
    previous = os.environ.get("FOSTER_HOME")
    os.environ["FOSTER_HOME"] = home
    started = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "compare", "date": dt.datetime.now().isoformat(timespec="seconds"),
        "mode": "quick" if quick else "full", "command": "python -m bench.compare" + (" --quick" if quick else ""),
        "target": target, "settings": asdict(settings), "foster_home": home,
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "load_average_at_start": os.getloadavg()},
        "goals": GOALS, "domains": {},
    }
    try:
        for d in chosen:
            try:
                result["domains"][d.name] = run_domain(d, settings, target)
            except Exception as e:  # one failing domain does not hide the other
                traceback.print_exc()
                result["domains"][d.name] = {"error": f"{type(e).__name__}: {e}"}
    finally:
        if previous is None:
            os.environ.pop("FOSTER_HOME", None)
        else:
            os.environ["FOSTER_HOME"] = previous
    result["wall_s"] = round(time.perf_counter() - started, 1)
    result["machine"]["load_average_at_end"] = os.getloadavg()
    out_dir = out_dir or RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"compare-{dt.date.today().isoformat()}{'-quick' if quick else ''}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    stem.with_suffix(".md").write_text(markdown(result))
    print(table(result))
    print(f"wrote {stem}.json and {stem}.md")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round, smaller budget (about half the time)")
    parser.add_argument("--domains", nargs="*", choices=sorted(domains()), help="default: all")
    parser.add_argument("--target", default=TARGET)
    args = parser.parse_args(argv)
    run(quick=args.quick, names=args.domains, target=args.target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
