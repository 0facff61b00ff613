"""Issue #9 item 8: when the query nodes see the change (reference §5.2).

A query node reads `[meta] endpoints` at start; at run time it follows membership only with auto_sync_interval > 0
and when every meta node advertises a reachable gRPC address. The plan says so per query node; restart_query_nodes
restarts them one at a time (`systemctl restart`, never reload), each healthy first, and refuses when no endpoint
of the new list answers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import flows.common as common
from metascale import steps
from metascale.errors import PlanRefused
from metascale.inventory import Inventory
from metascale.plan import (
    ClusterView,
    HostFacts,
    NewNodeSpec,
    QueryFacts,
    advertise_unreachable_reason,
    plan_scale_down,
    plan_scale_up,
    query_pickup_notes,
    query_restart_blocked_reason,
)
from metascale.status import ClusterStatus, NodeProbe, parse_metactl_status
from tasks import runbook as rb
from tests.unit.fakes import FakeRemote, metactl_status_text

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "configs"
QUERY_CONFIG = "/etc/databend/databend-query.toml"
NET = "127.100.0"
Q1, Q2 = f"{NET}.16", f"{NET}.17"


def _inventory() -> Inventory:
    return Inventory.model_validate({
        "name": "lab", "ssh": {"private_key_file": "/k", "known_hosts_file": "/kh"},
        "meta": [{"id": i, "host": f"{NET}.{10 + i}"} for i in (1, 2, 3)],
        "query": [{"host": Q1}, {"host": Q2}],
    })


def _view(advertise: dict[int, str] | None = None) -> ClusterView:
    grpc = advertise if advertise is not None else {i: f"{NET}.{10 + i}:9191" for i in (1, 2, 3)}
    return ClusterView(cluster="lab", leader_id=1, voters=frozenset({1, 2, 3}), answering={1: 1, 2: 1, 3: 1},
                       node_addrs={i: f"{NET}.{10 + i}:28004" for i in (1, 2, 3)}, grpc_addrs=grpc)


SPARE_OK = {f"{NET}.14": HostFacts(host=f"{NET}.14", reachable=True, has_package=True)}


@pytest.mark.parametrize(("address", "own", "unreachable"), [
    ("192.0.2.5:9191", "192.0.2.5", False),
    ("127.100.0.11:9191", "127.100.0.11", False),    # the node's own (lab) address in the inventory
    ("localhost:9191", "192.0.2.5", True),            # the packaged grpc_api_advertise_host
    ("127.0.0.1:9191", "192.0.2.5", True),
    ("0.0.0.0:9191", "192.0.2.5", True),
    ("", "192.0.2.5", True),                           # no grpc_api_advertise_host: MemberList returns ""
])
def test_advertise_reachability(address: str, own: str, unreachable: bool) -> None:
    assert (advertise_unreachable_reason(address, own) is not None) == unreachable


def test_plan_says_within_auto_sync_interval_when_the_query_node_follows_membership() -> None:
    facts = {Q1: QueryFacts(host=Q1, auto_sync_interval=60), Q2: QueryFacts(host=Q2, auto_sync_interval=0)}
    plan = plan_scale_up(_inventory(), _view(), [NewNodeSpec(host=f"{NET}.14")], SPARE_OK, query_facts=facts)
    q1 = next(n for n in plan.notes if Q1 in n)
    q2 = next(n for n in plan.notes if Q2 in n)
    assert "within auto_sync_interval=60 s" in q1 and "WARNING" not in q1
    assert q2.startswith("WARNING") and "only at its next restart" in q2 and "auto_sync_interval is 0" in q2
    assert "restart_query_nodes=True" in q2 and "--restart-query-nodes" in q2
    assert "within auto_sync_interval=60 s" in plan.to_markdown()


def test_plan_warns_when_a_meta_node_advertises_localhost() -> None:
    facts = {Q1: QueryFacts(host=Q1, auto_sync_interval=60)}
    view = _view({1: f"{NET}.11:9191", 2: "localhost:9191", 3: ""})
    plan = plan_scale_up(_inventory(), view, [NewNodeSpec(host=f"{NET}.14")], SPARE_OK, query_facts=facts)
    (note,) = [n for n in plan.notes if Q1 in n]
    assert note.startswith("WARNING") and "only at its next restart" in note
    assert "meta-2 advertises localhost:9191" in note and "meta-3 advertises no gRPC address" in note


def test_scale_down_plan_ignores_the_removed_nodes_advertise_address() -> None:
    facts = {Q1: QueryFacts(host=Q1, auto_sync_interval=30)}
    view = _view({1: f"{NET}.11:9191", 2: f"{NET}.12:9191", 3: "localhost:9191"})
    plan = plan_scale_down(_inventory(), view, [3], force=False, reachable_hosts={f"{NET}.13"}, query_facts=facts)
    assert any("within auto_sync_interval=30 s" in n for n in plan.notes)


def test_with_restart_query_nodes_the_plan_says_they_are_restarted() -> None:
    facts = {Q1: QueryFacts(host=Q1, auto_sync_interval=0)}
    plan = plan_scale_up(_inventory(), _view(), [NewNodeSpec(host=f"{NET}.14")], SPARE_OK, query_facts=facts,
                         restart_query_nodes=True)
    assert any(Q1 in n and "restarted by this run" in n for n in plan.notes)
    steps_text = plan.to_markdown().split("## Steps")[1].split("##")[0]
    assert "restart the query nodes one at a time" in steps_text
    assert [line.split(".")[0] for line in steps_text.strip().splitlines()] == ["1", "2", "3", "4", "5"]


def test_unreadable_query_config_is_a_warning() -> None:
    notes = query_pickup_notes({Q1: QueryFacts(host=Q1, read_error="no [meta] table")}, {}, False)
    assert notes[0].startswith("WARNING") and "no [meta] table" in notes[0]


def test_restart_refused_when_no_new_endpoint_answers() -> None:
    reason = query_restart_blocked_reason([f"{NET}.11:9191", f"{NET}.14:9191"], {f"{NET}.12:9191"})
    assert reason and "no endpoint of the new [meta] endpoints" in reason and "not restarted" in reason
    assert query_restart_blocked_reason([f"{NET}.11:9191"], {f"{NET}.11:9191"}) is None


# ---- steps on a fake query host -------------------------------------------------------------------------------------
def test_read_query_node_facts_from_the_packaged_config() -> None:
    remote = FakeRemote(host=Q1)
    remote.files[QUERY_CONFIG] = (FIXTURES / "databend-query.toml").read_text()
    facts = steps.read_query_node_facts(remote, _inventory(), _inventory().query_nodes[0])
    assert facts.auto_sync_interval == 60 and facts.health_address == "127.0.0.1:8080" and not facts.read_error


def test_query_config_without_auto_sync_uses_the_code_default_off() -> None:
    remote = FakeRemote(host=Q1)
    remote.files[QUERY_CONFIG] = '[query]\nadmin_api_address = "192.0.2.11:8081"\n\n[meta]\nendpoints = ["a:9191"]\n'
    facts = steps.read_query_node_facts(remote, _inventory(), _inventory().query_nodes[0])
    assert facts.auto_sync_interval == 0 and facts.health_address == "192.0.2.11:8081"
    missing = steps.read_query_node_facts(FakeRemote(host=Q2), _inventory(), _inventory().query_nodes[1])
    assert missing.read_error


def test_restart_query_node_restarts_never_reloads() -> None:
    remote = FakeRemote(host=Q1)
    result = steps.restart_query_node(remote, _inventory(), _inventory().query_nodes[0])
    assert result.changed and remote.sudo_commands == [["systemctl", "restart", "databend-query"]]
    assert not any("reload" in arg for command in remote.commands for arg in command)


def test_query_health_needs_active_service_and_health_endpoint() -> None:
    remote = FakeRemote(host=Q1)
    remote.units["databend-query"] = ["activating", "enabled"]
    assert "activating" in (steps.query_node_unhealthy_reason(remote, _inventory(), "127.0.0.1:8080") or "")
    remote.units["databend-query"] = ["active", "enabled"]
    remote.on(["curl"], 7, "", "curl: (7) Failed to connect to 127.0.0.1 port 8080")
    assert "does not answer yet" in (steps.query_node_unhealthy_reason(remote, _inventory(), "127.0.0.1:8080") or "")
    remote.on(["curl"], 0)
    assert steps.query_node_unhealthy_reason(remote, _inventory(), "127.0.0.1:8080") is None
    assert remote.ran("curl")[-1][-1] == "http://127.0.0.1:8080/v1/health"


# ---- the flow helper: one at a time, refuse first --------------------------------------------------------------------
def _status(answering: tuple[int, ...]) -> ClusterStatus:
    return ClusterStatus(cluster="lab", probes=[
        NodeProbe(node_id=i, host=f"{NET}.{10 + i}",
                  status=parse_metactl_status(metactl_status_text(i, "Leader" if i == 1 else "Follower", 1,
                                                                  net=NET)) if i in answering else None,
                  error=None if i in answering else "refused")
        for i in (1, 2, 3)])


def _run_restarts(monkeypatch: pytest.MonkeyPatch, answering: tuple[int, ...]) -> list[str]:
    events: list[str] = []
    monkeypatch.setattr(rb, "read_cluster_status", lambda *a, **k: _status(answering))
    monkeypatch.setattr(rb, "check_query_endpoints_answer", rb.check_query_endpoints_answer.fn)

    def restart(inventory: Any, query: Any, health: str, deadline: float) -> steps.StepResult:
        events.append(f"restart {query.host} then wait for {health}")
        return steps.StepResult(step="restart_query_node", host=query.host, changed=True, detail="restarted")

    monkeypatch.setattr(rb, "restart_query_node", restart)
    inventory = _inventory()
    plan = plan_scale_down(inventory, _view(), [3], force=False, reachable_hosts={f"{NET}.13"},
                           restart_query_nodes=True)
    facts = {Q1: QueryFacts(host=Q1, health_address="127.0.0.1:8080"),
             Q2: QueryFacts(host=Q2, health_address="127.0.0.1:8081")}
    progress = rb.Progress()
    common.restart_query_nodes_one_at_a_time(inventory, plan, progress, 5.0, facts)
    assert [r.host for r in progress.results] == [Q1, Q2]
    return events


def test_query_nodes_restart_one_at_a_time_each_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _run_restarts(monkeypatch, (1, 2, 3)) == [f"restart {Q1} then wait for 127.0.0.1:8080",
                                                     f"restart {Q2} then wait for 127.0.0.1:8081"]


def test_query_restarts_refused_when_no_new_endpoint_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(PlanRefused, match="no endpoint of the new"):
        _run_restarts(monkeypatch, (3,))  # only the removed node answers
