"""Checkpointer factory: SQLite under FOSTER_HOME by default, Postgres when FOSTER_POSTGRES_URL is set."""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path


def checkpointer(home: Path | None = None):
    url = os.environ.get("FOSTER_POSTGRES_URL")
    if url:
        try:
            from langgraph.checkpoint.postgres import PostgresSaver
        except ImportError as e:  # optional scale-out dependency
            raise RuntimeError("FOSTER_POSTGRES_URL is set but langgraph-checkpoint-postgres is not installed") from e
        import psycopg
        from psycopg.rows import dict_row

        # the settings PostgresSaver needs: autocommit, dict rows, no server-side prepared statements
        conn = psycopg.connect(url, autocommit=True, prepare_threshold=0, row_factory=dict_row)
        saver = PostgresSaver(conn)
        # several workers starting at once would race on the migrations: one at a time
        from foster.store.pg import advisory_lock

        advisory_lock(conn, 727151)
        try:
            saver.setup()
        finally:
            conn.execute("SELECT pg_advisory_unlock(727151)")
        return saver
    from foster.store.paths import foster_home
    from langgraph.checkpoint.sqlite import SqliteSaver

    home = home or foster_home()  # one definition of the data directory (an unset and an empty $FOSTER_HOME alike)
    # One connection shared by the graph's worker threads; SqliteSaver serialises access itself.
    conn = sqlite3.connect(str(home / "checkpoints.sqlite"), check_same_thread=False)
    return SqliteSaver(conn)
