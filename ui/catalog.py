"""Bundles on disk, found wherever foster writes them: every run's exports and foster_home()/bundles.

The service resolves a request's `model` to a bundle on every call, so lookups are cached by file
(path, mtime, size), a file is re-checked at most once per FRESH_S seconds, and the directories are
re-listed only when an id is not found or a file changed.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from foster.store.paths import foster_home

FRESH_S = 1.0  # how stale a cached file check may be (a stat costs more than the rest of a lookup)

# A run id or bundle id as it may appear in a URL: no path separators, no "..".
SAFE_ID = r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,199}$"


_HOMES: dict[str | None, Path] = {}


def current_home() -> Path:
    """foster_home(), remembered per $FOSTER_HOME value: the serving path asks on every request and
    foster_home() creates the directory each time."""
    key = os.environ.get("FOSTER_HOME")
    home = _HOMES.get(key)
    if home is None:
        home = _HOMES[key] = foster_home()
    return home


def bundles_dir() -> Path:
    """foster_home()/bundles: bundles published outside any run (e.g. uploaded through the API)."""
    path = foster_home() / "bundles"
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class BundleEntry:
    """Where one bundle file is and what it says about itself (read without rendering it)."""

    id: str
    path: Path
    name: str = ""
    run_id: str | None = None
    variant: str = ""  # the file's stem inside a run: "best_bundle", "gepa-t0-r1", ...
    best: bool = False
    teacher: str = ""
    targets: list[str] = field(default_factory=list)
    fidelity: float | None = None
    mtime: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "run_id": self.run_id,
            "variant": self.variant,
            "best": self.best,
            "teacher": self.teacher,
            "targets": list(self.targets),
            "fidelity": self.fidelity,
            "path": str(self.path),
        }


def _rank(entry: BundleEntry) -> tuple:
    """Which file answers for an id when several hold the same bundle: a published one, then a run's
    best bundle (it carries the report and its one target), then the newest variant."""
    return (entry.run_id is None, entry.best, entry.mtime)


class BundleCatalog:
    """Every bundle under foster_home(): runs/*/best_bundle.json, runs/*/bundles/*.json, bundles/*.json."""

    def __init__(self, home: Path | None = None):
        self._home = home
        self._lock = threading.Lock()
        self._headers: dict[Path, tuple[tuple[int, int], BundleEntry | None]] = {}
        self._by_id: dict[str, BundleEntry] = {}
        self._loaded: dict[Path, tuple[tuple[int, int], Any]] = {}
        self._checked: dict[Path, float] = {}  # when a file's cache entry was last confirmed on disk
        self._listed_at = -FRESH_S  # when the directories were last listed (bounds re-listing on misses)

    @property
    def home(self) -> Path:
        return self._home or current_home()

    def _files(self) -> list[tuple[Path, str | None, bool]]:
        files: list[tuple[Path, str | None, bool]] = []
        runs = self.home / "runs"
        if runs.is_dir():
            for run in sorted(p for p in runs.iterdir() if p.is_dir()):
                best = run / "best_bundle.json"
                if best.is_file():
                    files.append((best, run.name, True))
                exported = run / "bundles"
                if exported.is_dir():
                    files += [(p, run.name, False) for p in sorted(exported.glob("*.json"))]
        published = self.home / "bundles"
        if published.is_dir():
            files += [(p, None, False) for p in sorted(published.glob("*.json"))]
        return files

    def _header(self, path: Path, run_id: str | None, best: bool) -> BundleEntry | None:
        try:
            stat = path.stat()
        except OSError:
            return None
        key = (stat.st_mtime_ns, stat.st_size)
        cached = self._headers.get(path)
        if cached and cached[0] == key:
            return cached[1]
        entry = None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and data.get("id") and data.get("targets"):
                report = data.get("report") or {}
                fidelity = report.get("fidelity") if isinstance(report, dict) else None
                entry = BundleEntry(
                    id=str(data["id"]),
                    path=path,
                    name=str(data.get("name") or ""),
                    run_id=run_id,
                    variant=path.stem,
                    best=best,
                    teacher=str(data.get("teacher") or ""),
                    targets=[str(t) for t in data.get("targets") or []],
                    fidelity=fidelity if isinstance(fidelity, (int, float)) else None,
                    mtime=stat.st_mtime,
                )
        except (OSError, ValueError):
            entry = None  # a half-written or foreign JSON file is not a bundle
        self._headers[path] = (key, entry)
        return entry

    def entries(self) -> list[BundleEntry]:
        """Every bundle file, newest first (a bundle id may appear once per file holding it)."""
        with self._lock:
            seen = []
            for path, run_id, best in self._files():
                entry = self._header(path, run_id, best)
                if entry is not None:
                    seen.append(entry)
            by_id: dict[str, BundleEntry] = {}
            for entry in seen:
                if entry.id not in by_id or _rank(entry) > _rank(by_id[entry.id]):
                    by_id[entry.id] = entry
            self._by_id = by_id
            self._listed_at = time.monotonic()
            return sorted(seen, key=lambda e: e.mtime, reverse=True)

    def invalidate(self) -> None:
        """Forget when the directories were listed (after this process wrote a bundle)."""
        self._listed_at = -FRESH_S

    def _fresh(self, path: Path) -> bool:
        return time.monotonic() - self._checked.get(path, -FRESH_S) < FRESH_S

    def find(self, bundle_id: str) -> BundleEntry | None:
        """The file that answers for `bundle_id`, re-listing the directories only on a miss."""
        with self._lock:
            entry = self._by_id.get(bundle_id)
        if entry is not None:
            if self._fresh(entry.path):
                return entry
            try:
                stat = entry.path.stat()
                if self._headers.get(entry.path, ((0, 0),))[0] == (stat.st_mtime_ns, stat.st_size):
                    self._checked[entry.path] = time.monotonic()
                    return entry
            except OSError:
                pass
        elif time.monotonic() - self._listed_at < FRESH_S:
            return None  # an unknown id: listed moments ago, do not walk every run again
        self.entries()
        with self._lock:
            return self._by_id.get(bundle_id)

    def load(self, bundle_id: str):
        """The Bundle for an id (cached per file version, so retrieved examples embed once), or None."""
        entry = self.find(bundle_id)
        return None if entry is None else self.load_path(entry.path)

    def load_path(self, path: Path):
        from foster.prompts.bundle import Bundle

        with self._lock:
            cached = self._loaded.get(path)
        if cached and self._fresh(path):
            return cached[1]
        stat = path.stat()
        key = (stat.st_mtime_ns, stat.st_size)
        if cached and cached[0] == key:
            self._checked[path] = time.monotonic()
            return cached[1]
        bundle = Bundle.load(path)
        with self._lock:
            self._loaded[path] = (key, bundle)
        self._checked[path] = time.monotonic()
        return bundle

    def run_bundles(self, run_id: str) -> list[BundleEntry]:
        """A run's exported variants and its best bundle, in file order."""
        return sorted((e for e in self.entries() if e.run_id == run_id), key=lambda e: (not e.best, e.variant))


_CATALOGS: dict[Path, BundleCatalog] = {}
_CATALOGS_LOCK = threading.Lock()


def catalog() -> BundleCatalog:
    """The process's catalog for the current foster_home() (tests switch FOSTER_HOME per test)."""
    home = current_home()
    with _CATALOGS_LOCK:
        if home not in _CATALOGS:
            _CATALOGS[home] = BundleCatalog(home)
        return _CATALOGS[home]
