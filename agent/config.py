"""RunConfig: what a caller gives a distillation run (the CLI's options, the API's body)."""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from foster.prompts.embedding import EMBEDDING_MODEL, check_embedding_model


def _env(name: str, default):
    return os.environ.get(name, default)


class InputError(ValueError):
    """Bad input from the user: reported as one line, exit code 2, nothing written."""


def secret_in(text: str) -> str | None:
    """What looks like a key in `text` (the scanner bundles use), or None."""
    from foster.prompts.bundle import find_secrets

    problems = find_secrets({"text": text}, url_fields=())
    return problems[0].removeprefix("text: ") if problems else None


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
    primary_metric: Literal["auto", "exact", "structure", "similarity"] = Field(
        "auto", description="free-text teachers: the figure the threshold and verdict read (with --fidelity auto); "
        "auto: the strictest of exact, structure, similarity whose ceiling (the teacher against itself) is >= 0.5. "
        "Closed-label teachers are scored by exact match whatever this says")
    optimizer: str = Field(_env("FOSTER_OPTIMIZER", "auto"), description="auto: foster's tuner, plus GEPA when a "
                           "--miner reflects; foster: the tuner only; gepa|miprov2|simba|bootstrap: the tuner and that one")
    budget_calls: int = Field(60, description="target calls the optimizer may spend per target per round")
    recall_calls: int = Field(120, description="target calls per target per round that test the recall rule's threshold "
                              "on more train inputs than the validation split holds (leave-one-out); 0: the split alone")
    knn_k: int = Field(6, description="examples retrieved per input for pool bundles")
    embedding_model: str = Field(EMBEDDING_MODEL, description="what retrieves a pool bundle's examples: "
                                 f"{EMBEDDING_MODEL} (packaged, offline) or a litellm provider/model embedding, its key "
                                 "from the provider's environment variable; the pool's vectors are stored in the bundle")
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
        if not (math.isfinite(v) and 0 < v <= 1):
            raise InputError(f"--threshold must be in (0, 1], got {v}")
        return v

    @field_validator("temperatures")
    @classmethod
    def _temps(cls, v: list[float]) -> list[float]:
        if not v or any(not math.isfinite(t) or t < 0 or t > 2 for t in v):
            raise InputError(f"--temperatures must be 1+ values in [0, 2], got {v}")
        return v

    @field_validator("samples", "budget_calls", "knn_k", "max_rounds", "max_probes", "sampled_probes")
    @classmethod
    def _positive(cls, v: int, info) -> int:
        if v < 1:
            raise InputError(f"--{info.field_name.replace('_', '-')} must be >= 1, got {v}")
        return v

    @field_validator("min_gain", "holdout_fraction", "max_cost")
    @classmethod
    def _finite(cls, v: float | None, info) -> float | None:
        # NaN passes every comparison a node makes, so it would run to the end: refused here instead
        low, high = {"min_gain": (0.0, 1.0), "holdout_fraction": (0.0, 0.9), "max_cost": (0.0, math.inf)}[info.field_name]
        if v is not None and not (math.isfinite(v) and low <= v <= high):
            raise InputError(f"--{info.field_name.replace('_', '-')} must be a number in [{low}, {high}], got {v}")
        return v

    @field_validator("max_calls", "max_tokens", "max_new_tokens")
    @classmethod
    def _positive_cap(cls, v: int | None, info) -> int | None:
        if v is not None and v < 1:
            raise InputError(f"--{info.field_name.replace('_', '-')} must be >= 1, got {v}")
        return v

    @field_validator("synth_per_kind", "recall_calls")
    @classmethod
    def _not_negative(cls, v: int, info) -> int:
        if v < 0:
            raise InputError(f"--{info.field_name.replace('_', '-')} must be >= 0, got {v}")
        return v

    @field_validator("primary_metric", mode="before")
    @classmethod
    def _primary_metric(cls, v):
        choices = ("auto", "exact", "structure", "similarity")
        if v not in choices:
            raise InputError(f"--primary-metric must be one of {', '.join(choices)}, got {v!r}")
        return v

    @field_validator("embedding_model")
    @classmethod
    def _embedding_model(cls, v: str) -> str:
        try:
            return check_embedding_model(v)
        except ValueError as e:
            raise InputError(f"--embedding-model: {e}") from None

    @field_validator("run_id")
    @classmethod
    def _run_id(cls, v: str | None) -> str | None:
        from foster.store.paths import check_id

        if v is not None:
            try:
                check_id(v)
            except ValueError as e:
                raise InputError(f"--run-id: {e}") from None
        return v

    @field_validator("task")
    @classmethod
    def _no_secret_in_task(cls, v: str) -> str:
        problem = secret_in(v)
        if problem:
            raise InputError(f"--task: {problem}; keys go in environment variables, never in the task text")
        return v

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, v: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        for model, ep in v.items():
            var = ep.get("api_key_env")
            if var is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", var):
                raise InputError(f"--api-key-env {model}={var}: not an environment variable name")
            base = ep.get("api_base")
            if base is not None and not re.match(r"^https?://[^\s]+$", base):
                raise InputError(f"--api-base {model}={base}: expected an http:// or https:// URL")
        return v

    @model_validator(mode="after")
    def _paths(self):
        if not self.targets:
            raise InputError("--target: at least one target model is required")
        if not (self.teacher or self.teacher_records or self.train_data):
            raise InputError("one of --teacher, --teacher-records or --train-data is required")
        if self.primary_metric != "auto" and self.fidelity != "auto":
            raise InputError(f"--primary-metric {self.primary_metric} chooses the free-text figure that scores under "
                             f"--fidelity auto; with --fidelity {self.fidelity} that scorer decides, so give one or the other")
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


