"""Free-text teachers: fidelity that does not flatter, and calibration by meaning rather than by string.

Exact strings make every free-text calibration gap read 1.000 (two samples almost never match to the
character), and an embedding cosine of 0.88 can hide answers that match the teacher 10 % of the time.
So, for free text:

- **meaning classes**: a probe's teacher and target samples are grouped by embedding cosine with a
  threshold (leader clustering, teacher samples first, so classes are anchored on the teacher), or by a
  judge model when one is given; the calibration gap is the Jensen–Shannon divergence between the
  teacher's and the target's class distributions, averaged over probes.
- **structure**: the format the teacher's outputs share, mined from them (a leading tag, a field
  separator and field count, a length band, one line); an answer agrees in structure when it has that
  format and the teacher's tag.
- **three fidelities side by side**, each with n and a 95 % interval (Wilson for exact and structure,
  bootstrap over probes for similarity), their ceilings (the teacher against itself under each), a
  primary metric (`RunConfig.primary_metric`; auto: the strictest whose ceiling is ≥ 0.5) and a warning when similarity is high
  while exact or structure agreement is low.
- hedge and refusal rates of the teacher's samples against each variant's.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, Field

Metric = Literal["exact", "structure", "similarity"]
STRICTNESS: tuple[Metric, ...] = ("exact", "structure", "similarity")  # strictest first

# the similarity that reads as "close" while exact or structure agreement is low: the figure that flatters
FLATTER_SIMILARITY = 0.8
FLATTER_AGREEMENT = 0.5


# -- intervals (metrics.fidelity_interval: Wilson for exact and structure, bootstrap for similarity) ----

def figure(values: list[float], binary: bool, seed: int = 0) -> dict:
    """{value, low, high, n, method}: a mean with its 95 % interval."""
    from foster.agent import metrics

    return metrics.fidelity_interval(values, exact=binary, seed=seed)


def wilson(k: float, n: int) -> tuple[float, float]:
    from foster.agent import metrics

    low, high = metrics.wilson(k, n)
    return (round(low, 4), round(high, 4))


# -- structure -----------------------------------------------------------------------------------------

_TAG = re.compile(r"^\s*(\[[^\]\n]{1,24}\]|[A-Z][A-Z0-9_/-]{1,15}:)")
_SEPARATORS = (";", " | ", "\t", " - ", ",")


class Structure(BaseModel):
    """The format the teacher's outputs share (each part only when ≥ `share` of them have it)."""

    tag: bool = Field(False, description="a leading tag like [NET] or BILL:")
    tags: list[str] = Field(default_factory=list, description="the tags the teacher used")
    separator: str | None = Field(None, description="the field separator")
    fields: tuple[int, int] | None = Field(None, description="field count band (min, max)")
    length: tuple[int, int] = Field((0, 10**6), description="length band in characters")
    one_line: bool = False
    n: int = 0

    def describe(self) -> str:
        parts = []
        if self.tag:
            parts.append(f"leading tag ({', '.join(self.tags[:8])})")
        if self.separator:
            parts.append(f"{self.fields[0]}–{self.fields[1]} fields split by {self.separator!r}")
        parts.append(f"{self.length[0]}–{self.length[1]} characters")
        if self.one_line:
            parts.append("one line")
        return "; ".join(parts) + f" (mined from {self.n} teacher outputs)"

    def conforms(self, text: str) -> bool:
        t = (text or "").strip()
        if self.one_line and "\n" in t:
            return False
        if not self.length[0] <= len(t) <= self.length[1]:
            return False
        if self.tag and tag_of(t) is None:
            return False
        if self.separator and self.fields:
            k = len(t.split(self.separator.strip() or self.separator))
            if not self.fields[0] <= k <= self.fields[1]:
                return False
        return True

    def agrees(self, answer: str, reference: str) -> bool:
        """Has the teacher's format and, when the format has a tag, the teacher's tag for this input."""
        return self.conforms(answer) and (not self.tag or tag_of(answer) == tag_of(reference))


