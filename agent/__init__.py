"""The distillation agent: pipeline nodes, the model gateway and the in-process `local/` provider.

Importing this package is cheap on purpose: litellm, torch and llama.cpp are imported where they
are used, so `foster --help` and `import agent` stay fast.
"""

import os

# Set before litellm / transformers / chromadb are imported anywhere below us. litellm otherwise
# fetches its remote cost map at import and, offline, retries for seconds before falling back.
for _key, _value in {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "ANONYMIZED_TELEMETRY": "False",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_key, _value)
