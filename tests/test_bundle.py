"""The bundle: JSON round trip, Markdown sidecar, rendering, refusal of keys/URLs, token counts."""

from __future__ import annotations

import json

import pytest

from foster.prompts import templates
from foster.prompts.bundle import Bundle, Example, ExampleSelection, OutputContract, Provenance, data_hash
from foster.prompts.answers import answer_key, normalize_answer


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("FOSTER_HOME", str(tmp_path / "home"))


EXAMPLES = [
    Example(input="I was charged twice this month", output="billing"),
    Example(input="the app crashes when I open settings", output="bug"),
    Example(input="can you add a dark mode?", output="feature"),
    Example(input="refund my last invoice please", output="billing"),
]


def _bundle(**overrides) -> Bundle:
    fields = dict(
        name="intent",
        teacher="openai/ft:gpt-4o-mini:acme:intent:abc123",
        targets=["local/smollm2-135m-instruct"],
        system_prompt="Classify the support message. Answer with one label.",
        examples=EXAMPLES,
        output_contract=OutputContract(format="label", answers=["billing", "bug", "feature"]),
        provenance=Provenance.collect(run_id="run-1", data_hashes={"probes": data_hash("x")}),
    )
    fields.update(overrides)
    return Bundle(**fields)


def test_json_round_trip_and_markdown(tmp_path):
    b = _bundle(report={"fidelity": 0.91234, "ceiling": 0.97, "baselines": {"zero_shot": 0.3}})
    path = b.save(tmp_path / "out" / "intent")
    assert path == tmp_path / "out" / "intent.json"
    md = (tmp_path / "out" / "intent.md").read_text()
    assert "openai/ft:gpt-4o-mini:acme:intent:abc123" in md
    assert "Classify the support message" in md and "I was charged twice" in md
    assert "fidelity | 0.9123" in md and "baselines.zero_shot" in md
    assert "`billing`, `bug`, `feature`" in md and 'Bundle.load("intent.json")' in md
    assert not list((tmp_path / "out").glob("*.tmp"))

    again = Bundle.load(path)
    assert again == b
    assert Bundle.load(tmp_path / "out" / "intent") == b
    assert again.id == b.id == b.content_hash() and len(b.id) == 12
    assert json.loads(path.read_text())["schema_version"] == 1
    assert Bundle.load(path).messages("hi")[-1] == {"role": "user", "content": "hi"}
    assert "chromadb" in b.provenance.library_versions and "pydantic" in b.provenance.library_versions


def test_id_is_stable_and_tracks_content():
    assert _bundle().id == _bundle(report={"fidelity": 1.0}).id
    assert _bundle().id != _bundle(system_prompt="other").id
    assert _bundle(id="custom").id == "custom"


def test_fixed_messages_and_completion_prompt():
    b = _bundle(examples=EXAMPLES[:2])
    assert b.messages("my card got charged twice") == [
        {"role": "system", "content": "Classify the support message. Answer with one label."},
        {"role": "user", "content": "I was charged twice this month"},
        {"role": "assistant", "content": "billing"},
        {"role": "user", "content": "the app crashes when I open settings"},
        {"role": "assistant", "content": "bug"},
        {"role": "user", "content": "my card got charged twice"},
    ]
    assert b.prompt("my card got charged twice") == (
        "Classify the support message. Answer with one label.\n\n"
        "Input: I was charged twice this month\nOutput: billing\n\n"
        "Input: the app crashes when I open settings\nOutput: bug\n\n"
        "Input: my card got charged twice\nOutput:"
    )
    assert b.stop == ["\nInput:", "\n"]
    zero = _bundle(system_prompt="", examples=[], output_contract=OutputContract())
    assert zero.messages("x") == [{"role": "user", "content": "x"}]
    assert zero.prompt("x") == "Input: x\nOutput:"
    assert zero.stop == ["\nInput:", "\n\n"]


def test_knn_selects_nearest_last_and_deterministically():
    b = _bundle(selection=ExampleSelection(kind="knn", k=2))
    chosen = b.select_examples("please give me my money back for the invoice")
    assert len(chosen) == 2
    assert chosen[-1].input == "refund my last invoice please"
    assert all(example.output == "billing" for example in chosen)
    assert b.select_examples("please give me my money back for the invoice") == chosen
    messages = b.messages("settings screen crashes the app")
    assert len(messages) == 1 + 2 * 2 + 1
    assert messages[-2] == {"role": "assistant", "content": "bug"}
    assert b.prompt("settings screen crashes the app").endswith(
        "Input: the app crashes when I open settings\nOutput: bug\n\n"
        "Input: settings screen crashes the app\nOutput:"
    )
    # a fresh instance loaded from JSON makes the same choice
    assert Bundle.model_validate_json(b.to_json()).select_examples("money back") == b.select_examples(
        "money back"
    )


