"""The scale-up / scale-down flows end to end: real Prefect server, real lab hosts (sshd, systemd, stand-in raft).

Each test starts from the baseline cluster (`fresh_lab`: meta1..3 voters, meta1 leader, spare1..2 unconfigured,
query1..2) and works on a copy of the lab's inventory, so the lab's own file stays the baseline.
"""

from __future__ import annotations

import contextvars
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flows.common import lock_name
from flows.scale_down import scale_down
from flows.scale_up import scale_up
from flows.sync_inventory import sync_inventory
from metascale.inventory import load_inventory
from sandbox.lab import Lab

pytestmark = [pytest.mark.lab, pytest.mark.prefect]

SPARE1, SPARE2 = "127.100.0.14", "127.100.0.15"
META_TOML = "/etc/databend/databend-meta.toml"
QUERY_TOML = "/etc/databend/databend-query.toml"
HOSTS = {"meta1": META_TOML, "meta2": META_TOML, "meta3": META_TOML, "spare1": META_TOML, "spare2": META_TOML,
         "query1": QUERY_TOML, "query2": QUERY_TOML}


@pytest.fixture
def inventory(fresh_lab: Lab, tmp_path: Path) -> Path:
    """A private copy of the lab's inventory (the flows rewrite it)."""
    copy = tmp_path / "inventory.toml"
    shutil.copyfile(fresh_lab.inventory, copy)
    return copy


def _snapshot(lab: Lab) -> dict[str, Any]:
    """Every config file on every host, the services' state and the membership as each meta host sees it."""
    files = {name: lab.root_exec(name, ["cat", path]).stdout for name, path in HOSTS.items()}
    services = {name: lab.root_exec(name, ["systemctl", "is-active", "databend-meta"], check=False).stdout.strip()
                for name in HOSTS if not name.startswith("query")}
    membership = {name: lab.meta_status(name) for name in ("meta1", "meta2", "meta3")}
    return {"files": files, "services": services, "membership": membership}


def _voters(lab: Lab, name: str) -> set[int]:
    return lab.meta_status(name)[1]


def _leader(lab: Lab, names: list[str]) -> int:
    """The id of the node whose own state is Leader among `names`."""
    for index, name in enumerate(names):
        if lab.meta_status(name)[0] == "Leader":
            return {"meta1": 1, "meta2": 2, "meta3": 3, "spare1": 4, "spare2": 5}[name]
    raise AssertionError(f"no leader among {names}")


def _endpoints(lab: Lab, query: str = "query1") -> str:
    return lab.root_exec(query, ["cat", QUERY_TOML]).stdout


def _plan_artifact(cluster: str = "lab") -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"plan-{cluster}"])),
                                      limit=1, sort="CREATED_DESC")
    assert found, f"no plan-{cluster} artifact"
    return str(found[0].data)


def _assert_cannot_rejoin(lab: Lab, name: str, node_id: int, watcher: str) -> None:
    """An operator's mistake after a removal: `systemctl start databend-meta` on the removed host. It must fail to
    start (join emptied, single off) and the node must stay out of the membership."""
    config = lab.root_exec(name, ["cat", META_TOML]).stdout
    assert config.startswith("# metascale: this node was removed") and "join = []" in config
    lab.root_exec(name, ["systemctl", "start", "databend-meta"], check=False)
    deadline = time.monotonic() + 30
    state = ""
    while time.monotonic() < deadline:
        state = lab.root_exec(name, ["systemctl", "is-active", "databend-meta"], check=False).stdout.strip()
        if state in ("failed", "inactive"):
            break
        time.sleep(0.1)
    assert state in ("failed", "inactive"), f"the removed node's service is {state!r} after a manual start"
    journal = lab.root_exec(name, ["journalctl", "-u", "databend-meta", "-n", "20", "--no-pager"], check=False).stdout
    assert "at least one of `single` and `join` needs to be enabled" in journal
    assert node_id not in _voters(lab, watcher)


def _timed(fn: Callable[..., Any], **kwargs: Any) -> tuple[Any, float]:
    started = time.monotonic()
    result = fn(**kwargs)
    return result, time.monotonic() - started


