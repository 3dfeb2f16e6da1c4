"""A clean bundle: phantom labels, personal data in mined rules and junk in the pool are lint findings,
and mine keeps each of them out of the bundles it writes."""
from __future__ import annotations

import pytest
from foster.prompts.bundle import Bundle, Example, ExampleSelection, OutputContract
from foster.prompts.lint import errors

LABELS = ["billing", "login", "shipping"]


def _bundle(**kw) -> Bundle:
    fields = dict(teacher="local/t", targets=["local/x"], system_prompt="Route the message.",
                  examples=[Example(input=f"{a} question", output=a) for a in LABELS],
                  output_contract=OutputContract(format="label", answers=LABELS))
    fields.update(kw)
    return Bundle(**fields)


def codes(findings) -> set[str]:
    return {f.code for f in findings}


def test_a_clean_bundle_has_no_errors():
    assert errors(_bundle().lint(answers=LABELS)) == []


def test_phantom_labels_are_errors():
    contract = OutputContract(format="label", answers=LABELS + ["Billing", "lost_or_stolen_or_stolen_card", "billing_label"])
    found = _bundle(output_contract=contract).lint(answers=LABELS)
    phantoms = [f for f in found if f.code == "phantom-label"]
    assert {f.message.split("'")[1] for f in phantoms} == {"Billing", "lost_or_stolen_or_stolen_card", "billing_label"}
    assert all(f.severity == "error" for f in phantoms)
    # without the teacher's answers a stutter and a case duplicate are still caught
    alone = _bundle(output_contract=contract).lint()
    assert {"Billing", "lost_or_stolen_or_stolen_card"} <= {f.message.split("'")[1] for f in alone if f.code == "phantom-label"}


@pytest.mark.parametrize("line", ['- billing: messages about "thanks maria"', '- billing: messages about "#BR-34332"',
                                  "- billing: write to dana@example.com", "- billing: refunds of $49.99",
                                  '- login: messages about "locked", "sam"'])
def test_personal_data_in_rules_is_an_error(line):
    found = _bundle(system_prompt=f"Route the message.\nHow the labels are used:\n{line}").lint(names=["sam"])
    assert "pii" in codes(errors(found))


def test_rules_run_together_are_an_error():
    prompt = 'Route.\nHow the labels are used:- billing: messages about "refund"- login: messages about "password"'
    assert "rules-run-together" in codes(errors(_bundle(system_prompt=prompt).lint()))
    one_per_line = 'Route.\nHow the labels are used:\n- billing: messages about "refund"\n- login: messages about "password"'
    assert errors(_bundle(system_prompt=one_per_line).lint(answers=LABELS)) == []


def test_optimizer_babble_is_an_error():
    babble = ("(Answer) The new instruction I gave to the assistant. Reply with the new instruction only\n"
              "Assistant: route it\n(Answer) The new instruction I gave to the assistant. Reply with the new instruction only")
    assert {"role-marker", "repeated-lines", "addressed-to-optimizer"} <= codes(errors(_bundle(system_prompt=babble).lint()))


def test_junk_and_out_of_distribution_pool_entries_are_errors():
    pool = [Example(input="Here's a mysterious poem of the sea, waves and all", output="billing"),
            Example(input="what is the capital of peru", output="shipping")] + _bundle().examples
    b = _bundle(examples=pool, selection=ExampleSelection(kind="knn", k=2))
    found = errors(b.lint(out_of_distribution=["What is the capital of Peru"]))
    assert codes(found) == {"junk-example", "out-of-distribution-example"}


# --- mine keeps them out ---------------------------------------------------------------------------


REAL = [("I was charged twice for my order, thanks, maria", "billing"), ("refund my money please. thanks, maria", "billing"),
        ("why did you bill me again, thanks, maria", "billing"), ("the charge on my card is wrong", "billing"),
        ("I need my money back for the shoes", "billing"), ("double charge on my statement", "billing"),
        ("I can't log in to my account", "login"), ("my password reset email never came", "login"),
        ("the login page rejects my password", "login"), ("locked out after three tries", "login"),
        ("two factor code never arrives so I cannot sign in", "login"), ("account locked, please help", "login"),
        ("where is my parcel, it is late", "shipping"), ("tracking has not moved for a week", "shipping"),
        ("my delivery is late again", "shipping"), ("the courier lost my package", "shipping"),
        ("parcel still not here after ten days", "shipping"), ("when will my order arrive", "shipping")]
