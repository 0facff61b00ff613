"""Issue #9 item 1: a new host whose raft dir is already initialised (reference §3.3, §3.5).

The pre-flight reads the new host's own config (raft_dir), whether that dir holds data, the service's state before
the run and, when it runs, which cluster it is in; the planner refuses before anything changes, or (reset_new_node)
moves the raft dir aside only for a one-node cluster of its own. An undo never stops or disables a service that ran
(or was enabled) before the run.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

import flows.scale_up as scale_up_flow
from metascale import steps
from metascale.errors import PlanRefused
from metascale.inventory import Inventory
from metascale.plan import ClusterView, HostFacts, NewNodeSpec, plan_scale_up
from metascale.status import ClusterStatus, NodeProbe, parse_metactl_status
from tasks import runbook as rb
from tests.unit.fakes import FakeRemote, metactl_status_text

SPARE = "127.100.0.14"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "configs"
META_CONFIG = "/etc/databend/databend-meta.toml"
RAFT_DIR = "/var/lib/databend/raft"


def _inventory() -> Inventory:
    return Inventory.model_validate({
        "name": "lab", "ssh": {"private_key_file": "/k", "known_hosts_file": "/kh"},
        "meta": [{"id": i, "host": f"127.100.0.{10 + i}"} for i in (1, 2, 3)],
        "query": [{"host": "127.100.0.16"}],
    })


def _view() -> ClusterView:
    return ClusterView(cluster="lab", leader_id=1, voters=frozenset({1, 2, 3}), answering={1: 9, 2: 9, 3: 9},
                       node_addrs={i: f"127.100.0.{10 + i}:28004" for i in (1, 2, 3)})


def _facts(**kw: Any) -> dict[str, HostFacts]:
    base: dict[str, Any] = {"host": SPARE, "reachable": True, "has_package": True, "raft_dir": RAFT_DIR}
    return {SPARE: HostFacts(**{**base, **kw})}


ONE_NODE_OF_ITS_OWN = {"meta_active": True, "meta_enabled": True, "raft_dir_in_use": True, "own_node_id": 0,
                       "own_voters": (0,), "busy_ports": (28004, 9191, 28002)}


@pytest.mark.parametrize(("facts", "reset", "needles"), [
    (ONE_NODE_OF_ITS_OWN, False, ["one-node cluster of its own", "meta-0", RAFT_DIR, "reset_new_node=True",
                                  "--reset-new-node"]),
    ({**ONE_NODE_OF_ITS_OWN, "own_node_id": 7, "own_voters": (5, 6, 7)}, True,
     ["meta-7 of another cluster", "[5, 6, 7]", "never touches"]),
    ({**ONE_NODE_OF_ITS_OWN, "own_node_id": 2, "own_voters": (1, 2, 3)}, True, ["this cluster under another"]),
    ({"raft_dir_in_use": True}, False, [f"raft dir {RAFT_DIR}", "not running", "start it so metascale can see"]),
    ({"raft_dir_in_use": True}, True, ["start it so metascale can see what it is, or move the raft dir aside "
                                       "yourself"]),
    ({"meta_active": True, "status_error": "connection refused", "raft_dir_in_use": True}, True,
     ["status cannot be read", "connection refused"]),
])
def test_new_host_already_initialised_is_refused_with_reason_and_fix(facts: dict[str, Any], reset: bool,
                                                                      needles: list[str]) -> None:
    with pytest.raises(PlanRefused) as refused:
        plan_scale_up(_inventory(), _view(), [NewNodeSpec(host=SPARE)], _facts(**facts), reset_new_node=reset)
    message = str(refused.value)
    assert "\n" not in message and SPARE in message
    for needle in needles:
        assert needle in message, message


def test_reset_new_node_plans_to_move_the_raft_dir_of_a_one_node_cluster_of_its_own() -> None:
    plan = plan_scale_up(_inventory(), _view(), [NewNodeSpec(host=SPARE)], _facts(**ONE_NODE_OF_ITS_OWN),
                         reset_new_node=True)
    (change,) = plan.changes
    assert change.reset_raft_dir == RAFT_DIR and change.node_id == 4
    assert change.service_was_active and change.service_was_enabled
    assert f"move its raft dir `{RAFT_DIR}` aside" in plan.to_markdown()


def test_a_clean_new_host_needs_no_reset_and_records_its_prior_state() -> None:
    plan = plan_scale_up(_inventory(), _view(), [NewNodeSpec(host=SPARE)], _facts(meta_enabled=True),
                         reset_new_node=True)
    (change,) = plan.changes
    assert change.reset_raft_dir == "" and not change.service_was_active and change.service_was_enabled


def test_busy_ports_of_a_stopped_service_are_still_refused() -> None:
    with pytest.raises(PlanRefused, match=r"ports \[9191\] in use"):
        plan_scale_up(_inventory(), _view(), [NewNodeSpec(host=SPARE)], _facts(busy_ports=(9191,)))


# ---- read_new_host_facts against a fake host ----------------------------------------------------------------------
def _spare(active: str = "active", enabled: str = "enabled", raft_entries: list[str] | None = None,
           status: str | None = None, raft_dir: str = RAFT_DIR) -> FakeRemote:
    remote = FakeRemote(host=SPARE)
    text = (FIXTURES / "databend-meta.toml").read_text()
    edited = re.sub(r'(?m)^raft_dir\s*=\s*".*"$', f'raft_dir = "{raft_dir}"', text)
    assert f'raft_dir = "{raft_dir}"' in edited  # the packaged file names the raft dir
    remote.files[META_CONFIG] = edited
    remote.units["databend-meta"] = [active, enabled]
    remote.dirs[raft_dir] = list(raft_entries if raft_entries is not None else ["df_meta"])
    remote.on(["test", "-x"], 0)
    if status is not None:
        remote.on(["databend-metactl", "status"], 0, status)
    return remote


def test_read_new_host_facts_sees_a_one_node_cluster_of_its_own() -> None:
    own = metactl_status_text(0, "Leader", 0, voters=(0,))
    remote = _spare(status=own, raft_dir="/data/meta")
    facts = steps.read_new_host_facts(remote, _inventory(), NewNodeSpec(host=SPARE))
    assert facts.raft_dir == "/data/meta" and facts.raft_dir_in_use  # from the host's own config, not the inventory
    assert facts.meta_active and facts.meta_enabled and facts.own_node_id == 0 and facts.own_voters == (0,)
    assert facts.own_one_node_cluster
    status_calls = remote.ran("databend-metactl", "status")
    assert status_calls and status_calls[0][-1] == "127.0.0.1:9191"  # the packaged 0.0.0.0 bind, probed locally
    assert not remote.writes and not remote.ran("systemctl", "stop") and not remote.ran("mv")


def test_read_new_host_facts_of_a_clean_stopped_host() -> None:
    remote = _spare(active="inactive", enabled="disabled", raft_entries=[])
    facts = steps.read_new_host_facts(remote, _inventory(), NewNodeSpec(host=SPARE))
    assert not facts.meta_active and not facts.meta_enabled and not facts.raft_dir_in_use
    assert facts.own_node_id is None and not remote.ran("databend-metactl")


def test_read_new_host_facts_keeps_an_unreadable_status_as_a_fact() -> None:
    remote = _spare()
    remote.on(["databend-metactl", "status"], 1, "", "Error: connection refused")
    remote.on(["curl"], 7, "", "curl: (7) Failed to connect")
    facts = steps.read_new_host_facts(remote, _inventory(), NewNodeSpec(host=SPARE))
    assert facts.meta_active and facts.own_node_id is None and "connection refused" in facts.status_error


# ---- reset_new_node_raft_dir ---------------------------------------------------------------------------------------
def test_reset_moves_the_raft_dir_aside_after_stopping_a_one_node_cluster() -> None:
    remote = _spare(status=metactl_status_text(0, "Leader", 0, voters=(0,)))
    result = steps.reset_new_node_raft_dir(remote, _inventory(), RAFT_DIR)
    assert result.changed and result.backup_path and result.backup_path.startswith(f"{RAFT_DIR}.reset-")
    assert remote.units["databend-meta"][0] == "inactive"
    assert remote.dirs[RAFT_DIR] == [] and remote.dirs[result.backup_path] == ["df_meta"]
    again = steps.reset_new_node_raft_dir(remote, _inventory(), RAFT_DIR)
    assert not again.changed and "nothing to reset" in again.detail


def test_reset_never_touches_a_member_of_a_multi_node_cluster() -> None:
    remote = _spare(status=metactl_status_text(2, "Follower", 1, voters=(1, 2, 3)))
    with pytest.raises(PlanRefused, match=r"voters \[1, 2, 3\], not a one-node cluster of its own"):
        steps.reset_new_node_raft_dir(remote, _inventory(), RAFT_DIR)
    assert remote.units["databend-meta"] == ["active", "enabled"] and remote.dirs[RAFT_DIR] == ["df_meta"]
    assert not remote.ran("mv") and not remote.ran("systemctl", "stop")


# ---- the undo after a failed run respects the service's state before the run ----------------------------------------
class _Logger:
    def warning(self, *args: object) -> None:
        pass


def _undo(monkeypatch: pytest.MonkeyPatch, was_active: bool, was_enabled: bool) -> list[dict[str, Any]]:
    plan = plan_scale_up(_inventory(), _view(), [NewNodeSpec(host=SPARE)],
                         _facts(meta_active=was_active, meta_enabled=was_enabled, busy_ports=(),
                                **({"own_node_id": 0, "own_voters": (0,), "raft_dir_in_use": True}
                                   if was_active else {})),
                         reset_new_node=True)
    stops: list[dict[str, Any]] = []
    not_joined = ClusterStatus(cluster="lab", probes=[
        NodeProbe(node_id=i, host=f"127.100.0.{10 + i}",
                  status=parse_metactl_status(metactl_status_text(i, "Leader" if i == 1 else "Follower", 1)))
        for i in (1, 2, 3)])
    monkeypatch.setattr(scale_up_flow, "get_run_logger", lambda: _Logger())
    monkeypatch.setattr(rb, "read_cluster_status", lambda *a, **k: not_joined)
    monkeypatch.setattr(rb, "stop_new_node", lambda inv, node, stop=True, disable=True: stops.append(
        {"host": node.host, "stop": stop, "disable": disable}))
    monkeypatch.setattr(rb, "restore_config_from_backup", lambda *a, **k: None)
    progress = rb.Progress()
    progress.record([steps.StepResult(step="start_meta_service", host=SPARE, changed=True, detail="enabled")])
    scale_up_flow.undo_unjoined(_inventory(), plan, progress)
    return stops


def test_undo_never_stops_or_disables_a_service_that_ran_and_was_enabled_before(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert _undo(monkeypatch, was_active=True, was_enabled=True) == []


def test_undo_only_disables_a_service_that_ran_but_was_not_enabled_before(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _undo(monkeypatch, was_active=True, was_enabled=False) == [{"host": SPARE, "stop": False, "disable": True}]


def test_undo_stops_but_keeps_enabled_a_service_that_was_only_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _undo(monkeypatch, was_active=False, was_enabled=True) == [{"host": SPARE, "stop": True, "disable": False}]


def test_undo_stops_and_disables_what_the_run_started_on_a_clean_host(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _undo(monkeypatch, was_active=False, was_enabled=False) == [{"host": SPARE, "stop": True, "disable": True}]
