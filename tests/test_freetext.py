"""Free-text teachers: structure mined from the teacher, fidelity that does not flatter, and calibration
by meaning classes (through the real evaluation path, with scripted models on the `local/` provider)."""
from __future__ import annotations

import json
import random
import re

import pytest

# A house-style teacher: one tagged line per message; sampled, it sometimes files the ticket elsewhere
# (a different meaning) and sometimes hedges.
AREAS = {"internet": ("NET", "restore outage"), "bill": ("BILL", "refund charge"), "router": ("HW", "replace router"),
         "engineer": ("VISIT", "rebook visit"), "moving": ("MOVE", "transfer service"), "login": ("ACCT", "reset login")}
MESSAGES = [f"my {k} problem number {i}, account {1000 + 7 * i}" for i in range(6) for k in AREAS]


def _msg(req) -> str:
    return [m["content"] for m in req.messages_or_prompt if m["role"] == "user"][-1]


def house(text: str, wrong: bool = False) -> str:
    key = next(k for k in AREAS if k in text)
    if wrong:  # the other reading: a billing ticket
        key = "bill" if key != "bill" else "internet"
    acct = re.search(r"account (\d+)", text).group(1)
    tag, summary = AREAS[key]
    return f"[{tag}] {summary} for the customer; ref #{acct}"


def teacher(req) -> str:
    text = _msg(req)
    rng = random.Random(f"{text}|{req.temperature}|{req.seed}")
    if req.temperature > 0 and rng.random() < 0.4:
        return house(text, wrong=True)
    return house(text)


def mirror(req) -> str:
    """Samples like the teacher: same meanings, same spread."""
    text = _msg(req)
    rng = random.Random(f"{text}|{req.temperature}|{req.seed}")
    if req.temperature > 0 and rng.random() < 0.4:
        return house(text, wrong=True)
    return house(text)


def chatty(req) -> str:
    """Right about the ticket, in its own words, always the same, and hedging: no tag, no fields."""
    text = _msg(req)
    key = next(k for k in AREAS if k in text)
    acct = re.search(r"account (\d+)", text).group(1)
    return f"I think the customer needs help with their {key} issue, maybe look at account {acct}."


def test_structure_is_mined_from_the_teacher_and_agreement_needs_the_tag():
    from foster.agent.freetext import mine_structure

    outs = [house(m) for m in MESSAGES]
    s = mine_structure(outs)
    assert s.tag and s.tags == sorted({f"[{t}]" for t, _ in AREAS.values()})
    assert s.separator == ";" and s.fields == (2, 2) and s.one_line
    assert s.agrees(house(MESSAGES[0]), house(MESSAGES[0]))
    assert s.conforms(house(MESSAGES[0], wrong=True)) and not s.agrees(house(MESSAGES[0], wrong=True), house(MESSAGES[0]))
    assert not s.conforms(chatty(type("R", (), {"messages_or_prompt": [{"role": "user", "content": MESSAGES[0]}]})()))
    assert not s.conforms("[NET] " + "very long " * 30 + "; ref #1")  # outside the length band
    assert "leading tag" in s.describe() and "36 teacher outputs" in s.describe()
    slipped = mine_structure(outs + [outs[0].replace("[", "[VISITT NORFOLK ", 1)])  # a one-off T = 1 slip
    assert slipped.tags == s.tags


def test_similarity_that_flatters_is_flagged_and_the_strictest_sound_metric_is_primary():
    from foster.agent.freetext import choose_primary, fidelity_panel, mine_structure

    refs = [house(m) for m in MESSAGES]
    s = mine_structure(refs)
    # near-copies: the right tag and summary, a wrong reference number; cosine stays high
    near = [re.sub(r"#(\d+)", lambda m: f"#{int(m.group(1)) + 1}", r) for r in refs]
    panel = fidelity_panel(near, refs, s, ceiling={"exact": 0.9, "structure": 0.95, "similarity": 0.98})
    assert panel["exact"]["value"] == 0.0 and panel["structure"]["value"] == 1.0
    assert panel["similarity"]["value"] > 0.8
    assert panel["exact"]["n"] == len(refs) and panel["exact"]["high"] > 0  # Wilson: never a zero-width interval
    assert panel["similarity"]["low"] <= panel["similarity"]["value"] <= panel["similarity"]["high"]
    assert panel["primary"] == "exact" and panel["primary_value"] == 0.0
    assert panel["warning"] and "flatters" in panel["warning"] and "exact agreement is 0.000" in panel["warning"]
    # exact copies: no warning
    same = fidelity_panel(refs, refs, s, ceiling={"exact": 0.9})
    assert same["warning"] is None and same["exact"]["value"] == 1.0
    # a teacher too spread for exact match: the next strictest metric whose ceiling is >= 0.5
    assert choose_primary({"exact": 0.3, "structure": 0.7, "similarity": 0.9})[0] == "structure"
    assert choose_primary({"exact": 0.3, "structure": 0.4, "similarity": 0.9})[0] == "similarity"
    name, why = choose_primary({"exact": 0.9}, "similarity")
    assert name == "similarity" and why.startswith("configured; auto would have chosen exact") and "0.900" in why
    assert choose_primary({"exact": 0.9})[1].startswith("auto: ")
    with pytest.raises(ValueError):
        choose_primary({}, "bleu")


