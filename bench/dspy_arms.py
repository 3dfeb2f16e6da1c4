"""The plain-DSPy arms of bench.compare: what a user writes with DSPy alone, under foster's call budget.

Each arm compiles `dspy.Predict("input -> answer")` with the task as its instructions and DSPy's
default ChatAdapter, then answers the held-out probes as DSPy runs it:

  dspy-gepa   dspy.GEPA, budgeted in metric calls, the target reflecting on its own prompt;
  dspy-mipro  dspy.MIPROv2(auto="light"), the target as task and prompt model;
  dspy-knn    dspy.KNNFewShot: the k nearest train probes (MiniLM, as foster retrieves) as labelled
              demos per input, no bootstrapping, so compiling costs no call (foster's closest peer).

Calls go through foster's gateway (litellm, counted on the ledger); past the budget a call is not
made and the answer is empty.
"""
from __future__ import annotations

import re
import traceback
from collections.abc import Callable

from bench.compare import (
    Domain,
    Settings,
    Shared,
    _figures,
    _o200k,
    _strip,
    evaluate_arm,
    measured,
)

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
    """A DSPy engine that sends calls through foster's gateway and stops calling the model once
    `counter` is spent. `.raw` keeps every text it returned."""
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


def _format_tokens(signature, demos) -> int:
    import dspy

    messages = dspy.ChatAdapter().format(signature, demos, {"input": ""})
    return sum(_o200k(m["content"] if isinstance(m["content"], str) else str(m["content"])) for m in messages)


def dspy_prompt_tokens(program, inputs: list[str] = ()) -> int:
    """What the compiled program sends besides the input: ChatAdapter's system message, demos and
    the user-message frame, message contents only (as bundles are counted). A KNNFewShot program
    retrieves its demos per input: the average over `inputs`."""
    predictor = program.predictors()[0]
    knn = getattr(program, "_knn", None)
    if knn is not None and inputs:
        sizes = [_format_tokens(predictor.signature, knn(input=x)) for x in inputs]
        return round(sum(sizes) / len(sizes))
    return _format_tokens(predictor.signature, predictor.demos)


def dspy_arm(name: str, compile_fn: Callable, shared: Shared, settings: Settings, domain: Domain, target: str,
             budget: int) -> dict:
    """Compile a plain program with `compile_fn(program, trainset, metric, lm, budget, log)` under the
    call budget, then evaluate it on the held-out probes as DSPy runs it."""
    import dspy
    from foster.agent.dspy_adapter import CallCounter

    counter = CallCounter(limit=budget)
    program = plain_program(domain.task)
    scorer = shared.scorer
    error, log = None, {"knn_k": settings.knn_k}

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
    tokens = dspy_prompt_tokens(program, [p["text"] for p in shared.heldout[:10]])
    return {"arm": name, **_strip(ev), "opt_calls": opt_calls, "opt_calls_refused": refused, "budget": budget,
            "eval_calls": m["target_calls"] - opt_calls, **_figures(m),
            "prompt_tokens": tokens, "shipped_tokens": tokens,
            "instructions": predictor.signature.instructions, "demos": len(predictor.demos or []),
            "parse_failures": failures[0], "fidelity_if_unparsed_read_raw": round(sum(lenient) / max(1, len(lenient)), 4),
            "error": error, "log": log, "_scores": ev["_scores"],
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


def compile_knn(program, trainset, metric, lm, budget, log):
    """dspy.KNNFewShot over the train probes with foster's embedding model: the k nearest as labelled
    demos per input (max_bootstrapped_demos=0: retrieval only, no call spent compiling)."""
    import dspy
    from foster.prompts.embedding import embed

    k = log.get("knn_k", 4)
    knn = dspy.KNNFewShot(k=k, trainset=trainset, vectorizer=dspy.Embedder(embed),
                          max_bootstrapped_demos=0, max_labeled_demos=k)
    optimized = knn.compile(program)
    optimized._knn = knn.KNN  # read by dspy_prompt_tokens: the demos a call carries
    log.update(k=k, pool=len(trainset))
    return optimized


DSPY_ARMS: dict[str, Callable] = {"dspy-gepa": compile_gepa, "dspy-mipro": compile_mipro, "dspy-knn": compile_knn}
