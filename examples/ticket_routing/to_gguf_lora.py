"""Convert the demo teacher's PEFT LoRA adapter into a llama.cpp LoRA adapter GGUF.

    python examples/ticket_routing/to_gguf_lora.py examples/ticket_routing/teacher

The converter is foster's own (agent/lora/gguf.py, the one the LoRA fallback uses); this script
only keeps the teacher's choices: the llama architecture and fp16 factors (half the size on disk,
so the committed adapter stays small).
"""

from __future__ import annotations

import sys
from pathlib import Path

from foster.agent.lora.gguf import convert as _convert


def convert(adapter_dir: str | Path, out_path: str | Path | None = None, dtype: str = "f16") -> Path:
    """Write `adapter.gguf` next to the PEFT adapter (or to out_path) and return its path."""
    return _convert(adapter_dir, out_path, arch="llama", dtype=dtype)


if __name__ == "__main__":
    print(convert(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))
