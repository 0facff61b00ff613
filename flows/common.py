"""What the scale flows share: parameter checks, the cluster lock, the plan artifact, the approval pause, run names,
the outcome model and the failure report (diagnostics artifact + final message).
"""

from __future__ import annotations

import functools
import inspect
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Annotated, Any, TypeVar

from prefect import get_run_logger, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.client.orchestration import get_client
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.runtime import flow_run as runtime_flow_run
from prefect.states import Failed, State
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from metascale.errors import PlanRefused
from metascale.redact import install_log_redaction, redact, redact_any
from metascale.inventory import Inventory, load_inventory, validate_host
from metascale.plan import QueryFacts, ScalePlan
from metascale.preview import as_meta_node
from metascale.status import ClusterStatus
from flows.cluster_lock import (
    LOCK_WAIT_S,
    ChangeGuard,
    ClusterLock,
    GuardedProgress,
    interrupted_change_reason,
    lock_is_held,
    lock_name,
    read_holder,
)
from flows import audit
from tasks import runbook as rb
from tasks.cluster_block import BLOCK_NAME_PATTERN, MetaCluster, cluster_block_name

install_log_redaction()  # every log line of a run (flow, tasks, core modules) without secret values

PARALLEL_HOSTS = 16  # at most this many hosts are edited at once (query endpoints, join lists)

# The flows' parameter schema. Prefect's Custom run form and REST API (enforce_parameter_schema) refuse a value
# outside it before a run exists (HTTP 409). The bounds are JSON schema only (json_schema_extra), not pydantic
# constraints: a Python caller that bypasses the schema still reaches the one check of each value in the flow
# (check_common_parameters & co.), which ends the run "Refused" with one line (D1), not in Prefect's
# "invalid parameters" failure. Patterns are ECMA/Python regexes; the checks in Python are the exact rules.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOST_PATTERN = (rf"{_OCTET}(?:\.{_OCTET}){{3}}"              # IPv4
                r"|(?=[0-9A-Fa-f:.]*:)[0-9A-Fa-f:.]{2,45}"     # IPv6 (metascale.inventory.validate_host is exact)
                rf"|(?=.{{1,253}}$)(?:{_LABEL}\.)*(?![0-9]+\.?$){_LABEL}\.?")  # DNS name, last label not numeric
INVENTORY_PATH_PATTERN = r"""(?!\s+$)[^;|&$`<>\\"'\r\n*?(){}\[\]!#\x00]*"""  # no shell metacharacters, not blank
WINDOW_PATTERN = r"\s*[A-Za-z*,-]+\s+[0-9]{1,2}:[0-9]{2}\s*-\s*[0-9]{1,2}:[0-9]{2}\s+[A-Za-z0-9_/+-]+\s*"


def schema_pattern(body: str, *, optional: bool = False) -> str:
    """A JSON-schema `pattern` accepting exactly ``body`` (or also "" when ``optional``): anchored, and no line
    break anywhere (the server matches with Python's `re.search`, whose `$` also matches before a final newline)."""
    return rf"^(?!.*\n)(?:{body}){'?' if optional else ''}$"


def _pattern(body: str, *, optional: bool = True) -> Any:
    return Field(json_schema_extra={"pattern": schema_pattern(body, optional=optional)})


InventoryPath = Annotated[str, _pattern(INVENTORY_PATH_PATTERN)]
ClusterBlock = Annotated[
    MetaCluster | Annotated[str, Field(title="block name"), _pattern(BLOCK_NAME_PATTERN)],
    AfterValidator(cluster_block_name),  # the picked block -> its name: the flow body always gets a str
    # schema default null, not "": the form opens on the block picker (Prefect picks the union arm that matches
    # the default, and "" would open the "block name" text field); a caller that omits it still gets ""
    Field(json_schema_extra={"default": None}),
]
PositiveSeconds = Annotated[float, Field(json_schema_extra={"exclusiveMinimum": 0})]
PositiveWholeSeconds = Annotated[int, Field(json_schema_extra={"exclusiveMinimum": 0})]
NonNegativeSeconds = Annotated[float, Field(json_schema_extra={"minimum": 0})]
MaintenanceWindowSpec = Annotated[str, _pattern(WINDOW_PATTERN)]
NodeId = Annotated[int, Field(json_schema_extra={"minimum": 0})]
NodeIds = Annotated[list[int], Field(json_schema_extra={"minItems": 1, "items": {"type": "integer", "minimum": 0}})]
HostOrEmpty = Annotated[str, _pattern(HOST_PATTERN)]


