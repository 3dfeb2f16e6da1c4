"""probe: build the input set and ask the teacher about it; nothing is asked of the teacher twice.

Every probe gets the teacher's greedy answer; a subset stratified by cluster and answer is sampled at
every temperature (what the ceiling, per-probe uncertainty and calibration need). Calls run
concurrently, bounded per model, and each is stored in Chroma the moment it returns.
"""
from __future__ import annotations

import json
import math
import random
import re
import time
from collections import defaultdict

from langgraph.runtime import Runtime

from foster.agent.context import RunContext, StopRun, node_timer, stable_seed
from foster.agent.inputs import read_jsonl
from foster.agent.state import State

KINDS = ("variation", "edge", "adjacent", "ambiguous", "out_of_domain")
REAL_KINDS = ("historical", "record", "corpus")
DEDUP_COSINE = 0.92
GREEDY = (0.0, 0)


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


def seed_probes(ctx: RunContext) -> tuple[list[dict], dict]:
    """Round 1's real inputs (historical inputs, recorded teacher inputs or the corpus), and an account of
    what was left out of them and why.

    Over --max-probes, a seeded sample is kept (in file order) rather than the head of the file: a
    history sorted by date or by label would otherwise lose whole months or whole answers.
    """
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
    kept = list(uniq.values())
    account = {"rows": len(probes), "duplicates": len(probes) - len(kept), "kept": len(kept), "left_out": 0,
               "reason": None}
    if len(kept) > c.max_probes:
        keep = set(sorted(uniq, key=lambda i: stable_seed(c.seed, "keep", i))[:c.max_probes])
        kept = [p for p in kept if p["id"] in keep]
        account.update(kept=len(kept), left_out=len(uniq) - len(kept),
                       reason=f"--max-probes {c.max_probes}: a seeded sample of {c.max_probes} of the "
                              f"{len(uniq)} distinct inputs was kept")
    return kept, account


def heldout_size(n_real: int, fraction: float, min_heldout: int) -> int:
    """max(fraction, min_heldout probes), the minimum only where as many real inputs stay for training."""
    if n_real < 2:
        return 0
    return max(max(1, round(n_real * fraction)), min(min_heldout, n_real - min_heldout))


def assign_split(ctx: RunContext, probes: list[dict]) -> int:
    """Fixed before any optimization: a seeded hash orders the real inputs and the first ones are held out,
    so a resume (or a rerun with the same seed) gets exactly the same split. Returns the held-out size."""
    real = [p for p in probes if p["kind"] in REAL_KINDS] or probes
    ranked = sorted(real, key=lambda p: stable_seed(ctx.config.seed, p["text"]))
    n_held = heldout_size(len(real), ctx.config.holdout_fraction, ctx.config.min_heldout)
    for k, p in enumerate(ranked):
        p["split"] = "heldout" if k < n_held else "train"
    return n_held


def call_limit(ctx: RunContext, model: str) -> int:
    """Calls in flight for one model: --concurrency for endpoints, the gateway's default otherwise."""
    from foster.agent import gateway

    models = getattr(ctx, "models", None)  # a models file may name a local model anything
    if ctx.config.concurrency and not gateway.is_local(model, models):
        return ctx.config.concurrency
    return gateway.default_concurrency(model, models)


class Throughput:
    """Calls and wall seconds per model over the probe node's concurrent batches: the calls/s a run prints."""

    def __init__(self, prior: dict | None = None):
        self.per_model: dict[str, dict] = {m: dict(v) for m, v in (prior or {}).items()}

    def add(self, model: str, calls: int, seconds: float, limit: int) -> dict:
        m = self.per_model.setdefault(model, {"calls": 0, "seconds": 0.0, "concurrency": limit})
        m["calls"] += calls
        m["seconds"] = round(m["seconds"] + seconds, 3)
        m["concurrency"] = limit
        m["calls_per_s"] = round(m["calls"] / m["seconds"], 2) if m["seconds"] > 0 else None
        return m

    def lines(self) -> list[str]:
        return [f"{m}: {v['calls']} calls in {v['seconds']:.1f} s, {v.get('calls_per_s') or 0:.2f} calls/s "
                f"({v['concurrency']} in flight)" for m, v in self.per_model.items() if v["calls"]]


