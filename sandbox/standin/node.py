"""One databend-meta node: pysyncobj raft + a replicated state machine + the raft/gRPC/admin HTTP servers.

Mapping onto pysyncobj (0.3.17):
* raft membership  = pysyncobj's cluster (node addresses `<raft_advertise_host>:<raft_api_port+1000>`);
* node records, kv = StateMachine, a SyncObjConsumer whose methods are @replicated (applied after commit);
* the term, leader, log indexes are read from SyncObj's private attributes in an on-tick callback (the tick
  thread owns them), and published as an immutable RaftView that the HTTP threads read without locks.
* a joining (or removed) node is kept "quiet": its election deadline is pushed forward on every tick, so it cannot
  disturb the cluster with elections before it is a member (pysyncobj has no PreVote / learner phase).
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import pathlib
import queue
import random
import threading
import time
from typing import Any, Callable

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, SyncObjConsumer, replicated
from pysyncobj.monotonic import monotonic

from . import raft_secret, wire
from .config import BINARY_VERSION, DATA_VERSION, INTERNAL_PORT_OFFSET, MetaConfig
from .logs import MetaLog

_STATE_NAMES = {0: "Follower", 1: "Candidate", 2: "Leader"}


class OpError(Exception):
    """A forwarded operation failed; `retryable` tells join/leave clients whether to retry the same address."""

    def __init__(self, msg: str, retryable: bool = False) -> None:
        super().__init__(msg, retryable)
        self.msg, self.retryable = msg, retryable

    def __str__(self) -> str:
        return self.msg


class StateMachine(SyncObjConsumer):
    """Replicated state: node records (id -> Node JSON + internal raft address) and a kv store with seq numbers.

    Dicts are replaced, never mutated, so readers in other threads always see a consistent snapshot.
    """

    def __init__(self) -> None:
        super().__init__()
        self.nodes: dict[int, dict[str, Any]] = {}
        self.kv: dict[str, dict[str, Any]] = {}
        self.last_seq = 0

    @replicated
    def add_node(self, node_id: int, record: dict[str, Any], overriding: bool) -> bool:
        if node_id in self.nodes and not overriding:
            return False
        self.nodes = {**self.nodes, node_id: record}
        return True

    @replicated
    def remove_node(self, node_id: int) -> bool:
        if node_id not in self.nodes:
            return False
        self.nodes = {k: v for k, v in self.nodes.items() if k != node_id}
        return True

    @replicated
    def upsert(self, key: str, value: str) -> dict[str, Any]:
        prev = self.kv.get(key)
        self.last_seq += 1
        cur = {"seq": self.last_seq, "meta": None, "data": value}
        self.kv = {**self.kv, key: cur}
        return {"ident": None, "prev": prev, "result": cur}

    @replicated
    def upsert_many(self, puts: list[tuple[str, str]]) -> dict[str, Any]:
        kv = dict(self.kv)
        for key, value in puts:
            self.last_seq += 1
            kv[key] = {"seq": self.last_seq, "meta": None, "data": value}
        self.kv = kv
        return {"applied": len(puts), "last_seq": self.last_seq}

    def data_bytes(self) -> int:
        """Approximate size of the replicated data (what a new voter has to catch up on)."""
        kv = self.kv
        return sum(len(k) + len(str(v.get("data", ""))) + 32 for k, v in kv.items()) + 256 * len(self.nodes)


@dataclasses.dataclass(frozen=True)
class RaftView:
    """One consistent picture of the local raft node, published by the tick thread."""

    state: str = "Learner"
    leader_internal: str | None = None
    term: int = 0
    last_log_index: int = 0
    last_applied: int = 0
    last_applied_term: int = 0
    members: frozenset[str] = frozenset()
    matched: tuple[tuple[str, int, int], ...] = ()       # leader only: (internal addr, index, term)
    nodes: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)
    log_items: int = 0
    log_bytes: int = 0

    def id_of(self, internal: str | None) -> int | None:
        """Node id whose record has this internal raft address, or None."""
        for nid, rec in self.nodes.items():
            if rec.get("raft_internal") == internal:
                return nid
        return None

    def voter_ids(self) -> list[int]:
        """Ids of the members that have a node record, ascending (a member without a record is left out)."""
        return sorted(nid for nid, rec in self.nodes.items() if rec.get("raft_internal") in self.members)


def node_json(nid: int, rec: dict[str, Any]) -> dict[str, Any]:
    """The public Node JSON (no internal fields)."""
    return {"name": str(nid), "endpoint": rec["endpoint"],
            "grpc_api_advertise_address": rec.get("grpc_api_advertise_address")}


class MetaNode:
    """The running node. Construct, then open(); the servers and raft start in the order databend-meta uses."""

    def __init__(self, cfg: MetaConfig, log: MetaLog) -> None:
        self.cfg = cfg
        self.log = log
        self.data_dir = pathlib.Path(cfg.raft_dir) / "df_meta" / "V004"
        self.journal_file = self.data_dir / "log" / "raft.journal"
        self.state_file = self.data_dir / "standin.json"
        self.persisted: dict[str, Any] = {}
        self.sm = StateMachine()
        self.so: SyncObj | None = None
        self.view = RaftView()
        self.quiet = False
        self._next_ping = 0.0
        self.quiet_until = 0.0    # a restarted member waits this long for the leader before electing (PreVote-like)
        self.leader_changes = 0
        self.term_leader: dict[int, int] = {}
        self._last_leader: str | None = None
        self._actions: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._change_lock = threading.Lock()
        self._lock_fd: int | None = None
        self.servers: list[Any] = []
        # Catch-up after join (openraft adds a voter directly, which then lags while already counted; reference §1.3,
        # §3.3): leader side internal addr -> (start, until) monotonic; joiner side its own (start, until).
        self.catchup: dict[str, tuple[float, float]] = {}
        self.own_catchup: tuple[float, float] | None = None

    # ----- persistence -------------------------------------------------------------------------------------------
    @property
    def node_id(self) -> int:
        return int(self.persisted["id"])

    def open_data(self) -> None:
        """Create/lock the raft dir and load the persisted node id (config id only used the first time)."""
        (self.data_dir / "log").mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.data_dir / "LOCK", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise RuntimeError(f"raft_dir {self.cfg.raft_dir} is locked by another databend-meta process") from None
        if self.state_file.exists():
            self.persisted = json.loads(self.state_file.read_text())
        else:
            self.persisted = {"id": self.cfg.id, "initialized": False, "partners": [], "left": False}
            self.save()

    def save(self) -> None:
        """Write the persisted node state atomically."""
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.persisted))
        os.replace(tmp, self.state_file)

    def wipe_raft_log(self) -> None:
        """Forget the local raft log (used before re-joining after this node was removed)."""
        for p in (self.journal_file, pathlib.Path(str(self.journal_file) + ".meta")):
            p.unlink(missing_ok=True)

    # ----- raft ----------------------------------------------------------------------------------------------------
    def start_raft(self, partners: list[str]) -> None:
        """Start pysyncobj with `partners` as the initial other members (the journal replays later changes)."""
        t = self.cfg.timing
        conf = SyncObjConf(
            bindAddress=self.cfg.internal_bind, dynamicMembershipChange=True,
            journalFile=str(self.journal_file), fullDumpFile=None,
            raftMinTimeout=t.raft_min_timeout, raftMaxTimeout=t.raft_max_timeout,
            appendEntriesPeriod=t.append_entries_period, connectionTimeout=t.connection_timeout,
            connectionRetryTime=t.connection_retry_time, leaderFallbackTimeout=t.leader_fallback_timeout,
            logCompactionMinEntries=2 ** 31, logCompactionMinTime=10 ** 9, maxBindRetries=10, bindRetryTime=0.3,
            commandsWaitLeader=True)
        partners = [p for p in partners if p != self.cfg.internal_addr]
        self.so = SyncObj(self.cfg.internal_addr, partners, conf=conf, consumers=[self.sm])
        self.so.addOnTickCallback(self._on_tick)
        self.so.waitBinded()
        self.log.info(f"raft started: self={self.cfg.internal_addr} partners={partners}")

    def _on_tick(self) -> None:
        """Tick-thread hook: run queued actions, keep a quiet node from electing, publish the RaftView."""
        while True:
            try:
                action = self._actions.get_nowait()
            except queue.Empty:
                break
            try:
                action()
            except Exception as e:  # an action must never break the raft tick
                self.log.warn(f"tick action failed: {type(e).__name__}: {e}")
        so = self.so
        if so is None:
            return
        now = monotonic()
        if now >= self._next_ping:
            # pysyncobj closes a connection on the next send once nothing was read for connectionTimeout; between
            # two followers nothing flows, so the first vote request after a leader loss used to be dropped (split
            # votes, +2 terms per failover). A ping no handler matches keeps those links warm.
            self._next_ping = now + self.cfg.timing.connection_timeout / 4
            transport = so._SyncObj__transport
            for peer in list(so._SyncObj__otherNodes):
                transport.send(peer, {"type": "standin_ping"})
        if self.quiet or now < self.quiet_until:
            t = self.cfg.timing
            so._SyncObj__raftElectionDeadline = monotonic() + random.uniform(t.raft_min_timeout, t.raft_max_timeout)
        try:
            self.view = self._compute_view(so)
        except (RuntimeError, IndexError) as e:   # e.g. a set changed size: try again next tick
            self.log.debug(f"view not updated: {e}")

    def _compute_view(self, so: SyncObj) -> RaftView:
        """Read SyncObj's state (tick thread only) into a RaftView; count leader changes."""
        raw = so._SyncObj__raftState
        leader = so._SyncObj__raftLeader
        connected = so._SyncObj__connectedNodes
        others = list(so._SyncObj__otherNodes)
        raft_log = so._SyncObj__raftLog
        first, last = raft_log[0][1], raft_log[-1][1]

        def term_at(i: int) -> int:
            return raft_log[i - first][2] if first <= i <= last else 0

        if raw == 2:
            leader_internal, state = self.cfg.internal_addr, "Leader"
        elif leader is not None and leader in connected:
            leader_internal, state = leader.id, "Follower"
        else:
            leader_internal, state = None, "Candidate"
        if self.quiet:
            state = "Learner"
        matched: tuple[tuple[str, int, int], ...] = ()
        if raw == 2:
            match = so._SyncObj__raftMatchIndex
            rows = [(self.cfg.internal_addr, last, term_at(last))]
            for n in others:
                idx = self._catching_up(self.catchup.get(n.id), match.get(n, 0), last)
                if idx > 0:
                    rows.append((n.id, idx, term_at(idx)))
            matched = tuple(rows)
        term = so._SyncObj__raftCurrentTerm
        applied = so._SyncObj__raftLastApplied
        window = self.own_catchup
        if window is not None:
            if monotonic() >= window[1]:
                self.own_catchup = None
            else:
                applied = self._catching_up(window, applied, applied)
                last = self._catching_up(window, last, last)
        nodes = self.sm.nodes
        view = RaftView(state=state, leader_internal=leader_internal, term=term, last_log_index=last,
                        last_applied=applied, last_applied_term=term_at(applied),
                        members=frozenset([self.cfg.internal_addr] + [n.id for n in others]), matched=matched,
                        nodes=nodes, log_items=len(raft_log), log_bytes=self._journal_size())
        if leader_internal is not None:
            lid = view.id_of(leader_internal)
            if lid is not None:
                self.term_leader.setdefault(term, lid)
            if leader_internal != self._last_leader:
                self.leader_changes += 1
                self.log.info(f"leader changed: {self._last_leader} -> {leader_internal} term={term}")
            self._last_leader = leader_internal
        return view

    @staticmethod
    def _catching_up(window: tuple[float, float] | None, real: int, last: int) -> int:
        """The log index to show for a node still catching up: growing linearly from 1 to `real` over the window,
        always below `last` while the window is open (so the leader's Replication line ends in ` *`)."""
        if window is None or real <= 1:
            return real
        start, until = window
        now = monotonic()
        if now >= until:
            return real
        shown = max(1, int(real * (now - start) / max(until - start, 1e-6)))
        return min(shown, real, max(1, last - 1))

    def start_catchup(self) -> None:
        """Joiner side, before the join request: show this node behind (LastApplied, LastLogIndex) until
        `end_catchup_in` says when the leader considers it caught up."""
        now = monotonic()
        self.own_catchup = (now, now + 600.0)

    def end_catchup_in(self, seconds: float | None) -> None:
        """Joiner side: the catch-up ends `seconds` from now (the leader's remaining window); None = no catch-up."""
        window = self.own_catchup
        if window is None or seconds is None or seconds <= 0:
            self.own_catchup = None
        else:
            self.own_catchup = (window[0], monotonic() + seconds)

    def _journal_size(self) -> int:
        try:
            return self.journal_file.stat().st_size
        except OSError:
            return 0

    def run_in_tick(self, fn: Callable[[], Any], timeout: float = 5.0) -> Any:
        """Run fn() in the raft tick thread (pysyncobj is not thread-safe) and return its result."""
        done = threading.Event()
        box: dict[str, Any] = {}

        def action() -> None:
            try:
                box["result"] = fn()
            except Exception as e:
                box["error"] = e
            finally:
                done.set()

        self._actions.put(action)
        if not done.wait(timeout):
            raise OpError("raft tick thread did not run the request in time", retryable=True)
        if "error" in box:
            raise box["error"]
        return box.get("result")

    def replicate(self, method: Callable[..., Any], *args: Any, timeout: float | None = None) -> Any:
        """Call a @replicated state-machine method; return its result once committed and applied here.

        timeout=None waits forever (a write without quorum hangs, as in databend-meta). Raises OpError.
        """
        done = threading.Event()
        box: dict[str, Any] = {}

        def on_result(res: Any, err: int) -> None:
            box["res"], box["err"] = res, err
            done.set()

        method(*args, callback=on_result)
        if not done.wait(timeout):
            raise OpError(f"timeout after {timeout}s waiting for a quorum to commit", retryable=True)
        if box["err"] != FAIL_REASON.SUCCESS:
            raise OpError(f"raft write failed: {_fail_reason(box['err'])}", retryable=True)
        return box["res"]

    def change_membership(self, kind: str, internal: str) -> None:
        """Add ('add') or remove ('rem') one raft member and wait for the commit (forever without quorum).

        One change at a time: pysyncobj refuses a change while another is uncommitted; we retry those for ~10 s.
        """
        assert self.so is not None
        fn = self.so.addNodeToCluster if kind == "add" else self.so.removeNodeFromCluster
        deadline = time.monotonic() + 10.0
        while True:
            done = threading.Event()
            box: dict[str, Any] = {}

            def on_result(res: Any, err: int) -> None:
                box["err"] = err
                done.set()

            fn(internal, callback=on_result)
            done.wait()
            err = box["err"]
            if err == FAIL_REASON.SUCCESS:
                return
            if err == FAIL_REASON.REQUEST_DENIED and time.monotonic() < deadline:
                time.sleep(0.1)
                continue
            raise OpError(f"membership change {kind} {internal} failed: {_fail_reason(err)}",
                          retryable=err != FAIL_REASON.REQUEST_DENIED)

    # ----- leader lookup -------------------------------------------------------------------------------------------
    def wait_leader(self, timeout: float) -> str | None:
        """Wait up to `timeout` s for a known live leader; return its internal address or None."""
        deadline = time.monotonic() + timeout
        while True:
            leader = self.view.leader_internal
            if leader is not None or time.monotonic() >= deadline:
                return leader
            time.sleep(0.02)

    def raft_endpoint_of(self, internal: str) -> str:
        """The raft API address (host:28004) of the member with this internal address."""
        nid = self.view.id_of(internal)
        if nid is not None:
            ep = self.view.nodes[nid]["endpoint"]
            return f"{ep['addr']}:{ep['port']}"
        host, port = wire.split_addr(internal)
        return f"{host}:{port - INTERNAL_PORT_OFFSET}"

    def own_record(self) -> dict[str, Any]:
        """This node's record as the current config describes it."""
        return {"name": str(self.node_id),
                "endpoint": {"addr": self.cfg.raft_advertise_host, "port": self.cfg.raft_api_port},
                "grpc_api_advertise_address": self.cfg.grpc_advertise_addr,
                "raft_internal": self.cfg.internal_addr}

    def in_multi_member_cluster(self) -> bool:
        return bool(self.persisted.get("initialized")) and not self.persisted.get("left") and len(self.view.members) > 1

    # ----- forwarded operations (raft API) -------------------------------------------------------------------------
    def handle_forward(self, req: dict[str, Any]) -> dict[str, Any]:
        """Run a join/leave request on the leader: here if we lead, else forward it once to the leader we know."""
        try:
            if self.view.state == "Leader":
                return self._run_on_leader(req)
            if req.get("forwarded"):
                raise OpError("ForwardToLeader: this node is not the leader", retryable=True)
            leader = self.wait_leader(2.0)
            while leader is None and self.in_multi_member_cluster():
                leader = self.wait_leader(1.0)   # no quorum: wait, like a change that cannot commit
            if leader is None:
                raise OpError("need to forward but no known leader", retryable=True)
            if leader == self.cfg.internal_addr:
                return self._run_on_leader(req)
            return self._forward(req, leader)
        except OpError as e:
            return {"ok": False, "error": e.msg, "retryable": e.retryable}

    def _forward(self, req: dict[str, Any], leader: str) -> dict[str, Any]:
        """POST the request to the leader's raft API; retry network errors up to 20 times."""
        last = ""
        for _ in range(20):
            addr = self.raft_endpoint_of(leader)
            try:
                return wire.call_json(addr, "POST", "/v1/raft/forward", {**req, "forwarded": True},
                                      headers=raft_secret.outgoing_headers(self.cfg))
            except (wire.Unreachable, OSError, RuntimeError) as e:
                last = f"forward to {addr}: {e}"
                time.sleep(1.0)
                leader = self.wait_leader(2.0) or leader
        raise OpError(last, retryable=True)

    def _run_on_leader(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "join":
            return {"ok": True, "catchup_s": self._leader_join(req)}
        elif op == "leave":
            self._leader_leave(int(req["node_id"]))
        else:
            raise OpError(f"unknown forward op {op!r}; valid: join, leave")
        return {"ok": True}

    def _leader_join(self, req: dict[str, Any]) -> float:
        """Add the node record, then the raft member. Idempotent: a voter is left as it is.

        Returns the catch-up seconds: openraft's AddVoters makes the node a voter at once (no learner phase,
        databend-meta meta_leader.rs `join`), so it is counted while it still replays the log. The stand-in shows
        that for data_bytes / [standin] catchup_bytes_per_s seconds: the leader's Replication entry for the node
        lags (with ` *`), and the node's own LastApplied is behind.
        """
        nid = int(req["node_id"])
        rec = {"name": str(nid), "endpoint": req["endpoint"],
               "grpc_api_advertise_address": req.get("grpc_api_advertise_address"),
               "raft_internal": req["raft_internal"]}
        with self._change_lock:
            if nid in self.view.voter_ids():    # as MetaLeader::join: an id that is already a voter -> Ok
                self.log.info(f"join: node {nid} is already a voter")
                return 0.0
            self.log.info(f"join: adding node {nid} at {rec['raft_internal']}")
            self.replicate(self.sm.add_node, nid, rec, True)
            catchup_s = min(600.0, self.sm.data_bytes() / max(self.cfg.timing.catchup_bytes_per_s, 1.0))
            now = monotonic()
            self.catchup[rec["raft_internal"]] = (now, now + catchup_s)
            if rec["raft_internal"] not in self.view.members:
                self.change_membership("add", rec["raft_internal"])
            self.log.info(f"join: node {nid} added; catching up for {catchup_s:.1f}s")
            return max(0.0, now + catchup_s - monotonic())    # what is left of the window

    def _leader_leave(self, nid: int) -> None:
        """Remove a member (refusing the leader itself); a non-member or the last node is a silent no-op."""
        if nid == self.node_id:
            raise OpError(f"can not leave id={nid} via itself")
        with self._change_lock:
            view = self.view
            if view.voter_ids() == [nid]:
                self.log.info("no need to leave: can not remove the last node")
                return
            rec = view.nodes.get(nid)
            if rec is not None and rec.get("raft_internal") in view.members:
                self.log.info(f"leave: removing voter {nid} ({rec['raft_internal']})")
                self.change_membership("rem", rec["raft_internal"])
            if nid in self.view.nodes:
                self.replicate(self.sm.remove_node, nid)
            self.log.info(f"leave: node {nid} removed")
        if rec is not None:
            ep = rec["endpoint"]
            try:   # best effort: tell the removed node, as if it had received the membership without itself
                wire.call_json(f"{ep['addr']}:{ep['port']}", "POST", "/v1/raft/left", {"node_id": nid}, timeout=1.0,
                               headers=raft_secret.outgoing_headers(self.cfg))
            except (OSError, RuntimeError, ValueError):
                pass

    def handle_left(self, nid: int) -> None:
        """We were removed from the cluster: remember it (a restart with `join` joins again) and stay quiet."""
        if nid != self.node_id:
            return
        self.persisted["left"] = True
        self.save()
        self.quiet = True
        self.log.info(f"node {nid} was removed from the cluster")

    # ----- transfer leader -----------------------------------------------------------------------------------------
    def trigger_transfer_leader(self, to: int | None) -> tuple[int, dict[str, Any] | str]:
        """Admin trigger_transfer_leader: (200, {from,to,voter_ids}) on the leader, else (404, text)."""
        view = self.view
        voters = view.voter_ids()
        if view.state != "Leader":
            cur = view.id_of(view.leader_internal)
            cur_txt = f"Some({cur})" if cur is not None else "None"
            return 404, (f"This node is not leader, can not transfer leadership;\nid={self.node_id}\n"
                         f"current_leader={cur_txt}\nvoter_ids=[{', '.join(map(str, voters))}]")
        if to is None:
            pos = voters.index(self.node_id) if self.node_id in voters else 0
            to = voters[(pos + 1) % len(voters)] if voters else self.node_id
        target = view.nodes.get(to, {}).get("raft_internal")
        if to != self.node_id and target in view.members:
            self._start_transfer(target, deadline=time.monotonic() + 1.5)
        return 200, {"from": self.node_id, "to": to, "voter_ids": voters}

    def _start_transfer(self, target: str, deadline: float) -> None:
        """Ask pysyncobj (in the tick thread) to hand leadership to `target`; retry while it is catching up."""
        def attempt() -> None:
            so = self.so
            if so is None or so._SyncObj__raftState != 2:
                return

            def on_result(res: Any, err: int) -> None:
                if err != FAIL_REASON.SUCCESS and time.monotonic() < deadline:
                    self._actions.put(attempt)

            so.transferLeadership(target, callback=on_result)

        self._actions.put(attempt)

    # ----- status --------------------------------------------------------------------------------------------------
    def log_id(self, term: int, index: int) -> dict[str, Any]:
        """openraft LogId JSON; the node of a term is the leader we saw in it (or the current one)."""
        leader_id = self.term_leader.get(term)
        if leader_id is None:
            leader_id = self.view.id_of(self.view.leader_internal) or (self.node_id if term else 0)
        return {"leader_id": {"term": term, "node_id": leader_id if term else 0}, "index": index}

    def status(self, binary_version: str = BINARY_VERSION) -> dict[str, Any]:
        """The /v1/cluster/status object (keys in databend-meta's order)."""
        view = self.view
        own = view.nodes.get(self.node_id)
        leader_id = view.id_of(view.leader_internal)
        voters = view.voter_ids()
        replication = None
        if view.state == "Leader":
            replication = {}
            for internal, idx, term in view.matched:
                nid = view.id_of(internal)
                if nid is not None:
                    replication[str(nid)] = self.log_id(term, idx)
        size = view.log_bytes
        return {
            "id": self.node_id,
            "binary_version": binary_version,
            "data_version": DATA_VERSION,
            "endpoint": f"{own['endpoint']['addr']}:{own['endpoint']['port']}" if own else None,
            "raft_log": {"cache_items": view.log_items, "cache_used_size": size, "wal_total_size": size,
                         "wal_open_chunk_size": size, "wal_offset": size, "wal_closed_chunk_count": 0,
                         "wal_closed_chunk_total_size": 0, "wal_closed_chunk_sizes": {}},
            "snapshot_key_count": len(self.sm.kv),
            "state": view.state,
            "is_leader": view.state == "Leader",
            "current_term": view.term,
            "last_log_index": view.last_log_index,
            "last_applied": self.log_id(view.last_applied_term, view.last_applied),
            "snapshot_last_log_id": None,
            "purged": None,
            "leader": node_json(leader_id, view.nodes[leader_id]) if leader_id is not None else None,
            "replication": replication,
            "voters": [node_json(i, view.nodes[i]) for i in voters],
            "non_voters": [],
            "last_seq": self.sm.last_seq,
        }

    def metrics(self) -> str:
        """Prometheus/OpenMetrics text with the metasrv_server_* series."""
        view = self.view
        leader_id = view.id_of(view.leader_internal)
        gauges = [
            ("current_leader_id", "current leader", leader_id or 0),
            ("is_leader", "whether this node is the leader", int(view.state == "Leader")),
            ("node_is_health", "whether this node is healthy (Follower or Leader)",
             int(view.state in ("Leader", "Follower"))),
            ("current_term", "current raft term", view.term),
            ("last_log_index", "last log index", view.last_log_index),
            ("last_seq", "last sequence number of the kv store", self.sm.last_seq),
            ("proposals_applied", "proposals applied", view.last_applied),
            ("proposals_pending", "proposals pending", 0),
            ("applying_snapshot", "whether a snapshot is being applied", 0),
            ("watchers", "number of watchers", 0),
            ("snapshot_key_count", "keys in the state machine", len(self.sm.kv)),
            ("raft_log_size", "raft log size in bytes", view.log_bytes),
        ]
        out = []
        for name, help_text, value in gauges:
            out += [f"# HELP metasrv_server_{name} {help_text}.", f"# TYPE metasrv_server_{name} gauge",
                    f"metasrv_server_{name} {value}"]
        for name, help_text, value in [("leader_changes", "number of leader changes seen", self.leader_changes),
                                       ("proposals_failed", "proposals failed", 0),
                                       ("read_failed", "reads failed", 0)]:
            out += [f"# HELP metasrv_server_{name} {help_text}.", f"# TYPE metasrv_server_{name} counter",
                    f"metasrv_server_{name}_total {value}"]
        out += ["# HELP metasrv_server_version databend-meta version.", "# TYPE metasrv_server_version gauge",
                f'metasrv_server_version{{component="metasrv",semver="{BINARY_VERSION}",sha="standin"}} 1',
                "# EOF"]
        return "\n".join(out) + "\n"

    def shutdown(self) -> None:
        """Stop raft (best effort, quick): the journal is closed; the HTTP threads die with the process."""
        for s in self.servers:
            try:
                s.socket.close()
            except OSError:
                pass
        so = self.so
        if so is not None:
            so.destroy()
            thread = so._SyncObj__thread
            if thread is not None:
                thread.join(0.5)


def _fail_reason(code: int) -> str:
    names = {v: k for k, v in vars(FAIL_REASON).items() if not k.startswith("_")}
    return names.get(code, str(code))
