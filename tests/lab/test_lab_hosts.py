"""The lab's hosts behave like provisioned servers, seen over real SSH (OpenSSH + the generated ssh_config).

Runs as root with the lab packages installed (`make setup`). Uses the session `lab` fixture; tests that change
the cluster use `fresh_lab`. Lab bookkeeping (root_exec) is not used to check the product-facing behaviour.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from sandbox import lab as lab_module
from sandbox import netns
from sandbox.lab import Lab, LabError, parse_metactl_status

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
HOST_NAMES = ["meta1", "meta2", "meta3", "spare1", "spare2", "query1", "query2"]


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.1) -> None:
    """Poll `predicate` until true; fail the test naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(poll_s)


def ssh_ok(lab: Lab, host: str, command: str) -> str:
    """Run `command` on `host` over SSH; assert exit 0 and return stdout stripped."""
    proc = lab.ssh(host, command)
    assert proc.returncode == 0, f"{host}: `{command}` exited {proc.returncode}: {proc.stderr}"
    return proc.stdout.strip()


def reachable(lab: Lab, host: str) -> bool:
    """True if `ssh host true` succeeds within a short deadline. ConnectTimeout does not bound the lab's
    ProxyCommand (`nc`), whose connect to a cut host can wait for TCP's own timeout: that counts as unreachable."""
    try:
        return lab.ssh(host, "true", options=["-o", "ConnectTimeout=2"], timeout_s=8).returncode == 0
    except LabError:   # Lab.ssh's deadline passed
        return False


def other_prefix(lab: Lab) -> str:
    """A prefix different from the session lab's (for a second, throwaway lab)."""
    return lab.prefix[:5] + ("x" if not lab.prefix.endswith("x") else "y")


def leftovers(prefix: str, directory: Path) -> list[str]:
    """Everything a lab with `prefix`/`directory` could leave behind; [] when clean."""
    found = [f"netns {n}" for n in netns.list_netns(prefix)]
    found += [f"veth {v}" for v in netns.veths_in_root(prefix)]
    found += [f"cgroup {h}/{prefix}" for h in ("systemd", "unified") if Path(f"/sys/fs/cgroup/{h}/{prefix}").exists()]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(directory) in argv and state not in ("Z", "X"):
            found.append(f"process {proc.name}: {argv.replace(chr(0), ' ')[:120]}")
    mounts = Path("/proc/self/mountinfo").read_text()
    found += [f"mount {line.split()[4]}" for line in mounts.splitlines() if str(directory) in line]
    return found


# ---------------------------------------------------------------- generated files and identity
def test_generated_files_describe_the_lab(lab: Lab) -> None:
    hosts = json.loads(lab.hosts_json.read_text())
    assert [h["name"] for h in hosts] == HOST_NAMES
    assert [h["ip"] for h in hosts] == [f"127.100.0.{11 + i}" for i in range(7)]
    inventory = tomllib.loads(lab.inventory.read_text())
    assert inventory["name"] == "lab"
    assert [(m["id"], m["host"]) for m in inventory["meta"]] == [(1, "127.100.0.11"), (2, "127.100.0.12"),
                                                                  (3, "127.100.0.13")]
    assert [q["host"] for q in inventory["query"]] == ["127.100.0.16", "127.100.0.17"]
    assert inventory["ssh"]["proxy_command"] == f"ip netns exec {lab.prefix}-lab nc %h %p"
    assert Path(inventory["ssh"]["private_key_file"]).is_file()
    config = lab.ssh_config.read_text()
    assert "Host spare1\n  HostName 127.100.0.14" in config and "StrictHostKeyChecking yes" in config
    known = lab.known_hosts.read_text().splitlines()
    assert [line.split()[0] for line in known] == [h["ip"] for h in hosts]


def test_inventory_loads_with_the_product_loader(lab: Lab) -> None:
    from metascale.inventory import load_inventory

    inventory = load_inventory(lab.inventory)
    assert [(n.node_id, n.host) for n in inventory.meta_nodes] == [(1, "127.100.0.11"), (2, "127.100.0.12"),
                                                                    (3, "127.100.0.13")]
    assert [q.host for q in inventory.query_nodes] == ["127.100.0.16", "127.100.0.17"]