def test_scale_3_4_5_4_3_including_the_leader(fresh_lab: Lab, inventory: Path) -> None:
    up1, up_s = _timed(scale_up, new_nodes=[{"host": SPARE1}], inventory=str(inventory), require_approval=False)
    assert up1.changed and up1.voters_after == [1, 2, 3, 4]
    assert _voters(fresh_lab, "spare1") == {1, 2, 3, 4}
    assert "| quorum size | 2 | 3 |" in _plan_artifact()
    assert f"{SPARE1}:9191" in _endpoints(fresh_lab) and load_inventory(inventory).meta_ids == [1, 2, 3, 4]

    again = scale_up(new_nodes=[{"host": SPARE1}], inventory=str(inventory), require_approval=False)
    assert not again.changed and "nothing to do" in again.message

    up2 = scale_up(new_nodes=[{"host": SPARE2}], inventory=str(inventory), require_approval=False)
    assert up2.voters_after == [1, 2, 3, 4, 5] and _voters(fresh_lab, "meta2") == {1, 2, 3, 4, 5}

    leader = _leader(fresh_lab, ["meta1", "meta2", "meta3", "spare1", "spare2"])
    down1, down_s = _timed(scale_down, node_ids=[leader], inventory=str(inventory), require_approval=False)
    assert down1.voters_after == sorted({1, 2, 3, 4, 5} - {leader})
    assert "move leadership" in _plan_artifact()
    left = {1: "meta1", 2: "meta2", 3: "meta3", 4: "spare1", 5: "spare2"}[leader]
    assert fresh_lab.root_exec(left, ["systemctl", "is-enabled", "databend-meta"], check=False).stdout.strip() \
        == "disabled"
    assert fresh_lab.root_exec(left, ["systemctl", "is-active", "databend-meta"], check=False).stdout.strip() \
        != "active"
    _assert_cannot_rejoin(fresh_lab, left, leader, watcher="meta1" if left != "meta1" else "meta2")

    down2 = scale_down(node_ids=[5 if leader != 5 else 4], inventory=str(inventory), require_approval=False)
    assert len(down2.voters_after) == 3
    rerun = scale_down(node_ids=[5 if leader != 5 else 4], inventory=str(inventory), require_approval=False)
    assert not rerun.changed and "nothing to remove" in rerun.plan_markdown
    remaining = load_inventory(inventory)
    assert remaining.meta_ids == down2.voters_after
    query_text = _endpoints(fresh_lab, "query2")
    for node in remaining.meta_nodes:
        assert node.grpc_addr in query_text
    assert f"127.100.0.{10 + leader}:9191" not in query_text
    print(f"\nMEASURED scale-up 3->4: {up_s:.1f} s wall, changes {up1.elapsed_s:.1f} s, waiting {up1.waited_s:.1f} s; "
          f"scale-down of the leader 5->4: {down_s:.1f} s wall, changes {down1.elapsed_s:.1f} s, "
          f"waiting {down1.waited_s:.1f} s")


def test_dry_runs_change_nothing(fresh_lab: Lab, inventory: Path) -> None:
    """Dry runs change nothing, and take no lock: while another run holds the cluster's lock they do not wait for it
    (they used to, up to 300 s) and their plan says that a change is running."""
    from datetime import datetime, timezone
    from uuid import uuid4

    from flows.cluster_lock import ClusterLock

    started = datetime.now(timezone.utc)
    before = _snapshot(fresh_lab)
    inventory_text = inventory.read_text()
    other = ClusterLock.acquire("lab", run_id=str(uuid4()), run_name="someone-elses-change", action="scale-up")
    try:
        up_thread, up_box = _run_in_thread(scale_up, new_nodes=[{"host": SPARE1}], inventory=str(inventory),
                                           dry_run=True, require_approval=False)
        up_thread.join(60)
        assert not up_thread.is_alive(), "a dry run waited for the lock another run holds"
        down_thread, down_box = _run_in_thread(scale_down, node_ids=[1], inventory=str(inventory), dry_run=True,
                                               require_approval=False)
        down_thread.join(60)
        assert not down_thread.is_alive(), "a dry run waited for the lock another run holds"
        plan = _plan_artifact()  # scale-down's, before sync-inventory publishes its own
        sync_thread, sync_box = _run_in_thread(sync_inventory, inventory=str(inventory), dry_run=True)
        sync_thread.join(60)
        assert not sync_thread.is_alive(), "a dry run waited for the lock another run holds"
        assert sync_box["state"].is_completed(), sync_box["state"]
    finally:
        other.release()
    up, down = up_box["state"].result(), down_box["state"].result()
    assert up.dry_run and not up.changed and down.dry_run and not down.changed
    assert "transfer" not in down.message
    assert _snapshot(fresh_lab) == before and inventory.read_text() == inventory_text
    assert "move leadership to meta-" in plan
    assert "another change is running on this cluster: flow run someone-elses-change" in plan, plan
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterExpectedStartTime, FlowRunFilterName

    with get_client(sync_client=True) as client:  # only this test's runs: the server is shared by the session
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            name=FlowRunFilterName(any_=["scale-down-lab-node-1", f"scale-up-lab-{SPARE1}"]),
            expected_start_time=FlowRunFilterExpectedStartTime(after_=started)))
    assert len(runs) == 2 and all({"metascale", "cluster:lab"} <= set(run.tags) for run in runs)


