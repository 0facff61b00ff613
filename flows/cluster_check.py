"""The `cluster-check` flow: read-only health check of a meta cluster (leader, voters, who answers), and the
replacement proposal for a voter that stopped answering (a person decides; nothing is changed here)."""

from __future__ import annotations

from datetime import datetime

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import VariableCreate, VariableUpdate
from prefect.events import emit_event
from prefect.exceptions import ObjectNotFound
from prefect.runtime import flow_run as runtime_flow_run
from prefect.settings import get_current_settings

from flows import audit
from flows.common import check_common_parameters, cluster_name_for_run_name, publish_markdown, publish_status_table
from flows.common import ClusterBlock, InventoryPath, NonNegativeSeconds
from flows.common import resolve_cluster
from flows.common import tag_flow_run, utcnow
from metascale import silence
from metascale.drift import inventory_drift
from metascale.errors import MetaScaleError, PlanRefused
from metascale.inventory import Inventory
from metascale.plan import ClusterView
from metascale.preview import view_of_cluster
from metascale.replace import pick_new_host
from metascale.silence import Proposal, SilenceRecord
from metascale.status import ClusterStatus
from tasks import runbook as rb
from tasks.pool import run_pool

SILENT_THRESHOLD_S = 300.0   # default: a voter silent this long (since the first run that saw it) gets a proposal


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


# ------------------------------------------------------------------------------------- silent voters, proposals

def read_silence(cluster: str) -> SilenceRecord:
    """The silent-voter record of ``cluster`` kept between runs (Prefect Variable `metascale-silent-<cluster>`);
    empty when there is none."""
    with get_client(sync_client=True) as client:
        variable = client.read_variable_by_name(silence.variable_name(cluster))
    return silence.record_from_json(variable.value) if variable is not None else {}


def write_silence(cluster: str, record: SilenceRecord) -> None:
    """Store ``record`` for ``cluster``; an empty record deletes the variable (no voter is silent)."""
    name = silence.variable_name(cluster)
    with get_client(sync_client=True) as client:
        if not record:
            try:
                client.delete_variable_by_name(name)
            except ObjectNotFound:
                pass
            return
        value = silence.record_to_json(record)
        if client.read_variable_by_name(name) is None:
            client.create_variable(VariableCreate(name=name, value=value, tags=["metascale"]))
        else:
            client.update_variable(VariableUpdate(name=name, value=value))


def replace_deployment_id() -> str:
    """The id of the deployment `replace-node/replace-node` on the server, or '' when it is not deployed."""
    with get_client(sync_client=True) as client:
        try:
            return str(client.read_deployment_by_name(silence.REPLACE_DEPLOYMENT).id)
        except ObjectNotFound:
            return ""


NOT_SILENT_ERRORS = ("HostKeyRejected", "SshAuthFailed")
"""Probe errors of a host that DID answer (its SSH server): a rejected host key (possibly a man-in-the-middle) or a
refused login is a security or access problem, never a reason to propose replacing the node."""


def silent_voter_ids(cluster: Inventory, status: ClusterStatus, view: ClusterView) -> list[int] | None:
    """The voters that did not answer this run (not counting a host whose key or login was refused), or None when
    no node answered at all (then this run cannot tell a dead voter from a checker cut off from every node, and the
    record is left as it was)."""
    if not view.answering:
        return None
    voters = set(view.voters) or set(cluster.meta_ids)
    silent = []
    for node_id in sorted(voters - set(view.answering)):
        probe = status.probe(node_id)
        if probe is not None and probe.error_type in NOT_SILENT_ERRORS:
            get_run_logger().warning("meta-%s is not counted as silent (no replacement is proposed): %s", node_id,
                                     probe.error)
            continue
        silent.append(node_id)
    return silent


