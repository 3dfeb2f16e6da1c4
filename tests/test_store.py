"""The Chroma store: ids derived from content, upserts, similarity with the real offline embedding."""

from __future__ import annotations

import numpy as np
import pytest

from foster.store.paths import foster_home, run_dir, runs_dir
from foster.store.vectors import VectorStore, make_client, observation_id, probe_id


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    # tests/conftest.py may do the same; doing it here too keeps this file safe on its own.
    monkeypatch.setenv("FOSTER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FOSTER_CHROMA_URL", raising=False)


@pytest.fixture
def vs():
    return VectorStore(run_id="run-1")


def _forget_open_clients():
    from chromadb.api.client import SharedSystemClient

    SharedSystemClient.clear_system_cache()


def test_paths_follow_foster_home(tmp_path):
    assert foster_home() == tmp_path / "home"
    assert foster_home().is_dir()
    assert runs_dir() == tmp_path / "home" / "runs"
    assert run_dir("abc").is_dir()
    with pytest.raises(ValueError):
        run_dir("../escape")


def test_embed_is_normalised_and_semantic():
    from foster.prompts.embedding import embed

    vectors = embed(["I want my money back", "please refund my order", "the weather is sunny"])
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    assert embed([]).shape == (0, 384)


def test_ids_are_deterministic():
    assert probe_id("r", "hello") == probe_id("r", "hello") != probe_id("r2", "hello")
    a = observation_id("p1", "local/x", 0, 0)
    assert a == observation_id("p1", "local/x", 0.0, 0)
    assert a != observation_id("p1", "local/x", 0.7, 0)
    assert a != observation_id("p1", "local/x", 0, 1)


def test_observation_is_stored_once_per_key(vs):
    pid = vs.add_probes(None, [{"text": "where is my refund", "kind": "historical", "split": "train"}])[0]
    first = vs.add_observation(pid, "local/teacher", 0.7, 0, "where is my refund", "refund", run_id="run-1")
    assert vs.has_observation(first)
    again = vs.add_observation(
        pid, "local/teacher", 0.7, 0, "where is my refund", "billing", run_id="run-1", latency_s=0.25
    )
    assert again == first == observation_id(pid, "local/teacher", 0.7, 0)
    other = vs.add_observation(pid, "local/teacher", 0.7, 1, "where is my refund", "refund")

    rows = vs.get_observations(probe_id=pid)
    assert [r["id"] for r in rows] == [first, other]
    assert rows[0]["output"] == "billing" and rows[0]["latency_s"] == 0.25
    assert rows[0]["temperature"] == 0.7 and rows[0]["sample_index"] == 0
    assert rows[0]["run_id"] == "run-1" and rows[0]["input"] == "where is my refund"

    missing = observation_id(pid, "local/teacher", 1.0, 0)
    assert vs.existing_observation_ids([first, other, missing]) == {first, other}
    assert not vs.has_observation(missing)
    assert vs.get_observations(model="local/nobody") == []
    assert len(vs.get_observations(run_id="run-1", model="local/teacher")) == 2


def test_batch_observations_and_metadata_types(vs):
    ids = vs.add_observations(
        [
            {"probe_id": "p", "model": "m", "temperature": 0, "sample_index": i, "input": "x",
             "output": f"out {i}", "tags": ["a", "b"], "usage": {"tokens": 3}, "none": None}
            for i in range(3)
        ]
    )  # fmt: skip
    assert len(set(ids)) == 3
    rows = vs.get_observations(probe_id="p")
    assert [r["output"] for r in rows] == ["out 0", "out 1", "out 2"]
    assert rows[0]["tags"] == ["a", "b"] and rows[0]["usage"] == {"tokens": 3}
    assert "none" not in rows[0]


def test_probes_lookup_by_id_and_similarity(vs):
    texts = [
        "I was charged twice for my subscription",
        "How do I reset my password?",
        "What's the weather like in Paris tomorrow?",
        "Cancel my order and give me a refund",
    ]
    ids = vs.add_probes(None, [{"text": t, "kind": "variation", "split": "train", "cluster": i}
                               for i, t in enumerate(texts)])  # fmt: skip
    vs.add_probes("run-2", [{"text": "Will it rain in London?", "kind": "ood", "split": "test"}])
    # adding the same probe again keeps one copy in its original place
    vs.add_probes(None, [{"text": texts[0], "kind": "variation", "split": "test"}])

    probes = vs.get_probes("run-1")
    assert [p["text"] for p in probes] == texts
    assert probes[0]["id"] == ids[0] == probe_id("run-1", texts[0])
    assert probes[0]["split"] == "test" and probes[1]["cluster"] == 1
    assert vs.get_probe(ids[1])["text"] == texts[1]

    near = vs.similar_probes("I forgot my login password", k=2, run_id="run-1")
    assert near[0]["id"] == ids[1]
    assert near[0]["similarity"] > near[1]["similarity"]
    anywhere = vs.similar_probes("is it going to rain", k=1)
    assert anywhere[0]["text"] == "Will it rain in London?" and anywhere[0]["run_id"] == "run-2"
    assert vs.similar_probes("x", k=0) == []


def test_divergences(vs):
    d = vs.add_divergence("p1", "local/target", "refund please", "refund", "billing", score=0.0, cluster=3)
    same = vs.add_divergence("p1", "local/target", "refund please", "refund", "cancel")
    assert d == same
    rows = vs.get_divergences(run_id="run-1", target="local/target")
    assert len(rows) == 1 and rows[0]["target_output"] == "cancel" and rows[0]["input"] == "refund please"
    vs.add_divergence("p1", "local/target", "refund please", "refund", "cancel", round=1)
    assert len(vs.get_divergences(probe_id="p1")) == 2


def test_reopen_from_disk(tmp_path):
    vs = VectorStore(run_id="run-1")
    pid = vs.add_probes(None, [{"text": "my parcel never arrived", "kind": "historical", "split": "train"}])[0]
    oid = vs.add_observation(pid, "local/teacher", 0, 0, "my parcel never arrived", "shipping")
    del vs
    _forget_open_clients()

    reopened = VectorStore()
    assert reopened.has_observation(oid)
    assert reopened.get_probes("run-1")[0]["id"] == pid
    assert reopened.similar_probes("the package did not come", k=1)[0]["id"] == pid

    # a bare client (another process, a notebook) rebuilds the registered function, not
    # chromadb's downloading default
    _forget_open_clients()
    from foster.store.embedding import MiniLMEmbeddingFunction

    client = make_client()
    collection = client.get_collection("probes")
    assert isinstance(collection.configuration["embedding_function"], MiniLMEmbeddingFunction)
    assert collection.configuration["hnsw"]["space"] == "cosine"
    got = collection.query(query_texts=["lost delivery"], n_results=1)
    assert got["ids"][0] == [pid]


def test_http_client_from_env(monkeypatch):
    import chromadb

    seen = {}
    monkeypatch.setattr(chromadb, "HttpClient", lambda **kw: seen.update(kw) or "client")
    monkeypatch.setenv("FOSTER_CHROMA_URL", "https://chroma.internal:9000")
    assert make_client() == "client"
    assert (seen["host"], seen["port"], seen["ssl"]) == ("chroma.internal", 9000, True)
    monkeypatch.setenv("FOSTER_CHROMA_URL", "localhost")
    make_client()
    assert (seen["host"], seen["port"], seen["ssl"]) == ("localhost", 8000, False)
