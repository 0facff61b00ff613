"""The stand-in's databend-meta contract checked on the running lab, THROUGH SSH (the path a user takes).

Hosts: meta1..3 (127.100.0.11-13, the cluster: each binds its own IP only, strict raft secret, 2000 preloaded keys),
spare1..2 (.14-.15, packaged config, service disabled), query1..2 (.16-.17).
Run with its own lab: MSLAB_PREFIX=msh2 MSLAB_DIR=/work/main/.lab-h2.
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

from sandbox.errors import LabError
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


def ip_of(lab: Lab, host: str) -> str:
    return lab.host(host).ip


def status_text(lab: Lab, host: str) -> str | None:
    """`databend-metactl status` for `host`'s own gRPC address, run on `host` (from /tmp), or None if it fails."""
    r = sh(lab, host, f"cd /tmp && databend-metactl status --grpc-api-address {ip_of(lab, host)}:9191")
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
    r = sh(lab, host, f"curl -sf http://{ip_of(lab, host)}:28002{shlex.quote(path)}")
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
    codes = sh(lab, "meta2", "curl -s -o /dev/null -w '%{http_code} ' -X POST http://127.100.0.12:28002/v1/health; "
                             "curl -s -o /dev/null -w '%{http_code}' http://127.100.0.12:28002/nope").stdout
    assert codes.split() == ["405", "404"]
    metrics = sh(lab, "meta2", "curl -sf http://127.100.0.12:28002/v1/metrics").stdout
    assert f"metasrv_server_current_leader_id {leader}" in metrics and "metasrv_server_node_is_health 1" in metrics
    r = sh(lab, "meta1", "cd /tmp && databend-metactl --grpc-api-address 127.100.0.11:9191 status")
    assert r.returncode == 1 and "cannot connect to http://127.0.0.1:9191" in r.stderr, \
        "a global --grpc-api-address is ignored by status (the default 127.0.0.1:9191 is not bound)"
    r = sh(lab, "meta1", "cd /tmp && databend-metactl status --grpc-api-address 127.100.0.12:9191")
    assert "Node: id=2 raft=127.100.0.12:28004" in r.stdout
    r = sh(lab, "meta1", "cd /tmp && databend-metactl member-list --grpc-api-address 127.100.0.11:9191")
    assert r.stdout.splitlines() == [f"127.100.0.1{n}:9191" for n in (1, 2, 3)]
    # a spare host: packaged config, service disabled, metactl cannot connect; unwritable CWD panics
    r = sh(lab, "spare1", "cd /tmp && databend-metactl status")
    assert r.returncode == 1 and r.stdout == "" and "cannot connect to http://127.0.0.1:9191" in r.stderr
    assert r.stderr.startswith("Error: ")
    assert sh(lab, "spare1", "cd / && databend-metactl status").returncode == 101
    packaged = sh(lab, "spare1", "cat /etc/databend/databend-meta.toml").stdout
    assert re.search(r"^id\s+= 0$", packaged, re.M) and re.search(r"^single\s+= true$", packaged, re.M)
    assert '# join          = ["127.0.0.1:28004"]' in packaged.splitlines()
    assert sh(lab, "spare1", "systemctl is-enabled databend-meta").stdout.strip() == "disabled"
    unit = sh(lab, "spare1", "systemctl cat databend-meta").stdout
    assert "User=databend" in unit and "Restart=no" in unit
    # query hosts
    r = sh(lab, "query1", "curl -sf http://127.0.0.1:8080/v1/health; systemctl is-active databend-query")
    assert r.stdout.splitlines() == ['{"status": "pass"}active']


