"""The LoRA fallback: training data and its mix, the discriminator, the fine-tuning JSONL validator,
training that resumes after a stop, and the node end to end on a tiny model with scripted fakes."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import fakes  # noqa: E402

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer Llama with a 300-token BPE and a ChatML template (~10 MB, < 1 s)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    import torch

    torch.manual_seed(0)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([t for t in fakes.HISTORICAL] + fakes.LABELS, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.chat_template = CHAT_TEMPLATE
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                         initializer_range=0.3))  # large enough for a LoRA to move its logits
    d = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(str(d))
    tok.save_pretrained(str(d))
    return d


def _rows(n: int = 12) -> list[dict]:
    from foster.agent.lora.data import general_row

    rows = []
    for t in fakes.HISTORICAL[:n]:
        rows.append({"source": "teacher", "input": t, "output": fakes.true_label(t), "primary": True, "truncated": False,
                     "request": {"messages": [{"role": "system", "content": "Route it."}, {"role": "user", "content": t}]}})
    rows.append(general_row("what is the weather like", "sunny and warm", truncated=False))
    return rows


# -- data --------------------------------------------------------------------------------------------

def _row(i, source):
    return {"source": source, "input": f"{source} {i}", "output": "x", "request": {"messages": []}}


@pytest.mark.parametrize("fraction", [0.3, 0.4, 0.5])
def test_mix_puts_the_asked_share_of_general_rows(fraction):
    from foster.agent.lora.data import general_needed, mix, stats

    task = [_row(i, "teacher") for i in range(60)]
    for n_general in (5, 200):  # too few general rows (repeated) and plenty (sampled without repeats)
        general = [_row(i, "general") for i in range(n_general)]
        rows = mix(task, general, fraction, seed=1)
        s = stats(rows)
        assert s["by_source"]["teacher"] == 60
        assert s["by_source"]["general"] == general_needed(60, fraction)
        assert s["general_fraction"] == pytest.approx(fraction, abs=0.01)
        if n_general >= s["by_source"]["general"]:
            assert len({r["input"] for r in rows if r["source"] == "general"}) == s["by_source"]["general"]
    assert stats(mix(task, [], 0.4))["by_source"] == {"teacher": 60}


def test_teacher_rows_use_train_probes_and_keep_uncertain_samples():
    from foster.agent.characterize import build_spec
    from foster.agent.lora.data import teacher_rows
    from foster.prompts.bundle import Bundle

    probes = [{"id": f"p{i}", "text": t, "split": "heldout" if i < 4 else "train", "kind": "historical"}
              for i, t in enumerate(fakes.HISTORICAL)]
    teacher = {p["id"]: [{"t": 0.0, "i": 0, "output": fakes.true_label(p["text"])},
                         {"t": 1.0, "i": 0, "output": "OTHER" if k % 5 == 0 else fakes.true_label(p["text"])}]
               for k, p in enumerate(probes)}
    spec = build_spec(probes, teacher)
    bundle = Bundle(teacher="t", targets=["local/x"], system_prompt="Route it.")
    rows = teacher_rows(bundle, "local/x", probes, teacher, spec)
    held = {p["text"] for p in probes if p["split"] == "heldout"}
    assert not held & {r["input"] for r in rows}
    unsure = [p for p in probes[4:] if spec["probes"][p["id"]]["entropy"] > 0]
    assert unsure  # the fixture has some
    assert len(rows) == len(probes) - 4 + len(unsure)  # one row per sure probe, every sample of unsure ones
    for p in unsure:
        assert sorted(r["output"] for r in rows if r["input"] == p["text"]) == sorted(o["output"] for o in teacher[p["id"]])
    assert rows[0]["request"]["messages"][0] == {"role": "system", "content": "Route it."}


def test_discriminator_keeps_real_like_inputs_and_drops_off_distribution_ones():
    from foster.agent.lora.discriminator import judge

    real = fakes.HISTORICAL
    like = ["I need a refund for the jacket I sent back", "my password reset does not work, locked out again",
            "the parcel is two weeks late, where is it", "you charged my card twice for one order",
            "my account got locked after the update", "refund still missing for order 5521",
            "package delivery is late, tracking has not moved", "cannot log in, password rejected"]
    off = ["Write a sonnet about the autumn moon", "What is the integral of x squared?",
           "Give me a recipe for banana bread", "Who won the 1998 football world cup?",
           "Translate 'good night' into Japanese", "Explain quantum entanglement to a child",
           "List the planets of the solar system", "What is the best way to learn the violin?"]
    judged = {j.text: j for j in judge(real, like + off, threshold=0.5)}
    kept_like = sum(judged[t].kept for t in like)
    kept_off = sum(judged[t].kept for t in off)
    assert kept_off == 0, [(t, judged[t].p_real) for t in off]
    assert kept_like >= len(like) // 2, [(t, judged[t].p_real) for t in like]
    assert min(judged[t].p_real for t in like) > max(judged[t].p_real for t in off) - 0.2


# -- the fine-tuning JSONL ----------------------------------------------------------------------------

def test_jsonl_validator_names_the_bad_lines(tmp_path):
    from foster.agent.lora.openai_ft import JSONLError, validate_jsonl, write_jsonl

    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "BILL-REFUND"}]}
    lines = [json.dumps(good),
             '{"messages": [{"role": "user", "content": "hi"}',  # 2: truncated JSON
             json.dumps({"messages": [{"role": "user", "content": "hi"}]}),  # 3: no answer
             json.dumps({"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]}),  # 4
             "",  # 5: empty
             json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]}),  # 6
             json.dumps([good]),  # 7: not an object
             json.dumps({**good, "extra": 1})]  # 8: unknown key
    p = tmp_path / "ft.jsonl"
    p.write_text("\n".join(lines + [json.dumps(good)] * 4) + "\n")
    errors = validate_jsonl(p)
    bad = {int(e.split(":")[0].split()[1]) for e in errors if e.startswith("line ")}
    assert bad == {2, 3, 4, 5, 6, 7, 8}
    assert any("line 2: not JSON" in e for e in errors)
    assert any(e.startswith("line 3:") and "assistant" in e for e in errors)
    assert any(e.startswith("line 4:") and "'robot'" in e for e in errors)

    rows = _rows(12)
    out = write_jsonl(rows, tmp_path / "ok.jsonl")
    assert validate_jsonl(out) == []
    first = json.loads(out.read_text().splitlines()[0])
    assert [m["role"] for m in first["messages"]] == ["system", "user", "assistant"]
    with pytest.raises(JSONLError, match="at least 10"):
        write_jsonl(rows[:3], tmp_path / "small.jsonl")


# -- training ------------------------------------------------------------------------------------------

def _cfg(**kw):
    from foster.agent.lora.train import TrainConfig

    return TrainConfig(**{"steps": 2, "seconds": 60, "batch_size": 2, "checkpoint_every": 1, "early_stop": None,
                          "max_length": 64, "lr": 5e-3, **kw})


def test_training_resumes_from_its_last_checkpoint(tiny_model, tmp_path):
    from foster.agent.lora.train import latest_checkpoint, train_lora

    rows = _rows(8)
    first = train_lora(tiny_model, rows, tmp_path, _cfg(steps=2), quiet=True)
    assert (first.status, first.step, first.resumed_from) == ("done", 2, 0)
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step-000002"
    second = train_lora(tiny_model, rows, tmp_path, _cfg(steps=4), quiet=True)
    assert (second.resumed_from, second.step) == (2, 4)
    assert [h["step"] for h in second.history] == [1, 2, 3, 4]

    # a stop request (a cancel, or a kill between checkpoints) leaves a checkpoint the next call continues from
    calls = {"n": 0}

    def stop_after_one():
        calls["n"] += 1
        return calls["n"] > 1

    other = tmp_path / "other"
    stopped = train_lora(tiny_model, rows, other, _cfg(steps=3), should_stop=stop_after_one, quiet=True)
    assert (stopped.status, stopped.step, stopped.adapter_dir) == ("stopped", 1, None)
    resumed = train_lora(tiny_model, rows, other, _cfg(steps=3), quiet=True)
    assert (resumed.resumed_from, resumed.step, resumed.status) == (1, 3, "done")

    # the same steps with no interruption give the same adapter as stop + resume
    from safetensors.numpy import load_file

    straight = train_lora(tiny_model, rows, tmp_path / "straight", _cfg(steps=3), quiet=True)
    a = load_file(str(Path(straight.adapter_dir) / "adapter_model.safetensors"))
    b = load_file(str(Path(resumed.adapter_dir) / "adapter_model.safetensors"))
    assert all(abs(a[k] - b[k]).max() < 1e-5 for k in a)

    # other data is another job: its checkpoint is not resumed
    fresh = train_lora(tiny_model, rows[:5], tmp_path, _cfg(steps=1), quiet=True)
    assert fresh.resumed_from == 0


def test_tiny_training_run_writes_a_peft_adapter_that_loads_and_converts(tiny_model, tmp_path):
    import torch
    from gguf import GGUFReader
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from foster.agent.lora.gguf import convert
    from foster.agent.lora.train import encode, train_lora

    rows = _rows(4)
    res = train_lora(tiny_model, rows, tmp_path, _cfg(steps=40, batch_size=4, checkpoint_every=10, lr=3e-2), quiet=True)
    adapter = Path(res.adapter_dir)
    assert {"adapter_config.json", "adapter_model.safetensors", "training.json"} <= {p.name for p in adapter.iterdir()}
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert set(config["target_modules"]) == {"v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model)), str(adapter)).eval()
    ids, labels = encode(tok, rows[0], 64)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    answer_at = labels.index(next(x for x in labels if x != -100))
    assert int(logits[answer_at - 1].argmax()) == ids[answer_at]  # it learned the first answer token

    gguf_path = convert(adapter, arch="llama")
    names = {t.name for t in GGUFReader(str(gguf_path)).tensors}
    assert "blk.0.attn_v.weight.lora_a" in names and "blk.1.ffn_down.weight.lora_b" in names


SYNTHETIC_LIKE = ["my refund never came for the boots", "locked out of my account again", "parcel late by ten days",
                  "charged twice on my card this week", "the password link expired, cannot log in",
                  "where is my refund for the broken lamp", "tracking says late, parcel still missing",
                  "my account is locked, please help", "double charge on my statement, refund me"]
SYNTHETIC_OFF = ["write a poem about the sea", "what is the capital of Peru", "how do I bake sourdough bread",
                 "explain black holes simply"]


# -- the node ----------------------------------------------------------------------------------------

def _lora(state: dict) -> dict:
    """The lora node's body with the run's services, as LangGraph's Runtime hands them to it."""
    from foster.agent.context import RunContext
    from foster.agent.lora.node import step

    return step(RunContext.open(state["run_id"]), state)


