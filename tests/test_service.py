"""The service on a real uvicorn server (127.0.0.1), driven by real clients: openai, httpx, schemathesis."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from service_fixtures import RUN_ID, TARGET, TEACHER, label_for, make_run, running_server  # noqa: E402

from foster.agent.local.fake import ScriptedBackend  # noqa: E402
from foster.agent.local.backend import Backend, Generation  # noqa: E402
from foster.agent.local.registry import register_backend  # noqa: E402

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
def home(tmp_path, monkeypatch) -> Path:
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
    with httpx.Client(base_url=server, timeout=30) as client:
        yield client


def _deploy(http, **body) -> dict:
    response = http.post("/v1/deployments", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def test_openai_client_gets_the_bundle_rendered_answer(server, http, run, target):
    import openai

    best = run["best"]
    _deploy(http, name=ALIAS, bundle_id=best.id)
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)
    text = "I was charged twice for my order last week"

    reply = client.chat.completions.create(model=ALIAS, messages=[{"role": "user", "content": text}])
    assert reply.choices[0].message.content == "BILLING"
    assert reply.model == ALIAS and reply.object == "chat.completion"
    assert reply.usage.total_tokens > 0
    assert target.requests[-1].messages == tuple(best.messages(text))  # exactly what the bundle renders
    assert target.requests[-1].temperature == 0.0

    # the client's system message and earlier turns are kept, after the bundle's own prompt and examples
    client_turns = [{"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]
    reply = client.chat.completions.create(model=ALIAS, messages=[*client_turns, {"role": "user", "content": text}])
    assert reply.choices[0].message.content == "BILLING"
    bundle_part = [m for m in best.messages(text)][:-1]
    assert list(target.requests[-1].messages) == [*bundle_part, *client_turns, {"role": "user", "content": text}]

    stream = client.chat.completions.create(model=ALIAS, messages=[{"role": "user", "content": text}], stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "BILLING"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert target.requests[-1].messages == tuple(best.messages(text))

    completion = client.completions.create(model=ALIAS, prompt="where is my parcel")
    assert completion.choices[0].text == "SHIPPING"
    assert target.requests[-1].messages == tuple(best.messages("where is my parcel"))

    models = {m.id for m in client.models.list()}
    assert ALIAS in models and best.id not in models  # deployment names, never bundle hashes


class WordStream(Backend):
    """A fake that streams its answer word by word, as a real model streams tokens."""

    def __init__(self):
        self.requests = []

    def generate(self, request):
        self.requests.append(request)
        text = f"Dear customer, about {_user_text(request.messages_or_prompt)}: we are on it."
        return Generation(text=text, prompt_tokens=5, completion_tokens=len(text.split()))

    def stream(self, request):
        words = self.generate(request).text.split(" ")
        for i, word in enumerate(words):
            yield Generation(text=word if i == 0 else " " + word, prompt_tokens=0, completion_tokens=0)
        yield Generation(text="", prompt_tokens=5, completion_tokens=len(words))


def test_free_text_bundle_streams_incrementally(server, http, home):
    import openai

    from foster.prompts.bundle import Bundle, Example

    backend = WordStream()
    register_backend("fake-writer", backend)
    bundle = Bundle(teacher=TEACHER, targets=["local/fake-writer"], system_prompt="Answer in house style.",
                    examples=[Example(input="late parcel", output="Dear customer, about late parcel: we are on it.")])
    published = http.post("/v1/bundles", content=bundle.to_json(), headers={"content-type": "application/json"})
    assert published.status_code == 201, published.text
    assert published.json()["id"] == bundle.id
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)

    stream = client.chat.completions.create(model=bundle.id, messages=[{"role": "user", "content": "a refund"}],
                                            stream=True, stream_options={"include_usage": True})
    pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 3, pieces  # streamed piece by piece, not as one block
    assert "".join(pieces) == "Dear customer, about a refund: we are on it."
    assert backend.requests[-1].messages == tuple(bundle.messages("a refund"))

    stream = client.completions.create(model=bundle.id, prompt="a refund", stream=True)
    assert "".join(c.choices[0].text for c in stream) == "Dear customer, about a refund: we are on it."


def test_base_target_gets_the_completion_prompt(server, http, run, target, monkeypatch):
    import openai

    seen = []
    base = ScriptedBackend(lambda request: seen.append(request) or " " + label_for(_user_text(request.messages_or_prompt)) + "\nInput: junk")
    register_backend("fake-base", base)
    monkeypatch.setenv("FOSTER_COMPLETION_TARGETS", "local/fake-base")
    best = run["best"]
    _deploy(http, name="router-base", bundle_id=best.id, target="local/fake-base")
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)

    reply = client.chat.completions.create(model="router-base", messages=[{"role": "user", "content": "reset my password"}])
    assert reply.choices[0].message.content == "ACCOUNT"
    assert seen[-1].prompt == best.prompt("reset my password")
    assert set(best.stop) <= set(seen[-1].stop)
    completion = client.completions.create(model="router-base", prompt="where is my parcel", stop=["###"])
    assert completion.choices[0].text == "SHIPPING"
    assert seen[-1].prompt == best.prompt("where is my parcel") and "###" in seen[-1].stop


def test_bearer_token_guards_every_v1_route(server, http, run, target, monkeypatch):
    import openai

    monkeypatch.setenv("FOSTER_API_TOKEN", "s3cret-token")
    body = {"model": run["best"].id, "messages": [{"role": "user", "content": "reset my password"}]}
    for method, path in [("GET", "/v1/runs"), ("GET", "/v1/bundles"), ("GET", "/v1/deployments"), ("GET", "/v1/models"),
                         ("POST", "/v1/chat/completions"), ("GET", f"/v1/runs/{RUN_ID}/events")]:
        response = http.request(method, path, json=body if method == "POST" else None)
        assert response.status_code == 401, (path, response.text)
        assert response.json()["error"]["code"] == "invalid_api_key"
        assert response.headers["www-authenticate"] == "Bearer"
    wrong = http.get("/v1/runs", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    ok = http.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer s3cret-token"})
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "ACCOUNT"
    assert http.get("/healthz").status_code == 200  # not under /v1

    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0).models.list()
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="s3cret-token", max_retries=0)
    assert client.chat.completions.create(**body).choices[0].message.content == "ACCOUNT"


def test_bad_bodies_get_openai_400_and_unknown_models_404(server, http, run, target):
    import openai

    cases = [
        ({"model": run["best"].id}, "messages: Field required"),
        ({"model": run["best"].id, "messages": []}, "messages"),
        ({"model": run["best"].id, "messages": [{"role": "user", "content": "x"}], "temperature": 7}, "temperature"),
        ({"model": run["best"].id, "messages": [{"role": "system", "content": "x"}]}, "no user message"),
        ({"model": run["best"].id, "messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
    ]
    for body, needle in cases:
        response = http.post("/v1/chat/completions", json=body)
        assert response.status_code == 400, response.text  # OpenAI's status on its own routes
        error = response.json()["error"]
        assert needle in error["message"] and error["type"] == "invalid_request_error"
    not_json = http.post("/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"})
    assert not_json.status_code == 400

    bad_deploy = http.post("/v1/deployments", json={"name": "x", "bundle_id": "missing"})
    assert bad_deploy.status_code == 422 and "no bundle 'missing'" in bad_deploy.json()["error"]["message"]
    bad_target = http.post("/v1/deployments", json={"name": "x", "bundle_id": run["best"].id, "target": "local/nope"})
    assert bad_target.status_code == 422 and "target" in bad_target.json()["error"]["message"]
    bad_run = http.post("/v1/runs", json={"teacher": TEACHER})
    assert bad_run.status_code == 422 and "target" in bad_run.json()["error"]["message"]

    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="ft:gone", messages=[{"role": "user", "content": "hi"}])
    assert raised.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="ft:gone", prompt="hi")


def test_runs_bundles_and_events(server, http, run, monkeypatch):
    listed = http.get("/v1/runs").json()["data"]
    assert [r["run_id"] for r in listed] == [RUN_ID]
    detail = http.get(f"/v1/runs/{RUN_ID}").json()
    assert detail["status"] == "done" and detail["progress"]["optimize"] == 1.0
    assert detail["report"]["verdict"] == "threshold met" and detail["report"]["targets"][TARGET]["best"] == 0.9
    assert http.get("/v1/runs/nope").status_code == 404
    assert len(http.get(f"/v1/runs/{RUN_ID}/grid").json()["rows"]) == 10

    # server-sent events: every line of events.jsonl, then an end event, since the run is done
    with http.stream("GET", f"/v1/runs/{RUN_ID}/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        data = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ") and line != "data: {}"]
    assert [e["kind"] for e in data][:2] == ["start", "end"] and data[-1]["kind"] == "done" and len(data) == 15
    with http.stream("GET", f"/v1/runs/{RUN_ID}/events", headers={"Last-Event-ID": "13"}) as response:
        rest = [line for line in response.iter_lines() if line.startswith("id: ")]
    assert rest == ["id: 14", "id: 15"]

    best = run["best"]
    as_json = http.get(f"/v1/runs/{RUN_ID}/bundle")
    assert as_json.status_code == 200 and as_json.json()["id"] == best.id
    assert "ticket-router" in http.get(f"/v1/runs/{RUN_ID}/bundle", params={"format": "md"}).text
    bundles = http.get("/v1/bundles").json()["data"]
    assert {b["id"] for b in bundles} == {best.id, run["zero"].id}
    assert http.get(f"/v1/bundles/{run['zero'].id}").json()["system_prompt"] == "Route the support ticket."
    assert http.get("/v1/bundles/does-not-exist").status_code == 404

    # a run that is still going can be cancelled (cooperatively: the CANCEL flag); a finished one cannot
    make_run(Path(run["run_dir"]).parent.parent, run_id="live-run", status="running")
    assert http.post(f"/v1/runs/{RUN_ID}/cancel").status_code == 409
    cancelled = http.post("/v1/runs/live-run/cancel")
    assert cancelled.status_code == 202 and (Path(run["run_dir"]).parent / "live-run" / "CANCEL").exists()

    # POST /v1/runs hands the RunConfig to agent.runs.start_run in the background
    from foster.agent import runs as agent_runs

    started = []
    monkeypatch.setattr(agent_runs, "start_run", lambda config, background=False: started.append((config, background)) or "new-run")
    response = http.post("/v1/runs", json={"teacher": TEACHER, "targets": [TARGET], "threshold": 0.8})
    assert response.status_code == 202 and response.json()["run_id"] == "new-run"
    assert started[0][1] is True and started[0][0].targets == [TARGET] and started[0][0].threshold == 0.8
    assert http.post("/v1/runs", json={"teacher": TEACHER, "targets": [TARGET], "run_id": "../escape"}).status_code == 422


def test_deployments_persist(server, http, run, target):
    register_backend(TEACHER.removeprefix("local/"), ScriptedBackend(lambda request: "OTHER"))
    best = run["best"]
    body = _deploy(http, name="acme/router:v1", bundle_id=best.id, shadow={"teacher": TEACHER, "sample_rate": 0.0})
    assert body["created_at"] and body["shadow"]["sample_rate"] == 0.0
    assert [d["name"] for d in http.get("/v1/deployments").json()["data"]] == ["acme/router:v1"]
    assert http.get("/v1/deployments/acme/router:v1").json()["bundle_id"] == best.id
    from foster.store.paths import foster_home

    saved = json.loads((foster_home() / "deployments.json").read_text())
    assert saved["deployments"]["acme/router:v1"]["bundle_id"] == best.id
    assert http.delete("/v1/deployments/acme/router:v1").status_code == 204
    assert http.get("/v1/deployments/acme/router:v1").status_code == 404


def test_shadow_traffic_stores_divergences(server, http, run, target):
    teacher = ScriptedBackend(lambda request: "SHIPPING" if "gift" in _user_text(request.messages_or_prompt) else
                              label_for(_user_text(request.messages_or_prompt)))
    register_backend(TEACHER.removeprefix("local/"), teacher)
    _deploy(http, name=ALIAS, bundle_id=run["best"].id, shadow={"teacher": TEACHER, "sample_rate": 1.0})
    for text in ("do you sell gift cards", "reset my password please"):
        response = http.post("/v1/chat/completions", json={"model": ALIAS, "messages": [{"role": "user", "content": text}]})
        assert response.status_code == 200
    deadline = time.monotonic() + 60  # the first divergence loads the embedding model
    rows = []
    while time.monotonic() < deadline and not rows:
        rows = http.get(f"/v1/deployments/{ALIAS}/divergences").json()["data"]
        time.sleep(0.2)
    assert len(rows) == 1, rows
    assert rows[0]["input"] == "do you sell gift cards"
    assert (rows[0]["teacher_output"], rows[0]["target_output"]) == ("SHIPPING", "OTHER")
    assert rows[0]["deployment"] == ALIAS and rows[0]["bundle_id"] == run["best"].id
    while teacher.calls < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert teacher.calls == 2  # both requests were shadowed; the agreeing one stored nothing
    assert http.get("/v1/deployments/unknown/divergences").status_code == 404


def test_retrieving_bundle_serves_the_nearest_examples(server, http, home, target):
    """A pool bundle (k nearest examples by embedding) is rendered per input, as evaluation rendered it.
    (After the shadow test, which already loaded the embedding model.)"""
    import openai

    from foster.prompts.bundle import Bundle, Example, ExampleSelection, OutputContract
    from service_fixtures import PROBES

    pool = Bundle(teacher=TEACHER, targets=[TARGET], system_prompt="Route the ticket.",
                  examples=[Example(input=t, output=label) for t, label in PROBES],
                  selection=ExampleSelection(kind="knn", k=2), output_contract=OutputContract(format="label", answers=["BILLING", "ACCOUNT", "SHIPPING", "OTHER"]))
    assert http.post("/v1/bundles", content=pool.to_json(), headers={"content-type": "application/json"}).status_code == 201
    _deploy(http, name="router-pool", bundle_id=pool.id)
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)
    for text in ("my parcel has not arrived", "I forgot my password"):
        reply = client.chat.completions.create(model="router-pool", messages=[{"role": "user", "content": text}])
        assert reply.choices[0].message.content == label_for(text)
        sent = list(target.requests[-1].messages)
        assert sent == pool.messages(text) and len(sent) == 1 + 2 * 2 + 1  # system, k pairs, input


def test_a_client_replaying_the_bundles_own_messages_gets_the_bundle_once(server, http, home, target, monkeypatch):
    """An export replayed against foster serve (promptfoo's config sends `Bundle.messages(input)`)
    reaches the target exactly as evaluation asked it, not with the bundle's prompt and examples
    twice; anything else the client sends before its input is still its own and kept."""
    import openai

    from foster.prompts.bundle import Bundle, Example, ExampleSelection, OutputContract
    from service_fixtures import PROBES

    pool = Bundle(teacher=TEACHER, targets=[TARGET], system_prompt="Route the ticket.",
                  examples=[Example(input=t, output=label) for t, label in PROBES],
                  selection=ExampleSelection(kind="knn", k=2), output_contract=OutputContract(format="label", answers=["BILLING", "ACCOUNT", "SHIPPING", "OTHER"]))
    assert http.post("/v1/bundles", content=pool.to_json(), headers={"content-type": "application/json"}).status_code == 201
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)
    text, other = "my parcel has not arrived", "I forgot my password"
    reply = client.chat.completions.create(model=pool.id, messages=pool.messages(text))
    assert reply.choices[0].message.content == label_for(text)
    assert list(target.requests[-1].messages) == pool.messages(text)
    stream = client.chat.completions.create(model=pool.id, messages=pool.messages(text), stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == label_for(text)
    assert list(target.requests[-1].messages) == pool.messages(text)

    # the bundle's rendering of a different input is not this input's: it stays the client's conversation
    replayed = pool.messages(other)[:-1]
    assert replayed != pool.messages(text)[:-1]  # other examples retrieved
    client.chat.completions.create(model=pool.id, messages=[*replayed, {"role": "user", "content": text}])
    assert list(target.requests[-1].messages) == [*pool.messages(text)[:-1], *replayed, {"role": "user", "content": text}]

    # a base target: the bundle's messages sent by the client become the bundle's prompt, once
    seen = []
    register_backend("fake-base", ScriptedBackend(lambda request: seen.append(request) or label_for(_user_text(request.messages_or_prompt))))
    monkeypatch.setenv("FOSTER_COMPLETION_TARGETS", "local/fake-base")
    _deploy(http, name="router-pool-base", bundle_id=pool.id, target="local/fake-base")
    client.chat.completions.create(model="router-pool-base", messages=pool.messages(text))
    assert seen[-1].prompt == pool.prompt(text)


def test_openapi_has_no_5xx_under_schemathesis(server, run, target, monkeypatch):
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis.generation import GenerationMode

    from foster.agent import runs as agent_runs

    # a fuzzed body that passes RunConfig must not spawn real runs: the route is under test, not the agent
    monkeypatch.setattr(agent_runs, "start_run", lambda config, background=False: "fuzzed-run")
    schema = schemathesis.openapi.from_url(f"{server}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    failures = []
    codes = {}
    for operation in operations:
        for mode, examples in ((GenerationMode.POSITIVE, 10), (GenerationMode.NEGATIVE, 5)):

            @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(mode))
            def check(case):
                response = case.call(base_url=server, timeout=10, params={"follow": "false"}
                                     if operation.path.endswith("/events") else None)
                codes.setdefault(operation.label, set()).add(response.status_code)
                if response.status_code >= 500:
                    failures.append((operation.label, mode.value, response.status_code, response.text[:200]))

            check()
    assert not failures, failures
    assert all(codes.values()) and any(c < 300 for seen in codes.values() for c in seen)


def test_a_recall_bundle_serves_the_recorded_answer_without_the_target(server, http, home, target):
    """An input within the bundle's recall threshold of a recorded one gets the recorded answer, as
    evaluation measured it, and the target is not called; any other input reaches the target."""
    import openai

    from foster.prompts.bundle import Bundle, Example, ExampleSelection, OutputContract
    from service_fixtures import PROBES

    # every recorded answer is OTHER, so a recalled reply is told apart from the target's label
    pool = Bundle(teacher=TEACHER, targets=[TARGET], system_prompt="Route the ticket.",
                  examples=[Example(input=t, output="OTHER") for t, _ in PROBES],
                  selection=ExampleSelection(kind="knn", k=2, recall_above=0.99),
                  output_contract=OutputContract(format="label", answers=["BILLING", "ACCOUNT", "SHIPPING", "OTHER"]))
    assert http.post("/v1/bundles", content=pool.to_json(), headers={"content-type": "application/json"}).status_code == 201
    _deploy(http, name="router-recall", bundle_id=pool.id)
    recorded = next(t for t, label in PROBES if label != "OTHER")
    calls = target.calls
    response = http.post("/v1/chat/completions", json={"model": "router-recall", "messages": [{"role": "user", "content": recorded}]})
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"] == "OTHER"
    assert response.headers["x-foster-recalled"] == "1" and target.calls == calls
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)
    streamed = client.chat.completions.create(model="router-recall", stream=True, messages=[{"role": "user", "content": recorded}])
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == "OTHER" and target.calls == calls
    fresh = "my parcel never came and the tracking page is blank"
    reply = client.chat.completions.with_raw_response.create(model="router-recall", messages=[{"role": "user", "content": fresh}])
    assert reply.headers["x-foster-recalled"] == "0" and target.calls == calls + 1
    assert reply.parse().choices[0].message.content == label_for(fresh)
