"""Training rows, Trans-LoRA style: teacher answers on the train probes, discriminated synthetic inputs
answered by the teacher, and general instructions the target writes and answers itself, mixed.

A row is {"source", "input", "output", "request", "primary", "truncated"}: `request` is exactly what
the adapter's bundle renders for the target (messages for chat targets, a prompt and stop strings for
base ones), so training, evaluation and serving see one format. Every stage's output is written to
the job directory first, so a resumed job asks no model twice.
"""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

from foster.agent.context import RunContext, stable_seed

REAL_KINDS = ("historical", "record", "corpus")


# -- rows ------------------------------------------------------------------------------------------

def task_row(bundle, target: str, text: str, output: str, source: str, primary: bool) -> dict:
    from foster.agent.target import render_request

    return {"source": source, "input": text, "output": output.strip(), "primary": primary, "truncated": False,
            "request": render_request(bundle, target, text)}


def general_row(text: str, output: str, truncated: bool) -> dict:
    # no system prompt: general use of the target, where the adapter must change nothing
    return {"source": "general", "input": text, "output": output.strip(), "primary": False, "truncated": truncated,
            "request": {"messages": [{"role": "user", "content": text}]}}


def teacher_rows(bundle, target: str, probes: list[dict], teacher: dict[str, list[dict]], spec: dict,
                 source: str = "teacher") -> list[dict]:
    """The train probes only (never held-out). A probe the teacher is sure of gives one row (its greedy
    answer); where its samples disagree (entropy > 0) every sample is kept, so the spread carries over."""
    rows = []
    for p in probes:
        if p.get("split") == "heldout":
            continue
        obs = teacher.get(p["id"]) or []
        if not obs:
            continue
        greedy = next((o for o in obs if o["t"] == 0), obs[0])
        info = (spec.get("probes") or {}).get(p["id"]) or {}
        entropy = info.get("entropy")
        if entropy is None:  # synthetic inputs have no spec entry: measure the spread here
            entropy = float(len({o["output"].strip() for o in obs}) > 1)
        rows.append(task_row(bundle, target, p["text"], greedy["output"], source, primary=True))
        if entropy > 0:
            rows += [task_row(bundle, target, p["text"], o["output"], source, primary=False)
                     for o in obs if o is not greedy]
    return rows


def mix(task: list[dict], general: list[dict], fraction: float, seed: int = 0) -> list[dict]:
    """Task rows plus general rows so that general rows are `fraction` of the whole (to the nearest row):
    general rows are sampled without replacement, and repeated only when there are too few."""
    if fraction <= 0 or not general:
        out = list(task)
    else:
        need = general_needed(len(task), fraction)
        rng = random.Random(seed)
        pool: list[dict] = []
        while len(pool) < need:
            pool += rng.sample(general, len(general))
        out = list(task) + pool[:need]
    random.Random(seed + 1).shuffle(out)
    return out


def general_needed(n_task: int, fraction: float) -> int:
    return round(fraction * n_task / (1 - fraction)) if fraction > 0 else 0


def stats(rows: list[dict]) -> dict:
    from collections import Counter

    by = Counter(r["source"] for r in rows)
    return {"rows": len(rows), "by_source": dict(by),
            "general_fraction": round(by.get("general", 0) / max(1, len(rows)), 4)}


# -- generation (through the run's capped complete) ------------------------------------------------

# Lines a small generator writes around the text it was asked for: headers and preambles.
_PREAMBLE = re.compile(r"^(here('s| is| are)|sure|certainly|of course|i'm sorry|i am sorry|as an? )|:$", re.I)


def _clean(text: str) -> str | None:
    """The first line of a generator's answer that is the asked-for text, not a header or a preamble."""
    lines = [x for x in text.strip().splitlines() if x.strip()]
    for k, line in enumerate(lines):
        line = re.sub(r"^\s*([-*•]|\d+[.)])\s*", "", line)
        line = re.sub(r"^(message( \d+)?|customer|input|question|request)\s*:\s*", "", line.strip(), flags=re.I)
        line = line.strip().strip('"').strip()
        if line.endswith(",") and len(line) < 25 and k + 1 < len(lines):  # "Hi team," opens a letter
            line = f"{line} {lines[k + 1].strip()}"
        if 8 <= len(line) <= 400 and not _PREAMBLE.search(line):
            return line
    return None


