"""From trigger to first step: a one-node scale-up triggered through the REST API on `python -m deployments.serve`.

Used by `make bench` (bench/run_bench.py). For one run it records, from the moment the client POSTs
`/deployments/<id>/create_flow_run` (the trigger):
* `first_task_s`: the start of the run's first task run (its first step) — goal ≤ 3 s;
* `finish_s`: when the client sees the run's terminal state (polling every 0.1 s) — goal ≤ 1.5× the same flow run
  in-process;
* the breakdown from the run's state history and task runs (all on the server, one clock): `pending_s` (the runner
  picked the run up: its poll interval), `running_s` (the flow's process started and proposed Running: process
  spawn, imports, the engine's setup), `first_task_s`, `last_task_end_s`, `completed_s` (the Completed state).
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from deployments import rest
from deployments.local_server import start_process

REPO = Path(__file__).resolve().parent.parent
SERVE_MODULE = "deployments.serve"


@contextmanager
def served(api_url: str, log_path: Path, names: tuple[str, ...] = ("scale-up",),
           timeout_s: float = 180) -> Iterator[dict[str, str]]:
    """Run `python -m deployments.serve` (this process's environment: PREFECT_API_URL etc.) until the deployments
    `names` exist, are not paused and its runner has polled for them (status READY); yield name -> deployment id;
    stop it by PID at the end."""
    env = dict(os.environ, PREFECT_API_URL=api_url)
    process = start_process("serve", [sys.executable, "-m", SERVE_MODULE], env=env, log_path=log_path, cwd=REPO)
    try:
        deadline = time.monotonic() + timeout_s
        ids: dict[str, str] = {}
        while len(ids) < len(names):
            if process.popen.poll() is not None:
                raise RuntimeError(f"serve exited with {process.popen.returncode}; log tail:\n{process.log_tail()}")
            for name in names:
                try:
                    deployment = rest.read_deployment(api_url, name, name)
                except rest.PrefectApiError:
                    continue
                if not deployment.get("paused") and deployment.get("status") == "READY":
                    ids[name] = deployment["id"]
            if time.monotonic() > deadline:
                raise TimeoutError(f"deployments {sorted(set(names) - set(ids))} not served within {timeout_s:.0f} s;"
                                   f" log tail:\n{process.log_tail()}")
            time.sleep(0.2)
        yield ids
    finally:
        # a run's process lives on for a moment after its Completed state (it flushes logs and events); stopping
        # serve before it exits makes the runner cancel that run, which then runs its on_cancellation hook
        wait_for_children_to_exit(process.pid, timeout_s=30)
        process.stop()


def wait_for_children_to_exit(pid: int, timeout_s: float) -> None:
    """Wait until serve (process `pid`) runs no flow run any more (or `timeout_s` passed). Its runs are the
    children of its warm forkserver (deployments/serve.py), so: until no child of `pid` has a child of its own (the
    forkserver and the resource tracker themselves stay)."""
    def children(of: int) -> list[int]:
        found: list[int] = []
        for path in Path(f"/proc/{of}/task").glob("*/children"):
            try:
                found += [int(p) for p in path.read_text().split()]
            except OSError:  # the thread ended meanwhile
                continue
        return found

    deadline = time.monotonic() + timeout_s
    while any(children(child) for child in children(pid)) and time.monotonic() < deadline:
        time.sleep(0.2)


def _epoch(stamp: str | None) -> float | None:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() if stamp else None


def _task_runs(api_url: str, flow_run_id: str, wait_s: float = 20) -> list[dict[str, Any]]:
    """The run's task runs, once every one of them has ended (the server records them from events, a moment after
    the run); after `wait_s` whatever is there."""
    deadline = time.monotonic() + wait_s
    while True:
        tasks = rest.request_json("POST", f"{api_url}/task_runs/filter",
                                  {"flow_runs": {"id": {"any_": [flow_run_id]}}, "limit": 200})
        if (tasks and all(t.get("end_time") for t in tasks)) or time.monotonic() > deadline:
            return tasks
        time.sleep(0.3)


def trigger_and_wait(api_url: str, deployment_id: str, parameters: dict[str, Any], *, poll_s: float = 0.1,
                     timeout_s: float = 300) -> dict[str, Any]:
    """Trigger one run of the deployment with `parameters`, wait for its end; return the timings (seconds from the
    trigger; see the module docstring). Raises RuntimeError when the run does not complete."""
    wall0, mono0 = time.time(), time.monotonic()
    run = rest.create_flow_run(api_url, deployment_id, parameters)
    deadline = mono0 + timeout_s
    while rest.state_type(run) not in rest.TERMINAL_STATES:
        if time.monotonic() > deadline:
            raise TimeoutError(f"flow run {run['name']} still {rest.state_type(run)} after {timeout_s:.0f} s")
        time.sleep(poll_s)
        run = rest.read_flow_run(api_url, run["id"])
    finish_s = time.monotonic() - mono0
    if rest.state_type(run) != "COMPLETED":
        raise RuntimeError(f"flow run {run['name']} ended {rest.state_type(run)}: {run['state'].get('message')}")
    states = rest.request_json("GET", f"{api_url}/flow_run_states/?flow_run_id={run['id']}")
    first: dict[str, float] = {}
    history = []
    for state in sorted(states, key=lambda s: s["timestamp"]):
        first.setdefault(state["type"], _epoch(state["timestamp"]) - wall0)
        history.append(f"{_epoch(state['timestamp']) - wall0:.2f} {state['name']}")
    return {"flow_run_id": run["id"], "finish_s": finish_s, "pending_s": first.get("PENDING"),
            "running_s": first.get("RUNNING"), "completed_s": first.get("COMPLETED"),
            **task_span(api_url, run["id"], wall0), "states": history}


def task_span(api_url: str, flow_run_id: str, wall0: float) -> dict[str, Any]:
    """When the run's first task run started and its last one ended, in seconds from the epoch time `wall0`, the
    first task's name and how many task runs there were."""
    tasks = [t for t in _task_runs(api_url, flow_run_id) if t.get("start_time")]
    starts = sorted((_epoch(t["start_time"]) - wall0, t["name"]) for t in tasks)
    ends = [_epoch(t["end_time"]) - wall0 for t in tasks if t.get("end_time")]
    return {"first_task_s": starts[0][0] if starts else None, "first_task": starts[0][1] if starts else None,
            "last_task_end_s": max(ends) if ends else None, "task_runs": len(tasks)}


