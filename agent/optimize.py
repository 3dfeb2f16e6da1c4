"""DSPy optimization of a prompt bundle against a target model, budgeted in target calls.

A bundle becomes a one-predictor program (`input -> answer`, instructions = system prompt, demos =
examples); DSPy renders it through `BundleAdapter`, i.e. through the bundle's own `messages()` /
`prompt()`, so the program it optimizes and the bundle read back from it are the same prompt. For a
knn bundle only the instructions are tuned: its examples stay a pool retrieved per input.

Optimizers are a small registry (`OPTIMIZERS`, extended with `@optimizer(name)`); each sizes its
DSPy optimizer to the call budget, and a `CallCounter` refuses target calls past it.
"""

from __future__ import annotations

import functools
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from foster.agent.program import ANSWER, INPUT  # the program's fields; agent.dspy_adapter renders exactly these
from foster.prompts.answers import answers_agree, normalize_answer
from foster.prompts.bundle import Bundle, Provenance

if TYPE_CHECKING:  # dspy takes seconds to import: `from agent.optimize import OPTIMIZERS` must not
    import dspy
    from foster.agent.dspy_adapter import CallCounter

__all__ = [
    "OPTIMIZERS",
    "OptimizeResult",
    "OptimizerRun",
    "TrainItem",
    "agreement",
    "bundle_to_program",
    "optimize",
    "optimizer",
    "program_to_bundle",
]


@dataclass
class TrainItem:
    """One optimization probe: its input, the teacher's modal answer and answer distribution."""

    input: str
    teacher_mode: str
    teacher_dist: dict[str, float] = field(default_factory=dict)


@dataclass
class OptimizeResult:
    bundle: Bundle
    optimizer: str
    calls_used: int  # calls made to the target model (reflection/proposal calls included when it is the target)
    score_train: float | None  # the optimizer's own score of the returned prompt on its train/val probes
    log: dict[str, Any]


# --- program <-> bundle ---------------------------------------------------------------------------


def bundle_to_program(bundle: Bundle) -> dspy.Predict:
    """A Predict over `input -> answer` with the system prompt as instructions and the examples as
    demos (none for a knn bundle: its examples are retrieved per input when rendered)."""
    import dspy

    signature = dspy.Signature(f"{INPUT} -> {ANSWER}", bundle.system_prompt or None)
    program = dspy.Predict(signature)
    if bundle.selection.kind != "knn":
        program.demos = [dspy.Example({INPUT: e.input, ANSWER: e.output}).with_inputs(INPUT) for e in bundle.examples]
    return program


def _predictor(program: dspy.Module) -> dspy.Predict:
    predictors = program.predictors()
    if len(predictors) != 1:
        raise ValueError(f"a bundle program has exactly one predictor, this one has {len(predictors)}")
    return predictors[0]


def program_to_bundle(program: dspy.Module, base: Bundle, name: str) -> Bundle:
    """The bundle `program` renders: base's teacher, targets, contract and template, with the
    program's instructions and (unless base retrieves its examples by knn) its demos."""
    from foster.agent.dspy_adapter import instructions_of, render_bundle

    predictor = _predictor(program)
    rendered = render_bundle(base, instructions_of(predictor.signature), predictor.demos)
    data = rendered.model_dump(exclude={"id", "report", "provenance"})
    data["name"] = name
    data["provenance"] = Provenance.collect(
        run_id=base.provenance.run_id, data_hashes=base.provenance.data_hashes, notes=f"optimized from {base.name or base.id}"
    )
    return Bundle.model_validate(data)


# --- the metric -----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _embedding(text: str):
    from foster.prompts.embedding import embed

    return embed([text])[0]


Score = Callable[[str, str], float]  # (answer, the teacher's answer) -> agreement in [0, 1]


