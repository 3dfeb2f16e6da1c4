"""Who owns a run: a lease file in the run directory, so one process at a time probes, optimizes or resumes it.

    acquire(run_id, owner, ttl) -> bool   take the run (or take over a stale lease); False if someone holds it
    renew(run_id, owner, ttl) -> bool     push the expiry forward; False if the lease is no longer ours
    release(run_id, owner)                give it up (only the holder can)
    holder(run_id) -> Lease | None        who holds it now (stale or not)
    is_stale(lease) -> bool               its expiry passed, or its process is gone from this host

The read-check-write of acquire/renew/release happens under an flock on `lease.lock`, so two
processes racing for a run cannot both win. A lease names its pid and host: a killed owner on
this host is seen as stale at once, one on another host when its ttl runs out.

With FOSTER_POSTGRES_URL set, the same leases live in PostgreSQL (store/pg.py) instead, so workers
on several machines share them; the operations and their meaning are the same.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel

LEASE = "lease.json"
DEFAULT_TTL = 30.0


class Lease(BaseModel):
    run_id: str
    owner: str
    host: str
    pid: int
    acquired_at: float
    expires_at: float


def default_ttl() -> float:
    """Seconds a lease lives without renewal ($FOSTER_LEASE_TTL, default 30)."""
    try:
        ttl = float(os.environ.get("FOSTER_LEASE_TTL") or DEFAULT_TTL)
    except ValueError:
        return DEFAULT_TTL
    return ttl if ttl > 0 else DEFAULT_TTL


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _dir(run_id: str) -> Path:
    from foster.store.runs import RunRegistry

    return RunRegistry().run_dir(run_id)


@contextlib.contextmanager
def _locked(run_id: str) -> Iterator[Path]:
    d = _dir(run_id)
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "lease.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield d / LEASE
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read(path: Path) -> Lease | None:
    try:
        return Lease.model_validate_json(path.read_text())
    except (FileNotFoundError, ValueError):
        return None  # a torn or hand-edited lease is no lease


def _write(path: Path, lease: Lease) -> None:
    from foster.store.runs import write_text_atomic

    write_text_atomic(path, lease.model_dump_json())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child not yet reaped by its parent is a zombie: dead for our purposes
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return True


def is_stale(lease: Lease, now: float | None = None) -> bool:
    if (now or time.time()) >= lease.expires_at:
        return True
    return lease.host == socket.gethostname() and not _pid_alive(lease.pid)


def _pg():
    """store.pg when FOSTER_POSTGRES_URL is set (leases shared by every machine), else None."""
    from foster.store import pg

    return pg if pg.url() else None


def holder(run_id: str) -> Lease | None:
    if (pg := _pg()) is not None:
        return pg.holder(run_id)
    return _read(_dir(run_id) / LEASE)


def acquire(run_id: str, owner: str, ttl: float | None = None, *, pid: int | None = None) -> bool:
    """Take the run for `owner` unless a live lease of another owner holds it."""
    ttl = default_ttl() if ttl is None else ttl
    if (pg := _pg()) is not None:
        current = pg.holder(run_id)
        stale = current.owner if current is not None and current.owner != owner and is_stale(current) else None
        return pg.acquire(run_id, owner, ttl, socket.gethostname(), pid or os.getpid(), stale)
    with _locked(run_id) as path:
        current = _read(path)
        if current is not None and current.owner != owner and not is_stale(current):
            return False
        now = time.time()
        _write(path, Lease(run_id=run_id, owner=owner, host=socket.gethostname(), pid=pid or os.getpid(),
                           acquired_at=now, expires_at=now + ttl))
        return True


def renew(run_id: str, owner: str, ttl: float | None = None) -> bool:
    ttl = default_ttl() if ttl is None else ttl
    if (pg := _pg()) is not None:
        return pg.renew(run_id, owner, ttl)
    with _locked(run_id) as path:
        current = _read(path)
        if current is None or current.owner != owner:
            return False
        _write(path, current.model_copy(update={"expires_at": time.time() + ttl}))
        return True


def release(run_id: str, owner: str) -> None:
    if (pg := _pg()) is not None:
        return pg.release(run_id, owner)
    with _locked(run_id) as path:
        current = _read(path)
        if current is not None and current.owner == owner:
            path.unlink(missing_ok=True)


class Holding:
    """Hold a run's lease for the length of a `with` block, renewed in a daemon thread every ttl/3."""

    def __init__(self, run_id: str, owner: str | None = None, ttl: float | None = None):
        import threading

        self.run_id, self.owner, self.ttl = run_id, owner or default_owner(), ttl or default_ttl()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, daemon=True, name=f"lease-{run_id}")
        self.lost = False

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            if not renew(self.run_id, self.owner, self.ttl):
                self.lost = True  # another process took the run over after we looked dead
                return

    def __enter__(self) -> Holding:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        release(self.run_id, self.owner)
