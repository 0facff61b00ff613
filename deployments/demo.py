"""`make demo` / `make demo-down`: the whole product on one machine, end to end, through the deployments' REST API.

    python -m deployments.demo up [--port 4200]     # lab + Prefect server + serve + scale-up + scale-down
    python -m deployments.demo down                  # stop what `up` started (by recorded PID) + lab down

`up` brings up the lab (or resets it to the baseline cluster when it is already up), starts a Prefect server
(SQLite under .demo/, telemetry off, 127.0.0.1 only), registers the block types, the work pool, the cluster's
concurrency limit and the `lab` cluster block (its SSH key in the Secret `lab-ssh-key`), serves the five
deployments, then triggers through Prefect's API (`run_deployment`, `resume_flow_run`: the Prefect client, which
retries a busy server's 503) a scale-up of spare1 and a scale-down of the current leader (with approval, answered
through the API), printing the equivalent REST call of each step, waits for both and prints the cluster and the UI
links.
The server and `serve` keep running so you can explore the UI; `down` stops them.
Lab prefix/directory follow MSLAB_PREFIX / MSLAB_DIR (defaults msl / .lab); the state directory follows
METASCALE_DEMO_DIR (default .demo).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deployments.local_server import (
    QUIET_PREFECT_ENV,
    pid_alive,
    pid_cmdline,
    server_env,
    sqlite_url,
    start_process,
    start_prefect_server,
    stop_pid,
    wait_for_health,
)
from deployments.specs import DEPLOYMENT_NAMES, PROJECT_ROOT

CLUSTER_BLOCK = "lab"
KEY_SECRET = "lab-ssh-key"
SERVER_MARK = "server start"
SERVE_MARK = "deployments.serve"


def demo_dir() -> Path:
    return Path(os.environ.get("METASCALE_DEMO_DIR", str(PROJECT_ROOT / ".demo")))


def lab_dir() -> Path:
    return Path(os.environ.get("MSLAB_DIR", str(PROJECT_ROOT / ".lab")))


def say(text: str) -> None:
    print(text, flush=True)


@dataclass
class DemoState:
    """PIDs and URL of what `up` started, kept in <demo dir>/state.json for `down`."""

    server_pid: int | None = None
    serve_pid: int | None = None
    api_url: str = ""

    @staticmethod
    def path() -> Path:
        return demo_dir() / "state.json"

    @classmethod
    def load(cls) -> DemoState:
        try:
            return cls(**json.loads(cls.path().read_text()))
        except (OSError, ValueError, TypeError):
            return cls()

    def save(self) -> None:
        self.path().parent.mkdir(parents=True, exist_ok=True)
        self.path().write_text(json.dumps(self.__dict__, indent=2) + "\n")


def run_sandbox(*args: str) -> str:
    """Run `python -m sandbox ARGS`; return its output. Raises RuntimeError with its stderr when it fails."""
    result = subprocess.run([sys.executable, "-m", "sandbox", *args], cwd=PROJECT_ROOT, capture_output=True,
                            text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise RuntimeError(f"`python -m sandbox {' '.join(args)}` exited {result.returncode}: "
                           f"{(result.stderr or result.stdout).strip()}")
    return result.stdout.strip()


def ensure_lab() -> None:
    """Bring the lab up, or back to its baseline cluster when it is already up."""
    if "is not up" in run_sandbox("status"):
        say("  " + run_sandbox("up"))
    else:
        say("  " + run_sandbox("reset"))


def ensure_server(state: DemoState, port: int) -> str:
    """Reuse the recorded server if it is alive and healthy, else start one. Returns the API URL."""
    if state.server_pid and SERVER_MARK in pid_cmdline(state.server_pid) and state.api_url:
        try:
            wait_for_health(state.api_url, timeout_s=5)
            say(f"  reusing Prefect server pid {state.server_pid} at {state.api_url}")
            return state.api_url
        except RuntimeError:
            stop_pid(state.server_pid, must_contain=SERVER_MARK)
    started = time.monotonic()
    process, api_url = start_prefect_server(demo_dir() / "prefect-home", port=port)
    state.server_pid, state.api_url = process.pid, api_url
    state.save()
    say(f"  Prefect server pid {process.pid} healthy at {api_url} after {time.monotonic() - started:.1f} s "
        f"(log {process.log_path})")
    return api_url


def client_env(api_url: str) -> dict[str, str]:
    """The environment for this process's Prefect client and for `serve`."""
    home = demo_dir() / "prefect-home"
    return server_env(home, api_url, sqlite_url(home / "prefect.db"))


