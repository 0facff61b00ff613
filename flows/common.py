"""What the scale flows share: parameter checks, the cluster lock, the plan artifact, the approval pause, run names,
the outcome model and the failure report (diagnostics artifact + final message).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone

from prefect import get_run_logger, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.runtime import flow_run as runtime_flow_run
from pydantic import BaseModel, ConfigDict, Field, field_validator

from metascale.errors import PlanRefused
from metascale.inventory import Inventory, load_inventory, validate_host
from metascale.plan import ScalePlan
from metascale.preview import as_meta_node
from metascale.status import ClusterStatus
from tasks import runbook as rb

_BLOCK_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_UNSAFE_PATH_CHARS = set(";|&$`<>\\\"'\n\r\0*?(){}[]!#")
LOCK_WAIT_S = 300.0
LOCK_LEASE_S = 60  # a killed run frees the cluster lock after this long (the lease is renewed while held)
PARALLEL_HOSTS = 16  # at most this many hosts are edited at once (query endpoints, join lists)


class NewMetaNode(BaseModel):
    """A host to turn into a meta node (shown as a form in the Prefect UI)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field(description="SSH host; also the raft and gRPC advertise host")
    node_id: int | None = Field(default=None, ge=1, description="raft id; empty = the next free id")
    raft_port: int = Field(default=28004, ge=1, le=65535)
    grpc_port: int = Field(default=9191, ge=1, le=65535)
    admin_port: int = Field(default=28002, ge=1, le=65535)

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return validate_host(value)


class ScaleApproval(RunInput):
    """The operator's answer to a plan: approve or reject, with a reason."""

    approve: bool = Field(description="approve the plan and apply it")
    reason: str = Field(default="", description="why (kept in the run's log)")


def check_common_parameters(
    action: str,
    inventory: str,
    cluster_block: str,
    approval_timeout_s: int,
    verify_deadline_s: float,
    maintenance_window: str,
) -> None:
    """Refuse bad common parameters before anything is read or changed. Raises PlanRefused naming the value."""
    if bool(inventory) == bool(cluster_block):
        raise PlanRefused(action, "give exactly one of inventory (a TOML path) or cluster_block (a block name)")
    if inventory and (not inventory.strip() or set(inventory) & _UNSAFE_PATH_CHARS):
        raise PlanRefused(action, f"inventory path {inventory!r} contains shell metacharacters or is blank")
    if cluster_block and not _BLOCK_NAME_RE.match(cluster_block):
        raise PlanRefused(action, f"cluster_block {cluster_block!r} is not a block name (valid: [a-z0-9-])")
    if approval_timeout_s <= 0:
        raise PlanRefused(action, f"approval_timeout_s must be > 0 (got {approval_timeout_s})")
    if not verify_deadline_s > 0:
        raise PlanRefused(action, f"verify_deadline_s must be > 0 (got {verify_deadline_s})")
    if maintenance_window:
        from metascale.window import parse_window

        try:
            parse_window(maintenance_window)
        except ValueError as exc:
            raise PlanRefused(action, str(exc)) from None


def resolve_cluster(inventory: str, cluster_block: str) -> tuple[Inventory, str | None]:
    """Return (inventory, private key text or None) from a TOML path or a MetaCluster block."""
    from tasks.cluster_block import load_cluster

    return load_cluster(inventory_path=inventory, cluster_block=cluster_block)


def cluster_name_for_run_name(inventory: str, cluster_block: str) -> str:
    """Return the cluster's name for a run name; falls back to the block name or 'unknown'."""
    if inventory:
        try:
            return load_inventory(inventory).name
        except Exception:  # a bad inventory fails properly inside the flow; the name only labels the run
            return "unknown"
    return cluster_block or "unknown"


def tag_flow_run(cluster: str) -> None:
    """Add the tags `metascale` and `cluster:<name>` to the current flow run."""
    run_id = runtime_flow_run.id
    if run_id is None:
        return
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
        tags = sorted(set(run.tags) | {"metascale", f"cluster:{cluster}"})
        client.update_flow_run(run_id, tags=tags)


def lock_name(cluster: str) -> str:
    """Return the global concurrency limit name of ``cluster``."""
    return f"metascale-cluster-{cluster}"


