"""Issue #6, fault matrix: inject a fault, run the real flow on the lab, assert the end state and that nothing was lost.

After every scenario: every config file parses and matches the membership (`assert_consistent`), or, for refused
and failed-before-join runs, the files are exactly the pre-run ones; and the voters keep a majority.
Faults that must strike in the middle of a run are injected by wrapping one runbook task (the flows look the tasks
up on `tasks.runbook` at call time), so they hit between two real steps.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect import task

from flows.scale_down import scale_down
from flows.scale_up import scale_up
from sandbox.lab import Lab
from tasks import runbook
from tests.faults.lab_state import assert_consistent, snapshot, voters_and_leader

pytestmark = [pytest.mark.lab, pytest.mark.prefect]

SPARE1 = "127.100.0.14"
EXISTING = ("meta1", "meta2", "meta3", "query1", "query2")


@pytest.fixture
def inventory(fresh_lab: Lab, tmp_path: Path) -> Path:
    """A private copy of the lab's inventory (the flows rewrite it)."""
    copy = tmp_path / "inventory.toml"
    shutil.copyfile(fresh_lab.inventory, copy)
    return copy


@pytest.fixture
def squatter(fresh_lab: Lab) -> Iterator[Callable[[str, int], None]]:
    """`occupy(host, port)`: a transient unit listening on the port; stopped at the end of the test."""
    started: list[str] = []

    def occupy(host: str, port: int) -> None:
        fresh_lab.root_exec(host, ["systemd-run", "--unit=metascale-squatter", "nc", "-lk", str(port)])
        started.append(host)
        poll(lambda: f":{port}" in fresh_lab.root_exec(host, ["ss", "-Htln"], check=False).stdout,
             f"a listener on {host}:{port}")

    yield occupy
    for host in started:
        fresh_lab.root_exec(host, ["systemctl", "stop", "metascale-squatter"], check=False)


def poll(done: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    """Poll `done` every 0.2 s until it is true; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(0.2)


def wrap_task(monkeypatch: pytest.MonkeyPatch, name: str, before: Callable[[], None]) -> list[int]:
    """Replace runbook task `name` by one that runs `before()` once (first call), then the original."""
    original = getattr(runbook, name)
    calls: list[int] = []

    @task(name=original.name, task_run_name=f"{original.name} (fault injected)")
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if not calls:
            before()
        calls.append(1)
        return original.fn(*args, **kwargs)

    monkeypatch.setattr(runbook, name, wrapped)
    return calls


def diagnostics_artifact(cluster: str = "lab") -> str:
    """The newest `diagnostics-<cluster>` markdown artifact."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"diagnostics-{cluster}"])),
            limit=1, sort="CREATED_DESC")
    assert found, f"no diagnostics-{cluster} artifact"
    return str(found[0].data)