def test_meaning_classes_group_paraphrases_and_split_other_meanings():
    from foster.agent.freetext import meaning_classes, semantic_calibration
    from foster.prompts.embedding import embed

    texts = ["[NET] restore outage; ref #1", "[NET]  restore outage; ref #1", "The weather is sunny in Leeds today.",
             "[NET] restore outage; ref #1"]
    ids = meaning_classes(texts, 0.9, embed(texts))
    assert ids[0] == ids[1] == ids[3] and ids[2] != ids[0]
    # a judge decides instead of the embedding when given
    assert meaning_classes(["a", "b", "c"], same=lambda x, y: True) == [0, 0, 0]
    t = [["A x", "A x", "B y", "B y"]]
    assert semantic_calibration(t, [["A x", "B y", "A x", "B y"]], same=lambda a, b: a == b)["calibration_gap"] == 0.0
    assert semantic_calibration(t, [["C z"] * 4], same=lambda a, b: a == b)["calibration_gap"] == 1.0


def _bundle(tmp_path, name: str, target: str) -> str:
    from foster.prompts.bundle import Bundle, OutputContract

    b = Bundle(name=name, teacher="t", targets=[target], system_prompt="Summarise the ticket.",
               output_contract=OutputContract(format="text"))
    return str(b.save(tmp_path / name))


def test_free_text_calibration_differs_between_arms_through_evaluation(tmp_path, fake_model):
    """Two targets whose greedy answers tie (both exact on every probe) but whose sampled behaviour
    differs: the one that spreads like the teacher has a small gap, the one that never does a large one;
    the strings alone would read 1.000 for both."""
    from foster.agent import gateway
    from foster.agent.characterize import build_spec
    from foster.agent.config import RunConfig
    from foster.agent.context import RunContext
    from foster.agent.evaluate import AnswerCache, evaluate_target
    from foster.store.runs import RunRegistry

    t_model, _ = fake_model(teacher, "ft-teacher")
    m_model, _ = fake_model(mirror, "ft-mirror")

    def steady(req):  # the teacher's greedy answer, every time
        return house(_msg(req))

    s_model, _ = fake_model(steady, "ft-steady")
    c_model, _ = fake_model(chatty, "ft-chatty")
    config = RunConfig(teacher=t_model, targets=[m_model, s_model, c_model], samples=2)
    reg = RunRegistry()
    reg.create("free", config.model_dump(), status="running")
    ctx = RunContext.open("free")
    probes = [{"id": f"p{i}", "text": m, "split": "heldout" if i % 2 else "train", "kind": "historical", "round": 1,
               "gold": None} for i, m in enumerate(MESSAGES[:12])]  # small: every sample is a model call
    obs = {p["id"]: [{"t": t, "i": i, "output": gateway.complete(t_model, messages=[{"role": "user", "content": p["text"]}],
                                                                  temperature=t, seed=i, max_tokens=40).texts[0]}
                     for t, i in config.sample_plan()] for p in probes}
    spec = build_spec(probes, obs)
    assert spec["answer_kind"] == "free"
    cache = AnswerCache(ctx)
    out = {}
    for model in (m_model, s_model, c_model):
        summary, _, _ = evaluate_target(ctx, cache, model, [{"name": "zero-shot", "path": _bundle(tmp_path, "zs", model)}],
                                        probes, spec)
        out[model] = summary
    m, s, c = (out[x] for x in (m_model, s_model, c_model))
    # greedy: the mirror and the steady target tie (exact on every held-out probe); the chatty one fails exact
    assert m["best"]["fidelity"] == s["best"]["fidelity"] == 1.0
    assert m["freetext"]["primary"] == "exact" and "exact agreement" in m["fidelity_method"]
    assert c["best"]["freetext"]["exact"]["value"] == 0.0 and c["best"]["fidelity"] == 0.0
    assert c["best"]["freetext"]["structure"]["value"] == 0.0
    # sampled: the gaps differ, and none is the 1.000 exact strings would give
    gaps = [m["calibration_gap"], s["calibration_gap"], c["calibration_gap"]]
    assert gaps[0] < gaps[1] < gaps[2], gaps
    assert gaps[0] < 0.2 and len(set(gaps)) == 3
    assert "Jensen–Shannon" in m["freetext"]["calibration_method"]
    # hedging side by side: the teacher never hedges, the chatty target always does
    assert c["best"]["teacher_hedge_rate"] == 0.0 and c["best"]["hedge_rate"] == 1.0
    assert m["best"]["hedge_rate"] == 0.0