def ensure_cluster_limit(cluster: str) -> None:
    """Create the cluster's global concurrency limit (limit 1) if it is missing. Idempotent; safe in a race."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    name = lock_name(cluster)
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
            return
        except ObjectNotFound:
            pass
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
        except ObjectAlreadyExists:
            pass


@contextmanager
def cluster_lock(cluster: str, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold the cluster's lock (one change at a time) for the block; wait at most ``wait_s`` for it.

    Raises: PlanRefused when another run holds the lock for longer than ``wait_s``.
    """
    logger = get_run_logger()
    ensure_cluster_limit(cluster)
    name = lock_name(cluster)
    logger.info("waiting for the cluster lock %s (at most %.0f s)", name, wait_s)
    try:
        with concurrency(name, occupy=1, timeout_seconds=wait_s, lease_duration=LOCK_LEASE_S, strict=True):
            logger.info("holding the cluster lock %s", name)
            yield
    except TimeoutError:
        raise PlanRefused(
            "change", f"another run holds the lock {name} of cluster {cluster} for more than {wait_s:.0f} s; "
            f"wait for it to finish and rerun"
        ) from None


def publish_plan(plan: ScalePlan) -> str:
    """Publish the plan as the markdown artifact ``plan-<cluster>``; return the markdown."""
    markdown = plan.to_markdown()
    create_markdown_artifact(key=f"plan-{plan.cluster}", markdown=markdown, description=plan.summary())
    get_run_logger().info("plan: %s", plan.summary())
    return markdown


def publish_status_table(cluster: str, rows: list[dict[str, str]], description: str) -> None:
    """Publish a before/after status table artifact ``status-<cluster>``."""
    create_table_artifact(key=f"status-{cluster}", table=rows, description=description)


def publish_markdown(key: str, markdown: str, description: str) -> None:
    """Publish a keyed markdown artifact (keys: lowercase letters, digits, dashes)."""
    create_markdown_artifact(key=key, markdown=markdown, description=description)


def check_maintenance_window(action: str, spec: str, override: bool, now: datetime | None = None) -> None:
    """Refuse a change outside the maintenance window ``spec`` unless ``override``."""
    if not spec:
        return
    from metascale.window import check_window

    reason = check_window(spec, now or datetime.now(timezone.utc))
    if reason is None:
        return
    if override:
        get_run_logger().warning("%s; going ahead because override_window is set", reason)
        return
    raise PlanRefused(action, f"{reason}; rerun inside the window or with override_window=True")


def request_approval(action: str, plan: ScalePlan, timeout_s: int, poll_interval_s: int = 1) -> None:
    """Pause until an operator approves the plan. Raises PlanRefused on reject or timeout (nothing changed)."""
    from prefect.exceptions import FlowPauseTimeout

    logger = get_run_logger()
    logger.info("waiting up to %d s for approval of: %s", timeout_s, plan.summary())
    try:
        answer = pause_flow_run(
            wait_for_input=ScaleApproval.with_initial_data(description=plan.to_markdown(), approve=False),
            timeout=timeout_s,
            poll_interval=poll_interval_s,
        )
    except FlowPauseTimeout:
        raise PlanRefused(action, f"no approval within {timeout_s} s; nothing was changed") from None
    if not answer.approve:
        raise PlanRefused(action, f"rejected by operator: {answer.reason or '(no reason given)'}; nothing was changed")
    logger.info("approved by operator: %s", answer.reason or "(no reason given)")


