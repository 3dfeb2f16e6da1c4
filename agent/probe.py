"""probe: build the input set and sample the teacher on it; nothing is asked of the teacher twice."""
from __future__ import annotations

import json
import random
import re

from langgraph.runtime import Runtime

from foster.agent.context import RunContext, StopRun, node_timer, stable_seed
from foster.agent.inputs import read_jsonl
from foster.agent.state import State

KINDS = ("variation", "edge", "adjacent", "ambiguous", "out_of_domain")
DEDUP_COSINE = 0.92


def _probe(ctx: RunContext, text: str, kind: str, rnd: int, gold: str | None = None) -> dict:
    return {"id": ctx.store.probe_id(ctx.run_id, text), "text": text, "kind": kind, "split": "train",
            "round": rnd, "gold": gold}


def _clean(text: str) -> str | None:
    """First usable line of a generator answer."""
    for line in text.strip().splitlines():
        line = re.sub(r"^(message|customer|input)\s*:\s*", "", line.strip(), flags=re.I).strip().strip('"').strip()
        if 8 <= len(line) <= 400:
            return line
    return None


def dedupe(new: list[dict], existing: list[dict]) -> list[dict]:
    """Drop probes whose embedding is within DEDUP_COSINE of one already kept."""
    if not new:
        return []
    from foster.prompts.embedding import embed

    kept_vecs = list(embed([p["text"] for p in existing])) if existing else []
    vecs = embed([p["text"] for p in new])
    kept: list[dict] = []
    seen = {p["text"].lower() for p in existing}
    for p, v in zip(new, vecs):
        if p["text"].lower() in seen:
            continue
        if kept_vecs and max(float(v @ k) for k in kept_vecs) >= DEDUP_COSINE:
            continue
        kept.append(p)
        kept_vecs.append(v)
        seen.add(p["text"].lower())
    return kept


def seed_probes(ctx: RunContext) -> list[dict]:
    """Round 1's real inputs: historical inputs, recorded teacher inputs or the corpus."""
    c = ctx.config
    probes: list[dict] = []
    if c.teacher_records:
        probes += [_probe(ctx, r["input"], "record", 1, r["output"]) for r in read_jsonl(c.teacher_records, True)]
    if c.train_data:
        probes += [_probe(ctx, r["input"], "corpus", 1, r["output"]) for r in read_jsonl(c.train_data, True)]
    if c.inputs and c.path == "live":
        probes += [_probe(ctx, r["input"], "historical", 1) for r in read_jsonl(c.inputs)]
    uniq: dict[str, dict] = {}
    for p in probes:
        uniq.setdefault(p["id"], p)
    return list(uniq.values())


def assign_split(ctx: RunContext, probes: list[dict]) -> None:
    """Fixed before any optimization: a seeded hash orders the real inputs and the first fraction is held out,
    so a resume (or a rerun with the same seed) gets exactly the same split."""
    real = [p for p in probes if p["kind"] in ("historical", "record", "corpus")] or probes
    ranked = sorted(real, key=lambda p: stable_seed(ctx.config.seed, p["text"]))
    n_held = max(1, round(len(real) * ctx.config.holdout_fraction)) if len(real) > 1 else 0
    for k, p in enumerate(ranked):
        p["split"] = "heldout" if k < n_held else "train"


def synthesize(ctx: RunContext, seeds: list[dict], rnd: int, per_kind: int) -> list[dict]:
    """Generator-written probes of every kind around the seed probes (templates in prompts/)."""
    from foster.prompts.templates import render

    c = ctx.config
    generator = c.generator or c.targets[0]
    rng = random.Random(stable_seed(c.seed, "synth", rnd))
    topics = [t for t in render("probe", "ood_topics").splitlines() if t.strip()]
    task = c.task or "Messages sent to an assistant."
    jobs: list[tuple[str, dict]] = []
    for kind in KINDS:
        for j in range(per_kind):
            if kind == "out_of_domain":
                jobs.append((kind, {"topic": topics[(rnd * per_kind + j) % len(topics)]}))
            elif seeds:
                a, b = rng.choice(seeds), rng.choice(seeds)
                jobs.append((kind, {"task": task, "seed": a["text"], "other": b["text"]}))
    out: list[dict] = []
    for n, (kind, vars_) in enumerate(jobs):
        prompt = render("probe", kind, **vars_)
        res = ctx.complete(generator, messages=[{"role": "user", "content": prompt}], temperature=0.9,
                           max_tokens=60, seed=stable_seed(c.seed, rnd, kind, n))
        text = _clean(res.texts[0])
        if text:
            out.append(_probe(ctx, text, kind, rnd))
        ctx.progress("probe", n + 1, len(jobs), f"synthesized {len(out)} probes")
    return out


