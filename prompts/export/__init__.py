"""A bundle, written for the tools teams already use: one module per format, one registry.

    from foster.prompts.export import export_bundle
    export_bundle(bundle, "langchain").text       # a Python module defining `prompt`

A format module has `SUFFIX`, `MEDIA_TYPE`, `render(bundle, context) -> str` and
`load_messages(text, inputs, embed) -> list[messages]`, which renders the written file with the
tool's own library (or the tool's own rules) so foster.prompts.export.parity can check that an
export answers like the bundle. Like the bundle, no export carries a key or an endpoint URL.
"""

from __future__ import annotations

import importlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from foster.prompts.bundle import Bundle

FORMATS = ("openai", "langchain", "dspy", "promptfoo")


@dataclass(frozen=True)
class Probe:
    """A held-out input and the teacher's answer for it (promptfoo's test cases)."""

    input: str
    expected: str


@dataclass
class ExportContext:
    """What a run adds to a bundle's export: its held-out probes and its sampling parameters."""

    probes: list[Probe] = field(default_factory=list)
    temperature: float = 0.0  # evaluation scores the target's greedy answer
    max_tokens: int | None = None
    provider: str | None = None  # promptfoo: a provider id to use instead of the one derived from the target


@dataclass(frozen=True)
class Exported:
    format: str
    text: str
    filename: str
    media_type: str


def format_module(fmt: str) -> ModuleType:
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}: one of {', '.join(FORMATS)}")
    return importlib.import_module(f"foster.prompts.export.{fmt}")


def export_bundle(bundle: Bundle, fmt: str, context: ExportContext | None = None) -> Exported:
    """The bundle as a file for `fmt` (knn bundles get their pool vectors attached first)."""
    module = format_module(fmt)
    bundle.attach_vectors()
    text = module.render(bundle, context or ExportContext())
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", bundle.name or "bundle") + f"-{bundle.id}"
    return Exported(fmt, text, f"{stem}{module.SUFFIX}", module.MEDIA_TYPE)


def header(bundle: Bundle) -> str:
    """One line that says what a file was exported from."""
    from foster.prompts.bundle import _foster_version

    return (f"exported by foster {_foster_version()} from bundle {bundle.id}"
            f"{f' ({bundle.name})' if bundle.name else ''}: teacher {bundle.teacher}, "
            f"target {', '.join(bundle.targets)}")


def pool(bundle: Bundle) -> dict[str, Any] | None:
    """A knn bundle's pool as the exports write it: k, the embedding and its stored vectors."""
    if bundle.selection.kind != "knn" or not bundle.examples:
        return None
    vectors = bundle.attach_vectors().selection.vectors
    assert vectors is not None
    return {"k": bundle.selection.k, "embedding_model": bundle.selection.embedding_model,
            "examples": [e.model_dump() for e in bundle.examples],
            "vectors": {"dtype": vectors.dtype, "dim": vectors.dim, "data": vectors.data}}


def run_context(run_dir: str | Path | None) -> ExportContext:
    """A finished run's held-out probes (grid.json: input and the teacher's modal answer) and its
    sampling (config.json's max_new_tokens; greedy, as evaluation scores). Empty when absent."""
    if run_dir is None:
        return ExportContext()
    run_dir = Path(run_dir)
    context = ExportContext()
    try:
        grid = json.loads((run_dir / "grid.json").read_text(encoding="utf-8"))
        context.probes = [Probe(row["input"], str((row.get("teacher") or {}).get("mode", "")))
                          for row in grid.get("rows", [])]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
        context.max_tokens = config.get("max_new_tokens") or None
    except (OSError, ValueError, AttributeError):
        pass
    return context


def run_dir_of(bundle_path: str | Path) -> Path | None:
    """The run folder a bundle file belongs to (best_bundle.json or bundles/<variant>.json), if any."""
    path = Path(bundle_path).expanduser().resolve()
    for folder in (path.parent, path.parent.parent):
        if (folder / "grid.json").is_file() or (folder / "config.json").is_file():
            return folder
    return None
