"""One Prefect task per runbook step (docs/ARCHITECTURE.md, "Runbook step -> code"), named as the runbook reads.

Tasks take models (Inventory, MetaNode, QueryNode), borrow the run's SSH connections (tasks.pool), check the
current state first and do nothing when the step is already done, log what they did and return a typed result.
Mutating tasks never retry (rerun the flow: every step is idempotent); verification tasks poll with tenacity
(short first wait that grows, an explicit deadline, retry only while "not there yet", every attempt logged).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import TypeVar

from prefect import get_run_logger, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError
from pydantic import BaseModel, Field

from metascale import plan as plan_module
from metascale import nodeinfo, preview, steps, waits
from metascale.errors import (
    ClusterNotConverged,
    ConfigEditError,
    HostKeyRejected,
    HostUnreachable,
    MetaScaleError,
    MetaUnreachable,
    PlanRefused,
    SshAuthFailed,
)
from metascale.inventory import Inventory, MetaNode, QueryNode, write_inventory
from metascale.plan import FileChange, HostFacts, NewNodeSpec, QueryFacts, ScalePlan, removal_quorum_reason
from metascale.status import ClusterStatus
from metascale.status import read_cluster_status as core_read_cluster_status
from metascale.steps import StepResult
from tasks.pool import pool_for

T = TypeVar("T")
log = logging.getLogger(__name__)
PROBE_TIMEOUT_S = 8.0
SETTLE_S = 3.0


class Progress(BaseModel):
    """Where a run is (the step being carried out) and every StepResult so far; used in the final message."""

    step: str = "plan"
    results: list[StepResult] = Field(default_factory=list)
    skipped: list[str] = Field(default_factory=list)
    restored: list[str] = Field(default_factory=list, description="undone after a failure (the cluster never took it)")
    started: float = Field(default_factory=time.monotonic)
    waited_s: float = Field(default=0.0, description="seconds spent inside verify_* tasks (waiting on the cluster)")

    def verify(self, step: str, call: Callable[[], T]) -> T:
        """Run the verification ``call`` as step ``step``, adding its duration to ``waited_s``."""
        self.step = step
        began = time.monotonic()
        try:
            return call()
        finally:
            self.waited_s += time.monotonic() - began

    def record(self, results: list[StepResult]) -> None:
        """Append ``results``."""
        self.results.extend(results)

    @property
    def changed(self) -> list[StepResult]:
        """Return the results that changed something."""
        return [r for r in self.results if r.changed]


def _logger() -> logging.Logger | logging.LoggerAdapter:  # type: ignore[type-arg]
    """Return the run logger inside a flow/task run, else this module's logger (``task.fn`` in tests)."""
    try:
        return get_run_logger()
    except MissingContextError:
        return log


def _log(result: StepResult) -> StepResult:
    """Log ``result`` to the run logger and return it."""
    _logger().info("%s on %s: %s", result.step, result.host, result.detail)
    return result


# ---------------------------------------------------------------------------------------------------- reading facts
def _status_nodes(inventory: Inventory, nodes: list[MetaNode] | None) -> list[MetaNode]:
    return list(nodes) if nodes is not None else list(inventory.meta_nodes)


@task(name="read-cluster-status", task_run_name="read cluster status of {inventory.name}", cache_policy=NO_CACHE,
      retries=0)
def read_cluster_status(inventory: Inventory, nodes: list[MetaNode] | None = None,
                        settle_s: float = SETTLE_S) -> ClusterStatus:
    """Ask every meta node (or ``nodes``) for `databend-metactl status`; record who answers. Read-only.

    Right after a membership change a follower can lag for a moment; when the answering nodes disagree (or no
    leader is agreed), the read is repeated for up to ``settle_s`` seconds and the last snapshot is returned.
    """
    read = _status_reader(inventory, nodes)
    try:
        status = waits.wait_until(read, lambda s: s.leader_id is not None and s.agrees_on_membership(),
                                  expected="answering nodes agree on leader and voters", timeout_s=settle_s)
    except ClusterNotConverged:
        status = read()
    _logger().info("%s", status.summary())
    return status


