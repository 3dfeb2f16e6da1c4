"""PEFT adapters on a GGUF base, served by transformers (the GGUF dequantized to fp32).

Slow (a 135M model loads in ~18 s and generates ~15 tok/s on 2 cores): adapters converted to
`adapter.gguf` are served by llama.cpp instead (see registry.adapter_engine).
"""

from __future__ import annotations

import threading
from pathlib import Path

from foster.agent.local.backend import (
    TRANSCRIPT_STOP,
    Backend,
    Generation,
    LocalRequest,
    message_text,
    render_transcript,
    truncate_at_stop,
)


class PeftBackend(Backend):
    def __init__(self, gguf_path: str | Path, adapter_dir: str | Path, *, chat: bool | None = None):
        try:
            import torch
            from peft import PeftModel
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise RuntimeError("PEFT adapters need torch, transformers and peft installed") from exc
        gguf = Path(gguf_path)
        self.lock = threading.Lock()
        self.tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        base = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, torch_dtype=torch.float32)
        self.model = PeftModel.from_pretrained(base, str(adapter_dir))
        self.model.eval()
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        self.chat = has_template if chat is None else (chat and has_template)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def render(self, request: LocalRequest) -> tuple[str, list[str], bool, bool]:
        """Prompt text, stop strings, whether it is a chat turn, whether to add special tokens."""
        stop = list(request.stop)
        if request.prompt is not None:
            return request.prompt, stop, False, True
        messages = [{"role": m.get("role", "user"), "content": message_text(m)} for m in request.messages or ()]
        if self.chat:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return text, stop, True, False  # the template already holds its special tokens
        return render_transcript(messages), stop + list(TRANSCRIPT_STOP), True, True

    def generate(self, request: LocalRequest) -> Generation:
        import torch

        text, stop, chat, add_special = self.render(request)
        inputs = self.tokenizer(text, return_tensors="pt", add_special_tokens=add_special)
        sampling = request.temperature > 0
        kwargs = dict(
            max_new_tokens=request.max_tokens,
            do_sample=sampling,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        if stop:  # stop early; the text is still cut post hoc, as a stop string may end mid-token
            kwargs.update(stop_strings=stop, tokenizer=self.tokenizer)
        if sampling:
            kwargs.update(temperature=request.temperature, top_p=request.top_p, top_k=0)
        else:  # silence generation_config's sampling defaults under greedy decoding
            kwargs.update(temperature=None, top_p=None, top_k=None)
        with self.lock, torch.inference_mode():
            if request.seed is not None:
                torch.manual_seed(request.seed)
            out = self.model.generate(**inputs, **kwargs)
        prompt_len = inputs["input_ids"].shape[1]
        new = out[0, prompt_len:]
        answer = self.tokenizer.decode(new, skip_special_tokens=True)
        answer, stopped = truncate_at_stop(answer, stop)
        hit_eos = len(new) < request.max_tokens
        return Generation(
            text=answer.strip() if chat else answer,
            prompt_tokens=int(prompt_len),
            completion_tokens=int(len(new)),
            finish_reason="stop" if stopped or hit_eos else "length",
        )

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