def _release_cluster_lock(cluster: str) -> None:
    """Free the cluster lock a killed run still holds (`prefect gcl update metascale-cluster-<name> --active-slots 0`)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    from flows.common import lock_name

    with get_client(sync_client=True) as client:
        client.update_global_concurrency_limit(lock_name(cluster), GlobalConcurrencyLimitUpdate(active_slots=0))


def files_of(lab: Lab, names: tuple[str, ...]) -> dict[str, str]:
    snap = snapshot(lab)
    return {name: snap["files"][name] for name in names}


# ------------------------------------------------------------------------------------------ the new node fails
def _unwritable_raft_dir(lab: Lab, monkeypatch: pytest.MonkeyPatch, occupy: Callable[[str, int], None],
                         cleanups: list[Callable[[], None]]) -> str:
    raft = "/var/lib/databend/raft"
    mode = lab.root_exec("spare1", ["stat", "-c", "%U:%G %a", raft]).stdout.split()
    lab.root_exec("spare1", ["sh", "-c", f"chown root:root {raft} && chmod 700 {raft}"])
    cleanups.append(lambda: lab.root_exec("spare1", ["sh", "-c", f"chown {mode[0]} {raft} && chmod {mode[1]} {raft}"]))
    return "Permission denied"


def _port_taken_after_the_preflight(lab: Lab, monkeypatch: pytest.MonkeyPatch,
                                    occupy: Callable[[str, int], None], cleanups: list[Callable[[], None]]) -> str:
    wrap_task(monkeypatch, "start_meta_service", lambda: occupy("spare1", 28004))
    return "in use"


@pytest.mark.parametrize("inject", [_unwritable_raft_dir, _port_taken_after_the_preflight],
                         ids=["bad permissions on the raft dir", "port already in use"])
def test_new_node_fails_to_start(fresh_lab: Lab, inventory: Path, monkeypatch: pytest.MonkeyPatch,
                                 squatter: Callable[[str, int], None],
                                 inject: Callable[..., str]) -> None:
    before = snapshot(fresh_lab)
    cleanups: list[Callable[[], None]] = []
    try:
        clue = inject(fresh_lab, monkeypatch, squatter, cleanups)
        state = scale_up(new_nodes=[{"host": SPARE1}], inventory=str(inventory), verify_deadline_s=15,
                         return_state=True, require_approval=False)
        message = str(state.message)
        assert state.is_failed(), state
        assert "meta-4" in message and "diagnostics-lab" in message, message
        diagnostics = diagnostics_artifact()
        assert SPARE1 in diagnostics and clue in diagnostics, diagnostics[-3000:]
        assert files_of(fresh_lab, EXISTING) == {n: before["files"][n] for n in EXISTING}
        assert snapshot(fresh_lab)["files"]["spare1"] == before["files"]["spare1"], "spare1's config was not restored"
        assert fresh_lab.meta_status("meta1")[1] == {1, 2, 3}
    finally:
        for cleanup in cleanups:
            cleanup()


# ------------------------------------------------------------------------------------------ partitions, crashes
def test_follower_partitioned_before_scale_down_is_refused(fresh_lab: Lab, inventory: Path) -> None:
    fresh_lab.cut("meta3")
    try:
        before = snapshot(fresh_lab)
        state = scale_down(node_ids=[2], inventory=str(inventory), return_state=True, require_approval=False)
        assert state.is_failed()
        assert "quorum" in str(state.message), state.message
        after = snapshot(fresh_lab)   # meta3's own state drifts (Follower -> Candidate) because of the cut itself
        assert after["files"] == before["files"] and after["services"] == before["services"]
        assert after["membership"]["meta1"] == ("Leader", {1, 2, 3})
    finally:
        fresh_lab.heal("meta3")
    poll(lambda: fresh_lab.meta_status("meta3")[0] in ("Leader", "Follower"), "meta3 back in the cluster")
    assert voters_and_leader(fresh_lab, ["meta1", "meta2", "meta3"])[0] == {1, 2, 3}


def test_leader_crash_between_leader_check_and_leave_then_rerun_converges(
        fresh_lab: Lab, inventory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, leader = voters_and_leader(fresh_lab, ["meta1", "meta2", "meta3"])
    victim = [n for n in (1, 2, 3) if n != leader][-1]
    leader_host = f"meta{leader}"
    wrap_task(monkeypatch, "leave_cluster", lambda: fresh_lab.crash(leader_host))
    state = scale_down(node_ids=[victim], inventory=str(inventory), verify_deadline_s=20, leave_timeout_s=20,
                       accept_no_fault_tolerance=True, return_state=True, require_approval=False)
    message = str(state.message)
    assert state.is_failed(), state
    assert "leave" in message and "rerun" in message, message
    monkeypatch.undo()
    fresh_lab.root_exec(leader_host, ["systemctl", "start", "databend-meta"])
    poll(lambda: fresh_lab.meta_status(leader_host)[0] in ("Leader", "Follower"), f"{leader_host} back in the cluster")
    poll(lambda: any(fresh_lab.meta_status(f"meta{n}")[0] == "Leader" for n in (1, 2, 3)), "a leader again")
    # a follower may still hold the leave as an uncommitted membership entry the new leader never had (it is
    # truncated by the leader's next append): the planner refuses while the voters disagree, so wait as an operator
    # would until the three agree
    poll(lambda: len({frozenset(fresh_lab.meta_status(f"meta{n}")[1]) for n in (1, 2, 3)}) == 1,
         "the three nodes to agree on the voters")
    rerun = scale_down(node_ids=[victim], inventory=str(inventory), verify_deadline_s=30,
                       accept_no_fault_tolerance=True, require_approval=False)
    assert rerun.voters_after == sorted({1, 2, 3} - {victim})
    assert assert_consistent(fresh_lab, inventory) == {1, 2, 3} - {victim}


def test_leave_that_hangs_without_quorum_times_out_and_explains(fresh_lab: Lab, inventory: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Both followers go down right before the leave: the leader cannot commit the removal, the leave hangs."""
    _, leader = voters_and_leader(fresh_lab, ["meta1", "meta2", "meta3"])
    assert leader == 1, "the baseline leader is meta1 (the leave then runs on it)"

    def both_followers_down() -> None:
        for name in ("meta2", "meta3"):
            fresh_lab.root_exec(name, ["systemctl", "stop", "databend-meta"])

    wrap_task(monkeypatch, "leave_cluster", both_followers_down)
    started = time.monotonic()
    state = scale_down(node_ids=[3], inventory=str(inventory), leave_timeout_s=8, verify_deadline_s=10,
                       accept_no_fault_tolerance=True, return_state=True, require_approval=False)
    elapsed = time.monotonic() - started
    message = str(state.message)
    assert state.is_failed(), state
    assert "did not finish within 8 s" in message and "quorum" in message, message
    assert "failed at step 'leave meta-3'" in message, message
    assert elapsed < 120, f"the run took {elapsed:.0f} s; the leave timeout did not fire"
    monkeypatch.undo()
    for name in ("meta2", "meta3"):
        fresh_lab.root_exec(name, ["systemctl", "start", "databend-meta"])
    poll(lambda: fresh_lab.meta_status("meta2")[0] in ("Leader", "Follower"), "meta2 back in the cluster")
    rerun = scale_down(node_ids=[3], inventory=str(inventory), verify_deadline_s=60, accept_no_fault_tolerance=True,
                       require_approval=False)
    assert rerun.voters_after == [1, 2]
    assert assert_consistent(fresh_lab, inventory) == {1, 2}