def _fake_state(tmp_path, config: dict, run_id: str, options) -> dict:
    """A run as the graph leaves it at the plateau: probes, teacher samples, spec, a 0.5 best bundle."""
    from foster.agent.characterize import build_spec
    from foster.store.runs import RunRegistry

    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("\n".join(json.dumps({"input": t}) for t in fakes.HISTORICAL) + "\n")
    config = {"inputs": str(inputs), "task": "Route the ticket.", "samples": 1, "threshold": 1.0, **config}
    reg = RunRegistry()
    reg.create(run_id, config, status="done")
    probes = [{"id": f"p{i}", "text": t, "split": "heldout" if i % 3 == 0 else "train", "kind": "historical",
               "round": 1, "gold": None} for i, t in enumerate(fakes.HISTORICAL)]
    obs = {p["id"]: [{"t": t, "i": i, "output": fakes.teacher(type("R", (), {
        "messages_or_prompt": [{"role": "user", "content": p["text"]}], "temperature": t, "seed": i})())}
        for t, i in [(0.0, 0), (0.7, 0), (0.7, 1), (1.0, 0), (1.0, 1)]] for p in probes}
    target = config["targets"][0]
    (reg.run_dir(run_id) / "lora").mkdir()
    (reg.run_dir(run_id) / "lora" / "options.json").write_text(options.model_dump_json())
    return {"run_id": run_id, "probes": probes, "teacher": obs, "spec": build_spec(probes, obs),
            "best": {"target": target, "variant": "mined-knn", "path": "x", "fidelity": 0.5},
            "evaluation": {"targets": {target: {"best": {"fidelity": 0.5}}}}, "verdict": "plateau below threshold",
            "round": 2, "history": [0.5, 0.5]}


