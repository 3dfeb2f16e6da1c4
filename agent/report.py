"""The run's report as Markdown and as the short table the CLI prints."""
from __future__ import annotations


def _f(x, nd=3):
    return "–" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))


def summary_table(report: dict) -> str:
    lines = [f"{'target':<40} {'zero-shot':>9} {'best':>7} {'ceiling':>8} {'cal.gap':>8}  best variant"]
    for t, s in report.get("targets", {}).items():
        z = (s.get("zero_shot") or {}).get("fidelity")
        b = s["best"]
        lines.append(f"{t:<40} {_f(z):>9} {_f(b.get('fidelity')):>7} {_f(s.get('ceiling')):>8} "
                     f"{_f(s.get('calibration_gap')):>8}  {b.get('variant')}")
    return "\n".join(lines)


def markdown(report: dict) -> str:
    out = [f"# foster report — run {report.get('run_id')}", "",
           f"- teacher: `{report.get('teacher')}` (path: {report.get('path')})",
           f"- verdict: **{report.get('verdict')}** (threshold {report.get('threshold')})",
           f"- answers: {report.get('answer_kind')}; fidelity method: {report.get('fidelity_method')}",
           f"- ceiling (teacher self-agreement on held-out): {_f(report.get('ceiling'))} — {report.get('ceiling_method')}",
           f"- probes: {report.get('train')} train, {report.get('held_out')} held out; kinds {report.get('probe_kinds')}",
           f"- refusal rate {_f(report.get('refusal_rate'))}, hedge rate {_f(report.get('hedge_rate'))}",
           f"- wall time {_f(report.get('wall_seconds'), 1)} s over {report.get('rounds')} round(s)", ""]
    for n in report.get("notes", []):
        out.append(f"> {n}")
    out += ["", "## Per target", "", "```", summary_table(report), "```", ""]
    for t, s in report.get("targets", {}).items():
        out += [f"### {t}", "", "| variant | fidelity | sampled agr. | cal. gap | tokens (o200k) | latency s | cost |",
                "|---|---|---|---|---|---|---|"]
        for v in s.get("variants", []):
            out.append(f"| {v['variant']}{' (baseline)' if v.get('baseline') else ''} | {_f(v.get('fidelity'))} | "
                       f"{_f(v.get('sampled_agreement'))} | {_f(v.get('calibration_gap'))} | "
                       f"{v.get('tokens', {}).get('o200k_base')} | {_f(v.get('latency_s'))} | {_f(v.get('cost'), 4)} |")
        nc = (s.get("nearest_copy") or {}).get("fidelity")
        out.append(f"| nearest recorded answer, no LLM (baseline) | {_f(nc)} | | | 0 | | 0 |")
        out.append("")
        for cl in s.get("divergence_clusters", []):
            out.append(f"- divergent cluster {cl['cluster']}: fidelity {_f(cl['fidelity'])} over {cl['size']} probes; "
                       f"e.g. {'; '.join(repr(e) for e in cl['examples'])}")
        out.append("")
    if report.get("lora"):
        from foster.agent.lora.report import lora_markdown

        out.append(lora_markdown(report["lora"]))
    out += ["## Usage", "", "| model | calls | prompt tok | completion tok | cost | seconds |", "|---|---|---|---|---|---|"]
    for m, u in (report.get("usage") or {}).items():
        out.append(f"| {m} | {u.get('calls')} | {u.get('prompt_tokens')} | {u.get('completion_tokens')} | "
                   f"{_f(u.get('cost'), 4)} | {_f(u.get('seconds'), 1)} |")
    out += ["", "Node seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in (report.get("node_seconds") or {}).items())]
    if report.get("disagreements"):
        out += ["", "## Disagreements with the gold labels (re-label path)", ""]
        for d in report["disagreements"][:50]:
            out.append(f"- {d['input']!r}: gold `{d['gold']}`, target `{d['answer']}`")
    return "\n".join(out) + "\n"
