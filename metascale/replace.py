"""Replacing one meta node (pure): pick the new host, choose the safe order, compose the plan from the scale-up and
scale-down planners.

The order is etcd's rule for replacing a member (etcd docs, "Replacing a failed etcd member" / runtime
reconfiguration): a **dead** member is removed first, through the live ones, and only then is the new member added,
because a cluster that still counts a dead member needs the new one to reach a quorum that the dead one cannot help
form. A **live** member being retired is replaced the other way round: the new member is added and has caught up
before the old one leaves (leadership moved off it first), so the cluster never drops below the fault tolerance it
has now. Nothing here does I/O; `flows/replace_node.py` gathers the facts and runs each step with the existing tasks.
"""

from __future__ import annotations

from metascale.config import join_host_port
from metascale.errors import PlanRefused
from metascale.inventory import Inventory, MetaNode, SpareHost
from metascale.plan import (
    ClusterView,
    HostFacts,
    NewNodeSpec,
    NodeChange,
    QueryFacts,
    ScalePlan,
    _advertised_after,
    _drift_or_refuse,
    _ids,
    _require_healthy,
    plan_scale_down,
    plan_scale_up,
    query_pickup_notes,
    quorum_size,
    tolerated_failures,
)

ACTION = "replace-node"


def _spec(spare: SpareHost) -> NewNodeSpec:
    return NewNodeSpec(host=spare.host, raft_port=spare.raft_port, grpc_port=spare.grpc_port,
                       admin_port=spare.admin_port)


def pick_new_host(inventory: Inventory, view: ClusterView, node_id: int, host: str = "") -> NewNodeSpec:
    """Return the host that replaces meta-``node_id``: ``host`` when given (its ports from the spare pool if it is
    listed there), else the spare an earlier run of this replacement already used (recorded ``replaced = <id>``, or
    already a member of the cluster), else the first free spare of the pool (``[[spare]]``, in file order).

    Raises: PlanRefused when no host is given and the pool has no free spare."""
    taken = next((s for s in inventory.spares if s.replaced == node_id), None)  # a rerun: the spare already taken
    if host:
        spare = inventory.spare(host)
        if taken is not None and taken.host != host:
            raise PlanRefused(ACTION, f"meta-{node_id} is already being replaced by the spare {taken.host} (the "
                                      f"inventory's pool records it{' at ' + taken.used_at if taken.used_at else ''}); "
                                      f"rerun without a new host, or name {taken.host} (if that spare cannot be used, "
                                      f"delete its `replaced` line from the inventory first)")
        if spare is not None and spare.used and spare.replaced != node_id:
            raise PlanRefused(ACTION, f"the spare {host} already replaced meta-{spare.replaced}; name a free host")
        return _spec(spare) if spare is not None else NewNodeSpec(host=host)
    if taken is not None:
        return _spec(taken)
    record = inventory.removed_node(node_id)
    if record is not None and node_id not in view.members and node_id not in inventory.meta_ids:
        raise PlanRefused(ACTION, f"meta-{node_id} ({record.host}) already left cluster {inventory.name}"
                                  f"{' at ' + record.removed_at if record.removed_at else ''} and no spare is recorded "
                                  f"as its replacement: there is nothing to replace (to add a node, use scale-up; to "
                                  f"finish this replacement, name its new host)")
    member_addrs = {addr for i, addr in view.node_addrs.items() if i in view.members}
    free = inventory.free_spares()
    for spare in free:
        if join_host_port(spare.host, spare.raft_port) in member_addrs:  # joined by a run that did not record it
            return _spec(spare)
    if free:
        return _spec(free[0])
    used = ", ".join(f"{s.host} (replaced meta-{s.replaced})" if s.used else f"{s.host} (a meta node)"
                     for s in inventory.spares)
    raise PlanRefused(ACTION, f"no free spare in the spare pool of cluster {inventory.name} to replace meta-{node_id}"
                              f" ({'pool: ' + used if used else 'the inventory lists no [[spare]] host'}); add "
                              f"`[[spare]] host = \"...\"` to the inventory or name the new host (new_host, CLI "
                              f"--host)")


def replacement_order(view: ClusterView, node_id: int) -> str:
    """``"remove-first"`` when meta-``node_id`` is a member that does not answer (dead) or is no member any more
    (a rerun after its removal), else ``"add-first"`` (a live node being retired)."""
    dead = node_id in view.members and node_id not in view.answering
    return "remove-first" if dead or node_id not in view.members else "add-first"


