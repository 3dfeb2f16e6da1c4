"""`foster distill|runs|resume|cancel|demo`: the distillation agent from the command line."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from foster.ui.cli import Command, CommandError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]  # nan/inf parse here and are refused by RunConfig
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _distill_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("the teacher (one of)")
    src.add_argument("--teacher", help="live teacher: a litellm model string (local/..., openai/..., an alias from --models-file)")
    src.add_argument("--teacher-records", help="JSONL of recorded teacher input/output pairs (the teacher is gone)")
    src.add_argument("--train-data", help="JSONL training corpus with gold outputs (re-label path, no teacher)")
    p.add_argument("--target", action="append", dest="targets", default=[], help="a new base model (repeatable)")
    p.add_argument("--inputs", help="JSONL of historical inputs")
    p.add_argument("--task", default="", help="one-line task description (zero-shot baseline, probe generator)")
    p.add_argument("--hand-written", help="JSON {system_prompt, examples} of a hand-written baseline prompt")
    p.add_argument("--threshold", type=float, default=0.9, help="fidelity the best bundle must reach, in (0, 1]")
    p.add_argument("--temperatures", type=_floats, default=[0.0, 0.7, 1.0], help="teacher sampling temperatures, e.g. 0,0.7,1")
    p.add_argument("--samples", type=int, default=2, help="teacher samples per non-zero temperature")
    p.add_argument("--generator", help="model that synthesizes probes (default: the first target)")
    p.add_argument("--synth-per-kind", type=int, default=3)
    p.add_argument("--miner", help="optional model that writes prose rules (and reflects for GEPA)")
    p.add_argument("--judge", help="optional model that scores free-text agreement")
    p.add_argument("--fidelity", choices=["auto", "exact", "embedding", "judge"], default="auto")
    p.add_argument("--primary-metric", default="auto", metavar="auto|exact|structure|similarity",
                   help="free-text teachers: the figure the threshold and verdict read (with --fidelity auto); "
                   "auto = the strictest whose ceiling is >= 0.5")
    p.add_argument("--optimizer", default="auto", help="auto (foster's tuner; GEPA beside it when --miner is given) | "
                   "foster | gepa | miprov2 | simba | bootstrap")
    p.add_argument("--budget-calls", type=int, default=60, help="optimizer target calls per target per round")
    p.add_argument("--recall-calls", type=int, default=120,
                   help="target calls per target per round that test the recall rule on more train inputs (0: none)")
    p.add_argument("--knn-k", type=int, default=6)
    p.add_argument("--embedding-model", help="what retrieves a pool bundle's examples: all-MiniLM-L6-v2 (default, "
                   "packaged) or a litellm embedding such as openai/text-embedding-3-small (key from its usual "
                   "variable); the pool's vectors are stored in the bundle")
    p.add_argument("--max-rounds", type=int, default=2)
    p.add_argument("--no-lora", dest="lora_fallback", action="store_false",
                   help="end a plateau below threshold with the best bundle instead of training a LoRA")
    p.add_argument("--min-gain", type=float, default=0.02)
    p.add_argument("--max-probes", type=int, default=2000,
                   help="most probes kept: the history first (a count of any left out is printed), synthetic on top")
    p.add_argument("--sampled-probes", type=int, default=100,
                   help="probes sampled at every temperature (stratified); the rest get the greedy answer only")
    p.add_argument("--min-heldout", type=int, default=100, help="held-out probes at least, where the history allows")
    p.add_argument("--concurrency", type=int, help="calls in flight per remote model (default 8; local: 1)")
    p.add_argument("--max-calls", type=int, help="cap on all model calls")
    p.add_argument("--max-tokens", type=int, help="cap on all tokens")
    p.add_argument("--max-cost", type=float, help="cap on cost (USD)")
    p.add_argument("--holdout-fraction", type=float, default=0.3,
                   help="share of the real inputs held out for the final figures (at least --min-heldout where the history allows)")
    p.add_argument("--max-new-tokens", type=int, default=24, help="generation length of every answer (teacher and targets)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run-id", help="name the run (default: time-stamped)")
    p.add_argument("--api-base", action="append", default=[], metavar="MODEL=URL",
                   help="endpoint of one model, e.g. a self-hosted OpenAI-compatible server (repeatable)")
    p.add_argument("--api-key-env", action="append", default=[], metavar="MODEL=VAR",
                   help="environment variable holding one model's key (repeatable; keys are never stored)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")





def _endpoints(values: dict) -> dict:
    eps: dict[str, dict[str, str]] = {}
    for flag, field in (("api_base", "api_base"), ("api_key_env", "api_key_env")):
        for item in values.get(flag) or []:
            model, sep, val = item.rpartition("=")
            if not sep or not model or not val:
                raise CommandError(f"--{flag.replace('_', '-')} {item}: expected MODEL=VALUE")
            eps.setdefault(model, {})[field] = val
    return eps


def make_config(values: dict):
    """RunConfig from options; any problem becomes one line naming the flag or the file."""
    from pydantic import ValidationError

    from foster.agent.config import InputError, RunConfig

    if values.get("api_base") or values.get("api_key_env"):
        values = {**values, "endpoints": _endpoints(values)}
    try:
        # every RunConfig field, so a config file (the demo's demo.json) is never silently cut to the flags
        return RunConfig.model_validate({k: v for k, v in values.items() if k in RunConfig.model_fields and v is not None})
    except ValidationError as e:
        err = e.errors()[0]
        msg = str(err.get("ctx", {}).get("error") or err["msg"]).removeprefix("Value error, ")
        field = ".".join(str(x) for x in err["loc"])
        raise CommandError(msg if msg.startswith("-") or ":" in msg else f"--{field.replace('_', '-')}: {msg}") from None
    except InputError as e:
        raise CommandError(str(e)) from None


class Progress:
    """One tqdm bar per node, fed by the graph's custom stream."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.bars: dict[str, object] = {}

    def __call__(self, item: dict) -> None:
        if self.quiet or item["mode"] != "custom":
            return
        ev = item["chunk"]
        node = ev.get("node") or "run"
        from tqdm import tqdm

        bar = self.bars.get(node)
        total = ev.get("total") or 1
        if bar is None or bar.total != total:
            if bar is not None:
                bar.close()
            bar = self.bars[node] = tqdm(total=total, desc=f"{node:<12}", leave=True, file=sys.stderr)
        bar.n = ev.get("done") or 0
        bar.set_postfix_str((ev.get("message") or "")[:60], refresh=False)
        bar.refresh()

    def close(self) -> None:
        for b in self.bars.values():
            b.close()