def test_status_is_fast_over_ssh(fresh_lab: Lab) -> None:
    lab = fresh_lab
    r = sh(lab, "meta1", "cd /tmp; for i in 1 2 3 4 5 6 7 8 9 10; do s=$(date +%s%N); databend-metactl status "
                         "--grpc-api-address 127.100.0.11:9191 >/dev/null; e=$(date +%s%N); "
                         "echo $(( (e - s) / 1000000 )); done")
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
    r = sh(lab, follower, f"cd /tmp && databend-metactl transfer-leader --admin-api-address "
                          f"{ip_of(lab, follower)}:28002")
    assert r.returncode == 1 and r.stderr.startswith("Error: status code: 404 Not Found, msg: This node is not leader")
    replies: list[subprocess.CompletedProcess[str]] = []
    watcher_host = next(h for h in METAS if h not in (host_of(leader), follower))
    elapsed = _seconds_until_new_leader(lab, watcher_host, leader, lambda: replies.append(
        sh(lab, host_of(leader), f"cd /tmp && databend-metactl transfer-leader --admin-api-address "
                                 f"{ip_of(lab, host_of(leader))}:28002")))
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
    watch = (f"while :; do id=$(curl -s http://{ip_of(lab, host)}:28002/v1/metrics | "
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
    r = sh(lab, "meta1", "cd /tmp && sudo -n -u databend timeout 5 databend-meta --config-file "
                         "/etc/databend/databend-meta.toml --leave-id 3 --leave-via 127.100.0.11:28004; echo rc=$?",
           timeout_s=30)
    assert r.stdout.strip().endswith("rc=124"), f"leave should hang without quorum: {r.stdout} {r.stderr}"


# ----- scale down / up -----------------------------------------------------------------------------------------------
def test_scale_down_follower_refuse_leader_and_rejoin(fresh_lab: Lab) -> None:
    lab = fresh_lab
    leader = wait_for("an agreed leader", lambda: agreed_leader(lab, METAS, {1, 2, 3}))
    gone = 3 if leader != 3 else 2
    via = f"127.100.0.1{leader}:28004"
    leave = "cd /tmp && sudo -n -u databend databend-meta --config-file /etc/databend/databend-meta.toml"
    r = sh(lab, host_of(gone), f"{leave} --leave-id {leader} --leave-via {via}")
    assert r.returncode == 1 and f"can not leave id={leader} via itself" in r.stderr
    assert r.stderr.startswith(f'Error: fail to leave {leader} cluster via ["{via}"]')
    r = sh(lab, host_of(gone), f"{leave} --leave-id 9 --leave-via 127.100.0.11:28004")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), "a non-member leaves silently"
    r = sh(lab, host_of(gone), f"{leave} --leave-id {gone} --leave-via {via}")
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
    config = render_meta_config(4, ip, False, [f"127.100.0.1{n}:28004" for n in (1, 2, 3)],
                                raft_secret=lab.raft_secret)
    r = lab.ssh("spare1", f"sudo tee /etc/databend/databend-meta.toml >/dev/null <<'EOF'\n{config}EOF\n"
                          "sudo systemctl start databend-meta")
    assert r.returncode == 0, r.stderr
    wait_for("4 voters", lambda: agreed_leader(lab, (*METAS, "spare1"), {1, 2, 3, 4}), 30)
    assert f"Node: id=4 raft={ip}:28004" in status_text(lab, "spare1")
    assert lab.raft_secret not in r.stdout + r.stderr
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
    r = sh(lab, "meta2", "cd /tmp && databend-meta --grpc-api-address 127.100.0.12:9191 --cmd kvapi::upsert "
                         "--key app/k --value v1")
    assert r.returncode == 0 and json.loads(r.stdout)["result"]["data"] == "v1"
    for host in METAS:
        wait_for(f"the key on {host}", lambda h=host: json.loads(sh(
            lab, h, f"cd /tmp && databend-meta --grpc-api-address {ip_of(lab, h)}:9191 --cmd kvapi::get --key app/k"
        ).stdout or "null"), 5)
    r = sh(lab, "query2", "printf '[meta]\\nendpoints = [\"127.100.0.14:9191\"]\\n' > /tmp/q.toml && "
                          "databend-query --config-file /tmp/q.toml")
    assert r.returncode == 1 and "none is a live databend-meta node" in r.stderr


