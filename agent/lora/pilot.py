"""Which target the LoRA fallback trains: a short pilot per target, on the same data, decides.

Two targets can tie on the bundle and still differ by a factor under training (on the demo, gemma3-270m
won the bundle tie and reached 0.61 × ceiling where SmolLM2 reached 1.04 × on the same data and budget).
So when several local targets are configured and none is named, every one of them trains for the same
small step budget on the same task rows (the preliminary target's teacher and synthetic rows, each
rendered through its own adapter bundle), and is scored on the same validation rows kept out of the
pilot's training:

- **fidelity** = teacher-forced agreement on the validation rows: `exact` is the share whose every answer
  token is the argmax (exactly the rows greedy decoding reproduces), `token` the share of answer tokens;
- **gain per minute** = (token agreement after − before the pilot) / pilot training minutes.

The job continues on the target with the best gain per minute (then the higher fidelity); a tie the pilot
cannot separate keeps the bundle's target and says so. `lora_targets="all"` trains every target. The
pilot's synthetic inputs are copied to each target's job, so the full job trains on the same inputs too.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

VALIDATION_SHARE = 0.2
VALIDATION_MAX = 24


class PilotFigure(BaseModel):
    target: str
    steps: int = 0
    seconds: float = 0.0
    rows: int = 0
    validation_rows: int = 0
    before_exact: float = 0.0
    before_token: float = 0.0
    exact: float = 0.0
    token: float = 0.0
    gain_per_minute: float = 0.0
    loss: float | None = None
    error: str | None = None


def _bucket(text: str) -> float:
    return int(hashlib.sha1(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def split(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """(pilot training rows, validation rows): validation is a fixed share of the primary task rows,
    chosen by the input's hash, so every target is scored on the same inputs and never trained on them."""
    task = sorted({r["input"] for r in rows if r.get("primary") and r["source"] != "general"}, key=_bucket)
    n = max(2, min(VALIDATION_MAX, round(VALIDATION_SHARE * len(task)))) if len(task) >= 4 else 0
    held = set(task[:n])
    return [r for r in rows if r["input"] not in held], [r for r in rows if r["input"] in held and r.get("primary")]


def forced_scores(model, encoded: list[tuple[list[int], list[int]]], pad_id: int, batch_size: int = 16) -> tuple[float, float]:
    """(exact, token): rows whose every answer token is the argmax under teacher forcing, and the share
    of answer tokens that are."""
    import torch
    from foster.agent.lora.train import collate

    if not encoded:
        return 0.0, 0.0
    rows_ok, tok_ok, tok_n = 0, 0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for s in range(0, len(encoded), batch_size):
            ids, att, lab = collate(encoded[s: s + batch_size], pad_id)
            pred = model(input_ids=ids, attention_mask=att).logits[:, :-1].argmax(-1)
            gold, mask = lab[:, 1:], lab[:, 1:] != -100
            hit = (pred == gold) & mask
            rows_ok += int((hit | ~mask).all(dim=1).sum())
            tok_ok += int(hit.sum())
            tok_n += int(mask.sum())
    if was_training:
        model.train()
    return rows_ok / len(encoded), tok_ok / max(1, tok_n)


def pilot_one(target: str, base: str | Path, rows: list[dict], validation: list[dict], out_dir: Path, cfg) -> PilotFigure:
    """Train `cfg.steps` steps of a LoRA on `base` and score it on the validation rows before and after."""
    from foster.agent.lora import train as trainer

    model, tok = trainer.load_base(base)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    enc = [trainer.encode(tok, r, cfg.max_length) for r in validation]
    before = forced_scores(model, enc, pad_id)
    shutil.rmtree(out_dir, ignore_errors=True)  # a pilot is always the same short run from the base
    res = trainer.train_lora(base, rows, out_dir, cfg, quiet=True, model_and_tokenizer=(model, tok))
    # get_peft_model injected the adapter into `model` in place: the trained weights score here
    after = forced_scores(model, enc, pad_id)
    minutes = max(res.seconds, 1e-6) / 60
    return PilotFigure(target=target, steps=res.step, seconds=res.seconds, rows=len(rows), validation_rows=len(enc),
                       before_exact=round(before[0], 4), before_token=round(before[1], 4), exact=round(after[0], 4),
                       token=round(after[1], 4), gain_per_minute=round((after[1] - before[1]) / minutes, 4),
                       loss=res.loss)


def select(figures: list[PilotFigure], fallback: str) -> tuple[str, str]:
    """(target, why): the best gain per minute, then the higher fidelity; never the configuration order."""
    ok = [f for f in figures if f.error is None]
    if not ok:
        return fallback, "no pilot finished: the bundle's target"
    key = lambda f: (round(f.gain_per_minute, 3), round(f.token, 3), round(f.exact, 3))
    ranked = sorted(ok, key=key, reverse=True)
    if len(ranked) > 1 and key(ranked[0]) == key(ranked[1]):
        tied = [f.target for f in ranked if key(f) == key(ranked[0])]
        pick = fallback if fallback in tied else ranked[0].target
        return pick, f"the pilot tied ({', '.join(tied)}): the bundle's target"
    top = ranked[0]
    return top.target, (f"best held-out fidelity gain per minute of training in the pilot "
                        f"({top.gain_per_minute:.3f}/min; token agreement {top.before_token:.3f} → {top.token:.3f})")


