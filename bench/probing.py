"""Probing benchmark: foster's probe stage against a loopback OpenAI-compatible teacher with a fixed latency.

    python -m bench probing            (FOSTER_BENCH_PROBING_N=1000, FOSTER_BENCH_PROBING_LATENCY=0.3)

Three runs of the real probe node (agent/probe.py) in child processes, each against the same teacher
server (its own process, answering after a fixed sleep and logging every request it answers):

1. concurrent: N historical inputs, the default sampling plan (every input its greedy answer, a
   stratified subset sampled at every temperature), the default bound of 8 calls in flight;
2. sequential: the same on a subset with 1 call in flight; its seconds per call, times the full run's
   calls, is the sequential estimate (measured on a subset and extrapolated: said in the results);
3. kill -9: the concurrent run again in a fresh home, killed when about 40 % of its calls are
   answered, then resumed; the server's log must show no (input, temperature, sample) answered twice
   except calls that were in flight at the kill (their answers never reached the store).

Results go to bench/results/probing.json and .md.
"""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from fastapi import Request  # module level: FastAPI resolves the handler's annotation by name here

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
TEACHER = "openai/bench-teacher"
LABELS = ["BILL-REFUND", "ACCT-LOCKOUT", "SHIP-LATE", "SHIP-DAMAGED", "TECH-APP-CRASH", "OTHER-HUMAN"]
PHRASES = {
    "BILL-REFUND": ["I want my money back for", "please refund", "where is the refund for"],
    "ACCT-LOCKOUT": ["I can't log in to check", "my account is locked, I need", "password reset fails for"],
    "SHIP-LATE": ["still waiting on", "tracking is stuck for", "late delivery of"],
    "SHIP-DAMAGED": ["arrived broken:", "the box was crushed with", "wrong item instead of"],
    "TECH-APP-CRASH": ["the app crashes when I open", "white screen on", "checkout freezes for"],
    "OTHER-HUMAN": ["let me talk to a person about", "do you sell", "my lawyer will hear about"],
}
ITEMS = ["the kettle", "order 5512", "my hoodie", "the lamp", "a gift card", "the backpack", "my earbuds",
         "the yoga mat", "the skillet", "a candle", "my subscription", "the blanket"]


def make_inputs(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        label = rng.choice(LABELS)
        text = f"{rng.choice(PHRASES[label])} {rng.choice(ITEMS)} (ref {rng.randint(1000, 99999)})"
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def _label(text: str) -> str:
    for label, phrases in PHRASES.items():
        if any(p in text for p in phrases):
            return label
    return "OTHER-HUMAN"


# -- the loopback teacher (its own process) ------------------------------------------------------

def serve(port: int, latency: float, log: str) -> None:
    import asyncio

    import uvicorn
    from fastapi import FastAPI

    app = FastAPI()
    f = open(log, "a", buffering=1)

    @app.post("/v1/chat/completions")
    async def chat(req: Request):
        body = await req.json()
        text = [m["content"] for m in body["messages"] if m["role"] == "user"][-1]
        await asyncio.sleep(latency)
        t, seed = float(body.get("temperature") or 0.0), body.get("seed")
        answer = _label(text)
        if t > 0 and random.Random(f"{text}|{t}|{seed}").random() < 0.15:
            answer = "OTHER-HUMAN"  # the teacher hedges at temperature > 0
        f.write(json.dumps([text, t, seed, time.time()]) + "\n")  # logged as it answers
        return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": answer}}],
                "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- one probe stage (a child process, so it can be killed) --------------------------------------

def worker(run_id: str, inputs: str, url: str, n: int, sampled: int, concurrency: int, out: str) -> None:
    from types import SimpleNamespace

    from foster.agent.config import RunConfig
    from foster.agent.context import RunContext
    from foster.agent.probe import probe
    from foster.store.runs import RunRegistry

    reg = RunRegistry()
    if not reg.exists(run_id):
        config = RunConfig(teacher=TEACHER, targets=[TEACHER], inputs=inputs, max_probes=n, sampled_probes=sampled,
                           concurrency=concurrency, endpoints={TEACHER: {"api_base": url}}, run_id=run_id)
        reg.create(run_id, config.model_dump(), status="running")
    ctx = RunContext.open(run_id)
    # one-time costs before the clock starts (imports, the embedding model, Chroma): they are not per call,
    # so they must not be extrapolated per call into the sequential estimate
    import litellm  # noqa: F401
    import sklearn.cluster  # noqa: F401

    from foster.prompts.embedding import embed

    embed(["warm up"])
    ctx.store.get_observations(run_id=run_id, model=TEACHER)
    t0, cpu0 = time.perf_counter(), time.process_time()
    update = probe({"run_id": run_id}, SimpleNamespace(context=ctx))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    Path(out).write_text(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "probing": update["probing"],
                                     "probes": len(update["probes"]), "stop": update["stop_reason"]}))


