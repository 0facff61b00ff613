"""The `scale-up` flow: add databend-meta nodes one at a time (runbook: Scale Up, steps 1-6)."""

from __future__ import annotations

from prefect import flow, get_run_logger, unmapped
from prefect.runtime import flow_run as runtime_flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from flows import audit
from flows.common import (
    change_flow,
    run_change,
    PARALLEL_HOSTS,
    read_query_facts,
    restart_query_nodes_one_at_a_time,
    ScaleOutcome,
    check_common_parameters,
    cluster_name_for_run_name,
    ClusterBlock,
    InventoryPath,
    MaintenanceWindowSpec,
    NewNodes,
    PositiveSeconds,
    PositiveWholeSeconds,
)
from flows.hooks import cluster_state_unknown
from metascale.errors import PlanRefused
from metascale.inventory import Inventory, MetaNode, SshOverride
from metascale.plan import NewNodeSpec, NodeChange, QueryFacts, ScalePlan, plan_scale_up
from metascale.preview import as_meta_node, source_node, view_of_cluster
from metascale.status import ClusterStatus
from tasks import runbook as rb

ACTION = "scale-up"


def _host_of(item: object) -> str:
    return str(item.get("host", "?")) if isinstance(item, dict) else str(getattr(item, "host", "?"))


def _run_name() -> str:
    """Return `scale-up-<cluster>-<host>[-<host>...]` from the run's parameters."""
    params = runtime_flow_run.parameters
    cluster = cluster_name_for_run_name(params.get("inventory", ""), params.get("cluster_block", ""))
    hosts = "-".join(_host_of(n) for n in params.get("new_nodes", [])) or "none"
    return f"scale-up-{cluster}-{hosts}"


@flow(name="scale-up", flow_run_name=_run_name, validate_parameters=True,
      task_runner=ThreadPoolTaskRunner(max_workers=PARALLEL_HOSTS),
      on_crashed=[cluster_state_unknown], on_cancellation=[cluster_state_unknown])
@change_flow(ACTION)
def scale_up(
    new_nodes: NewNodes,
    inventory: InventoryPath = "",
    cluster_block: ClusterBlock = "",
    dry_run: bool = False,
    require_approval: bool = True,
    approval_timeout_s: PositiveWholeSeconds = 3600,
    verify_deadline_s: PositiveSeconds = 60,
    maintenance_window: MaintenanceWindowSpec = "",
    override_window: bool = False,
    reset_new_node: bool = False,
    restart_query_nodes: bool = False,
    accept_no_fault_tolerance: bool = False,
) -> ScaleOutcome:
    """Add the hosts `new_nodes` to the cluster as meta voters, one at a time, verifying each before the next.

    Plan first (published as the `plan-<cluster>` artifact), then per node: copy the config from an existing
    node, set id / advertise host / `single` off / `join`, start the service, wait until it is a voter and has
    caught up; then set `join` on every meta node, `[meta] endpoints` on every query node, and record the inventory.

    Args:
        new_nodes: the hosts to add, at least one, each with databend-meta installed and reachable over SSH like
            the other nodes: `host` (an IP address or DNS name, e.g. `192.0.2.14`), and optionally `node_id`
            (empty = the next free id) and the ports (databend-meta's defaults).
        inventory: path of the cluster's inventory TOML on the machine that runs the flow, e.g.
            `/etc/metascale/prod.toml`. Leave empty when you choose a cluster block: give exactly one of the two.
        cluster_block: the cluster to change: choose one of the Metascale Cluster blocks (see Blocks), or switch to
            "block name" and type it. Leave empty when you give an inventory path.
        dry_run: only publish the plan and stop; nothing on the cluster changes. Try this first.
        require_approval: pause after the plan until an operator approves it (Resume in the UI, or the API);
            nothing changes before that. On by default; turn it off only when the caller already approved.
        approval_timeout_s: seconds to wait for the approval (> 0; default 3600 = 1 h). No answer in time: the
            run ends Refused and nothing is changed. The wait never outlasts the maintenance window.
        verify_deadline_s: seconds each verification (node joined and caught up, cluster stable) may wait before
            the run fails (> 0; default 60).
        maintenance_window: change only inside this weekly window, `<days> <HH:MM>-<HH:MM> <timezone>`, e.g.
            `Sat,Sun 02:00-04:00 Europe/Berlin` or `* 01:00-05:00 UTC`. Empty = any time.
        override_window: go ahead even outside the maintenance window (logged as a warning). Leave off in
            schedules.
        reset_new_node: a new host that already runs databend-meta as a one-node cluster of its own (started once
            with the packaged `single = true`) gets its service stopped and its raft dir moved aside
            (`<raft_dir>.reset-<ts>`) first. Any other used raft dir or running service is refused.
        restart_query_nodes: after the endpoints are written, restart the query nodes one at a time
            (`systemctl restart`), each healthy before the next, so they use the new membership now.
        accept_no_fault_tolerance: allow a change that leaves 1 or 2 voters, which tolerate no failure (any one
            voter down stops the cluster). Without it such a plan is shown but refused. Never set it in a schedule.
    """
    check_common_parameters(ACTION, inventory, cluster_block, approval_timeout_s, verify_deadline_s,
                            maintenance_window)
    if not new_nodes:
        raise PlanRefused(ACTION, "new_nodes is empty; name at least one host to add")
    specs = [NewNodeSpec(**n.model_dump()) for n in new_nodes]
    return run_change(
        ACTION, lambda c: _make_plan(c, specs, reset_new_node, restart_query_nodes, accept_no_fault_tolerance),
        lambda c, plan, progress, facts: _apply(c, plan, progress, verify_deadline_s, inventory, cluster_block, facts),
        inventory=inventory, cluster_block=cluster_block, dry_run=dry_run, require_approval=require_approval,
        approval_timeout_s=approval_timeout_s, maintenance_window=maintenance_window, override_window=override_window,
        undo=undo_unjoined)


