"""Benchmark scripts (BENCHMARKS.md); run as `python -m bench.<name>`."""
