"""Where foster keeps its data: $FOSTER_HOME, or ~/.foster."""

from __future__ import annotations

import os
import re
from pathlib import Path


def foster_home() -> Path:
    """The data directory ($FOSTER_HOME or ~/.foster), created on first use."""
    home = Path(os.environ.get("FOSTER_HOME") or Path.home() / ".foster").expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home


def runs_dir() -> Path:
    """The directory holding one sub-directory per run."""
    path = foster_home() / "runs"
    path.mkdir(parents=True, exist_ok=True)
    return path


_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def run_dir(run_id: str) -> Path:
    """The directory of one run (created); refuses ids that could escape runs_dir()."""
    if not _RUN_ID.match(run_id) or ".." in run_id:
        raise ValueError(f"invalid run id {run_id!r}: use letters, digits, '.', '_' or '-'")
    path = runs_dir() / run_id
    path.mkdir(parents=True, exist_ok=True)
    return path