# -- what an API caller may give: RunConfig without endpoints or a models file, files as uploads or data-dir paths

FILE_FIELDS = ("inputs", "teacher_records", "train_data", "hand_written")
MODEL_FIELDS = ("teacher", "generator", "miner", "judge")
_SERVER_ONLY = ("models_file", "endpoints")  # which URL a key goes to is the server's choice, never a caller's


def _run_request_model() -> type[BaseModel]:
    from pydantic import create_model

    fields = {name: (f.annotation, f) for name, f in RunConfig.model_fields.items() if name not in _SERVER_ONLY}
    uploads = (dict[Literal[FILE_FIELDS], str],  # type: ignore[valid-type]
               Field(default_factory=dict, description="file contents by field (JSONL, or JSON for hand_written), "
                     "instead of a path inside the server's data directory"))
    model = create_model("RunRequest", __config__=ConfigDict(extra="forbid"), uploads=uploads, **fields)
    model.__doc__ = ("A run started through the API: RunConfig's options, models named by alias (the server's "
                     "models file) or provider string, files uploaded or named inside the server's data directory.")
    return model


RunRequest = _run_request_model()


def _inside(path: str, root: Path, field: str) -> str:
    refusal = InputError(f"{field}: only a path inside the server's data directory (FOSTER_DATA_DIR) or "
                         f"uploaded content (uploads.{field}) is accepted")
    try:
        p = Path(path)
        resolved = (p if p.is_absolute() else root / p).resolve()
    except (ValueError, OSError):  # a NUL byte, a loop: the same refusal, so the answer says nothing about the server
        raise refusal from None
    if root != resolved and root not in resolved.parents:
        raise refusal
    return str(resolved)


def check_api_model(name: str, field: str, aliases: set[str] = frozenset()) -> None:
    """Refuse a model name that points at the server: a URL, or a `local/` path to weights or an adapter."""
    if name in aliases:
        return
    rest = name.removeprefix("local/")
    if "://" in name or (name.startswith("local/") and ("/" in rest or "@" in rest or rest.endswith(".gguf"))):
        raise InputError(f"{field}: {name!r}: name a model by its alias in the server's models file or a "
                         "provider/model string; endpoints and model files on the server are not a caller's to choose")


def run_config_from_request(request: BaseModel) -> RunConfig:
    """The RunConfig an API request becomes: uploads written under FOSTER_HOME/uploads (named by their hash),
    paths confined to the data directory, the server's models file ($FOSTER_MODELS_FILE) for every endpoint."""
    import hashlib

    from foster.store.paths import data_dir, inside_home, uploads_dir
    from foster.store.runs import write_text_atomic

    values = request.model_dump(exclude_unset=True)
    uploads = values.pop("uploads", None) or {}
    models_file = os.environ.get("FOSTER_MODELS_FILE") or None
    aliases: set[str] = set()
    if models_file:
        from foster.agent.models_file import ModelsFile

        aliases = set(ModelsFile.load(models_file).models)
    for field in MODEL_FIELDS:
        if values.get(field):
            check_api_model(values[field], field, aliases)
    for i, target in enumerate(values.get("targets") or []):
        check_api_model(target, f"targets.{i}", aliases)
    root = data_dir()
    for field in FILE_FIELDS:
        if field in uploads:
            if values.get(field):
                raise InputError(f"{field}: give a path or uploads.{field}, not both")
            data = uploads[field].encode("utf-8")
            suffix = "json" if field == "hand_written" else "jsonl"
            path = inside_home(uploads_dir() / f"{hashlib.sha256(data).hexdigest()[:24]}.{suffix}")
            if not path.exists():
                write_text_atomic(path, uploads[field])
            values[field] = str(path)
        elif values.get(field):
            values[field] = _inside(values[field], root, field)
    return RunConfig.model_validate({**values, "models_file": models_file})
