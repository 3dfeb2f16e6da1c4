"""Shadow statistics: how often the served bundle agrees with the live teacher, overall and per input cluster.

Every shadowed request is one record in foster_home()/shadow/<deployment>.jsonl (append-only):
the input, both answers, whether they agree under the bundle's output contract, which deployment
version answered, and the input's cluster. Clusters are the deployment's origin run's own
(characterize's KMeans over the run's probes): an input joins the cluster whose centroid is
nearest by embedding cosine, so live traffic is reported in the same units as the run's report.

Agreement carries n and a 95 % Wilson interval (DESIGN.md: intervals). The readiness gate is
defined here once and shown by the API, the CLI and the UI.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any
from urllib.parse import quote

from foster.agent.metrics import wilson  # the one Wilson interval every fidelity uses
from foster.store.paths import foster_home
from pydantic import BaseModel, Field

DEFAULT_MIN_REQUESTS = 30
DEFAULT_MIN_CLUSTER_REQUESTS = 10
DEFAULT_THRESHOLD = 0.9

_FILE_LOCK = threading.Lock()



class Agreement(BaseModel):
    """requests / agreements / disagreements and the agreement rate with its 95 % interval."""

    requests: int = 0
    agreements: int = 0
    disagreements: int = 0
    rate: float | None = Field(None, description="agreements / requests")
    low: float = Field(0.0, description="95 % Wilson lower bound")
    high: float = Field(1.0, description="95 % Wilson upper bound")

    @classmethod
    def of(cls, agreements: int, requests: int) -> Agreement:
        low, high = wilson(agreements, requests)
        return cls(requests=requests, agreements=agreements, disagreements=requests - agreements,
                   rate=round(agreements / requests, 4) if requests else None, low=round(low, 4), high=round(high, 4))


class ClusterAgreement(Agreement):
    cluster: int | None = Field(None, description="the origin run's cluster (None: no run clusters known)")
    examples: list[str] = Field(default_factory=list, description="a few of the run's probes in this cluster")


class ShadowStats(BaseModel):
    deployment: str
    version: int | None = Field(None, description="the version counted (None: every version)")
    overall: Agreement
    clusters: list[ClusterAgreement]
    by_version: dict[str, Agreement] = Field(default_factory=dict)
    cluster_run_id: str | None = Field(None, description="the run whose clusters inputs are assigned to")


class Readiness(BaseModel):
    deployment: str
    ready: bool
    reason: str
    version: int | None = None
    threshold: float
    min_requests: int
    min_cluster_requests: int
    overall: Agreement
    failing_clusters: list[ClusterAgreement] = Field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Records


def shadow_path(deployment: str) -> Path:
    """The append-only record file of one deployment (its name quoted: names hold '/' and ':')."""
    return foster_home() / "shadow" / f"{quote(deployment, safe='')}.jsonl"


def append_record(deployment: str, record: dict) -> dict:
    """Add one shadowed request; a line is written whole under a lock, so readers never see half."""
    path = shadow_path(deployment)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"ts": time.time(), "deployment": deployment, **record}
    line = json.dumps(record, ensure_ascii=False) + "\n"
    with _FILE_LOCK, open(path, "a", encoding="utf-8") as handle:
        handle.write(line)
    return record


def records(deployment: str, version: int | None = None) -> list[dict]:
    """A deployment's shadow records, oldest first (optionally one version's)."""
    path = shadow_path(deployment)
    if not path.is_file():
        return []
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                row = json.loads(line)
            except ValueError:  # a line cut by a crash mid-write
                continue
            if version is None or row.get("version") == version:
                rows.append(row)
    return rows


def forget(deployment: str) -> None:
    """Drop a deployment's records (when the deployment is deleted)."""
    with _FILE_LOCK:
        shadow_path(deployment).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# The run's clusters


def _checkpoint_values(run_id: str) -> dict:
    """The run's last graph state (probes with clusters and splits), or {}.

    Read from the checkpointer directly rather than through agent.runs.run_state: that builds the
    graph, importing every node (DSPy among them), and this runs inside the serving process on the
    first shadowed request."""
    try:
        from foster.store.checkpoints import checkpointer

        found = checkpointer().get_tuple({"configurable": {"thread_id": run_id, "checkpoint_ns": ""}})
        return dict((found.checkpoint or {}).get("channel_values") or {}) if found else {}
    except Exception:  # no checkpoint (a run copied from elsewhere): callers fall back to files
        return {}


def run_probes(run_id: str) -> list[dict]:
    """The run's probes as its graph last held them ({id, text, split, cluster, ...}), from the
    checkpoint, else from grid.json's held-out rows (which carry their cluster)."""
    probes = _checkpoint_values(run_id).get("probes") or []
    if probes:
        return [dict(p) for p in probes]
    from foster.store.runs import RunRegistry

    grid = RunRegistry().read_json(run_id, "grid.json") or {}
    return [{"id": r.get("probe_id"), "text": r["input"], "split": "heldout", "cluster": r.get("cluster")}
            for r in grid.get("rows") or [] if r.get("input")]


