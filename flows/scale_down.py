"""The `scale-down` flow: remove databend-meta nodes one at a time (runbook: Scale Down, steps 1-9)."""

from __future__ import annotations

from datetime import datetime, timezone

from prefect import flow, get_run_logger, unmapped
from prefect.runtime import flow_run as runtime_flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from flows import audit
from flows.common import (
    change_flow,
    run_change,
    PARALLEL_HOSTS,
    ScaleOutcome,
    read_query_facts,
    restart_query_nodes_one_at_a_time,
    check_common_parameters,
    cluster_name_for_run_name,
    ssh_silent_hosts,
    ClusterBlock,
    InventoryPath,
    MaintenanceWindowSpec,
    NodeIds,
    PositiveSeconds,
    PositiveWholeSeconds,
)
from flows.hooks import cluster_state_unknown
from metascale.errors import ClusterNotConverged, PlanRefused
from metascale.inventory import Inventory
from metascale.plan import NodeChange, QueryFacts, ScalePlan, plan_scale_down
from metascale.drift import member_meta_node
from metascale.preview import as_meta_node, view_of_cluster
from metascale.status import ClusterStatus
from tasks import runbook as rb

ACTION = "scale-down"
TRANSFER_ATTEMPTS = 4
TRANSFER_WAIT_S = 5.0  # a transfer takes effect well under 1 s; longer means it was dropped: send it again


def _run_name() -> str:
    """Return `scale-down-<cluster>-node-<ids>` from the run's parameters."""
    params = runtime_flow_run.parameters
    cluster = cluster_name_for_run_name(params.get("inventory", ""), params.get("cluster_block", ""))
    ids = "-".join(str(i) for i in params.get("node_ids", [])) or "none"
    return f"scale-down-{cluster}-node-{ids}"


@flow(name="scale-down", flow_run_name=_run_name, validate_parameters=True,
      task_runner=ThreadPoolTaskRunner(max_workers=PARALLEL_HOSTS),
      on_crashed=[cluster_state_unknown], on_cancellation=[cluster_state_unknown])
@change_flow(ACTION)
def scale_down(
    node_ids: NodeIds,
    inventory: InventoryPath = "",
    cluster_block: ClusterBlock = "",
    force: bool = False,
    leave_timeout_s: PositiveSeconds = 60,
    dry_run: bool = False,
    require_approval: bool = True,
    approval_timeout_s: PositiveWholeSeconds = 3600,
    verify_deadline_s: PositiveSeconds = 60,
    maintenance_window: MaintenanceWindowSpec = "",
    override_window: bool = False,
    restart_query_nodes: bool = False,
    accept_no_fault_tolerance: bool = False,
) -> ScaleOutcome:
    """Remove the meta nodes `node_ids` from the cluster, one at a time, safely.

    Plan first (published as the `plan-<cluster>` artifact), then: move leadership off a leaving leader, leave via
    the remaining voters, verify, stop and disable the service, retire its raft dir, verify the cluster, update
    `join` on the remaining meta nodes and `[meta] endpoints` on every query node, record the inventory.
    `force=True` removes a node whose host is dead (the steps that need its host are skipped).

    Args:
        node_ids: raft ids of the meta nodes to remove (each `id` of a `[[meta]]` in the inventory, 0 or more),
            e.g. `[4]`; at least one. They leave one at a time, each verified before the next.
        inventory: path of the cluster's inventory TOML on the machine that runs the flow, e.g.
            `/etc/metascale/prod.toml`. Leave empty when you choose a cluster block: give exactly one of the two.
        cluster_block: the cluster to change: choose one of the Metascale Cluster blocks (see Blocks), or switch to
            "block name" and type it. Leave empty when you give an inventory path.
        force: remove a node whose host is dead (SSH does not answer): the steps that need its host (stop the
            service, retire the raft dir) are skipped and listed for you to do by hand. Refused for a node that
            answers. Default off.
        leave_timeout_s: seconds the leave request of each node may take (> 0; default 60).
        dry_run: only publish the plan and stop; nothing on the cluster changes. Try this first.
        require_approval: pause after the plan until an operator approves it (Resume in the UI, or the API);
            nothing changes before that. On by default; turn it off only when the caller already approved.
        approval_timeout_s: seconds to wait for the approval (> 0; default 3600 = 1 h). No answer in time: the
            run ends Refused and nothing is changed. The wait never outlasts the maintenance window.
        verify_deadline_s: seconds each verification (node removed, cluster stable) may wait before the run
            fails (> 0; default 60).
        maintenance_window: change only inside this weekly window, `<days> <HH:MM>-<HH:MM> <timezone>`, e.g.
            `Sat,Sun 02:00-04:00 Europe/Berlin` or `* 01:00-05:00 UTC`. Empty = any time.
        override_window: go ahead even outside the maintenance window (logged as a warning). Leave off in
            schedules.
        restart_query_nodes: after the endpoints are written, restart the query nodes one at a time
            (`systemctl restart`), each healthy before the next, so they stop using the removed node now.
        accept_no_fault_tolerance: allow a change that leaves 1 or 2 voters, which tolerate no failure (any one
            voter down stops the cluster). Without it such a plan is shown but refused. Never set it in a schedule.
    """
    check_common_parameters(ACTION, inventory, cluster_block, approval_timeout_s, verify_deadline_s,
                            maintenance_window)
    if not leave_timeout_s > 0:
        raise PlanRefused(ACTION, f"leave_timeout_s must be > 0 (got {leave_timeout_s})")
    if not node_ids or any(i < 0 for i in node_ids):
        raise PlanRefused(ACTION, f"node_ids must be >= 0 and name at least one node (got {node_ids})")
    return run_change(
        ACTION, lambda c: _make_plan(c, node_ids, force, restart_query_nodes, accept_no_fault_tolerance),
        lambda c, plan, progress, facts: _apply(c, plan, progress, leave_timeout_s, verify_deadline_s, inventory,
                                                cluster_block, facts),
        inventory=inventory, cluster_block=cluster_block, dry_run=dry_run, require_approval=require_approval,
        approval_timeout_s=approval_timeout_s, maintenance_window=maintenance_window, override_window=override_window)


