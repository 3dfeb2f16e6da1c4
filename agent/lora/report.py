"""The report's "LoRA fallback" section in Markdown (agent.report.markdown can append it)."""
from __future__ import annotations


def lora_markdown(s: dict) -> str:
    """The report's "LoRA fallback" section."""
    f = lambda x, nd=3: "–" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))  # noqa: E731
    out = ["", "## LoRA fallback", ""]
    if s.get("status") in ("failed", "stopped"):
        return "\n".join(out + [f"- {s['status']}: {s.get('error')}", ""])
    d = s.get("data") or {}
    syn = d.get("synthetic") or {}
    out += [f"- target `{s.get('target')}`; adapter `{s.get('adapter_dir') or s.get('jsonl')}`"
            + (" (+ adapter.gguf for llama.cpp)" if s.get("adapter_gguf") else ""),
            f"- data: {d.get('rows')} rows {d.get('by_source')}; general share {f(d.get('general_fraction'))} "
            f"(asked {f(d.get('mix'))}); {d.get('uncertain_probes')} uncertain train probes kept with all samples",
            f"- synthetic inputs: {syn.get('kept', '–')} kept of {syn.get('candidates', '–')} by the discriminator"
            if "kept" in syn else f"- synthetic inputs: {syn.get('skipped')}"]
    t = s.get("training")
    if t:
        out.append(f"- training: {t['step']} steps × batch {t['batch_size']} in {f(t['seconds'], 1)} s "
                   f"({t['stop_reason']}; resumed from step {t['resumed_from']}); loss {f(t.get('loss'))}")
    secs = s.get("seconds") or {}
    if secs:
        out.append("- wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in secs.items()))
    if "fidelity" in s:
        g = s["general_capability"]
        out += ["", "| | fidelity | ceiling | × ceiling | calibration gap | sampled agr. |", "|---|---|---|---|---|---|",
                f"| bundle + adapter | {f(s['fidelity'])} | {f(s['ceiling'])} | {f(s.get('fraction_of_ceiling'))}{_ratio(s)} | "
                f"{f(s.get('calibration_gap'))} | {f(s.get('sampled_agreement'))} |",
                f"| best bundle ({(s.get('best_bundle') or {}).get('variant')}) | {f((s.get('best_bundle') or {}).get('fidelity'))} | | | | |",
                "", f"- general capability: **{f(g['agreement'])}** agreement with the plain target"
                + (f" [{g['interval'][0]:.3f}, {g['interval'][1]:.3f}]" if g.get("interval") else "")
                + f" on {g['n']} general prompts ({g['method']}; exact {f(g['exact'])}; the plain target's own T=0.7 "
                f"sample agrees {f(g.get('plain_sampled_agreement'))})"
                + (f"; the adapter cost **{g['cost_points']:.1f} points** of general capability"
                   f" [{g['cost_interval'][0]:.1f}, {g['cost_interval'][1]:.1f}]" if g.get("cost_points") is not None else "")
                + (f", {g['beyond_noise_points']:+.1f} [{g['beyond_noise_interval'][0]:+.1f}, {g['beyond_noise_interval'][1]:+.1f}]"
                   " beyond the plain target's own sampling noise" if g.get("beyond_noise_points") is not None else "")
                + (f"; by category {g['by_category']}" if g.get("by_category") else ""),
                f"- best artifact: {'bundle + adapter' if s.get('beats_best_bundle') else 'the bundle (the adapter did not beat it)'}"]
        if s.get("freetext"):
            p = s["freetext"]
            iv = lambda d: f"{d['value']:.3f} [{d['low']:.3f}, {d['high']:.3f}] n={d['n']}"  # noqa: E731
            out += [f"- free text: exact {iv(p['exact'])}, structure {iv(p['structure'])}, similarity "
                    f"{iv(p['similarity'])}; primary {p['primary']}"]
            if p.get("warning"):
                out.append(f"- **warning**: {p['warning']}")
    elif s.get("kind") == "provider":
        out.append(f"- fine-tuning JSONL: {s.get('jsonl')} ({'submitted: ' + str(s.get('provider_job_id')) if s.get('submitted') else 'not submitted'})")
    rl = d.get("relabel")
    if rl:
        out += ["", f"- re-label path: the target re-labelled {rl['corpus_train']} corpus inputs and agreed with gold on "
                f"{rl['target_agrees']} ({f(rl.get('agreement_rate'))}); trained with --labels {rl['labels']}: "
                f"{rl['rows_from_relabel']} rows from its re-labels, {rl['rows_from_gold']} from gold; "
                f"{rl['disagreements_total']} disagreements listed for review (relabel_summary.json)"]
        out += [f"  - {x['input']!r}: gold `{x['gold']}`, target `{x['target']}`" for x in rl["disagreements"][:10]]
    from foster.agent.lora.pilot import markdown as pilot_markdown

    out.append(pilot_markdown(s.get("pilot")))
    for other in s.get("others") or []:
        out.append(lora_markdown(other).replace("## LoRA fallback", f"### Also trained: {other.get('target')}"))
    return "\n".join(out) + "\n"


def _ratio(s: dict) -> str:
    """The fraction of the ceiling's interval: the ceiling is measured on the sampled held-out probes only."""
    r = s.get("fraction_of_ceiling_interval") or {}
    if r.get("low") is None:
        return ""
    return f" [{r['low']:.2f}, {r['high']:.2f}] (n = {r['n']}, ceiling n = {r['n_ceiling']})"
