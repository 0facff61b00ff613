"""Planning and safety rules (metascale/plan.py): pure, no hosts, no Prefect."""

from __future__ import annotations

import pytest

from metascale.errors import PlanRefused
from metascale.inventory import Inventory
from metascale.plan import (
    ClusterView,
    FileChange,
    HostFacts,
    NewNodeSpec,
    plan_scale_down,
    plan_scale_up,
    quorum_size,
    tolerated_failures,
)

SPARE = "127.100.0.14"


def _inventory(ids: tuple[int, ...] = (1, 2, 3)) -> Inventory:
    return Inventory.model_validate(
        {
            "name": "lab",
            "ssh": {"private_key_file": "/k", "known_hosts_file": "/kh"},
            "meta": [{"id": i, "host": f"127.100.0.{10 + i}"} for i in ids],
            "query": [{"host": "127.100.0.16"}, {"host": "127.100.0.17"}],
        }
    )


def _view(voters=(1, 2, 3), leader: int | None = 1, answering=None, **kw) -> ClusterView:
    answering = {i: 10 for i in voters} if answering is None else answering
    addrs = {i: f"127.100.0.{10 + i}:28004" for i in voters}
    return ClusterView(cluster="lab", leader_id=leader, voters=frozenset(voters), answering=answering,
                       node_addrs=addrs, **kw)


def _spare_ok(host: str = SPARE) -> dict[str, HostFacts]:
    return {host: HostFacts(host=host, reachable=True, has_package=True)}


HOSTS = {f"127.100.0.{10 + i}" for i in range(1, 8)}


@pytest.mark.parametrize(("voters", "quorum", "tolerated"), [(1, 1, 0), (2, 2, 0), (3, 2, 1), (4, 3, 1), (5, 3, 2)])
def test_quorum_and_tolerated_failures(voters: int, quorum: int, tolerated: int) -> None:
    assert (quorum_size(voters), tolerated_failures(voters)) == (quorum, tolerated)


def test_scale_up_picks_next_id_and_joins_through_current_voters() -> None:
    plan = plan_scale_up(_inventory(), _view(), [NewNodeSpec(host=SPARE)], _spare_ok())
    (change,) = plan.changes
    assert change.node_id == 4 and change.action == "add" and not change.already_member
    assert change.join == ("127.100.0.11:28004", "127.100.0.12:28004", "127.100.0.13:28004")
    assert plan.voters_after == (1, 2, 3, 4) and plan.quorum_before == 2 and plan.quorum_after == 3
    assert plan.join_after[-1] == f"{SPARE}:28004" and plan.endpoints_after[-1] == f"{SPARE}:9191"


def test_scale_up_two_nodes_second_joins_through_first() -> None:
    facts = {**_spare_ok(), **_spare_ok("127.100.0.15")}
    plan = plan_scale_up(_inventory(), _view(), [NewNodeSpec(host=SPARE), NewNodeSpec(host="127.100.0.15")], facts)
    first, second = plan.changes
    assert (first.node_id, second.node_id) == (4, 5)
    assert f"{SPARE}:28004" in second.join and plan.voters_after == (1, 2, 3, 4, 5)


def test_scale_up_of_a_node_that_already_joined_is_a_resume() -> None:
    view = _view(voters=(1, 2, 3, 4))
    plan = plan_scale_up(_inventory(), view, [NewNodeSpec(host=SPARE)], {SPARE: HostFacts(
        host=SPARE, reachable=True, has_package=True, busy_ports=(28004, 9191, 28002), meta_active=True)})
    assert plan.changes[0].already_member and plan.changes[0].node_id == 4
    assert plan.membership_changes == ()


@pytest.mark.parametrize(
    ("spec", "facts", "view", "needle"),
    [
        (NewNodeSpec(host=SPARE, node_id=2), None, None, "node id 2 is already used"),
        (NewNodeSpec(host="127.100.0.12", node_id=7), None, None, "127.100.0.12:28004 is already voter meta-2"),
        (NewNodeSpec(host=SPARE), HostFacts(host=SPARE, reachable=False, reason="timed out"), None,
         "not reachable over SSH: timed out"),
        (NewNodeSpec(host=SPARE), HostFacts(host=SPARE, reachable=True, has_package=False), None,
         "no databend-meta package"),
        (NewNodeSpec(host=SPARE), HostFacts(host=SPARE, reachable=True, has_package=True, busy_ports=(9191,)), None,
         "ports [9191] in use"),
        (NewNodeSpec(host=SPARE), None, _view(leader=None), "has no leader"),
        (NewNodeSpec(host=SPARE), None, _view(answering={1: 5, 2: 5}), "voters [3] of cluster lab do not answer"),
        (NewNodeSpec(host=SPARE), None, _view(disagreements=("meta-2 sees voters [1, 2]",)), "disagree"),
    ],
)
def test_scale_up_refusals(spec: NewNodeSpec, facts: HostFacts | None, view: ClusterView | None, needle: str) -> None:
    host_facts = {SPARE: facts} if facts else _spare_ok()
    with pytest.raises(PlanRefused, match=needle.replace("[", r"\[").replace("]", r"\]")):
        plan_scale_up(_inventory(), view or _view(), [spec], host_facts)


def test_scale_up_refuses_empty_and_duplicate_requests() -> None:
    with pytest.raises(PlanRefused, match="no new nodes"):
        plan_scale_up(_inventory(), _view(), [], {})
    with pytest.raises(PlanRefused, match="listed twice"):
        plan_scale_up(_inventory(), _view(), [NewNodeSpec(host=SPARE), NewNodeSpec(host=SPARE)], _spare_ok())