def test_parse_metactl_status_reads_state_and_voters() -> None:
    text = ("Node: id=2 raft=127.100.0.12:28004\nState: Follower\nLeader: id=1 raft=127.100.0.11:28004 grpc=\n"
            "Replication:\n  - [9] T1-N1.3\nVoters:\n  - id=1 raft=a:1 grpc=\n  - id=2 raft=b:1 grpc=\n"
            "NonVoters:\n  - id=4 raft=c:1 grpc=\n")
    assert parse_metactl_status(text) == ("Follower", {1, 2})
    assert parse_metactl_status("") == (None, set())


def test_every_host_answers_ssh_with_its_own_hostname(lab: Lab) -> None:
    for name in HOST_NAMES:
        assert ssh_ok(lab, name, "hostname; id -un") == f"{name}\nops"


def test_ops_has_passwordless_sudo_and_hosts_know_each_other(lab: Lab) -> None:
    assert ssh_ok(lab, "meta2", "sudo -n id -u") == "0"
    assert ssh_ok(lab, "query1", "getent hosts meta3").split() == ["127.100.0.13", "meta3"]
    assert ssh_ok(lab, "meta1", "getent passwd databend | cut -d: -f7") == "/usr/sbin/nologin"


def test_password_login_is_refused(lab: Lab) -> None:
    proc = lab.ssh("meta1", "true", options=["-o", "PubkeyAuthentication=no",
                                              "-o", "PreferredAuthentications=password,keyboard-interactive"])
    assert proc.returncode == 255
    assert "Permission denied" in proc.stderr


def test_etc_is_private_to_each_host(lab: Lab) -> None:
    marker = f"/etc/lab-isolation-{os.getpid()}"
    try:
        ssh_ok(lab, "meta1", f"echo from-meta1 | sudo -n tee {marker} >/dev/null")
        assert ssh_ok(lab, "meta1", f"cat {marker}") == "from-meta1"
        assert lab.ssh("meta2", f"test -e {marker}").returncode == 1
        assert not Path(marker).exists(), "a host's /etc write reached the machine's real /etc"
        assert ssh_ok(lab, "meta1", "findmnt -n -o FSTYPE /etc") == "overlay"
    finally:
        lab.ssh("meta1", f"sudo -n rm -f {marker}")


# ---------------------------------------------------------------- host keys
def test_strict_host_key_checking_refuses_a_wrong_key(lab: Lab, tmp_path: Path) -> None:
    entries = dict(line.split(" ", 1) for line in lab.known_hosts.read_text().splitlines())
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"127.100.0.11 {entries['127.100.0.12']}\n")   # meta2's key under meta1's address
    proc = lab.ssh("meta1", "true", options=["-o", f"UserKnownHostsFile={wrong}", "-o", "LogLevel=ERROR"])
    assert proc.returncode == 255
    assert "Host key verification failed" in proc.stderr
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    proc = lab.ssh("meta1", "true", options=["-o", f"UserKnownHostsFile={empty}"])
    assert proc.returncode == 255 and "Host key verification failed" in proc.stderr


# ---------------------------------------------------------------- the cluster and its services
def test_meta_cluster_has_three_voters(fresh_lab: Lab) -> None:
    lab = fresh_lab
    out = ssh_ok(lab, "meta1", "databend-metactl status --grpc-api-address 127.100.0.11:9191")
    state, voters = parse_metactl_status(out)
    assert voters == {1, 2, 3}
    assert state in ("Leader", "Follower")
    assert lab.meta_status("meta2")[1] == {1, 2, 3}
    assert ssh_ok(lab, "spare1", "systemctl is-enabled databend-meta || true") == "disabled"
    assert lab.ssh("spare1", "systemctl is-active databend-meta").returncode == 3
    assert ssh_ok(lab, "query1", "systemctl is-active databend-query") == "active"