def tag_of(text: str) -> str | None:
    m = _TAG.match(text or "")
    return m.group(1).strip().upper() if m else None


def _band(values: list[int], widen: float) -> tuple[int, int]:
    """The central 90 % of the values, widened by `widen` of their span on each side."""
    v = sorted(values)
    lo, hi = v[int(0.05 * (len(v) - 1))], v[int(math.ceil(0.95 * (len(v) - 1)))]
    pad = widen * max(1, hi - lo)
    return (max(0, int(lo - pad)), int(math.ceil(hi + pad)))


def mine_structure(outputs: list[str], share: float = 0.8) -> Structure:
    """The format `share` of the teacher's outputs have in common."""
    outs = [o.strip() for o in outputs if o and o.strip()]
    if not outs:
        return Structure()
    n = len(outs)
    tags = [tag_of(o) for o in outs]
    has_tag = sum(t is not None for t in tags) >= share * n
    separator, fields = None, None
    for sep in _SEPARATORS:
        s = sep.strip() or sep
        if sum(s in o for o in outs) >= share * n:
            separator = sep
            fields = _band([len(o.split(s)) for o in outs], 0.0)
            break
    # a tag seen once among many outputs is a T = 1 slip ("[VISITT NORFOLK]"), as a one-off label is
    seen = Counter(t for t in tags if t)
    kept = sorted(t for t, c in seen.items() if c > 1 or n < 20)
    return Structure(tag=has_tag, tags=kept if has_tag else [], separator=separator,
                     fields=fields, length=_band([len(o) for o in outs], 0.25),
                     one_line=sum("\n" not in o for o in outs) >= max(share, 0.9) * n, n=n)


# -- fidelity, side by side ----------------------------------------------------------------------------

def normalize(text: str) -> str:
    return re.sub(r"\s+", " ", (text or "").strip())


def _pairs(samples: list[str]) -> list[tuple[str, str]]:
    return [(a, b) for i, a in enumerate(samples) for b in samples[i + 1:]]


def ceilings(teacher_samples: list[list[str]], structure: Structure, per_probe: dict | None = None) -> dict[str, float | None]:
    """The teacher against itself under each metric: the chance two of its samples for a probe agree
    (exact, structure), the mean cosine between them (similarity). `per_probe`, when given, receives each
    metric's per-probe values (what an interval on the ceiling resamples)."""
    from foster.agent import metrics

    exact, struct, pairs = [], [], []
    for samples in teacher_samples:
        pr = _pairs([s for s in samples if s is not None])
        if not pr:
            continue
        exact.append(metrics.mean(normalize(a) == normalize(b) for a, b in pr))
        struct.append(metrics.mean(structure.agrees(a, b) for a, b in pr))
        pairs += [(a, b, len(exact) - 1) for a, b in pr]
    if not exact:
        return {"exact": None, "structure": None, "similarity": None}
    sims = metrics.text_similarity([a for a, _, _ in pairs], [b for _, b, _ in pairs])
    per: dict[int, list[float]] = {}
    for (_, _, i), s in zip(pairs, sims):
        per.setdefault(i, []).append(s)
    if per_probe is not None:
        per_probe.update(exact=exact, structure=struct, similarity=[metrics.mean(v) for _, v in sorted(per.items())])
    return {"exact": round(metrics.mean(exact), 4), "structure": round(metrics.mean(struct), 4),
            "similarity": round(metrics.mean(metrics.mean(v) for v in per.values()), 4)}


