"""`foster serve` (HTTP API + OpenAI-compatible endpoint + UI at /ui) and `foster ui` (the Gradio app alone)."""
from __future__ import annotations

from foster.ui.cli import Command


def _serve_arguments(p):
    from foster.ui.service import add_serve_arguments

    add_serve_arguments(p)


def _serve_run(args):
    from foster.ui.service import run_serve

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
