"""Convert a PEFT LoRA adapter on a llama-architecture model into a llama.cpp LoRA adapter GGUF.

    python examples/ticket_routing/to_gguf_lora.py examples/ticket_routing/teacher

Follows llama.cpp's convert_lora_to_gguf.py: an "adapter" GGUF of type "lora" with
`adapter.lora.alpha`, and for every adapted base tensor `<gguf name>.lora_a` (HF shape (r, in)) and
`<gguf name>.lora_b` (HF shape (out, r)); gguf reverses the dims on write, as llama.cpp expects.
Only modules that llama.cpp stores unpermuted are accepted: q_proj/k_proj are permuted for RoPE
at conversion time, so a plain copy of their LoRA factors would be wrong.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

SUPPORTED = {"v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def convert(adapter_dir: str | Path, out_path: str | Path | None = None, dtype: str = "f16") -> Path:
    """Write `adapter.gguf` next to the PEFT adapter (or to out_path) and return its path."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    adapter_dir = Path(adapter_dir)
    out_path = Path(out_path) if out_path else adapter_dir / "adapter.gguf"
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))

    pattern = re.compile(r"(?:base_model\.model\.)?model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")
    pairs: dict[str, dict[str, np.ndarray]] = {}
    n_blocks = 0
    for name, tensor in weights.items():
        m = pattern.match(name)
        if not m:
            raise ValueError(f"unexpected tensor in adapter: {name}")
        layer, group, module, which = m.groups()
        if module not in SUPPORTED:
            raise ValueError(f"{module} is not supported: llama.cpp permutes q/k weights, so their LoRA would need it too")
        n_blocks = max(n_blocks, int(layer) + 1)
        pairs.setdefault(f"model.layers.{layer}.{group}.{module}.weight", {})[which] = tensor

    tensor_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_blocks)
    np_dtype = np.float16 if dtype == "f16" else np.float32
    writer = gguf.GGUFWriter(str(out_path), arch="llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(config["lora_alpha"]))
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32)
    for hf_name in sorted(pairs, key=_layer_order):
        a, b = pairs[hf_name]["A"], pairs[hf_name]["B"]
        assert a.shape[0] == b.shape[1], (hf_name, a.shape, b.shape)
        gguf_name = tensor_map.get_name(hf_name, try_suffixes=(".weight",))
        if gguf_name is None:
            raise ValueError(f"no GGUF name for {hf_name}")
        writer.add_tensor(gguf_name + ".lora_a", np.ascontiguousarray(a, dtype=np_dtype))
        writer.add_tensor(gguf_name + ".lora_b", np.ascontiguousarray(b, dtype=np_dtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_path


def _layer_order(hf_name: str) -> tuple[int, str]:
    return int(hf_name.split(".")[2]), hf_name


if __name__ == "__main__":
    print(convert(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))
