"""Shared test fixtures: the lab (tests/fixtures_lab.py) and the Prefect server (tests/fixtures_prefect.py)."""
pytest_plugins = ["tests.fixtures_lab", "tests.fixtures_prefect"]
