"""Drift between the inventory and the cluster, and the inventory that matches the cluster. Pure.

The cluster is the truth about membership (who is a voter or learner, at which raft address); the inventory is the
truth about access (SSH settings, paths, ports it lists). ``inventory_drift`` names every difference with the exact
fix; ``synced_inventory`` returns the inventory with the cluster's membership written in (what the `sync-inventory`
flow records after approval).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from metascale import config
from metascale.errors import InventoryError, PlanRefused
from metascale.inventory import DEFAULT_ADMIN_PORT, DEFAULT_GRPC_PORT, Inventory, MetaNode, RemovedNode, _validated

DriftKind = Literal["missing", "removed-but-member", "not-a-member"]
SYNC_ACTION = "sync-inventory"
SYNC_HINT = ("run sync-inventory (CLI `metascale sync-inventory --inventory FILE`, or the sync-inventory "
             "deployment with the cluster block)")


def split_host_port(address: str) -> tuple[str, int] | None:
    """``host:port``, ``[v6]:port`` or databend-meta's unbracketed ``v6:port`` -> (host, port); None otherwise."""
    try:
        host, port = config.split_host_port(address)
    except ValueError:
        return None
    return (host, port) if host else None


class Drift(BaseModel):
    """One difference between the inventory and the cluster's membership, with the exact fix."""

    model_config = ConfigDict(frozen=True)

    kind: DriftKind
    node_id: int
    host: str
    problem: str
    fix: str

    def line(self) -> str:
        """One sentence: the problem, then the fix."""
        return f"{self.problem}; fix: {self.fix}"


def member_meta_node(node_id: int, raft_addr: str, grpc_addr: str = "",
                     admin_port: int = DEFAULT_ADMIN_PORT) -> MetaNode | None:
    """The MetaNode a member's node record describes (host and raft port from its raft address, gRPC port from its
    gRPC advertise address on the same host, else the packaged default), or None when it names no valid host."""
    raft = split_host_port(raft_addr)
    if raft is None:
        return None
    grpc = split_host_port(grpc_addr) if grpc_addr else None
    grpc_port = grpc[1] if grpc and grpc[0] == raft[0] else DEFAULT_GRPC_PORT
    try:
        return MetaNode(node_id=node_id, host=raft[0], raft_port=raft[1], grpc_port=grpc_port, admin_port=admin_port)
    except ValueError:  # pydantic ValidationError: not a host metascale would connect to, or a port clash
        return None


def _role(node_id: int, voters: Iterable[int]) -> str:
    return "voter" if node_id in set(voters) else "learner"


def inventory_drift(inventory: Inventory, voters: Iterable[int], learners: Iterable[int],
                    node_addrs: Mapping[int, str], *, sync_hint: str = SYNC_HINT) -> list[Drift]:
    """Every difference between ``inventory`` and the cluster's membership (``voters`` + ``learners``, raft
    addresses from the cluster's node records), ordered by node id. Empty when the membership is unknown.

    Kinds: ``missing`` (a member the inventory does not list), ``removed-but-member`` (an id recorded under
    ``[[removed]]`` that is a member again), ``not-a-member`` (an inventory node the cluster does not have).
    ``sync_hint`` names the sync command in the fixes (the CLI gives the exact one, with the inventory's path)."""
    voters, learners = set(voters), set(learners)
    members = voters | learners
    if not members:
        return []
    listed = {n.node_id: n for n in inventory.meta_nodes}
    removed = {r.node_id: r for r in getattr(inventory, "removed_nodes", ())}
    drifts: list[Drift] = []
    for node_id in sorted(members | set(listed)):
        if node_id in members:
            role = _role(node_id, voters)
            addr = node_addrs.get(node_id, "")
            parsed = split_host_port(addr)
            host = parsed[0] if parsed else (listed[node_id].host if node_id in listed else "")
            if node_id in removed:
                record = removed[node_id]
                when = f" at {record.removed_at}" if record.removed_at else ""
                drifts.append(Drift(
                    kind="removed-but-member", node_id=node_id, host=host,
                    problem=f"meta-{node_id} is recorded under [[removed]] (removed{when}) but is a {role} of "
                            f"cluster {inventory.name} again (raft {addr or 'unknown'})",
                    fix=f"drop its [[removed]] record{'' if node_id in listed else ' and list it under [[meta]]'} "
                        f"({sync_hint} does this), or take it out of the cluster: scale-down --id {node_id}"))
            elif node_id not in listed:
                entry = (f'[[meta]] id = {node_id}, host = "{host}", raft_port = {parsed[1]}' if parsed
                         else f"[[meta]] id = {node_id} with its host")
                drifts.append(Drift(
                    kind="missing", node_id=node_id, host=host,
                    problem=f"meta-{node_id} ({addr or 'address unknown'}) is a {role} of cluster {inventory.name} "
                            f"but missing from the inventory",
                    fix=f"add {entry} to the inventory ({sync_hint} does this), or remove it from the cluster: "
                        f"scale-down --id {node_id}"))
            continue
        node = listed[node_id]
        drifts.append(Drift(
            kind="not-a-member", node_id=node_id, host=node.host,
            problem=f"meta-{node_id} ({node.raft_addr}) is in the inventory but not a member of cluster "
                    f"{inventory.name} (members {sorted(members)})",
            fix=f"finish its removal with scale-down --id {node_id} (stops it there, retires its raft dir, records "
                f"it), or record it as removed without touching its host: {sync_hint}"))
    return drifts