def _without(view: ClusterView, node_id: int) -> ClusterView:
    """The view once meta-``node_id`` has left."""
    return view.model_copy(update={
        "voters": view.voters - {node_id}, "learners": view.learners - {node_id},
        "answering": {i: n for i, n in view.answering.items() if i != node_id},
        "node_addrs": {i: a for i, a in view.node_addrs.items() if i != node_id},
        "grpc_addrs": {i: a for i, a in view.grpc_addrs.items() if i != node_id}})


def _with(view: ClusterView, change: NodeChange) -> ClusterView:
    """The view once the added node is a voter that has caught up (it answers; lowest log index, so it is never
    preferred as a leadership target over a node that was there before)."""
    if change.node_id in view.voters:
        return view
    return view.model_copy(update={
        "voters": view.voters | {change.node_id}, "learners": view.learners - {change.node_id},
        "answering": {**view.answering, change.node_id: 0},
        "node_addrs": {**view.node_addrs, change.node_id: change.raft_addr},
        "grpc_addrs": {**view.grpc_addrs, change.node_id: change.grpc_addr}})


def _as_meta(change: NodeChange) -> MetaNode:
    return MetaNode(node_id=change.node_id, host=change.host, raft_port=change.raft_port, grpc_port=change.grpc_port,
                    admin_port=change.admin_port)


def _refused_as_replace(exc: PlanRefused) -> PlanRefused:
    return PlanRefused(ACTION, exc.reason)


def _order_text(order: str, view: ClusterView, old: NodeChange | None, new: NodeChange, node_id: int,
                host: str) -> str:
    """The sentence the plan shows first: the order and why, with the fault tolerance at each step."""
    voters = set(view.voters)
    tolerate_now = max(len(voters & set(view.answering)) - quorum_size(len(voters)), 0)
    if order == "remove-first":
        if old is None or old.already_removed:
            return (f"meta-{node_id} ({host}) already left the cluster (a rerun): meta-{new.node_id} ({new.host}) is "
                    f"added now")
        middle = voters - {node_id}
        return (f"ORDER: remove meta-{node_id} first, then add meta-{new.node_id}. meta-{node_id} ({host}) does not "
                f"answer, so it is treated as dead: it is removed through the live voters and only then is "
                f"{new.host} added (etcd's rule for a failed member: never add a member to a cluster that still "
                f"counts a dead one). In between, voters {_ids(middle)} tolerate {tolerated_failures(len(middle))} "
                f"failure(s); with meta-{node_id} down the cluster tolerates {tolerate_now} now")
    middle = voters | {new.node_id}
    return (f"ORDER: add meta-{new.node_id} first, then remove meta-{node_id}. meta-{node_id} ({host}) answers: it is "
            f"a live node being retired, so {new.host} joins and catches up before meta-{node_id} leaves (leadership "
            f"moves off it first if it leads). Voters {len(voters)} -> {len(middle)} -> {len(voters)}: the cluster "
            f"tolerates {tolerated_failures(len(middle))} failure(s) in between and never fewer than the "
            f"{tolerate_now} it tolerates now")


