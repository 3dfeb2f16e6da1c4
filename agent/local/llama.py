"""GGUF models (and llama.cpp LoRA adapters) served by llama-cpp-python."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from foster.agent.local.backend import (
    TRANSCRIPT_STOP,
    Backend,
    Generation,
    LocalRequest,
    message_text,
    render_transcript,
)

# A prefix cache holds the KV state of recent prompts; probes share long system prompts and
# few-shot blocks, so the cached prefix is most of every prompt.
_CACHE_BYTES = int(os.environ.get("FOSTER_LLAMA_CACHE_MB", "512")) << 20


_LOAD_LOCK = threading.Lock()


@contextlib.contextmanager
def _weights_without_extra_buffers() -> Iterator[None]:
    """Load with llama.cpp's extra CPU buffer types (weight repacking, AMX) turned off.

    With them on, the llama.cpp built here segfaults on the first decode of more than one token
    (SmolLM2 Q4_1 and Gemma-3 Q4_K_M alike, on an AVX-512/AMX CPU). Llama() exposes no switch, so
    its default model params are wrapped while it loads. FOSTER_LLAMA_REPACK=1 keeps them on.
    """
    import llama_cpp.llama as llama_module

    if os.environ.get("FOSTER_LLAMA_REPACK") == "1":
        yield
        return
    lib = llama_module.llama_cpp
    original = lib.llama_model_default_params

    def defaults():
        params = original()
        params.use_extra_bufts = False
        return params

    with _LOAD_LOCK:
        lib.llama_model_default_params = defaults
        try:
            yield
        finally:
            lib.llama_model_default_params = original


def _bounded_cache(base):
    """LlamaRAMCache counts only the KV state against its capacity, not the saved logits (tokens × vocab
    floats: ~400 MB per state for Gemma's 262k vocabulary), so it grew until the OOM killer came. This one
    counts both."""

    class BoundedRAMCache(base):
        @property
        def cache_size(self):
            return sum(st.llama_state_size + getattr(getattr(st, "scores", None), "nbytes", 0)
                       for st in self.cache_state.values())

    return BoundedRAMCache


def _threads() -> int:
    # Half the cores: llama.cpp threads spin on barriers, so when anything else is busy (an
    # embedding, a LoRA step, a second model) one thread descheduled stalls all of them. On this
    # 2-core machine under load, 1 thread generated 3x faster than 2.
    return int(os.environ.get("FOSTER_LLAMA_THREADS") or max(1, (os.cpu_count() or 2) // 2))


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """llama.cpp prints some load messages (e.g. Gemma's SWA cache note) even with verbose=False."""
    try:
        fd = os.dup(2)
    except OSError:  # no real stderr (some embedded hosts): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(fd, 2)
    finally:
        os.close(fd)


class LlamaBackend(Backend):
    """One Llama object, one lock: llama.cpp contexts are not safe to share between threads."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        chat: bool | None = None,
        lora_path: str | None = None,
        n_ctx: int = 2048,
    ):
        try:
            from llama_cpp import Llama, LlamaRAMCache
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise RuntimeError("local GGUF models need llama-cpp-python: pip install llama-cpp-python") from exc
        self.model_path = str(model_path)
        self.lora_path = lora_path
        self.lock = threading.Lock()
        with _weights_without_extra_buffers(), _quiet_stderr():
            self.llm = Llama(
                model_path=self.model_path,
                lora_path=lora_path,
                n_ctx=n_ctx,
                n_threads=_threads(),
                # llama-cpp-python's default for prompt (batch) evaluation is every core; its threads
                # spin on barriers, so beside any other busy process one descheduled thread stalls the
                # rest: measured 8x slower prompt evaluation at load 9 (25.6 s vs 3.2 s for 200 tokens).
                n_threads_batch=_threads(),
                verbose=False,
            )
        self.llm.set_cache(_bounded_cache(LlamaRAMCache)(capacity_bytes=_CACHE_BYTES))
        template = self.llm.metadata.get("tokenizer.chat_template")
        self.chat = bool(template) if chat is None else chat
        self._formatter = None
        if self.chat and template:
            eos_id, bos_id = self.llm.token_eos(), self.llm.token_bos()
            # The GGUF's own template, rendered as llama-cpp-python's create_chat_completion does,
            # so raw and streamed calls see the same prompt and we can count its tokens.
            self._formatter = Jinja2ChatFormatter(
                template=template,
                eos_token=self.llm._model.token_get_text(eos_id) if eos_id != -1 else "",
                bos_token=self.llm._model.token_get_text(bos_id) if bos_id != -1 else "",
                stop_token_ids=[eos_id],
            )

    # -- rendering -------------------------------------------------------------------------

    def render(self, request: LocalRequest) -> tuple[list[int], list[str], bool]:
        """Prompt tokens, stop strings, and whether the answer is a chat turn (stripped)."""
        stop = list(request.stop)
        if request.prompt is not None:
            return self.llm.tokenize(request.prompt.encode("utf-8"), add_bos=True, special=True), stop, False
        messages = [{"role": m.get("role", "user"), "content": message_text(m)} for m in request.messages or ()]
        if self._formatter is not None:
            result = self._formatter(messages=messages)
            tokens = self.llm.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True)
            return tokens, stop + [s for s in (result.stop or []) if s], True
        text = render_transcript(messages)
        return self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=True), stop + list(TRANSCRIPT_STOP), True

    def _sampling(self, request: LocalRequest, stop: list[str]) -> dict:
        # OpenAI semantics: temperature and top_p only (llama.cpp's top_k=40 / min_p=0.05 defaults
        # would narrow the sampled distribution foster compares against the teacher's).
        return dict(
            max_tokens=request.max_tokens,
            temperature=max(0.0, request.temperature),
            top_p=request.top_p,
            top_k=0,
            min_p=0.0,
            repeat_penalty=1.0,
            stop=stop or None,
            seed=request.seed,
        )

    def _prime(self, tokens: list[int]) -> None:
        """Evaluate all but the last prompt token now, reusing whatever prefix is already in the KV.

        llama.cpp then always evaluates the last prompt token alone, whether the prompt was new or
        cached. Otherwise the first sample of a fresh prompt (last token inside a batch) and later
        ones (last token re-evaluated alone) get slightly different logits, and the same seed gives
        different samples depending on what ran before.
        """
        llm, prefix = self.llm, tokens[:-1]
        if not prefix:
            return
        common = 0
        for cached, wanted in zip(llm._input_ids.tolist(), prefix):
            if cached != wanted:
                break
            common += 1
        if common < len(prefix):
            llm.n_tokens = common  # eval() drops the KV from here on
            llm.eval(prefix[common:])

    # -- Backend ----------------------------------------------------------------------------

    def generate(self, request: LocalRequest) -> Generation:
        with self.lock:
            tokens, stop, chat = self.render(request)
            self._prime(tokens)
            out = self.llm.create_completion(prompt=tokens, **self._sampling(request, stop))
        choice, usage = out["choices"][0], out["usage"]
        text = choice["text"].strip() if chat else choice["text"]
        return Generation(
            text=text,
            prompt_tokens=usage["prompt_tokens"],
            completion_tokens=usage["completion_tokens"],
            finish_reason=choice.get("finish_reason") or "stop",
        )

    def stream(self, request: LocalRequest) -> Iterator[Generation]:
        with self.lock:  # held while the caller consumes the stream
            tokens, stop, chat = self.render(request)
            self._prime(tokens)
            produced: list[str] = []
            finish = "stop"
            leading = chat
            for chunk in self.llm.create_completion(prompt=tokens, stream=True, **self._sampling(request, stop)):
                choice = chunk["choices"][0]
                text = choice.get("text") or ""
                if leading:  # a chat answer starts after the role marker's whitespace
                    text = text.lstrip()
                    leading = not text
                if text:
                    produced.append(text)
                    yield Generation(text=text)
                finish = choice.get("finish_reason") or finish
            completion = self.llm.tokenize("".join(produced).encode("utf-8"), add_bos=False, special=True)
        yield Generation(text="", prompt_tokens=len(tokens), completion_tokens=len(completion), finish_reason=finish)

    def close(self) -> None:
        with self.lock:
            self.llm.close()

    def count_tokens(self, text: str) -> int:
        with self.lock:
            return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))