def sample_teacher(ctx: RunContext, probes: list[dict], known: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """Every probe at every (temperature, sample); observations already in Chroma are reused, not re-asked."""
    c = ctx.config
    teacher = dict(known)
    if c.path != "live":  # recorded or gold outputs are the teacher's only answer
        for p in probes:
            if p.get("gold") is not None:
                teacher[p["id"]] = [{"t": 0.0, "i": 0, "output": p["gold"]}]
        return teacher
    plan = c.sample_plan()
    todo = [p for p in probes if len(teacher.get(p["id"], [])) < len(plan)]
    total = len(todo) * len(plan)
    for n, p in enumerate(todo):
        from foster.store.vectors import observation_id

        ids = [observation_id(p["id"], c.teacher, t, i) for t, i in plan]
        have = {o["id"]: o for o in ctx.store.get_observations(probe_id=p["id"], model=c.teacher)}
        obs = []
        for (t, i), oid in zip(plan, ids):
            if oid in have:
                obs.append({"t": t, "i": i, "output": have[oid]["output"]})
                continue
            res = ctx.complete(c.teacher, messages=[{"role": "user", "content": p["text"]}], temperature=t,
                               max_tokens=c.max_new_tokens, seed=stable_seed(c.seed, p["id"], t, i))
            out = res.texts[0]
            # stored the moment it returns: a crash after this line never repeats the call
            ctx.store.add_observation(p["id"], c.teacher, t, i, p["text"], out, ctx.run_id)
            obs.append({"t": t, "i": i, "output": out})
        teacher[p["id"]] = obs
        ctx.progress("probe", (n + 1) * len(plan), total, "teacher sampled")
    return teacher


def _load_or_build_probes(ctx: RunContext, state: dict, rnd: int) -> list[dict]:
    """A round's probe set is written to disk before the teacher sees it, so a resume reuses it exactly."""
    path = ctx.dir / f"probes-round{rnd}.json"
    if path.exists():
        return json.loads(path.read_text())
    from foster.store.runs import write_json_atomic

    existing = list(state.get("probes") or [])
    c = ctx.config
    if rnd == 1:
        real = seed_probes(ctx)
        assign_split(ctx, real)
        new = list(real)
        if c.path == "live":
            seeds = [p for p in real if p["split"] == "train"] or real
            new += dedupe(synthesize(ctx, seeds, rnd, c.synth_per_kind), real)
    else:
        # re-probe the divergent clusters: variations of the train probes that sit in them
        bad = {cl["cluster"] for t in (state.get("evaluation") or {}).get("targets", {}).values()
               for cl in t.get("divergence_clusters", [])}
        seeds = [p for p in existing if p["split"] == "train" and p.get("cluster") in bad] or \
                [p for p in existing if p["split"] == "train"]
        new = dedupe(synthesize(ctx, seeds, rnd, c.synth_per_kind), existing) if c.path == "live" else []
    room = max(0, c.max_probes - len(existing))
    new = new[:room]
    ctx.store.add_probes(ctx.run_id, new)
    write_json_atomic(path, new)
    return new


def probe(state: State, runtime: Runtime[RunContext]) -> dict:
    """Build (or extend) the probe set and sample the teacher on every probe."""
    ctx = runtime.context
    rnd = int(state.get("round") or 0) + 1
    ctx.registry.update(ctx.run_id, node="probe", round=rnd)
    with node_timer(state, "probe") as times:
        try:
            new = _load_or_build_probes(ctx, state, rnd)
            probes = list(state.get("probes") or []) + [p for p in new if p["id"] not in {q["id"] for q in state.get("probes") or []}]
            teacher = sample_teacher(ctx, probes, state.get("teacher") or {})
            stop = None
        except StopRun as e:
            probes, teacher, stop = list(state.get("probes") or []), dict(state.get("teacher") or {}), str(e)
    probes = [p for p in probes if p["id"] in teacher]
    return {"round": rnd, "probes": probes, "teacher": teacher, "stop_reason": stop,
            "usage": ctx.usage(), "node_seconds": times}
