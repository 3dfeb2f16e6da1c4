"""The re-label path's training data: the target re-labels the corpus, the label policy decides what is
trained (gold | target | agree), and general rows are mixed in at --mix."""
from __future__ import annotations

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import fakes


def target(req) -> str:
    """Routes like the gold labels except on password messages (it calls them billing); writes and
    answers general questions when asked to."""
    text = fakes._last_user(req.messages_or_prompt)
    if "short questions or requests" in text:  # the general-instruction writer
        topic = text.split("assistant about ")[-1].split(".")[0]
        return "\n".join(f"{i}. {q} {topic}?" for i, q in enumerate(["What is", "Tell me about", "Explain"], 1))
    if "?" in text:  # answering a general question
        return f"A short answer about {text[:20]}."
    label = fakes.true_label(text)
    return "BILL-REFUND" if "password" in text.lower() else f"{label}."


@pytest.fixture
def relabel_run(tmp_path, fake_model):
    from foster.agent.characterize import build_spec
    from foster.agent.config import RunConfig
    from foster.agent.context import RunContext
    from foster.store.runs import RunRegistry

    model, _ = fake_model(target, "relabel-target")
    corpus = tmp_path / "train.jsonl"
    corpus.write_text("".join(json.dumps({"input": t, "output": fakes.true_label(t)}) + "\n" for t in fakes.HISTORICAL))
    config = RunConfig(train_data=str(corpus), targets=[model], task="Route the ticket.")
    RunRegistry().create("relabel", config.model_dump(), status="done")
    ctx = RunContext.open("relabel")
    probes = [{"id": f"p{i}", "text": t, "split": "heldout" if i % 5 == 0 else "train", "kind": "corpus", "round": 1,
               "gold": fakes.true_label(t)} for i, t in enumerate(fakes.HISTORICAL)]
    obs = {p["id"]: [{"t": 0.0, "i": 0, "output": p["gold"]}] for p in probes}
    state = {"run_id": "relabel", "probes": probes, "teacher": obs, "spec": build_spec(probes, obs),
             "evaluation": {"targets": {}}}
    return ctx, state, model


def _build(ctx, state, model, tmp_path, **opts):
    from foster.agent.lora import data, node
    from foster.agent.lora.job import LoraOptions
    from foster.prompts.bundle import Bundle

    options = LoraOptions(synthetic=0, **opts)
    job = tmp_path / f"job-{opts.get('labels')}-{opts.get('mix')}"
    job.mkdir()
    bundle = Bundle.load(node.build_bundle(ctx, state, model, job))
    return data.build(ctx, state, job, bundle, model, options)


def test_label_policy_decides_what_is_trained(relabel_run, tmp_path):
    ctx, state, model = relabel_run
    train = {p["text"]: p["gold"] for p in state["probes"] if p["split"] == "train"}
    password = {t for t in train if "password" in t.lower()}
    assert password

    rows, info = _build(ctx, state, model, tmp_path, labels="gold", mix=0.0)
    task = [r for r in rows if r["source"] != "general"]
    assert len(task) == len(train) and all(r["output"] == train[r["input"]] for r in task)
    rl = info["relabel"]
    assert rl["target_agrees"] == len(train) - len(password) and rl["disagreements_total"] == len(password)
    assert {d["input"] for d in rl["disagreements"]} == password and all(d["target"] == "BILL-REFUND" for d in rl["disagreements"])

    rows, info = _build(ctx, state, model, tmp_path, labels="target", mix=0.0)
    out = {r["input"]: r["output"] for r in rows}
    assert all(out[t] == "BILL-REFUND" for t in password)  # the target's own labels, wrong ones included
    assert info["relabel"]["rows_from_relabel"] == len(train)

    rows, info = _build(ctx, state, model, tmp_path, labels="agree", mix=0.0)
    by = {r["input"]: r for r in rows}
    assert all(by[t]["output"] == train[t] and by[t]["source"] == "gold" for t in password)  # gold where it disagrees
    agreeing = [t for t in train if t not in password]
    assert all(by[t]["source"] == "relabel" and by[t]["output"] == train[t] for t in agreeing)  # its label, normalised
    assert (info["relabel"]["rows_from_relabel"], info["relabel"]["rows_from_gold"]) == (len(agreeing), len(password))
    # held-out corpus rows are never trained
    held = {p["text"] for p in state["probes"] if p["split"] == "heldout"}
    assert not held & set(by)


@pytest.mark.parametrize("mix", [0.0, 0.4])
def test_general_rows_are_mixed_in_at_the_asked_share(relabel_run, tmp_path, mix):
    ctx, state, model = relabel_run
    rows, info = _build(ctx, state, model, tmp_path, labels="agree", mix=mix)
    assert info["general_fraction"] == pytest.approx(mix, abs=0.03)
    general = [r for r in rows if r["source"] == "general"]
    assert (len(general) > 0) == (mix > 0)
    assert all(r["request"]["messages"][0]["role"] == "user" for r in general)  # general use: no task prompt
