"""Issue #12: the replace-node flow on the lab (real sshd, systemd, the raft stand-in, the session Prefect server).
The dead-node replacement, started by the automation from cluster-check's proposal and approved through the REST
API, is in tests/flows/test_cluster_check_proposal.py.

Each test starts from the baseline cluster (`fresh_lab`: meta1..3 voters, meta1 leader, spare1..2 in the spare pool,
query1..2) and works on a copy of the lab's inventory.
"""

from __future__ import annotations

import shutil
import tomllib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prefect import task

from flows.replace_node import replace_node
from metascale.inventory import load_inventory
from metascale.plan import quorum_size
from sandbox.lab import Lab
from tasks import runbook
from tests.flows.test_scale_flows import _plan_artifact
from tests.faults.lab_state import assert_consistent, read_config, voters_and_leader

pytestmark = [pytest.mark.lab, pytest.mark.prefect]

SPARE1, SPARE2 = "127.100.0.14", "127.100.0.15"


@pytest.fixture
def inventory(fresh_lab: Lab, tmp_path: Path) -> Path:
    """A private copy of the lab's inventory (the flow rewrites it)."""
    copy = tmp_path / "inventory.toml"
    shutil.copyfile(fresh_lab.inventory, copy)
    return copy


def assert_files_follow(lab: Lab, inventory: Path, gone: str) -> None:
    """The voters are the inventory's meta nodes; `join` on every one of them lists the others, `[meta] endpoints`
    on every query host lists exactly them; none names `gone` (whose host may be powered off)."""
    cluster = load_inventory(inventory)
    names = [next(n for n, s in lab.hosts.items() if s.ip == node.host) for node in cluster.meta_nodes]
    voters, _ = voters_and_leader(lab, names)
    assert sorted(voters) == cluster.meta_ids
    for node, name in zip(cluster.meta_nodes, names, strict=True):
        section = tomllib.loads(read_config(lab, name))["raft_config"]
        others = {f"{n.host}:28004" for n in cluster.meta_nodes if n.node_id != node.node_id}
        assert others <= set(section["join"]) <= others | {node.raft_addr}, f"{name}: join {section['join']}"
        assert f"{gone}:28004" not in section["join"]
    for name in ("query1", "query2"):
        endpoints = tomllib.loads(read_config(lab, name))["meta"]["endpoints"]
        assert sorted(endpoints) == sorted(n.grpc_addr for n in cluster.meta_nodes), f"{name}: {endpoints}"


class Poller:
    """Reads every meta host's own status about every 0.2 s while a run goes on; keeps the worst it saw: the longest
    stretch without any node in state Leader, and the lowest (answering voters - quorum) = failures it could still
    take."""

    def __init__(self, lab: Lab, names: list[str]) -> None:
        self.lab, self.names = lab, names
        self.samples = 0
        self.min_margin: int | None = None
        self.worst: tuple[int, set[int], set[int]] | None = None
        self.longest_leaderless_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        leaderless_since: float | None = None
        while not self._stop.is_set():
            states = {name: self.lab.meta_status(name) for name in self.names}
            now = time.monotonic()
            leader = next((voters for state, voters in states.values() if state == "Leader"), None)
            if leader is None:
                leaderless_since = leaderless_since or now
                self.longest_leaderless_s = max(self.longest_leaderless_s, now - leaderless_since)
            else:
                leaderless_since = None
                by_id = {self._node_id(name): name for name in self.names}
                answering = {i for i in leader if i in by_id and states[by_id[i]][0] is not None}
                margin = len(answering) - quorum_size(len(leader))
                if self.min_margin is None or margin < self.min_margin:
                    self.min_margin, self.worst = margin, (margin, set(leader), answering)
            self.samples += 1
            self._stop.wait(0.2)

    @staticmethod
    def _node_id(name: str) -> int:
        return {"meta1": 1, "meta2": 2, "meta3": 3}.get(name, 4)  # the one spare of the run becomes meta-4

    @contextmanager
    def running(self) -> Iterator[Poller]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(timeout=30)


def test_live_node_meta2_replaced_by_spare2_never_below_the_fault_tolerance_it_had(fresh_lab: Lab,
                                                                                   inventory: Path) -> None:
    """A live node: spare2 joins and catches up first, then meta2 leaves; a poller during the whole run sees a leader
    and always at least as many answering voters as a 1-failure-tolerant cluster needs (as before the run)."""
    poller = Poller(fresh_lab, ["meta1", "meta2", "meta3", "spare2"])
    with poller.running():
        started = time.monotonic()
        outcome = replace_node(node_id=2, new_host=SPARE2, inventory=str(inventory), require_approval=False)
        elapsed = time.monotonic() - started
    assert outcome.changed and outcome.voters_before == [1, 2, 3] and outcome.voters_after == [1, 3, 4]
    plan = _plan_artifact()
    assert "ORDER: add meta-4 first, then remove meta-2" in plan and plan.index("1. add meta-4") < plan.index(
        "2. remove meta-2")
    assert poller.samples >= 5, f"the poller only sampled {poller.samples} times in {elapsed:.1f} s"
    assert poller.min_margin is not None and poller.min_margin >= 1, f"fault tolerance dropped: {poller.worst}"
    assert poller.longest_leaderless_s < 2.0, f"no leader for {poller.longest_leaderless_s:.1f} s"
    recorded = load_inventory(inventory)
    assert recorded.meta_ids == [1, 3, 4] and recorded.removed_node(2) is not None
    assert recorded.spare(SPARE2).replaced == 2 and [s.host for s in recorded.free_spares()] == [SPARE1]
    assert_files_follow(fresh_lab, inventory, "127.100.0.12")
    assert_consistent(fresh_lab, inventory)
    assert fresh_lab.root_exec("meta2", ["systemctl", "is-active", "databend-meta"], check=False).stdout.strip() \
        != "active"
    again = replace_node(node_id=2, new_host=SPARE2, inventory=str(inventory), require_approval=False)
    assert not again.changed and "nothing to do" in again.message


def test_a_failure_between_the_add_and_the_remove_then_a_rerun_converges(fresh_lab: Lab, inventory: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    real = runbook.leave_cluster
    calls: list[int] = []

    @task(name="leave-cluster")
    def failing_leave(inventory: object, node_id: int, via: list[str], timeout_s: float) -> object:
        calls.append(node_id)
        raise RuntimeError("injected: the leave request was lost")

    monkeypatch.setattr(runbook, "leave_cluster", failing_leave)
    state = replace_node(node_id=2, new_host=SPARE2, inventory=str(inventory), require_approval=False,
                         return_state=True)
    assert state.is_failed() and calls == [2]
    message = str(state.result(raise_on_failure=False))
    assert "failed at step 'leave meta-2'" in message and "rerun the same flow" in message
    midway = load_inventory(inventory)  # recorded after the add: the rerun knows the add is done
    assert midway.meta_ids == [1, 2, 3, 4] and midway.spare(SPARE2).replaced == 2
    assert fresh_lab.meta_status("spare2")[1] == {1, 2, 3, 4}  # the joined node was kept, not undone

    monkeypatch.setattr(runbook, "leave_cluster", real)
    rerun = replace_node(node_id=2, inventory=str(inventory), require_approval=False)  # the spare from the record
    assert rerun.changed and rerun.voters_after == [1, 3, 4]
    assert "1. meta-4 (127.100.0.15) is already a voter: nothing to add" in _plan_artifact()
    assert_files_follow(fresh_lab, inventory, "127.100.0.12")
    assert_consistent(fresh_lab, inventory)
