"""`dspy`: a saved `dspy.Predict("input -> answer")` program, written by DSPy's own `save()`.

Instructions are the system prompt and demos the examples. A knn bundle saves its whole pool as
demos plus a `foster_knn` entry (k, the embedding, the stored vectors): set `program.demos` to the
k nearest (nearest last) per input. DSPy's KNN retriever embeds "input: <text>", not the text, so
it would pick other neighbours than the bundle measured; the stored vectors pick the same ones.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np
from foster.prompts.bundle import Bundle
from foster.prompts.export import ExportContext, header, pool

SUFFIX = ".dspy.json"
MEDIA_TYPE = "application/json"
SIGNATURE = "input -> answer"  # the program shape foster optimizes (foster.agent.optimize)


def render(bundle: Bundle, context: ExportContext) -> str:
    import dspy

    program = dspy.Predict(dspy.Signature(SIGNATURE, bundle.system_prompt or None))
    program.demos = [dspy.Example(input=e.input, answer=e.output).with_inputs("input") for e in bundle.examples]
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        program.save(path)
        with open(path, encoding="utf-8") as handle:
            state = json.load(handle)
    finally:
        os.unlink(path)
    state["foster"] = {"description": header(bundle), "output_contract": bundle.output_contract.model_dump(),
                       "temperature": context.temperature, "max_tokens": context.max_tokens}
    knn = pool(bundle)
    if knn is not None:
        state["foster_knn"] = {key: knn[key] for key in ("k", "embedding_model", "vectors")}
    return json.dumps(state, indent=2, ensure_ascii=False) + "\n"


def nearest_demos(program: Any, user_input: str, embed: Callable[[str], Any]) -> list[dict]:
    """The demos a knn export shows for this input: k nearest by the stored vectors, nearest last."""
    knn = getattr(program, "foster_knn", None)
    if not knn:
        return list(program.demos)
    vectors = knn["vectors"]
    rows = np.frombuffer(base64.b64decode(vectors["data"]), "<f2").reshape(-1, vectors["dim"]).astype("f4")
    sims = (rows / np.linalg.norm(rows, axis=1, keepdims=True)) @ np.asarray(embed(user_input), "f4")
    near = sorted(range(len(sims)), key=lambda i: (-float(sims[i]), i))[: knn["k"]]
    return [program.demos[i] for i in reversed(near)]


def load_messages(text: str, inputs: list[str], embed: Callable[[str], Any]) -> list[list[dict]]:
    """Load the file with dspy and render its instructions and demos as plain chat messages (the
    shape foster's DSPy adapter sends; DSPy's ChatAdapter would add its field markers)."""
    import dspy

    fd, path = tempfile.mkstemp(suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        program = dspy.Predict(SIGNATURE)
        program.load(path)
    finally:
        os.unlink(path)
    instructions = program.signature.instructions
    system = [] if instructions == _default_instructions() else [{"role": "system", "content": instructions}]
    out = []
    for user_input in inputs:
        messages = list(system)
        for demo in nearest_demos(program, user_input, embed):
            messages += [{"role": "user", "content": demo["input"]}, {"role": "assistant", "content": demo["answer"]}]
        out.append(messages + [{"role": "user", "content": user_input}])
    return out


def _default_instructions() -> str:
    import dspy

    return dspy.Signature(SIGNATURE).instructions
