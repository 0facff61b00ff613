"""Flow hooks for the runs nobody returns from: a change run that crashed (killed process, BaseException) or was
cancelled may have left the cluster half-changed, and no `except` in the flow ran.

``cluster_state_unknown`` (``on_crashed`` and ``on_cancellation`` of every change flow) publishes the markdown
artifact `cluster-state-unknown-<cluster>` (the run, how it ended, the last step it started, its parameters, what to
do next), starts the deployment `cluster-check/cluster-check` for the same cluster when it exists, and emits
`metascale.cluster.state-unknown`. It runs in the flow's process, or in the runner's (`serve`, a worker) when the
process was killed; it never raises.
"""

from __future__ import annotations

from typing import Any

from flows import audit
from metascale.redact import redact, redact_any

CLUSTER_CHECK_DEPLOYMENT = "cluster-check/cluster-check"


def cluster_of(flow_run: Any) -> str:
    """The run's cluster name: its `cluster:<name>` tag (set once the inventory was read), else the inventory's name
    or the block's name from its parameters."""
    from flows.common import cluster_name_for_run_name

    for tag in flow_run.tags or ():
        if tag.startswith("cluster:"):
            return tag.split(":", 1)[1]
    from tasks.cluster_block import cluster_block_name

    params = flow_run.parameters or {}
    try:  # a block picked in the form is stored as a reference {"$ref": ...}: load it for its name
        block = cluster_block_name(params.get("cluster_block"))
    except Exception:  # a hook never raises: a block that cannot be read leaves the name "unknown"
        block = ""
    return cluster_name_for_run_name(str(params.get("inventory") or ""), block)


def last_step(cluster: str, run_id: str) -> tuple[str, str]:
    """(phase, step) this run recorded in the cluster lock's holder record, or ("", "") when it recorded none."""
    from flows.cluster_lock import read_holder

    holder = read_holder(cluster)
    if holder is None or holder.run_id != run_id:
        return "", ""
    return holder.phase, holder.step


def start_cluster_check(params: dict[str, Any]) -> tuple[str, str]:
    """Start `cluster-check/cluster-check` for the cluster in ``params`` (without waiting). Returns (flow run id or
    "", one line saying what happened)."""
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    parameters = {"inventory": params.get("inventory") or "", "cluster_block": params.get("cluster_block") or ""}
    try:
        run = run_deployment(CLUSTER_CHECK_DEPLOYMENT, parameters=parameters, timeout=0, as_subflow=False)
    except ObjectNotFound:
        return "", f"the deployment {CLUSTER_CHECK_DEPLOYMENT} does not exist here: run cluster-check by hand"
    return str(run.id), f"started {CLUSTER_CHECK_DEPLOYMENT}: flow run {run.name} ({audit.run_url(run.id)})"


def ended_as(state: Any) -> str:
    """How the run ended, in one word: "Cancelled" (the runner calls the hook while the run is still Cancelling),
    else the state's name (Crashed)."""
    return "Cancelled" if state.is_cancelling() or state.is_cancelled() else str(state.name)


def state_unknown_markdown(flow_run: Any, state: Any, cluster: str, phase: str, step: str, check: str) -> str:
    """The `cluster-state-unknown-<cluster>` artifact: what is known about the run and what to do next."""
    params = redact_any(dict(flow_run.parameters or {}))
    ended = ended_as(state)
    changing = phase == "changing"
    where = (f"it had started changing the cluster; the last step it started: **{step or '(none recorded)'}**"
             if changing else f"it had not started changing the cluster (phase: {phase or 'unknown'})")
    lines = [
        f"# Cluster `{cluster}`: state unknown after a {ended.lower()} run",
        "",
        f"The flow run [{flow_run.name}]({audit.run_url(flow_run.id)}) ended **{ended}**: "
        f"{(state.message or '(no message)').rstrip('.')}.",
        "",
        f"* where it was: {where}",
        f"* cluster-check: {check}",
        "* parameters: " + ", ".join(f"`{k}={v!r}`" for k, v in sorted(params.items())),
        "",
        "## What to do next",
        "",
        f"1. Read the cluster-check run's result (status table `status-{cluster}`): who answers, the leader, the "
        f"voters; it also reports a change that did not finish.",
        "2. Rerun the same flow with the same parameters: every step checks the current state first, so a rerun "
        "continues where this run stopped (its plan shows what is left).",
        "3. If a host was left in a state the plan cannot handle, see the runbook's troubleshooting section.",
    ]
    return redact("\n".join(lines) + "\n")


def cluster_state_unknown(flow: Any, flow_run: Any, state: Any) -> None:
    """``on_crashed`` / ``on_cancellation`` hook of the change flows (module docstring). Never raises."""
    from prefect.logging.loggers import flow_run_logger

    logger = flow_run_logger(flow_run, flow)
    try:
        cluster = cluster_of(flow_run)
        try:
            phase, step = last_step(cluster, str(flow_run.id))
        except Exception as exc:
            phase, step = "", ""
            logger.warning("could not read the lock holder record of %s: %s", cluster, exc)
        try:
            _, check = start_cluster_check(dict(flow_run.parameters or {}))
        except Exception as exc:
            check = f"could not start {CLUSTER_CHECK_DEPLOYMENT} ({exc}): run cluster-check by hand"
        ended = ended_as(state)
        logger.warning("cluster %s: state unknown after the run ended %s; %s", cluster, ended, check)
        _publish(flow_run, cluster, state_unknown_markdown(flow_run, state, cluster, phase, step, check),
                 f"{flow_run.name} ended {ended}; last step: {step or '-'}")
        audit.emit(audit.STATE_UNKNOWN, cluster, {
            "action": flow.name, "run_url": audit.run_url(flow_run.id), "last_step": step,
            "reason": f"the run ended {ended}: {state.message or ''}".strip(" :")}, flow_run=flow_run)
    except Exception as exc:  # a hook must never raise
        logger.error("the cluster-state-unknown hook failed: %s", exc)


def _publish(flow_run: Any, cluster: str, markdown: str, description: str) -> None:
    """Create the artifact on the run explicitly (a hook may run outside the run's context)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactCreate

    with get_client(sync_client=True) as client:
        client.create_artifact(ArtifactCreate(key=f"cluster-state-unknown-{cluster}", type="markdown",
                                              data=markdown, description=redact(description)[:500],
                                              flow_run_id=flow_run.id))
