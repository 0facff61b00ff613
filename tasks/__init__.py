"""Prefect tasks: one per runbook step (runbook.py), the per-run SSH pool (pool.py), the MetaCluster block."""
