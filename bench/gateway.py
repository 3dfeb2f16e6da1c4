"""Gateway overhead: generated tokens/s through litellm vs llama-cpp-python on the same Llama object.

Both sides sample the same prompts greedily from the one loaded SmolLM2 model, back to back in
pairs, alternating which goes first. Each pair's prompt is evaluated once beforehand (unmeasured),
so both sides measure generation plus their own per-call overhead, not who met the prompt first. The ratio is the median
over pairs of gateway tok/s / direct tok/s: on a shared machine the load swings between pairs, and a
pair's two calls see nearly the same load. Goal: ratio >= 0.9.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import statistics
import time
from pathlib import Path

MODEL = "local/smollm2-135m-instruct"
PROMPTS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a refrigerator works to a ten-year-old.",
    "List five ideas for a rainy weekend and say why each is fun.",
    "Describe the water cycle in a few sentences.",
]
REPS = 3
MAX_TOKENS = 64
BUDGET_S = 90.0  # stop adding reps after this (at least one full rep runs)
GOAL = 0.9
RESULTS = Path(__file__).parent / "results"


def run(reps: int = REPS, max_tokens: int = MAX_TOKENS, budget_s: float = BUDGET_S) -> dict:
    import foster.agent  # noqa: F401  (environment before litellm)
    from foster.agent.gateway import complete
    from foster.agent.local import registry

    backend = registry.resolve(MODEL)  # the Llama object litellm's provider uses

    def direct(messages: list[dict]) -> tuple[int, float, float]:
        with backend.lock:
            start, cpu = time.perf_counter(), time.process_time()
            out = backend.llm.create_chat_completion(
                messages=messages, max_tokens=max_tokens, temperature=0.0, top_k=0, min_p=0.0, repeat_penalty=1.0
            )
            return out["usage"]["completion_tokens"], time.perf_counter() - start, time.process_time() - cpu

    def gateway(messages: list[dict]) -> tuple[int, float, float]:
        start, cpu = time.perf_counter(), time.process_time()  # all of complete(): checks, litellm, provider, ledger
        c = complete(MODEL, messages, temperature=0.0, max_tokens=max_tokens)
        return c.completion_tokens, time.perf_counter() - start, time.process_time() - cpu

    for prompt in PROMPTS[:1]:  # warm-up: first-call costs belong to neither side
        messages = [{"role": "user", "content": prompt}]
        direct(messages)
        gateway(messages)

    sides = {"direct": [0, 0.0, 0.0], "gateway": [0, 0.0, 0.0]}
    pair_ratios: list[float] = []
    order = [("direct", direct), ("gateway", gateway)]
    started = time.perf_counter()
    reps_run = 0
    for rep in range(reps):
        if rep and time.perf_counter() - started > budget_s:
            break
        reps_run += 1
        for i, prompt in enumerate(PROMPTS):
            messages = [{"role": "user", "content": prompt}]
            with backend.lock:  # the prompt's KV is cached for both sides
                backend.llm.create_chat_completion(messages=messages, max_tokens=1, temperature=0.0)
            rate = {}
            for name, fn in order if (rep + i) % 2 == 0 else order[::-1]:
                tokens, seconds, cpu = fn(messages)
                sides[name][0] += tokens
                sides[name][1] += seconds
                sides[name][2] += cpu
                rate[name] = tokens / seconds
            pair_ratios.append(rate["gateway"] / rate["direct"])

    tps = {name: tokens / seconds for name, (tokens, seconds, _) in sides.items()}
    ratio = statistics.median(pair_ratios)
    aggregate = tps["gateway"] / tps["direct"]
    cpu_ratio = sides["direct"][2] / sides["gateway"][2]  # CPU seconds direct / gateway
    result = {
        "benchmark": "gateway",
        "model": MODEL,
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "reps": reps_run,
        "prompts": len(PROMPTS),
        "max_tokens": max_tokens,
        "direct_tokens_per_s": round(tps["direct"], 2),
        "gateway_tokens_per_s": round(tps["gateway"], 2),
        "direct_generated_tokens": sides["direct"][0],
        "gateway_generated_tokens": sides["gateway"][0],
        "direct_cpu_s": round(sides["direct"][2], 2),
        "gateway_cpu_s": round(sides["gateway"][2], 2),
        "ratio": round(ratio, 3),
        "ratio_method": "median over back-to-back pairs of gateway tok/s / direct tok/s",
        "pair_ratios": [round(r, 3) for r in pair_ratios],
        "aggregate_ratio": round(aggregate, 3),
        "cpu_ratio": round(cpu_ratio, 3),
        "goal": GOAL,
        "meets_goal": ratio >= GOAL,
    }
    print(f"{'path':<10}{'tokens':>8}{'seconds':>10}{'cpu s':>8}{'tok/s':>9}")
    for name, (tokens, seconds, cpu) in sides.items():
        print(f"{name:<10}{tokens:>8}{seconds:>10.2f}{cpu:>8.2f}{tps[name]:>9.1f}")
    print(f"ratio gateway/direct = {ratio:.3f} (median of {len(pair_ratios)} pairs; aggregate {aggregate:.3f}, "
          f"cpu {cpu_ratio:.3f}) goal >= {GOAL}: {'ok' if ratio >= GOAL else 'BELOW GOAL'}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"gateway-{dt.date.today().isoformat()}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    run()
