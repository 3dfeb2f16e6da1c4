"""The attack suite (issue 14): every hole an outside tester found, as a test that fails if it reopens.

Each test attacks foster the way the tester did: through the CLI, the HTTP API (in-process), or
two processes on one run, against a loopback OpenAI-compatible teacher that counts every request.
"""
from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fastapi import FastAPI, Request  # module level: the loopback's handler annotations resolve here
from fastapi.responses import JSONResponse

sys.path.insert(0, os.path.dirname(__file__))
import fakes  # noqa: E402
from service_fixtures import RUN_ID, TARGET, label_for, make_run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _home() -> Path:
    return Path(os.environ["FOSTER_HOME"])


def _files_outside(root: Path, since: float, home: Path) -> list[Path]:
    """Files modified after `since` anywhere under `root` except inside `home`."""
    out = []
    for p in root.rglob("*"):
        try:
            if p.is_file() and p.stat().st_mtime >= since and home not in p.resolve().parents:
                out.append(p)
        except OSError:
            continue
    return out


def _cli(argv, capsys):
    from foster.ui.cli import main

    code = main(argv)
    err = [x for x in capsys.readouterr().err.strip().splitlines() if x.strip()]
    return code, err


def _write_jsonl(path: Path, texts) -> str:
    path.write_text("".join(json.dumps({"input": t}) + "\n" for t in texts))
    return str(path)


# -- a loopback OpenAI-compatible teacher that counts every request ----------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopbackTeacher:
    """An OpenAI-shaped chat server on 127.0.0.1; `script(n)` may return a status code or 'hang' per request."""

    def __init__(self, delay: float = 0.0, script=None):
        self.requests: list[tuple] = []
        self.auth: set = set()
        self._lock = threading.Lock()
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(req: Request):
            import asyncio

            body = await req.json()
            text = [m["content"] for m in body["messages"] if m["role"] == "user"][-1]
            with self._lock:
                self.requests.append((text, body.get("temperature"), body.get("seed")))
                self.auth.add(req.headers.get("authorization"))
                n = len(self.requests)
            action = script(n) if script else None
            if action == "hang":
                await asyncio.sleep(30)
            elif isinstance(action, int):
                return JSONResponse({"error": {"message": "scripted failure", "type": "server_error"}}, status_code=action)
            if delay:
                await asyncio.sleep(delay)
            return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": fakes.true_label(text)}}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}

        import uvicorn

        self.port = _free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self):
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(5)


# -- 1. arbitrary file write through POST /v1/bundles -------------------------------------------


@pytest.fixture
def api(monkeypatch):
    from fastapi.testclient import TestClient

    from foster.ui.service import create_app

    monkeypatch.delenv("FOSTER_API_TOKEN", raising=False)
    with TestClient(create_app(ui=False), raise_server_exceptions=False) as client:
        yield client


def _bundle_body(**over) -> dict:
    body = {"teacher": "local/fake-teacher", "targets": [TARGET], "system_prompt": "Route the ticket."}
    body.update(over)
    return body


def test_bundle_id_is_never_taken_from_the_body(api, tmp_path, fake_model):
    from foster.prompts.bundle import Bundle

    fake_model(fakes.target, TARGET.removeprefix("local/"))
    home = _home()
    made = make_run(home)
    best = made["best_path"]
    before = best.read_bytes()
    since = time.time() - 1
    outside = tmp_path / "outside" / "evil"
    for evil in (str(outside), f"../runs/{RUN_ID}/best_bundle", "a/b", "x" * 300):
        response = api.post("/v1/bundles", json=_bundle_body(id=evil, system_prompt=f"overwrite {evil[:10]}"))
        assert response.status_code == 201, response.text
        got = response.json()
        expected = Bundle.model_validate(_bundle_body(system_prompt=f"overwrite {evil[:10]}")).content_hash()
        assert got["id"] == expected
        assert Path(got["path"]).resolve().parent == (home / "bundles").resolve()
    assert best.read_bytes() == before
    assert not list(tmp_path.glob("outside*")) and not _files_outside(tmp_path, since, home)


# -- 2. server secrets sent to a caller's URL; server files opened at a caller's request ---------