def proposals_for(cluster: Inventory, status: ClusterStatus, view: ClusterView, record: SilenceRecord,
                  node_ids: list[int]) -> list[Proposal]:
    """One proposal per voter in ``node_ids``: its host, since when, and the spare `replace-node` would take
    (`metascale.replace.pick_new_host`; each voter its own spare), or why there is none."""
    proposals = []
    pool = cluster
    for node_id in node_ids:
        probe = status.probe(node_id)
        node = next((n for n in cluster.meta_nodes if n.node_id == node_id), None)
        host = probe.host if probe is not None else (node.host if node is not None else "")
        try:
            new_host = pick_new_host(pool, view, node_id).host
            if pool.spare(new_host) is not None:
                pool = pool.with_spare_used(new_host, node_id)  # the next silent voter gets another spare
            proposals.append(Proposal(node_id=node_id, host=host, since=record[node_id].since, new_host=new_host))
        except PlanRefused as exc:
            proposals.append(Proposal(node_id=node_id, host=host, since=record[node_id].since, no_spare=exc.reason))
    return proposals


def publish_proposal(cluster: str, proposals: list[Proposal], now: datetime, threshold_s: float, inventory: str,
                     cluster_block: str, sent: list[int]) -> None:
    """Publish the `replace-proposal-<cluster>` artifact (with the REST call and UI link when `replace-node` is
    deployed on this server) and log one line per proposal."""
    settings = get_current_settings()
    markdown = silence.proposal_markdown(
        cluster, proposals, now, threshold_s, inventory=inventory, cluster_block=cluster_block,
        api_url=str(settings.api.url or ""), deployment_id=replace_deployment_id(),
        ui_url=str(settings.ui_url or ""), proposed_now=sent)
    summary = ", ".join(f"meta-{p.node_id} with {p.new_host or '(no spare)'}" for p in proposals)
    publish_markdown(f"replace-proposal-{cluster}", markdown, f"replace {summary}")
    for p in proposals:
        get_run_logger().warning("proposal: replace meta-%s (silent since %s) with %s; see artifact "
                                 "replace-proposal-%s", p.node_id, silence.iso(p.since),
                                 p.new_host or "a host to name (no spare)", cluster)


def propose_replacements(cluster: Inventory, status: ClusterStatus, inventory: str, cluster_block: str,
                         threshold_s: float) -> list[int]:
    """Remember the voters that do not answer (first time seen silent, between runs); for each silent at least
    ``threshold_s`` seconds publish the `replace-proposal-<cluster>` artifact and, once per silent episode, emit
    the `metascale.replace-node.proposed` event (the automation in prefect.yaml starts `replace-node` from it,
    paused for approval). A voter without a spare to take its place gets the artifact, no event (a run could
    only refuse). Returns the voters proposed. Changes nothing on the cluster."""
    logger = get_run_logger()
    view = view_of_cluster(status)
    silent = silent_voter_ids(cluster, status, view)
    if silent is None:
        logger.warning("no meta node answered: the silent-voter record of %s is kept as it was", cluster.name)
        return []
    now = utcnow()
    before = read_silence(cluster.name)
    record = silence.update_record(before, silent, now)
    for node_id in sorted(set(before) - set(record)):
        logger.info("meta-%s answers again: forgot it was silent since %s", node_id,
                    silence.iso(before[node_id].since))
    for node_id in sorted(set(record) - set(before)):
        logger.warning("meta-%s does not answer: silent since %s (a replacement is proposed after %s)", node_id,
                       silence.iso(now), silence.duration_text(threshold_s))
    due = silence.due_for_proposal(record, now, threshold_s)
    if due:
        proposals = proposals_for(cluster, status, view, record, due)
        sent = []
        blocked = replacement_blocked_reason(view, silent)
        if blocked:  # a replace-node run could only refuse: say so, keep the event for when it can run
            logger.warning("no replace-node run is started for %s: %s", [p.node_id for p in proposals], blocked)
        for proposal in proposals:
            if record[proposal.node_id].proposed_at is None and proposal.new_host and not blocked:
                emit_event(event=silence.PROPOSAL_EVENT,
                           resource={"prefect.resource.id": silence.cluster_resource_id(cluster.name),
                                     "prefect.resource.name": cluster.name},
                           payload=proposal.event_payload(inventory, cluster_block))
                sent.append(proposal.node_id)
        record = silence.mark_proposed(record, sent, now)
        publish_proposal(cluster.name, proposals, now, threshold_s, inventory, cluster_block, sent)
    if record != before:
        write_silence(cluster.name, record)
    return due


