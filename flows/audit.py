"""Audit events: what happened to a cluster, as Prefect events on the resource `metascale.cluster.<name>` (the Event
Feed shows them; the automations in deployments/automations/ notify on some of them).

Every event is related to the flow run that emitted it (Prefect adds the run, its flow, deployment and tags when
it is emitted inside a run; a hook that runs outside one passes the run itself). Payloads are redacted
(``metascale.redact``). Emitting never raises: an audit event that cannot be sent is logged, the change goes on.
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

from metascale.redact import redact_any
from metascale.silence import cluster_resource_id

PLAN_PUBLISHED = "metascale.plan.published"          # action, summary, plan_url, run_url
APPROVAL_REQUESTED = "metascale.approval.requested"  # action, summary, plan_url, run_url, timeout_s
CHANGE_APPROVED = "metascale.change.approved"        # action, reason
CHANGE_REJECTED = "metascale.change.rejected"        # action, reason
NODE_ADDED = "metascale.node.added"                  # node_id, host
NODE_REMOVED = "metascale.node.removed"              # node_id, host
INVENTORY_SYNCED = "metascale.inventory.synced"      # changes
CLUSTER_UNHEALTHY = "metascale.cluster.unhealthy"    # reason, run_url
CLUSTER_DRIFTED = "metascale.cluster.drifted"        # lines, run_url
STATE_UNKNOWN = "metascale.cluster.state-unknown"    # action, run_url, last_step, reason

logger = logging.getLogger(__name__)


def ui_url(path: str) -> str:
    """The Prefect UI address of ``path`` (e.g. `runs/flow-run/<id>`), or "" when no UI address is known."""
    from prefect.settings import get_current_settings

    base = str(get_current_settings().ui_url or "").rstrip("/")
    return f"{base}/{path}" if base else ""


def run_url(run_id: UUID | str | None = None) -> str:
    """The UI page of flow run ``run_id`` (default: the current run), or ""."""
    if run_id is None:
        from prefect.runtime import flow_run as runtime_flow_run

        run_id = runtime_flow_run.id
    return ui_url(f"runs/flow-run/{run_id}") if run_id else ""


def artifact_url(artifact_id: UUID | str | None) -> str:
    """The UI page of the artifact ``artifact_id``, or ""."""
    return ui_url(f"artifacts/artifact/{artifact_id}") if artifact_id else ""


def emit(event: str, cluster: str, payload: dict[str, Any], *, flow_run: Any = None) -> None:
    """Emit ``event`` on `metascale.cluster.<cluster>` with the redacted ``payload``. ``flow_run``: relate the event
    to this run explicitly (for hooks, which run outside the run's context). Never raises."""
    try:
        from prefect.events import emit_event

        related = None
        if flow_run is not None:
            related = [{"prefect.resource.id": f"prefect.flow-run.{flow_run.id}",
                        "prefect.resource.role": "flow-run", "prefect.resource.name": str(flow_run.name)}]
        emit_event(event=event, resource={"prefect.resource.id": cluster_resource_id(cluster),
                                          "prefect.resource.name": cluster},
                   payload=redact_any(payload), related=related)
    except Exception as exc:  # the audit trail must never stop a change
        logger.warning("could not emit the audit event %s for cluster %s: %s", event, cluster, exc)
