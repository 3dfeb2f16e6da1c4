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
                f"| bundle + adapter | {f(s['fidelity'])} | {f(s['ceiling'])} | {f(s.get('fraction_of_ceiling'))} | "
                f"{f(s.get('calibration_gap'))} | {f(s.get('sampled_agreement'))} |",
                f"| best bundle ({(s.get('best_bundle') or {}).get('variant')}) | {f((s.get('best_bundle') or {}).get('fidelity'))} | | | | |",
                "", f"- general capability: **{f(g['agreement'])}** agreement with the plain target on {g['n']} "
                f"general prompts ({g['method']}; exact {f(g['exact'])}; the plain target's own T=0.7 sample agrees "
                f"{f(g.get('plain_sampled_agreement'))})",
                f"- best artifact: {'bundle + adapter' if s.get('beats_best_bundle') else 'the bundle (the adapter did not beat it)'}"]
    elif s.get("kind") == "provider":
        out.append(f"- fine-tuning JSONL: {s.get('jsonl')} ({'submitted: ' + str(s.get('provider_job_id')) if s.get('submitted') else 'not submitted'})")
    return "\n".join(out) + "\n"