def agreement(answer: str | None, item: TrainItem, contract: Any, score: Score | None = None) -> float:
    """How far `answer` agrees with the teacher on `item`: 1.0 or 0.0 for closed answers (normalized
    exact match); for free text (contract.format == "text") the embedding cosine, clipped at 0, unless
    `score` is given (the run's primary free-text metric: the tuner optimizes what the verdict reads)."""
    if score is not None:
        return float(score(answer or "", item.teacher_mode))
    if answers_agree(answer, item.teacher_mode, contract):
        return 1.0
    fmt = contract.get("format", "text") if isinstance(contract, dict) else getattr(contract, "format", "text")
    if fmt != "text":
        return 0.0
    mine, theirs = normalize_answer(answer, contract), normalize_answer(item.teacher_mode, contract)
    if not mine or not theirs:
        return 0.0
    return max(0.0, min(1.0, float(_embedding(mine) @ _embedding(theirs))))


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class AgreementMetric:
    """The optimizers' metric: `agreement` with the teacher. Called with DSPy's five arguments it
    returns a float; `feedback` returns dspy.Prediction(score, feedback) for GEPA's reflection."""

    def __init__(self, contract: Any, score: Score | None = None):
        self.contract = contract
        self.score = score

    def item(self, gold: Any) -> TrainItem:
        return TrainItem(input=gold[INPUT], teacher_mode=gold[ANSWER], teacher_dist=dict(gold.get("teacher_dist") or {}))

    @staticmethod
    def answer(pred: Any) -> str:
        if pred is None:
            return ""
        value = pred.get(ANSWER) if hasattr(pred, "get") else getattr(pred, ANSWER, None)
        return "" if value is None else str(value)

    def __call__(self, gold, pred, trace=None, pred_name=None, pred_trace=None) -> float:
        return agreement(self.answer(pred), self.item(gold), self.contract, self.score)

    def feedback(self, gold, pred, trace=None, pred_name=None, pred_trace=None) -> dspy.Prediction:
        import dspy

        item, answer = self.item(gold), self.answer(pred)
        score = agreement(answer, item, self.contract, self.score)
        dist = ", ".join(f"{_short(a, 60)!r} {p:.2f}" for a, p in sorted(item.teacher_dist.items(), key=lambda kv: -kv[1])[:5])
        if score >= 1.0:
            text = f"Correct: the teacher answered {_short(item.teacher_mode)!r} and so did you."
        else:
            text = f"The teacher answered {_short(item.teacher_mode)!r}; you answered {_short(answer) or '(nothing)'!r}."
            if score > 0:
                text += f" Similarity to the teacher's answer: {score:.2f}."
        if dist:
            text += f" The teacher's answer distribution on this input: {dist}."
        answers = getattr(self.contract, "answers", None) or []
        if answers and score < 1.0:
            text += f" Valid answers: {', '.join(answers[:30])}. Answer with one of them only."
        return dspy.Prediction(score=score, feedback=text)


# --- the optimizer registry -----------------------------------------------------------------------


@dataclass
class OptimizerRun:
    """What an optimizer function gets besides (program, trainset, metric, budget)."""

    metric: AgreementMetric
    counter: CallCounter  # every call to the target model (program and proposer), refused past the budget
    target_lm: dspy.LM
    reflection_lm: dspy.LM  # proposes instructions (GEPA reflection, MIPROv2/SIMBA prompt model)
    reflection_is_target: bool
    plain_proposer: bool  # a local proposer answers in plain text (PlainTextAdapter), not JSON or markers
    knn: bool  # instructions only: the examples are a retrieved pool
    seed: int = 0
    num_threads: int = 1
    log: dict[str, Any] = field(default_factory=dict)

    def split(self, trainset: list, n: int) -> tuple[list, list]:
        """(n items for validation, the rest): shuffled by the seed, then dealt round-robin across
        the teacher's answers, so even a small valset sees every answer it can."""
        items = list(trainset)
        random.Random(self.seed).shuffle(items)
        groups: dict[str, list] = {}
        for item in items:
            groups.setdefault(normalize_answer(item[ANSWER], self.metric.contract).casefold(), []).append(item)
        queues = sorted(groups.values(), key=len, reverse=True)
        dealt = [queue[i] for i in range(len(queues[0]) if queues else 0) for queue in queues if i < len(queue)]
        return dealt[:n], dealt[n:]


OptimizerFn = Callable[["dspy.Module", list, AgreementMetric, int, OptimizerRun], "dspy.Module"]
OPTIMIZERS: dict[str, OptimizerFn] = {}


def optimizer(name: str) -> Callable[[OptimizerFn], OptimizerFn]:
    """Register `fn(program, trainset, metric, budget, run) -> program` under `name`."""

    def register(fn: OptimizerFn) -> OptimizerFn:
        OPTIMIZERS[name] = fn
        return fn

    return register


def _percent(score: Any) -> float | None:
    """DSPy's Evaluate reports percentages; everything here is 0..1."""
    return None if score is None else float(score) / 100.0


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


