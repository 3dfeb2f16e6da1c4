"""Run foster's benchmarks: `python -m bench [name ...]` (default: all of BENCHMARKS).

A benchmark is a module with `run() -> dict`; it prints its own table and writes its results
under bench/results/. Add yours to BENCHMARKS.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

BENCHMARKS = ["bench.gateway", "bench.service", "bench.probing", "bench.router", "bench.bundle_runtime", "bench.compare", "bench.freetext"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="benchmark modules (short names like 'gateway' work)")
    args = parser.parse_args(argv)
    selected = [n if n.startswith("bench.") else f"bench.{n}" for n in args.names] or BENCHMARKS
    failed = 0
    for name in selected:
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        try:
            importlib.import_module(name).run()
        except Exception as exc:  # one failing benchmark does not hide the others
            failed += 1
            print(f"{name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        print(f"== {name}: {time.perf_counter() - start:.1f} s\n", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