def choose_primary(ceiling: dict[str, float | None], primary: str = "auto") -> tuple[Metric, str]:
    """The metric thresholds and verdicts use: as configured, or the strictest whose ceiling is ≥ 0.5
    (a stricter one below that measures the teacher's own spread more than the target)."""
    if primary != "auto":
        if primary not in STRICTNESS:
            raise ValueError(f"primary metric must be auto or one of {STRICTNESS}, got {primary!r}")
        auto, why = choose_primary(ceiling)
        return primary, f"configured; auto would have chosen {auto}, {why.removeprefix('auto: ')}"  # type: ignore[return-value]
    for m in STRICTNESS:
        c = ceiling.get(m)
        if c is not None and c >= 0.5:
            return m, f"auto: the strictest metric whose ceiling is ≥ 0.5 ({m} ceiling {c:.3f})"
    return "similarity", "auto: no metric has a ceiling ≥ 0.5, so similarity"


def flattering(panel: dict) -> str | None:
    """The warning when similarity reads high while exact or structure agreement is low."""
    sim = panel["similarity"]["value"]
    low = [(m, panel[m]["value"]) for m in ("exact", "structure") if panel[m]["value"] < FLATTER_AGREEMENT]
    if sim >= FLATTER_SIMILARITY and low:
        return (f"similarity {sim:.3f} flatters: " + ", ".join(f"{m} agreement is {v:.3f}" for m, v in low)
                + "; read the primary metric, not the similarity")
    return None


def fidelity_panel(answers: list[str], references: list[str], structure: Structure,
                   similarity: list[float] | None = None, ceiling: dict | None = None, primary: str = "auto",
                   seed: int = 0) -> dict:
    """Exact, structure and similarity agreement of `answers` with the teacher's `references`, each with
    its interval and ceiling; the primary metric; the flattering-similarity warning."""
    from foster.agent import metrics

    exact = [float(normalize(a) == normalize(r)) for a, r in zip(answers, references)]
    struct = [float(structure.agrees(a, r)) for a, r in zip(answers, references)]
    sims = similarity if similarity is not None else metrics.text_similarity(list(answers), list(references))
    panel = {"exact": figure(exact, True), "structure": figure(struct, True), "similarity": figure(list(sims), False, seed),
             "format_rate": round(metrics.mean(structure.conforms(a) for a in answers), 4),
             "structure_spec": structure.describe()}
    ceiling = ceiling or {}
    for m in STRICTNESS:
        panel[m]["ceiling"] = ceiling.get(m)
    name, why = choose_primary(ceiling, primary)
    panel.update(primary=name, primary_reason=why, primary_value=panel[name]["value"], warning=flattering(panel))
    panel["scores"] = {"exact": exact, "structure": struct, "similarity": [round(s, 4) for s in sims]}
    return panel


# -- meaning classes and calibration --------------------------------------------------------------------

SameMeaning = Callable[[str, str], bool]


def judge_same(complete: Callable, judge: str) -> SameMeaning:
    """A judge model deciding whether two answers mean the same (yes/no), through the run's complete."""
    from foster.prompts.templates import render

    def same(a: str, b: str) -> bool:
        res = complete(judge, messages=[{"role": "user", "content": render("judge", "same_meaning", a=a, b=b)}],
                       temperature=0, max_tokens=3)
        return res.texts[0].strip().lower().startswith("y")

    return same


def meaning_classes(texts: list[str], threshold: float = 0.9, vectors=None, same: SameMeaning | None = None) -> list[int]:
    """A class id per text: each joins the first class whose leader it matches (equal after whitespace
    normalisation, cosine ≥ threshold, or the judge says the same), else starts a new class."""
    leaders: list[int] = []
    out = []
    for i, t in enumerate(texts):
        cls = None
        for c, j in enumerate(leaders):
            if normalize(t) == normalize(texts[j]):
                cls = c
            elif same is not None:
                cls = c if same(texts[j], t) else None
            elif vectors is not None and float(vectors[i] @ vectors[j]) >= threshold:
                cls = c
            if cls is not None:
                break
        if cls is None:
            leaders.append(i)
            cls = len(leaders) - 1
        out.append(cls)
    return out


