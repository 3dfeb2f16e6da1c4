"""What must not ship in a bundle: phantom labels, personal data in mined rules, junk in the example pool,
and instructions an optimizer's reflection model wrote to itself.

    from foster.prompts.bundle import Bundle
    for f in Bundle.load("intent.json").lint():
        print(f.severity, f.code, f.message)

A finding with severity "error" keeps a bundle from being shipped; "warning" is listed in the report.
The bundle alone is enough for every check; a caller that knows more (the teacher's modal and
greedy answers, probes judged out of distribution, proper names seen in the inputs) passes it in
and the checks get sharper.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from foster.prompts.bundle import Bundle

__all__ = ["Finding", "errors", "lint"]


@dataclass(frozen=True)
class Finding:
    code: str
    severity: Literal["error", "warning"]
    message: str
    where: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")
# order ids (#BR-34332, br-27130, A12345), long digit runs, money and phone numbers
ORDER_ID = re.compile(r"#\s?[\w-]*\d|\b[a-z]{1,4}-?\d{3,}\b|\b\d{3,}\b|[$€£]\s?\d|\+?\d[\d ()-]{6,}\d", re.IGNORECASE)
SIGN_OFF = re.compile(r"\b(thanks|thank you|cheers|regards|best|love|sincerely|yours)[\s,]+([a-z][a-z'-]+)\b", re.IGNORECASE)
ROLE_MARKER = re.compile(r"(?im)^\s*\(?(system|user|assistant|human)\)?\s*:|"
                         r"\((answer|assistant|user)\)|<\|[^|>]*\|>|\[\[ ## |<start_of_turn>|<end_of_turn>")
TO_OPTIMIZER = re.compile(r"\b(new|improved|revised|updated|better) instructions?\b|\binstructions? (i|you) (gave|give|wrote)\b|"
                          r"\breply with the (new )?instruction\b|\bhere (is|are) the (new|revised|improved)\b|"
                          r"\bthe assistant('s)? (task|instruction|answers?)\b|\bthe optimi[sz]er\b|\bprevious instruction\b",
                          re.IGNORECASE)
# what a generator says about its output rather than a message a user would send
GENERATOR_CHATTER = re.compile(r"^\s*(sure|certainly|of course|absolutely)\b[,!.]|\bas an ai\b|"
                               r"^\s*here('s| is| are) (a|an|some|one|the) [^.!?]{0,40}\b(poem|story|message|example|"
                               r"variation|query|question|text|input|version)s?\b|\b(poem|haiku|limerick|sonnet)\b", re.IGNORECASE)
# a bullet after text on the same line: "...used:- a: messages about ..." (rules run together)
RUN_TOGETHER = re.compile(r"\S\s*-\s+[^\s:]{1,60}:\s+\S")
_SEP = re.compile(r"[\s_\-./]+")


def _stutter(label: str) -> bool:
    """A label repeating a run of its own parts ("lost_or_stolen_or_stolen_card", "refund refund")."""
    parts = [p for p in _SEP.split(label.casefold()) if p]
    for size in range(1, len(parts) // 2 + 1):
        for i in range(len(parts) - 2 * size + 1):
            if parts[i:i + size] == parts[i + size:i + 2 * size]:
                return True
    return False


def _label_findings(bundle: Bundle, answers: Iterable[str] | None) -> list[Finding]:
    out: list[Finding] = []
    labels = list(bundle.output_contract.answers)
    if bundle.output_contract.format != "label" or not labels:
        return out
    known = {a.casefold() for a in answers} if answers is not None else None
    seen: dict[str, str] = {}
    for label in labels:
        key = label.casefold().strip()
        if key in seen:
            out.append(Finding("phantom-label", "error", f"{label!r} duplicates {seen[key]!r} up to case", "output_contract"))
            continue
        seen[key] = label
        if known is not None and key not in known:
            out.append(Finding("phantom-label", "error", f"{label!r} is in the inventory but the teacher never gives it "
                               "as a modal or greedy answer (a one-off sample is noise)", "output_contract"))
        elif _stutter(label):
            out.append(Finding("phantom-label", "error", f"{label!r} repeats part of itself: a sampling stutter", "output_contract"))
    shown = {e.output.casefold().strip() for e in bundle.examples}
    if bundle.examples:
        for key, label in seen.items():
            if key not in shown:
                out.append(Finding("unused-label", "warning", f"no example shows {label!r}", "output_contract"))
        for e in bundle.examples:
            if e.output.casefold().strip() not in seen:
                out.append(Finding("unknown-example-answer", "error",
                                   f"example answer {e.output[:60]!r} is not in the inventory", f"examples: {e.input[:60]!r}"))
    return out


def _pii(text: str, names: set[str]) -> list[str]:
    hits = [m.group() for m in EMAIL.finditer(text)] + [m.group().strip() for m in ORDER_ID.finditer(text)]
    hits += [m.group() for m in SIGN_OFF.finditer(text)]
    if names:
        hits += [w for w in re.findall(r"[A-Za-z][A-Za-z'-]+", text) if w.casefold() in names]
    return list(dict.fromkeys(hits))


def _prompt_findings(text: str, names: set[str]) -> list[Finding]:
    out: list[Finding] = []
    if not text:
        return out
    for n, line in enumerate(text.splitlines(), 1):
        hits = _pii(line, names)
        if hits:
            out.append(Finding("pii", "error", f"personal data or ids in the system prompt: {', '.join(hits[:5])}",
                               f"system_prompt line {n}"))
        if len(RUN_TOGETHER.findall(line)) >= 1 and line.count(":") >= 2:
            out.append(Finding("rules-run-together", "error", "several rules on one line; render one per line",
                               f"system_prompt line {n}"))
    if ROLE_MARKER.search(text):
        out.append(Finding("role-marker", "error", f"role marker in the system prompt: {ROLE_MARKER.search(text).group().strip()!r}",
                           "system_prompt"))
    counts = Counter(line.strip().casefold() for line in text.splitlines() if len(line.strip()) >= 8)
    repeated = [line for line, k in counts.items() if k > 1]
    if repeated:
        out.append(Finding("repeated-lines", "error", f"{len(repeated)} line(s) repeated, e.g. {repeated[0][:60]!r}",
                           "system_prompt"))
    m = TO_OPTIMIZER.search(text)
    if m:
        out.append(Finding("addressed-to-optimizer", "error",
                           f"text addressed to the optimizer, not the target: {m.group()!r}", "system_prompt"))
    return out


def _example_findings(bundle: Bundle, ood: set[str]) -> list[Finding]:
    out: list[Finding] = []
    seen: Counter = Counter()
    for e in bundle.examples:
        key = " ".join(e.input.casefold().split())
        seen[key] += 1
        where = f"examples: {e.input[:60]!r}"
        if GENERATOR_CHATTER.search(e.input):
            out.append(Finding("junk-example", "error", "generator chatter, not an input a user sends", where))
        elif key in ood:
            out.append(Finding("out-of-distribution-example", "error",
                               "a synthetic probe judged out of distribution (it belongs in the spec, not the pool)", where))
    if bundle.selection.recall_above is not None:
        out.append(Finding("recall-rule", "warning",
                           f"inputs within cosine {bundle.selection.recall_above} of a pool input get its recorded answer "
                           "without the target: foster's evaluation and server do this, the prompt exports (openai, "
                           "promptfoo, langchain, dspy) render the prompt only", "selection.recall_above"))
    dups = [k for k, n in seen.items() if n > 1]
    if dups:
        out.append(Finding("duplicate-example", "warning", f"{len(dups)} input(s) appear more than once, e.g. {dups[0][:60]!r}",
                           "examples"))
    return out


def lint(bundle: Bundle, *, answers: Iterable[str] | None = None, out_of_distribution: Iterable[str] = (),
         names: Iterable[str] = ()) -> list[Finding]:
    """Every problem found in `bundle`, errors first.

    answers: the teacher's modal and greedy answers (labels outside it are phantoms);
    out_of_distribution: probe texts a discriminator judged out of distribution;
    names: proper names seen in the inputs (never to appear in a mined rule).
    """
    ood = {" ".join(t.casefold().split()) for t in out_of_distribution}
    name_set = {n.casefold() for n in names}
    found = _label_findings(bundle, answers) + _prompt_findings(bundle.system_prompt, name_set) + \
        _example_findings(bundle, ood)
    return sorted(found, key=lambda f: f.severity != "error")


def errors(findings: Iterable[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity == "error"]
