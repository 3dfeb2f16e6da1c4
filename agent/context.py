"""A run's services for one invocation of its graph: config, registry, vector store, ledger, caps, progress.

`execute` (agent/runs.py) builds one RunContext per invocation and hands it to LangGraph
(`graph.stream(..., context=ctx)`); every node receives it as `runtime.context`. Nothing about a run
is kept in module globals, so a second run (or a resume) in the same process starts clean.
"""
from __future__ import annotations

import hashlib
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from collections.abc import Callable

from foster.agent.config import RunConfig

if TYPE_CHECKING:  # the store and the gateway are imported when a run opens, not when a node module loads
    from foster.agent.gateway import Ledger, Models
    from foster.store.runs import RunRegistry

# A LoRA job reports its phases (data, train, evaluate) to whoever started it: the CLI draws bars.
Listener = Callable[[str, int, int, str], None]


class StopRun(Exception):
    """A cap was hit or the run was cancelled: stop cleanly with the best bundle so far."""


@dataclass
class RunContext:
    """What every node of one run gets from LangGraph's Runtime (`runtime.context`)."""

    run_id: str
    config: RunConfig
    registry: RunRegistry
    ledger: Ledger  # this invocation's calls
    models: Models  # this run's models file and endpoints: its view of the gateway
    prior_usage: dict = field(default_factory=dict)  # earlier invocations' usage, from the checkpoint
    listener: Listener | None = None  # LoRA phases, for a caller that shows progress
    show_bar: bool = False  # LoRA training draws its own progress bar
    _store: Any = field(default=None, init=False, repr=False)

    @classmethod
    def open(cls, run_id: str, prior_usage: dict | None = None, **kw) -> RunContext:
        """The run's services; its config is read from the run directory's config.json."""
        from foster.agent import gateway
        from foster.store.runs import RunRegistry

        registry = RunRegistry()
        config = RunConfig.model_validate(registry.config(run_id))
        return cls(run_id=run_id, config=config, registry=registry, ledger=gateway.Ledger(),
                   models=gateway.Models.for_run(config.models_file, config.endpoints),
                   prior_usage=dict(prior_usage or {}), **kw)

    @property
    def dir(self):
        return self.registry.run_dir(self.run_id)

    @property
    def store(self):
        if self._store is None:
            from foster.store.vectors import VectorStore

            self._store = VectorStore()
        return self._store

    # -- usage and caps -------------------------------------------------------------------------
    def usage(self) -> dict[str, dict[str, Any]]:
        """Prior invocations' usage (from the checkpoint) plus this one's."""
        out = {m: dict(u) for m, u in self.prior_usage.items()}
        for m, u in self.ledger.snapshot().items():
            agg = out.setdefault(m, {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost": 0.0, "seconds": 0.0})
            # requests/retries/timeouts/errors: the report says what a call cost in requests, not only in answers
            for k in ("calls", "prompt_tokens", "completion_tokens", "cost", "seconds", "requests", "retries", "timeouts", "errors"):
                agg[k] = agg.get(k, 0) + u.get(k, 0)
        return out

    def check(self) -> None:
        if self.registry.cancel_requested(self.run_id):
            raise StopRun("cancelled")
        c = self.config
        if c.max_calls is None and c.max_tokens is None and c.max_cost is None:
            return
        u = self.usage().values()
        calls = sum(x.get("calls", 0) for x in u)
        tokens = sum(x.get("prompt_tokens", 0) + x.get("completion_tokens", 0) for x in u)
        cost = sum(x.get("cost", 0.0) for x in u)
        if c.max_calls is not None and calls >= c.max_calls:
            raise StopRun(f"call cap reached ({calls} >= {c.max_calls})")
        if c.max_tokens is not None and tokens >= c.max_tokens:
            raise StopRun(f"token cap reached ({tokens} >= {c.max_tokens})")
        if c.max_cost is not None and cost >= c.max_cost:
            raise StopRun(f"cost cap reached (${cost:.4f} >= ${c.max_cost})")

    @contextmanager
    def scope(self):
        """Model calls made inside (also by libraries such as DSPy) count on this run's ledger and resolve
        names through this run's models, and a knn bundle's remote embeddings go through `embed` (caps
        checked); nothing is left installed when the block ends."""
        from foster.agent import gateway

        with gateway.use_ledger(self.ledger), gateway.use_models(self.models), self.embeddings():
            yield self

    @contextmanager
    def embeddings(self):
        """A knn bundle rendered inside (by any node: mine, optimize, evaluate, export) sends its remote
        embedding requests through `embed`; the graph's invocation runs in this block."""
        from foster.prompts.embedding import use_remote_embedder

        with use_remote_embedder(self.embed):
            yield self

    def embed(self, model: str, texts: list[str]) -> list:
        """Every remote embedding request a bundle makes in the run: caps checked first, usage on the
        run's ledger, the name resolved through the run's models (the gateway's keys and retries)."""
        from foster.agent import gateway

        self.check()
        with gateway.use_ledger(self.ledger), gateway.use_models(self.models):
            return gateway.embed(model, texts).vectors

    def complete(self, model: str, **kw):
        """Every model call a node makes: caps checked first, usage on the run's ledger."""
        from foster.agent import gateway

        self.check()
        with self.scope():
            return gateway.complete(model, **kw)

    # -- progress --------------------------------------------------------------------------------
    def progress(self, node: str, done: int, total: int, message: str = "") -> None:
        frac = (done / total) if total else 1.0
        ev = self.registry.append_event(self.run_id, node, "progress", message, progress=frac, done=done, total=total)
        self.registry.update(self.run_id, node=node, progress={**(self.registry.get(self.run_id).progress), node: frac})
        try:  # inside a LangGraph run the CLI's progress bars read the custom stream
            from langgraph.config import get_stream_writer

            get_stream_writer()(ev)
        except Exception:
            pass


@contextmanager
def node_timer(state: dict, node: str):
    """Adds the node's wall time to state['node_seconds'] (returned in the update)."""
    t0 = time.time()
    times: dict[str, float] = dict(state.get("node_seconds") or {})
    yield times
    times[node] = round(times.get(node, 0.0) + time.time() - t0, 3)


def stable_seed(*parts: Any) -> int:
    return int(hashlib.sha1("|".join(map(str, parts)).encode()).hexdigest()[:8], 16)