def semantic_calibration(teacher: list[list[str]], target: list[list[str]], threshold: float = 0.9,
                         same: SameMeaning | None = None, method_name: str | None = None) -> dict:
    """Mean JS divergence between the teacher's and the target's meaning-class distributions per probe,
    and the chance a teacher sample and a target sample mean the same (sampled agreement)."""
    from foster.agent import metrics

    vectors = None
    if same is None:
        from foster.prompts.embedding import embed

        flat = [t for ts, ss in zip(teacher, target) for t in list(ts) + list(ss)]
        vectors = embed(flat) if flat else None
    gaps, agree, classes = [], [], []
    at = 0
    for ts, ss in zip(teacher, target):
        texts = list(ts) + list(ss)
        vec = vectors[at: at + len(texts)] if vectors is not None else None
        at += len(texts)
        if not ts or not ss:
            continue
        ids = meaning_classes(texts, threshold, vec, same)
        t_dist = metrics.distribution([str(c) for c in ids[: len(ts)]])
        s_dist = metrics.distribution([str(c) for c in ids[len(ts):]])
        gaps.append(metrics.js_divergence(t_dist, s_dist))
        agree.append(metrics.sampled_agreement(t_dist, s_dist))
        classes.append(len(t_dist))
    method = method_name or ("judge meaning classes" if same is not None else
                             f"meaning classes by embedding cosine ≥ {threshold} (all-MiniLM-L6-v2)")
    return {"calibration_gap": round(metrics.mean(gaps), 4), "sampled_agreement": round(metrics.mean(agree), 4),
            "calibration_gap_interval": metrics.fidelity_interval(gaps, exact=False),
            "teacher_classes": round(metrics.mean(classes), 3), "n": len(gaps),
            "method": f"Jensen–Shannon divergence between {method}"}


# -- hedging and refusals --------------------------------------------------------------------------------

def behaviour_rates(texts: list[str]) -> dict:
    """Hedge and refusal rates of a set of answers (characterize's patterns), with their intervals."""
    from foster.agent.characterize import HEDGE, REFUSAL

    n = len(texts)
    h = sum(bool(HEDGE.search(t or "")) for t in texts)
    r = sum(bool(REFUSAL.search(t or "")) for t in texts)
    return {"hedge_rate": round(h / n, 4) if n else 0.0, "hedge_interval": wilson(h, n),
            "refusal_rate": round(r / n, 4) if n else 0.0, "refusal_interval": wilson(r, n), "n": n}


def rates_side_by_side(teacher_texts: list[str], variants: dict[str, list[str]]) -> dict:
    """Teacher vs each variant: a replacement that hedges differently fails silently instead of
    flagging cases for review."""
    t = behaviour_rates(teacher_texts)
    out = {"teacher": t}
    for name, texts in variants.items():
        v = behaviour_rates(texts)
        v["hedge_delta"] = round(v["hedge_rate"] - t["hedge_rate"], 4)
        v["refusal_delta"] = round(v["refusal_rate"] - t["refusal_rate"], 4)
        out[name] = v
    return out


# -- the report's free-text section ----------------------------------------------------------------------

def report_section(targets: dict[str, dict]) -> dict | None:
    """The input of `markdown` from a run report's per-target summaries (agent/evaluate.py); None when the
    teacher's answers are closed labels. Structure, ceilings and primary metric come from the teacher and the
    held-out probes, so they are the same for every target."""
    free = {t: s for t, s in targets.items() if isinstance(s, dict) and s.get("freetext")}
    if not free:
        return None
    first = next(iter(free.values()))
    section = {k: first["freetext"].get(k) for k in ("structure", "ceiling", "primary", "primary_reason",
                                                     "scores_verdict", "calibration_method")}
    section["fidelity_method"] = first.get("fidelity_method")
    section["variants"], section["teacher_rates"] = {}, {}
    for target, s in free.items():
        for v in s.get("variants") or []:
            name = v["variant"] if len(free) == 1 else f"{target} · {v['variant']}"
            section["variants"][name] = {**(v.get("freetext") or {}),
                                         **{k: v.get(k) for k in ("calibration_gap", "hedge_rate", "refusal_rate")}}
        copy = (s.get("nearest_copy") or {}).get("freetext")
        if copy:  # the no-LLM baseline on the same three metrics (the same for every target: one row)
            section["variants"].setdefault("nearest recorded answer, no LLM", copy)
        best = s.get("best") or {}
        if best.get("teacher_hedge_rate") is not None and not section["teacher_rates"]:
            section["teacher_rates"] = {"hedge_rate": best["teacher_hedge_rate"], "refusal_rate": best["teacher_refusal_rate"],
                                        "n": best.get("teacher_rates_n")}
    return section


