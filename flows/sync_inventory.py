"""The `sync-inventory` flow: write the cluster's membership into the inventory file or the cluster block.

The cluster is the truth about membership; the inventory is the truth about access. This flow reads every meta
node (and every member the inventory lacks, at the host the cluster's node record names), shows the drift and the
diff of the inventory as the `plan-<cluster>` artifact, asks for approval when `require_approval` is set, re-reads
the cluster after the approval (a different plan is refused), and records the new inventory. No host is touched.
"""

from __future__ import annotations

from contextlib import nullcontext
from datetime import datetime, timezone

from prefect import flow, get_run_logger
from prefect.runtime import flow_run as runtime_flow_run

from flows import audit
from flows.common import (
    ScaleOutcome,
    change_flow,
    check_common_parameters,
    cluster_lock,
    cluster_name_for_run_name,
    publish_plan,
    request_approval,
    resolve_cluster,
    tag_flow_run,
    ClusterBlock,
    InventoryPath,
    PositiveWholeSeconds,
)
from flows.hooks import cluster_state_unknown
from metascale.drift import SyncPlan, plan_sync
from metascale.errors import PlanRefused
from metascale.inventory import Inventory
from metascale.preview import view_of_cluster
from tasks import runbook as rb
from tasks.pool import run_pool

ACTION = "sync-inventory"


def _run_name() -> str:
    params = runtime_flow_run.parameters
    return f"sync-inventory-{cluster_name_for_run_name(params.get('inventory', ''), params.get('cluster_block', ''))}"


def _plan(cluster: Inventory, source: str, removed_at: str) -> SyncPlan:
    """Read the cluster (with the members the inventory lacks) and plan the sync. Read-only. Raises: PlanRefused."""
    status = rb.read_cluster_status(cluster)
    reason = status.unhealthy_reason()
    if reason:
        raise PlanRefused(ACTION, f"the membership cannot be read: {reason}; nothing was changed")
    view = view_of_cluster(status)
    if view.disagreements:
        raise PlanRefused(ACTION, "the members disagree on the membership: " + "; ".join(view.disagreements)
                          + "; nothing was changed: rerun when the cluster has settled")
    return plan_sync(cluster, source, view.voters, view.learners, view.node_addrs, view.grpc_addrs,
                     removed_at=removed_at)


def _outcome(plan: SyncPlan, message: str, *, dry_run: bool, changed: bool) -> ScaleOutcome:
    get_run_logger().info("%s", message)
    voters = list(plan.voters)
    return ScaleOutcome(action=ACTION, cluster=plan.cluster, dry_run=dry_run, changed=changed, message=message,
                        voters_before=voters, voters_after=voters, plan_markdown=plan.to_markdown())


@flow(name="sync-inventory", flow_run_name=_run_name, validate_parameters=True,
      on_crashed=[cluster_state_unknown], on_cancellation=[cluster_state_unknown])
@change_flow(ACTION)
def sync_inventory(
    inventory: InventoryPath = "",
    cluster_block: ClusterBlock = "",
    dry_run: bool = False,
    require_approval: bool = True,
    approval_timeout_s: PositiveWholeSeconds = 3600,
) -> ScaleOutcome:
    """Record the cluster's membership in the inventory (file or block): members it lacks are added under
    `[[meta]]`, `[[removed]]` records of members are dropped, inventory nodes that are not members move to
    `[[removed]]`. Shows the drift and the inventory diff first (artifact `plan-<cluster>`); no host is touched.

    Args:
        inventory: path of the inventory TOML to bring up to date, on the machine that runs the flow, e.g.
            `/etc/metascale/prod.toml`. Leave empty when you choose a cluster block: give exactly one of the two.
        cluster_block: the cluster whose block to bring up to date: choose one of the Metascale Cluster blocks (see
            Blocks), or switch to "block name" and type it. Leave empty when you give an inventory path.
        dry_run: only show the drift and the inventory diff; record nothing. Try this first.
        require_approval: pause after the diff until an operator approves it (Resume in the UI, or the API);
            nothing is recorded before that. On by default; turn it off only when the caller already approved.
        approval_timeout_s: seconds to wait for the approval (> 0; default 3600 = 1 h). No answer in time: the
            run ends Refused and nothing is recorded.
    """
    check_common_parameters(ACTION, inventory, cluster_block, approval_timeout_s, 1, "")
    cluster, key_text = resolve_cluster(inventory, cluster_block)
    tag_flow_run(cluster.name)
    source = inventory or f"block {cluster_block}"
    removed_at = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    # a dry run records nothing, so it takes no lock (it neither waits behind a change nor makes one wait)
    with run_pool(cluster, key_text), (nullcontext() if dry_run else cluster_lock(cluster.name)):
        cluster, _ = resolve_cluster(inventory, cluster_block)  # re-read: the previous holder may have changed it
        plan = _plan(cluster, source, removed_at)
        publish_plan(plan, ACTION)
        get_run_logger().info("plan:\n%s", plan.to_markdown())  # the diff, before anything is recorded
        for line in plan.drift:
            get_run_logger().warning("inventory drift: %s", line)
        if plan.nothing_to_do:
            return _outcome(plan, plan.summary(), dry_run=dry_run, changed=False)
        if dry_run:
            return _outcome(plan, "dry run: nothing was changed", dry_run=True, changed=False)
        if require_approval:
            request_approval(ACTION, plan, approval_timeout_s)  # type: ignore[arg-type]  # summary + to_markdown
            cluster, _ = resolve_cluster(inventory, cluster_block)
            again = _plan(cluster, source, removed_at)
            if again.diff != plan.diff:
                raise PlanRefused(ACTION, "the cluster or the inventory changed while waiting for approval, so the "
                                          "approved diff is not the one that would be recorded; nothing was changed: "
                                          "review the new plan and rerun")
        result = rb.record_inventory(plan.inventory_after, inventory, cluster_block)
        if result.changed:
            audit.emit(audit.INVENTORY_SYNCED, plan.cluster, {"changes": list(plan.drift) or [plan.summary()]})
        return _outcome(plan, f"{plan.summary()}: {result.detail}", dry_run=False, changed=result.changed)
