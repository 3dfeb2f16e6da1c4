"""Service overhead: /v1/chat/completions on a fake target vs calling the target through the gateway.

The server runs in its own process on 127.0.0.1 (as `foster serve` would) with a scripted fake
target that answers at once, so what is measured is the service: HTTP, validation, resolving the
deployment, rendering the bundle, the thread hop, the response. N requests at concurrency C go
to the endpoint with httpx, and N direct `agent.gateway.complete()` calls with the same messages
at the same concurrency run in this process; overhead = latency percentile (HTTP) minus latency
percentile (direct), the two sides alternating in rounds of 50. The server also reports its own share per request (Server-Timing: handler
total minus the target call), which excludes the client and the socket. Goal: <= 5 ms at p50.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

N = 300
CONCURRENCY = 8
WARMUP = 30
ROUND = 50
GOAL_MS = 5.0
FAKE = "bench-fake"
ALIAS = "ft:gpt-4o-mini:bench:router:0001"
RESULTS = Path(__file__).parent / "results"
INPUTS = ["I was charged twice", "reset my password please", "where is my parcel", "do you sell gift cards"]


def _bundle():
    from foster.prompts.bundle import Bundle, Example, OutputContract

    return Bundle(
        teacher="local/bench-teacher",
        targets=[f"local/{FAKE}"],
        system_prompt="Route the support ticket to one of: BILLING, ACCOUNT, SHIPPING, OTHER.",
        examples=[Example(input=text, output=label) for text, label in zip(INPUTS, ["BILLING", "ACCOUNT", "SHIPPING", "OTHER"])],
        output_contract=OutputContract(format="label", answers=["BILLING", "ACCOUNT", "SHIPPING", "OTHER"]),
    )


def _register_fake():
    from foster.agent.local.fake import ScriptedBackend
    from foster.agent.local.registry import register_backend

    register_backend(FAKE, ScriptedBackend(lambda request: "BILLING"))


def serve(port: int) -> None:
    """The server process: a fake target, a published bundle deployed under ALIAS, uvicorn."""
    import uvicorn

    import foster.agent  # noqa: F401
    from foster.ui.catalog import bundles_dir
    from foster.ui.deployments import Deployment, deployment_store
    from foster.ui.service import create_app

    _register_fake()
    bundle = _bundle()
    bundle.save(bundles_dir() / bundle.id)
    deployment_store().put(Deployment(name=ALIAS, bundle_id=bundle.id))
    uvicorn.run(create_app(ui=False), host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentiles(values_s: list[float]) -> dict[str, float]:
    ms = sorted(v * 1000 for v in values_s)
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return {"p50": round(statistics.median(ms), 3), "p90": round(q[89], 3), "p99": round(q[98], 3),
            "mean": round(statistics.fmean(ms), 3), "n": len(ms)}


async def _http_latencies(base: str, n: int, concurrency: int) -> tuple[list[float], list[float]]:
    """Client-side latencies and the server's own overhead (Server-Timing total - target), seconds."""
    import httpx

    latencies: list[float] = []
    server_overheads: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                body = {"model": ALIAS, "messages": [{"role": "user", "content": INPUTS[i % len(INPUTS)]}]}
                start = time.perf_counter()
                response = await client.post("/v1/chat/completions", json=body)
                latencies.append(time.perf_counter() - start)
                response.raise_for_status()
                timing = dict(part.strip().split(";dur=") for part in response.headers["server-timing"].split(","))
                server_overheads.append((float(timing["total"]) - float(timing["target"])) / 1000)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, server_overheads


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _direct_latencies(n: int, concurrency: int) -> list[float]:
    from foster.agent.gateway import complete

    bundle = _bundle()
    target = bundle.targets[0]

    def one(i: int) -> float:
        start = time.perf_counter()
        complete(target, messages=bundle.messages(INPUTS[i % len(INPUTS)]), temperature=0.0, max_tokens=256)
        return time.perf_counter() - start

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(pool.map(one, range(n)))


