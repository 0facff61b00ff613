"""Replacing a node (metascale/replace.py + the spare pool of metascale/inventory.py): pure, no hosts, no Prefect."""

from __future__ import annotations

import pytest

from metascale.errors import PlanRefused
from metascale.inventory import Inventory, parse_inventory
from metascale.plan import ClusterView, HostFacts, NewNodeSpec, plan_differences, plan_scale_down
from metascale.preview import as_meta_node
from metascale.replace import pick_new_host, plan_replace_node, replacement_order

SPARE1, SPARE2 = "127.100.0.14", "127.100.0.15"
HOSTS = {f"127.100.0.{10 + i}" for i in range(1, 8)}


def _inventory(ids: tuple[int, ...] = (1, 2, 3), spares: list[dict] | None = None, removed=()) -> Inventory:
    return Inventory.model_validate({
        "name": "lab", "ssh": {"private_key_file": "/k", "known_hosts_file": "/kh"},
        "meta": [{"id": i, "host": f"127.100.0.{10 + i}"} for i in ids],
        "query": [{"host": "127.100.0.16"}],
        "spare": [{"host": SPARE1}, {"host": SPARE2}] if spares is None else spares,
        "removed": [{"id": i, "host": f"127.100.0.{10 + i}"} for i in removed],
    })


def _view(voters=(1, 2, 3), leader: int | None = 1, answering=None, extra_addrs=None) -> ClusterView:
    answering = {i: 10 for i in voters} if answering is None else answering
    addrs = {i: f"127.100.0.{10 + i}:28004" for i in voters if i <= 3}
    addrs.update(extra_addrs or {})
    return ClusterView(cluster="lab", leader_id=leader, voters=frozenset(voters), answering=answering,
                       node_addrs=addrs)


def _facts(host: str = SPARE1) -> dict[str, HostFacts]:
    return {host: HostFacts(host=host, reachable=True, has_package=True)}


def _plan(inventory: Inventory, view: ClusterView, node_id: int, host: str = "", reachable=HOSTS):
    spec = pick_new_host(inventory, view, node_id, host)
    return plan_replace_node(inventory, view, node_id, spec, _facts(spec.host), reachable_hosts=set(reachable),
                             pool_host=spec.host if inventory.spare(spec.host) else "")


def test_a_dead_node_is_removed_first_then_the_first_free_spare_is_added() -> None:
    view = _view(answering={1: 10, 2: 10})
    plan = _plan(_inventory(), view, 3, reachable=HOSTS - {"127.100.0.13"})
    assert [(c.action, c.node_id, c.host) for c in plan.changes] == [("remove", 3, "127.100.0.13"),
                                                                      ("add", 4, SPARE1)]
    remove, add = plan.changes
    assert remove.host_dead and remove.voters_after == (1, 2) and set(remove.leave_via) == {
        "127.100.0.11:28004", "127.100.0.12:28004"}
    assert add.join == ("127.100.0.11:28004", "127.100.0.12:28004") and add.voters_after == (1, 2, 4)
    assert plan.voters_after == (1, 2, 4) and plan.replaces == 3 and plan.fault_tolerance_refusal() is None
    assert plan.join_after == ("127.100.0.11:28004", "127.100.0.12:28004", f"{SPARE1}:28004")
    assert plan.endpoints_after[-1] == f"{SPARE1}:9191" and "127.100.0.13:9191" not in plan.endpoints_after
    assert plan.notes[0].startswith("ORDER: remove meta-3 first") and "etcd's rule" in plan.notes[0]
    markdown = plan.to_markdown()
    assert "1. remove meta-3" in markdown and "2. add meta-4" in markdown and "ORDER:" in markdown


def test_a_live_node_is_retired_after_the_new_one_joined_with_leadership_moved_first() -> None:
    plan = _plan(_inventory(), _view(leader=2), 2, host=SPARE2)
    assert [(c.action, c.node_id, c.host) for c in plan.changes] == [("add", 4, SPARE2), ("remove", 2, "127.100.0.12")]
    add, remove = plan.changes
    assert add.voters_after == (1, 2, 3, 4) and remove.voters_after == (1, 3, 4)
    assert remove.transfer_leader_to in (1, 3) and not remove.host_dead
    assert f"{SPARE2}:28004" in remove.leave_via
    assert plan.notes[0].startswith("ORDER: add meta-4 first") and "3 -> 4 -> 3" in plan.notes[0]
    assert plan.transfer_targets(2)[0] in (1, 3) and 4 not in plan.transfer_targets(2)


