"""Runs as jobs with a status: start, resume, cancel; the same for the CLI, the API and the UI."""
from __future__ import annotations

import os
import time
import traceback
import uuid
from collections.abc import Callable

from foster.agent.config import InputError, RunConfig


def validate(config: RunConfig) -> None:
    """Everything that can be checked before anything is written: models exist, input files parse."""
    from foster.agent import gateway
    from foster.agent.inputs import read_jsonl

    run_models = gateway.Models.for_run(config.models_file, config.endpoints)  # this run's only: nothing registered
    for flag, models in (("--teacher", [config.teacher]), ("--target", config.targets),
                         ("--generator", [config.generator]), ("--miner", [config.miner]), ("--judge", [config.judge])):
        for m in models:
            if m:
                try:
                    gateway.check_model(m, run_models)
                except gateway.UnknownModelError as e:
                    raise InputError(f"{flag} {m}: {e}") from None
    check_credentials(config, run_models)
    check_embedding_model(config, run_models)
    if config.inputs:
        read_jsonl(config.inputs)
    if config.teacher_records:
        read_jsonl(config.teacher_records, need_output=True)
    if config.train_data:
        read_jsonl(config.train_data, need_output=True)
    from foster.agent.optimize import OPTIMIZERS, TUNER

    if config.optimizer not in (*TUNER, *OPTIMIZERS):
        raise InputError(f"--optimizer {config.optimizer}: unknown (choose from {', '.join((*TUNER, *OPTIMIZERS))})")


def check_credentials(config: RunConfig, run_models) -> None:
    """Every remote model has its key before the first call: a models-file or flag key variable that is set,
    or the provider's own variables (OPENAI_API_KEY, ...) as litellm lists them."""
    for flag, names in (("--teacher", [config.teacher]), ("--target", config.targets),
                        ("--generator", [config.generator]), ("--miner", [config.miner]), ("--judge", [config.judge])):
        for name in names:
            if name:
                _check_keys(flag, name, run_models)


def _check_keys(flag: str, name: str, run_models) -> None:
    deployments = run_models.file.models.get(name) if run_models is not None else None
    for d in deployments or [run_models.spec(name) if run_models is not None else None]:
        if d is None or d.local:
            continue
        if d.api_key_env:
            if not os.environ.get(d.api_key_env):
                raise InputError(f"{flag} {name}: its key variable {d.api_key_env} is not set")
        elif not d.api_base:  # a self-hosted endpoint may take no key at all
            missing = _missing_keys(d.model)
            if missing:
                raise InputError(f"{flag} {name}: no credentials: set {' or '.join(missing)} "
                                 f"(or name a key variable with --api-key-env or a models file)")


def check_embedding_model(config: RunConfig, run_models=None) -> None:
    """A knn bundle's embedding other than the packaged one: a provider litellm knows, with its key in the
    provider's own environment variable, or in the variable the run's models file names for it (inside a
    run its requests go through the gateway, which resolves the name like any model's)."""
    from foster.prompts.embedding import EMBEDDING_MODEL, check_embedding_provider

    name = config.embedding_model
    if name == EMBEDDING_MODEL:
        return
    try:
        check_embedding_provider(name)
    except ValueError as e:
        raise InputError(f"--embedding-model: {e}") from None
    if run_models is not None and name in run_models:
        if any(d.local for d in run_models.file.models[name]):
            raise InputError(f"--embedding-model {name}: the models file maps it to local/, which has no embedding models")
        _check_keys("--embedding-model", name, run_models)
        return
    missing = _missing_keys(name)
    if missing:
        raise InputError(f"--embedding-model {name}: no credentials: set {' or '.join(missing)}")


def _missing_keys(model: str) -> list[str]:
    """The provider's key variables litellm finds unset for `model` (none for providers it cannot tell)."""
    import litellm

    try:
        found = litellm.validate_environment(model=model)
    except Exception:  # an unknown provider is refused by check_model, with a better message
        return []
    return [] if found.get("keys_in_environment") else list(found.get("missing_keys") or [])


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def create_run(config: RunConfig) -> str:
    from foster.store.runs import RunRegistry

    validate(config)
    run_id = config.run_id or new_run_id()
    reg = RunRegistry()
    try:
        exists = reg.exists(run_id)
    except ValueError as e:
        raise InputError(f"--run-id: {e}") from None
    if exists:
        raise InputError(f"--run-id {run_id}: a run with this id exists (use `foster resume {run_id}`)")
    reg.create(run_id, config.model_dump(), status="queued", teacher=config.teacher_id, targets=config.targets,
               started_at=time.time())
    return run_id


def _thread(run_id: str) -> dict:
    return {"configurable": {"thread_id": run_id}, "recursion_limit": 100}


def run_state(run_id: str) -> dict:
    """A run's graph state, from its checkpoint (the one way to read it: CLI, LoRA, bench)."""
    from foster.agent.graph import build_graph
    from foster.store.checkpoints import checkpointer

    return dict(build_graph(checkpointer()).get_state(_thread(run_id)).values)


