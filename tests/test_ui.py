"""The Gradio app mounted at /ui, driven by gradio_client and looked at by headless Chromium (127.0.0.1 only)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from service_fixtures import RUN_ID, TARGET, TEACHER, label_for, make_run, running_server  # noqa: E402

from foster.agent.local.fake import ScriptedBackend  # noqa: E402
from foster.agent.local.registry import register_backend  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--window-size=1400,1000", "--virtual-time-budget=15000",
]


def _user_text(messages_or_prompt) -> str:
    if isinstance(messages_or_prompt, str):
        return messages_or_prompt.rsplit("Input:", 1)[-1].split("\n")[0].strip()
    return [m["content"] for m in messages_or_prompt if m["role"] == "user"][-1]


@pytest.fixture(scope="module")
def server():
    from foster.ui.service import create_app

    with running_server(create_app(ui=True)) as base:
        yield base


@pytest.fixture
def run(monkeypatch):
    from foster.store.paths import foster_home

    monkeypatch.delenv("FOSTER_API_TOKEN", raising=False)
    return make_run(foster_home())


@pytest.fixture
def fakes():
    target = ScriptedBackend(lambda request: label_for(_user_text(request.messages_or_prompt)))
    teacher = ScriptedBackend(lambda request: label_for(_user_text(request.messages_or_prompt)))
    register_backend(TARGET.removeprefix("local/"), target)
    register_backend(TEACHER.removeprefix("local/"), teacher)
    return teacher, target


def test_gradio_client_drives_the_app(server, run, fakes, tmp_path):
    from gradio_client import Client

    from foster.prompts.bundle import Bundle

    teacher, target = fakes
    client = Client(f"{server}/ui/", verbose=False, download_files=str(tmp_path / "downloads"), analytics_enabled=False)

    grid_html, summary = client.predict(RUN_ID, "All", api_name="/load_grid")
    assert "10 of 10 held-out probes" in grid_html and "the delivery is a week late" in grid_html
    assert [row[2] for row in summary["data"]] == ["zero-shot", "gepa-t0"]
    assert summary["data"][1][3] == 0.9 and summary["data"][1][5] == 0.08  # fidelity, calibration gap
    failures_html, _ = client.predict(RUN_ID, "Failures", api_name="/load_grid")
    assert "1 of 10" in failures_html and "the delivery is a week late" in failures_html
    assert "reset my password please" not in failures_html
    different_html, _ = client.predict(RUN_ID, "Different", api_name="/load_grid")
    assert "4 of 10" in different_html  # probes 1, 2, 4, 5: zero-shot says OTHER, gepa-t0 the label

    tried = client.predict(RUN_ID, "where is my parcel", api_name="/try_input")
    rows = {row[0]: row for row in tried["data"]}
    assert rows["teacher"][2] == "SHIPPING"
    assert rows["gepa-t0"][2] == "SHIPPING" and rows["gepa-t0"][3] == "✓"
    assert teacher.requests[-1].messages == ({"role": "user", "content": "where is my parcel"},)
    rendered = [list(r.messages) for r in target.requests]
    assert run["best"].messages("where is my parcel") in rendered  # each variant through its own bundle
    assert run["zero"].messages("where is my parcel") in rendered

    progress, events = client.predict(RUN_ID, api_name="/watch_run")
    assert "optimize" in progress and "done" in progress and "threshold met" in events

    files = client.predict(str(run["best_path"]), api_name="/download_bundle")
    json_file = next(f for f in files if f.endswith(".json"))
    assert Bundle.load(json_file).id == run["best"].id

    diff = client.predict(str(run["zero_path"]), str(run["best_path"]), api_name="/diff_bundles")
    assert "diff_add" in diff and "label&nbsp;only" in diff  # difflib keeps spaces as &nbsp;

    bars, legend = client.predict(RUN_ID, api_name="/calibration")
    assert "BILLING" in legend and "SHIPPING" in legend
    sources = {row["source"] if isinstance(row, dict) else row[0] for row in bars["value"]["data"]}
    assert {"teacher", "gepa-t0 (sampled)", "zero-shot (greedy)"} <= sources


def test_gradio_client_starts_runs_and_lists_divergences(server, run, monkeypatch):
    from gradio_client import Client

    from foster.agent import runs as agent_runs
    from foster.agent.config import RunConfig
    from foster.ui import deployments, views

    started = []
    monkeypatch.setattr(agent_runs, "start_run", lambda config, background=False: started.append(config) or "ui-run")
    monkeypatch.setattr(deployments, "divergences", lambda name, limit=100: [
        {"ts": 0, "input": "do you sell gift cards", "teacher_output": "SHIPPING", "target_output": "OTHER",
         "target": TARGET, "bundle_id": run["best"].id}] if name == "ft:router" else [])
    client = Client(f"{server}/ui/", verbose=False, analytics_enabled=False)

    message, _ = client.predict(TEACHER, f"{TARGET}, local/other", None, 0.85, 50, "route tickets", "structure",
                                api_name="/start_run")
    assert "ui-run" in message
    assert started[0].targets == [TARGET, "local/other"] and started[0].threshold == 0.85 and started[0].max_probes == 50
    assert started[0].primary_metric == "structure"
    refused, _ = client.predict("", "", None, 0.9, 120, "", "auto", api_name="/start_run")
    assert refused.startswith("Not started") and len(started) == 1
    # a primary metric outside the choices is refused in a line (the form's dropdown, or the view behind it)
    run_id, refused = views.start_run(TEACHER, TARGET, None, 0.9, "", 50, "similarity; rm -rf /")
    assert run_id is None and refused.startswith("Not started") and "primary" in refused.lower() and len(started) == 1
    # the form's defaults are the run's: a history is not capped at a number the CLI would not cap it at
    assert views.RUN_DEFAULTS["max_probes"] == RunConfig.model_fields["max_probes"].default

    rows = client.predict("ft:router", api_name="/divergences")
    assert rows["data"][0][1:4] == ["do you sell gift cards", "SHIPPING", "OTHER"]


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium (apt-get install -y chromium)")
def test_chromium_renders_the_grid(server, run, tmp_path):
    url = f"{server}/ui/?tab=compare&run={RUN_ID}"
    profile = tmp_path / "profile"
    png = tmp_path / "ui.png"
    common = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
    dom = subprocess.run([*common, f"--screenshot={png}", "--dump-dom", url], check=True, capture_output=True,
                         timeout=60, text=True).stdout

    # the grid's data is in the page: probes, the teacher's distribution, both variants, agreement colours
    assert "foster-grid" in dom and "the delivery is a week late" in dom and "BILLING 0.90" in dom
    assert "gepa-t0" in dom and "zero-shot" in dom and "class=\"disagree\"" in dom
    assert "10 of 10 held-out probes" in dom

    # and it was painted: a full-size, non-trivial image, not one flat colour
    assert png.stat().st_size > 30_000
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(png) as image:
        assert image.size == (1400, 1000)
        colours = image.convert("RGB").resize((140, 100)).getcolors(maxcolors=140 * 100)
    dominant = max(count for count, _ in colours) / (140 * 100)
    assert len(colours) > 50 and dominant < 0.8, (len(colours), dominant)
    if os.environ.get("FOSTER_UI_SCREENSHOT"):  # keep a copy to look at (pytest prunes its tmp dirs)
        shutil.copyfile(png, os.environ["FOSTER_UI_SCREENSHOT"])