# -- a whole free-text run: the report's panel, the primary metric as a run option -------------------------

def steady_teacher(req) -> str:
    """The house style, the same answer at every temperature: exact agreement is a sound primary metric."""
    text = _msg(req)
    if not any(k in text for k in AREAS) or not re.search(r"account (\d+)", text):
        return "[NET] restore outage for the customer; ref #0"
    return house(text)


def near_target(req) -> str:
    """The teacher's format and tag on every input, the wrong reference number: structure agrees, exact
    never does, and the cosine stays high (the similarity that flatters)."""
    return re.sub(r"#(\d+)", lambda m: f"#{int(m.group(1)) + 1}", steady_teacher(req))


def _free_run(tmp_path, fake_model, capsys, run_id: str, *extra: str) -> tuple[int, dict, str, str]:
    import json

    from foster.store.runs import RunRegistry
    from foster.ui.cli import main

    teacher_model, _ = fake_model(steady_teacher, "ft-steady-teacher")
    target_model, _ = fake_model(near_target, "ft-near-target")
    inputs = tmp_path / f"{run_id}.jsonl"
    inputs.write_text("".join(json.dumps({"input": m}) + "\n" for m in MESSAGES))
    code = main(["distill", "--teacher", teacher_model, "--target", target_model, "--inputs", str(inputs),
                 "--task", "Summarise the ticket in the house style.", "--threshold", "0.5", "--max-rounds", "1",
                 "--synth-per-kind", "0", "--budget-calls", "6", "--no-lora", "--run-id", run_id, "--quiet", *extra])
    out = capsys.readouterr().out
    reg = RunRegistry()
    report = reg.read_json(run_id, "report.json")
    return code, report, (reg.run_dir(run_id) / "report.md").read_text(), out


