"""The LoRA job's pilot: two targets that tie on the bundle but differ under training; the pilot (not the
configuration order) picks the one that learns."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import fakes

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _tiny(d: Path, frozen_head: bool) -> Path:
    """A randomly initialised 2-layer Llama (~10 MB). `frozen_head`: its final norm is zero, so its logits
    are constant whatever a LoRA on v/o/MLP does — a target that cannot learn the task."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(list(fakes.HISTORICAL) + fakes.LABELS, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.chat_template = CHAT_TEMPLATE
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                         initializer_range=0.3))
    if frozen_head:
        with torch.no_grad():
            model.model.norm.weight.zero_()
    model.save_pretrained(str(d))
    tok.save_pretrained(str(d))
    return d


@pytest.fixture(scope="module")
def two_bases(tmp_path_factory) -> tuple[Path, Path]:
    return (_tiny(tmp_path_factory.mktemp("stuck"), True), _tiny(tmp_path_factory.mktemp("learns"), False))


def test_select_prefers_gain_per_minute_and_breaks_ties_by_the_bundle_not_the_order():
    from foster.agent.lora.pilot import PilotFigure, others, select

    a = PilotFigure(target="local/a", seconds=60, token=0.5, before_token=0.5, gain_per_minute=0.0)
    b = PilotFigure(target="local/b", seconds=60, token=0.8, before_token=0.2, gain_per_minute=0.6)
    assert select([a, b], "local/a")[0] == "local/b"
    assert select([b, a], "local/a")[0] == "local/b"  # order does not matter
    tie = PilotFigure(target="local/c", seconds=60, token=0.8, before_token=0.2, gain_per_minute=0.6)
    pick, why = select([b, tie], "local/c")
    assert pick == "local/c" and "tied" in why
    assert select([PilotFigure(target="local/a", error="boom")], "local/a") == ("local/a", "no pilot finished: the bundle's target")
    section = {"mode": "all", "figures": [a.model_dump(), b.model_dump()]}
    assert others(section, "local/b") == ["local/a"] and others({**section, "mode": "pilot"}, "local/b") == []


def test_validation_rows_are_the_same_inputs_for_every_target_and_never_trained():
    from foster.agent.lora.pilot import split

    rows = [{"source": "teacher", "input": t, "output": "x", "primary": True, "request": {}} for t in fakes.HISTORICAL]
    rows += [{"source": "general", "input": f"g{i}", "output": "y", "primary": False, "request": {}} for i in range(5)]
    train, val = split(rows)
    assert len(val) == 4 and not {r["input"] for r in val} & {r["input"] for r in train}
    assert all(r["source"] != "general" for r in val)
    assert [r["input"] for r in split(list(reversed(rows)))[1]] == sorted(r["input"] for r in val) or \
        {r["input"] for r in split(list(reversed(rows)))[1]} == {r["input"] for r in val}


def test_pilot_picks_the_target_that_learns_when_the_bundle_ties(two_bases, tmp_path, fake_model):
    """Both targets scored 0.5 with their best bundle and the stuck one is configured (and bundle-chosen)
    first; the pilot trains each for the same steps on the same rows and picks the one that learns."""
    from foster.agent.characterize import build_spec
    from foster.agent.config import RunConfig
    from foster.agent.context import RunContext
    from foster.agent.lora import pilot
    from foster.agent.lora.job import LoraOptions
    from foster.store.runs import RunRegistry

    stuck_base, learns_base = two_bases
    teacher, _ = fake_model(fakes.teacher, "pilot-teacher")
    stuck, _ = fake_model(fakes.target, "pilot-stuck")
    learns, _ = fake_model(fakes.target, "pilot-learns")
    config = RunConfig(teacher=teacher, targets=[stuck, learns], task="Route the ticket.", samples=1)
    reg = RunRegistry()
    reg.create("pilot", config.model_dump(), status="done")
    ctx = RunContext.open("pilot")
    probes = [{"id": f"p{i}", "text": t, "split": "heldout" if i % 4 == 0 else "train", "kind": "historical",
               "round": 1, "gold": None} for i, t in enumerate(fakes.HISTORICAL)]
    obs = {p["id"]: [{"t": 0.0, "i": 0, "output": fakes.true_label(p["text"])}] for p in probes}
    state = {"run_id": "pilot", "probes": probes, "teacher": obs, "spec": build_spec(probes, obs),
             "best": {"target": stuck, "variant": "mined-knn", "fidelity": 0.5},
             "evaluation": {"targets": {stuck: {"best": {"fidelity": 0.5}}, learns: {"best": {"fidelity": 0.5}}}}}
    options = LoraOptions(synthetic=0, mix=0.0, pilot_steps=24, batch_size=4, lr=3e-2,
                          target_weights={stuck: str(stuck_base), learns: str(learns_base)})

    chosen, section = pilot.choose(ctx, state, options)
    assert chosen == learns, section
    figs = {f["target"]: f for f in section["figures"]}
    assert figs[stuck]["steps"] == figs[learns]["steps"] == 24
    assert figs[stuck]["validation_rows"] == figs[learns]["validation_rows"] > 0
    assert figs[learns]["token"] > figs[learns]["before_token"] and figs[learns]["gain_per_minute"] > 0
    assert figs[stuck]["gain_per_minute"] == 0.0
    assert section["bundle_target"] == stuck and "gain per minute" in section["why"]
    assert "| " + learns in pilot.markdown(section)
    # a resumed job reads the pilot it ran, and a named target skips it
    assert json.loads((ctx.dir / "lora" / "pilot.json").read_text())["chosen"] == learns
    assert pilot.choose(ctx, state, options)[0] == learns
    assert pilot.choose(ctx, state, options.model_copy(update={"target": stuck})) == (stuck, None)
