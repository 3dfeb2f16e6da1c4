"""The gateway on scripted fakes: everything goes through litellm and the `local/` provider."""

from __future__ import annotations

import asyncio
import threading

import pytest

from foster.agent import gateway
from foster.agent.gateway import Completion, Ledger, UnknownModelError, check_model, complete, ledger, use_ledger


def _echo(request) -> str:
    return f"t={request.temperature} seed={request.seed} i={request.sample_index}"


def test_chat_parameters_reach_the_backend(fake_model):
    model, backend = fake_model(_echo)
    c = complete(model, [{"role": "user", "content": "hello there"}], temperature=0.7, top_p=0.9, max_tokens=12, seed=5, n=3)
    assert isinstance(c, Completion)
    assert c.texts == ["t=0.7 seed=5 i=0", "t=0.7 seed=6 i=1", "t=0.7 seed=7 i=2"]
    assert backend.calls == 3
    first = backend.requests[0]
    assert first.messages == ({"role": "user", "content": "hello there"},)
    assert first.prompt is None
    assert (first.top_p, first.max_tokens) == (0.9, 12)
    assert c.prompt_tokens == 2  # counted once for the n samples, as OpenAI does
    assert c.completion_tokens == 9
    assert c.cost == 0.0 and c.latency_s > 0


def test_prompt_is_sent_verbatim_as_a_completion(fake_model):
    model, backend = fake_model(lambda r: f"[{r.prompt}]")
    c = complete(model, prompt="Input: x\nOutput:", max_tokens=5)
    assert c.texts == ["[Input: x\nOutput:]"]
    assert backend.requests[0].prompt == "Input: x\nOutput:"
    assert backend.requests[0].messages is None


def test_stop_strings_are_passed_and_applied(fake_model):
    model, backend = fake_model(lambda r: "LABEL_A\nInput: more")
    c = complete(model, prompt="Input: q\nOutput:", stop=["\nInput:"])
    assert c.texts == ["LABEL_A"]
    assert backend.requests[0].stop == ("\nInput:",)
    c = complete(model, [{"role": "user", "content": "q"}], stop="\n")
    assert c.texts == ["LABEL_A"]


def test_four_argument_script_form(fake_model):
    seen = []

    def script(messages_or_prompt, temperature, seed, sample_index):
        seen.append((messages_or_prompt, temperature, seed, sample_index))
        return "ok"

    model, _ = fake_model(script)
    complete(model, [{"role": "user", "content": "hi"}], temperature=1.0, seed=2, n=2)
    assert seen == [([{"role": "user", "content": "hi"}], 1.0, 2, 0), ([{"role": "user", "content": "hi"}], 1.0, 3, 1)]


def test_litellm_sees_the_local_provider_directly(fake_model):
    """DSPy, the OpenAI endpoint and anything else calling litellm reach the same fakes."""
    import litellm

    model, backend = fake_model(lambda r: "pong")
    response = litellm.completion(model=model, messages=[{"role": "user", "content": "ping"}])
    assert response.choices[0].message.content == "pong"
    assert litellm.completion_cost(completion_response=response) == 0.0
    text = litellm.text_completion(model=model, prompt="ping")
    assert text.choices[0].text == "pong" and backend.requests[-1].prompt == "ping"

    async def both():
        r = await litellm.acompletion(model=model, messages=[{"role": "user", "content": "ping"}])
        stream = await litellm.acompletion(model=model, messages=[{"role": "user", "content": "ping"}], stream=True)
        pieces = [chunk.choices[0].delta.content async for chunk in stream]
        return r.choices[0].message.content, "".join(p for p in pieces if p)

    assert asyncio.run(both()) == ("pong", "pong")
    pieces = [c.choices[0].delta.content for c in litellm.completion(model=model, messages=[{"role": "user", "content": "x"}], stream=True)]
    assert "".join(p for p in pieces if p) == "pong"


def test_usage_is_counted_in_the_ledgers(fake_model):
    model, _ = fake_model(lambda r: "one two three")
    with use_ledger() as run:
        complete(model, [{"role": "user", "content": "a b"}], n=2)
        assert ledger() is run
    complete(model, [{"role": "user", "content": "a b"}])
    assert run.snapshot()[model] == {"calls": 1, "prompt_tokens": 2, "completion_tokens": 6, "cost": 0.0, "seconds": pytest.approx(run.snapshot()[model]["seconds"]), "errors": 0, "requests": 1, "retries": 0, "timeouts": 0}
    process = gateway.process_ledger().snapshot()[model]
    assert process["calls"] == 2 and process["completion_tokens"] == 9
    assert ledger() is gateway.process_ledger()


