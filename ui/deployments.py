"""Deployments: a bundle served under a name (the retired fine-tune's id), in versions, optionally shadowed.

Persisted in foster_home()/deployments.json. A deployment keeps every bundle version it has served;
`promote` switches the served version and `rollback` returns to the one served before, each
recorded in its history. A request resolves its deployment once, from one immutable snapshot, so
no request sees half of a promote.

A shadowed deployment also sends a sample of its traffic to the live teacher. Every shadowed
request is counted (agent.shadow: requests, agreements, per input cluster, Wilson interval); the
teacher's answer is kept as an observation in Chroma (never asked twice for the same input), and
where the two answers differ under the bundle's output contract the divergence goes to Chroma's
`divergences` collection under the run id `deployment:<name>`, so it clusters with the run's own.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import threading
import time
from pathlib import Path
from typing import Any, Literal

from foster.store.paths import foster_home
from pydantic import BaseModel, ConfigDict, Field, model_validator

log = logging.getLogger("foster.deployments")

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@+/-]{0,199}$"


class DeploymentError(Exception):
    """A deployment operation that cannot be done as asked; `status` is the HTTP status it maps to."""

    def __init__(self, status: int, message: str, code: str):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class Shadow(BaseModel):
    """Ask the live teacher too, for a sample of requests, and count where it agrees."""

    model_config = ConfigDict(extra="forbid")

    teacher: str = Field(description="litellm string of the live teacher (e.g. the retired fine-tune)")
    sample_rate: float = Field(0.1, ge=0.0, le=1.0, description="fraction of requests also sent to the teacher")
    max_tokens: int | None = Field(None, ge=1, le=4096, description="teacher answer length (default: the run's "
                                   "max_new_tokens, i.e. as the teacher was probed)")


class DeploymentRequest(BaseModel):
    """What a caller gives to deploy: a bundle under a name; `target` overrides the bundle's first target."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="the model name clients send, e.g. the retired fine-tune id")
    bundle_id: str = Field(min_length=1, max_length=200, description="id of a bundle in a run or in foster_home()/bundles")
    target: str | None = Field(None, min_length=1, max_length=300, description="serve on this model instead of the bundle's first target")
    shadow: Shadow | None = None


class Version(BaseModel):
    """One bundle a deployment can serve."""

    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1)
    bundle_id: str
    target: str = Field(description="the model that answers when this version is served")
    created_at: float
    source: Literal["deploy", "refine", "add"] = "deploy"
    run_id: str | None = Field(None, description="the run that wrote the bundle")
    note: str = ""


class HistoryEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ts: float
    action: Literal["deploy", "replace", "add_version", "promote", "rollback", "shadow"]
    version: int | None = None
    previous: int | None = Field(None, description="the version served before this entry")
    note: str = ""


class Deployment(BaseModel):
    """A deployment as stored and answered: `bundle_id` and `target` are the served version's."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="the model name clients send, e.g. the retired fine-tune id")
    bundle_id: str = Field(min_length=1, max_length=200, description="the served version's bundle")
    target: str | None = Field(None, description="the model that answers (the served version's target)")
    shadow: Shadow | None = None
    created_at: float | None = None
    active: int | None = Field(None, description="the served version")
    versions: list[Version] = Field(default_factory=list)
    history: list[HistoryEntry] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_version_at_least(self) -> Deployment:
        # deployments.json written before versions existed: its bundle is version 1
        if not self.versions and self.target:
            self.versions = [Version(version=1, bundle_id=self.bundle_id, target=self.target,
                                     created_at=self.created_at or time.time())]
        if self.versions and self.active is None:
            self.active = self.versions[-1].version
        return self

    def version_of(self, number: int | None) -> Version | None:
        return next((v for v in self.versions if v.version == number), None)

    @property
    def served(self) -> Version | None:
        return self.version_of(self.active)

    @property
    def origin_run_id(self) -> str | None:
        """The run whose clusters shadow statistics use: the first version's (stable across versions)."""
        return next((v.run_id for v in self.versions if v.run_id), None)