def plan_replace_node(
    inventory: Inventory,
    view: ClusterView,
    node_id: int,
    new: NewNodeSpec,
    host_facts: dict[str, HostFacts],
    *,
    reachable_hosts: set[str],
    query_facts: dict[str, QueryFacts] | None = None,
    reset_new_node: bool = False,
    restart_query_nodes: bool = False,
    pool_host: str = "",
) -> ScalePlan:
    """Return the plan that replaces meta-``node_id`` by ``new`` (one removal and one addition, in the safe order), or
    raise PlanRefused. Pure. ``pool_host``: the ``[[spare]]`` entry ``new`` comes from, as the inventory writes it
    (a DNS name there, an IP in ``new``); "" = not from the pool. A rerun after a failure plans only what is left:
    an add whose node is already a voter and a removal whose node already left are marked done."""
    old_node = next((n for n in inventory.meta_nodes if n.node_id == node_id), None)
    record = inventory.removed_node(node_id)
    if old_node is None and node_id not in view.members and record is None:
        raise PlanRefused(ACTION, f"meta-{node_id} is not a member of cluster {view.cluster} (voters "
                                  f"{_ids(view.voters)}) and not in the inventory; check the id (nothing was changed)")
    old_host = old_node.host if old_node else (record.host if record else view.node_addrs.get(node_id, "?"))
    if new.host == old_host and (old_node is None or new.raft_addr == old_node.raft_addr):
        raise PlanRefused(ACTION, f"the new host {new.host} is the host of meta-{node_id}, the node being replaced; "
                                  f"name another host or leave it out to take a spare")
    try:
        _require_healthy(ACTION, view)  # no leader: nothing can be replaced (bring a majority back first)
    except PlanRefused as exc:
        raise _refused_as_replace(exc) from None
    others_silent = sorted(view.voters - set(view.answering) - {node_id})
    if others_silent:
        raise PlanRefused(ACTION, f"besides meta-{node_id}, voters {others_silent} of cluster {view.cluster} do not "
                                  f"answer; replace one node at a time: bring them back, or remove them "
                                  f"(scale-down with force) first")
    pool_entry = inventory.spare(pool_host) if pool_host else None
    listed = inventory.meta_node_by_host(new.host)
    if listed is not None and listed.raft_addr == new.raft_addr and not (
            pool_entry is not None and pool_entry.replaced == node_id):
        raise PlanRefused(ACTION, f"the new host {new.host} is already meta-{listed.node_id} of cluster "
                                  f"{inventory.name}; name a host that is not a member (or leave it out to take a "
                                  f"spare)")
    order = replacement_order(view, node_id)
    dead = node_id in view.members and node_id not in view.answering
    joined = {a: i for i, a in view.node_addrs.items() if i in view.voters}.get(new.raft_addr)
    planning = inventory  # the inventory as the second planner must see it (the first change done)
    if joined is not None and joined not in inventory.meta_ids:
        planning = inventory.with_meta_node(MetaNode(node_id=joined, host=new.host, raft_port=new.raft_port,
                                                     grpc_port=new.grpc_port, admin_port=new.admin_port))
    try:
        if order == "remove-first":
            down = plan_scale_down(planning, view, [node_id], force=dead, reachable_hosts=reachable_hosts)
            up = plan_scale_up(planning.with_removed_record(node_id, old_host), _without(view, node_id), [new], host_facts,
                               reset_new_node=reset_new_node)
            add, removal = up.changes[0], (down.changes[0] if down.changes else None)
            final = up
        else:
            up = plan_scale_up(inventory, view, [new], host_facts, reset_new_node=reset_new_node)
            add = up.changes[0]
            with_new = planning if add.node_id in planning.meta_ids else planning.with_meta_node(_as_meta(add))
            down = plan_scale_down(with_new, _with(view, add), [node_id], force=False,
                                   reachable_hosts=reachable_hosts)
            removal = down.changes[0] if down.changes else None
            final = down
    except PlanRefused as exc:
        raise _refused_as_replace(exc) from None
    add = add.model_copy(update={"recorded": any(n.node_id == add.node_id and n.host == add.host
                                                 for n in inventory.meta_nodes)
                                 and (pool_entry is None or pool_entry.replaced == node_id)})
    if removal is not None:
        removal = removal.model_copy(update={"recorded": node_id not in inventory.meta_ids})
    changes = [c for c in ((removal, add) if order == "remove-first" else (add, removal)) if c is not None]
    voters_after = (set(view.voters) - {node_id}) | {add.node_id}
    removed = {node_id}
    notes = [_order_text(order, view, removal, add, node_id, old_host)]
    notes += [n for n in (*up.notes, *down.notes) if n not in notes]
    notes += query_pickup_notes(query_facts or {}, _advertised_after(inventory, view, [add], removed),
                                restart_query_nodes)
    try:
        drift = _drift_or_refuse(ACTION, inventory, view, {node_id, add.node_id})
    except PlanRefused as exc:
        raise _refused_as_replace(exc) from None
    return ScalePlan(
        action=ACTION, cluster=view.cluster, voters_before=tuple(sorted(view.voters)),
        voters_after=tuple(sorted(voters_after)), leader_before=view.leader_id, answering=tuple(sorted(view.answering)),
        changes=tuple(changes), join_after=final.join_after, endpoints_after=final.endpoints_after,
        notes=tuple(notes), restart_query_nodes=restart_query_nodes, drift=drift, replaces=node_id,
        spare_host=pool_host if pool_entry is not None else "",
    )


__all__ = ["ACTION", "pick_new_host", "plan_replace_node", "replacement_order"]
