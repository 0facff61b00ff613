"""The `replace-node` flow: replace one databend-meta node by a new host in one approved run (runbook Scale Down and
Scale Up, in the order that keeps the cluster safe: metascale/replace.py)."""

from __future__ import annotations

from datetime import datetime, timezone

from prefect import flow, get_run_logger, unmapped
from prefect.runtime import flow_run as runtime_flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import (
    change_flow,
    run_change,
    ssh_silent_hosts,
    PARALLEL_HOSTS,
    ScaleOutcome,
    check_common_parameters,
    cluster_name_for_run_name,
    read_query_facts,
    restart_query_nodes_one_at_a_time,
    ClusterBlock,
    HostOrEmpty,
    InventoryPath,
    MaintenanceWindowSpec,
    NodeId,
    PositiveSeconds,
    PositiveWholeSeconds,
)
from flows.hooks import cluster_state_unknown
from flows.scale_down import remove_one_node
from flows.scale_up import add_one_node, undo_unjoined
from metascale.errors import PlanRefused
from metascale.inventory import Inventory, validate_host
from metascale.plan import QueryFacts, ScalePlan
from metascale.preview import view_of_cluster
from metascale.replace import ACTION, pick_new_host, plan_replace_node
from metascale.status import ClusterStatus
from tasks import runbook as rb


def _run_name() -> str:
    """Return `replace-node-<cluster>-node-<id>` from the run's parameters."""
    params = runtime_flow_run.parameters
    cluster = cluster_name_for_run_name(params.get("inventory", ""), params.get("cluster_block", ""))
    return f"replace-node-{cluster}-node-{params.get('node_id', 'none')}"


@flow(name="replace-node", flow_run_name=_run_name, validate_parameters=True,
      task_runner=ThreadPoolTaskRunner(max_workers=PARALLEL_HOSTS),
      on_crashed=[cluster_state_unknown], on_cancellation=[cluster_state_unknown])
@change_flow(ACTION)
def replace_node(
    node_id: NodeId,
    new_host: HostOrEmpty = "",
    inventory: InventoryPath = "",
    cluster_block: ClusterBlock = "",
    dry_run: bool = False,
    require_approval: bool = True,
    approval_timeout_s: PositiveWholeSeconds = 3600,
    verify_deadline_s: PositiveSeconds = 60,
    leave_timeout_s: PositiveSeconds = 60,
    maintenance_window: MaintenanceWindowSpec = "",
    override_window: bool = False,
    restart_query_nodes: bool = False,
    reset_new_node: bool = False,
) -> ScaleOutcome:
    """Replace the meta node `node_id` by a new host in one run: one plan, one approval, one lock.

    A node that does not answer (dead) is removed first, through the live voters, then the new host is added
    (etcd's rule: never add a member to a cluster that still counts a dead one). A live node being retired is
    replaced the other way round: the new host joins and catches up, then the old node leaves (leadership moved off
    it first). Then `join` on every meta node and `[meta] endpoints` on every query node are updated, and the
    inventory records the old node as removed and the spare as used. A rerun after a failure continues where it
    stopped.

    Args:
        node_id: raft id of the meta node to replace (its `id` in the inventory, 0 or more), e.g. `3`.
        new_host: the host that takes its place: an IP address or DNS name, e.g. `192.0.2.14`, with databend-meta
            installed. Empty = the first free `[[spare]]` host of the inventory.
        inventory: path of the cluster's inventory TOML on the machine that runs the flow, e.g.
            `/etc/metascale/prod.toml`. Leave empty when you choose a cluster block: give exactly one of the two.
        cluster_block: the cluster to change: choose one of the Metascale Cluster blocks (see Blocks), or switch to
            "block name" and type it. Leave empty when you give an inventory path.
        dry_run: only publish the plan and stop; nothing on the cluster changes. Try this first.
        require_approval: pause after the plan until an operator approves it (Resume in the UI, or the API);
            nothing changes before that. On by default; turn it off only when the caller already approved.
        approval_timeout_s: seconds to wait for the approval (> 0; default 3600 = 1 h). No answer in time: the
            run ends Refused and nothing is changed. The wait never outlasts the maintenance window.
        verify_deadline_s: seconds each verification (new node joined, old node removed, cluster stable) may wait
            before the run fails (> 0; default 60).
        leave_timeout_s: seconds the leave request of the old node may take (> 0; default 60).
        maintenance_window: change only inside this weekly window, `<days> <HH:MM>-<HH:MM> <timezone>`, e.g.
            `Sat,Sun 02:00-04:00 Europe/Berlin` or `* 01:00-05:00 UTC`. Empty = any time.
        override_window: go ahead even outside the maintenance window (logged as a warning). Leave off in
            schedules.
        restart_query_nodes: after the endpoints are written, restart the query nodes one at a time
            (`systemctl restart`), each healthy before the next, so they use the new membership now.
        reset_new_node: the new host already runs databend-meta as a one-node cluster of its own (the packaged
            `single = true`): stop it and move its raft dir aside first. Any other used raft dir is refused.
    """
    check_common_parameters(ACTION, inventory, cluster_block, approval_timeout_s, verify_deadline_s,
                            maintenance_window)
    if node_id < 0:
        raise PlanRefused(ACTION, f"node_id must be >= 0 (got {node_id})")
    if not leave_timeout_s > 0:
        raise PlanRefused(ACTION, f"leave_timeout_s must be > 0 (got {leave_timeout_s})")
    if new_host:
        try:
            validate_host(new_host)
        except ValueError as exc:
            raise PlanRefused(ACTION, f"new_host: {exc}") from None
    return run_change(
        ACTION, lambda c: _make_plan(c, node_id, new_host, reset_new_node, restart_query_nodes),
        lambda c, plan, progress, facts: _apply(c, plan, progress, leave_timeout_s, verify_deadline_s, inventory,
                                                cluster_block, facts),
        inventory=inventory, cluster_block=cluster_block, dry_run=dry_run, require_approval=require_approval,
        approval_timeout_s=approval_timeout_s, maintenance_window=maintenance_window, override_window=override_window,
        undo=undo_unjoined)


