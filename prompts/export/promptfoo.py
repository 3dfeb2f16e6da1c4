"""`promptfoo`: a promptfooconfig.yaml that replays foster's held-out comparison in promptfoo.

The bundle is the prompt (a chat-format JSON prompt; a knn bundle's messages depend on the input,
so each test carries the messages the bundle renders for it), the target is the provider, and the
held-out probes are the tests with the teacher's answer asserted: `equals` for labels and JSON,
`similar` for free text. A target promptfoo cannot reach directly (an embedded `local/` model) is
asked through `foster serve`: the provider is `openai:chat:<bundle id>` and OPENAI_BASE_URL points
at the server, which answers exactly as foster's evaluation does (same rendering, same
normalisation). No URL or key is written into the file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import yaml
from foster.prompts.bundle import Bundle
from foster.prompts.export import ExportContext, header, pool

SUFFIX = ".promptfooconfig.yaml"
MEDIA_TYPE = "application/yaml"
INPUT_MARK = "__FOSTER_INPUT__"
INPUT_SLOT = "{{ input | dump }}"
SIMILAR_THRESHOLD = 0.8


def provider_for(bundle: Bundle, context: ExportContext) -> dict[str, Any]:
    config: dict[str, Any] = {"temperature": context.temperature}
    if context.max_tokens:
        config["max_tokens"] = context.max_tokens
    target = bundle.targets[0]
    if context.provider:
        return {"id": context.provider, "label": target, "config": config}
    vendor, _, model = target.partition("/")
    if vendor == "openai":
        return {"id": f"openai:chat:{model}", "label": target, "config": config}
    if vendor == "anthropic":
        return {"id": f"anthropic:messages:{model}", "label": target, "config": config}
    return {"id": f"openai:chat:{bundle.id}", "label": f"{target} via foster serve", "config": config}


def template(bundle: Bundle) -> str:
    """The fixed bundle's messages as a promptfoo (Nunjucks) chat prompt with the input inserted as
    a JSON string. Braces inside the bundle's text are written as \\u007b / \\u007d (the same JSON),
    so no text of the bundle can open a Nunjucks tag."""
    *fixed, _ = bundle.messages(INPUT_MARK)
    parts = [f'{{"role": {_literal(m["role"])}, "content": {_literal(m["content"])}}}' for m in fixed]
    parts.append(f'{{"role": "user", "content": {INPUT_SLOT}}}')
    return "[" + ", ".join(parts) + "]"


def _literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=False).replace("{", "\\u007b").replace("}", "\\u007d")


def assertion(bundle: Bundle, expected: str) -> dict[str, Any]:
    if bundle.output_contract.format == "text":
        return {"type": "similar", "value": expected, "threshold": SIMILAR_THRESHOLD}
    return {"type": "equals", "value": expected}


def render(bundle: Bundle, context: ExportContext) -> str:
    knn = pool(bundle) is not None
    tests = []
    for probe in context.probes:
        case: dict[str, Any] = {"description": probe.input[:80], "vars": {"input": probe.input},
                                "assert": [assertion(bundle, probe.expected)]}
        if knn:
            case["vars"]["messages"] = bundle.messages(probe.input)
        tests.append(case)
    config = {
        "description": header(bundle),
        "prompts": [{"id": f"bundle-{bundle.id}", "label": f"bundle {bundle.id}",
                     "raw": "{{ messages | dump }}" if knn else template(bundle)}],
        "providers": [provider_for(bundle, context)],
        "defaultTest": {"options": {"transform": "output.trim()"}},
        "tests": tests,
    }
    note = ("# promptfoo eval -c THIS_FILE   (`foster serve` targets: OPENAI_BASE_URL=http://127.0.0.1:8000/v1"
            " and any OPENAI_API_KEY, or FOSTER_API_TOKEN's value when the server sets one)\n")
    return f"# {header(bundle)}\n{note}" + yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=120)


def render_prompt(raw: str, variables: dict[str, Any]) -> str:
    """The one Nunjucks construct `render` writes, `{{ x | dump }}` (JSON.stringify), evaluated; the
    real promptfoo run checks the same in tests/test_export.py."""
    if raw == "{{ messages | dump }}":
        return json.dumps(variables["messages"], ensure_ascii=False)
    return raw.replace(INPUT_SLOT, json.dumps(variables["input"], ensure_ascii=False))


def load_messages(text: str, inputs: list[str], embed: Callable[[str], Any]) -> list[list[dict]]:
    """The prompt each input gets from the config: its test's vars (knn) or the template."""
    config = yaml.safe_load(text)
    raw = config["prompts"][0]["raw"]
    by_input = {case["vars"]["input"]: case["vars"] for case in config.get("tests") or []}
    out = []
    for user_input in inputs:
        variables = by_input.get(user_input, {"input": user_input})
        if raw == "{{ messages | dump }}" and "messages" not in variables:
            raise KeyError(f"the promptfoo export has no test for input {user_input[:60]!r}")
        out.append(json.loads(render_prompt(raw, variables)))
    return out
