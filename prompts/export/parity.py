"""Export parity: an export renders, on the given inputs, exactly what `Bundle.messages()` renders.

`check()` renders each input through the written file (with the tool's own library where it has
one) and compares message by message; `export_all()` is what a run calls to write every format
beside its best bundle and record the result in its report.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from foster.prompts.bundle import Bundle
from foster.prompts.export import FORMATS, ExportContext, export_bundle, format_module
from pydantic import BaseModel


class Parity(BaseModel):
    format: str
    n: int
    same: int
    ok: bool
    first_difference: dict[str, Any] | None = None
    path: str | None = None
    error: str | None = None


def _embed_one(model: str) -> Callable[[str], Any]:
    """One text's vector by the embedding model a bundle names (what a user of the export supplies)."""
    from foster.prompts.embedding import embedder

    embed = embedder(model)
    return lambda text: embed([text])[0]


def check(bundle: Bundle, fmt: str, text: str, inputs: list[str],
          embed: Callable[[str], Any] | None = None) -> Parity:
    """Compare the export's messages with the bundle's on `inputs` (an export's input is embedded
    by `embed`, by default the bundle's own embedding model)."""
    embed = embed or _embed_one(bundle.selection.embedding_model)
    rendered = format_module(fmt).load_messages(text, inputs, embed)
    same, first = 0, None
    for user_input, got in zip(inputs, rendered, strict=True):
        want = bundle.messages(user_input)
        if got == want:
            same += 1
        elif first is None:
            index = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            first = {"input": user_input, "message": index, "export": got[index] if index < len(got) else None,
                     "bundle": want[index] if index < len(want) else None}
    return Parity(format=fmt, n=len(inputs), same=same, ok=same == len(inputs), first_difference=first)


def export_all(bundle: Bundle, directory: str | Path, context: ExportContext,
               formats: tuple[str, ...] = FORMATS) -> list[Parity]:
    """Write every format into `directory` and check each on the context's probes. A format whose
    library is missing here is reported with its error, not raised."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    inputs = [probe.input for probe in context.probes]
    results = []
    for fmt in formats:
        try:
            exported = export_bundle(bundle, fmt, context)
            path = directory / exported.filename
            path.write_text(exported.text, encoding="utf-8")
            result = check(bundle, fmt, exported.text, inputs)
            result.path = str(path)
        except Exception as exc:  # noqa: BLE001 - one format's tool missing must not hide the others
            result = Parity(format=fmt, n=len(inputs), same=0, ok=False, error=f"{type(exc).__name__}: {exc}")
        results.append(result)
    return results


def export_run(bundle: Bundle, run_dir: str | Path) -> list[dict[str, Any]]:
    """What a run's bundle node calls: every format into <run>/exports, each checked on the run's
    held-out probes; the list goes into report.json as `exports`."""
    from foster.prompts.export import run_context

    return [result.model_dump() for result in export_all(bundle, Path(run_dir) / "exports", run_context(run_dir))]