def test_refuses_a_removal_that_would_lose_quorum_and_changes_nothing(fresh_lab: Lab, inventory: Path) -> None:
    fresh_lab.crash("meta3")
    before = _snapshot(fresh_lab)
    state = scale_down(node_ids=[2], inventory=str(inventory), return_state=True, require_approval=False)
    assert state.is_failed()
    message = str(state.message)
    assert "below the quorum of 2" in message and "remove the dead node meta-3 first" in message
    assert _snapshot(fresh_lab)["files"] == before["files"]
    assert _voters(fresh_lab, "meta1") == {1, 2, 3}


def test_force_removes_a_dead_node_through_the_live_ones(fresh_lab: Lab, inventory: Path) -> None:
    text = inventory.read_text()
    assert "connect_timeout_s = 3" in text  # the lab's: a dead host costs 3 s per try
    fresh_lab.stop_host("meta3")
    refused = scale_down(node_ids=[3], inventory=str(inventory), return_state=True, require_approval=False)
    assert refused.is_failed() and "force=True" in str(refused.message)
    outcome = scale_down(node_ids=[3], inventory=str(inventory), force=True, verify_deadline_s=30,
                         accept_no_fault_tolerance=True, require_approval=False)
    assert outcome.voters_after == [1, 2] and outcome.skipped_steps
    assert "host dead" in outcome.message
    assert _voters(fresh_lab, "meta1") == {1, 2} and load_inventory(inventory).meta_ids == [1, 2]
    assert "127.100.0.13" not in _endpoints(fresh_lab)


def test_failure_mid_run_then_rerun_converges(fresh_lab: Lab, inventory: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect import task

    from metascale.errors import RemoteCommandError
    from tasks import runbook

    @task(name="update-query-meta-endpoints")
    def broken(inventory: Any, query: Any, endpoints: list[str]) -> Any:
        raise RemoteCommandError(query.host, "injected failure", 1, "disk full (injected by the test)")

    monkeypatch.setattr(runbook, "update_query_meta_endpoints", broken)
    failed = scale_up(new_nodes=[{"host": SPARE1}], inventory=str(inventory), return_state=True, require_approval=False)
    assert failed.is_failed()
    message = str(failed.message)
    assert "failed at step 'update query meta endpoints'" in message and "rerun the same flow" in message
    assert _voters(fresh_lab, "meta1") == {1, 2, 3, 4}          # the cluster took the node
    assert load_inventory(inventory).meta_ids == [1, 2, 3]      # not recorded yet
    assert f"{SPARE1}:9191" not in _endpoints(fresh_lab)

    monkeypatch.undo()
    rerun = scale_up(new_nodes=[{"host": SPARE1}], inventory=str(inventory), require_approval=False)
    assert rerun.voters_after == [1, 2, 3, 4] and rerun.changed
    assert not any(s.startswith("start_meta_service") for s in rerun.changed_steps)
    assert f"{SPARE1}:9191" in _endpoints(fresh_lab) and load_inventory(inventory).meta_ids == [1, 2, 3, 4]
    third = scale_up(new_nodes=[{"host": SPARE1}], inventory=str(inventory), require_approval=False)
    assert not third.changed


def _run_in_thread(fn: Callable[..., Any], **kwargs: Any) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}
    context = contextvars.copy_context()  # Prefect's settings (the test server's URL) live in context variables

    def target() -> None:
        box["started"] = time.monotonic()
        box["state"] = fn(return_state=True, **kwargs)
        box["ended"] = time.monotonic()

    thread = threading.Thread(target=context.run, args=(target,), daemon=True)
    thread.start()
    return thread, box


