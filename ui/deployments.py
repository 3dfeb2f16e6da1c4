"""Deployments: a bundle served under a name (the retired fine-tune's id), optionally shadowed by the teacher.

Persisted in foster_home()/deployments.json. A shadowed deployment also sends a sample of its
traffic to the live teacher; where the two answers differ under the bundle's output contract, the
divergence (input, both answers) goes to Chroma's `divergences` collection under the run id
`deployment:<name>`, so it clusters with the run's own divergences by input.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from foster.store.paths import foster_home

log = logging.getLogger("foster.deployments")

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@+/-]{0,199}$"


class Shadow(BaseModel):
    """Ask the live teacher too, for a sample of requests, and keep where it disagrees."""

    model_config = ConfigDict(extra="forbid")

    teacher: str = Field(description="litellm string of the live teacher (e.g. the retired fine-tune)")
    sample_rate: float = Field(0.1, ge=0.0, le=1.0, description="fraction of requests also sent to the teacher")


class Deployment(BaseModel):
    """A bundle served under `name`; `target` overrides the bundle's first target."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="the model name clients send, e.g. the retired fine-tune id")
    bundle_id: str = Field(min_length=1, max_length=200, description="id of a bundle in a run or in foster_home()/bundles")
    target: str | None = Field(None, min_length=1, description="serve on this model instead of the bundle's first target")
    shadow: Shadow | None = None
    created_at: float | None = None


def deployments_path() -> Path:
    from foster.ui.catalog import current_home

    return current_home() / "deployments.json"


def divergence_namespace(name: str) -> str:
    """The run id a deployment's divergences are stored under."""
    return f"deployment:{name}"


class DeploymentStore:
    """deployments.json, re-read when it changes on disk (another process may edit it)."""

    def __init__(self, path: Path | None = None):
        self._path = path
        self._lock = threading.Lock()
        self._cache: tuple[tuple[int, int], dict[str, Deployment]] | None = None
        self._checked = -1.0

    @property
    def path(self) -> Path:
        return self._path or deployments_path()

    def _read(self) -> dict[str, Deployment]:
        from foster.ui.catalog import FRESH_S

        # writes through this store are seen at once; edits by another process within FRESH_S
        if self._cache and time.monotonic() - self._checked < FRESH_S:
            return self._cache[1]
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._cache, self._checked = ((0, 0), {}), time.monotonic()
            return {}
        key = (stat.st_mtime_ns, stat.st_size)
        self._checked = time.monotonic()
        if self._cache and self._cache[0] == key:
            return self._cache[1]
        raw = json.loads(self.path.read_text(encoding="utf-8") or "{}")
        items = raw.get("deployments", raw) if isinstance(raw, dict) else {}
        found = {name: Deployment.model_validate({**entry, "name": name}) for name, entry in items.items()}
        self._cache = (key, found)
        return found

    def all(self) -> list[Deployment]:
        with self._lock:
            return sorted(self._read().values(), key=lambda d: d.name)

    def get(self, name: str) -> Deployment | None:
        with self._lock:
            return self._read().get(name)

    def _write(self, found: dict[str, Deployment]) -> None:
        from foster.store.runs import write_json_atomic

        data = {"deployments": {name: d.model_dump(exclude={"name"}) for name, d in sorted(found.items())}}
        write_json_atomic(self.path, data)
        self._cache = None

    def put(self, deployment: Deployment) -> Deployment:
        with self._lock:
            found = dict(self._read())
            if deployment.created_at is None:
                deployment = deployment.model_copy(update={"created_at": time.time()})
            found[deployment.name] = deployment
            self._write(found)
            return deployment

    def delete(self, name: str) -> bool:
        with self._lock:
            found = dict(self._read())
            if found.pop(name, None) is None:
                return False
            self._write(found)
            return True


_STORES: dict[Path, DeploymentStore] = {}
_STORES_LOCK = threading.Lock()


def deployment_store() -> DeploymentStore:
    """The process's store for the current foster_home()."""
    path = deployments_path()
    with _STORES_LOCK:
        if path not in _STORES:
            _STORES[path] = DeploymentStore(path)
        return _STORES[path]


def warm_up(bundle) -> None:
    """Embed a retrieving bundle's example pool in the background, so its first request does not
    wait for the embedding model to load (seconds on a small machine)."""
    if bundle.selection.kind != "knn" or not bundle.examples:
        return

    def work() -> None:
        try:
            bundle.select_examples("warm-up")
        except Exception:  # the request will raise the same error where a client sees it
            log.exception("warming up bundle %s failed", bundle.id)

    threading.Thread(target=work, name=f"foster-warm-{bundle.id}", daemon=True).start()


# ---------------------------------------------------------------------------------------------
# Shadow traffic

_VECTORS: dict[Path, Any] = {}
_VECTORS_LOCK = threading.Lock()


def vector_store():
    """One VectorStore per data directory (opening Chroma costs more than a request)."""
    from foster.store.vectors import VectorStore

    home = foster_home()
    with _VECTORS_LOCK:
        if home not in _VECTORS:
            _VECTORS[home] = VectorStore()
        return _VECTORS[home]


def should_shadow(deployment: Deployment | None, rng: random.Random | None = None) -> bool:
    if deployment is None or deployment.shadow is None or deployment.shadow.sample_rate <= 0:
        return False
    return (rng or random).random() < deployment.shadow.sample_rate


def shadow_compare(deployment: Deployment, bundle, target: str, user_input: str, target_output: str, max_tokens: int = 64) -> dict:
    """Ask the teacher as the pipeline probed it (the input as one user message, greedy) and store a
    divergence when its answer and the target's differ under the bundle's output contract."""
    from foster.agent.gateway import complete
    from foster.prompts.answers import answer_key
    from foster.store.vectors import probe_id

    teacher = deployment.shadow.teacher
    namespace = divergence_namespace(deployment.name)
    started = time.time()
    teacher_output = complete(teacher, messages=[{"role": "user", "content": user_input}], temperature=0.0, max_tokens=max_tokens).text
    contract = bundle.output_contract
    agree = answer_key(teacher_output, contract) == answer_key(target_output, contract)
    result = {
        "deployment": deployment.name,
        "agree": agree,
        "teacher_output": teacher_output,
        "target_output": target_output,
    }
    if not agree:
        result["id"] = vector_store().add_divergence(
            probe_id=probe_id(namespace, user_input),
            target=target,
            input=user_input,
            teacher_output=teacher_output,
            target_output=target_output,
            run_id=namespace,
            deployment=deployment.name,
            bundle_id=bundle.id,
            teacher=teacher,
            teacher_answer=answer_key(teacher_output, contract),
            target_answer=answer_key(target_output, contract),
            ts=started,
        )
    return result


def shadow_in_background(deployment: Deployment, bundle, target: str, user_input: str, target_output: str, max_tokens: int = 64) -> None:
    """shadow_compare, with failures logged: shadow traffic never fails the request it shadows."""
    try:
        shadow_compare(deployment, bundle, target, user_input, target_output, max_tokens=max_tokens)
    except Exception:  # the teacher may be gone or rate-limited; the client already has its answer
        log.exception("shadow request to %s for deployment %s failed", deployment.shadow.teacher, deployment.name)


def divergences(name: str, limit: int = 100) -> list[dict]:
    """A deployment's stored divergences, newest first."""
    rows = vector_store().get_divergences(run_id=divergence_namespace(name))
    rows.sort(key=lambda r: r.get("ts") or 0, reverse=True)
    return rows[:limit]
