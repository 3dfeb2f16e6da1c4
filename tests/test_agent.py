"""The distillation agent on scripted fakes: routing, nodes, recovery paths, bad input, kill and resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import fakes  # noqa: E402

from foster.agent.decide import next_node, route, verdict  # noqa: E402


def dumb_target(req) -> str:
    """A target that never learns the task (it still writes probes when asked to, like the fake target)."""
    text = fakes._last_user(req.messages_or_prompt)
    if "Reply with the message only" in text:
        return fakes.target(req)
    return "I am not sure."


def sections(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("## ")]


def write_jsonl(path: Path, rows) -> str:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


@pytest.fixture
def domain(tmp_path, fake_model):
    teacher, t_backend = fake_model(fakes.teacher, "fake-teacher")
    target, g_backend = fake_model(fakes.target, "fake-target")
    inputs = write_jsonl(tmp_path / "inputs.jsonl", [{"input": x} for x in fakes.HISTORICAL])
    return {"teacher": teacher, "target": target, "inputs": inputs, "t": t_backend, "g": g_backend, "dir": tmp_path}


# -- decide -----------------------------------------------------------------------------------------

def test_verdict_threshold_met():
    assert verdict([0.5, 0.93], 0.9, 2, 3, 0.02) == "threshold met"
    assert route({"verdict": "threshold met"}) == "bundle"


def test_verdict_still_improving():
    assert verdict([0.5], 0.9, 1, 3, 0.02) == "still improving"
    assert verdict([0.5, 0.6], 0.9, 2, 3, 0.02) == "still improving"
    assert route({"verdict": "still improving"}) == "probe"


def test_verdict_plateau():
    assert verdict([0.5, 0.51], 0.9, 2, 3, 0.02) == "plateau below threshold"  # gain < δ
    assert verdict([0.5, 0.7], 0.9, 3, 3, 0.02) == "plateau below threshold"  # out of rounds
    assert next_node("plateau below threshold", lora_fallback=True) == "lora"
    assert next_node("plateau below threshold", lora_fallback=False) == "bundle"
    # the router follows decide's choice (kept in state, so a fork at decide can name it)
    assert route({"verdict": "plateau below threshold", "next": "bundle"}) == "bundle"
    assert route({"verdict": "threshold met", "next": "lora"}) == "lora"


def test_verdict_stopped_by_cap():
    assert verdict([0.4], 0.9, 1, 3, 0.02, "call cap reached").startswith("stopped")


# -- nodes on fakes ----------------------------------------------------------------------------------

def test_characterize_spec_and_ceiling():
    from foster.agent.characterize import build_spec

    probes = [{"id": f"p{i}", "text": t, "split": "heldout" if i < 3 else "train", "kind": "historical"}
              for i, t in enumerate(fakes.HISTORICAL)]
    teacher = {p["id"]: [{"t": 0.0, "i": 0, "output": fakes.true_label(p["text"])},
                         {"t": 1.0, "i": 0, "output": "OTHER" if k % 4 == 0 else fakes.true_label(p["text"])}]
               for k, p in enumerate(probes)}
    spec = build_spec(probes, teacher)
    assert spec["answer_kind"] == "closed"
    assert set(spec["inventory"]) <= set(fakes.LABELS)
    # probes whose two samples disagree contribute 0.5 to the ceiling, the others 1
    disagree = sum(1 for k, p in enumerate(probes) if k % 4 == 0 and fakes.true_label(p["text"]) != "OTHER")
    assert spec["ceiling"] == pytest.approx(1 - 0.5 * disagree / len(probes), abs=1e-3)
    assert all("cluster" in v for v in spec["probes"].values())


def test_discriminative_phrases_find_the_keywords():
    from foster.agent.mine import discriminative_phrases

    items = [(t, fakes.true_label(t)) for t in fakes.HISTORICAL]
    phrases = discriminative_phrases(items, min_count=2)
    assert any("refund" in g or "charged" in g for g in phrases["BILL-REFUND"])
    assert any("parcel" in g or "late" in g for g in phrases["SHIP-LATE"])


@pytest.fixture
def dumb(fake_model):
    return fake_model(dumb_target, "fake-dumb")[0]


def test_full_run_on_fakes(domain, dumb):
    from foster.agent.runs import start_run
    from foster.prompts.bundle import Bundle
    from foster.store.runs import RunRegistry

    run_id = start_run({"teacher": domain["teacher"], "targets": [domain["target"]], "inputs": domain["inputs"],
                        "task": "Route the ticket.", "budget_calls": 10, "max_rounds": 1, "threshold": 0.5})
    reg = RunRegistry()
    d = reg.run_dir(run_id)
    report = json.loads((d / "report.json").read_text())
    t = report["targets"][domain["target"]]
    assert t["zero_shot"]["fidelity"] < t["best"]["fidelity"]  # the fake only knows labels it is shown
    assert 0 < report["ceiling"] <= 1 and t["calibration_gap"] is not None
    gap = t["calibration_gap_interval"]  # the gap has its own n and bootstrap interval, printed in report.md
    assert gap["value"] == t["calibration_gap"] and gap["low"] <= gap["value"] <= gap["high"] and gap["n"] > 0
    assert f"| {gap['value']:.3f} [{gap['low']:.2f}, {gap['high']:.2f}] n={gap['n']} |" in (d / "report.md").read_text()
    # verdict "threshold met": straight to bundle, no fallback
    assert t["best"]["fidelity"] >= 0.5 and report["verdict"] == "threshold met"
    assert "lora" not in report and "## LoRA fallback" not in (d / "report.md").read_text()
    # closed labels: no free-text panel, no free-text line in the summary
    assert "## Free-text fidelity" not in (d / "report.md").read_text() and "free text:" not in (d / "report.md").read_text()
    assert report["best_bundle"]["variant"] == t["best"]["variant"]
    b = Bundle.load(d / "best_bundle.json")
    assert b.messages("my parcel is late")[-1]["content"] == "my parcel is late"
    assert (d / "report.md").exists() and (d / "grid.json").exists()
    assert (d / "spec" / "test_acceptance.py").exists()
    assert reg.get(run_id).status == "done"
    held = [p for p in json.loads((d / "probes-round1.json").read_text()) if p["split"] == "heldout"]
    assert len(held) == round(len(fakes.HISTORICAL) * 0.3)

    # the exported acceptance test runs under pytest against the run that wrote it: the teacher itself
    # passes it, a target that never learned the task fails it
    accept = d / "spec" / "test_acceptance.py"
    for model, bundle, expected in ((domain["teacher"], None, 0), (domain["target"], d / "best_bundle.json", 0),
                                    (domain["teacher"].replace("fake-teacher", "fake-dumb"), None, 1)):
        os.environ["FOSTER_ACCEPT_MODEL"] = model
        os.environ.pop("FOSTER_ACCEPT_BUNDLE", None)
        if bundle:
            os.environ["FOSTER_ACCEPT_BUNDLE"] = str(bundle)
        try:
            code = pytest.main([str(accept), "-q", "-p", "no:cacheprovider", "--rootdir", str(accept.parent)])
        finally:
            os.environ.pop("FOSTER_ACCEPT_MODEL", None)
            os.environ.pop("FOSTER_ACCEPT_BUNDLE", None)
        assert code == expected, (model, bundle)


def test_records_path(domain, fake_model):
    from foster.agent.runs import start_run
    from foster.store.runs import RunRegistry

    recs = write_jsonl(domain["dir"] / "rec.jsonl", [{"input": x, "output": fakes.true_label(x)} for x in fakes.HISTORICAL])
    run_id = start_run({"teacher_records": recs, "targets": [domain["target"]], "budget_calls": 5, "max_rounds": 1,
                        "primary_metric": "structure"})
    report = RunRegistry().read_json(run_id, "report.json")
    assert report["path"] == "records"
    assert any("carry the old model's errors" in n for n in report["notes"])
    # a free-text option on a closed-label teacher is said not to apply, and scores nothing
    assert report["answer_kind"] == "closed" and "exact match" in report["fidelity_method"]
    assert any("primary metric structure not used" in n for n in report["notes"])
    assert domain["t"].calls == 0


def test_relabel_path_lists_disagreements(domain):
    from foster.agent.runs import start_run
    from foster.store.runs import RunRegistry

    gold = write_jsonl(domain["dir"] / "gold.jsonl", [{"input": x, "output": fakes.true_label(x)} for x in fakes.HISTORICAL])
    run_id = start_run({"train_data": gold, "targets": [domain["target"]], "budget_calls": 5, "max_rounds": 1,
                        "lora_fallback": False})
    reg = RunRegistry()
    report = reg.read_json(run_id, "report.json")
    assert report["path"] == "relabel"
    grid = reg.read_json(run_id, "grid.json")
    best = report["best_bundle"]
    key = f"{best['target']}::{best['variant']}"
    answered = {r["input"]: r["answers"][key] for r in grid["rows"]}
    # one entry per held-out input where the target, through the shipped bundle, differs from the corpus
    assert [d["input"] for d in report["disagreements"]] == [i for i, a in answered.items() if not a["agree"]]
    for d in report["disagreements"]:
        assert d["gold"] == fakes.true_label(d["input"])  # the corpus's label, not the target's
        assert d["answer"] == answered[d["input"]]["answer"] and d["answer"] != d["gold"]
    md = (reg.run_dir(run_id) / "report.md").read_text()
    assert all(repr(d["input"]) in md for d in report["disagreements"][:50])


def test_relabel_disagreements_name_every_miss_of_a_target_that_never_learns(domain, dumb):
    from foster.agent.runs import start_run
    from foster.store.runs import RunRegistry

    gold = write_jsonl(domain["dir"] / "gold.jsonl", [{"input": x, "output": fakes.true_label(x)} for x in fakes.HISTORICAL])
    run_id = start_run({"train_data": gold, "targets": [dumb], "budget_calls": 5, "max_rounds": 1,
                        "lora_fallback": False})
    report = RunRegistry().read_json(run_id, "report.json")
    assert len(report["disagreements"]) == report["held_out"] > 0
    assert {d["answer"] for d in report["disagreements"]} == {"I am not sure."}
    assert {d["gold"] for d in report["disagreements"]} <= set(fakes.LABELS)


def test_call_cap_stops_cleanly(domain):
    from foster.agent.runs import start_run
    from foster.store.runs import RunRegistry

    run_id = start_run({"teacher": domain["teacher"], "targets": [domain["target"]], "inputs": domain["inputs"],
                        "max_calls": 30, "max_rounds": 1})
    st = RunRegistry().get(run_id)
    assert st.status == "stopped"
    assert domain["t"].calls + domain["g"].calls <= 31
    report = RunRegistry().read_json(run_id, "report.json")
    assert report["verdict"].startswith("stopped: call cap reached") and "lora" not in report  # no fallback


# -- each verdict's route, on a target that never learns the task -------------------------------------

def _plateau_run(domain, dumb, **config) -> tuple[str, dict, str]:
    from foster.agent.runs import start_run
    from foster.store.runs import RunRegistry

    run_id = start_run({"teacher": domain["teacher"], "targets": [dumb], "inputs": domain["inputs"],
                        "task": "Route the ticket.", "budget_calls": 4, "synth_per_kind": 1, "max_rounds": 1,
                        **config})
    reg = RunRegistry()
    return run_id, reg.read_json(run_id, "report.json"), (reg.run_dir(run_id) / "report.md").read_text()


def test_plateau_falls_back_to_lora_and_its_failure_is_reported_not_swallowed(domain, dumb):
    from foster.agent.lora.job import job_status
    from foster.store.runs import RunRegistry

    run_id, report, md = _plateau_run(domain, dumb)
    assert report["verdict"] == "plateau below threshold"
    lo = report["lora"]
    # a registered fake has no weights to train: the fallback fails before spending a call, and says why
    assert lo["status"] == "failed" and "registered backend without weights" in lo["error"], lo
    assert job_status(run_id).status == "failed"
    assert report["best_artifact"]["kind"] == "bundle" and report["best_bundle"]["variant"] != "lora"
    assert "## LoRA fallback" in md and f"- failed: {lo['error']}" in md
    assert any(e["node"] == "lora" and e["kind"] == "error" for e in RunRegistry().events(run_id))


def test_plateau_without_the_fallback_goes_to_bundle(domain, dumb):
    run_id, report, md = _plateau_run(domain, dumb, lora_fallback=False)
    assert report["verdict"] == "plateau below threshold"
    assert "lora" not in report and "## LoRA fallback" not in md


def test_still_improving_probes_again_before_the_plateau(domain, dumb):
    run_id, report, _ = _plateau_run(domain, dumb, max_rounds=2, lora_fallback=False)
    assert report["rounds"] == 2 and len(report["history"]) == 2  # round 1 said "still improving"
    assert report["verdict"] == "plateau below threshold"


def test_lora_on_a_finished_run_is_a_fork_that_writes_the_same_report(domain, dumb):
    """`foster lora RUN` on a run that stopped at the plateau without the fallback: the graph forked at
    decide runs lora → bundle, and report.md and best_bundle come out as in a run that fell back itself."""
    from foster.agent.runs import run_lora, run_state

    fell_back, report_a, md_a = _plateau_run(domain, dumb)
    finished, report_b, md_b = _plateau_run(domain, dumb, lora_fallback=False)
    assert "## LoRA fallback" not in md_b
    section = run_lora(finished, show_bar=False)
    from foster.store.runs import RunRegistry

    reg = RunRegistry()
    report_b = reg.read_json(finished, "report.json")
    md_b = (reg.run_dir(finished) / "report.md").read_text()
    assert section == report_b["lora"] and section["status"] == report_a["lora"]["status"] == "failed"
    assert sections(md_a) == sections(md_b)
    assert set(report_a) == set(report_b)
    assert set(report_a["best_bundle"]) == set(report_b["best_bundle"])
    assert run_state(finished)["next"] == "lora" and reg.get(finished).status == "done"


# -- bad input: exit 2, one line, nothing written -----------------------------------------------------

def _cli(argv, capsys):
    from foster.ui.cli import main

    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def _no_runs():
    home = Path(os.environ["FOSTER_HOME"]) / "runs"
    return not home.exists() or not any(home.iterdir())


@pytest.mark.parametrize("case", ["malformed", "empty", "unknown_model", "threshold_high", "threshold_zero"])
def test_bad_input_exits_2_with_one_line(case, domain, capsys):
    args = ["distill", "--teacher", domain["teacher"], "--target", domain["target"], "--inputs", domain["inputs"], "--quiet"]
    expect = ""
    if case == "malformed":
        p = domain["dir"] / "bad.jsonl"
        p.write_text('{"input": "ok"}\n{"input": "broken\n')
        args[args.index("--inputs") + 1] = str(p)
        expect = f"{p}:2"
    elif case == "empty":
        p = domain["dir"] / "empty.jsonl"
        p.write_text("")
        args[args.index("--inputs") + 1] = str(p)
        expect = str(p)
    elif case == "unknown_model":
        args[args.index("--target") + 1] = "nope/x"
        expect = "--target"
    else:
        args += ["--threshold", "1.5" if case == "threshold_high" else "0"]
        expect = "--threshold"
    code, err = _cli(args, capsys)
    assert code == 2
    assert len(err) == 1 and expect in err[0], err
    assert _no_runs()


# -- kill during probing, then resume --------------------------------------------------------------

def test_sigkill_during_probe_then_resume_repeats_no_teacher_call(tmp_path):
    inputs = write_jsonl(tmp_path / "inputs.jsonl", [{"input": x} for x in fakes.HISTORICAL])
    log = tmp_path / "calls.jsonl"
    script = str(Path(__file__).parent / "fake_run.py")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.Popen([sys.executable, script, "start", "killme", inputs, str(log)], env=env)
    # the wait ends as soon as 25 calls are logged; the generous deadline only matters on a loaded machine,
    # where importing the stack in the child alone can take minutes
    deadline = time.time() + 600
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 25):
        assert proc.poll() is None, f"the child exited ({proc.returncode}) before 25 teacher calls"
        time.sleep(0.1)
    assert log.exists(), "the child logged no teacher call within 600 s"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = log.read_text().splitlines()
    assert len(before) >= 25, "the teacher was never called before the kill"
    home = Path(os.environ["FOSTER_HOME"])
    probes_file = home / "runs" / "killme" / "probes-round1.json"
    split_before = {p["id"]: p["split"] for p in json.loads(probes_file.read_text())}
    subprocess.run([sys.executable, script, "resume", "killme", inputs, str(log)], env=env, check=True, timeout=300)
    calls = [tuple(json.loads(x)) for x in log.read_text().splitlines()]
    repeats = len(calls) - len(set(calls))
    # at most the one call in flight at the moment of the kill may be repeated (its answer was never stored)
    assert repeats <= 1, f"{repeats} teacher calls repeated"
    split_after = {p["id"]: p["split"] for p in json.loads(probes_file.read_text())}
    assert split_after == split_before
    report = json.loads((home / "runs" / "killme" / "report.json").read_text())
    assert report["held_out"] == sum(1 for s in split_before.values() if s == "heldout")


def test_the_demo_config_and_every_config_flag_reach_the_run_config():
    """demo.json's settings (its held-out share, its answer length) were once cut to the CLI's flags
    and the demo silently ran with the defaults; every RunConfig field must get through."""
    import argparse

    from foster.agent.config import RunConfig
    from foster.ui.cmd_distill import _distill_arguments, demo_config, make_config

    demo = json.loads((Path(__file__).resolve().parents[1] / "examples" / "ticket_routing" / "demo.json").read_text())
    config = make_config(demo_config())
    for key, value in demo.items():
        if key in RunConfig.model_fields and key not in ("inputs", "hand_written", "teacher"):
            assert getattr(config, key) == value, key
    p = argparse.ArgumentParser()
    _distill_arguments(p)
    args = p.parse_args(["--teacher", "local/x", "--target", "local/y", "--inputs", "in.jsonl",
                         "--holdout-fraction", "0.2", "--max-new-tokens", "8"])
    values = vars(args)
    assert {k for k in values if k in RunConfig.model_fields} >= {"holdout_fraction", "max_new_tokens", "min_heldout"}
