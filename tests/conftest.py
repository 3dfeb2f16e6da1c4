"""Shared fixtures: every test gets its own data directory and leaves no global model state behind."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
import foster.agent  # noqa: E402,F401  (sets the offline environment before anything heavy loads)


@pytest.fixture(autouse=True)
def foster_state(tmp_path, monkeypatch) -> Iterator[None]:
    """FOSTER_HOME in a tmp dir; fakes, model specs, ledgers and litellm callbacks reset afterwards."""
    monkeypatch.setenv("FOSTER_HOME", str(tmp_path / "foster-home"))
    yield
    from foster.agent.local.registry import clear_registered_backends

    clear_registered_backends()
    gateway = sys.modules.get("foster.agent.gateway")
    if gateway is not None:
        gateway.process_ledger().reset()
    litellm = sys.modules.get("litellm")
    if litellm is not None:
        for name in ("callbacks", "success_callback", "failure_callback", "_async_success_callback", "_async_failure_callback", "input_callback"):
            if isinstance(getattr(litellm, name, None), list):
                setattr(litellm, name, [])


@pytest.fixture
def fake_model() -> Iterator[Callable]:
    """`fake_model(fn, name="fake")` registers a ScriptedBackend and returns (model string, backend)."""
    from foster.agent.local.fake import ScriptedBackend
    from foster.agent.local.registry import register_backend, unregister_backend

    names: list[str] = []

    def make(fn: Callable, name: str = "fake") -> tuple[str, ScriptedBackend]:
        backend = ScriptedBackend(fn)
        register_backend(name, backend)
        names.append(name)
        return f"local/{name}", backend

    try:
        yield make
    finally:
        for name in names:
            unregister_backend(name)
