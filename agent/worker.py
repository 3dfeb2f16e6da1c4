"""Workers: take queued runs and execute them, one at a time, until stopped.

The API only enqueues (store/queue.py). A worker takes the oldest pending run that no live process
holds, and `agent.runs.execute` takes the run's lease (store/leases.py) and runs or resumes its
graph from its checkpoint. A worker killed mid-run leaves its run pending with a lease that goes
stale (at once on the same host, after the lease's ttl elsewhere); the next free worker resumes it,
and the teacher calls the dead worker completed are read back from Chroma, never asked again.

With nothing configured, `foster serve` runs one worker in a thread and everything stays on this
machine (files, SQLite, on-disk Chroma). With FOSTER_POSTGRES_URL (queue, leases, checkpoints) and
FOSTER_CHROMA_URL (observations) set, any number of `foster worker` processes on any number of
machines share the queue.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

log = logging.getLogger("foster.worker")


def serve_runs_in_process() -> bool:
    """Whether `foster serve` executes queued runs itself: yes unless runs are shared through Postgres.

    FOSTER_SERVE_WORKER=1 or 0 overrides (a single-machine Postgres set-up may still want it).
    """
    forced = os.environ.get("FOSTER_SERVE_WORKER")
    if forced is not None and forced.strip() != "":
        return forced.strip() not in ("0", "false", "no")
    from foster.store import pg

    return pg.url() is None


START_TRIES = 3  # a run whose start fails (a deadlock, a dropped connection) is taken again this often


def next_run() -> str | None:
    """The oldest pending run that no live process holds (its lease absent or stale)."""
    from foster.store import leases, queue

    for run_id in queue.pending():
        lease = leases.holder(run_id)
        if lease is None or leases.is_stale(lease):
            return run_id
    return None


class Worker:
    """Executes queued runs until `stop()`; `on_event(kind, run_id, detail)` hears about each one."""

    def __init__(self, poll_s: float = 1.0, on_event: Callable[[str, str, str], None] | None = None):
        self.poll_s = poll_s
        self.on_event = on_event or (lambda kind, run_id, detail: log.info("%s %s %s", kind, run_id, detail))
        self._stop = threading.Event()
        self.executed: list[str] = []
        self._failed_starts: dict[str, int] = {}

    def stop(self) -> None:
        self._stop.set()

    def work_one(self) -> str | None:
        """Take and execute one run; None when there was nothing to take (or another worker won it)."""
        from foster.agent.runs import RunBusy, execute
        from foster.store import queue
        from foster.store.runs import RunRegistry

        run_id = next_run()
        if run_id is None:
            return None
        registry = RunRegistry()
        if not registry.exists(run_id):  # its directory is gone: nothing left to execute
            queue.finish(run_id)
            return None
        before = registry.get(run_id)
        self.on_event("take", run_id, "resume" if before and before.status != "queued" else "start")
        try:
            execute(run_id)
        except RunBusy:
            self.on_event("busy", run_id, "taken by another worker first")
            return None  # another worker acquired it between our look and our take
        except Exception as exc:  # execute wrote status=failed and the traceback into the run's events
            self.on_event("failed", run_id, f"{type(exc).__name__}: {exc}".splitlines()[0])
            status = registry.get(run_id)
            tries = self._failed_starts[run_id] = self._failed_starts.get(run_id, 0) + 1
            if status is not None and status.status == "queued" and tries < START_TRIES:
                # it failed before the run began (the database, the checkpointer): the run itself
                # never started, so it stays in the queue for the next take instead of being lost
                return None
            if status is not None and status.status == "queued":
                registry.update(run_id, status="failed", error=f"could not start after {tries} tries: "
                                f"{type(exc).__name__}: {exc}".splitlines()[0], finished_at=time.time())
        status = registry.get(run_id)
        queue.finish(run_id)
        self.executed.append(run_id)
        self.on_event("finished", run_id, status.status if status else "?")
        return run_id

    def run(self, exit_when_idle: bool = False, max_runs: int | None = None) -> int:
        """Loop until stopped; `exit_when_idle`: return once the queue holds no unfinished run at all."""
        from foster.store import queue

        done = 0
        while not self._stop.is_set() and (max_runs is None or done < max_runs):
            try:
                took = self.work_one()
            except Exception as exc:  # the queue's backend is unreachable: say so, wait, try again
                self.on_event("error", "-", f"{type(exc).__name__}: {exc}".splitlines()[0])
                took = None
            if took is not None:
                done += 1
                continue
            if exit_when_idle and not queue.pending():
                break
            self._stop.wait(self.poll_s)
        return done

    def start_thread(self) -> threading.Thread:
        """Run in a daemon thread (inside `foster serve`); a run it holds when the process exits is resumed later."""
        thread = threading.Thread(target=self.run, name="foster-worker", daemon=True)
        thread.start()
        return thread


def wait_for(run_ids: list[str], timeout_s: float, poll_s: float = 0.5) -> dict[str, str]:
    """Statuses of `run_ids` once all are finished (or at the timeout): {run_id: status}."""
    from foster.store.runs import RunRegistry

    registry, deadline = RunRegistry(), time.monotonic() + timeout_s
    while True:
        statuses = {r: (s.status if (s := registry.get(r)) else "missing") for r in run_ids}
        if all(s in ("done", "failed", "cancelled", "stopped") for s in statuses.values()) or time.monotonic() > deadline:
            return statuses
        time.sleep(poll_s)
