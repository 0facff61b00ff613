"""The planner's inputs and the plan's file diffs: pure functions over what was read from the hosts.

`view_of_cluster` turns a status read into the planner's `ClusterView`; `preview_file_changes` computes, before
anything changes, the unified diff of every config file a plan will touch on every host (the same edits the
steps make later, so the plan shows exactly what will be written). No I/O here: file texts come in through a
reader the caller supplies.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from metascale import config
from metascale.errors import ConfigEditError, PlanRefused
from metascale.inventory import Inventory, MetaNode
from metascale.plan import ClusterView, FileChange, NodeChange, ScalePlan
from metascale.status import ClusterStatus

ReadText = Callable[[str, str], str]
"""``read(host, path) -> text``; raises MetaScaleError when the file cannot be read."""


def view_of_cluster(status: ClusterStatus) -> ClusterView:
    """Return the planner's view of ``status``: leader, voters, learners, who answers, disagreements."""
    answered = [p for p in status.probes if p.status is not None]
    voters = status.voter_ids
    learners = status.non_voter_ids
    if voters is None:  # the leader did not answer: take the view most answering nodes share
        views = Counter(tuple(p.status.voter_ids) for p in answered if p.status)
        voters = list(views.most_common(1)[0][0]) if views else []
        learners = learners or []
    addrs: dict[int, str] = {}
    grpc: dict[int, str] = {}
    leader = status.leader_status
    for probe_status in [leader, *(p.status for p in answered)]:  # the leader's node records first
        if probe_status is None:
            continue
        for record in [*probe_status.voters, *probe_status.non_voters]:
            addrs.setdefault(record.node_id, record.raft_addr)
            grpc.setdefault(record.node_id, record.grpc_addr)
    disagreements: tuple[str, ...] = ()
    if answered and not status.agrees_on_membership():
        disagreements = tuple(
            f"meta-{p.node_id} sees leader {p.status.leader_id} and voters {p.status.voter_ids}"
            for p in answered if p.status
        )
    return ClusterView(
        cluster=status.cluster, leader_id=status.leader_id, voters=frozenset(voters),
        learners=frozenset(learners or []),
        answering={p.node_id: (p.status.last_applied_index or p.status.last_log_index or 0)
                   for p in answered if p.status},
        node_addrs=addrs, grpc_addrs=grpc, disagreements=disagreements,
    )


def listening_ports(proc_net_tcp: str) -> set[int]:
    """Return the TCP ports in LISTEN state (st ``0A``) from the text of /proc/net/tcp and /proc/net/tcp6."""
    ports = set()
    for line in proc_net_tcp.splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[3] == "0A" and ":" in fields[1]:
            ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def as_meta_node(change: NodeChange) -> MetaNode:
    """Return the MetaNode a plan change describes."""
    return MetaNode(id=change.node_id, host=change.host, raft_port=change.raft_port, grpc_port=change.grpc_port,
                    admin_port=change.admin_port)


def source_node(inventory: Inventory, plan: ScalePlan) -> MetaNode:
    """Return the existing node whose config a new node copies (runbook scale-up 1): the leader, else a voter.

    Raises: PlanRefused when the inventory lists none of the cluster's voters.
    """
    existing = {n.node_id: n for n in inventory.meta_nodes}
    if plan.leader_before in existing:
        return existing[plan.leader_before]  # type: ignore[index]
    for node_id in plan.voters_before:
        if node_id in existing:
            return existing[node_id]
    raise PlanRefused(plan.action, f"no existing meta node of cluster {plan.cluster} to copy the config from")


def preview_file_changes(inventory: Inventory, plan: ScalePlan, read: ReadText, when: str) -> list[FileChange]:
    """Return the diff of every file ``plan`` touches: new nodes' configs, ``join`` on the meta nodes that stay,
    the removed nodes' disarmed configs (not for dead hosts), and every query node's ``[meta] endpoints``.

    ``when`` stamps the disarm comment. Raises: PlanRefused when a file cannot be read or is not a valid config
    (bad TOML, no [raft_config] / [meta]) — before anything changes.
    """
    paths = inventory.paths
    removed = {c.node_id: c for c in plan.changes if c.action == "remove"}
    dead = {c.host for c in plan.changes if c.host_dead}

    def read_or_refuse(host: str, path: str) -> str:
        try:
            return read(host, path)
        except PlanRefused:
            raise
        except Exception as exc:  # MetaScaleError from the reader: name the file, refuse the plan
            raise PlanRefused(plan.action, f"cannot read {host}:{path}: {exc}") from None

    def change(host: str, path: str, current: str, wanted: str) -> FileChange:
        return FileChange(host=host, path=path, diff=config.unified_diff(current, wanted, f"{host}:{path}"))

    changes: list[FileChange] = []
    try:
        adds = [c for c in plan.changes if c.action == "add" and not c.already_member]
        if adds:
            source = source_node(inventory, plan)
            source_text = read_or_refuse(source.host, paths.meta_config)
            config.read_join(source_text, path=f"{source.host}:{paths.meta_config}")  # parses, has [raft_config]
            for added in adds:
                node = as_meta_node(added)
                label = f"{node.host}:{paths.meta_config}"
                current = read_or_refuse(node.host, paths.meta_config)
                wanted = config.set_node_identity(source_text, node_id=node.node_id, host=node.host,
                                                  join=list(added.join), raft_port=node.raft_port,
                                                  grpc_port=node.grpc_port, admin_port=node.admin_port, path=label)
                wanted = config.set_join(wanted, config.join_without_self(wanted, plan.join_after, path=label),
                                         path=label)
                changes.append(change(node.host, paths.meta_config, current, wanted))
        for node in inventory.meta_nodes:
            if node.host in dead:
                continue
            label = f"{node.host}:{paths.meta_config}"
            current = read_or_refuse(node.host, paths.meta_config)
            if node.node_id in removed:
                wanted = config.disarm_removed_node(current, cluster=inventory.name, node_id=node.node_id,
                                                    when=when, path=label)
            else:
                wanted = config.set_join(current, config.join_without_self(current, plan.join_after, path=label),
                                         path=label)
            changes.append(change(node.host, paths.meta_config, current, wanted))
        for unlisted in [c for c in removed.values() if not c.in_inventory and c.host not in dead]:
            label = f"{unlisted.host}:{paths.meta_config}"  # a half-added member the inventory never listed
            current = read_or_refuse(unlisted.host, paths.meta_config)
            wanted = config.disarm_removed_node(current, cluster=inventory.name, node_id=unlisted.node_id,
                                                when=when, path=label)
            changes.append(change(unlisted.host, paths.meta_config, current, wanted))
        for query in inventory.query_nodes:
            label = f"{query.host}:{paths.query_config}"
            current = read_or_refuse(query.host, paths.query_config)
            wanted = config.set_meta_endpoints(current, list(plan.endpoints_after), path=label)
            changes.append(change(query.host, paths.query_config, current, wanted))
    except ConfigEditError as exc:
        raise PlanRefused(plan.action, str(exc)) from None
    return changes


__all__ = ["as_meta_node", "listening_ports", "preview_file_changes", "source_node", "view_of_cluster"]
