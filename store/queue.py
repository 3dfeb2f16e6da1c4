"""The run queue: runs the API enqueued, waiting for (or held by) a worker, oldest first.

A run stays in the queue until a worker finishes it, whatever the outcome; who is executing it
is its lease (store/leases.py), not the queue. So a run whose worker died is still pending, its
lease goes stale, and the next free worker takes it and resumes it from its checkpoint.

    enqueue(run_id, config)   add a run (idempotent)
    pending() -> [run_id]     unfinished runs, oldest first (held or not)
    finish(run_id)            a worker is done with it (done, failed, stopped or cancelled)

Backends: files under FOSTER_HOME/queue (one worker machine, the default), or PostgreSQL when
FOSTER_POSTGRES_URL is set (store/pg.py), shared by workers on any number of machines.
"""

from __future__ import annotations

import json
import time
from pathlib import Path


def _dir() -> Path:
    from foster.store.paths import foster_home

    d = foster_home() / "queue"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _pg():
    from foster.store import pg

    return pg if pg.url() else None


def enqueue(run_id: str, config: dict | None = None) -> None:
    if (pg := _pg()) is not None:
        return pg.enqueue(run_id, config)
    from foster.store.runs import write_json_atomic

    path = _dir() / f"{run_id}.json"
    if not path.exists():
        write_json_atomic(path, {"run_id": run_id, "enqueued_at": time.time()})


def pending() -> list[str]:
    if (pg := _pg()) is not None:
        return pg.pending()
    entries = []
    for path in _dir().glob("*.json"):
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # finished (removed) between glob and read, or torn
        entries.append((entry.get("enqueued_at", 0.0), entry.get("run_id", path.stem)))
    return [run_id for _, run_id in sorted(entries)]


def finish(run_id: str) -> None:
    if (pg := _pg()) is not None:
        return pg.finish(run_id)
    (_dir() / f"{run_id}.json").unlink(missing_ok=True)
