"""`foster serve` (HTTP API + OpenAI-compatible endpoint + UI at /ui) and `foster ui` (the Gradio app alone)."""
from __future__ import annotations

from foster.ui.cli import Command


def _serve_arguments(p):
    from foster.ui.service import add_serve_arguments

    add_serve_arguments(p)


def serve_urls(host: str, port: int, ui: bool = True) -> list[str]:
    """What `foster serve` prints when it starts: where the API, the UI and the docs are."""
    shown = f"[{host}]" if ":" in host else ("127.0.0.1" if host in ("0.0.0.0", "::") else host)
    base = f"http://{shown}:{port}"
    lines = [f"foster serve: {base}/v1 (OpenAI-compatible: base_url={base}/v1)"]
    if ui:
        lines.append(f"  UI:   {base}/ui")
    lines.append(f"  docs: {base}/docs")
    return lines


def _serve_run(args):
    from foster.ui.service import run_serve

    for line in serve_urls(args.host, args.port, not args.no_ui):
        print(line, flush=True)
    return run_serve(args)


def _ui_arguments(p):
    from foster.ui.gradio_app import add_ui_arguments

    add_ui_arguments(p)


def _ui_run(args):
    from foster.ui.gradio_app import run_ui

    return run_ui(args)


COMMANDS = [
    Command("serve", "serve the HTTP API, the OpenAI-compatible endpoint and the UI at /ui", _serve_arguments, _serve_run),
    Command("ui", "launch the Gradio comparison UI on its own", _ui_arguments, _ui_run),
]