def test_ledger_is_thread_safe():
    book = Ledger()
    threads = [threading.Thread(target=lambda: [book.record("m", prompt_tokens=1) for _ in range(500)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert book.snapshot()["m"]["calls"] == 2000
    assert book.totals()["prompt_tokens"] == 2000


def test_one_model_serves_many_threads(fake_model):
    model, backend = fake_model(lambda r: "x")
    results = []
    threads = [threading.Thread(target=lambda: results.append(complete(model, prompt="p").texts)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [["x"]] * 6 and backend.calls == 6


def test_failures_are_recorded_not_retried_for_local(fake_model):
    def broken(request):
        raise RuntimeError("weights on fire")

    model, backend = fake_model(broken)
    with pytest.raises(Exception, match="weights on fire"):
        complete(model, prompt="p", num_retries=3)
    assert backend.calls == 1
    assert gateway.process_ledger().snapshot()[model]["errors"] == 1


def test_unknown_provider_and_alias_are_one_line_errors(tmp_path):
    with pytest.raises(UnknownModelError) as provider:
        check_model("nope/x")
    assert "nope" in str(provider.value) and "\n" not in str(provider.value)
    with pytest.raises(UnknownModelError, match="unknown local model"):
        complete("local/not-a-model", prompt="hi")
    with pytest.raises(UnknownModelError, match="GGUF file not found"):
        check_model(f"local/{tmp_path}/missing.gguf")
    with pytest.raises(UnknownModelError, match="adapter directory not found"):
        check_model(f"local/smollm2-135m-instruct@{tmp_path}/no-adapter")
    check_model("openai/gpt-4o-mini")  # known provider: no call, no key needed


def test_count_tokens_is_none_for_remote_and_fakes(fake_model):
    model, _ = fake_model(lambda r: "x")
    assert gateway.count_tokens("openai/gpt-4o-mini", "hello") is None
    assert gateway.count_tokens(model, "hello") is None


def test_local_models_lists_the_embedded_aliases():
    rows = {alias: (installed, path) for alias, installed, path in gateway.local_models()}
    assert set(rows) >= {"smollm2-135m-instruct", "gemma3-270m"}


def test_cli_ask_with_a_fake(fake_model, capsys):
    from foster.ui.cli import main

    model, backend = fake_model(lambda r: f"  answer to {r.messages[-1]['content']} with {r.messages[0]['content']}  ")
    assert main(["ask", model, "hi", "--system", "be nice", "--temperature", "0.5", "--max-tokens", "7"]) == 0
    assert capsys.readouterr().out == "answer to hi with be nice\n"
    assert (backend.requests[0].temperature, backend.requests[0].max_tokens) == (0.5, 7)


def test_cli_ask_unknown_provider_exits_2_with_one_line(capsys):
    from foster.ui.cli import main

    assert main(["ask", "nope/x", "hi"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("foster: error: ") and "nope" in lines[0]


def test_cli_models_lists_aliases(capsys):
    from foster.ui.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "local/smollm2-135m-instruct" in out and "local/gemma3-270m" in out


def test_stream_yields_pieces_and_records_reported_tokens_not_chunks():
    """gateway.stream() is complete()'s streaming twin: same provider path, usage from the backend."""
    from foster.agent.local.backend import Backend, Generation
    from foster.agent.local.registry import register_backend, unregister_backend

    class Words(Backend):
        def generate(self, request):
            return Generation(text="on it now", prompt_tokens=7, completion_tokens=11)

        def stream(self, request):
            for i, word in enumerate(["on", "it", "now"]):
                yield Generation(text=word if i == 0 else " " + word)
            yield Generation(text="", prompt_tokens=7, completion_tokens=11)

    register_backend("words", Words())
    try:
        with use_ledger() as run_ledger:
            pieces = list(gateway.stream("local/words", messages=[{"role": "user", "content": "hi"}], max_tokens=8))
        assert "".join(pieces) == "on it now" and len(pieces) == 3
        usage = run_ledger.snapshot()["local/words"]
        assert usage["completion_tokens"] == 11 and usage["prompt_tokens"] == 7  # the backend's count, not 3 chunks
    finally:
        unregister_backend("words")