def run(n: int = N, concurrency: int = CONCURRENCY, timeout_s: float = 240.0) -> dict:
    import httpx

    import foster.agent  # noqa: F401

    started = time.monotonic()
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    home = tempfile.mkdtemp(prefix="foster-bench-service-")
    env = {**os.environ, "FOSTER_HOME": home, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    env.pop("FOSTER_API_TOKEN", None)
    root = Path(__file__).resolve().parent.parent
    server = subprocess.Popen([sys.executable, "-m", "bench.service", "--serve", str(port)], cwd=root, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"the server exited: {server.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - started > 60:
                raise RuntimeError("the server did not start within 60 s")
            time.sleep(0.1)

        _register_fake()
        # warm-up: first calls import litellm's lazy parts on both sides
        asyncio.run(_http_latencies(base, WARMUP, concurrency))
        _direct_latencies(WARMUP, concurrency)

        results: dict[str, dict] = {}
        for c in (1, concurrency):
            if time.monotonic() - started > timeout_s:
                break
            # alternate rounds of each side, so both see the same share of whatever else the machine runs
            http, server_side, direct = [], [], []
            server_cpu = own_cpu = 0.0
            for size in [ROUND] * (n // ROUND) + ([n % ROUND] if n % ROUND else []):
                before = _cpu_seconds(server.pid)
                h_lat, s_lat = asyncio.run(_http_latencies(base, size, c))
                server_cpu += _cpu_seconds(server.pid) - before
                before = time.process_time()
                direct += _direct_latencies(size, c)
                own_cpu += time.process_time() - before
                http += h_lat
                server_side += s_lat
            h, d, s = _percentiles(http), _percentiles(direct), _percentiles(server_side)
            results[f"concurrency_{c}"] = {
                "http_ms": h,
                "direct_ms": d,
                "server_overhead_ms": s,
                "overhead_ms": {"p50": round(h["p50"] - d["p50"], 3), "p99": round(h["p99"] - d["p99"], 3)},
                # CPU per request does not depend on what else the machine runs: the server's whole
                # process (HTTP, service, gateway, fake) against one direct gateway call
                "cpu_ms_per_request": {"server": round(server_cpu / n * 1000, 3), "direct": round(own_cpu / n * 1000, 3)},
            }
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()

    main = results.get(f"concurrency_{concurrency}") or next(iter(results.values()))
    result = {
        "benchmark": "service",
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "requests": n,
        "concurrency": concurrency,
        "target": f"local/{FAKE} (ScriptedBackend, answers at once)",
        "results": results,
        "overhead_p50_ms": main["overhead_ms"]["p50"],
        "overhead_p99_ms": main["overhead_ms"]["p99"],
        "goal_p50_ms": GOAL_MS,
        "meets_goal": main["overhead_ms"]["p50"] <= GOAL_MS,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    print(f"{'concurrency':<12}{'side':<18}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}")
    for name, r in results.items():
        for side in ("http_ms", "direct_ms", "server_overhead_ms"):
            p = r[side]
            print(f"{name.split('_')[1]:<12}{side[:-3]:<18}{p['p50']:>9.2f}{p['p90']:>9.2f}{p['p99']:>9.2f}")
        print(f"{'':<12}{'overhead':<18}{r['overhead_ms']['p50']:>9.2f}{'':>9}{r['overhead_ms']['p99']:>9.2f}")
        cpu = r["cpu_ms_per_request"]
        print(f"{'':<12}cpu ms/request: server {cpu['server']:.2f} (all of it), direct call {cpu['direct']:.2f}")
    print(f"overhead at concurrency {concurrency}: p50 {result['overhead_p50_ms']:.2f} ms, p99 {result['overhead_p99_ms']:.2f} ms "
          f"(goal p50 <= {GOAL_MS} ms) {'ok' if result['meets_goal'] else 'ABOVE GOAL'}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"service-{dt.date.today().isoformat()}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.service", description=__doc__.splitlines()[0])
    parser.add_argument("--serve", type=int, metavar="PORT", help="(internal) run the benchmark's server")
    parser.add_argument("-n", type=int, default=N, help=f"requests per side (default {N})")
    parser.add_argument("-c", "--concurrency", type=int, default=CONCURRENCY)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    run(args.n, args.concurrency)
    return 0


if __name__ == "__main__":
    sys.exit(main())
