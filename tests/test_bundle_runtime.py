"""The light bundle runtime: stored pool vectors, ONNX embeddings that pick the neighbours
sentence-transformers picks, Bundle.load on `~` and relative paths, and a fresh virtualenv with
only the runtime's dependencies rendering a knn bundle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from foster.prompts.bundle import (
    Bundle,
    BundleLoadError,
    Example,
    ExampleSelection,
    OutputContract,
)

ROOT = Path(__file__).resolve().parents[1]


def _records(domain: str, name: str) -> list[dict]:
    with open(ROOT / "examples" / domain / "data" / name, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _knn_bundle(k: int = 4) -> Bundle:
    pool = _records("ticket_routing", "train.jsonl")[:60]
    return Bundle(
        teacher="local/fake-teacher",
        targets=["local/fake-target"],
        system_prompt="Route the ticket. Answer with the label only.",
        examples=[Example(input=r["input"], output=r["output"]) for r in pool],
        selection=ExampleSelection(kind="knn", k=k),
        output_contract=OutputContract(format="label", answers=sorted({r["output"] for r in pool})),
    )


def test_saved_knn_bundle_stores_its_pool_vectors_and_names_the_embedding(tmp_path):
    bundle = _knn_bundle()
    path = bundle.save(tmp_path / "router")
    document = json.loads(path.read_text())
    vectors = document["selection"]["vectors"]
    assert document["selection"]["embedding_model"] == vectors["model"] == "all-MiniLM-L6-v2"
    assert (vectors["count"], vectors["dim"], vectors["dtype"]) == (60, 384, "float16")
    loaded = Bundle.load(path)
    assert loaded.id == bundle.id  # vectors follow from the examples: not part of the content hash
    stored = loaded.selection.vectors.array()
    from foster.prompts.embedding import embed

    fresh = embed([e.input for e in bundle.examples])
    assert np.abs(stored - fresh).max() < 2e-3  # float16 rounding only
    query = "I was charged twice this month"
    assert loaded.messages(query) == bundle.messages(query)


def test_edited_pool_is_never_matched_to_old_vectors(tmp_path):
    bundle = _knn_bundle(k=1)
    path = bundle.save(tmp_path / "router")
    document = json.loads(path.read_text())
    document["examples"][0]["input"] = "a completely different refund question about my card"
    path.write_text(json.dumps(document))
    edited = Bundle.load(path)
    # the stored vectors describe the old pool; the edited example must be found by its new text
    assert edited.select_examples("a completely different refund question about my card")[0].input.startswith(
        "a completely different"
    )


def test_fixed_bundle_stores_no_vectors(tmp_path):
    bundle = Bundle(teacher="t/t", targets=["t/x"], examples=[Example(input="a", output="b")])
    document = json.loads(bundle.save(tmp_path / "b").read_text())
    assert document["selection"]["vectors"] is None


def test_load_expands_home_and_relative_paths(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    bundle = Bundle(teacher="t/t", targets=["t/x"], system_prompt="hi")
    bundle.save(home / ".foster" / "runs" / "r1" / "best_bundle")
    assert Bundle.load("~/.foster/runs/r1/best_bundle.json") == bundle
    monkeypatch.chdir(home / ".foster")
    assert Bundle.load("runs/r1/best_bundle.json") == bundle
    assert Bundle.load("runs/r1/best_bundle") == bundle
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        Bundle.load("~/nothing-here.json")


def test_load_error_names_the_file_and_the_field(tmp_path):
    path = Bundle(teacher="t/t", targets=["t/x"]).save(tmp_path / "b")
    document = json.loads(path.read_text())
    document["selection"]["k"] = 0
    path.write_text(json.dumps(document))
    with pytest.raises(BundleLoadError) as info:
        Bundle.load(path)
    assert str(path) in str(info.value) and "selection.k" in str(info.value)
    path.write_text("{not json")
    with pytest.raises(BundleLoadError, match=r"b\.json.*JSON syntax"):
        Bundle.load(path)


@pytest.mark.integration
def test_onnx_selects_the_neighbours_sentence_transformers_selects():
    """On the examples' data (a few hundred queries against two pools), the runtime path (ONNX
    queries, float16 pool as stored) picks the same k neighbours in the same order as the
    sentence-transformers path in at least 99 % of queries."""
    from foster.prompts.bundle import PoolVectors
    from foster.prompts.embedding import embed, embed_reference

    k = 6
    differing, total = 0, 0
    for domain, pool_size in (("ticket_routing", 200), ("house_style", 150)):
        train = [r["input"] for r in _records(domain, "train.jsonl")]
        pool, queries = train[:pool_size], train[pool_size:]
        queries += [r["input"] for r in _records(domain, "inputs.jsonl") + _records(domain, "gold.jsonl")]
        stored = PoolVectors.from_array(embed(pool), pool).array()
        runtime = stored @ embed(queries).T
        reference = embed_reference(pool) @ embed_reference(queries).T
        for column in range(len(queries)):
            pick = sorted(range(len(pool)), key=lambda i: (-float(runtime[i, column]), i))[:k]
            ref = sorted(range(len(pool)), key=lambda i: (-float(reference[i, column]), i))[:k]
            differing += pick != ref
            total += 1
    assert total >= 300
    assert differing / total <= 0.01, f"{differing} of {total} queries select different neighbours"


def test_export_is_stored_ready_to_run():
    """The export carries the graph onnxruntime optimized once and the weights beside it (memory-
    mapped at load), and stamps only the operator domains it uses, so older onnxruntimes load it."""
    import onnx
    from foster.prompts.onnx_embed import FORMAT, WEIGHTS, ensure_exported, is_exported

    directory = ensure_exported()
    assert is_exported(directory)
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["format"] == FORMAT == 2 and manifest["weights_file"] == WEIGHTS
    graph = onnx.load(str(directory / "model.onnx"), load_external_data=False)
    assert (directory / "model.onnx").stat().st_size < 1_000_000  # the 90 MB of weights are not in it
    assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.graph.initializer if t.dims and
               np.prod(t.dims) * 4 > 4096)
    assert {entry.domain for entry in graph.opset_import} <= {"", "com.microsoft"}
    assert any(node.op_type == "BiasGelu" for node in graph.graph.node)  # fused at export, not at load


def test_an_older_export_is_used_where_no_new_one_can_be_made(tmp_path, monkeypatch, caplog):
    from foster.prompts import onnx_embed

    def no_torch(directory=None):
        raise onnx_embed.EmbeddingUnavailable("no torch here")

    monkeypatch.setattr(onnx_embed, "export", no_torch)
    older = tmp_path / "older"
    older.mkdir()
    (older / "manifest.json").write_text(json.dumps({"model": "all-MiniLM-L6-v2", "dim": 384}))
    (older / "model.onnx").write_bytes(b"an export from an earlier foster")
    (older / "tokenizer.json").write_text("{}")
    assert not onnx_embed.is_exported(older)
    with caplog.at_level("WARNING"):
        assert onnx_embed.ensure_exported(older) == older
    assert "older export" in caplog.text
    (older / "model.onnx").unlink()  # not an export at all: say so
    with pytest.raises(onnx_embed.EmbeddingUnavailable):
        onnx_embed.ensure_exported(older)


RENDER_IMPORTS = textwrap.dedent(
    """
    import sys
    from foster.prompts.bundle import Bundle
    Bundle.load(sys.argv[1]).messages("I was charged twice this month")
    print(sorted(m for m in ("yaml", "tiktoken", "torch", "transformers", "litellm", "dspy") if m in sys.modules))
    """
)


@pytest.mark.integration
def test_rendering_a_knn_bundle_imports_only_what_it_needs(tmp_path):
    """A new process's first render pays for every import: none for template files (yaml), token
    counts (tiktoken) or a model stack."""
    path = _knn_bundle().save(tmp_path / "router")
    done = subprocess.run([sys.executable, "-c", RENDER_IMPORTS, str(path)], capture_output=True, text=True,
                          check=True, cwd=tmp_path)
    assert done.stdout.strip().splitlines()[-1] == "[]"


RUNTIME_PROBE = textwrap.dedent(
    """
    import json, sys
    from foster.prompts.bundle import Bundle
    bundle = Bundle.load(sys.argv[1])
    inputs = json.load(open(sys.argv[2]))
    rendered = [bundle.messages(text) for text in inputs]
    heavy = sorted(m for m in ("torch", "sentence_transformers", "transformers", "litellm", "dspy") if m in sys.modules)
    json.dump({"rendered": rendered, "heavy": heavy}, open(sys.argv[3], "w"))
    """
)


@pytest.mark.integration
def test_fresh_venv_with_only_the_runtime_renders_a_knn_bundle(tmp_path):
    """No torch, sentence-transformers, litellm or dspy: load a knn bundle, render 100 inputs, and
    get exactly the messages foster's full install renders."""
    from foster.prompts.onnx_embed import ensure_exported

    from bench.bundle_runtime import make_runtime_venv

    bundle = _knn_bundle(k=4)
    path = bundle.save(tmp_path / "router")
    inputs = [r["input"] for r in _records("ticket_routing", "train.jsonl")[100:200]]
    (tmp_path / "inputs.json").write_text(json.dumps(inputs))
    (tmp_path / "probe.py").write_text(RUNTIME_PROBE)
    python = make_runtime_venv(tmp_path)
    installed = subprocess.run([str(python), "-m", "pip", "list", "--format=json"], capture_output=True,
                               text=True, check=True).stdout
    names = {p["name"].lower() for p in json.loads(installed)}
    assert not names & {"torch", "sentence-transformers", "transformers", "litellm", "dspy"}
    env = {**os.environ, "FOSTER_EMBEDDING_DIR": str(ensure_exported())}
    subprocess.run([str(python), str(tmp_path / "probe.py"), str(path), str(tmp_path / "inputs.json"),
                    str(tmp_path / "out.json")], check=True, env=env, cwd=tmp_path)
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["heavy"] == []
    assert len(out["rendered"]) == 100
    assert out["rendered"] == [bundle.messages(text) for text in inputs]
