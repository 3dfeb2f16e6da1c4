"""lora (node): when prompting plateaus below the threshold, distil the teacher into a LoRA adapter on the
target, score it like a bundle, and make "bundle + adapter" the run's best artifact when it wins.

`lora(state, runtime)` is the graph node; `foster lora RUN` reaches it by forking the finished run's
graph at decide (agent/runs.py run_lora), so a fallback asked for later writes the same report as one
the run took itself. Local GGUF targets train in-process; remote targets get a validated fine-tuning JSONL
(submitted through litellm when asked). Every stage writes to runs/<id>/lora/<target>/ first, so a
killed job resumes: generated data is reused, teacher answers come from the store, training continues
from its last checkpoint.
"""
from __future__ import annotations

import json
import os
import time
import traceback
from pathlib import Path

from langgraph.runtime import Runtime

from foster.agent.context import Listener, RunContext, StopRun, node_timer
from foster.agent.lora.job import LoraJob, LoraOptions, job_dir, read_job, write_job
from foster.agent.lora.plan import adapter_model, base_weights, build_bundle, choose_target
from foster.agent.state import State


def options_path(ctx: RunContext) -> Path:
    return ctx.dir / "lora" / "options.json"


def load_options(ctx: RunContext) -> LoraOptions:
    p = options_path(ctx)
    return LoraOptions.model_validate_json(p.read_text()) if p.exists() else LoraOptions()


# -- the fallback --------------------------------------------------------------------------------------

def run_fallback(ctx: RunContext, state: dict, options: LoraOptions, listener: Listener | None = None,
                 show_bar: bool = False) -> dict:
    """Data → training (or JSONL) → evaluation for one target; returns the report's "lora" section."""
    from foster.agent import gateway
    from foster.agent.lora import data, pilot

    # several local targets and none named: a short pilot per target on the same data picks (agent/lora/pilot.py)
    target, pilot_section = pilot.choose(ctx, state, options, progress=listener)
    job = job_dir(ctx.dir, target)
    job.mkdir(parents=True, exist_ok=True)
    local = gateway.is_local(target)
    status = read_job(job) or LoraJob(run_id=ctx.run_id, target=target)
    status = write_job(job, status, kind="local" if local else "provider", status="running", phase="data",
                       pid=os.getpid(), started_at=status.started_at or time.time(), error=None, finished_at=None)
    secs: dict[str, float] = {}

    def progress(phase: str, done: int, total: int, message: str) -> None:
        ctx.progress("lora", done, total, f"{phase}: {message}")
        if listener:
            listener(phase, done, total, message)

    base = base_weights(target, options) if local else None  # fail before spending any call
    t0 = time.time()
    bundle_path = build_bundle(ctx, state, target, job)
    from foster.prompts.bundle import Bundle

    bundle = Bundle.load(bundle_path)
    rows, info = data.build(ctx, state, job, bundle, target, options, progress=progress)
    secs["data"] = round(time.time() - t0, 1)
    section: dict = {"target": target, "bundle": bundle_path, "data": info, "options": options.model_dump()}
    if pilot_section:
        section["pilot"] = pilot_section

    if not local:
        return {**section, **_provider_job(ctx, job, status, rows, target, options), "seconds": secs}

    # -- train in-process
    from foster.agent.lora import train as trainer

    from foster.agent.local.catalog import embedded

    entry = embedded(target)
    cfg = trainer.TrainConfig(steps=options.steps, seconds=options.seconds, batch_size=options.batch_size,
                              lr=options.lr, rank=options.rank, alpha=options.alpha,
                              checkpoint_every=options.checkpoint_every, seed=ctx.config.seed, threads=options.threads,
                              base_model_name=entry.hf_base if entry else None)
    status = write_job(job, status, phase="train", total=cfg.steps)
    last = {"t": 0.0}

    def on_step(s: dict) -> None:
        nonlocal status
        if time.time() - last["t"] >= 2 or s["step"] == s["total"]:
            last["t"] = time.time()
            status = write_job(job, status, step=s["step"], total=s["total"], seconds=round(s["seconds"], 1),
                               loss=round(s["loss"], 4))
            progress("train", s["step"], s["total"], f"loss {s['loss']:.3f}")

    t0 = time.time()
    result = trainer.train_lora(base, rows, job, cfg, on_step=on_step, quiet=not show_bar,
                                should_stop=lambda: ctx.registry.cancel_requested(ctx.run_id))
    secs["train_wall"] = round(time.time() - t0, 1)
    training = {k: v for k, v in result.__dict__.items() if k != "history"}
    training.update(batch_size=cfg.batch_size, rank=cfg.rank, alpha=cfg.alpha, lr=cfg.lr,
                    target_modules=list(cfg.target_modules), rows=len(rows), base_weights=str(base))
    section["training"] = training
    status = write_job(job, status, step=result.step, seconds=result.seconds, loss=result.loss)
    if result.status == "stopped":
        write_job(job, status, status="stopped", message="stopped; `foster lora RUN_ID` resumes from the last checkpoint")
        raise StopRun("cancelled")

    # -- llama.cpp adapter for fast serving
    adapter_dir = Path(result.adapter_dir)
    section["adapter_dir"] = str(adapter_dir)
    section["adapter_gguf"] = None
    if base.suffix == ".gguf":
        status = write_job(job, status, phase="convert")
        from foster.agent.lora.gguf import base_architecture, convert

        try:
            section["adapter_gguf"] = str(convert(adapter_dir, arch=base_architecture(base)))
        except Exception as e:  # PEFT serving still works, only slower
            section["adapter_gguf_error"] = f"{type(e).__name__}: {e}"
    status = write_job(job, status, phase="evaluate", adapter_dir=str(adapter_dir))
    t0 = time.time()
    section.update(evaluate(ctx, state, job, target, adapter_model(target, adapter_dir), bundle_path, str(adapter_dir),
                            progress))
    secs["evaluate"] = round(time.time() - t0, 1)
    section["seconds"] = secs
    write_job(job, status, status="done", phase="", finished_at=time.time(),
              message=f"held-out fidelity {section['fidelity']}, general agreement "
                      f"{section['general_capability']['agreement']}")
    also = pilot.others(pilot_section, target)
    if also:  # --lora-targets all: every other target too, each reported beside the chosen one
        section["others"] = [run_fallback(ctx, state, options.model_copy(update={"target": t}), listener, show_bar)
                             for t in also]
    return section