def test_baseline_meta_configs_bind_own_ip_with_a_strict_raft_secret(fresh_lab: Lab) -> None:
    """Every meta host: own IP in every address key, join = the other nodes, the lab's secret, strict on (file
    root:databend 640); the lab's secret file is private; spares keep the packaged file; the preloaded keys."""
    lab = fresh_lab
    secret = lab.raft_secret
    assert len(secret) >= 20 and (lab.directory / "raft_secret").stat().st_mode & 0o777 == 0o600
    ips = {n: lab.host(n).ip for n in ("meta1", "meta2", "meta3")}
    for name, ip in ips.items():
        doc = tomllib.loads(ssh_ok(lab, name, "sudo -n cat /etc/databend/databend-meta.toml"))
        assert ssh_ok(lab, name, "stat -c '%U:%G %a' /etc/databend/databend-meta.toml") == "root:databend 640"
        raft = doc["raft_config"]
        assert (doc["admin_api_address"], doc["grpc_api_address"], doc["grpc_api_advertise_host"]) == (
            f"{ip}:28002", f"{ip}:9191", ip)
        assert (raft["raft_listen_host"], raft["raft_advertise_host"]) == (ip, ip)
        assert raft["raft_secret"] == secret and raft["raft_accepted_secrets"] == [secret]
        assert raft["raft_secret_strict"] is True
        if name == "meta1":
            assert raft["single"] is True and "join" not in raft
        else:
            assert raft["join"] == [f"{ips[o]}:28004" for o in ips if o != name]
        # binds its own IP only: the loopback default that metactl uses is refused
        refused = lab.ssh(name, "cd /tmp && databend-metactl status")
        assert refused.returncode == 1 and "cannot connect to http://127.0.0.1:9191" in refused.stderr
    spare = ssh_ok(lab, "spare1", "cat /etc/databend/databend-meta.toml")
    from sandbox.standin.packaged import PACKAGED_META_TOML
    assert spare + "\n" == PACKAGED_META_TOML and ssh_ok(lab, "spare1", "sudo -n ls -A /var/lib/databend/raft") == ""
    query = tomllib.loads(ssh_ok(lab, "query1", "cat /etc/databend/databend-query.toml"))
    assert query["meta"]["endpoints"] == [f"{ip}:9191" for ip in ips.values()]
    keys = ssh_ok(lab, "meta2", "curl -sf http://127.100.0.12:28002/v1/cluster/status")
    assert json.loads(keys)["snapshot_key_count"] >= 2000
    for name in ("meta1", "meta2", "meta3", "spare1", "query1"):
        assert secret not in lab.ssh(name, "sudo -n journalctl --no-pager -o cat; "
                                           "curl -s http://%s:28002/v1/config" % lab.host(name).ip).stdout


def test_systemctl_stops_and_starts_databend_meta_and_journal_records_it(fresh_lab: Lab) -> None:
    ssh_ok(fresh_lab, "meta3", "sudo -n systemctl stop databend-meta")
    proc = fresh_lab.ssh("meta3", "systemctl is-active databend-meta")
    assert (proc.returncode, proc.stdout.strip()) == (3, "inactive")
    ssh_ok(fresh_lab, "meta3", "sudo -n systemctl start databend-meta")
    assert ssh_ok(fresh_lab, "meta3", "systemctl is-active databend-meta") == "active"
    journal = ssh_ok(fresh_lab, "meta3", "sudo -n journalctl -u databend-meta --no-pager -o cat")
    assert "Stopped" in journal and "Started" in journal
    status = fresh_lab.ssh("meta3", "systemctl status databend-meta --no-pager")
    assert status.returncode == 0 and "active (running)" in status.stdout


def test_crash_kills_the_meta_main_process(fresh_lab: Lab) -> None:
    before = ssh_ok(fresh_lab, "meta2", "systemctl show -p MainPID --value databend-meta")
    assert before != "0"
    killed = fresh_lab.crash("meta2")
    wait_for(lambda: fresh_lab.ssh("meta2", "systemctl is-active databend-meta").stdout.strip() != "active",
             10, "databend-meta on meta2 to stop being active after SIGKILL")
    result = ssh_ok(fresh_lab, "meta2", "systemctl show -p Result --value databend-meta")
    assert result == "signal", f"expected the unit to record a signal death, got {result!r} (pid {killed})"


# ---------------------------------------------------------------- faults
def test_cut_makes_a_host_unreachable_and_heal_restores_it(lab: Lab) -> None:
    try:
        lab.cut("spare2")
        assert not reachable(lab, "spare2")
        probe = "timeout 2 bash -c 'exec 3<>/dev/tcp/127.100.0.15/22' && echo open || echo closed"
        assert ssh_ok(lab, "spare1", probe) == "closed"
    finally:
        lab.heal("spare2")
    wait_for(lambda: reachable(lab, "spare2"), 30, "spare2 to answer SSH after heal")


