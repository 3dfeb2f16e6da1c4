"""The models file: which deployments answer to each model name, their limits, and the fallbacks.

One format for `foster distill --models-file`, `foster serve --models-file` and a run's config:

```yaml
models:
  old-ft:                                # the name runs and bundles use
    - model: openai/old-fine-tune        # a litellm model string
      api_base: http://gpu-a:8000/v1
      api_key_env: OLD_FT_KEY            # the variable's *name*; the key itself is never stored
      rpm: 600                           # requests per minute this replica accepts
      weight: 2                          # share of traffic when several replicas are healthy
    - model: openai/old-fine-tune
      api_base: http://gpu-b:8000/v1
      api_key_env: OLD_FT_KEY
  judge: openai/gpt-4o-mini              # one deployment may be written as a bare string
fallbacks:
  old-ft: [old-ft-backup]                # tried when every deployment of old-ft fails
```

The older flat form (`name: {model, api_base, api_key_env}` at the top level, no `models:` key) is
read the same way. The file is loaded into memory per run (or per server) and never copied into
the run's directory, a checkpoint or a bundle.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

LOCAL_PREFIX = "local/"


class Deployment(BaseModel):
    """One replica that answers to a model name."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="the litellm model string, e.g. openai/my-ft or local/smollm2-135m-instruct")
    api_base: str | None = Field(None, description="endpoint, e.g. an OpenAI-compatible server's /v1 URL")
    api_key_env: str | None = Field(None, description="name of the environment variable that holds the key")
    rpm: int | None = Field(None, ge=1, description="requests per minute this deployment accepts")
    tpm: int | None = Field(None, ge=1, description="tokens per minute this deployment accepts")
    weight: float = Field(1.0, gt=0, description="share of the traffic among healthy deployments")
    timeout: float | None = Field(None, gt=0, description="seconds before one request to this deployment gives up")

    @property
    def local(self) -> bool:
        return self.model.startswith(LOCAL_PREFIX)

    def key(self) -> str | None:
        """The key, read from the environment at call time (so it is never held in a saved document)."""
        return os.environ.get(self.api_key_env) if self.api_key_env else None


class ModelsFile(BaseModel):
    """Model names → deployments, plus fallbacks between names and the Router's retry policy."""

    model_config = ConfigDict(extra="forbid")

    models: dict[str, list[Deployment]] = Field(default_factory=dict)
    fallbacks: dict[str, list[str]] = Field(default_factory=dict, description="name -> names tried, in order, when it fails")
    num_retries: int = Field(2, ge=0, description="retries of a failed call (on another deployment when there is one)")
    cooldown_s: float = Field(5.0, ge=0, description="how long a deployment that keeps failing is left out")
    allowed_fails: int = Field(1, ge=0, description="failures in a minute before a deployment cools down")

    @field_validator("models", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        """`name: openai/x` and `name: {model: ...}` are one-deployment lists."""
        if not isinstance(value, dict):
            return value
        out = {}
        for name, entry in value.items():
            if entry is None:
                entry = [{"model": str(name)}]
            elif isinstance(entry, (str, dict)):
                entry = [entry]
            out[str(name)] = [{"model": e} if isinstance(e, str) else {"model": str(name), **e} for e in entry]
        return out

    @model_validator(mode="after")
    def _check(self) -> ModelsFile:
        for name, deployments in self.models.items():
            if not deployments:
                raise ValueError(f"models.{name}: at least one deployment")
        for name, others in self.fallbacks.items():
            for other in [name, *others]:
                if other not in self.models:
                    raise ValueError(f"fallbacks.{name}: {other!r} is not a model in this file")
        return self

    @classmethod
    def parse(cls, data: Any, source: str = "models file") -> ModelsFile:
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a mapping with `models:` (name -> deployments)")
        if "models" not in data:  # the older flat form: every top-level key is a model name
            data = {"models": data}
        try:
            return cls.model_validate(data)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None

    @classmethod
    def load(cls, path: str | Path) -> ModelsFile:
        import yaml

        return cls.parse(yaml.safe_load(Path(path).read_text()), source=str(path))

    def with_endpoints(self, endpoints: dict[str, dict[str, str]]) -> ModelsFile:
        """This file plus one-deployment entries from `--api-base MODEL=URL` / `--api-key-env MODEL=VAR` flags."""
        if not endpoints:
            return self
        models = dict(self.models)
        for name, endpoint in endpoints.items():
            models[name] = [Deployment(model=name, **endpoint)]
        return self.model_copy(update={"models": models})

    def router_model_list(self) -> list[dict]:
        """litellm.Router's `model_list`, keys read from the environment now (held in memory only)."""
        out = []
        for name, deployments in self.models.items():
            for d in deployments:
                params: dict[str, Any] = {"model": d.model, "weight": d.weight}
                for field in ("api_base", "rpm", "tpm", "timeout"):
                    if getattr(d, field) is not None:
                        params[field] = getattr(d, field)
                key = d.key()
                if key:
                    params["api_key"] = key
                elif d.api_base and not d.api_key_env and not d.local:
                    # a self-hosted endpoint named without a key variable takes none (vLLM's convention);
                    # the OpenAI client refuses to send a request with no key at all
                    params["api_key"] = "EMPTY"
                out.append({"model_name": name, "litellm_params": params})
        return out