# ---------------------------------------------------------------------------------------------- the bench's part
def api_rounds(lab: Any, rounds: int, work: Path, api_url: str, host: str,
               run_in_process: Callable[[str], dict[str, Any]], log: Callable[[str], None]) -> list[dict[str, Any]]:
    """`rounds` rounds, each: a scale-up of `host` through the API on a served deployment and the same flow called
    in-process by `run_in_process(inventory path)` (which side goes first alternates), each on a reset lab."""
    inventory = work / "inventory.toml"

    def fresh() -> str:
        lab.reset()
        shutil.copyfile(lab.inventory, inventory)
        return str(inventory)

    rows: list[dict[str, Any]] = []
    with served(api_url, work / "serve.log") as ids:
        for index in range(rounds):
            row: dict[str, Any] = {}

            def in_process() -> None:
                path = fresh()
                wall0 = time.time()
                run = run_in_process(path)
                row["in_process"] = {**run, **task_span(api_url, run["flow_run_id"], wall0)}

            def via_api() -> None:
                row["api"] = trigger_and_wait(api_url, ids["scale-up"], {
                    "inventory": fresh(), "new_nodes": [{"host": host}], "require_approval": False})

            for side in ((via_api, in_process) if index % 2 == 0 else (in_process, via_api)):
                side()
            rows.append(row)
            log(f"api round {index + 1}: " + ", ".join(f"{key}={value:.2f}" for key, value in row["api"].items()
                                                       if isinstance(value, float))
                + f"; in-process {row['in_process']['s']:.2f} s (first task {row['in_process']['first_task_s']:.2f})")
    return rows


