"""`make bench`: the scale flows against the bare runbook script (bench/runbook.sh), on the same lab, alternated.

Measures (median of ROUNDS rounds; every figure also kept raw in bench/results.json):
* wall time of scale-up 3→4 and scale-down 4→3, flow vs script, and the ratio flow/script (goal ≤ 1.25);
* SSH handshakes per flow run, per host touched (goal: one per host);
* verification latency: the new node's log line "joined cluster via …" (the moment the cluster took it) to the
  moment `verify_node_joined` (flow) or the script's poll noticed it (goal < 300 ms median);
* `[meta] endpoints` update on 1, 5 and 10 query hosts (a second lab with 10 query hosts): ratio 10/1 (goal ≤ 2);
* replace-node (issue #12) against a scale-up and a scale-down reaching the same end state, for a live node (meta-2
  onto spare2) and a dead one (meta3 powered off, onto spare1), each scenario on a reset lab;
* from trigger to first step (issue #11, bench/api_trigger.py): a scale-up 3→4 triggered through the REST API on
  `python -m deployments.serve` against the same flow in-process: trigger → first task run (goal ≤ 3 s), trigger →
  finish (goal ≤ 1.5× in-process), and where the time goes; plus `metascale scale-down --dry-run` against the server
  (bench/cli_timing.py).
Writes BENCHMARKS.md (tables + the command) and bench/results.json. A part not measured this time (`--only`) keeps
its figures from bench/results.json. Brings up its own labs (prefix MSBENCH_PREFIX, default `msb`; directories
MSBENCH_DIR, default .lab-bench, and .lab-bench-q) and its own Prefect server, and takes all of them down.

Usage: python -m bench.run_bench [--rounds N] [--only scale|endpoints|replace|api ...] [--skip-endpoints] [--report-only]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.api_trigger import api_section

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "runbook.sh"
RESULTS = REPO / "bench" / "results.json"
KV_RESULTS = REPO / "bench" / "kv-under-load.json"
HISTORY = REPO / "bench" / "history.jsonl"   # one line per `make bench` run: when, load, the headline ratios
REPORT = REPO / "BENCHMARKS.md"
PREFIX = os.environ.get("MSBENCH_PREFIX", "msb")
LAB_DIR = os.environ.get("MSBENCH_DIR", str(REPO / ".lab-bench"))
SPARE = ("spare1", "127.100.0.14", 4)   # name, address, id it gets
PARTS = ("scale", "endpoints", "replace", "api")
JOINED_RE = re.compile(r"^(\S+)\s+INFO databend-meta: joined cluster via", re.M)


def log(message: str) -> None:
    """Print a progress line with the time."""
    print(f"[bench {datetime.now():%H:%M:%S}] {message}", flush=True)


# ---------------------------------------------------------------------------------------------- Prefect server
@contextmanager
def prefect_server() -> Iterator[str]:
    """Start a private Prefect server (temporary home), point this process at it, stop it by PID at the end."""
    from deployments.local_server import QUIET_PREFECT_ENV, migrated_template_db, start_prefect_server

    home = Path(tempfile.mkdtemp(prefix="metascale-bench-prefect-"))
    for key, value in QUIET_PREFECT_ENV.items():
        os.environ.setdefault(key, value)
    os.environ["PREFECT_HOME"] = str(home / "client-home")
    os.environ["PREFECT_SERVER_ALLOW_EPHEMERAL_MODE"] = "false"
    process, api_url = start_prefect_server(home / "server-home",
                                            template_db=migrated_template_db(REPO / ".prefect" / "test-db"))
    os.environ["PREFECT_API_URL"] = api_url
    try:
        yield api_url
    finally:
        try:
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=10)
        except Exception:  # draining is best effort; the server goes anyway
            pass
        process.stop()
        shutil.rmtree(home, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- instrumentation
class Probe:
    """Records, per flow run, the SSH handshakes of the run's pool and when verify_node_joined returned."""

    def __init__(self) -> None:
        self.handshakes: list[dict[str, int]] = []
        self.noticed: list[float] = []
        self.connects: list[tuple[str, float, float, bool]] = []   # host, started, ended (epoch s), connected

    def install(self) -> None:
        """Wrap SshPool.close (to read `handshakes` before the pool goes), SshPool._open_client (when each connect
        attempt started and ended, and whether it connected) and the verify-node-joined task."""
        from prefect import task

        from metascale.remote import SshPool
        from tasks import runbook as rb

        original_close = SshPool.close
        probe = self

        def close(pool: SshPool) -> None:
            if pool.handshakes and not getattr(pool, "_bench_seen", False):
                probe.handshakes.append(dict(pool.handshakes))
                pool._bench_seen = True  # type: ignore[attr-defined]
            original_close(pool)

        SshPool.close = close  # type: ignore[method-assign]
        original_open = SshPool._open_client

        def open_client(pool: SshPool, target: Any) -> Any:
            started = time.time()
            try:
                client = original_open(pool, target)
            except Exception:
                probe.connects.append((target.host, started, time.time(), False))
                raise
            probe.connects.append((target.host, started, time.time(), True))
            return client

        SshPool._open_client = open_client  # type: ignore[method-assign]
        original_verify = rb.verify_node_joined

        @task(name="verify-node-joined", task_run_name="wait until meta-{node.node_id} is a voter")
        def verify_node_joined(inventory: Any, node: Any, deadline_s: float) -> Any:
            result = original_verify.fn(inventory, node, deadline_s)
            probe.noticed.append(time.time())
            return result

        rb.verify_node_joined = verify_node_joined


