"""Serve scale-up, scale-down, cluster-check, sync-inventory and replace-node from this one process (no work pool,
no worker).

    python -m deployments.serve            # needs PREFECT_API_URL pointing at a Prefect server

The deployments are built from prefect.yaml (deployments/specs.py): the same names, descriptions, parameters, tags,
schedules and triggers as `prefect deploy --all`, so serving creates the same automation (`replace-node-on-proposal`:
cluster-check's `metascale.replace-node.proposed` event starts replace-node paused for approval). Runs execute as
subprocesses of this process. On SIGTERM it stops gracefully and pauses its deployments (Prefect's `serve`
behaviour); starting it again un-pauses them.
"""

from __future__ import annotations

import argparse
import os

from deployments.specs import PREFECT_YAML, load_specs, to_runner_deployments


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and serve every deployment in prefect.yaml until stopped. Side effects: long-running."""
    parser = argparse.ArgumentParser(prog="python -m deployments.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=4, help="at most this many runs at once (default 4)")
    args = parser.parse_args(argv)
    os.environ.setdefault("PREFECT_RUNNER_POLL_FREQUENCY", "1")  # pick up triggered runs within ~1 s

    from prefect import serve

    serve(*to_runner_deployments(load_specs(PREFECT_YAML)), limit=args.limit)


if __name__ == "__main__":
    main()