class ObservationWriter:
    """Stores each teacher answer before its call counts as done, several at a time (group commit).

    A worker hands its observation over and waits until the batch holding it is in Chroma; meanwhile
    the other workers' answers queue for the next batch. One embedding pass and one upsert per batch
    instead of per call is what lets 8 calls in flight run at 8 times the rate, and a kill -9 still
    loses only calls in flight (never one that had returned and been counted).
    """

    def __init__(self, store):
        import queue
        import threading

        self.store = store
        self.queue: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name="foster-observations", daemon=True)
        self.thread.start()

    def write(self, observation: dict) -> None:
        import threading

        done = threading.Event()
        slot: dict = {"obs": observation, "done": done}
        self.queue.put(slot)
        done.wait()
        if "error" in slot:
            raise slot["error"]

    def _loop(self) -> None:
        import queue

        while True:
            first = self.queue.get()
            if first is None:
                return
            batch = [first]
            while True:
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self.queue.put(None)  # stop after this batch
                    break
                batch.append(item)
            try:
                self.store.add_observations([b["obs"] for b in batch])
            except Exception as e:  # the waiting workers raise it
                for b in batch:
                    b["error"] = e
            for b in batch:
                b["done"].set()

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()


def run_calls(ctx: RunContext, model: str, fn, items: list, label: str, speed: Throughput) -> list:
    """`fn(item)` for every item, at most the model's bound in flight; results in item order.

    Progress (with calls/s) is reported from this thread, at most once a second.
    """
    from foster.agent.gateway import map_concurrently

    limit = call_limit(ctx, model)
    out: list = [None] * len(items)
    t0 = last = time.perf_counter()
    done = 0
    try:
        for i, res in map_concurrently(fn, items, limit):
            out[i] = res
            done += 1
            now = time.perf_counter()
            if now - last >= 1.0 or done == len(items):
                last = now
                ctx.progress("probe", done, len(items), f"{label}: {done / max(now - t0, 1e-9):.2f} calls/s")
    finally:
        if done:
            seconds = time.perf_counter() - t0
            speed.add(model, done, seconds, limit)
            ctx.registry.append_event(ctx.run_id, "probe", "progress",
                                      f"{label}: {done} calls in {seconds:.1f} s, {done / seconds:.2f} calls/s on "
                                      f"{model} ({limit} in flight)")
    return out


def synthesize(ctx: RunContext, seeds: list[dict], rnd: int, per_kind: int, speed: Throughput,
               room: int | None = None) -> list[dict]:
    """Generator-written probes of every kind around the seed probes (templates in prompts/); no more
    are asked for than `room` can take."""
    from foster.prompts.templates import render

    c = ctx.config
    generator = c.generator or c.targets[0]
    rng = random.Random(stable_seed(c.seed, "synth", rnd))
    topics = [t for t in render("probe", "ood_topics").splitlines() if t.strip()]
    task = c.task or "Messages sent to an assistant."
    if room is not None:
        per_kind = min(per_kind, math.ceil(room / len(KINDS)))
    jobs: list[tuple[int, str, dict]] = []
    for kind in KINDS:
        for j in range(per_kind):
            if kind == "out_of_domain":
                jobs.append((len(jobs), kind, {"topic": topics[(rnd * per_kind + j) % len(topics)]}))
            elif seeds:
                a, b = rng.choice(seeds), rng.choice(seeds)
                jobs.append((len(jobs), kind, {"task": task, "seed": a["text"], "other": b["text"]}))

    def write(job) -> str | None:
        n, kind, vars_ = job
        res = ctx.complete(generator, messages=[{"role": "user", "content": render("probe", kind, **vars_)}],
                           temperature=0.9, max_tokens=60, seed=stable_seed(c.seed, rnd, kind, n))
        return _clean(res.texts[0])

    texts = run_calls(ctx, generator, write, jobs, "generator", speed)
    return [_probe(ctx, text, kind, rnd) for (_, kind, _), text in zip(jobs, texts) if text]


def stratified_subset(probes: list[dict], greedy: dict[str, str], clusters: dict[str, int], n: int, seed: int,
                      by_answer: bool) -> list[str]:
    """n probe ids spread over strata (split, cluster and, for closed answers, the greedy answer): one from
    each stratum in turn, seeded, so rare answers and small clusters are sampled before big ones repeat."""
    if n >= len(probes):
        return [p["id"] for p in probes]
    strata: dict[tuple, list[str]] = defaultdict(list)
    for p in probes:
        key = (p["split"], clusters.get(p["id"], 0), greedy.get(p["id"], "") if by_answer else "")
        strata[key].append(p["id"])
    queues = [sorted(ids, key=lambda i: stable_seed(seed, "sample", i)) for _, ids in sorted(strata.items())]
    chosen: list[str] = []
    while len(chosen) < n:
        for q in queues:
            if q and len(chosen) < n:
                chosen.append(q.pop(0))
    return chosen


def _stored_vectors(ctx: RunContext, probes: list[dict]):
    """The probes' embeddings as Chroma stored them (same model): embedding a history twice is the slowest
    part of probing it. None when any is missing, and the caller embeds."""
    import numpy as np

    try:
        got = ctx.store.probes.get(ids=[p["id"] for p in probes], include=["embeddings"])
        by_id = dict(zip(got["ids"], got["embeddings"]))
        return np.asarray([by_id[p["id"]] for p in probes], dtype=np.float32)
    except Exception:  # a store without embeddings to give back (or a probe not stored): embed again
        return None


