"""bundle (node): attach the report to the best bundle and write the run's final artifacts."""
from __future__ import annotations

import time

from langgraph.runtime import Runtime

from foster.agent.context import RunContext
from foster.agent.report import markdown
from foster.agent.state import State


def relabel_disagreements(state: dict) -> list[dict]:
    """Re-label path: where the target (through the best bundle) and the corpus's gold labels differ."""
    best = state.get("best") or {}
    key = f"{best.get('target')}::{best.get('variant')}"
    out = []
    from foster.store.runs import RunRegistry

    grid = RunRegistry().read_json(state["run_id"], "grid.json") or {"rows": []}
    for row in grid["rows"]:
        a = row["answers"].get(key)
        if a and not a["agree"]:
            out.append({"input": row["input"], "gold": row["teacher"]["mode"], "answer": a["answer"]})
    return out


def bundle(state: State, runtime: Runtime[RunContext]) -> dict:
    """Write best_bundle.json|md (with the report inside) and report.json|md."""
    from foster.prompts.bundle import Bundle
    from foster.store.runs import write_json_atomic, write_text_atomic

    ctx = runtime.context
    report = dict(state.get("evaluation") or {})
    status = ctx.registry.get(ctx.run_id)
    report.update({"verdict": state.get("verdict"), "rounds": state.get("round"), "history": state.get("history"),
                   "usage": ctx.usage(), "node_seconds": state.get("node_seconds"),
                   "wall_seconds": round(time.time() - (status.started_at or time.time()), 1),
                   "stop_reason": state.get("stop_reason")})
    if ctx.config.path == "relabel":
        report["disagreements"] = relabel_disagreements(state)
    best = state.get("best") or {}
    best_path = None
    if best.get("path"):
        b = Bundle.load(best["path"])
        b.targets = [best["target"]]
        b.report = {k: report[k] for k in ("run_id", "teacher", "verdict", "threshold", "ceiling", "fidelity_method",
                                            "answer_kind") if k in report}
        b.report["target"] = best["target"]
        b.report["fidelity"] = best["fidelity"]
        shipped = (report.get("targets", {}).get(best["target"]) or {}).get("best") or {}
        b.report["fidelity_interval"] = shipped.get("interval") or best.get("interval")
        b.report["lint"] = shipped.get("lint") or []
        if best.get("adapter"):  # the LoRA fallback won: the bundle applies only with its adapter
            b.report["adapter"] = best["adapter"]
            b.report["general_capability"] = report["lora"]["general_capability"]["agreement"]
        b.report["by_target"] = {t: {"zero_shot": (s.get("zero_shot") or {}).get("fidelity"),
                                     "best": s["best"]["fidelity"], "best_interval": s["best"].get("interval"),
                                     "copy": (s.get("nearest_copy") or {}).get("interval"), "ceiling": s.get("ceiling"),
                                     "calibration_gap": s.get("calibration_gap")}
                                 for t, s in report.get("targets", {}).items()}
        best_path = str(b.save(ctx.dir / "best_bundle"))
        report["best_bundle"] = {**best, "path": best_path, "lint": b.report["lint"]}
        from foster.prompts.export.parity import export_run

        report["exports"] = export_run(b, ctx.dir)  # openai, langchain, dspy, promptfoo, each with its parity
    write_json_atomic(ctx.dir / "report.json", report)
    write_text_atomic(ctx.dir / "report.md", markdown(report))
    figures = {t: {"zero_shot": (s.get("zero_shot") or {}).get("fidelity"), "best": s["best"]["fidelity"],
                   "ceiling": s.get("ceiling"), "calibration_gap": s.get("calibration_gap")}
               for t, s in report.get("targets", {}).items()}
    if "fidelity" in (report.get("lora") or {}):
        figures.setdefault(report["lora"]["target"], {})["lora"] = report["lora"]["fidelity"]
    ctx.registry.update(ctx.run_id, node="bundle", verdict=state.get("verdict"), best_bundle=best_path, figures=figures)
    ctx.registry.append_event(ctx.run_id, "bundle", "end", f"verdict: {state.get('verdict')}", progress=1.0)
    return {}
