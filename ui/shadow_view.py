"""The Shadow tab's content: a deployment's agreement with its teacher, per cluster, the readiness verdict.

Plain functions of a deployment name (no gradio here), so they are tested without a browser.
"""
from __future__ import annotations

import html
from typing import Any

CLUSTER_HEADERS = ["cluster", "requests", "agree", "disagree", "agreement", "95 % interval", "example input"]


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def summary_html(name: str | None) -> str:
    """Served version, overall agreement with its interval, and the readiness verdict with its reason."""
    from foster.ui.deployments import deployment_store, readiness, shadow_stats

    if not name:
        return "<p>No deployment selected.</p>"
    deployment = deployment_store().get(name)
    if deployment is None:
        return f"<p>No deployment {html.escape(name)!s}.</p>"
    stats = shadow_stats(deployment)
    verdict = readiness(deployment)
    o = stats.overall
    teacher = deployment.shadow.teacher if deployment.shadow else "no teacher (shadow off)"
    colour = "#1a7f37" if verdict.ready else "#b35900"
    versions = ", ".join(f"v{v}: {_pct(a.rate)} of {a.requests}" for v, a in stats.by_version.items()) or "none"
    return (
        f"<p><b>{html.escape(deployment.name)}</b> serves version {deployment.active} (bundle "
        f"<code>{html.escape(deployment.bundle_id)}</code> on <code>{html.escape(deployment.target or '')}</code>), "
        f"shadowed by <code>{html.escape(teacher)}</code>.</p>"
        f"<p>Agreement {_pct(o.rate)} (95 % CI {_pct(o.low)}–{_pct(o.high)}) on {o.requests} shadowed requests: "
        f"{o.agreements} agree, {o.disagreements} disagree. By version: {html.escape(versions)}.</p>"
        f"<p style='color:{colour}'><b>{'Ready' if verdict.ready else 'Not ready'}</b>: {html.escape(verdict.reason)}</p>"
    )


def cluster_rows(name: str | None) -> list[list[Any]]:
    """One row per input cluster of the served version, least agreement first."""
    from foster.ui.deployments import deployment_store, shadow_stats

    deployment = deployment_store().get(name) if name else None
    if deployment is None:
        return []
    return [[c.cluster if c.cluster is not None else "–", c.requests, c.agreements, c.disagreements, _pct(c.rate),
             f"{_pct(c.low)}–{_pct(c.high)}", c.examples[0] if c.examples else ""]
            for c in shadow_stats(deployment).clusters]