class NewMetaNode(BaseModel):
    """A host to turn into a meta node (shown as a form in the Prefect UI)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field(description="SSH host to add, also its raft and gRPC advertise host: an IP address or a DNS "
                                  "name, e.g. 192.0.2.14",
                      json_schema_extra={"pattern": schema_pattern(HOST_PATTERN)})
    node_id: int | None = Field(default=None, ge=1, description="raft id for the new node; empty = the next free id")
    raft_port: int = Field(default=28004, ge=1, le=65535, description="raft port (databend-meta default 28004)")
    grpc_port: int = Field(default=9191, ge=1, le=65535, description="gRPC port (databend-meta default 9191)")
    admin_port: int = Field(default=28002, ge=1, le=65535, description="admin HTTP port (default 28002)")

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return validate_host(value)


NewNodes = Annotated[list[NewMetaNode], Field(json_schema_extra={"minItems": 1})]


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
    if inventory and not re.fullmatch(INVENTORY_PATH_PATTERN, inventory):
        raise PlanRefused(action, f"inventory path {inventory!r} contains shell metacharacters or is blank")
    if cluster_block and not re.fullmatch(BLOCK_NAME_PATTERN, cluster_block):
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


@contextmanager
def cluster_lock(cluster: str, action: str = "change", wait_s: float = LOCK_WAIT_S) -> Iterator[ClusterLock]:
    """Hold the cluster's lock (one change at a time) for the block; wait at most ``wait_s`` for it.

    The lock is `flows.cluster_lock.ClusterLock`: refused when the limit is inactive or above 1, names its holder
    (this flow run), survives an API outage shorter than its lease, and records an unfinished change.
    Raises: PlanRefused when the limit is not a lock or another run holds it for longer than ``wait_s``.
    """
    logger = get_run_logger()
    name = lock_name(cluster)
    logger.info("waiting for the cluster lock %s (at most %.0f s)", name, wait_s)
    lock = ClusterLock.acquire(cluster, run_id=str(runtime_flow_run.id or "local"),
                               run_name=str(runtime_flow_run.name or "local"), action=action, wait_s=wait_s,
                               log=logger.info)
    logger.info("holding the cluster lock %s as %s", name, lock.holder.describe())
    try:
        yield lock
    finally:
        lock.release()


def change_guard(lock: ClusterLock) -> ChangeGuard:
    """Return the guard to wrap the changes in: SIGTERM/SIGINT and a lost lock stop the run at a step boundary.
    Use ``GuardedProgress.under(guard)`` as the run's Progress."""
    return ChangeGuard(lock, log=get_run_logger().warning)


def note_interrupted_change(plan: ScalePlan, lock: ClusterLock) -> ScalePlan:
    """Return ``plan`` with a note first when the previous change on this cluster did not finish."""
    reason = interrupted_change_reason(lock.previous, own_run_id=lock.holder.run_id)
    if reason is None:
        return plan
    get_run_logger().warning("%s", reason)
    return plan.model_copy(update={"notes": (reason, *plan.notes)})


def note_other_change(plan: ScalePlan, cluster: str) -> ScalePlan:
    """For a plan made without the lock (a dry run): ``plan`` with a note first when another run is changing the
    cluster right now (the plan may be out of date when it ends) or the last change did not finish."""
    holder = read_holder(cluster)
    held = lock_is_held(cluster)
    reason = interrupted_change_reason(holder, lock_held=held)
    if reason is None and holder is not None and held:
        reason = (f"another change is running on this cluster: {holder.describe()}; this plan may be out of date "
                  f"when it ends: plan again then")
    if reason is None:
        return plan
    get_run_logger().warning("%s", reason)
    return plan.model_copy(update={"notes": (reason, *plan.notes)})