def markdown(section: dict) -> str:
    """The report's free-text panel (`report_section`): exact / structure / similarity with their intervals
    per variant, the primary metric and why, the flattering-similarity warnings, calibration by meaning with
    its method, hedge and refusal rates of the teacher's samples against each variant's."""
    f = lambda d: "–" if not d else f"{d['value']:.3f} [{d['low']:.3f}, {d['high']:.3f}]"
    g = lambda x: "–" if x is None else f"{x:.3f}"
    primary = section.get("primary")
    scores = ("the threshold and verdict use it" if section.get("scores_verdict", True) else
              f"not used for the verdict: the fidelity method is {section.get('fidelity_method')}")
    head = " | ".join(f"{m}{' (primary)' if m == primary else ''}" for m in STRICTNESS)
    out = ["", "## Free-text fidelity", "",
           f"- structure: {section.get('structure')}",
           f"- ceilings (teacher vs itself): exact {g(section['ceiling'].get('exact'))}, structure "
           f"{g(section['ceiling'].get('structure'))}, similarity {g(section['ceiling'].get('similarity'))}",
           f"- primary metric: **{primary}** ({section.get('primary_reason')}); {scores}",
           f"- calibration: {section.get('calibration_method')}",
           "- hedge and refusal rates are over sampled answers; calibration, hedge and refusal are measured for the "
           "shipped bundle and the zero-shot baseline", "",
           f"| variant | {head} | cal. gap | hedge | refusal | n |", "|---|---|---|---|---|---|---|---|"]
    for name, v in section["variants"].items():
        out.append(f"| {name} | {f(v.get('exact'))} | {f(v.get('structure'))} | {f(v.get('similarity'))} | "
                   f"{g(v.get('calibration_gap'))} | {g(v.get('hedge_rate'))} | {g(v.get('refusal_rate'))} | "
                   f"{(v.get('exact') or {}).get('n', '–')} |")
    t = section.get("teacher_rates") or {}
    n = t.get("n")
    out.append(f"| teacher (samples) | | | | | {g(t.get('hedge_rate'))} | {g(t.get('refusal_rate'))} | "
               f"{'–' if n is None else f'{n} samples'} |")
    for name, v in section["variants"].items():
        if v.get("warning"):
            out.append(f"\n> **{name}**: {v['warning']}")
    return "\n".join(out) + "\n"


# -- evaluation hooks (agent.evaluate.evaluate_target calls these for free-text teachers) -----------------

def teacher_samples(spec: dict, probes: list[dict]) -> list[list[str]]:
    return [list((spec["probes"].get(p["id"]) or {}).get("samples") or []) for p in probes]


