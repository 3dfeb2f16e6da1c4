"""Gateway overhead: generated tokens/s through litellm vs llama-cpp-python on the same Llama object.

Both sides sample the same prompts greedily from the one loaded SmolLM2 model, interleaved and
alternating which goes first, so the prefix cache favours neither. Goal: ratio >= 0.9.
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
MAX_TOKENS = 96
GOAL = 0.9
RESULTS = Path(__file__).parent / "results"


def run(reps: int = REPS, max_tokens: int = MAX_TOKENS) -> dict:
    import agent  # noqa: F401  (environment before litellm)
    from agent.gateway import complete
    from agent.local import registry

    backend = registry.resolve(MODEL)  # the Llama object litellm's provider uses

    def direct(messages: list[dict]) -> tuple[int, float]:
        with backend.lock:
            start = time.perf_counter()
            out = backend.llm.create_chat_completion(
                messages=messages, max_tokens=max_tokens, temperature=0.0, top_k=0, min_p=0.0, repeat_penalty=1.0
            )
            return out["usage"]["completion_tokens"], time.perf_counter() - start

    def gateway(messages: list[dict]) -> tuple[int, float]:
        start = time.perf_counter()  # all of complete(): checks, litellm, provider, ledger
        c = complete(MODEL, messages, temperature=0.0, max_tokens=max_tokens)
        return c.completion_tokens, time.perf_counter() - start

    for prompt in PROMPTS[:1]:  # warm-up: first-call costs belong to neither side
        messages = [{"role": "user", "content": prompt}]
        direct(messages)
        gateway(messages)

    sides = {"direct": [0, 0.0], "gateway": [0, 0.0]}
    per_call: dict[str, list[float]] = {"direct": [], "gateway": []}
    order = [("direct", direct), ("gateway", gateway)]
    for rep in range(reps):
        for i, prompt in enumerate(PROMPTS):
            messages = [{"role": "user", "content": prompt}]
            pair = order if (rep + i) % 2 == 0 else order[::-1]
            for name, fn in pair:
                tokens, seconds = fn(messages)
                sides[name][0] += tokens
                sides[name][1] += seconds
                per_call[name].append(tokens / seconds if seconds else 0.0)

    tps = {name: tokens / seconds for name, (tokens, seconds) in sides.items()}
    ratio = tps["gateway"] / tps["direct"]
    result = {
        "benchmark": "gateway",
        "model": MODEL,
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "reps": reps,
        "prompts": len(PROMPTS),
        "max_tokens": max_tokens,
        "direct_tokens_per_s": round(tps["direct"], 2),
        "gateway_tokens_per_s": round(tps["gateway"], 2),
        "direct_generated_tokens": sides["direct"][0],
        "gateway_generated_tokens": sides["gateway"][0],
        "median_call_tokens_per_s": {k: round(statistics.median(v), 2) for k, v in per_call.items()},
        "ratio": round(ratio, 3),
        "goal": GOAL,
        "meets_goal": ratio >= GOAL,
    }
    print(f"{'path':<10}{'tokens':>8}{'seconds':>10}{'tok/s':>9}")
    for name, (tokens, seconds) in sides.items():
        print(f"{name:<10}{tokens:>8}{seconds:>10.2f}{tps[name]:>9.1f}")
    print(f"ratio gateway/direct = {ratio:.3f} (goal >= {GOAL}) {'ok' if ratio >= GOAL else 'BELOW GOAL'}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"gateway-{dt.date.today().isoformat()}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    run()
