"""A LoRA job's options and its status (job.json), read the same way by the CLI, the API and the UI."""
from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

JobState = Literal["queued", "running", "done", "failed", "stopped"]


def _env(name: str, default: Any, cast=str):
    value = os.environ.get(name)
    return default if value in (None, "") else cast(value)


class LoraOptions(BaseModel):
    """How the fallback trains; every field falls back to a FOSTER_LORA_* environment variable."""

    model_config = ConfigDict(extra="forbid")

    target: str | None = Field(default_factory=lambda: _env("FOSTER_LORA_TARGET", None),
                               description="target to train (default: the best bundle's target)")
    steps: int = Field(default_factory=lambda: _env("FOSTER_LORA_STEPS", 240, int), description="step budget")
    seconds: float = Field(default_factory=lambda: _env("FOSTER_LORA_SECONDS", 420.0, float),
                           description="training time budget in seconds (summed over resumes)")
    batch_size: int = Field(default_factory=lambda: _env("FOSTER_LORA_BATCH", 8, int))
    lr: float = Field(default_factory=lambda: _env("FOSTER_LORA_LR", 1e-3, float))
    rank: int = Field(default_factory=lambda: _env("FOSTER_LORA_RANK", 8, int))
    alpha: int = Field(default_factory=lambda: _env("FOSTER_LORA_ALPHA", 16, int))
    threads: int = Field(default_factory=lambda: _env("FOSTER_LORA_THREADS", 0, int),
                         description="torch threads for training (0: torch's default; 1 helps on a busy, shared CPU)")
    checkpoint_every: int = Field(default_factory=lambda: _env("FOSTER_LORA_CHECKPOINT_EVERY", 20, int))
    mix: float = Field(default_factory=lambda: _env("FOSTER_LORA_MIX", 0.4, float),
                       description="share of general instruction rows in the training mix (0.3-0.5 advised)")
    # 240, not 120: the discriminator keeps ~10 % of them, and on the demo 120 candidates (12 kept) gave
    # the adapter 10 of 12 held-out probes where 240 (20 kept) gave 12 of 12, for ~2 more minutes of data
    synthetic: int = Field(default_factory=lambda: _env("FOSTER_LORA_SYNTHETIC", 240, int),
                           description="synthetic inputs the target writes before the discriminator filters them")
    keep_threshold: float = Field(default_factory=lambda: _env("FOSTER_LORA_KEEP", 0.5, float),
                                  description="a synthetic input is kept when P(real) >= this")
    general_max_tokens: int = Field(default_factory=lambda: _env("FOSTER_LORA_GENERAL_TOKENS", 48, int))
    generator: str | None = Field(default_factory=lambda: _env("FOSTER_LORA_GENERATOR", None),
                                  description="model writing synthetic and general inputs (default: the target)")
    base_weights: str | None = Field(default_factory=lambda: _env("FOSTER_LORA_BASE_WEIGHTS", None),
                                     description="weights to train (a GGUF file or a Hugging Face model dir); "
                                                 "default the target's own GGUF")
    target_weights: dict[str, str] = Field(default_factory=dict,
                                           description="weights to train per target (several targets), like base_weights")
    lora_targets: Literal["pilot", "all"] = Field(default_factory=lambda: _env("FOSTER_LORA_TARGETS", "pilot"),
                                                  description="several local targets: pilot each and train the best "
                                                              "(pilot), or train every one (all)")
    pilot_steps: int = Field(default_factory=lambda: _env("FOSTER_LORA_PILOT_STEPS", 12, int),
                             description="training steps of each target's pilot")
    labels: Literal["gold", "target", "agree"] = Field(
        default_factory=lambda: _env("FOSTER_LORA_LABELS", "agree"),
        description="re-label path: train on gold labels, on the target's own re-labels, or on the target's "
                    "re-label where it agrees with gold and gold where not (agree)")
    submit: bool = Field(False, description="remote targets: submit the JSONL through litellm's fine-tuning API")
    base_model: str | None = Field(default_factory=lambda: _env("FOSTER_LORA_BASE_MODEL", None),
                                   description="remote targets: the provider model to fine-tune (default: the target)")

    @field_validator("mix")
    @classmethod
    def _mix(cls, v: float) -> float:
        if not 0 <= v < 1:
            raise ValueError(f"--mix must be in [0, 1), got {v}")
        return v

    @field_validator("steps", "batch_size", "rank", "checkpoint_every", "pilot_steps")
    @classmethod
    def _positive(cls, v: int, info) -> int:
        if v < 1:
            raise ValueError(f"--{info.field_name.replace('_', '-')} must be >= 1, got {v}")
        return v


class LoraJob(BaseModel):
    """The status of one LoRA job, like a run's RunStatus: what it is doing and how far it got."""

    run_id: str
    target: str
    kind: Literal["local", "provider"] = "local"
    status: JobState = "queued"
    phase: str = ""  # data | train | convert | evaluate | submit
    step: int = 0
    total: int = 0
    seconds: float = 0.0
    loss: float | None = None
    started_at: float | None = None
    updated_at: float | None = None
    finished_at: float | None = None
    pid: int | None = None
    error: str | None = None
    message: str = ""
    adapter_dir: str | None = None
    jsonl: str | None = None
    provider_job_id: str | None = None
    provider_status: str | None = None
    fine_tuned_model: str | None = None


def slug(model: str) -> str:
    """A directory name for a target model string."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model.split("@")[0]).strip("_")[-80:] or "target"


def job_dir(run_dir: Path, target: str) -> Path:
    return Path(run_dir) / "lora" / slug(target)


def read_job(path: Path) -> LoraJob | None:
    p = Path(path) / "job.json"
    return LoraJob.model_validate_json(p.read_text()) if p.exists() else None


def write_job(path: Path, job: LoraJob, **changes: Any) -> LoraJob:
    from foster.store.runs import write_json_atomic

    job = job.model_copy(update={**changes, "updated_at": time.time()})
    write_json_atomic(Path(path) / "job.json", job.model_dump())
    return job


def job_status(run_id: str, target: str | None = None) -> LoraJob | None:
    """The run's LoRA job (the most recently updated one when no target is named)."""
    from foster.store.runs import RunRegistry

    root = RunRegistry().run_dir(run_id) / "lora"
    if target:
        return read_job(job_dir(root.parent, target))
    jobs = [j for d in sorted(root.glob("*")) if d.is_dir() and (j := read_job(d))]
    return max(jobs, key=lambda j: j.updated_at or 0) if jobs else None
