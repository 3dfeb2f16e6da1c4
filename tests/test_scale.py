"""Scale-out on real servers: PostgreSQL (queue, leases, checkpoints), `chroma run` (observations), workers.

The servers are started once for this module on loopback (tests/servers.py) and stopped at its end.
The integration test runs the scaled-out path end to end: the API enqueues 4 runs whose teacher is
a loopback OpenAI-compatible fake, two `foster worker` processes execute them, one is killed with
SIGKILL while the teacher holds one of its calls, the other finishes everything; every (input,
temperature, sample) is answered by the teacher at most once.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time
import types

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

sys.path.insert(0, os.path.dirname(__file__))
import fakes  # noqa: E402
from openai_replica import Replica, free_port  # noqa: E402
from servers import Chroma, Postgres, _pg_bin  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def servers():
    # `make test` installs both (test-deps: Debian's postgresql; install: the `scale` extra), so a missing
    # one is a broken set-up, and skipping would hide the scaled-out path the issue asks to run for real.
    if not (_pg_bin("initdb") and _pg_bin("pg_ctl")):
        pytest.fail("PostgreSQL server binaries missing: run `make test-deps` (apt-get install postgresql)")
    try:
        import langgraph.checkpoint.postgres  # noqa: F401
    except ImportError:
        pytest.fail("langgraph-checkpoint-postgres missing: pip install 'foster[scale]' (make install does)")
    pg = Postgres.start()
    try:
        chroma = Chroma.start()
    except Exception:
        pg.stop()
        raise
    yield types.SimpleNamespace(pg=pg.url, chroma=chroma.url)
    chroma.stop()
    pg.stop()


@pytest.fixture
def scaled(servers, monkeypatch):
    """This process configured like every worker: Postgres and the Chroma server (a fresh database each test)."""
    import psycopg

    with psycopg.connect(servers.pg, autocommit=True) as conn:
        db = f"t{os.getpid()}_{time.time_ns() % 10**9}"
        conn.execute(f"CREATE DATABASE {db}")
    url = servers.pg.rsplit("/", 1)[0] + f"/{db}"
    monkeypatch.setenv("FOSTER_POSTGRES_URL", url)
    monkeypatch.setenv("FOSTER_CHROMA_URL", servers.chroma)
    return types.SimpleNamespace(pg=url, chroma=servers.chroma)


# -- the stores on the servers ------------------------------------------------------------------


def test_queue_and_leases_live_in_postgres(scaled, tmp_path):
    import psycopg

    from foster.store import leases, queue

    queue.enqueue("r1", {"teacher": "t"})
    queue.enqueue("r2")
    queue.enqueue("r1")  # idempotent
    assert queue.pending() == ["r1", "r2"]
    assert leases.acquire("r1", "host-a:1", ttl=30)
    assert not leases.acquire("r1", "host-b:2", ttl=30)  # held, unexpired, by another owner
    assert leases.holder("r1").owner == "host-a:1" and leases.renew("r1", "host-a:1", ttl=30)
    assert not leases.renew("r1", "host-b:2", ttl=30)
    # a lease whose owner process is gone from this host is stale at once
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert leases.acquire("r2", "this:dead", ttl=30, pid=dead.pid)
    assert leases.is_stale(leases.holder("r2"))
    assert leases.acquire("r2", "host-b:2", ttl=30) and leases.holder("r2").owner == "host-b:2"
    # an expired lease (another host, ttl run out) is taken over as well
    assert leases.acquire("r3", "far:1", ttl=0.01)
    time.sleep(0.05)
    assert leases.acquire("r3", "host-b:2", ttl=30)
    leases.release("r1", "host-b:2")  # not the holder: no effect
    assert leases.holder("r1").owner == "host-a:1"
    leases.release("r1", "host-a:1")
    assert leases.holder("r1") is None
    queue.finish("r1")
    assert queue.pending() == ["r2"]
    with psycopg.connect(scaled.pg) as conn:  # really in the server, not in a file
        assert conn.execute("SELECT count(*) FROM foster_queue").fetchone()[0] == 2
    assert not (tmp_path / "foster-home" / "queue").exists()


def test_checkpoints_and_vectors_on_the_servers(scaled):
    import chromadb

    from foster.store.checkpoints import checkpointer
    from foster.store.vectors import VectorStore

    saver = checkpointer()
    assert type(saver).__name__ == "PostgresSaver"
    store = VectorStore()
    assert isinstance(store.client, chromadb.api.client.Client) and store.client.get_settings().chroma_server_host
    [pid] = store.add_probes("run-x", [{"text": "I was charged twice", "kind": "historical", "split": "train"}])
    store.add_observation(pid, "openai/t", 0.7, 1, "I was charged twice", "BILL-REFUND", "run-x")
    again = VectorStore()  # another client (another worker) sees what the first wrote
    [obs] = again.get_observations(probe_id=pid, model="openai/t")
    assert obs["output"] == "BILL-REFUND"


# -- the scaled-out path, end to end --------------------------------------------------------------


class Teacher:
    """A loopback OpenAI-compatible teacher that counts what it is asked and answered, per (input, t, seed).

    Which worker asks is in its key (each worker has its own TEACHER_KEY). Once `hold_after` calls of
    worker A were answered, every call (of both workers) is held until the test releases them, so
    the test can kill A with its calls in flight once every answer already given is stored; a held
    call whose worker was killed meanwhile is never answered.
    """

    def __init__(self, hold_after: int):
        self.hold_after = hold_after
        self.received: collections.Counter = collections.Counter()
        self.answered: collections.Counter = collections.Counter()
        self.by_worker: collections.Counter = collections.Counter()
        self.held = threading.Event()
        self.release = threading.Event()
        self.cut: set[tuple] = set()

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(req: Request):
            body = await req.json()
            worker = req.headers.get("authorization", "").removeprefix("Bearer ")
            text = [m["content"] for m in body["messages"] if m["role"] == "user"][-1]
            key = (text, float(body.get("temperature", 0.0)), body.get("seed"))
            self.received[key] += 1
            if worker == "worker-a" and self.by_worker[worker] >= self.hold_after:
                self.held.set()
            if self.held.is_set() and not self.release.is_set():
                while not self.release.is_set():
                    await asyncio.sleep(0.05)
                if await req.is_disconnected():
                    self.cut.add(key)
                    return JSONResponse({"error": {"message": "client gone"}}, status_code=500)
            req_like = types.SimpleNamespace(messages_or_prompt=body["messages"], temperature=key[1], seed=key[2])
            self.answered[key] += 1
            self.by_worker[worker] += 1
            return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": fakes.teacher(req_like)}}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}

        return app


def _serve(app: FastAPI):
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{port}/v1"


def _target(body: dict) -> str:
    req = types.SimpleNamespace(messages_or_prompt=body["messages"], temperature=body.get("temperature", 0.0),
                                seed=body.get("seed"))
    return fakes.target(req)


def test_api_enqueues_two_workers_execute_one_killed_mid_probe(scaled, tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from foster.store import leases, queue
    from foster.store.runs import RunRegistry
    from foster.ui.service import create_app

    teacher = Teacher(hold_after=4)
    t_server, t_thread, t_url = _serve(teacher.app())
    target = Replica.start(answer=_target)
    workers: dict[str, subprocess.Popen] = {}
    try:
        monkeypatch.setenv("TEACHER_KEY", "api")  # the API checks that a key is there; each worker has its own
        monkeypatch.setenv("FOSTER_LEASE_TTL", "5")
        # the server's models file names the teacher and the target; an API caller names them by alias only
        models = tmp_path / "models.yaml"
        models.write_text(f"models:\n  old-ft:\n    - model: openai/old-ft\n      api_base: {t_url}\n"
                          f"      api_key_env: TEACHER_KEY\n  new-base:\n    - model: openai/new-base\n"
                          f"      api_base: {target.url}\n")
        monkeypatch.setenv("FOSTER_MODELS_FILE", str(models))
        inputs = "\n".join(json.dumps({"input": x}) for x in fakes.HISTORICAL[:6]) + "\n"
        body = {"teacher": "old-ft", "targets": ["new-base"], "uploads": {"inputs": inputs},
                "task": "Route the ticket.", "temperatures": [0.0, 1.0], "samples": 2, "synth_per_kind": 1,
                "max_rounds": 1, "budget_calls": 1, "lora_fallback": False, "max_probes": 12, "optimizer": "foster"}
        with TestClient(create_app(ui=False)) as http:  # with Postgres configured the API runs no worker itself
            run_ids = []
            for n in range(4):
                response = http.post("/v1/runs", json={**body, "run_id": f"scaled-{n}"})
                assert response.status_code == 202, response.text
                run_ids.append(response.json()["run_id"])
            assert queue.pending() == run_ids
            assert {http.get(f"/v1/runs/{r}").json()["status"] for r in run_ids} == {"queued"}

        env = {k: v for k, v in os.environ.items()}
        logs = {}
        for name in ("a", "b"):
            logs[name] = open(tmp_path / f"worker-{name}.log", "w")
            workers[name] = subprocess.Popen(
                [sys.executable, "-m", "foster.ui.cli", "worker", "--poll", "0.3", "--exit-when-idle"],
                env={**env, "TEACHER_KEY": f"worker-{name}"}, stdout=logs[name], stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL)
        assert teacher.held.wait(240), "worker A never reached the teacher"
        killed_run = next(r for r in run_ids if (lease := leases.holder(r)) and lease.pid == workers["a"].pid)
        # every answer given so far is in Chroma (the probe node commits answers in batches)
        from foster.store.vectors import VectorStore

        deadline, store = time.monotonic() + 60, VectorStore()
        while len(store.get_observations(model="old-ft")) < sum(teacher.answered.values()):
            assert time.monotonic() < deadline, "answers given were never stored"
            time.sleep(0.2)
        os.kill(workers["a"].pid, signal.SIGKILL)  # mid-probe: its teacher calls are in flight
        workers["a"].wait(30)
        teacher.release.set()
        assert workers["b"].wait(300) == 0, (tmp_path / "worker-b.log").read_text()[-2000:]
    finally:
        for proc in workers.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        t_server.should_exit = True
        t_thread.join(5)
        target.stop()

    registry = RunRegistry()
    statuses = {r: registry.get(r).status for r in run_ids}
    assert statuses == {r: "done" for r in run_ids}, (statuses, (tmp_path / "worker-b.log").read_text()[-2000:])
    # every (input, temperature, sample) was answered once; only the calls the kill cut were asked twice
    assert teacher.answered and max(teacher.answered.values()) == 1
    assert teacher.cut and all(teacher.received[key] == 2 for key in teacher.cut)
    assert all(n == 1 for key, n in teacher.received.items() if key not in teacher.cut)
    assert teacher.by_worker["worker-a"] >= 4 and teacher.by_worker["worker-b"] > 0
    # the killed worker's run was resumed by the other one, from what the dead one had stored
    events = registry.events(killed_run)
    assert [e["message"] for e in events if e["kind"] == "start"] == ["started", "resumed"]
    assert f"take {killed_run} resume" in (tmp_path / "worker-b.log").read_text()
    # nothing left held or pending; checkpoints are in Postgres, observations in the Chroma server
    assert queue.pending() == [] and all(leases.holder(r) is None for r in run_ids)
    import psycopg

    with psycopg.connect(scaled.pg) as conn:
        threads = {row[0] for row in conn.execute("SELECT DISTINCT thread_id FROM checkpoints")}
    assert threads == set(run_ids)
    from foster.store.vectors import VectorStore

    stored = VectorStore().get_observations(model="old-ft")
    assert len(stored) == sum(teacher.answered.values())
    assert not (tmp_path / "foster-home" / "checkpoints.sqlite").exists()


# -- nothing configured: the embedded path ---------------------------------------------------------


def test_embedded_default_queues_to_a_worker_thread(fake_model, tmp_path, monkeypatch):
    """No server anywhere: start_run only enqueues (files), the worker `foster serve` runs executes it."""
    from foster.agent import runs
    from foster.agent.worker import Worker, serve_runs_in_process
    from foster.store import queue
    from foster.store.runs import RunRegistry

    monkeypatch.delenv("FOSTER_POSTGRES_URL", raising=False)
    monkeypatch.delenv("FOSTER_CHROMA_URL", raising=False)
    monkeypatch.delenv("FOSTER_SERVE_WORKER", raising=False)
    assert serve_runs_in_process()
    teacher, _ = fake_model(fakes.teacher, "fake-teacher")
    target, _ = fake_model(fakes.target, "fake-target")
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("\n".join(json.dumps({"input": x}) for x in fakes.HISTORICAL[:6]) + "\n")
    run_id = runs.start_run({"teacher": teacher, "targets": [target], "inputs": str(inputs), "temperatures": [0.0],
                             "synth_per_kind": 1, "max_rounds": 1, "budget_calls": 1, "lora_fallback": False,
                             "optimizer": "foster", "run_id": "embedded"}, background=True)
    registry = RunRegistry()
    assert registry.get(run_id).status == "queued" and queue.pending() == [run_id]
    seen = []
    worker = Worker(poll_s=0.05, on_event=lambda kind, rid, detail: seen.append((kind, rid, detail)))
    assert worker.run(exit_when_idle=True) == 1
    assert registry.get(run_id).status == "done" and queue.pending() == []
    assert seen == [("take", run_id, "start"), ("finished", run_id, "done")]
    assert (tmp_path / "foster-home" / "checkpoints.sqlite").exists()  # SQLite, on-disk Chroma: no server
    assert (tmp_path / "foster-home" / "chroma").is_dir()


def test_a_run_whose_start_fails_stays_queued_and_is_taken_again(monkeypatch):
    """Two workers starting at once once hit a Postgres deadlock before the run began; the worker
    finished the queue entry and the run was lost, 'queued' forever. A failed start is retried, and
    after a few tries the run says why it failed instead of vanishing."""
    from foster.agent import runs, worker
    from foster.store import queue
    from foster.store.runs import RunRegistry

    registry = RunRegistry()
    for run_id in ("flaky", "broken"):
        registry.create(run_id, {}, status="queued")
        queue.enqueue(run_id)
    calls = {"flaky": 0, "broken": 0}

    def execute(run_id):
        calls[run_id] += 1
        if run_id == "broken" or calls[run_id] == 1:
            raise RuntimeError("DeadlockDetected: deadlock detected")
        registry.update(run_id, status="done")

    monkeypatch.setattr(runs, "execute", execute)
    w = worker.Worker(poll_s=0.01, on_event=lambda *a: None)
    w.run(exit_when_idle=True)
    assert calls["flaky"] == 2 and registry.get("flaky").status == "done"
    assert calls["broken"] == worker.START_TRIES and registry.get("broken").status == "failed"
    assert "could not start" in registry.get("broken").error and queue.pending() == []
