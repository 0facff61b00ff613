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
from metascale.errors import (
    ConfigEditError,
    MetaScaleError,
    PlanRefused,
    RemoteCommandError,
    RemoteTimeout,
)
from metascale.inventory import Inventory, MetaNode, Paths, QueryNode
from metascale.plan import HostFacts, NewNodeSpec, QueryFacts
from metascale.preview import listening_ports
from metascale.nodeinfo import read_node_config, read_service_user
from metascale.remote import SILENT_HOST_HINT, Remote
from metascale.status import MetaStatus, read_node_status

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
    ports listen, the service's active/enabled state before the run, the raft dir named by the host's own config
    and whether it holds data, and, when the service runs, its own status (id and voters: which cluster it is in).
    Read-only; an unreachable host is a fact, not an error."""
    unit = inventory.paths.meta_service
    try:
        has_package = remote.run(["test", "-x", META_BINARY], check=False, timeout_s=timeout_s).ok
        tcp = remote.run(["cat", "/proc/net/tcp", "/proc/net/tcp6"], check=False, timeout_s=timeout_s).stdout
        active = remote.run(["systemctl", "is-active", unit], check=False, timeout_s=timeout_s).stdout.strip()
        enabled = remote.run(["systemctl", "is-enabled", unit], check=False, timeout_s=timeout_s).stdout.strip()
        node_config = _read_new_host_config(remote, inventory.paths.meta_config, timeout_s)
        raft_dir = (node_config.raft_dir if node_config else inventory.paths.raft_dir).rstrip("/") or "/"
        in_use = _dir_has_entries(remote, raft_dir, timeout_s)
    except MetaScaleError as exc:
        return HostFacts(host=spec.host, reachable=False, reason=str(exc))
    facts = {"host": spec.host, "reachable": True, "has_package": has_package,
             "busy_ports": tuple(sorted(listening_ports(tcp))), "meta_active": active == "active",
             "meta_enabled": enabled == "enabled", "raft_dir": raft_dir, "raft_dir_in_use": in_use}
    if active == "active":
        try:
            status = _new_host_status(remote, inventory, node_config, timeout_s)
            facts.update(own_node_id=status.node_id, own_voters=tuple(status.voter_ids))
        except MetaScaleError as exc:
            facts["status_error"] = str(exc)
    return HostFacts(**facts)


def _read_new_host_config(remote: Remote, path: str, timeout_s: float) -> config.MetaConfigFacts | None:
    """The new host's own meta config facts, or None when it has no config file (the inventory's defaults apply).

    Raises: ConfigEditError (with the host) when the file exists but is not a valid meta config."""
    if not remote.run(["test", "-e", path], sudo=True, check=False, timeout_s=timeout_s).ok:
        return None
    try:
        return config.read_meta_config_facts(remote.read_text(path), path=path)
    except ConfigEditError as exc:
        raise _reraise_with_host(exc, remote, path) from None


def _dir_has_entries(remote: Remote, path: str, timeout_s: float | None = None) -> bool:
    """True when directory ``path`` exists and is not empty (read as root: the raft dir is the service user's)."""
    listing = remote.run(["find", path, "-mindepth", "1", "-maxdepth", "1", "-print", "-quit"], sudo=True,
                         check=False, timeout_s=timeout_s)
    return listing.ok and bool(listing.stdout.strip())


def _new_host_status(remote: Remote, inventory: Inventory, node_config: config.MetaConfigFacts | None,
                     timeout_s: float) -> MetaStatus:
    """The status of the databend-meta already running on a new host, read like every other node's
    (status.read_node_status: the gRPC address of the host's own config, metactl in a private temporary directory,
    the admin API when gRPC uses TLS). Raises: MetaUnreachable, StatusParseError, RemoteCommandError."""
    probe = MetaNode(id=(node_config.node_id or 0) if node_config else 0, host=remote.host)
    return read_node_status(remote, probe, timeout_s, meta_config=inventory.paths.meta_config)


def reset_new_node_raft_dir(remote: Remote, inventory: Inventory, raft_dir: str, dry_run: bool = False,
                            timeout_s: float = 10) -> StepResult:
    """reset_new_node: stop the service on a NEW host that is a one-node cluster of its own, and move its raft dir
    to ``<raft_dir>.reset-<UTC ts>``, leaving an empty one (same owner/mode), so the node can join as a new node.

    Checks again right before acting: while the service runs, its status must show voters == [its own id]; a
    member of a multi-node cluster is never touched. Idempotent: no-op when the raft dir is missing or empty.
    Raises: PlanRefused (not a one-node cluster of its own, or status unreadable), RemoteCommandError.
    """
    raft_dir = raft_dir.rstrip("/")
    unit = inventory.paths.meta_service
    if not _dir_has_entries(remote, raft_dir, timeout_s):
        return StepResult(step="reset_new_node_raft_dir", host=remote.host, changed=False,
                          detail=f"{raft_dir} is already empty or missing: nothing to reset")
    active, _ = _unit_state(remote, unit)
    if active == "active":
        node_config = _read_new_host_config(remote, inventory.paths.meta_config, timeout_s)
        try:
            status = _new_host_status(remote, inventory, node_config, timeout_s)
        except MetaScaleError as exc:
            raise PlanRefused("reset new node", f"cannot read the status of databend-meta on {remote.host} "
                                                f"({exc}); not resetting a node metascale cannot see") from None
        if status.voter_ids != [status.node_id]:
            raise PlanRefused("reset new node",
                              f"databend-meta on {remote.host} is meta-{status.node_id} with voters "
                              f"{status.voter_ids}, not a one-node cluster of its own; not touching it")
    target = f"{raft_dir}.reset-{_stamp()}"
    if dry_run:
        return StepResult(step="reset_new_node_raft_dir", host=remote.host, changed=True, dry_run=True,
                          detail=f"would stop {unit} and move {raft_dir} to {target}")
    if active in ("active", "activating", "reloading", "deactivating"):
        remote.run(["systemctl", "stop", unit], sudo=True, timeout_s=timeout_s + 20)
    owner, group, mode = remote.run(["stat", "-c", "%U %G %a", raft_dir], sudo=True).stdout.split()
    remote.run(["mv", "--", raft_dir, target], sudo=True)
    remote.run(["install", "-d", "-o", owner, "-g", group, "-m", mode, raft_dir], sudo=True)
    log.info("%s: stopped %s and moved %s to %s", remote.host, unit, raft_dir, target)
    return StepResult(step="reset_new_node_raft_dir", host=remote.host, changed=True,
                      detail=f"stopped {unit} (a one-node cluster of its own) and moved {raft_dir} to {target}; "
                             f"left an empty {raft_dir}", backup_path=target)


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
                      service: str | None = None, stop: bool = True) -> StepResult:
    """Runbook scale-down 6: stop (and by default disable) the meta service unit. No-op when already so.
    ``stop=False`` only disables (an undo on a host whose service ran before the run).

    Raises: RemoteCommandError when systemctl fails.
    """
    unit = service or inventory.paths.meta_service
    active, enabled = _unit_state(remote, unit)
    actions = []
    if stop and active in ("active", "activating", "reloading", "deactivating"):
        actions.append("stop")
    if disable and enabled == "enabled":
        actions.append("disable")
    if not actions:
        return StepResult(step="stop_meta_service", host=remote.host, changed=False,
                          detail=f"{unit} is {active}" + (f" and {enabled}" if disable else "") + ": nothing to do")
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
    impossible. The raft dir is the one the node's own config names (``read_node_config``). No-op when the
    directory is missing or empty. Refuses while the meta service is active.
    Raises: PlanRefused (service running), RemoteCommandError, ConfigEditError (config unreadable).
    """
    raft_dir = read_node_config(remote, inventory).raft_dir.rstrip("/") or "/"
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


def read_query_node_facts(remote: Remote, inventory: Inventory, query: QueryNode,
                          timeout_s: float = 8.0) -> QueryFacts:
    """Read a query node's databend-query.toml: auto_sync_interval, endpoints and where its health answers.
    Read-only; an unreadable or invalid file is a fact (``read_error``), not an error."""
    path = inventory.paths.query_config
    try:
        text = remote.read_text(path)
        interval, endpoints, admin = config.read_query_config_facts(text, path=path)
        health = config.probe_address(admin)
    except (MetaScaleError, ValueError) as exc:
        return QueryFacts(host=query.host, read_error=str(exc))
    return QueryFacts(host=query.host, auto_sync_interval=interval, endpoints=tuple(endpoints),
                      health_address=health)


def restart_query_node(remote: Remote, inventory: Inventory, query: QueryNode, dry_run: bool = False,
                       timeout_s: float = 60) -> StepResult:
    """`systemctl restart databend-query` so the query node reads its new `[meta] endpoints` (reference §5.2).

    Never `systemctl reload`: databend-query stops on SIGHUP. Not idempotent by nature (a restart is the point);
    check health afterwards with ``query_node_unhealthy_reason``. Raises: RemoteCommandError.
    """
    unit = inventory.paths.query_service
    argv = ["systemctl", "restart", unit]
    if dry_run:
        return StepResult(step="restart_query_node", host=remote.host, changed=True, dry_run=True,
                          detail=f"would run `{shlex.join(argv)}`")
    remote.run(argv, sudo=True, timeout_s=timeout_s)
    return StepResult(step="restart_query_node", host=remote.host, changed=True,
                      detail=f"restarted {unit} on {query.host} (it reads [meta] endpoints at start)")


def query_node_unhealthy_reason(remote: Remote, inventory: Inventory, health_address: str,
                                timeout_s: float = 5) -> str | None:
    """Why the query node on ``remote`` is not healthy yet (service not active, `GET /v1/health` on its admin API
    not answering 200), or None. Read-only."""
    unit = inventory.paths.query_service
    active = remote.run(["systemctl", "is-active", unit], check=False, timeout_s=timeout_s).stdout.strip()
    if active != "active":
        return f"{unit} is {active or 'unknown'}"
    url = f"http://{health_address}/v1/health"
    result = remote.run(["curl", "-sS", "--fail", "--max-time", f"{timeout_s:g}", "-o", "/dev/null", url],
                        check=False, timeout_s=timeout_s + 2)
    if not result.ok:
        return f"{url} does not answer yet ({result.tail(1) or f'curl exit {result.exit_code}'})"
    return None


# ---- Scale down -------------------------------------------------------------------------------------------------
def transfer_leadership(remote_on_leader: Remote, leader_node: MetaNode, to_id: int, dry_run: bool = False,
                        timeout_s: float = 15, *, inventory: Inventory | None = None) -> StepResult:
    """Runbook scale-down 2: `databend-metactl transfer-leader --to N --admin-api-address <admin address>`, run ON
    the leader against the admin address of the leader's own config (the admin API answers 404 on non-leaders);
    with admin TLS, the same request with curl over https (metactl's admin client speaks plain HTTP).

    Reads the leader's status first: no-op when ``leader_node`` is not the leader (anymore) or ``to_id`` already
    leads. 200 means "accepted": verify with waits.wait_for_leader_change. Raises: RemoteCommandError,
    MetaUnreachable.
    """
    host = remote_on_leader.host
    meta_config = (inventory.paths if inventory is not None else Paths()).meta_config
    status = read_node_status(remote_on_leader, leader_node, timeout_s, meta_config=meta_config)
    if status.leader_id == to_id:
        return StepResult(step="transfer_leadership", host=host, changed=False, detail=f"meta-{to_id} already leads")
    if status.state != "Leader":
        return StepResult(step="transfer_leadership", host=host, changed=False,
                          detail=f"{leader_node.name} is not the leader (it is {status.state}, leader "
                                 f"{status.leader_id}); nothing to transfer")
    if to_id not in status.voter_ids:
        raise PlanRefused("transfer leadership", f"meta-{to_id} is not a voter (voters: {status.voter_ids})")
    argv = transfer_leader_argv(read_node_config(remote_on_leader, path=meta_config), to_id, timeout_s)
    if dry_run:
        return StepResult(step="transfer_leadership", host=host, changed=True, dry_run=True,
                          detail=f"would run `{shlex.join(argv)}` on {leader_node.name}")
    result = remote_on_leader.run(argv, timeout_s=timeout_s, cwd=remote_on_leader.private_tmpdir())
    return StepResult(step="transfer_leadership", host=host, changed=True,
                      detail=f"asked {leader_node.name} to hand leadership to meta-{to_id}: "
                             f"{result.stdout.strip().splitlines()[0] if result.stdout.strip() else 'accepted'}")


def transfer_leader_argv(facts: config.MetaConfigFacts, to_id: int, timeout_s: float = 15) -> list[str]:
    """argv that asks the leader whose config is ``facts`` to hand leadership to ``to_id`` (at its admin address)."""
    if facts.admin_tls:  # -k: node-local request to its own configured address, nothing secret in it
        return ["curl", "-sS", "--fail", "--max-time", f"{timeout_s:g}", "-k",
                f"https://{facts.admin_probe_address}/v1/ctrl/trigger_transfer_leader?to={int(to_id)}"]
    return ["databend-metactl", "transfer-leader", "--to", str(int(to_id)),
            "--admin-api-address", facts.admin_probe_address]


def leave_argv(meta_config: str, node_id: int, via_raft_addrs: Sequence[str]) -> list[str]:
    """`databend-meta --config-file <meta config> --leave-id N --leave-via A --leave-via B`: the config file
    gives the leave the node's raft secret and log dir (the secret is never on the command line)."""
    argv = ["databend-meta", "--config-file", meta_config, "--leave-id", str(int(node_id))]
    for address in via_raft_addrs:
        argv += ["--leave-via", address]
    return argv


def leave_cluster(remote: Remote, node_id: int, via_raft_addrs: Sequence[str], timeout_s: float = 60,
                  dry_run: bool = False, probe: MetaNode | None = None, *,
                  inventory: Inventory | None = None) -> StepResult:
    """Runbook scale-down 4: `databend-meta --config-file <meta config> --leave-id N --leave-via A --leave-via B`
    (one flag per address), run as the meta service's user (``User=`` of the unit, root when unset) from ``/``
    (the service's working directory), so it uses the node's own raft secret and log dir.

    ``via_raft_addrs`` are raft addresses (port 28004) of remaining nodes. If ``probe`` (the meta node on
    ``remote``) is given, its status is read first and the step is a no-op when N is no longer a member. Leave
    succeeds silently for non-members, so verify with waits.wait_for_voters. Raises: RemoteTimeout (leave hangs
    without quorum), RemoteCommandError (e.g. `can not leave id=N via itself`: transfer leadership first).
    """
    if not via_raft_addrs:
        raise PlanRefused("leave cluster", f"no --leave-via address given for meta-{node_id}")
    paths = inventory.paths if inventory is not None else Paths()
    if probe is not None:
        status = read_node_status(remote, probe, meta_config=paths.meta_config)
        if node_id not in (*status.voter_ids, *status.non_voter_ids):
            return StepResult(step="leave_cluster", host=remote.host, changed=False,
                              detail=f"meta-{node_id} is not a member (voters {status.voter_ids})")
    argv = leave_argv(paths.meta_config, node_id, via_raft_addrs)
    user = read_service_user(remote, paths.meta_service)
    if dry_run:
        return StepResult(step="leave_cluster", host=remote.host, changed=True, dry_run=True,
                          detail=f"would run `{shlex.join(argv)}` as {user}")
    try:
        remote.run(argv, timeout_s=timeout_s, cwd="/", sudo_user=user)
    except RemoteTimeout as exc:
        if exc.hint == SILENT_HOST_HINT:  # the host itself went silent: that, not quorum, is the cause
            raise
        raise RemoteTimeout(exc.host, exc.command, exc.timeout_s, exc.stderr_tail, LEAVE_HANGS_HINT) from None
    return StepResult(step="leave_cluster", host=remote.host, changed=True,
                      detail=f"meta-{node_id} left via {list(via_raft_addrs)} (run as {user} with "
                             f"{paths.meta_config})")


# ---- Troubleshooting ---------------------------------------------------------------------------------------------
def collect_diagnostics(remote: Remote, inventory: Inventory, service: str | None = None,
                        lines: int = 50) -> str:
    """Runbook troubleshooting: `systemctl status`, the last ``lines`` of `journalctl -u`, and the tail of the
    newest file in the log dir that the node's own config names, as one text. Read-only; command failures are
    included, not raised.
    """
    unit = service or inventory.paths.meta_service
    sections = []
    for title, argv in (
        ("systemctl status", ["systemctl", "status", "--no-pager", "--full", unit]),
        (f"journalctl (last {lines})", ["journalctl", "-u", unit, "-n", str(lines), "--no-pager"]),
    ):
        sections.append(_section(remote, title, argv))
    try:
        log_dir = read_node_config(remote, inventory).log_dir
    except MetaScaleError as exc:
        sections.append(f"## log dir\n(cannot read {inventory.paths.meta_config}: {exc})\n")
        return f"# diagnostics for {unit} on {remote.host}\n" + "\n".join(sections)
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
    "leave_argv",
    "leave_cluster",
    "query_node_unhealthy_reason",
    "read_new_host_facts",
    "read_query_node_facts",
    "reset_new_node_raft_dir",
    "restart_query_node",
    "retire_raft_dir",
    "start_meta_service",
    "stop_meta_service",
    "transfer_leader_argv",
    "transfer_leadership",
    "update_join",
    "update_query_meta_endpoints",
    "write_new_node_config",
]