def plan_only(cluster: Inventory, make_plan: MakePlan) -> ScaleOutcome:
    """A dry run: read the cluster, plan, publish the plan, change nothing. It takes no cluster lock: it changes
    nothing, so it neither waits behind a running change nor makes one wait (and costs the command no lock round
    trips); the plan says when another change is running."""
    plan, _, _ = make_plan(cluster)
    plan = note_other_change(plan, cluster.name)
    publish_plan(plan)
    refusal = plan.fault_tolerance_refusal()
    return ScaleOutcome.planned(plan, "dry run: nothing was changed"
                                + (f"; a real run would be refused: {refusal}" if refusal else ""), dry_run=True)


def publish_plan(plan: ScalePlan | Any, action: str = "") -> str:
    """Publish the plan (a ScalePlan, or sync-inventory's SyncPlan with ``action``) as the markdown artifact
    ``plan-<cluster>``, note it in the run's ChangeRecord and emit `metascale.plan.published`; return the markdown."""
    action = action or plan.action
    markdown = redact(plan.to_markdown())
    summary = redact(plan.summary())
    artifact_id = create_markdown_artifact(key=f"plan-{plan.cluster}", markdown=markdown, description=summary)
    get_run_logger().info("plan: %s", summary)
    record = current_change()
    record.note_plan(plan, markdown, audit.artifact_url(artifact_id))
    audit.emit(audit.PLAN_PUBLISHED, plan.cluster, {"action": action, "summary": summary,
                                                    "plan_url": record.plan_url, "run_url": audit.run_url()})
    return markdown


def publish_status_table(cluster: str, rows: list[dict[str, str]], description: str) -> None:
    """Publish a before/after status table artifact ``status-<cluster>``."""
    create_table_artifact(key=f"status-{cluster}", table=redact_any(rows), description=redact(description))


def publish_markdown(key: str, markdown: str, description: str) -> None:
    """Publish a keyed markdown artifact (keys: lowercase letters, digits, dashes); secret values redacted."""
    create_markdown_artifact(key=key, markdown=redact(markdown), description=redact(description))


def utcnow() -> datetime:
    """The current time (UTC). The one clock the maintenance-window checks read (a test replaces it)."""
    return datetime.now(timezone.utc)


def check_maintenance_window(action: str, spec: str, override: bool, now: datetime | None = None, *,
                             after_approval: bool = False) -> None:
    """Refuse a change outside the maintenance window ``spec`` unless ``override``. ``after_approval``: asked again
    once the operator approved (the window may have closed during the wait)."""
    if not spec:
        return
    from metascale.window import check_window

    reason = check_window(spec, now or utcnow())
    if reason is None:
        return
    if after_approval:
        reason = f"the approval came after the maintenance window closed: {reason}"
    if override:
        get_run_logger().warning("%s; going ahead because override_window is set", reason)
        return
    get_run_logger().error("%s; nothing was changed", reason)  # the server may replace a paused run's message
    raise PlanRefused(action, f"{reason}; nothing was changed: rerun inside the window or with override_window=True")


def approval_wait_s(timeout_s: int, spec: str, override: bool, now: datetime | None = None) -> tuple[int, str]:
    """Return (seconds to wait for approval, why it is less than ``timeout_s`` or ""): the wait never outlasts the
    maintenance window (unless ``override``), so an approval cannot arrive after the window closed."""
    if not spec or override:
        return timeout_s, ""
    from metascale.window import parse_window, time_left

    now = now or utcnow()
    left = time_left(spec, now)
    if left is None or left.total_seconds() >= timeout_s:
        return timeout_s, ""
    closes = parse_window(spec).closes_at(now)
    wait = max(int(left.total_seconds()), 1)
    return wait, f"the maintenance window {spec!r} closes at {closes:%a %Y-%m-%d %H:%M %Z}, in {wait} s"


