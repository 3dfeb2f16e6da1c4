"""A PEFT LoRA adapter as a llama.cpp adapter GGUF (`adapter.gguf`), so llama.cpp serves it fast.

Follows llama.cpp's convert_lora_to_gguf.py: a GGUF of type "adapter" with `adapter.type = lora`,
`adapter.lora.alpha`, and for every adapted base tensor `<gguf name>.lora_a` (HF shape (r, in)) and
`<gguf name>.lora_b` (HF shape (out, r)); gguf reverses the dims on write, as llama.cpp expects.
Only modules llama.cpp stores unpermuted are accepted: q/k are permuted for RoPE at conversion.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

SUPPORTED = {"v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
_TENSOR = re.compile(r"(?:base_model\.model\.)?model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")


def base_architecture(base_gguf: str | Path | None) -> str:
    """`general.architecture` of the base GGUF ("llama" when unknown)."""
    if not base_gguf:
        return "llama"
    from gguf import GGUFReader

    field = GGUFReader(str(base_gguf)).fields.get("general.architecture")
    if field is None:
        return "llama"
    return bytes(field.parts[field.data[0]]).decode()


def convert(adapter_dir: str | Path, out_path: str | Path | None = None, *, arch: str = "llama",
            dtype: str = "f32") -> Path:
    """Write `adapter.gguf` next to the PEFT adapter (or to out_path); returns its path."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    adapter_dir = Path(adapter_dir)
    out_path = Path(out_path) if out_path else adapter_dir / "adapter.gguf"
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    try:
        model_arch = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == arch)
    except StopIteration:
        raise ValueError(f"gguf knows no architecture {arch!r}") from None

    pairs: dict[str, dict[str, np.ndarray]] = {}
    n_blocks = 0
    for name, tensor in weights.items():
        m = _TENSOR.match(name)
        if not m:
            raise ValueError(f"unexpected tensor in adapter: {name}")
        layer, group, module, which = m.groups()
        if module not in SUPPORTED:
            raise ValueError(f"{module} is not supported: llama.cpp permutes q/k weights, so their LoRA would need it too")
        n_blocks = max(n_blocks, int(layer) + 1)
        pairs.setdefault(f"model.layers.{layer}.{group}.{module}.weight", {})[which] = tensor

    tensor_map = gguf.get_tensor_name_map(model_arch, n_blocks)
    np_dtype = np.float16 if dtype == "f16" else np.float32
    tmp = out_path.with_name(out_path.name + ".tmp")
    writer = gguf.GGUFWriter(str(tmp), arch=arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(config["lora_alpha"]))
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32)
    for hf_name in sorted(pairs, key=lambda n: (int(n.split(".")[2]), n)):
        a, b = pairs[hf_name]["A"], pairs[hf_name]["B"]
        if a.shape[0] != b.shape[1]:
            raise ValueError(f"{hf_name}: LoRA factors of shapes {a.shape} and {b.shape} do not match")
        gguf_name = tensor_map.get_name(hf_name, try_suffixes=(".weight",))
        if gguf_name is None:
            raise ValueError(f"no GGUF name for {hf_name} in architecture {arch}")
        writer.add_tensor(gguf_name + ".lora_a", np.ascontiguousarray(a, dtype=np_dtype))
        writer.add_tensor(gguf_name + ".lora_b", np.ascontiguousarray(b, dtype=np_dtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(out_path)
    return out_path
