"""The `cluster-check` flow: read-only health check of a meta cluster (leader, voters, who answers)."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import flow_run as runtime_flow_run

from flows.common import check_common_parameters, cluster_name_for_run_name, publish_markdown, publish_status_table
from flows.common import resolve_cluster
from flows.common import tag_flow_run
from metascale.drift import inventory_drift
from metascale.errors import MetaScaleError
from metascale.inventory import Inventory
from metascale.preview import view_of_cluster
from metascale.status import ClusterStatus
from tasks import runbook as rb
from tasks.pool import run_pool


class ClusterUnhealthy(MetaScaleError):
    """The cluster check found a problem; the message says which."""

    def __init__(self, cluster: str, reason: str) -> None:
        super().__init__(cluster, reason)
        self.cluster = cluster
        self.reason = reason

    def __str__(self) -> str:
        return f"cluster {self.cluster} is not healthy: {self.reason}"


class InventoryDrift(MetaScaleError):
    """The cluster is healthy but the inventory does not match its membership; the message names each difference
    and its fix."""

    def __init__(self, cluster: str, lines: list[str]) -> None:
        super().__init__(cluster, lines)
        self.cluster = cluster
        self.lines = lines

    def __str__(self) -> str:
        return (f"the inventory of cluster {self.cluster} does not match the cluster (the cluster is the truth about "
                f"membership): " + "; ".join(self.lines))


def _run_name() -> str:
    params = runtime_flow_run.parameters
    return f"cluster-check-{cluster_name_for_run_name(params.get('inventory', ''), params.get('cluster_block', ''))}"


def status_table(status: ClusterStatus) -> list[dict[str, str]]:
    """Return one row per meta node: id, host, state, leader it sees, voters it sees, or the error; ``inventory``
    says "no" for a member found in the cluster's status that the inventory does not list."""
    rows = []
    for probe in status.probes:
        listed = "yes" if probe.in_inventory else "no"
        if probe.status is None:
            rows.append({"node": f"meta-{probe.node_id}", "host": probe.host, "state": "no answer",
                         "leader": "-", "voters": "-", "inventory": listed, "error": probe.error or ""})
        else:
            rows.append({"node": f"meta-{probe.node_id}", "host": probe.host, "state": probe.status.state,
                         "leader": str(probe.status.leader_id), "voters": str(probe.status.voter_ids),
                         "inventory": listed, "error": ""})
    return rows


def drift_lines(cluster: Inventory, status: ClusterStatus) -> list[str]:
    """The drift between ``cluster`` (the inventory) and the membership ``status`` shows, one line each with its fix."""
    view = view_of_cluster(status)
    return [d.line() for d in inventory_drift(cluster, view.voters, view.learners, view.node_addrs)]


def unfinished_change_reason(cluster: str) -> str | None:
    """Why the cluster may be half-changed (a change that started and never completed, whose run no longer holds the
    lock), or None; a change still running is only logged."""
    from flows.cluster_lock import interrupted_change_reason, lock_is_held, read_holder

    holder = read_holder(cluster)
    held = lock_is_held(cluster)
    reason = interrupted_change_reason(holder, lock_held=held)
    if reason is None and holder is not None and held:
        get_run_logger().info("a change is in progress: %s", holder.describe())
    return reason


@flow(name="cluster-check", flow_run_name=_run_name)
def cluster_check(inventory: str = "", cluster_block: str = "") -> str:
    """Ask every meta node for its status (and every member the inventory lacks, found in the cluster's status);
    publish a table; fail when there is no leader, a voter does not answer, or the nodes disagree, and also when
    the inventory does not match the membership (drift, published as the `drift-<cluster>` artifact with the
    fix for each difference). Changes nothing."""
    check_common_parameters("cluster-check", inventory, cluster_block, 1, 1, "")
    cluster, key_text = resolve_cluster(inventory, cluster_block)
    tag_flow_run(cluster.name)
    with run_pool(cluster, key_text):
        status = rb.read_cluster_status(cluster)
    publish_status_table(cluster.name, status_table(status), status.summary())
    drift = drift_lines(cluster, status)
    if drift:
        publish_markdown(f"drift-{cluster.name}", f"# Inventory drift of cluster `{cluster.name}`\n\n"
                         + "\n".join(f"* {line}" for line in drift) + "\n", f"{len(drift)} difference(s)")
        for line in drift:
            get_run_logger().warning("inventory drift: %s", line)
    voters = status.voter_ids or cluster.meta_ids
    reason = status.stable_reason(voters)
    unfinished = unfinished_change_reason(cluster.name)
    if unfinished:
        reason = f"{reason}; {unfinished}" if reason else unfinished
    if reason:
        raise ClusterUnhealthy(cluster.name, reason + (f"; inventory drift: {'; '.join(drift)}" if drift else ""))
    if drift:
        raise InventoryDrift(cluster.name, drift)
    get_run_logger().info("healthy: %s", status.summary())
    return status.summary()
