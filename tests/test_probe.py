"""probe on scripted fakes: the whole history (and what is left out), a stratified sampled subset, the
concurrency bound, and no round that could add no probe."""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import fakes  # noqa: E402

INPUTS = [f"{x} (ticket {n})" for n in range(3) for x in fakes.HISTORICAL]  # 60 distinct inputs


def _inputs(tmp_path: Path, n: int) -> str:
    path = tmp_path / "inputs.jsonl"
    path.write_text("\n".join(json.dumps({"input": x}) for x in INPUTS[:n]) + "\n")
    return str(path)


def _runtime(run_id: str, **config):
    """A run created in the registry and the runtime its nodes get (as agent/runs.py builds it)."""
    from foster.agent.config import RunConfig
    from foster.agent.context import RunContext
    from foster.store.runs import RunRegistry

    RunRegistry().create(run_id, RunConfig.model_validate(config).model_dump(), status="running")
    return SimpleNamespace(context=RunContext.open(run_id))


def _probe(state: dict, runtime) -> dict:
    from foster.agent.probe import probe

    return {**state, **probe(state, runtime)}


def test_heldout_is_the_fraction_or_the_minimum_where_the_history_allows():
    from foster.agent.probe import heldout_size

    assert heldout_size(300, 0.3, 100) == 100  # the minimum beats the fraction
    assert heldout_size(400, 0.3, 100) == 120  # the fraction beats the minimum
    assert heldout_size(150, 0.3, 100) == 50  # as many held out as stay for training
    assert heldout_size(20, 0.3, 100) == 6  # too short a history: the fraction
    assert heldout_size(1, 0.3, 100) == 0


def test_stratified_subset_covers_every_cluster_and_answer_before_repeating():
    from foster.agent.probe import stratified_subset

    probes = [{"id": f"p{i}", "split": "train"} for i in range(40)]
    clusters = {f"p{i}": i % 4 for i in range(40)}
    # answer "rare" only on two probes of cluster 3
    greedy = {f"p{i}": ("rare" if i in (3, 7) else f"a{i % 2}") for i in range(40)}
    chosen = stratified_subset(probes, greedy, clusters, 8, seed=0, by_answer=True)
    strata = {(clusters[i], greedy[i]) for i in chosen}
    assert len(chosen) == 8 and len(set(chosen)) == 8
    assert strata == {(clusters[p["id"]], greedy[p["id"]]) for p in probes}
    assert any(greedy[i] == "rare" for i in chosen)
    assert chosen == stratified_subset(probes, greedy, clusters, 8, seed=0, by_answer=True)  # seeded, stable


def test_an_input_file_over_the_cap_reports_what_is_left_out_and_round_2_does_not_run(tmp_path, fake_model):
    from foster.agent.decide import decide
    from foster.store.runs import RunRegistry

    teacher, t_backend = fake_model(fakes.teacher, "fake-teacher")
    target, g_backend = fake_model(fakes.target, "fake-target")
    rt = _runtime("capped", teacher=teacher, targets=[target], inputs=_inputs(tmp_path, 30), max_probes=20,
                  temperatures=[0.0, 1.0], samples=2, sampled_probes=5, max_rounds=2)
    state = _probe({"run_id": "capped"}, rt)
    h = state["probing"]["history"]
    assert (h["rows"], h["kept"], h["left_out"]) == (30, 20, 10)
    assert "--max-probes 20" in h["reason"]
    assert any("10 left out (--max-probes 20" in line for line in json.loads(
        (RunRegistry().run_dir("capped") / "probing.json").read_text())["summary"])
    assert any("10 left out" in e.get("message", "") for e in RunRegistry().events("capped"))
    # the history fills the cap: no synthetic probe displaces it, the generator is never asked
    assert len(state["probes"]) == 20 and {p["kind"] for p in state["probes"]} == {"historical"}
    assert g_backend.calls == 0
    # every probe its greedy answer, only the stratified subset sampled: 20 + 5 × 2 teacher calls
    assert t_backend.calls == 20 + 5 * 2
    assert sum(len(v) > 1 for v in state["teacher"].values()) == 5
    # still improving after one round, but the cap leaves no room for a probe: no round 2
    out = decide({**state, "history": [0.4]}, rt)
    assert out["next"] != "probe" and out["verdict"] == "plateau below threshold"
    assert "probe cap is reached" in out["verdict_reason"]
    # with room under the cap the same history would go on to round 2
    rt.context.config = rt.context.config.model_copy(update={"max_probes": 100})
    assert decide({**state, "history": [0.4]}, rt)["next"] == "probe"