def test_stop_host_powers_off_and_start_host_boots_the_same_disk(lab: Lab) -> None:
    ssh_ok(lab, "spare1", "echo kept | sudo -n tee /var/tmp/lab-disk-marker >/dev/null")
    lab.stop_host("spare1")
    try:
        assert not lab.is_running("spare1")
        assert not reachable(lab, "spare1")
    finally:
        lab.start_host("spare1")
    assert ssh_ok(lab, "spare1", "hostname; cat /var/tmp/lab-disk-marker") == "spare1\nkept"
    assert ssh_ok(lab, "spare1", "systemctl is-system-running") == "running"
    ssh_ok(lab, "spare1", "sudo -n rm -f /var/tmp/lab-disk-marker")


def test_reset_restores_the_baseline_cluster(lab: Lab) -> None:
    baseline = ssh_ok(lab, "meta2", "sudo -n cat /etc/databend/databend-meta.toml")
    ssh_ok(lab, "meta2", "echo '# edited' | sudo -n tee -a /etc/databend/databend-meta.toml >/dev/null")
    ssh_ok(lab, "meta2", "sudo -n cp /etc/databend/databend-meta.toml /etc/databend/databend-meta.toml.bak.1")
    ssh_ok(lab, "meta3", "sudo -n systemctl stop databend-meta")
    lab.cut("query2")
    lab.stop_host("spare2")
    seconds = lab.reset()
    assert ssh_ok(lab, "meta2", "sudo -n cat /etc/databend/databend-meta.toml") == baseline
    assert ssh_ok(lab, "meta2", "stat -c '%U:%G %a' /etc/databend/databend-meta.toml") == "root:databend 640"
    assert ssh_ok(lab, "meta2", "ls /etc/databend") == "databend-meta.toml"
    assert parse_metactl_status(ssh_ok(lab, "meta3", "databend-metactl status --grpc-api-address "
                                           "127.100.0.13:9191"))[1] == {1, 2, 3}
    assert reachable(lab, "query2") and reachable(lab, "spare2")
    print(f"reset took {seconds:.1f} s")


def test_reset_leaves_a_baseline_lab_alone_and_notices_any_change(fresh_lab: Lab) -> None:
    def main_pid(host: str, unit: str = "databend-meta") -> str:
        return ssh_ok(fresh_lab, host, f"systemctl show -p MainPID --value {unit}")

    before, query_before = main_pid("meta1"), main_pid("query1", "databend-query")
    fresh_lab.reset()
    assert main_pid("meta1") == before, "reset restarted a cluster that was already at baseline"
    ssh_ok(fresh_lab, "query1", "sudo -n touch /etc/databend/databend-query.toml.bak")
    fresh_lab.reset()
    # only query1 changed: reset puts query1 back (databend-query restarted) and leaves the meta cluster alone
    assert main_pid("query1", "databend-query") not in (query_before, "0"), "reset missed a stray backup file on query1"
    assert ssh_ok(fresh_lab, "query1", "ls /etc/databend") == "databend-query.toml"
    assert ssh_ok(fresh_lab, "query1", "systemctl is-active databend-query; systemctl is-enabled databend-query") \
        == "active\nenabled"
    assert main_pid("meta1") == before, "a change on a query host re-formed the meta cluster"
    ssh_ok(fresh_lab, "meta3", "sudo -n touch /etc/databend/databend-meta.toml.bak")
    fresh_lab.reset()
    assert main_pid("meta1") != before, "reset missed a stray backup file on meta3"
    assert ssh_ok(fresh_lab, "meta3", "ls /etc/databend") == "databend-meta.toml"


# ---------------------------------------------------------------- refusals and teardown
def test_up_refuses_a_lab_that_is_already_up(lab: Lab) -> None:
    with pytest.raises(LabError, match="already up"):
        Lab(lab.directory, lab.prefix).up()
    intruder = Lab(lab.directory, other_prefix(lab))
    with pytest.raises(LabError, match=f"holds lab {lab.prefix}, which is up"):
        intruder.up(meta=1, spare=0, query=0)
    intruder.down()   # another prefix: must not touch this directory's files
    assert intruder.hosts == {} and lab.ssh_config.exists() and len(lab.hosts) == 7
    assert reachable(lab, "meta1")