def test_a_rerun_after_the_add_resumes_with_the_removal() -> None:
    """The live order failed between the add and the remove: meta-4 (spare1) is a voter the inventory records,
    and the spare is marked as having replaced meta-2. The plan is the removal only; the add is done."""
    inventory = _inventory((1, 2, 3)).with_meta_node(
        _inventory((1, 2, 3)).meta_nodes[0].model_copy(update={"node_id": 4, "host": SPARE1}))
    inventory = inventory.with_spare_used(SPARE1, 2, "20261202T120000Z")
    view = _view(voters=(1, 2, 3, 4), extra_addrs={4: f"{SPARE1}:28004"})
    plan = _plan(inventory, view, 2)
    add, remove = plan.changes
    assert add.already_member and add.recorded and add.node_id == 4 and add.host == SPARE1
    assert remove.action == "remove" and not remove.already_removed and plan.membership_changes == (remove,)


def test_a_rerun_after_an_unrecorded_join_takes_the_same_spare() -> None:
    view = _view(voters=(1, 2, 3, 4), extra_addrs={4: f"{SPARE2}:28004"})
    spec = pick_new_host(_inventory(), view, 2)
    assert spec.host == SPARE2  # not spare1, the first free one: spare2 already joined for this replacement


def test_a_rerun_after_the_dead_node_left_only_adds_the_spare_reserved_with_the_removal() -> None:
    inventory = _inventory((1, 2), removed=(3,)).with_spare_used(SPARE2, 3)  # written with the removal record
    plan = _plan(inventory, _view(voters=(1, 2)), 3)
    assert [(c.action, c.node_id, c.host) for c in plan.changes] == [("add", 4, SPARE2)]
    assert "already removed" in " ".join(plan.notes) and plan.spare_host == SPARE2
    with pytest.raises(PlanRefused, match="already being replaced by the spare 127.100.0.15"):
        _plan(inventory, _view(voters=(1, 2)), 3, host=SPARE1)


def test_a_finished_replacement_is_nothing_to_do() -> None:
    inventory = _inventory((1, 2), removed=(3,)).with_meta_node(
        _inventory().meta_nodes[0].model_copy(update={"node_id": 4, "host": SPARE1}))
    inventory = inventory.with_spare_used(SPARE1, 3)
    view = _view(voters=(1, 2, 4), extra_addrs={4: f"{SPARE1}:28004"})
    plan = _plan(inventory, view, 3)
    assert plan.changes[0].already_member and not plan.membership_changes and all(c.recorded for c in plan.changes)


@pytest.mark.parametrize("inventory, view, node_id, host, needle", [
    (_inventory(spares=[]), _view(), 2, "", "no free spare"),
    (_inventory(spares=[{"host": SPARE1, "replaced": 1}]), _view(), 2, "", "no free spare"),
    (_inventory(), _view(), 9, "", "meta-9 is not a member"),
    (_inventory(), _view(answering={1: 10}), 3, "", "voters [2] of cluster lab do not answer"),
    (_inventory(), _view(leader=None, answering={3: 1}), 3, "", "no leader"),
    (_inventory(), _view(), 2, "127.100.0.12", "is the host of meta-2"),
])
def test_refusals_name_the_problem(inventory: Inventory, view: ClusterView, node_id: int, host: str,
                                   needle: str) -> None:
    with pytest.raises(PlanRefused) as refused:
        _plan(inventory, view, node_id, host)
    assert needle in str(refused.value) and str(refused.value).startswith("refusing replace-node:")


def test_order_rule() -> None:
    assert replacement_order(_view(answering={1: 1, 2: 1}), 3) == "remove-first"
    assert replacement_order(_view(), 3) == "add-first"
    assert replacement_order(_view(voters=(1, 2)), 3) == "remove-first"