@task(name="check-host-reachable", task_run_name="check SSH to {host}", cache_policy=NO_CACHE, retries=0)
def check_host_reachable(inventory: Inventory, host: str) -> bool:
    """Return True when ``host`` accepts our SSH key and runs a command, False when it does not answer. Read-only.

    Raises: PlanRefused when the host answers but its host key or our login is refused: that host is alive and
    must not be mistaken for a dead one (a forced removal would leave it running).
    """
    try:
        pool_for(inventory).remote(host).run(["true"], timeout_s=PROBE_TIMEOUT_S)
        return True
    except (HostKeyRejected, SshAuthFailed) as exc:
        raise PlanRefused("pre-flight", f"{exc}; fix known_hosts or the SSH key for {host} and rerun "
                                        "(the host answers, so it is not treated as dead)") from None
    except MetaScaleError as exc:
        _logger().warning("%s is not reachable over SSH: %s", host, exc)
        return False


def reachable_hosts(inventory: Inventory, hosts: list[str]) -> set[str]:
    """Return the subset of ``hosts`` reachable over SSH (checked in parallel)."""
    if not hosts:
        return set()
    futures = check_host_reachable.map(unmapped(inventory), hosts)
    return {h for h, ok in zip(hosts, futures.result(), strict=True) if ok}


@task(name="check-meta-versions", task_run_name="check the databend-meta versions", cache_policy=NO_CACHE,
      retries=0)
def check_meta_versions(inventory: Inventory, hosts: list[str]) -> dict[str, str | None]:
    """Read `databend-meta --cmd ver` on every host (in parallel) before planning; return host -> version (None:
    unreachable or no binary, which the pre-flight reports itself). Read-only.

    Every member's own meta config is read too (cached for the run): one that cannot be parsed is refused here,
    naming the host and the file, rather than making that node look dead to the planner.

    Raises: PlanRefused("databend-meta X on HOST is older than 1.2.612, the oldest metascale supports");
    ConfigEditError (a member's meta config is not one).
    """
    pool = pool_for(inventory)
    members = {n.host for n in inventory.meta_nodes}

    def one(host: str) -> str | None:
        try:
            if host in members:  # a member's own config gives every address and path: it must be readable
                nodeinfo.read_node_config(pool.remote(host), inventory)
            return nodeinfo.check_supported_version(pool.remote(host), PROBE_TIMEOUT_S)
        except (PlanRefused, ConfigEditError):
            raise
        except MetaScaleError as exc:
            _logger().warning("cannot read the databend-meta version on %s: %s", host, exc)
            return None

    with ThreadPoolExecutor(max_workers=max(1, min(16, len(hosts)))) as executor:
        versions = dict(zip(hosts, executor.map(one, hosts), strict=True))
    _logger().info("databend-meta versions: %s", ", ".join(f"{h} {v or '?'}" for h, v in versions.items()))
    return versions


@task(name="resolve-new-hosts", task_run_name="resolve the new hosts' addresses", cache_policy=NO_CACHE, retries=0)
def resolve_new_hosts(inventory: Inventory, specs: list[NewNodeSpec]) -> tuple[list[NewNodeSpec], list[str]]:
    """Resolve every new host given as a DNS name ONCE, on the first existing meta node that answers (`getent
    ahosts`: what the cluster will see), and return the specs with the IP as ``host`` plus one plan note per
    resolved name ("spare.example → 192.0.2.5"). IP literals are kept as they are. Read-only.

    Raises: PlanRefused when a name does not resolve, resolves to several addresses, or no meta node answers.
    """
    named = [s for s in specs if not nodeinfo.is_ip_literal(s.host)]
    if not named:
        return list(specs), []
    pool = pool_for(inventory)
    failures: list[str] = []
    for node in inventory.meta_nodes:
        try:
            remote = pool.remote(node)
            addresses = {s.host: nodeinfo.resolve_host_address(remote, s.host, PROBE_TIMEOUT_S) for s in named}
        except PlanRefused:
            raise
        except MetaScaleError as exc:
            failures.append(f"{node.host}: {exc}")
            continue
        notes = [f"{name} → {ip} (resolved once on {node.host}; the node's config, the inventory and SSH use "
                 f"the IP)" for name, ip in addresses.items()]
        for note in notes:
            _logger().info("%s", note)
        return [s.model_copy(update={"host": addresses.get(s.host, s.host)}) for s in specs], notes
    raise PlanRefused("scale-up", f"cannot resolve {[s.host for s in named]}: no meta node answers ("
                                  + "; ".join(failures) + ")")


