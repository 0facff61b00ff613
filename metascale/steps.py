"""One idempotent function per runbook step: read the fact, decide (pure), act, report a ``StepResult``.

A second run of any step with the same arguments changes nothing and says so (``changed=False``). With
``dry_run=True`` a step reads facts and reports what it would do (``changed=True`` and the diff) without acting.
Failures raise typed errors carrying host, command, exit code and stderr tail (see metascale.errors).
"""

from __future__ import annotations

import logging
import posixpath
import shlex
from collections.abc import Sequence
from datetime import datetime, timezone

from pydantic import BaseModel, ConfigDict

from metascale import config
from metascale.errors import ConfigEditError, MetaScaleError, PlanRefused, RemoteCommandError, RemoteTimeout
from metascale.inventory import Inventory, MetaNode, QueryNode
from metascale.plan import HostFacts, NewNodeSpec
from metascale.preview import listening_ports
from metascale.remote import Remote
from metascale.status import read_node_status

log = logging.getLogger(__name__)

LEAVE_HANGS_HINT = (
    "`databend-meta --leave-id` waits forever when the membership change cannot reach a quorum of both the old "
    "and the new voter set: check that a majority of the remaining voters is up"
)


class StepResult(BaseModel):
    """What one step did on one host: ``changed`` (or would change, in a dry run), a one-sentence ``detail``,
    the backup of a rewritten file and the unified diff of the change."""

    model_config = ConfigDict(frozen=True)

    step: str
    host: str
    changed: bool
    detail: str
    backup_path: str | None = None
    diff: str = ""
    dry_run: bool = False


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")


def _file_exists(remote: Remote, path: str) -> bool:
    return remote.run(["test", "-e", path], sudo=True, check=False).ok


def _rewrite_config(
    remote: Remote, step: str, path: str, current: str, wanted: str, dry_run: bool, what: str
) -> StepResult:
    """Shared tail of every config step: no-op when equal, diff only when dry, else atomic write with backup."""
    label = f"{remote.host}:{path}"
    if wanted == current:
        return StepResult(step=step, host=remote.host, changed=False, detail=f"{path} already has {what}")
    diff = config.unified_diff(current, wanted, label)
    if dry_run:
        return StepResult(step=step, host=remote.host, changed=True, detail=f"would set {what} in {path}",
                          diff=diff, dry_run=True)
    backup = remote.write_text_atomic(path, wanted)
    log.info("%s: wrote %s (%s); backup %s", remote.host, path, what, backup)
    return StepResult(step=step, host=remote.host, changed=True, detail=f"set {what} in {path}",
                      backup_path=backup, diff=diff)


def _reraise_with_host(exc: ConfigEditError, remote: Remote, path: str) -> ConfigEditError:
    return ConfigEditError(path, exc.reason, remote.host)


# ---- Scale up ---------------------------------------------------------------------------------------------------
META_BINARY = "/usr/bin/databend-meta"


def read_new_host_facts(remote: Remote, inventory: Inventory, spec: NewNodeSpec,
                        timeout_s: float = 8.0) -> HostFacts:
    """Pre-flight facts of a host about to become a meta node: SSH works, the package is installed, which TCP
    ports listen, whether databend-meta already runs. Read-only; an unreachable host is a fact, not an error."""
    try:
        has_package = remote.run(["test", "-x", META_BINARY], check=False, timeout_s=timeout_s).ok
        tcp = remote.run(["cat", "/proc/net/tcp", "/proc/net/tcp6"], check=False, timeout_s=timeout_s).stdout
        active = remote.run(["systemctl", "is-active", inventory.paths.meta_service], check=False,
                            timeout_s=timeout_s).stdout.strip()
    except MetaScaleError as exc:
        return HostFacts(host=spec.host, reachable=False, reason=str(exc))
    return HostFacts(host=spec.host, reachable=True, has_package=has_package,
                     busy_ports=tuple(sorted(listening_ports(tcp))), meta_active=active == "active")


