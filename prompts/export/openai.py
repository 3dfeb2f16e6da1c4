"""`openai`: a Chat Completions request template (messages, stop, sampling) as JSON.

The last message's content is "{{input}}"; `loader` is ten lines of Python that fill it in and,
for a knn bundle (which adds `pool`: its examples, k, the embedding and the stored float16
vectors), insert the k nearest examples, nearest last, before the input: exactly what
`Bundle.messages()` sends.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from foster.prompts.bundle import Bundle
from foster.prompts.export import ExportContext, header, pool

SUFFIX = ".openai.json"
MEDIA_TYPE = "application/json"
PLACEHOLDER = "{{input}}"

LOADER = '''\
import base64, json, numpy as np
def request(export, user_input, embed):  # embed(text) -> the vector of export["pool"]["embedding_model"]
    req = json.loads(json.dumps(export["request"]))
    req["messages"][-1]["content"] = user_input
    if export.get("pool"):
        p = export["pool"]
        rows = np.frombuffer(base64.b64decode(p["vectors"]["data"]), "<f2").reshape(-1, p["vectors"]["dim"]).astype("f4")
        sims = (rows / np.linalg.norm(rows, axis=1, keepdims=True)) @ np.asarray(embed(user_input), "f4")
        near = sorted(range(len(sims)), key=lambda i: (-float(sims[i]), i))[: p["k"]]
        req["messages"][-1:-1] = [{"role": r, "content": p["examples"][i][f]} for i in reversed(near) for r, f in (("user", "input"), ("assistant", "output"))]
    return req
'''


def render(bundle: Bundle, context: ExportContext) -> str:
    knn = pool(bundle)
    messages = bundle.messages(PLACEHOLDER) if knn is None else (
        [{"role": "system", "content": bundle.system_prompt}] if bundle.system_prompt else []
    ) + [{"role": "user", "content": PLACEHOLDER}]
    request: dict[str, Any] = {"model": bundle.targets[0], "messages": messages, "temperature": context.temperature}
    if context.max_tokens:
        request["max_tokens"] = context.max_tokens
    document: dict[str, Any] = {
        "description": header(bundle),
        "request": request,
        # for completion (base) targets: Bundle.prompt() ends with "Output:" and stops here
        "completion_stop": bundle.stop,
        "output_contract": bundle.output_contract.model_dump(),
    }
    if knn is not None:
        document["pool"] = knn
    document["loader"] = LOADER  # also for fixed bundles: one way to fill in the input
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def load_messages(text: str, inputs: list[str], embed: Callable[[str], Any]) -> list[list[dict]]:
    """The messages the export sends for each input, through its own loader."""
    document = json.loads(text)
    namespace: dict[str, Any] = {}
    exec(document["loader"], namespace)  # noqa: S102 - the export's own ten lines
    return [namespace["request"](document, user_input, embed)["messages"] for user_input in inputs]
