"""`foster lora RUN_ID`: the LoRA fallback for a finished run (train, evaluate, record), or its job's status."""
from __future__ import annotations

import argparse
import json
import sys

from foster.ui.cli import Command, CommandError


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_id")
    p.add_argument("--target", help="target to train (default: the best bundle's target)")
    p.add_argument("--steps", type=int, help="step budget (default 240, or FOSTER_LORA_STEPS)")
    p.add_argument("--seconds", type=float, help="training time budget in seconds (default 420)")
    p.add_argument("--mix", type=float, help="share of general instruction rows, e.g. 0.4 (0.3-0.5 advised)")
    p.add_argument("--labels", choices=["gold", "target", "agree"],
                   help="re-label path (--train-data): train on gold, on the target's re-labels, or on its re-label "
                        "where it agrees with gold and gold where not (default agree)")
    p.add_argument("--lora-targets", choices=["pilot", "all"],
                   help="several targets: pilot each and train the best (default), or train all")
    p.add_argument("--pilot-steps", type=int, help="training steps of each target's pilot (default 12)")
    p.add_argument("--target-weights", action="append", metavar="TARGET=PATH",
                   help="weights to train for one target (GGUF or Hugging Face dir); repeat per target")
    p.add_argument("--synthetic", type=int, help="synthetic inputs the target writes before the discriminator (default 240)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--rank", type=int)
    p.add_argument("--threads", type=int, help="torch threads for training (1 helps on a busy, shared CPU)")
    p.add_argument("--base-weights", help="weights to train (GGUF file or Hugging Face dir); default the target's GGUF")
    p.add_argument("--submit", action="store_true", help="remote targets: submit the JSONL through litellm's fine-tuning API")
    p.add_argument("--base-model", help="remote targets: the provider model to fine-tune (default: the target)")
    p.add_argument("--status", action="store_true", help="print the LoRA job's status (job.json) and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


OPTION_FLAGS = ("target", "steps", "seconds", "mix", "labels", "lora_targets", "pilot_steps", "synthetic", "batch_size",
                "lr", "rank", "threads", "base_weights", "submit", "base_model")


class _Bars:
    """One tqdm bar per phase of the job (data, train, evaluate)."""

    def __init__(self, quiet: bool):
        self.quiet, self.bars = quiet, {}

    def __call__(self, phase: str, done: int, total: int, message: str) -> None:
        if self.quiet or phase == "train":  # training draws its own bar
            return
        from tqdm import tqdm

        bar = self.bars.get(phase)
        if bar is None or bar.total != max(total, 1):
            if bar is not None:
                bar.close()
            bar = self.bars[phase] = tqdm(total=max(total, 1), desc=f"lora {phase:<8}", file=sys.stderr)
        bar.n = done
        bar.set_postfix_str(message[:50], refresh=False)
        bar.refresh()

    def close(self) -> None:
        for b in self.bars.values():
            b.close()


def _run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from foster.agent.config import InputError
    from foster.agent.lora.job import LoraOptions, job_status
    from foster.agent.runs import run_lora
    from foster.agent.lora.report import lora_markdown
    from foster.store.runs import RunRegistry

    reg = RunRegistry()
    if not reg.exists(args.run_id):
        raise CommandError(f"no run {args.run_id} (see `foster runs`)")
    if args.status:
        job = job_status(args.run_id)
        if job is None:
            raise CommandError(f"run {args.run_id} has no LoRA job yet (`foster lora {args.run_id}` starts one)")
        if job.kind == "provider" and job.provider_job_id:
            from foster.agent.lora.node import refresh_provider_job

            job = refresh_provider_job(args.run_id, job.target)
        print(json.dumps(job.model_dump(), indent=2, default=str))
        return 0
    saved = options_path_for(reg, args.run_id)
    base = json.loads(saved.read_text()) if saved.exists() else {}
    given = {k: getattr(args, k) for k in OPTION_FLAGS if getattr(args, k) not in (None, False)}
    if args.target_weights:
        if any("=" not in tw for tw in args.target_weights):
            raise CommandError("--target-weights takes TARGET=PATH")
        given["target_weights"] = dict(tw.split("=", 1) for tw in args.target_weights)
    try:
        options = LoraOptions.model_validate({**base, **given})
    except ValidationError as e:
        err = e.errors()[0]
        raise CommandError(str(err.get("ctx", {}).get("error") or err["msg"]).removeprefix("Value error, ")) from None
    bars = _Bars(args.quiet)
    try:
        section = run_lora(args.run_id, options, listener=bars, show_bar=not args.quiet)
    except InputError as e:
        raise CommandError(str(e)) from None
    finally:
        bars.close()
    print(lora_markdown(section))
    print(f"report: {reg.run_dir(args.run_id) / 'report.md'}")
    return 0 if section.get("status") in ("done", None) else 1


def options_path_for(reg, run_id: str):
    return reg.run_dir(run_id) / "lora" / "options.json"


COMMANDS = [Command("lora", "distil the teacher into a LoRA adapter on the target for a finished run (or --status)",
                    _arguments, _run)]