class ScaleFailed(Exception):
    """A scale run failed after it started changing the cluster; the message says the state and what to do next."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ScaleOutcome(BaseModel):
    """What a scale run did: the plan's summary, whether anything changed, the message for the operator."""

    action: str
    cluster: str
    dry_run: bool = False
    changed: bool
    message: str
    voters_before: list[int]
    voters_after: list[int]
    changed_steps: list[str] = Field(default_factory=list)
    skipped_steps: list[str] = Field(default_factory=list)
    elapsed_s: float = Field(default=0.0, description="seconds from the start of the changes to the end")
    waited_s: float = Field(default=0.0, description="of which inside verify_* tasks, waiting on the cluster")
    plan_markdown: str = ""

    @classmethod
    def planned(cls, plan: ScalePlan, message: str, *, dry_run: bool) -> ScaleOutcome:
        """Return the outcome of a run that stopped after the plan (a dry run, or nothing to do)."""
        get_run_logger().info("%s", message)
        return cls(action=plan.action, cluster=plan.cluster, dry_run=dry_run, changed=False, message=message,
                   voters_before=list(plan.voters_before), voters_after=list(plan.voters_before),
                   plan_markdown=plan.to_markdown())

    @classmethod
    def applied(cls, plan: ScalePlan, progress: rb.Progress, after: ClusterStatus) -> ScaleOutcome:
        """Return the outcome of a run that applied ``plan``; ``after`` is the ClusterStatus at the end."""
        changed = [f"{r.step} on {r.host}: {r.detail}" for r in progress.changed]
        skipped = list(progress.skipped)
        voters = after.voter_ids or []
        elapsed = time.monotonic() - progress.started
        waited = progress.waited_s
        message = (f"{plan.summary()}: done in {elapsed:.1f} s ({waited:.1f} s waiting on the cluster); voters now "
                   f"{voters}, leader meta-{after.leader_id}"
                   f"{'; skipped: ' + '; '.join(skipped) if skipped else ''}"
                   f"{'' if changed else '; nothing needed changing (already done)'}")
        get_run_logger().info("%s", message)
        return cls(action=plan.action, cluster=plan.cluster, changed=bool(changed), message=message,
                   voters_before=list(plan.voters_before), voters_after=list(voters), changed_steps=changed,
                   skipped_steps=skipped, elapsed_s=elapsed, waited_s=waited, plan_markdown=plan.to_markdown())


def status_rows(before: ClusterStatus, after: ClusterStatus) -> list[dict[str, str]]:
    """Return one table row per meta node: role and answer before and after (ClusterStatus in, strings out)."""
    def role(status: ClusterStatus, node_id: int) -> str:
        probe = status.probe(node_id)
        if probe is None:
            return "-"
        if probe.status is None:
            return "no answer"
        return probe.status.state

    ids = sorted({p.node_id for p in before.probes} | {p.node_id for p in after.probes})
    rows = []
    for node_id in ids:
        probe = before.probe(node_id) or after.probe(node_id)
        rows.append({
            "node": f"meta-{node_id}", "host": probe.host, "before": role(before, node_id),
            "after": role(after, node_id),
            "voter before": str(node_id in (before.voter_ids or [])),
            "voter after": str(node_id in (after.voter_ids or [])),
        })
    return rows


def fail_with_diagnostics(action: str, cluster: Inventory, plan: ScalePlan, progress: rb.Progress,
                          error: BaseException) -> None:
    """After a failed step: diagnostics artifact from the hosts involved, then raise ScaleFailed saying where the
    cluster is and what to do next. Never returns."""
    logger = get_run_logger()
    step = progress.step
    dead = {c.host for c in plan.changes if c.host_dead}
    hosts = sorted(({c.host for c in plan.changes} | {n.host for n in cluster.meta_nodes}) - dead)
    try:
        sections = rb.collect_diagnostics.map(unmapped(cluster), hosts).result()
        publish_markdown(f"diagnostics-{cluster.name}", f"# Diagnostics after a failed {action}\n\n"
                         f"Failed step: **{step}**: `{error}`\n\n" + "\n".join(sections),
                         f"{action} failed at {step}")
    except Exception as exc:  # diagnostics must never hide the real failure
        logger.warning("could not collect diagnostics: %s", exc)
    try:
        extra = [as_meta_node(c) for c in plan.changes if c.action == "add"]
        nodes = [n for n in cluster.meta_nodes if n.host not in dead]
        nodes += [n for n in extra if n.node_id not in {m.node_id for m in nodes}]
        state = rb.read_cluster_status(cluster, nodes).summary()
    except Exception as exc:
        state = f"cluster state unknown ({exc})"
    done = [f"{r.step} on {r.host}" for r in progress.changed]
    restored = list(progress.restored)
    raise ScaleFailed(
        f"{action} of cluster {cluster.name} failed at step '{step}': {error}. Now: {state}. "
        f"Changed before the failure: {', '.join(done) or 'nothing'}. "
        f"Undone because the cluster never took it: {'; '.join(restored) or 'nothing'}. Next: fix the cause (see the "
        f"diagnostics-{cluster.name} artifact) and rerun the same flow with the same parameters; every step "
        f"checks the current state first, so the rerun continues where this one stopped."
    ) from error