def test_runs_api_takes_no_endpoints_or_key_variables_from_the_caller(api, monkeypatch):
    from foster.agent import runs as agent_runs

    started = []
    monkeypatch.setattr(agent_runs, "start_run", lambda config, background=False: started.append(config) or "x")
    monkeypatch.setenv("SERVERSECRET", "sk-server-secret-value-0123456789")
    base = {"teacher": "local/fake-teacher", "targets": [TARGET], "uploads": {"inputs": '{"input": "hello"}\n'}}
    assert api.post("/v1/runs", json=base).status_code == 202 and len(started) == 1
    started.clear()
    for extra in ({"endpoints": {"openai/old-ft": {"api_base": "http://127.0.0.1:9/v1", "api_key_env": "SERVERSECRET"}}},
                  {"models_file": "/etc/hostname"}, {"api_key_env": "SERVERSECRET"}, {"api_base": "http://127.0.0.1:9/v1"}):
        response = api.post("/v1/runs", json={**base, **extra})
        assert response.status_code == 422, (extra, response.text)
    assert not started


def test_runs_api_opens_no_server_path_outside_the_data_dir(api, monkeypatch, tmp_path):
    from foster.agent import runs as agent_runs

    started = []
    monkeypatch.setattr(agent_runs, "start_run", lambda config, background=False: started.append(config) or "x")
    real = tmp_path / "exists.jsonl"
    _write_jsonl(real, ["hello"])
    answers = []
    for path in (str(real), str(tmp_path / "missing.jsonl"), "/etc/passwd", "../../etc/passwd"):
        response = api.post("/v1/runs", json={"teacher": "local/fake-teacher", "targets": [TARGET], "inputs": path})
        assert response.status_code == 422, response.text
        answers.append(response.json()["error"]["message"].replace(path, "PATH"))
    # the same answer whether the file exists or not: no existence oracle
    assert answers[0] == answers[1] == answers[2]
    assert not started
    # inside the data directory, or uploaded as content, inputs are accepted
    data = _home() / "data"
    data.mkdir(parents=True, exist_ok=True)
    _write_jsonl(data / "in.jsonl", ["hello there"])
    ok = api.post("/v1/runs", json={"teacher": "local/fake-teacher", "targets": [TARGET], "inputs": "in.jsonl"})
    up = api.post("/v1/runs", json={"teacher": "local/fake-teacher", "targets": [TARGET],
                                    "uploads": {"inputs": '{"input": "hi there"}\n'}})
    assert (ok.status_code, up.status_code) == (202, 202), (ok.text, up.text)
    for config in started:
        assert _home().resolve() in Path(config.inputs).resolve().parents


def test_runs_api_names_remote_models_by_alias_from_the_server_models_file(api, monkeypatch, tmp_path):
    from foster.agent import runs as agent_runs

    started = []
    monkeypatch.setattr(agent_runs, "start_run", lambda config, background=False: started.append(config) or "x")
    models = tmp_path / "models.yaml"
    models.write_text("old-ft:\n  model: openai/old-ft\n  api_base: http://127.0.0.1:9/v1\n  api_key_env: OLD_KEY\n")
    monkeypatch.setenv("FOSTER_MODELS_FILE", str(models))
    body = {"teacher": "old-ft", "targets": [TARGET], "uploads": {"inputs": '{"input": "hi there"}\n'}}
    monkeypatch.setenv("OLD_KEY", "sk-old-key-0123456789abcdef")
    response = api.post("/v1/runs", json=body)
    assert response.status_code == 202, response.text
    assert started[-1].models_file == str(models) and not started[-1].endpoints
    # a model path on the server is not a model name the API accepts
    for teacher in ("local//etc/passwd.gguf", "local/smollm2-135m-instruct@/etc", "http://127.0.0.1:9/v1"):
        response = api.post("/v1/runs", json={**body, "teacher": teacher})
        assert response.status_code == 422, (teacher, response.text)


# -- 3. --run-id escapes FOSTER_HOME ---------------------------------------------------------------


