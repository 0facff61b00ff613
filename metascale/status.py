"""Cluster status: parse `databend-metactl status` (every known format) and read it from every node over SSH.

Read-only: nothing here changes a host. ``parse_metactl_status`` is pure. ``read_node_status`` runs metactl ON the
node against the gRPC address of the node's own config (a wildcard bind is asked on loopback; a node with gRPC TLS
is read through the admin API instead); ``read_admin_status`` curls the admin API ON the node at its configured
address; ``read_cluster_status`` asks every meta node in parallel and keeps who answered and who did not.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field

from metascale.config import MetaConfigFacts, join_host_port, normalize_host_port
from metascale.drift import member_meta_node
from metascale.errors import MetaUnreachable, RemoteCommandError, StatusParseError
from metascale.inventory import Inventory, MetaNode, Paths
from metascale.nodeinfo import read_node_config
from metascale.remote import Remote, RemotePool

log = logging.getLogger(__name__)
DEFAULT_META_CONFIG = Paths().meta_config

RaftState = Literal["Leader", "Follower", "Candidate", "Learner", "Shutdown"]
_STATES = ("Leader", "Follower", "Candidate", "Learner", "Shutdown")

_TOP_RE = re.compile(r"^([A-Za-z][A-Za-z0-9]*):\s*(.*?)\s*$")
_ITEM_RE = re.compile(r"^\s+-\s*(.*?)\s*$")
_NODE_RE = re.compile(r"^id=(\d+)\s+raft=(\S*)(?:\s+grpc=(\S*))?")
_REPL_RE = re.compile(r"^\[(\d+)\]\s+(\S+)(\s+\*)?$")
_LOGID_NEW_RE = re.compile(r"^T(\d+)-N(\d+)\.(\d+)$")
_LOGID_OLD_RE = re.compile(r"^(\d+)-(\d+)-(\d+)$")


class LogId(BaseModel):
    """A raft log id: leader term, leader node id, index (``T1-N1.200`` or the older ``1-1-200``)."""

    model_config = ConfigDict(frozen=True)

    term: int
    node_id: int
    index: int


class NodeRecord(BaseModel):
    """A member as status shows it: id, raft address, gRPC advertise address ("" when the node has none)."""

    model_config = ConfigDict(frozen=True)

    node_id: int
    raft_addr: str
    grpc_addr: str = ""


class MetaStatus(BaseModel):
    """One node's view of the cluster, from `databend-metactl status` or the admin API."""

    model_config = ConfigDict(frozen=True)

    node_id: int
    raft_addr: str = ""
    state: RaftState
    leader_id: int | None = None
    leader_raft_addr: str | None = None
    leader: NodeRecord | None = None
    term: int
    last_log_index: int | None = None
    last_applied: LogId | None = None
    voters: list[NodeRecord] = Field(default_factory=list)
    non_voters: list[NodeRecord] = Field(default_factory=list)
    replication: dict[int, int] = Field(default_factory=dict, description="follower id -> matched log index")
    lagging_ids: list[int] = Field(default_factory=list, description="replication lines marked with ' *'")
    binary_version: str | None = None
    data_version: str | None = None
    read_via: Literal["metactl", "admin"] = Field(default="metactl", description="metactl status (gRPC) or the "
                                                  "admin API /v1/cluster/status (gRPC with TLS)")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def voter_ids(self) -> list[int]:
        """Sorted ids of the voters this node knows."""
        return sorted(v.node_id for v in self.voters)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def non_voter_ids(self) -> list[int]:
        """Sorted ids of the learners (non-voters) this node knows."""
        return sorted(v.node_id for v in self.non_voters)

    @property
    def last_applied_index(self) -> int | None:
        """Index of the last applied log entry, if known."""
        return self.last_applied.index if self.last_applied else None

    @property
    def is_leader(self) -> bool:
        """True when this node says it is the leader."""
        return self.state == "Leader"


def parse_log_id(text: str) -> LogId | None:
    """Parse ``T1-N1.200`` or ``1-1-200``; None when it is neither."""
    match = _LOGID_NEW_RE.match(text) or _LOGID_OLD_RE.match(text)
    if not match:
        return None
    term, node, index = (int(g) for g in match.groups())
    return LogId(term=term, node_id=node, index=index)


