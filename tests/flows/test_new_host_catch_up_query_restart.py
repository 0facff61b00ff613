"""Issue #9 items 1, 4 and 8 end to end on the lab (real Prefect server, strict stand-in).

* item 1: spare1 started once with the packaged config (`single = true`, `id = 0`) is a one-node cluster of its
  own; scale-up refuses it before anything changes, `reset_new_node` moves its raft dir aside and goes on, and an
  undo never stops or disables the service that ran before the run;
* item 4: "joined" means voter AND caught up (the lab preloads data, so a new voter lags for a moment);
* item 8: `restart_query_nodes` restarts the query nodes one at a time, each healthy before the next, and they
  then use the new membership.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from flows.scale_up import scale_up
from metascale.inventory import load_inventory
from metascale.status import ClusterStatus
from sandbox.lab import Lab

pytestmark = [pytest.mark.lab, pytest.mark.prefect]

SPARE1 = "127.100.0.14"
META_TOML = "/etc/databend/databend-meta.toml"
RAFT_DIR = "/var/lib/databend/raft"


@pytest.fixture
def inventory(fresh_lab: Lab, tmp_path: Path) -> Path:
    """A private copy of the lab's inventory (the flows rewrite it)."""
    copy = tmp_path / "inventory.toml"
    shutil.copyfile(fresh_lab.inventory, copy)
    return copy


def _unit(lab: Lab, host: str, unit: str = "databend-meta") -> tuple[str, str]:
    active = lab.root_exec(host, ["systemctl", "is-active", unit], check=False).stdout.strip()
    enabled = lab.root_exec(host, ["systemctl", "is-enabled", unit], check=False).stdout.strip()
    return active, enabled


def _raft_dirs(lab: Lab, host: str) -> str:
    """Every entry of /var/lib/databend (the raft dir and anything moved aside next to it), recursively."""
    return lab.root_exec(host, ["find", "/var/lib/databend", "-mindepth", "1", "-maxdepth", "2"]).stdout


def _start_spare_once_with_the_packaged_config(lab: Lab, host: str = "spare1") -> None:
    """What an operator does when following "deploy the meta service" on the new host: enable and start it with the
    packaged config. It forms a one-node cluster of its own (id 0)."""
    assert "single" in lab.root_exec(host, ["grep", "-E", "^single", META_TOML]).stdout
    lab.root_exec(host, ["systemctl", "enable", "--now", "databend-meta"])
    deadline = time.monotonic() + 30
    while lab.meta_status(host) != ("Leader", {0}):
        assert time.monotonic() < deadline, f"{host} did not become a one-node cluster: {lab.meta_status(host)}"
    assert _unit(lab, host) == ("active", "enabled")


def test_scale_up_refuses_a_new_host_that_is_a_one_node_cluster_of_its_own(fresh_lab: Lab, inventory: Path) -> None:
    _start_spare_once_with_the_packaged_config(fresh_lab)
    config_before, dirs_before = fresh_lab.root_exec("spare1", ["cat", META_TOML]).stdout, _raft_dirs(fresh_lab,
                                                                                                      "spare1")
    started = time.monotonic()
    state = scale_up(new_nodes=[{"host": SPARE1}], inventory=str(inventory), return_state=True, require_approval=False)
    elapsed = time.monotonic() - started
    assert state.is_failed() and elapsed < 10, (state.message, elapsed)
    message = str(state.result(raise_on_failure=False))
    assert "one-node cluster of its own" in message and "reset_new_node=True" in message and RAFT_DIR in message
    assert _unit(fresh_lab, "spare1") == ("active", "enabled")           # as before the run
    assert fresh_lab.meta_status("spare1") == ("Leader", {0})
    assert fresh_lab.root_exec("spare1", ["cat", META_TOML]).stdout == config_before
    assert _raft_dirs(fresh_lab, "spare1") == dirs_before
    assert fresh_lab.meta_status("meta1")[1] == {1, 2, 3} and load_inventory(inventory).meta_ids == [1, 2, 3]


def test_reset_new_node_moves_the_raft_dir_aside_and_joins(fresh_lab: Lab, inventory: Path) -> None:
    _start_spare_once_with_the_packaged_config(fresh_lab)
    outcome = scale_up(new_nodes=[{"host": SPARE1}], inventory=str(inventory), reset_new_node=True,
                       require_approval=False)
    assert outcome.voters_after == [1, 2, 3, 4]
    assert "one-node cluster of its own" in outcome.plan_markdown
    assert any(s.startswith("reset_new_node_raft_dir") for s in outcome.changed_steps)
    assert fresh_lab.meta_status("spare1")[1] == {1, 2, 3, 4}
    assert f"{RAFT_DIR}.reset-" in _raft_dirs(fresh_lab, "spare1")
    assert _unit(fresh_lab, "spare1") == ("active", "enabled")