def joined_at(lab: Any, name: str) -> float:
    """Epoch seconds of the last "joined cluster via" line in `name`'s databend-meta log."""
    text = lab.root_exec(name, ["sh", "-c", "cat /var/log/databend/*.log"], check=False).stdout
    stamps = JOINED_RE.findall(text)
    if not stamps:
        raise RuntimeError(f"{name}: no 'joined cluster via' line in /var/log/databend")
    return datetime.strptime(stamps[-1], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


# ---------------------------------------------------------------------------------------------- one measurement
def timed(fn: Callable[[], Any]) -> float:
    """Run fn; return its wall time in seconds."""
    started = time.monotonic()
    fn()
    return time.monotonic() - started


def run_script(lab: Any, action: str, host: str, node_id: int, metas: list[str], events: Path,
               counts: Path) -> None:
    """Run bench/runbook.sh; raise with its stderr when it fails."""
    env = dict(os.environ, SSH_COUNT_FILE=str(counts), BENCH_EVENTS=str(events))
    proc = subprocess.run([str(SCRIPT), str(lab.ssh_config), action, host, str(node_id), " ".join(metas),
                           "query1 query2"], env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"runbook.sh {action} {host} failed ({proc.returncode}): {proc.stderr[-2000:]}")


def last_event(events: Path, what: str) -> float:
    """Epoch seconds of the script's last 'noticed <what>' event."""
    found = [float(line.split()[-1]) for line in events.read_text().splitlines() if line.startswith(f"noticed {what}")]
    if not found:
        raise RuntimeError(f"runbook.sh recorded no 'noticed {what}' event in {events}")
    return found[-1]


def warm_up(lab: Any, work: Path) -> None:
    """One dry run of each flow first: imports and the Prefect client warm up as in a long-running worker."""
    from flows.scale_down import scale_down
    from flows.scale_up import scale_up

    inventory = work / "inventory.toml"
    shutil.copyfile(lab.inventory, inventory)
    scale_up(new_nodes=[{"host": SPARE[1]}], inventory=str(inventory), dry_run=True)
    scale_down(node_ids=[3], inventory=str(inventory), dry_run=True)


def one_round(lab: Any, probe: Probe, flow_first: bool, work: Path) -> dict[str, Any]:
    """Scale-up then scale-down with the flows and with the script (order alternates); the lab is reset first."""
    from flows.scale_down import scale_down
    from flows.scale_up import scale_up

    name, address, node_id = SPARE
    row: dict[str, Any] = {}

    def flows() -> None:
        inventory = work / "inventory.toml"
        shutil.copyfile(lab.inventory, inventory)
        row["flow_up_s"] = timed(lambda: scale_up(new_nodes=[{"host": address}], inventory=str(inventory),
                                                  require_approval=False))
        row["flow_up_latency_s"] = probe.noticed[-1] - joined_at(lab, name)
        row["flow_up_handshakes"] = probe.handshakes[-1]
        row["flow_down_s"] = timed(lambda: scale_down(node_ids=[node_id], inventory=str(inventory),
                                                      require_approval=False))
        row["flow_down_handshakes"] = probe.handshakes[-1]

    def script() -> None:
        events, counts = work / "events", work / "ssh-calls"
        for path in (events, counts):
            path.write_text("")
        row["script_up_s"] = timed(lambda: run_script(lab, "up", name, node_id, ["meta1", "meta2", "meta3"],
                                                      events, counts))
        row["script_up_latency_s"] = last_event(events, f"meta-{node_id} is a voter") - joined_at(lab, name)
        row["script_up_ssh_calls"] = len(counts.read_text().split())
        counts.write_text("")
        row["script_down_s"] = timed(lambda: run_script(lab, "down", name, node_id,
                                                        ["meta1", "meta2", "meta3", name], events, counts))
        row["script_down_ssh_calls"] = len(counts.read_text().split())

    for part in ((flows, script) if flow_first else (script, flows)):
        lab.reset()
        part()
    return row


# ---------------------------------------------------------------------------------------------- endpoints
def endpoint_rounds(rounds: int) -> dict[str, list[float]]:
    """On a lab with 10 query hosts: time the flow's endpoint step over 1, 5 and 10 query hosts (fresh pool each)."""
    from prefect import flow, unmapped

    from metascale.inventory import load_inventory
    from sandbox.lab import Lab
    from tasks import runbook as rb
    from tasks.pool import run_pool

    connects: list[float] = []

    @flow(name="bench-query-endpoints")
    def update_endpoints(inventory_path: str, count: int, endpoints: list[str]) -> float:
        cluster = load_inventory(inventory_path)
        queries = list(cluster.query_nodes)[:count]
        with run_pool(cluster) as pool:
            started = time.monotonic()
            results = rb.update_query_meta_endpoints.map(unmapped(cluster), queries, unmapped(endpoints)).result()
            elapsed = time.monotonic() - started
            for seconds in pool.connect_seconds.values():
                connects.extend(seconds)
        assert all(r.changed for r in results), "every query host should have changed"
        return elapsed

    lab = Lab(str(REPO / ".lab-bench-q"), f"{PREFIX}q")
    if lab.is_up():
        lab.down()
    log("bringing up the query lab (1 meta, 10 query)")
    lab.up(meta=1, spare=0, query=10)
    out: dict[str, list[float]] = {"1": [], "5": [], "10": []}
    try:
        for index in range(rounds):
            for count in (1, 5, 10):
                endpoints = [f"127.100.0.11:{9191 + index * 3 + (count % 7)}"]  # a new value every time
                out[str(count)].append(update_endpoints(str(lab.inventory), count, endpoints))
                log(f"endpoints on {count} query hosts: {out[str(count)][-1]:.2f} s")
    finally:
        lab.down()
    out["connect_s"] = connects
    return out


# ---------------------------------------------------------------------------------------------- replace-node
LIVE_ID, DEAD_ID, DEAD_HOST = 2, 3, "meta3"
REPLACE_CASES = {  # case -> (key of the replace run, keys of the two runs it is compared with, in their order)
    "live": ("live_replace", ("live_up", "live_down")),
    "dead": ("dead_replace", ("dead_down", "dead_up")),
}


def covered(intervals: list[tuple[float, float]]) -> float:
    """Seconds covered by the union of the (start, end) intervals."""
    total, reached = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reached:
            total += end - max(start, reached)
            reached = end
    return total


def run_flow(fn: Any, probe: Probe, watch_host: str | None = None, **params: Any) -> dict[str, Any]:
    """Run one flow in-process and fail unless it completed. Returns its wall time, the outcome's time from the
    start of the changes to the end (`changes_s`) and of that the time spent waiting on the cluster, the voters
    after, the flow run id, and with ``watch_host`` the failed SSH connect attempts to that host during the run:
    how many, and the wall time during which at least one of them was pending."""
    seen = len(probe.connects)
    started = time.monotonic()
    state = fn(**params, return_state=True)
    wall = time.monotonic() - started
    if not state.is_completed():
        raise RuntimeError(f"{fn.name} {params}: {state.type.value}: {state.message}")
    outcome = state.result()
    row: dict[str, Any] = {"s": wall, "changes_s": outcome.elapsed_s, "waited_s": outcome.waited_s,
                           "voters_after": outcome.voters_after, "flow_run_id": str(state.state_details.flow_run_id)}
    if watch_host:
        failed = [(start, end) for host, start, end, ok in probe.connects[seen:] if host == watch_host and not ok]
        row["dead_connects"] = len(failed)
        row["dead_connect_wall_s"] = covered(failed)
    return row


def warm_up_replace(lab: Any, work: Path) -> None:
    """One dry run of replace-node (the scale flows are warmed up by warm_up)."""
    from flows.replace_node import replace_node

    inventory = work / "inventory.toml"
    shutil.copyfile(lab.inventory, inventory)
    replace_node(node_id=LIVE_ID, new_host=lab.host("spare2").ip, inventory=str(inventory), dry_run=True)


def replace_round(lab: Any, probe: Probe, replace_first: bool, work: Path) -> dict[str, Any]:
    """One round: for the live case (meta-2 onto spare2) and the dead case (meta3 powered off, onto spare1), the
    replace-node run and the two scale runs reaching the same end state, each side on a reset lab (which side goes
    first alternates). Dead case: meta3 is powered off after the reset and booted again after the run(s)."""
    from flows.replace_node import replace_node
    from flows.scale_down import scale_down
    from flows.scale_up import scale_up

    spare1, spare2, dead_ip = lab.host("spare1").ip, lab.host("spare2").ip, lab.host(DEAD_HOST).ip
    inventory = work / "inventory.toml"
    row: dict[str, Any] = {}

    def reset() -> str:
        lab.reset()
        shutil.copyfile(lab.inventory, inventory)
        return str(inventory)

    def live_replace() -> None:
        row["live_replace"] = run_flow(replace_node, probe, node_id=LIVE_ID, new_host=spare2, inventory=reset(),
                                       require_approval=False)

    def live_pair() -> None:
        path = reset()
        row["live_up"] = run_flow(scale_up, probe, new_nodes=[{"host": spare2}], inventory=path,
                                  require_approval=False)
        row["live_down"] = run_flow(scale_down, probe, node_ids=[LIVE_ID], inventory=path, require_approval=False)

    def dead_replace() -> None:
        path = reset()
        lab.stop_host(DEAD_HOST)
        try:
            row["dead_replace"] = run_flow(replace_node, probe, dead_ip, node_id=DEAD_ID, inventory=path,
                                           require_approval=False)
        finally:
            lab.start_host(DEAD_HOST)

    def dead_pair() -> None:
        path = reset()
        lab.stop_host(DEAD_HOST)
        try:
            # 3 voters -> 2 that tolerate no failure: the two-run way must accept that window explicitly
            row["dead_down"] = run_flow(scale_down, probe, dead_ip, node_ids=[DEAD_ID], force=True, inventory=path,
                                        accept_no_fault_tolerance=True, require_approval=False)
            row["dead_up"] = run_flow(scale_up, probe, dead_ip, new_nodes=[{"host": spare1}], inventory=path,
                                      require_approval=False)
        finally:
            lab.start_host(DEAD_HOST)

    for replace, pair in ((live_replace, live_pair), (dead_replace, dead_pair)):
        for part in ((replace, pair) if replace_first else (pair, replace)):
            part()
    for key, expected in (("live_replace", [1, 3, 4]), ("live_down", [1, 3, 4]), ("dead_replace", [1, 2, 4]),
                          ("dead_up", [1, 2, 4])):
        if row[key]["voters_after"] != expected:
            raise RuntimeError(f"{key}: voters after {row[key]['voters_after']}, expected {expected}")
    return row


def attach_timelines(rows: list[dict[str, Any]], wait_s: float = 30) -> None:
    """Add each run's task runs as "<start offset from the flow run's start> <duration> <name>" (seconds, in the
    order they started), read from the bench's Prefect server; waits up to ``wait_s`` until every task run has ended
    (the server records task run states from events, a moment after the run)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    runs = [run for row in rows for run in row.values() if isinstance(run, dict) and "flow_run_id" in run]
    deadline = time.monotonic() + wait_s
    with get_client(sync_client=True) as client:
        for run in runs:
            while True:
                flow_run = client.read_flow_run(run["flow_run_id"])
                tasks = client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])), limit=200)
                if all(t.end_time for t in tasks) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            if flow_run.start_time is None:
                continue
            ended = sorted((t for t in tasks if t.start_time and t.end_time), key=lambda t: t.start_time)
            run["tasks"] = [f"{(t.start_time - flow_run.start_time).total_seconds():.2f} "
                            f"{(t.end_time - t.start_time).total_seconds():.2f} {t.name}" for t in ended]


def replace_part(lab: Any, probe: Probe, rounds: int, work: Path) -> list[dict[str, Any]]:
    """The replace-node rounds (the lab is up, the scale flows warmed up); each round's raw figures."""
    warm_up_replace(lab, work)
    rows: list[dict[str, Any]] = []
    for index in range(rounds):
        rows.append(replace_round(lab, probe, replace_first=index % 2 == 0, work=work))
        log(f"replace round {index + 1}: " + ", ".join(f"{key}={run['s']:.2f}" for key, run in rows[-1].items()))
    attach_timelines(rows)
    return rows


def slow_tasks(runs: list[dict[str, Any]], limit_s: float) -> list[str]:
    """Names of the task runs that took at least 90 % of ``limit_s`` in any of ``runs``, in the order they start."""
    first: dict[str, float] = {}
    for run in runs:
        for line in run.get("tasks", []):
            start, duration, name = line.split(" ", 2)
            if float(duration) >= 0.9 * limit_s:
                first[name] = min(float(start), first.get(name, float(start)))
    return sorted(first, key=first.__getitem__)


def summarize_replace(rows: list[dict[str, Any]], connect_timeout_s: float) -> dict[str, Any]:
    """Medians per case: the replace run, each of the two scale runs and their sum (per round), the ratio, the time
    outside the changes (reading, planning, the lock, publishing); for the dead case the failed connects to the dead
    host and the task runs that waited out a connect timeout."""
    out: dict[str, Any] = {}
    for case, (replace, pair) in REPLACE_CASES.items():
        out[f"{case}_replace_s"] = median([r[replace]["s"] for r in rows])
        out[f"{case}_sum_s"] = median([sum(r[key]["s"] for key in pair) for r in rows])
        for key in pair:
            out[f"{key}_s"] = median([r[key]["s"] for r in rows])
        out[f"{case}_ratio"] = out[f"{case}_replace_s"] / out[f"{case}_sum_s"]
        out[f"{case}_replace_outside_s"] = median([r[replace]["s"] - r[replace]["changes_s"] for r in rows])
        out[f"{case}_sum_outside_s"] = median([sum(r[key]["s"] - r[key]["changes_s"] for key in pair) for r in rows])
    for key in ("dead_replace", "dead_down", "dead_up"):
        out[f"{key}_connects"] = median([r[key]["dead_connects"] for r in rows])
        out[f"{key}_connect_wall_s"] = median([r[key]["dead_connect_wall_s"] for r in rows])
        out[f"{key}_slow_tasks"] = slow_tasks([r[key] for r in rows], connect_timeout_s)
    return out


# ---------------------------------------------------------------------------------------------- trigger → first step
def serve_settings() -> str:
    """How `python -m deployments.serve` picks up and starts runs (for the report): its runner settings."""
    from deployments import serve

    describe = getattr(serve, "describe_runner_settings", None)
    return describe() if describe else "runner poll every 1 s (PREFECT_RUNNER_POLL_FREQUENCY)"


def api_part(lab: Any, probe: Probe, rounds: int, work: Path) -> dict[str, Any]:
    """The trigger-to-first-step rounds (bench/api_trigger.py) on the bench's lab and server, a fresh interpreter's
    imports, then the CLI dry run against the same server. Returns {"rounds", "cold_import", "cli"}."""
    from bench.api_trigger import api_rounds, cold_import, measure_cli
    from flows.scale_up import scale_up

    api_url = os.environ["PREFECT_API_URL"]
    address = SPARE[1]
    rows = api_rounds(lab, rounds, work, api_url, address, log=log, run_in_process=lambda path: run_flow(
        scale_up, probe, new_nodes=[{"host": address}], inventory=path, require_approval=False))
    cold = cold_import(rounds)
    log(f"a fresh interpreter's imports: {cold['wall_s']:.2f} s ({cold['cpu_s']:.2f} s CPU)")
    lab.reset()
    inventory = work / "inventory.toml"
    shutil.copyfile(lab.inventory, inventory)
    return {"rounds": rows, "cold_import": cold, "cli": measure_cli(api_url, str(inventory), rounds, log)}


# ---------------------------------------------------------------------------------------------- report
def median(values: list[float]) -> float:
    """The median of values."""
    return statistics.median(values)


def summarize(rows: list[dict[str, Any]], endpoints: dict[str, list[float]] | None) -> dict[str, Any]:
    """Medians, ratios and handshake counts from the raw rounds."""
    col = lambda key: [r[key] for r in rows]  # noqa: E731
    summary: dict[str, Any] = {key: median(col(key)) for key in (
        "flow_up_s", "script_up_s", "flow_down_s", "script_down_s", "flow_up_latency_s", "script_up_latency_s",
        "script_up_ssh_calls", "script_down_ssh_calls")}
    summary["ratio_up"] = summary["flow_up_s"] / summary["script_up_s"]
    summary["ratio_down"] = summary["flow_down_s"] / summary["script_down_s"]
    summary["ratio_total"] = (median([r["flow_up_s"] + r["flow_down_s"] for r in rows])
                              / median([r["script_up_s"] + r["script_down_s"] for r in rows]))
    summary["max_handshakes_per_host"] = max(max(r[k].values()) for r in rows
                                             for k in ("flow_up_handshakes", "flow_down_handshakes"))
    summary["hosts_up"] = median([len(r["flow_up_handshakes"]) for r in rows])
    summary["hosts_down"] = median([len(r["flow_down_handshakes"]) for r in rows])
    summary["handshakes_up"] = median([sum(r["flow_up_handshakes"].values()) for r in rows])
    summary["handshakes_down"] = median([sum(r["flow_down_handshakes"].values()) for r in rows])
    if endpoints:
        for count, values in endpoints.items():
            summary[f"endpoints_{count}_s"] = median(values) if values else 0.0
        summary["ratio_endpoints_10_1"] = summary["endpoints_10_s"] / summary["endpoints_1_s"]
    return summary


def verdict(ok: bool) -> str:
    """'met' or 'NOT met'."""
    return "met" if ok else "**NOT met**"


def write_report(summary: dict[str, Any], rounds: int, command: str, when: str | None = None,
                 replace: dict[str, Any] | None = None, endpoints_when: str | None = None,
                 api: dict[str, Any] | None = None) -> None:
    """Write BENCHMARKS.md from the summary (``when``: the UTC time of the measurement, default now), the
    replace-node figures (``replace``: bench/results.json's "replace") and when the endpoint figures were taken
    (``endpoints_when``, if not with the rest)."""
    s = summary
    when = when or f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M}"
    lines = [
        "# Benchmarks",
        "",
        f"Produced by `{command}` on {when} UTC "
        f"(Debian 12, {os.cpu_count()} cores, shared with other work). {rounds} rounds; each round resets the lab",
        "and runs scale-up 3→4 (spare1 joins as meta-4) then scale-down 4→3 once with the Prefect flows",
        "(`flows.scale_up` / `flows.scale_down`, called in-process against a local Prefect server) and once with",
        "`bench/runbook.sh` (the runbook's commands over `ssh -F <lab>/ssh_config`, same verification polling:",
        "0.05 s doubling to 0.2 s); the order alternates between rounds. One dry run of each flow warms the process up",
        "first (a served deployment is a long-running process). Medians; raw figures in `bench/results.json`.",
        "",
        "| measure | flow | script | ratio flow/script | goal | |",
        "|---|---|---|---|---|---|",
        f"| scale-up 3→4 wall time | {s['flow_up_s']:.2f} s | {s['script_up_s']:.2f} s | {s['ratio_up']:.2f} | "
        f"≤ 1.25 | {verdict(s['ratio_up'] <= 1.25)} |",
        f"| scale-down 4→3 wall time | {s['flow_down_s']:.2f} s | {s['script_down_s']:.2f} s | "
        f"{s['ratio_down']:.2f} | ≤ 1.25 | {verdict(s['ratio_down'] <= 1.25)} |",
        f"| up + down | | | {s['ratio_total']:.2f} | ≤ 1.25 | {verdict(s['ratio_total'] <= 1.25)} |",
        f"| SSH handshakes, scale-up | {s['handshakes_up']:.0f} for {s['hosts_up']:.0f} hosts | "
        f"{s['script_up_ssh_calls']:.0f} ssh calls | | 1 per host touched | "
        f"{verdict(s['max_handshakes_per_host'] <= 1)} |",
        f"| SSH handshakes, scale-down | {s['handshakes_down']:.0f} for {s['hosts_down']:.0f} hosts | "
        f"{s['script_down_ssh_calls']:.0f} ssh calls | | 1 per host touched | "
        f"{verdict(s['max_handshakes_per_host'] <= 1)} |",
        f"| verification latency (joined → noticed) | {s['flow_up_latency_s'] * 1000:.0f} ms | "
        f"{s['script_up_latency_s'] * 1000:.0f} ms | | < 300 ms (flow) | "
        f"{verdict(s['flow_up_latency_s'] < 0.3)} |",
    ]
    if "ratio_endpoints_10_1" in s:
        lines += [
            "",
            "`[meta] endpoints` update (the flow's `update_query_meta_endpoints` tasks, mapped in parallel, fresh SSH",
            "pool each time so the handshakes are included), on a second lab with 1 meta and 10 query hosts"
            + (f" (measured {endpoints_when} UTC)" if endpoints_when and endpoints_when != when else "") + ":",
            "",
            "| query hosts | 1 | 5 | 10 | ratio 10/1 | goal | |",
            "|---|---|---|---|---|---|---|",
            f"| wall time | {s['endpoints_1_s']:.2f} s | {s['endpoints_5_s']:.2f} s | {s['endpoints_10_s']:.2f} s | "
            f"{s['ratio_endpoints_10_1']:.2f} | ≤ 2 | {verdict(s['ratio_endpoints_10_1'] <= 2)} |",
        ]
    lines += replace_section(replace)
    lines += api_section(api, verdict)
    lines += kv_section()
    lines += [
        "",
        "How the figures are taken: wall times around the flow call / the script process. Handshakes: "
        "`SshPool.handshakes`",
        "read when the run's pool closes (every host the run touched, reconnects included); the script opens one SSH",
        "connection per command. Verification latency: from the timestamp of the new node's log line `joined cluster",
        "via …` (written when its join is committed) to the return of `verify_node_joined` (flow) or of the",
        "script's poll; all hosts share one clock.",
        "",
        "Reading the figures:",
        "",
        ("* The flows beat the script: the script pays one SSH handshake per command and edits hosts one after the"
         if s["ratio_total"] < 1 else
         "* The flows stay close to the script although every flow and task run is recorded through the Prefect API:"),
        ("  other, the flows keep one connection per host and map the per-host edits in parallel."
         if s["ratio_total"] < 1 else
         "  the script pays one SSH handshake per command, the flows keep one connection per host and map the"
         " per-host edits in parallel."),
        "  The figures move with the machine's load (other labs share the 2 cores): see the history below.",
        "* Verification latency: either the first poll after the start already sees the voter, or it lands in a",
        "  back-off gap (`metascale.waits`: 0.05 → 0.2 s; one poll reads every node's status over SSH). A value can",
        "  be slightly negative: the leader lists the new voter a moment before the joiner writes its log line.",
        "* The endpoint update is dominated by connecting: each new connection is a paramiko key exchange"
        + (f" (median {s['endpoints_connect_s_s']:.2f} s per connection here)" if s.get("endpoints_connect_s_s")
           else "") + ",",
        "  and 10 of them in parallel share 2 cores; the edits are one read and one atomic write per host.",
        "",
    ]
    lines += history_section()
    REPORT.write_text("\n".join(lines))