def _sampled_ids(ctx: RunContext, probes: list[dict], greedy: dict[str, str], rnd: int, n_all: int) -> list[str]:
    """The probes this round samples at every temperature; chosen once and written down, so a resume
    samples the same ones."""
    path = ctx.dir / f"sampled-round{rnd}.json"
    if path.exists():
        return json.loads(path.read_text())
    from foster.agent.characterize import answer_kind, cluster
    from foster.store.runs import write_json_atomic

    c = ctx.config
    # round 1 samples its quota; a later round keeps the same rate over the probes it adds
    n = c.sampled_probes if rnd == 1 else max(1, round(c.sampled_probes * len(probes) / max(n_all, 1)))
    if n >= len(probes):
        ids = [p["id"] for p in probes]
    else:
        labels = cluster([p["text"] for p in probes], c.seed, _stored_vectors(ctx, probes))
        clusters = {p["id"]: lab for p, lab in zip(probes, labels)}
        closed = answer_kind(list(greedy.values())) == "closed"
        norm = {i: re.sub(r"\W+", " ", g).strip().lower() for i, g in greedy.items()}
        ids = stratified_subset(probes, norm, clusters, n, c.seed, closed)
    write_json_atomic(path, ids)
    return ids


def sample_teacher(ctx: RunContext, probes: list[dict], known: dict[str, list[dict]], rnd: int = 1,
                   speed: Throughput | None = None) -> tuple[dict[str, list[dict]], dict]:
    """The greedy answer for every probe, every (temperature, sample) for a stratified subset of the new ones.

    Observations already in Chroma are reused, never re-asked; each new one is stored the moment it
    returns. Returns the teacher's answers per probe and an account of the calls.
    """
    from foster.store.vectors import observation_id

    c = ctx.config
    speed = speed or Throughput()
    teacher = {k: list(v) for k, v in known.items()}
    if c.path != "live":  # recorded or gold outputs are the teacher's only answer
        for p in probes:
            if p.get("gold") is not None:
                teacher[p["id"]] = [{"t": 0.0, "i": 0, "output": p["gold"]}]
        return teacher, {"greedy": len(teacher), "sampled": 0}
    store = ctx.store  # created here, not raced for by the worker threads
    have = {o["id"]: o["output"] for o in store.get_observations(run_id=ctx.run_id, model=c.teacher)}
    writer = ObservationWriter(store)

    def ask(job: tuple[dict, float, int]) -> str:
        p, t, i = job
        res = ctx.complete(c.teacher, messages=[{"role": "user", "content": p["text"]}], temperature=t,
                           max_tokens=c.max_new_tokens, seed=stable_seed(c.seed, p["id"], t, i))
        out = res.texts[0]
        # stored the moment it returns (before the worker takes another call): a kill never repeats it
        writer.write({"probe_id": p["id"], "model": c.teacher, "temperature": t, "sample_index": i,
                      "input": p["text"], "output": out, "run_id": ctx.run_id})
        return out

    def answer(jobs: list[tuple[dict, float, int]], label: str) -> None:
        todo = [j for j in jobs if observation_id(j[0]["id"], c.teacher, j[1], j[2]) not in have]
        outs = run_calls(ctx, c.teacher, ask, todo, label, speed) if todo else []
        for (p, t, i), out in zip(todo, outs):
            have[observation_id(p["id"], c.teacher, t, i)] = out

    new = [p for p in probes if not any(o["t"] == 0.0 and o["i"] == 0 for o in teacher.get(p["id"], []))]
    try:
        answer([(p, *GREEDY) for p in new], "teacher greedy")
        greedy = {p["id"]: have[observation_id(p["id"], c.teacher, *GREEDY)] for p in new}
        extra = [(t, i) for t, i in c.sample_plan() if (t, i) != GREEDY]
        sampled = _sampled_ids(ctx, new, greedy, rnd, len(probes)) if extra and new else []
        by_id = {p["id"]: p for p in new}
        answer([(by_id[pid], t, i) for pid in sampled for t, i in extra], "teacher samples")
    finally:
        writer.close()
    plan = [GREEDY] + extra
    for p in new:
        teacher[p["id"]] = [{"t": t, "i": i, "output": have[oid]} for t, i in plan
                            if (oid := observation_id(p["id"], c.teacher, t, i)) in have]
    return teacher, {"greedy": len(new), "sampled": len(sampled)}