def test_up_refuses_more_than_twelve_hosts(tmp_path: Path, lab: Lab) -> None:
    other = Lab(tmp_path / "lab", other_prefix(lab))
    with pytest.raises(LabError, match="at most 12"):
        other.up(meta=10, spare=2, query=1)
    assert not other.is_up() and not (tmp_path / "lab").exists()


def test_up_names_missing_packages(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, lab: Lab) -> None:
    real_which = lab_module.shutil.which
    monkeypatch.setattr(lab_module.shutil, "which",
                        lambda prog, path=None: None if prog == "systemd-nspawn" else real_which(prog, path=path))
    with pytest.raises(LabError, match=r"missing Debian packages: systemd-container; run `make setup`"):
        Lab(tmp_path / "lab", other_prefix(lab)).up(meta=1, spare=0, query=0)


def test_cli_refuses_non_root_with_one_line(tmp_path: Path, lab: Lab) -> None:
    env = {**os.environ, "MSLAB_PREFIX": other_prefix(lab), "MSLAB_DIR": str(tmp_path / "lab")}
    proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
                           "sandbox", "up", "--meta", "1", "--spare", "0", "--query", "0"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == ["error: the lab needs root (network namespaces, mounts, cgroups); run it as root"]


def test_failed_up_tears_down_what_it_started(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, lab: Lab) -> None:
    other = Lab(tmp_path / "lab", other_prefix(lab))
    real_launch = Lab._launch
    launched: list[str] = []

    def launch_then_fail(self: Lab, spec: lab_module.HostSpec) -> None:
        if launched:
            raise LabError(f"injected failure launching {spec.name}")
        launched.append(spec.name)
        real_launch(self, spec)

    monkeypatch.setattr(Lab, "_launch", launch_then_fail)
    with pytest.raises(LabError, match="injected failure"):
        other.up(meta=2, spare=0, query=0)
    assert launched == ["meta1"]
    wait_for(lambda: not leftovers(other.prefix, other.directory), 10, "the failed lab to leave nothing")
    assert reachable(lab, "meta1"), "tearing down the failed lab disturbed the session lab"


def test_second_lab_runs_beside_and_down_leaves_nothing(tmp_path: Path, lab: Lab) -> None:
    other = Lab(tmp_path / "lab", other_prefix(lab))
    other.up(meta=1, spare=0, query=1)
    try:
        assert other.ssh("meta1", "hostname").stdout.strip() == "meta1"
        assert reachable(lab, "meta1")
        assert parse_metactl_status(other.ssh("meta1", "databend-metactl status --grpc-api-address "
                                              "127.100.0.11:9191").stdout)[1] == {1}
    finally:
        other.down()
    wait_for(lambda: not leftovers(other.prefix, other.directory), 10,
             f"nothing left of lab {other.prefix}: {leftovers(other.prefix, other.directory)}")
    other.down()   # a lab that is not up: no-op success
    assert not other.is_up()
    assert reachable(lab, "meta1")


def run_cli(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m sandbox ARGS` against the session lab."""
    env = {**os.environ, "MSLAB_PREFIX": lab.prefix, "MSLAB_DIR": str(lab.directory)}
    return subprocess.run([sys.executable, "-m", "sandbox", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)


def test_cli_status_and_faults(lab: Lab) -> None:
    status = run_cli(lab, "status")
    assert status.returncode == 0
    assert [line.split()[0] for line in status.stdout.splitlines()] == HOST_NAMES
    assert "meta1    127.100.0.11   meta   running  link=up ssh=open databend-meta=active" in status.stdout
    try:
        assert run_cli(lab, "fault", "cut", "query2").returncode == 0
        assert "link=CUT ssh=closed" in run_cli(lab, "status").stdout.splitlines()[6]
        assert not reachable(lab, "query2")
    finally:
        assert run_cli(lab, "fault", "heal", "query2").returncode == 0
    wait_for(lambda: reachable(lab, "query2"), 30, "query2 to answer SSH after `fault heal`")
    idle = run_cli(lab, "fault", "crash", "spare1")
    assert (idle.returncode, idle.stderr.strip()) == (
        1, "error: spare1: databend-meta is not running (MainPID 0); nothing to crash")
    bad = run_cli(lab, "fault", "cut", "nosuch")
    assert bad.returncode == 1
    assert bad.stderr.strip() == (f"error: no host 'nosuch' in lab {lab.prefix} "
                                  f"(hosts: {', '.join(HOST_NAMES)})")
