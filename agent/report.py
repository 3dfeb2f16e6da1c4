"""The run's report as Markdown and as the short table the CLI prints."""
from __future__ import annotations

from foster.agent.freetext import markdown as freetext_markdown, report_section


def _f(x, nd=3):
    return "–" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))


def _iv(iv: dict | None, value=None) -> str:
    """A fidelity with its 95 % interval and n: '0.825 [0.68, 0.91] n=40'."""
    if not iv:
        return _f(value)
    return f"{iv['value']:.3f} [{iv['low']:.2f}, {iv['high']:.2f}] n={iv['n']}"


def _diff(d: dict | None) -> str:
    if not d:
        return ""
    return f"{d['value']:+.3f} [{d['low']:+.2f}, {d['high']:+.2f}]"


def summary_table(report: dict) -> str:
    lines = [(f"{'target':<34} {'zero-shot':>26} {'shipped (95% interval, n)':>28} {'copy, no LLM':>26} "
              f"{'ceiling':>8} {'cal.gap':>8}  variant (tokens/call)")]
    for t, s in report.get("targets", {}).items():
        z = s.get("zero_shot") or {}
        b = s["best"]
        c = s.get("nearest_copy") or {}
        lines.append(f"{t:<34} {_iv(z.get('interval'), z.get('fidelity')):>26} {_iv(b.get('interval'), b.get('fidelity')):>28} "
                     f"{_iv(c.get('interval'), c.get('fidelity')):>26} {_f(s.get('ceiling')):>8} "
                     f"{_f(s.get('calibration_gap')):>8}  {b.get('variant')} ({(b.get('tokens') or {}).get('o200k_base')})")
        if c.get("verdict"):
            lines.append(f"  {c['verdict']}")
        line = _primary_line(s)
        if line:
            lines.append(line)
    return "\n".join(lines)


def _primary_line(s: dict) -> str | None:
    """Free text: the shipped variant's figure under the primary metric (with n and interval), why that
    metric, and the other two beside it; None for closed labels."""
    ft = s.get("freetext") or {}
    panel = (s.get("best") or {}).get("freetext") or {}
    primary = ft.get("primary")
    if not primary or primary not in panel:
        return None
    others = ", ".join(f"{m} {_iv(panel.get(m))}" for m in ("exact", "structure", "similarity") if m != primary)
    line = f"  free text: {primary} {_iv(panel[primary])} ({ft.get('primary_reason')}); {others}"
    if not ft.get("scores_verdict", True):
        line += "; the verdict reads the fidelity method instead"
    return line + (f"\n  warning: {panel['warning']}" if panel.get("warning") else "")


def _lint_lines(findings: list[dict]) -> list[str]:
    if not findings:
        return ["- lint: no findings"]
    return [f"- lint {f['severity']}: `{f['code']}` {f['message']}" + (f" ({f['where']})" if f.get("where") else "")
            for f in findings]


def _ceiling(report: dict) -> str:
    """The ceiling with its own 95 % interval (bootstrap over the sampled held-out probes) where the run
    recorded one: the teacher's, so one per run, carried on each target's summary."""
    from foster.agent.metrics import fmt_interval

    ci = next((s["ceiling_interval"] for s in report.get("targets", {}).values() if s.get("ceiling_interval")), None)
    return fmt_interval(ci) if ci else _f(report.get("ceiling"))