def test_undo_after_a_failed_join_keeps_the_service_that_ran_before(fresh_lab: Lab, inventory: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect import task

    from metascale.errors import ClusterNotConverged
    from tasks import runbook

    _start_spare_once_with_the_packaged_config(fresh_lab)

    @task(name="verify-node-joined")
    def never_joins(inventory: Any, node: Any, deadline_s: float) -> Any:
        raise ClusterNotConverged("meta-4 is a voter", "injected by the test", 0.0)

    monkeypatch.setattr(runbook, "verify_node_joined", never_joins)
    monkeypatch.setattr(runbook, "read_cluster_status", _without_spare(runbook.read_cluster_status))
    state = scale_up(new_nodes=[{"host": SPARE1}], inventory=str(inventory), reset_new_node=True,
                     return_state=True, require_approval=False)
    assert state.is_failed()
    message = str(state.message)
    assert "failed at step 'verify meta-4 joined'" in message, message
    assert "kept running and enabled: it was so before the run" in message, message
    assert _unit(fresh_lab, "spare1") == ("active", "enabled")


def _without_spare(read: Any) -> Any:
    """read_cluster_status that never asks meta-4 (so the undo treats it as not joined, as after a real failure)."""
    from prefect import task

    @task(name="read-cluster-status")
    def reader(inventory: Any, nodes: Any = None, settle_s: float = 3.0) -> ClusterStatus:
        asked = [n for n in (nodes if nodes is not None else inventory.meta_nodes) if n.host != SPARE1]
        status = read.fn(inventory, asked, settle_s)
        leader = status.leader_status
        if leader is None or 4 not in leader.voter_ids:
            return status
        return ClusterStatus(cluster=status.cluster, probes=[
            p.model_copy(update={"status": p.status.model_copy(update={
                "voters": [v for v in p.status.voters if v.node_id != 4]})}) if p.status else p
            for p in status.probes])

    return reader


def test_a_new_voter_counts_as_joined_only_once_caught_up(fresh_lab: Lab, inventory: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks import runbook

    seen: list[ClusterStatus] = []
    real = runbook.verify_node_joined

    def recording(*args: Any, **kwargs: Any) -> ClusterStatus:
        status = real(*args, **kwargs)
        seen.append(status)
        return status

    monkeypatch.setattr(runbook, "verify_node_joined", recording)
    outcome = scale_up(new_nodes=[{"host": SPARE1}], inventory=str(inventory), require_approval=False)
    assert outcome.voters_after == [1, 2, 3, 4]
    assert "counts as a voter as soon as it joins; metascale waits until it has caught up" in outcome.plan_markdown
    (joined,) = seen
    leader = joined.leader_status
    assert leader is not None and 4 in leader.voter_ids
    # caught up to where the cluster was when it joined: during the stand-in's catch-up window the leader's
    # replication of meta-4 starts near index 1; entries written since (its own registration) may still be in flight
    applied = leader.last_applied_index
    assert applied is not None and 4 in leader.replication, leader.replication
    assert leader.replication[4] >= applied - 3, (leader.replication, applied, leader.lagging_ids)


def _query_state(lab: Lab, host: str) -> dict[str, Any]:
    shown = lab.root_exec(host, ["systemctl", "show", "databend-query", "-p", "MainPID",
                                 "-p", "ActiveEnterTimestampMonotonic", "-p", "InactiveEnterTimestampMonotonic"])
    fields = dict(line.split("=", 1) for line in shown.stdout.splitlines() if "=" in line)
    endpoints = lab.root_exec(host, ["curl", "-sS", "--fail", "http://127.0.0.1:8080/v1/meta/endpoints"])
    return {"pid": int(fields["MainPID"]), "active_at": int(fields["ActiveEnterTimestampMonotonic"]),
            "stopped_at": int(fields["InactiveEnterTimestampMonotonic"]), "meta": json.loads(endpoints.stdout)}


def test_restart_query_nodes_restarts_them_one_at_a_time_with_the_new_endpoints(fresh_lab: Lab,
                                                                                 inventory: Path) -> None:
    before = {q: _query_state(fresh_lab, q) for q in ("query1", "query2")}
    assert all(f"{SPARE1}:9191" not in json.dumps(s["meta"]) for s in before.values())
    outcome = scale_up(new_nodes=[{"host": SPARE1}], inventory=str(inventory), restart_query_nodes=True,
                       require_approval=False)
    assert outcome.voters_after == [1, 2, 3, 4]
    assert "restarted by this run after its endpoints are written" in outcome.plan_markdown
    assert [s.split(" on ")[1].split(":")[0] for s in outcome.changed_steps
            if s.startswith("restart_query_node")] == ["127.100.0.16", "127.100.0.17"]
    after = {q: _query_state(fresh_lab, q) for q in ("query1", "query2")}
    for name in ("query1", "query2"):
        assert after[name]["pid"] != before[name]["pid"] and _unit(fresh_lab, name, "databend-query")[0] == "active"
        assert f"{SPARE1}:9191" in json.dumps(after[name]["meta"]), after[name]["meta"]
    # one at a time: query2 went down only after query1 was up again
    assert after["query2"]["stopped_at"] > after["query1"]["active_at"]
