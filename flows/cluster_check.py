"""The `cluster-check` flow: read-only health check of a meta cluster (leader, voters, who answers)."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import flow_run as runtime_flow_run

from flows.common import check_common_parameters, cluster_name_for_run_name, publish_status_table, resolve_cluster
from flows.common import tag_flow_run
from metascale.errors import MetaScaleError
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


def _run_name() -> str:
    params = runtime_flow_run.parameters
    return f"cluster-check-{cluster_name_for_run_name(params.get('inventory', ''), params.get('cluster_block', ''))}"


def status_table(status: ClusterStatus) -> list[dict[str, str]]:
    """Return one row per meta node: id, host, state, leader it sees, voters it sees, or the error."""
    rows = []
    for probe in status.probes:
        if probe.status is None:
            rows.append({"node": f"meta-{probe.node_id}", "host": probe.host, "state": "no answer",
                         "leader": "-", "voters": "-", "error": probe.error or ""})
        else:
            rows.append({"node": f"meta-{probe.node_id}", "host": probe.host, "state": probe.status.state,
                         "leader": str(probe.status.leader_id), "voters": str(probe.status.voter_ids), "error": ""})
    return rows


@flow(name="cluster-check", flow_run_name=_run_name)
def cluster_check(inventory: str = "", cluster_block: str = "") -> str:
    """Ask every meta node for its status; publish a table; fail when there is no leader, a voter does not
    answer, or the nodes disagree. Changes nothing."""
    check_common_parameters("cluster-check", inventory, cluster_block, 1, 1, "")
    cluster, key_text = resolve_cluster(inventory, cluster_block)
    tag_flow_run(cluster.name)
    with run_pool(cluster, key_text):
        status = rb.read_cluster_status(cluster)
    publish_status_table(cluster.name, status_table(status), status.summary())
    voters = status.voter_ids or cluster.meta_ids
    reason = status.stable_reason(voters)
    if reason:
        raise ClusterUnhealthy(cluster.name, reason)
    get_run_logger().info("healthy: %s", status.summary())
    return status.summary()
