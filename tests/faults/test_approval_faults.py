"""Issue #10, fault matrix: the change that was approved is the change that runs.

* An approval that arrives after the maintenance window closed is refused, and the wait itself was capped at the
  time left in the window (the run's pause timeout), not at approval_timeout_s.
* The leader changes while the run waits for approval: after the approval the flow re-reads the cluster, plans
  again, sees a different plan and refuses, saying what changed; nothing is changed.
* A change that leaves 2 voters is refused without accept_no_fault_tolerance, with the warning at the top of the plan.
* An approved scale-up whose cluster did not change runs (the re-plan finds the same plan: no false alarm).
* Removing several nodes: the node that leads at the moment of its leave (not the one planned) hands over to a node
  that stays.
Each run is refused before any change, so the lab needs no reset after the window and fault-tolerance tests.
"""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import flows.common as common
from flows.scale_down import scale_down
from flows.scale_up import scale_up
from sandbox.lab import Lab
from tests.faults.lab_state import snapshot, voters_and_leader
from tests.flows.test_scale_flows import _paused_run_id, _plan_artifact, _run_in_thread

pytestmark = [pytest.mark.lab, pytest.mark.prefect]

WINDOW = "Sat 02:00-04:00 Europe/Berlin"
SAT_0358_BERLIN = datetime(2026, 11, 28, 2, 58, 30, tzinfo=timezone.utc)   # 90 s before the window closes


@pytest.fixture
def inventory(fresh_lab: Lab, tmp_path: Path) -> Path:
    """A private copy of the lab's inventory (the flows rewrite it)."""
    copy = tmp_path / "inventory.toml"
    shutil.copyfile(fresh_lab.inventory, copy)
    return copy


