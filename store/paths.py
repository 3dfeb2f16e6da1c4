"""Where foster keeps its data ($FOSTER_HOME, or ~/.foster), and the one check every id and written path passes."""

from __future__ import annotations

import os
import re
from pathlib import Path

# Run ids (and any other id that becomes a file or directory name): no separators, no leading dot,
# so an id can never name a path outside its parent directory.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_ID = re.compile(ID_PATTERN)


def check_id(value: object, what: str = "run id") -> str:
    """`value` if it is a safe id, else ValueError naming `what` (the CLI, the API and the registry all call this)."""
    if not isinstance(value, str) or not _ID.match(value) or ".." in value:
        raise ValueError(f"invalid {what} {value!r}: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return value


def foster_home() -> Path:
    """The data directory ($FOSTER_HOME or ~/.foster), created on first use."""
    home = Path(os.environ.get("FOSTER_HOME") or Path.home() / ".foster").expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home


def inside_home(path: str | os.PathLike[str], home: Path | None = None) -> Path:
    """`path` resolved (symlinks too), or ValueError if it is not inside FOSTER_HOME: every path foster writes passes here."""
    root = (home or foster_home()).resolve()
    resolved = Path(path).expanduser().resolve()
    if resolved != root and root not in resolved.parents:
        raise ValueError(f"{path}: outside the data directory {root}")
    return resolved


def runs_dir() -> Path:
    """The directory holding one sub-directory per run."""
    path = foster_home() / "runs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_dir(run_id: str) -> Path:
    """The directory of one run (created); refuses ids that could escape runs_dir()."""
    path = inside_home(runs_dir() / check_id(run_id))
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir() -> Path:
    """Where API callers' input files may be named from ($FOSTER_DATA_DIR, default FOSTER_HOME/data)."""
    path = Path(os.environ.get("FOSTER_DATA_DIR") or foster_home() / "data").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def uploads_dir() -> Path:
    """FOSTER_HOME/uploads: input files an API caller sent as content, named by their hash."""
    path = foster_home() / "uploads"
    path.mkdir(parents=True, exist_ok=True)
    return path