def deployments_path() -> Path:
    from foster.ui.catalog import current_home

    return current_home() / "deployments.json"


def divergence_namespace(name: str) -> str:
    """The run id a deployment's divergences and teacher observations are stored under."""
    return f"deployment:{name}"


def bundle_run_id(bundle, entry=None) -> str | None:
    """The run that wrote a bundle: its catalog entry's run, else its provenance or report."""
    if entry is not None and entry.run_id:
        return entry.run_id
    return (bundle.provenance.run_id if bundle is not None else None) or ((bundle.report or {}).get("run_id") if bundle is not None else None)


@contextlib.contextmanager
def _file_lock(path: Path):
    """Serialise read-modify-write of deployments.json across processes (`foster promote` while serving)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class DeploymentStore:
    """deployments.json, re-read when it changes on disk (another process may edit it)."""

    def __init__(self, path: Path | None = None):
        self._path = path
        self._lock = threading.RLock()
        self._cache: tuple[tuple[int, int], dict[str, Deployment]] | None = None
        self._checked = -1.0

    @property
    def path(self) -> Path:
        return self._path or deployments_path()

    def _read(self, fresh: bool = False) -> dict[str, Deployment]:
        from foster.ui.catalog import FRESH_S

        # writes through this store are seen at once; edits by another process within FRESH_S
        if not fresh and self._cache and time.monotonic() - self._checked < FRESH_S:
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
            # a name not in the cached view is checked on disk at once: `foster deploy` in another process
            # followed within FRESH_S by a request must not get a 404 (the README's serving block did)
            return self._read().get(name) or self._read(fresh=True).get(name)

    def _write(self, found: dict[str, Deployment]) -> None:
        from foster.store.runs import write_json_atomic

        data = {"deployments": {name: d.model_dump(exclude={"name"}) for name, d in sorted(found.items())}}
        write_json_atomic(self.path, data)  # a rename: readers see the old file or the new one, never half
        self._cache = None

    @contextlib.contextmanager
    def _editing(self):
        with self._lock, _file_lock(self.path):
            found = dict(self._read(fresh=True))
            yield found
            self._write(found)

    def put(self, deployment: Deployment) -> Deployment:
        """Store a deployment as given (replacing one of the same name)."""
        with self._editing() as found:
            if deployment.created_at is None:
                deployment = deployment.model_copy(update={"created_at": time.time()})
            if deployment.target is None or not deployment.versions:
                target, run_id = _bundle_facts(deployment.bundle_id)
                deployment = Deployment.model_validate({**deployment.model_dump(), "target": deployment.target or target})
                deployment.versions[0].run_id = deployment.versions[0].run_id or run_id
            found[deployment.name] = deployment
            return deployment

    def create(self, request: DeploymentRequest, *, replace: bool = False) -> Deployment:
        """Deploy `request.bundle_id` under `request.name` as version 1. An existing name is a
        DeploymentError(409) unless `replace`: then the bundle becomes its next version, served now."""
        default_target, run_id = _bundle_facts(request.bundle_id)
        target = request.target or default_target
        now = time.time()
        with self._editing() as found:
            old = found.get(request.name)
            if old is not None and not replace:
                raise DeploymentError(409, f"deployment {request.name!r} exists (serving bundle {old.bundle_id}, "
                                           f"version {old.active}); pass replace=true to serve this bundle as its next "
                                           "version, or promote a version", "deployment_exists")
            if old is None:
                version = Version(version=1, bundle_id=request.bundle_id, target=target, created_at=now, run_id=run_id)
                deployment = Deployment(name=request.name, bundle_id=request.bundle_id, target=target, shadow=request.shadow,
                                        created_at=now, active=1, versions=[version],
                                        history=[HistoryEntry(ts=now, action="deploy", version=1)])
            else:
                number = max(v.version for v in old.versions) + 1 if old.versions else 1
                version = Version(version=number, bundle_id=request.bundle_id, target=target, created_at=now, run_id=run_id)
                deployment = old.model_copy(update={
                    "bundle_id": request.bundle_id, "target": target, "shadow": request.shadow, "active": number,
                    "versions": [*old.versions, version],
                    "history": [*old.history, HistoryEntry(ts=now, action="replace", version=number, previous=old.active)],
                })
            found[request.name] = deployment
            return deployment

    def add_version(self, name: str, bundle_id: str, *, target: str | None = None, source: str = "add",
                    run_id: str | None = None, note: str = "") -> Version:
        """A new version of a deployment, not served until promoted."""
        with self._editing() as found:
            old = _must(found, name)
            number = max((v.version for v in old.versions), default=0) + 1
            default_target, bundle_run = _bundle_facts(bundle_id)
            version = Version(version=number, bundle_id=bundle_id, target=target or default_target,
                              created_at=time.time(), source=source, run_id=run_id or bundle_run, note=note)
            found[name] = old.model_copy(update={
                "versions": [*old.versions, version],
                "history": [*old.history, HistoryEntry(ts=time.time(), action="add_version", version=number,
                                                       previous=old.active, note=note)],
            })
            return version

    def promote(self, name: str, version: int | None = None, *, action: str = "promote", note: str = "") -> Deployment:
        """Serve `version` (default: the newest) from now on; one atomic write."""
        with self._editing() as found:
            old = _must(found, name)
            number = version if version is not None else max(v.version for v in old.versions)
            chosen = old.version_of(number)
            if chosen is None:
                raise DeploymentError(404, f"deployment {name!r} has no version {number} (versions: "
                                           f"{', '.join(str(v.version) for v in old.versions)})", "version_not_found")
            if number == old.active and action == "promote":
                raise DeploymentError(409, f"deployment {name!r} already serves version {number}", "already_served")
            found[name] = old.model_copy(update={
                "bundle_id": chosen.bundle_id, "target": chosen.target, "active": number,
                "history": [*old.history, HistoryEntry(ts=time.time(), action=action, version=number,
                                                       previous=old.active, note=note)],
            })
            return found[name]

    def rollback(self, name: str) -> Deployment:
        """Serve again the version served before the current one (as the history records it)."""
        current = self.get(name)
        if current is None:
            raise DeploymentError(404, f"no deployment {name!r}", "deployment_not_found")
        previous = next((h.previous for h in reversed(current.history)
                         if h.version == current.active and h.action in ("promote", "rollback", "replace")
                         and h.previous is not None), None)
        if previous is None:
            raise DeploymentError(409, f"deployment {name!r} has nothing to roll back to (version {current.active} "
                                       "was never promoted over another)", "nothing_to_roll_back")
        return self.promote(name, previous, action="rollback")

    def set_shadow(self, name: str, shadow: Shadow | None) -> Deployment:
        with self._editing() as found:
            old = _must(found, name)
            found[name] = old.model_copy(update={
                "shadow": shadow,
                "history": [*old.history, HistoryEntry(ts=time.time(), action="shadow", version=old.active,
                                                       note=f"teacher {shadow.teacher} at {shadow.sample_rate}" if shadow else "off")],
            })
            return found[name]

    def delete(self, name: str) -> bool:
        with self._editing() as found:
            return found.pop(name, None) is not None


def _must(found: dict[str, Deployment], name: str) -> Deployment:
    if name not in found:
        raise DeploymentError(404, f"no deployment {name!r} (see GET /v1/deployments)", "deployment_not_found")
    return found[name]


def _bundle_facts(bundle_id: str) -> tuple[str, str | None]:
    """(the model a bundle answers on when the deployment names none: its first target, the run that wrote it)."""
    from foster.ui.catalog import catalog

    entry = catalog().find(bundle_id)
    if entry is None or not entry.targets:
        raise DeploymentError(422, f"invalid request: bundle_id: no bundle {bundle_id!r} (see GET /v1/bundles)", "invalid_body")
    run_id = entry.run_id
    if run_id is None:
        try:
            run_id = bundle_run_id(catalog().load(bundle_id))
        except Exception:  # an unreadable bundle: served requests will say so
            run_id = None
    return entry.targets[0], run_id


def _bundle_target(bundle_id: str) -> str:
    return _bundle_facts(bundle_id)[0]


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


def teacher_max_tokens(deployment: Deployment, requested: int) -> int:
    """How long the teacher may answer: as set on the shadow, else as the origin run probed it."""
    if deployment.shadow and deployment.shadow.max_tokens:
        return deployment.shadow.max_tokens
    run_id = deployment.origin_run_id
    if run_id:
        from foster.store.runs import RunRegistry

        try:
            return int(RunRegistry().config(run_id).get("max_new_tokens") or requested)
        except Exception:  # no config.json: the client's length
            pass
    return requested


def _cluster(deployment: Deployment, user_input: str) -> int | None:
    from foster.agent.shadow import assign_cluster, centroids

    run_id = deployment.origin_run_id
    if not run_id:
        return None
    try:
        return assign_cluster(user_input, centroids(run_id))
    except Exception:  # a run whose files are gone: counted without a cluster
        log.exception("no clusters for run %s", run_id)
        return None


def shadow_compare(deployment: Deployment, bundle, target: str, user_input: str, target_output: str, max_tokens: int = 64) -> dict:
    """Ask the teacher as the pipeline probed it (the input as one user message, greedy), count the
    request, and store a divergence when the two answers differ under the bundle's output contract.

    The teacher's answer is an observation like any other: an input it already answered for this
    deployment is not asked again."""
    from foster.agent.gateway import complete
    from foster.agent.shadow import append_record
    from foster.prompts.answers import answer_key
    from foster.store.vectors import observation_id, probe_id

    teacher = deployment.shadow.teacher
    namespace = divergence_namespace(deployment.name)
    started = time.time()
    store = vector_store()
    pid = probe_id(namespace, user_input)
    known = store.observations.get(ids=[observation_id(pid, teacher, 0.0, 0)], include=["documents"])
    reused = bool(known["ids"])
    if reused:
        teacher_output = known["documents"][0]
    else:
        teacher_output = complete(teacher, messages=[{"role": "user", "content": user_input}], temperature=0.0,
                                  max_tokens=teacher_max_tokens(deployment, max_tokens)).text
        # kept the moment it returns: refine reuses it as the probe's observation
        store.add_observation(pid, teacher, 0.0, 0, user_input, teacher_output, namespace, deployment=deployment.name)
    contract = bundle.output_contract
    teacher_answer, target_answer = answer_key(teacher_output, contract), answer_key(target_output, contract)
    agree = teacher_answer == target_answer
    record = append_record(deployment.name, {
        "version": deployment.active, "bundle_id": bundle.id, "target": target, "teacher": teacher,
        "input": user_input, "teacher_output": teacher_output, "target_output": target_output,
        "teacher_answer": teacher_answer, "target_answer": target_answer, "agree": agree,
        "cluster": _cluster(deployment, user_input), "teacher_reused": reused,
    })
    result = dict(record)
    if not agree:
        result["id"] = store.add_divergence(
            probe_id=pid,
            target=target,
            input=user_input,
            teacher_output=teacher_output,
            target_output=target_output,
            run_id=namespace,
            round=deployment.active or 0,  # one divergence per input per version
            deployment=deployment.name,
            version=deployment.active,
            bundle_id=bundle.id,
            teacher=teacher,
            teacher_answer=teacher_answer,
            target_answer=target_answer,
            cluster=record["cluster"],
            ts=started,
        )
    return result


def shadow_in_background(deployment: Deployment, bundle, target: str, user_input: str, target_output: str, max_tokens: int = 64) -> None:
    """shadow_compare, with failures logged: shadow traffic never fails the request it shadows."""
    try:
        shadow_compare(deployment, bundle, target, user_input, target_output, max_tokens=max_tokens)
    except Exception:  # the teacher may be gone or rate-limited; the client already has its answer
        log.exception("shadow request to %s for deployment %s failed", deployment.shadow.teacher, deployment.name)


def divergences(name: str, limit: int = 100, version: int | None = None) -> list[dict]:
    """A deployment's stored divergences (both answers), newest first."""
    rows = vector_store().get_divergences(run_id=divergence_namespace(name))
    if version is not None:
        rows = [r for r in rows if r.get("version") == version]
    rows.sort(key=lambda r: r.get("ts") or 0, reverse=True)
    return rows[:limit]


