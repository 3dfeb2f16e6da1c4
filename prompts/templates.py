"""Prompt templates are data: prompts/templates/<name>.yaml, rendered with Jinja2 StrictUndefined.

A template file is a YAML mapping, in one of three shapes:

    template: |            # one template; load("name")
      ...
    templates:             # several; load("name", "key")
      system: |
        ...
    system: |              # or several at the top level (string values only);
      ...                  # other keys (description, version, ...) are metadata

A bare `<name>.j2` file is a single template. A variable the template uses but the caller does
not give raises `MissingVariable`; a syntax error raises when the template is loaded.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

import jinja2

PACKAGE = "foster.prompts"
FOLDER = "templates"
_METADATA_KEYS = {"description", "version", "variables", "notes"}


class MissingVariable(jinja2.UndefinedError):
    """A template used a variable that was not passed to render()."""


class TemplateNotFound(LookupError):
    """No template file or key of that name."""


def environment() -> jinja2.Environment:
    """The Jinja environment every foster template renders in (also bundles' own templates)."""
    return _environment()


@functools.cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def from_string(source: str) -> jinja2.Template:
    """Compile a template source with foster's environment (StrictUndefined)."""
    return environment().from_string(source)


def render_string(source: str, /, **variables: Any) -> str:
    """Render a template source; a missing variable raises MissingVariable."""
    return _render(from_string(source), "<string>", variables)


def _read(name: str) -> tuple[str, str]:
    root = resources.files(PACKAGE).joinpath(FOLDER)
    for suffix in (".yaml", ".yml", ".j2"):
        entry = root.joinpath(name + suffix)
        if entry.is_file():
            return suffix, entry.read_text(encoding="utf-8")
    raise TemplateNotFound(f"no prompt template {name!r} in {PACKAGE}/{FOLDER} (looked for .yaml, .yml, .j2)")


@functools.cache
def sources(name: str) -> dict[str, str]:
    """The template sources in one file, by key ("template" for a single-template file)."""
    suffix, text = _read(name)
    if suffix == ".j2":
        return {"template": text}
    import yaml  # only where a template file is read: a bundle's own template is a string

    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"prompt template file {name}{suffix} must hold a YAML mapping")
    found: dict[str, str] = {}
    if isinstance(data.get("template"), str):
        found["template"] = data["template"]
    if isinstance(data.get("templates"), dict):
        found.update({str(k): v for k, v in data["templates"].items() if isinstance(v, str)})
    if not found:
        found = {
            str(k): v for k, v in data.items() if isinstance(v, str) and k not in _METADATA_KEYS
        }
    if not found:
        raise ValueError(f"prompt template file {name}{suffix} holds no template")
    return found


def keys(name: str) -> list[str]:
    """The template keys a file holds."""
    return list(sources(name))


@functools.cache
def load(name: str, key: str | None = None) -> jinja2.Template:
    """The compiled template `key` of prompts/templates/<name>.yaml (the only/`template` one
    when key is None)."""
    found = sources(name)
    if key is None:
        if "template" in found:
            key = "template"
        elif len(found) == 1:
            key = next(iter(found))
        else:
            raise TemplateNotFound(f"{name!r} holds several templates ({', '.join(found)}): name one")
    if key not in found:
        raise TemplateNotFound(f"{name!r} has no template {key!r} (it has {', '.join(found)})")
    try:
        return from_string(found[key])
    except jinja2.TemplateSyntaxError as exc:
        raise ValueError(f"prompt template {name}:{key} does not parse: {exc}") from exc


def render(name: str, /, key: str | None = None, **variables: Any) -> str:
    """Render template `key` of prompts/templates/<name>.yaml; a missing variable raises.

    (A template variable may be called `name`, not `key`.)
    """
    return _render(load(name, key), f"{name}:{key or 'template'}", variables)


def _render(template: jinja2.Template, label: str, variables: dict[str, Any]) -> str:
    try:
        return template.render(**variables)
    except jinja2.UndefinedError as exc:
        raise MissingVariable(f"prompt template {label}: {exc.message}") from exc