def request_approval(action: str, plan: ScalePlan, timeout_s: int, poll_interval_s: int = 1, *,
                     maintenance_window: str = "", override_window: bool = False) -> None:
    """Pause until an operator approves the plan, at most ``timeout_s`` and never past the end of the maintenance
    window. Raises PlanRefused on reject or timeout (nothing changed)."""
    from prefect.exceptions import FlowPauseTimeout

    logger = get_run_logger()
    wait_s, capped = approval_wait_s(timeout_s, maintenance_window, override_window)
    if capped:
        logger.info("approval wait capped at %d s (approval_timeout_s=%d): %s", wait_s, timeout_s, capped)
    logger.info("waiting up to %d s for approval of: %s", wait_s, plan.summary())
    record = current_change()
    audit.emit(audit.APPROVAL_REQUESTED, plan.cluster, {
        "action": action, "summary": plan.summary(), "plan_url": record.plan_url, "run_url": audit.run_url(),
        "timeout_s": wait_s})
    try:
        answer = pause_flow_run(
            wait_for_input=ScaleApproval.with_initial_data(description=plan.to_markdown(), approve=False),
            timeout=wait_s,
            poll_interval=poll_interval_s,
        )
    except FlowPauseTimeout:
        why = f"no approval within {wait_s} s" + (f" ({capped})" if capped else "")
        logger.error("%s; nothing was changed", why)
        leave_expired_pause(why)
        raise PlanRefused(action, f"{why}; nothing was changed") from None
    reason = answer.reason or "(no reason given)"
    if not answer.approve:
        audit.emit(audit.CHANGE_REJECTED, plan.cluster, {"action": action, "reason": reason})
        raise PlanRefused(action, f"rejected by operator: {reason}; nothing was changed")
    audit.emit(audit.CHANGE_APPROVED, plan.cluster, {"action": action, "reason": reason})
    logger.info("approved by operator: %s", reason)


def leave_expired_pause(why: str) -> None:
    """Move this run from its timed-out pause back to Running, so that it can end as Refused (D1) like any other
    refusal: otherwise the server answers the run's final state with its own Failed "The flow was paused and never
    resumed." (prefect-notes §9), which would look like a breakage. Never raises (then the server's Failed stays)."""
    from prefect.states import Running

    if runtime_flow_run.id is None:
        return
    try:
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(runtime_flow_run.id, Running(message=f"{why}: ending as Refused"), force=True)
    except Exception as exc:
        get_run_logger().warning("could not leave the timed-out pause (%s); the run ends as Failed", exc)


def confirm_plan_unchanged(action: str, approved: ScalePlan, current: ScalePlan) -> None:
    """After the approval: refuse unless the plan made again from a fresh read of the cluster is the approved one.

    Raises: PlanRefused saying what changed (nothing was changed on the cluster)."""
    from metascale.plan import plan_differences

    changes = plan_differences(approved, current)
    if not changes:
        get_run_logger().info("re-read the cluster after the approval: the plan is unchanged")
        return
    reason = (f"the cluster changed while waiting for approval, so the approved plan is not the one that would run: "
              f"{'; '.join(changes)}; nothing was changed: review the new plan and rerun")
    get_run_logger().error("%s", reason)
    raise PlanRefused(action, reason)


def approve_and_replan(
    action: str, plan: ScalePlan, lock: ClusterLock,
    make_plan: Callable[[Inventory], tuple[ScalePlan, ClusterStatus, dict[str, QueryFacts]]], *,
    inventory: str, cluster_block: str, timeout_s: int, maintenance_window: str, override_window: bool,
) -> tuple[Inventory, ClusterStatus, dict[str, QueryFacts]]:
    """The approval gate of a change: wait for the operator, check the window again, re-read the inventory and the
    cluster, plan again with ``make_plan`` and refuse unless that is the approved plan.

    Returns the re-read (inventory, status, query facts) the change then runs on. Raises: PlanRefused (nothing
    was changed)."""
    request_approval(action, plan, timeout_s, maintenance_window=maintenance_window,
                     override_window=override_window)
    check_maintenance_window(action, maintenance_window, override_window, after_approval=True)
    cluster, _ = resolve_cluster(inventory, cluster_block)
    try:
        current, before, query_facts = make_plan(cluster)
    except PlanRefused as exc:
        raise PlanRefused(action, f"the cluster changed while waiting for approval: {exc.reason}") from None
    confirm_plan_unchanged(action, plan, note_interrupted_change(current, lock))
    return cluster, before, query_facts