def stored(run_id: str, out: str) -> None:
    """The (input, temperature, seed) keys whose answers are in Chroma: what a resume will not ask again."""
    from foster.agent.context import RunContext, stable_seed

    ctx = RunContext.open(run_id)
    obs = ctx.store.get_observations(run_id=run_id, model=TEACHER)
    keys = [[o["input"], float(o["temperature"]), stable_seed(ctx.config.seed, o["probe_id"], float(o["temperature"]),
                                                                int(o["sample_index"]))] for o in obs]
    Path(out).write_text(json.dumps(keys))


def _child(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench.probing", *args], env=env, cwd=HERE.parent)


def _log(path: Path) -> list[tuple]:
    if not path.exists():
        return []
    return [tuple(json.loads(x)[:3]) for x in path.read_text().splitlines() if x.strip()]


def run() -> dict:
    n = int(os.environ.get("FOSTER_BENCH_PROBING_N", 1000))
    latency = float(os.environ.get("FOSTER_BENCH_PROBING_LATENCY", 0.3))
    n_seq = int(os.environ.get("FOSTER_BENCH_PROBING_SEQ_N", 100))
    sampled, concurrency = 100, 8
    work = Path(tempfile.mkdtemp(prefix="foster-bench-probing-"))
    inputs = work / "inputs.jsonl"
    inputs.write_text("".join(json.dumps({"input": x}) + "\n" for x in make_inputs(n)))
    seq_inputs = work / "inputs-seq.jsonl"
    seq_inputs.write_text("".join(json.dumps({"input": x}) + "\n" for x in make_inputs(n)[:n_seq]))
    port = _free_port()
    url = f"http://127.0.0.1:{port}/v1"
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "ANONYMIZED_TELEMETRY": "False", "PYTHONPATH": str(HERE.parent)}
    server = _child(["serve", str(port), str(latency), str(work / "server.log")], env)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)

        def stage(name: str, run_inputs: Path, n_inputs: int, n_sampled: int, limit: int) -> dict:
            home = work / name
            out = work / f"{name}.json"
            log_before = len(_log(work / "server.log"))
            p = _child(["worker", name, str(run_inputs), url, str(n_inputs), str(n_sampled), str(limit), str(out)],
                       {**env, "FOSTER_HOME": str(home)})
            if p.wait() != 0:
                raise RuntimeError(f"{name}: the probe worker failed ({p.returncode})")
            res = json.loads(out.read_text())
            res["calls"] = len(_log(work / "server.log")) - log_before
            return res

        conc = stage("concurrent", inputs, n, sampled, concurrency)
        # the same sampling rate on the subset: sampled probes scale with the inputs
        seq = stage("sequential", seq_inputs, n_seq, max(1, round(sampled * n_seq / n)), 1)
        per_call_seq = seq["seconds"] / seq["calls"]
        seq_estimate = per_call_seq * conc["calls"]
        kill = _kill_and_resume(work, env, url, inputs, n, sampled, concurrency, conc["calls"])
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(10)
    result = {
        "benchmark": "probing", "inputs": n, "latency_s": latency, "concurrency": concurrency,
        "sampling_plan": f"greedy (T=0) for every input; T in [0.7, 1.0] x 2 samples for a stratified subset of "
                         f"{sampled}",
        "concurrent": {"seconds": round(conc["seconds"], 1), "calls": conc["calls"],
                       "calls_per_s": round(conc["calls"] / conc["seconds"], 2),
                       "client_cpu_seconds_per_call": round(conc["cpu_seconds"] / conc["calls"], 4),
                       "per_model": conc["probing"]["calls"]},
        "sequential": {"measured_on_inputs": n_seq, "calls": seq["calls"], "seconds": round(seq["seconds"], 1),
                       "seconds_per_call": round(per_call_seq, 4),
                       "estimate_seconds_for_full_run": round(seq_estimate, 1),
                       "note": f"measured on {n_seq} inputs with 1 call in flight, extrapolated per call to the "
                               f"{conc['calls']} calls of the full run"},
        "ratio_to_sequential": round(conc["seconds"] / seq_estimate, 3),
        "ideal_ratio": round(1 / concurrency, 3),
        "goal": "ratio <= 0.2", "kill_and_resume": kill,
        "load_average": os.getloadavg(), "cpus": os.cpu_count(),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "probing.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "probing.md").write_text(_markdown(result))
    print(_markdown(result))
    return result


def _kill_and_resume(work: Path, env: dict, url: str, inputs: Path, n: int, sampled: int, concurrency: int,
                     expected_calls: int) -> dict:
    name, home = "killed", work / "killed"
    log = work / "server.log"
    env = {**env, "FOSTER_HOME": str(home)}
    start = len(_log(log))
    p = _child(["worker", name, str(inputs), url, str(n), str(sampled), str(concurrency), str(work / "k1.json")], env)
    target = int(expected_calls * 0.4)
    while p.poll() is None and len(_log(log)) - start < target:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    answered_before = len(_log(log)) - start
    s = _child(["stored", name, str(work / "stored.json")], env)
    s.wait()
    stored_keys = {tuple(k) for k in json.loads((work / "stored.json").read_text())}
    r = _child(["worker", name, str(inputs), url, str(n), str(sampled), str(concurrency), str(work / "k2.json")], env)
    if r.wait() != 0:
        raise RuntimeError("the resumed probe worker failed")
    calls = _log(log)[start:]
    counts = Counter(calls)
    twice = [k for k, c in counts.items() if c > 1]
    # a key answered twice whose first answer was stored would be a real repeat; one that was not stored
    # was in flight when the process died (the server answered, the store never saw it)
    repeated_stored = [k for k in twice if k in stored_keys]
    return {"killed_after_answers": answered_before, "stored_before_resume": len(stored_keys),
            "answers_total": len(calls), "distinct_keys": len(counts), "expected_keys": expected_calls,
            "asked_twice": len(twice), "asked_twice_after_being_stored": len(repeated_stored),
            "in_flight_at_kill_reasked": len(twice) - len(repeated_stored),
            "ok": not repeated_stored and len(counts) == expected_calls}


def _markdown(r: dict) -> str:
    k = r["kill_and_resume"]
    return "\n".join([
        f"## Probing: {r['inputs']} inputs, loopback teacher at {r['latency_s'] * 1000:.0f} ms, "
        f"{r['concurrency']} calls in flight", "",
        f"Sampling plan: {r['sampling_plan']}.", "",
        "| run | calls | wall s | calls/s |", "|---|---|---|---|",
        f"| concurrent ({r['concurrency']} in flight) | {r['concurrent']['calls']} | {r['concurrent']['seconds']} | "
        f"{r['concurrent']['calls_per_s']} |",
        f"| sequential, measured on {r['sequential']['measured_on_inputs']} inputs | {r['sequential']['calls']} | "
        f"{r['sequential']['seconds']} | {1 / r['sequential']['seconds_per_call']:.2f} |",
        f"| sequential, extrapolated to the full run | {r['concurrent']['calls']} | "
        f"{r['sequential']['estimate_seconds_for_full_run']} | |", "",
        f"Wall time ratio to sequential: **{r['ratio_to_sequential']}** (goal ≤ 0.2; ideal 1/{r['concurrency']} = "
        f"{r['ideal_ratio']}); load average during the run {', '.join(f'{x:.1f}' for x in r['load_average'])} on "
        f"{r['cpus']} cores. The client spent {r['concurrent']['client_cpu_seconds_per_call']} CPU s per call "
        f"(litellm, the store's embedding, clustering): with that CPU shared by the load, it and not the "
        f"teacher's latency bounds the rate.", "",
        f"kill -9 after {k['killed_after_answers']} answers ({k['stored_before_resume']} stored), then resume: "
        f"{k['distinct_keys']} distinct (input, temperature, sample) keys of {k['expected_keys']} expected, "
        f"{k['asked_twice_after_being_stored']} asked again after being stored, {k['in_flight_at_kill_reasked']} "
        f"in flight at the kill asked again — {'OK' if k['ok'] else 'FAILED'}.", ""])


if __name__ == "__main__":
    cmd, *rest = sys.argv[1:]
    if cmd == "serve":
        serve(int(rest[0]), float(rest[1]), rest[2])
    elif cmd == "worker":
        worker(rest[0], rest[1], rest[2], int(rest[3]), int(rest[4]), int(rest[5]), rest[6])
    elif cmd == "stored":
        stored(rest[0], rest[1])
    else:
        run()
