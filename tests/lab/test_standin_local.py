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
                     join: list[int] | None = None, extra: str = "") -> Path:
        """Write node n's TOML (listen = advertise = its own IP) and return its path."""
        ip = self.ip(n)
        mode = "single = true" if single else f"join = {json.dumps([self.raft(j) for j in join or []])}"
        if not single and not join:
            mode = ""
        path = self.tmp / f"n{n}.toml"
        path.write_text(f'''admin_api_address = "{ip}:28002"
grpc_api_address = "{ip}:9191"
grpc_api_advertise_host = "{ip}"
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
''')
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
    assert "# single        = true" in text and "# NOTE: `single` and `join` are mutually exclusive" in text
    first = tomllib.loads(install.render_meta_config(1, "127.100.0.11", True, []))["raft_config"]
    assert first["single"] is True and "join" not in first
    q = tomllib.loads(install.render_query_config(["127.100.0.11:9191", "127.100.0.12:9191"]))
    assert q["meta"]["endpoints"] == ["127.100.0.11:9191", "127.100.0.12:9191"]
    with pytest.raises(ValueError, match="meta_grpc_endpoints"):
        install.render_query_config([])
