"""Reading the user's JSONL files: every error names the file and the line."""
from __future__ import annotations

import json
import os
from pathlib import Path

from foster.agent.config import InputError, secret_in

MAX_LINE_BYTES = 100_000  # one input is one prompt: a longer line is a wrong file, not an input

INPUT_KEYS = ("input", "prompt", "text", "question")
OUTPUT_KEYS = ("output", "completion", "answer", "label", "response")


def _pick(obj: dict, keys: tuple[str, ...]):
    for k in keys:
        if k in obj and isinstance(obj[k], str):
            return obj[k]
    # OpenAI chat fine-tuning shape: {"messages": [..., {"role": "user"}, {"role": "assistant"}]}
    msgs = obj.get("messages")
    if isinstance(msgs, list):
        role = "assistant" if keys is OUTPUT_KEYS else "user"
        found = [m.get("content") for m in msgs if isinstance(m, dict) and m.get("role") == role]
        if found and isinstance(found[-1], str):
            return found[-1]
    return None


def read_jsonl(path: str | Path, need_output: bool = False) -> list[dict]:
    """[{'input': str, 'output': str|None}], raising InputError('FILE:LINE: reason')."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file")
    limit = max_line_bytes()
    rows: list[dict] = []
    with open(p, "rb") as f:
        for n, raw in enumerate(_lines(f, limit), 1):
            if raw is None:
                raise InputError(f"{p}:{n}: line longer than {limit} bytes (FOSTER_MAX_LINE_BYTES)")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"{p}:{n}: not UTF-8 text (byte {raw[e.start]:#04x} at column {e.start + 1})") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{p}:{n}: not valid JSON ({e.msg})") from None
            if isinstance(obj, str):
                obj = {"input": obj}
            if not isinstance(obj, dict):
                raise InputError(f"{p}:{n}: expected a JSON object with an 'input' field")
            x = _pick(obj, INPUT_KEYS)
            if not x or not x.strip():
                raise InputError(f"{p}:{n}: missing a non-empty 'input' field")
            y = _pick(obj, OUTPUT_KEYS)
            if need_output and (y is None or not y.strip()):
                raise InputError(f"{p}:{n}: missing a non-empty 'output' field")
            for text in (x, y or ""):
                problem = secret_in(text)
                if problem:  # it would reach the teacher, the targets and maybe a bundle's examples
                    raise InputError(f"{p}:{n}: {problem}; remove keys from the data")
            rows.append({"input": x.strip(), "output": y})
    if not rows:
        raise InputError(f"{p}: no inputs (the file is empty)")
    return rows


def max_line_bytes() -> int:
    """The longest input line read ($FOSTER_MAX_LINE_BYTES, default 100000)."""
    try:
        return max(1, int(os.environ.get("FOSTER_MAX_LINE_BYTES") or MAX_LINE_BYTES))
    except ValueError:
        return MAX_LINE_BYTES


def _lines(f, limit: int):
    """Lines of a binary file; None for a line over `limit` bytes (never read into memory whole)."""
    while True:
        line = f.readline(limit + 1)
        if not line:
            return
        if len(line.rstrip(b"\r\n")) > limit:
            yield None
            return
        yield line
