"""Exports: each format written for a run's bundle, loaded by its own tool, and rendering on the
run's held-out probes exactly the messages `Bundle.messages()` renders."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, os.path.dirname(__file__))
from foster.prompts.bundle import Bundle, Example, ExampleSelection, OutputContract
from foster.prompts.export import FORMATS, ExportContext, Probe, export_bundle
from foster.prompts.export.parity import check, export_all
from service_fixtures import PROBES, make_run, running_server

ROOT = Path(__file__).resolve().parents[1]


def records(name: str) -> list[dict]:
    with open(ROOT / "examples/ticket_routing/data" / name, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def run_context(run_dir: Path) -> ExportContext:
    grid = json.loads((run_dir / "grid.json").read_text())
    return ExportContext(probes=[Probe(r["input"], r["teacher"]["mode"]) for r in grid["rows"]], max_tokens=8)


def knn_bundle(target: str = "local/fake-target") -> Bundle:
    rows = records("train.jsonl")
    return Bundle(teacher="local/fake-teacher", targets=[target], name="router-knn",
                  system_prompt="Route the ticket: {one label} only. {{not a variable}} {% raw %}",
                  examples=[Example(input=r["input"], output=r["output"]) for r in rows[:80]],
                  selection=ExampleSelection(kind="knn", k=4),
                  output_contract=OutputContract(format="label", answers=sorted({r["output"] for r in rows})))


@pytest.fixture
def run(tmp_path):
    made = make_run(tmp_path / "home")
    return {"bundle": Bundle.load(made["best_path"]), "context": run_context(made["run_dir"]), "dir": made["run_dir"]}


@pytest.mark.parametrize("fmt", FORMATS)
def test_fixed_bundle_export_parity_on_the_runs_held_out_probes(run, fmt):
    exported = export_bundle(run["bundle"], fmt, run["context"])
    result = check(run["bundle"], fmt, exported.text, [p.input for p in run["context"].probes])
    assert result.n == len(PROBES) and result.ok, result.first_difference


@pytest.mark.parametrize("fmt", FORMATS)
def test_knn_bundle_export_parity(fmt):
    bundle = knn_bundle()
    rows = records("inputs.jsonl")
    context = ExportContext(probes=[Probe(r["input"], "ACCT-LOCKOUT") for r in rows[:25]])
    result = check(bundle, fmt, export_bundle(bundle, fmt, context).text, [p.input for p in context.probes])
    assert result.ok, result.first_difference


def test_parity_fails_on_a_difference(run):
    exported = export_bundle(run["bundle"], "openai", run["context"])
    document = json.loads(exported.text)
    document["request"]["messages"][0]["content"] += " (edited)"
    result = check(run["bundle"], "openai", json.dumps(document), [PROBES[0][0]])
    assert not result.ok and result.first_difference["message"] == 0


def test_langchain_export_is_langchain_cores_own_classes():
    from langchain_core.example_selectors import SemanticSimilarityExampleSelector
    from langchain_core.prompts import (
        ChatPromptTemplate,
        FewShotChatMessagePromptTemplate,
    )

    namespace: dict = {}
    exec(export_bundle(knn_bundle(), "langchain").text, namespace)  # noqa: S102 - the exported module
    prompt = namespace["prompt"]
    assert isinstance(prompt, ChatPromptTemplate)
    few_shot = next(m for m in prompt.messages if isinstance(m, FewShotChatMessagePromptTemplate))
    assert isinstance(few_shot.example_selector, SemanticSimilarityExampleSelector)
    assert few_shot.example_selector.k == 4


def test_dspy_export_loads_in_dspy(run):
    import dspy

    path = run["dir"] / "best.dspy.json"
    path.write_text(export_bundle(run["bundle"], "dspy", run["context"]).text)
    program = dspy.Predict("input -> answer")
    program.load(str(path))
    assert program.signature.instructions == run["bundle"].system_prompt
    assert [(d["input"], d["answer"]) for d in program.demos] == [(e.input, e.output) for e in run["bundle"].examples]


def test_promptfoo_config_has_the_probes_and_the_teachers_answers(run):
    config = yaml.safe_load(export_bundle(run["bundle"], "promptfoo", run["context"]).text)
    assert config["providers"][0]["id"] == f"openai:chat:{run['bundle'].id}"  # local target: via foster serve
    assert config["providers"][0]["config"] == {"temperature": 0.0, "max_tokens": 8}
    assert [(t["vars"]["input"], t["assert"]) for t in config["tests"]] == [
        (text, [{"type": "equals", "value": label}]) for text, label in PROBES]


def test_export_all_writes_every_format_with_its_parity(run, tmp_path):
    results = export_all(run["bundle"], tmp_path / "exports", run["context"])
    assert [r.format for r in results] == list(FORMATS)
    assert all(r.ok and Path(r.path).is_file() for r in results), [r.model_dump() for r in results]


def test_cli_export_writes_the_file(run, tmp_path, capsys):
    from foster.ui.cli import main

    out = tmp_path / "router.openai.json"
    assert main(["export", str(run["dir"] / "best_bundle.json"), "--to", "openai", "-o", str(out)]) == 0
    assert json.loads(out.read_text())["request"]["max_tokens"] == 8  # the run's sampling, found beside the bundle
    assert main(["export", str(tmp_path / "missing.json"), "--to", "openai"]) == 2
    assert "missing.json" in capsys.readouterr().err


def test_service_export_endpoint(run, monkeypatch):
    from fastapi.testclient import TestClient
    from foster.ui.service import create_app

    monkeypatch.setenv("FOSTER_HOME", str(run["dir"].parent.parent))
    client = TestClient(create_app(ui=False))
    bundle_id = run["bundle"].id
    response = client.get(f"/v1/bundles/{bundle_id}/export", params={"format": "promptfoo"})
    assert response.status_code == 200, response.text
    assert len(yaml.safe_load(response.text)["tests"]) == len(PROBES)
    assert client.get(f"/v1/bundles/{bundle_id}/export", params={"format": "nope"}).status_code == 422
    assert client.get("/v1/bundles/nonexistent/export", params={"format": "openai"}).status_code == 404


def promptfoo_eval(config: Path, tmp_path: Path, url: str | None = None) -> list[dict]:
    """`npx promptfoo eval -c config` against foster serve at `url` (by default one served from this
    process on loopback, which sees the fakes it registered); promptfoo's result rows. Fails on any
    provider error (failureReason 2); a wrong answer (1) is a result, not an error."""
    from foster.ui.service import create_app

    if shutil.which("npx") is None or shutil.which("promptfoo") is None:
        pytest.fail("promptfoo is not installed: `make test-deps` installs it from npm")
    if url is None:
        with running_server(create_app(ui=False)) as local:
            return promptfoo_eval(config, tmp_path, local)
    env = {**os.environ, "OPENAI_BASE_URL": f"{url}/v1", "OPENAI_API_KEY": "unused-by-foster-serve",
           "PROMPTFOO_DISABLE_TELEMETRY": "1", "PROMPTFOO_DISABLE_UPDATE": "1",
           "PROMPTFOO_CONFIG_DIR": str(tmp_path / "promptfoo-home")}
    done = subprocess.run(["npx", "--no-install", "promptfoo", "eval", "-c", str(config), "-o",
                           str(tmp_path / "out.json"), "--no-cache", "--no-progress-bar", "-j", "1"],
                          check=False, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert (tmp_path / "out.json").is_file(), done.stdout[-2000:] + done.stderr[-2000:]
    results = json.loads((tmp_path / "out.json").read_text())["results"]["results"]
    errors = [r.get("error") for r in results if r.get("failureReason") == 2 or (r.get("response") or {}).get("error")]
    assert not errors, errors[:3]
    return results


@pytest.mark.integration
def test_promptfoo_eval_against_foster_serve_matches_fidelity(run, tmp_path, fake_model, monkeypatch):
    """`npx promptfoo eval` on the exported config, asking foster serve (which asks the fake target
    through the bundle): promptfoo's pass rate is foster's fidelity on the same probes, and the
    prompt promptfoo rendered is the bundle's messages."""
    from service_fixtures import label_for

    miss = PROBES[7][0]  # the fixture grid has the target wrong on probe 7 only: fidelity 0.9

    def target(request):
        text = request.messages_or_prompt[-1]["content"]
        return "OTHER" if text == miss else label_for(text)

    fake_model(target, name="fake-target")
    monkeypatch.setenv("FOSTER_HOME", str(run["dir"].parent.parent))
    config = tmp_path / "promptfooconfig.yaml"
    config.write_text(export_bundle(run["bundle"], "promptfoo", run["context"]).text)
    results = promptfoo_eval(config, tmp_path)
    assert len(results) == len(PROBES)
    passed = sum(bool(r["success"]) for r in results)
    grid = json.loads((run["dir"] / "grid.json").read_text())
    key = next(c["key"] for c in grid["columns"] if c["bundle_id"] == run["bundle"].id)
    fidelity = sum(row["answers"][key]["agree"] for row in grid["rows"]) / len(grid["rows"])
    assert passed / len(results) == fidelity == 0.9
    for result in results:  # what promptfoo sent is what the bundle renders
        assert json.loads(result["prompt"]["raw"]) == run["bundle"].messages(result["vars"]["input"])


