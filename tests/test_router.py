"""Named models with several deployments go through a litellm.Router: failover, weights, rpm limits."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from openai_replica import Replica  # noqa: E402

from foster.agent import gateway  # noqa: E402
from foster.agent.gateway import Models, complete, use_models  # noqa: E402
from foster.agent.models_file import ModelsFile  # noqa: E402

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def replicas():
    started: list[Replica] = []

    def make(**kw) -> Replica:
        started.append(Replica.start(**kw))
        return started[-1]

    yield make
    for r in started:
        r.stop()


def _models(*deployments: dict, **extra) -> Models:
    return Models(ModelsFile.parse({"models": {"teacher": list(deployments)}, **extra}))


def test_a_failing_replica_is_routed_around(replicas, monkeypatch):
    monkeypatch.setenv("REPLICA_KEY", "sk-test")
    good, bad = replicas(answer=lambda b: "from good"), replicas(status=500)
    models = _models({"model": "openai/ft", "api_base": good.url, "api_key_env": "REPLICA_KEY"},
                     {"model": "openai/ft", "api_base": bad.url, "api_key_env": "REPLICA_KEY"})
    texts = [complete("teacher", HI, models=models).text for _ in range(20)]
    assert texts == ["from good"] * 20
    assert good.calls == 20 and bad.calls >= 1  # the bad one was tried and left out, never surfaced
    usage = gateway.process_ledger().snapshot()["teacher"]
    assert usage["calls"] == 20 and usage["errors"] == 0


def test_healthy_replicas_split_calls_by_weight(replicas):
    heavy, light = replicas(), replicas()
    models = _models({"model": "openai/ft", "api_base": heavy.url, "weight": 3},
                     {"model": "openai/ft", "api_base": light.url, "weight": 1})
    with use_models(models):  # the context's models are the default for complete()
        for _ in range(120):
            complete("teacher", HI)
    assert heavy.calls + light.calls == 120
    # 3:1 expected (90 / 30); binomial sd 4.7, so 70..110 fails only when weights are ignored (60 / 60)
    assert 70 <= heavy.calls <= 110, (heavy.calls, light.calls)
    assert gateway._MODELS.get() is None  # nothing left in the process once the block ends


def test_rpm_limits_cap_the_call_rate(replicas):
    capped, other = replicas(), replicas()
    models = _models({"model": "openai/ft", "api_base": capped.url, "rpm": 3, "weight": 5},
                     {"model": "openai/ft", "api_base": other.url, "rpm": 1000})
    for _ in range(25):
        assert complete("teacher", HI, models=models).text == "ok"
    # the capped replica gets most of the traffic by weight, but never more than 3 calls a minute
    assert capped.calls >= 1 and max(capped.calls_per_minute().values()) <= 3
    assert capped.calls + other.calls == 25


def test_fallback_model_answers_when_every_deployment_fails(replicas):
    down, backup = replicas(status=500), replicas(answer=lambda b: "from backup")
    models = Models(ModelsFile.parse({"models": {"teacher": {"model": "openai/ft", "api_base": down.url},
                                                 "backup": {"model": "openai/ft2", "api_base": backup.url}},
                                      "fallbacks": {"teacher": ["backup"]}, "num_retries": 0}))
    assert complete("teacher", HI, models=models).text == "from backup"
    assert down.calls >= 1 and backup.calls == 1


def test_models_file_forms_and_keys_never_stored(tmp_path, fake_model, monkeypatch):
    model, _ = fake_model(lambda r: "from the file")
    path = tmp_path / "models.yaml"
    path.write_text(f"teacher:\n  model: {model}\nremote:\n  model: openai/my-ft\n  api_base: http://127.0.0.1:9/v1\n"
                    "  api_key_env: MY_KEY\n")  # the older flat form
    monkeypatch.setenv("MY_KEY", "sk-secret")
    models = Models.load(path)
    assert complete("teacher", prompt="x", models=models).texts == ["from the file"]
    assert not models.routed("teacher")  # a single local deployment is called in-process
    remote = gateway.model_spec("remote", models)
    assert (remote.model, remote.api_base, remote.key()) == ("openai/my-ft", "http://127.0.0.1:9/v1", "sk-secret")
    assert "sk-secret" not in models.file.model_dump_json()
    assert gateway.model_spec("remote").model == "remote"  # no models given: nothing registered anywhere
    with pytest.raises(ValueError, match="fallbacks.teacher"):
        ModelsFile.parse({"models": {"teacher": "openai/x"}, "fallbacks": {"teacher": ["nowhere"]}})
    with pytest.raises(ValueError, match="rpm"):
        ModelsFile.parse({"models": {"teacher": {"model": "openai/x", "rpm": 0}}})


def test_run_endpoint_flags_become_a_one_deployment_model(tmp_path):
    models = Models.for_run(None, {"openai/old-ft": {"api_base": "http://127.0.0.1:9/v1", "api_key_env": "K"}})
    assert models.routed("openai/old-ft")
    assert models.spec("openai/old-ft").api_base == "http://127.0.0.1:9/v1"


def test_cli_models_file_names_the_model_for_one_command(replicas, tmp_path, capsys):
    from foster.ui.cli import main

    a, b = replicas(answer=lambda body: "from a"), replicas(answer=lambda body: "from b")
    path = tmp_path / "models.yaml"
    path.write_text(f"models:\n  old-ft:\n    - {{model: openai/ft, api_base: '{a.url}'}}\n"
                    f"    - {{model: openai/ft, api_base: '{b.url}'}}\n")
    for _ in range(6):
        assert main(["--models-file", str(path), "ask", "old-ft", "hi"]) == 0
    assert a.calls + b.calls == 6 and set(capsys.readouterr().out.split("\n")) <= {"from a", "from b", ""}
    assert gateway._MODELS.get() is None  # the command's models ended with it