# ------------------------------------------------------------------------------------------ hosts and access
def test_sudo_denied_on_the_new_host_is_a_clear_error(fresh_lab: Lab, inventory: Path) -> None:
    fresh_lab.root_exec("spare1", ["rm", "-f", "/etc/sudoers.d/ops"])
    try:
        before = snapshot(fresh_lab)
        state = scale_up(new_nodes=[{"host": SPARE1}], inventory=str(inventory), verify_deadline_s=15,
                         return_state=True, require_approval=False)
        message = str(state.message)
        assert state.is_failed(), state
        assert "sudo" in message and SPARE1 in message, message
        assert snapshot(fresh_lab) == before
    finally:
        fresh_lab.root_exec("spare1", ["sh", "-c", "echo 'ops ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/ops && "
                                                   "chmod 440 /etc/sudoers.d/ops"])


def test_two_runs_at_once_are_serialized_and_both_converge(fresh_lab: Lab, inventory: Path) -> None:
    import contextvars
    import threading

    results: dict[str, Any] = {}

    def run(host: str) -> None:
        results[host] = scale_up(new_nodes=[{"host": host}], inventory=str(inventory), return_state=True,
                                 require_approval=False)

    threads = [threading.Thread(target=contextvars.copy_context().run, args=(run, host))
               for host in (SPARE1, "127.100.0.15")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert all(not t.is_alive() for t in threads)
    assert all(state.is_completed() for state in results.values()), results
    assert assert_consistent(fresh_lab, inventory) == {1, 2, 3, 4, 5}


def test_flow_process_killed_mid_run_then_rerun_converges(fresh_lab: Lab, inventory: Path, tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    code = ("import sys; from flows.scale_up import scale_up; "
            "scale_up(new_nodes=[{'host': sys.argv[1]}], inventory=sys.argv[2], require_approval=False)")
    repo = Path(__file__).resolve().parent.parent.parent
    proc = subprocess.Popen([sys.executable, "-c", code, SPARE1, str(inventory)], cwd=repo, env=dict(os.environ),
                            stdout=subprocess.DEVNULL, stderr=(tmp_path / "killed.log").open("w"))
    try:
        poll(lambda: fresh_lab.root_exec("spare1", ["systemctl", "is-active", "databend-meta"],
                                         check=False).stdout.strip() == "active", "the new node started", 180)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    _release_cluster_lock("lab")   # the operator's step: the dead run's slot would otherwise stay leased (300 s)
    rerun = scale_up(new_nodes=[{"host": SPARE1}], inventory=str(inventory), verify_deadline_s=60,
                     require_approval=False)
    assert rerun.voters_after == [1, 2, 3, 4]
    assert assert_consistent(fresh_lab, inventory) == {1, 2, 3, 4}


# ------------------------------------------------------------------------------------------ SSH drops mid-write
def test_ssh_drop_during_a_config_write_leaves_old_or_new_and_the_rerun_completes(
        fresh_lab: Lab, inventory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """query2's connection dies half-way through uploading its new databend-query.toml."""
    import tomllib

    from metascale.remote import ParamikoRemote
    from tests.faults.lab_state import read_config

    target, name = "127.100.0.17", "query2"
    old_text = read_config(fresh_lab, name)
    original_sftp = ParamikoRemote._sftp_client
    dropped: list[str] = []

    class HalfWriter:
        """An SFTP file handle that writes half of the data, then kills the SSH transport."""

        def __init__(self, handle: Any, remote: ParamikoRemote) -> None:
            self.handle, self.remote = handle, remote

        def __enter__(self) -> HalfWriter:
            return self

        def __exit__(self, *exc: object) -> None:
            self.handle.close()   # as paramiko's own handle does: flushes, raises on a dead channel

        def chmod(self, mode: int) -> None:
            self.handle.chmod(mode)

        def write(self, data: bytes) -> None:
            self.handle.write(data[: len(data) // 2])
            self.handle.flush()
            self.remote._client.get_transport().close()  # type: ignore[union-attr]
            dropped.append(self.remote.host)
            self.handle.write(data[len(data) // 2:])
            self.handle.flush()

    class DroppingSftp:
        def __init__(self, sftp: Any, remote: ParamikoRemote) -> None:
            self.sftp, self.remote = sftp, remote

        def open(self, path: str, mode: str = "r") -> Any:
            if "w" in mode and not dropped:
                return HalfWriter(self.sftp.open(path, mode), self.remote)
            return self.sftp.open(path, mode)

        def __getattr__(self, attr: str) -> Any:
            return getattr(self.sftp, attr)

    def sftp_client(self: ParamikoRemote) -> Any:
        sftp = original_sftp(self)
        return DroppingSftp(sftp, self) if self.host == target and not dropped else sftp

    monkeypatch.setattr(ParamikoRemote, "_sftp_client", sftp_client)
    state = scale_up(new_nodes=[{"host": SPARE1}], inventory=str(inventory), return_state=True, require_approval=False)
    assert dropped == [target], "the fault was not injected"
    assert state.is_failed(), state
    assert target in str(state.message), state.message
    text = read_config(fresh_lab, name)
    tomllib.loads(text)   # never a partial file
    new_endpoints = ["127.100.0.11:9191", "127.100.0.12:9191", "127.100.0.13:9191", f"{SPARE1}:9191"]
    assert text == old_text or sorted(tomllib.loads(text)["meta"]["endpoints"]) == new_endpoints, text
    leftovers = fresh_lab.root_exec(name, ["sh", "-c", "ls /etc/databend | grep -c tmp- || true"]).stdout.strip()
    assert leftovers == "0", "a staged temp file was left in /etc/databend"
    monkeypatch.undo()
    rerun = scale_up(new_nodes=[{"host": SPARE1}], inventory=str(inventory), require_approval=False)
    assert rerun.voters_after == [1, 2, 3, 4]
    assert assert_consistent(fresh_lab, inventory) == {1, 2, 3, 4}


def test_a_voter_dying_after_the_plan_stops_the_run_before_the_leave(fresh_lab: Lab, inventory: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """meta2 crashes after the plan: removing meta3 would leave voters {1, 2} with one alive. The flow re-checks
    right before the leave and refuses, instead of starting a leave that hangs (and could still commit later)."""
    before = snapshot(fresh_lab)
    wrap_task(monkeypatch, "check_quorum_before_leave", lambda: fresh_lab.crash("meta2"))
    state = scale_down(node_ids=[3], inventory=str(inventory), leave_timeout_s=30, accept_no_fault_tolerance=True,
                       return_state=True, require_approval=False)
    message = str(state.message)
    assert state.is_failed(), state
    assert "the cluster changed since the plan" in message and "below the quorum of 2" in message, message
    assert "failed at step 're-check quorum before meta-3 leaves'" in message, message
    monkeypatch.undo()
    assert not fresh_lab.root_exec("meta1", ["pgrep", "-f", "leave-id"], check=False).stdout.strip()
    fresh_lab.root_exec("meta2", ["systemctl", "start", "databend-meta"])
    poll(lambda: fresh_lab.meta_status("meta2")[0] in ("Leader", "Follower"), "meta2 back in the cluster")
    assert snapshot(fresh_lab)["files"] == before["files"]  # nothing was edited
    assert voters_and_leader(fresh_lab, ["meta1", "meta2", "meta3"])[0] == {1, 2, 3}