# ----- issue #9: raft secret, bind addresses, catch-up ---------------------------------------------------------------
def test_leave_needs_the_raft_secret_from_the_config_file(fresh_lab: Lab) -> None:
    """Strict cluster: a leave without the secret is refused with upstream's error; with --config-file (run as the
    service user) it succeeds and logs to the config's log dir; the secret is never printed."""
    lab = fresh_lab
    leader = wait_for("an agreed leader", lambda: agreed_leader(lab, METAS, {1, 2, 3}))
    gone = 3 if leader != 3 else 2
    via = f"127.100.0.1{leader}:28004"
    r = sh(lab, host_of(gone), f"cd /tmp && databend-meta --leave-id {gone} --leave-via {via}")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith(f'Error: fail to leave {gone} cluster via ["{via}"], caused by errors: ')
    assert "status: Unauthenticated" in r.stderr and "raft secret is missing: from:" in r.stderr
    assert f"while: leave {gone} via: {via}" in r.stderr
    r = sh(lab, host_of(gone), f"cd /tmp && databend-meta --raft-secret not-the-secret --leave-id {gone} "
                               f"--leave-via {via}")
    assert r.returncode == 1 and "raft secret is unaccepted" in r.stderr and "not-the-secret" not in r.stderr
    assert parse(status_text(lab, host_of(leader)))["voters"] == {1, 2, 3}, "a refused leave changed nothing"
    r = sh(lab, host_of(gone), f"cd /tmp && sudo -n -u databend databend-meta --config-file "
                               f"/etc/databend/databend-meta.toml --leave-id {gone} --leave-via {via}")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    rest = [h for h in METAS if h != host_of(gone)]
    wait_for("voters without the removed node", lambda: agreed_leader(lab, rest, {1, 2, 3} - {gone}))
    logs = sh(lab, host_of(gone), f"sudo -n grep -l 'leave cluster: leave_id={gone}' /var/log/databend/*").stdout
    assert logs.startswith(f"/var/log/databend/databend-meta-{gone}@"), "the leave logs to the config's log dir"
    everything = sh(lab, host_of(gone), "sudo -n cat /var/log/databend/*; sudo -n journalctl --no-pager -o cat; "
                                        f"curl -s http://{ip_of(lab, host_of(gone))}:28002/v1/config").stdout
    assert lab.raft_secret not in everything
    assert "raft_secret=***" in everything, "/v1/config shows the secret redacted"


def test_meta_nodes_bind_their_own_ip_only(fresh_lab: Lab) -> None:
    """gRPC, admin and raft listen on the node's IP; 127.0.0.1 on the same host is refused."""
    lab = fresh_lab
    for host in METAS:
        ip = ip_of(lab, host)
        listening = sh(lab, host, "ss -Hltn").stdout
        for port in (9191, 28002, 28004, 29004):
            assert f"{ip}:{port} " in listening and f"0.0.0.0:{port} " not in listening, listening
        for port in (9191, 28002, 28004):
            r = sh(lab, host, f"curl -s -o /dev/null -w '%{{http_code}}' http://127.0.0.1:{port}/; echo \" rc=$?\"")
            assert r.stdout.strip().endswith("rc=7"), f"{host}: 127.0.0.1:{port} answered: {r.stdout}"


def test_host_name_in_grpc_api_address_fails_at_start(fresh_lab: Lab) -> None:
    """databend-meta parses grpc_api_address as SocketAddr: a host name makes the start fail (a panic upstream)."""
    lab = fresh_lab
    packaged = sh(lab, "spare1", "cat /etc/databend/databend-meta.toml").stdout
    bad = packaged.replace('grpc_api_address        = "0.0.0.0:9191"', 'grpc_api_address        = "spare1:9191"')
    assert bad != packaged
    r = lab.ssh("spare1", f"sudo -n tee /etc/databend/databend-meta.toml >/dev/null <<'EOF'\n{bad}EOF\n"
                          "sudo -n systemctl start databend-meta")
    assert r.returncode == 0, r.stderr
    wait_for("databend-meta on spare1 to fail", lambda: sh(lab, "spare1", "systemctl is-active databend-meta")
             .stdout.strip() == "failed", 20)
    journal = sh(lab, "spare1", "sudo -n journalctl --no-pager -o cat _SYSTEMD_INVOCATION_ID=$(systemctl show "
                                "-p InvocationID --value databend-meta)").stdout     # this start only
    assert "Databend meta service error: BadAddressFormat" in journal and "invalid socket address syntax" in journal
    assert "Databend Metasrv started" not in journal
    assert sh(lab, "spare1", "systemctl show -p ExecMainStatus --value databend-meta").stdout.strip() == "101"