def _print_result(run_id: str) -> None:
    from foster.agent.report import summary_table
    from foster.store.runs import RunRegistry

    reg = RunRegistry()
    report = reg.read_json(run_id, "report.json") or {}
    d = reg.run_dir(run_id)
    print()
    print(summary_table(report))
    print(f"\nverdict: {report.get('verdict')}   ceiling: {report.get('ceiling')}   method: {report.get('fidelity_method')}")
    for line in (reg.read_json(run_id, "probing.json") or {}).get("summary", []):  # left out, calls/s
        print(f"probing: {line}")
    print(f"run:     {run_id}")
    print(f"report:  {d / 'report.md'}")
    if report.get("best_bundle"):
        print(f"bundle:  {report['best_bundle']['path']}")


def _run_and_report(run_id_or_config, quiet: bool, resume: bool = False) -> int:
    from foster.agent.config import InputError
    from foster.agent.runs import resume_run, start_run

    prog = Progress(quiet)
    try:
        if resume:
            run_id = run_id_or_config
            resume_run(run_id, on_event=prog)
        else:
            run_id = start_run(run_id_or_config, on_event=prog)
    except InputError as e:
        raise CommandError(str(e)) from None
    finally:
        prog.close()
    _print_result(run_id)
    return 0


def _distill_run(args: argparse.Namespace) -> int:
    config = make_config(vars(args))
    return _run_and_report(config, args.quiet)


def _resume_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_id")
    p.add_argument("--quiet", action="store_true")


def _resume_run(args: argparse.Namespace) -> int:
    return _run_and_report(args.run_id, args.quiet, resume=True)


def _runs_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true")


def _runs_run(args: argparse.Namespace) -> int:
    from foster.store.runs import RunRegistry

    runs = RunRegistry().list()
    if args.json:
        print(json.dumps([r.model_dump() for r in runs], indent=2, default=str))
        return 0
    if not runs:
        print("no runs yet (foster distill … or foster demo)")
    for r in runs:
        figs = " ".join(f"{t.split('/')[-1][:24]}={(f.get('best') or 0):.2f}" for t, f in (r.figures or {}).items())
        print(f"{r.run_id:<28} {r.status:<9} {r.node or '-':<12} {r.verdict or '':<26} {figs}")
    return 0


def _cancel_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_id")


def _cancel_run(args: argparse.Namespace) -> int:
    from foster.agent.config import InputError
    from foster.agent.runs import cancel_run

    try:
        status = cancel_run(args.run_id)
    except InputError as e:
        raise CommandError(str(e)) from None
    if status == "cancelled":
        print(f"{args.run_id}: cancelled (its owner had died; nothing was running)")
    elif status in ("done", "failed", "stopped"):
        print(f"{args.run_id}: already {status}; nothing to cancel")
    else:
        print(f"cancel requested for {args.run_id}")
    return 0


def demo_config(**overrides) -> dict:
    """The embedded demo: ticket routing, a LoRA teacher on SmolLM2, two local targets."""
    d = EXAMPLES / "ticket_routing"
    cfg = json.loads((d / "demo.json").read_text())
    for k in ("inputs", "hand_written", "teacher_records", "train_data"):
        if cfg.get(k):
            cfg[k] = str(d / cfg[k])
    if cfg.get("teacher", "").startswith("local/") and "@" in cfg["teacher"]:
        base, adapter = cfg["teacher"].split("@", 1)
        cfg["teacher"] = f"{base}@{d / adapter}"
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    return cfg


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--threshold", type=float)
    p.add_argument("--run-id")
    p.add_argument("--lora", action="store_true", help="train the LoRA fallback when prompting plateaus (adds minutes)")


def _demo_run(args: argparse.Namespace) -> int:
    config = make_config(demo_config(threshold=args.threshold, run_id=args.run_id, lora_fallback=True if args.lora else None))
    code = _run_and_report(config, args.quiet)
    from foster.store.runs import RunRegistry

    reg = RunRegistry()
    run_id = reg.list()[0].run_id if not args.run_id else args.run_id
    print("\n" + (reg.run_dir(run_id) / "report.md").read_text())
    return code


COMMANDS = [
    Command("distill", "probe a teacher and distill it into the best prompt bundle for each target",
            _distill_arguments, _distill_run),
    Command("resume", "continue a run from its last checkpoint", _resume_arguments, _resume_run),
    Command("runs", "list runs", _runs_arguments, _runs_run),
    Command("cancel", "ask a running run to stop cleanly with its best bundle so far", _cancel_arguments, _cancel_run),
    Command("demo", "the embedded demo: ticket routing distilled onto two local models", _demo_arguments, _demo_run),
]