def replacement_blocked_reason(view: ClusterView, silent: list[int]) -> str | None:
    """Why a replace-node run started now would refuse at once (no leader; more than one voter silent: replace-node
    replaces one node at a time and refuses while another voter is silent), or None."""
    if view.leader_id is None:
        return "the cluster has no leader: bring a majority of voters back first"
    if len(silent) > 1:
        return (f"voters {silent} are all silent: replace-node replaces one node at a time and refuses while another "
                f"voter is silent; bring all but one back, or remove the others with scale-down force")
    return None


def check_silent_threshold(silent_threshold_s: float) -> None:
    """Refuse a negative (or not-a-number) ``silent_threshold_s``. Raises PlanRefused naming the value."""
    if not silent_threshold_s >= 0:
        raise PlanRefused("cluster-check", f"silent_threshold_s must be >= 0 (got {silent_threshold_s})")


@flow(name="cluster-check", flow_run_name=_run_name)
def cluster_check(inventory: InventoryPath = "", cluster_block: ClusterBlock = "",
                  silent_threshold_s: NonNegativeSeconds = SILENT_THRESHOLD_S) -> str:
    """Ask every meta node for its status (and every member the inventory lacks, found in the cluster's status);
    publish a table; fail when there is no leader, a voter does not answer, or the nodes disagree, and also when
    the inventory does not match the membership (drift, published as the `drift-<cluster>` artifact with the
    fix for each difference). A voter silent for at least ``silent_threshold_s`` seconds (counted from the first
    run that saw it silent) gets a replacement proposal: the `replace-proposal-<cluster>` artifact and, once, the
    event `metascale.replace-node.proposed`. Changes nothing.

    Args:
        inventory: path of the cluster's inventory TOML on the machine that runs the flow, e.g.
            `/etc/metascale/prod.toml`. Leave empty when you choose a cluster block: give exactly one of the two.
        cluster_block: the cluster to check: choose one of the Metascale Cluster blocks (see Blocks), or switch to
            "block name" and type it. Leave empty when you give an inventory path.
        silent_threshold_s: seconds a voter must stay silent (counted from the first check that saw it silent)
            before a replacement is proposed (>= 0; default 300 = 5 min; 0 = at the first check). The proposal
            starts `replace-node` paused for approval; nothing changes without a person's answer.
    """
    check_common_parameters("cluster-check", inventory, cluster_block, 1, 1, "")
    check_silent_threshold(silent_threshold_s)
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
    propose_replacements(cluster, status, inventory, cluster_block, silent_threshold_s)
    voters = status.voter_ids or cluster.meta_ids
    reason = status.stable_reason(voters)
    unfinished = unfinished_change_reason(cluster.name)
    if unfinished:
        reason = f"{reason}; {unfinished}" if reason else unfinished
    if reason:
        audit.emit(audit.CLUSTER_UNHEALTHY, cluster.name, {"reason": reason, "run_url": audit.run_url()})
    if drift:
        audit.emit(audit.CLUSTER_DRIFTED, cluster.name, {"lines": drift, "run_url": audit.run_url()})
    if reason:
        raise ClusterUnhealthy(cluster.name, reason + (f"; inventory drift: {'; '.join(drift)}" if drift else ""))
    if drift:
        raise InventoryDrift(cluster.name, drift)
    get_run_logger().info("healthy: %s", status.summary())
    return status.summary()