def _pause_left_s(run_id: Any) -> float:
    """Seconds from now until the paused run's pause times out (as the Prefect server recorded it)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run_id).state
    assert state is not None and state.state_details.pause_timeout is not None, state
    return (state.state_details.pause_timeout - datetime.now(timezone.utc)).total_seconds()


def test_an_approval_after_the_window_closed_is_refused_and_the_wait_was_capped_by_the_window(
        fresh_lab: Lab, inventory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.flow_runs import resume_flow_run

    clock = {"now": SAT_0358_BERLIN}
    monkeypatch.setattr(common, "utcnow", lambda: clock["now"])   # the flow runs in this process (a thread)
    before = snapshot(fresh_lab)
    thread, box = _run_in_thread(scale_down, node_ids=[3], inventory=str(inventory), require_approval=True,
                                 approval_timeout_s=3600, maintenance_window=WINDOW,
                                 accept_no_fault_tolerance=True)
    run_id = _paused_run_id("scale-down-lab-node-3")
    left = _pause_left_s(run_id)
    assert 0 < left <= 95, f"the approval wait was not capped at the 90 s left in the window: {left:.0f} s left"
    clock["now"] = SAT_0358_BERLIN + timedelta(minutes=3)           # the window closed during the wait
    resume_flow_run(run_id, run_input={"approve": True, "reason": "late approval"})
    thread.join(120)
    assert not thread.is_alive()
    state = box["state"]
    message = str(state.message)
    assert state.is_failed(), state
    assert "the approval came after the maintenance window closed" in message and "nothing was changed" in message, \
        message
    assert snapshot(fresh_lab) == before


def test_a_leader_change_during_the_approval_wait_is_refused_saying_what_changed(
        fresh_lab: Lab, inventory: Path) -> None:
    from prefect.flow_runs import resume_flow_run

    from tests.faults.test_fault_matrix import poll

    voters, leader = voters_and_leader(fresh_lab, ["meta1", "meta2", "meta3"])
    assert voters == {1, 2, 3} and leader == 1, "the baseline leader is meta1"
    before = snapshot(fresh_lab)
    thread, box = _run_in_thread(scale_down, node_ids=[3], inventory=str(inventory), require_approval=True,
                                 accept_no_fault_tolerance=True)
    run_id = _paused_run_id("scale-down-lab-node-3")
    fresh_lab.root_exec("meta1", ["databend-metactl", "transfer-leader", "--to", "2",
                                  "--admin-api-address", fresh_lab.admin_address("meta1")])
    poll(lambda: voters_and_leader(fresh_lab, ["meta1", "meta2", "meta3"])[1] == 2, "meta-2 leads")
    resume_flow_run(run_id, run_input={"approve": True, "reason": "approved before the leader moved"})
    thread.join(120)
    assert not thread.is_alive()
    state = box["state"]
    message = str(state.message)
    assert state.is_failed(), state
    assert "the cluster changed while waiting for approval" in message, message
    assert "the leader moved: meta-1 -> meta-2" in message and "nothing was changed" in message, message
    after = snapshot(fresh_lab)
    assert after["files"] == before["files"] and after["services"] == before["services"]
    assert voters_and_leader(fresh_lab, ["meta1", "meta2", "meta3"]) == ({1, 2, 3}, 2)


def test_a_change_to_two_voters_is_refused_without_accept_no_fault_tolerance(fresh_lab: Lab, inventory: Path) -> None:
    before = snapshot(fresh_lab)
    state = scale_down(node_ids=[3], inventory=str(inventory), return_state=True, require_approval=False)
    message = str(state.message)
    assert state.is_failed(), state
    assert "tolerates no failure" in message and "accept_no_fault_tolerance=True" in message, message
    top = _plan_artifact().split("\n")[:6]      # the warnings come first, right under the title
    assert "WARNING: NO FAULT TOLERANCE" in top[2] and "EVEN NUMBER OF VOTERS: 2 voters" in top[4], top
    assert snapshot(fresh_lab) == before


def test_an_approved_scale_up_whose_cluster_did_not_change_runs_the_approved_plan(
        fresh_lab: Lab, inventory: Path) -> None:
    """The other side of the re-plan: nothing changed during the wait, so reading and planning again finds the same
    plan (no false alarm from the new host's facts, the file diffs or the notes) and the change runs."""
    from prefect.flow_runs import resume_flow_run

    spare = fresh_lab.host("spare1").ip
    thread, box = _run_in_thread(scale_up, new_nodes=[{"host": spare}], inventory=str(inventory),
                                 require_approval=True)
    run_id = _paused_run_id(f"scale-up-lab-{spare}")
    resume_flow_run(run_id, run_input={"approve": True, "reason": "looks right"})
    thread.join(180)
    assert not thread.is_alive()
    state = box["state"]
    assert state.is_completed(), state
    assert state.result().voters_after == [1, 2, 3, 4]
    assert voters_and_leader(fresh_lab, ["meta1", "spare1"])[0] == {1, 2, 3, 4}


def test_the_node_leading_at_its_leave_hands_over_to_a_node_that_stays(fresh_lab: Lab, inventory: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """4 voters; remove [3, 2] while meta-1 leads (the plan has no transfer). Right before meta-3's leave leadership
    moves to meta-2 (injected); before meta-2's own leave the flow must see that meta-2 leads now and hand over to
    meta-1 or meta-4, the nodes that stay, instead of letting the leader leave."""
    from tests.faults.test_fault_matrix import poll, wrap_task

    def meta2_takes_over() -> None:
        fresh_lab.root_exec("meta1", ["databend-metactl", "transfer-leader", "--to", "2",
                                      "--admin-api-address", fresh_lab.admin_address("meta1")])
        poll(lambda: voters_and_leader(fresh_lab, ["meta1", "meta2", "meta3"])[1] == 2, "meta-2 leads")

    up = scale_up(new_nodes=[{"host": fresh_lab.host("spare1").ip}], inventory=str(inventory), require_approval=False)
    assert up.voters_after == [1, 2, 3, 4]
    assert voters_and_leader(fresh_lab, ["meta1", "meta2", "meta3"])[1] == 1
    wrap_task(monkeypatch, "check_quorum_before_leave", meta2_takes_over)
    outcome = scale_down(node_ids=[3, 2], inventory=str(inventory), accept_no_fault_tolerance=True,
                         require_approval=False)
    assert outcome.voters_after == [1, 4]
    transfers = [s for s in outcome.changed_steps if s.startswith("transfer_leadership")]
    assert transfers and all(t.startswith("transfer_leadership on 127.100.0.12") for t in transfers), \
        outcome.changed_steps
    voters, leader = voters_and_leader(fresh_lab, ["meta1", "spare1"])
    assert voters == {1, 4} and leader in (1, 4)