def execute(run_id: str, on_event: Callable[[dict], None] | None = None, graph=None, **context) -> dict:
    """Run (or continue, from its last checkpoint) a run's graph in this process, holding the run's lease.

    The run's services are built here, for this invocation only, and reach every node through
    LangGraph's Runtime; `context` adds to them (a LoRA listener). `graph` is a compiled graph whose
    state was just forked (`foster lora RUN`); by default the run's own checkpointed graph.
    """
    from foster.store import leases

    owner = leases.default_owner()
    if not leases.acquire(run_id, owner):
        held = leases.holder(run_id)
        who = f" (pid {held.pid} on {held.host})" if held else ""
        raise RunBusy(f"run {run_id} is owned by another process{who}: wait for it, or `foster cancel {run_id}`")
    with leases.Holding(run_id, owner):
        return _execute_owned(run_id, on_event, graph, **context)


class RunBusy(InputError):
    """Another live process owns the run (its lease is fresh): refused in one line, like bad input."""


def _execute_owned(run_id: str, on_event: Callable[[dict], None] | None, graph, **context) -> dict:
    from foster.agent.context import RunContext
    from foster.agent.graph import build_graph
    from foster.store.checkpoints import checkpointer
    from foster.store.runs import RunRegistry

    reg = RunRegistry()
    graph = graph or build_graph(checkpointer())
    cfg = _thread(run_id)
    snapshot = graph.get_state(cfg)
    inputs = None if snapshot.next else {"run_id": run_id}
    if snapshot.values and not snapshot.next:
        return snapshot.values  # already finished
    ctx = RunContext.open(run_id, prior_usage=snapshot.values.get("usage"), **context)
    reg.update(run_id, status="running", error=None)
    reg.append_event(run_id, None, "start", "resumed" if inputs is None else "started")
    try:
        with ctx.embeddings():  # a knn bundle's remote embeddings: counted on the run's ledger and capped
            for mode, chunk in graph.stream(inputs, cfg, stream_mode=["updates", "custom"], context=ctx):
                if on_event:
                    on_event({"mode": mode, "chunk": chunk})
    except BaseException as e:
        reg.update(run_id, status="failed", error=f"{type(e).__name__}: {e}", finished_at=time.time())
        reg.append_event(run_id, None, "error", traceback.format_exc(limit=3))
        raise
    values = graph.get_state(cfg).values
    final = "cancelled" if (values.get("stop_reason") == "cancelled") else \
        ("stopped" if values.get("stop_reason") else "done")
    reg.update(run_id, status=final, finished_at=time.time())
    reg.append_event(run_id, None, "done", values.get("verdict") or "")
    return values


def run_lora(run_id: str, options=None, listener: Callable[[str, int, int, str], None] | None = None,
             show_bar: bool = True) -> dict:
    """The LoRA fallback on a finished run: its graph forked at decide and resumed through lora → bundle.

    The bundle node writes report.json|md and best_bundle exactly as in a run that fell back by itself;
    `options` (agent/lora/job.py LoraOptions) are saved where the lora node reads them.
    """
    from foster.agent.graph import build_graph
    from foster.store.checkpoints import checkpointer
    from foster.store.runs import RunRegistry, write_json_atomic

    reg = RunRegistry()
    if not reg.exists(run_id):
        raise InputError(f"no run {run_id} (see `foster runs`)")
    state = run_state(run_id)
    if not state.get("spec") or not state.get("evaluation"):
        raise InputError(f"run {run_id} has not been evaluated yet (finish it with `foster resume {run_id}`)")
    if options is not None:
        write_json_atomic(reg.run_dir(run_id) / "lora" / "options.json", options.model_dump())
    graph = build_graph(checkpointer())
    # stop_reason cleared: a run stopped by a cap is forked for the fallback the user now asks for
    graph.update_state(_thread(run_id), {"next": "lora", "stop_reason": None}, as_node="decide")
    values = execute(run_id, graph=graph, listener=listener, show_bar=show_bar)
    return values["evaluation"]["lora"]


def start_run(config: RunConfig | dict, background: bool = False,
              on_event: Callable[[dict], None] | None = None) -> str:
    config = config if isinstance(config, RunConfig) else RunConfig.model_validate(config)
    run_id = create_run(config)
    if background:
        # Only enqueued: a worker executes it (`foster worker`, or the one `foster serve` runs in a thread
        # when nothing is configured), and another worker resumes it if that one dies.
        from foster.store import queue

        queue.enqueue(run_id, config.model_dump())
    else:
        execute(run_id, on_event)
    return run_id


def _existing(run_id: str):
    from foster.store.runs import RunRegistry

    reg = RunRegistry()
    try:
        found = reg.exists(run_id)
    except ValueError as e:
        raise InputError(str(e)) from None
    if not found:
        raise InputError(f"no run {run_id} (see `foster runs`)")
    return reg


def resume_run(run_id: str, on_event: Callable[[dict], None] | None = None) -> dict:
    _existing(run_id)
    return execute(run_id, on_event)


def cancel_run(run_id: str) -> str:
    """Ask a live run to stop; a run whose owner died (interrupted) is marked cancelled at once. Returns its status."""
    from foster.store import leases

    reg = _existing(run_id)
    reg.request_cancel(run_id)
    reg.append_event(run_id, None, "progress", "cancel requested")
    status = reg.get(run_id)
    if status is not None and status.status == "interrupted":
        owner = leases.default_owner()
        if leases.acquire(run_id, owner):  # nobody resumed it meanwhile
            try:
                reg.update(run_id, status="cancelled", finished_at=time.time())
                reg.append_event(run_id, None, "done", "cancelled while interrupted")
            finally:
                leases.release(run_id, owner)
            return "cancelled"
    return status.status if status else "cancelled"