@pytest.mark.integration
def test_lora_node_serves_the_adapter_it_trained_on_the_real_base(tmp_path, fake_model, monkeypatch):
    """Data (teacher rows, discriminated synthetic inputs answered by the teacher, general rows answered
    by the target), a short training run on the real SmolLM2 GGUF, its conversion to adapter.gguf, and the
    evaluation of that adapter served by llama.cpp: no stand-in model anywhere."""
    import random

    from foster.agent import metrics
    from foster.agent.gateway import complete
    from foster.agent.local.registry import adapter_engine
    from foster.agent.lora.job import LoraOptions, job_dir
    from foster.agent.target import ask, render_request
    from foster.prompts.bundle import Bundle
    from foster.store.runs import RunRegistry

    monkeypatch.setenv("FOSTER_LORA_GENERAL_PER_CATEGORY", "2")  # 6 general prompts: seconds, not minutes
    teacher, t_backend = fake_model(fakes.teacher, "fake-teacher")

    def writer(req):
        text = fakes._last_user(req.messages_or_prompt)
        if "Write one more message like these" in text:  # the synthetic-input writer
            return random.Random(req.seed).choice(SYNTHETIC_LIKE + SYNTHETIC_OFF)
        topic = text.split("assistant about ")[-1].split(".")[0]  # the general-instruction writer
        return "\n".join(f"{i}. {q} {topic}?" for i, q in enumerate(["What is", "Tell me about", "Explain"], 1))

    gen, _ = fake_model(writer, "fake-writer")
    target = "local/smollm2-135m-instruct"
    run_id = "lora-real"
    state = _fake_state(tmp_path, {"teacher": teacher, "targets": [target], "max_new_tokens": 8}, run_id, LoraOptions(
        steps=12, batch_size=4, lr=1e-2, synthetic=30, mix=0.3, checkpoint_every=6, generator=gen,
        general_max_tokens=12))
    reg = RunRegistry()

    update = _lora(state)
    lo = update["evaluation"]["lora"]
    assert lo["status"] == "done", lo
    d = lo["data"]
    assert d["general_fraction"] == pytest.approx(0.3, abs=0.03)
    assert 0 < d["synthetic"]["kept"] < d["synthetic"]["unique_new"]  # the poem and the capital are dropped
    synth = json.loads((job_dir(reg.run_dir(run_id), target) / "synthetic.json").read_text())
    assert not any(j["kept"] for j in synth["judged"] if j["text"] in SYNTHETIC_OFF), synth["judged"]
    assert lo["training"]["step"] == 12 and lo["training"]["base_weights"].endswith(".gguf")

    # what was scored is the adapter this job trained, converted for llama.cpp and served from its directory
    adapter = Path(lo["adapter_dir"])
    assert (adapter / "adapter_model.safetensors").exists() and "adapter_gguf_error" not in lo
    assert Path(lo["adapter_gguf"]) == adapter / "adapter.gguf" and adapter_engine(adapter) == "llama.cpp"
    assert lo["model"] == f"{target}@{adapter}"
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == \
        "HuggingFaceTB/SmolLM2-135M-Instruct"  # from the catalog
    bundle = Bundle.load(lo["bundle"])
    job = job_dir(reg.run_dir(run_id), target)
    cached = json.loads(next(job.glob("answers-*.json")).read_text())  # the scored answers, keyed by model
    key, hit = next((k, v) for k, v in cached.items() if k.split("|")[1] == lo["model"] and k.endswith("|0.0|0"))
    text = next(p["text"] for p in state["probes"] if p["id"] == key.split("|")[2])
    again = complete(lo["model"], **render_request(bundle, lo["model"], text), temperature=0, max_tokens=8)
    assert again.texts[0] == hit["text"]  # the scored answer is what the served adapter says

    # training moved the target toward the teacher: the adapter agrees more than the plain target does
    spec = state["spec"]
    held = [p for p in state["probes"] if p["split"] == "heldout"]
    plain = metrics.mean(metrics.normalize(ask(bundle, target, p["text"], temperature=0, max_tokens=8).texts[0],
                                           list(spec["inventory"]), "closed") == spec["probes"][p["id"]]["mode"]
                         for p in held)
    assert lo["fidelity"] > plain, (lo["fidelity"], plain)
    assert lo["beats_best_bundle"] == (lo["fidelity"] > 0.5)
    assert (update["best"].get("adapter") == str(adapter)) == lo["beats_best_bundle"]
    g = lo["general_capability"]
    assert 0 <= g["agreement"] <= 1 and g["n"] == 6
    # the cost beyond noise is the plain target's own sampled agreement minus the adapter's, prompt by prompt
    assert g["beyond_noise_interval"][0] <= g["beyond_noise_points"] <= g["beyond_noise_interval"][1]
    assert abs(g["beyond_noise_points"] - 100 * (g["plain_sampled_agreement"] - g["agreement"])) <= 0.2

    status = json.loads((job / "job.json").read_text())
    assert status["status"] == "done" and status["step"] == 12
    asked = t_backend.calls
    # a second run of the node asks the teacher nothing new and trains no further: it resumes from step 12
    update2 = _lora(state)
    assert update2["evaluation"]["lora"]["status"] == "done"
    assert t_backend.calls == asked
    assert update2["evaluation"]["lora"]["training"]["resumed_from"] == 12