def _load_or_build_probes(ctx: RunContext, state: dict, rnd: int, speed: Throughput) -> tuple[list[dict], dict]:
    """A round's probe set is written to disk before the teacher sees it, so a resume reuses it exactly."""
    from foster.store.runs import write_json_atomic

    path = ctx.dir / f"probes-round{rnd}.json"
    existing = list(state.get("probes") or [])
    c = ctx.config
    account: dict = {}
    if rnd == 1:
        real, account = seed_probes(ctx)  # cheap and deterministic: recomputed on resume for its account
        account["heldout"] = assign_split(ctx, real)
    if path.exists():
        return json.loads(path.read_text()), account
    room = max(0, c.max_probes - len(existing))
    if rnd == 1:
        new = list(real)
        room -= len(new)
        # synthetic probes come on top of the history, never instead of it: only into the room it leaves
        if c.path == "live" and room > 0:
            seeds = [p for p in real if p["split"] == "train"] or real
            new += dedupe(synthesize(ctx, seeds, rnd, c.synth_per_kind, speed, room), real)[:room]
        elif c.path == "live":
            account["synthetic_skipped"] = f"the history fills --max-probes {c.max_probes}"
    else:
        # re-probe the divergent clusters: variations of the train probes that sit in them
        bad = {cl["cluster"] for t in (state.get("evaluation") or {}).get("targets", {}).values()
               for cl in t.get("divergence_clusters", [])}
        seeds = [p for p in existing if p["split"] == "train" and p.get("cluster") in bad] or \
                [p for p in existing if p["split"] == "train"]
        new = []
        if c.path == "live" and room > 0:
            new = dedupe(synthesize(ctx, seeds, rnd, c.synth_per_kind, speed, room), existing)[:room]
    ctx.store.add_probes(ctx.run_id, new)
    write_json_atomic(path, new)
    return new, account


def can_add_probes(config, n_probes: int) -> str | None:
    """Why a further round could add no probe (None when it can): the only source of new probes is the
    generator on the live path, and only while the probe cap leaves room."""
    if config.path != "live":
        return f"the {config.path} path has no teacher to ask about new probes"
    if n_probes >= config.max_probes:
        return f"the probe cap is reached ({n_probes} >= --max-probes {config.max_probes})"
    return None


def probe(state: State, runtime: Runtime[RunContext]) -> dict:
    """Build (or extend) the probe set; the teacher answers every probe greedily and samples a subset."""
    ctx = runtime.context
    rnd = int(state.get("round") or 0) + 1
    ctx.registry.update(ctx.run_id, node="probe", round=rnd)
    probing = dict(state.get("probing") or {})
    speed = Throughput(probing.get("calls"))
    with node_timer(state, "probe") as times:
        old = list(state.get("probes") or [])
        try:
            new, account = _load_or_build_probes(ctx, state, rnd, speed)
            seen = {q["id"] for q in old}
            probes = old + [p for p in new if p["id"] not in seen]
            teacher, asked = sample_teacher(ctx, probes, state.get("teacher") or {}, rnd, speed)
            stop = None
        except StopRun as e:
            new, account, asked = [], {}, {}
            probes, teacher, stop = old, dict(state.get("teacher") or {}), str(e)
    probes = [p for p in probes if p["id"] in teacher]
    if account:
        probing["history"] = account
    probing.setdefault("rounds", {})[str(rnd)] = {"added": len(new), **asked}
    probing["calls"] = speed.per_model
    probing["n_probes"] = len(probes)
    probing["sampled"] = sum(1 for p in probes if len(teacher.get(p["id"], [])) > 1)
    probing["heldout"] = sum(1 for p in probes if p["split"] == "heldout")
    _announce(ctx, probing, rnd, speed)
    return {"round": rnd, "probes": probes, "teacher": teacher, "stop_reason": stop, "probing": probing,
            "usage": ctx.usage(), "node_seconds": times}


def _announce(ctx: RunContext, probing: dict, rnd: int, speed: Throughput) -> None:
    """What was left out, what was asked and how fast: an event in the run's log and probing.json."""
    from foster.store.runs import write_json_atomic

    h = probing.get("history") or {}
    lines = []
    if rnd == 1 and h:
        lines.append(f"history: {h['kept']} of {h['rows']} inputs probed"
                     + (f"; {h['duplicates']} duplicates dropped" if h.get("duplicates") else "")
                     + (f"; {h['left_out']} left out ({h['reason']})" if h.get("left_out") else "; none left out"))
    lines.append(f"round {rnd}: {probing['n_probes']} probes, {probing['heldout']} held out, "
                 f"{probing['sampled']} sampled at every temperature")
    lines += speed.lines()
    for line in lines:
        ctx.registry.append_event(ctx.run_id, "probe", "progress", line)
    write_json_atomic(ctx.dir / "probing.json", {**probing, "summary": lines})
