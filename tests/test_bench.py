"""The foster-vs-DSPy benchmark harness on scripted fakes: every arm runs, budgets hold, files are written."""
from __future__ import annotations

import datetime as dt
import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import fakes


def test_compare_harness_on_fakes(tmp_path, fake_model):
    from bench import compare

    teacher, teacher_backend = fake_model(fakes.teacher, "fake-teacher")
    target, target_backend = fake_model(fakes.target, "fake-target")
    other, other_backend = fake_model(fakes.target, "fake-other")
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("\n".join(json.dumps({"input": x}) for x in fakes.HISTORICAL[:16]) + "\n")
    domain = compare.Domain("fake_routing", teacher, str(inputs), "Route the ticket.", 8)
    settings = compare.Settings(budget_calls=8, max_rounds=1, synth_per_kind=1, samples=1, temperatures=(0.0, 1.0),
                                knn_k=2)

    result = compare.run(quick=True, targets=[target, other], home=str(tmp_path / "home"),
                         out_dir=tmp_path / "results", domain_list=[domain], settings=settings)

    d = result["domains"]["fake_routing"]
    assert "error" not in d, d
    assert d["answer_kind"] == "closed" and set(d["targets"]) == {target, other}
    for t in d["targets"].values():
        assert "error" not in t, t
        assert set(t["arms"]) == set(compare.ARMS)
        budget = t["budget_calls"]
        assert budget >= 1
        for arm_name in ("dspy-gepa", "dspy-mipro", "dspy-knn"):
            arm = t["arms"][arm_name]
            assert arm["opt_calls"] <= budget  # the cap: no optimizer outspends foster on this target
            assert arm["opt_calls"] + arm["eval_calls"] == arm["target_calls"]
            assert arm["eval_calls"] >= d["heldout_probes"] * (1 + len(settings.sample_plan()))
            assert arm["prompt_tokens"] > 0
        assert t["arms"]["dspy-knn"]["opt_calls"] == 0  # retrieval only: compiling costs nothing
        copy = t["arms"]["copy"]
        assert copy["target_calls"] == 0 and copy["prompt_tokens"] == 0
        for arm_name, arm in t["arms"].items():
            iv = arm["interval"]
            assert iv["n"] == d["heldout_probes"] and iv["low"] <= arm["fidelity"] <= iv["high"], arm_name
            assert arm["vs_foster"]["low"] <= arm["vs_foster"]["value"] <= arm["vs_foster"]["high"]
            assert "vs_copy" in arm and arm["ceiling"] == d["ceiling"]
        foster = t["arms"]["foster"]
        assert foster["vs_foster"]["value"] == 0.0 and copy["vs_copy"]["value"] == 0.0
        assert foster["opt_calls"] + foster["eval_calls"] == foster["target_calls"]
        assert foster["fidelity"] == foster["variants"][foster["variant"]]
        # the zero-shot arm asks the same bundle foster's own zero-shot baseline used: same answers, same score
        assert t["arms"]["zero-shot"]["fidelity"] == foster["report_zero_shot"]
        assert t["arms"]["copy"]["fidelity"] == foster["nearest_copy"]
        assert {"shipped_vs_copy", "prompt_tokens_per_call"} <= set(t["goals"])

    written = sorted(p.name for p in (tmp_path / "results").iterdir())
    assert any(n.endswith(".json") for n in written) and any(n.endswith(".md") for n in written)
    md = next((tmp_path / "results").glob("*.md")).read_text()
    assert "| fake_routing | fake-target | foster (" in md and "dspy-knn" in md and "shipped_vs_copy" in md
    assert target_backend.calls > 0 and other_backend.calls > 0

    # the arms again on the finished run, one target, in a process of their own: the same probes and split,
    # the teacher not asked again, the results in their own file
    teacher_calls = teacher_backend.calls
    again = compare.run(quick=True, targets=[other], out_dir=tmp_path / "results", domain_list=[domain],
                        settings=settings, arms=("copy", "zero-shot"), from_run=Path(d["foster_run_dir"]), name="other")
    a = again["domains"]["fake_routing"]
    assert a["foster_run"] == d["foster_run"] and a["heldout_probes"] == d["heldout_probes"] and set(a["targets"]) == {other}
    for arm in ("copy", "zero-shot", "foster"):
        assert a["targets"][other]["arms"][arm]["fidelity"] == d["targets"][other]["arms"][arm]["fidelity"], arm
    assert teacher_backend.calls == teacher_calls
    assert (tmp_path / "results" / f"compare-{dt.date.today().isoformat()}-quick-other.json").is_file()


def test_freetext_saves_each_stage_as_it_is_measured(tmp_path, monkeypatch):
    """A stopped bench.freetext keeps what it measured: every save() after the run and after each
    adapter writes that section's figures (they used to be attached only when the part returned)."""
    import json as _json

    from bench import freetext

    saved: list[dict] = []
    monkeypatch.setattr(freetext, "_start", lambda config: ("run-1", {"held_out": 10, "train": 20, "targets": {}}))

    def lora(run_id, **options):
        saved.append(_json.loads(next(tmp_path.glob("freetext-*.json")).read_text()))
        if options.get("mix") == 0.0:
            raise KeyboardInterrupt  # stopped in the middle of the second adapter
        return {"fidelity": 0.5, "status": "done"}

    monkeypatch.setattr(freetext, "_lora", lora)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # the run's FOSTER_HOME: not left behind in /tmp
    settings = freetext.Settings(corpus=10, general_per_category=0)
    try:
        freetext.run(False, ("local/fake",), settings, ("relabel",), out_dir=tmp_path)
    except KeyboardInterrupt:
        pass
    first, second = saved
    assert first["relabel"]["run_id"] == "run-1" and first["relabel"]["held_out"] == 10
    assert second["relabel"]["lora mix 0.4"]["fidelity"] == 0.5