def _make_plan(cluster: Inventory, node_id: int, new_host: str, reset_new_node: bool,
               restart_query_nodes: bool) -> tuple[ScalePlan, ClusterStatus, dict[str, QueryFacts]]:
    """Read the cluster, the old node's host, the new host and the query nodes; plan the replacement (with file
    diffs): (plan, status, query facts). Read-only. Raises: PlanRefused."""
    before = rb.read_cluster_status(cluster)
    view = view_of_cluster(before)
    spec = pick_new_host(cluster, view, node_id, new_host)
    pool_host = spec.host if cluster.spare(spec.host) is not None else ""  # before a DNS name becomes its IP
    (spec,), resolved = rb.resolve_new_hosts(cluster, [spec])  # a DNS name -> its one IP, shown in the plan
    silent = ssh_silent_hosts(before)  # not dialled again: its node is planned as dead (removed via the live ones)
    rb.check_meta_versions(cluster, [*(n.host for n in cluster.meta_nodes if n.host not in silent), spec.host])
    old = next((n.host for n in cluster.meta_nodes if n.node_id == node_id), None)
    reachable = rb.reachable_hosts(cluster, [old] if old and old not in silent else [])
    facts = rb.check_new_host(cluster, spec)
    query_facts = read_query_facts(cluster)
    plan = plan_replace_node(cluster, view, node_id, spec, {spec.host: facts}, reachable_hosts=reachable,
                             query_facts=query_facts, reset_new_node=reset_new_node,
                             restart_query_nodes=restart_query_nodes, pool_host=pool_host)
    plan = plan.with_file_changes(rb.preview_file_changes(cluster, plan))
    if resolved:
        plan = plan.model_copy(update={"notes": (*plan.notes, *resolved)})
    return plan, before, query_facts


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def _apply(cluster: Inventory, plan: ScalePlan, progress: rb.Progress, leave_timeout_s: float, deadline_s: float,
           inventory_path: str, cluster_block: str, query_facts: dict[str, QueryFacts]) -> Inventory:
    """Carry out ``plan`` (already approved): each membership change in the plan's order, the inventory recorded
    after each (a rerun then knows what is done), then `join`, the query endpoints and the inventory once more.
    Returns the inventory as recorded at the end."""
    logger = get_run_logger()
    current = cluster
    spare = cluster.spare(plan.spare_host) if plan.spare_host else None
    for change in plan.changes:
        if change.action == "remove":
            remove_one_node(current, change, progress, leave_timeout_s, deadline_s, plan, action=ACTION)
            current = current.with_removed_record(change.node_id, change.host, removed_at=_stamp())
        else:
            current = add_one_node(current, change, plan, progress, deadline_s, ssh=spare.ssh if spare else None)
        if spare is not None and plan.replaces is not None:  # the pool records the spare as taken by this
            current = current.with_spare_used(spare.host, plan.replaces, used_at=_stamp())  # replacement: a rerun
            # takes it again, and no other replacement or proposal does
        progress.step = f"record the inventory after the {change.action} of meta-{change.node_id}"
        progress.record([rb.record_inventory(current, inventory_path, cluster_block)])
        logger.info("meta-%d %s: voters now %s", change.node_id,
                    "added" if change.action == "add" else "removed", list(change.voters_after))
    progress.step = "update join on every meta node"
    progress.record(rb.update_join_on_existing_nodes.map(unmapped(current), list(current.meta_nodes),
                                                         unmapped(list(plan.join_after))).result())
    progress.step = "update query meta endpoints"
    progress.record(rb.update_query_meta_endpoints.map(unmapped(current), list(current.query_nodes),
                                                       unmapped(list(plan.endpoints_after))).result())
    if plan.restart_query_nodes:
        restart_query_nodes_one_at_a_time(current, plan, progress, deadline_s, query_facts)
    progress.step = "record the inventory"
    progress.record([rb.record_inventory(current, inventory_path, cluster_block)])
    return current
