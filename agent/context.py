"""Per-run services a node needs: config, registry, vector store, ledger, caps, progress."""
from __future__ import annotations

import hashlib
import time
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from foster.agent.config import RunConfig


class StopRun(Exception):
    """A cap was hit or the run was cancelled: stop cleanly with the best bundle so far."""


def register_endpoints(config: RunConfig) -> None:
    """A self-hosted OpenAI-compatible server is a first-class teacher or target: its endpoint comes with it."""
    from foster.agent import gateway

    for model, ep in config.endpoints.items():
        gateway.register_model_spec(gateway.ModelSpec(name=model, model=model, **ep))


class RunContext:
    def __init__(self, run_id: str, config: dict, prior_usage: dict | None = None):
        from foster.agent import gateway
        from foster.store.runs import RunRegistry

        self.run_id = run_id
        self.config = RunConfig.model_validate(config)
        self.registry = RunRegistry()
        self.dir = self.registry.run_dir(run_id)
        self.ledger = gateway.Ledger()
        self.prior_usage = prior_usage or {}
        if self.config.models_file:
            gateway.load_models_file(self.config.models_file)
        register_endpoints(self.config)
        self._store = None

    @property
    def store(self):
        if self._store is None:
            from foster.store.vectors import VectorStore

            self._store = VectorStore()
        return self._store

    # -- usage and caps -------------------------------------------------------------------------
    def usage(self) -> dict[str, dict[str, Any]]:
        """Prior rounds' usage (from the checkpoint) plus this process's."""
        out = {m: dict(u) for m, u in self.prior_usage.items()}
        for m, u in self.ledger.snapshot().items():
            agg = out.setdefault(m, {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost": 0.0, "seconds": 0.0})
            for k in ("calls", "prompt_tokens", "completion_tokens", "cost", "seconds"):
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

    def complete(self, model: str, **kw):
        """Every model call a node makes: caps checked first, usage on the run's ledger."""
        from foster.agent import gateway

        self.check()
        with gateway.use_ledger(self.ledger):
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


_contexts: dict[str, RunContext] = {}


def context(state: dict) -> RunContext:
    """One RunContext per run per process (a resumed run gets a fresh one)."""
    rid = state["run_id"]
    ctx = _contexts.get(rid)
    if ctx is None:
        ctx = _contexts[rid] = RunContext(rid, state["config"], state.get("usage"))
    return ctx


def drop_context(run_id: str) -> None:
    _contexts.pop(run_id, None)
