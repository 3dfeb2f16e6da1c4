"""Reading the user's JSONL files: every error names the file and the line."""
from __future__ import annotations

import json
from pathlib import Path

from foster.agent.config import InputError

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
    rows: list[dict] = []
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
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
            rows.append({"input": x.strip(), "output": y})
    if not rows:
        raise InputError(f"{p}: no inputs (the file is empty)")
    return rows