def test_synthetic_probes_come_on_top_of_the_history(tmp_path, fake_model):
    teacher, _ = fake_model(fakes.teacher, "fake-teacher")
    target, g_backend = fake_model(fakes.target, "fake-target")
    rt = _runtime("ontop", teacher=teacher, targets=[target], inputs=_inputs(tmp_path, 12), max_probes=100,
                  temperatures=[0.0], synth_per_kind=2)
    state = _probe({"run_id": "ontop"}, rt)
    kinds = [p["kind"] for p in state["probes"]]
    assert kinds.count("historical") == 12 and len(kinds) > 12
    assert g_backend.calls == 10  # 5 kinds × 2, asked before the cap, not cut after


def _counting_in_flight(answer):
    """`answer` slowed down, with the most calls in flight at once in `seen["max"]`."""
    lock = threading.Lock()
    seen = {"now": 0, "max": 0}

    def slow(req):
        with lock:
            seen["now"] += 1
            seen["max"] = max(seen["max"], seen["now"])
        time.sleep(0.05)  # long enough for the pool's other workers to be in flight too
        with lock:
            seen["now"] -= 1
        return answer(req)

    return slow, seen


def test_concurrency_bound_is_respected(tmp_path, fake_model, monkeypatch):
    slow_teacher, seen = _counting_in_flight(fakes.teacher)

    from foster.agent import gateway

    assert gateway.default_concurrency("local/anything") == 1  # in-process models are CPU-bound
    assert gateway.default_concurrency("openai/old-fine-tune") == 8
    monkeypatch.setenv("FOSTER_LOCAL_CONCURRENCY", "3")
    teacher, backend = fake_model(slow_teacher, "fake-teacher")
    target, _ = fake_model(fakes.target, "fake-target")
    rt = _runtime("bounded", teacher=teacher, targets=[target], inputs=_inputs(tmp_path, 24), max_probes=24,
                  temperatures=[0.0])
    state = _probe({"run_id": "bounded"}, rt)
    assert backend.calls == 24 and len(state["teacher"]) == 24
    assert 1 < seen["max"] <= 3
    calls = state["probing"]["calls"][teacher]
    assert calls["calls"] == 24 and calls["concurrency"] == 3 and calls["calls_per_s"] > 0


def test_a_resumed_probe_asks_nothing_twice(tmp_path, fake_model):
    """The observations of a first (interrupted) pass are in Chroma: a second pass only reads them."""
    teacher, backend = fake_model(fakes.teacher, "fake-teacher")
    target, _ = fake_model(fakes.target, "fake-target")
    rt = _runtime("again", teacher=teacher, targets=[target], inputs=_inputs(tmp_path, 10), max_probes=10,
                  temperatures=[0.0, 1.0], samples=2, sampled_probes=4)
    first = _probe({"run_id": "again"}, rt)
    n = backend.calls
    second = _probe({"run_id": "again"}, rt)  # the same round from the start, as after a kill
    assert backend.calls == n == 10 + 4 * 2
    assert second["teacher"] == first["teacher"]


def test_map_concurrently_raises_the_first_error_after_the_calls_in_flight():
    from foster.agent.gateway import map_concurrently

    finished = []

    def fn(i):
        if i == 2:
            raise RuntimeError("boom")
        time.sleep(0.01)
        finished.append(i)
        return i

    with pytest.raises(RuntimeError, match="boom"):
        list(map_concurrently(fn, list(range(50)), 4))
    assert len(finished) < 50  # what had not started was cancelled


def test_evaluation_runs_target_calls_concurrently_in_order_and_asks_nothing_twice(tmp_path, fake_model, monkeypatch):
    """Held-out evaluation uses the same per-model bound as probing; answers stay in probe order and
    a second pass (a resumed run) is served from the answer cache."""
    from foster.agent.evaluate import AnswerCache, evaluate_variant
    from foster.prompts.bundle import Bundle

    slow_target, seen = _counting_in_flight(fakes.teacher)  # the right label for every input: order is checkable

    monkeypatch.setenv("FOSTER_LOCAL_CONCURRENCY", "3")
    target, backend = fake_model(slow_target, "slow-target")
    rt = _runtime("evalbound", teacher=target, targets=[target], inputs=_inputs(tmp_path, 12), temperatures=[0.0, 1.0],
                  samples=2)
    probes = [{"id": f"p{n}", "text": x} for n, x in enumerate(INPUTS[:12])]
    bundle = Bundle(teacher=target, targets=[target], system_prompt="Route the ticket.")
    cache = AnswerCache(rt.context)
    ev = evaluate_variant(rt.context, cache, bundle, target, probes, sample=True)
    assert backend.calls == 12 * 3 and 1 < seen["max"] <= 3
    assert ev["greedy"] == [fakes.true_label(x) for x in INPUTS[:12]]
    assert all(len(ev["samples"][p["id"]]) == 3 for p in probes)
    cache.flush()  # evaluate_target flushes after each variant
    again = evaluate_variant(rt.context, AnswerCache(rt.context), bundle, target, probes, sample=True)
    assert backend.calls == 36 and again["greedy"] == ev["greedy"]