def _paused_run_id(name_prefix: str, deadline_s: float = 60) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    deadline = time.monotonic() + deadline_s
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
            for run in runs:
                if run.name.startswith(name_prefix):
                    return run.id
            time.sleep(0.2)
    raise AssertionError(f"no paused run named {name_prefix}* within {deadline_s} s")


@pytest.mark.parametrize("approve", [True, False])
def test_approval_gate(fresh_lab: Lab, inventory: Path, approve: bool) -> None:
    from prefect.flow_runs import resume_flow_run

    before = _snapshot(fresh_lab)
    thread, box = _run_in_thread(scale_down, node_ids=[3], inventory=str(inventory), require_approval=True,
                                 accept_no_fault_tolerance=True)
    run_id = _paused_run_id("scale-down-lab-node-3")
    assert _snapshot(fresh_lab) == before                           # paused: nothing changed yet
    resume_flow_run(run_id, run_input={"approve": approve, "reason": "test says so"})
    thread.join(120)
    assert not thread.is_alive()
    state = box["state"]
    if approve:
        assert state.is_completed() and _voters(fresh_lab, "meta1") == {1, 2}
    else:
        assert state.is_failed() and "rejected by operator: test says so" in str(state.message)
        assert state.name == "Refused", state                       # D1: a refusal, not a breakage
        assert _snapshot(fresh_lab) == before


def test_two_runs_on_one_cluster_are_serialized(fresh_lab: Lab, inventory: Path) -> None:
    first, box1 = _run_in_thread(scale_up, new_nodes=[{"host": SPARE1}], inventory=str(inventory),
                                   require_approval=False)
    second, box2 = _run_in_thread(scale_up, new_nodes=[{"host": SPARE2}], inventory=str(inventory),
                                    require_approval=False)
    first.join(180)
    second.join(180)
    assert box1["state"].is_completed() and box2["state"].is_completed()
    assert _voters(fresh_lab, "meta1") == {1, 2, 3, 4, 5}          # unlocked, both would have picked id 4
    assert load_inventory(inventory).meta_ids == [1, 2, 3, 4, 5]
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(lock_name("lab")).limit == 1


def test_approval_timeout_fails_cleanly_with_nothing_changed(fresh_lab: Lab, inventory: Path) -> None:
    before = _snapshot(fresh_lab)
    state = scale_down(node_ids=[3], inventory=str(inventory), require_approval=True, approval_timeout_s=2,
                       accept_no_fault_tolerance=True,
                       return_state=True)
    # a refusal (D1): FAILED-type, named Refused, our reason (not the server's "paused and never resumed")
    message = str(state.message)
    assert state.is_failed() and state.name == "Refused", state
    assert "no approval within 2 s; nothing was changed" in message, message
    assert _snapshot(fresh_lab) == before


def test_two_nodes_in_one_run_are_added_and_removed_one_at_a_time(fresh_lab: Lab, inventory: Path) -> None:
    up = scale_up(new_nodes=[{"host": SPARE1}, {"host": SPARE2}], inventory=str(inventory), require_approval=False)
    assert up.voters_after == [1, 2, 3, 4, 5] and _voters(fresh_lab, "spare2") == {1, 2, 3, 4, 5}
    joins = [s for s in up.changed_steps if s.startswith("write_new_node_config")]
    assert len(joins) == 2 and "127.100.0.14:28004" in joins[1]     # the second joined through the first as well
    down = scale_down(node_ids=[4, 5], inventory=str(inventory), require_approval=False)
    assert down.voters_after == [1, 2, 3] and _voters(fresh_lab, "meta1") == {1, 2, 3}
    assert load_inventory(inventory).meta_ids == [1, 2, 3]