def copy_config_from_existing_node(remote: Remote, inventory: Inventory, node: MetaNode) -> str:
    """Runbook scale-up 1: return the meta config text of the existing ``node`` (``remote`` is its host).

    Read-only. Raises: RemoteCommandError when unreadable; ConfigEditError when it is not a meta config.
    """
    path = inventory.paths.meta_config
    text = remote.read_text(path)
    try:
        config.read_node_id(text, path=path)
    except ConfigEditError as exc:
        raise _reraise_with_host(exc, remote, path) from None
    return text


def write_new_node_config(
    remote: Remote,
    inventory: Inventory,
    new_node: MetaNode,
    template_text: str,
    join: Sequence[str],
    dry_run: bool = False,
) -> StepResult:
    """Runbook scale-up 2: write the new node's config: the template with id, single off, join and advertise hosts.

    Idempotent: no write when the file already has that text. Side effects: creates the config directory if
    missing; backup of a replaced file. Raises: ConfigEditError (bad template), RemoteCommandError.
    """
    path = inventory.paths.meta_config
    try:
        wanted = config.set_node_identity(
            template_text, node_id=new_node.node_id, host=new_node.host, join=list(join),
            raft_port=new_node.raft_port, grpc_port=new_node.grpc_port, admin_port=new_node.admin_port, path=path,
        )
    except ConfigEditError as exc:
        raise _reraise_with_host(exc, remote, path) from None
    exists = _file_exists(remote, path)
    current = remote.read_text(path) if exists else ""
    if not exists and not dry_run:
        remote.run(["mkdir", "-p", posixpath.dirname(path)], sudo=True)
    what = f"id={new_node.node_id}, join={list(join)}, advertise host {new_node.host}"
    return _rewrite_config(remote, "write_new_node_config", path, current, wanted, dry_run, what)


def _unit_state(remote: Remote, unit: str) -> tuple[str, str]:
    """(ActiveState word from `systemctl is-active`, word from `systemctl is-enabled`)."""
    active = remote.run(["systemctl", "is-active", unit], sudo=True, check=False).stdout.strip() or "unknown"
    enabled = remote.run(["systemctl", "is-enabled", unit], sudo=True, check=False).stdout.strip() or "unknown"
    return active, enabled


def start_meta_service(remote: Remote, inventory: Inventory, dry_run: bool = False,
                       service: str | None = None) -> StepResult:
    """Runbook scale-up 3: enable and start the meta service unit. No-op when it is already active and enabled.

    Raises: RemoteCommandError when systemctl fails (e.g. the unit is missing) or the unit ends up ``failed``.
    """
    unit = service or inventory.paths.meta_service
    active, enabled = _unit_state(remote, unit)
    if active == "active" and enabled == "enabled":
        return StepResult(step="start_meta_service", host=remote.host, changed=False,
                          detail=f"{unit} is already active and enabled")
    actions = [a for a, needed in (("enable", enabled != "enabled"), ("start", active != "active")) if needed]
    if dry_run:
        return StepResult(step="start_meta_service", host=remote.host, changed=True, dry_run=True,
                          detail=f"would {' and '.join(actions)} {unit} (now {active}, {enabled})")
    for action in actions:
        remote.run(["systemctl", action, unit], sudo=True)
    after = remote.run(["systemctl", "is-active", unit], sudo=True, check=False).stdout.strip()
    if after == "failed":
        raise RemoteCommandError(remote.host, shlex.join(["systemctl", "start", unit]), 3,
                                 f"{unit} is failed right after start; see collect_diagnostics")
    return StepResult(step="start_meta_service", host=remote.host, changed=True,
                      detail=f"{' and '.join({'enable': 'enabled', 'start': 'started'}[a] for a in actions)} "
                             f"{unit} (now {after})")