def _make_plan(cluster: Inventory, specs: list[NewNodeSpec], reset_new_node: bool, restart_query_nodes: bool,
               accept_no_fault_tolerance: bool) -> tuple[ScalePlan, ClusterStatus, dict[str, QueryFacts]]:
    """Read the cluster, the new hosts and the query nodes and plan the addition (with file diffs): (plan, status,
    query facts). Read-only. Raises: PlanRefused."""
    specs, resolved = rb.resolve_new_hosts(cluster, specs)  # a DNS name -> its one IP, shown in the plan
    rb.check_meta_versions(cluster, [*(n.host for n in cluster.meta_nodes), *(s.host for s in specs)])
    before = rb.read_cluster_status(cluster)
    joined = _joined_but_unrecorded(cluster, specs, before)
    if joined:
        before = rb.read_cluster_status(cluster, [*cluster.meta_nodes, *joined])
    view = view_of_cluster(before)
    facts = {s.host: f for s, f in zip(specs, rb.check_new_host.map(unmapped(cluster), specs).result(),
                                       strict=True)}
    query_facts = read_query_facts(cluster)
    plan = plan_scale_up(cluster, view, specs, facts, reset_new_node=reset_new_node, query_facts=query_facts,
                         restart_query_nodes=restart_query_nodes, accept_no_fault_tolerance=accept_no_fault_tolerance)
    plan = plan.with_file_changes(rb.preview_file_changes(cluster, plan))
    if resolved:
        plan = plan.model_copy(update={"notes": (*resolved, *plan.notes)})
    return plan, before, query_facts


def _joined_but_unrecorded(cluster: Inventory, specs: list[NewNodeSpec], status: ClusterStatus) -> list[MetaNode]:
    """Return the new hosts that a previous run already made voters but did not record (so they get probed)."""
    view = view_of_cluster(status)
    by_addr = {addr: node_id for node_id, addr in view.node_addrs.items()}
    found = []
    for spec in specs:
        node_id = by_addr.get(spec.raft_addr)
        if node_id is not None and node_id in view.voters and node_id not in cluster.meta_ids:
            found.append(MetaNode(id=node_id, host=spec.host, raft_port=spec.raft_port, grpc_port=spec.grpc_port,
                                  admin_port=spec.admin_port))
    return found


