"""Issue #10, "One change at a time, for real": the Prefect API down for 30 s mid-change, and `serve` stopped
(SIGTERM) mid-change, on the lab.

Both scenarios use a Prefect server of their own (started here, stopped by PID), so stopping it or stopping `serve`
never disturbs the session's server or its deployments; every flow runs in a subprocess pointed at that server,
the way a deployment run or the `metascale` CLI runs.

* API down 30 s while a scale-up is changing the cluster (the server process stopped, then started again on the
  same port and home): the change goes on (Prefect's client retries; the lock's lease is renewed by our own thread
  and kept on disk by the server), the run completes, the lock is free afterwards and no holder record is left.
  On main the strict lease's renewal fails after the restart and injects a cancellation into the flow.
* `serve` stopped while a scale-up is changing the cluster: the step that runs finishes, the run stops at the next
  step boundary and fails saying so (serve's cancellation manager then marks the run Cancelled); the holder record
  keeps "changing" and the reason, so `cluster-check` reports the cluster may
  be half-changed; a rerun of the same change converges and clears the record, and `cluster-check` is healthy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from deployments.local_server import (
    ManagedProcess,
    free_port,
    migrated_template_db,
    start_prefect_server,
    start_process,
)
from deployments.rest import PrefectApiError, create_flow_run, read_deployment, request_json, wait_for_state
from sandbox.lab import Lab
from tests.faults.lab_state import assert_consistent

pytestmark = [pytest.mark.lab]

REPO = Path(__file__).resolve().parent.parent.parent
SPARE1 = "127.100.0.14"
OUTAGE_S = 30.0
SCALE_UP = ("import sys; from flows.scale_up import scale_up; "
            "s = scale_up(new_nodes=[{'host': sys.argv[1]}], inventory=sys.argv[2], return_state=True, "
            "require_approval=False); "
            "print('STATE', s.type.value, s.message); sys.exit(0 if s.is_completed() else 1)")
CLUSTER_CHECK = ("import sys; from flows.cluster_check import cluster_check; "
                 "s = cluster_check(inventory=sys.argv[1], return_state=True); "
                 "print('STATE', s.type.value, s.message); sys.exit(0 if s.is_completed() else 1)")


class OwnServer:
    """A Prefect server this test module started: stop it and start it again on the same port and home."""

    def __init__(self, home: Path) -> None:
        self.home, self.port = home, free_port()
        self.template = migrated_template_db(REPO / ".prefect" / "test-db")
        self.process: ManagedProcess | None = None
        self.api_url = ""

    def start(self) -> None:
        self.process, self.api_url = start_prefect_server(self.home, port=self.port, template_db=self.template)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PREFECT_API_URL"] = self.api_url
        return env


@pytest.fixture(scope="module")
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnServer]:
    server = OwnServer(tmp_path_factory.mktemp("h5-prefect-server"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def inventory(fresh_lab: Lab, tmp_path: Path) -> Path:
    copy = tmp_path / "inventory.toml"
    shutil.copyfile(fresh_lab.inventory, copy)
    return copy


def poll(done: Callable[[], bool], what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(0.2)


def spare1_started(lab: Lab) -> bool:
    return lab.root_exec("spare1", ["systemctl", "is-active", "databend-meta"], check=False).stdout.strip() == "active"


def run_flow(server: OwnServer, code: str, *args: str, log: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=server.env(), capture_output=True,
                            text=True, timeout=300)
    log.write_text(result.stdout + result.stderr)
    return result


def lock_state(server: OwnServer) -> tuple[int, dict[str, Any] | None]:
    """(slots taken on the lab's lock, the holder record or None)."""
    limit = request_json("GET", f"{server.api_url}/v2/concurrency_limits/metascale-cluster-lab")
    try:
        holder = request_json("GET", f"{server.api_url}/variables/name/metascale-holder-lab")["value"]
    except PrefectApiError as exc:
        assert exc.status == 404, exc
        holder = None
    return int(limit["active_slots"]), holder


def test_api_down_for_30_s_mid_change_the_change_goes_on_and_frees_the_lock(
        fresh_lab: Lab, inventory: Path, own_server: OwnServer, tmp_path: Path) -> None:
    log = tmp_path / "scale-up.log"
    proc = subprocess.Popen([sys.executable, "-c", SCALE_UP, SPARE1, str(inventory)], cwd=REPO,
                            env=own_server.env(), stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        poll(lambda: spare1_started(fresh_lab), "the new node to start (the change is under way)", 180)
        assert proc.poll() is None, "the run ended before the outage"
        own_server.stop()
        outage_ends = time.monotonic() + OUTAGE_S
        while time.monotonic() < outage_ends:          # the fault itself: the API stays down for 30 s
            assert proc.poll() is None or proc.returncode == 0, log.read_text()[-3000:]
            time.sleep(1)
        own_server.start()
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert rc == 0, text[-4000:]
    assert "STATE COMPLETED" in text, text[-4000:]
    assert "Terminating execution" not in text, "Prefect's lease renewal cancelled the flow"
    assert assert_consistent(fresh_lab, inventory) == {1, 2, 3, 4}
    assert lock_state(own_server) == (0, None), "the lock is free and no holder record is left"


def test_serve_stopped_mid_change_stops_at_a_step_boundary_and_the_next_runs_know(
        fresh_lab: Lab, inventory: Path, own_server: OwnServer, tmp_path: Path) -> None:
    serve = start_process("serve", [sys.executable, "-m", "deployments.serve"], env=own_server.env(),
                          log_path=tmp_path / "serve.log", cwd=REPO)
    try:
        deployment: dict[str, Any] = {}

        def deployed() -> bool:
            try:
                deployment.update(read_deployment(own_server.api_url, "scale-up", "scale-up"))
                return True
            except PrefectApiError:
                return False

        poll(deployed, "serve to register its deployments")
        run = create_flow_run(own_server.api_url, deployment["id"], {
            "inventory": str(inventory), "new_nodes": [{"host": SPARE1}], "require_approval": False,
            "maintenance_window": ""})
        poll(lambda: spare1_started(fresh_lab), "the new node to start (the change is under way)", 180)
    finally:
        serve.stop(term_wait_s=60)                      # SIGTERM: serve stops its flow-run processes
    ended = wait_for_state(own_server.api_url, run["id"], {"FAILED", "CANCELLED", "CRASHED", "COMPLETED"},
                           timeout_s=120)
    # the run ends Failed by itself; serve's cancellation manager then marks it Cancelled (its own message)
    assert ended["state"]["type"] in ("FAILED", "CANCELLED"), (ended["state"], serve.log_tail(60))
    log = (tmp_path / "serve.log").read_text()
    assert "finishing the current step, then stopping at the next step boundary" in log, log[-4000:]
    assert "stopped at a step boundary before" in log and "diagnostics-lab" in log, log[-4000:]
    slots, holder = lock_state(own_server)
    assert slots == 0, "the stopped run gave the lock back"
    assert holder is not None and holder["phase"] == "changing", holder
    assert "stopped at a step boundary" in holder["stopped"] and "SIGTERM" in holder["stopped"], holder

    check = run_flow(own_server, CLUSTER_CHECK, str(inventory), log=tmp_path / "check-1.log")
    assert check.returncode != 0 and "half-changed" in check.stdout, check.stdout[-3000:] + check.stderr[-3000:]

    rerun = run_flow(own_server, SCALE_UP, SPARE1, str(inventory), log=tmp_path / "rerun.log")
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert assert_consistent(fresh_lab, inventory) == {1, 2, 3, 4}
    assert lock_state(own_server) == (0, None), "a completed change clears the record"
    check = run_flow(own_server, CLUSTER_CHECK, str(inventory), log=tmp_path / "check-2.log")
    assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-3000:]
