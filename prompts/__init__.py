"""The bundle format, token counting, and the prompt templates the agent uses (as data)."""

import os

# A bundle with retrieved examples loads the embedding model; it must never try the network.
for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "ANONYMIZED_TELEMETRY": "False",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_key, _value)
