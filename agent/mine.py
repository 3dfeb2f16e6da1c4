"""mine: candidate system prompts and few-shot sets, from statistics alone or helped by a miner model."""
from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from pathlib import Path

from langgraph.runtime import Runtime

from foster.agent.context import RunContext, StopRun, node_timer
from foster.agent.state import State

WORD = re.compile(r"[a-z][a-z']+")
STOP = set("""a an the and or but to of in on for with is are was were be been it this that my me i you your we
our they them he she his her at as by from have has had do does did not no so if can could would should will just
please hi hello thanks thank there what when where how why which who get got""".split())


def _grams(text: str) -> set[str]:
    w = [x for x in WORD.findall(text.lower())]
    uni = {x for x in w if x not in STOP and len(x) > 2}
    bi = {f"{a} {b}" for a, b in zip(w, w[1:]) if a not in STOP or b not in STOP}
    return uni | bi


def discriminative_phrases(items: list[tuple[str, str]], per_answer: int = 4, min_count: int = 2) -> dict[str, list[str]]:
    """Per answer, the n-grams with the highest smoothed log-odds against every other answer."""
    by_answer: dict[str, Counter] = defaultdict(Counter)
    totals: Counter = Counter()
    n_docs: Counter = Counter()
    for text, ans in items:
        g = _grams(text)
        by_answer[ans].update(g)
        totals.update(g)
        n_docs[ans] += 1
    out: dict[str, list[str]] = {}
    N = sum(n_docs.values())
    for ans, cnt in by_answer.items():
        scored = []
        for g, k in cnt.items():
            if k < min_count:
                continue
            rest = totals[g] - k
            lo = math.log((k + 0.5) / (n_docs[ans] - k + 1)) - math.log((rest + 0.5) / (N - n_docs[ans] - rest + 1))
            scored.append((lo, g))
        chosen: list[str] = []
        for _, g in sorted(scored, reverse=True):
            if any(g in c or c in g for c in chosen):
                continue  # "money back" and "back" say the same thing once
            chosen.append(g)
            if len(chosen) == per_answer:
                break
        out[ans] = chosen
    return out


def choose_fixed_examples(train: list[dict], spec: dict, max_n: int = 12) -> list[dict]:
    """Coverage first (the most confident probe per answer and per cluster), then boundaries and uncertain cases."""
    per = spec["probes"]
    conf = sorted(train, key=lambda p: (per[p["id"]]["entropy"], len(p["text"])))
    chosen: list[dict] = []
    seen_ans: set[str] = set()
    seen_cl: set[int] = set()
    for p in conf:
        a = per[p["id"]]["mode"]
        if a not in seen_ans:
            chosen.append(p); seen_ans.add(a); seen_cl.add(p.get("cluster", -1))
    for p in conf:
        if len(chosen) >= max_n:
            break
        if p.get("cluster", -1) not in seen_cl and p not in chosen:
            chosen.append(p); seen_cl.add(p.get("cluster", -1))
    # uncertain cases: the teacher itself split its samples; show its mode so the target learns the tie-break
    for p in sorted(train, key=lambda p: -per[p["id"]]["entropy"]):
        if len(chosen) >= max_n:
            break
        if per[p["id"]]["entropy"] > 0 and p not in chosen:
            chosen.append(p)
    return chosen[:max_n]


def miner_rules(ctx: RunContext, examples: list[dict]) -> str:
    from foster.prompts.templates import render

    prompt = render("mine", "miner", examples=examples[:24])
    res = ctx.complete(ctx.config.miner, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=200)
    lines = [l.strip(" -*") for l in res.texts[0].splitlines() if l.strip()]
    return "Rules:\n" + "\n".join(f"- {l}" for l in lines[:6]) if lines else ""


