"""Prefect deployments, setup, serving, the `metascale` CLI and `make demo`. Imports no prefect at package level."""