def centroids(run_id: str) -> dict:
    """{"clusters": [cluster ids], "vectors": [[...]], "examples": {id: [texts]}} for a run, computed
    once from its probes and kept in the run directory (clusters.json)."""
    from foster.store.runs import RunRegistry, write_json_atomic

    registry = RunRegistry()
    path = registry.run_dir(run_id) / "clusters.json"
    if path.is_file():
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            pass
    probes = [p for p in run_probes(run_id) if p.get("cluster") is not None and p.get("text")]
    if not probes:
        return {"clusters": [], "vectors": [], "examples": {}}
    import numpy as np
    from foster.prompts.embedding import embed

    vectors = embed([p["text"] for p in probes])
    by_cluster: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(probes):
        by_cluster[int(p["cluster"])].append(i)
    ids = sorted(by_cluster)
    rows = []
    for c in ids:
        mean = np.asarray(vectors[by_cluster[c]]).mean(axis=0)
        rows.append((mean / (np.linalg.norm(mean) or 1.0)).tolist())
    data = {"clusters": ids, "vectors": rows,
            "examples": {str(c): [probes[i]["text"] for i in by_cluster[c][:3]] for c in ids}}
    write_json_atomic(path, data)
    return data


def assign_cluster(text: str, run_centroids: dict) -> int | None:
    """The run cluster whose centroid is nearest to `text` (cosine), or None without clusters."""
    if not run_centroids.get("clusters"):
        return None
    import numpy as np
    from foster.prompts.embedding import embed

    sims = np.asarray(run_centroids["vectors"]) @ embed([text])[0]
    return int(run_centroids["clusters"][int(np.argmax(sims))])


def run_threshold(run_id: str | None) -> float:
    """The fidelity threshold the run was asked to reach (its config), else the default."""
    if not run_id:
        return DEFAULT_THRESHOLD
    from foster.store.runs import RunRegistry

    try:
        return float(RunRegistry().config(run_id).get("threshold", DEFAULT_THRESHOLD))
    except Exception:  # a run without config.json (copied bundle): the default gate
        return DEFAULT_THRESHOLD


# ---------------------------------------------------------------------------------------------
# Statistics and the gate


def stats(deployment: str, version: int | None = None, cluster_run_id: str | None = None) -> ShadowStats:
    """Agreement overall and per cluster for `version` (None: every version), plus per version."""
    every = records(deployment)
    chosen = [r for r in every if version is None or r.get("version") == version]
    overall = Agreement.of(sum(bool(r.get("agree")) for r in chosen), len(chosen))
    examples = {}
    if cluster_run_id:
        try:
            examples = centroids(cluster_run_id).get("examples") or {}
        except Exception:  # the run's files are gone: clusters without examples
            examples = {}
    grouped: dict[Any, list[dict]] = defaultdict(list)
    for r in chosen:
        grouped[r.get("cluster")].append(r)
    clusters = []
    for cluster, rows in grouped.items():
        base = Agreement.of(sum(bool(r.get("agree")) for r in rows), len(rows))
        clusters.append(ClusterAgreement(**base.model_dump(), cluster=cluster,
                                         examples=list(examples.get(str(cluster), []))))
    clusters.sort(key=lambda c: (c.rate if c.rate is not None else 1.0, -c.requests))
    by_version: dict[str, list[dict]] = defaultdict(list)
    for r in every:
        by_version[str(r.get("version"))].append(r)
    return ShadowStats(
        deployment=deployment, version=version, overall=overall, clusters=clusters, cluster_run_id=cluster_run_id,
        by_version={v: Agreement.of(sum(bool(r.get("agree")) for r in rows), len(rows)) for v, rows in sorted(by_version.items())},
    )


def readiness(deployment: str, version: int | None, threshold: float, cluster_run_id: str | None = None,
              min_requests: int = DEFAULT_MIN_REQUESTS, min_cluster_requests: int = DEFAULT_MIN_CLUSTER_REQUESTS) -> Readiness:
    """Ready when at least `min_requests` shadowed requests have an agreement lower bound ≥ threshold
    and no cluster with at least `min_cluster_requests` requests has its lower bound below it."""
    min_requests = max(1, min_requests)
    s = stats(deployment, version, cluster_run_id)
    failing = [c for c in s.clusters if c.requests >= min_cluster_requests and c.low < threshold]
    common = dict(deployment=deployment, version=version, threshold=threshold, min_requests=min_requests,
                  min_cluster_requests=min_cluster_requests, overall=s.overall, failing_clusters=failing)
    o = s.overall
    if o.requests < min_requests:
        return Readiness(ready=False, reason=f"not enough shadowed requests: {o.requests} < {min_requests}", **common)
    if o.low < threshold:
        return Readiness(ready=False, reason=f"agreement {o.rate:.3f} (95 % CI {o.low:.3f}–{o.high:.3f}, n={o.requests}) "
                                             f"has its lower bound below the threshold {threshold:.3f}", **common)
    if failing:
        worst = failing[0]
        return Readiness(ready=False, reason=f"{len(failing)} cluster(s) below the threshold, worst: cluster {worst.cluster} "
                                             f"agreement {worst.rate:.3f} (95 % CI {worst.low:.3f}–{worst.high:.3f}, "
                                             f"n={worst.requests})", **common)
    return Readiness(ready=True, reason=f"agreement {o.rate:.3f} (95 % CI {o.low:.3f}–{o.high:.3f}, n={o.requests}) "
                                        f"≥ threshold {threshold:.3f} overall and in every cluster with "
                                        f"≥ {min_cluster_requests} requests", **common)
