"""RunConfig: what a caller gives a distillation run (the CLI's options, the API's body)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


def _env(name: str, default):
    return os.environ.get(name, default)


class InputError(ValueError):
    """Bad input from the user: reported as one line, exit code 2, nothing written."""


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    teacher: str | None = Field(None, description="litellm string of the live teacher (the retired fine-tune)")
    teacher_records: str | None = Field(None, description="JSONL of recorded teacher input/output pairs")
    train_data: str | None = Field(None, description="JSONL training corpus with gold outputs (re-label path)")
    targets: list[str] = Field(default_factory=list, description="litellm strings of the new base models")
    inputs: str | None = Field(None, description="JSONL of historical inputs ({'input': ...} per line)")
    task: str = Field("", description="one-line task description used by the zero-shot baseline and the generator")
    hand_written: str | None = Field(None, description="JSON file with a hand-written prompt baseline")
    threshold: float = Field(0.9, description="fidelity the best bundle must reach")
    temperatures: list[float] = Field(default_factory=lambda: [0.0, 0.7, 1.0])
    samples: int = Field(2, description="teacher samples per non-zero temperature (one at temperature 0)")
    generator: str | None = Field(None, description="model that synthesizes probes; default the first target")
    synth_per_kind: int = Field(3, description="synthetic probes per probe kind per round")
    miner: str | None = Field(None, description="optional model that writes prose rules")
    judge: str | None = Field(None, description="optional model that scores free-text agreement")
    fidelity: Literal["auto", "exact", "embedding", "judge"] = "auto"
    optimizer: str = Field(_env("FOSTER_OPTIMIZER", "gepa"))
    budget_calls: int = Field(60, description="target calls the optimizer may spend per target per round")
    knn_k: int = Field(6, description="examples retrieved per input for pool bundles")
    lora_fallback: bool = Field(True, description="train a LoRA on the target when prompting plateaus below threshold")
    max_rounds: int = Field(2, description="re-probe rounds before the run stops improving")
    min_gain: float = Field(0.02, description="δ: a round that gains less than this is a plateau")
    holdout_fraction: float = Field(0.3)
    max_probes: int = Field(2000, description="most probes a run keeps: historical inputs first, synthetic ones on "
                            "top while there is room; inputs left out are counted and reported")
    sampled_probes: int = Field(100, description="probes sampled at every temperature (a subset stratified by "
                                "cluster and greedy answer); every other probe gets the greedy answer only")
    min_heldout: int = Field(100, description="held-out probes at least, when as many real inputs stay for training")
    concurrency: int | None = Field(None, description="calls in flight per remote model (default 8); in-process "
                                    "local models take one at a time")
    max_calls: int | None = Field(None, description="cap on all model calls")
    max_tokens: int | None = Field(None, description="cap on all tokens")
    max_cost: float | None = Field(None, description="cap on cost in USD")
    max_new_tokens: int = Field(24, description="generation length for answers")
    seed: int = 0
    models_file: str | None = None
    endpoints: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="per-model endpoint: {model: {api_base, api_key_env}}; key values are never stored")
    run_id: str | None = None

    @field_validator("threshold")
    @classmethod
    def _threshold(cls, v: float) -> float:
        if not (0 < v <= 1):
            raise InputError(f"--threshold must be in (0, 1], got {v}")
        return v

    @field_validator("temperatures")
    @classmethod
    def _temps(cls, v: list[float]) -> list[float]:
        if not v or any(t < 0 or t > 2 for t in v):
            raise InputError(f"--temperatures must be 1+ values in [0, 2], got {v}")
        return v

    @field_validator("samples", "budget_calls", "knn_k", "max_rounds", "max_probes", "sampled_probes")
    @classmethod
    def _positive(cls, v: int, info) -> int:
        if v < 1:
            raise InputError(f"--{info.field_name.replace('_', '-')} must be >= 1, got {v}")
        return v

    @model_validator(mode="after")
    def _paths(self):
        if not self.targets:
            raise InputError("--target: at least one target model is required")
        if not (self.teacher or self.teacher_records or self.train_data):
            raise InputError("one of --teacher, --teacher-records or --train-data is required")
        for model, ep in self.endpoints.items():
            if set(ep) - {"api_base", "api_key_env"}:
                raise InputError(f"--api-base/--api-key-env {model}: only api_base and api_key_env may be given")
        for flag in ("inputs", "teacher_records", "train_data", "hand_written", "models_file"):
            p = getattr(self, flag)
            if p is not None and not Path(p).is_file():
                raise InputError(f"--{flag.replace('_', '-')}: {p}: no such file")
        return self

    @property
    def path(self) -> Literal["live", "records", "relabel"]:
        if self.teacher:
            return "live"
        return "records" if self.teacher_records else "relabel"

    @property
    def teacher_id(self) -> str:
        if self.teacher:
            return self.teacher
        if self.teacher_records:
            return f"records:{Path(self.teacher_records).name}"
        return f"gold:{Path(self.train_data).name}"

    def sample_plan(self) -> list[tuple[float, int]]:
        """(temperature, sample_index) pairs every probe is sent with."""
        return [(t, i) for t in self.temperatures for i in range(1 if t == 0 else self.samples)]