def shadow_stats(deployment: Deployment, version: int | None | Literal["all"] = None):
    """agent.shadow.stats for the served version (or `version`, or "all")."""
    from foster.agent.shadow import stats

    chosen = None if version == "all" else (version if version is not None else deployment.active)
    return stats(deployment.name, chosen, deployment.origin_run_id)


def readiness(deployment: Deployment, *, min_requests: int | None = None, min_cluster_requests: int | None = None,
              threshold: float | None = None):
    """The readiness gate for the served version, against its run's threshold."""
    from foster.agent import shadow

    served = deployment.served
    return shadow.readiness(
        deployment.name, deployment.active,
        threshold if threshold is not None else shadow.run_threshold(served.run_id if served else None),
        deployment.origin_run_id,
        min_requests=shadow.DEFAULT_MIN_REQUESTS if min_requests is None else min_requests,
        min_cluster_requests=shadow.DEFAULT_MIN_CLUSTER_REQUESTS if min_cluster_requests is None else min_cluster_requests,
    )


# ---------------------------------------------------------------------------------------------
# Refine from shadow (agent.refine does the work; this ties it to the deployment's versions)


def start_refine(name: str, *, version: int | None = None, agreeing_ratio: float = 1.0, overrides: dict | None = None,
                 run_id: str | None = None, background: bool = False):
    """Create the refine run for a deployment's version (default: the served one) from its shadow
    records. With `background`, a child process executes it and adds the new version when done."""
    import subprocess
    import sys

    from foster.agent import refine, shadow
    from foster.store.runs import RunRegistry

    deployment = deployment_store().get(name)
    if deployment is None:
        raise DeploymentError(404, f"no deployment {name!r} (see GET /v1/deployments)", "deployment_not_found")
    served = deployment.version_of(version or deployment.active)
    if served is None:
        raise DeploymentError(404, f"deployment {name!r} has no version {version}", "version_not_found")
    if not served.run_id:
        raise DeploymentError(409, f"version {served.version} of {name!r} serves bundle {served.bundle_id}, which no run "
                                   "in this FOSTER_HOME wrote: there is no graph to refine", "no_parent_run")
    plan = refine.prepare(name, shadow.records(name, served.version), served.run_id, version=served.version,
                          bundle_id=served.bundle_id, agreeing_ratio=agreeing_ratio, overrides=overrides, run_id=run_id)
    if background:
        # a child process, as for any run: a crash or a kill of the refine never takes the API down
        log_path = RunRegistry().run_dir(plan.run_id) / "run.log"
        with open(log_path, "ab") as log_file:
            subprocess.Popen([sys.executable, "-m", "foster.ui.cli", "refine", name, "--resume", plan.run_id, "--quiet"],
                             stdout=log_file, stderr=log_file, stdin=subprocess.DEVNULL, start_new_session=True,
                             env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"})
    return plan


def complete_refine(name: str, run_id: str, on_event=None) -> Version:
    """Execute (or resume) the refine run, mark its bundle's provenance, add it as the next version."""
    from foster.agent import refine
    from foster.agent.runs import execute
    from foster.prompts.bundle import Bundle
    from foster.ui.catalog import catalog

    execute(run_id, on_event)
    path = refine.finish(run_id)
    bundle = Bundle.load(path)
    catalog().invalidate()
    deployment = deployment_store().get(name)
    existing = next((v for v in deployment.versions if v.bundle_id == bundle.id), None) if deployment else None
    if existing is not None:  # the refine converged on a bundle the deployment already has
        return existing
    return deployment_store().add_version(name, bundle.id, target=bundle.targets[0], source="refine", run_id=run_id,
                                          note=bundle.provenance.notes)
