"""`langchain`: a Python module defining `prompt`, a langchain-core `ChatPromptTemplate`.

The system prompt is a `SystemMessage` (kept literally: braces in it are not template variables),
the examples go through `FewShotChatMessagePromptTemplate`, and a knn bundle's pool through a
`SemanticSimilarityExampleSelector` over an `InMemoryVectorStore` filled with the bundle's stored
vectors; only the input is embedded, by `embed_query` (foster's runtime when installed, else
sentence-transformers or litellm with the model the bundle names).
"""

from __future__ import annotations

import pprint
import types
from collections.abc import Callable
from typing import Any

from foster.prompts.bundle import Bundle
from foster.prompts.export import ExportContext, header, pool

SUFFIX = ".langchain.py"
MEDIA_TYPE = "text/x-python"

TEMPLATE = '''\
"""LangChain prompt: {header}.

    from {module_hint} import prompt
    prompt.invoke({{"input": "..."}}).to_messages()
"""
from langchain_core.messages import SystemMessage
from langchain_core.prompts import ChatPromptTemplate, FewShotChatMessagePromptTemplate

SYSTEM_PROMPT = {system!r}
EXAMPLES = {examples}
EXAMPLE_PROMPT = ChatPromptTemplate.from_messages([("human", "{{input}}"), ("ai", "{{output}}")])
{selection}

def build_prompt({build_args}) -> ChatPromptTemplate:
    few_shot = FewShotChatMessagePromptTemplate({few_shot_args}, example_prompt=EXAMPLE_PROMPT, input_variables=["input"])
    system = [SystemMessage(content=SYSTEM_PROMPT)] if SYSTEM_PROMPT else []
    return ChatPromptTemplate.from_messages([*system, few_shot, ("human", "{{input}}")])


prompt = build_prompt()
'''

KNN = '''
import base64

import numpy as np
from langchain_core.embeddings import Embeddings
from langchain_core.example_selectors import SemanticSimilarityExampleSelector
from langchain_core.vectorstores import InMemoryVectorStore

K = {k}
EMBEDDING_MODEL = {embedding_model!r}
VECTORS = {vectors!r}  # float16 rows, base64, one per example, as stored in the bundle


def default_embed_query(text: str) -> list[float]:
    try:
        from foster.prompts.embedding import embedder
    except ImportError:  # without foster: the same model through sentence-transformers or litellm
        if EMBEDDING_MODEL != "all-MiniLM-L6-v2":
            import litellm  # the provider's key from its usual environment variable

            row = np.asarray(litellm.embedding(model=EMBEDDING_MODEL, input=[text]).data[0]["embedding"], "f4")
            return (row / np.linalg.norm(row)).tolist()
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer("sentence-transformers/" + EMBEDDING_MODEL)
        return model.encode([text], normalize_embeddings=True)[0].tolist()
    return embedder(EMBEDDING_MODEL)([text])[0].tolist()


class PoolEmbeddings(Embeddings):
    """The pool's vectors as stored; only queries are embedded."""

    def __init__(self, embed_query):
        rows = np.frombuffer(base64.b64decode(VECTORS), "<f2").reshape(len(EXAMPLES), -1).astype("f4")
        self.stored = {{e["input"]: row.tolist() for e, row in zip(EXAMPLES, rows)}}
        self.query = embed_query

    def embed_documents(self, texts):
        return [self.stored[text] for text in texts]

    def embed_query(self, text):
        return list(self.query(text))


class NearestLastSelector(SemanticSimilarityExampleSelector):
    """The bundle shows the closest example last, next to the input."""

    def select_examples(self, input_variables):
        return super().select_examples(input_variables)[::-1]


def example_selector(embed_query=None) -> NearestLastSelector:
    return NearestLastSelector.from_examples(
        EXAMPLES, PoolEmbeddings(embed_query or default_embed_query), InMemoryVectorStore, k=K, input_keys=["input"]
    )
'''


def render(bundle: Bundle, context: ExportContext) -> str:
    knn = pool(bundle)
    examples = pprint.pformat([e.model_dump() for e in bundle.examples], width=110, sort_dicts=False)
    if knn is None:
        selection, build_args, few_shot_args = "", "", "examples=EXAMPLES"
    else:
        selection = KNN.format(k=knn["k"], embedding_model=knn["embedding_model"], vectors=knn["vectors"]["data"])
        build_args, few_shot_args = "embed_query=None", "example_selector=example_selector(embed_query)"
    stem = (bundle.name or "bundle").replace("-", "_")
    return TEMPLATE.format(header=header(bundle), module_hint=stem, system=bundle.system_prompt, examples=examples,
                           selection=selection, build_args=build_args, few_shot_args=few_shot_args)


_ROLES = {"system": "system", "human": "user", "ai": "assistant"}


def load_messages(text: str, inputs: list[str], embed: Callable[[str], Any]) -> list[list[dict]]:
    """Import the written module and render each input with langchain-core."""
    module = types.ModuleType("foster_langchain_export")
    exec(compile(text, module.__name__, "exec"), module.__dict__)  # noqa: S102 - the export itself
    prompt = module.build_prompt(embed) if hasattr(module, "example_selector") else module.prompt
    return [[{"role": _ROLES[m.type], "content": m.content} for m in prompt.invoke({"input": x}).to_messages()]
            for x in inputs]