def _parse_node(text: str) -> NodeRecord | None:
    match = _NODE_RE.match(text)
    if not match:
        return None
    return NodeRecord(node_id=int(match.group(1)), raft_addr=normalize_host_port(match.group(2)),
                      grpc_addr=normalize_host_port(match.group(3) or ""))


def _int(value: str, key: str, text: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise StatusParseError(f"{key} is not an integer: {value!r}", text) from None


def parse_metactl_status(text: str) -> MetaStatus:
    """Parse `databend-metactl status` output of any known version (newest, DBSize/KeyNumber era, `1-1-200` ids).

    Unknown lines are ignored, Replication lines may come in any order. Raises: StatusParseError when the text
    has no ``Node:``/``State:``/``CurrentTerm:`` lines or one of them is malformed (never another exception).
    """
    if not isinstance(text, str):
        raise StatusParseError(f"expected text, got {type(text).__name__}")
    fields: dict[str, str] = {}
    lists: dict[str, list[str]] = {"Replication": [], "Voters": [], "NonVoters": []}
    section: str | None = None
    for raw in text.splitlines():
        if not raw.strip():
            continue
        item = _ITEM_RE.match(raw)
        if item and raw[:1].isspace():
            if section in lists:
                lists[section].append(item.group(1))
            continue
        top = _TOP_RE.match(raw)
        if not top:
            section = None
            continue
        key, value = top.groups()
        section = key if not value else None
        fields.setdefault(key, value)
    for required in ("Node", "State", "CurrentTerm"):
        if required not in fields:
            raise StatusParseError(f"no {required}: line", text)
    node_match = re.match(r"^id=(\d+)(?:\s+raft=(\S*))?", fields["Node"])
    if not node_match:
        raise StatusParseError(f"Node line not understood: {fields['Node']!r}", text)
    state = fields["State"]
    if state not in _STATES:
        raise StatusParseError(f"State {state!r} is not one of {', '.join(_STATES)}", text)
    leader = _parse_node(fields["Leader"]) if fields.get("Leader") else None
    replication: dict[int, int] = {}
    lagging: list[int] = []
    for line in lists["Replication"]:
        match = _REPL_RE.match(line)
        log_id = parse_log_id(match.group(2)) if match else None
        if match and log_id:
            replication[int(match.group(1))] = log_id.index
            if match.group(3):
                lagging.append(int(match.group(1)))
    voters = [n for n in (_parse_node(v) for v in lists["Voters"]) if n is not None]
    non_voters = [n for n in (_parse_node(v) for v in lists["NonVoters"]) if n is not None]
    last_log = fields.get("LastLogIndex")
    return MetaStatus(
        node_id=int(node_match.group(1)),
        raft_addr=normalize_host_port(node_match.group(2) or ""),
        state=state,  # type: ignore[arg-type]
        leader_id=leader.node_id if leader else None,
        leader_raft_addr=leader.raft_addr if leader else None,
        leader=leader,
        term=_int(fields["CurrentTerm"], "CurrentTerm", text),
        last_log_index=_int(last_log, "LastLogIndex", text) if last_log else None,
        last_applied=parse_log_id(fields.get("LastApplied", "")),
        voters=sorted(voters, key=lambda n: n.node_id),
        non_voters=sorted(non_voters, key=lambda n: n.node_id),
        replication=dict(sorted(replication.items())),
        lagging_ids=sorted(lagging),
        binary_version=fields.get("BinaryVersion") or None,
        data_version=fields.get("DataVersion") or None,
    )


def _json_node(value: Any) -> NodeRecord:
    endpoint = value.get("endpoint") or {}
    addr = join_host_port(str(endpoint.get("addr", "")), endpoint.get("port", "")) if endpoint else ""
    return NodeRecord(node_id=int(value["name"]), raft_addr=normalize_host_port(addr),
                      grpc_addr=normalize_host_port(value.get("grpc_api_advertise_address") or ""))


def _json_log_id(value: Any) -> LogId | None:
    if not value:
        return None
    leader = value.get("leader_id") or {}
    return LogId(term=int(leader.get("term", 0)), node_id=int(leader.get("node_id", 0)), index=int(value["index"]))


def parse_admin_status(text: str) -> MetaStatus:
    """Parse the admin API's ``/v1/cluster/status`` JSON into a MetaStatus. Raises: StatusParseError."""
    try:
        data = json.loads(text)
        leader = _json_node(data["leader"]) if data.get("leader") else None
        replication = {int(k): int(v["index"]) for k, v in (data.get("replication") or {}).items() if v}
        endpoint = data.get("endpoint")
        return MetaStatus(
            node_id=int(data["id"]),
            raft_addr=normalize_host_port(endpoint) if isinstance(endpoint, str) else "",
            state=data["state"],
            leader_id=leader.node_id if leader else None,
            leader_raft_addr=leader.raft_addr if leader else None,
            leader=leader,
            term=int(data["current_term"]),
            last_log_index=data.get("last_log_index"),
            last_applied=_json_log_id(data.get("last_applied")),
            voters=sorted((_json_node(v) for v in data.get("voters") or []), key=lambda n: n.node_id),
            non_voters=sorted((_json_node(v) for v in data.get("non_voters") or []), key=lambda n: n.node_id),
            replication=dict(sorted(replication.items())),
            binary_version=data.get("binary_version"),
            data_version=data.get("data_version"),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StatusParseError(f"admin /v1/cluster/status JSON not understood ({type(exc).__name__}: {exc})",
                               text) from None


def metactl_status_argv(grpc_address: str) -> list[str]:
    """argv of the status probe against ``grpc_address`` (the flag goes AFTER the subcommand, or metactl ignores
    it and asks 127.0.0.1:9191)."""
    return ["databend-metactl", "status", "--grpc-api-address", grpc_address]


def admin_status_url(facts: MetaConfigFacts) -> str:
    """``http(s)://<admin probe address>/v1/cluster/status`` of the node whose config is ``facts``."""
    return f"{'https' if facts.admin_tls else 'http'}://{facts.admin_probe_address}/v1/cluster/status"


def tls_note(host: str) -> str:
    """The log line for a node whose status is read from the admin API instead of gRPC."""
    return f"gRPC on {host} uses TLS; reading status from the admin API /v1/cluster/status"


def read_node_status(remote: Remote, node: MetaNode, timeout_s: float = 10, *,
                     meta_config: str = DEFAULT_META_CONFIG) -> MetaStatus:
    """The status of the meta node on ``remote``, at the gRPC address of its OWN config (``meta_config``):
    `databend-metactl status` run in the connection's private temporary directory (metactl writes
    ./.databend/logs under its CWD). When that config enables gRPC TLS (plain metactl cannot talk to it), or
    metactl fails with a transport error while the admin API answers, the status comes from the admin API's
    /v1/cluster/status instead (``MetaStatus.read_via == "admin"``).

    Raises: MetaUnreachable when neither answers (exit 1 ``Error:``) or on timeout; StatusParseError for output
    it cannot read; RemoteCommandError for other failures (metactl missing, the config unreadable).
    """
    facts = read_node_config(remote, path=meta_config)
    if facts.grpc_tls:
        return _admin_instead(remote, node, facts, timeout_s, None)
    try:
        result = remote.run(metactl_status_argv(facts.grpc_probe_address), timeout_s=timeout_s, check=False,
                            cwd=remote.private_tmpdir())
    except RemoteCommandError as exc:
        if exc.exit_code is None:  # RemoteTimeout: a black-holed node never answers
            raise MetaUnreachable(remote.host, node.node_id, f"metactl status timed out after {timeout_s:g} s") \
                from None
        raise
    if result.exit_code == 1 and (result.stderr.lstrip().startswith("Error") or not result.stdout.strip()):
        unreachable = MetaUnreachable(remote.host, node.node_id, result.tail(3) or "metactl status exited 1")
        return _admin_instead(remote, node, facts, timeout_s, unreachable)
    result.raise_for_status()
    try:
        return parse_metactl_status(result.stdout)
    except StatusParseError as exc:
        raise StatusParseError(exc.reason, exc.excerpt, remote.host) from None


def _admin_instead(remote: Remote, node: MetaNode, facts: MetaConfigFacts, timeout_s: float,
                   grpc_error: MetaUnreachable | None) -> MetaStatus:
    """Read the status from the admin API; log the TLS note once per connection. ``grpc_error`` (metactl's
    failure, when gRPC was tried) is what is raised when the admin API does not answer either."""
    try:
        status = _read_admin(remote, node, facts, timeout_s)
    except MetaUnreachable:
        if grpc_error is not None:
            raise grpc_error from None
        raise
    cache = getattr(remote, "cache", None)
    if isinstance(cache, dict) and ("note", "grpc-tls") not in cache:
        cache[("note", "grpc-tls")] = tls_note(remote.host)
        log.info("%s", tls_note(remote.host))
    return status.model_copy(update={"read_via": "admin"})


def read_admin_status(remote: Remote, node: MetaNode, timeout_s: float = 10, *,
                      meta_config: str = DEFAULT_META_CONFIG) -> MetaStatus:
    """GET /v1/cluster/status ON ``node`` with curl over SSH, at the admin address of its OWN config (https when
    that config sets admin TLS), and parse the JSON.

    Raises: MetaUnreachable when nothing answers (curl exit 7/22/28/35/52/56/60, HTTP error); StatusParseError.
    """
    return _read_admin(remote, node, read_node_config(remote, path=meta_config), timeout_s)


def _read_admin(remote: Remote, node: MetaNode, facts: MetaConfigFacts, timeout_s: float) -> MetaStatus:
    # -k only with admin TLS: the request goes from the node to its own configured address and carries nothing
    # secret; the certificate names the host's public name, not the address metascale reads from the config.
    argv = ["curl", "-sS", "--fail", "--max-time", f"{timeout_s:g}", *(["-k"] if facts.admin_tls else []),
            admin_status_url(facts)]
    try:
        result = remote.run(argv, timeout_s=timeout_s + 2, check=False)
    except RemoteCommandError as exc:
        if exc.exit_code is None:
            raise MetaUnreachable(remote.host, node.node_id, f"admin API timed out after {timeout_s:g} s") from None
        raise
    if result.exit_code in (7, 22, 28, 35, 52, 56, 60):
        raise MetaUnreachable(remote.host, node.node_id, f"admin API: {result.tail(2) or f'curl exit {result.exit_code}'}")
    result.raise_for_status()
    try:
        return parse_admin_status(result.stdout)
    except StatusParseError as exc:
        raise StatusParseError(exc.reason, exc.excerpt, remote.host) from None


class NodeProbe(BaseModel):
    """One node's answer in a cluster read: its status, or the error (type name and message)."""

    model_config = ConfigDict(frozen=True)

    node_id: int
    host: str
    status: MetaStatus | None = None
    error: str | None = None
    error_type: str | None = None
    note: str | None = Field(default=None, description="a one-time remark on how the status was read (TLS)")
    in_inventory: bool = Field(default=True, description="False: a member the inventory does not list, found in the "
                               "cluster's own status and probed at the host its node record names")

    @property
    def answered(self) -> bool:
        """True when the node returned a status."""
        return self.status is not None


class ClusterStatus(BaseModel):
    """An immutable snapshot of every meta node's answer, with predicates that return a reason or None."""

    model_config = ConfigDict(frozen=True)

    cluster: str
    probes: list[NodeProbe]

    def probe(self, node_id: int) -> NodeProbe | None:
        """The probe of ``node_id`` (None if it was not asked)."""
        return next((p for p in self.probes if p.node_id == node_id), None)

    def status_of(self, node_id: int) -> MetaStatus | None:
        """The status ``node_id`` reported, or None (not asked or not answering)."""
        probe = self.probe(node_id)
        return probe.status if probe else None

    @property
    def answering_ids(self) -> list[int]:
        """Sorted ids of the nodes that answered."""
        return sorted(p.node_id for p in self.probes if p.status is not None)

    @property
    def unreachable_ids(self) -> list[int]:
        """Sorted ids of the nodes that did not answer."""
        return sorted(p.node_id for p in self.probes if p.status is None)

    @property
    def not_in_inventory_ids(self) -> list[int]:
        """Sorted ids of the members found in the cluster's status that the inventory does not list."""
        return sorted(p.node_id for p in self.probes if not p.in_inventory)

    @property
    def leader_id(self) -> int | None:
        """The leader a strict majority of answering nodes agree on, or None."""
        answers = [p.status.leader_id for p in self.probes if p.status is not None]
        if not answers:
            return None
        leader, votes = Counter(answers).most_common(1)[0]
        return leader if leader is not None and votes * 2 > len(answers) else None

    @property
    def leader_status(self) -> MetaStatus | None:
        """The leader's own status, if the leader answered."""
        leader = self.leader_id
        return self.status_of(leader) if leader is not None else None

    @property
    def voter_ids(self) -> list[int] | None:
        """Voters as the leader reports them; None when the leader is unknown or did not answer."""
        status = self.leader_status
        return status.voter_ids if status else None

    @property
    def non_voter_ids(self) -> list[int] | None:
        """Learners as the leader reports them; None when the leader is unknown or did not answer."""
        status = self.leader_status
        return status.non_voter_ids if status else None

    def agrees_on_membership(self) -> bool:
        """True when every answering node reports the same leader and the same voters (and there are answers)."""
        views = {(tuple(p.status.voter_ids), p.status.leader_id) for p in self.probes if p.status is not None}
        return len(views) == 1

    def is_member(self, node_id: int) -> bool:
        """True when the leader lists ``node_id`` as a voter or learner."""
        status = self.leader_status
        return bool(status) and node_id in (*status.voter_ids, *status.non_voter_ids)  # type: ignore[union-attr]

    def unhealthy_reason(self) -> str | None:
        """Why the cluster cannot take a membership change now (no leader, leader silent), or None."""
        if not self.answering_ids:
            return f"no meta node of cluster {self.cluster} answered ({self._errors()})"
        if self.leader_id is None:
            seen = {p.node_id: p.status.leader_id for p in self.probes if p.status is not None}
            return f"cluster {self.cluster} has no leader that a majority agrees on (leader seen per node: {seen})"
        if self.leader_status is None:
            return f"the leader meta-{self.leader_id} did not answer"
        return None

    def removal_blocked_reason(self, node_id: int) -> str | None:
        """Why removing voter ``node_id`` is unsafe now, or None.

        Blocks when the cluster is unhealthy, it is the only voter, or the remaining voters that answer are not a
        majority of the remaining voters (the leave could not commit and `--leave-id` would hang).
        """
        reason = self.unhealthy_reason()
        if reason:
            return reason
        voters = self.voter_ids or []
        if node_id in voters and len(voters) == 1:
            return f"meta-{node_id} is the only voter"
        remaining = [v for v in voters if v != node_id]
        alive = [v for v in remaining if v in self.answering_ids]
        if remaining and len(alive) * 2 <= len(remaining):
            return (f"after removing meta-{node_id} only {len(alive)} of the remaining voters {remaining} answer; "
                    "a majority is needed")
        return None

    def addition_blocked_reason(self, node_id: int) -> str | None:
        """Why adding a node with ``node_id`` is unsafe now (unhealthy cluster, id in use), or None."""
        reason = self.unhealthy_reason()
        if reason:
            return reason
        if self.is_member(node_id):
            return f"id {node_id} is already a member of cluster {self.cluster}"
        return None

    def stable_reason(self, expected_voters: list[int] | set[int]) -> str | None:
        """Why the cluster is not yet stable with exactly ``expected_voters`` (leader, all answering, agreeing)."""
        expected = sorted(expected_voters)
        reason = self.unhealthy_reason()
        if reason:
            return reason
        if self.voter_ids != expected:
            return f"voters are {self.voter_ids}, expected {expected}"
        silent = [v for v in expected if v not in self.answering_ids]
        if silent:
            return f"voters {silent} do not answer"
        if not self.agrees_on_membership():
            views = {p.node_id: (p.status.leader_id, p.status.voter_ids) for p in self.probes if p.status}
            return f"nodes disagree on (leader, voters): {views}"
        return None

    def summary(self) -> str:
        """One line: leader, voters, who answers."""
        return (f"cluster {self.cluster}: leader={self.leader_id} voters={self.voter_ids} "
                f"answering={self.answering_ids} unreachable={self.unreachable_ids}")

    def _errors(self) -> str:
        return "; ".join(f"meta-{p.node_id}: {p.error}" for p in self.probes if p.error) or "no errors recorded"


def _probe(pool: RemotePool, node: MetaNode, timeout_s: float, meta_config: str) -> NodeProbe:
    try:
        remote = pool.remote(node)
        status = read_node_status(remote, node, timeout_s, meta_config=meta_config)
        cache = getattr(remote, "cache", None)
        note = None
        if status.read_via == "admin" and isinstance(cache, dict) and ("noted", "grpc-tls") not in cache:
            cache[("noted", "grpc-tls")] = True  # the caller logs it once per connection (= once per run)
            note = tls_note(remote.host)
        return NodeProbe(node_id=node.node_id, host=node.host, status=status, note=note)
    except Exception as exc:  # one node's failure of any kind is an observation, not a crash of the read
        return NodeProbe(node_id=node.node_id, host=node.host, error=str(exc) or repr(exc),
                         error_type=type(exc).__name__)


def member_node(record: NodeRecord) -> MetaNode | None:
    """The MetaNode a member's node record describes (``metascale.drift.member_meta_node``), or None."""
    return member_meta_node(record.node_id, record.raft_addr, record.grpc_addr)


def members_not_asked(probes: list[NodeProbe], asked: list[MetaNode],
                      inventory_ids: set[int] | frozenset[int] = frozenset()) -> list[NodeRecord]:
    """Node records of the members (voters, learners, the leader) the answering nodes name that were neither
    asked nor listed in the inventory (``inventory_ids``: an inventory node left out of ``nodes`` on purpose,
    a dead host say, stays out)."""
    asked_ids = {n.node_id for n in asked} | set(inventory_ids)
    found: dict[int, NodeRecord] = {}
    for probe in probes:
        status = probe.status
        if status is None:
            continue
        for record in [*(status.voters), *(status.non_voters), *([status.leader] if status.leader else [])]:
            if record.node_id not in asked_ids:
                found.setdefault(record.node_id, record)
    return [found[i] for i in sorted(found)]


def read_cluster_status(pool: RemotePool, inventory: Inventory, timeout_s: float = 10,
                        nodes: list[MetaNode] | None = None, *, discover: bool = True) -> ClusterStatus:
    """Ask every meta node (or ``nodes``) for its status in parallel threads; record each answer or error.

    With ``discover`` (the default), members that the answers name but that the inventory does not list (a
    half-added node, an inventory that was not updated) are probed too, at the host their node record names and
    with the inventory's SSH settings; their probes have ``in_inventory=False``. A member
    whose record names no host is kept as a probe with an error. Never raises for one node's failure:
    HostUnreachable, MetaUnreachable, HostKeyRejected... are kept per node.
    """
    asked = list(nodes if nodes is not None else inventory.meta_nodes)
    meta_config = inventory.paths.meta_config
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(asked)))) as executor:
        probes = list(executor.map(lambda n: _probe(pool, n, timeout_s, meta_config), asked))
    listed = set(inventory.meta_ids)
    probes = [p if p.node_id in listed else p.model_copy(update={"in_inventory": False}) for p in probes]
    if discover:
        records = members_not_asked(probes, asked, set(inventory.meta_ids))
        found = [(r, member_node(r)) for r in records]
        reachable = [n for _, n in found if n is not None]
        if reachable:
            with ThreadPoolExecutor(max_workers=max(1, min(16, len(reachable)))) as executor:
                extra = list(executor.map(lambda n: _probe(pool, n, timeout_s, meta_config), reachable))
            probes += [p.model_copy(update={"in_inventory": False}) for p in extra]
        probes += [NodeProbe(node_id=r.node_id, host="", in_inventory=False,
                             error=f"meta-{r.node_id} is a member but its node record names no host "
                                   f"(raft address {r.raft_addr!r}), so it cannot be probed",
                             error_type="UnknownHost")
                   for r, n in found if n is None]
    return ClusterStatus(cluster=inventory.name, probes=sorted(probes, key=lambda p: p.node_id))


__all__ = [
    "ClusterStatus",
    "LogId",
    "MetaStatus",
    "NodeProbe",
    "NodeRecord",
    "admin_status_url",
    "metactl_status_argv",
    "parse_admin_status",
    "parse_log_id",
    "parse_metactl_status",
    "read_admin_status",
    "read_cluster_status",
    "read_node_status",
    "member_node",
    "members_not_asked",
    "tls_note",
]