def _provider_job(ctx: RunContext, job: Path, status: LoraJob, rows: list[dict], target: str,
                  options: LoraOptions) -> dict:
    """Remote targets: the fine-tuning JSONL, validated; submitted when asked."""
    from foster.agent.lora import openai_ft

    path = openai_ft.write_jsonl(rows, job / "train.jsonl")
    out = {"kind": "provider", "jsonl": str(path), "submitted": False}
    if status.provider_job_id and status.status != "failed":  # submitted before: never twice
        return {**out, "submitted": True, "provider_job_id": status.provider_job_id, "status": status.status}
    if options.submit:
        status = write_job(job, status, phase="submit")
        r = openai_ft.submit(path, options.base_model or target, suffix=f"foster-{ctx.run_id}"[:40])
        state = openai_ft.PROVIDER_STATES.get(str(r["status"]), "queued")
        write_job(job, status, status=state, phase="", jsonl=str(path), provider_job_id=r["id"],
                  provider_status=str(r["status"]), message="submitted; `foster lora RUN_ID --status` checks it")
        out.update(submitted=True, provider_job_id=r["id"], status=state)
    else:
        write_job(job, status, status="done", phase="", jsonl=str(path), finished_at=time.time(),
                  message="JSONL written and validated; `foster lora RUN_ID --submit` sends it to the provider")
        out["status"] = "written"
    return out


def refresh_provider_job(run_id: str, target: str) -> LoraJob:
    """Ask the provider how a submitted fine-tuning job is doing; job.json follows."""
    from foster.agent.lora import openai_ft
    from foster.store.runs import RunRegistry

    run_dir = RunRegistry().run_dir(run_id)
    job = job_dir(run_dir, target)
    status = read_job(job)
    if status is None or not status.provider_job_id:
        raise ValueError(f"run {run_id} has no submitted fine-tuning job for {target}")
    saved = run_dir / "lora" / "options.json"
    options = LoraOptions.model_validate_json(saved.read_text()) if saved.exists() else LoraOptions()
    r = openai_ft.retrieve(status.provider_job_id, options.base_model or target)
    done = r["status"] in ("done", "failed")
    return write_job(job, status, status=r["status"], provider_status=r["provider_status"],
                     fine_tuned_model=r["fine_tuned_model"], finished_at=time.time() if done else None)


def evaluate(ctx: RunContext, state: dict, job: Path, target: str, model: str, bundle_path: str,
             adapter_dir: str | None, progress: Listener) -> dict:
    """Held-out figures (like a bundle's) and the general-capability check for the adapter model."""
    from foster.agent.lora import evaluate as lev
    from foster.store.runs import write_json_atomic

    from foster.agent.local import registry

    registry.evict(model)  # weights rewritten in place (a resumed or retrained adapter) are read again
    progress("evaluate", 0, 1, "held-out probes")
    summary, columns, answers = lev.heldout(ctx, job, model, bundle_path, state, adapter_dir)
    _merge_grid(ctx, columns, answers)
    general = lev.general_capability(ctx, target, model)
    write_json_atomic(job / "general_check.json", general)
    best = summary["best"]
    return {"model": model, "fidelity": best["fidelity"], "sampled_agreement": best.get("sampled_agreement"),
            "calibration_gap": best.get("calibration_gap"), "ceiling": summary["ceiling"],
            # × ceiling with an interval carrying both the adapter's and the ceiling's sampling noise
            "fraction_of_ceiling_interval": summary.get("best_fraction_of_ceiling"),
            # free text: exact / structure / similarity with intervals, hedge rate (agent/freetext.py)
            "freetext": best.get("freetext"), "hedge_rate": best.get("hedge_rate"),
            "calibration_method": best.get("calibration_method"),
            "fidelity_method": summary["fidelity_method"], "latency_s": best.get("latency_s"),
            "nearest_copy": (summary.get("nearest_copy") or {}).get("fidelity"),
            "divergence_clusters": summary.get("divergence_clusters"),
            "general_capability": {k: v for k, v in general.items() if k != "rows"}}