def markdown(report: dict) -> str:
    out = [f"# foster report — run {report.get('run_id')}", "",
           f"- teacher: `{report.get('teacher')}` (path: {report.get('path')})",
           f"- verdict: **{report.get('verdict')}** (threshold {report.get('threshold')})",
           f"- answers: {report.get('answer_kind')}; fidelity method: {report.get('fidelity_method')}",
           f"- ceiling (teacher self-agreement on held-out): {_ceiling(report)} — "
           f"{report.get('ceiling_method')}",
           f"- probes: {report.get('train')} train, {report.get('held_out')} held out; kinds {report.get('probe_kinds')}",
           f"- refusal rate {_f(report.get('refusal_rate'))}, hedge rate {_f(report.get('hedge_rate'))}",
           f"- wall time {_f(report.get('wall_seconds'), 1)} s over {report.get('rounds')} round(s)", ""]
    for n in report.get("notes", []):
        out.append(f"> {n}")
    out += ["", "## Per target", "", "```", summary_table(report), "```", ""]
    for t, s in report.get("targets", {}).items():
        out += [f"### {t}", "", ("| variant | fidelity [95 % interval] n | − best [95 %] | − copy [95 %] | sampled agr. | "
                                 "cal. gap | tokens/call (o200k) | lint errors | latency s | cost |"),
                "|---|---|---|---|---|---|---|---|---|---|"]
        for v in s.get("variants", []):
            errs = sum(1 for f in v.get("lint") or [] if f.get("severity") == "error")
            rec = v.get("recalled")
            recalled = f" ({rec['n']}/{rec['of']} recalled at cosine ≥ {rec['threshold']})" if rec else ""
            out.append(f"| {v['variant']}{' (baseline)' if v.get('baseline') else ''}{recalled}"
                       f"{' **shipped**' if v['variant'] == s['best']['variant'] else ''} | "
                       f"{_iv(v.get('interval'), v.get('fidelity'))} | {_diff(v.get('vs_best'))} | {_diff(v.get('vs_copy'))} | "
                       f"{_f(v.get('sampled_agreement'))} | {_iv(v.get('calibration_gap_interval'), v.get('calibration_gap'))} | "
                       f"{v.get('tokens', {}).get('o200k_base')} | {errs} | {_f(v.get('latency_s'))} | {_f(v.get('cost'), 4)} |")
        nc = s.get("nearest_copy") or {}
        out.append(f"| nearest recorded answer, no LLM (baseline) | {_iv(nc.get('interval'), nc.get('fidelity'))} | | | | | 0 | | | 0 |")
        out.append("")
        if nc.get("verdict"):
            out += [f"**Copy baseline:** {nc['verdict']}.", ""]
        sel = s.get("selection") or {}
        if sel:
            out.append(f"Shipped: `{sel.get('chosen')}`, the {sel.get('rule')} (best `{sel.get('best_fidelity')}`, "
                       f"interval floor {_f(sel.get('floor'))}; within: {', '.join(sel.get('within_interval') or [])})."
                       + (f" Blocked by lint errors: {', '.join(sel['blocked_by_lint'])}." if sel.get("blocked_by_lint") else ""))
        for v in s.get("variants", []):
            chosen = (v.get("recalled") or {}).get("chosen_on")
            if chosen:
                out.append(f"Recall rule of `{v['variant']}`: cosine ≥ {chosen['threshold']}, chosen on "
                           f"{chosen['validation'] + chosen['evidence']} train inputs ({chosen['validation']} validation, "
                           f"{chosen['evidence']} leave-one-out): {_iv(chosen['score'])} with the rule, "
                           f"{_iv(chosen['without'])} without it, {_iv(chosen['copy'])} copying every one.")
        for r in s.get("rejected") or []:
            out.append(f"- optimizer proposal `{r['variant']}` not shipped: {r['reason']}")
        out += ["", "Lint of the shipped bundle:"] + _lint_lines(s["best"].get("lint") or []) + [""]
        for cl in s.get("divergence_clusters", []):
            out.append(f"- divergent cluster {cl['cluster']}: fidelity {_f(cl['fidelity'])} over {cl['size']} probes; "
                       f"e.g. {'; '.join(repr(e) for e in cl['examples'])}")
        out.append("")
    free = report_section(report.get("targets") or {})
    if free:
        out.append(freetext_markdown(free))
    if report.get("lora"):
        from foster.agent.lora.report import lora_markdown

        out.append(lora_markdown(report["lora"]))
    if report.get("exports"):  # foster.prompts.export.parity.export_run
        out += ["## Exports", "", "| format | file | parity on held-out probes |", "|---|---|---|"]
        out += [f"| {e['format']} | {e.get('path') or '-'} | {e['same']}/{e['n']} identical"
                f"{'' if e['ok'] else ' — DIFFERS' + (': ' + e['error'] if e.get('error') else '')} |" for e in report["exports"]]
        out.append("")
    out += ["## Usage", "", "| model | calls | requests | retries | timeouts | failed | prompt tok | completion tok | cost | seconds |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for m, u in (report.get("usage") or {}).items():
        out.append(f"| {m} | {u.get('calls')} | {u.get('requests', u.get('calls'))} | {u.get('retries', 0)} | "
                   f"{u.get('timeouts', 0)} | {u.get('errors', 0)} | {u.get('prompt_tokens')} | {u.get('completion_tokens')} | "
                   f"{_f(u.get('cost'), 4)} | {_f(u.get('seconds'), 1)} |")
    out += ["", "Node seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in (report.get("node_seconds") or {}).items())]
    if report.get("disagreements"):
        out += ["", "## Disagreements with the gold labels (re-label path)", ""]
        for d in report["disagreements"][:50]:
            out.append(f"- {d['input']!r}: gold `{d['gold']}`, target `{d['answer']}`")
    return "\n".join(out) + "\n"