def _apply(cluster: Inventory, plan: ScalePlan, progress: rb.Progress, deadline_s: float, inventory_path: str,
           cluster_block: str, query_facts: dict[str, QueryFacts]) -> Inventory:
    """Carry out ``plan`` (already approved); return the inventory as recorded at the end."""
    current = cluster
    for change in plan.changes:
        current = add_one_node(current, change, plan, progress, deadline_s)
    metas = list(current.meta_nodes)
    progress.step = "update join on every meta node"
    progress.record(rb.update_join_on_existing_nodes.map(unmapped(current), metas, unmapped(list(plan.join_after)))
                    .result())
    progress.step = "update query meta endpoints"
    queries = list(current.query_nodes)
    progress.record(rb.update_query_meta_endpoints.map(unmapped(current), queries,
                                                       unmapped(list(plan.endpoints_after))).result())
    if plan.restart_query_nodes:
        restart_query_nodes_one_at_a_time(current, plan, progress, deadline_s, query_facts)
    progress.step = "record the inventory"
    progress.record([rb.record_inventory(current, inventory_path, cluster_block)])
    return current


def add_one_node(cluster: Inventory, change: NodeChange, plan: ScalePlan, progress: rb.Progress,
                 deadline_s: float, ssh: SshOverride | None = None) -> Inventory:
    """Add one node (runbook scale up 1-4): reset its raft dir if planned, copy the config from an existing node,
    write its id and join, start it, wait until it is a voter and has caught up. Each step is a no-op when done.
    Returns the inventory with the node listed (with ``ssh``, the spare's SSH override, when it has one)."""
    node = as_meta_node(change).model_copy(update={"ssh": ssh}) if ssh is not None else as_meta_node(change)
    if change.reset_raft_dir:
        progress.step = f"reset the raft dir of {node.host}"
        progress.record([rb.reset_new_node_raft_dir(cluster, node, change.reset_raft_dir)])
    if not change.already_member:
        progress.step = f"copy the config to {node.host}"
        source = source_node(cluster, plan)
        text = rb.copy_config_from_existing_node(cluster, source)
        progress.step = f"write the config of meta-{node.node_id}"
        progress.record([rb.write_new_node_config(cluster, node, text, list(change.join))])
        progress.step = f"start meta-{node.node_id}"
        progress.record([rb.start_meta_service(cluster, node)])
    progress.verify(f"verify meta-{node.node_id} joined", lambda: rb.verify_node_joined(cluster, node, deadline_s))
    audit.emit(audit.NODE_ADDED, cluster.name, {"node_id": node.node_id, "host": node.host})
    return cluster if node.node_id in cluster.meta_ids else cluster.with_meta_node(node)


def undo_unjoined(cluster: Inventory, plan: ScalePlan, progress: rb.Progress) -> None:
    """After a failure: for each new node the cluster did NOT take (not a voter), put the service back the way it
    was before the run (stop it only if it was not running then, disable it only if it was not enabled then) and
    restore its config from the backup. Nodes that joined keep everything (a rerun finishes the job)."""
    logger = get_run_logger()
    added = [c for c in plan.changes if c.action == "add" and not c.already_member]
    if not added:
        return
    try:
        nodes = [*cluster.meta_nodes, *[as_meta_node(c) for c in added if c.node_id not in cluster.meta_ids]]
        voters = set(rb.read_cluster_status(cluster, nodes).voter_ids or [])
    except Exception as exc:  # unknown state: undo nothing rather than guess
        logger.warning("cannot tell which new nodes joined (%s); restoring nothing", exc)
        return
    for change in added:
        if change.node_id in voters:
            continue
        node = as_meta_node(change)
        mine = [r for r in progress.results if r.host == node.host and r.changed]
        try:
            if any(r.step == "start_meta_service" for r in mine):
                stop, disable = not change.service_was_active, not change.service_was_enabled
                if stop or disable:
                    rb.stop_new_node(cluster, node, stop=stop, disable=disable)
                done = [w for w, yes in (("stopped", stop), ("disabled", disable)) if yes]
                kept = [w for w, yes in (("running", not stop), ("enabled", not disable)) if yes]
                progress.restored.append(
                    f"{' and '.join(done) or 'left'} databend-meta on {node.host}"
                    + (f" (kept {' and '.join(kept)}: it was so before the run)" if kept else ""))
            for result in mine:
                if result.step == "write_new_node_config" and result.backup_path:
                    rb.restore_config_from_backup(cluster, node.host, cluster.paths.meta_config, result.backup_path)
                    progress.restored.append(f"restored {node.host}:{cluster.paths.meta_config} from "
                                             f"{result.backup_path}")
        except Exception as exc:
            logger.warning("could not undo the changes on %s: %s", node.host, exc)