def test_the_spare_pool_round_trips_through_toml_and_records_its_use() -> None:
    inventory = _inventory()
    used = inventory.with_spare_used(SPARE1, 3, "20261202T120000Z")
    again = parse_inventory(used.to_toml())
    assert again == used and again.spare(SPARE1).replaced == 3 and [s.host for s in again.free_spares()] == [SPARE2]
    assert "[[spare]]" in used.to_toml() and "replaced = 3" in used.to_toml()
    with pytest.raises(ValueError, match="spare host 127.100.0.14 appears more than once"):
        _inventory(spares=[{"host": SPARE1}, {"host": SPARE1}])
    assert pick_new_host(inventory, _view(), 3, SPARE2) == NewNodeSpec(host=SPARE2)


# ------------------------------------------------------------------------------------------------------------------
# From the review of the first version (each failed on it): a host that is another voter, a spare used for another
# node, a DNS-named spare, a spare's SSH override, an id removed long ago, a 2-voter plan's promise, the leadership
# target that moved with log-index noise between the plan and the re-plan after the approval.

def _rinv(ids=(1, 2, 3), spares=None, removed=(), extra_meta=()) -> Inventory:
    return Inventory.model_validate({
        "name": "lab", "ssh": {"private_key_file": "/k", "known_hosts_file": "/kh"},
        "meta": [*({"id": i, "host": f"192.0.2.{10 + i}"} for i in ids), *extra_meta],
        "spare": [{"host": SPARE1}, {"host": SPARE2}] if spares is None else spares,
        "removed": [{"id": i, "host": f"192.0.2.{10 + i}"} for i in removed],
    })


def _rview(addrs: dict[int, str], leader=1, answering=None) -> ClusterView:
    answering = {i: 10 for i in addrs} if answering is None else answering
    return ClusterView(cluster="lab", leader_id=leader, voters=frozenset(addrs), answering=answering,
                       node_addrs=addrs)


def _addrs(ids) -> dict[int, str]:
    return {i: f"192.0.2.{10 + i}:28004" for i in ids}


def _rplan(inv, view, node_id, spec, reachable=None, pool_host=None):
    facts = {spec.host: HostFacts(host=spec.host, reachable=True, has_package=True)}
    reachable = {n.host for n in inv.meta_nodes} if reachable is None else reachable
    pool_host = (spec.host if inv.spare(spec.host) else "") if pool_host is None else pool_host
    return plan_replace_node(inv, view, node_id, spec, facts, reachable_hosts=reachable, pool_host=pool_host)


def test_new_host_that_is_another_voter_is_refused_not_turned_into_a_scale_down() -> None:
    """5 voters; operator types the host of meta-4 for meta-3. Must refuse, not plan 'remove meta-3' alone."""
    inv = _rinv((1, 2, 3, 4, 5))
    view = _rview(_addrs((1, 2, 3, 4, 5)))
    with pytest.raises(PlanRefused):
        _rplan(inv, view, 3, pick_new_host(inv, view, 3, "192.0.2.14"))


def test_spare_already_used_for_another_node_is_refused() -> None:
    """spare1 replaced meta-1 earlier (it is meta-4 now). `replace --id 2 --host spare1` must be refused with a
    replace-node message, and must never re-mark the spare as replacing meta-2."""
    inv = _rinv((2, 3), spares=[{"host": SPARE1, "replaced": 1}, {"host": SPARE2}], removed=(1,),
               extra_meta=[{"id": 4, "host": SPARE1}])
    view = _rview({**_addrs((2, 3)), 4: f"{SPARE1}:28004"}, leader=2)
    try:
        plan = _rplan(inv, view, 2, pick_new_host(inv, view, 2, SPARE1))
    except PlanRefused:
        return
    refusal = plan.fault_tolerance_refusal() or ""
    pytest.fail(f"planned {plan.summary()!r}; refusal text: {refusal!r} (replace-node has no "
                f"accept_no_fault_tolerance parameter)")