def _cached(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def _save(path: Path, data) -> None:
    from foster.store.runs import write_json_atomic

    write_json_atomic(path, data)


def synthetic_inputs(ctx: RunContext, job: Path, generator: str, real: list[str], n: int,
                     progress=None) -> list[str]:
    """`n` inputs written by the generator, each shown three real ones (cached in synthetic_candidates.json)."""
    from foster.prompts.templates import render

    path = job / "synthetic_candidates.json"
    have: list[str] = _cached(path) or []
    if len(have) >= n or not real:
        return have[:n] if real else []
    rng = random.Random(stable_seed(ctx.config.seed, "lora-synth"))
    shown = [rng.sample(real, min(3, len(real))) for _ in range(n)]
    for k in range(len(have), n):
        res = ctx.complete(generator, messages=[{"role": "user", "content": render(
            "lora", "synthetic_input", examples=shown[k])}], temperature=0.9, max_tokens=60,
            seed=stable_seed(ctx.config.seed, "lora-synth", k))
        have.append(_clean(res.texts[0]) or "")
        if (k + 1) % 10 == 0 or k + 1 == n:
            _save(path, have)
        if progress:
            progress(k + 1, n, "synthetic inputs")
    return have


def discriminate(ctx: RunContext, job: Path, real: list[str], candidates: list[str], avoid: list[str],
                 threshold: float) -> tuple[list[str], dict]:
    """Candidates the discriminator judges in-distribution, minus near-copies of any probe (held-out
    probes included, so nothing the evaluation asks leaks into training)."""
    from foster.agent.lora.discriminator import judge
    from foster.agent.probe import dedupe

    uniq = [c for c in dict.fromkeys(candidates) if c]
    fresh = [p["text"] for p in dedupe([{"text": t} for t in uniq], [{"text": t} for t in avoid])]
    judged = judge(real, fresh, threshold=threshold, seed=ctx.config.seed)
    kept = [j.text for j in judged if j.kept]
    info = {"candidates": len(candidates), "unique_new": len(fresh), "kept": len(kept), "threshold": threshold,
            "method": "logistic regression on all-MiniLM-L6-v2 embeddings, real vs synthetic, out-of-fold"}
    _save(job / "synthetic.json", {**info, "judged": [j.__dict__ for j in judged]})
    return kept, info


def teacher_answers(ctx: RunContext, texts: list[str], progress=None) -> tuple[list[dict], dict[str, list[dict]]]:
    """The live teacher on every (temperature, sample) of the run's plan; stored as observations the
    moment they return, and reused from the store after a crash."""
    from foster.store.vectors import observation_id

    c = ctx.config
    plan = c.sample_plan()
    probes = [{"id": ctx.store.probe_id(ctx.run_id, t), "text": t, "kind": "lora-synthetic", "split": "train",
               "round": 0, "gold": None} for t in texts]
    if probes:
        ctx.store.add_probes(ctx.run_id, probes)
    answers: dict[str, list[dict]] = {}
    total = len(probes) * len(plan)
    for n, p in enumerate(probes):
        have = {o["id"]: o for o in ctx.store.get_observations(probe_id=p["id"], model=c.teacher)}
        obs = []
        for t, i in plan:
            oid = observation_id(p["id"], c.teacher, t, i)
            if oid in have:
                obs.append({"t": t, "i": i, "output": have[oid]["output"]})
                continue
            res = ctx.complete(c.teacher, messages=[{"role": "user", "content": p["text"]}], temperature=t,
                               max_tokens=c.max_new_tokens, seed=stable_seed(c.seed, p["id"], t, i))
            ctx.store.add_observation(p["id"], c.teacher, t, i, p["text"], res.texts[0], ctx.run_id)
            obs.append({"t": t, "i": i, "output": res.texts[0]})
        answers[p["id"]] = obs
        if progress:
            progress((n + 1) * len(plan), total, "teacher answers on synthetic inputs")
    return probes, answers


def _lines(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        line = re.sub(r"^\s*(\d+[.)]|[-*•])\s*", "", line)
        if (c := _clean(line)) and c not in out:
            out.append(c)
    return out


def general_data(ctx: RunContext, job: Path, writer: str, target: str, n: int, max_tokens: int,
                 progress=None, per_call: int = 5) -> list[dict]:
    """`n` general requests the writer (by default the target) writes on varied topics, each answered by
    the target itself, greedily (cached in general.json)."""
    from foster.prompts.templates import render

    path = job / "general.json"
    have: list[dict] = _cached(path) or []
    topics = [t.strip() for t in render("lora", "general_topics").splitlines() if t.strip()]
    seen = {h["input"] for h in have}
    k = len(have)
    for attempt in range(2 * n + 10):
        if len(have) >= n:
            break
        topic = topics[(k + attempt) % len(topics)]
        q = ctx.complete(writer, messages=[{"role": "user", "content": render(
            "lora", "general_instruction", topic=topic, n=per_call)}], temperature=0.9, max_tokens=24 * per_call,
            seed=stable_seed(ctx.config.seed, "lora-general", k + attempt))
        for text in _lines(q.texts[0])[:per_call]:
            if len(have) >= n or text in seen:
                continue
            seen.add(text)
            a = ctx.complete(target, messages=[{"role": "user", "content": text}], temperature=0.0,
                             max_tokens=max_tokens, seed=stable_seed(ctx.config.seed, "lora-general-answer", text))
            if not a.texts[0].strip():
                continue
            # a cut-off answer is trained without its end token, so the adapter never learns to stop early
            have.append({"input": text, "output": a.texts[0], "truncated": a.completion_tokens >= max_tokens})
            _save(path, have)
            if progress:
                progress(len(have), n, "general instructions")
    return have


# -- the re-label path --------------------------------------------------------------------------------

def agrees(answer: str, gold: str, spec: dict, structure=None, similarity: float | None = None) -> bool:
    """Does the target's re-label say what the gold label says? Closed answers: the same label after
    normalisation. Free text: equal after whitespace, or the gold's structure (tag) and cosine >= 0.9."""
    from foster.agent import freetext, metrics

    if spec["answer_kind"] == "closed":
        inv = list(spec["inventory"])
        return metrics.normalize(answer, inv, "closed") == metrics.normalize(gold, inv, "closed")
    if freetext.normalize(answer) == freetext.normalize(gold):
        return True
    return bool(structure is not None and structure.agrees(answer, gold) and (similarity or 0) >= 0.9)


def choose_label(policy: str, answer: str, gold: str, agree: bool, spec: dict) -> tuple[str, str]:
    """(training output, its source) under --labels: gold everywhere; the target's re-label everywhere;
    or (agree) the target's re-label where it agrees with gold, gold where it does not. A closed re-label
    that agrees is trained as the normalised label (its surface form carries nothing the label does not)."""
    if policy == "gold" or (policy == "agree" and not agree):
        return gold, "gold"
    if spec["answer_kind"] == "closed" and agree:
        from foster.agent import metrics

        return metrics.normalize(answer, list(spec["inventory"]), "closed"), "relabel"
    return answer, "relabel"


def relabel(ctx: RunContext, state: dict, job: Path, target: str, fallback, progress=None) -> list[dict]:
    """The target's own answers on the corpus's train inputs, greedy, through its best bundle (the
    adapter's task prompt when it has none), next to the gold labels (cached in relabel.json)."""
    from foster.agent.target import ask
    from foster.prompts.bundle import Bundle

    path = job / "relabel.json"
    have = {r["probe_id"]: r for r in (_cached(path) or {}).get("rows", [])}
    best = ((((state.get("evaluation") or {}).get("targets") or {}).get(target) or {}).get("best") or {}).get("path")
    via = best if best and Path(best).exists() else "the adapter's bundle"
    bundle = Bundle.load(best) if via == best else fallback
    corpus = [p for p in state["probes"] if p["split"] == "train" and p.get("gold") is not None]
    out = []
    for n, p in enumerate(corpus):
        if p["id"] not in have:
            res = ask(bundle, target, p["text"], ctx.complete, temperature=0.0, max_tokens=ctx.config.max_new_tokens,
                      seed=stable_seed(ctx.config.seed, "relabel", p["id"]))
            have[p["id"]] = {"probe_id": p["id"], "input": p["text"], "gold": p["gold"], "answer": res.texts[0].strip()}
            if (n + 1) % 10 == 0:
                _save(path, {"bundle": via, "rows": list(have.values())})
            if progress:
                progress(n + 1, len(corpus), "target re-labels the corpus")
        out.append(have[p["id"]])
    _save(path, {"bundle": via, "rows": list(have.values())})
    return out


def relabel_rows(ctx: RunContext, state: dict, job: Path, bundle, target: str, policy: str,
                 progress=None) -> tuple[list[dict], dict]:
    """Training rows of the re-label path under the label policy, and what the re-labelling found."""
    from foster.agent import freetext, metrics

    spec = state["spec"]
    labelled = relabel(ctx, state, job, target, bundle, progress)
    structure = sims = None
    if spec["answer_kind"] != "closed" and labelled:
        structure = freetext.mine_structure([r["gold"] for r in labelled])
        sims = metrics.text_similarity([r["answer"] for r in labelled], [r["gold"] for r in labelled])
    rows, disagreements, sources = [], [], []
    for k, r in enumerate(labelled):
        ok = agrees(r["answer"], r["gold"], spec, structure, sims[k] if sims else None)
        output, source = choose_label(policy, r["answer"], r["gold"], ok, spec)
        if not output.strip():
            output, source = r["gold"], "gold"  # an empty re-label teaches nothing but silence
        rows.append(task_row(bundle, target, r["input"], output, source, primary=True))
        sources.append(source)
        if not ok:
            disagreements.append({"input": r["input"], "gold": r["gold"], "target": r["answer"]})
    n = len(labelled)
    info = {"labels": policy, "corpus_train": n, "target_agrees": n - len(disagreements),
            "agreement_rate": round((n - len(disagreements)) / n, 4) if n else None,
            "rows_from_relabel": sources.count("relabel"), "rows_from_gold": sources.count("gold"),
            "disagreements": disagreements[:50], "disagreements_total": len(disagreements)}
    _save(job / "relabel_summary.json", {**info, "disagreements": disagreements})
    return rows, info


def build(ctx: RunContext, state: dict, job: Path, bundle, target: str, options, progress=None) -> tuple[list[dict], dict]:
    """Every training row of the job, mixed; writes data.jsonl and data.json (counts)."""
    spec = state["spec"]
    probes = state["probes"]
    train = [p for p in probes if p["split"] == "train"]
    if ctx.config.path == "relabel":  # the corpus re-labelled by the target, under the label policy
        rows, relabel_info = relabel_rows(ctx, state, job, bundle, target, options.labels,
                                          progress=lambda d, t, m: progress and progress("data", d, t, m))
    else:
        rows, relabel_info = teacher_rows(bundle, target, train, state.get("teacher") or {}, spec), None
    info: dict = {"train_probes": len(train), "teacher_rows": len(rows),
                  "uncertain_probes": sum(1 for p in train if (spec["probes"].get(p["id"]) or {}).get("entropy", 0) > 0)}
    if relabel_info:
        info["relabel"] = relabel_info
    generator = options.generator or target
    if ctx.config.path == "live" and options.synthetic > 0:
        real = [p["text"] for p in train if p["kind"] in REAL_KINDS] or [p["text"] for p in train]
        candidates = synthetic_inputs(ctx, job, generator, real, options.synthetic,
                                      progress=lambda d, t, m: progress and progress("data", d, t, m))
        kept, dinfo = discriminate(ctx, job, real, candidates, [p["text"] for p in probes], options.keep_threshold)
        syn_probes, answers = teacher_answers(ctx, kept, progress=lambda d, t, m: progress and progress("data", d, t, m))
        syn_rows = teacher_rows(bundle, target, syn_probes, answers, {}, source="synthetic")
        rows += syn_rows
        info["synthetic"] = {**dinfo, "rows": len(syn_rows)}
    else:
        info["synthetic"] = {"skipped": "the teacher is not live: nothing can answer new inputs"
                             if ctx.config.path != "live" else "--synthetic 0"}
    need = general_needed(len(rows), options.mix)
    general = [general_row(g["input"], g["output"], g["truncated"]) for g in
               general_data(ctx, job, generator, target, need, options.general_max_tokens,
                            progress=lambda d, t, m: progress and progress("data", d, t, m))] if need else []
    mixed = mix(rows, general, options.mix, seed=ctx.config.seed)
    info.update(stats(mixed), general_unique=len(general), mix=options.mix)
    with open(job / "data.jsonl", "w", encoding="utf-8") as f:
        for r in mixed:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    _save(job / "data.json", info)
    return mixed, info
