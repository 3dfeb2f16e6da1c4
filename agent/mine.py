"""mine: candidate system prompts and few-shot sets, from statistics alone or helped by a miner model."""
from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from pathlib import Path

from foster.agent.context import RunContext, StopRun, node_timer
from foster.agent.state import State
from langgraph.runtime import Runtime

WORD = re.compile(r"[a-z][a-z']+")
STOP = {
    "a", "an", "the", "and", "or", "but", "to", "of", "in", "on", "for", "with", "is", "are", "was", "were",
    "be", "been", "it", "this", "that", "my", "me", "i", "you", "your", "we", "our", "they", "them", "he",
    "she", "his", "her", "at", "as", "by", "from", "have", "has", "had", "do", "does", "did", "not", "no",
    "so", "if", "can", "could", "would", "should", "will", "just", "please", "hi", "hello", "hey", "thanks",
    "thank", "there", "what", "when", "where", "how", "why", "which", "who", "get", "got", "us", "any",
    "all", "am", "its", "im", "ive", "id", "dont", "know", "take", "one", "some", "more", "very", "really",
    "also", "still", "now"
}
REAL_KINDS = ("historical", "record", "corpus")  # inputs users sent; every other kind was written by the generator
SIGN_OFF = re.compile(r"(?:thanks|thank you|cheers|regards|best|br|love|-)[\s,.!]+([A-Za-z][a-z'-]+)[\s.!]*$", re.IGNORECASE)
CAPITALISED = re.compile(r"(?<=[a-z0-9,;] )([A-Z][a-z'-]+)")  # a capital after a lower-case word: not a sentence start
MIN_PRECISION = 0.6  # a rule phrase says "this answer" at least this often, or it is a keyword bag


def proper_names(texts: list[str]) -> set[str]:
    """Words that look like people's or products' names in the inputs: signed at the end of a message,
    or capitalised mid-sentence in most of their uses. Mined rules never quote them (PII)."""
    signed: Counter = Counter()
    capital: Counter = Counter()
    seen: Counter = Counter()
    for t in texts:
        m = SIGN_OFF.search(t.strip())
        if m:
            signed[m.group(1).lower()] += 1
        capital.update(w.lower() for w in CAPITALISED.findall(t))
        seen.update(w.lower() for w in WORD.findall(t.lower()))
    names = {w for w in signed if w not in STOP}
    names |= {w for w, k in capital.items() if w not in STOP and k >= 0.5 * seen[w]}
    return names


def _content(word: str) -> bool:
    return word not in STOP and len(word) > 2


def _grams(text: str, banned: set[str] = frozenset()) -> set[str]:
    # letters only (WORD): numbers, amounts and order ids never become phrases
    w = [x for x in WORD.findall(text.lower())]
    uni = {x for x in w if _content(x) and x not in banned}
    bi = {f"{a} {b}" for a, b in zip(w, w[1:])
          if a not in banned and b not in banned and (_content(a) or _content(b))}
    return uni | bi


def discriminative_phrases(items: list[tuple[str, str]], per_answer: int = 4, min_count: int = 2,
                           banned: set[str] = frozenset()) -> dict[str, list[str]]:
    """Per answer, the n-grams with the highest smoothed log-odds against every other answer, kept only
    when most messages that carry the phrase get that answer (precision >= MIN_PRECISION)."""
    by_answer: dict[str, Counter] = defaultdict(Counter)
    totals: Counter = Counter()
    n_docs: Counter = Counter()
    for text, ans in items:
        g = _grams(text, banned)
        by_answer[ans].update(g)
        totals.update(g)
        n_docs[ans] += 1
    out: dict[str, list[str]] = {}
    N = sum(n_docs.values())
    for ans, cnt in by_answer.items():
        scored = []
        for g, k in cnt.items():
            if k < min_count or k / totals[g] < MIN_PRECISION:
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


def teacher_answers(state: dict) -> list[str]:
    """The answers the teacher gives as a probe's mode or its greedy (T=0) answer, most frequent first.
    A label sampled once at T=1 ("lost_or_stolen_or_stolen_card") is noise and is not one of them."""
    from foster.agent import metrics

    spec = state["spec"]
    inventory = list(spec["inventory"])
    counts: Counter = Counter()
    for pid, ps in spec["probes"].items():
        counts[ps["mode"]] += 1
        greedy = next((o["output"] for o in (state.get("teacher") or {}).get(pid, []) if o.get("t") == 0), None)
        if greedy is not None:
            g = metrics.normalize(greedy, inventory, "closed")
            if g != ps["mode"]:
                counts[g] += 1
    return [a for a, _ in counts.most_common() if a]