def test_remote_target_gets_a_validated_jsonl_and_a_tracked_job(tmp_path, fake_model, monkeypatch):
    """A provider target: no training here, a chat fine-tuning JSONL (validated) and job.json; --submit goes
    through litellm's file and fine-tuning calls (faked: this machine is offline)."""
    import litellm

    from foster.agent.lora import node
    from foster.agent.lora.job import LoraOptions, job_status
    from foster.agent.lora.openai_ft import validate_jsonl

    teacher, _ = fake_model(fakes.teacher, "fake-teacher")
    opts = LoraOptions(synthetic=0, mix=0.0)
    state = _fake_state(tmp_path, {"teacher": teacher, "targets": ["openai/gpt-4o-mini"]}, "lora-remote", opts)
    lo = _lora(state)["evaluation"]["lora"]
    assert (lo["status"], lo["kind"], lo["submitted"]) == ("written", "provider", False), lo
    assert validate_jsonl(lo["jsonl"]) == []
    job = job_status("lora-remote")
    assert (job.kind, job.status, job.provider_job_id) == ("provider", "done", None)

    calls = []
    monkeypatch.setattr(litellm, "create_file", lambda **kw: calls.append(("file", kw)) or type("F", (), {"id": "file-1"})())
    monkeypatch.setattr(litellm, "create_fine_tuning_job",
                        lambda **kw: calls.append(("job", kw)) or type("J", (), {"id": "ftjob-1", "status": "validating_files"})())
    monkeypatch.setattr(litellm, "retrieve_fine_tuning_job", lambda **kw: type("J", (), {
        "status": "succeeded", "fine_tuned_model": "ft:gpt-4o-mini:acme::x"})())
    (Path(os.environ["FOSTER_HOME"]) / "runs" / "lora-remote" / "lora" / "options.json").write_text(
        opts.model_copy(update={"submit": True}).model_dump_json())
    lo = _lora(state)["evaluation"]["lora"]
    assert (lo["submitted"], lo["provider_job_id"], lo["status"]) == (True, "ftjob-1", "queued")
    assert calls[0][1]["purpose"] == "fine-tune" and calls[1][1]["training_file"] == "file-1"
    assert calls[1][1]["model"] == "gpt-4o-mini"
    _lora(state)  # already submitted: never twice
    assert len(calls) == 2
    job = node.refresh_provider_job("lora-remote", "openai/gpt-4o-mini")
    assert (job.status, job.fine_tuned_model) == ("done", "ft:gpt-4o-mini:acme::x")