MakePlan = Callable[[Inventory], tuple[ScalePlan, ClusterStatus, dict[str, QueryFacts]]]
Apply = Callable[[Inventory, ScalePlan, "rb.Progress", dict[str, QueryFacts]], Inventory]
Undo = Callable[[Inventory, ScalePlan, "rb.Progress"], None]


def run_change(action: str, make_plan: MakePlan, apply: Apply, *, inventory: str, cluster_block: str, dry_run: bool,
               require_approval: bool, approval_timeout_s: int, maintenance_window: str, override_window: bool,
               undo: Undo | None = None) -> ScaleOutcome:
    """The shape every change-making flow shares, in order: a dry run only plans (``plan_only``, no lock); else the
    cluster's SSH pool and lock; the inventory read again under the lock; ``make_plan`` (read-only); the plan
    published; nothing to do stops; fault tolerance and the maintenance window; the approval gate (plan made again and compared); then ``apply`` under the change guard,
    and on failure ``undo`` (what the cluster never took) and the diagnostics; the before/after status table.

    Returns the run's ScaleOutcome. Raises: PlanRefused (nothing changed), ScaleFailed (state and next step)."""
    from tasks.pool import run_pool

    cluster, key_text = resolve_cluster(inventory, cluster_block)
    tag_flow_run(cluster.name)
    record = current_change()
    record.cluster = cluster.name
    if dry_run:
        with run_pool(cluster, key_text):
            return plan_only(cluster, make_plan)
    with run_pool(cluster, key_text), cluster_lock(cluster.name, action) as lock:
        cluster, _ = resolve_cluster(inventory, cluster_block)  # re-read: the previous holder may have changed it
        plan, before, query_facts = make_plan(cluster)
        plan = note_interrupted_change(plan, lock)  # the last change on this cluster did not finish
        publish_plan(plan)
        if plan.nothing_to_do:
            return ScaleOutcome.planned(plan, plan.summary(), dry_run=False)
        refuse_without_fault_tolerance(action, plan)
        check_maintenance_window(action, maintenance_window, override_window)
        if require_approval:
            cluster, before, query_facts = approve_and_replan(
                action, plan, lock, make_plan, inventory=inventory, cluster_block=cluster_block,
                timeout_s=approval_timeout_s, maintenance_window=maintenance_window, override_window=override_window)
        with change_guard(lock) as guard:  # SIGTERM / a lost lock: stop at the next step boundary
            progress = GuardedProgress.under(guard)
            record.progress = progress
            try:
                final = apply(cluster, plan, progress, query_facts)
            except Exception as exc:
                if undo is not None:
                    undo(cluster, plan, progress)
                fail_with_diagnostics(action, cluster, plan, progress, exc)
        after = rb.read_cluster_status(final)
        record.voters_after = list(after.voter_ids or [])
        publish_status_table(cluster.name, status_rows(before, after), f"{action}: {plan.summary()}")
        return ScaleOutcome.applied(plan, progress, after)


def refuse_without_fault_tolerance(action: str, plan: ScalePlan) -> None:
    """Refuse a plan that leaves 1 or 2 voters unless the operator accepted it (accept_no_fault_tolerance)."""
    reason = plan.fault_tolerance_refusal()
    if reason:
        raise PlanRefused(action, reason)


