"""The stand-in's databend-meta contract checked on the running lab, THROUGH SSH (the path a user takes).

Hosts: meta1..3 (127.100.0.11-13, the cluster), spare1..2 (.14-.15, packaged config, service disabled),
query1..2 (.16-.17). Run with its own lab: MSLAB_PREFIX=msh2 MSLAB_DIR=/work/main/.lab-h2.
"""
from __future__ import annotations

import json
import re
import shlex
import statistics
import subprocess
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from sandbox.lab import Lab
from sandbox.standin.install import render_meta_config

pytestmark = pytest.mark.lab
T = TypeVar("T")
METAS = ("meta1", "meta2", "meta3")


def wait_for(what: str, fn: Callable[[], T | None], timeout: float = 20.0, poll: float = 0.1) -> T:
    """Poll fn() until truthy; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


def sh(lab: Lab, host: str, command: str, timeout_s: float = 30) -> subprocess.CompletedProcess[str]:
    """Run a shell command on `host` over SSH as ops."""
    return lab.ssh(host, command, timeout_s=timeout_s)


def status_text(lab: Lab, host: str) -> str | None:
    """`databend-metactl status` on `host` (from /tmp), or None if it fails."""
    r = sh(lab, host, "cd /tmp && databend-metactl status")
    return r.stdout if r.returncode == 0 else None


def parse(text: str | None) -> dict[str, Any]:
    """{'state', 'leader', 'term', 'voters'} from status text ({} for None)."""
    if not text:
        return {}
    leader = re.search(r"^Leader: id=(\d+) ", text, re.M)
    voters_block = text.split("Voters:\n", 1)[1] if "Voters:\n" in text else ""
    return {"state": re.search(r"^State: (\w+)", text, re.M).group(1),
            "leader": int(leader.group(1)) if leader else None,
            "term": int(re.search(r"^CurrentTerm: (\d+)", text, re.M).group(1)),
            "voters": {int(v) for v in re.findall(r"^  - id=(\d+) ", voters_block, re.M)}}


def admin_json(lab: Lab, host: str, path: str) -> Any:
    r = sh(lab, host, f"curl -sf http://127.0.0.1:28002{shlex.quote(path)}")
    assert r.returncode == 0, f"{host} {path}: {r.stderr}"
    return json.loads(r.stdout)


def agreed_leader(lab: Lab, hosts: tuple[str, ...] | list[str], voters: set[int]) -> int | None:
    """The leader id if every host in `hosts` reports the same leader and `voters`, else None."""
    seen = [parse(status_text(lab, h)) for h in hosts]
    leaders = {s.get("leader") for s in seen}
    if len(leaders) == 1 and None not in leaders and all(s.get("voters") == voters for s in seen):
        return leaders.pop()
    return None


def host_of(node_id: int) -> str:
    return f"meta{node_id}"


# ----- read-only contract on the baseline cluster ---------------------------------------------------------------------
def test_baseline_cluster_status_admin_and_packaging(fresh_lab: Lab) -> None:
    lab = fresh_lab
    leader = wait_for("an agreed leader", lambda: agreed_leader(lab, METAS, {1, 2, 3}))
    for i, host in enumerate(METAS, start=1):
        text = status_text(lab, host)
        lines = text.splitlines()
        assert lines[:2] == ["BinaryVersion: 260629.2.0", "DataVersion: V004"]
        assert f"Node: id={i} raft=127.100.0.1{i}:28004" in lines
        assert f"Leader: id={leader} raft=127.100.0.1{leader}:28004 grpc=127.100.0.1{leader}:9191" in lines
        assert re.search(r"^LastApplied: T\d+-N\d+\.\d+$", text, re.M)
        assert ("Replication:" in lines) == (i == leader)
        assert lines[-4:] == ["Voters:"] + [f"  - id={n} raft=127.100.0.1{n}:28004 grpc=127.100.0.1{n}:9191"
                                            for n in (1, 2, 3)]
    # admin HTTP on the host
    assert admin_json(lab, "meta2", "/v1/health") == {"status": "pass"}
    assert [n["name"] for n in admin_json(lab, "meta2", "/v1/cluster/nodes")] == ["1", "2", "3"]
    st = admin_json(lab, "meta2", "/v1/cluster/status")
    assert st["id"] == 2 and st["endpoint"] == "127.100.0.12:28004" and len(st["voters"]) == 3
    codes = sh(lab, "meta2", "curl -s -o /dev/null -w '%{http_code} ' -X POST http://127.0.0.1:28002/v1/health; "
                             "curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:28002/nope").stdout
    assert codes.split() == ["405", "404"]
    metrics = sh(lab, "meta2", "curl -sf http://127.0.0.1:28002/v1/metrics").stdout
    assert f"metasrv_server_current_leader_id {leader}" in metrics and "metasrv_server_node_is_health 1" in metrics
    r = sh(lab, "meta1", "cd /tmp && databend-metactl --grpc-api-address 127.100.0.12:9191 status")
    assert "Node: id=1 raft=127.100.0.11:28004" in r.stdout, "a global --grpc-api-address is ignored by status"
    r = sh(lab, "meta1", "cd /tmp && databend-metactl status --grpc-api-address 127.100.0.12:9191")
    assert "Node: id=2 raft=127.100.0.12:28004" in r.stdout
    r = sh(lab, "meta1", "cd /tmp && databend-metactl member-list")
    assert r.stdout.splitlines() == [f"127.100.0.1{n}:9191" for n in (1, 2, 3)]
    # a spare host: packaged config, service disabled, metactl cannot connect; unwritable CWD panics
    r = sh(lab, "spare1", "cd /tmp && databend-metactl status")
    assert r.returncode == 1 and r.stdout == "" and "cannot connect to http://127.0.0.1:9191" in r.stderr
    assert r.stderr.startswith("Error: ")
    assert sh(lab, "spare1", "cd / && databend-metactl status").returncode == 101
    packaged = sh(lab, "spare1", "cat /etc/databend/databend-meta.toml").stdout
    assert re.search(r"^id\s+= 0$", packaged, re.M) and re.search(r"^single\s+= true$", packaged, re.M)
    assert '# join = ["127.0.0.1:28004"]' in packaged
    assert sh(lab, "spare1", "systemctl is-enabled databend-meta").stdout.strip() == "disabled"
    unit = sh(lab, "spare1", "systemctl cat databend-meta").stdout
    assert "User=databend" in unit and "Restart=no" in unit
    # query hosts
    r = sh(lab, "query1", "curl -sf http://127.0.0.1:8080/v1/health; systemctl is-active databend-query")
    assert r.stdout.splitlines() == ['{"status": "pass"}active']


def test_status_is_fast_over_ssh(fresh_lab: Lab) -> None:
    lab = fresh_lab
    r = sh(lab, "meta1", "cd /tmp; for i in 1 2 3 4 5 6 7 8 9 10; do s=$(date +%s%N); databend-metactl status "
                         ">/dev/null; e=$(date +%s%N); echo $(( (e - s) / 1000000 )); done")
    ms = [int(x) for x in r.stdout.split()]
    print(f"\nmetactl status on a lab host: median {statistics.median(ms)} ms, max {max(ms)} ms")
    assert len(ms) == 10 and statistics.median(ms) < 1000


# ----- leadership ----------------------------------------------------------------------------------------------------
def test_transfer_leader_over_ssh(fresh_lab: Lab) -> None:
    lab = fresh_lab
    leader = wait_for("an agreed leader", lambda: agreed_leader(lab, METAS, {1, 2, 3}))
    term = parse(status_text(lab, host_of(leader)))["term"]
    target = {1: 2, 2: 3, 3: 1}[leader]
    follower = host_of(target)
    r = sh(lab, follower, "cd /tmp && databend-metactl transfer-leader")
    assert r.returncode == 1 and r.stderr.startswith("Error: status code: 404 Not Found, msg: This node is not leader")
    replies: list[subprocess.CompletedProcess[str]] = []
    watcher_host = next(h for h in METAS if h not in (host_of(leader), follower))
    elapsed = _seconds_until_new_leader(lab, watcher_host, leader, lambda: replies.append(
        sh(lab, host_of(leader), "cd /tmp && databend-metactl transfer-leader")))
    r = replies[0]
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"triggered leader transfer from {leader} to {target}.", "voter ids: [1, 2, 3]"]
    print(f"\ntransfer-leader: {elapsed:.2f} s from the ssh call until {watcher_host} saw leader {target}")
    assert elapsed < 2.0
    wait_for("the new leader", lambda: parse(status_text(lab, "meta1")).get("leader") == target, 5)
    assert parse(status_text(lab, follower))["term"] > term


def _seconds_until_new_leader(lab: Lab, host: str, old: int, act: Callable[[], None] | None = None) -> float:
    """Crash leader `old` (or run `act`); return seconds from then until `host` reports another leader.

    The new leader is read on `host` itself (curl in a loop); hosts and the test share the machine's clock.
    """
    watch = ("while :; do id=$(curl -s http://127.0.0.1:28002/v1/metrics | "
             "sed -n 's/^metasrv_server_current_leader_id //p'); "
             f"if [ -n \"$id\" ] && [ \"$id\" != 0 ] && [ \"$id\" != {old} ]; then date +%s.%N; exit 0; fi; "
             "sleep 0.01; done")
    watcher = subprocess.Popen(["ssh", "-F", str(lab.ssh_config), host, f"timeout 20 sh -c {shlex.quote(watch)}"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)                      # the watcher's SSH session is up and polling
        if act is None:
            lab.crash(host_of(old))
            killed = time.time()             # lab.crash returns right after the SIGKILL
        else:
            killed = time.time()
            act()
        out, err = watcher.communicate(timeout=30)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait(5)
    assert watcher.returncode == 0, f"no new leader seen on {host}: {err}"
    return float(out.strip()) - killed


def test_failover_after_crash_of_the_leader(fresh_lab: Lab) -> None:
    lab = fresh_lab
    timings = []
    for _ in range(3):
        leader = wait_for("an agreed leader", lambda: agreed_leader(lab, METAS, {1, 2, 3}), 30)
        survivor = next(h for h in METAS if h != host_of(leader))
        timings.append(_seconds_until_new_leader(lab, survivor, leader))
        assert sh(lab, host_of(leader), "systemctl is-active databend-meta").stdout.strip() == "failed"
        assert sh(lab, host_of(leader), "sudo systemctl start databend-meta").returncode == 0
    print(f"\nfailover after lab.crash(leader), seen on a survivor: {[round(t, 2) for t in timings]} s, "
          f"median {statistics.median(timings):.2f} s")
    assert statistics.median(timings) < 3.0
    wait_for("the crashed nodes back as voters", lambda: agreed_leader(lab, METAS, {1, 2, 3}), 30)


def test_partition_of_the_leader_and_heal(fresh_lab: Lab) -> None:
    lab = fresh_lab
    leader = wait_for("an agreed leader", lambda: agreed_leader(lab, METAS, {1, 2, 3}))
    old = host_of(leader)
    others = [h for h in METAS if h != old]
    lab.cut(old)
    try:
        new = wait_for("a new leader in the majority", lambda: (
            (ls := {parse(status_text(lab, h)).get("leader") for h in others}) and len(ls) == 1
            and None not in ls and leader not in ls and ls.pop()), 20)
    finally:
        lab.heal(old)
    wait_for("the healed node to follow the new leader", lambda: parse(status_text(lab, old)).get("leader") == new, 20)
    assert parse(status_text(lab, old))["state"] == "Follower"


def test_quorum_loss_no_leader_and_leave_hangs(fresh_lab: Lab) -> None:
    lab = fresh_lab
    wait_for("an agreed leader", lambda: agreed_leader(lab, METAS, {1, 2, 3}))
    lab.crash("meta2")
    lab.crash("meta3")
    wait_for("meta1 without a leader", lambda: (s := parse(status_text(lab, "meta1"))) and s["leader"] is None, 15)
    assert "Leader:" not in status_text(lab, "meta1")
    r = sh(lab, "meta1", "cd /tmp && timeout 5 databend-meta --leave-id 3 --leave-via 127.100.0.11:28004; echo rc=$?",
           timeout_s=30)
    assert r.stdout.strip().endswith("rc=124"), f"leave should hang without quorum: {r.stdout} {r.stderr}"


# ----- scale down / up -----------------------------------------------------------------------------------------------
def test_scale_down_follower_refuse_leader_and_rejoin(fresh_lab: Lab) -> None:
    lab = fresh_lab
    leader = wait_for("an agreed leader", lambda: agreed_leader(lab, METAS, {1, 2, 3}))
    gone = 3 if leader != 3 else 2
    via = f"127.100.0.1{leader}:28004"
    r = sh(lab, host_of(gone), f"cd /tmp && databend-meta --leave-id {leader} --leave-via {via}")
    assert r.returncode == 1 and f"can not leave id={leader} via itself" in r.stderr
    assert r.stderr.startswith(f'Error: fail to leave {leader} cluster via ["{via}"]')
    r = sh(lab, host_of(gone), "cd /tmp && databend-meta --leave-id 9 --leave-via 127.100.0.11:28004")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), "a non-member leaves silently"
    r = sh(lab, host_of(gone), f"cd /tmp && databend-meta --leave-id {gone} --leave-via {via}")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    rest = [h for h in METAS if h != host_of(gone)]
    wait_for("voters without the removed node", lambda: agreed_leader(lab, rest, {1, 2, 3} - {gone}))
    assert [n["name"] for n in admin_json(lab, rest[0], "/v1/cluster/nodes")] == [
        str(i) for i in (1, 2, 3) if i != gone]
    assert sh(lab, host_of(gone), "sudo systemctl stop databend-meta").returncode == 0
    assert "Databend Metasrv shutdown" in sh(lab, host_of(gone), "sudo journalctl -u databend-meta --no-pager").stdout
    assert sh(lab, host_of(gone), "sudo systemctl start databend-meta").returncode == 0   # old raft_dir + join
    wait_for("the removed node to join again", lambda: agreed_leader(lab, METAS, {1, 2, 3}), 30)


def test_scale_up_a_spare_host(fresh_lab: Lab) -> None:
    lab = fresh_lab
    wait_for("an agreed leader", lambda: agreed_leader(lab, METAS, {1, 2, 3}))
    ip = lab.host("spare1").ip
    config = render_meta_config(4, ip, False, [f"127.100.0.1{n}:28004" for n in (1, 2, 3)])
    r = lab.ssh("spare1", f"sudo tee /etc/databend/databend-meta.toml >/dev/null <<'EOF'\n{config}EOF\n"
                          "sudo systemctl start databend-meta")
    assert r.returncode == 0, r.stderr
    wait_for("4 voters", lambda: agreed_leader(lab, (*METAS, "spare1"), {1, 2, 3, 4}), 30)
    assert f"Node: id=4 raft={ip}:28004" in status_text(lab, "spare1")
    r = sh(lab, "query1", "curl -sf http://127.0.0.1:8080/v1/health")
    assert r.returncode == 0


def test_reload_stops_the_service_and_restart_skips_join(fresh_lab: Lab) -> None:
    lab = fresh_lab
    wait_for("an agreed leader", lambda: agreed_leader(lab, METAS, {1, 2, 3}))
    assert sh(lab, "meta3", "sudo systemctl reload databend-meta").returncode == 0
    wait_for("meta3 inactive after reload (SIGHUP = shutdown)",
             lambda: sh(lab, "meta3", "systemctl is-active databend-meta").stdout.strip() == "inactive", 10)
    assert sh(lab, "meta3", "sudo systemctl start databend-meta").returncode == 0
    wait_for("meta3 back as a voter", lambda: agreed_leader(lab, METAS, {1, 2, 3}), 30)
    journal = sh(lab, "meta3", "sudo journalctl -u databend-meta --no-pager").stdout
    assert "skip joining, because: node 3 already in cluster" in journal


def test_kv_and_query_refusal(fresh_lab: Lab) -> None:
    lab = fresh_lab
    wait_for("an agreed leader", lambda: agreed_leader(lab, METAS, {1, 2, 3}))
    r = sh(lab, "meta2", "cd /tmp && databend-meta --grpc-api-address 127.0.0.1:9191 --cmd kvapi::upsert "
                         "--key app/k --value v1")
    assert r.returncode == 0 and json.loads(r.stdout)["result"]["data"] == "v1"
    for host in METAS:
        wait_for(f"the key on {host}", lambda h=host: json.loads(sh(
            lab, h, "cd /tmp && databend-meta --grpc-api-address 127.0.0.1:9191 --cmd kvapi::get --key app/k"
        ).stdout or "null"), 5)
    r = sh(lab, "query2", "printf '[meta]\\nendpoints = [\"127.100.0.14:9191\"]\\n' > /tmp/q.toml && "
                          "databend-query --config-file /tmp/q.toml")
    assert r.returncode == 1 and "none is a live databend-meta node" in r.stderr