@optimizer("gepa")
def run_gepa(program, trainset, metric, budget, run: OptimizerRun):
    """GEPA: reflective instruction evolution with textual feedback. The Pareto valset is a budget/5
    slice of the probes, minibatches are 3; GEPA stops when the next iteration (two minibatch
    evaluations and a reflection call, when the reflection model is the target) would not fit."""
    import dspy

    valset, _ = run.split(trainset, _clamp(budget // 5, 1, len(trainset)))
    minibatch = min(3, len(trainset))
    per_iteration = 2 * minibatch + int(run.reflection_is_target)

    def out_of_budget(state) -> bool:
        return (run.counter.remaining or 0) < per_iteration

    proposer = None
    if run.plain_proposer:
        from dspy.teleprompt.gepa.instruction_proposal import InstructionProposer
        from foster.agent.dspy_adapter import PlainTextAdapter

        proposer = InstructionProposer(adapter=PlainTextAdapter())
    gepa = dspy.GEPA(
        metric=metric.feedback,
        instruction_proposer=proposer,
        max_metric_calls=budget,
        reflection_lm=run.reflection_lm,
        reflection_minibatch_size=minibatch,
        use_merge=False,  # one component: nothing to merge
        num_threads=run.num_threads,
        track_stats=True,
        seed=run.seed,
        gepa_kwargs={"stop_callbacks": [out_of_budget]},
    )
    optimized = gepa.compile(program, trainset=trainset, valset=valset)
    results = getattr(optimized, "detailed_results", None)
    run.log.update(valset=len(valset), minibatch=minibatch)
    if results is not None:
        scores = list(results.val_aggregate_scores)
        run.log.update(candidates=len(results.candidates), seed_score=scores[0] if scores else None,
                       score_train=scores[results.best_idx] if scores else None)
        from foster.agent.dspy_adapter import instructions_of

        run.log["candidate_instructions"] = [_short(instructions_of(_predictor(c).signature), 200) for c in results.candidates]
    return optimized


@optimizer("miprov2")
def run_miprov2(program, trainset, metric, budget, run: OptimizerRun):
    """MIPROv2 sized by hand (auto=None): 3 instruction candidates from the proposer model and
    4 bootstrapping runs (MIPROv2 bootstraps demos even zero-shot, to show its proposer) over a
    budget/12 slice; fixed bases also search demo sets (labeled + up to 2 bootstrapped), a knn
    base is optimized zero-shot. Trials, each a full pass over a budget/6 valset, use the rest."""
    import dspy

    valset, rest = run.split(trainset, _clamp(budget // 6, 1, max(1, len(trainset) - 1)))
    candidates = 3
    rest = (rest or list(valset))[: _clamp(budget // (3 * (candidates + 1)), 2, len(trainset))]
    demos = 0 if run.knn else 2
    proposer_calls = (candidates + 2) if run.reflection_is_target else 0
    bootstrap_calls = (candidates + 1) * len(rest)
    trials = max(1, (budget - proposer_calls - bootstrap_calls) // max(1, len(valset)) - 1)
    mipro = dspy.MIPROv2(
        metric=metric,
        prompt_model=run.reflection_lm,
        task_model=run.target_lm,
        auto=None,
        num_candidates=candidates,
        max_bootstrapped_demos=demos,
        max_labeled_demos=0 if run.knn else 4,
        num_threads=run.num_threads,
        seed=run.seed,
        metric_threshold=1.0 if metric.contract.format != "text" else 0.9,
        verbose=False,
    )
    optimized = mipro.compile(
        program,
        trainset=rest,
        valset=valset,
        num_trials=trials,
        minibatch=False,
        program_aware_proposer=False,  # the program is one Predict: its source says nothing
        view_data_batch_size=max(1, len(rest)),  # one data-summary call
    )
    run.log.update(valset=len(valset), trials=trials, candidates=candidates, score_train=_percent(getattr(optimized, "score", None)))
    return optimized


@optimizer("simba")
def run_simba(program, trainset, metric, budget, run: OptimizerRun):
    """SIMBA with 2 candidates per step on minibatches of budget/12 probes, as many steps as fit
    after its final evaluation of the winners; a knn base only gets rules appended."""
    import dspy

    candidates = 2
    bsize = _clamp(budget // 12, 1, len(trainset))
    subset, _ = run.split(trainset, _clamp(budget // 6, bsize, len(trainset)))
    per_step = bsize * candidates + (candidates + 1) * bsize + (candidates + 1) * int(run.reflection_is_target)
    final = (candidates + 1) * len(subset)
    steps = max(1, (budget - final) // max(1, per_step))
    simba = dspy.SIMBA(
        metric=metric,
        bsize=bsize,
        num_candidates=candidates,
        max_steps=steps,
        max_demos=0 if run.knn else 4,
        prompt_model=run.reflection_lm,
        num_threads=run.num_threads,
    )
    optimized = simba.compile(program, trainset=subset, seed=run.seed)
    scored = getattr(optimized, "candidate_programs", None) or []
    run.log.update(bsize=bsize, steps=steps, subset=len(subset), score_train=float(scored[0]["score"]) if scored else None)
    return optimized


@optimizer("bootstrap")
def run_bootstrap(program, trainset, metric, budget, run: OptimizerRun):
    """BootstrapFewShotWithRandomSearch over demo sets (teacher-labeled + up to 2 bootstrapped) on a
    budget/5 valset, with as many random candidates as fit. A knn base retrieves its demos per
    input, so there is nothing to search: it comes back unchanged and no call is spent."""
    import dspy

    if run.knn:
        run.log["note"] = "bootstrap tunes demos; a knn bundle retrieves its demos per input: base returned unchanged"
        return program
    valset, rest = run.split(trainset, _clamp(budget // 5, 1, max(1, len(trainset) - 1)))
    rest = rest or list(valset)
    demos = 2
    bootstrap_cost = min(len(rest), 2 * demos + 2)
    candidates = max(0, (budget - 3 * len(valset) - bootstrap_cost) // (len(valset) + bootstrap_cost))
    search = dspy.BootstrapFewShotWithRandomSearch(
        metric=metric,
        max_bootstrapped_demos=demos,
        max_labeled_demos=4,
        num_candidate_programs=candidates,
        num_threads=run.num_threads,
        metric_threshold=1.0 if metric.contract.format != "text" else 0.9,
    )
    optimized = search.compile(program, trainset=rest, valset=valset)
    scored = getattr(optimized, "candidate_programs", None) or []
    run.log.update(valset=len(valset), candidates=candidates + 3, score_train=_percent(scored[0]["score"]) if scored else None)
    return optimized


# --- the entry point ------------------------------------------------------------------------------


def optimize(
    base: Bundle,
    train: list[TrainItem],
    target: str,
    *,
    optimizer: str = "gepa",
    budget_calls: int = 200,
    reflection_lm: str | None = None,
    seed: int = 0,
    completion: bool = False,
    max_tokens: int = 24,
    num_threads: int = 1,
    score: Score | None = None,
) -> OptimizeResult:
    """Optimize `base` against `target` on `train` with the named optimizer, spending at most
    `budget_calls` calls to the target (the reflection/proposer model is the target unless
    `reflection_lm` names another). Greedy answers of `max_tokens`, as evaluation asks them."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
    if not train:
        raise ValueError("optimize needs at least one train item")
    if budget_calls < 1:
        raise ValueError(f"budget_calls must be at least 1, got {budget_calls}")

    import dspy
    from foster.agent.dspy_adapter import (
        BundleAdapter,
        CallCounter,
        PlainTextAdapter,
        gateway_lm,
    )

    budget = CallCounter(limit=budget_calls)  # every call to the target model
    program_calls = CallCounter(parent=budget)
    target_lm = gateway_lm(target, completion=completion, max_tokens=max_tokens, counter=program_calls)
    reflection_model = reflection_lm or target
    reflection_is_target = reflection_model == target
    reflection_calls = CallCounter(parent=budget if reflection_is_target else None)
    plain = reflection_model.startswith("local/")
    # A proposer writes instructions: longer and sampled. Chat even for a base target (the local
    # provider renders chat as a transcript for base models).
    proposer = gateway_lm(reflection_model, temperature=0.7, max_tokens=256 if plain else 2048, counter=reflection_calls)

    knn = base.selection.kind == "knn"
    metric = AgreementMetric(base.output_contract, score)
    run = OptimizerRun(metric=metric, counter=budget, target_lm=target_lm, reflection_lm=proposer,
                       reflection_is_target=reflection_is_target, plain_proposer=plain, knn=knn, seed=seed,
                       num_threads=num_threads)
    trainset = [
        dspy.Example({INPUT: t.input, ANSWER: t.teacher_mode, "teacher_dist": dict(t.teacher_dist)}).with_inputs(INPUT)
        for t in train
    ]
    program = bundle_to_program(base)
    adapter = BundleAdapter(base, completion=completion, fallback=PlainTextAdapter() if plain else None)
    if knn and base.examples:
        base.select_examples(train[0].input)  # embeds the pool once; the adapter's copies share it

    start = time.perf_counter()
    with dspy.context(lm=target_lm, adapter=adapter):
        optimized = OPTIMIZERS[optimizer](program, trainset, metric, budget_calls, run)
    seconds = time.perf_counter() - start

    bundle = program_to_bundle(optimized, base, name=f"{base.name or 'bundle'}-{optimizer}")
    bundle.provenance.notes = f"optimized with {optimizer} against {target} ({budget.calls} target calls) from {base.name or base.id}"
    log = {
        "target": target,
        "optimizer": optimizer,
        "budget_calls": budget_calls,
        "calls_used": budget.calls,
        "program_calls": program_calls.calls,
        "calls_refused": budget.refused + reflection_calls.refused * (not reflection_is_target),
        "reflection_lm": reflection_model,
        "reflection_calls": reflection_calls.calls,
        "reflection_in_budget": reflection_is_target,
        "knn": knn,
        "completion": completion,
        "seconds": round(seconds, 2),
        "instructions_changed": bundle.system_prompt != base.system_prompt,
        "examples_changed": [e.model_dump() for e in bundle.examples] != [e.model_dump() for e in base.examples],
        **run.log,
    }
    return OptimizeResult(bundle=bundle, optimizer=optimizer, calls_used=budget.calls,
                          score_train=log.get("score_train"), log=log)


# --- foster's own tuner: what it controls, measured on a validation split carved from train ---------

TUNER = ("auto", "foster")  # --optimizer values that are not DSPy optimizers (agent/optimize_node.py)


@dataclass
class Trial:
    name: str
    bundle: Bundle  # as tried: its pool/examples without the validation inputs
    scores: list[float]
    tokens: int  # prompt tokens per call (o200k_base), the bundle's own count

    @property
    def mean(self) -> float:
        return sum(self.scores) / len(self.scores) if self.scores else 0.0


@dataclass
class TuneResult:
    tuned: Bundle  # the seed, unless a configuration beat it on validation by more than the interval
    compact: Bundle | None  # the fewest-token configuration within the interval of the best on validation
    calls_used: int
    log: dict[str, Any]
    seed_scores: list[float]  # on the validation split: what a DSPy proposal from the same seed must beat
    tuned_scores: list[float]
    recall: Bundle | None = None  # a tried configuration plus the recall rule, when that beat it on validation


def carve_validation(items: list[TrainItem], n: int, seed: int = 0) -> tuple[list[TrainItem], list[TrainItem]]:
    """(validation, rest) from the train probes, never the held-out ones: shuffled by the seed and dealt
    round-robin across the teacher's answers so a small split still sees every answer it can."""
    shuffled = list(items)
    random.Random(seed).shuffle(shuffled)
    groups: dict[str, list[TrainItem]] = {}
    for item in shuffled:
        groups.setdefault(item.teacher_mode.casefold(), []).append(item)
    queues = sorted(groups.values(), key=len, reverse=True)
    dealt = [q[i] for i in range(len(queues[0]) if queues else 0) for q in queues if i < len(q)]
    return dealt[:n], dealt[n:]


def beats(challenger: list[float], incumbent: list[float], seed: int = 0) -> tuple[bool, dict]:
    """A challenger replaces the incumbent only when the paired difference's whole 95 % interval is
    above zero: beating it by more than the interval. A tie (or a win inside the noise) keeps it."""
    from foster.agent.metrics import paired_difference

    diff = paired_difference(challenger, incumbent, seed=seed)
    return diff["low"] > 0, diff


def _configurations(base: Bundle, ingredients: dict, ks: tuple[int, ...]) -> list[tuple[str, Bundle]]:
    """The knobs foster controls, one change from the seed at a time, in the order a small budget should
    try them: the rules (on the demo they are half of every call's tokens), then the smallest k without
    them, then k, the condensed pool and fixed examples."""
    from foster.prompts.bundle import Example, ExampleSelection

    plain = ingredients.get("system_plain")
    condensed = [Example(**e) for e in ingredients.get("condensed") or []]
    fixed = [Example(**e) for e in ingredients.get("fixed") or []]
    k0 = base.selection.k

    def with_k(b: Bundle, k: int) -> Bundle:
        return b.model_copy(update={"selection": b.selection.model_copy(update={"k": k})})

    out: list[tuple[str, Bundle]] = []
    rules_differ = plain is not None and plain != base.system_prompt
    if rules_differ:
        out.append(("rules off", base.model_copy(update={"system_prompt": plain})))
    smaller = sorted(k for k in ks if k < k0)
    if rules_differ and smaller:
        out.append((f"rules off, k={smaller[0]}", with_k(base.model_copy(update={"system_prompt": plain}), smaller[0])))
    for k in sorted((k for k in ks if k != k0), key=lambda k: (k > k0, -k if k < k0 else k)):
        out.append((f"k={k}", with_k(base, k)))
    if condensed and len(condensed) < len(base.examples):
        out.append(("condensed pool", base.model_copy(update={"examples": condensed})))
    if fixed:
        out.append(("fixed examples", base.model_copy(update={"examples": fixed,
                                                              "selection": ExampleSelection(kind="fixed")})))
    return out


def _rebuild(bundle: Bundle) -> Bundle:
    """A fresh bundle (new id, empty embedding cache) from a model_copy'd one."""
    return Bundle.model_validate(bundle.model_dump(exclude={"id"}))


def _fold(text: str) -> str:
    return " ".join(text.casefold().split())


def validation_scores(bundle: Bundle, val: list[TrainItem], target: str, *, max_tokens: int = 24, seed: int = 0,
                      complete: Callable[..., Any] | None = None, score: Score | None = None) -> list[float]:
    """Greedy agreement on `val`, the bundle rendered as it ships but with the validation inputs taken out
    of its examples (a knn pool would otherwise retrieve each probe's own answer)."""
    from foster.agent.target import ask

    tried = _without(bundle, val)
    scores = []
    for item in val:
        res = ask(tried, target, item.input, complete, temperature=0.0, max_tokens=max_tokens, seed=seed)
        scores.append(agreement(res.texts[0], item, bundle.output_contract, score))
    return scores


def tune(base: Bundle, val: list[TrainItem], target: str, *, ingredients: dict | None = None, budget_calls: int = 60,
         max_tokens: int = 24, seed: int = 0, ks: tuple[int, ...] = (1, 2, 4, 8),
         complete: Callable[..., Any] | None = None, score: Score | None = None, recall: bool = True,
         more: list[TrainItem] = (), recall_calls: int = 0) -> TuneResult:
    """foster's own search over k, the pool (full or condensed), fixed vs retrieved examples and the rules
    on or off, greedy answers on `val` (train probes the pool is stripped of while tuning). Works with no
    model besides the target; `budget_calls` counts target calls, a configuration is tried only if a
    whole validation pass still fits. The recall rule's threshold may spend `recall_calls` more target
    calls on the train inputs in `more` (`recall_evidence`)."""
    from foster.agent.metrics import fidelity_interval

    ingredients = ingredients or {}
    calls = 0

    def run(name: str, b: Bundle) -> Trial:
        nonlocal calls
        scores = validation_scores(b, val, target, max_tokens=max_tokens, seed=seed, complete=complete, score=score)
        calls += len(val)
        return Trial(name, b, scores, b.token_counts()["o200k_base"])

    log: dict[str, Any] = {"validation": len(val), "budget_calls": budget_calls, "trials": []}
    if not val or budget_calls < len(val):
        log["note"] = "no validation pass fits the budget: the seed is kept untried"
        return TuneResult(base, None, 0, log, [], [])
    exact = base.output_contract.format != "text" or getattr(score, "binary", False)
    seed_trial = run("seed", base)
    trials = [seed_trial]
    incumbent = seed_trial
    for name, b in _configurations(base, ingredients, ks):
        if budget_calls - calls < len(val):
            log["stopped"] = f"budget: {budget_calls - calls} calls left, a pass needs {len(val)}"
            break
        t = run(name, b)
        trials.append(t)
        won, diff = beats(t.scores, incumbent.scores, seed=seed)
        log["trials"].append({"config": name, "score": fidelity_interval(t.scores, exact), "tokens": t.tokens,
                              "vs_incumbent": diff, "incumbent": incumbent.name, "replaced": won})
        if won:
            incumbent = t
    best = max(trials, key=lambda t: t.mean)
    floor = fidelity_interval(best.scores, exact)["low"]
    within = [t for t in trials if t.mean >= floor]
    smallest = min(within, key=lambda t: (t.tokens, -t.mean))
    log.update(seed=fidelity_interval(seed_trial.scores, exact), seed_tokens=seed_trial.tokens, chosen=incumbent.name,
               compact=smallest.name, compact_tokens=smallest.tokens, calls_used=calls,
               rule="a configuration replaces the seed only when its paired difference's 95 % interval is above 0")
    tuned = _rebuild(incumbent.bundle)
    compact = _rebuild(smallest.bundle) if smallest is not incumbent else None
    recall_bundle = None
    if recall:
        def evidence(tried: Bundle, floor: float) -> list[Row]:
            nonlocal calls
            rows = recall_evidence(tried, list(more), target, calls=recall_calls, floor=floor, max_tokens=max_tokens,
                                   seed=seed, complete=complete, score=score)
            calls += len(rows)
            return rows

        recall_bundle, log["recall"] = recall_choice([incumbent, smallest, *trials], val, score=score, seed=seed,
                                                     evidence=evidence)
        log["calls_used"] = calls
    return TuneResult(tuned, compact, calls, log, seed_trial.scores, incumbent.scores, recall_bundle)


# cosine, all-MiniLM-L6-v2 by default. The grid reaches down to 0.05 because the evidence, not the grid,
# decides where the copy stops being as good as the target: CLINC travel's pool has its floor at 0.23,
# and with a grid that stopped at 0.4 the inputs between went to the target, which got 6 of 10 where the
# copy got 9; with one that stopped at 0.2 (seed 3) the only held-out input SmolLM2 answered, at 0.195,
# came back "kelek-acid" where the copy's "oos" was right.
RECALL_THRESHOLDS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
RECALL_FLOOR_QUANTILE = 0.05  # never below how close all but 5 % of recorded inputs are to their nearest other one


def recall_thresholds(floor: float) -> list[float]:
    """The thresholds tried above a pool's floor: the grid's, and the floor itself (rounded up to 0.01)
    when it lies inside the grid. Without it the demo's floor of 0.61 left 0.7 as the lowest threshold,
    and the inputs at 0.61-0.7 went to the target where copying scored 0.91 on 68 train inputs."""
    grid = [t for t in RECALL_THRESHOLDS if t >= floor]
    at_floor = math.ceil(floor * 100) / 100
    if min(RECALL_THRESHOLDS) <= at_floor < max(RECALL_THRESHOLDS) and at_floor not in grid:
        grid.insert(0, at_floor)
    return grid or [max(RECALL_THRESHOLDS)]


def recall_floor(bundle: Bundle) -> float:
    """How far from the pool an input may be and still count as one of its kind: the 5th percentile of
    each pool input's cosine to its nearest other pool input. Below it an input is unlike what was
    recorded (out of distribution), and the target answers it."""
    import numpy as np

    pool = bundle._vectors()
    if len(pool) < 2:
        return 1.0
    return float(np.quantile(_nearest_other(pool)[1], RECALL_FLOOR_QUANTILE))


def _nearest_other(pool):
    """(index, cosine) of each pool row's nearest other row: the floor's statistic and the leave-one-out copy."""
    import numpy as np

    index = np.empty(len(pool), dtype=np.int64)
    nearest = np.empty(len(pool), dtype=np.float32)
    for start in range(0, len(pool), 1024):  # blocks: a history of thousands never builds an n x n matrix
        block = pool[start:start + 1024] @ pool.T
        block[np.arange(len(block)), np.arange(start, start + len(block))] = -1.0
        index[start:start + len(block)] = block.argmax(axis=1)
        nearest[start:start + len(block)] = block.max(axis=1)
    return index, nearest


def _without(bundle: Bundle, val: list[TrainItem]) -> Bundle:
    held = {_fold(v.input) for v in val}
    return _rebuild(bundle.model_copy(update={"examples": [e for e in bundle.examples if _fold(e.input) not in held]}))


Row = tuple[float, float, float]  # one input: (cosine to its nearest pool input, copy's agreement, target's)


def _threshold_choice(rows: list[Row], floor: float, exact: bool) -> tuple:
    """(mean, tau, hybrid, hits, best threshold's mean, its hybrid, the target's mean) over `rows`.

    From the pool's floor up: the lowest threshold (the most target calls saved, as the ship rule takes
    the fewest tokens within the best's interval) whose score is within the 95 % interval of the best
    threshold's, and never below the target's own score without the rule (on a validation split of 20
    the interval is wide enough to admit a threshold that recalls worse than the target answers).
    Below the floor the interval buys nothing: a lower grid threshold is taken only where rows lie just
    above it and the copy scores at least as well as the target on them (on CLINC travel the target
    answered the 14 held-out inputs under the floor and got 2 fewer right than the copy)."""
    from foster.agent.metrics import fidelity_interval

    own = sum(t for _, _, t in rows) / len(rows)

    def at(tau: float) -> tuple:
        hybrid = [c if sim >= tau else t for sim, c, t in rows]
        return sum(hybrid) / len(hybrid), tau, hybrid, sum(sim >= tau for sim, _, _ in rows)

    tried_here = [at(tau) for tau in recall_thresholds(floor)]
    top = max(tried_here, key=lambda x: (x[0], -x[1]))
    low = max(fidelity_interval(top[2], exact)["low"], min(top[0], own))
    chosen = min((x for x in tried_here if x[0] >= low), key=lambda x: x[1])
    lowest = min(x[1] for x in tried_here)
    under = sorted(t for t in RECALL_THRESHOLDS if t < lowest)
    edges = under + [lowest]
    for t, above in zip(under, edges[1:]):  # lowest first
        x = at(t)
        if any(t <= sim < above for sim, _, _ in rows) and x[0] >= chosen[0]:
            chosen = x
            break
    best = max([top, chosen], key=lambda x: (x[0], -x[1]))
    return (*chosen, best[0], best[2], own)


def recall_choice(trials: list[Trial], val: list[TrainItem], *, score: Score | None = None, seed: int = 0,
                  evidence: Callable[[Bundle, float], list[Row]] | None = None) -> tuple[Bundle | None, dict]:
    """The recall rule (`ExampleSelection.recall_above`) for a knn configuration already tried on `val`:
    an input at least this close to a recorded one gets the recorded answer instead of the target's.

    On each validation input the rule gives either the nearest pool answer (pool stripped of the
    validation inputs, as the trial was) or the answer the trial already got: choosing the base costs no
    target call. The threshold is then chosen on `val` plus what `evidence(base, floor)` adds for that
    base (leave-one-out answers on more train inputs, `recall_evidence`): on a 30-input split the
    threshold moved from run to run and shipped below the copy. Under the pool's own floor
    (`recall_floor`) it goes only where the copy does as well as the target (`_threshold_choice`). Like `compact`, the rule is a candidate, not a replacement: offered when some
    threshold scores above the configuration without it, then measured on the held-out probes beside
    the others, where the ship rule decides."""
    from foster.agent.metrics import fidelity_interval

    log: dict[str, Any] = {"thresholds": list(RECALL_THRESHOLDS)}
    exact = trials[0].bundle.output_contract.format != "text" or getattr(score, "binary", False)
    options = []  # per knn configuration: (trial, its pool without val, floor, rows, threshold choice)
    for trial in [t for i, t in enumerate(trials) if all(t is not u for u in trials[:i])]:
        tried = _without(trial.bundle, val)
        if tried.selection.kind != "knn" or not tried.examples:
            continue
        near = [tried.nearest(item.input) for item in val]
        rows = [(sim, agreement(example.output, item, tried.output_contract, score), t)
                for (example, sim), item, t in zip(near, val, trial.scores)]
        floor = recall_floor(tried)
        log.setdefault("floor", {})[trial.name] = round(floor, 4)
        options.append((trial, tried, floor, rows, _threshold_choice(rows, floor, exact)))
    if not options:
        log["note"] = "no knn configuration with a pool: nothing to recall from"
        return None, log
    # The base, by the ship rule too: recall costs no target call, so every knn configuration tried is
    # a candidate, and the one with the fewest prompt tokens among those whose best recall score is
    # within the 95 % interval of the best one's is taken (a recall bundle's non-recalled inputs still
    # pay its full prompt).
    leader = max(options, key=lambda o: (o[4][4], -o[0].tokens))
    low = fidelity_interval(leader[4][5], exact)["low"]
    trial, tried, floor, rows, choice = min((o for o in options if o[4][4] >= low), key=lambda o: (o[0].tokens, -o[4][4]))
    log["bases"] = {o[0].name: {"best_threshold_score": round(o[4][4], 4), "tokens": o[0].tokens} for o in options}
    log["on_validation"] = {"threshold": choice[1], "score": fidelity_interval(choice[2], exact)}
    more = evidence(tried, floor) if evidence is not None else []
    if more:
        rows = rows + more
        choice = _threshold_choice(rows, floor, exact)
    mean, tau, hybrid, hits, top_mean, _, own = choice
    without = [t for _, _, t in rows]
    won, diff = beats(hybrid, without, seed=seed)
    offered = top_mean > own  # the rule helps at some threshold
    log.update(base=trial.name, threshold=tau, best_threshold_score=round(top_mean, 4), recalled=hits, of=len(rows),
               validation=len(val), evidence=len(more), score=fidelity_interval(hybrid, exact),
               without=fidelity_interval(without, exact), vs_without=diff, beats_by_interval=won, offered=offered,
               copy=fidelity_interval([c for _, c, _ in rows], exact))
    if not offered:
        return None, log
    selection = trial.bundle.selection.model_copy(update={"recall_above": tau})
    return _rebuild(trial.bundle.model_copy(update={"selection": selection})), log


def recall_evidence(tried: Bundle, items: list[TrainItem], target: str, *, calls: int, floor: float,
                    max_tokens: int = 24, seed: int = 0, complete: Callable[..., Any] | None = None,
                    score: Score | None = None) -> list[Row]:
    """More rows for the recall threshold than the validation split holds: train inputs of the pool
    whose nearest other pool input sits where a threshold can decide (0.05 to 0.95), each asked of the
    target with the pool less that input (leave-one-out, as a new input meets the whole pool), at most
    `calls` of them: every one under the pool's floor, then others drawn by the seed. Each costs one
    target call; the copy's answer costs none."""
    import numpy as np
    from foster.agent.target import ask
    from foster.prompts.bundle import PoolVectors

    if calls < 1 or tried.selection.kind != "knn" or len(tried.examples) < 2:
        return []
    pool = tried._vectors()
    index = {_fold(e.input): i for i, e in enumerate(tried.examples)}
    others, near = _nearest_other(pool)
    chosen = []
    for item in items:
        i = index.get(_fold(item.input))
        if i is not None and min(RECALL_THRESHOLDS) <= near[i] < max(RECALL_THRESHOLDS):
            chosen.append((i, int(others[i]), float(near[i]), item))
    random.Random(seed).shuffle(chosen)
    # those under the floor first: at most 5 % of the pool by the floor's definition, and the only rows
    # that can move the threshold below it (`_threshold_choice`)
    chosen.sort(key=lambda c: c[2] >= floor)
    rows: list[Row] = []
    model = tried.selection.embedding_model
    data = tried.model_dump(exclude={"id"})
    for i, j, sim, item in chosen[:calls]:
        examples = [e for n, e in enumerate(data["examples"]) if n != i]
        vectors = PoolVectors.from_array(np.delete(pool, i, axis=0), [e["input"] for e in examples], model)
        loo = Bundle.model_validate({**data, "examples": examples,
                                     "selection": {**data["selection"], "vectors": vectors.model_dump()}})
        res = ask(loo, target, item.input, complete, temperature=0.0, max_tokens=max_tokens, seed=seed)
        rows.append((sim, agreement(tried.examples[j].output, item, tried.output_contract, score),
                     agreement(res.texts[0], item, tried.output_contract, score)))
    return rows


def accept_proposal(proposal: Bundle, seed_scores: list[float], val: list[TrainItem], target: str, *,
                    max_tokens: int = 24, seed: int = 0, lint_known: dict | None = None,
                    complete: Callable[..., Any] | None = None, score: Score | None = None) -> tuple[bool, dict]:
    """Whether an optimizer's proposal may replace its seed: no lint error (role markers, repeated
    lines, text addressed to the optimizer never ship) and a win on validation by more than the interval."""
    from foster.prompts.lint import errors

    errs = errors(proposal.lint(**(lint_known or {})))
    if errs:
        return False, {"reason": "lint: " + "; ".join(f.message for f in errs), "calls": 0}
    scores = validation_scores(proposal, val, target, max_tokens=max_tokens, seed=seed, complete=complete, score=score)
    won, diff = beats(scores, seed_scores, seed=seed)
    return won, {"reason": "beats the seed on validation" if won else "does not beat the seed by more than the interval "
                 "(a tie keeps the seed)", "vs_seed": diff, "calls": len(val)}
