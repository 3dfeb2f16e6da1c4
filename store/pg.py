"""PostgreSQL backend of the run queue and the run leases, used when FOSTER_POSTGRES_URL is set.

Two tables, created on first use:

    foster_queue   run_id, config (jsonb), enqueued_at, finished_at     runs waiting for or held by a worker
    foster_leases  run_id, owner, host, pid, acquired_at, expires_at    who executes a run (store/leases.py's Lease)

Every take-over is one conditional UPSERT, so two workers on two machines racing for the same
run cannot both win. Times are the database's clock (seconds since the epoch), so machines with
skewed clocks agree on when a lease expired. A connection per operation keeps this thread-safe
and simple; a lease renewal every ttl/3 seconds is far below what that costs.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator

ENV = "FOSTER_POSTGRES_URL"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS foster_queue (
    run_id text PRIMARY KEY,
    config jsonb NOT NULL DEFAULT '{}'::jsonb,
    enqueued_at double precision NOT NULL,
    finished_at double precision
);
CREATE INDEX IF NOT EXISTS foster_queue_pending ON foster_queue (enqueued_at) WHERE finished_at IS NULL;
CREATE TABLE IF NOT EXISTS foster_leases (
    run_id text PRIMARY KEY,
    owner text NOT NULL,
    host text NOT NULL,
    pid integer NOT NULL,
    acquired_at double precision NOT NULL,
    expires_at double precision NOT NULL
);
"""
_NOW = "extract(epoch from clock_timestamp())"
_ready: set[str] = set()
_ready_lock = threading.Lock()


def url() -> str | None:
    return os.environ.get(ENV) or None


def advisory_lock(conn, key: int, poll_s: float = 0.05) -> None:
    """Take a session advisory lock without waiting inside a statement.

    A blocked `SELECT pg_advisory_lock()` is an open transaction with a snapshot, and the
    checkpointer's migrations run CREATE INDEX CONCURRENTLY, which waits for every such transaction:
    two workers starting at once deadlocked there (one holds the lock and waits for the other's
    statement, the other's statement waits for the lock). Each try here ends at once."""
    import time

    while True:
        row = conn.execute("SELECT pg_try_advisory_lock(%s) AS locked", (key,)).fetchone()
        if row["locked"] if isinstance(row, dict) else row[0]:  # the checkpointer's connection has dict rows
            return
        time.sleep(poll_s)


@contextlib.contextmanager
def connect() -> Iterator:
    """A short-lived autocommit connection to FOSTER_POSTGRES_URL, schema ensured once per process."""
    try:
        import psycopg
    except ImportError as exc:  # the scale extra
        raise RuntimeError(f"{ENV} is set but psycopg is not installed (pip install 'foster[scale]')") from exc
    target = url()
    if not target:
        raise RuntimeError(f"{ENV} is not set")
    with psycopg.connect(target, autocommit=True) as conn:
        if target not in _ready:
            with _ready_lock:
                if target not in _ready:
                    # concurrent first use by several workers: serialise the DDL on an advisory lock
                    advisory_lock(conn, 727150)
                    try:
                        conn.execute(_SCHEMA)
                    finally:
                        conn.execute("SELECT pg_advisory_unlock(727150)")
                    _ready.add(target)
        yield conn


# -- queue ------------------------------------------------------------------------------------


def enqueue(run_id: str, config: dict | None = None) -> None:
    with connect() as conn:
        conn.execute(f"INSERT INTO foster_queue (run_id, config, enqueued_at) VALUES (%s, %s::jsonb, {_NOW}) "
                     "ON CONFLICT (run_id) DO UPDATE SET finished_at = NULL",
                     (run_id, json.dumps(config or {})))


def pending() -> list[str]:
    with connect() as conn:
        rows = conn.execute("SELECT run_id FROM foster_queue WHERE finished_at IS NULL ORDER BY enqueued_at, run_id")
        return [r[0] for r in rows.fetchall()]


def finish(run_id: str) -> None:
    with connect() as conn:
        conn.execute(f"UPDATE foster_queue SET finished_at = {_NOW} WHERE run_id = %s", (run_id,))


def queued_config(run_id: str) -> dict | None:
    with connect() as conn:
        row = conn.execute("SELECT config FROM foster_queue WHERE run_id = %s", (run_id,)).fetchone()
        return row[0] if row else None


# -- leases (the same operations and Lease documents as store/leases.py's file backend) --------

_LEASE_COLUMNS = "run_id, owner, host, pid, acquired_at, expires_at"


def _lease(row):
    from foster.store.leases import Lease

    if row is None:
        return None
    return Lease(**dict(zip(("run_id", "owner", "host", "pid", "acquired_at", "expires_at"), row)))


def holder(run_id: str):
    with connect() as conn:
        return _lease(conn.execute(f"SELECT {_LEASE_COLUMNS} FROM foster_leases WHERE run_id = %s", (run_id,)).fetchone())


def acquire(run_id: str, owner: str, ttl: float, host: str, pid: int, stale_owner: str | None) -> bool:
    """Take the lease unless another owner holds it unexpired; `stale_owner` is a holder the caller saw dead."""
    with connect() as conn:
        row = conn.execute(
            f"INSERT INTO foster_leases ({_LEASE_COLUMNS}) VALUES (%(run)s, %(owner)s, %(host)s, %(pid)s, {_NOW}, {_NOW} + %(ttl)s) "
            "ON CONFLICT (run_id) DO UPDATE SET owner = EXCLUDED.owner, host = EXCLUDED.host, pid = EXCLUDED.pid, "
            "acquired_at = EXCLUDED.acquired_at, expires_at = EXCLUDED.expires_at "
            "WHERE foster_leases.owner = EXCLUDED.owner OR foster_leases.expires_at <= EXCLUDED.acquired_at "
            "OR foster_leases.owner = %(stale)s RETURNING owner",
            {"run": run_id, "owner": owner, "host": host, "pid": pid, "ttl": ttl, "stale": stale_owner},
        ).fetchone()
        return row is not None


def renew(run_id: str, owner: str, ttl: float) -> bool:
    with connect() as conn:
        row = conn.execute(f"UPDATE foster_leases SET expires_at = {_NOW} + %s WHERE run_id = %s AND owner = %s "
                           "RETURNING owner", (ttl, run_id, owner)).fetchone()
        return row is not None


def release(run_id: str, owner: str) -> None:
    with connect() as conn:
        conn.execute("DELETE FROM foster_leases WHERE run_id = %s AND owner = %s", (run_id, owner))