def candidates(ctx, options, weights_for: Callable[[str], Path]) -> tuple[list[tuple[str, Path]], dict[str, str]]:
    """The configured local targets that have weights to train, and why any other is left out."""
    from foster.agent import gateway

    out, skipped = [], {}
    for t in ctx.config.targets:
        if not gateway.is_local(t):
            skipped[t] = "remote target: trained by its provider, not piloted here"
            continue
        try:
            out.append((t, weights_for(t)))
        except Exception as e:  # a target without weights cannot be piloted; the others still can
            skipped[t] = f"{type(e).__name__}: {e}"
    return out, skipped


def choose(ctx, state: dict, options, progress: Callable | None = None) -> tuple[str, dict | None]:
    """(the target to train, the report's "pilot" section or None when there was nothing to choose)."""
    from foster.agent.lora import data, plan
    from foster.agent.lora import train as trainer
    from foster.agent.lora.job import job_dir
    from foster.prompts.bundle import Bundle

    prelim = plan.choose_target(ctx, state, options)
    if options.target:
        return options.target, None
    found, skipped = candidates(ctx, options, lambda t: plan.base_weights(t, options))
    if len(found) < 2:
        return prelim, None
    path = ctx.dir / "lora" / "pilot.json"
    saved = json.loads(path.read_text()) if path.exists() else None
    if saved and saved.get("key") == _key(found, options):  # a resumed job does not pilot twice
        return saved["chosen"], saved
    t0 = time.time()
    pjob = job_dir(ctx.dir, prelim)
    pjob.mkdir(parents=True, exist_ok=True)
    pbundle = Bundle.load(plan.build_bundle(ctx, state, prelim, pjob))
    rows, _ = data.build(ctx, state, pjob, pbundle, prelim, options,
                         progress=lambda ph, d, t, m: progress and progress(ph, d, t, m))
    task = [r for r in rows if r["source"] != "general"]
    figures = []
    for n, (target, weights) in enumerate(found):
        job = job_dir(ctx.dir, target)
        job.mkdir(parents=True, exist_ok=True)
        if job != pjob and (pjob / "synthetic_candidates.json").exists() and not (job / "synthetic_candidates.json").exists():
            shutil.copy(pjob / "synthetic_candidates.json", job / "synthetic_candidates.json")
        bundle = Bundle.load(plan.build_bundle(ctx, state, target, job))
        mine = [data.task_row(bundle, target, r["input"], r["output"], r["source"], r["primary"]) for r in task]
        train_rows, validation = split(mine)
        cfg = trainer.TrainConfig(steps=options.pilot_steps, seconds=float("inf"), batch_size=options.batch_size,
                                  lr=options.lr, rank=options.rank, alpha=options.alpha, seed=ctx.config.seed,
                                  threads=options.threads, early_stop=None, checkpoint_every=10**6)
        if progress:
            progress("pilot", n, len(found), f"pilot on {target}")
        try:
            figures.append(pilot_one(target, weights, train_rows, validation, job / "pilot", cfg))
        except Exception as e:  # one target failing its pilot leaves the others to choose from
            figures.append(PilotFigure(target=target, error=f"{type(e).__name__}: {e}"))
    chosen, why = select(figures, prelim)
    section = {"key": _key(found, options), "chosen": chosen, "why": why, "bundle_target": prelim,
               "mode": options.lora_targets, "steps": options.pilot_steps,
               "figures": [f.model_dump() for f in figures], "skipped": skipped,
               "seconds": round(time.time() - t0, 1),
               "method": "teacher-forced agreement on validation rows kept out of the pilot (exact: every answer "
                         "token is the argmax, i.e. greedy decoding reproduces the row; token: share of answer tokens); "
                         "gain per minute = token agreement gained / pilot training minutes"}
    from foster.store.runs import write_json_atomic

    write_json_atomic(path, section)
    return chosen, section


def _key(found, options) -> str:
    return json.dumps([[t, str(w)] for t, w in found] + [options.pilot_steps, options.batch_size, options.lr,
                                                         options.rank, options.labels])


def others(section: dict | None, chosen: str) -> list[str]:
    """With lora_targets="all", the targets trained after the chosen one (best pilot first)."""
    if not section or section.get("mode") != "all":
        return []
    ranked = sorted((f for f in section["figures"] if not f.get("error")), key=lambda f: -f["gain_per_minute"])
    return [f["target"] for f in ranked if f["target"] != chosen]


def markdown(section: dict | None) -> str:
    if not section:
        return ""
    out = ["", f"### Pilot ({section['steps']} steps per target, same data)", "",
           f"- trained: `{section['chosen']}` — {section['why']}" + (" (and every other target: --lora-targets all)"
                                                                     if section.get("mode") == "all" else ""),
           f"- method: {section['method']}", "",
           "| target | steps | seconds | exact before → after | token before → after | gain/min |", "|---|---|---|---|---|---|"]
    for f in section["figures"]:
        if f.get("error"):
            out.append(f"| {f['target']} | failed: {f['error']} | | | | |")
            continue
        out.append(f"| {f['target']} | {f['steps']} | {f['seconds']:.1f} | {f['before_exact']:.3f} → {f['exact']:.3f} "
                   f"(n={f['validation_rows']}) | {f['before_token']:.3f} → {f['token']:.3f} | {f['gain_per_minute']:.3f} |")
    for t, why in (section.get("skipped") or {}).items():
        out.append(f"- not piloted: {t}: {why}")
    return "\n".join(out) + "\n"