def ensure_serve(state: DemoState, api_url: str) -> None:
    """(Re)start `python -m deployments.serve` so it serves the current code."""
    if state.serve_pid and pid_alive(state.serve_pid):
        stop_pid(state.serve_pid, must_contain=SERVE_MARK)
    process = start_process("serve", [sys.executable, "-m", SERVE_MARK], env=client_env(api_url),
                            log_path=demo_dir() / "serve.log", cwd=PROJECT_ROOT)
    state.serve_pid = process.pid
    state.save()
    say(f"  serving {', '.join(DEPLOYMENT_NAMES)} from pid {process.pid} (log {process.log_path})")


def wait_for_deployments(api_url: str, timeout_s: float = 120) -> dict[str, str]:
    """Wait until every deployment exists and is not paused; return name → deployment id."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + timeout_s
    ids: dict[str, str] = {}
    while len(ids) < len(DEPLOYMENT_NAMES):
        with get_client(sync_client=True) as client:
            for name in DEPLOYMENT_NAMES:
                try:
                    deployment = client.read_deployment_by_name(f"{name}/{name}")
                except ObjectNotFound:
                    continue
                if not deployment.paused:
                    ids[name] = str(deployment.id)
        if time.monotonic() > deadline:
            missing = sorted(set(DEPLOYMENT_NAMES) - set(ids))
            raise TimeoutError(f"deployments {missing} not served within {timeout_s:.0f} s; see "
                               f"{demo_dir() / 'serve.log'}")
        if len(ids) < len(DEPLOYMENT_NAMES):
            time.sleep(0.5)
    return ids


def spare_host(name: str = "spare1") -> str:
    """The address of lab host `name` from the lab's hosts.json."""
    hosts = json.loads((lab_dir() / "hosts.json").read_text())
    for host in hosts:
        if host["name"] == name:
            return str(host["ip"])
    raise ValueError(f"no host {name!r} in {lab_dir() / 'hosts.json'} (hosts: {[h['name'] for h in hosts]})")


def read_status() -> Any:
    """The cluster's status as the `lab` block's inventory describes it (read over SSH by the core)."""
    from metascale.remote import SshPool
    from metascale.status import read_cluster_status
    from tasks.cluster_block import load_cluster

    inventory, key = load_cluster(cluster_block=CLUSTER_BLOCK)
    with SshPool.for_inventory(inventory, private_key_text=key) as pool:
        return read_cluster_status(pool, inventory)


def ui_url(api_url: str, run_id: Any) -> str:
    """The UI page of a flow run: `http://host:port/runs/flow-run/<id>` (the API URL without `/api`)."""
    return f"{api_url.removesuffix('/').removesuffix('/api')}/runs/flow-run/{run_id}"