def _make_plan(cluster: Inventory, node_ids: list[int], force: bool, restart_query_nodes: bool,
               accept_no_fault_tolerance: bool) -> tuple[ScalePlan, ClusterStatus, dict[str, QueryFacts]]:
    """Read the cluster and the hosts involved and plan the removal (with file diffs): (plan, status, query facts).
    Read-only. Raises: PlanRefused."""
    before = rb.read_cluster_status(cluster)
    silent = ssh_silent_hosts(before)  # not dialled again: planned as unreachable
    rb.check_meta_versions(cluster, [n.host for n in cluster.meta_nodes if n.host not in silent])
    view = view_of_cluster(before)
    hosts = [n.host for n in cluster.meta_nodes if n.node_id in node_ids]
    hosts += [n.host for i in node_ids if i not in cluster.meta_ids and i in view.members  # half-added, unlisted
              and (n := member_meta_node(i, view.node_addrs.get(i, ""), view.grpc_addrs.get(i, ""))) is not None]
    reachable = rb.reachable_hosts(cluster, [h for h in hosts if h not in silent])
    query_facts = read_query_facts(cluster)
    plan = plan_scale_down(cluster, view, node_ids, force=force, reachable_hosts=reachable,
                           query_facts=query_facts, restart_query_nodes=restart_query_nodes,
                           accept_no_fault_tolerance=accept_no_fault_tolerance)
    return plan.with_file_changes(rb.preview_file_changes(cluster, plan)), before, query_facts