@pytest.mark.parametrize("run_id", ["../../../escaped", "ABSOLUTE", "a/b", "with space", "..", ".hidden"])
def test_run_id_never_escapes_foster_home(run_id, fake_model, tmp_path, capsys):
    absolute = tmp_path / "escaped-abs"
    run_id = str(absolute) if run_id == "ABSOLUTE" else run_id
    teacher, _ = fake_model(fakes.teacher, "fake-teacher")
    target, _ = fake_model(fakes.target, "fake-target")
    inputs = _write_jsonl(tmp_path / "in.jsonl", fakes.HISTORICAL[:4])
    since = time.time() - 1
    code, err = _cli(["distill", "--teacher", teacher, "--target", target, "--inputs", inputs, "--run-id", run_id,
                      "--max-rounds", "1", "--quiet"], capsys)
    assert code == 2 and len(err) == 1 and "run id" in err[0], err
    assert not absolute.exists()
    stray = [p for p in _files_outside(tmp_path, since, _home()) if str(p) != inputs]
    assert not stray, f"written outside FOSTER_HOME: {stray}"
    runs = _home() / "runs"
    assert not runs.exists() or not any(runs.iterdir())


def test_the_registry_validates_ids_itself():
    from foster.store.runs import RunRegistry

    reg = RunRegistry()
    for bad in ("../x", "/abs", "a/b", "", "a b"):
        with pytest.raises(ValueError):
            reg.create(bad, {})
        with pytest.raises(ValueError):
            reg.run_dir(bad)


# -- 4. two processes on one run; a dead owner; cancel on a dead run ------------------------------

