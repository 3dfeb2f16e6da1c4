"""Router throughput: probing N inputs against two 300 ms replicas behind one name vs one replica.

Each replica is an OpenAI-compatible fake in its own process that answers after 300 ms and serves
at most CAPACITY requests at a time (a GPU server's batch slots; beyond them requests queue), so
one replica tops out at CAPACITY / 0.3 s requests per second. The prober sends every input once,
at temperature 0, through `foster.agent.gateway.complete` from CONCURRENCY threads (the way a
run's teacher calls would be spread), first with a models file naming one replica, then with
both (equal weights). The N inputs go in rounds of ROUND per side, the two sides alternating which
goes first, so a load swing on a shared machine hits both alike; ratio = median over rounds of
(inputs/s with two) / (inputs/s with one), the aggregate ratio beside it. Goal: >= 1.8x.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# module level: FastAPI resolves the replica handler's `Request` annotation from this module's globals
from fastapi import Request

N = 1000
LATENCY_S = 0.3
CAPACITY = 4
CONCURRENCY = 32
ROUND = 100
GOAL = 1.8
RESULTS = Path(__file__).parent / "results"


def replica(port: int, latency_s: float, capacity: int) -> None:
    """The replica process: /v1/chat/completions after `latency_s`, `capacity` requests at a time."""
    import asyncio

    import uvicorn
    from fastapi import FastAPI

    app = FastAPI()
    slots = asyncio.Semaphore(capacity)

    @app.post("/v1/chat/completions")
    async def chat(req: Request) -> dict:
        body = await req.json()
        async with slots:
            await asyncio.sleep(latency_s)
        return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "BILLING"}}],
                "usage": {"prompt_tokens": 8, "completion_tokens": 1, "total_tokens": 9}}

    @app.get("/health")
    async def health() -> dict:
        return {"ok": True}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error")


def _start_replica(latency_s: float, capacity: int) -> tuple[subprocess.Popen, str]:
    import httpx

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from openai_replica import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.router", "--replica", str(port), "--latency", str(latency_s),
                             "--capacity", str(capacity)], cwd=Path(__file__).resolve().parents[1])
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc, f"http://127.0.0.1:{port}/v1"
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("replica did not start")


def _probe(models, n: int, concurrency: int, start: int = 0) -> float:
    import contextvars

    from foster.agent.gateway import complete

    def one(i: int) -> str:
        return complete("teacher", [{"role": "user", "content": f"ticket {i}: I was charged twice"}],
                        temperature=0.0, max_tokens=8, models=models).text

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        answers = list(pool.map(lambda i: contextvars.copy_context().run(one, i), range(start, start + n)))
    seconds = time.perf_counter() - started
    assert answers.count("BILLING") == n, "every probe must be answered"
    return seconds


def run(n: int = N, latency_s: float = LATENCY_S, capacity: int = CAPACITY, concurrency: int = CONCURRENCY) -> dict:
    import foster.agent  # noqa: F401  (environment before litellm)
    from foster.agent.gateway import Models
    from foster.agent.models_file import ModelsFile

    procs = []
    try:
        urls = []
        for _ in range(2):
            proc, url = _start_replica(latency_s, capacity)
            procs.append(proc)
            urls.append(url)
        one = Models(ModelsFile.parse({"models": {"teacher": [{"model": "openai/old-ft", "api_base": urls[0]}]}}))
        two = Models(ModelsFile.parse({"models": {"teacher": [{"model": "openai/old-ft", "api_base": u} for u in urls]}}))
        _probe(one, 2 * concurrency, concurrency)  # warm-up: imports, clients, connections
        _probe(two, 2 * concurrency, concurrency)
        single = double = 0.0
        ratios = []
        cpu_started = time.process_time()
        for k, start in enumerate(range(0, n, ROUND)):
            size = min(ROUND, n - start)
            sides = [("one", one), ("two", two)] if k % 2 == 0 else [("two", two), ("one", one)]
            took = {name: _probe(models, size, concurrency, start) for name, models in sides}
            single, double = single + took["one"], double + took["two"]
            ratios.append(took["one"] / took["two"])
        cpu_ms_per_call = 1000 * (time.process_time() - cpu_started) / (2 * n)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
    import statistics

    ratio = statistics.median(ratios)
    ceiling = capacity / latency_s
    result = {
        "benchmark": "router",
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "inputs": n,
        "replica_latency_s": latency_s,
        "replica_capacity": capacity,
        "client_concurrency": concurrency,
        "one_replica": {"seconds": round(single, 2), "per_s": round(n / single, 2), "ceiling_per_s": round(ceiling, 2)},
        "two_replicas": {"seconds": round(double, 2), "per_s": round(n / double, 2), "ceiling_per_s": round(2 * ceiling, 2)},
        "ratio": round(ratio, 3),
        "ratio_method": f"median over {len(ratios)} rounds of {ROUND} inputs per side (alternating order) of two/one inputs/s",
        "round_ratios": [round(r, 3) for r in ratios],
        "aggregate_ratio": round(single / double, 3),
        "load_average_1m": round(os.getloadavg()[0], 1),
        # the prober's own CPU per call (litellm + Router + gateway): with 2 shared cores it caps the rate
        "client_cpu_ms_per_call": round(cpu_ms_per_call, 1),
        "goal": GOAL,
        "meets_goal": ratio >= GOAL,
    }
    print(f"{'replicas':<10}{'inputs':>8}{'seconds':>10}{'inputs/s':>10}{'ceiling/s':>11}")
    print(f"{'one':<10}{n:>8}{single:>10.2f}{n / single:>10.1f}{ceiling:>11.1f}")
    print(f"{'two':<10}{n:>8}{double:>10.2f}{n / double:>10.1f}{2 * ceiling:>11.1f}")
    print(f"prober CPU per call: {cpu_ms_per_call:.1f} ms (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus)")
    print(f"throughput ratio two/one = {ratio:.2f}x (median of {len(ratios)} rounds; aggregate {single / double:.2f}x), goal >= {GOAL}x: {'ok' if ratio >= GOAL else 'BELOW GOAL'}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"router-{dt.date.today().isoformat()}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.router")
    parser.add_argument("--replica", type=int, metavar="PORT", help="serve one fake replica on PORT (internal)")
    parser.add_argument("--latency", type=float, default=LATENCY_S)
    parser.add_argument("--capacity", type=int, default=CAPACITY)
    parser.add_argument("-n", type=int, default=N)
    args = parser.parse_args()
    if args.replica:
        replica(args.replica, args.latency, args.capacity)
    else:
        run(n=args.n, latency_s=args.latency, capacity=args.capacity)
