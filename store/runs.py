"""The run registry: one directory per run under FOSTER_HOME/runs, read by the CLI, the API and the UI."""
from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from foster.store.paths import check_id, foster_home, inside_home
from pydantic import BaseModel, Field

# "interrupted" is never written: it is how a "running" run whose owner died (stale lease) reads.
RunState = Literal["queued", "running", "done", "failed", "cancelled", "stopped", "interrupted"]
FINISHED = ("done", "failed", "cancelled", "stopped", "interrupted")


class RunStatus(BaseModel):
    run_id: str
    status: RunState = "queued"
    node: str | None = None
    round: int = 0
    progress: dict[str, float] = Field(default_factory=dict)
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    verdict: str | None = None
    best_bundle: str | None = None
    teacher: str | None = None
    targets: list[str] = Field(default_factory=list)
    figures: dict[str, Any] = Field(default_factory=dict)


def write_json_atomic(path: Path, data: Any) -> Path:
    """Write then rename, so a reader (or a crash) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str))
    os.replace(tmp, path)
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


class RunRegistry:
    """Runs as directories; status.json and events.jsonl are the only files written while a run is live."""

    _lock = threading.Lock()

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else foster_home() / "runs"
        self.root.mkdir(parents=True, exist_ok=True)

    def run_dir(self, run_id: str) -> Path:
        """The run's directory; ValueError for an id that is not safe or a path that would leave the data directory."""
        home = None if self.root.resolve().parent == foster_home().resolve() else self.root
        return inside_home(self.root / check_id(run_id), home)

    def exists(self, run_id: str) -> bool:
        return (self.run_dir(run_id) / "status.json").exists()

    def create(self, run_id: str, config: dict, **status: Any) -> RunStatus:
        d = self.run_dir(run_id)
        d.mkdir(parents=True, exist_ok=False)
        write_json_atomic(d / "config.json", config)
        st = RunStatus(run_id=run_id, **status)
        self.write_status(st)
        return st

    def config(self, run_id: str) -> dict:
        return json.loads((self.run_dir(run_id) / "config.json").read_text())

    def _read(self, run_id: str) -> RunStatus | None:
        p = self.run_dir(run_id) / "status.json"
        if not p.exists():
            return None
        return RunStatus.model_validate_json(p.read_text())

    def get(self, run_id: str) -> RunStatus | None:
        """The run's status as written, except that a running run whose owner is gone reads `interrupted`."""
        st = self._read(run_id)
        if st is not None and st.status == "running" and self.owner_gone(run_id):
            st = st.model_copy(update={"status": "interrupted"})
        return st

    def owner_gone(self, run_id: str) -> bool:
        from foster.store import leases

        lease = leases.holder(run_id)
        return lease is None or leases.is_stale(lease)

    def list(self) -> list[RunStatus]:
        out = [s for d in sorted(self.root.iterdir()) if d.is_dir() and _safe(d.name) and (s := self.get(d.name))]
        return sorted(out, key=lambda s: s.started_at or 0, reverse=True)

    def write_status(self, status: RunStatus) -> None:
        with self._lock:
            write_json_atomic(self.run_dir(status.run_id) / "status.json", status.model_dump())

    def update(self, run_id: str, **changes: Any) -> RunStatus:
        with self._lock:
            st = self._read(run_id) or RunStatus(run_id=run_id)
            st = st.model_copy(update=changes)
            write_json_atomic(self.run_dir(run_id) / "status.json", st.model_dump())
            return st

    def append_event(self, run_id: str, node: str | None, kind: str, message: str = "",
                     progress: float | None = None, **extra: Any) -> dict:
        ev = {"ts": time.time(), "run_id": run_id, "node": node, "kind": kind, "message": message,
              "progress": progress, **extra}
        with self._lock, open(self.run_dir(run_id) / "events.jsonl", "a") as f:
            f.write(json.dumps(ev, default=str) + "\n")
        return ev

    def events(self, run_id: str, after: int = 0) -> list[dict]:
        p = self.run_dir(run_id) / "events.jsonl"
        if not p.exists():
            return []
        lines = p.read_text().splitlines()
        return [json.loads(x) for x in lines[after:] if x.strip()]

    def follow(self, run_id: str, poll: float = 0.5, stop_when_finished: bool = True) -> Iterator[dict]:
        seen = 0
        while True:
            evs = self.events(run_id, after=seen)
            seen += len(evs)
            yield from evs
            st = self.get(run_id)
            if stop_when_finished and st and st.status in FINISHED and not evs:
                return
            time.sleep(poll)

    def request_cancel(self, run_id: str) -> None:
        (self.run_dir(run_id) / "CANCEL").touch()

    def cancel_requested(self, run_id: str) -> bool:
        return (self.run_dir(run_id) / "CANCEL").exists()

    def read_json(self, run_id: str, name: str) -> Any:
        p = self.run_dir(run_id) / name
        return json.loads(p.read_text()) if p.exists() else None


def _safe(name: str) -> bool:
    try:
        check_id(name)
    except ValueError:
        return False
    return True