class ScaleFailed(Exception):
    """A scale run failed after it started changing the cluster; the message says the state and what to do next."""

    def __init__(self, message: str) -> None:
        message = redact(message)  # it quotes the failed step's error and the cluster state
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
    state: str = Field(default="Completed", description="how the run ended: Completed, Refused or Failed")
    failed_step: str = Field(default="", description="the step that was running when the run failed")

    @field_validator("message", "plan_markdown", "changed_steps", "skipped_steps", "failed_step")
    @classmethod
    def _no_secret_values(cls, value: Any) -> Any:
        return redact_any(value)  # the flow's return value is stored and shown by the API and the CLI

    def to_artifact_markdown(self) -> str:
        """The `outcome-<cluster>` artifact: a few lines for a person, then the whole outcome as a fenced JSON block
        (always the last block: ``from_artifact_markdown`` reads it back)."""
        steps = "".join(f"\n  * {step}" for step in self.changed_steps) or " none"
        failed = f"* failed at step: {self.failed_step}\n" if self.failed_step else ""
        return (f"# Outcome: {self.action} of cluster `{self.cluster}`: {self.state}\n\n{self.message}\n\n"
                f"* voters before: {self.voters_before}; after: {self.voters_after}\n{failed}"
                f"* steps that changed something:{steps}\n\n```json\n{self.model_dump_json(indent=2)}\n```\n")

    @classmethod
    def from_artifact_markdown(cls, markdown: str) -> ScaleOutcome:
        """Read an `outcome-<cluster>` artifact's markdown back (e.g. the `data` of POST /api/artifacts/filter).
        Raises ValueError when it holds no outcome."""
        start = markdown.rfind("```json\n")
        end = markdown.rfind("\n```")
        if start < 0 or end <= start:
            raise ValueError("the markdown holds no ```json block with an outcome")
        return cls.model_validate_json(markdown[start + len("```json\n"):end])

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


# ------------------------------------------------------------------------- how a change run ends (D1, D3)

@dataclass
class ChangeRecord:
    """What the current change run knows so far (filled in as it goes), for its outcome artifact when it ends early:
    refused or failed."""

    action: str
    cluster: str
    plan_markdown: str = ""
    plan_url: str = ""
    voters_before: list[int] = field(default_factory=list)
    voters_after: list[int] | None = None
    progress: rb.Progress | None = None

    def note_plan(self, plan: Any, markdown: str, plan_url: str) -> None:
        """Remember the published plan (a ScalePlan or a SyncPlan)."""
        self.cluster = plan.cluster
        self.plan_markdown, self.plan_url = markdown, plan_url
        voters = getattr(plan, "voters_before", None)
        self.voters_before = list(voters if voters is not None else getattr(plan, "voters", ()))

    def outcome(self, state: str, message: str) -> ScaleOutcome:
        """The ScaleOutcome of a run that ended ``state`` (Refused or Failed) with ``message``."""
        progress = self.progress
        changed = [f"{r.step} on {r.host}: {r.detail}" for r in progress.changed] if progress else []
        after = self.voters_after
        if after is None:
            after = list(self.voters_before) if not changed else []  # nothing changed, or unknown
        return ScaleOutcome(action=self.action, cluster=self.cluster, changed=bool(changed), message=message,
                            voters_before=list(self.voters_before), voters_after=after, changed_steps=changed,
                            skipped_steps=list(progress.skipped) if progress else [],
                            plan_markdown=self.plan_markdown, state=state,
                            failed_step=progress.step if progress is not None and state == "Failed" else "")


_CURRENT_CHANGE: ContextVar[ChangeRecord | None] = ContextVar("metascale_current_change", default=None)


def current_change() -> ChangeRecord:
    """The ChangeRecord of the change run in progress (a throwaway one outside a `change_flow`)."""
    record = _CURRENT_CHANGE.get()
    return record if record is not None else ChangeRecord(action="", cluster="")


def refused_state(refusal: PlanRefused) -> State:
    """The final state of a refused run (D1): FAILED-type, named "Refused", the one-line reason as its message and the
    PlanRefused as its result (so calling the flow still raises it; ``state.result(raise_on_failure=False)`` returns
    it). Its event is `prefect.flow-run.Refused`, which the failure notification does not match."""
    return Failed(name="Refused", message=" ".join(str(refusal).split()), data=refusal)


