"""In-process PEFT LoRA training on CPU, with a step and a time budget and checkpoints a killed job resumes from.

A local GGUF target is loaded by transformers (dequantized to fp32), so training, PEFT serving and the
llama.cpp adapter all see the same weights. The adapter touches v/o and the MLP only: llama.cpp
permutes q/k at conversion, so a LoRA on them would not carry over to `adapter.gguf`.

Checkpoints (`checkpoints/step-NNNNNN/`: adapter weights, optimizer, scheduler and RNG state, step,
seconds trained) are written every `checkpoint_every` steps and when a budget ends or a stop is asked.
Batches are a pure function of (seed, step), so a resumed job continues with exactly the batch it
would have seen. A checkpoint made from other data or another LoRA shape is not resumed.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from collections.abc import Callable

TARGET_MODULES = ("v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(kw_only=True)
class TrainConfig:
    steps: int = 240
    seconds: float = 420.0  # summed over resumes
    batch_size: int = 8
    lr: float = 1e-3
    warmup: int = 10
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = TARGET_MODULES
    max_length: int = 256
    checkpoint_every: int = 20
    keep_checkpoints: int = 2
    seed: int = 0
    threads: int = 0  # torch intra-op threads; 0 chooses (see _auto_threads)
    # stop early once the teacher-forced accuracy of the primary task rows reaches this twice in a row
    early_stop: float | None = 0.98
    eval_every: int = 20
    eval_rows: int = 48
    base_model_name: str | None = None  # written into adapter_config.json (e.g. a Hugging Face id)


@dataclass
class TrainResult:
    status: str  # done | stopped
    step: int
    total: int
    seconds: float
    loss: float | None
    resumed_from: int
    adapter_dir: str | None
    stop_reason: str
    history: list[dict] = field(default_factory=list)


# -- loading and encoding ---------------------------------------------------------------------------

def load_base(base: str | Path):
    """(model, tokenizer) from a GGUF file (dequantized to fp32) or a Hugging Face model directory."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError("LoRA training needs torch, transformers and peft installed") from exc
    path = Path(base)
    if path.suffix == ".gguf":
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    else:
        tok = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model, tok


