"""Benchmarks: `python -m bench` runs each module in bench.__main__.BENCHMARKS."""