def test_export_run_lists_every_format_for_the_report(run):
    from foster.agent.report import markdown
    from foster.prompts.export.parity import export_run

    exports = export_run(run["bundle"], run["dir"])
    assert [(e["format"], e["n"], e["ok"]) for e in exports] == [(f, len(PROBES), True) for f in FORMATS]
    assert all(Path(e["path"]).parent == run["dir"] / "exports" for e in exports)
    text = markdown({"exports": exports})
    assert "## Exports" in text and f"{len(PROBES)}/{len(PROBES)} identical" in text


@pytest.mark.integration
def test_promptfoo_eval_on_a_real_runs_exports_matches_its_fidelity(tmp_path):
    """A real run (recorded teacher answers, the embedded SmolLM2 as target, a tiny budget) and its
    promptfoo exports: the best bundle's file the run wrote, and the same export of every other
    bundle it evaluated (the mined ones; the zero-shot baseline only answers prose). `npx promptfoo
    eval` on each, against `foster serve` started as its own process (fresh weights, nothing of the
    run's model state), gets the answer the run scored on every held-out probe and passes exactly
    the probes the run scored as agreeing: promptfoo's pass rate is the fidelity the run reported
    for that bundle, probe by probe. (Bundles whose rendering the server applied twice answered
    differently on some probes, which this catches.)"""
    from foster.agent.runs import start_run
    from foster.prompts.export import run_context
    from foster.store.paths import foster_home
    from foster.store.runs import RunRegistry
    from servers import FosterServe

    target = "local/smollm2-135m-instruct"
    recorded = tmp_path / "teacher.jsonl"
    recorded.write_text("".join(json.dumps({"input": r["input"], "output": r["output"]}) + "\n"
                                for r in records("train.jsonl")[:32]))
    run_id = start_run({"teacher_records": str(recorded), "targets": [target], "task": "Route the support ticket.",
                        "temperatures": [0.0], "samples": 1, "synth_per_kind": 0, "sampled_probes": 1,
                        "holdout_fraction": 0.25, "min_heldout": 8, "knn_k": 4, "budget_calls": 2, "max_rounds": 1,
                        "max_new_tokens": 8, "lora_fallback": False})
    run_dir = RunRegistry().run_dir(run_id)
    report = json.loads((run_dir / "report.json").read_text())
    grid = json.loads((run_dir / "grid.json").read_text())
    best = Bundle.load(run_dir / "best_bundle.json")
    written = next(e for e in report["exports"] if e["format"] == "promptfoo")
    assert written["ok"] and written["n"] == len(grid["rows"]) == 8, written
    variants = [v for v in report["targets"][target]["variants"] if not v["baseline"]]
    assert best.id in {v["bundle_id"] for v in variants} and len(variants) >= 2, variants

    server = FosterServe.start(foster_home())
    try:
        for variant in variants:
            bundle = Bundle.load(variant["path"])
            if bundle.id == best.id:
                config = Path(written["path"])
            else:
                config = tmp_path / f"{bundle.id}.promptfooconfig.yaml"
                config.write_text(export_bundle(bundle, "promptfoo", run_context(run_dir)).text)
            scored = {row["input"]: row["answers"][f"{target}::{variant['variant']}"] for row in grid["rows"]}
            (tmp_path / bundle.id).mkdir()
            results = promptfoo_eval(config, tmp_path / bundle.id, server.url)
            assert sorted(r["vars"]["input"] for r in results) == sorted(scored)
            answers = {r["vars"]["input"]: r["response"]["output"] for r in results}
            assert answers == {i: a["answer"] for i, a in scored.items()}, variant["variant"]
            assert {r["vars"]["input"]: bool(r["success"]) for r in results} == {i: a["agree"] for i, a in scored.items()}
            assert sum(bool(r["success"]) for r in results) / len(results) == variant["fidelity"]
            for result in results:  # what promptfoo sent is what the bundle renders
                assert json.loads(result["prompt"]["raw"]) == bundle.messages(result["vars"]["input"])
    finally:
        server.stop()