def cold_import(rounds: int) -> dict[str, float]:
    """Median wall and CPU seconds of a fresh interpreter importing what a run's process would import before its
    first step without serve's warm process (`python -m prefect.engine`): Prefect's engine and the flow module."""
    walls, cpus = [], []
    for _ in range(rounds):
        before, started = os.times(), time.monotonic()
        subprocess.run([sys.executable, "-c", "import prefect.engine, prefect.flow_engine, flows.scale_up"], cwd=REPO,
                       check=True, timeout=300)
        after = os.times()
        walls.append(time.monotonic() - started)
        cpus.append(after.children_user - before.children_user + after.children_system - before.children_system)
    return {"wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus)}


def measure_cli(api_url: str, inventory_path: str, rounds: int, log: Callable[[str], None]) -> dict[str, Any]:
    """`metascale scale-down --dry-run` against the running server, cold, from a new process each round
    (bench/cli_timing.py: `measure_cli_dry_run(api_url, inventory_path, rounds)`)."""
    from bench import cli_timing

    log(f"timing `metascale scale-down --dry-run` against {api_url}, {rounds} cold runs")
    return dict(cli_timing.measure_cli_dry_run(api_url, inventory_path, rounds))


def summarize_api(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the API runs' timings and of the in-process runs, and the ratio of the medians (API / in-process)."""
    def med(side: str, key: str) -> float:
        return statistics.median(r[side][key] for r in rows)

    out = {f"api_{key}": med("api", key) for key in (
        "pending_s", "running_s", "first_task_s", "last_task_end_s", "completed_s", "finish_s")}
    out.update(inproc_s=med("in_process", "s"), inproc_first_task_s=med("in_process", "first_task_s"),
               inproc_last_task_end_s=med("in_process", "last_task_end_s"))
    out["ratio_finish"] = out["api_finish_s"] / out["inproc_s"]
    return out


def api_section(api: dict[str, Any] | None, verdict: Callable[[bool], str]) -> list[str]:
    """The "From trigger to first step" tables for BENCHMARKS.md (bench/results.json's "api"), if measured."""
    if not api:
        return []
    s, rounds = api["summary"], len(api["rounds"])
    lines = [
        "",
        "From trigger to first step (issue #11): a one-node scale-up 3→4 (spare1) triggered through the REST API",
        "(`POST /deployments/<id>/create_flow_run` with `require_approval: false`) on `python -m deployments.serve`,",
        "against the same flow called in-process (a warm process, as above) "
        f"(`{api['command']}` on {api['when']} UTC, load avg {api['load1']:.1f};",
        f"{rounds} round{'s' if rounds != 1 else ''}, medians; each run on a reset lab, which side goes first "
        f"alternates; serve: {api.get('serve', 'runner poll every 0.5 s (--poll-s)')}).",
        "",
        "| measure | through the API (served) | in-process | goal | |",
        "|---|---|---|---|---|",
        f"| trigger → first task run starts | {s['api_first_task_s']:.2f} s | {s['inproc_first_task_s']:.2f} s | "
        f"≤ 3 s | {verdict(s['api_first_task_s'] <= 3)} |",
        f"| trigger → finished | {s['api_finish_s']:.2f} s | {s['inproc_s']:.2f} s | ≤ 1.5 × in-process "
        f"(here {s['ratio_finish']:.2f} ×) | {verdict(s['ratio_finish'] <= 1.5)} |",
        "",
        "Where the API run's time goes (seconds after the trigger; the run's state history and task runs as the "
        "server recorded them):",
        "",
        "| runner picked it up (Pending) | flow process running (Running) | first task starts | last task ends | "
        "Completed | client sees it |",
        "|---|---|---|---|---|---|",
        f"| {s['api_pending_s']:.2f} | {s['api_running_s']:.2f} | {s['api_first_task_s']:.2f} | "
        f"{s['api_last_task_end_s']:.2f} | {s['api_completed_s']:.2f} | {s['api_finish_s']:.2f} |",
    ]
    cold = api.get("cold_import")
    if cold:
        lines += ["", f"Why the served run starts quickly: serve starts each run as a fork of a warm process that "
                  f"imported Prefect's engine and the flows once (deployments/serve.py, `warm_start`). Prefect's "
                  f"default, a fresh `python -m prefect.engine` per run, would first pay the imports: "
                  f"{cold['wall_s']:.2f} s here ({cold['cpu_s']:.2f} s of CPU; median of {rounds}, "
                  f"`python -c 'import prefect.engine, prefect.flow_engine, flows.scale_up'`)."]
    return lines + cli_section(api.get("cli"), verdict)


def cli_section(cli: dict[str, Any] | None, verdict: Callable[[bool], str]) -> list[str]:
    """The `metascale` command's table (bench/cli_timing.py figures), if measured."""
    if not cli:
        return []
    try:
        dry, dry_cpu, status, status_cpu = (cli[key] for key in ("dry_run_s", "dry_run_cpu_s", "status_s",
                                                                 "status_cpu_s"))
        target = float(cli["target_dry_run_s"])
        commands = {key: re.sub(r"--inventory \S+", "--inventory <bench lab>/inventory.toml", line)
                    for key, line in cli["commands"].items()}
        return [
            "",
            f"The `metascale` command from a fresh shell, against the same server (bench/cli_timing.py; {cli['rounds']} "
            "runs each, medians; CPU = the process's user + sys):",
            "",
            "| command | wall | CPU | goal | |",
            "|---|---|---|---|---|",
            f"| `{commands['dry_run']}` | {dry['median']:.2f} s ({dry['min']:.2f}–{dry['max']:.2f}) | "
            f"{dry_cpu['median']:.2f} s | ≤ {target:g} s | {verdict(dry['median'] <= target)} |",
            f"| `{commands['status']}` (no Prefect) | {status['median']:.2f} s ({status['min']:.2f}–{status['max']:.2f})"
            f" | {status_cpu['median']:.2f} s | | |",
            "",
            "Where the dry run's time goes: Python and the Prefect import (the cold import "
            "above), then the flow run itself (creating the run, reading the cluster over SSH, publishing the plan). "
            "Two things it no longer pays: waiting for Prefect's heartbeat thread at the end of the run (it sleeps "
            "in 1 s steps and the sync engine joins it: 0.5-0.9 s; `deployments.cli.stop_heartbeats_without_waiting`) "
            "and the cluster lock (a dry run changes nothing and takes none, `flows.common.plan_only`).",
        ]
    except (KeyError, TypeError, ValueError):  # another shape than expected: show what there is
        return ["", f"`metascale scale-down --dry-run` against the same server (bench/cli_timing.py): {cli}"]