@pytest.mark.parametrize("argv, says", [
    (["--domains", "ticket_routing", "--from-run", "/nonexistent/run"], "no report.json"),
    (["--from-run", "/tmp"], "exactly one --domains"),
    (["--domains", "ticket_routing", "--name", "../../etc/x"], "--name"),
    (["--domains", "ticket_routing", "--seed", "-1"], "--seed"),
])
def test_compare_refuses_bad_flags_before_any_run(argv, says, capsys, monkeypatch):
    from bench import compare

    monkeypatch.setattr(compare, "run", lambda *a, **k: pytest.fail("a run started"))
    with pytest.raises(SystemExit) as e:
        compare.main(argv)
    assert e.value.code == 2 and says in capsys.readouterr().err


@pytest.mark.parametrize("argv, says", [
    (["--seconds", "-5"], "--seconds"), (["--seconds", "nan"], "--seconds"), (["--seconds", "inf"], "--seconds"),
    (["--adapters", "local/not-a-target"], "--adapters"), (["--synthetic", "-1"], "--synthetic"),
    (["--history", "0"], "--history"), (["--steps", "-3"], "--steps"), (["--corpus", "0"], "--corpus"),
    (["--sampled-probes", "0"], "--sampled-probes"), (["--history", "901"], "900 historical inputs"),
    (["--holdout-fraction", "1"], "--holdout-fraction"), (["--holdout-fraction", "0"], "--holdout-fraction"),
    (["--holdout-fraction", "nan"], "--holdout-fraction"), (["--history", "1e9"], "--history"),
])
def test_freetext_refuses_bad_flags_before_any_run(argv, says, capsys, monkeypatch):
    from bench import freetext

    monkeypatch.setattr(freetext, "run", lambda *a, **k: pytest.fail("a run started"))
    with pytest.raises(SystemExit) as e:
        freetext.main(argv)
    assert e.value.code == 2 and says in capsys.readouterr().err


def test_compare_seed_reaches_the_run(monkeypatch):
    from bench import compare

    seen = {}
    monkeypatch.setattr(compare, "run", lambda **k: seen.update(k))
    assert compare.main(["--domains", "clinc_travel", "--seed", "3"]) == 0
    assert seen["settings"].seed == 3 and seen["settings"].budget_calls == compare.FULL.budget_calls


def test_house_history_keeps_the_first_300_and_refuses_more_than_it_has(tmp_path):
    """--history 300 reads exactly data/history.jsonl (the earlier runs' inputs); more reads on into
    history_more.jsonl; more than both hold is an error, never a silently shorter history."""
    from bench import freetext

    files = freetext.house_history()
    first = [x for x in files[0].read_text().splitlines() if x.strip()]
    assert len(first) == 300
    assert Path(freetext._subset(files, 300, tmp_path / "a.jsonl")).read_text().splitlines() == first
    more = Path(freetext._subset(files, 600, tmp_path / "b.jsonl")).read_text().splitlines()
    assert more[:300] == first and len(set(more)) == 600
    with pytest.raises(ValueError, match="900"):
        freetext._subset(files, 901, tmp_path / "c.jsonl")


def test_recalled_answers_are_not_counted_as_evaluation_calls(tmp_path):
    """A recall rule answers without a call: counting its answers as evaluation calls left the plain-DSPy
    arms a budget of 1 target call (foster's calls minus more evaluation calls than were made)."""
    import json

    from bench.compare import _eval_calls

    answers = {"b1|t|p1|0.0|0": {"text": "a", "latency_s": 0.4, "recalled": False},
               "b1|t|p2|0.0|0": {"text": "a", "latency_s": 0.0, "recalled": True},
               "b1|t|p3|0.0|0": {"text": "a", "latency_s": 0.0},  # before the flag: no latency, no call
               "b1|t|p4|0.0|0": {"text": "a", "latency_s": 0.3},
               "b1|u|p1|0.0|0": {"text": "a", "latency_s": 0.2}}
    (tmp_path / "answers.json").write_text(json.dumps(answers))
    assert _eval_calls(tmp_path, ["t", "u"]) == {"t": 2, "u": 1}
    assert _eval_calls(tmp_path / "missing", ["t"]) == {"t": 0}


def test_freetext_markdown_prints_the_ceiling_with_its_interval():
    """bench.freetext's table carries the ceiling's own n and 95 % interval where the run recorded one,
    and the bare value for a report from before it."""
    from bench import freetext

    iv = {"value": 0.897, "low": 0.85, "high": 0.94, "n": 120, "method": "bootstrap"}
    arm = {"exact": {"value": 0.3, "low": 0.2, "high": 0.4, "n": 120, "method": "wilson"}, "fidelity": 0.3}
    target = {"ceiling": 0.897, "ceiling_interval": iv, "primary": "exact", "best bundle": arm}
    r = {"date": "2026-12-03", "mode": "full", "command": "python -m bench.freetext", "settings": {}, "wall_s": 1,
         "machine": {"cpus": 2, "load_average_at_start": [1.0]},
         "house_style": {"run_id": "r", "train": 485, "held_out": 120, "fidelity_method": "exact",
                         "targets": {"local/t": target}}}
    row = next(line for line in freetext.markdown(r).splitlines() if line.startswith("| local/t | best bundle"))
    assert "| 0.897 [0.85, 0.94] n=120 (exact) |" in row
    target.pop("ceiling_interval")
    row = next(line for line in freetext.markdown(r).splitlines() if line.startswith("| local/t | best bundle"))
    assert "| 0.897 (exact) |" in row