def _merge_grid(ctx: RunContext, columns: list[dict], answers: dict) -> None:
    from foster.store.runs import write_json_atomic

    path = ctx.dir / "grid.json"
    grid = json.loads(path.read_text()) if path.exists() else {"columns": [], "rows": []}
    keys = {c["key"] for c in columns}
    grid["columns"] = [c for c in grid["columns"] if c["key"] not in keys] + columns
    for row in grid["rows"]:
        row.setdefault("answers", {}).update(answers.get(row["probe_id"], {}))
    write_json_atomic(path, grid)


def outcome(ctx: RunContext, state: dict, section: dict) -> tuple[dict, dict, str | None]:
    """(section with its comparisons, the run's best, verdict): "bundle + adapter" wins only by beating the best bundle."""
    best = dict(state.get("best") or {})
    verdict = state.get("verdict")
    if "fidelity" not in section:
        return section, best, verdict
    if best.get("adapter"):  # an earlier fallback won: this adapter competes with the prompt's best, not with it
        earlier = ((state.get("evaluation") or {}).get("lora") or {}).get("best_bundle") or {}
        best = dict(earlier) if earlier.get("path") else best
    bundle_f = best.get("fidelity")
    same = (((state.get("evaluation") or {}).get("targets") or {}).get(section["target"]) or {}).get("best") or {}
    ceiling = section.get("ceiling") or 0
    section["best_bundle"] = {k: best.get(k) for k in ("target", "variant", "path", "fidelity", "bundle_id")}
    section["best_bundle_same_target"] = same.get("fidelity")
    section["fraction_of_ceiling"] = round(section["fidelity"] / ceiling, 4) if ceiling else None
    section["beats_best_bundle"] = bundle_f is None or section["fidelity"] > bundle_f
    section["meets_threshold"] = section["fidelity"] >= ctx.config.threshold
    if section["beats_best_bundle"]:
        from foster.prompts.bundle import Bundle

        best = {"target": section["model"], "variant": "lora", "path": section["bundle"],
                "fidelity": section["fidelity"], "bundle_id": Bundle.load(section["bundle"]).id,
                "adapter": section["adapter_dir"], "base_target": section["target"]}
    if section["meets_threshold"] and section["beats_best_bundle"]:
        verdict = "threshold met (bundle + adapter)"
    return section, best, verdict


def artifact(best: dict) -> dict:
    if best.get("adapter"):
        return {"kind": "bundle + adapter", "bundle": best["path"], "adapter": best["adapter"],
                "model": best["target"], "fidelity": best["fidelity"]}
    return {"kind": "bundle", "bundle": best.get("path"), "model": best.get("target"), "fidelity": best.get("fidelity")}


def step(ctx: RunContext, state: State) -> dict:
    """The fallback for the run's state; its failure is recorded in the section, never raised."""
    ctx.registry.update(ctx.run_id, node="lora")
    ctx.registry.append_event(ctx.run_id, "lora", "start", "LoRA fallback")
    options = load_options(ctx)
    stop = state.get("stop_reason")
    with node_timer(state, "lora") as times:
        try:
            section = run_fallback(ctx, state, options, ctx.listener, ctx.show_bar)
            section["status"] = section.get("status", "done")
        except StopRun as e:
            section, stop = {"status": "stopped", "error": str(e)}, str(e)
        except Exception as e:  # the fallback failing must not lose the run's best bundle
            ctx.registry.append_event(ctx.run_id, "lora", "error", traceback.format_exc(limit=4))
            section = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
            target = choose_target(ctx, state, options)
            job = job_dir(ctx.dir, target)
            if (job / "job.json").exists():
                write_job(job, read_job(job), status="failed", error=section["error"], finished_at=time.time())
        section, best, verdict = outcome(ctx, state, section)
    evaluation = {**(state.get("evaluation") or {}), "lora": section, "best_artifact": artifact(best)}
    ctx.registry.append_event(ctx.run_id, "lora", "end", f"LoRA {section['status']}: fidelity {section.get('fidelity')}",
                              progress=1.0)
    return {"evaluation": evaluation, "best": best, "verdict": verdict, "stop_reason": stop,
            "usage": ctx.usage(), "node_seconds": times}


def lora(state: State, runtime: Runtime[RunContext]) -> dict:
    """Distil the teacher into a LoRA adapter on the target and score it like a bundle."""
    return step(runtime.context, state)
