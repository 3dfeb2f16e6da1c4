"""What the Gradio app shows, computed from a run's files: no gradio in here, so it tests plainly.

Every function takes ids or paths and returns HTML, rows or pandas frames; ui.gradio_app wires
them to components. Run files are read through store.runs.RunRegistry (status.json, events.jsonl,
grid.json, report.json, config.json), bundles through ui.catalog.
"""

from __future__ import annotations

import difflib
import html
import json
import math
import time
from pathlib import Path
from typing import Any

from foster.ui.catalog import SAFE_ID, BundleEntry, catalog

FILTERS = ("All", "Different", "Failures")
FILTER_HELP = (
    "**All**: every held-out probe. **Different**: the columns do not all give the same answer. "
    "**Failures**: the best bundle disagrees with the teacher's mode."
)
PALETTE = ["#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#EECA3B", "#B279A2", "#FF9DA6", "#9D755D", "#BAB0AC"]
SUMMARY_HEADERS = ["column", "target", "variant", "fidelity", "ceiling", "calibration gap", "tokens", "latency (ms)", "cost ($)",
                   "fidelity 95 % interval (n)"]


def _registry():
    from foster.store.runs import RunRegistry

    return RunRegistry()


def _run_id(run_id: str | None) -> str | None:
    """A run id as typed or picked, or None unless it is a plain id (never a path)."""
    import re

    return run_id if run_id and re.match(SAFE_ID, run_id) else None


def _bundle_path(path: str) -> Path:
    """A bundle file the catalog knows; the app never opens any other path a page sends."""
    known = {str(e.path): e.path for e in catalog().entries()}
    if str(path) not in known:
        raise ValueError(f"not a known bundle file: {path}")
    return known[str(path)]


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _interval(iv: dict | None, value: Any) -> str:
    """A fidelity as every report prints it: value [95 % interval] n (agent/metrics.py fmt_interval)."""
    if not iv:
        return _fmt(value)
    return f"{iv['value']:.3f} [{iv['low']:.2f}, {iv['high']:.2f}] n={iv['n']}"


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


# ---------------------------------------------------------------------------------------------
# Runs


def run_choices() -> list[tuple[str, str]]:
    """(label, run id) for every run, newest first."""
    choices = []
    for status in _registry().list():
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(status.started_at)) if status.started_at else ""
        choices.append((f"{status.run_id} · {status.status}" + (f" · {when}" if when else ""), status.run_id))
    return choices


def latest_run(with_grid: bool = False) -> str | None:
    registry = _registry()
    for status in registry.list():
        if not with_grid or (registry.run_dir(status.run_id) / "grid.json").is_file():
            return status.run_id
    return None


def _nodes(progress: dict[str, float], finished: bool) -> list[str]:
    """The pipeline's nodes (agent/state.py NODES); a finished run hides the ones it never entered (lora)."""
    from foster.agent.state import NODES

    return [n for n in NODES if n in progress or not finished] + [n for n in progress if n not in NODES]


def progress_html(run_id: str | None) -> str:
    """The run's state and one progress bar per pipeline node (current node highlighted)."""
    run_id = _run_id(run_id)
    if not run_id:
        return "<p>No run selected.</p>"
    status = _registry().get(run_id)
    if status is None:
        return f"<p>No run {_esc(run_id)}.</p>"
    colour = {"done": "#54A24B", "failed": "#E45756", "cancelled": "#9D755D", "stopped": "#EECA3B"}.get(status.status, "#4C78A8")
    lines = [
        f"<div class='foster-progress'><p><b>{_esc(status.run_id)}</b> "
        f"<span style='background:{colour};color:white;padding:1px 8px;border-radius:8px'>{_esc(status.status)}</span>"
        f" round {status.round}" + (f" · node <b>{_esc(status.node)}</b>" if status.node else "")
        + (f" · verdict: <b>{_esc(status.verdict)}</b>" if status.verdict else "") + "</p>"
    ]
    if status.error:
        lines.append(f"<pre style='color:#b00020;white-space:pre-wrap'>{_esc(status.error)}</pre>")
    lines.append("<table style='width:100%;border-collapse:collapse'>")
    for node in _nodes(status.progress, status.status not in ("queued", "running")):
        p = max(0.0, min(1.0, float(status.progress.get(node, 0.0) or 0.0)))
        current = node == status.node and status.status == "running"
        weight = "bold" if current else "normal"
        lines.append(
            f"<tr><td style='width:110px;font-weight:{weight}'>{_esc(node)}{' ◀' if current else ''}</td>"
            f"<td><div style='background:#e5e7eb;border-radius:4px;height:12px'>"
            f"<div style='width:{p * 100:.0f}%;background:{colour};height:12px;border-radius:4px'></div></div></td>"
            f"<td style='width:50px;text-align:right'>{p * 100:.0f}%</td></tr>"
        )
    lines.append("</table>")
    if status.figures:
        lines.append("<p>" + " · ".join(
            f"{_esc(t)}: best {_fmt(f.get('best'))}, zero-shot {_fmt(f.get('zero_shot'))}, ceiling {_fmt(f.get('ceiling'))}"
            for t, f in status.figures.items() if isinstance(f, dict)) + "</p>")
    lines.append("</div>")
    return "".join(lines)


