"""Refine from shadow: a run of the same graph, seeded with the live inputs where the deployment diverged.

A deployment's shadow records say where the served bundle and the live teacher disagreed. `prepare`
starts a new run with the parent run's config and probes (same splits: its held-out probes stay
held out) plus, as new probes, the divergent live inputs and a seeded sample of agreeing ones; a
held-out share of the new ones joins the held-out set, so the new bundle is evaluated on the
original held-out probes and on live traffic it never trained on. Every answer the teacher already
gave (the parent run's observations, the shadow answers) is stored as this run's observation before
the run starts, so the probe node finds it and asks nothing twice. The graph then re-characterizes,
re-mines and re-optimizes as any run does. `finish` marks the best bundle's provenance with the
deployment and the parent run.

The round-1 probe set is written to the run's probes-round1.json before the graph starts: the
probe node reuses a round's file as it does on a resume.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from foster.agent.config import InputError, RunConfig
from pydantic import BaseModel, Field

# Live evidence replaces synthesis in a refine run unless the caller asks for both: the divergent
# inputs are the probes worth paying for, and one round keeps the refine as cheap as the evidence.
REFINE_DEFAULTS = {"synth_per_kind": 0, "max_rounds": 1}


class RefinePlan(BaseModel):
    """What a refine run was seeded with."""

    run_id: str
    parent_run_id: str
    deployment: str
    version: int | None = None
    bundle_id: str | None = None
    parent_probes: int = 0
    divergent: int = Field(0, description="distinct live inputs where the teacher and the bundle disagreed")
    agreeing: int = Field(0, description="distinct agreeing live inputs sampled as probes")
    new_heldout: int = Field(0, description="new probes held out for evaluation")
    observations_reused: int = Field(0, description="teacher answers stored for the run before it started")


def _parent_state(parent_run_id: str) -> tuple[list[dict], dict[str, list[dict]]]:
    """The parent run's probes (with splits) and the teacher's observations of them."""
    from foster.agent.runs import run_state
    from foster.store.runs import RunRegistry

    try:
        state = run_state(parent_run_id)
    except Exception:  # no checkpoint: the run's files and Chroma below
        state = {}
    probes, teacher = list(state.get("probes") or []), dict(state.get("teacher") or {})
    if probes:
        return probes, teacher
    run_dir = RunRegistry().run_dir(parent_run_id)
    for path in sorted(run_dir.glob("probes-round*.json")):
        probes += json.loads(path.read_text())
    if probes:
        from foster.store.vectors import VectorStore

        for row in VectorStore().get_observations(run_id=parent_run_id):
            teacher.setdefault(row["probe_id"], []).append(
                {"t": float(row["temperature"]), "i": int(row["sample_index"]), "output": row["output"]})
    return probes, teacher


def live_inputs(records: list[dict]) -> tuple[list[dict], list[dict]]:
    """(divergent, agreeing) distinct inputs, each with its latest record (the teacher's answer)."""
    latest: dict[str, dict] = {}
    for r in records:
        if r.get("input"):
            latest[r["input"]] = r
    divergent = [r for r in latest.values() if not r.get("agree")]
    agreeing = [r for r in latest.values() if r.get("agree")]
    return divergent, agreeing


def prepare(deployment: str, records: list[dict], parent_run_id: str, *, version: int | None = None,
            bundle_id: str | None = None, agreeing_ratio: float = 1.0, overrides: dict | None = None,
            run_id: str | None = None) -> RefinePlan:
    """Create the refine run (not yet executed): config, probes-round1.json and the stored observations."""
    from foster.agent.runs import create_run
    from foster.store.runs import RunRegistry, write_json_atomic
    from foster.store.vectors import VectorStore, probe_id

    registry = RunRegistry()
    if not registry.exists(parent_run_id):
        raise InputError(f"the deployment's bundle came from run {parent_run_id!r}, which is not in this FOSTER_HOME")
    divergent, agreeing = live_inputs(records)
    if not divergent and not agreeing:
        raise InputError(f"deployment {deployment!r} has no shadowed requests to refine from (shadow it first)")
    parent_probes, parent_teacher = _parent_state(parent_run_id)
    if not parent_probes:
        raise InputError(f"run {parent_run_id} has no probes to start from")

    raw = dict(registry.config(parent_run_id))
    config_dict = {**raw, **REFINE_DEFAULTS, **(overrides or {}), "run_id": run_id, "inputs": None}
    config = RunConfig.model_validate(config_dict)
    rng = random.Random(f"{config.seed}|refine|{deployment}|{parent_run_id}")
    k = min(len(agreeing), max(1, round(agreeing_ratio * len(divergent)))) if divergent else len(agreeing)
    sampled = sorted(rng.sample(agreeing, k), key=lambda r: r["input"]) if k else []
    new_run = create_run(config)

    teacher_model = config.teacher or config.teacher_id
    seen = {p["text"] for p in parent_probes}
    probes, observations = [], []
    for p in parent_probes:
        pid = probe_id(new_run, p["text"])
        probes.append({"id": pid, "text": p["text"], "kind": p.get("kind", "historical"), "split": p.get("split", "train"),
                       "round": 1, "gold": p.get("gold")})
        for o in parent_teacher.get(p["id"], []):
            observations.append({"probe_id": pid, "model": teacher_model, "temperature": o["t"], "sample_index": o["i"],
                                 "input": p["text"], "output": o["output"], "run_id": new_run})
    live = [r for r in divergent + sampled if r["input"] not in seen]
    # the held-out share of the new probes: a seeded order, stratified so divergent inputs are held out too
    held: set[str] = set()
    for group in ([r for r in live if not r.get("agree")], [r for r in live if r.get("agree")]):
        order = sorted(group, key=lambda r: rng.random())
        n = round(len(order) * config.holdout_fraction) if len(order) > 1 else 0
        held.update(r["input"] for r in order[:n])
    for r in live:
        pid = probe_id(new_run, r["input"])
        # the teacher's shadow answer is this probe's greedy observation (or its record on a records path)
        probes.append({"id": pid, "text": r["input"], "kind": "historical" if config.path == "live" else "record",
                       "split": "heldout" if r["input"] in held else "train", "round": 1,
                       "gold": None if config.path == "live" else r["teacher_output"],
                       "origin": f"shadow:{deployment}", "shadow_agree": bool(r.get("agree"))})
        observations.append({"probe_id": pid, "model": teacher_model, "temperature": 0.0, "sample_index": 0,
                             "input": r["input"], "output": r["teacher_output"], "run_id": new_run})
    store = VectorStore()
    if config.path == "live" and observations:
        store.add_observations(observations)
    store.add_probes(new_run, probes)
    write_json_atomic(registry.run_dir(new_run) / "probes-round1.json", probes)
    plan = RefinePlan(run_id=new_run, parent_run_id=parent_run_id, deployment=deployment, version=version,
                      bundle_id=bundle_id, parent_probes=len(parent_probes),
                      divergent=sum(1 for r in live if not r.get("agree")), agreeing=sum(1 for r in live if r.get("agree")),
                      new_heldout=len(held), observations_reused=len(observations))
    write_json_atomic(registry.run_dir(new_run) / "refine.json", plan.model_dump())
    registry.append_event(new_run, None, "progress",
                          f"refine of {deployment} (parent run {parent_run_id}): {plan.divergent} divergent and "
                          f"{plan.agreeing} agreeing live inputs as new probes, {plan.new_heldout} of them held out")
    return plan


def finish(run_id: str) -> Path:
    """Point the refined best bundle's provenance at the deployment and the parent run; its path."""
    from foster.prompts.bundle import Bundle, data_hash
    from foster.store.runs import RunRegistry

    registry = RunRegistry()
    plan = RefinePlan.model_validate(registry.read_json(run_id, "refine.json") or {})
    status = registry.get(run_id)
    path = Path(status.best_bundle) if status and status.best_bundle else registry.run_dir(run_id) / "best_bundle.json"
    if not path.is_file():
        raise InputError(f"refine run {run_id} ended without a best bundle (status: {status.status if status else '?'})")
    bundle = Bundle.load(path)
    probes = json.loads((registry.run_dir(run_id) / "probes-round1.json").read_text())
    live = [p["text"] for p in probes if str(p.get("origin", "")).startswith("shadow:")]
    bundle.provenance.run_id = run_id
    bundle.provenance.data_hashes["shadow_inputs"] = data_hash(live)
    bundle.provenance.notes = (f"refined from deployment {plan.deployment!r} (version {plan.version}, bundle "
                               f"{plan.bundle_id}) with {plan.divergent} divergent and {plan.agreeing} agreeing live "
                               f"inputs; parent run {plan.parent_run_id}")
    for field, value in (("deployment", plan.deployment), ("parent_run_id", plan.parent_run_id)):
        if field in type(bundle.provenance).model_fields:
            setattr(bundle.provenance, field, value)
    return bundle.save(path)