def build_candidates(ctx: RunContext, state: dict) -> list[dict]:
    from foster.prompts.bundle import Bundle, Example, ExampleSelection, OutputContract
    from foster.prompts.templates import render

    c = ctx.config
    spec = state["spec"]
    per = spec["probes"]
    train = [p for p in state["probes"] if p["split"] == "train"]
    closed = spec["answer_kind"] == "closed"
    labels = list(spec["inventory"])
    contract = OutputContract(format="label" if closed else "text", answers=labels,
                              description="one label from the inventory" if closed else "free text in the teacher's style")
    task = c.task or ("Route the message." if closed else "Answer the message.")
    pairs = [(p["text"], per[p["id"]]["mode"]) for p in train]
    if closed:
        phrases = discriminative_phrases(pairs)
        rules = [{"answer": a, "phrases": [f'"{g}"' for g in phrases.get(a, [])]} for a in labels if phrases.get(a)]
        stats_vars = {"labels": labels, "rules": rules}
    else:
        outs = [m for _, m in pairs]
        first = Counter(" ".join(o.split()[:2]) for o in outs if o).most_common(3)
        stats_vars = {"words": round(sum(len(o.split()) for o in outs) / max(1, len(outs))),
                      "first_words": [f for f, n in first if n > 1],
                      "phrases": [f'"{g}"' for g, _ in Counter(g for o in outs for g in _grams(o) if " " in g).most_common(6)]}
    prose = ""
    if c.miner:
        try:
            prose = miner_rules(ctx, [{"input": t, "output": m} for t, m in pairs])
        except StopRun:
            raise
        except Exception as e:  # the miner is optional: its failure must not lose the statistical candidates
            ctx.registry.append_event(ctx.run_id, "mine", "error", f"miner failed: {e}")
    kind_key = "closed" if closed else "free"
    system = render("mine", kind_key, task=task, prose="", **stats_vars).strip()
    pool = [Example(input=t, output=m) for t, m in pairs]
    fixed = [Example(input=p["text"], output=per[p["id"]]["mode"]) for p in choose_fixed_examples(train, spec)]
    common = dict(teacher=c.teacher_id, targets=c.targets, output_contract=contract)
    variants = {
        "zero-shot": Bundle(name="zero-shot", system_prompt=render("mine", "minimal", task=task).strip(), **common),
        "mined-fixed": Bundle(name="mined-fixed", system_prompt=system, examples=fixed,
                              selection=ExampleSelection(kind="fixed"), **common),
        "mined-knn": Bundle(name="mined-knn", system_prompt=system, examples=pool,
                            selection=ExampleSelection(kind="knn", k=c.knn_k), **common),
    }
    if prose:
        variants["miner-knn"] = Bundle(name="miner-knn", examples=pool, selection=ExampleSelection(kind="knn", k=c.knn_k),
                                       system_prompt=render("mine", kind_key, task=task, prose=prose, **stats_vars).strip(),
                                       **common)
    if c.hand_written:
        hw = json.loads(Path(c.hand_written).read_text())
        variants["hand-written"] = Bundle(name="hand-written", system_prompt=hw["system_prompt"],
                                          examples=[Example(**e) for e in hw.get("examples", [])],
                                          selection=ExampleSelection(kind="fixed"), **common)
    out = []
    for name, b in variants.items():
        b.provenance.run_id = ctx.run_id
        path = b.save(ctx.dir / "bundles" / f"{name}-r{state.get('round', 1)}")
        out.append({"name": name, "path": str(path), "baseline": name in ("zero-shot", "hand-written")})
    return out


def mine(state: State, runtime: Runtime[RunContext]) -> dict:
    """Mine candidate bundles (system prompt + fixed or retrieved examples) from the spec."""
    ctx = runtime.context
    ctx.registry.update(ctx.run_id, node="mine")
    with node_timer(state, "mine") as times:
        try:
            cands = build_candidates(ctx, state)
            stop = state.get("stop_reason")
        except StopRun as e:
            cands, stop = state.get("candidates") or [], str(e)
        ctx.progress("mine", 1, 1, f"{len(cands)} candidates")
    return {"candidates": cands, "stop_reason": stop, "usage": ctx.usage(), "node_seconds": times}
