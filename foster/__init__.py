"""foster: adopt an orphaned fine-tune onto a new base model.

The project's folders (agent/, prompts/, store/, ui/) are installed under this one namespace
(`foster.agent`, `foster.prompts`, ...) so they never clash with a user's own top-level `agent` or
`prompts` package. In a source checkout without an install, the folders beside this one are
added to the package path so `python -m bench` and the example scripts work from the repo root.
"""
import os as _os

_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if not _os.path.isdir(_os.path.join(_os.path.dirname(__file__), "agent")) and _os.path.isfile(
    _os.path.join(_root, "agent", "graph.py")
):
    __path__.append(_root)  # noqa: F821 - a package's own __path__
