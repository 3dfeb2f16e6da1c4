"""A knn bundle that names a litellm embedding model instead of the packaged MiniLM: its pool vectors
are made with that model and stored, a loaded bundle embeds only the input through litellm, a bad
name is refused at load naming the field, and the exports carry the name. The model is a fake
registered through litellm's own custom-provider path (tests/fakes.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import fakes  # noqa: E402

from foster.prompts.bundle import Bundle, BundleLoadError, Example, ExampleSelection, OutputContract  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = f"{fakes.EMBEDDING_PROVIDER}/hashed-64"
QUERIES = ["I was charged twice for my subscription", "my password reset link never arrives",
           "the parcel is late and tracking shows nothing", "can I change the delivery address",
           "please close my account", "refund the duplicate payment"]


@pytest.fixture
def provider():
    with fakes.fake_embedding_provider() as handler:
        yield handler


def _pool(n: int = 40) -> list[Example]:
    with open(ROOT / "examples/ticket_routing/data/train.jsonl", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()][:n]
    return [Example(input=r["input"], output=r["output"]) for r in rows]


def _bundle(model: str = MODEL, k: int = 3, **overrides) -> Bundle:
    pool = _pool()
    fields = dict(teacher="local/fake-teacher", targets=["local/fake-target"], name="router-remote",
                  system_prompt="Route the ticket. Answer with the label only.", examples=pool,
                  selection=ExampleSelection(kind="knn", k=k, embedding_model=model),
                  output_contract=OutputContract(format="label", answers=sorted({e.output for e in pool})))
    fields.update(overrides)
    return Bundle(**fields)


def _nearest_directly(examples: list[Example], query: str, k: int) -> list[Example]:
    """The bundle's rule computed from the fake's own vectors: k highest cosines, nearest last."""
    rows = np.array([fakes.hashed_words(e.input) for e in examples], dtype=np.float64)
    rows /= np.clip(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12, None)
    q = np.array(fakes.hashed_words(query), dtype=np.float64)
    sims = rows @ (q / max(np.linalg.norm(q), 1e-12))
    ranked = sorted(range(len(examples)), key=lambda i: (-round(float(sims[i]), 6), i))[:k]
    return [examples[i] for i in reversed(ranked)]


def test_saved_bundle_stores_the_named_models_vectors_and_embeds_only_the_query_after_load(provider, tmp_path):
    bundle = _bundle()
    path = bundle.save(tmp_path / "router")
    pool_texts = [e.input for e in bundle.examples]
    assert [text for call in provider.calls for text in call] == pool_texts  # the pool, through litellm, once

    document = json.loads(path.read_text())
    vectors = document["selection"]["vectors"]
    assert document["selection"]["embedding_model"] == vectors["model"] == MODEL
    assert (vectors["count"], vectors["dim"]) == (len(pool_texts), 64)
    assert f"nearest by {MODEL}" in path.with_suffix(".md").read_text()

    provider.calls.clear()
    loaded = Bundle.load(path)
    assert loaded.id == bundle.id
    for query in QUERIES:
        chosen = loaded.select_examples(query)
        assert chosen == _nearest_directly(bundle.examples, query, 3), query
        assert loaded.messages(query)[-2 * 3 - 1:-1:2] == [{"role": "user", "content": e.input} for e in chosen]
    # one call per input, with the input only: the stored pool was not embedded, and messages() reuses the
    # embedding select_examples() (or recall()) just made for the same input
    assert provider.calls == [[query] for query in QUERIES]

    fresh = _bundle()  # nothing stored: embeds its pool itself, in float32
    assert [fresh.select_examples(q) for q in QUERIES] == [loaded.select_examples(q) for q in QUERIES]
    # the neighbours mean something: the nearest example to a refund question is a billing one
    assert "BILL" in loaded.select_examples("refund the duplicate payment")[-1].output


def test_an_edited_pool_is_embedded_again_with_the_named_model(provider, tmp_path):
    path = _bundle(k=1).save(tmp_path / "router")
    document = json.loads(path.read_text())
    document["examples"][5]["input"] = "zebra giraffe walrus"
    path.write_text(json.dumps(document))
    provider.calls.clear()
    edited = Bundle.load(path)
    assert edited.select_examples("walrus zebra giraffe")[0].input == "zebra giraffe walrus"
    assert len(provider.calls[0]) == len(document["examples"])  # the stale vectors were not used


def test_with_embedding_switches_the_model_and_remakes_the_vectors(provider, tmp_path):
    bundle = _bundle(report={"fidelity": 0.9})
    bundle.save(tmp_path / "a")
    other = bundle.with_embedding(f"{fakes.EMBEDDING_PROVIDER}/hashed-32")
    assert other.selection.embedding_model.endswith("hashed-32") and other.selection.vectors is None
    assert other.id != bundle.id and other.report is None and "not evaluated" in other.provenance.notes
    assert bundle.selection.embedding_model == MODEL  # the original is untouched
    vectors = json.loads(other.save(tmp_path / "b").read_text())["selection"]["vectors"]
    assert (vectors["model"], vectors["dim"]) == (f"{fakes.EMBEDDING_PROVIDER}/hashed-32", 32)
    assert bundle.with_embedding(MODEL) == bundle
    with pytest.raises(ValueError, match="embedding_model"):
        bundle.with_embedding("https://attacker.example/v1")


@pytest.mark.parametrize("name, says", [
    ("nosuchprovider/embed-1", "unknown embedding provider 'nosuchprovider'"),
    ("huggingface/https://attacker.example/embed", "not an embedding model"),
    ("openai/../../etc", "not an embedding model"),
    ("local/smollm2-135m-instruct", "no embedding models"),
    ("all-MiniLM-L6-v3", "not an embedding model"),
    ("openai/" + "x" * 300, "not an embedding model"),
])
def test_a_bad_embedding_model_is_refused_at_load_naming_the_file_and_field(name, says, tmp_path):
    path = Bundle(teacher="t/t", targets=["t/x"], examples=_pool(3)).save(tmp_path / "b")
    document = json.loads(path.read_text())
    document["selection"].update(kind="knn", embedding_model=name)
    path.write_text(json.dumps(document))
    with pytest.raises(BundleLoadError) as info:
        Bundle.load(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "selection.embedding_model" in message, message
    assert says in message, message


def test_an_endpoint_or_key_beside_the_model_is_refused(provider, tmp_path):
    path = _bundle().save(tmp_path / "b")
    document = json.loads(path.read_text())
    document["selection"]["api_base"] = "http://attacker.example/v1"
    path.write_text(json.dumps(document))
    with pytest.raises(BundleLoadError, match="api_base"):
        Bundle.load(path)


def test_vectors_of_another_dimension_are_reported_not_multiplied(provider, tmp_path):
    path = _bundle().save(tmp_path / "b")
    document = json.loads(path.read_text())
    other = f"{fakes.EMBEDDING_PROVIDER}/hashed-32"  # answers 32 numbers; the stored rows have 64
    document["selection"]["embedding_model"] = document["selection"]["vectors"]["model"] = other
    path.write_text(json.dumps(document))
    with pytest.raises(ValueError, match="64-dimensional rows but .*hashed-32.* 32 dimensions"):
        Bundle.load(path).select_examples("refund")


@pytest.mark.parametrize("fmt", ["openai", "langchain", "dspy", "promptfoo"])
def test_exports_carry_the_embedding_model_and_render_like_the_bundle(provider, fmt):
    from foster.prompts.export import ExportContext, Probe, export_bundle
    from foster.prompts.export.parity import check

    bundle = _bundle(k=4)
    context = ExportContext(probes=[Probe(q, "BILL-REFUND") for q in QUERIES])
    text = export_bundle(bundle, fmt, context).text
    if fmt != "promptfoo":  # promptfoo's tests carry each probe's rendered messages instead
        assert MODEL in text
    result = check(bundle, fmt, text, QUERIES)  # the input embedded by the bundle's own model
    assert result.ok, result.first_difference


def test_distill_refuses_a_bad_embedding_model_in_one_line(fake_model, tmp_path, capsys):
    from foster.ui.cli import main

    target, _ = fake_model(fakes.target, "fake-target")
    records = tmp_path / "rec.jsonl"
    records.write_text("\n".join(json.dumps({"input": x, "output": fakes.true_label(x)}) for x in fakes.HISTORICAL))
    for name, says in (("huggingface/https://attacker.example", "--embedding-model: 'huggingface/https:"),
                       ("nosuchprovider/x", "--embedding-model: unknown embedding provider")):
        code = main(["distill", "--teacher-records", str(records), "--target", target,
                     "--embedding-model", name, "--quiet"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and says in err[0], err
    assert not (Path(os.environ["FOSTER_HOME"]) / "runs").exists()


def test_a_run_mines_knn_bundles_with_the_named_embedding(provider, fake_model, tmp_path):
    from foster.agent.runs import start_run
    from foster.store.runs import RunRegistry

    target, _ = fake_model(fakes.target, "fake-target")
    records = tmp_path / "rec.jsonl"
    records.write_text("\n".join(json.dumps({"input": x, "output": fakes.true_label(x)}) for x in fakes.HISTORICAL))
    run_id = start_run({"teacher_records": str(records), "targets": [target], "budget_calls": 5, "max_rounds": 1,
                        "embedding_model": MODEL})
    knn = [Bundle.load(p) for p in (RunRegistry().run_dir(run_id) / "bundles").glob("mined-knn-*.json")]
    assert knn and all(b.selection.embedding_model == b.selection.vectors.model == MODEL for b in knn)
    assert any(len(call) == 1 for call in provider.calls)  # evaluation embedded each held-out input through the fake
    # the run's report counts those requests like any model's (the export's parity checks come after its table)
    usage = json.loads((RunRegistry().run_dir(run_id) / "report.json").read_text())["usage"][MODEL]
    assert 0 < usage["calls"] <= len(provider.calls) and usage["prompt_tokens"] > 0 and usage["errors"] == 0
    assert f"| {MODEL} | {usage['calls']} |" in (RunRegistry().run_dir(run_id) / "report.md").read_text()


def test_a_minilm_bundle_renders_without_importing_litellm(tmp_path):
    path = _bundle(model="all-MiniLM-L6-v2").save(tmp_path / "minilm")
    code = ("import sys\nfrom foster.prompts.bundle import Bundle\n"
            f"Bundle.load({str(path)!r}).messages('my parcel is late')\n"
            "assert 'litellm' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]


# --- inside foster: a bundle's remote embeddings go through the gateway (ledger, caps, retries, models file) ---

def _words(texts) -> int:
    return sum(len(re.findall(r"[a-z0-9]+", t.lower())) for t in texts)


def _run_context(run_id: str, **config):
    from foster.agent.config import RunConfig
    from foster.agent.context import RunContext
    from foster.store.runs import RunRegistry

    RunRegistry().create(run_id, RunConfig(teacher="local/fake-teacher", targets=["local/fake-target"],
                                           task="Route the ticket.", embedding_model=MODEL, **config).model_dump(),
                         status="running")
    return RunContext.open(run_id)


def test_inside_a_ledger_a_knn_bundles_embeddings_are_gateway_calls_on_it(provider):
    from foster.agent import gateway

    bundle = _bundle()
    with gateway.use_ledger() as run_ledger:
        chosen = [bundle.select_examples(query) for query in QUERIES[:2]]
    assert chosen == [_nearest_directly(bundle.examples, query, 3) for query in QUERIES[:2]]  # the same neighbours
    usage = run_ledger.snapshot()
    assert set(usage) == {MODEL}
    pool = [e.input for e in bundle.examples]
    assert provider.calls == [pool, [QUERIES[0]], [QUERIES[1]]]
    counted = usage[MODEL]
    assert (counted["calls"], counted["requests"], counted["errors"], counted["completion_tokens"]) == (3, 3, 0, 0)
    assert counted["prompt_tokens"] == _words(pool + QUERIES[:2]) > 0  # the provider's reported usage
    assert counted["seconds"] > 0
    assert gateway.process_ledger().snapshot()[MODEL]["calls"] == 3
    assert all(sent["timeout"] == gateway.default_timeout() for sent in provider.sent)  # bounded, as gateway calls are


def test_outside_foster_a_bundle_calls_litellm_directly_and_nothing_is_left_installed(provider):
    from foster.agent import gateway
    from foster.prompts.embedding import remote_embedder

    bundle = _bundle()
    with gateway.use_ledger():
        assert remote_embedder() is not None
    assert remote_embedder() is None  # the block took its embedder with it
    assert bundle.select_examples(QUERIES[0]) == _nearest_directly(bundle.examples, QUERIES[0], 3)
    assert len(provider.calls) == 2
    assert MODEL not in gateway.process_ledger().snapshot()  # the direct path: no gateway, no ledger


def test_a_runs_call_cap_stops_its_embedding_requests(provider):
    from foster.agent.context import StopRun

    ctx = _run_context("capped", max_calls=3)
    bundle = _bundle()
    with ctx.embeddings():
        bundle.select_examples(QUERIES[0])  # the pool, then the input: 2 calls
        bundle.select_examples(QUERIES[1])  # 3
        with pytest.raises(StopRun, match=r"call cap reached \(3 >= 3\)"):
            bundle.select_examples(QUERIES[2])
    assert len(provider.calls) == 3  # the refused request was never sent
    usage = ctx.usage()
    assert usage[MODEL]["calls"] == 3 and usage[MODEL]["prompt_tokens"] == _words(
        [e.input for e in bundle.examples] + QUERIES[:2])


def test_a_runs_token_cap_counts_the_embedding_models_tokens(provider):
    from foster.agent.context import StopRun

    ctx = _run_context("token-capped", max_tokens=5)
    bundle = _bundle()
    with ctx.scope():  # DSPy's block: the same capped embedder as the graph's
        with pytest.raises(StopRun, match="token cap reached"):
            bundle.select_examples(QUERIES[0])  # the pool is far more than 5 words; the input is refused
    assert len(provider.calls) == 1


def test_a_timed_out_embedding_request_is_retried_and_counted(provider, monkeypatch):
    import litellm

    from foster.agent import gateway

    monkeypatch.setenv("FOSTER_TIMEOUT", "7")
    provider.fail_next = [litellm.Timeout(message="slow", model=MODEL, llm_provider=fakes.EMBEDDING_PROVIDER)]
    with gateway.use_ledger() as run_ledger:
        vectors = _bundle(examples=_pool(4))._embed(["refund the duplicate payment"])
    assert vectors.shape == (1, 64)
    counted = run_ledger.snapshot()[MODEL]
    assert (counted["calls"], counted["requests"], counted["retries"], counted["timeouts"]) == (1, 2, 1, 1)
    assert [sent["timeout"] for sent in provider.sent] == [7.0, 7.0]


def test_a_failed_embedding_request_is_one_line_and_an_error_on_the_ledger(provider):
    import litellm

    from foster.agent import gateway
    from foster.prompts.embedding import EmbeddingError

    provider.fail_next = [litellm.BadRequestError(message="the provider refused\nwith a long story", model=MODEL,
                                                  llm_provider=fakes.EMBEDDING_PROVIDER)]
    with gateway.use_ledger() as run_ledger, pytest.raises(EmbeddingError) as info:
        _bundle()._embed(["refund"])
    message = str(info.value)
    assert "\n" not in message and MODEL in message and "the provider refused" in message, message
    assert run_ledger.snapshot()[MODEL]["errors"] == 1 and len(provider.calls) == 1  # not a transient error: no retry


def test_a_models_file_name_resolves_to_its_deployment_and_key(provider, monkeypatch):
    from foster.agent import gateway

    alias = f"{fakes.EMBEDDING_PROVIDER}/team-64"  # a name in the models file, as a bundle carries it
    monkeypatch.setenv("TEAM_EMBED_KEY", "sk-team")
    models = gateway.Models(gateway.ModelsFile.parse(
        {"models": {alias: [{"model": MODEL, "api_key_env": "TEAM_EMBED_KEY"}]}}))
    bundle = _bundle(model=alias, examples=_pool(5))
    with gateway.use_ledger() as run_ledger, gateway.use_models(models):
        bundle.select_examples(QUERIES[0])
    assert provider.sent and all(sent["api_key"] == "sk-team" for sent in provider.sent)
    assert run_ledger.snapshot()[alias]["calls"] == 2


def test_a_local_model_is_refused_as_an_embedding_model(provider):
    from foster.agent import gateway

    models = gateway.Models(gateway.ModelsFile.parse({"models": {"team/embed": ["local/smollm2-135m-instruct"]}}))
    with pytest.raises(gateway.UnknownModelError, match="no embedding models"):
        gateway.embed("team/embed", ["x"], models=models)
    assert provider.calls == []


def test_dspy_worker_threads_embed_through_the_context_the_adapter_was_made_in(provider):
    import threading

    from foster.agent import gateway
    from foster.agent.dspy_adapter import BundleAdapter

    bundle = _bundle(examples=_pool(6))
    with gateway.use_ledger() as run_ledger:
        adapter = BundleAdapter(bundle)
    worker = threading.Thread(target=adapter._retrieved, args=(bundle, QUERIES[0]))  # a fresh context, as DSPy's
    worker.start()
    worker.join()
    assert run_ledger.snapshot()[MODEL]["calls"] == 2 and len(provider.calls) == 2


def test_a_run_checks_a_models_file_embedding_names_own_key_variable(provider, monkeypatch):
    from foster.agent import gateway
    from foster.agent.config import InputError, RunConfig
    from foster.agent.runs import check_embedding_model

    alias = f"{fakes.EMBEDDING_PROVIDER}/team-64"
    config = RunConfig(teacher="local/fake-teacher", targets=["local/fake-target"], embedding_model=alias)
    models = gateway.Models(gateway.ModelsFile.parse({"models": {alias: [{"model": MODEL, "api_key_env": "TEAM_EMBED_KEY"}]}}))
    monkeypatch.delenv("TEAM_EMBED_KEY", raising=False)
    with pytest.raises(InputError, match="--embedding-model .*TEAM_EMBED_KEY is not set"):
        check_embedding_model(config, models)
    monkeypatch.setenv("TEAM_EMBED_KEY", "sk-team")
    check_embedding_model(config, models)
    local = gateway.Models(gateway.ModelsFile.parse({"models": {alias: ["local/smollm2-135m-instruct"]}}))
    with pytest.raises(InputError, match="no embedding models"):
        check_embedding_model(config, local)
