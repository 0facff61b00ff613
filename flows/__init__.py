"""Prefect flows: scale-up, scale-down, cluster-check (and what they share, common.py)."""