def wait_for_state(run_id: Any, wanted: set[str], *, timeout_s: float, poll_s: float = 0.5) -> Any:
    """Poll the run (Prefect client) until its state type is in ``wanted`` (e.g. {"PAUSED"}) or final; return it.

    Raises: TimeoutError naming the run and its last state when the deadline passes."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(run_id)
            if run.state is not None and (run.state.type.value in wanted or run.state.is_final()):
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(f"flow run {run.name} ({run_id}) still {run.state_name} after {timeout_s:.0f} s")
            time.sleep(poll_s)


def finish(api_url: str, run: Any, label: str, started: float) -> float:
    """Print the outcome of `run`; raise SystemExit when it did not complete."""
    elapsed = time.monotonic() - started
    kind = run.state.type.value if run.state is not None else "UNKNOWN"
    say(f"  {label}: {run.name} {kind} after {elapsed:.1f} s — {ui_url(api_url, run.id)}")
    if kind != "COMPLETED":
        message = (run.state.message if run.state is not None else "") or ""
        raise SystemExit(f"demo: {label} ended {kind}: {message}\n  logs: {ui_url(api_url, run.id)} "
                         f"and {demo_dir() / 'serve.log'}")
    return elapsed


def trigger(deployment: str, deployment_id: str, parameters: dict[str, Any]) -> Any:
    """Start a run of ``deployment`` with ``parameters`` (Prefect's `run_deployment`, not waiting); print the REST
    call that does the same."""
    from prefect.deployments import run_deployment

    say(f"  POST /deployments/{deployment_id}/create_flow_run {json.dumps({'parameters': parameters})}")
    return run_deployment(deployment, parameters=parameters, timeout=0)


def trigger_scale_up(api_url: str, deployment_id: str, host: str) -> tuple[Any, float]:
    """Trigger scale-up of `host` through the API and wait for the end. Returns (run, seconds)."""
    parameters = {"cluster_block": CLUSTER_BLOCK, "new_nodes": [{"host": host}], "require_approval": False,
                  "dry_run": False}
    started = time.monotonic()
    run = trigger("scale-up/scale-up", deployment_id, parameters)
    run = wait_for_state(run.id, set(), timeout_s=600)
    return run, finish(api_url, run, "scale-up", started)


def trigger_scale_down(api_url: str, deployment_id: str, node_id: int) -> tuple[Any, float]:
    """Trigger scale-down of `node_id` with approval, approve through the API, wait. Returns (run, seconds)."""
    from prefect.flow_runs import resume_flow_run

    parameters = {"cluster_block": CLUSTER_BLOCK, "node_ids": [node_id], "require_approval": True,
                  "dry_run": False}
    started = time.monotonic()
    run = trigger("scale-down/scale-down", deployment_id, parameters)
    run = wait_for_state(run.id, {"PAUSED"}, timeout_s=600)
    if run.state is not None and run.state.is_paused():
        say(f"  {run.name} is waiting for approval (plan: {ui_url(api_url, run.id)}); approving with "
            f"POST /flow_runs/{run.id}/resume")
        resume_flow_run(run.id, run_input={"approve": True, "reason": "approved by make demo"})
        run = wait_for_state(run.id, set(), timeout_s=600)
    return run, finish(api_url, run, "scale-down", started)


def print_status(status: Any) -> None:
    say(f"  {status.summary()}")
    for probe in status.probes:
        detail = (f"leader={probe.status.leader_id} voters={probe.status.voter_ids}" if probe.status
                  else f"unreachable: {probe.error}")
        say(f"    meta-{probe.node_id:<3} {probe.host:<15} {detail}")


def up(port: int) -> None:
    """Everything the module docstring lists for `up`. Side effects: lab, server and serve processes keep running."""
    state = DemoState.load()
    say("1/6 lab")
    ensure_lab()
    say("2/6 Prefect server")
    api_url = ensure_server(state, port)
    os.environ.update(client_env(api_url))  # before prefect is imported in this process
    say("3/6 work pool, block types, cluster block, concurrency limit")
    from deployments.setup import run_setup

    for line in run_setup([], block=CLUSTER_BLOCK, inventory=lab_dir() / "inventory.toml",
                          key_file=lab_dir() / "id_ed25519", key_secret=KEY_SECRET).lines:
        say(f"  {line}")
    say("4/6 deployments")
    ensure_serve(state, api_url)
    ids = wait_for_deployments(api_url)
    say("5/6 scale-up of spare1 through the REST API")
    up_run, up_s = trigger_scale_up(api_url, ids["scale-up"], spare_host("spare1"))
    before = read_status()
    leader = before.leader_id
    if leader is None:
        raise SystemExit(f"demo: no leader after the scale-up: {before.summary()}")
    say(f"6/6 scale-down of the current leader meta-{leader} through the REST API (with approval)")
    down_run, down_s = trigger_scale_down(api_url, ids["scale-down"], leader)
    say("\nfinal cluster status:")
    print_status(read_status())
    say(f"\ntrigger-to-finish: scale-up {up_s:.1f} s, scale-down {down_s:.1f} s (including the approval)")
    say(f"UI: {api_url.removesuffix('/api')}  (runs: {ui_url(api_url, up_run.id)} , "
        f"{ui_url(api_url, down_run.id)})")
    say("stop everything with: make demo-down")


def down(keep_lab: bool = False) -> None:
    """Stop `serve` and the server by their recorded PIDs (if they are still ours), then bring the lab down."""
    state = DemoState.load()
    for name, pid, mark in (("serve", state.serve_pid, SERVE_MARK), ("Prefect server", state.server_pid, SERVER_MARK)):
        if pid and stop_pid(pid, must_contain=mark):
            say(f"stopped {name} (pid {pid})")
        elif pid:
            say(f"{name} (pid {pid}) was not running")
    DemoState.path().unlink(missing_ok=True)
    if not keep_lab:
        say(run_sandbox("down"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.demo", description="metascale end-to-end demo")
    sub = parser.add_subparsers(dest="command", required=True)
    up_parser = sub.add_parser("up", help="lab + Prefect server + serve + scale-up + scale-down")
    up_parser.add_argument("--port", type=int, default=int(os.environ.get("METASCALE_DEMO_PORT", "4200")))
    down_parser = sub.add_parser("down", help="stop what `up` started and bring the lab down")
    down_parser.add_argument("--keep-lab", action="store_true", help="stop the Prefect processes only")
    args = parser.parse_args(argv)
    for key, value in QUIET_PREFECT_ENV.items():
        os.environ.setdefault(key, value)
    try:
        if args.command == "up":
            up(args.port)
        else:
            down(args.keep_lab)
    except (RuntimeError, TimeoutError, ValueError, OSError) as exc:
        print(f"demo {args.command}: {exc}", file=sys.stderr)
        if args.command == "up":
            print("(what was started keeps running for inspection; `make demo-down` stops it)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