def synced_inventory(inventory: Inventory, voters: Iterable[int], learners: Iterable[int],
                     node_addrs: Mapping[int, str], grpc_addrs: Mapping[int, str] | None = None, *,
                     removed_at: str = "", admin_ports: Mapping[int, int] | None = None) -> Inventory:
    """Return ``inventory`` with the cluster's membership written in: members it lacks are added under
    ``[[meta]]`` (host and ports from their node records, the admin port from ``admin_ports`` or the packaged
    default), ``[[removed]]`` records of members are dropped, and inventory nodes that are not members move to
    ``[[removed]]`` (so their ids are never handed out again). SSH settings, paths and query nodes are kept.
    Idempotent: the result of a synced inventory is the same inventory.

    Raises: PlanRefused when the membership is unknown or a member's node record names no usable host.
    """
    voters, learners = set(voters), set(learners)
    members = voters | learners
    if not voters:
        raise PlanRefused(SYNC_ACTION, f"the membership of cluster {inventory.name} is unknown (no leader answered); "
                                       "nothing to sync from: bring the cluster back first")
    grpc_addrs = grpc_addrs or {}
    admin_ports = admin_ports or {}
    listed = {n.node_id for n in inventory.meta_nodes}
    kept = [n for n in inventory.meta_nodes if n.node_id in members]
    added = []
    for node_id in sorted(members - listed):
        node = member_meta_node(node_id, node_addrs.get(node_id, ""), grpc_addrs.get(node_id, ""),
                                admin_ports.get(node_id, DEFAULT_ADMIN_PORT))
        if node is None:
            raise PlanRefused(SYNC_ACTION, f"meta-{node_id} is a member of cluster {inventory.name} but its node "
                                           f"record names no usable host (raft {node_addrs.get(node_id, '')!r}); "
                                           f"add it to the inventory by hand")
        added.append(node)
    dropped = [n for n in inventory.meta_nodes if n.node_id not in members]
    removed = [r for r in inventory.removed_nodes if r.node_id not in members]
    removed += [RemovedNode(node_id=n.node_id, host=n.host, removed_at=removed_at) for n in dropped
                if not any(r.node_id == n.node_id for r in removed)]
    if not kept and not added:
        raise PlanRefused(SYNC_ACTION, f"cluster {inventory.name} has no member to list")
    data = inventory.model_dump(by_alias=True, exclude_none=True)
    data["meta"] = [n.model_dump(by_alias=True, exclude_none=True) for n in [*kept, *added]]
    data["removed"] = [r.model_dump(by_alias=True, exclude_none=True) for r in removed]
    try:
        return _validated(data, f"inventory {inventory.name}")
    except InventoryError as exc:  # e.g. an added member's address clashes with a listed node's
        raise PlanRefused(SYNC_ACTION, f"the synced inventory would be invalid: {exc}") from None


class SyncPlan(BaseModel):
    """What `sync-inventory` will record: the drift it fixes and the diff of the inventory (rendered for approval)."""

    model_config = ConfigDict(frozen=True)

    cluster: str
    source: str = Field(description="where the inventory lives: the file path or `block <name>`")
    drift: tuple[str, ...] = ()
    diff: str = ""
    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()
    inventory_after: Inventory

    @property
    def nothing_to_do(self) -> bool:
        """True when the inventory already lists the cluster's membership."""
        return not self.diff

    def summary(self) -> str:
        """One sentence: what is recorded where."""
        if self.nothing_to_do:
            return (f"sync-inventory of cluster {self.cluster}: nothing to do, {self.source} already lists the "
                    f"members {sorted({*self.voters, *self.learners})}")
        return (f"sync-inventory of cluster {self.cluster}: record the cluster's membership (voters "
                f"{list(self.voters)}{f', learners {list(self.learners)}' if self.learners else ''}) in "
                f"{self.source}, meta ids {self.inventory_after.meta_ids}; fixes {len(self.drift)} difference(s)")

    def to_markdown(self) -> str:
        """The plan artifact / approval text: summary, drift with fixes, and the inventory diff (secrets masked)."""
        lines = [f"# Plan: sync-inventory of cluster `{self.cluster}`", "", self.summary() + ".", "",
                 "Only the inventory changes: no host is touched.", ""]
        if self.drift:
            lines += ["## Inventory drift (the cluster is the truth about membership)", ""]
            lines += [f"* {line}" for line in self.drift] + [""]
        lines += ["## Inventory changes", ""]
        lines += ["```diff", self.diff.rstrip("\n"), "```"] if self.diff else ["No changes."]
        return "\n".join(lines) + "\n"


def plan_sync(inventory: Inventory, source: str, voters: Iterable[int], learners: Iterable[int],
              node_addrs: Mapping[int, str], grpc_addrs: Mapping[int, str] | None = None, *,
              removed_at: str = "") -> SyncPlan:
    """Return the SyncPlan that writes the cluster's membership into ``inventory`` (``source`` labels the diff).
    Raises: PlanRefused (see ``synced_inventory``)."""
    voters, learners = sorted(set(voters)), sorted(set(learners))
    after = synced_inventory(inventory, voters, learners, node_addrs, grpc_addrs, removed_at=removed_at)
    drift = inventory_drift(inventory, voters, learners, node_addrs)
    diff = "" if after == inventory else config.unified_diff(inventory.to_toml(), after.to_toml(), source)
    return SyncPlan(cluster=inventory.name, source=source, drift=tuple(d.line() for d in drift), diff=diff,
                    voters=tuple(voters), learners=tuple(learners), inventory_after=after)


__all__ = ["Drift", "SyncPlan", "plan_sync", "SYNC_HINT", "inventory_drift", "member_meta_node", "split_host_port", "synced_inventory"]