def test_new_voter_catches_up_visibly_in_replication(fresh_lab: Lab) -> None:
    """After a join the new node is a voter at once but lags: the leader's `Replication` line for it ends in ` *`
    and its own LastApplied is lower, for a while that grows with the data; then it matches the leader."""
    lab = fresh_lab
    leader = wait_for("an agreed leader", lambda: agreed_leader(lab, METAS, {1, 2, 3}))
    lip, sip = ip_of(lab, host_of(leader)), ip_of(lab, "spare1")
    config = render_meta_config(4, sip, False, [f"127.100.0.1{n}:28004" for n in (1, 2, 3)],
                                raft_secret=lab.raft_secret)
    r = lab.ssh("spare1", f"sudo -n tee /etc/databend/databend-meta.toml >/dev/null <<'EOF'\n{config}EOF\n")
    assert r.returncode == 0, r.stderr
    # one watcher on the leader's host: the leader's [4] replication line, its LastApplied, the new node's LastApplied
    watch = (f"cd /tmp; end=$(( $(date +%s) + 25 )); while [ $(date +%s) -lt $end ]; do "
             f"l=$(databend-metactl status --grpc-api-address {lip}:9191); "
             f"n=$(databend-metactl status --grpc-api-address {sip}:9191 2>/dev/null | grep '^LastApplied:'); "
             "r=$(echo \"$l\" | grep -F '  - [4] '); a=$(echo \"$l\" | grep '^LastApplied:'); "
             "v=$(echo \"$l\" | grep -c '^  - id=4 '); "
             "echo \"$r|$a|$n|$v\"; case \"$r\" in *' *') ;; ?*) exit 0;; esac; sleep 0.05; done")
    watcher = subprocess.Popen(["ssh", "-F", str(lab.ssh_config), host_of(leader), watch],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert sh(lab, "spare1", "sudo -n systemctl start databend-meta").returncode == 0
        out, err = watcher.communicate(timeout=60)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait(5)
    rows = [line.split("|") for line in out.splitlines() if line.startswith("  - [4]")]
    lagging = [row for row in rows if row[0].endswith(" *")]
    assert lagging, f"never saw meta-4 behind in the leader's Replication: {out[-2000:]} {err}"
    assert all(row[3] == "1" for row in lagging), "the lagging node is already listed as a voter"

    def index(text: str) -> int:
        return int(text.rsplit(".", 1)[1])

    behind = [row for row in lagging if row[2].startswith("LastApplied:")]
    assert behind and any(index(row[2]) < index(row[1]) for row in behind), "the new node's own LastApplied lagged"
    assert rows[-1][0].endswith(" *") is False, f"meta-4 did not catch up: {rows[-3:]}"
    assert rows[-1][0].split()[-1] == rows[-1][1].split()[-1], "caught up = the leader's LastApplied"
    st = admin_json(lab, host_of(leader), "/v1/cluster/status")
    assert st["replication"]["4"]["index"] >= st["last_applied"]["index"] - 1


# ----- issue #9 items 5, 6, 8: older release, TLS on gRPC, query endpoint sync -----------------------------------------
def grpc_of(lab: Lab, host: str) -> str:
    return f"{lab.host(host).ip}:9191"


def test_old_release_over_ssh(fresh_lab: Lab) -> None:
    lab = fresh_lab
    wait_for("an agreed leader", lambda: agreed_leader(lab, METAS, {1, 2, 3}))
    with pytest.raises(LabError, match="stand-in version '1.3.0' is not valid"):
        lab.install_version("meta2", "1.3.0")
    lab.install_version("meta2", "1.2.500")
    r = sh(lab, "meta2", "databend-meta --cmd ver")
    assert r.stdout.splitlines() == ["version: 1.2.500-nightly", "min-compatible-client-version: 0.9.41",
                                     "data-version: V002(2023-07-22: Store snapshot in a file)"]
    addr = grpc_of(lab, "meta2")
    for words in (f"status --grpc-api-address {addr}", "transfer-leader"):
        r = sh(lab, "meta2", f"cd /tmp && databend-metactl {words}")
        assert r.returncode == 2 and r.stderr.startswith(f"error: unexpected argument '{words.split()[0]}' found")

    def old_status() -> str | None:
        r = sh(lab, "meta2", f"cd /tmp && databend-metactl --status --grpc-api-address {addr}")
        return r.stdout if r.returncode == 0 and "Voters:\n" in r.stdout else None

    text = wait_for("meta2 (restarted as 1.2.500) back with 3 voters", old_status, 30)
    lines = text.splitlines()
    assert lines[:2] == ["BinaryVersion: v1.2.500-nightly-standin", "DataVersion: V002"]
    assert [ln.split(":")[0] for ln in lines[2:6]] == ["DBSize", "KeyNumber", "Node", "State"]
    assert re.search(r"^LastApplied: \d+-\d+-\d+$", text, re.M) and parse(text)["voters"] == {1, 2, 3}
    lab.install_version("meta2", None, restart=False)
    assert sh(lab, "meta2", "databend-meta --cmd ver").stdout.startswith("version: 1.2.934-nightly\n")


def test_grpc_tls_over_ssh(fresh_lab: Lab) -> None:
    lab = fresh_lab
    wait_for("an agreed leader", lambda: agreed_leader(lab, METAS, {1, 2, 3}))
    cert = lab.enable_grpc_tls("meta3")
    assert cert.startswith("-----BEGIN CERTIFICATE-----")
    ip = lab.host("meta3").ip
    assert sh(lab, "meta3", "systemctl is-active databend-meta").stdout.strip() == "active"

    def admin_state() -> str | None:
        r = sh(lab, "meta3", f"curl -sf http://{ip}:28002/v1/cluster/status")
        st = json.loads(r.stdout) if r.returncode == 0 else {}
        return st.get("state") if len(st.get("voters", [])) == 3 and st.get("leader") else None

    assert wait_for("meta3's admin API (plain HTTP) with a leader and 3 voters", admin_state, 30) in (
        "Leader", "Follower")
    r = sh(lab, "meta3", f"cd /tmp && databend-metactl status --grpc-api-address {ip}:9191")
    assert (r.returncode, r.stdout) == (1, "") and r.stderr.startswith("Error: "), r.stderr
    r = sh(lab, "meta3", f"curl -sf --cacert /etc/databend/tls/grpc.crt https://{ip}:9191/v1/grpc/status")
    assert r.returncode == 0 and json.loads(r.stdout)["id"] == 3, "the gRPC port serves TLS"
    for host in ("meta1", "meta2"):           # the others still answer plain metactl and count meta3 as a voter
        r = sh(lab, host, f"cd /tmp && databend-metactl status --grpc-api-address {grpc_of(lab, host)}")
        assert r.returncode == 0 and parse(r.stdout)["voters"] == {1, 2, 3}


def _query_endpoints(lab: Lab, host: str, admin: str) -> dict[str, Any] | None:
    r = sh(lab, host, f"curl -sf http://{admin}/v1/meta/endpoints")
    return json.loads(r.stdout) if r.returncode == 0 else None


def test_query_endpoints_follow_membership_over_ssh(fresh_lab: Lab) -> None:
    import tomllib
    lab = fresh_lab
    wait_for("an agreed leader", lambda: agreed_leader(lab, METAS, {1, 2, 3}))
    path = "/etc/databend/databend-query.toml"
    text = lab.root_exec("query1", ["cat", path]).stdout
    first = grpc_of(lab, "meta1")
    text = re.sub(r"^endpoints\s*=.*$", f'endpoints = ["{first}"]', text, count=1, flags=re.M)
    text = re.sub(r"^auto_sync_interval\s*=.*$", "auto_sync_interval = 1", text, count=1, flags=re.M)
    lab.root_exec("query1", ["sh", "-c", 'cat > "$1"', "sh", path], input=text)
    admin = tomllib.loads(text)["query"]["admin_api_address"].replace("0.0.0.0", "127.0.0.1")
    assert sh(lab, "query1", "sudo systemctl restart databend-query").returncode == 0
    every = sorted(grpc_of(lab, h) for h in METAS)
    wait_for("query1 to list every meta node", lambda: (_query_endpoints(lab, "query1", admin) or {}).get(
        "endpoints") == every, 15)
    ip = lab.host("spare1").ip                # scale up: query1 picks node 4 up at its next sync
    config = render_meta_config(4, ip, False, [f"{lab.host(h).ip}:28004" for h in METAS],
                                raft_secret=lab.raft_secret)
    r = lab.ssh("spare1", f"sudo tee /etc/databend/databend-meta.toml >/dev/null <<'EOF'\n{config}EOF\n"
                          "sudo systemctl start databend-meta")
    assert r.returncode == 0, r.stderr
    wait_for("the new node in query1's list", lambda: f"{ip}:9191" in (
        _query_endpoints(lab, "query1", admin) or {}).get("endpoints", []), 30)
    assert sh(lab, "query1", "sudo systemctl restart databend-query").returncode == 0
    again = wait_for("query1 back", lambda: _query_endpoints(lab, "query1", admin), 10)
    assert again["endpoints"] == [first] and again["syncs"] == 0, "a restart starts from [meta] endpoints again"
    assert sh(lab, "query1", "sudo systemctl reload databend-query").returncode == 0
    wait_for("databend-query inactive after reload (SIGHUP = shutdown)",
             lambda: sh(lab, "query1", "systemctl is-active databend-query").stdout.strip() == "inactive", 10)