def test_free_text_run_reports_its_panel_and_the_configured_primary_metric_decides(tmp_path, fake_model, capsys):
    code, report, md, out = _free_run(tmp_path, fake_model, capsys, "free-auto")
    assert code == 0 and report["answer_kind"] == "free"
    t = next(iter(report["targets"].values()))
    ft, best = t["freetext"], t["best"]
    # auto: the teacher agrees with itself exactly, so exact match is primary, and it reads 0
    assert ft["primary"] == "exact" and ft["primary_setting"] == "auto" and ft["primary_reason"].startswith("auto:")
    assert best["fidelity"] == best["freetext"]["exact"]["value"] == 0.0
    assert best["freetext"]["structure"]["value"] == 1.0 and best["freetext"]["similarity"]["value"] > 0.8
    assert report["verdict"] == "plateau below threshold"
    assert report["ceiling"] == ft["ceiling"]["exact"] and "primary metric (exact)" in report["ceiling_method"]
    # the ceiling's per-probe values travel with it, so a fraction of the ceiling gets its own interval
    assert len(t["ceiling_scores"]) == len(ft["ceiling_scores"]["exact"]) > 0
    assert sum(t["ceiling_scores"]) / len(t["ceiling_scores"]) == pytest.approx(ft["ceiling"]["exact"], abs=1e-3)
    assert t["best_fraction_of_ceiling"]["value"] == 0.0 and t["best_fraction_of_ceiling"]["n"] == len(t["best_scores"])
    ci = t["ceiling_interval"]  # the ceiling's own n and interval, beside its point value
    assert ci["n"] == len(t["ceiling_scores"]) and ci["low"] <= ci["value"] <= ci["high"]
    assert ci["value"] == pytest.approx(t["ceiling"], abs=1e-3)
    assert f"[{ci['low']:.2f}, {ci['high']:.2f}] n={ci['n']}" in md
    # the tuner chose its configuration by the same primary metric, 0/1 per validation probe (not similarity)
    from foster.store.runs import RunRegistry

    events = [json.loads(x) for x in (RunRegistry().run_dir("free-auto") / "events.jsonl").read_text().splitlines()]
    tuned = [e for e in events if e["node"] == "optimize" and "tuner kept" in e.get("message", "")]
    assert any("scores validation by exact agreement" in e.get("message", "") for e in events)
    assert tuned and all(e["log"]["seed"]["method"] == "wilson" for e in tuned if "seed" in e["log"]), tuned
    # the no-LLM copy is read under the same primary metric, never by similarity beside an exact figure
    copy = t["nearest_copy"]
    assert copy["fidelity"] == copy["freetext"]["exact"]["value"] == copy["interval"]["value"]
    assert copy["interval"]["method"] == "wilson" and copy["freetext"]["similarity"]["value"] >= copy["fidelity"]
    # report.md: the panel, with its intervals, the primary metric and why, the warning, calibration, hedging
    assert "## Free-text fidelity" in md
    panel = md[md.index("## Free-text fidelity"):]
    assert "primary metric: **exact** (auto: the strictest metric whose ceiling is ≥ 0.5 (exact ceiling 1.000))" in panel
    assert "| variant | exact (primary) | structure | similarity |" in panel
    assert re.search(r"\| 0\.000 \[0\.000, 0\.\d{3}\] \| 1\.000 \[0\.\d{3}, 1\.000\] \| 0\.\d{3} \[", panel)
    assert "flatters" in panel and "exact agreement is 0.000" in panel
    assert "Jensen–Shannon divergence between meaning classes" in panel
    assert "| nearest recorded answer, no LLM | " in panel
    assert re.search(r"\| teacher \(samples\) \| \| \| \| \| 0\.000 \| 0\.000 \| \d+ samples \|", panel)
    # the CLI's summary: the primary metric's figure with its interval and n
    n = best["freetext"]["exact"]["n"]
    assert re.search(rf"free text: exact 0\.000 \[0\.00, 0\.\d\d\] n={n} \(auto: ", out), out

    # the same run with structure as the configured primary metric: the verdict reads structure
    code, report, md, out = _free_run(tmp_path, fake_model, capsys, "free-structure", "--primary-metric", "structure")
    assert code == 0
    t = next(iter(report["targets"].values()))
    assert t["freetext"]["primary"] == "structure" and t["freetext"]["primary_setting"] == "structure"
    assert t["best"]["fidelity"] == t["best"]["freetext"]["structure"]["value"] == 1.0
    assert t["ceiling"] == t["freetext"]["ceiling"]["structure"]
    assert report["verdict"] == "threshold met" and "structure agreement" in report["fidelity_method"]
    assert "primary metric: **structure** (configured; auto would have chosen exact, the strictest metric" in md
    assert "| exact | structure (primary) | similarity |" in md
    assert "free text: structure 1.000 [" in out and f"n={n} (configured; " in out, out


def test_a_fraction_of_the_ceiling_carries_the_ceilings_own_noise():
    """0.96 x a ceiling measured on 40 probes is not 0.96 x the teacher: the ratio's interval resamples the
    ceiling's probes too, so it is wider than the adapter's own interval divided by the ceiling."""
    from foster.agent import metrics

    adapter = [1.0] * 95 + [0.0] * 25  # 0.792 on 120 held-out probes
    ceiling = [1.0] * 30 + [0.5] * 6 + [0.0] * 4  # 0.825 on the 40 sampled ones
    r = metrics.ratio_interval(adapter, ceiling, seed=0)
    assert r["value"] == pytest.approx(0.792 / 0.825, abs=1e-3) and r["n"] == 120 and r["n_ceiling"] == 40
    assert r["low"] < r["value"] < r["high"]
    alone = metrics.fidelity_interval(adapter, exact=False)
    assert r["high"] - r["low"] > (alone["high"] - alone["low"]) / 0.825
    assert metrics.ratio_interval(adapter, [], seed=0)["value"] is None
    assert metrics.ratio_interval(adapter, [0.0, 0.0], seed=0)["low"] is None
