"""One end-to-end distillation on the real embedded model with a tiny budget."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).parents[1] / "examples" / "ticket_routing"


@pytest.mark.integration
def test_end_to_end_on_the_real_local_model(tmp_path):
    from foster.agent.runs import start_run
    from foster.prompts.bundle import Bundle
    from foster.store.runs import RunRegistry

    rows = [json.loads(l) for l in (EXAMPLE / "data" / "inputs.jsonl").read_text().splitlines()[:8]]
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    run_id = start_run({"teacher": "local/smollm2-135m-instruct", "targets": ["local/smollm2-135m-instruct"],
                        "inputs": str(inputs), "task": "Route the support ticket.", "temperatures": [0.0, 1.0],
                        "samples": 1, "synth_per_kind": 1, "budget_calls": 8, "max_rounds": 1, "knn_k": 2,
                        "max_new_tokens": 8, "lora_fallback": False})
    reg = RunRegistry()
    report = reg.read_json(run_id, "report.json")
    t = report["targets"]["local/smollm2-135m-instruct"]
    for key in ("zero_shot", "best"):
        assert 0.0 <= t[key]["fidelity"] <= 1.0
    assert 0.0 < report["ceiling"] <= 1.0
    assert t["calibration_gap"] is not None
    assert report["usage"]["local/smollm2-135m-instruct"]["calls"] > 0
    assert Bundle.load(reg.run_dir(run_id) / "best_bundle.json").messages("hi")[-1]["content"] == "hi"