def stop_meta_service(remote: Remote, inventory: Inventory, disable: bool = True, dry_run: bool = False,
                      service: str | None = None) -> StepResult:
    """Runbook scale-down 6: stop (and by default disable) the meta service unit. No-op when already so.

    Raises: RemoteCommandError when systemctl fails.
    """
    unit = service or inventory.paths.meta_service
    active, enabled = _unit_state(remote, unit)
    actions = []
    if active in ("active", "activating", "reloading", "deactivating"):
        actions.append("stop")
    if disable and enabled == "enabled":
        actions.append("disable")
    if not actions:
        return StepResult(step="stop_meta_service", host=remote.host, changed=False,
                          detail=f"{unit} is already {active}" + (f" and {enabled}" if disable else ""))
    if dry_run:
        return StepResult(step="stop_meta_service", host=remote.host, changed=True, dry_run=True,
                          detail=f"would {' and '.join(actions)} {unit} (now {active}, {enabled})")
    for action in actions:
        remote.run(["systemctl", action, unit], sudo=True)
    done = {"stop": "stopped", "disable": "disabled"}
    return StepResult(step="stop_meta_service", host=remote.host, changed=True,
                      detail=f"{' and '.join(done[a] for a in actions)} {unit}")


def retire_raft_dir(remote: Remote, inventory: Inventory, dry_run: bool = False) -> StepResult:
    """Move the raft dir aside to ``<raft_dir>.removed-<UTC ts>`` and leave an empty one (same owner/mode).

    A removed node restarted with its old raft data could re-join the old membership; this makes that
    impossible. No-op when the directory is missing or empty. Refuses while the meta service is active.
    Raises: PlanRefused (service running), RemoteCommandError.
    """
    raft_dir = inventory.paths.raft_dir.rstrip("/")
    listing = remote.run(["find", raft_dir, "-mindepth", "1", "-maxdepth", "1", "-print", "-quit"],
                         sudo=True, check=False)
    if not listing.ok or not listing.stdout.strip():
        why = "does not exist" if not listing.ok else "is already empty"
        return StepResult(step="retire_raft_dir", host=remote.host, changed=False, detail=f"{raft_dir} {why}")
    active, _ = _unit_state(remote, inventory.paths.meta_service)
    if active == "active":
        raise PlanRefused("retire raft dir",
                          f"{inventory.paths.meta_service} is still active on {remote.host}; stop it first")
    target = f"{raft_dir}.removed-{_stamp()}"
    if dry_run:
        return StepResult(step="retire_raft_dir", host=remote.host, changed=True, dry_run=True,
                          detail=f"would move {raft_dir} to {target}")
    owner, group, mode = remote.run(["stat", "-c", "%U %G %a", raft_dir], sudo=True).stdout.split()
    remote.run(["mv", "--", raft_dir, target], sudo=True)
    remote.run(["install", "-d", "-o", owner, "-g", group, "-m", mode, raft_dir], sudo=True)
    return StepResult(step="retire_raft_dir", host=remote.host, changed=True,
                      detail=f"moved {raft_dir} to {target} and left an empty {raft_dir}", backup_path=target)


def disarm_removed_node_config(remote: Remote, inventory: Inventory, node: MetaNode,
                                dry_run: bool = False) -> StepResult:
    """After a node left: empty its ``join`` and turn ``single`` off so the service can never start again there.

    Together with the disabled unit and the retired raft dir this makes a re-join impossible, even by hand.
    No-op when already disarmed. Raises: ConfigEditError, RemoteCommandError.
    """
    path = inventory.paths.meta_config
    current = remote.read_text(path)
    try:
        wanted = config.disarm_removed_node(current, cluster=inventory.name, node_id=node.node_id, when=_stamp(),
                                            path=path)
    except ConfigEditError as exc:
        raise _reraise_with_host(exc, remote, path) from None
    return _rewrite_config(remote, "disarm_removed_node_config", path, current, wanted, dry_run,
                           f"an empty join (meta-{node.node_id} removed from {inventory.name})")


