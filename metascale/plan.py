"""Pure planning and safety rules for scaling a databend-meta cluster.

``plan_scale_up`` / ``plan_scale_down`` take the inventory, one snapshot of the cluster (``ClusterView``) and the
facts gathered about the hosts involved, and return a ``ScalePlan`` or raise ``PlanRefused`` with a sentence that
says why and what to do instead. Nothing here does I/O; the flows gather the facts and publish the plan.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from metascale.errors import PlanRefused

Action = Literal["scale-up", "scale-down"]


class MetaNodeLike(Protocol):
    """The attributes of ``metascale.inventory.MetaNode`` the planner reads."""

    node_id: int
    host: str

    @property
    def raft_addr(self) -> str: ...

    @property
    def grpc_addr(self) -> str: ...


class InventoryLike(Protocol):
    """The attributes of ``metascale.inventory.Inventory`` the planner reads."""

    name: str

    @property
    def meta_nodes(self) -> Sequence[MetaNodeLike]: ...


def quorum_size(voters: int) -> int:
    """Return how many voters must answer for a cluster of ``voters`` voters to have a leader."""
    return voters // 2 + 1


def tolerated_failures(voters: int) -> int:
    """Return how many voters a cluster of ``voters`` voters can lose and keep a leader."""
    return max(voters - quorum_size(voters), 0) if voters else 0


def _ids(ids: Iterable[int]) -> str:
    """Render node ids as ``[1, 2, 3]`` in ascending order."""
    return "[" + ", ".join(str(i) for i in sorted(ids)) + "]"


class ClusterView(BaseModel):
    """One snapshot of the cluster, as much as the planner needs: who leads, who votes, who answers."""

    model_config = ConfigDict(frozen=True)

    cluster: str
    leader_id: int | None
    voters: frozenset[int]
    learners: frozenset[int] = frozenset()
    answering: dict[int, int] = Field(
        default_factory=dict, description="node id -> last log index, for every node that answered"
    )
    node_addrs: dict[int, str] = Field(default_factory=dict, description="node id -> raft address (node records)")
    disagreements: tuple[str, ...] = Field(default=(), description="sentences: nodes whose view differs")

    @property
    def members(self) -> frozenset[int]:
        """Return voters and learners."""
        return self.voters | self.learners


class HostFacts(BaseModel):
    """What a pre-flight check found on a host that is about to become a meta node."""

    model_config = ConfigDict(frozen=True)

    host: str
    reachable: bool
    reason: str = Field(default="", description="why the host is unreachable, when it is")
    has_package: bool = False
    busy_ports: tuple[int, ...] = ()
    meta_active: bool = Field(default=False, description="the databend-meta service is already active there")


class NewNodeSpec(BaseModel):
    """A node to add, as the operator asked for it (``node_id`` None = pick the next free id)."""

    model_config = ConfigDict(frozen=True)

    host: str
    node_id: int | None = None
    raft_port: int = 28004
    grpc_port: int = 9191
    admin_port: int = 28002

    @property
    def raft_addr(self) -> str:
        """Return ``host:raft_port``."""
        return f"{self.host}:{self.raft_port}"

    @property
    def grpc_addr(self) -> str:
        """Return ``host:grpc_port``."""
        return f"{self.host}:{self.grpc_port}"


class NodeChange(BaseModel):
    """One node added or removed, in the order the flow applies them."""

    model_config = ConfigDict(frozen=True)

    action: Literal["add", "remove"]
    node_id: int
    host: str
    raft_port: int = 28004
    grpc_port: int = 9191
    admin_port: int = 28002
    join: tuple[str, ...] = Field(default=(), description="add: raft addresses the new node joins through")
    leave_via: tuple[str, ...] = Field(default=(), description="remove: raft addresses the leave request goes to")
    transfer_leader_to: int | None = Field(default=None, description="remove: leadership moves here first")
    already_member: bool = Field(default=False, description="add: the node is already a voter (a resumed run)")
    already_removed: bool = Field(default=False, description="remove: the node already left (a resumed run)")
    host_dead: bool = Field(default=False, description="remove with force: skip the steps that need its host")
    recorded: bool = Field(default=False, description="the inventory already shows this change (add: listed)")
    voters_after: tuple[int, ...] = ()

    @property
    def raft_addr(self) -> str:
        """Return ``host:raft_port``."""
        return f"{self.host}:{self.raft_port}"

    @property
    def grpc_addr(self) -> str:
        """Return ``host:grpc_port``."""
        return f"{self.host}:{self.grpc_port}"


class FileChange(BaseModel):
    """The unified diff a run will apply to one file on one host (empty diff = already as wanted)."""

    model_config = ConfigDict(frozen=True)

    host: str
    path: str
    diff: str


class ScalePlan(BaseModel):
    """What a run will do, computed before anything changes; rendered as the plan artifact."""

    model_config = ConfigDict(frozen=True)

    action: Action
    cluster: str
    voters_before: tuple[int, ...]
    voters_after: tuple[int, ...]
    leader_before: int | None
    answering: tuple[int, ...]
    changes: tuple[NodeChange, ...]
    join_after: tuple[str, ...] = Field(description="[raft_config].join on every meta node at the end")
    endpoints_after: tuple[str, ...] = Field(description="[meta].endpoints on every query node at the end")
    notes: tuple[str, ...] = ()
    file_changes: tuple[FileChange, ...] = ()

    @property
    def quorum_before(self) -> int:
        """Return the quorum size before the change."""
        return quorum_size(len(self.voters_before))

    @property
    def quorum_after(self) -> int:
        """Return the quorum size after the change."""
        return quorum_size(len(self.voters_after))

    @property
    def leader_after(self) -> int | None:
        """Return the leader expected after the change (the transfer target when the leader leaves)."""
        for change in self.changes:
            if change.transfer_leader_to is not None:
                return change.transfer_leader_to
        return self.leader_before

    @property
    def membership_changes(self) -> tuple[NodeChange, ...]:
        """Return the changes that still alter membership (not already done)."""
        return tuple(c for c in self.changes if not (c.already_member or c.already_removed))

    @property
    def files_to_change(self) -> tuple[FileChange, ...]:
        """Return the file changes with a non-empty diff."""
        return tuple(f for f in self.file_changes if f.diff)

    @property
    def nothing_to_do(self) -> bool:
        """Return True when membership, every file and the inventory are already as wanted."""
        return (not self.membership_changes and not self.files_to_change
                and all(c.recorded for c in self.changes))

    def with_file_changes(self, changes: Iterable[FileChange]) -> ScalePlan:
        """Return a copy of this plan carrying the file diffs."""
        return self.model_copy(update={"file_changes": tuple(changes)})

    def summary(self) -> str:
        """Return one sentence: what changes, voters before -> after."""
        if self.nothing_to_do:
            return (
                f"{self.action} on cluster {self.cluster}: nothing to do, voters already {_ids(self.voters_after)} "
                f"and every config file already as wanted" + "".join(f"; {note}" for note in self.notes)
            )
        verbs = [f"{'add' if c.action == 'add' else 'remove'} meta-{c.node_id} ({c.host})" for c in self.changes]
        return (
            f"{self.action} on cluster {self.cluster}: {', '.join(verbs)}; voters {_ids(self.voters_before)} -> "
            f"{_ids(self.voters_after)}"
        )

    def to_markdown(self) -> str:
        """Render the plan as the markdown artifact an operator reads before approving."""
        before, after = len(self.voters_before), len(self.voters_after)
        lines = [
            f"# Plan: {self.action} on cluster `{self.cluster}`",
            "",
            self.summary() + ".",
            "",
            "| | before | after |",
            "|---|---|---|",
            f"| voters | {_ids(self.voters_before)} | {_ids(self.voters_after)} |",
            f"| quorum size | {quorum_size(before)} | {quorum_size(after)} |",
            f"| tolerated failures | {tolerated_failures(before)} | {tolerated_failures(after)} |",
            f"| leader | {self._leader_text(self.leader_before)} | {self._leader_text(self.leader_after)} |",
            f"| answering | {_ids(self.answering)} | |",
            "",
            "## Steps",
            "",
        ]
        lines += [f"{n}. {self._change_text(c)}" for n, c in enumerate(self.changes, start=1)]
        lines += [
            f"{len(self.changes) + 1}. set `[raft_config].join` on every meta node to `{list(self.join_after)}`",
            f"{len(self.changes) + 2}. set `[meta].endpoints` on every query node to `{list(self.endpoints_after)}`",
            f"{len(self.changes) + 3}. record the new membership in the inventory",
        ]
        if self.notes:
            lines += ["", "## Notes", ""] + [f"* {note}" for note in self.notes]
        lines += ["", "## File changes", ""]
        if not self.files_to_change:
            lines.append("No file changes: every file is already as wanted.")
        for change in self.files_to_change:
            lines += [f"### `{change.host}:{change.path}`", "", "```diff", change.diff.rstrip("\n"), "```", ""]
        return "\n".join(lines) + "\n"

    @staticmethod
    def _leader_text(leader: int | None) -> str:
        return f"meta-{leader}" if leader is not None else "none"

    @staticmethod
    def _change_text(change: NodeChange) -> str:
        if change.action == "add":
            if change.already_member:
                return f"meta-{change.node_id} ({change.host}) is already a voter: nothing to add"
            return (
                f"add meta-{change.node_id} ({change.host}): copy the config from an existing node, set id and "
                f"join `{list(change.join)}`, start the service, wait until it is a voter"
            )
        if change.already_removed:
            return f"meta-{change.node_id} ({change.host}) already left the cluster: stop it and retire its raft dir"
        text = f"remove meta-{change.node_id} ({change.host})"
        if change.transfer_leader_to is not None:
            text += f": it is the leader, move leadership to meta-{change.transfer_leader_to} first; then"
        text += f" leave via `{list(change.leave_via)}`, wait until voters are {_ids(change.voters_after)}"
        if change.host_dead:
            text += "; its host is unreachable (force): stopping the service and retiring its raft dir are skipped"
        else:
            text += ", stop and disable its service, move its raft dir aside"
        return text


def _inventory_node(inventory: InventoryLike, node_id: int) -> MetaNodeLike | None:
    """Return the inventory's meta node with ``node_id``, or None."""
    return next((n for n in inventory.meta_nodes if n.node_id == node_id), None)


