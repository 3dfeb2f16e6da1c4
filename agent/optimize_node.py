"""optimize (node): DSPy against each target, starting from the best mined candidate."""
from __future__ import annotations

from langgraph.runtime import Runtime

from foster.agent.context import RunContext, StopRun, node_timer
from foster.agent.state import State
from foster.agent.target import is_completion


def optimize(state: State, runtime: Runtime[RunContext]) -> dict:
    """Run the configured DSPy optimizer per target within its call budget; export each result as a bundle."""
    from foster.agent.optimize import TrainItem, optimize as run_optimizer
    from foster.prompts.bundle import Bundle

    ctx = runtime.context
    ctx.registry.update(ctx.run_id, node="optimize")
    c = ctx.config
    rnd = state.get("round", 1)
    spec = state["spec"]
    cands = state.get("candidates") or []
    variants = {t: list(cands) for t in c.targets}
    stop = state.get("stop_reason")
    with node_timer(state, "optimize") as times:
        base_entry = next((x for x in cands if x["name"] == "miner-knn"), None) or \
            next((x for x in cands if x["name"] == "mined-knn"), None)
        train = [TrainItem(input=p["text"], teacher_mode=spec["probes"][p["id"]]["mode"],
                           teacher_dist=spec["probes"][p["id"]]["dist"])
                 for p in state["probes"] if p["split"] == "train"]
        if base_entry and train and not stop:
            base = Bundle.load(base_entry["path"])
            for n, target in enumerate(c.targets):
                try:
                    ctx.check()
                    from foster.agent import gateway

                    with gateway.use_ledger(ctx.ledger):
                        res = run_optimizer(base, train, target, optimizer=c.optimizer, budget_calls=c.budget_calls,
                                            reflection_lm=c.miner, seed=c.seed, completion=is_completion(target),
                                            max_tokens=c.max_new_tokens)
                    b = res.bundle
                    b.name = f"{c.optimizer}-{n}"
                    b.targets = [target]
                    b.provenance.run_id = ctx.run_id
                    path = b.save(ctx.dir / "bundles" / f"{c.optimizer}-t{n}-r{rnd}")
                    variants[target].append({"name": f"{c.optimizer}", "path": str(path), "baseline": False,
                                             "calls_used": res.calls_used})
                    ctx.registry.append_event(ctx.run_id, "optimize", "progress",
                                              f"{target}: {c.optimizer} used {res.calls_used} calls", log=res.log)
                except StopRun as e:
                    stop = str(e)
                    break
                except Exception as e:  # a failed optimizer leaves the mined candidates in the race
                    ctx.registry.append_event(ctx.run_id, "optimize", "error", f"{target}: {type(e).__name__}: {e}")
                ctx.progress("optimize", n + 1, len(c.targets), target)
    return {"variants": variants, "stop_reason": stop, "usage": ctx.usage(), "node_seconds": times}