def test_a_dns_named_spare_is_recorded_as_used_and_not_picked_twice() -> None:
    """The flow resolves `spare1.example` to its IP before planning (rb.resolve_new_hosts) and records the spare
    by change.host (the IP). The pool entry must still end up used; else the next replacement takes it again."""
    name, ip = "spare1.example", "192.0.2.44"
    inv = _rinv(spares=[{"host": name}, {"host": SPARE2}])
    view = _rview(_addrs((1, 2, 3)), answering={1: 10, 2: 10})
    spec = pick_new_host(inv, view, 3)
    assert spec.host == name
    spec = spec.model_copy(update={"host": ip})  # what rb.resolve_new_hosts hands the planner
    plan = _rplan(inv, view, 3, spec, reachable={"192.0.2.11", "192.0.2.12"}, pool_host=name)
    assert plan.spare_host == name  # what replace_node._apply records as used (not the IP)
    after = inv.with_removed_record(3, "192.0.2.13")
    add = next(c for c in plan.changes if c.action == "add")
    after = after.with_meta_node(as_meta_node(add)).with_spare_used(plan.spare_host, plan.replaces)
    assert after.spare(name).used, "spare1.example is still free in the pool although it is meta-4 now"
    # consequence: replacing meta-2 next picks spare1.example again -> add is 'already a voter' -> 5 voters shrink
    view2 = _rview({**_addrs((1, 2)), 4: f"{ip}:28004"})
    assert pick_new_host(after, view2, 2).host != name


def test_a_spare_ssh_override_survives_becoming_a_meta_node() -> None:
    """A spare behind a bastion / on another port: the meta node recorded for it must keep its `ssh` override,
    else every later run (cluster-check, scale-down, a rerun) dials it with the cluster defaults."""
    inv = _rinv(spares=[{"host": SPARE1, "ssh": {"port": 2222, "user": "meta"}}])
    assert inv.ssh_target(SPARE1).port == 2222
    view = _rview(_addrs((1, 2, 3)), answering={1: 10, 2: 10})
    plan = _rplan(inv, view, 3, pick_new_host(inv, view, 3), reachable={"192.0.2.11", "192.0.2.12"})
    add = next(c for c in plan.changes if c.action == "add")
    ssh = inv.spare(plan.spare_host).ssh  # what replace_node._apply hands add_one_node
    after = inv.with_removed_record(3, "192.0.2.13").with_meta_node(as_meta_node(add).model_copy(update={"ssh": ssh}))
    assert after.ssh_target(after.meta_node(add.node_id)).port == 2222
    assert after.ssh_target(SPARE1).port == 2222


def test_an_id_removed_long_ago_does_not_add_a_fourth_voter() -> None:
    """meta-3 was removed long ago and replaced by hand (meta-5). `replace --id 3` (a typo, or a stale proposal)
    must not plan a bare add: voters [1, 2, 5] -> [1, 2, 5, 6] is a scale-up, not a replacement."""
    inv = _rinv((1, 2), spares=[{"host": SPARE2}], removed=(3,), extra_meta=[{"id": 5, "host": "192.0.2.55"}])
    view = _rview({**_addrs((1, 2)), 5: "192.0.2.55:28004"})
    try:
        plan = _rplan(inv, view, 3, pick_new_host(inv, view, 3))
    except PlanRefused:
        return
    assert len(plan.voters_after) <= len(plan.voters_before), plan.summary()


def test_two_voter_replace_plan_does_not_promise_a_refusal_it_will_not_make() -> None:
    """voters [1, 2], meta-2 live: the plan's warning says 'a real run is refused unless
    accept_no_fault_tolerance', but fault_tolerance_refusal() is None for replace-node, so the run goes ahead."""
    inv = _rinv((1, 2))
    view = _rview(_addrs((1, 2)))
    plan = _rplan(inv, view, 2, pick_new_host(inv, view, 2))
    if plan.fault_tolerance_refusal() is None:
        assert not any("a real run is refused" in w for w in plan.warnings()), plan.warnings()


def test_leader_transfer_target_does_not_flip_on_log_index_noise() -> None:
    """(pre-existing, hits replace-node of a live leader too) Two reads seconds apart on a busy cluster: the same
    voters answer, only their applied index differs by one. The approved plan must still match."""
    inv = _rinv((1, 2, 3))
    a = _rview(_addrs((1, 2, 3)), leader=2, answering={1: 101, 2: 101, 3: 100})
    b = _rview(_addrs((1, 2, 3)), leader=2, answering={1: 101, 2: 102, 3: 102})
    reach = {n.host for n in inv.meta_nodes}
    approved = plan_scale_down(inv, a, [2], force=False, reachable_hosts=reach, accept_no_fault_tolerance=True)
    current = plan_scale_down(inv, b, [2], force=False, reachable_hosts=reach, accept_no_fault_tolerance=True)
    assert plan_differences(approved, current) == []
