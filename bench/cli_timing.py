"""How long the `metascale` command takes from a cold shell (issue #11: "`metascale scale-down --dry-run` against a
running server takes at most 3 s on this machine").

Each round starts a new process (no warm imports), exactly as an operator types it:
  metascale scale-down --inventory INV --id N --dry-run      (against the Prefect API ``api_url``)
  metascale status --inventory INV                            (plain core, no Prefect)
and records its wall time and its CPU time (user + sys of the child: less sensitive to other load on the machine).

Used by bench/run_bench.py (`make bench`): ``measure_cli_dry_run(api_url, inventory_path, rounds)``. On its own:
  python -m bench.cli_timing --api-url http://127.0.0.1:4200/api --inventory .lab/inventory.toml --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

TARGET_DRY_RUN_S = 3.0


def metascale_argv() -> list[str]:
    """The `metascale` console script of this venv, else `python -m deployments.cli` (the same entry point)."""
    script = Path(sys.executable).with_name("metascale")
    return [str(script)] if script.exists() else [sys.executable, "-m", "deployments.cli"]


def _time_once(argv: list[str], env: dict[str, str], ok_codes: tuple[int, ...], timeout_s: float) -> tuple[float,
                                                                                                            float]:
    """Run ``argv`` once; return (wall seconds, CPU seconds of the child). Raises RuntimeError on an exit code
    outside ``ok_codes`` (with the tail of its stderr)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout_s,
                            stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode not in ok_codes:
        raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr[-1500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def _summary(values: list[float]) -> dict[str, Any]:
    return {"runs": [round(v, 2) for v in values], "median": round(statistics.median(values), 2),
            "min": round(min(values), 2), "max": round(max(values), 2)}


def measure_cli_dry_run(api_url: str, inventory_path: str, rounds: int = 3, *, node_id: int = 3,
                        timeout_s: float = 180.0) -> dict[str, Any]:
    """Time `metascale scale-down --dry-run` (against ``api_url``) and `metascale status`, ``rounds`` cold runs each.

    ``inventory_path``: the cluster's inventory TOML (e.g. the bench lab's); ``node_id``: the voter the dry run plans
    to remove (nothing is changed). The process environment is the caller's plus PREFECT_API_URL=``api_url``.

    Returns a JSON-able dict:
      ``dry_run_s`` / ``status_s``: wall seconds ({"runs", "median", "min", "max"});
      ``dry_run_cpu_s`` / ``status_cpu_s``: the child's user+sys CPU seconds, same shape;
      ``target_dry_run_s`` (3.0) and ``dry_run_within_target`` (median <= target);
      ``commands`` (the two command lines), ``rounds``, ``load_avg_1m`` before and after.
    Raises: RuntimeError when a run exits with an unexpected code (status may exit 0, 4 or 5).
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1 (got {rounds})")
    env = dict(os.environ, PREFECT_API_URL=api_url)
    base = metascale_argv()
    dry_argv = [*base, "scale-down", "--inventory", inventory_path, "--id", str(node_id), "--dry-run"]
    status_argv = [*base, "status", "--inventory", inventory_path]
    load_before = os.getloadavg()[0]
    dry_wall, dry_cpu, status_wall, status_cpu = [], [], [], []
    for _ in range(rounds):
        wall, cpu = _time_once(dry_argv, env, (0,), timeout_s)
        dry_wall.append(wall)
        dry_cpu.append(cpu)
        wall, cpu = _time_once(status_argv, env, (0, 4, 5), timeout_s)
        status_wall.append(wall)
        status_cpu.append(cpu)
    dry = _summary(dry_wall)
    return {
        "dry_run_s": dry,
        "dry_run_cpu_s": _summary(dry_cpu),
        "status_s": _summary(status_wall),
        "status_cpu_s": _summary(status_cpu),
        "target_dry_run_s": TARGET_DRY_RUN_S,
        "dry_run_within_target": dry["median"] <= TARGET_DRY_RUN_S,
        "commands": {"dry_run": " ".join(["metascale", *dry_argv[len(base):]]),
                     "status": " ".join(["metascale", *status_argv[len(base):]])},
        "rounds": rounds,
        "load_avg_1m": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--api-url", required=True, help="the running Prefect server's API, e.g. "
                                                         "http://127.0.0.1:4200/api")
    parser.add_argument("--inventory", required=True, help="inventory TOML of a running cluster (e.g. the lab's)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--id", type=int, default=3, help="voter the dry run plans to remove")
    args = parser.parse_args(argv)
    print(json.dumps(measure_cli_dry_run(args.api_url, args.inventory, args.rounds, node_id=args.id), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
