"""Persistence: Chroma collections (probes, observations, divergences) and the data directory."""

import os

# Set before chromadb / sentence-transformers are imported anywhere below us: the store must
# work offline and must not phone home.
for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "ANONYMIZED_TELEMETRY": "False",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_key, _value)