def update_join(remote: Remote, inventory: Inventory, node: MetaNode, addresses: Sequence[str],
                dry_run: bool = False) -> StepResult:
    """Runbook scale-up 5 / scale-down 8: set [raft_config] join (and single off) on meta ``node``.

    The node's own raft listen address is left out when it listens on a specific IP (databend-meta refuses a join
    list containing it). No restart: join is only read at start. Idempotent. Raises: ConfigEditError,
    RemoteCommandError.
    """
    path = inventory.paths.meta_config
    current = remote.read_text(path)
    try:
        wanted_addresses = config.join_without_self(current, list(addresses), path=path)
        wanted = config.set_join(current, wanted_addresses, path=path)
    except ConfigEditError as exc:
        raise _reraise_with_host(exc, remote, path) from None
    return _rewrite_config(remote, "update_join", path, current, wanted, dry_run,
                           f"join={wanted_addresses} on {node.name}")


def update_query_meta_endpoints(remote: Remote, inventory: Inventory, query: QueryNode, endpoints: Sequence[str],
                                dry_run: bool = False) -> StepResult:
    """Runbook scale-up 6 / scale-down 9: set [meta] endpoints on query node ``query``. Idempotent.

    Raises: ConfigEditError, RemoteCommandError.
    """
    path = inventory.paths.query_config
    current = remote.read_text(path)
    try:
        wanted = config.set_meta_endpoints(current, list(endpoints), path=path)
    except ConfigEditError as exc:
        raise _reraise_with_host(exc, remote, path) from None
    return _rewrite_config(remote, "update_query_meta_endpoints", path, current, wanted, dry_run,
                           f"[meta] endpoints={list(endpoints)} on {query.host}")


# ---- Scale down -------------------------------------------------------------------------------------------------
def transfer_leadership(remote_on_leader: Remote, leader_node: MetaNode, to_id: int, dry_run: bool = False,
                        timeout_s: float = 15) -> StepResult:
    """Runbook scale-down 2: `databend-metactl transfer-leader --to N --admin-api-address 127.0.0.1:<admin>`,
    run ON the leader (the admin API only listens locally and answers 404 on non-leaders).

    Reads the leader's status first: no-op when ``leader_node`` is not the leader (anymore) or ``to_id`` already
    leads. 200 means "accepted": verify with waits.wait_for_leader_change. Raises: RemoteCommandError,
    MetaUnreachable.
    """
    host = remote_on_leader.host
    status = read_node_status(remote_on_leader, leader_node, timeout_s)
    if status.leader_id == to_id:
        return StepResult(step="transfer_leadership", host=host, changed=False, detail=f"meta-{to_id} already leads")
    if status.state != "Leader":
        return StepResult(step="transfer_leadership", host=host, changed=False,
                          detail=f"{leader_node.name} is not the leader (it is {status.state}, leader "
                                 f"{status.leader_id}); nothing to transfer")
    if to_id not in status.voter_ids:
        raise PlanRefused("transfer leadership", f"meta-{to_id} is not a voter (voters: {status.voter_ids})")
    argv = ["databend-metactl", "transfer-leader", "--to", str(to_id),
            "--admin-api-address", f"127.0.0.1:{leader_node.admin_port}"]
    if dry_run:
        return StepResult(step="transfer_leadership", host=host, changed=True, dry_run=True,
                          detail=f"would run `{shlex.join(argv)}` on {leader_node.name}")
    result = remote_on_leader.run(argv, timeout_s=timeout_s, cwd="/tmp")
    return StepResult(step="transfer_leadership", host=host, changed=True,
                      detail=f"asked {leader_node.name} to hand leadership to meta-{to_id}: "
                             f"{result.stdout.strip().splitlines()[0] if result.stdout.strip() else 'accepted'}")