def evaluate_free(ctx, spec: dict, held: list[dict], train: list[dict], refs: list[str], results: list[dict],
                  method: str) -> tuple[dict, str]:
    """Every variant's exact / structure / similarity panel. When the fidelity method is automatic, each
    variant's fidelity becomes its primary metric, so best-variant choice, threshold and verdict read the
    figure that does not flatter. Returns (the summary's "freetext" section, the fidelity method)."""
    structure = mine_structure([s for ss in teacher_samples(spec, train or held) for s in ss])
    per_probe: dict = {}
    ceiling = ceilings(teacher_samples(spec, held), structure, per_probe)
    setting = ctx.config.primary_metric
    primary, why = choose_primary(ceiling, setting)
    auto = ctx.config.fidelity == "auto"
    for r in results:
        sims = r["_scores"] if method.startswith("embedding") else None
        panel = fidelity_panel(r["_greedy"], refs, structure, similarity=sims, ceiling=ceiling,
                               primary=setting, seed=ctx.config.seed)
        scores = panel.pop("scores")
        r["freetext"] = panel
        if auto:
            r["fidelity"], r["_scores"] = panel["primary_value"], scores[primary]
    section = {"structure": structure.describe(), "structure_spec": structure.model_dump(), "ceiling": ceiling,
               "primary": primary, "primary_reason": why, "primary_setting": setting, "scores_verdict": auto,
               "ceiling_scores": {k: [round(x, 4) for x in v] for k, v in per_probe.items()}}
    if auto:
        method = (f"{primary} agreement with the teacher's greedy answer ({why}); exact, structure and "
                  f"embedding similarity reported side by side")
    return section, method


def copy_panel(ctx, section: dict, copy: list[str], refs: list[str], sims: list[float] | None) -> tuple[dict, list[float]]:
    """The no-LLM copy's exact / structure / similarity panel, scored as the variants are: its headline
    figure is the primary metric, so a copy at 0.90 similarity is not set beside a bundle at 0.16 exact."""
    structure = Structure.model_validate(section["structure_spec"])
    panel = fidelity_panel(copy, refs, structure, similarity=sims, ceiling=section["ceiling"],
                           primary=ctx.config.primary_metric, seed=ctx.config.seed)
    scores = panel.pop("scores")
    return panel, scores[section["primary"]] if section.get("scores_verdict") else scores["similarity"]


def validation_metric(spec: dict, train: list[dict], setting: str = "auto"):
    """The score foster's tuner and DSPy's metric use for a free-text teacher: the primary metric the
    verdict will read (mined from the teacher's train samples alone, never the held-out ones), so a
    configuration is not chosen for a similarity that flatters. None when that metric is similarity
    (the optimizers' default). The callable carries `.metric` and `.binary`."""
    samples = teacher_samples(spec, train)
    structure = mine_structure([x for xs in samples for x in xs])
    primary, _ = choose_primary(ceilings(samples, structure), setting)
    if primary == "similarity":
        return None

    def score(answer: str, reference: str) -> float:
        if primary == "exact":
            return float(normalize(answer) == normalize(reference))
        return float(structure.agrees(answer, reference))

    score.metric, score.binary = primary, True
    return score


def calibrate_free(ctx, spec: dict, held: list[dict], samples: dict[str, list[str]]) -> dict:
    """A variant's sampled behaviour against the teacher's: meaning-class calibration gap, sampled
    agreement by meaning, hedge and refusal rates side by side."""
    import os

    judge = getattr(ctx.config, "judge", None)
    same = judge_same(ctx.complete, judge) if judge else None
    threshold = float(os.environ.get("FOSTER_MEANING_THRESHOLD", "0.9"))
    t = teacher_samples(spec, held)
    s = [samples.get(p["id"]) or [] for p in held]
    cal = semantic_calibration(t, s, threshold=threshold, same=same)
    rates = behaviour_rates([x for xs in s for x in xs])
    teacher_rates = behaviour_rates([x for xs in t for x in xs])
    return {"calibration_gap": cal["calibration_gap"], "sampled_agreement": cal["sampled_agreement"],
            "calibration_gap_interval": cal["calibration_gap_interval"], "calibration_method": cal["method"], "hedge_rate": rates["hedge_rate"],
            "refusal_rate": rates["refusal_rate"], "teacher_hedge_rate": teacher_rates["hedge_rate"],
            "teacher_refusal_rate": teacher_rates["refusal_rate"], "rates_n": rates["n"],
            "teacher_rates_n": teacher_rates["n"]}