def recent_events(run_id: str | None, limit: int = 15) -> str:
    run_id = _run_id(run_id)
    if not run_id:
        return ""
    events = _registry().events(run_id)[-limit:]
    out = []
    for e in events:
        when = time.strftime("%H:%M:%S", time.localtime(e.get("ts") or 0))
        progress = e.get("progress")
        pct = f" {progress * 100:.0f}%" if isinstance(progress, (int, float)) else ""
        out.append(f"{when} {e.get('node') or '-':<12} {e.get('kind', ''):<8}{pct} {e.get('message', '')}".rstrip())
    return "\n".join(out)


def _run_defaults() -> tuple[dict, list[str]]:
    from typing import get_args

    from foster.agent.config import RunConfig

    fields = RunConfig.model_fields
    return {"max_probes": fields["max_probes"].default}, list(get_args(fields["primary_metric"].annotation))


RUN_DEFAULTS, PRIMARY_METRICS = _run_defaults()


def start_run(teacher: str, targets: str, inputs_path: str | None, threshold: float, task: str = "",
              max_probes: int | None = None, primary_metric: str | None = None) -> tuple[str | None, str]:
    """Start a run in the background; (run id or None, a message for the page)."""
    from pydantic import ValidationError

    from foster.agent import runs as agent_runs
    from foster.agent.config import InputError, RunConfig

    fields: dict[str, Any] = {
        "teacher": (teacher or "").strip() or None,
        "targets": [t.strip() for t in (targets or "").replace("\n", ",").split(",") if t.strip()],
        "inputs": inputs_path or None,
        "threshold": float(threshold),
        "task": task or "",
    }
    if max_probes:
        fields["max_probes"] = int(max_probes)
    if primary_metric:  # RunConfig refuses anything but its choices, in a line, before any call
        fields["primary_metric"] = primary_metric
    try:
        run_id = agent_runs.start_run(RunConfig(**fields), background=True)
    except ValidationError as exc:
        return None, "Not started: " + "; ".join(str(e.get("msg", "")).removeprefix("Value error, ") for e in exc.errors())
    except InputError as exc:
        return None, f"Not started: {exc}"
    return run_id, f"Started run **{run_id}**."


# ---------------------------------------------------------------------------------------------
# The comparison grid


def load_grid(run_id: str | None) -> dict:
    run_id = _run_id(run_id)
    if not run_id:
        return {"columns": [], "rows": []}
    grid = _registry().read_json(run_id, "grid.json")
    return grid if isinstance(grid, dict) else {"columns": [], "rows": []}


def best_column(grid: dict, run_id: str | None = None) -> str | None:
    """The key of the best bundle's column: the report's choice, else the best non-baseline fidelity."""
    run_id = _run_id(run_id)
    columns = grid.get("columns") or []
    if run_id:
        report = _registry().read_json(run_id, "report.json") or {}
        best = report.get("best_bundle") or {}
        key = f"{best.get('target')}::{best.get('variant')}"
        if any(c.get("key") == key for c in columns):
            return key
    baselines = {"zero-shot", "hand-written", "nearest-copy"}
    ranked = sorted(columns, key=lambda c: (c.get("variant") not in baselines, c.get("fidelity") or 0), reverse=True)
    return ranked[0]["key"] if ranked else None