def publish_outcome(outcome: ScaleOutcome) -> None:
    """Publish ``outcome`` as the markdown artifact `outcome-<cluster>` of this run (D3). Never raises: the run's
    own result matters more."""
    try:
        create_markdown_artifact(key=f"outcome-{outcome.cluster}", markdown=redact(outcome.to_artifact_markdown()),
                                 description=redact(f"{outcome.action}: {outcome.state}: {outcome.message}")[:500])
    except Exception as exc:
        get_run_logger().warning("could not publish the outcome artifact: %s", exc)


FlowFunction = TypeVar("FlowFunction", bound=Callable[..., Any])


def change_flow(action: str) -> Callable[[FlowFunction], FlowFunction]:
    """Decorate a change flow's function (under ``@flow``): the run keeps a ChangeRecord, ends a PlanRefused in the
    state "Refused" (``refused_state``) instead of Failed, and publishes its `outcome-<cluster>` artifact however it
    ends (Completed, Refused, Failed; a crash or cancellation is the hooks' part: flows/hooks.py)."""
    def decorate(fn: FlowFunction) -> FlowFunction:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            params = signature.bind_partial(*args, **kwargs).arguments
            record = ChangeRecord(action=action, cluster=cluster_name_for_run_name(
                str(params.get("inventory") or ""), str(params.get("cluster_block") or "")))
            token = _CURRENT_CHANGE.set(record)
            try:
                outcome = fn(*args, **kwargs)
            except PlanRefused as refusal:
                get_run_logger().error("%s", refusal)
                publish_outcome(record.outcome("Refused", str(refusal)))
                return refused_state(refusal)
            except Exception as error:
                publish_outcome(record.outcome("Failed", str(error)))
                raise
            finally:
                _CURRENT_CHANGE.reset(token)
            if isinstance(outcome, ScaleOutcome):
                publish_outcome(outcome)
            return outcome

        return run  # type: ignore[return-value]

    return decorate


def ssh_silent_hosts(status: ClusterStatus) -> set[str]:
    """The hosts whose SSH connection failed in ``status`` (HostUnreachable; not a refused key or login, which is a
    host that answered). Planning does not dial them again: each try of a powered-off host waits out the whole
    connect timeout, and the answer would be the same."""
    return {p.host for p in status.probes if p.status is None and p.error_type == "HostUnreachable"}


def read_query_facts(cluster: Inventory) -> dict[str, QueryFacts]:
    """Read every query node's config facts in parallel (auto sync, health address): host -> QueryFacts."""
    queries = list(cluster.query_nodes)
    if not queries:
        return {}
    return {f.host: f for f in rb.check_query_node.map(unmapped(cluster), queries).result()}


def restart_query_nodes_one_at_a_time(cluster: Inventory, plan: ScalePlan, progress: rb.Progress,
                                      deadline_s: float, query_facts: dict[str, QueryFacts]) -> None:
    """restart_query_nodes: refuse when no meta endpoint of the new list answers; else restart each query node in
    turn (`systemctl restart`, never reload), each healthy before the next."""
    progress.step = "check a meta endpoint answers before restarting query nodes"
    status = rb.read_cluster_status(cluster, settle_s=0)
    rb.check_query_endpoints_answer(cluster, status, list(plan.endpoints_after))
    for query in cluster.query_nodes:
        facts = query_facts.get(query.host)
        health = facts.health_address if facts and not facts.read_error else QueryFacts(host=query.host).health_address
        progress.step = f"restart the query node {query.host}"
        progress.record([progress.verify(f"restart the query node {query.host} and wait until it is healthy",
                                         lambda q=query, h=health: rb.restart_query_node(cluster, q, h, deadline_s))])


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
        status = rb.read_cluster_status(cluster, nodes)
        state = status.summary()
        current_change().voters_after = list(status.voter_ids) if status.voter_ids is not None else None
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