def history_section() -> list[str]:
    """Tables of every recorded `make bench` run (bench/history.jsonl): the scale part, then replace-node."""
    if not HISTORY.exists():
        return []
    rows = [json.loads(line) for line in HISTORY.read_text().splitlines() if line.strip()]
    load = lambda r: f"{r['load1']:.1f}" if r.get("load1") is not None else r.get("load_note", "-")  # noqa: E731
    out = ["History (`bench/history.jsonl`, one line per run):", "",
           "| when (UTC) | load avg (1 min) | rounds | flow/script up+down | latency median | endpoints 10/1 |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("part", "scale") == "scale":
            out.append(f"| {r['when']} | {load(r)} | {r['rounds']} | {r['ratio_total']:.2f} | "
                       f"{r['latency_ms']:.0f} ms | {r.get('endpoints_ratio') or 0:.2f} |")
    replaced = [r for r in rows if r.get("part") == "replace"]
    if replaced:
        out += ["", "| when (UTC) | load avg (1 min) | rounds | replace-node / (down + up), live | same, dead |",
                "|---|---|---|---|---|"]
        out += [f"| {r['when']} | {load(r)} | {r['rounds']} | {r['live_ratio']:.2f} | {r['dead_ratio']:.2f} |"
                for r in replaced]
    api_runs = [r for r in rows if r.get("part") == "api"]
    if api_runs:
        cli = lambda r: f"{r['cli_dry_run_s']:.2f} s" if r.get("cli_dry_run_s") is not None else "-"  # noqa: E731
        out += ["", "| when (UTC) | load avg (1 min) | rounds | serve | API: first task | API: finished | in-process | "
                "ratio | CLI dry run |", "|---|---|---|---|---|---|---|---|---|"]
        out += [f"| {r['when']} | {load(r)} | {r['rounds']} | {r['serve']} | {r['first_task_s']:.2f} s | "
                f"{r['finish_s']:.2f} s | {r['inproc_s']:.2f} s | {r['ratio']:.2f} | {cli(r)} |" for r in api_runs]
    return out + [""]


def record_api_history(api: dict[str, Any], rounds: int) -> None:
    """Append this run's trigger-to-first-step medians to bench/history.jsonl (a line with "part": "api")."""
    s = api["summary"]
    row = {"part": "api", "when": api["when"], "load1": api["load1"], "rounds": rounds, "serve": api["serve"],
           "first_task_s": s["api_first_task_s"], "finish_s": s["api_finish_s"], "inproc_s": s["inproc_s"],
           "ratio": s["ratio_finish"], "cli_dry_run_s": ((api.get("cli") or {}).get("dry_run_s") or {}).get("median")}
    with HISTORY.open("a") as handle:
        handle.write(json.dumps(row) + "\n")


def record_history(summary: dict[str, Any], rounds: int, when: str, load1: float) -> None:
    """Append this run's headline figures of the scale part to bench/history.jsonl."""
    row = {"when": when, "load1": load1, "rounds": rounds, "ratio_total": summary["ratio_total"],
           "latency_ms": summary["flow_up_latency_s"] * 1000, "endpoints_ratio": summary.get("ratio_endpoints_10_1")}
    with HISTORY.open("a") as handle:
        handle.write(json.dumps(row) + "\n")


def record_replace_history(summary: dict[str, Any], rounds: int, when: str, load1: float) -> None:
    """Append this run's replace-node ratios to bench/history.jsonl (a line with "part": "replace")."""
    row = {"part": "replace", "when": when, "load1": load1, "rounds": rounds, "live_ratio": summary["live_ratio"],
           "dead_ratio": summary["dead_ratio"]}
    with HISTORY.open("a") as handle:
        handle.write(json.dumps(row) + "\n")


def replace_section(replace: dict[str, Any] | None) -> list[str]:
    """The replace-node table (bench/results.json's "replace"), if measured."""
    if not replace:
        return []
    s, rounds = replace["summary"], len(replace["rounds"])
    waits = lambda key: ", ".join(f"`{name}`" for name in s[f"{key}_slow_tasks"]) or "none"  # noqa: E731
    return [
        "",
        "replace-node (issue #12) against a scale-down and a scale-up that reach the same end state "
        f"(`{replace['command']}`",
        f"on {replace['when']} UTC, load avg {replace['load1']:.1f}; {rounds} round{'s' if rounds != 1 else ''}, "
        "medians). Each side starts from a reset lab (3 voters, meta-1 leader); the",
        "flows run in-process against the bench's Prefect server with `require_approval=False`, and which side goes",
        "first alternates between rounds. Dead: meta3 is powered off (`Lab.stop_host`) after the reset; the forced",
        "scale-down needs `accept_no_fault_tolerance=True` (it ends on 2 voters).",
        "",
        "| change | replace-node | scale-down + scale-up (sum) | ratio |",
        "|---|---|---|---|",
        f"| live: meta-2 → spare2 (add first, then remove) | {s['live_replace_s']:.2f} s | "
        f"{s['live_sum_s']:.2f} s (up {s['live_up_s']:.2f} + down {s['live_down_s']:.2f}) | {s['live_ratio']:.2f} |",
        f"| dead: meta-3 → spare1 (remove first, forced, then add) | {s['dead_replace_s']:.2f} s | "
        f"{s['dead_sum_s']:.2f} s (down {s['dead_down_s']:.2f} + up {s['dead_up_s']:.2f}) | {s['dead_ratio']:.2f} |",
        "",
        "replace-node reads the cluster, plans, publishes one plan, waits for one approval and takes the lock once",
        "where the two runs do each twice (time outside the changes, live / dead: "
        f"{s['live_replace_outside_s']:.1f} s / {s['dead_replace_outside_s']:.1f} s against "
        f"{s['live_sum_outside_s']:.1f} s / {s['dead_sum_outside_s']:.1f} s),",
        "and it leaves no window between the two changes, in which the cluster would stay on 4 voters (live) or on 2",
        "voters that tolerate no failure (dead) until a second plan is approved.",
        "",
        f"A dead host costs the inventory's SSH connect timeout ({replace['connect_timeout_s']:g} s in the lab) on "
        "every read that still lists it, and a",
        f"dead replacement is dominated by that: replace-node waited out {s['dead_replace_connects']:.0f} failed "
        f"connects to meta3 ({s['dead_replace_connect_wall_s']:.1f} s of its {s['dead_replace_s']:.1f} s, in "
        f"{waits('dead_replace')}),",
        f"the forced scale-down {s['dead_down_connects']:.0f} ({s['dead_down_connect_wall_s']:.1f} s of "
        f"{s['dead_down_s']:.1f} s, in {waits('dead_down')}),",
        f"the scale-up after it {s['dead_up_connects']:.0f} (meta3 has left the inventory). Raw figures, with each "
        "run's task runs (start offset",
        "and duration), in `bench/results.json` under `replace`; the figures move with the machine's load.",
    ]

def kv_section() -> list[str]:
    """The "no data lost under load" figures from bench/kv-under-load.json (written by the KV test), if present."""
    if not KV_RESULTS.exists():
        return []
    kv = json.loads(KV_RESULTS.read_text())
    return [
        "",
        "No data lost under load (`.venv/bin/python -m pytest tests/faults/test_kv_under_load.py`, last run "
        f"{kv.get('when', '?')}): a KV writer on query1 upserts through the stand-in's KV API during",
        f"scale-up 3→4 and scale-down of the leader (meta-{kv['removed_leader']}, with leadership transfer); every "
        "acknowledged write is read back from every remaining node.",
        "",
        "| writes acknowledged | during scale-up | during scale-down | failed attempts | longest stall (up / down) "
        "| lost |",
        "|---|---|---|---|---|---|",
        f"| {kv['writes_acknowledged']} | {kv['acknowledged_during_scale_up']} | "
        f"{kv['acknowledged_during_scale_down']} | {kv['failed_attempts']} | {kv['longest_stall_scale_up_s']:.2f} s / "
        f"{kv['longest_stall_scale_down_s']:.2f} s | {sum(kv['missing'].values())} (read back from "
        f"{', '.join(kv['read_back_from'])}) |",
    ]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (every part, or those of --only); write BENCHMARKS.md and bench/results.json, keeping the
    saved figures of the parts not measured this time."""
    parser = argparse.ArgumentParser(prog="python -m bench.run_bench")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", action="append", choices=PARTS,
                        help="measure only this part (repeatable); the others keep their figures in bench/results.json")
    parser.add_argument("--skip-endpoints", action="store_true")
    parser.add_argument("--report-only", action="store_true", help="rewrite BENCHMARKS.md from bench/*.json")
    args = parser.parse_args(argv)
    saved = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if args.report_only:
        write_report(summarize(saved["rounds"], saved["endpoints"]), len(saved["rounds"]),
                     saved.get("command", "make bench"), saved.get("when"), saved.get("replace"),
                     saved.get("endpoints_when"), saved.get("api"))
        print(REPORT.read_text())
        return 0
    parts = set(args.only or PARTS) - ({"endpoints"} if args.skip_endpoints else set())
    if "scale" not in parts and not saved.get("rounds"):
        parser.error("no saved scale figures in bench/results.json: measure the scale part too")
    command = "make bench" + (f" BENCH_ARGS='{' '.join(argv or sys.argv[1:])}'" if (argv or sys.argv[1:]) else "")
    from metascale.inventory import load_inventory
    from sandbox.lab import Lab

    rows: list[dict[str, Any]] = []
    replace_rows: list[dict[str, Any]] = []
    api: dict[str, Any] = {}
    endpoints = None
    connect_timeout_s = 0.0
    load1 = os.getloadavg()[0]
    with prefect_server():
        probe = Probe()
        probe.install()
        if parts & {"scale", "replace", "api"}:
            lab = Lab(LAB_DIR, PREFIX)
            if lab.is_up():
                lab.down()
            log(f"bringing up lab {PREFIX} in {LAB_DIR} (3 meta, 2 spare, 2 query)")
            lab.up(meta=3, spare=2, query=2)
            connect_timeout_s = load_inventory(lab.inventory).ssh.connect_timeout_s
            try:
                with tempfile.TemporaryDirectory(prefix="metascale-bench-") as work:
                    warm_up(lab, Path(work))
                    for index in range(args.rounds if "scale" in parts else 0):
                        rows.append(one_round(lab, probe, flow_first=index % 2 == 0, work=Path(work)))
                        log(f"round {index + 1}: " + ", ".join(f"{k}={v:.2f}" for k, v in rows[-1].items()
                                                              if isinstance(v, float)))
                    if "replace" in parts:
                        replace_rows = replace_part(lab, probe, args.rounds, Path(work))
                    if "api" in parts:
                        api = api_part(lab, probe, args.rounds, Path(work))
            finally:
                lab.down()
        if "endpoints" in parts:
            endpoints = endpoint_rounds(args.rounds)
    when = f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M}"
    results: dict[str, Any] = dict(saved)
    if rows:
        results.update(command=command, when=when, rounds=rows)
        results.pop("endpoints_when", None)
    if endpoints is not None:
        results["endpoints"] = endpoints
        results["endpoints_when"] = when
    elif rows and saved.get("endpoints"):
        results["endpoints_when"] = saved.get("endpoints_when") or saved.get("when")
    results["summary"] = summary = summarize(results["rounds"], results.get("endpoints"))
    if replace_rows:
        results["replace"] = {"command": command, "when": when, "load1": load1, "connect_timeout_s": connect_timeout_s,
                              "rounds": replace_rows, "summary": summarize_replace(replace_rows, connect_timeout_s)}
        record_replace_history(results["replace"]["summary"], args.rounds, when, load1)
    if api:
        from bench.api_trigger import summarize_api

        results["api"] = {"command": command, "when": when, "load1": load1, "serve": serve_settings(), **api,
                          "summary": summarize_api(api["rounds"])}
        record_api_history(results["api"], args.rounds)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    if rows:
        record_history(summary, args.rounds, when, load1)
    write_report(summary, len(results["rounds"]), results.get("command", "make bench"), results.get("when"),
                 results.get("replace"), results.get("endpoints_when"), results.get("api"))
    log(f"wrote {REPORT} and {RESULTS}")
    print(REPORT.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