def _require_healthy(action: str, view: ClusterView) -> None:
    """Refuse unless the cluster has a leader and every voter answers and agrees."""
    if view.leader_id is None:
        raise PlanRefused(
            action,
            f"cluster {view.cluster} has no leader (voters {_ids(view.voters)}, answering {_ids(view.answering)}); "
            f"bring a majority of voters back first",
        )
    if view.disagreements:
        raise PlanRefused(action, f"the voters of cluster {view.cluster} disagree: " + "; ".join(view.disagreements))


def _voter_addresses(
    action: str, inventory: InventoryLike, voters: Iterable[int], known: dict[int, str] | None = None
) -> list[str]:
    """Return the raft addresses of ``voters`` (inventory first, then ``known``); refuse when one is unknown."""
    addresses = []
    for node_id in sorted(voters):
        node = _inventory_node(inventory, node_id)
        if node is None and known and node_id in known:
            addresses.append(known[node_id])
            continue
        if node is None:
            raise PlanRefused(
                action,
                f"voter meta-{node_id} of cluster {inventory.name} is not in the inventory; add it there first",
            )
        addresses.append(node.raft_addr)
    return addresses


def _meta_addresses_after(
    inventory: InventoryLike, adds: Sequence[NodeChange], removed: set[int]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Return (raft addresses, gRPC addresses) of every meta node after the change, ordered by id."""
    nodes: dict[int, tuple[str, str]] = {
        n.node_id: (n.raft_addr, n.grpc_addr) for n in inventory.meta_nodes if n.node_id not in removed
    }
    for change in adds:
        nodes[change.node_id] = (change.raft_addr, change.grpc_addr)
    ordered = [nodes[i] for i in sorted(nodes)]
    return tuple(r for r, _ in ordered), tuple(g for _, g in ordered)


def _check_new_host(action: str, spec: NewNodeSpec, facts: HostFacts | None) -> None:
    """Refuse when the new host cannot become a meta node (unreachable, no package, ports taken)."""
    if facts is None or not facts.reachable:
        reason = facts.reason if facts is not None else "no facts gathered"
        raise PlanRefused(action, f"new host {spec.host} is not reachable over SSH: {reason}")
    if not facts.has_package:
        raise PlanRefused(
            action, f"new host {spec.host} has no databend-meta package (/usr/bin/databend-meta); install it first"
        )
    wanted = {spec.raft_port, spec.grpc_port, spec.admin_port}
    busy = sorted(wanted & set(facts.busy_ports))
    if busy and not facts.meta_active:
        raise PlanRefused(
            action, f"new host {spec.host} already has ports {busy} in use; free them or choose other ports"
        )


def _resolve_new_id(
    action: str, inventory: InventoryLike, view: ClusterView, spec: NewNodeSpec, taken: set[int]
) -> tuple[int, bool]:
    """Return (node id, already a member) for ``spec``; refuse duplicate ids and used addresses."""
    by_addr = {addr: node_id for node_id, addr in view.node_addrs.items()}
    joined_id = by_addr.get(spec.raft_addr)
    if joined_id is not None and joined_id in view.voters:
        if spec.node_id is not None and spec.node_id != joined_id:
            raise PlanRefused(
                action, f"{spec.raft_addr} is already voter meta-{joined_id}, not meta-{spec.node_id} as asked"
            )
        return joined_id, True
    for node in inventory.meta_nodes:
        if node.raft_addr == spec.raft_addr or node.grpc_addr == spec.grpc_addr:
            raise PlanRefused(
                action,
                f"address {spec.host} is already used by meta-{node.node_id} in the inventory "
                f"({node.raft_addr}, {node.grpc_addr}); choose another host or ports",
            )
    if joined_id is not None:
        raise PlanRefused(
            action, f"{spec.raft_addr} is already registered as meta-{joined_id} (not a voter); remove it first"
        )
    if spec.node_id is None:
        return max(taken | {0}) + 1, False
    if spec.node_id in taken:
        raise PlanRefused(
            action,
            f"node id {spec.node_id} is already used in cluster {view.cluster} (used ids {_ids(taken)}); "
            f"choose an unused id or leave it out to pick {max(taken | {0}) + 1}",
        )
    return spec.node_id, False


def plan_scale_up(
    inventory: InventoryLike,
    view: ClusterView,
    new_nodes: Sequence[NewNodeSpec],
    host_facts: dict[str, HostFacts],
) -> ScalePlan:
    """Return the plan that adds ``new_nodes`` one at a time, or raise PlanRefused. Pure."""
    action = "scale-up"
    if not new_nodes:
        raise PlanRefused(action, "no new nodes given; name at least one host")
    hosts = [s.host for s in new_nodes]
    if len(set(hosts)) != len(hosts):
        raise PlanRefused(action, f"a host is listed twice in new nodes {hosts}")
    given = [s.node_id for s in new_nodes if s.node_id is not None]
    if len(set(given)) != len(given):
        raise PlanRefused(action, f"a node id is listed twice in new nodes {given}")
    _require_healthy(action, view)
    silent = sorted(view.voters - set(view.answering))
    if silent:
        raise PlanRefused(
            action,
            f"voters {silent} of cluster {view.cluster} do not answer; a new node must not join a degraded "
            f"cluster: bring them back or remove them (scale-down with force) first",
        )
    voters = set(view.voters)
    join = _voter_addresses(action, inventory, voters, view.node_addrs)
    taken = set(view.members) | set(view.node_addrs) | {n.node_id for n in inventory.meta_nodes}
    changes: list[NodeChange] = []
    for spec in new_nodes:
        node_id, already = _resolve_new_id(action, inventory, view, spec, taken)
        if not already:
            _check_new_host(action, spec, host_facts.get(spec.host))
        taken.add(node_id)
        if not already:
            voters.add(node_id)
        changes.append(
            NodeChange(
                action="add", node_id=node_id, host=spec.host, raft_port=spec.raft_port, grpc_port=spec.grpc_port,
                admin_port=spec.admin_port, join=tuple(a for a in join if a != spec.raft_addr),
                already_member=already, voters_after=tuple(sorted(voters)),
                recorded=already and any(n.node_id == node_id and n.host == spec.host for n in inventory.meta_nodes),
            )
        )
        if spec.raft_addr not in join:
            join.append(spec.raft_addr)
    raft_after, grpc_after = _meta_addresses_after(inventory, changes, set())
    return ScalePlan(
        action=action, cluster=view.cluster, voters_before=tuple(sorted(view.voters)),
        voters_after=tuple(sorted(voters)), leader_before=view.leader_id, answering=tuple(sorted(view.answering)),
        changes=tuple(changes), join_after=raft_after, endpoints_after=grpc_after,
    )


def _transfer_target(view: ClusterView, candidates: set[int]) -> int | None:
    """Return the healthiest candidate: the answering voter with the highest log index (lowest id on ties)."""
    live = [(view.answering[i], -i) for i in candidates if i in view.answering]
    return -max(live)[1] if live else None


def removal_quorum_reason(view: ClusterView, node_id: int, after: set[int]) -> str | None:
    """Return why removing ``node_id`` now would leave the voters ``after`` without a live majority, or None.

    Asked again right before the leave: a voter that died after the plan would make the leave hang."""
    return _quorum_after_reason(view, node_id, after, set(view.answering))


def _quorum_after_reason(view: ClusterView, node_id: int, after: set[int], answering: set[int]) -> str | None:
    """Return why removing ``node_id`` would leave the voters ``after`` without a live majority, or None."""
    live = after & answering
    need = quorum_size(len(after))
    if len(live) >= need:
        return None
    dead = sorted(after - answering)
    advice = (
        f"remove the dead node{'s' if len(dead) > 1 else ''} {', '.join(f'meta-{d}' for d in dead)} first "
        f"(scale-down with force) or bring {'them' if len(dead) > 1 else 'it'} back"
    )
    return (
        f"removing meta-{node_id} would leave voters {_ids(after)} with only {len(live)} answering "
        f"({_ids(live)}), below the quorum of {need}: the cluster would lose its leader; {advice}"
    )


def plan_scale_down(
    inventory: InventoryLike,
    view: ClusterView,
    node_ids: Sequence[int],
    *,
    force: bool,
    reachable_hosts: set[str],
) -> ScalePlan:
    """Return the plan that removes ``node_ids`` one at a time, or raise PlanRefused. Pure.

    A node that is neither a member nor in the inventory is refused, unless the inventory records it under
    ``[[removed]]`` (a rerun of a finished removal: nothing to do); one that already left but is still in the
    inventory is resumed (stop, retire, reconfigure, record).
    """
    action = "scale-down"
    if not node_ids:
        raise PlanRefused(action, "no node ids given; name at least one node to remove")
    if len(set(node_ids)) != len(node_ids):
        raise PlanRefused(action, f"a node id is listed twice in {list(node_ids)}")
    voters, answering = set(view.voters), set(view.answering)
    changes: list[NodeChange] = []
    notes: list[str] = []
    for node_id in node_ids:
        node = _inventory_node(inventory, node_id)
        if node_id not in view.members:
            if node is None:
                removed = getattr(inventory, "removed_node", lambda _id: None)(node_id)
                if removed is None:
                    raise PlanRefused(
                        action,
                        f"meta-{node_id} is not a member of cluster {view.cluster} (voters {_ids(view.voters)}) "
                        f"and not in the inventory; check the id (nothing was changed)",
                    )
                notes.append(
                    f"meta-{node_id} ({removed.host}) was already removed from cluster {view.cluster}"
                    f"{' at ' + removed.removed_at if removed.removed_at else ''}: nothing to remove"
                )
                continue
            changes.append(
                NodeChange(
                    action="remove", node_id=node_id, host=node.host, already_removed=True,
                    host_dead=node.host not in reachable_hosts, voters_after=tuple(sorted(voters)),
                    **_ports(node),
                )
            )
            continue
        changes.append(_plan_removal(action, inventory, view, node_id, node, voters, answering, force, reachable_hosts))
        voters.discard(node_id)
        answering.discard(node_id)
    removed = {c.node_id for c in changes}
    raft_after, grpc_after = _meta_addresses_after(inventory, (), removed)
    return ScalePlan(
        action=action, cluster=view.cluster, voters_before=tuple(sorted(view.voters)),
        voters_after=tuple(sorted(voters)), leader_before=view.leader_id, answering=tuple(sorted(view.answering)),
        changes=tuple(changes), join_after=raft_after, endpoints_after=grpc_after, notes=tuple(notes),
    )


def _ports(node: MetaNodeLike) -> dict[str, int]:
    """Return the node's ports as NodeChange keyword arguments (packaged defaults when absent)."""
    return {
        "raft_port": getattr(node, "raft_port", 28004),
        "grpc_port": getattr(node, "grpc_port", 9191),
        "admin_port": getattr(node, "admin_port", 28002),
    }


def _plan_removal(
    action: str,
    inventory: InventoryLike,
    view: ClusterView,
    node_id: int,
    node: MetaNodeLike | None,
    voters: set[int],
    answering: set[int],
    force: bool,
    reachable_hosts: set[str],
) -> NodeChange:
    """Return the change that removes member ``node_id``, or refuse when it is unsafe."""
    if node is None:
        raise PlanRefused(
            action,
            f"meta-{node_id} is a member of cluster {view.cluster} but not in the inventory; add it there first so "
            f"its host is known",
        )
    _require_healthy(action, view)
    if voters <= {node_id}:
        raise PlanRefused(action, f"meta-{node_id} is the last voter of cluster {view.cluster}; a cluster needs one")
    after = voters - {node_id}
    reason = _quorum_after_reason(view, node_id, after, answering)
    if reason:
        raise PlanRefused(action, reason)
    host_dead = node.host not in reachable_hosts
    if host_dead and not force:
        raise PlanRefused(
            action,
            f"the host of meta-{node_id} ({node.host}) is not reachable over SSH; if it is dead, rerun with "
            f"force=True to remove it through the live nodes",
        )
    if force and not host_dead and node_id in answering:
        raise PlanRefused(
            action,
            f"force is for a dead node, but meta-{node_id} ({node.host}) is reachable and answers; run without force",
        )
    transfer_to = None
    if view.leader_id == node_id:
        transfer_to = _transfer_target(view, after & answering)
        if transfer_to is None:
            raise PlanRefused(action, f"meta-{node_id} is the leader and no other voter answers to take over")
    via_ids = sorted(after & answering)
    return NodeChange(
        action="remove", node_id=node_id, host=node.host, transfer_leader_to=transfer_to,
        leave_via=tuple(_voter_addresses(action, inventory, via_ids)), host_dead=host_dead,
        voters_after=tuple(sorted(after)), **_ports(node),
    )


__all__ = [
    "ClusterView",
    "FileChange",
    "HostFacts",
    "NewNodeSpec",
    "NodeChange",
    "ScalePlan",
    "plan_scale_down",
    "plan_scale_up",
    "quorum_size",
    "removal_quorum_reason",
    "tolerated_failures",
]
