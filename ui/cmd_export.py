"""`foster export BUNDLE --to openai|langchain|dspy|promptfoo`: the bundle as a file for that tool."""
from __future__ import annotations

from foster.ui.cli import Command, CommandError


def _export_arguments(p):
    from foster.prompts.export import FORMATS

    p.add_argument("bundle", help="a bundle's .json file (~ and relative paths work), e.g. ~/.foster/runs/RUN_ID/best_bundle.json")
    p.add_argument("--to", required=True, choices=FORMATS, dest="format", help="the tool to export for")
    p.add_argument("-o", "--output", help="where to write (default: <name>-<id><suffix> in the current folder; - for stdout)")
    p.add_argument("--provider", help="promptfoo: the provider id to use (default: derived from the bundle's target)")
    p.add_argument("--no-check", action="store_true", help="skip the parity check on the run's held-out probes")


def _export_run(args):
    from pathlib import Path

    from foster.prompts.bundle import Bundle, BundleLoadError
    from foster.prompts.export import export_bundle, run_context, run_dir_of
    from foster.prompts.export.parity import check

    try:
        bundle = Bundle.load(args.bundle)
    except BundleLoadError as exc:
        raise CommandError(str(exc)) from None
    context = run_context(run_dir_of(args.bundle))
    context.provider = args.provider
    exported = export_bundle(bundle, args.format, context)
    if args.output == "-":
        print(exported.text, end="")
        return 0
    out = Path(args.output or exported.filename).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(exported.text, encoding="utf-8")
    line = f"wrote {out} ({args.format}"
    if context.probes and not args.no_check:
        result = check(bundle, args.format, exported.text, [p.input for p in context.probes])
        line += f"; parity on {result.n} held-out probes: {result.same}/{result.n} identical"
        if not result.ok:
            print(line + ")")
            raise CommandError(f"the {args.format} export differs from the bundle: {result.first_difference}")
    print(line + ")")
    return 0


COMMANDS = [
    Command("export", "write a bundle for OpenAI, LangChain, DSPy or promptfoo (checked against the bundle)",
            _export_arguments, _export_run),
]
