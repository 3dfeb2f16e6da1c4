"""What a LoRA job trains: on which target, from which weights, through which bundle, served as which model.

Shared by the job (agent/lora/node.py) and the pilot that picks among several targets (pilot.py).
"""
from __future__ import annotations

from pathlib import Path

from foster.agent.context import RunContext
from foster.agent.lora.job import LoraOptions


def choose_target(ctx: RunContext, state: dict, options: LoraOptions) -> str:
    best = state.get("best") or {}
    return options.target or best.get("base_target") or best.get("target") or ctx.config.targets[0]


def adapter_model(target: str, adapter_dir: str | Path) -> str:
    """The model string that serves the target with the adapter (the `local/` provider)."""
    return f"{target.split('@')[0]}@{adapter_dir}"


def base_weights(target: str, options: LoraOptions) -> Path:
    """The weights training starts from: the target's GGUF (or --base-weights, or its target_weights entry)."""
    if options.target_weights.get(target):
        return Path(options.target_weights[target])
    if options.base_weights:
        return Path(options.base_weights)
    from foster.agent.local import registry

    t = registry.parse(target)
    if t.registered is not None:
        raise ValueError(f"{target} is a registered backend without weights: give base_weights")
    path = t.alias.locate() if t.alias else t.gguf
    if path is None:
        raise ValueError(f"weights for {target} are not installed")
    return Path(path)


def build_bundle(ctx: RunContext, state: dict, target: str, job: Path) -> str:
    """The adapter's bundle: the task's system prompt and no examples. Training renders every task row
    through it, evaluation scores through it, serving applies it."""
    from foster.prompts.bundle import Bundle, ExampleSelection, OutputContract
    from foster.prompts.templates import render

    spec = state["spec"]
    closed = spec["answer_kind"] == "closed"
    task = ctx.config.task or ("Route the message." if closed else "Answer the message.")
    b = Bundle(name="lora", teacher=ctx.config.teacher_id, targets=[target],
               system_prompt=render("lora", "system", task=task).strip(), examples=[],
               selection=ExampleSelection(kind="fixed"),
               output_contract=OutputContract(format="label" if closed else "text", answers=list(spec["inventory"]),
                                              description="one label from the inventory" if closed
                                              else "free text in the teacher's style"))
    b.provenance.run_id = ctx.run_id
    b.provenance.notes = "apply with the LoRA adapter trained on this rendering (lora/<target>/adapter)"
    return str(b.save(job / "bundle"))
