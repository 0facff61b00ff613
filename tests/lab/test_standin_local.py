"""The databend-meta stand-in run directly (no lab, no systemd): processes on loopback 127.0.0.x, temp raft dirs.

Each test gets its own block of 5 loopback addresses (127.0.0.21-25, 26-30, ...; default ports on each), so tests
never share a port. Every process is started with subprocess and stopped by its PID in the fixture teardown.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")
_blocks = itertools.count()


def wait_for(what: str, fn: Callable[[], T | None], timeout: float = 15.0, poll: float = 0.05) -> T:
    """Poll fn() until it returns a truthy value; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except (OSError, ValueError, KeyError) as e:
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


def http_get(addr: str, path: str, method: str = "GET", timeout: float = 2.0) -> tuple[int, str, str]:
    """(status, content type, body) of one HTTP request."""
    req = urllib.request.Request(f"http://{addr}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


class LocalCluster:
    """Stand-in nodes 1..5 on 127.0.0.<base+n>, each with its own config, raft dir and log dir under `tmp`."""

    def __init__(self, tmp: Path, base: int) -> None:
        self.tmp, self.base = tmp, base
        self.procs: dict[int, subprocess.Popen[str]] = {}
        self.offsets: dict[int, int] = {}
        self.clients: list[subprocess.Popen[str]] = []
        self.env = {**os.environ, "PYTHONPATH": str(REPO / "sandbox")}   # `standin` as on the hosts

    def ip(self, n: int) -> str:
        return f"127.0.0.{self.base + n}"

    def raft(self, n: int) -> str:
        return f"{self.ip(n)}:28004"

    def grpc(self, n: int) -> str:
        return f"{self.ip(n)}:9191"

    def admin(self, n: int) -> str:
        return f"{self.ip(n)}:28002"

    def write_config(self, n: int, *, node_id: int | None = None, single: bool = False,
                     join: list[int] | None = None, extra: str = "", advertise: str | None = "",
                     raft_extra: str = "") -> Path:
        """Write node n's TOML (listen = advertise = its own IP) and return its path.

        `advertise`: grpc_api_advertise_host ("" = the node's IP, None = the key left out); `raft_extra`: lines
        appended to [raft_config]."""
        ip = self.ip(n)
        adv = "" if advertise is None else f'grpc_api_advertise_host = "{advertise or ip}"'

        mode = "single = true" if single else f"join = {json.dumps([self.raft(j) for j in join or []])}"
        if not single and not join:
            mode = ""
        path = self.tmp / f"n{n}.toml"
        path.write_text(f'''admin_api_address = "{ip}:28002"
grpc_api_address = "{ip}:9191"
{adv}
{extra}
[log.file]
dir = "{self.tmp}/log{n}"

[raft_config]
id = {node_id if node_id is not None else n}
raft_dir = "{self.tmp}/raft{n}"
raft_api_port = 28004
raft_listen_host = "{ip}"
raft_advertise_host = "{ip}"
cluster_name = "local"
{mode}
{raft_extra}''')
        return path

    def start(self, n: int, **kw: Any) -> subprocess.Popen[str]:
        """Start node n (writing its config unless kw is empty and one exists)."""
        path = self.tmp / f"n{n}.toml"
        if kw or not path.exists():
            path = self.write_config(n, **kw)
        out_path = self.tmp / f"out{n}.txt"
        self.offsets[n] = out_path.stat().st_size if out_path.exists() else 0
        out = open(out_path, "a")
        proc = subprocess.Popen([sys.executable, "-m", "standin.meta", "--config-file", str(path)],
                                stdout=out, stderr=subprocess.PIPE, text=True, cwd=self.tmp, env=self.env)
        self.procs[n] = proc
        return proc

    def start_cluster(self, size: int = 3) -> None:
        """Node 1 `single`, the others `join` node 1; wait until every node reports the same leader and voters."""
        self.start(1, single=True)
        self.wait_started(1)
        for n in range(2, size + 1):
            self.start(n, join=[1])
        for n in range(2, size + 1):
            self.wait_started(n)
        self.wait_voters(set(range(1, size + 1)), range(1, size + 1))

    def output(self, n: int) -> str:
        """Node n's stdout since its latest start."""
        return (self.tmp / f"out{n}.txt").read_text()[self.offsets.get(n, 0):]

    def wait_started(self, n: int, timeout: float = 20.0) -> None:
        wait_for(f"node {n} to print 'Databend Metasrv started'",
                 lambda: "Databend Metasrv started" in self.output(n) or self._died(n), timeout)
        assert self.procs[n].poll() is None, f"node {n} exited: {self.procs[n].stderr.read()}"

    def _died(self, n: int) -> bool:
        return self.procs[n].poll() is not None

    def status(self, n: int) -> dict[str, Any]:
        code, _, body = http_get(self.admin(n), "/v1/cluster/status")
        assert code == 200, body
        return json.loads(body)

    def leader_of(self, n: int) -> int | None:
        st = self.status(n)
        return int(st["leader"]["name"]) if st["leader"] else None

    def voters_of(self, n: int) -> set[int]:
        return {int(v["name"]) for v in self.status(n)["voters"]}

    def wait_voters(self, voters: set[int], nodes: Any, timeout: float = 15.0) -> int:
        """Wait until all `nodes` agree on one leader and on `voters`; return the leader id."""
        def agreed() -> int | None:
            leaders = {self.leader_of(n) for n in nodes}
            if len(leaders) == 1 and None not in leaders and all(self.voters_of(n) == voters for n in nodes):
                return leaders.pop()
            return None
        return wait_for(f"nodes {list(nodes)} to agree on a leader and voters {sorted(voters)}", agreed, timeout)

    def kill(self, n: int, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[n]
        if proc.poll() is None:
            proc.send_signal(sig)
            proc.wait(10)

    def run(self, program: str, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run databend-meta (`meta`) or databend-metactl (`metactl`) once, in the temp dir."""
        return subprocess.run([sys.executable, "-m", f"standin.{program}", *args], capture_output=True,
                              text=True, timeout=timeout, cwd=self.tmp, env=self.env)

    def metactl_status(self, n: int) -> str:
        r = self.run("metactl", "status", "--grpc-api-address", self.grpc(n))
        assert r.returncode == 0, r.stderr
        return r.stdout

    def stop_all(self) -> None:
        for proc in [*self.procs.values(), *self.clients]:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A LocalCluster on its own address block (nothing started yet); every process killed afterwards."""
    block = next(_blocks) % 16
    c = LocalCluster(tmp_path, 20 + 5 * block)
    try:
        yield c
    finally:
        c.stop_all()


@pytest.fixture
def cluster3(cluster: LocalCluster) -> LocalCluster:
    """Three voters formed the documented way (node 1 single, nodes 2-3 join)."""
    cluster.start_cluster(3)
    return cluster


# ----- formation and status ------------------------------------------------------------------------------------------
STATUS_LINE_PATTERNS = [
    r"BinaryVersion: \S+", r"DataVersion: V004", r"RaftLogSize: \d+", r"RaftLog:", r"  - CacheItems: \d+",
    r"  - CacheUsedSize: \d+", r"  - WALTotalSize: \d+", r"  - WALOpenChunkSize: \d+", r"  - WALOffset: \d+",
    r"  - WALClosedChunkCount: \d+", r"  - WALClosedChunkTotalSize: \d+", r"  - WALClosedChunkSizes:",
    r"SnapshotKeyCount: \d+", r"Node: id=\d+ raft=.+:\d+", r"State: (Leader|Follower)",
    r"Leader: id=\d+ raft=\S+:28004 grpc=\S+:9191", r"CurrentTerm: \d+", r"LastSeq: \d+", r"LastLogIndex: \d+",
    r"LastApplied: T\d+-N\d+\.\d+",
]


def test_formation_status_format_line_by_line(cluster3: LocalCluster) -> None:
    c = cluster3
    leader = c.leader_of(1)
    for n in (1, 2, 3):
        lines = c.metactl_status(n).splitlines()
        head = lines[:len(STATUS_LINE_PATTERNS)]
        for pattern, line in zip(STATUS_LINE_PATTERNS, head, strict=True):
            assert re.fullmatch(pattern, line), f"node {n}: {line!r} !~ {pattern!r}"
        assert lines[13] == f"Node: id={n} raft={c.raft(n)}"
        assert lines[14] == ("State: Leader" if n == leader else "State: Follower")
        assert lines[15] == f"Leader: id={leader} raft={c.raft(leader)} grpc={c.grpc(leader)}"
        rest = lines[len(STATUS_LINE_PATTERNS):]
        voters = [f"  - id={i} raft={c.raft(i)} grpc={c.grpc(i)}" for i in (1, 2, 3)]
        if n == leader:
            assert rest[0] == "Replication:"
            repl = rest[1:4]
            assert sorted(int(re.fullmatch(r"  - \[(\d+)\] T\d+-N\d+\.\d+( \*)?", r).group(1)) for r in repl) == [1, 2, 3]
            assert rest[4:] == ["Voters:", *voters]
        else:
            assert rest == ["Voters:", *voters], "followers print no Replication block"


def test_banner_and_log_file(cluster: LocalCluster) -> None:
    c = cluster
    c.start(1, single=True)
    c.wait_started(1)
    out = c.output(1)
    for line in ["Databend Metasrv", "Working DataVersion: V004(2024-11-11: WAL based raft-log)",
                 "Raft  Id: 1; Cluster: local", "      Status: single", f"HTTP API listen at: {c.admin(1)}",
                 f"gRPC API listen at: {c.grpc(1)} advertise: {c.grpc(1)}",
                 f"Raft API listen at: {c.raft(1)} advertise: {c.raft(1)}", "Leader Id: 1", "    Register-node: Ok"]:
        assert line in out.splitlines(), f"missing banner line {line!r}"
    assert out.index("Register-node: Ok") < out.index("Databend Metasrv started")
    logs = list((c.tmp / "log1").glob("databend-meta-1@local-*.log"))
    assert len(logs) == 1 and "Databend Metasrv started" in logs[0].read_text()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_shut_down_cleanly(cluster: LocalCluster, sig: int) -> None:
    c = cluster
    proc = c.start(1, single=True)
    c.wait_started(1)
    proc.send_signal(sig)
    assert proc.wait(10) == 0
    assert c.output(1).splitlines()[-1] == "Databend Metasrv shutdown"


def test_config_validation_messages(cluster: LocalCluster) -> None:
    c = cluster
    r = c.run("meta", "--config-file", str(c.write_config(1)))
    assert (r.returncode, r.stderr.strip(), r.stdout) == (
        1, "Error: at least one of `single` and `join` needs to be enabled", "")
    both = c.write_config(1, single=True, extra="")
    both.write_text(both.read_text() + f'join = ["{c.raft(2)}"]\n')
    r = c.run("meta", "--config-file", str(both))
    assert (r.returncode, r.stderr.strip()) == (1, "Error: at least one of `single` and `join` needs to be enabled")
    r = c.run("meta", "--config-file", str(c.write_config(1, join=[2, 1])))
    assert (r.returncode, r.stderr.strip()) == (1, "Error: --join must not be set to itself")


def test_node_id_is_persisted_in_raft_dir(cluster: LocalCluster) -> None:
    c = cluster
    c.start(1, node_id=7, single=True)
    c.wait_started(1)
    c.kill(1, signal.SIGTERM)
    c.start(1, node_id=9, single=True)
    c.wait_started(1)
    st = c.status(1)
    assert st["id"] == 7 and [v["name"] for v in st["voters"]] == ["7"]


def test_join_failure_exits_1_after_http_was_up(cluster: LocalCluster) -> None:
    c = cluster
    proc = c.start(4, join=[1])               # nothing listens on node 1's address
    wait_for("admin /v1/health while joining", lambda: http_get(c.admin(4), "/v1/health")[0] == 200, 10)
    assert proc.wait(30) == 1
    assert proc.stderr.read().startswith(f'Error: fail to join node-4 to cluster via ["{c.raft(1)}"], errors:')


# ----- leader changes ------------------------------------------------------------------------------------------------
def test_failover_after_sigkill_of_the_leader(cluster3: LocalCluster) -> None:
    c = cluster3
    timings = []
    for _ in range(3):
        leader = c.wait_voters({1, 2, 3}, (1, 2, 3))
        term = c.status(leader)["current_term"]
        others = [n for n in (1, 2, 3) if n != leader]
        started = time.monotonic()
        c.kill(leader)
        new = wait_for("a new leader on both survivors", lambda: (
            len({c.leader_of(n) for n in others}) == 1 and c.leader_of(others[0]) in others
            and c.leader_of(others[0])), 10, poll=0.02)
        timings.append(time.monotonic() - started)
        assert c.status(new)["current_term"] > term
        c.start(leader)
        c.wait_started(leader)
    print(f"\nfailover after SIGKILL of the leader: {[round(t, 2) for t in timings]} s, "
          f"median {statistics.median(timings):.2f} s")
    assert statistics.median(timings) < 4.0


def test_transfer_leader_default_target_and_term(cluster3: LocalCluster) -> None:
    c = cluster3
    leader = c.leader_of(1)
    term = c.status(leader)["current_term"]
    target = {1: 2, 2: 3, 3: 1}[leader]         # the voter after the leader, wrapping
    started = time.monotonic()
    r = c.run("metactl", "transfer-leader", "--admin-api-address", c.admin(leader))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"triggered leader transfer from {leader} to {target}.", "voter ids: [1, 2, 3]"]
    wait_for("leadership to move", lambda: all(c.leader_of(n) == target for n in (1, 2, 3)), 3, poll=0.01)
    elapsed = time.monotonic() - started
    print(f"\ntransfer-leader: leadership moved in {elapsed:.2f} s (including metactl start)")
    assert elapsed < 1.5
    assert c.status(target)["current_term"] > term


def test_transfer_leader_to_and_not_leader_404(cluster3: LocalCluster) -> None:
    c = cluster3
    leader = c.leader_of(1)
    other = next(n for n in (3, 2, 1) if n != leader)
    code, ctype, body = http_get(c.admin(leader), f"/v1/ctrl/trigger_transfer_leader?to={other}")
    assert (code, json.loads(body)) == (200, {"from": leader, "to": other, "voter_ids": [1, 2, 3]})
    wait_for(f"node {other} to lead", lambda: c.leader_of(1) == other, 3, poll=0.01)
    code, ctype, body = http_get(c.admin(leader), "/v1/ctrl/trigger_transfer_leader")
    assert code == 404 and ctype.startswith("text/plain")
    assert body == (f"This node is not leader, can not transfer leadership;\nid={leader}\n"
                    f"current_leader=Some({other})\nvoter_ids=[1, 2, 3]")
    r = c.run("metactl", "transfer-leader", "--admin-api-address", c.admin(leader))
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("Error: status code: 404 Not Found, msg: This node is not leader")


# ----- leave / join ----------------------------------------------------------------------------------------------------
def test_leave_follower_then_rejoin_with_old_raft_dir(cluster3: LocalCluster) -> None:
    c = cluster3
    leader = c.leader_of(1)
    gone = next(n for n in (3, 2, 1) if n != leader)
    r = c.run("meta", "--leave-id", str(gone), "--leave-via", c.raft(leader))
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    rest = [n for n in (1, 2, 3) if n != gone]
    c.wait_voters(set(rest), rest)
    code, _, body = http_get(c.admin(leader), "/v1/cluster/nodes")
    assert [n["name"] for n in json.loads(body)] == [str(n) for n in rest]
    c.kill(gone, signal.SIGTERM)
    c.start(gone)                                   # same raft dir, config still has `join`
    c.wait_started(gone)
    c.wait_voters({1, 2, 3}, (1, 2, 3))


def test_leave_of_the_leader_is_refused_via_any_node(cluster3: LocalCluster) -> None:
    c = cluster3
    leader = c.leader_of(1)
    follower = next(n for n in (1, 2, 3) if n != leader)
    for via in (leader, follower):
        r = c.run("meta", "--leave-id", str(leader), "--leave-via", c.raft(via))
        assert r.returncode == 1 and r.stdout == ""
        assert r.stderr.startswith(f'Error: fail to leave {leader} cluster via ["{c.raft(via)}"], caused by errors:')
        assert f"can not leave id={leader} via itself" in r.stderr
    assert c.voters_of(follower) == {1, 2, 3}


def test_leave_of_a_non_member_is_silent_and_changes_nothing(cluster3: LocalCluster) -> None:
    c = cluster3
    before = c.status(1)["voters"]
    r = c.run("meta", "--leave-id", "9", "--leave-via", c.raft(4), "--leave-via", c.raft(2))
    assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), "first via unreachable, second answers"
    assert c.status(1)["voters"] == before


def test_leave_with_every_via_unreachable_fails(cluster: LocalCluster) -> None:
    r = cluster.run("meta", "--leave-id", "2", "--leave-via", cluster.raft(4), "--leave-via", cluster.raft(5))
    assert r.returncode == 1
    assert r.stderr.startswith(f'Error: fail to leave 2 cluster via ["{cluster.raft(4)}", "{cluster.raft(5)}"], '
                               "caused by errors:")
    assert r.stderr.count("while: leave 2 via:") == 2


def test_leave_via_space_separated_is_a_usage_error(cluster: LocalCluster) -> None:
    r = cluster.run("meta", "--leave-id", "2", "--leave-via", cluster.raft(1), cluster.raft(2))
    assert r.returncode == 2 and "unrecognized arguments" in r.stderr


def test_leave_of_the_last_node_changes_nothing(cluster: LocalCluster) -> None:
    """The only voter is the leader: databend-meta checks `via itself` before `last node`, so it is refused."""
    c = cluster
    c.start(1, single=True)
    c.wait_started(1)
    r = c.run("meta", "--leave-id", "1", "--leave-via", c.raft(1))
    assert r.returncode == 1 and "can not leave id=1 via itself" in r.stderr
    assert c.voters_of(1) == {1} and c.leader_of(1) == 1


def test_scale_up_fourth_node_and_member_list(cluster3: LocalCluster) -> None:
    c = cluster3
    c.start(4, join=[1, 2, 3])
    c.wait_started(4)
    c.wait_voters({1, 2, 3, 4}, (1, 2, 3, 4))
    r = c.run("metactl", "member-list", "--grpc-api-address", c.grpc(4))
    assert r.returncode == 0 and r.stdout.splitlines() == [c.grpc(n) for n in (1, 2, 3, 4)]


def test_restart_of_a_voter_skips_join(cluster3: LocalCluster) -> None:
    c = cluster3
    c.kill(3, signal.SIGTERM)
    c.start(3)
    c.wait_started(3)
    assert "skip joining, because: node 3 already in cluster" in c.output(3)
    c.wait_voters({1, 2, 3}, (1, 2, 3))


def test_quorum_loss_no_leader_and_leave_hangs(cluster3: LocalCluster) -> None:
    c = cluster3
    survivor = 1
    c.kill(2)
    c.kill(3)
    wait_for("the survivor to have no leader", lambda: c.leader_of(survivor) is None, 10)
    text = c.metactl_status(survivor)
    assert "State: Candidate" in text and "Leader:" not in text
    metrics = http_get(c.admin(survivor), "/v1/metrics")[2]
    assert "metasrv_server_current_leader_id 0" in metrics and "metasrv_server_node_is_health 0" in metrics
    leave = subprocess.Popen([sys.executable, "-m", "standin.meta", "--leave-id", "3",
                              "--leave-via", c.raft(survivor)], cwd=c.tmp, env=c.env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    c.clients.append(leave)
    with pytest.raises(subprocess.TimeoutExpired):
        leave.wait(4)                                  # hangs: the change cannot reach a quorum
    leave.kill()
    leave.wait(5)


# ----- kv, admin, metactl, query -------------------------------------------------------------------------------------
def test_kv_writes_are_replicated_and_readable_everywhere(cluster3: LocalCluster) -> None:
    c = cluster3
    follower = next(n for n in (1, 2, 3) if n != c.leader_of(1))
    r = c.run("meta", "--grpc-api-address", c.grpc(follower), "--cmd", "kvapi::upsert", "--key", "k1",
              "--value", "v1")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["result"] == {"seq": 1, "meta": None, "data": "v1"}
    for n in (1, 2, 3):
        def read() -> dict[str, Any] | None:
            out = c.run("meta", "--grpc-api-address", c.grpc(n), "--cmd", "kvapi::get", "--key", "k1").stdout
            return json.loads(out)
        assert wait_for(f"k1 on node {n}", read, 3) == {"seq": 1, "meta": None, "data": "v1"}
    r = c.run("meta", "--grpc-api-address", c.grpc(1), "--cmd", "kvapi::list", "--prefix", "k")
    assert json.loads(r.stdout) == [["k1", {"seq": 1, "meta": None, "data": "v1"}]]
    wait_for("LastSeq 1 on every node", lambda: all(c.status(n)["last_seq"] == 1 for n in (1, 2, 3)), 3)


def test_admin_http_routes(cluster3: LocalCluster) -> None:
    c = cluster3
    a = c.admin(2)
    assert http_get(a, "/v1/health")[::2] == (200, '{"status": "pass"}')
    nodes = json.loads(http_get(a, "/v1/cluster/nodes")[2])
    assert nodes == [{"name": str(n), "endpoint": {"addr": c.ip(n), "port": 28004},
                      "grpc_api_advertise_address": c.grpc(n)} for n in (1, 2, 3)]
    st = json.loads(http_get(a, "/v1/cluster/status")[2])
    assert list(st) == ["id", "binary_version", "data_version", "endpoint", "raft_log", "snapshot_key_count",
                        "state", "is_leader", "current_term", "last_log_index", "last_applied",
                        "snapshot_last_log_id", "purged", "leader", "replication", "voters", "non_voters", "last_seq"]
    assert st["endpoint"] == c.raft(2) and set(st["last_applied"]) == {"leader_id", "index"}
    leader = c.leader_of(2)
    assert (st["replication"] is None) == (leader != 2)
    assert set(json.loads(http_get(c.admin(leader), "/v1/cluster/status")[2])["replication"]) == {"1", "2", "3"}
    assert http_get(a, "/v1/ctrl/trigger_snapshot")[::2] == (200, "null")
    assert json.loads(http_get(a, "/v1/features/list")[2]) == {"features": ["dummy", "dummy_feature2"], "enabled": []}
    assert http_get(a, "/v1/config")[0] == 200
    assert http_get(a, "/v1/health", method="POST")[0] == 405
    assert http_get(a, "/v1/cluster/nodes", method="DELETE")[0] == 405
    assert http_get(a, "/v1/no/such/route")[0] == 404


def test_metrics_gauges(cluster3: LocalCluster) -> None:
    c = cluster3
    leader = c.leader_of(1)
    for n in (1, 2, 3):
        text = http_get(c.admin(n), "/v1/metrics")[2]
        values = dict(re.findall(r"^(metasrv_server_\w+) (\d+)$", text, re.M))
        assert values["metasrv_server_current_leader_id"] == str(leader)
        assert values["metasrv_server_is_leader"] == str(int(n == leader))
        assert values["metasrv_server_node_is_health"] == "1"
        assert int(values["metasrv_server_leader_changes_total"]) >= 1
        assert int(values["metasrv_server_current_term"]) >= 1 and int(values["metasrv_server_last_log_index"]) > 1
        for name in ("current_leader_id", "is_leader", "node_is_health", "current_term", "last_log_index"):
            assert f"# HELP metasrv_server_{name} " in text and f"# TYPE metasrv_server_{name} gauge" in text
        assert "# TYPE metasrv_server_leader_changes counter" in text and text.endswith("# EOF\n")


def test_metactl_unreachable_and_cwd_logs(cluster: LocalCluster, tmp_path: Path) -> None:
    c = cluster
    r = c.run("metactl", "status", "--grpc-api-address", c.grpc(5))
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr.startswith("Error: ") and f"cannot connect to http://{c.grpc(5)}" in r.stderr
    assert (tmp_path / ".databend" / "logs").is_dir()
    r = c.run("metactl", "transfer-leader", "--admin-api-address", c.admin(5))
    assert r.returncode == 1 and r.stderr.startswith(
        f"Error: error sending request for url (http://{c.admin(5)}/v1/ctrl/trigger_transfer_leader)")


def test_status_latency(cluster: LocalCluster) -> None:
    c = cluster
    c.start(1, single=True)
    c.wait_started(1)
    http_ms, cli_ms = [], []
    for _ in range(20):
        t0 = time.perf_counter()
        http_get(c.grpc(1), "/v1/grpc/status")
        http_ms.append((time.perf_counter() - t0) * 1000)
    for _ in range(5):
        t0 = time.perf_counter()
        c.metactl_status(1)
        cli_ms.append((time.perf_counter() - t0) * 1000)
    print(f"\nstatus latency: server {statistics.median(http_ms):.1f} ms, "
          f"metactl process {statistics.median(cli_ms):.0f} ms (medians)")
    assert statistics.median(http_ms) < 50 and statistics.median(cli_ms) < 2000   # the machine is shared


def _query_config(c: LocalCluster, endpoints: list[str]) -> Path:
    path = c.tmp / "query.toml"
    path.write_text(f'[query]\nadmin_api_address = "{c.ip(5)}:8080"\n[log.file]\ndir = "{c.tmp}/qlog"\n'
                    f"[meta]\nendpoints = {json.dumps(endpoints)}\nclient_timeout_in_second = 2\n"
                    "auto_sync_interval = 0\n")
    return path


def test_query_refuses_to_start_without_a_live_meta_node(cluster: LocalCluster) -> None:
    c = cluster
    r = c.run("query", "--config-file", str(_query_config(c, [c.grpc(1), c.grpc(2)])))
    assert r.returncode == 1 and "none is a live databend-meta node" in r.stderr
    assert "none of the meta endpoints" in r.stdout


def test_query_serves_health_with_a_live_meta_node(cluster: LocalCluster) -> None:
    c = cluster
    c.start(1, single=True)
    c.wait_started(1)
    q = subprocess.Popen([sys.executable, "-m", "standin.query", "--config-file",
                          str(_query_config(c, [c.grpc(2), c.grpc(1)]))], cwd=c.tmp, env=c.env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    c.clients.append(q)
    wait_for("query /v1/health", lambda: http_get(f"{c.ip(5)}:8080", "/v1/health")[0] == 200, 10)
    assert q.poll() is None


# ----- packaging (sandbox/standin/install.py) --------------------------------------------------------------------------
def test_installed_package_runs_with_debian_python(tmp_path: Path) -> None:
    """The host layout works with /usr/bin/python3 -I (stdlib + the copied pysyncobj only)."""
    sys.path.insert(0, str(REPO))
    from sandbox.standin import install
    install.install_meta_package(tmp_path)
    install.install_query_package(tmp_path, ["127.100.0.11:9191"])
    lib = tmp_path / "usr/lib/databend-standin"
    assert (lib / "pysyncobj/syncobj.py").is_file() and (lib / "standin/node.py").is_file()
    for prog in ("databend-meta", "databend-metactl", "databend-query"):
        launcher = (tmp_path / "usr/bin" / prog).read_text()
        assert launcher.startswith("#!/usr/bin/python3\n") and 'sys.path.insert(0, "/usr/lib/databend-standin")' in launcher
    code = (f"import sys; sys.path.insert(0, {str(lib)!r}); import standin.node, standin.query, standin.metactl; "
            "from standin.meta import main; sys.exit(main(['--cmd', 'ver']))")
    r = subprocess.run(["/usr/bin/python3", "-I", "-c", code], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("version: ")
    unit = (tmp_path / "etc/systemd/system/databend-meta.service").read_text()
    for line in ("User=databend", "Group=databend", "Restart=no", "WantedBy=multi-user.target",
                 "ExecStart=/usr/bin/databend-meta --config-file /etc/databend/databend-meta.toml",
                 "ExecReload=/bin/kill -HUP $MAINPID"):
        assert line in unit.splitlines()
    assert (tmp_path / "var/lib/databend/raft").is_dir() and (tmp_path / "var/log/databend").is_dir()


def test_rendered_configs() -> None:
    import tomllib
    sys.path.insert(0, str(REPO))
    from sandbox.standin import install
    packaged = tomllib.loads((REPO / "sandbox/standin/packaged.py").read_text().split("'''")[1])
    assert packaged["raft_config"]["id"] == 0 and packaged["raft_config"]["single"] is True
    assert packaged["grpc_api_advertise_host"] == "localhost" and packaged["admin_api_address"] == "0.0.0.0:28002"
    text = install.render_meta_config(2, "127.100.0.12", False, ["127.100.0.11:28004", "127.100.0.12:28004"])
    doc = tomllib.loads(text)
    raft = doc["raft_config"]
    assert (raft["id"], raft["raft_advertise_host"], doc["grpc_api_advertise_host"]) == (2, "127.100.0.12", "127.100.0.12")
    assert "single" not in raft and raft["join"] == ["127.100.0.11:28004", "127.100.0.12:28004"]
    assert "# single        = true" in text and "# NOTE: uncomment this line after the first run." in text
    assert (doc["admin_api_address"], doc["grpc_api_address"], raft["raft_listen_host"]) == (
        "127.100.0.12:28002", "127.100.0.12:9191", "127.100.0.12")
    with pytest.raises(ValueError, match="not an IPv4 address"):
        install.render_meta_config(2, "meta2", False, ["127.100.0.11:28004"])
    first = tomllib.loads(install.render_meta_config(1, "127.100.0.11", True, []))["raft_config"]
    assert first["single"] is True and "join" not in first
    q = tomllib.loads(install.render_query_config(["127.100.0.11:9191", "127.100.0.12:9191"]))
    assert q["meta"]["endpoints"] == ["127.100.0.11:9191", "127.100.0.12:9191"]
    with pytest.raises(ValueError, match="meta_grpc_endpoints"):
        install.render_query_config([])


# ----- issue #9 item 5: an older databend-meta release (sandbox/standin/version.py) -----------------------------------
def _run_as(c: LocalCluster, release: str, program: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run databend-meta/metactl once as release `release` ("" = the newest)."""
    env = {**c.env, "DATABEND_STANDIN_VERSION": release}
    return subprocess.run([sys.executable, "-m", f"standin.{program}", *args], capture_output=True, text=True,
                          timeout=30, cwd=c.tmp, env=env)


def test_cmd_ver_follows_the_installed_release(cluster: LocalCluster) -> None:
    c = cluster
    assert _run_as(c, "1.2.500", "meta", "--cmd", "ver").stdout.splitlines() == [
        "version: 1.2.500-nightly", "min-compatible-client-version: 0.9.41",
        "data-version: V002(2023-07-22: Store snapshot in a file)"]
    assert _run_as(c, "v1.2.600-nightly", "meta", "--cmd", "ver").stdout.splitlines()[::2] == [
        "version: 1.2.600-nightly", "data-version: V003(2024-05-31: Store snapshot in rotbl)"]
    assert _run_as(c, "", "meta", "--cmd", "ver").stdout.splitlines() == [
        "version: 1.2.934-nightly", "min-compatible-client-version: 1.2.676",
        "data-version: V004(2024-11-11: WAL based raft-log)"]
    r = _run_as(c, "2.0.1", "meta", "--cmd", "ver")
    assert r.returncode == 1 and r.stderr.startswith("Error: stand-in version '2.0.1' is not valid: use 1.2.N")


def test_old_release_metactl_flag_form_and_formats(cluster: LocalCluster) -> None:
    """v1.2.500: `status`/`transfer-leader` are clap usage errors; `--status` prints the v1.2.468-611 lines with
    openraft 0.9 LogIds; the server reports its own BinaryVersion/DataVersion. Newer clients print their formats."""
    c = cluster
    c.env = {**c.env, "DATABEND_STANDIN_VERSION": "1.2.500"}
    c.start(1, single=True)
    c.wait_started(1)
    assert "Version: v1.2.500-nightly-standin" in c.output(1).splitlines()
    for words in (["status"], ["transfer-leader", "--to", "2"], ["status", "--grpc-api-address", c.grpc(1)]):
        r = _run_as(c, "1.2.500", "metactl", *words)
        assert (r.returncode, r.stdout) == (2, "")
        assert r.stderr.startswith(f"error: unexpected argument '{words[0]}' found\n\nUsage: databend-metactl [OPTIONS]")
    r = _run_as(c, "1.2.500", "metactl", "--status", "--grpc-api-address", c.grpc(1))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    patterns = [r"BinaryVersion: v1\.2\.500-nightly-standin", r"DataVersion: V002", r"DBSize: \d+", r"KeyNumber: \d+",
                rf"Node: id=1 raft={c.raft(1)}", r"State: Leader", rf"Leader: id=1 raft={c.raft(1)} grpc={c.grpc(1)}",
                r"CurrentTerm: \d+", r"LastSeq: \d+", r"LastLogIndex: \d+", r"LastApplied: \d+-1-\d+",
                "Replication:", r"  - \[1\] \d+-1-\d+", "Voters:", rf"  - id=1 raft={c.raft(1)} grpc={c.grpc(1)}"]
    for pattern, line in zip(patterns, lines, strict=True):
        assert re.fullmatch(pattern, line), f"{line!r} !~ {pattern!r}"
    r = _run_as(c, "1.2.400", "metactl", "--status", "--grpc-api-address", c.grpc(1))
    assert r.returncode == 0 and "KeyNumber:" not in r.stdout and "DBSize: " in r.stdout, "no KeyNumber before 468"
    r = _run_as(c, "1.2.650", "metactl", "status", "--grpc-api-address", c.grpc(1))    # 612-657: subcommand, DBSize
    assert r.returncode == 0 and [ln.split(":")[0] for ln in r.stdout.splitlines()[2:4]] == ["DBSize", "KeyNumber"]
    assert "RaftLog:" not in r.stdout
    r = _run_as(c, "1.2.650", "metactl", "member-list")
    assert r.returncode == 2 and r.stderr.startswith("error: unrecognized subcommand 'member-list'")
    r = _run_as(c, "", "metactl", "--status", "--grpc-api-address", c.grpc(1))
    assert r.returncode == 2 and r.stderr.startswith("error: unexpected argument '--status' found"), r.stderr
    r = _run_as(c, "", "metactl", "status", "--grpc-api-address", c.grpc(1))
    assert r.returncode == 0 and "RaftLog:" in r.stdout.splitlines() and re.search(
        r"^LastApplied: \d+-1-\d+$", r.stdout, re.M), "the LogId text is the server's (v1.2.500: openraft 0.9)"


# ----- issue #9 item 6: TLS on the gRPC API -----------------------------------------------------------------------------
def _self_signed(tmp: Path, ip: str) -> tuple[Path, Path]:
    key, crt = tmp / "grpc.key", tmp / "grpc.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(crt),
                    "-days", "2", "-subj", "/CN=localhost", "-addext", f"subjectAltName=DNS:localhost,IP:{ip}"],
                   check=True, capture_output=True, timeout=60)
    return crt, key


def test_grpc_tls_refuses_plain_metactl_admin_api_and_raft_still_work(cluster: LocalCluster) -> None:
    import ssl
    c = cluster
    crt, key = _self_signed(c.tmp, c.ip(1))
    c.start(1, single=True, extra=f'grpc_tls_server_cert = "{crt}"\ngrpc_tls_server_key = "{key}"')
    c.wait_started(1)
    r = c.run("metactl", "status", "--grpc-api-address", c.grpc(1))
    assert (r.returncode, r.stdout) == (1, "") and r.stderr.startswith("Error: ") and "transport error" in r.stderr
    assert c.status(1)["state"] == "Leader", "the admin HTTP API still answers in plain HTTP"
    ctx = ssl.create_default_context(cafile=str(crt))
    with urllib.request.urlopen(f"https://{c.grpc(1)}/v1/grpc/status", context=ctx, timeout=5) as resp:
        assert json.loads(resp.read())["id"] == 1, "the gRPC port serves TLS with the configured certificate"
    c.start(2, join=[1])                       # raft is a separate port: a plain node joins the TLS node's cluster
    c.wait_started(2)
    c.wait_voters({1, 2}, (1, 2))
    plain = _query_cfg(c, "plain", 5, [c.grpc(1)], 0)
    r = c.run("query", "--config-file", str(plain))
    assert r.returncode == 1 and "none is a live databend-meta node" in r.stderr
    q = _start_query(c, "tls", 5, [c.grpc(1)], 0,
                     extra=f'rpc_tls_meta_server_root_ca_cert = "{crt}"\nrpc_tls_meta_service_domain_name = "localhost"')
    assert q["current"] == c.grpc(1)


# ----- issue #9 item 8: when query nodes see a membership change --------------------------------------------------------
def _query_cfg(c: LocalCluster, name: str, n: int, endpoints: list[str], interval: Any, extra: str = "") -> Path:
    """A databend-query config whose admin API is on 127.0.0.<base+n>:8080."""
    path = c.tmp / f"query-{name}.toml"
    path.write_text(f'[query]\nadmin_api_address = "{c.ip(n)}:8080"\n[log.file]\ndir = "{c.tmp}/qlog-{name}"\n'
                    f"[meta]\nendpoints = {json.dumps(endpoints)}\nclient_timeout_in_second = 2\n"
                    f"auto_sync_interval = {json.dumps(interval)}\n{extra}\n")
    return path


def _endpoints(c: LocalCluster, n: int) -> dict[str, Any]:
    code, _, body = http_get(f"{c.ip(n)}:8080", "/v1/meta/endpoints")
    assert code == 200, body
    return json.loads(body)


def _start_query(c: LocalCluster, name: str, n: int, endpoints: list[str], interval: Any,
                 extra: str = "") -> dict[str, Any]:
    """Start a query stand-in, wait for its admin API; return its first /v1/meta/endpoints."""
    q = subprocess.Popen([sys.executable, "-m", "standin.query", "--config-file",
                          str(_query_cfg(c, name, n, endpoints, interval, extra))],
                         cwd=c.tmp, env=c.env, text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    c.clients.append(q)
    return wait_for(f"query {name} admin API", lambda: q.poll() is None and _endpoints(c, n), 10)


def test_query_follows_membership_only_with_auto_sync_and_restarts_from_config(cluster3: LocalCluster) -> None:
    c = cluster3
    every = sorted(c.grpc(i) for i in (1, 2, 3))
    first = _start_query(c, "sync", 4, [c.grpc(2)], 1)
    assert (first["endpoints"], first["configured"], first["current"]) == ([c.grpc(2)], [c.grpc(2)], c.grpc(2))
    _start_query(c, "nosync", 5, [c.grpc(2)], 0)
    wait_for("the syncing query to list every meta node", lambda: _endpoints(c, 4)["endpoints"] == every, 10)
    c.start(4, join=[1])                      # scale up: the syncing query picks node 4 up at its next sync
    c.wait_started(4)
    wait_for("node 4 in the synced list", lambda: c.grpc(4) in _endpoints(c, 4)["endpoints"], 10)
    assert _endpoints(c, 4)["syncs"] >= 2
    still = _endpoints(c, 5)
    assert (still["endpoints"], still["syncs"], still["auto_sync_interval"]) == ([c.grpc(2)], 0, 0), \
        "auto_sync_interval = 0: the list stays what the config said"
    c.clients[0].send_signal(signal.SIGHUP)   # systemctl reload = shutdown
    assert c.clients[0].wait(10) == 0
    again = _start_query(c, "sync", 4, [c.grpc(2)], 1)
    assert again["endpoints"] == [c.grpc(2)] and again["syncs"] == 0, "a restart starts from the config again"
    r = c.run("query", "--config-file", str(_query_cfg(c, "float", 4, [c.grpc(2)], 0.5)))
    assert r.returncode == 1 and "auto_sync_interval 0.5" in r.stderr


def test_query_sync_majority_rule_and_unreachable_advertise_host(cluster: LocalCluster) -> None:
    """No grpc_api_advertise_host: MemberList [""] is no majority, the list is kept. Advertised `localhost` (the
    packaged value): the list is replaced by an address the query host cannot reach, and every later sync fails."""
    c = cluster
    c.start(1, single=True, advertise=None)
    c.start(2, single=True, advertise="localhost")
    c.wait_started(1)
    c.wait_started(2)
    _start_query(c, "unset", 4, [c.grpc(1)], 1)
    _start_query(c, "localhost", 5, [c.grpc(2)], 1)
    kept = wait_for("a sync on the query of node 1", lambda: (e := _endpoints(c, 4))["syncs"] >= 1 and e, 10)
    assert kept["endpoints"] == [c.grpc(1)] and kept["last_sync"]["received"] == [""]
    assert kept["last_sync"]["replaced"] is False
    lost = wait_for("a failed sync after adopting localhost",
                    lambda: (e := _endpoints(c, 5))["last_sync"] and e["last_sync"]["ok"] is False and e, 10)
    assert lost["endpoints"] == ["localhost:9191"] and lost["current"] is None


# ----- issue #9 items 2, 3, 4, 9: raft secret, bind addresses, catch-up, packaged files --------------------------------
SECRET = "local-s3cr3t-value"
STRICT = f'raft_secret = "{SECRET}"\nraft_accepted_secrets = ["{SECRET}"]\nraft_secret_strict = true\n'


def test_strict_raft_secret_refuses_raft_requests_without_it(cluster: LocalCluster) -> None:
    """databend-meta 260629 raft_secret.rs: a strict node refuses a raft request without an accepted secret; a leave
    gets the secret from --config-file (or --raft-secret) and logs to that config's log dir; nothing prints it."""
    c = cluster
    c.start(1, single=True, raft_extra=STRICT)
    c.wait_started(1)
    c.start(2, join=[1], raft_extra=STRICT)
    c.wait_started(2)
    c.wait_voters({1, 2}, (1, 2))
    joiner = c.start(3, join=[1])                       # no secret: its join is refused
    assert joiner.wait(60) == 1
    err = joiner.stderr.read()
    assert err.startswith(f'Error: fail to join node-3 to cluster via ["{c.raft(1)}"], errors: ')
    assert "status: Unauthenticated" in err and "raft secret is missing: from:127.0.0." in err
    r = c.run("meta", "--leave-id", "2", "--leave-via", c.raft(1))
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr.startswith(
        f'Error: fail to leave 2 cluster via ["{c.raft(1)}"], caused by errors: tonic::status::Status: '
        'status: Unauthenticated, message: "raft secret is missing: from:127.0.0.'), r.stderr
    assert r.stderr.rstrip().endswith(f"while: leave 2 via: {c.raft(1)}")
    r = c.run("meta", "--raft-secret", "wrong-one", "--leave-id", "2", "--leave-via", c.raft(1))
    assert r.returncode == 1 and "raft secret is unaccepted: from:" in r.stderr and "wrong-one" not in r.stderr
    assert c.voters_of(1) == {1, 2}, "a refused leave changed nothing"
    r = c.run("meta", "--config-file", str(c.tmp / "n2.toml"), "--leave-id", "2", "--leave-via", c.raft(1))
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    c.wait_voters({1}, (1,))
    logs = "".join(p.read_text() for p in (c.tmp / "log2").glob("databend-meta-2@local-*.log"))
    assert "leave cluster: leave_id=2" in logs and "node 2 has left cluster" in logs
    r = c.run("meta", "--raft-secret", SECRET, "--leave-id", "9", "--leave-via", c.raft(1))
    assert (r.returncode, r.stderr) == (0, ""), "the upstream --raft-secret flag works too"
    code, _, config_text = http_get(c.admin(1), "/v1/config")
    assert code == 200 and "raft_secret=***" in config_text and "raft_accepted_secrets=[***]" in config_text
    printed = config_text + c.output(1) + c.output(2) + logs + err
    printed += "".join(p.read_text() for p in (c.tmp / "log1").glob("*.log"))
    assert SECRET not in printed


def test_permissive_node_accepts_requests_without_the_secret(cluster: LocalCluster) -> None:
    """raft_secret_strict off (the default): a missing secret passes, with a rate-limited warning."""
    c = cluster
    c.start(1, single=True, raft_extra=f'raft_secret = "{SECRET}"\nraft_accepted_secrets = ["{SECRET}"]\n')
    c.wait_started(1)
    c.start(2, join=[1])
    c.wait_started(2)
    c.wait_voters({1, 2}, (1, 2))
    out = c.output(1)
    assert "raft secret is missing: from:" in out and "accepted because `raft_secret_strict` is off" in out


def test_config_check_of_the_raft_secret_options(cluster: LocalCluster) -> None:
    """RaftConfig::check (databend-meta raft-store config.rs), in upstream's order and words."""
    c = cluster
    cases = [
        ("raft_secret_strict = true\n", "Error: `raft_secret_strict` is enabled but `raft_accepted_secrets` is "
                                        "empty: the node would reject every incoming raft RPC"),
        ('raft_secret = ""\n', "Error: `raft_secret` must not be empty"),
        ('raft_accepted_secrets = ["a", ""]\n', "Error: `raft_accepted_secrets` must not contain an empty secret"),
    ]
    for raft_extra, expected in cases:
        r = c.run("meta", "--config-file", str(c.write_config(1, single=True, raft_extra=raft_extra)))
        assert (r.returncode, r.stderr.strip(), r.stdout) == (1, expected, "")
    r = c.run("meta", "--leave-via", c.raft(1))
    assert (r.returncode, r.stderr.strip()) == (1, "Error: `leave_via` is set but `leave_id` is not: "
                                                   "the node to remove from the cluster is unknown")
    # leaving skips the cluster checks: a config with neither single nor join is fine for --leave-id
    r = c.run("meta", "--config-file", str(c.write_config(2)), "--leave-id", "2", "--leave-via", c.raft(5))
    assert r.returncode == 1 and r.stderr.startswith("Error: fail to leave 2 cluster via")


@pytest.mark.parametrize("key,expected", [("grpc_api_address", "Databend meta service error"),
                                          ("admin_api_address", "Failed to start http server")])
def test_host_name_in_an_api_address_fails_at_start(cluster: LocalCluster, key: str, expected: str) -> None:
    """Both addresses are parsed as SocketAddr (IP literal): a host name panics the start (exit 101)."""
    c = cluster
    path = c.write_config(1, single=True)
    text = path.read_text()
    path.write_text(text.replace(f'{key} = "{c.ip(1)}:', f'{key} = "localhost:'))
    assert path.read_text() != text
    r = c.run("meta", "--config-file", str(path))
    assert r.returncode == 101, r.stderr
    assert f"{expected}: BadAddressFormat" in r.stderr and "invalid socket address syntax" in r.stderr
    assert "Databend Metasrv started" not in r.stdout


def test_api_servers_bind_exactly_the_configured_ip(cluster: LocalCluster) -> None:
    import socket
    c = cluster
    c.start(1, single=True)
    c.wait_started(1)
    other = c.ip(5)                                         # same block, nothing binds it
    for port in (9191, 28002, 28004):
        with socket.create_connection((c.ip(1), port), timeout=2):
            pass
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((other, port), timeout=2)


def test_catch_up_after_join_shows_in_replication(cluster: LocalCluster) -> None:
    """A joined node is a voter at once but lags for data_bytes / catchup_bytes_per_s: the leader's Replication line
    for it ends in ` *` and its own LastApplied is lower; then both match."""
    c = cluster
    c.start(1, single=True, extra="[standin]\ncatchup_bytes_per_s = 20000\n")
    c.wait_started(1)
    puts = [[f"k/{i:05d}", "x" * 40] for i in range(600)]
    req = urllib.request.Request(f"http://{c.grpc(1)}/v1/grpc/kv/transaction", method="POST",
                                 data=json.dumps({"puts": puts}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert json.loads(resp.read())["applied"] == 600
    c.start(2, join=[1])

    def lagging() -> tuple[str, str] | None:
        text = c.metactl_status(1)
        line = next((ln for ln in text.splitlines() if ln.startswith("  - [2] ")), "")
        return (line, text) if line.endswith(" *") and "  - id=2 " in text else None

    line, leader_text = wait_for("node 2 a voter and behind in the leader's Replication", lagging, 20, 0.02)
    applied = re.search(r"^LastApplied: (\S+)$", leader_text, re.M).group(1)
    assert line.split()[2] != applied
    st = c.status(1)
    assert st["replication"]["2"]["index"] < st["last_applied"]["index"]
    assert c.status(2)["last_applied"]["index"] < st["last_applied"]["index"], "the new node's own LastApplied lags"

    def caught_up() -> bool:
        text = c.metactl_status(1)
        applied = re.search(r"^LastApplied: (\S+)$", text, re.M).group(1)
        return f"  - [2] {applied}" in text.splitlines()

    wait_for("node 2 caught up in the leader's Replication", caught_up, 20)
    wait_for("node 2's own LastApplied caught up",
             lambda: c.status(2)["last_applied"]["index"] >= c.status(1)["last_applied"]["index"] - 1, 10)


def _shape(text: str) -> str:
    """One character per line: `.` blank, `#` comment, `s` section header, `k` key."""
    return "".join("." if not ln.strip() else "#" if ln.startswith("#") else "s" if ln.startswith("[") else "k"
                   for ln in text.splitlines())


def test_packaged_configs_keep_upstream_layout() -> None:
    """databend scripts/distribution/configs/*.toml at 43b24ec040: lines, comments and blank lines in place."""
    import tomllib
    sys.path.insert(0, str(REPO))
    from sandbox.standin import install, packaged
    meta = packaged.PACKAGED_META_TOML
    assert _shape(meta) == "##.kk###k.s.skkk.s#kkk.##k#k.##k.####"
    lines = meta.splitlines()
    assert lines[5] == "# NOTE: change this to the ip address reachable from databend-query."
    assert lines[17:19] == ["[raft_config]", "# NOTE: change this to the id of the node."]
    assert lines[26:28] == ["# NOTE: change this to the ip address or hostname reachable from other databend-meta "
                            "nodes.", 'raft_advertise_host = "localhost"']
    assert lines[30:32] == ["# NOTE: comment out this line after the first run.", "single        = true"]
    assert lines[-2:] == ["# NOTE: uncomment this line after the first run.", '# join          = ["127.0.0.1:28004"]']
    assert list(tomllib.loads(meta)) == ["admin_api_address", "grpc_api_address", "grpc_api_advertise_host", "log",
                                         "raft_config"]
    query = packaged.PACKAGED_QUERY_TOML
    assert _shape(query) == ("##.skk.#k.#k.#k.#kk.#.#kk.#kk.kk..#.###.#####.#####..s.skkk.s#kkkkk.#s#k.##sk.#######"
                             ".######.#####.######.######.###.###.#s#####k.######.#.s#k#k")
    q = tomllib.loads(query)
    assert list(q) == ["query", "log", "meta", "storage", "cache"]
    assert q["query"]["flight_api_address"] == "0.0.0.0:9090" and q["meta"]["endpoints"] == ["0.0.0.0:9191"]
    assert "# [storage.s3]" in query.splitlines() and "# [[query.users]]" in query.splitlines()
    # rendering changes values only: the same lines in the same places (plus the appended secret block)
    rendered = install.render_meta_config(2, "127.100.0.12", False, ["127.100.0.11:28004"], raft_secret="abc")
    head = rendered.splitlines()[:len(lines)]
    assert _shape("\n".join(head)) == "##.kk###k.s.skkk.s#kkk.##k#k.###.###k"   # `single` commented, `join` set
    assert [a for a, b in zip(head, lines) if a.startswith("#") and a != b] == ["# single        = true"]
    assert head[-1] == 'join          = ["127.100.0.11:28004"]'
    assert tomllib.loads(rendered)["raft_config"]["raft_secret_strict"] is True
    assert _shape(install.render_query_config(["127.100.0.11:9191"])) == _shape(query)
