"""Cutover: drop-in behaviour, shadow statistics, versions (promote/rollback under load), readiness,
refine on the real embedded models, and the README's serving block run as written."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from foster.agent.local.fake import ScriptedBackend
from foster.agent.local.registry import register_backend
from service_fixtures import (
    PROBES,
    TARGET,
    TEACHER,
    free_port,
    label_for,
    make_run,
    running_server,
)

ROOT = Path(__file__).parents[1]
ALIAS = "ft:gpt-4o-mini:acme:router:9xYz"


def _user_text(messages_or_prompt) -> str:
    if isinstance(messages_or_prompt, str):
        return messages_or_prompt.rsplit("Input:", 1)[-1].split("\n")[0].strip()
    return [m["content"] for m in messages_or_prompt if m["role"] == "user"][-1]


@pytest.fixture(scope="module")
def server():
    from foster.ui.service import create_app

    with running_server(create_app(ui=False)) as base:
        yield base


@pytest.fixture
def home(monkeypatch) -> Path:
    from foster.store.paths import foster_home

    monkeypatch.delenv("FOSTER_API_TOKEN", raising=False)
    return foster_home()


@pytest.fixture
def run(home):
    return make_run(home)


@pytest.fixture
def target():
    backend = ScriptedBackend(lambda request: label_for(_user_text(request.messages_or_prompt)))
    register_backend(TARGET.removeprefix("local/"), backend)
    return backend


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server, timeout=60) as client:
        yield client


def _deploy(http, **body) -> dict:
    response = http.post("/v1/deployments", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def _wait(predicate, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


# ---------------------------------------------------------------------------------------------
# (b) drop-in behaviour with the official openai client


def test_client_conversation_reaches_the_target_and_unsupported_params_get_400(server, http, run, target):
    import openai

    best = run["best"]
    deployed = _deploy(http, name=ALIAS, bundle_id=best.id)
    assert deployed["target"] == TARGET and deployed["active"] == 1  # which model answers, never null
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)
    text = "I was charged twice for my order last week"
    history = [{"role": "system", "content": "You work for ACME; be terse."},
               {"role": "user", "content": "hello"}, {"role": "assistant", "content": "Hi, how can I help?"},
               {"role": "user", "content": text}]

    reply = client.chat.completions.create(model=ALIAS, messages=history)
    assert reply.choices[0].message.content == "BILLING"
    sent = list(target.requests[-1].messages)
    bundle_part = best.messages(text)[:-1]
    # the bundle's system prompt and examples first, then the client's system message and turns, then the input
    assert sent == [*bundle_part, *history]
    alone = client.chat.completions.create(model=ALIAS, messages=[{"role": "user", "content": text}])
    assert reply.usage.prompt_tokens >= alone.usage.prompt_tokens  # nothing the client sent was dropped

    for extra, param in (({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
                         ({"response_format": {"type": "json_object"}}, "response_format"),
                         ({"logprobs": True}, "logprobs")):
        with pytest.raises(openai.BadRequestError) as raised:
            client.chat.completions.create(model=ALIAS, messages=history, **extra)
        error = raised.value.body
        assert raised.value.status_code == 400 and error["param"] == param and param in error["message"]
        assert error["type"] == "invalid_request_error"
    raw = http.post("/v1/chat/completions", json={"model": ALIAS, "messages": history, "tools": []})
    assert raw.status_code == 200  # an empty tool list asks for nothing
    bad = http.post("/v1/chat/completions", json={"model": ALIAS, "messages": history, "temperature": 7})
    assert bad.status_code == 400 and set(bad.json()["error"]) >= {"message", "type", "param", "code"}
    assert bad.json()["error"]["param"] == "temperature"
    assert http.post("/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"}).status_code == 400
    assert http.post("/v1/completions", json={"model": ALIAS}).status_code == 400
    assert http.post("/v1/deployments", json={"name": "x"}).status_code == 422  # foster's own routes keep 422

    # models: deployment names (not hashes), retrievable one by one
    assert [m.id for m in client.models.list()] == [ALIAS]
    card = client.models.retrieve(ALIAS)
    assert card.id == ALIAS and card.model_extra["target"] == TARGET
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("ft:gone")

    # one name, one deployment: 409 unless replace=true (then the bundle is its next version)
    again = http.post("/v1/deployments", json={"name": ALIAS, "bundle_id": run["zero"].id})
    assert again.status_code == 409 and again.json()["error"]["code"] == "deployment_exists"
    replaced = http.post("/v1/deployments", params={"replace": "true"}, json={"name": ALIAS, "bundle_id": run["zero"].id})
    assert replaced.status_code == 201 and replaced.json()["active"] == 2 and replaced.json()["bundle_id"] == run["zero"].id


def test_bundle_ids_follow_content_and_target(home):
    from foster.prompts.bundle import Bundle

    b = Bundle(teacher=TEACHER, targets=[TARGET, "local/other"], system_prompt="Route.")
    first = b.id
    b.targets = ["local/other"]
    path = b.save(home / "b")
    assert Bundle.load(path).id == b.id != first  # narrowed to one target: a new id, never the old one


# ---------------------------------------------------------------------------------------------
# (c) promote under load


def test_promote_under_concurrent_load_serves_exactly_one_version(server, http, run, home):
    from foster.prompts.bundle import Bundle, OutputContract

    # each version's system prompt names it; the fake target answers with that name
    register_backend("fake-versioned", ScriptedBackend(
        lambda request: re.search(r"VERSION-(\w+)", request.messages[0]["content"]).group(1)))
    v1, v2 = (Bundle(teacher=TEACHER, targets=["local/fake-versioned"], system_prompt=f"You are VERSION-{tag}.",
                     output_contract=OutputContract(format="text")) for tag in ("one", "two"))
    for b in (v1, v2):
        assert http.post("/v1/bundles", content=b.to_json(), headers={"content-type": "application/json"}).status_code == 201
    _deploy(http, name="router", bundle_id=v1.id)
    from foster.ui.deployments import deployment_store

    assert deployment_store().add_version("router", v2.id).version == 2

    def ask(i: int):
        r = http.post("/v1/chat/completions", json={"model": "router", "messages": [{"role": "user", "content": f"q{i}"}]})
        return r.status_code, r.headers.get("x-foster-bundle"), r.json()["choices"][0]["message"]["content"] if r.status_code == 200 else r.text

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(ask, i) for i in range(200)]
        _wait(lambda: sum(f.done() for f in futures) >= 60, 120)
        promoted = http.post("/v1/deployments/router/promote")
        results = [f.result() for f in futures]
    assert promoted.status_code == 200 and promoted.json()["active"] == 2
    assert all(status == 200 for status, _, _ in results), [r for r in results if r[0] != 200][:3]
    pairs = {(bundle, answer) for _, bundle, answer in results}
    assert pairs <= {(v1.id, "one"), (v2.id, "two")}, pairs  # every answer wholly from one version
    assert (v1.id, "one") in pairs
    after = http.post("/v1/chat/completions", json={"model": "router", "messages": [{"role": "user", "content": "q"}]})
    assert after.json()["choices"][0]["message"]["content"] == "two"

    back = http.post("/v1/deployments/router/rollback")
    assert back.status_code == 200 and back.json()["active"] == 1
    assert [h["action"] for h in back.json()["history"]] == ["deploy", "add_version", "promote", "rollback"]
    assert http.post("/v1/deployments/router/promote", params={"version": 9}).status_code == 404


# ---------------------------------------------------------------------------------------------
# shadow statistics and the readiness gate (fakes)


def test_shadow_statistics_per_cluster_and_readiness(server, http, run, target):
    from foster.agent.metrics import wilson

    # the teacher disagrees on one kind of input: SHIPPING where the target says OTHER
    teacher = ScriptedBackend(lambda request: "SHIPPING" if "gift" in _user_text(request.messages_or_prompt)
                              else label_for(_user_text(request.messages_or_prompt)))
    register_backend(TEACHER.removeprefix("local/"), teacher)
    _deploy(http, name=ALIAS, bundle_id=run["best"].id, shadow={"teacher": TEACHER, "sample_rate": 1.0})
    inputs = [t for t, _ in PROBES] + ["do you sell gift cards", "any gift wrapping?"]
    for text in inputs + inputs[:3]:  # repeated inputs: counted again, the teacher is not asked again
        assert http.post("/v1/chat/completions", json={"model": ALIAS, "messages": [{"role": "user", "content": text}]}).status_code == 200
    n = len(inputs) + 3
    stats = _wait(lambda: (s := http.get(f"/v1/deployments/{ALIAS}/shadow").json())["overall"]["requests"] == n and s)
    overall = stats["overall"]
    disagree = sum("gift" in t for t in inputs)
    assert overall["disagreements"] == disagree and overall["agreements"] == n - disagree
    low, high = wilson(n - disagree, n)
    assert (overall["low"], overall["high"]) == (round(low, 4), round(high, 4)) and low < overall["rate"] < high
    assert sum(c["requests"] for c in stats["clusters"]) == n
    assert {c["cluster"] for c in stats["clusters"]} <= {0, 1, 2}  # the run's own clusters (grid.json)
    from foster.agent.shadow import records

    reused = [r["teacher_reused"] for r in records(ALIAS)]
    assert sum(reused) >= 3  # the repeated inputs: never asked twice
    assert len(teacher.requests) <= len(inputs)
    rows = http.get(f"/v1/deployments/{ALIAS}/divergences").json()["data"]
    assert {r["input"] for r in rows} == {t for t in inputs if "gift" in t}
    assert rows[0]["teacher_output"] == "SHIPPING" and rows[0]["target_output"] == "OTHER"

    gate = http.get(f"/v1/deployments/{ALIAS}/readiness").json()
    assert gate["ready"] is False and "not enough shadowed requests" in gate["reason"] and gate["threshold"] == 0.9
    gate = http.get(f"/v1/deployments/{ALIAS}/readiness", params={"min_requests": 5, "threshold": 0.5}).json()
    assert gate["ready"] is True, gate
    gate = http.get(f"/v1/deployments/{ALIAS}/readiness", params={"min_requests": 5, "threshold": 0.95}).json()
    assert gate["ready"] is False and "lower bound" in gate["reason"]

    from foster.ui import (
        shadow_view,  # the UI's Shadow tab shows the same figures and verdict
    )

    page = shadow_view.summary_html(ALIAS)
    assert f"on {n} shadowed requests" in page and "Not ready" in page and "not enough shadowed requests" in page
    assert sum(row[1] for row in shadow_view.cluster_rows(ALIAS)) == n


# ---------------------------------------------------------------------------------------------
# (a) the whole loop on the real embedded models


DEMO = ROOT / "examples" / "ticket_routing"
DEMO_TEACHER = "local/smollm2-135m-instruct@examples/ticket_routing/teacher"
SMOL = "local/smollm2-135m-instruct"


@pytest.mark.integration
def test_cutover_loop_on_the_real_models(server, http, home, tmp_path, monkeypatch):
    import openai
    from foster.agent.runs import start_run
    from foster.store.runs import RunRegistry

    monkeypatch.chdir(ROOT)  # the demo teacher's adapter path is relative to the repository
    rows = [json.loads(line) for line in (DEMO / "data" / "inputs.jsonl").read_text().splitlines()]
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("".join(json.dumps(r) + "\n" for r in rows[:8]))
    tiny = {"temperatures": [0.0], "synth_per_kind": 0, "budget_calls": 4, "max_rounds": 1, "knn_k": 2,
            "max_new_tokens": 6, "lora_fallback": False, "optimizer": "bootstrap", "holdout_fraction": 0.4}
    parent = start_run({"teacher": DEMO_TEACHER, "targets": [SMOL], "inputs": str(inputs), "task": "Route the ticket.",
                        **tiny})
    _deploy(http, name=DEMO_TEACHER, bundle_id=RunRegistry().get(parent).best_bundle and
            json.loads(Path(RunRegistry().get(parent).best_bundle).read_text())["id"],
            shadow={"teacher": DEMO_TEACHER, "sample_rate": 1.0})

    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)
    live = [r["input"] for r in rows[8:20]]

    def send_and_read(version: int) -> dict:
        for text in live:
            client.chat.completions.create(model=DEMO_TEACHER, messages=[{"role": "user", "content": text}], max_tokens=6)
        return _wait(lambda: (s := http.get(f"/v1/deployments/{DEMO_TEACHER}/shadow",
                                            params={"version": version}).json())["overall"]["requests"] == len(live) and s, 600)

    before = send_and_read(1)["overall"]
    assert 0 <= before["low"] <= before["rate"] <= before["high"] <= 1

    refined = http.post(f"/v1/deployments/{DEMO_TEACHER}/refine")  # a child process runs it
    assert refined.status_code == 202, refined.text
    plan = refined.json()
    assert plan["parent_run_id"] == parent and plan["divergent"] + plan["agreeing"] > 0
    new_version = _wait(lambda: len((d := http.get(f"/v1/deployments/{DEMO_TEACHER}").json())["versions"]) == 2 and d, 1500)
    status = RunRegistry().get(plan["run_id"])
    assert status.status == "done", (status, (RunRegistry().run_dir(plan["run_id"]) / "run.log").read_text()[-2000:])
    v2 = new_version["versions"][1]
    assert v2["source"] == "refine" and v2["run_id"] == plan["run_id"]
    bundle = json.loads(Path(status.best_bundle).read_text())
    assert bundle["provenance"]["deployment"] == DEMO_TEACHER and bundle["provenance"]["parent_run_id"] == parent
    report = RunRegistry().read_json(plan["run_id"], "report.json")
    assert report["held_out"] > RunRegistry().read_json(parent, "report.json")["held_out"]  # + a share of the new probes

    promoted = http.post(f"/v1/deployments/{DEMO_TEACHER}/promote").json()
    assert promoted["active"] == 2 and promoted["bundle_id"] == v2["bundle_id"]
    reply = client.chat.completions.with_raw_response.create(model=DEMO_TEACHER, messages=[{"role": "user", "content": live[0]}],
                                                             max_tokens=6)
    assert reply.headers["x-foster-bundle"] == v2["bundle_id"]  # promote serves the new version, not the old
    after = send_and_read(2)["overall"]
    print(f"shadow agreement on the same {len(live)} live inputs: v1 {before['rate']} [{before['low']}, {before['high']}]"
          f" -> v2 {after['rate']} [{after['low']}, {after['high']}]")
    assert after["rate"] >= before["rate"]
    verdict = http.get(f"/v1/deployments/{DEMO_TEACHER}/readiness").json()
    assert verdict["version"] == 2 and isinstance(verdict["ready"], bool) and verdict["reason"]


# ---------------------------------------------------------------------------------------------
# (d) the README's serving block, as written


def readme_block(name: str = "serving") -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(rf"<!-- readme-test: {name} -->\s*```(?:bash|sh)\n(.*?)```", text, re.DOTALL)
    assert found, f"README.md has no block marked <!-- readme-test: {name} -->"
    return found.group(1)


@pytest.mark.integration
def test_readme_serving_block_runs_as_written(home, tmp_path):
    """The README's serving block in bash against a temporary FOSTER_HOME holding one finished run
    (its bundle on the real SmolLM2; the demo teacher shadows): every command succeeds."""
    import signal

    make_run(home, target=SMOL)
    port = free_port()
    script = readme_block("serving").replace("8000", str(port))  # a free port instead of the README's
    env = {**os.environ, "FOSTER_HOME": str(home), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    log = tmp_path / "readme.log"
    # output to a file, not a pipe: the block's background `foster serve` keeps its stdout open
    with open(log, "w") as handle:
        proc = subprocess.Popen(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, env=env, stdout=handle,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        proc.wait(timeout=900)
    finally:
        try:  # the block's background `foster serve`: its whole process group
            os.killpg(proc.pid, signal.SIGTERM)
            time.sleep(3)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    out = log.read_text()
    assert proc.returncode == 0, out[-3000:]
    assert f"http://127.0.0.1:{port}/v1" in out and f"http://127.0.0.1:{port}/ui" in out and "/docs" in out
    assert "version 1 serves bundle" in out and '"ft:gpt-4o-mini:acme:router"' in out
    assert "rolled back to version 1" in out and "now serving version 2" in out
    assert re.search(r"ft:gpt-4o-mini:acme:router \(version 1, shadowed by .*\): (agreement|no shadowed)", out), out[-2000:]
    assert "ready" in out
    from foster.ui.deployments import DeploymentStore

    saved = DeploymentStore(home / "deployments.json").get("ft:gpt-4o-mini:acme:router")
    assert saved.active == 2 and [h.action for h in saved.history] == ["deploy", "replace", "rollback", "promote"]


def test_a_deployment_written_by_another_process_is_served_at_once(tmp_path):
    """`foster deploy` (another process) then a request within FRESH_S: the name is not in the server's
    cached view, so it is checked on disk instead of answered with a 404 (the README block failed so)."""
    import time as _time

    from foster.ui.deployments import Deployment, DeploymentStore, Version

    path = tmp_path / "deployments.json"
    server, cli = DeploymentStore(path), DeploymentStore(path)
    assert server.all() == []  # the server's view is now cached as empty
    version = Version(version=1, bundle_id="abc123", target="local/smollm2-135m-instruct", created_at=_time.time())
    cli.put(Deployment(name="ft:gpt-4o-mini:acme:router", bundle_id="abc123", target=version.target, active=1,
                       versions=[version]))
    found = server.get("ft:gpt-4o-mini:acme:router")
    assert found is not None and found.bundle_id == "abc123"
    assert server.get("no-such-model") is None