_RUN_SCRIPT = """
import sys, json
sys.path.insert(0, {tests!r})
import fakes
from foster.agent.local.fake import ScriptedBackend
from foster.agent.local.registry import register_backend
register_backend("fake-target", ScriptedBackend(fakes.target))
from foster.ui.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _foster(args, env, **kw):
    code = _RUN_SCRIPT.format(tests=str(Path(__file__).parent))
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_concurrent_resume_refuses_and_a_dead_owner_is_taken_over(tmp_path):
    inputs = _write_jsonl(tmp_path / "in.jsonl", fakes.HISTORICAL)
    # one teacher request in flight at a time, so the kill can strand at most one answer
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FOSTER_KEY": "sk-loopback-0123456789abcdef",
           "FOSTER_LEASE_TTL": "5", "FOSTER_REMOTE_CONCURRENCY": "1"}
    with LoopbackTeacher(delay=0.05) as teacher:
        first = _foster(["distill", "--teacher", "openai/old-ft", "--api-base", f"openai/old-ft={teacher.url}",
                         "--api-key-env", "openai/old-ft=FOSTER_KEY", "--target", "local/fake-target",
                         "--inputs", inputs, "--samples", "3", "--max-rounds", "1", "--budget-calls", "5",
                         "--synth-per-kind", "1", "--run-id", "r4", "--quiet"], env)
        deadline = time.time() + 300
        while time.time() < deadline and len(teacher.requests) < 20 and first.poll() is None:
            time.sleep(0.05)
        if first.poll() is not None:
            pytest.fail(f"the first run ended early ({first.returncode}): {first.stderr.read()[-2000:]}")
        assert len(teacher.requests) >= 20, "the run never reached probing"
        # a second process on the same run while the first is probing: refused at once, in one line
        second = _foster(["resume", "r4", "--quiet"], env)
        out, err = second.communicate(timeout=300)
        lines = [x for x in err.strip().splitlines() if x.strip()]
        assert second.returncode == 2 and len(lines) == 1 and "r4" in lines[0], (second.returncode, err)
        # the owner dies: the run shows as interrupted, and resume takes it over
        alive = list(teacher.requests)  # while both processes lived, no key was asked twice
        assert len(set(alive)) == len(alive), "two processes asked the teacher the same key"
        first.send_signal(signal.SIGKILL)
        first.wait()
        first.stdout.close(), first.stderr.close()
        from foster.store.runs import RunRegistry

        assert RunRegistry().get("r4").status == "interrupted"
        third = _foster(["resume", "r4", "--quiet"], env)
        out, err = third.communicate(timeout=300)
        assert third.returncode == 0, err
    assert RunRegistry().get("r4").status == "done"
    keys = [k for k in teacher.requests]
    repeats = len(keys) - len(set(keys))
    # only the one request in flight at the kill may be asked twice (its answer was never stored)
    from collections import Counter

    twice = [(k, n) for k, n in Counter(keys).items() if n > 1]
    assert repeats <= 1, f"{repeats} of {len(keys)} teacher requests repeated a key: {twice}"


def test_cancel_on_an_interrupted_run_marks_it_cancelled(capsys):
    from foster.store import leases
    from foster.store.runs import RunRegistry

    reg = RunRegistry()
    reg.create("dead", {}, status="running")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert leases.acquire("dead", f"test:{dead.pid}", ttl=60, pid=dead.pid)
    assert reg.get("dead").status == "interrupted"
    code, err = _cli(["cancel", "dead"], capsys)
    assert code == 0, err
    assert reg.get("dead").status == "cancelled"


def test_lease_is_held_by_one_owner_at_a_time():
    from foster.store import leases
    from foster.store.runs import RunRegistry

    RunRegistry().create("leased", {})
    assert leases.acquire("leased", "a", ttl=60)
    assert not leases.acquire("leased", "b", ttl=60)
    assert leases.holder("leased").owner == "a" and not leases.is_stale(leases.holder("leased"))
    assert leases.renew("leased", "a", ttl=60) and not leases.renew("leased", "b", ttl=60)
    leases.release("leased", "b")  # not the holder: nothing happens
    assert leases.holder("leased").owner == "a"
    leases.release("leased", "a")
    assert leases.holder("leased") is None and leases.acquire("leased", "b", ttl=0.01)
    time.sleep(0.05)
    assert leases.is_stale(leases.holder("leased")) and leases.acquire("leased", "c", ttl=60)


# -- 5. bad input refused before the first model call ----------------------------------------------


@pytest.fixture
def counted(fake_model, tmp_path):
    teacher, t_backend = fake_model(fakes.teacher, "fake-teacher")
    target, g_backend = fake_model(fakes.target, "fake-target")
    inputs = _write_jsonl(tmp_path / "in.jsonl", fakes.HISTORICAL[:6])
    return {"teacher": teacher, "target": target, "inputs": inputs, "backends": (t_backend, g_backend)}


def _distill(counted, *extra):
    return ["distill", "--teacher", counted["teacher"], "--target", counted["target"], "--inputs", counted["inputs"],
            "--max-rounds", "1", "--quiet", *extra]


def _no_calls_no_runs(counted):
    assert all(b.calls == 0 for b in counted["backends"])
    runs = _home() / "runs"
    assert not runs.exists() or not any(runs.iterdir())


@pytest.mark.parametrize("extra,expect", [
    (["--temperatures", "nan"], "--temperatures"),
    (["--temperatures", "0,inf"], "--temperatures"),
    (["--temperatures", "-0.5"], "--temperatures"),
    (["--threshold", "nan"], "--threshold"),
    (["--min-gain", "nan"], "--min-gain"),
    (["--max-tokens", "0"], "--max-tokens"),
    (["--max-cost", "-1"], "--max-cost"),
    (["--task", "classify tickets, api_key=sk-abcdefghijklmnopqrstuvwxyz123456"], "--task"),
    (["--holdout-fraction", "nan"], "--holdout-fraction"),
    (["--holdout-fraction", "0.95"], "--holdout-fraction"),
    (["--max-new-tokens", "0"], "--max-new-tokens"),
    (["--max-new-tokens", "-5"], "--max-new-tokens"),
    (["--recall-calls", "-1"], "--recall-calls"),
    (["--primary-metric", "bogus"], "--primary-metric"),
    (["--primary-metric", "structure", "--fidelity", "judge"], "--primary-metric"),
])
def test_bad_numbers_and_secrets_are_refused_before_any_call(counted, capsys, extra, expect):
    code, err = _cli(_distill(counted, *extra), capsys)
    assert code == 2 and len(err) == 1 and expect in err[0], err
    _no_calls_no_runs(counted)


def test_runs_api_takes_the_primary_metric_and_refuses_a_bad_one(api, monkeypatch):
    from foster.agent import runs as agent_runs

    started = []
    monkeypatch.setattr(agent_runs, "start_run", lambda config, background=False: started.append(config) or "x")
    base = {"teacher": "local/fake-teacher", "targets": [TARGET], "uploads": {"inputs": '{"input": "hello"}\n'}}
    assert api.post("/v1/runs", json={**base, "primary_metric": "structure"}).status_code == 202
    assert started[-1].primary_metric == "structure"
    for bad in ({"primary_metric": "bogus"}, {"primary_metric": "structure", "fidelity": "judge", "judge": "local/j"}):
        response = api.post("/v1/runs", json={**base, **bad})
        assert response.status_code == 422 and "primary" in response.text, (bad, response.text)
    assert len(started) == 1


def test_undecodable_input_names_file_and_line(counted, capsys, tmp_path):
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(b'{"input": "fine"}\n{"input": "caf\xe9"}\n')
    counted["inputs"] = str(bad)
    code, err = _cli(_distill(counted), capsys)
    assert code == 2 and len(err) == 1 and f"{bad}:2" in err[0], err
    _no_calls_no_runs(counted)


def test_overlong_input_line_is_refused(counted, capsys, tmp_path, monkeypatch):
    big = tmp_path / "big.jsonl"
    big.write_text(json.dumps({"input": "fine"}) + "\n" + json.dumps({"input": "x" * 5_000_000}) + "\n")
    counted["inputs"] = str(big)
    code, err = _cli(_distill(counted), capsys)
    assert code == 2 and len(err) == 1 and f"{big}:2" in err[0], err
    _no_calls_no_runs(counted)
    # the bound is configurable
    monkeypatch.setenv("FOSTER_MAX_LINE_BYTES", "10")
    counted["inputs"] = _write_jsonl(tmp_path / "short.jsonl", ["a fairly ordinary line"])
    code, err = _cli(_distill(counted), capsys)
    assert code == 2 and "FOSTER_MAX_LINE_BYTES" in err[0], err


def test_remote_teacher_without_a_key_is_refused_before_any_call(counted, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    code, err = _cli(["distill", "--teacher", "openai/gpt-4o-mini", "--target", counted["target"], "--inputs",
                      counted["inputs"], "--quiet"], capsys)
    assert code == 2 and len(err) == 1 and "OPENAI_API_KEY" in err[0], err
    code, err = _cli(["distill", "--teacher", "openai/x", "--api-key-env", "openai/x=NOT_SET_ANYWHERE", "--target",
                      counted["target"], "--inputs", counted["inputs"], "--quiet"], capsys)
    assert code == 2 and len(err) == 1 and "NOT_SET_ANYWHERE" in err[0], err
    _no_calls_no_runs(counted)


@pytest.mark.parametrize("extra,expect", [
    (["--temperature", "-1"], "--temperature"), (["--temperature", "nan"], "--temperature"),
    (["--max-tokens", "0"], "--max-tokens"),
])
def test_ask_refuses_bad_numbers_and_empty_text(fake_model, capsys, extra, expect):
    model, backend = fake_model(lambda r: "pong")
    code, err = _cli(["ask", model, "ping", *extra], capsys)
    assert code == 2 and len(err) == 1 and expect in err[0], err
    code, err = _cli(["ask", model, "   "], capsys)
    assert code == 2 and len(err) == 1 and "text" in err[0], err
    assert backend.calls == 0


@pytest.mark.parametrize("argv", [["distill", "--threshold", "abc"], ["ask"], ["nope"], ["distill", "--samples", "x"]])
def test_argparse_errors_are_one_line(argv, capsys):
    code, err = _cli(argv, capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("foster"), err


# -- 6. request size limits, bundle targets, the whole schema under schemathesis -----------------


def test_request_bodies_are_bounded(api, monkeypatch, fake_model):
    fake_model(fakes.target, TARGET.removeprefix("local/"))
    make_run(_home())
    huge = "x" * 2_000_000
    chat = api.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": huge}]})
    assert chat.status_code == 413, chat.text[:200]
    bundle = api.post("/v1/bundles", json=_bundle_body(system_prompt="y" * 30_000_000))
    assert bundle.status_code == 413
    assert not (_home() / "bundles").exists() or not any((_home() / "bundles").glob("*.json"))
    monkeypatch.setenv("FOSTER_MAX_BODY_BYTES", "1000")
    small = api.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "z" * 2000}]})
    assert small.status_code == 413


def test_bundle_targets_must_be_known_providers(api):
    for target in ("nope/x", "not a model", "local/definitely-not-registered"):
        response = api.post("/v1/bundles", json=_bundle_body(targets=[target]))
        assert response.status_code == 422, (target, response.text)
    assert not (_home() / "bundles").exists() or not any((_home() / "bundles").glob("*.json"))


def test_schemathesis_finds_no_5xx_no_undeclared_status_and_no_stray_file(monkeypatch, tmp_path):
    import schemathesis
    from fastapi.testclient import TestClient
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis.generation import GenerationMode

    from foster.agent import runs as agent_runs
    from foster.agent.local.fake import ScriptedBackend
    from foster.agent.local.registry import register_backend
    from foster.ui.service import create_app

    monkeypatch.setenv("FOSTER_API_TOKEN", "tok")
    home = _home()
    make_run(home)
    register_backend(TARGET.removeprefix("local/"), ScriptedBackend(lambda r: label_for(str(r.messages_or_prompt))))
    monkeypatch.setattr(agent_runs, "start_run", lambda config, background=False: "fuzzed-run")
    app = create_app(ui=False)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    since = time.time() - 1
    failures, undeclared = [], []
    client = TestClient(app, raise_server_exceptions=False)
    auth = {"Authorization": "Bearer tok"}
    for result in schema.get_all_operations():
        operation = result.ok()
        declared = {str(k) for k in operation.definition.raw.get("responses", {})}
        for mode, examples in ((GenerationMode.POSITIVE, 5), (GenerationMode.NEGATIVE, 3)):

            @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(mode))
            def check(case):
                kwargs = case.as_transport_kwargs(base_url="http://testserver")
                headers = {**(kwargs.get("headers") or {}), **(auth if case.operation.path != "/healthz" else {})}
                if operation.path.endswith("/events"):
                    kwargs["params"] = {**(kwargs.get("params") or {}), "follow": "false"}
                kwargs.pop("timeout", None)
                response = client.request(**{**kwargs, "headers": headers})
                if response.status_code >= 500:
                    failures.append((operation.label, response.status_code, response.text[:200]))
                if str(response.status_code) not in declared and "default" not in declared:
                    undeclared.append((operation.label, response.status_code))

            check()
    assert not failures, failures
    assert not undeclared, "; ".join(f"{op} {code}" for op, code in sorted(set(undeclared)))
    assert not _files_outside(tmp_path, since, home)
    bundles = list((home / "bundles").glob("*.json")) if (home / "bundles").exists() else []
    assert all(p.resolve().parent == (home / "bundles").resolve() for p in bundles)


# -- 7. retries and timeouts are counted -----------------------------------------------------------


def test_ledger_counts_requests_retries_failures_and_timeouts(monkeypatch):
    from foster.agent import gateway

    monkeypatch.setenv("FOSTER_KEY", "sk-loopback-0123456789abcdef")
    # requests 2 and 4 fail with 500 and are retried; request 6 hangs past the timeout
    script = {2: 500, 4: 429, 6: "hang"}
    with LoopbackTeacher(script=lambda n: script.get(n)) as teacher:
        monkeypatch.setenv("FOSTER_TIMEOUT", "1")
        ask = dict(api_base=teacher.url, api_key="sk-loopback-0123456789abcdef")
        with gateway.use_ledger() as book:
            for text in ("a", "b", "c"):
                gateway.complete("openai/t", [{"role": "user", "content": text}], num_retries=2, **ask)
            gateway.complete("openai/t", [{"role": "user", "content": "d"}], num_retries=1, **ask)
        usage = book.snapshot()["openai/t"]
    assert usage["calls"] == 4
    assert usage["requests"] == len(teacher.requests) == 7, (usage, teacher.requests)
    assert usage["retries"] == 3 and usage["timeouts"] == 1 and usage["errors"] == 0
    assert not math.isnan(usage["seconds"])
