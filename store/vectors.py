"""The Chroma collections foster keeps: probes, observations (teacher/target samples), divergences.

Every id is derived from what the record *is*, so writing the same probe or the same
(probe, model, temperature, sample) twice stores it once, and a crashed run can ask which teacher
calls it already has before spending any.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import foster.store  # noqa: F401  (sets the offline environment before chromadb is imported)
from foster.store.embedding import MiniLMEmbeddingFunction
from foster.store.paths import foster_home

PROBES = "probes"
OBSERVATIONS = "observations"
DIVERGENCES = "divergences"

# Keys foster writes itself; extra metadata may not shadow them.
_JSON_KEYS = "_json_keys"
_SEQ = "_seq"


def _sha1(*parts: Any) -> str:
    return hashlib.sha1(json.dumps(parts, ensure_ascii=False).encode("utf-8")).hexdigest()


def probe_id(run_id: str | None, text: str) -> str:
    """The id of a probe: the same text in the same run is the same probe."""
    return "p-" + _sha1("probe", run_id or "", text)[:20]


def observation_id(probe_id: str, model: str, temperature: float, sample_index: int) -> str:
    """The id of one sample: sha1 of (probe, model, temperature, sample index)."""
    return "o-" + _sha1("observation", probe_id, model, float(temperature), int(sample_index))


def divergence_id(run_id: str | None, probe_id: str, target: str, round: int = 0) -> str:
    """The id of a divergence: one per (run, probe, target, round)."""
    return "d-" + _sha1("divergence", run_id or "", probe_id, target, int(round))[:24]


def _flatten(metadata: Mapping[str, Any]) -> dict[str, str | int | float | bool]:
    """Chroma metadata takes str/int/float/bool only: None is dropped, other values go as JSON."""
    flat: dict[str, str | int | float | bool] = {}
    json_keys: list[str] = []
    for key, value in metadata.items():
        if value is None:
            continue
        if isinstance(value, (str, bool, int, float)):
            flat[key] = value
        else:
            flat[key] = json.dumps(value, ensure_ascii=False, default=str)
            json_keys.append(key)
    if json_keys:
        flat[_JSON_KEYS] = ",".join(json_keys)
    return flat


def _unflatten(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    out = dict(metadata or {})
    for key in filter(None, str(out.pop(_JSON_KEYS, "")).split(",")):
        try:
            out[key] = json.loads(out[key])
        except (KeyError, ValueError):
            pass
    out.pop(_SEQ, None)
    return out


def _where(**conditions: Any) -> dict[str, Any] | None:
    clauses = [{key: value} for key, value in conditions.items() if value is not None]
    if not clauses:
        return None
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


def make_client(path: str | Path | None = None) -> Any:
    """A Chroma client: HttpClient when FOSTER_CHROMA_URL is set, else a PersistentClient."""
    import chromadb
    from chromadb.config import Settings

    settings = Settings(anonymized_telemetry=False)
    url = os.environ.get("FOSTER_CHROMA_URL")
    if url and path is None:
        parsed = urlparse(url if "://" in url else f"http://{url}")
        ssl = parsed.scheme == "https"
        port = parsed.port or (443 if ssl else 8000)
        return chromadb.HttpClient(
            host=parsed.hostname or "localhost", port=port, ssl=ssl, settings=settings
        )
    target = Path(path) if path is not None else foster_home() / "chroma"
    target.mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=str(target), settings=settings)


class VectorStore:
    """Probes, observations and divergences in Chroma, embedded with all-MiniLM-L6-v2 (cosine).

    `run_id` is the default run for writes and reads that do not name one.
    """

    def __init__(self, run_id: str | None = None, path: str | Path | None = None, client: Any = None):
        self.run_id = run_id
        self.client = client if client is not None else make_client(path)
        self.embedding_function = MiniLMEmbeddingFunction()
        self._lock = threading.RLock()
        self.probes = self._collection(PROBES)
        self.observations = self._collection(OBSERVATIONS)
        self.divergences = self._collection(DIVERGENCES)
        try:
            self._batch = max(1, int(self.client.get_max_batch_size()))
        except Exception:
            self._batch = 1000

    def _collection(self, name: str) -> Any:
        return self.client.get_or_create_collection(
            name,
            embedding_function=self.embedding_function,
            configuration={"hnsw": {"space": "cosine"}},
        )

    def _run(self, run_id: str | None) -> str | None:
        return run_id if run_id is not None else self.run_id

    def _upsert(self, collection: Any, ids: list[str], documents: list[str], metadatas: list[dict]) -> None:
        with self._lock:
            for start in range(0, len(ids), self._batch):
                end = start + self._batch
                collection.upsert(
                    ids=ids[start:end], documents=documents[start:end], metadatas=metadatas[start:end]
                )

    def _existing(self, collection: Any, ids: Iterable[str]) -> dict[str, dict]:
        ids = list(dict.fromkeys(ids))
        found: dict[str, dict] = {}
        for start in range(0, len(ids), self._batch):
            got = collection.get(ids=ids[start : start + self._batch], include=["metadatas"])
            for id_, meta in zip(got["ids"], got["metadatas"] or [None] * len(got["ids"])):
                found[id_] = dict(meta or {})
        return found

    @staticmethod
    def _records(got: Mapping[str, Any], text_key: str) -> list[dict]:
        ids = got.get("ids") or []
        documents = got.get("documents") or [None] * len(ids)
        metadatas = got.get("metadatas") or [None] * len(ids)
        rows = []
        for id_, document, meta in zip(ids, documents, metadatas):
            seq = (meta or {}).get(_SEQ, 0)
            row = {"id": id_, text_key: document, **_unflatten(meta)}
            rows.append((seq, id_, row))
        rows.sort(key=lambda r: (r[0], r[1]))
        return [row for _, _, row in rows]

    # probes -------------------------------------------------------------------------------------

    def probe_id(self, run_id: str | None, text: str) -> str:
        return probe_id(self._run(run_id), text)

    def add_probes(self, run_id: str | None, probes: list[dict]) -> list[str]:
        """Store probes ({text, kind, split, ...metadata}; id optional); returns their ids.

        A probe already stored keeps its place in the run's order; its metadata is updated.
        """
        run_id = self._run(run_id)
        ids, documents, metadatas = [], [], []
        base = time.time_ns()
        for index, probe in enumerate(probes):
            probe = dict(probe)
            text = str(probe.pop("text"))
            id_ = str(probe.pop("id", None) or probe_id(run_id, text))
            if id_ in ids:
                continue
            meta = {"run_id": run_id, **probe}
            meta.pop(_SEQ, None)
            ids.append(id_)
            documents.append(text)
            metadatas.append({**_flatten(meta), _SEQ: base + index})
        with self._lock:
            existing = self._existing(self.probes, ids)
            for meta, id_ in zip(metadatas, ids):
                if id_ in existing and _SEQ in existing[id_]:
                    meta[_SEQ] = existing[id_][_SEQ]
            self._upsert(self.probes, ids, documents, metadatas)
        return ids

    def get_probes(self, run_id: str | None = None, **filters: Any) -> list[dict]:
        """A run's probes in the order they were first added: [{id, text, kind, split, ...}]."""
        got = self.probes.get(
            where=_where(run_id=self._run(run_id), **filters), include=["documents", "metadatas"]
        )
        return self._records(got, "text")

    def get_probe(self, probe_id: str) -> dict | None:
        got = self.probes.get(ids=[probe_id], include=["documents", "metadatas"])
        rows = self._records(got, "text")
        return rows[0] if rows else None

    def similar_probes(self, text: str, k: int = 5, run_id: str | None = None) -> list[dict]:
        """The k stored probes nearest to `text` (any run unless run_id is given), nearest first.

        Each row carries `distance` (cosine distance) and `similarity` (1 - distance).
        """
        if k <= 0 or self.probes.count() == 0:
            return []
        got = self.probes.query(
            query_texts=[text],
            n_results=min(int(k), self.probes.count()),
            where=_where(run_id=run_id),
            include=["documents", "metadatas", "distances"],
        )
        rows = []
        for id_, document, meta, distance in zip(
            got["ids"][0], got["documents"][0], got["metadatas"][0], got["distances"][0]
        ):
            rows.append(
                {
                    "id": id_,
                    "text": document,
                    **_unflatten(meta),
                    "distance": float(distance),
                    "similarity": 1.0 - float(distance),
                }
            )
        return rows

    # observations -------------------------------------------------------------------------------

    observation_id = staticmethod(observation_id)

    def has_observation(self, observation_id: str) -> bool:
        return bool(self.observations.get(ids=[observation_id], include=[])["ids"])

    def existing_observation_ids(self, ids: Iterable[str]) -> set[str]:
        """The subset of `ids` already stored (ask before spending teacher calls)."""
        ids = list(dict.fromkeys(ids))
        found: set[str] = set()
        for start in range(0, len(ids), self._batch):
            found.update(self.observations.get(ids=ids[start : start + self._batch], include=[])["ids"])
        return found

    def add_observation(
        self,
        probe_id: str,
        model: str,
        temperature: float,
        sample_index: int,
        input: str,
        output: str,
        run_id: str | None = None,
        **metadata: Any,
    ) -> str:
        """Store one sample (upsert: one record per probe, model, temperature, sample); its id."""
        return self.add_observations(
            [
                {
                    "probe_id": probe_id,
                    "model": model,
                    "temperature": temperature,
                    "sample_index": sample_index,
                    "input": input,
                    "output": output,
                    "run_id": run_id,
                    **metadata,
                }
            ]
        )[0]

    def add_observations(self, observations: list[dict]) -> list[str]:
        """Store many samples in one embedding pass; each dict has add_observation's fields."""
        ids, documents, metadatas = [], [], []
        base = time.time_ns()
        for index, obs in enumerate(observations):
            obs = dict(obs)
            output = str(obs.pop("output"))
            obs["temperature"] = float(obs["temperature"])
            obs["sample_index"] = int(obs["sample_index"])
            obs["input"] = str(obs.get("input", ""))
            obs["run_id"] = self._run(obs.get("run_id"))
            obs.pop("id", None)
            obs.pop(_SEQ, None)
            id_ = observation_id(obs["probe_id"], obs["model"], obs["temperature"], obs["sample_index"])
            ids.append(id_)
            documents.append(output)
            metadatas.append({**_flatten(obs), _SEQ: base + index})
        # The same key twice in one batch: the last one wins, as upsert would do across batches.
        last = {id_: i for i, id_ in enumerate(ids)}
        keep = sorted(last.values())
        self._upsert(
            self.observations,
            [ids[i] for i in keep],
            [documents[i] for i in keep],
            [metadatas[i] for i in keep],
        )
        return ids

    def get_observations(
        self,
        run_id: str | None = None,
        probe_id: str | None = None,
        model: str | None = None,
        temperature: float | None = None,
    ) -> list[dict]:
        """Stored samples matching every filter given: [{id, probe_id, model, temperature,
        sample_index, input, output, run_id, ...}], in the order they were stored."""
        got = self.observations.get(
            where=_where(
                run_id=run_id,
                probe_id=probe_id,
                model=model,
                temperature=None if temperature is None else float(temperature),
            ),
            include=["documents", "metadatas"],
        )
        return self._records(got, "output")

    # divergences --------------------------------------------------------------------------------

    def add_divergence(
        self,
        probe_id: str,
        target: str,
        input: str,
        teacher_output: str,
        target_output: str,
        run_id: str | None = None,
        round: int = 0,
        **metadata: Any,
    ) -> str:
        """Store where a target disagreed with the teacher on a probe (upsert per run, probe,
        target, round); the input is the embedded document so divergences cluster by input."""
        run_id = self._run(run_id)
        id_ = divergence_id(run_id, probe_id, target, round)
        meta = {
            **metadata,
            "probe_id": probe_id,
            "target": target,
            "teacher_output": teacher_output,
            "target_output": target_output,
            "run_id": run_id,
            "round": int(round),
        }
        self._upsert(self.divergences, [id_], [str(input)], [{**_flatten(meta), _SEQ: time.time_ns()}])
        return id_

    def get_divergences(
        self,
        run_id: str | None = None,
        target: str | None = None,
        probe_id: str | None = None,
        round: int | None = None,
    ) -> list[dict]:
        """Stored divergences matching every filter given: [{id, input, probe_id, target, ...}]."""
        got = self.divergences.get(
            where=_where(run_id=run_id, target=target, probe_id=probe_id, round=round),
            include=["documents", "metadatas"],
        )
        return self._records(got, "input")

    # housekeeping -------------------------------------------------------------------------------

    def delete_run(self, run_id: str) -> None:
        """Forget every probe, observation and divergence of a run."""
        with self._lock:
            for collection in (self.probes, self.observations, self.divergences):
                collection.delete(where={"run_id": run_id})