def in_distribution(probes: list[dict], seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(kept, judged out of distribution): real inputs are kept; a synthetic one only when it is as close
    to some real input as real inputs are to each other (its nearest-neighbour cosine is above the 5th
    percentile of theirs) and the real-vs-synthetic discriminator (agent/lora/discriminator.py) cannot
    tell it apart. Out-of-domain probes are out by design. Those left out stay in the spec as
    behaviour; they never become examples."""
    import numpy as np

    real = [p for p in probes if p["kind"] in REAL_KINDS]
    synthetic = [p for p in probes if p["kind"] not in REAL_KINDS and p["kind"] != "out_of_domain"]
    out = [p for p in probes if p["kind"] == "out_of_domain"]
    if not synthetic:
        return real, out
    if len(real) < 5:  # too few real inputs to say what "real" looks like: keep the generator's in-domain kinds
        return real + synthetic, out
    from foster.agent.lora.discriminator import judge
    from foster.prompts.embedding import embed

    r, s = embed([p["text"] for p in real]), embed([p["text"] for p in synthetic])
    rr = r @ r.T
    np.fill_diagonal(rr, -1.0)
    floor = float(np.percentile(rr.max(axis=1), 5))
    near = (s @ r.T).max(axis=1) >= floor
    verdicts = judge([p["text"] for p in real], [p["text"] for p in synthetic], seed=seed)
    keep = [bool(n) and v.kept for n, v in zip(near, verdicts)]
    return real + [p for p, k in zip(synthetic, keep) if k], out + [p for p, k in zip(synthetic, keep) if not k]


def condense_pool(items: list[dict], spec: dict, near: float = 0.9) -> list[dict]:
    """The pool without near-duplicates that teach nothing new: an item is dropped only when a kept
    item with the same teacher answer is within cosine `near`; boundary cases (their nearest
    neighbour has another answer) and uncertain ones (the teacher split its samples) always stay."""
    if len(items) < 3:
        return list(items)
    from foster.prompts.embedding import embed

    per = spec["probes"]
    vecs = embed([p["text"] for p in items])
    sims = vecs @ vecs.T
    for i in range(len(items)):
        sims[i, i] = -1.0
    modes = [per[p["id"]]["mode"] for p in items]
    kept: list[int] = []
    for i, p in enumerate(items):
        j = int(sims[i].argmax())
        boundary = modes[j] != modes[i]
        uncertain = per[p["id"]]["entropy"] > 0
        duplicate = any(modes[k] == modes[i] and sims[i, k] >= near for k in kept)
        if boundary or uncertain or not duplicate:
            kept.append(i)
    return [items[i] for i in kept]


def dedupe_texts(items: list[dict]) -> list[dict]:
    """One pool entry per input text (case and spacing folded)."""
    seen: set[str] = set()
    out = []
    for p in items:
        key = " ".join(p["text"].casefold().split())
        if key not in seen:
            seen.add(key)
            out.append(p)
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


def known_for_lint(candidates: list[dict]) -> dict:
    """What mine learnt that sharpens Bundle.lint() (teacher answers, out-of-distribution probes, names)."""
    for c in candidates or []:
        if c.get("known") is not None:
            return c["known"]
    return {}


def build_candidates(ctx: RunContext, state: dict) -> list[dict]:
    from foster.prompts.bundle import Bundle, Example, ExampleSelection, OutputContract
    from foster.prompts.lint import errors
    from foster.prompts.templates import render

    c = ctx.config
    spec = state["spec"]
    per = spec["probes"]
    train = [p for p in state["probes"] if p["split"] == "train"]
    closed = spec["answer_kind"] == "closed"
    labels = teacher_answers(state) if closed else []
    contract = OutputContract(format="label" if closed else "text", answers=labels,
                              description="one label from the inventory" if closed else "free text in the teacher's style")
    task = c.task or ("Route the message." if closed else "Answer the message.")
    names = proper_names([p["text"] for p in state["probes"]])
    usable, ood = in_distribution(train, seed=c.seed)
    usable = dedupe_texts(usable)
    pairs = [(p["text"], per[p["id"]]["mode"]) for p in usable]
    if closed:
        phrases = discriminative_phrases(pairs, banned=names)
        rules = [{"answer": a, "phrases": [f'"{g}"' for g in phrases.get(a, [])]} for a in labels if phrases.get(a)]
        stats_vars = {"labels": labels, "rules": rules}
        plain_vars = {"labels": labels, "rules": []}
    else:
        outs = [m for _, m in pairs]
        first = Counter(" ".join(o.split()[:2]) for o in outs if o).most_common(3)
        common_phrases = Counter(g for o in outs for g in _grams(o, names) if " " in g).most_common(6)
        stats_vars = {"words": round(sum(len(o.split()) for o in outs) / max(1, len(outs))),
                      "first_words": [f for f, n in first if n > 1 and not (set(WORD.findall(f.lower())) & names)],
                      "phrases": [f'"{g}"' for g, _ in common_phrases]}
        plain_vars = {**stats_vars, "phrases": []}
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
    system_plain = render("mine", kind_key, task=task, prose="", **plain_vars).strip()
    pool_items = usable
    pool = [Example(input=t, output=m) for t, m in pairs]
    condensed = condense_pool(pool_items, spec)
    fixed = [Example(input=p["text"], output=per[p["id"]]["mode"]) for p in choose_fixed_examples(usable, spec)]
    common = {"teacher": c.teacher_id, "targets": c.targets, "output_contract": contract}
    knn = ExampleSelection(kind="knn", k=c.knn_k, embedding_model=c.embedding_model)
    variants = {
        "zero-shot": Bundle(name="zero-shot", system_prompt=render("mine", "minimal", task=task).strip(), **common),
        "mined-fixed": Bundle(name="mined-fixed", system_prompt=system, examples=fixed,
                              selection=ExampleSelection(kind="fixed"), **common),
        "mined-knn": Bundle(name="mined-knn", system_prompt=system, examples=pool, selection=knn, **common),
    }
    if prose:
        variants["miner-knn"] = Bundle(name="miner-knn", examples=pool, selection=knn.model_copy(),
                                       system_prompt=render("mine", kind_key, task=task, prose=prose, **stats_vars).strip(),
                                       **common)
    if c.hand_written:
        hw = json.loads(Path(c.hand_written).read_text())
        variants["hand-written"] = Bundle(name="hand-written", system_prompt=hw["system_prompt"],
                                          examples=[Example(**e) for e in hw.get("examples", [])],
                                          selection=ExampleSelection(kind="fixed"), **common)
    known = {"out_of_distribution": [p["text"] for p in ood], "names": sorted(names)}
    if closed:
        known["answers"] = labels
    # what the tuner (agent/optimize.py tune) may recombine: the prompt without rules, the condensed pool
    ingredients = {"system_plain": system_plain, "condensed": [Example(input=p["text"], output=per[p["id"]]["mode"]).model_dump()
                                                               for p in condensed],
                   "fixed": [e.model_dump() for e in fixed]}
    out = []
    for name, b in variants.items():
        b.provenance.run_id = ctx.run_id
        baseline = name in ("zero-shot", "hand-written")
        findings = [f.as_dict() for f in b.lint(**known)]
        if errors(b.lint(**known)) and not baseline:
            # a mined bundle that fails its own lint is kept on disk for the report, never in the race
            ctx.registry.append_event(ctx.run_id, "mine", "error", f"{name}: lint errors: "
                                      + "; ".join(f["message"] for f in findings if f["severity"] == "error"))
        path = b.save(ctx.dir / "bundles" / f"{name}-r{state.get('round', 1)}")
        entry = {"name": name, "path": str(path), "baseline": baseline, "lint": findings}
        if name == "mined-knn":
            entry["ingredients"], entry["known"] = ingredients, known
        out.append(entry)
    ctx.registry.append_event(ctx.run_id, "mine", "progress",
                              f"pool {len(pool)} examples ({len(condensed)} condensed); {len(ood)} synthetic probes "
                              f"judged out of distribution kept out of the examples; {len(labels)} labels")
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
