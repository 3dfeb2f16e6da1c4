"""The foster-vs-DSPy benchmark harness on scripted fakes: every arm runs, budgets hold, files are written."""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import fakes  # noqa: E402


def test_compare_harness_on_fakes(tmp_path, fake_model):
    from bench import compare

    teacher, _ = fake_model(fakes.teacher, "fake-teacher")
    target, target_backend = fake_model(fakes.target, "fake-target")
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("\n".join(json.dumps({"input": x}) for x in fakes.HISTORICAL[:12]) + "\n")
    domain = compare.Domain("fake_routing", teacher, str(inputs), "Route the ticket.", 8)
    settings = compare.Settings(budget_calls=6, max_rounds=1, synth_per_kind=1, samples=1, temperatures=(0.0, 1.0))

    result = compare.run(quick=True, target=target, home=str(tmp_path / "home"), out_dir=tmp_path / "results",
                         domain_list=[domain], settings=settings)

    d = result["domains"]["fake_routing"]
    assert "error" not in d, d
    assert set(d["arms"]) == set(compare.ARMS)
    assert d["answer_kind"] == "closed"
    budget = d["budget_calls"]
    assert budget >= 1
    for name in ("dspy-gepa", "dspy-mipro"):
        arm = d["arms"][name]
        assert arm["opt_calls"] <= budget  # the cap: no optimizer outspends foster
        assert arm["opt_calls"] + arm["eval_calls"] == arm["target_calls"]
        assert arm["eval_calls"] >= d["heldout_probes"] * (1 + len(settings.sample_plan()))
        assert arm["prompt_tokens"] > 0
    for name, arm in d["arms"].items():
        assert 0.0 <= arm["fidelity"] <= 1.0, name
        assert arm["ceiling"] == d["ceiling"]
        assert arm["target_calls"] >= 0 and arm["wall_s"] >= 0
    foster = d["arms"]["foster"]
    assert foster["opt_calls"] + foster["eval_calls"] == foster["target_calls"]
    assert foster["fidelity"] == foster["variants"][foster["variant"]]
    # the zero-shot arm asks the same bundle foster's own zero-shot baseline used: same answers, same score
    assert d["arms"]["zero-shot"]["fidelity"] == foster["report_zero_shot"]
    assert "fidelity_points_over_gepa" in d["goals"] and "in_model_share" in d["goals"]

    written = sorted(p.name for p in (tmp_path / "results").iterdir())
    assert any(n.endswith(".json") for n in written) and any(n.endswith(".md") for n in written)
    md = next((tmp_path / "results").glob("*.md")).read_text()
    assert "| fake_routing | foster |" in md and "dspy-gepa" in md
    assert target_backend.calls > 0