def leave_cluster(remote: Remote, node_id: int, via_raft_addrs: Sequence[str], timeout_s: float = 60,
                  dry_run: bool = False, probe: MetaNode | None = None) -> StepResult:
    """Runbook scale-down 4: `databend-meta --leave-id N --leave-via A --leave-via B` (one flag per address).

    ``via_raft_addrs`` are raft addresses (port 28004) of remaining nodes. If ``probe`` (the meta node on
    ``remote``) is given, its status is read first and the step is a no-op when N is no longer a member. Leave
    succeeds silently for non-members, so verify with waits.wait_for_voters. Raises: RemoteTimeout (leave hangs
    without quorum), RemoteCommandError (e.g. `can not leave id=N via itself`: transfer leadership first).
    """
    if not via_raft_addrs:
        raise PlanRefused("leave cluster", f"no --leave-via address given for meta-{node_id}")
    if probe is not None:
        status = read_node_status(remote, probe)
        if node_id not in (*status.voter_ids, *status.non_voter_ids):
            return StepResult(step="leave_cluster", host=remote.host, changed=False,
                              detail=f"meta-{node_id} is not a member (voters {status.voter_ids})")
    argv = ["databend-meta", "--leave-id", str(node_id)]
    for address in via_raft_addrs:
        argv += ["--leave-via", address]
    if dry_run:
        return StepResult(step="leave_cluster", host=remote.host, changed=True, dry_run=True,
                          detail=f"would run `{shlex.join(argv)}`")
    try:
        remote.run(argv, timeout_s=timeout_s, cwd="/tmp")
    except RemoteTimeout as exc:
        raise RemoteTimeout(exc.host, exc.command, exc.timeout_s, exc.stderr_tail, LEAVE_HANGS_HINT) from None
    return StepResult(step="leave_cluster", host=remote.host, changed=True,
                      detail=f"meta-{node_id} left via {list(via_raft_addrs)}")


# ---- Troubleshooting ---------------------------------------------------------------------------------------------
def collect_diagnostics(remote: Remote, inventory: Inventory, service: str | None = None,
                        lines: int = 50) -> str:
    """Runbook troubleshooting: `systemctl status`, the last ``lines`` of `journalctl -u`, and the tail of the
    newest file in the log dir, as one text. Read-only; command failures are included, not raised.
    """
    unit = service or inventory.paths.meta_service
    log_dir = inventory.paths.log_dir
    sections = []
    for title, argv in (
        ("systemctl status", ["systemctl", "status", "--no-pager", "--full", unit]),
        (f"journalctl (last {lines})", ["journalctl", "-u", unit, "-n", str(lines), "--no-pager"]),
    ):
        sections.append(_section(remote, title, argv))
    newest = remote.run(["find", log_dir, "-maxdepth", "1", "-type", "f", "-printf", "%T@ %p\\n"],
                        sudo=True, check=False)
    files = sorted((line.split(" ", 1) for line in newest.stdout.splitlines() if " " in line),
                   key=lambda item: float(item[0]), reverse=True)
    if files:
        sections.append(_section(remote, f"tail {files[0][1]}", ["tail", "-n", str(lines), files[0][1]]))
    else:
        sections.append(f"## {log_dir}\n(no log files: {newest.tail(2) or 'empty'})\n")
    return f"# diagnostics for {unit} on {remote.host}\n" + "\n".join(sections)


def _section(remote: Remote, title: str, argv: list[str]) -> str:
    try:
        result = remote.run(argv, sudo=True, check=False, timeout_s=20)
        body = (result.stdout + result.stderr).rstrip() or "(no output)"
        return f"## {title} (exit {result.exit_code})\n{body}\n"
    except RemoteCommandError as exc:
        return f"## {title}\n(failed: {exc})\n"


__all__ = [
    "LEAVE_HANGS_HINT",
    "StepResult",
    "collect_diagnostics",
    "copy_config_from_existing_node",
    "leave_cluster",
    "retire_raft_dir",
    "start_meta_service",
    "stop_meta_service",
    "transfer_leadership",
    "update_join",
    "update_query_meta_endpoints",
    "write_new_node_config",
]