JUNK = ["Here's a mysterious poem of the sea, where the waves sing softly",
        "Roses are red, a haiku about autumn leaves falling",
        "The mitochondria is the powerhouse of the cell, explained simply"]


def _state(tmp_path):
    from foster.agent.characterize import build_spec

    probes = [{"id": f"r{i}", "text": t, "kind": "historical", "split": "train", "round": 1, "gold": None}
              for i, (t, _) in enumerate(REAL)]
    probes += [{"id": f"j{i}", "text": t, "kind": "variation", "split": "train", "round": 1, "gold": None}
               for i, t in enumerate(JUNK)]
    probes.append({"id": "o0", "text": "what is the tallest mountain in the world", "kind": "out_of_domain",
                   "split": "train", "round": 1, "gold": None})
    answer = dict(REAL)
    teacher = {}
    for p in probes:
        a = answer.get(p["text"], "shipping")
        teacher[p["id"]] = [{"t": 0.0, "i": 0, "output": a}, {"t": 1.0, "i": 0, "output": a}]
    # one-off T=1 noise on two probes: a misspelling and a stutter, each said once
    teacher["r0"][1] = {"t": 1.0, "i": 0, "output": "billing_label"}
    teacher["r6"][1] = {"t": 1.0, "i": 0, "output": "login_or_login"}
    spec = build_spec(probes, teacher, seed=0)
    return {"run_id": "lint-run", "round": 1, "probes": probes, "teacher": teacher, "spec": spec}


def test_mine_writes_clean_bundles(tmp_path):
    from foster.agent.config import RunConfig
    from foster.agent.context import RunContext
    from foster.agent.mine import build_candidates
    from foster.store.runs import RunRegistry

    state = _state(tmp_path)
    # whatever characterize's inventory keeps, the bundle's labels are the teacher's modal or greedy answers only
    state["spec"]["inventory"].update({"billing_label": 1, "login_or_login": 1})
    config = RunConfig(teacher="local/t", targets=["local/x"], task="Route the message.", knn_k=2)
    registry = RunRegistry()
    registry.create("lint-run", config.model_dump(), status="running", teacher="local/t", targets=["local/x"])
    ctx = RunContext.open("lint-run")
    cands = {c["name"]: c for c in build_candidates(ctx, state)}

    for name in ("mined-fixed", "mined-knn"):
        b = Bundle.load(cands[name]["path"])
        assert sorted(b.output_contract.answers) == LABELS  # no phantom label
        assert "maria" not in b.system_prompt.lower()  # the signed name never becomes a rule
        lines = b.system_prompt.splitlines()
        rules = [line for line in lines if line.startswith("- ")]
        assert rules and all(line.count(": messages about") == 1 for line in rules)  # one rule per line
        inputs = {e.input for e in b.examples}
        assert not inputs & set(JUNK) and "what is the tallest mountain in the world" not in inputs
        assert errors(b.lint(**cands["mined-knn"]["known"])) == [], b.lint(**cands["mined-knn"]["known"])
        assert cands[name]["lint"] == [f.as_dict() for f in b.lint(**cands["mined-knn"]["known"])]
    known = cands["mined-knn"]["known"]
    assert set(JUNK) <= set(known["out_of_distribution"]) and "maria" in known["names"]
    # the same pool with the junk put back is flagged, so it cannot ship (ship_choice skips lint errors)
    knn = Bundle.load(cands["mined-knn"]["path"])
    dirty = knn.model_copy(update={"examples": knn.examples + [Example(input=JUNK[2], output="billing")]})
    assert "out-of-distribution-example" in codes(errors(dirty.lint(**known)))


def test_a_bundle_with_lint_errors_never_ships():
    from foster.agent.evaluate import ship_choice

    def row(name, fidelity, tokens, lint=(), baseline=False):
        return {"variant": name, "fidelity": fidelity, "tokens": {"o200k_base": tokens}, "baseline": baseline,
                "interval": {"value": fidelity, "low": fidelity - 0.1, "high": fidelity + 0.1, "n": 40},
                "lint": [{"code": c, "severity": "error", "message": c} for c in lint]}

    results = [row("zero-shot", 0.2, 10, baseline=True), row("gepa", 0.95, 40, lint=["role-marker"]),
               row("mined-knn", 0.8, 300), row("phantom", 0.9, 50, lint=["phantom-label"])]
    chosen, why = ship_choice(results)
    assert chosen["variant"] == "mined-knn" and set(why["blocked_by_lint"]) == {"gepa", "phantom"}