def test_scale_down_of_a_follower_leaves_via_the_rest() -> None:
    plan = plan_scale_down(_inventory(), _view(), [3], force=False, reachable_hosts=HOSTS)
    (change,) = plan.changes
    assert change.transfer_leader_to is None and change.leave_via == ("127.100.0.11:28004", "127.100.0.12:28004")
    assert plan.voters_after == (1, 2) and plan.join_after == ("127.100.0.11:28004", "127.100.0.12:28004")
    assert plan.endpoints_after == ("127.100.0.11:9191", "127.100.0.12:9191")


def test_scale_down_of_the_leader_moves_leadership_to_the_most_up_to_date_voter() -> None:
    view = _view(answering={1: 50, 2: 40, 3: 50})
    plan = plan_scale_down(_inventory(), view, [1], force=False, reachable_hosts=HOSTS)
    assert plan.changes[0].transfer_leader_to == 3 and plan.leader_after == 3
    assert "move leadership to meta-3" in plan.to_markdown()


def test_scale_down_refuses_a_removal_that_would_lose_quorum_and_names_the_dead_node() -> None:
    view = _view(answering={1: 9, 2: 9})  # meta-3 is down
    with pytest.raises(PlanRefused) as refused:
        plan_scale_down(_inventory(), view, [2], force=False, reachable_hosts=HOSTS)
    assert "below the quorum of 2" in str(refused.value) and "remove the dead node meta-3 first" in str(refused.value)


def test_scale_down_of_the_dead_node_needs_force_when_its_host_is_unreachable() -> None:
    view = _view(answering={1: 9, 2: 9})
    alive = HOSTS - {"127.100.0.13"}
    with pytest.raises(PlanRefused, match="rerun with force=True"):
        plan_scale_down(_inventory(), view, [3], force=False, reachable_hosts=alive)
    plan = plan_scale_down(_inventory(), view, [3], force=True, reachable_hosts=alive)
    assert plan.changes[0].host_dead and plan.voters_after == (1, 2)
    assert "skipped" in plan.to_markdown()


@pytest.mark.parametrize(
    ("ids", "view", "force", "needle"),
    [
        ([1], _view(voters=(1,)), False, "last voter"),
        ([2], _view(leader=None), False, "has no leader"),
        ([2], _view(), True, "force is for a dead node"),
        ([], _view(), False, "no node ids"),
        ([2, 2], _view(), False, "listed twice"),
    ],
)
def test_scale_down_refusals(ids: list[int], view: ClusterView, force: bool, needle: str) -> None:
    with pytest.raises(PlanRefused, match=needle):
        plan_scale_down(_inventory(tuple(sorted(view.voters))), view, ids, force=force, reachable_hosts=HOSTS)


def test_scale_down_of_two_nodes_checks_quorum_after_each() -> None:
    inventory = _inventory((1, 2, 3, 4, 5))
    view = _view(voters=(1, 2, 3, 4, 5), answering={1: 1, 2: 1, 3: 1, 4: 1})  # meta-5 down
    assert plan_scale_down(inventory, view, [3, 4], force=False, reachable_hosts=HOSTS).voters_after == (1, 2, 5)
    with pytest.raises(PlanRefused, match="removing meta-4 would leave voters"):
        plan_scale_down(inventory, view, [2, 3, 4], force=False, reachable_hosts=HOSTS)


def test_scale_down_of_an_unknown_id_is_refused() -> None:
    with pytest.raises(PlanRefused, match=r"meta-9 is not a member of cluster lab \(voters \[?1, 2, 3"):
        plan_scale_down(_inventory(), _view(), [9], force=False, reachable_hosts=HOSTS)


def test_scale_down_of_a_node_removed_earlier_is_nothing_to_do() -> None:
    inventory = _inventory((1, 2, 3, 4)).without_meta_node(4, removed_at="20261126T120000Z")
    assert inventory.removed_node(4) is not None and inventory.next_free_id() == 5  # ids are not reused
    plan = plan_scale_down(inventory, _view(), [4], force=False, reachable_hosts=HOSTS)
    assert plan.changes == () and plan.nothing_to_do
    assert "meta-4 (127.100.0.14) was already removed" in plan.notes[0] and "20261126T120000Z" in plan.notes[0]


def test_scale_down_resumes_a_node_that_already_left() -> None:
    plan = plan_scale_down(_inventory(), _view(voters=(1, 2)), [3], force=False, reachable_hosts=HOSTS)
    assert plan.changes[0].already_removed and plan.membership_changes == ()
    assert not plan.nothing_to_do or plan.files_to_change == ()


def test_plan_markdown_shows_quorum_table_and_diffs() -> None:
    plan = plan_scale_down(_inventory(), _view(), [3], force=False, reachable_hosts=HOSTS).with_file_changes(
        [FileChange(host="127.100.0.16", path="/etc/databend/databend-query.toml", diff="-a\n+b\n"),
         FileChange(host="127.100.0.17", path="/etc/databend/databend-query.toml", diff="")])
    text = plan.to_markdown()
    assert "| quorum size | 2 | 2 |" in text and "| tolerated failures | 1 | 0 |" in text
    assert "127.100.0.16:/etc/databend/databend-query.toml" in text and "127.100.0.17:" not in text
    assert not plan.nothing_to_do