def _apply(cluster: Inventory, plan: ScalePlan, progress: rb.Progress, leave_timeout_s: float,
           deadline_s: float, inventory_path: str, cluster_block: str,
           query_facts: dict[str, QueryFacts]) -> Inventory:
    """Carry out ``plan`` (already approved); return the inventory as recorded at the end."""
    current = cluster
    for change in plan.changes:
        remove_one_node(current, change, progress, leave_timeout_s, deadline_s, plan)
        current = current.with_removed_record(change.node_id, change.host,  # [[removed]], listed or not
                                              removed_at=datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"))
    remaining = list(current.meta_nodes)
    progress.step = "update join on the remaining meta nodes"
    progress.record(rb.update_join_on_existing_nodes.map(unmapped(current), remaining, unmapped(list(plan.join_after)))
                    .result())
    progress.step = "update query meta endpoints"
    queries = list(current.query_nodes)
    progress.record(rb.update_query_meta_endpoints.map(unmapped(current), queries, unmapped(list(plan.endpoints_after)))
                    .result())
    if plan.restart_query_nodes:
        restart_query_nodes_one_at_a_time(current, plan, progress, deadline_s, query_facts)
    progress.step = "record the inventory"
    progress.record([rb.record_inventory(current, inventory_path, cluster_block)])
    return current


def remove_one_node(cluster: Inventory, change: NodeChange, progress: rb.Progress, leave_timeout_s: float,
                    deadline_s: float, plan: ScalePlan, *, action: str = ACTION) -> None:
    """Remove one node: leadership, leave, verify, stop, retire, verify stable. Each step is a no-op when done.

    Leadership is checked right before the leave, whoever the plan saw leading: if this node leads now, it moves
    to a voter that stays (never to another node of the same request)."""
    logger = get_run_logger()
    answering = {*plan.answering, *(c.node_id for c in plan.changes if c.action == "add")}  # replace-node: the
    # node added before this removal answers by now (verified joined): it is no voter "silent before the run"
    if change.node_id not in cluster.meta_ids:  # a half-added member the inventory never listed: its node record
        cluster = cluster.with_meta_node(as_meta_node(change))  # names its host; reach it with the inventory's SSH
    node = cluster.meta_node(change.node_id)
    rest = [n for n in cluster.meta_nodes if n.node_id != change.node_id]
    if not change.already_removed and not change.host_dead:
        progress.step = f"move leadership off meta-{node.node_id}"
        _move_leadership(cluster, node.node_id, plan.transfer_targets(node.node_id), progress, deadline_s, action)
    if not change.already_removed:
        progress.step = f"re-check quorum before meta-{node.node_id} leaves"
        rb.check_quorum_before_leave(cluster, node.node_id, list(change.voters_after), change.host_dead, action)
        progress.step = f"leave meta-{node.node_id}"
        progress.record([rb.leave_cluster(cluster, node.node_id, list(change.leave_via), leave_timeout_s)])
    progress.verify(f"verify meta-{node.node_id} is removed",
                    lambda: rb.verify_node_removed(cluster, node.node_id, list(change.voters_after), deadline_s))
    audit.emit(audit.NODE_REMOVED, cluster.name, {"node_id": node.node_id, "host": node.host})
    if change.host_dead:
        logger.warning("meta-%d (%s) is unreachable (force): not stopping its service nor retiring its raft dir; "
                       "do it by hand before that host comes back", node.node_id, node.host)
        progress.skipped.append(f"stop/disable databend-meta, retire the raft dir and empty join on {node.host} "
                                "(host dead)")
    else:
        progress.step = f"stop meta-{node.node_id}"
        progress.record([rb.stop_meta_service(cluster, node)])
        progress.step = f"retire the raft dir of meta-{node.node_id}"
        progress.record([rb.retire_raft_dir(cluster, node)])
        progress.step = f"disarm the config of meta-{node.node_id}"
        progress.record([rb.disarm_removed_node(cluster, node)])
    progress.verify("verify the cluster is stable",
                    lambda: rb.verify_cluster_stable(cluster, rest, list(change.voters_after), deadline_s,
                                                     sorted(set(change.voters_after) - set(answering))))


def _move_leadership(cluster: Inventory, node_id: int, targets: list[int], progress: rb.Progress,
                     deadline_s: float, action: str = ACTION) -> None:
    """Transfer leadership from ``node_id`` to ``targets[0]`` and verify; if it did not move, transfer again (to the
    next target in turn: a target that is still catching up can make the transfer fail quietly)."""
    for attempt in range(1, TRANSFER_ATTEMPTS + 1):
        leader = rb.check_leader(cluster)
        if leader != node_id:
            get_run_logger().info("meta-%d is not the leader (leader: meta-%s): no transfer needed", node_id, leader)
            return
        if not targets:
            raise PlanRefused(action, f"meta-{node_id} leads now and no voter that stays answered at plan time to "
                                      f"take over; nothing more was changed")
        target = targets[(attempt - 1) % len(targets)]
        progress.record([rb.transfer_leadership(cluster, cluster.meta_node(node_id), target)])
        try:
            wait_s = max(1.0, min(TRANSFER_WAIT_S, deadline_s / TRANSFER_ATTEMPTS))
            progress.verify(f"verify leadership moved off meta-{node_id}",
                            lambda: rb.verify_leadership_moved(cluster, node_id, wait_s))
            return
        except ClusterNotConverged:
            if attempt == TRANSFER_ATTEMPTS:
                raise
            get_run_logger().warning("leadership did not move off meta-%d (attempt %d); transferring again",
                                     node_id, attempt)