@task(name="check-new-host", task_run_name="pre-flight checks on {spec.host}", cache_policy=NO_CACHE, retries=0)
def check_new_host(inventory: Inventory, spec: NewNodeSpec) -> HostFacts:
    """Return what the new host offers: SSH, the databend-meta package, busy ports, the service state. Read-only."""
    try:
        remote = pool_for(inventory).remote(spec.host)
    except MetaScaleError as exc:
        facts = HostFacts(host=spec.host, reachable=False, reason=str(exc))
    else:
        facts = steps.read_new_host_facts(remote, inventory, spec, PROBE_TIMEOUT_S)
    if facts.reachable:
        _logger().info("%s: package=%s listening=%s meta service active=%s enabled=%s raft dir %s %s%s", spec.host,
                       facts.has_package,
                       sorted(set(facts.busy_ports) & {spec.raft_port, spec.grpc_port, spec.admin_port}),
                       facts.meta_active, facts.meta_enabled, facts.raft_dir,
                       "holds data" if facts.raft_dir_in_use else "is empty",
                       f"; running as meta-{facts.own_node_id} with voters {list(facts.own_voters)}"
                       if facts.own_node_id is not None else
                       (f"; status unreadable: {facts.status_error}" if facts.status_error else ""))
    else:
        _logger().warning("%s is not reachable over SSH: %s", spec.host, facts.reason)
    return facts


@task(name="preview-file-changes", task_run_name="compute file diffs for the plan", cache_policy=NO_CACHE,
      retries=0)