def filter_rows(grid: dict, which: str, best_key: str | None) -> list[dict]:
    keys = [c["key"] for c in grid.get("columns") or []]
    rows = grid.get("rows") or []
    if which == "Different":
        def differs(row: dict) -> bool:
            answers = {str((row["answers"].get(k) or {}).get("answer", "")).casefold() for k in keys if k in row["answers"]}
            agrees = {bool((row["answers"].get(k) or {}).get("agree")) for k in keys if k in row["answers"]}
            return len(answers) > 1 or len(agrees) > 1

        return [r for r in rows if differs(r)]
    if which == "Failures":
        return [r for r in rows if best_key and not (r["answers"].get(best_key) or {}).get("agree", False)]
    return list(rows)


def _dist_text(dist: dict[str, float], limit: int = 3) -> str:
    items = sorted(dist.items(), key=lambda kv: -kv[1])
    shown = " · ".join(f"{_esc(a)} {p:.2f}" for a, p in items[:limit])
    return shown + (" · …" if len(items) > limit else "")


def grid_html(run_id: str | None, which: str = "All", limit: int = 500) -> str:
    """Rows: held-out probes. Columns: the teacher's answer distribution, then every variant on every
    target; a cell is green where it gives the teacher's answer, red where it does not."""
    grid = load_grid(run_id)
    columns = grid.get("columns") or []
    if not columns:
        return f"<p>Run {_esc(run_id)} has no comparison grid yet (the evaluate node writes it).</p>" if run_id else "<p>No run selected.</p>"
    best_key = best_column(grid, run_id)
    rows = filter_rows(grid, which if which in FILTERS else "All", best_key)
    total = len(grid.get("rows") or [])
    head = "".join(
        f"<th title='{_esc(c['key'])}'>{_esc(c.get('variant'))}{' ★' if c['key'] == best_key else ''}"
        f"<br><small>{_esc(c.get('target'))}</small><br><small>fidelity {_esc(_interval(c.get('interval'), c.get('fidelity')))}</small></th>"
        for c in columns
    )
    body = []
    for row in rows[:limit]:
        teacher = row.get("teacher") or {}
        cells = [
            f"<td class='probe'>{_esc(row.get('probe_id'))}</td>",
            f"<td class='input'>{_esc(row.get('input'))}</td>",
            f"<td class='teacher'><b>{_esc(teacher.get('mode'))}</b><br><small>{_dist_text(teacher.get('dist') or {})}</small></td>",
        ]
        for c in columns:
            answer = row.get("answers", {}).get(c["key"])
            if answer is None:
                cells.append("<td class='missing'>–</td>")
                continue
            cls = "agree" if answer.get("agree") else "disagree"
            cells.append(f"<td class='{cls}'>{_esc(answer.get('answer'))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    caption = f"{len(rows)} of {total} held-out probes ({_esc(which)})" + (f", first {limit} shown" if len(rows) > limit else "")
    return (
        "<div class='foster-grid' style='overflow-x:auto'>"
        f"<p class='caption'>{caption}</p>"
        "<table><thead><tr><th>probe</th><th>input</th><th>teacher (mode, distribution)</th>"
        f"{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )


GRID_CSS = """
.foster-grid table { border-collapse: collapse; width: 100%; font-size: 13px; }
.foster-grid th, .foster-grid td { border: 1px solid #d0d7de; padding: 4px 6px; vertical-align: top; text-align: left; }
.foster-grid th { background: #f3f4f6; }
.foster-grid td.agree { background: #dcfce7; }
.foster-grid td.disagree { background: #fee2e2; }
.foster-grid td.teacher { background: #eef2ff; }
.foster-grid td.probe { color: #6b7280; font-family: monospace; font-size: 11px; }
.foster-grid .caption { color: #374151; margin: 4px 0; }
.foster-events textarea { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12px; }
"""


def summary_rows(run_id: str | None) -> list[list[Any]]:
    """Per column: fidelity, ceiling, calibration gap, tokens, latency, cost."""
    rows = []
    for c in load_grid(run_id).get("columns") or []:
        latency = c.get("latency_s")
        rows.append([
            c.get("key"), c.get("target"), c.get("variant"), c.get("fidelity"), c.get("ceiling"), c.get("calibration_gap"),
            c.get("tokens"), None if latency is None else round(latency * 1000, 1), c.get("cost"),
            _interval(c.get("interval"), None),
        ])
    return rows


# ---------------------------------------------------------------------------------------------
# Diff of two variants


def run_bundle_choices(run_id: str | None) -> list[tuple[str, str]]:
    """(label, path) of a run's exported bundles, or of every bundle when no run is given."""
    run_id = _run_id(run_id)
    entries: list[BundleEntry] = catalog().run_bundles(run_id) if run_id else catalog().entries()
    return [(f"{e.variant} · {', '.join(e.targets)} · {e.id}" + (f" · run {e.run_id}" if not run_id and e.run_id else ""),
             str(e.path)) for e in entries]


def default_diff_pair(run_id: str | None) -> tuple[str | None, str | None]:
    """(A, B) to diff first: the zero-shot (or another differing) variant against the best bundle."""
    run_id = _run_id(run_id)
    entries = catalog().run_bundles(run_id) if run_id else []
    if not entries:
        return None, None
    best = next((e for e in entries if e.best), entries[0])
    others = [e for e in entries if e.id != best.id]
    other = next((e for e in others if e.variant.startswith("zero-shot")), others[0] if others else best)
    return str(other.path), str(best.path)


def _bundle_text(path: Path) -> list[str]:
    bundle = catalog().load_path(path)
    lines = [f"# system prompt ({bundle.selection.kind}" + (f", k={bundle.selection.k}" if bundle.selection.kind == "knn" else "") + ")"]
    lines += (bundle.system_prompt or "(none)").splitlines()
    lines += ["", f"# examples ({len(bundle.examples)})"]
    for example in bundle.examples:
        lines += [f"Input: {line}" for line in example.input.splitlines()] + [f"Output: {line}" for line in example.output.splitlines()]
    return lines


DIFF_CSS = """
.foster-diff table.diff { font-family: monospace; font-size: 12px; border-collapse: collapse; width: 100%; }
.foster-diff td { padding: 0 4px; vertical-align: top; white-space: pre-wrap; word-break: break-word; }
.foster-diff td.diff_header { background: #f3f4f6; color: #6b7280; white-space: nowrap; width: 2.5em; text-align: right; }
.foster-diff th.diff_header { background: #f3f4f6; text-align: left; }
.foster-diff .diff_next { display: none; }
.foster-diff .diff_add { background: #dcfce7; }
.foster-diff .diff_chg { background: #fef9c3; }
.foster-diff .diff_sub { background: #fee2e2; }
"""


def diff_html(path_a: str | None, path_b: str | None) -> str:
    """The two bundles' system prompts and examples side by side (difflib)."""
    if not path_a or not path_b:
        return "<p>Pick two bundles.</p>"
    a, b = _bundle_text(_bundle_path(path_a)), _bundle_text(_bundle_path(path_b))
    table = difflib.HtmlDiff().make_table(a, b, Path(path_a).stem, Path(path_b).stem, context=False)
    return f"<div class='foster-diff'>{table}</div>"


# ---------------------------------------------------------------------------------------------
# Calibration and the divergence-cluster map


def calibration_frame(run_id: str | None, max_answers: int = 8, max_columns: int = 5):
    """The calibration plot's data (agent/analysis.py calibration) as a frame: source, answer, p."""
    import pandas as pd

    from foster.agent.analysis import calibration

    grid = load_grid(run_id)
    records = calibration(grid, best_column(grid, run_id), max_answers, max_columns)
    return pd.DataFrame.from_records(records, columns=["source", "answer", "p"])


def calibration_colours(frame) -> dict[str, str]:
    """A fixed colour per answer (the teacher's most frequent first; "(other)" grey), for the plot and
    its legend."""
    answers = list(dict.fromkeys(frame["answer"])) if len(frame) else []
    named = [a for a in answers if a != "(other)"]
    colours = {a: PALETTE[i % len(PALETTE)] for i, a in enumerate(named)}
    if "(other)" in answers:
        colours["(other)"] = "#9ca3af"
    return colours


def colour_legend(colours: dict[str, str]) -> str:
    return "<p style='font-size:13px'>" + "".join(
        f"<span style='margin-right:14px'><span style='display:inline-block;width:11px;height:11px;"
        f"background:{c};margin-right:4px'></span>{_esc(a)}</span>" for a, c in colours.items()) + "</p>"


def cluster_points(run_id: str | None) -> list[dict]:
    """The map's points (agent/analysis.py probe_map): x, y, characterize's cluster, disagreement, input."""
    from foster.agent.analysis import probe_map

    return probe_map(load_grid(run_id))


def cluster_map_svg(run_id: str | None, width: int = 640, height: int = 420) -> str:
    """The divergence-cluster map: probes placed by PCA, coloured by cluster, sized by disagreement.
    (SVG: Gradio's ScatterPlot has no size channel.)"""
    points = cluster_points(run_id)
    if not points:
        return "<p>No held-out probes to map yet.</p>"
    pad = 30
    xs, ys = [p["x"] for p in points], [p["y"] for p in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    sx = (width - 2 * pad) / ((x1 - x0) or 1)
    sy = (height - 2 * pad) / ((y1 - y0) or 1)
    circles = []
    for p in sorted(points, key=lambda q: -q["disagreement"]):  # big circles first, small on top
        cx, cy = pad + (p["x"] - x0) * sx, height - pad - (p["y"] - y0) * sy
        r = 4 + 12 * math.sqrt(p["disagreement"])
        colour = PALETTE[p["cluster"] % len(PALETTE)]
        circles.append(
            f"<circle cx='{cx:.1f}' cy='{cy:.1f}' r='{r:.1f}' fill='{colour}' fill-opacity='0.65' stroke='#1f2937' stroke-width='0.5'>"
            f"<title>cluster {p['cluster']} · disagreement {p['disagreement']:.2f}\n{_esc(p['input'])}</title></circle>"
        )
    clusters = sorted({p["cluster"] for p in points})
    legend = "".join(
        f"<span style='margin-right:12px'><span style='display:inline-block;width:10px;height:10px;border-radius:5px;"
        f"background:{PALETTE[c % len(PALETTE)]}'></span> cluster {c} "
        f"({sum(1 for p in points if p['cluster'] == c)} probes, mean disagreement "
        f"{sum(p['disagreement'] for p in points if p['cluster'] == c) / max(1, sum(1 for p in points if p['cluster'] == c)):.2f})</span>"
        for c in clusters
    )
    return (
        f"<div class='foster-map'><svg width='{width}' height='{height}' viewBox='0 0 {width} {height}' "
        f"style='background:#fafafa;border:1px solid #e5e7eb'>{''.join(circles)}</svg>"
        f"<p style='font-size:12px'>{legend}<br>Circle size: share of variant×target columns that disagree with the teacher. "
        "Axes: first two principal components of the probes' embeddings.</p></div>"
    )


# ---------------------------------------------------------------------------------------------
# Try an input live


def try_rows(run_id: str | None, text: str, max_workers: int = 4) -> list[list[Any]]:
    """The teacher's answer and every grid column's answer (its bundle on its target) for `text`."""
    from foster.agent.analysis import ask_everyone

    run_id = _run_id(run_id)
    if not run_id or not (text or "").strip():
        return []
    config = _registry().read_json(run_id, "config.json") or {}
    paths = {e.id: e.path for e in catalog().run_bundles(run_id)}
    answers = ask_everyone(config, load_grid(run_id).get("columns") or [], paths, text, max_workers)
    rows = [[a["variant"], a["model"], a["answer"], "" if a["agree"] is None else ("✓" if a["agree"] else "✗")]
            for a in answers]
    if not config.get("teacher"):
        rows.insert(0, ["teacher", config.get("teacher_records") or config.get("train_data") or "?",
                        "(no live teacher in this run)", ""])
    return rows


# ---------------------------------------------------------------------------------------------
# Downloads and shadow divergences


def bundle_download(path: str | None) -> list[str]:
    """Copies of a bundle's JSON and Markdown in a temp dir Gradio may serve."""
    import shutil
    import tempfile

    if not path:
        return []
    source = _bundle_path(path)
    out = Path(tempfile.mkdtemp(prefix="foster-bundle-"))
    bundle = catalog().load_path(source)
    stem = f"{bundle.name or source.stem}-{bundle.id}".replace("/", "_")
    files = []
    for suffix in (".json", ".md"):
        src = source.with_suffix(suffix)
        if src.is_file():
            dst = out / f"{stem}{suffix}"
            shutil.copyfile(src, dst)
            files.append(str(dst))
    return files


def deployment_choices() -> list[str]:
    from foster.ui.deployments import deployment_store

    return [d.name for d in deployment_store().all()]


DIVERGENCE_HEADERS = ["time", "input", "teacher answer", "target answer", "target", "bundle"]


def divergence_rows(name: str | None) -> list[list[Any]]:
    from foster.ui.deployments import divergences

    if not name:
        return []
    rows = []
    for d in divergences(name):
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d.get("ts") or 0))
        rows.append([when, d.get("input"), d.get("teacher_output"), d.get("target_output"), d.get("target"), d.get("bundle_id")])
    return rows


def json_pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)
