"""A self-hosted OpenAI-compatible server is a first-class teacher: reached through litellm with its api_base."""
from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time

import pytest
import uvicorn
from fastapi import FastAPI, Request

sys.path.insert(0, os.path.dirname(__file__))
import fakes  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def openai_server():
    """A minimal OpenAI-shaped chat server answering like the scripted teacher (loopback only)."""
    app = FastAPI()
    seen = {"calls": 0, "auth": set()}

    @app.post("/v1/chat/completions")
    async def chat(req: Request):
        body = await req.json()
        seen["calls"] += 1
        seen["auth"].add(req.headers.get("authorization"))
        text = [m["content"] for m in body["messages"] if m["role"] == "user"][-1]
        return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": fakes.true_label(text)}}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1", seen
    server.should_exit = True
    th.join(5)


def test_distill_from_a_self_hosted_teacher(openai_server, fake_model, tmp_path, monkeypatch, capsys):
    from foster.store.runs import RunRegistry
    from foster.ui.cli import main

    url, seen = openai_server
    target, _ = fake_model(fakes.target, "fake-target")
    monkeypatch.setenv("OLD_FT_KEY", "sk-test-not-a-real-key")
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("\n".join(json.dumps({"input": x}) for x in fakes.HISTORICAL[:12]) + "\n")
    code = main(["distill", "--teacher", "openai/old-fine-tune", "--api-base", f"openai/old-fine-tune={url}",
                 "--api-key-env", "openai/old-fine-tune=OLD_FT_KEY", "--target", target, "--inputs", str(inputs),
                 "--temperatures", "0", "--synth-per-kind", "1", "--max-rounds", "1", "--budget-calls", "5",
                 "--run-id", "remote", "--quiet"])
    assert code == 0
    assert seen["calls"] >= 12 and seen["auth"] == {"Bearer sk-test-not-a-real-key"}
    reg = RunRegistry()
    assert reg.get("remote").status == "done"
    # neither the endpoint nor the key is written anywhere in the run
    for f in reg.run_dir("remote").rglob("*.json"):
        text = f.read_text()
        assert "sk-test-not-a-real-key" not in text
    assert url not in (reg.run_dir("remote") / "best_bundle.json").read_text()
