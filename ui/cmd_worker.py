"""`foster worker`: execute queued runs (started through the API) until stopped."""
from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time

from foster.ui.cli import Command


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--poll", type=float, default=1.0, help="seconds between looks at an empty queue (default 1)")
    p.add_argument("--exit-when-idle", action="store_true", help="exit once no unfinished run is left in the queue")
    p.add_argument("--max-runs", type=int, help="exit after executing this many runs")


def _run(args: argparse.Namespace) -> int:
    from foster.agent.worker import Worker
    from foster.store import pg

    me = f"{socket.gethostname()}:{os.getpid()}"

    def say(kind: str, run_id: str, detail: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} worker {me}: {kind} {run_id} {detail}".rstrip(), flush=True)

    worker = Worker(poll_s=args.poll, on_event=say)
    # SIGTERM finishes the run in hand first (a run is resumable, so SIGKILL is safe too)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    where = "PostgreSQL" if pg.url() else "this machine's data directory"
    say("ready", "-", f"queue in {where}")
    try:
        worker.run(exit_when_idle=args.exit_when_idle, max_runs=args.max_runs)
    except KeyboardInterrupt:
        return 130
    say("exit", "-", f"{len(worker.executed)} run(s) executed")
    sys.stdout.flush()
    return 0


COMMANDS = [Command("worker", "execute queued runs (started through the API) until stopped", _arguments, _run)]
