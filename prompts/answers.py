"""What counts as "the same answer": one normalisation shared by evaluation and serving.

- label: the first non-empty line, stripped of surrounding whitespace, quotes and punctuation,
  mapped to the inventory entry it equals case-insensitively; failing that, to the longest
  inventory entry the line starts with at a word boundary ("Billing - the user asks..." ->
  "billing"); failing that, the cleaned line itself.
- text: the whole text, stripped, with line endings unified and trailing spaces dropped.
- json: the first JSON value in the text re-dumped canonically (sorted keys); failing that, as text.

Compare answers with `answer_key`, which also case-folds.
"""

from __future__ import annotations

import json
import re
from typing import Any

# Surrounding characters that carry no answer: whitespace, quotes, brackets, sentence punctuation.
_TRIM = " \t\r\n\"'`.,;:!?()[]{}<>*_-–—“”‘’«»"


def _contract_fields(contract: Any) -> tuple[str, list[str]]:
    if contract is None:
        return "text", []
    if isinstance(contract, dict):
        return contract.get("format", "text"), list(contract.get("answers") or [])
    return getattr(contract, "format", "text"), list(getattr(contract, "answers", []) or [])


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line
    return ""


def clean_label(text: str) -> str:
    """First non-empty line without surrounding whitespace, quotes or punctuation."""
    return _first_line(str(text)).strip().strip(_TRIM).strip()


def _match_label(cleaned: str, answers: list[str]) -> str | None:
    folded = cleaned.casefold()
    for answer in answers:
        if folded == clean_label(answer).casefold():
            return answer
    best = None
    for answer in answers:
        key = clean_label(answer).casefold()
        if key and re.match(re.escape(key) + r"(?!\w)", folded):
            if best is None or len(key) > len(clean_label(best)):
                best = answer
    return best


def normalize_answer(text: str | None, contract: Any = None) -> str:
    """The answer `text` expresses under the output contract (see module docstring)."""
    fmt, answers = _contract_fields(contract)
    text = "" if text is None else str(text)
    if fmt == "label":
        cleaned = clean_label(text)
        return _match_label(cleaned, answers) or cleaned
    if fmt == "json":
        stripped = text.strip()
        start = min((i for i in (stripped.find("{"), stripped.find("[")) if i >= 0), default=-1)
        if start >= 0:
            try:
                value, _ = json.JSONDecoder().raw_decode(stripped[start:])
                return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
            except ValueError:
                pass
        return stripped
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(line.rstrip() for line in lines).strip()


def answer_key(text: str | None, contract: Any = None) -> str:
    """normalize_answer, case-folded: two answers agree when their keys are equal."""
    return normalize_answer(text, contract).casefold()


def answers_agree(a: str | None, b: str | None, contract: Any = None) -> bool:
    """Whether two raw outputs give the same answer under the contract."""
    return answer_key(a, contract) == answer_key(b, contract)