def test_cli_lora_status(tmp_path, fake_model, capsys):
    from foster.agent.lora.job import LoraOptions
    from foster.ui.cli import main

    teacher, _ = fake_model(fakes.teacher, "fake-teacher")
    _lora(_fake_state(tmp_path, {"teacher": teacher, "targets": ["openai/gpt-4o-mini"]}, "lora-cli",
                     LoraOptions(synthetic=0, mix=0.0)))
    assert main(["lora", "lora-cli", "--status"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "done"
    assert main(["lora", "no-such-run"]) == 2
    assert main(["lora", "lora-cli", "--mix", "0.95"]) == 2


def test_a_target_without_weights_fails_the_fallback_not_the_run(tmp_path, fake_model):
    from foster.agent.lora.job import LoraOptions, job_status

    teacher, t_backend = fake_model(fakes.teacher, "fake-teacher")
    tgt, g_backend = fake_model(fakes.target, "fake-target")
    state = _fake_state(tmp_path, {"teacher": teacher, "targets": [tgt]}, "lora-noweights", LoraOptions())
    update = _lora(state)
    lo = update["evaluation"]["lora"]
    assert lo["status"] == "failed" and "base_weights" in lo["error"]
    assert update["best"] == state["best"] and update["evaluation"]["best_artifact"]["kind"] == "bundle"
    assert t_backend.calls == g_backend.calls == 0  # nothing was spent before the failure
    assert job_status("lora-noweights").status == "failed"
