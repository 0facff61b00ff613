"""Pure planning and safety rules for scaling a databend-meta cluster.

``plan_scale_up`` / ``plan_scale_down`` take the inventory, one snapshot of the cluster (``ClusterView``) and the
facts gathered about the hosts involved, and return a ``ScalePlan`` or raise ``PlanRefused`` with a sentence that
says why and what to do instead. Nothing here does I/O; the flows gather the facts and publish the plan.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from metascale.config import join_host_port
from metascale.drift import SYNC_HINT, inventory_drift, member_meta_node
from metascale.errors import PlanRefused
from metascale.redact import redact

Action = Literal["scale-up", "scale-down", "replace-node"]


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
    grpc_addrs: dict[int, str] = Field(default_factory=dict,
                                       description="node id -> gRPC advertise address (node records; '' = none)")
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
    meta_enabled: bool = Field(default=False, description="the databend-meta service is enabled there (before the run)")
    raft_dir: str = Field(default="", description="raft_dir from the host's own meta config (else the inventory's)")
    raft_dir_in_use: bool = Field(default=False, description="the raft dir holds data (the node was started before)")
    own_node_id: int | None = Field(default=None, description="the id the running service reports (its raft dir's)")
    own_voters: tuple[int, ...] = Field(default=(), description="the voters the running service reports")
    status_error: str = Field(default="", description="why the running service's status could not be read")

    @property
    def own_one_node_cluster(self) -> bool:
        """True when the service runs and is visibly a one-node cluster of its own (voters == [its own id])."""
        return self.meta_active and self.own_node_id is not None and self.own_voters == (self.own_node_id,)


class QueryFacts(BaseModel):
    """What the planner needs from one query node's databend-query.toml (``read_error`` when it was unreadable)."""

    model_config = ConfigDict(frozen=True)

    host: str
    auto_sync_interval: float = Field(default=0.0, description="[meta] auto_sync_interval; 0 (the code default) = off")
    endpoints: tuple[str, ...] = ()
    health_address: str = Field(default="127.0.0.1:8080",
                                description="where /v1/health answers ON the host ([query] admin_api_address)")
    read_error: str = ""


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
        """Return ``host:raft_port`` (an IPv6 host in brackets)."""
        return join_host_port(self.host, self.raft_port)

    @property
    def grpc_addr(self) -> str:
        """Return ``host:grpc_port`` (an IPv6 host in brackets)."""
        return join_host_port(self.host, self.grpc_port)


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
    reset_raft_dir: str = Field(default="", description="add: stop the service and move this raft dir aside first "
                                                        "(reset_new_node; the host is a one-node cluster of its own)")
    service_was_active: bool = Field(default=False, description="add: the service ran before this run started")
    service_was_enabled: bool = Field(default=False, description="add: the service was enabled before this run")
    voters_after: tuple[int, ...] = ()
    in_inventory: bool = Field(default=True, description="remove: False for a member the inventory never listed (a "
                                                         "half-added node): host and ports from its node record")

    @property
    def raft_addr(self) -> str:
        """Return ``host:raft_port`` (an IPv6 host in brackets)."""
        return join_host_port(self.host, self.raft_port)

    @property
    def grpc_addr(self) -> str:
        """Return ``host:grpc_port`` (an IPv6 host in brackets)."""
        return join_host_port(self.host, self.grpc_port)


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
    drift: tuple[str, ...] = Field(default=(), description="differences between the inventory and the cluster's "
                                                           "membership, each with its fix (metascale.drift)")
    file_changes: tuple[FileChange, ...] = ()
    restart_query_nodes: bool = Field(default=False, description="restart the query nodes one at a time at the end")
    accept_no_fault_tolerance: bool = Field(
        default=False, description="the operator accepted ending with 1 or 2 voters (no failure tolerated)")
    replaces: int | None = Field(default=None, description="replace-node: the id of the node being replaced")
    spare_host: str = Field(default="", description="replace-node: the [[spare]] entry (as the inventory names it) "
                                                    "the new node comes from; recorded as used")

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

    @property
    def leaves_no_fault_tolerance(self) -> bool:
        """True when the change alters membership and leaves 1 or 2 voters: losing any one voter stops the cluster."""
        return bool(self.membership_changes) and bool(self.voters_after) and \
            tolerated_failures(len(self.voters_after)) == 0

    def warnings(self) -> tuple[str, ...]:
        """Return the sentences the plan shows at its top: no fault tolerance left, an even number of voters."""
        if not self.membership_changes:
            return ()
        after = len(self.voters_after)
        found = []
        if self.leaves_no_fault_tolerance:
            accepted = ("accepted with accept_no_fault_tolerance" if self.accept_no_fault_tolerance else
                        "a replacement keeps the number of voters, so it takes no fault tolerance away"
                        if self.fault_tolerance_refusal() is None else
                        "a real run is refused unless accept_no_fault_tolerance=True (CLI --accept-no-fault-tolerance)")
            found.append(
                f"NO FAULT TOLERANCE: after this change cluster {self.cluster} has {after} voter"
                f"{'s' if after != 1 else ''} {_ids(self.voters_after)} and tolerates 0 failures (before: "
                f"{tolerated_failures(len(self.voters_before))}): if any one voter stops, the cluster has no leader "
                f"and stops serving; {accepted}")
        if after % 2 == 0:
            found.append(
                f"EVEN NUMBER OF VOTERS: {after} voters tolerate {tolerated_failures(after)} failure"
                f"{'s' if tolerated_failures(after) != 1 else ''}, no more than {after - 1} would, and need "
                f"{quorum_size(after)} answering instead of {quorum_size(after - 1)}; prefer an odd number")
        return tuple(found)

    def transfer_targets(self, node_id: int) -> list[int]:
        """Where leadership goes if ``node_id`` is the leader right before its leave: voters that stay to the end
        (never another node of this request), the planned target first, then the others that answered."""
        staying = [i for i in self.voters_after if i != node_id]
        planned = next((c.transfer_leader_to for c in self.changes if c.node_id == node_id), None)
        first = [planned] if planned in staying else []
        return first + [i for i in staying if i in self.answering and i not in first]

    def fault_tolerance_refusal(self) -> str | None:
        """Return why this plan must not run as asked (no fault tolerance left, not accepted), or None."""
        if not self.leaves_no_fault_tolerance or self.accept_no_fault_tolerance:
            return None
        if self.action == "replace-node" and len(self.voters_after) >= len(self.voters_before):
            return None  # a replacement keeps the number of voters: it takes no fault tolerance away
        after = len(self.voters_after)
        return (f"the change would leave cluster {self.cluster} with {after} voter{'s' if after != 1 else ''} "
                f"{_ids(self.voters_after)}, which tolerates no failure (any one voter down stops the cluster); "
                f"nothing was changed: if that is intended, rerun with accept_no_fault_tolerance=True "
                f"(CLI --accept-no-fault-tolerance)")

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
        risk = "; WARNING: leaves NO FAULT TOLERANCE" if self.leaves_no_fault_tolerance else ""
        return (
            f"{self.action} on cluster {self.cluster}: {', '.join(verbs)}; voters {_ids(self.voters_before)} -> "
            f"{_ids(self.voters_after)}{risk}"
        )

    def to_markdown(self) -> str:
        """Render the plan as the markdown artifact an operator reads before approving (no secret value in it)."""
        before, after = len(self.voters_before), len(self.voters_after)
        lines = [
            f"# Plan: {self.action} on cluster `{self.cluster}`",
            "",
            *[f"> **WARNING: {w}.**\n" for w in self.warnings()],
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
        ]
        if self.restart_query_nodes:
            lines.append(f"{len(lines) - lines.index('## Steps') - 1}. restart the query nodes one at a time "
                         f"(`systemctl restart`), each healthy before the next")
        lines.append(f"{len(lines) - lines.index('## Steps') - 1}. record the new membership in the inventory")
        if self.drift:
            lines += ["", "## Inventory drift (the cluster is the truth about membership)", ""]
            lines += [f"* {line}" for line in self.drift]
        if self.notes:
            lines += ["", "## Notes", ""] + [f"* {note}" for note in self.notes]
        lines += ["", "## File changes", ""]
        if not self.files_to_change:
            lines.append("No file changes: every file is already as wanted.")
        for change in self.files_to_change:
            lines += [f"### `{change.host}:{change.path}`", "", "```diff", change.diff.rstrip("\n"), "```", ""]
        return redact("\n".join(lines) + "\n")  # diffs are masked by key; values seen elsewhere by value

    @staticmethod
    def _leader_text(leader: int | None) -> str:
        return f"meta-{leader}" if leader is not None else "none"

    @staticmethod
    def _change_text(change: NodeChange) -> str:
        if change.action == "add":
            if change.already_member:
                return f"meta-{change.node_id} ({change.host}) is already a voter: nothing to add"
            reset = (f"stop databend-meta there and move its raft dir `{change.reset_raft_dir}` aside (it is a "
                     f"one-node cluster of its own; reset_new_node), then " if change.reset_raft_dir else "")
            return (
                f"add meta-{change.node_id} ({change.host}): {reset}copy the config from an existing node, set id "
                f"and join `{list(change.join)}`, start the service, wait until it is a voter and has caught up"
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


def _check_new_host(action: str, spec: NewNodeSpec, facts: HostFacts | None, view: ClusterView,
                    reset_new_node: bool) -> str:
    """Refuse when the new host cannot become a meta node (unreachable, no package, ports taken, a raft dir that
    already holds data, a service that already runs in some cluster). Return the raft dir to move aside first
    ("" = none): only with ``reset_new_node`` and only for a node that is visibly a one-node cluster of its own."""
    if facts is None or not facts.reachable:
        reason = facts.reason if facts is not None else "no facts gathered"
        raise PlanRefused(action, f"new host {spec.host} is not reachable over SSH: {reason}")
    if not facts.has_package:
        raise PlanRefused(
            action, f"new host {spec.host} has no databend-meta package (/usr/bin/databend-meta); install it first"
        )
    raft_dir = facts.raft_dir or "its raft dir"
    if facts.meta_active:
        if facts.own_node_id is None:
            raise PlanRefused(
                action,
                f"databend-meta already runs on new host {spec.host} and its status cannot be read "
                f"({facts.status_error or 'no answer'}), so metascale cannot tell which cluster it belongs to; "
                f"find out, then stop it and move {raft_dir} aside yourself if it holds nothing you need",
            )
        if facts.own_one_node_cluster:
            if reset_new_node:
                return facts.raft_dir
            raise PlanRefused(
                action,
                f"new host {spec.host} already runs databend-meta as a one-node cluster of its own (meta-"
                f"{facts.own_node_id}, data in {raft_dir}; started once with `single = true`): it would ignore the "
                f"new id and join; rerun with reset_new_node=True (CLI --reset-new-node) to stop it, move {raft_dir} "
                f"aside and go on",
            )
        member = facts.own_node_id in view.members
        raise PlanRefused(
            action,
            f"new host {spec.host} already runs databend-meta as meta-{facts.own_node_id} of "
            f"{'this cluster under another address' if member else 'another cluster'} (voters "
            f"{_ids(facts.own_voters)}); metascale never touches a member of another multi-node cluster: remove "
            f"it from that cluster first, then stop it and move {raft_dir} aside",
        )
    if facts.raft_dir_in_use:
        advice = ("reset_new_node only resets a node that is visibly a one-node cluster of its own: start it so "
                  "metascale can see what it is, or move the raft dir aside yourself" if reset_new_node else
                  "a node with an initialised raft dir ignores the new id and join: start it so metascale can see "
                  "what it is (a one-node cluster of its own can then be reset with reset_new_node=True), or move "
                  "the raft dir aside yourself")
        raise PlanRefused(
            action,
            f"the raft dir {raft_dir} on new host {spec.host} already holds data while databend-meta is not "
            f"running there; {advice}",
        )
    wanted = {spec.raft_port, spec.grpc_port, spec.admin_port}
    busy = sorted(wanted & set(facts.busy_ports))
    if busy:
        raise PlanRefused(
            action, f"new host {spec.host} already has ports {busy} in use; free them or choose other ports"
        )
    return ""


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
    removed = getattr(inventory, "removed_node", lambda _id: None)(spec.node_id) if spec.node_id is not None else None
    if removed is not None:
        raise PlanRefused(
            action,
            f"node id {spec.node_id} belonged to meta-{spec.node_id} ({removed.host}), removed from cluster "
            f"{view.cluster}{' at ' + removed.removed_at if removed.removed_at else ''}; a removed id is never "
            f"handed out again (the old node's records and logs would be mistaken for the new one): choose another "
            f"id or leave it out to pick {max(taken | {0}) + 1}",
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
    *,
    reset_new_node: bool = False,
    query_facts: dict[str, QueryFacts] | None = None,
    restart_query_nodes: bool = False,
    accept_no_fault_tolerance: bool = False,
) -> ScalePlan:
    """Return the plan that adds ``new_nodes`` one at a time, or raise PlanRefused. Pure.

    A new host whose raft dir already holds data, or whose service already runs, is refused; with
    ``reset_new_node`` one that is visibly a one-node cluster of its own gets its raft dir moved aside first.
    ``query_facts`` (host -> QueryFacts) adds a note per query node saying when it sees the new membership.
    """
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
    resumed = {i for i, addr in view.node_addrs.items() if addr in {s.raft_addr for s in new_nodes}}
    drift = _drift_or_refuse(action, inventory, view, resumed)
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
    taken |= {r.node_id for r in getattr(inventory, "removed_nodes", ())}  # removed ids are never reused
    changes: list[NodeChange] = []
    for spec in new_nodes:
        node_id, already = _resolve_new_id(action, inventory, view, spec, taken)
        reset = "" if already else _check_new_host(action, spec, host_facts.get(spec.host), view, reset_new_node)
        facts = host_facts.get(spec.host)
        taken.add(node_id)
        if not already:
            voters.add(node_id)
        changes.append(
            NodeChange(
                action="add", node_id=node_id, host=spec.host, raft_port=spec.raft_port, grpc_port=spec.grpc_port,
                admin_port=spec.admin_port, join=tuple(a for a in join if a != spec.raft_addr),
                already_member=already, voters_after=tuple(sorted(voters)),
                recorded=already and any(n.node_id == node_id and n.host == spec.host for n in inventory.meta_nodes),
                reset_raft_dir=reset, service_was_active=bool(facts and facts.meta_active),
                service_was_enabled=bool(facts and facts.meta_enabled),
            )
        )
        if spec.raft_addr not in join:
            join.append(spec.raft_addr)
    raft_after, grpc_after = _meta_addresses_after(inventory, changes, set())
    notes = [catch_up_note(c.node_id) for c in changes if not c.already_member]
    advertised = _advertised_after(inventory, view, changes, set())
    notes += query_pickup_notes(query_facts or {}, advertised, restart_query_nodes)
    return ScalePlan(
        action=action, cluster=view.cluster, voters_before=tuple(sorted(view.voters)),
        voters_after=tuple(sorted(voters)), leader_before=view.leader_id, answering=tuple(sorted(view.answering)),
        changes=tuple(changes), join_after=raft_after, endpoints_after=grpc_after, notes=tuple(notes),
        restart_query_nodes=restart_query_nodes, accept_no_fault_tolerance=accept_no_fault_tolerance, drift=drift,
    )


def catch_up_note(node_id: int) -> str:
    """The sentence the plan and the logs use about a joining node's catch-up (openraft adds voters directly)."""
    return (f"meta-{node_id} counts as a voter as soon as it joins; metascale waits until it has caught up (the "
            f"leader's replication of it reaches the leader's applied index at the time of the join) before the "
            f"next step")


_UNREACHABLE_ADVERTISE = {"", "localhost", "0.0.0.0", "::", "[::]"}


def advertise_unreachable_reason(address: str, own_host: str | None) -> str | None:
    """Why a query node on another host cannot reach a meta node advertising gRPC ``address``, or None.

    Empty, wildcard, ``localhost`` and loopback hosts are unreachable from elsewhere, except a loopback address that
    IS the node's own address in the inventory (a lab where hosts live on 127.0.0.0/8 in their own namespaces)."""
    host = address.rpartition(":")[0] if ":" in address else address
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not address:
        return "advertises no gRPC address (no grpc_api_advertise_host)"
    if host in _UNREACHABLE_ADVERTISE:
        return f"advertises {address}"
    if (host.startswith("127.") or host == "::1") and host != own_host:
        return f"advertises the loopback address {address}"
    return None


def _advertised_after(inventory: InventoryLike, view: ClusterView, adds: Sequence[NodeChange],
                      removed: set[int]) -> dict[int, tuple[str, str | None]]:
    """Return meta id -> (gRPC advertise address, inventory host) of every meta node after the change."""
    hosts = {n.node_id: n.host for n in inventory.meta_nodes}
    members = (set(view.voters) | set(view.learners) | set(hosts)) - removed
    result = {i: (view.grpc_addrs.get(i, ""), hosts.get(i)) for i in members}
    for change in adds:
        if change.node_id not in removed:  # write_new_node_config sets grpc_api_advertise_host = the host
            result[change.node_id] = (change.grpc_addr if not change.already_member
                                      else view.grpc_addrs.get(change.node_id, change.grpc_addr), change.host)
    return result


def query_pickup_notes(query_facts: dict[str, QueryFacts], advertised: dict[int, tuple[str, str | None]],
                       restart_query_nodes: bool) -> list[str]:
    """One note per query node: when it picks up the new membership (reference §5.2).

    A query node reads `[meta] endpoints` only at start; at run time it follows membership only with
    ``auto_sync_interval > 0`` and when every meta node advertises a reachable gRPC address."""
    blockers = [f"meta-{i} {reason}" for i, (address, host) in sorted(advertised.items())
                if (reason := advertise_unreachable_reason(address, host))]
    notes = []
    for host, facts in sorted(query_facts.items()):
        if restart_query_nodes:
            notes.append(f"query node {host}: restarted by this run after its endpoints are written (one at a "
                         f"time, each healthy before the next): it sees the new membership then")
            continue
        if facts.read_error:
            notes.append(f"WARNING: query node {host}: its config could not be read ({facts.read_error}); it may "
                         f"only see the new membership at its next restart")
            continue
        if facts.auto_sync_interval > 0 and not blockers:
            notes.append(f"query node {host}: picks up the new membership within auto_sync_interval="
                         f"{facts.auto_sync_interval:g} s (it follows the meta nodes' member list); its "
                         f"[meta] endpoints matter again at its next restart")
            continue
        why = ("auto_sync_interval is 0 (off)" if facts.auto_sync_interval <= 0
               else "it cannot follow the member list: " + ", ".join(blockers))
        notes.append(f"WARNING: query node {host} sees the new membership only at its next restart ({why}); it "
                     f"never will before that: rerun with restart_query_nodes=True (CLI --restart-query-nodes) "
                     f"or restart it yourself")
    return notes


def query_restart_blocked_reason(endpoints: Sequence[str], answering_endpoints: set[str]) -> str | None:
    """Why restarting the query nodes now would leave them without a meta node, or None.

    A restarted query node starts from its configured endpoints and needs at least one of them to answer."""
    if any(e in answering_endpoints for e in endpoints):
        return None
    return (f"no endpoint of the new [meta] endpoints {list(endpoints)} answers (answering: "
            f"{sorted(answering_endpoints) or 'none'}): a restarted query node could not connect to any meta node; "
            f"the query nodes were not restarted")


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
    query_facts: dict[str, QueryFacts] | None = None,
    restart_query_nodes: bool = False,
    accept_no_fault_tolerance: bool = False,
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
    if view.voters and view.voters <= set(node_ids):
        raise PlanRefused(action, f"the request removes every voter {_ids(view.voters)} of cluster {view.cluster}: "
                                  f"meta-{max(view.voters)} would be removed as the last voter; a cluster needs one")
    drift = _drift_or_refuse(action, inventory, view, set(node_ids))
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
        changes.append(_plan_removal(action, inventory, view, node_id, node, voters, answering, force, reachable_hosts,
                                     leaving=set(node_ids)))
        voters.discard(node_id)
        answering.discard(node_id)
    removed = {c.node_id for c in changes}
    raft_after, grpc_after = _meta_addresses_after(inventory, (), removed)
    notes += query_pickup_notes(query_facts or {}, _advertised_after(inventory, view, (), removed),
                                restart_query_nodes)
    return ScalePlan(
        action=action, cluster=view.cluster, voters_before=tuple(sorted(view.voters)),
        voters_after=tuple(sorted(voters)), leader_before=view.leader_id, answering=tuple(sorted(view.answering)),
        changes=tuple(changes), join_after=raft_after, endpoints_after=grpc_after, notes=tuple(notes),
        restart_query_nodes=restart_query_nodes, accept_no_fault_tolerance=accept_no_fault_tolerance, drift=drift,
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
    *,
    leaving: set[int] | None = None,
) -> NodeChange:
    """Return the change that removes member ``node_id``, or refuse when it is unsafe.

    A leaving leader hands over to a voter that stays: never to another node of the same request (``leaving``)."""
    in_inventory = node is not None
    if node is None:  # a member the inventory never listed (half-added): the cluster's node record names its host
        node = _member_from_view(action, view, node_id)
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
        transfer_to = _transfer_target(view, (after - (leaving or set())) & answering)
        if transfer_to is None:
            raise PlanRefused(action, f"meta-{node_id} is the leader and no voter that stays answers to take over")
    via_ids = sorted(after & answering)
    return NodeChange(
        action="remove", node_id=node_id, host=node.host, transfer_leader_to=transfer_to,
        leave_via=tuple(_voter_addresses(action, inventory, via_ids)), host_dead=host_dead,
        voters_after=tuple(sorted(after)), in_inventory=in_inventory, **_ports(node),
    )


def _member_from_view(action: str, view: ClusterView, node_id: int) -> MetaNodeLike:
    """The host and ports of member ``node_id`` from the cluster's own node records; refuse when it names none."""
    node = member_meta_node(node_id, view.node_addrs.get(node_id, ""), view.grpc_addrs.get(node_id, ""))
    if node is None:
        raise PlanRefused(action, f"meta-{node_id} is a member of cluster {view.cluster} but neither the inventory "
                                  f"nor its node record (raft {view.node_addrs.get(node_id, '')!r}) names its host; "
                                  f"add it to the inventory by hand first")
    return node


def _drift_or_refuse(action: str, inventory: InventoryLike, view: ClusterView, allowed: set[int]) -> tuple[str, ...]:
    """Return the drift between the inventory and the cluster as plan lines; refuse when a member other than the
    ones this request is about (``allowed``) is missing from the inventory: the run would rewrite `join` and the
    query endpoints without it and never touch its host."""
    found = inventory_drift(inventory, view.voters, view.learners, view.node_addrs)  # type: ignore[arg-type]
    blocking = [d for d in found if d.kind != "not-a-member" and d.node_id not in allowed
                and _inventory_node(inventory, d.node_id) is None]
    if blocking:
        raise PlanRefused(action, "the inventory does not match the cluster: " + "; ".join(d.line() for d in blocking)
                          + f". Nothing was changed: {SYNC_HINT} first, then rerun")
    return tuple(d.line() for d in found if d.node_id not in allowed)


_STAMP = re.compile(r"\d{8}T\d{6}Z?")


def _both_stay(old: int | None, new: int | None, current: ScalePlan) -> bool:
    """True when two leadership targets are both voters that stay and answer: which of them takes over is picked
    again right before the leave (``ScalePlan.transfer_targets``), so a target that changed with the followers' log
    indexes between two reads is no reason to refuse an approved plan."""
    return (old is not None and new is not None and old in current.voters_after and new in current.voters_after
            and old in current.answering and new in current.answering)


def plan_differences(approved: ScalePlan, current: ScalePlan) -> list[str]:
    """Return one sentence per way ``current`` (planned again after the approval) differs from ``approved``; [] when
    they are the same plan. Timestamps in the file diffs (the disarm comment) are ignored. Pure."""
    found: list[str] = []
    if approved.leader_before != current.leader_before:
        found.append(f"the leader moved: {ScalePlan._leader_text(approved.leader_before)} -> "
                     f"{ScalePlan._leader_text(current.leader_before)}")
    if approved.voters_before != current.voters_before:
        found.append(f"the voters changed: {_ids(approved.voters_before)} -> {_ids(current.voters_before)}")
    if approved.answering != current.answering:
        gone, back = set(approved.answering) - set(current.answering), set(current.answering) - set(approved.answering)
        detail = "; ".join([*(f"meta-{i} stopped answering" for i in sorted(gone)),
                            *(f"meta-{i} answers now" for i in sorted(back))])
        found.append(f"the nodes that answer changed: {_ids(approved.answering)} -> {_ids(current.answering)} "
                     f"({detail})")
    if approved.voters_after != current.voters_after:
        found.append(f"the voters at the end would be {_ids(current.voters_after)}, not {_ids(approved.voters_after)}")
    old_steps = [(c.action, c.node_id) for c in approved.changes]
    new_steps = [(c.action, c.node_id) for c in current.changes]
    if old_steps != new_steps:
        found.append(f"the node changes are now {[f'{a} meta-{i}' for a, i in new_steps]}, approved were "
                     f"{[f'{a} meta-{i}' for a, i in old_steps]}")
    else:
        for old, new in zip(approved.changes, current.changes, strict=True):
            a, b = old.model_dump(), new.model_dump()
            diffs = [f"{key} {a[key]!r} -> {b[key]!r}" for key in a if a[key] != b[key]
                     and not (key == "transfer_leader_to" and _both_stay(a[key], b[key], current))]
            if diffs:
                found.append(f"{old.action} meta-{old.node_id}: " + ", ".join(diffs))
    if approved.join_after != current.join_after:
        found.append(f"join would be {list(current.join_after)}, not {list(approved.join_after)}")
    if approved.endpoints_after != current.endpoints_after:
        found.append(f"the query endpoints would be {list(current.endpoints_after)}, not "
                     f"{list(approved.endpoints_after)}")
    old_files = {(f.host, f.path): _STAMP.sub("<time>", f.diff) for f in approved.file_changes}
    new_files = {(f.host, f.path): _STAMP.sub("<time>", f.diff) for f in current.file_changes}
    for host, path in sorted(set(old_files) | set(new_files)):
        if old_files.get((host, path)) != new_files.get((host, path)):
            found.append(f"the change to {host}:{path} differs from the approved diff (the file or the plan changed)")
    added = [n for n in current.notes if n not in approved.notes]
    dropped = [n for n in approved.notes if n not in current.notes]
    if added or dropped:
        found.append("the plan's notes changed: " + "; ".join([*(f"new: {n}" for n in added),
                                                               *(f"gone: {n}" for n in dropped)]))
    return found


__all__ = [
    "ClusterView",
    "FileChange",
    "HostFacts",
    "NewNodeSpec",
    "NodeChange",
    "QueryFacts",
    "ScalePlan",
    "advertise_unreachable_reason",
    "catch_up_note",
    "plan_differences",
    "plan_scale_down",
    "plan_scale_up",
    "query_pickup_notes",
    "query_restart_blocked_reason",
    "quorum_size",
    "removal_quorum_reason",
    "tolerated_failures",
]