def preview_file_changes(inventory: Inventory, plan: ScalePlan) -> list[FileChange]:
    """Read every config file the plan touches and return the unified diff of each (metascale.preview). Read-only.

    Raises: PlanRefused when a file cannot be read or is not valid (bad TOML, no [raft_config] / [meta]).
    """
    pool = pool_for(inventory)
    return preview.preview_file_changes(inventory, plan, lambda host, path: pool.remote(host).read_text(path),
                                        when=datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S"))


# ------------------------------------------------------------------------------------------------ scale-up steps
@task(name="copy-config-from-existing-node", task_run_name="copy the meta config from {source.host}",
      cache_policy=NO_CACHE, retries=0)
def copy_config_from_existing_node(inventory: Inventory, source: MetaNode) -> str:
    """Runbook scale up 1: read the config of an existing node (the copy is written by write_new_node_config)."""
    text = steps.copy_config_from_existing_node(pool_for(inventory).remote(source), inventory, source)
    _logger().info("copied %s from meta-%d (%s), %d bytes", inventory.paths.meta_config, source.node_id,
                          source.host, len(text))
    return text


@task(name="write-new-node-config", task_run_name="write the meta config of meta-{node.node_id} on {node.host}",
      cache_policy=NO_CACHE, retries=0)
def write_new_node_config(inventory: Inventory, node: MetaNode, source_text: str, join: list[str]) -> StepResult:
    """Runbook scale up 2: the copied config with this node's id, advertise host, `single` off and `join`."""
    return _log(steps.write_new_node_config(pool_for(inventory).remote(node), inventory, node, source_text, join))


@task(name="start-meta-service", task_run_name="start databend-meta on {node.host}", cache_policy=NO_CACHE,
      retries=0)
def start_meta_service(inventory: Inventory, node: MetaNode) -> StepResult:
    """Runbook scale up 3: enable and start databend-meta. Idempotent."""
    return _log(steps.start_meta_service(pool_for(inventory).remote(node), inventory))


def _attempt_logger(what: str) -> Callable[[int, object], None]:
    """Return an ``on_attempt`` callback that logs each poll of a wait to the run logger."""
    logger = _logger()
    started = time.monotonic()

    def log_attempt(attempt: int, seen: object) -> None:
        text = seen.summary() if isinstance(seen, ClusterStatus) else str(seen)
        logger.info("%s: attempt %d after %.2f s: %s", what, attempt, time.monotonic() - started, text)

    return log_attempt


def _wait_until(what: str, read: Callable[[], ClusterStatus], not_yet: Callable[[ClusterStatus], str | None],
                deadline_s: float) -> ClusterStatus:
    """Poll ``read`` (metascale.waits: short first wait that grows) until ``not_yet`` is None; log each attempt.

    Raises: ClusterNotConverged with the last observation when ``deadline_s`` passes.
    """
    started = time.monotonic()
    status = waits.wait_until(read, lambda s: not_yet(s) is None, expected=what, timeout_s=deadline_s,
                              describe=lambda s: f"{not_yet(s)}; {s.summary()}", on_attempt=_attempt_logger(what))
    _logger().info("%s: done after %.2f s", what, time.monotonic() - started)
    return status


def _status_reader(inventory: Inventory, nodes: list[MetaNode] | None = None) -> Callable[[], ClusterStatus]:
    asked = _status_nodes(inventory, nodes)

    def read() -> ClusterStatus:
        status = core_read_cluster_status(pool_for(inventory), inventory, PROBE_TIMEOUT_S, nodes=asked)
        for probe in status.probes:
            if probe.note:  # set once per host per run (the connection remembers it was said)
                _logger().info("%s", probe.note)
        return status

    return read


@task(name="verify-node-joined", task_run_name="wait until meta-{node.node_id} is a voter and caught up",
      cache_policy=NO_CACHE, retries=0)
def verify_node_joined(inventory: Inventory, node: MetaNode, deadline_s: float) -> ClusterStatus:
    """Runbook scale up 4: wait until the leader lists ``node`` as a voter, the node answers, and it has caught up
    (the leader's replication of it reaches the leader's applied index at the time of the join)."""
    nodes = [*[n for n in inventory.meta_nodes if n.node_id != node.node_id], node]

    def on_voter(target: int) -> None:
        _logger().info("%s; target index %d", plan_module.catch_up_note(node.node_id), target)

    not_yet = waits.joined_and_caught_up(node.node_id, on_voter)
    return _wait_until(f"meta-{node.node_id} joins as a voter and catches up", _status_reader(inventory, nodes),
                       not_yet, deadline_s)


@task(name="reset-new-node-raft-dir", task_run_name="reset the raft dir of new host {node.host}",
      cache_policy=NO_CACHE, retries=0)
def reset_new_node_raft_dir(inventory: Inventory, node: MetaNode, raft_dir: str) -> StepResult:
    """reset_new_node: stop databend-meta on a new host that is a one-node cluster of its own and move its raft dir
    aside (`<raft_dir>.reset-<ts>`). Checks again first; never touches a member of a multi-node cluster."""
    return _log(steps.reset_new_node_raft_dir(pool_for(inventory).remote(node), inventory, raft_dir))


@task(name="update-join-on-existing-nodes", task_run_name="set join on meta-{node.node_id} ({node.host})",
      cache_policy=NO_CACHE, retries=0)
def update_join_on_existing_nodes(inventory: Inventory, node: MetaNode, join_all: list[str]) -> StepResult:
    """Runbook scale up 5 / scale down 8: `[raft_config].join` = every meta node (not itself); `single` off."""
    return _log(steps.update_join(pool_for(inventory).remote(node), inventory, node, join_all))


@task(name="update-query-meta-endpoints", task_run_name="set meta endpoints on {query.host}",
      cache_policy=NO_CACHE, retries=0)
def update_query_meta_endpoints(inventory: Inventory, query: QueryNode, endpoints: list[str]) -> StepResult:
    """Runbook scale up 6 / scale down 9: `[meta].endpoints` = the meta nodes' gRPC addresses."""
    return _log(steps.update_query_meta_endpoints(pool_for(inventory).remote(query), inventory, query, endpoints))


@task(name="check-query-node", task_run_name="read the query config on {query.host}", cache_policy=NO_CACHE,
      retries=0)
def check_query_node(inventory: Inventory, query: QueryNode) -> QueryFacts:
    """Read a query node's auto_sync_interval, endpoints and health address (for the plan's notes). Read-only."""
    try:
        facts = steps.read_query_node_facts(pool_for(inventory).remote(query), inventory, query, PROBE_TIMEOUT_S)
    except MetaScaleError as exc:
        facts = QueryFacts(host=query.host, read_error=str(exc))
    _logger().info("query node %s: auto_sync_interval=%s health %s%s", query.host, facts.auto_sync_interval,
                   facts.health_address, f"; config unreadable: {facts.read_error}" if facts.read_error else "")
    return facts


@task(name="check-query-endpoints-answer", task_run_name="check a meta endpoint answers before query restarts",
      cache_policy=NO_CACHE, retries=0)
def check_query_endpoints_answer(inventory: Inventory, status: ClusterStatus, endpoints: list[str]) -> None:
    """Refuse to start restarting query nodes when no meta node of their new `[meta] endpoints` answers in
    ``status`` (a restarted query node could not connect). Read-only. Raises: PlanRefused."""
    by_id = {n.node_id: n.grpc_addr for n in inventory.meta_nodes}
    answering = {by_id[i] for i in status.answering_ids if i in by_id}
    reason = plan_module.query_restart_blocked_reason(endpoints, answering)
    if reason:
        raise PlanRefused("restart query nodes", reason)
    _logger().info("meta endpoints answering for the query restarts: %s", sorted(answering & set(endpoints)))


@task(name="restart-query-node", task_run_name="restart databend-query on {query.host}", cache_policy=NO_CACHE,
      retries=0)
def restart_query_node(inventory: Inventory, query: QueryNode, health_address: str, deadline_s: float) -> StepResult:
    """Scale up 6 / scale down 9, continued: `systemctl restart databend-query` (never reload: SIGHUP stops it),
    then wait until the service is active and `GET /v1/health` answers. Raises ClusterNotConverged at the deadline."""
    remote = pool_for(inventory).remote(query)
    result = _log(steps.restart_query_node(remote, inventory, query))
    what = f"databend-query on {query.host} is healthy"
    started = time.monotonic()
    waits.wait_until(lambda: steps.query_node_unhealthy_reason(remote, inventory, health_address),
                     lambda reason: reason is None, expected=what, timeout_s=deadline_s,
                     describe=lambda reason: str(reason), on_attempt=_attempt_logger(what))
    _logger().info("%s: after %.2f s", what, time.monotonic() - started)
    return result


# ---------------------------------------------------------------------------------------------- scale-down steps
@task(name="check-leader", task_run_name="check the leader of {inventory.name}", cache_policy=NO_CACHE,
      retries=2, retry_delay_seconds=[1, 3])
def check_leader(inventory: Inventory, nodes: list[MetaNode] | None = None) -> int | None:
    """Runbook scale down 1: return the leader id a majority agrees on (None when there is none). Read-only."""
    status = _status_reader(inventory, nodes)()
    _logger().info("leader of %s: %s", inventory.name, status.leader_id)
    return status.leader_id


@task(name="transfer-leadership", task_run_name="move leadership off meta-{leader.node_id} to meta-{target}",
      cache_policy=NO_CACHE, retries=0)
def transfer_leadership(inventory: Inventory, leader: MetaNode, target: int) -> StepResult:
    """Runbook scale down 2: `databend-metactl transfer-leader --to <target>` on the leader's own admin API."""
    return _log(steps.transfer_leadership(pool_for(inventory).remote(leader), leader, target, inventory=inventory))


@task(name="verify-leadership-moved", task_run_name="wait until meta-{node_id} is no longer the leader",
      cache_policy=NO_CACHE, retries=0)
def verify_leadership_moved(inventory: Inventory, node_id: int, deadline_s: float) -> int:
    """Runbook scale down 3: wait until a majority agrees on a leader other than ``node_id``; return it."""

    def not_yet(status: ClusterStatus) -> str | None:
        if status.leader_id is None:
            return status.unhealthy_reason() or "no leader"
        return f"meta-{node_id} is still the leader" if status.leader_id == node_id else None

    status = _wait_until(f"leadership moves off meta-{node_id}", _status_reader(inventory), not_yet, deadline_s)
    return status.leader_id  # type: ignore[return-value]


@task(name="check-quorum-before-leave", task_run_name="re-check quorum before meta-{node_id} leaves",
      cache_policy=NO_CACHE, retries=0)
def check_quorum_before_leave(inventory: Inventory, node_id: int, voters_after: list[int],
                              host_dead: bool = False, action: str = "scale-down") -> None:
    """Read the cluster again right before the leave: if a remaining voter died since the plan, the leave would
    hang (and could still go through later); refuse instead. ``host_dead``: the leaving node's host is not asked
    (it did not answer SSH at plan time; asking again only waits out the connect timeout). Read-only.
    Raises: PlanRefused."""
    nodes = [n for n in inventory.meta_nodes if n.node_id != node_id] if host_dead else None
    view = preview.view_of_cluster(read_cluster_status.fn(inventory, nodes, settle_s=0))
    reason = removal_quorum_reason(view, node_id, set(voters_after))
    if reason:
        raise PlanRefused(action, f"the cluster changed since the plan: {reason}")
    _logger().info("voters %s keep a live majority without meta-%d (answering: %s)", voters_after, node_id,
                   sorted(view.answering))


@task(name="leave-cluster", task_run_name="remove meta-{node_id} via {via}", cache_policy=NO_CACHE, retries=0)
def leave_cluster(inventory: Inventory, node_id: int, via: list[str], timeout_s: float) -> StepResult:
    """Runbook scale down 4: `databend-meta --leave-id N --leave-via A ...`, run on a remaining node.

    A no-op when that node no longer lists ``node_id`` as a member. Raises RemoteTimeout after ``timeout_s``
    (a leave that cannot reach quorum hangs).
    """
    by_addr = {n.raft_addr: n for n in inventory.meta_nodes}
    runners = [by_addr[a] for a in via if a in by_addr]
    if not runners:
        raise PlanRefused("scale-down", f"none of the leave-via addresses {via} is a meta node of the inventory")
    failures: list[str] = []
    for runner in runners:  # run it on the first remaining node that answers (the leader may have crashed)
        try:
            return _log(steps.leave_cluster(pool_for(inventory).remote(runner), node_id, via, timeout_s,
                                            probe=runner, inventory=inventory))
        except (HostUnreachable, MetaUnreachable) as exc:
            if isinstance(exc, (HostKeyRejected, SshAuthFailed)):
                raise
            _logger().warning("cannot run the leave on meta-%d (%s): %s; trying the next node", runner.node_id,
                              runner.host, exc)
            failures.append(str(exc))
    raise PlanRefused("scale-down", f"no remaining node could run the leave of meta-{node_id}: "
                                    + "; ".join(failures))


@task(name="verify-node-removed", task_run_name="wait until meta-{node_id} is removed", cache_policy=NO_CACHE,
      retries=0)
def verify_node_removed(inventory: Inventory, node_id: int, voters_after: list[int], deadline_s: float) -> None:
    """Runbook scale down 5: wait until voters are ``voters_after`` and no node lists ``node_id`` as a member."""
    rest = [n for n in inventory.meta_nodes if n.node_id != node_id]

    def not_yet(status: ClusterStatus) -> str | None:
        if status.leader_id is None:
            return status.unhealthy_reason() or "no leader"
        if status.voter_ids != sorted(voters_after):
            return f"voters are {status.voter_ids}, expected {sorted(voters_after)}"
        return f"meta-{node_id} is still a learner" if status.is_member(node_id) else None

    _wait_until(f"meta-{node_id} is removed", _status_reader(inventory, rest), not_yet, deadline_s)


@task(name="stop-meta-service", task_run_name="stop databend-meta on {node.host}", cache_policy=NO_CACHE, retries=0)
def stop_meta_service(inventory: Inventory, node: MetaNode) -> StepResult:
    """Runbook scale down 6: stop AND disable databend-meta (so a reboot does not start it). Idempotent."""
    return _log(steps.stop_meta_service(pool_for(inventory).remote(node), inventory, disable=True))


@task(name="retire-raft-dir", task_run_name="move the raft dir of meta-{node.node_id} aside", cache_policy=NO_CACHE,
      retries=0)
def retire_raft_dir(inventory: Inventory, node: MetaNode) -> StepResult:
    """Move the removed node's raft dir aside so it can never come back with the old membership. Idempotent."""
    return _log(steps.retire_raft_dir(pool_for(inventory).remote(node), inventory))


@task(name="disarm-removed-node", task_run_name="empty join on removed meta-{node.node_id}", cache_policy=NO_CACHE,
      retries=0)
def disarm_removed_node(inventory: Inventory, node: MetaNode) -> StepResult:
    """Empty the removed node's `join` (single off) so databend-meta can never start there again. Idempotent."""
    return _log(steps.disarm_removed_node_config(pool_for(inventory).remote(node), inventory, node))


@task(name="verify-cluster-stable", task_run_name="wait until voters are {voters}", cache_policy=NO_CACHE, retries=0)
def verify_cluster_stable(inventory: Inventory, nodes: list[MetaNode], voters: list[int], deadline_s: float,
                          already_silent: list[int] | None = None) -> ClusterStatus:
    """Runbook scale down 7: wait until ``nodes`` agree on a leader and exactly ``voters``, all answering except
    ``already_silent`` (voters that did not answer before this run started: they are not this run's doing)."""
    tolerated = set(already_silent or [])

    def not_yet(status: ClusterStatus) -> str | None:
        reason = status.stable_reason(voters)
        if reason is None:
            return None
        silent = set(voters) - set(status.answering_ids)
        if silent and silent <= tolerated and status.leader_id is not None and status.voter_ids == sorted(voters):
            return None if status.agrees_on_membership() else reason
        return reason

    return _wait_until(f"cluster stable with voters {sorted(voters)}", _status_reader(inventory, nodes), not_yet,
                       deadline_s)


# ---------------------------------------------------------------------------------------- diagnostics, inventory
@task(name="collect-diagnostics", task_run_name="collect diagnostics from {host}", cache_policy=NO_CACHE, retries=0)
def collect_diagnostics(inventory: Inventory, host: str) -> str:
    """Troubleshooting: service status, journal and log tail from ``host``, as markdown. Never raises."""
    try:
        return steps.collect_diagnostics(pool_for(inventory).remote(host), inventory)
    except MetaScaleError as exc:
        return f"# diagnostics for {host}\nunreachable or failed: {exc}\n"


@task(name="record-inventory", task_run_name="record the inventory of {inventory.name}", cache_policy=NO_CACHE,
      retries=0)
def record_inventory(inventory: Inventory, inventory_path: str, cluster_block: str) -> StepResult:
    """Write ``inventory`` back where it came from: the TOML file (atomically, with a backup) or the block."""
    if cluster_block:
        from tasks.cluster_block import load_cluster, save_cluster_block

        current, _ = load_cluster(cluster_block=cluster_block)
        if current == inventory:
            return _log(StepResult(step="record-inventory", host="prefect", changed=False,
                                   detail=f"block {cluster_block} already lists meta {inventory.meta_ids}"))
        save_cluster_block(cluster_block, inventory)
        return _log(StepResult(step="record-inventory", host="prefect", changed=True,
                               detail=f"block {cluster_block} now lists meta {inventory.meta_ids}"))
    backup = write_inventory(inventory, inventory_path)
    if backup is None:
        return _log(StepResult(step="record-inventory", host="localhost", changed=False,
                               detail=f"{inventory_path} already lists meta {inventory.meta_ids}"))
    return _log(StepResult(step="record-inventory", host="localhost", changed=True,
                           detail=f"{inventory_path} now lists meta {inventory.meta_ids} (backup {backup})",
                           backup_path=backup))


@task(name="restore-config-from-backup", task_run_name="restore {path} on {host} from its backup",
      cache_policy=NO_CACHE, retries=0)
def restore_config_from_backup(inventory: Inventory, host: str, path: str, backup_path: str) -> StepResult:
    """Put the backup ``backup_path`` back in place of ``path`` (atomically; the replaced text is backed up too)."""
    remote = pool_for(inventory).remote(host)
    wanted = remote.read_text(backup_path)
    current = remote.read_text(path)
    if current == wanted:
        return _log(StepResult(step="restore-config-from-backup", host=host, changed=False,
                               detail=f"{path} already equals {backup_path}"))
    remote.write_text_atomic(path, wanted)
    return _log(StepResult(step="restore-config-from-backup", host=host, changed=True,
                           detail=f"restored {path} from {backup_path}", backup_path=backup_path))


@task(name="stop-new-node", task_run_name="stop databend-meta on {node.host} (never joined)", cache_policy=NO_CACHE,
      retries=0)
def stop_new_node(inventory: Inventory, node: MetaNode, stop: bool = True, disable: bool = True) -> StepResult:
    """Stop and disable databend-meta on a new node that never became a voter (undo of start_meta_service);
    ``stop`` / ``disable`` False keep what was so before the run (a service that ran, or was enabled, then)."""
    return _log(steps.stop_meta_service(pool_for(inventory).remote(node), inventory, disable=disable, stop=stop))
