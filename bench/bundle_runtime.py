"""Bundle runtime: a knn bundle's first `Bundle.load(p).messages(x)` in a new process, and its peak RSS.

Three ways, each in fresh processes (REPS of each, alternating):
- runtime venv: a virtualenv with foster's `runtime` extra only (no torch); stored pool vectors,
  the input embedded by onnxruntime. Goals: first call < 1 s, peak RSS < 250 MB.
- full install, onnx: the same path inside foster's own venv (torch installed, never imported).
- full install, sentence-transformers: no stored vectors, pool and input embedded by
  sentence-transformers on torch, as every knn bundle rendered before (issue 12: 9.9 s, 666 MB).

"first call" is wall time from the interpreter's start to the first messages returned (imports,
load and embedding included: what an app that loads a bundle waits for); peak RSS is the child's
VmHWM (its ru_maxrss would start at the forking benchmark's own size).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
REPS = 3
GOALS = {"first_call_s": 1.0, "peak_rss_mb": 250.0}
BEFORE = {"first_call_s": 9.9, "peak_rss_mb": 666.0}  # measured when issue 12 was filed

CHILD = textwrap.dedent(
    """
    import time
    started = time.perf_counter()
    import json, sys
    if sys.argv[3] == "sentence-transformers":
        import foster.prompts.embedding as embedding
        embedding.embed = embedding.embed_reference
    from foster.prompts.bundle import Bundle
    bundle = Bundle.load(sys.argv[1])
    if sys.argv[3] == "sentence-transformers":
        bundle.selection.vectors = None  # as before: the pool is embedded at first use
    messages = bundle.messages(sys.argv[2])
    first = time.perf_counter() - started
    for text in ["where is my refund", "I cannot log in", "my parcel is late"] * 33 + ["hi"]:
        bundle.messages(text)
    hundred = time.perf_counter() - started - first
    # VmHWM, not ru_maxrss: ru_maxrss survives exec and starts at the forking parent's size
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print(json.dumps({"first_call_s": first, "next_100_s": hundred, "peak_rss_mb": hwm / 1024,
                      "torch_imported": "torch" in sys.modules, "messages": len(messages)}))
    """
)


def runtime_requirements() -> list[str]:
    """The bundle runtime's dependencies: pyproject's `runtime` extra (one place)."""
    return list(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["runtime"])


def make_runtime_venv(where: Path) -> Path:
    """A virtualenv with foster's namespace and prompts/ only (no dependencies) plus the runtime
    extra; returns its python. pip takes the wheels from its cache when it has them."""
    source = where / "src"
    for name in ("foster", "prompts"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    (source / "pyproject.toml").write_text(textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "foster"
        version = "{version}"
        [tool.setuptools]
        packages = ["foster", "foster.prompts", "foster.prompts.export"]
        [tool.setuptools.package-dir]
        "foster" = "foster"
        "foster.prompts" = "prompts"
        "foster.prompts.export" = "prompts/export"
        [tool.setuptools.package-data]
        "foster.prompts" = ["templates/*.yaml", "templates/*.j2"]
    """))
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, *runtime_requirements()], check=True)
    subprocess.run([*pip, "--no-deps", str(source)], check=True)
    return python


def knn_bundle_file(folder: Path) -> Path:
    from foster.prompts.bundle import Bundle, Example, ExampleSelection, OutputContract

    with open(ROOT / "examples/ticket_routing/data/train.jsonl", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    bundle = Bundle(teacher="local/teacher", targets=["local/smollm2-135m-instruct"], name="router-knn",
                    system_prompt="Route the ticket. Answer with the label only.",
                    examples=[Example(input=r["input"], output=r["output"]) for r in rows[:200]],
                    selection=ExampleSelection(kind="knn", k=6),
                    output_contract=OutputContract(format="label", answers=sorted({r["output"] for r in rows})))
    return bundle.save(folder / "router-knn")


def _child(python: Path, bundle: Path, mode: str, env: dict) -> dict:
    done = subprocess.run([str(python), "-c", CHILD, str(bundle), "I was charged twice this month", mode],
                          capture_output=True, text=True, env=env, check=True, cwd=bundle.parent)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(reps: int = REPS) -> dict:
    from foster.prompts.onnx_embed import DIR_ENV, ensure_exported

    env = {**os.environ, DIR_ENV: str(ensure_exported())}
    with tempfile.TemporaryDirectory(prefix="foster-bench-runtime-") as tmp:
        folder = Path(tmp)
        bundle = knn_bundle_file(folder)
        started = dt.datetime.now()
        venv_python = make_runtime_venv(folder)
        setup_s = (dt.datetime.now() - started).total_seconds()
        arms = {"runtime venv (onnx, no torch)": (venv_python, "onnx"),
                "full install, onnx": (Path(sys.executable), "onnx"),
                "full install, sentence-transformers": (Path(sys.executable), "sentence-transformers")}
        samples: dict[str, list[dict]] = {name: [] for name in arms}
        for _ in range(reps):
            for name, (python, mode) in arms.items():
                samples[name].append(_child(python, bundle, mode, env))
    rows = {}
    for name, runs in samples.items():
        rows[name] = {key: {"median": statistics.median(r[key] for r in runs), "min": min(r[key] for r in runs),
                            "max": max(r[key] for r in runs)} for key in ("first_call_s", "next_100_s", "peak_rss_mb")}
        rows[name]["torch_imported"] = any(r["torch_imported"] for r in runs)
        rows[name]["n"] = len(runs)
    light = rows["runtime venv (onnx, no torch)"]
    result = {
        "benchmark": "bundle_runtime", "date": dt.date.today().isoformat(), "machine": platform.machine(),
        "reps": reps, "pool": 200, "k": 6, "venv_setup_s": round(setup_s, 1), "arms": rows, "before": BEFORE,
        "load_average_1m": round(os.getloadavg()[0], 1),  # a shared machine: figures swing with it
        "goals": GOALS,
        "met": {key: light[key]["median"] < goal for key, goal in GOALS.items()},
    }
    _print(result)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"bundle_runtime-{result['date']}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _print(result: dict) -> None:
    print(f"knn bundle (pool {result['pool']}, k {result['k']}): first Bundle.load().messages() in a new process, "
          f"n={result['reps']} each (median [min-max])")
    print(f"{'arm':<40} {'first call s':>22} {'next 100 inputs s':>22} {'peak RSS MB':>22}  torch")
    for name, row in result["arms"].items():
        cells = [f"{row[k]['median']:.2f} [{row[k]['min']:.2f}-{row[k]['max']:.2f}]"
                 for k in ("first_call_s", "next_100_s", "peak_rss_mb")]
        print(f"{name:<40} {cells[0]:>22} {cells[1]:>22} {cells[2]:>22}  {row['torch_imported']}")
    print(f"{'issue 12 (before)':<40} {result['before']['first_call_s']:>22} {'':>22} {result['before']['peak_rss_mb']:>22}")
    print(f"load average at the end: {result['load_average_1m']} (2 cores)")
    print(f"goals (runtime venv): first call < {GOALS['first_call_s']} s, peak RSS < {GOALS['peak_rss_mb']} MB: {result['met']}")


if __name__ == "__main__":
    run(int(sys.argv[1]) if len(sys.argv) > 1 else REPS)