def _is_chat(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_text(tokenizer, row: dict) -> tuple[str, str, bool]:
    """(prompt text, answer text, add special tokens to the prompt): the request as the serving
    backends render it, and the answer followed by what ends it there."""
    from foster.agent.local.backend import TRANSCRIPT_STOP, render_transcript

    req, out = row["request"], row["output"]
    end = not row.get("truncated")
    if "prompt" in req:  # completion-style (base targets): the answer follows "Output:" and ends at a stop
        stop = [s for s in req.get("stop") or [] if s]
        suffix = ("\n" if "\n" in stop else (stop[0] if stop else tokenizer.eos_token)) if end else ""
        sep = " " if req["prompt"][-1:] not in (" ", "\n") else ""
        return req["prompt"], sep + out + suffix, True
    if _is_chat(tokenizer):
        prompt = tokenizer.apply_chat_template(req["messages"], tokenize=False, add_generation_prompt=True)
        return prompt, out + (tokenizer.eos_token if end else ""), False
    return render_transcript(req["messages"]), " " + out + (TRANSCRIPT_STOP[0] if end else ""), True


def encode(tokenizer, row: dict, max_length: int) -> tuple[list[int], list[int]]:
    """Token ids and labels; the loss sees only the answer."""
    prompt, answer, special = render_text(tokenizer, row)
    p = tokenizer(prompt, add_special_tokens=special)["input_ids"]
    a = tokenizer(answer, add_special_tokens=False)["input_ids"]
    ids, labels = (p + a)[:max_length], ([-100] * len(p) + a)[:max_length]
    return ids, labels


def collate(batch, pad_id: int):
    import torch

    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for r, (ids, lab) in enumerate(batch):
        input_ids[r, : len(ids)] = torch.tensor(ids)
        labels[r, : len(lab)] = torch.tensor(lab)
        attention[r, : len(ids)] = 1
    return input_ids, attention, labels


def epoch_batches(lengths: tuple[int, ...], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """One epoch's batches: a seeded permutation, sorted by length within windows of 8 batches (less
    padding: general rows are about twice as long as task rows), batches in seeded order."""
    rng = random.Random(f"{seed}:{epoch}")
    order = rng.sample(range(len(lengths)), len(lengths))
    window = batch_size * 8
    batches = []
    for w in range(0, len(order), window):
        chunk = sorted(order[w : w + window], key=lambda i: lengths[i])
        batches += [chunk[b : b + batch_size] for b in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def batch_indices(lengths: tuple[int, ...], step: int, batch_size: int, seed: int) -> list[int]:
    """The rows of batch `step` (0-based): a pure function of (data, step, seed), so a resume continues
    with exactly the batch an uninterrupted job would have seen."""
    per_epoch = -(-len(lengths) // batch_size)
    epoch, k = divmod(step, per_epoch)
    return _epoch_batches_cached(lengths, batch_size, seed, epoch)[k]


_epoch_batches_cached = functools.lru_cache(maxsize=4)(epoch_batches)


def forced_accuracy(model, encoded, pad_id: int, batch_size: int = 16) -> float:
    """Share of rows whose every answer token is the argmax under teacher forcing (a cheap greedy proxy)."""
    import torch

    if not encoded:
        return 0.0
    correct = 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for s in range(0, len(encoded), batch_size):
            ids, att, lab = collate(encoded[s : s + batch_size], pad_id)
            pred = model(input_ids=ids, attention_mask=att).logits[:, :-1].argmax(-1)
            gold = lab[:, 1:]
            correct += int(((pred == gold) | (gold == -100)).all(dim=1).sum())
    if was_training:
        model.train()
    return correct / len(encoded)


def _auto_threads() -> int:
    """1 on a CPU that other processes already fill, else torch's default (0). OpenMP threads that wait
    for each other on an oversubscribed CPU made a step ~7x slower here (70 s vs 9.5 s on 2 busy cores)."""
    import os

    try:
        return 1 if os.getloadavg()[0] >= (os.cpu_count() or 1) else 0
    except OSError:
        return 0


# -- checkpoints -------------------------------------------------------------------------------------

def data_hash(rows: list[dict]) -> str:
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps([r["request"], r["output"], r.get("truncated")], sort_keys=True).encode())
    return h.hexdigest()[:16]


def _shape(cfg: TrainConfig, rows_hash: str, base: str) -> dict:
    return {"data": rows_hash, "base": base, "rank": cfg.rank, "alpha": cfg.alpha, "batch_size": cfg.batch_size,
            "modules": list(cfg.target_modules), "seed": cfg.seed, "max_length": cfg.max_length}


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    done = sorted(d for d in ckpt_root.glob("step-*") if (d / "state.json").exists())
    return done[-1] if done else None


def save_checkpoint(ckpt_root: Path, model, optimizer, schedule, state: dict, keep: int) -> Path:
    import torch

    final = ckpt_root / f"step-{state['step']:06d}"
    tmp = ckpt_root / f".tmp-step-{state['step']:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    _save_pretrained(model, tmp)
    torch.save({"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                "rng": torch.get_rng_state()}, tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=2))  # last: its presence marks a whole checkpoint
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in sorted(d for d in ckpt_root.glob("step-*") if d != final)[:-max(0, keep - 1) or None]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _save_pretrained(model, path: Path) -> None:
    import warnings

    with warnings.catch_warnings():  # PEFT looks for the base's config.json, which a GGUF base has not
        warnings.filterwarnings("ignore", message="Could not find a config file")
        model.save_pretrained(str(path))


def _restore(ckpt: Path, model, optimizer, schedule) -> dict:
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(ckpt / "adapter_model.safetensors")))
    blob = torch.load(ckpt / "optimizer.pt", weights_only=False)
    optimizer.load_state_dict(blob["optimizer"])
    schedule.load_state_dict(blob["schedule"])
    torch.set_rng_state(blob["rng"])
    return json.loads((ckpt / "state.json").read_text())


# -- training ----------------------------------------------------------------------------------------

def train_lora(base: str | Path, rows: list[dict], out_dir: str | Path, cfg: TrainConfig, *,
               on_step: Callable[[dict], None] | None = None, should_stop: Callable[[], bool] | None = None,
               quiet: bool = False, model_and_tokenizer=None) -> TrainResult:
    """Train (or resume) a LoRA on `base` over `rows`; the adapter is written to out_dir/adapter when a
    budget ends. `on_step({step, total, loss, seconds})` is called after every step; `should_stop()`
    (a cancel) makes the job checkpoint and return with status "stopped"."""
    import torch

    if not rows:
        raise ValueError("no training rows")
    out_dir = Path(out_dir)
    (out_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    threads, before = cfg.threads or _auto_threads(), torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _train(base, rows, out_dir, cfg, on_step, should_stop, quiet, model_and_tokenizer)
    finally:
        torch.set_num_threads(before)


def _train(base, rows, out_dir, cfg, on_step, should_stop, quiet, model_and_tokenizer) -> TrainResult:
    import warnings

    import torch
    from peft import LoraConfig, get_peft_model
    from tqdm import tqdm

    ckpt_root = out_dir / "checkpoints"
    model, tok = model_and_tokenizer or load_base(base)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    encoded = [encode(tok, r, cfg.max_length) for r in rows]
    lengths = tuple(len(ids) for ids, _ in encoded)
    probe_rows = [e for e, r in zip(encoded, rows) if r.get("primary")]
    probe_rows = random.Random(cfg.seed).sample(probe_rows, min(cfg.eval_rows, len(probe_rows)))

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' deprecations inside PEFT
        model = get_peft_model(model, LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                                                 target_modules=list(cfg.target_modules), bias="none",
                                                 task_type="CAUSAL_LM"))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / cfg.warmup) * max(0.1, 1 - s / max(1, cfg.steps)))

    shape = _shape(cfg, data_hash(rows), str(base))
    step, seconds, history, streak = 0, 0.0, [], 0
    ckpt = latest_checkpoint(ckpt_root)
    if ckpt is not None:
        saved = json.loads((ckpt / "state.json").read_text())
        if saved.get("shape") == shape:
            saved = _restore(ckpt, model, optimizer, schedule)
            step, seconds, history, streak = saved["step"], saved["seconds"], saved.get("history", []), saved.get("streak", 0)
        else:  # other data or another LoRA shape: that checkpoint is not this job's past
            shutil.rmtree(ckpt_root)
            ckpt_root.mkdir(parents=True)
    resumed_from = step
    model.train()
    losses: list[float] = [h["loss"] for h in history[-5:] if "loss" in h]
    reason = "step budget"
    bar = tqdm(total=cfg.steps, initial=min(step, cfg.steps), desc="lora train", file=sys.stderr,
               disable=quiet, dynamic_ncols=True)

    def checkpoint():
        save_checkpoint(ckpt_root, model, optimizer, schedule,
                        {"step": step, "seconds": round(seconds, 2), "history": history, "streak": streak,
                         "shape": shape}, cfg.keep_checkpoints)

    status = "done"
    try:
        while step < cfg.steps:
            if seconds >= cfg.seconds:
                reason = "time budget"
                break
            if should_stop and should_stop():
                status, reason = "stopped", "stop requested"
                break
            t0 = time.time()
            ids, att, lab = collate([encoded[i] for i in batch_indices(lengths, step, cfg.batch_size, cfg.seed)], pad_id)
            loss = model(input_ids=ids, attention_mask=att, labels=lab).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            step += 1
            value = float(loss.item())
            losses = (losses + [value])[-5:]
            seconds += time.time() - t0
            entry = {"step": step, "loss": round(value, 4), "seconds": round(seconds, 1)}
            if cfg.early_stop is not None and probe_rows and step % cfg.eval_every == 0 and step >= 2 * cfg.eval_every:
                t1 = time.time()
                acc = forced_accuracy(model, probe_rows, pad_id)
                seconds += time.time() - t1
                entry["train_forced_accuracy"] = round(acc, 4)
                streak = streak + 1 if acc >= cfg.early_stop else 0
            history.append(entry)
            bar.update(1)
            bar.set_postfix_str(f"loss {sum(losses) / len(losses):.3f} {seconds:.0f}s", refresh=False)
            if on_step:
                on_step({"step": step, "total": cfg.steps, "loss": value, "seconds": seconds})
            if streak >= 2:
                reason = "early stop: train accuracy reached"
                break
            if step % cfg.checkpoint_every == 0:
                checkpoint()
    finally:
        bar.close()
    checkpoint()
    adapter_dir = None
    if status == "done":
        adapter_dir = out_dir / "adapter"
        save_adapter(model, adapter_dir, cfg, {"steps": step, "train_seconds": round(seconds, 1), "stop_reason": reason,
                                               "rows": len(rows), "resumed_from": resumed_from, "base": str(base),
                                               "history": history[-50:]})
    return TrainResult(status=status, step=step, total=cfg.steps, seconds=round(seconds, 1),
                       loss=round(sum(losses) / len(losses), 4) if losses else None, resumed_from=resumed_from,
                       adapter_dir=str(adapter_dir) if adapter_dir else None, stop_reason=reason, history=history)


def save_adapter(model, adapter_dir: Path, cfg: TrainConfig, info: dict) -> Path:
    """A standard PEFT adapter directory (adapter_config.json + adapter_model.safetensors) and a
    training.json beside it."""
    tmp = adapter_dir.with_name(adapter_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if cfg.base_model_name:
        model.peft_config["default"].base_model_name_or_path = cfg.base_model_name
    _save_pretrained(model, tmp)
    cfg_dict = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}
    (tmp / "training.json").write_text(json.dumps({**info, "config": cfg_dict}, indent=2))
    shutil.rmtree(adapter_dir, ignore_errors=True)
    tmp.rename(adapter_dir)
    return adapter_dir


def steps_per_epoch(n_rows: int, batch_size: int) -> int:
    return math.ceil(n_rows / batch_size)
