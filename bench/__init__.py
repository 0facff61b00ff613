"""Benchmarks: `make bench` (bench/run_bench.py) and the bare runbook script bench/runbook.sh."""
