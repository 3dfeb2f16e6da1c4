"""Remote targets: OpenAI chat fine-tuning JSONL, validated line by line, submitted through litellm when asked.

    {"messages": [{"role": "system", "content": ...}, {"role": "user", "content": ...},
                  {"role": "assistant", "content": ...}]}

one example per line. The provider's job status maps onto the LoRA job's queued/running/done/failed.
"""
from __future__ import annotations

import json
from pathlib import Path

ROLES = {"system", "user", "assistant"}
TOP_LEVEL = {"messages", "tools", "parallel_tool_calls"}
MIN_EXAMPLES = 10  # OpenAI refuses smaller training files
PROVIDER_STATES = {"validating_files": "queued", "queued": "queued", "running": "running",
                   "succeeded": "done", "failed": "failed", "cancelled": "failed"}


class JSONLError(ValueError):
    """A fine-tuning file that a provider would refuse; `.errors` name their lines."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        super().__init__("; ".join(errors[:5]) + more)


def example(row: dict) -> dict:
    """One training row as a chat fine-tuning example: the request's messages plus the answer."""
    req = row["request"]
    messages = list(req["messages"]) if "messages" in req else [{"role": "user", "content": req["prompt"]}]
    return {"messages": [{"role": m["role"], "content": m["content"]} for m in messages]
            + [{"role": "assistant", "content": row["output"]}]}


def check_line(line: str) -> list[str]:
    """What is wrong with one line (empty list: nothing)."""
    if not line.strip():
        return ["empty line"]
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        return [f"not JSON ({e.msg} at column {e.colno})"]
    if not isinstance(obj, dict):
        return [f"expected a JSON object, got {type(obj).__name__}"]
    errors = [f"unknown key {k!r}" for k in obj if k not in TOP_LEVEL]
    msgs = obj.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return errors + ["'messages' must be a non-empty list"]
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            errors.append(f"messages[{i}] is not an object")
            continue
        if m.get("role") not in ROLES:
            errors.append(f"messages[{i}].role {m.get('role')!r} is not one of {sorted(ROLES)}")
        if not isinstance(m.get("content"), str) or not m["content"].strip():
            errors.append(f"messages[{i}].content must be a non-empty string")
        extra = set(m) - {"role", "content", "name", "weight"}
        if extra:
            errors.append(f"messages[{i}] has unknown keys {sorted(extra)}")
    roles = [m.get("role") for m in msgs if isinstance(m, dict)]
    if "user" not in roles:
        errors.append("no user message")
    if not roles or roles[-1] != "assistant":
        errors.append("the last message must be the assistant's answer")
    return errors


def validate_jsonl(path: str | Path, min_examples: int = MIN_EXAMPLES) -> list[str]:
    """Every problem in the file, each naming its line ("line 3: ..."); empty when the file is valid."""
    errors: list[str] = []
    lines = Path(path).read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last line; it is not an empty line
    for n, line in enumerate(lines, 1):
        errors += [f"line {n}: {e}" for e in check_line(line)]
    if len(lines) < min_examples:
        errors.append(f"the file has {len(lines)} examples; fine-tuning needs at least {min_examples}")
    return errors


def write_jsonl(rows: list[dict], path: str | Path) -> Path:
    """Write the rows as chat fine-tuning JSONL and validate what was written; raises JSONLError."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(example(r), ensure_ascii=False) + "\n")
    errors = validate_jsonl(path)
    if errors:
        raise JSONLError(errors)
    return path


def _provider(model: str) -> tuple[str, str, dict]:
    """(provider model name, litellm provider, credentials) for a model string or a registered spec."""
    import litellm

    from foster.agent.gateway import model_spec

    spec = model_spec(model)
    name, provider, _, _ = litellm.get_llm_provider(model=spec.model, api_base=spec.api_base)
    creds = {k: v for k, v in (("api_base", spec.api_base), ("api_key", spec.key())) if v}
    return name, provider, creds


def submit(path: str | Path, model: str, suffix: str | None = None) -> dict:
    """Upload the file and start a fine-tuning job; returns {file_id, id, status}."""
    import litellm

    errors = validate_jsonl(path)
    if errors:
        raise JSONLError(errors)
    name, provider, creds = _provider(model)
    with open(path, "rb") as f:
        uploaded = litellm.create_file(file=f, purpose="fine-tune", custom_llm_provider=provider, **creds)
    job = litellm.create_fine_tuning_job(model=name, training_file=uploaded.id, custom_llm_provider=provider,
                                         suffix=suffix, **creds)
    return {"file_id": uploaded.id, "id": job.id, "status": job.status}


def retrieve(job_id: str, model: str) -> dict:
    """The provider's view of a job: {status (ours), provider_status, fine_tuned_model}."""
    import litellm

    _, provider, creds = _provider(model)
    job = litellm.retrieve_fine_tuning_job(fine_tuning_job_id=job_id, custom_llm_provider=provider, **creds)
    raw = str(getattr(job, "status", "") or "")
    return {"status": PROVIDER_STATES.get(raw, "running"), "provider_status": raw,
            "fine_tuned_model": getattr(job, "fine_tuned_model", None)}