@pytest.mark.parametrize(
    "overrides",
    [
        {"system_prompt": "Use key sk-proj-abcdefghijklmnopqrstuvwx when calling"},
        {"examples": [Example(input="x", output="sk-ant-api03-abcdefghijklmnop")]},
        {"system_prompt": "Authorization: Bearer abcdefghijklmnop123"},
        {"name": "api_key=abcd1234efgh"},
        {"teacher": "hf_abcdefghijklmnopqrstuvwxyz123456"},
        {"report": {"notes": "AIzaSyA1234567890abcdefghijklmnopqrstu"}},
    ],
)
def test_refuses_api_keys(overrides):
    with pytest.raises(ValueError, match="never carries API keys"):
        _bundle(**overrides)


@pytest.mark.parametrize(
    "overrides",
    [
        {"teacher": "https://ft.example.com/v1"},
        {"targets": ["openai/gpt-4o-mini", "http://localhost:8000/v1"]},
        {"report": {"judge": {"endpoint": "https://judge.example.com"}}},
        {"report": {"api_base": "local"}},
        {"provenance": Provenance(notes="served from http://10.0.0.1:8080")},
    ],
)
def test_refuses_endpoint_urls(overrides):
    with pytest.raises(ValueError, match="endpoint"):
        _bundle(**overrides)


def test_allows_local_paths_and_checks_later_assignment(tmp_path):
    b = _bundle(teacher="local//opt/models/old-intent.gguf@/opt/adapters/intent",
                system_prompt="See https://docs.example.com for the label guide.")  # fmt: skip
    b.report = {"api_key": "abcdefgh12345678"}
    with pytest.raises(ValueError):
        b.save(tmp_path / "leak")
    assert not (tmp_path / "leak.json").exists()


def test_refuses_unknown_fields_and_newer_schema():
    with pytest.raises(ValueError):
        Bundle(teacher="a/b", targets=["c/d"], api_base="x")
    with pytest.raises(ValueError, match="newer"):
        Bundle(schema_version=99, teacher="a/b", targets=["c/d"])


def test_token_counts_offline(monkeypatch):
    import tiktoken.load

    def no_network(*args, **kwargs):
        raise AssertionError("tiktoken tried to fetch an encoding")

    monkeypatch.setattr(tiktoken.load, "read_file", no_network)
    from foster.prompts.tokens import count, counts

    assert count("hello world", "cl100k_base") == 2
    assert count("hello world", "o200k_base") == 2
    assert counts("<|endoftext|>")["o200k_base"] > 1  # special tokens count as text

    fixed = _bundle().token_counts(local_counter=lambda text: len(text.split()), local_name="smollm2")
    assert set(fixed) == {"o200k_base", "cl100k_base", "smollm2"}
    assert fixed["o200k_base"] > 20
    knn = _bundle(selection=ExampleSelection(kind="knn", k=2)).token_counts()
    assert knn["o200k_base"] < fixed["o200k_base"]


def test_templates_are_strict(tmp_path):
    with pytest.raises(templates.MissingVariable, match="who"):
        templates.render_string("Hello {{ who }}")
    assert templates.render_string("Hello {{ who }}", who="you") == "Hello you"
    with pytest.raises(templates.MissingVariable, match="input"):
        templates.render("bundle", "completion", system_prompt="", examples=[])
    with pytest.raises(templates.TemplateNotFound):
        templates.load("no-such-template")
    with pytest.raises(templates.TemplateNotFound, match="several"):
        templates.load("bundle")
    assert set(templates.keys("bundle")) >= {"completion", "markdown"}
    with pytest.raises(ValueError):
        _bundle(completion_template="{% for x in %}")


def test_normalize_answer():
    labels = OutputContract(format="label", answers=["billing", "bug", "Feature request"])
    assert normalize_answer("  Billing.\nbecause you were charged", labels) == "billing"
    assert normalize_answer('"feature REQUEST"', labels) == "Feature request"
    assert normalize_answer("bug - the app crashes", labels) == "bug"
    assert normalize_answer("bugged", labels) == "bugged"
    assert normalize_answer("", labels) == ""
    assert answer_key("Other!", labels) == "other"
    text = OutputContract(format="text")
    assert normalize_answer("  Dear team,  \r\n\r\nThanks.  ", text) == "Dear team,\n\nThanks."
    js = OutputContract(format="json")
    assert normalize_answer('Sure: {"b": 1, "a": [2]} done', js) == '{"a":[2],"b":1}'
    assert _bundle().normalize("BUG") == "bug"


def test_the_recall_rule_needs_knn_and_leaves_older_bundle_ids_alone():
    from foster.prompts.bundle import Bundle, Example, ExampleSelection

    fields = dict(teacher="local/teacher", targets=["local/target"], system_prompt="Route it.",
                  examples=[Example(input="refund please", output="billing")])
    with pytest.raises(ValueError, match="recall_above needs knn"):
        Bundle(**fields, selection=ExampleSelection(kind="fixed", recall_above=0.9))
    for bad in (0.0, 1.5, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            ExampleSelection(kind="knn", recall_above=bad)
    plain = Bundle(**fields, selection=ExampleSelection(kind="knn", k=1))
    # the id this content had before the rule existed: a saved bundle keeps its id and its cache keys
    assert plain.id == "a540dfa33281"
    ruled = Bundle(**fields, selection=ExampleSelection(kind="knn", k=1, recall_above=0.9))
    assert ruled.id != plain.id and "recall_above" in ruled.to_json()
