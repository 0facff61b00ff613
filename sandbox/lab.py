"""The local lab: N test hosts, each a systemd-nspawn container with real systemd, sshd and its own netns.

`Lab(directory, prefix)` builds, inspects, resets and breaks the lab. Layout and addresses are in
docs/ARCHITECTURE.md ("The lab"); the recipe is /work/shared/reference/test-lab-recipe.md, variant C1.
Everything the lab creates is named after its prefix, so two labs with different prefixes run side by side.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sandbox import hostfs, netns
from sandbox.errors import LabError
from sandbox.hostfs import HostSpec

REPO = Path(__file__).resolve().parent.parent
BOOT_SCRIPT = Path(__file__).resolve().parent / "boot.sh"
MAX_HOSTS = 12
PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,5}$")
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_HIERARCHIES = ("systemd", "unified")
RAFT_PORT, GRPC_PORT, ADMIN_PORT = 28004, 9191, 28002
META_SERVICE, QUERY_SERVICE = "databend-meta", "databend-query"
STANDIN_VERSION_FILE = "/usr/lib/databend-standin/VERSION"    # the release a host plays (standin/version.py)
GRPC_TLS_DIR = "/etc/databend/tls"                             # enable_grpc_tls(); removed by reset
BOOT_TIMEOUT_S = 60.0
POWEROFF_TIMEOUT_S = 15.0
FORM_TIMEOUT_S = 60.0
FINGERPRINT_SETTLE_S = 5.0
INOTIFY_INSTANCES = 8192   # fs.inotify.max_user_instances the lab needs (about 8 per host, shared by all labs)
DEFAULT_KEYS = 2000        # kv keys written once the cluster formed (MSLAB_KEYS), so a new voter has data to catch up
PRELOAD_BATCH = 250        # keys per kv transaction (one raft log entry each)

# program -> Debian package that provides it (checked before `up`)
REQUIRED_PROGRAMS = {
    "systemd-nspawn": "systemd-container", "sshd": "openssh-server", "ssh": "openssh-client",
    "ssh-keygen": "openssh-client", "nc": "netcat-openbsd", "ip": "iproute2", "sudo": "sudo",
    "dbus-daemon": "dbus", "nsenter": "util-linux", "unshare": "util-linux", "findmnt": "util-linux",
}
PROGRAM_DIRS = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def default_prefix() -> str:
    """Lab prefix from MSLAB_PREFIX (default "msl")."""
    return os.environ.get("MSLAB_PREFIX", "msl")


def default_directory() -> Path:
    """Lab directory from MSLAB_DIR (default <repo>/.lab)."""
    return Path(os.environ.get("MSLAB_DIR", str(REPO / ".lab")))


def plan_hosts(meta: int, spare: int, query: int) -> list[HostSpec]:
    """Hosts meta1..metaM, spare1..spareS, query1..queryQ with addresses 127.100.0.(10+i).

    Raises LabError for counts out of range (meta >= 1, spare/query >= 0, at most MAX_HOSTS in all).
    """
    if meta < 1 or spare < 0 or query < 0:
        raise LabError(f"bad host counts meta={meta} spare={spare} query={query}: need meta >= 1, spare >= 0, query >= 0")
    if meta + spare + query > MAX_HOSTS:
        raise LabError(f"{meta + spare + query} hosts requested (meta={meta} spare={spare} query={query}); "
                       f"the lab holds at most {MAX_HOSTS}")
    names = ([f"meta{i}" for i in range(1, meta + 1)] + [f"spare{i}" for i in range(1, spare + 1)]
             + [f"query{i}" for i in range(1, query + 1)])
    return [HostSpec(name=n, index=i, ip=netns.host_ip(i), role=n.rstrip("0123456789"))
            for i, n in enumerate(names, start=1)]


def missing_packages() -> list[str]:
    """Debian packages whose programs the lab needs but that are not installed."""
    path = f"{os.environ.get('PATH', '')}:{PROGRAM_DIRS}"
    return sorted({pkg for prog, pkg in REQUIRED_PROGRAMS.items() if shutil.which(prog, path=path) is None})


def _is_dead(pid: int) -> bool:
    """True if `pid` is gone or a zombie (zombies are reaped late on this machine's PID 1)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _cmdline(pid: int) -> list[str]:
    """argv of `pid` ([] if gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except (FileNotFoundError, ProcessLookupError):
        return []


def _wait_until(predicate: Callable[[], bool], timeout_s: float, poll_s: float = 0.05) -> bool:
    """Poll `predicate` until it is true or `timeout_s` passes; returns its last value."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)


def parse_metactl_status(text: str) -> tuple[str | None, set[int]]:
    """(State, voter ids) from `databend-metactl status` output; (None, set()) if it has neither."""
    state = None
    voters: set[int] = set()
    section = ""
    for line in text.splitlines():
        if line.startswith("State:"):
            state = line.split(":", 1)[1].strip()
        elif not line.startswith(" "):
            section = line.split(":", 1)[0]
        elif section == "Voters" and (m := re.search(r"id=(\d+)", line)):
            voters.add(int(m.group(1)))
    return state, voters


# sh -c SCRIPT sh UNIT: `enable --now` / `disable --now`, but enable/disable (a daemon-reload) only when needed
_ENABLE_AND_START = 'systemctl is-enabled --quiet "$1" || systemctl enable --quiet "$1"; systemctl start "$1"'
_DISABLE_AND_STOP = ('if systemctl is-enabled --quiet "$1"; then systemctl disable --quiet --now "$1"; '
                     'else systemctl stop "$1"; fi')

# python3 -I -c SCRIPT UNIT GRPC_ADDR EXPECTED_IDS TIMEOUT_S, run on a meta host: enable (if needed) and start the
# unit, then poll the node's gRPC status (the JSON `databend-metactl status` renders) until State is Leader or
# Follower and the voter ids are EXPECTED_IDS (comma-separated). Exit 0 when they are; 3 after TIMEOUT_S.
_START_META_AND_WAIT = """
import subprocess, sys, time
sys.path.insert(0, '/usr/lib/databend-standin')
from standin import wire
unit, addr, timeout_s = sys.argv[1], sys.argv[2], float(sys.argv[4])
expected = {int(i) for i in sys.argv[3].split(',') if i}
if subprocess.run(['systemctl', 'is-enabled', '--quiet', unit]).returncode != 0:
    subprocess.run(['systemctl', 'enable', '--quiet', unit], check=True)
subprocess.run(['systemctl', 'start', unit], check=True)
deadline = time.monotonic() + timeout_s
while True:
    try:
        st = wire.call_json(addr, 'GET', '/v1/grpc/status', timeout=5.0)
        if st['state'] in ('Leader', 'Follower') and {int(v['name']) for v in st['voters'] or []} == expected:
            sys.exit(0)
    except Exception:
        pass
    if time.monotonic() >= deadline:
        sys.exit(3)
    time.sleep(0.02)
"""


class Lab:
    """A lab of test hosts under `directory`, every kernel object named after `prefix`."""

    def __init__(self, directory: Path | str | None = None, prefix: str | None = None) -> None:
        self.directory = Path(directory if directory is not None else default_directory()).resolve()
        self.prefix = prefix if prefix is not None else default_prefix()
        if not PREFIX_RE.match(self.prefix):
            raise LabError(f"bad lab prefix {self.prefix!r}: 1-6 characters [a-z0-9], starting with a letter")
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    # ---------------------------------------------------------------- files and names
    @property
    def ssh_config(self) -> Path:
        return self.directory / "ssh_config"

    @property
    def key_file(self) -> Path:
        return self.directory / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.directory / "known_hosts"

    @property
    def inventory(self) -> Path:
        return self.directory / "inventory.toml"

    @property
    def hosts_json(self) -> Path:
        return self.directory / "hosts.json"

    @property
    def raft_secret_file(self) -> Path:
        return self.directory / "raft_secret"

    @property
    def raft_secret(self) -> str:
        """The lab's raft shared secret (every meta node's `raft_secret`, strict mode on); kept in
        `<lab dir>/raft_secret`, mode 600. Raises LabError if the lab was not brought up with one."""
        try:
            return self.raft_secret_file.read_text().strip()
        except FileNotFoundError:
            raise LabError(f"lab {self.prefix} has no raft secret ({self.raft_secret_file} missing); "
                           "bring the lab up first") from None

    @property
    def lab_netns(self) -> str:
        return netns.lab_netns(self.prefix)

    @property
    def hosts(self) -> dict[str, HostSpec]:
        """name -> HostSpec (ip, role, index) of the lab as last brought up; {} if none."""
        if not self.hosts_json.exists() or self._directory_owner() not in (None, self.prefix):
            return {}
        entries = json.loads(self.hosts_json.read_text())
        return {e["name"]: HostSpec(name=e["name"], index=e["index"], ip=e["ip"], role=e["role"]) for e in entries}

    def host(self, name: str) -> HostSpec:
        """The host called `name`. Raises LabError naming the valid hosts."""
        hosts = self.hosts
        if name not in hosts:
            valid = ", ".join(hosts) or "none: the lab is not up"
            raise LabError(f"no host {name!r} in lab {self.prefix} (hosts: {valid})")
        return hosts[name]

    def _cgroup(self, hierarchy: str, name: str | None = None) -> Path:
        base = CGROUP_ROOT / hierarchy / self.prefix
        return base / name if name else base

    def _pid_file(self, name: str) -> Path:
        return hostfs.host_root(self.directory, name) / "pid"

    def _directory_owner(self) -> str | None:
        """Prefix of the lab whose files are in the directory (written by `up`), or None."""
        try:
            return (self.directory / "prefix").read_text().strip() or None
        except FileNotFoundError:
            return None

    def is_up(self) -> bool:
        """True if anything of this prefix exists: the lab netns or its cgroups."""
        return netns.netns_exists(self.lab_netns) or any(self._cgroup(h).exists() for h in CGROUP_HIERARCHIES)

    # ---------------------------------------------------------------- processes
    def _nspawn_pid(self, name: str) -> int | None:
        """PID of host `name`'s launcher (boot.sh, then systemd-nspawn), verified by its cmdline; None if none."""
        try:
            pid = int(self._pid_file(name).read_text())
        except (FileNotFoundError, ValueError):
            return None
        argv = _cmdline(pid)
        ours = (bool(argv) and "systemd-nspawn" in argv[0] and f"--machine={name}" in argv) or (
            str(BOOT_SCRIPT) in argv and str(hostfs.host_root(self.directory, name)) in argv)
        return pid if ours and not _is_dead(pid) else None

    def _launcher_dead(self, name: str) -> bool:
        """True if host `name`'s launcher (boot.sh, then nspawn under the same PID) has exited."""
        child = self._children.get(name)
        if child is not None:
            return child.poll() is not None
        try:
            return _is_dead(int(self._pid_file(name).read_text()))
        except (FileNotFoundError, ValueError):
            return True

    def is_running(self, name: str) -> bool:
        """True if host `name`'s container is powered on."""
        return self._nspawn_pid(name) is not None

    def _cgroup_pids(self, name: str | None = None) -> set[int]:
        """Every PID in the lab's (or one host's) cgroup subtree, both hierarchies."""
        pids: set[int] = set()
        for hierarchy in CGROUP_HIERARCHIES:
            for directory in _cgroup_dirs(self._cgroup(hierarchy, name)):
                try:
                    pids.update(int(p) for p in (directory / "cgroup.procs").read_text().split())
                except OSError:   # removed meanwhile (systemd inside the host prunes its own cgroups)
                    continue
        return pids

    def _init_pid(self, name: str) -> int:
        """PID (in our namespace) of host `name`'s systemd, i.e. the container's PID 1."""
        for pid in sorted(self._cgroup_pids(name)):
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            nspid = next((line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:")), [])
            if len(nspid) == 2 and nspid[1] == "1":
                return pid
        raise LabError(f"host {name} of lab {self.prefix} is not running (no container PID 1 found)")

    # ---------------------------------------------------------------- running commands
    def root_exec(self, name: str, argv: Sequence[str], *, input: str | None = None, timeout_s: float = 60,
                  check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `argv` as root inside host `name` (nsenter into its namespaces); lab bookkeeping only.

        Raises LabError (host, command, exit code, stderr tail) if `check` and it exits non-zero.
        """
        pid = self._init_pid(name)
        cmd = ["nsenter", "-t", str(pid), "-m", "-u", "-i", "-n", "-p", "-C", "-r", "-w", "--",
               "/usr/bin/env", "-i", f"PATH={PROGRAM_DIRS}", "HOME=/root", "LANG=C.UTF-8", "TERM=dumb",
               "/usr/bin/env", "-C", "/root", *argv]
        try:
            proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise LabError(f"{name}: `{shlex.join(argv)}` did not finish within {timeout_s:g} s") from exc
        if check and proc.returncode != 0:
            tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
            raise LabError(f"{name}: `{shlex.join(argv)}` exited {proc.returncode}: {tail}")
        return proc

    def ssh(self, name: str, command: str | Sequence[str], *, timeout_s: float = 30, check: bool = False,
            options: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
        """Run `command` on host `name` over OpenSSH as ops (generated ssh_config, strict host keys).

        A sequence is quoted with shlex.join; a string is passed to the remote shell as is.
        """
        remote = command if isinstance(command, str) else shlex.join(command)
        argv = ["ssh", "-F", str(self.ssh_config), *options, name, remote]
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=check)
        except subprocess.TimeoutExpired as exc:
            raise LabError(f"{name}: ssh `{remote}` did not finish within {timeout_s:g} s") from exc

    # ---------------------------------------------------------------- up
    def up(self, meta: int = 3, spare: int = 2, query: int = 2) -> float:
        """Build the lab and form the meta cluster; returns the seconds it took.

        A failure tears down what was started. Raises LabError for bad input (counts, not root, missing
        packages, a lab with this prefix already up).
        """
        specs = plan_hosts(meta, spare, query)
        preflight()
        if self.is_up():
            raise LabError(f"lab {self.prefix} is already up (netns {self.lab_netns}); "
                           f"run `python -m sandbox down` with MSLAB_PREFIX={self.prefix} first")
        owner = self._directory_owner()
        if owner not in (None, self.prefix) and Lab(self.directory, owner).is_up():
            raise LabError(f"directory {self.directory} holds lab {owner}, which is up; "
                           f"use another MSLAB_DIR or bring lab {owner} down first")
        started = time.monotonic()
        try:
            self._build(specs)
        except BaseException:
            self.down()
            raise
        return time.monotonic() - started

    def _build(self, specs: list[HostSpec]) -> None:
        """Network, disks, generated files, boot, then the cluster."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._remove_generated_files()
        (self.directory / "prefix").write_text(f"{self.prefix}\n")
        shutil.rmtree(self.directory / "hosts", ignore_errors=True)   # disks of an earlier lab in this directory
        self._write_client_key()
        self._write_raft_secret()
        netns.create_lab_network(self.prefix)
        for spec in specs:
            netns.create_host_network(self.prefix, spec.index)
        pubkey = (self.directory / "id_ed25519.pub").read_text()
        host_keys = {s.name: hostfs.seed_base(self.directory, s, specs, pubkey) for s in specs}
        self._seed_packages(specs)
        self._write_client_files(specs, host_keys)
        for spec in specs:
            self._launch(spec)
        self._parallel(self._wait_booted, [s.name for s in specs])
        with ThreadPoolExecutor(max_workers=len(specs)) as pool:   # SSH logins checked while the cluster forms
            checks = [pool.submit(self._check_ssh, s.name) for s in specs]
            if self._has_standin():
                self._form_cluster()
                self._record_fingerprints()
            for check in checks:
                check.result()

    def _write_client_key(self) -> None:
        """A fresh Ed25519 client key pair in the lab directory."""
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"lab-{self.prefix}",
                        "-f", str(self.key_file)], check=True)

    def _write_raft_secret(self) -> None:
        """A fresh random raft secret for this lab, mode 600 (never printed)."""
        fd = os.open(self.raft_secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(24) + "\n")
        os.chmod(self.raft_secret_file, 0o600)

    def _write_client_files(self, specs: list[HostSpec], host_keys: dict[str, str]) -> None:
        """known_hosts (by IP), ssh_config (aliases), hosts.json, inventory.toml."""
        self.known_hosts.write_text("".join(f"{s.ip} {host_keys[s.name]}\n" for s in specs))
        self.ssh_config.write_text(render_ssh_config(self, specs))
        self.hosts_json.write_text(json.dumps(
            [{"name": s.name, "ip": s.ip, "role": s.role, "index": s.index} for s in specs], indent=2) + "\n")
        self.inventory.write_text(render_inventory(self, specs))

    def _launch(self, spec: HostSpec) -> None:
        """Boot host `spec` from its disk (boot.sh in a private mount namespace); records nspawn's PID."""
        root = hostfs.host_root(self.directory, spec.name)
        for hierarchy in CGROUP_HIERARCHIES:
            self._cgroup(hierarchy, spec.name).mkdir(parents=True, exist_ok=True)
        with open(root / "console.log", "ab") as console:
            proc = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "--", str(BOOT_SCRIPT), str(root), spec.name,
                 netns.host_netns(self.prefix, spec.index), f"{self.prefix}/{spec.name}"],
                stdin=subprocess.DEVNULL, stdout=console, stderr=console, start_new_session=True)
        self._children[spec.name] = proc
        self._pid_file(spec.name).write_text(f"{proc.pid}\n")

    def _wait_booted(self, name: str) -> None:
        """Wait until host `name`'s systemd reports the boot finished with no failed unit.

        Raises LabError naming the host (launcher died, no systemd, boot 'degraded' with the failed units).
        """
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        if not _wait_until(lambda: self._container_init_started(name), BOOT_TIMEOUT_S):
            raise LabError(f"host {name}: no systemd in the container after {BOOT_TIMEOUT_S:g} s")

        def manager_up() -> bool:   # until systemd has created /run/systemd/system, systemctl says "offline"
            probe = self.root_exec(name, ["systemctl", "is-system-running"], timeout_s=10, check=False)
            return probe.stdout.strip() not in ("", "offline")

        if not _wait_until(manager_up, max(1.0, deadline - time.monotonic())):
            raise LabError(f"host {name}: systemd did not come up within {BOOT_TIMEOUT_S:g} s")
        state = self.root_exec(name, ["systemctl", "is-system-running", "--wait"],
                               timeout_s=max(1.0, deadline - time.monotonic()), check=False).stdout.strip()
        if state != "running":
            failed = self.root_exec(name, ["systemctl", "--failed", "--plain", "--no-legend"], check=False).stdout
            units = ", ".join(line.split()[0] for line in failed.splitlines() if line.strip()) or "none listed"
            raise LabError(f"host {name} booted {state!r}, not 'running'; failed units: {units}")

    def _container_init_started(self, name: str) -> bool:
        """True once host `name` has a PID 1; raises LabError with the console tail if its launcher died."""
        if self._launcher_dead(name):
            console = hostfs.host_root(self.directory, name) / "console.log"
            tail = " | ".join(console.read_text(errors="replace").strip().splitlines()[-3:])
            raise LabError(f"host {name} failed to start: {tail}")
        try:
            self._init_pid(name)
        except LabError:
            return False
        return True

    def _check_ssh(self, name: str) -> None:
        """Prove host `name` answers SSH as ops with the generated config."""
        proc = self.ssh(name, "true", timeout_s=20)
        if proc.returncode != 0:
            raise LabError(f"host {name}: ssh as ops failed (exit {proc.returncode}): {proc.stderr.strip()}")

    def _parallel(self, fn: Callable[[str], object], names: list[str]) -> list[object]:
        """Run fn(name) for every name at once; re-raise the first failure."""
        with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
            return [f.result() for f in [pool.submit(fn, n) for n in names]]

    # ---------------------------------------------------------------- databend stand-in
    @staticmethod
    def _has_standin() -> bool:
        """True if hosts get the databend stand-in: sandbox/standin/install.py exists and MSLAB_STANDIN != "0"
        (MSLAB_STANDIN=0 gives bare hosts: sshd, systemd, users, no databend)."""
        wanted = os.environ.get("MSLAB_STANDIN", "1") != "0"
        return wanted and (Path(__file__).resolve().parent / "standin" / "install.py").exists()

    def _seed_packages(self, specs: list[HostSpec]) -> None:
        """Install the stand-in packages and the baseline configs into each host's disk (before boot)."""
        if not self._has_standin():
            return
        from sandbox.standin import install

        metas = [s for s in specs if s.role == "meta"]
        endpoints = [f"{s.ip}:{GRPC_PORT}" for s in metas]
        for spec in specs:
            up = hostfs.upper(self.directory, spec.name)
            if spec.role in ("meta", "spare"):
                install.install_meta_package(up)
            if spec.role == "meta":   # binds its own IP; join = the other nodes (not itself); raft secret, strict
                single = spec.meta_id == 1
                join = [] if single else [f"{s.ip}:{RAFT_PORT}" for s in metas if s.meta_id != spec.meta_id]
                text = install.render_meta_config(spec.meta_id, spec.ip, single, join, raft_secret=self.raft_secret)
                (up / "etc/databend/databend-meta.toml").write_text(text)
                (up / "etc/databend/databend-meta.toml").chmod(0o640)   # boot.sh: root:databend
            if spec.role == "query":
                install.install_query_package(up, endpoints)
                (up / "etc/databend/databend-query.toml").write_text(install.render_query_config(endpoints))
            self._save_baseline(spec)

    def _save_baseline(self, spec: HostSpec) -> None:
        """Keep a copy of the host's /etc/databend/*.toml as seeded (what `reset` restores)."""
        src = hostfs.upper(self.directory, spec.name) / "etc/databend"
        dst = hostfs.host_root(self.directory, spec.name) / "baseline"
        dst.mkdir(exist_ok=True)
        for path in sorted(src.glob("*.toml")) if src.is_dir() else []:
            shutil.copy2(path, dst / path.name)

    def _baseline(self, name: str) -> dict[str, str]:
        """file name -> baseline text of host `name`'s /etc/databend/*.toml."""
        base = hostfs.host_root(self.directory, name) / "baseline"
        return {p.name: p.read_text() for p in sorted(base.glob("*.toml"))} if base.is_dir() else {}

    def grpc_address(self, name: str) -> str:
        """The gRPC address meta host `name`'s node is configured with (`<ip>:9191`: it binds its own IP only, so
        metactl's default 127.0.0.1:9191 is refused there)."""
        return f"{self.host(name).ip}:{GRPC_PORT}"

    def admin_address(self, name: str) -> str:
        """The admin HTTP address of meta host `name` (`<ip>:28002`)."""
        return f"{self.host(name).ip}:{ADMIN_PORT}"

    def meta_status(self, name: str) -> tuple[str | None, set[int]]:
        """(State, voters) as `databend-metactl status` prints them for host `name`'s configured gRPC address;
        (None, set()) if it fails."""
        proc = self.root_exec(name, ["databend-metactl", "status", "--grpc-api-address", self.grpc_address(name)],
                              timeout_s=10, check=False)
        return parse_metactl_status(proc.stdout) if proc.returncode == 0 else (None, set())

    def _preload(self) -> None:
        """Write MSLAB_KEYS (default 2000) kv keys through meta1 in a few transactions, so that a node added later
        has data to catch up on (the stand-in's catch-up time grows with it). A lab bookkeeping path: the stand-in's
        kv transaction route, from a python3 run on the host."""
        count = int(os.environ.get("MSLAB_KEYS", str(DEFAULT_KEYS)))
        if count <= 0:
            return
        code = ("import sys; sys.path.insert(0, '/usr/lib/databend-standin'); from standin import wire\n"
                "addr, n, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])\n"
                "for start in range(0, n, batch):\n"
                "    puts = [['mslab/preload/%06d' % i, 'v%023d' % i] for i in range(start, min(n, start + batch))]\n"
                "    wire.call_json(addr, 'POST', '/v1/grpc/kv/transaction', {'puts': puts}, timeout=60)\n")
        self.root_exec("meta1", ["/usr/bin/python3", "-I", "-c", code, self.grpc_address("meta1"), str(count),
                                 str(PRELOAD_BATCH)], timeout_s=120)

    def _form_cluster(self, ready: Callable[[str], object] = lambda name: None) -> None:
        """Start meta1 (single) and wait for it to lead, then each next meta host (join) until it is a voter.

        The meta units are enabled (a rebooted meta host starts its node again); meanwhile spare hosts get
        databend-meta disabled and stopped. Then query hosts get databend-query enabled and started.
        `ready(name)` is called (from `reset`: waits until that spare or query host is wiped) before a spare or
        query host is touched.
        """
        hosts = self.hosts
        spares = [h.name for h in hosts.values() if h.role == "spare"]
        with ThreadPoolExecutor(max_workers=max(1, len(spares))) as pool:
            side = [pool.submit(lambda n: (ready(n), self._baseline_service(n)), n) for n in spares]
            for spec in sorted((h for h in hosts.values() if h.role == "meta"), key=lambda h: h.meta_id):
                self._start_meta_and_wait(spec, {m.meta_id for m in hosts.values()
                                                 if m.role == "meta" and m.meta_id <= spec.meta_id})
            for future in side:
                future.result()
        queries = [h.name for h in hosts.values() if h.role == "query"]
        # databend-query needs the meta cluster at start (not the preloaded keys): it starts while they are written
        self._parallel(lambda n: self._preload() if n is None else (ready(n), self._baseline_service(n)),
                       [None, *queries])

    def _baseline_service(self, name: str) -> None:
        """Query host: databend-query enabled and running. Spare host: databend-meta disabled and stopped.

        Same end state as `systemctl enable|disable --now`, but `enable`/`disable` (each a daemon-reload, the slow
        part) only run when the unit's enablement is not already the wanted one."""
        if self.host(name).role == "query":
            self.root_exec(name, ["sh", "-c", _ENABLE_AND_START, "sh", QUERY_SERVICE])
        else:
            self.root_exec(name, ["sh", "-c", _DISABLE_AND_STOP, "sh", META_SERVICE])

    def _start_meta_and_wait(self, spec: HostSpec, expected: set[int]) -> None:
        """Enable and start databend-meta on `spec`; wait until it is Leader/Follower with voters `expected`.

        One command on the host (_START_META_AND_WAIT): enable (only if not enabled) and start the unit, then poll
        the node's own status every 20 ms (what `databend-metactl status` prints State and Voters from) instead
        of a metactl run through nsenter per poll from here."""
        proc = self.root_exec(spec.name, ["/usr/bin/python3", "-I", "-c", _START_META_AND_WAIT, META_SERVICE,
                                          self.grpc_address(spec.name), ",".join(map(str, sorted(expected))),
                                          str(FORM_TIMEOUT_S)], timeout_s=FORM_TIMEOUT_S + 30, check=False)
        if proc.returncode == 0:
            return
        if proc.returncode != 3:
            tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
            raise LabError(f"{spec.name}: starting {META_SERVICE} exited {proc.returncode}: {tail}")
        state, voters = self.meta_status(spec.name)
        raise LabError(f"{spec.name} did not become a voter within {FORM_TIMEOUT_S:g} s "
                       f"(state {state}, voters {sorted(voters)}, expected {sorted(expected)})")

    # ---------------------------------------------------------------- reset
    def reset(self, full: bool = False) -> float:
        """Bring a running lab back to the baseline cluster without recreating hosts; returns seconds taken.

        Heals links, boots stopped hosts, stops the services, wipes raft state and logs, restores
        /etc/databend to baseline, then forms the cluster again. Shortcuts (unless `full`), when every host is
        running with its link up: a host that shows exactly the fingerprint recorded when the cluster last formed
        (config files, unit states, spare raft dirs, and each meta node's state/leader/term/last log
        index/voters) is at baseline. All at baseline: nothing is touched. Every meta host at baseline, some
        spare or query hosts not: only those hosts are reset (the same wipe and restore, then a query host's
        databend-query started again against the unchanged cluster); the meta cluster is not formed again.
        Raises LabError if the lab is not up.
        """
        if not self.hosts or not netns.netns_exists(self.lab_netns):
            raise LabError(f"lab {self.prefix} is not up; run `python -m sandbox up` first")
        started = time.monotonic()
        names = list(self.hosts)
        if not full and self._has_standin():
            stale = self._stale_hosts(names)
            if stale == []:
                return time.monotonic() - started
            if stale is not None and all(self.host(n).role != "meta" for n in stale):
                self._parallel(self._reset_side_host, stale)
                self._record_fingerprints(stale)
                return time.monotonic() - started
        for name in names:
            self.heal(name)
        self._parallel(lambda n: None if self.is_running(n) else self.start_host(n), names)
        if self._has_standin():
            # every host is wiped at once; the cluster forms as soon as the meta hosts are (a query host's
            # databend-query takes longer to stop), the others are waited for before they are touched again
            with ThreadPoolExecutor(max_workers=len(names)) as pool:
                wiped = {n: pool.submit(self._reset_host, n) for n in names}
                for name in names:
                    if self.host(name).role == "meta":
                        wiped[name].result()
                self._form_cluster(ready=lambda n: wiped[n].result())
                for future in wiped.values():
                    future.result()
            self._record_fingerprints()
        return time.monotonic() - started

    @property
    def _fingerprint_file(self) -> Path:
        return self.directory / "baseline-fingerprints.json"

    def _fingerprint(self, name: str) -> str:
        """What `reset` compares on host `name`: /etc/databend (names and content), the databend unit's
        active/enabled state, a spare's raft and log dirs, and a meta node's membership view (no replication
        lines)."""
        spec = self.host(name)
        service = QUERY_SERVICE if spec.role == "query" else META_SERVICE
        script = (f"ls -A /etc/databend; cat /etc/databend/* | sha256sum; systemctl is-active {service}; "
                  f"systemctl is-enabled {service}; cat {STANDIN_VERSION_FILE} 2>/dev/null; ")
        if spec.role == "spare":   # never started at baseline: no raft state, no log files
            script += "ls -A /var/lib/databend/raft /var/log/databend; "
        if spec.role != "meta":
            return self.root_exec(name, ["sh", "-c", script], timeout_s=20, check=False).stdout
        # The node's status as JSON (curl, not a metactl process per read), rendered here as `databend-metactl
        # status` prints it, keeping the same lines as before: Node, State, Leader, CurrentTerm, LastLogIndex, voters.
        script += f"echo {_STATUS_MARK}; curl -s --max-time 10 http://{self.grpc_address(name)}/v1/grpc/status"
        out = self.root_exec(name, ["sh", "-c", script], timeout_s=20, check=False).stdout
        head, _, status = out.partition(f"{_STATUS_MARK}\n")
        return head + _membership_lines(status)

    def _record_fingerprints(self, only: list[str] | None = None) -> None:
        """Remember every host's fingerprint (or only those of hosts `only`, the others' kept) once the new
        cluster has settled (two equal reads in a row, at most FINGERPRINT_SETTLE_S); that is the baseline
        `reset` compares with."""
        names = list(self.hosts) if only is None else list(only)
        recorded = {} if only is None else json.loads(self._fingerprint_file.read_text())
        seen = {"prints": self._parallel(self._fingerprint, names)}

        def settled() -> bool:
            again = self._parallel(self._fingerprint, names)
            same, seen["prints"] = again == seen["prints"], again
            return same

        _wait_until(settled, FINGERPRINT_SETTLE_S, poll_s=0.2)
        recorded.update(zip(names, seen["prints"]))
        self._fingerprint_file.write_text(json.dumps({n: recorded[n] for n in self.hosts}, indent=1) + "\n")

    def _stale_hosts(self, names: list[str]) -> list[str] | None:
        """The hosts among `names` whose fingerprint differs from the recorded baseline ([] = all at baseline);
        None when that cannot be told host by host: no baseline recorded for exactly these hosts, or a host
        powered off or cut off."""
        try:
            recorded = json.loads(self._fingerprint_file.read_text())
        except (FileNotFoundError, ValueError):
            return None
        if set(recorded) != set(names):
            return None
        if not all(self.is_running(n) and netns.host_link_is_up(self.prefix, self.host(n).index) for n in names):
            return None
        prints = self._parallel(self._fingerprint, names)
        return [n for n, fp in zip(names, prints, strict=True) if fp != recorded[n]]

    def _reset_side_host(self, name: str) -> None:
        """Back to baseline a spare or query host of a cluster that is at baseline: `_reset_host`, then the
        query host's databend-query enabled and started (a spare's databend-meta is already disabled, stopped)."""
        self._reset_host(name)
        if self.host(name).role == "query":
            self._baseline_service(name)

    def _reset_host(self, name: str) -> None:
        """Stop databend services on `name`, wipe their state, restore baseline config files (one command).

        The unit is stopped, not disabled: `_form_cluster` leaves meta/query units enabled and spare units disabled
        (enable/disable only when the state differs), the same end state as `disable --now` then `enable --now`
        without two daemon-reloads per host."""
        spec = self.host(name)
        service = QUERY_SERVICE if spec.role == "query" else META_SERVICE
        baseline = self._baseline(name)
        keep = " ".join(shlex.quote(f"/etc/databend/{n}") for n in baseline)
        stop = _DISABLE_AND_STOP if spec.role == "spare" else 'systemctl stop "$1"'
        script = (f"{{ {stop}; }} && {{ systemctl reset-failed || true; }} && "
                  f"rm -rf /var/lib/databend/raft/* /var/log/databend/* {STANDIN_VERSION_FILE} && "
                  f"for f in /etc/databend/*; do case \" {keep} \" in *\" $f \"*) ;; *) rm -rf \"$f\";; esac; done"
                  " && shift && while [ $# -gt 0 ]; do "
                  'printf %s "$4" > "$1" && chmod "$2" "$1" && chown "root:$3" "$1" && shift 4 || exit 1; done')
        files: list[str] = []
        for file_name, text in baseline.items():
            mode, group = ("640", "databend") if "\nraft_secret" in text else ("644", "root")   # as boot.sh
            files += [f"/etc/databend/{file_name}", mode, group, text]
        self.root_exec(name, ["sh", "-c", script, "sh", service, *files])

    # ---------------------------------------------------------------- older releases, TLS (issue #9 items 5, 6)
    def install_version(self, name: str, release: str | None, *, restart: bool = True) -> None:
        """Make host `name` play databend-meta release `release` (e.g. "1.2.600"; None = the newest again):
        `databend-meta --cmd ver`, metactl's command line and output, status BinaryVersion/DataVersion follow it.

        Writes /usr/lib/databend-standin/VERSION (reset removes it); restarts databend-meta if it is active and
        `restart`. Raises LabError naming the value when it is not a release the stand-in plays.
        """
        self.host(name)
        from sandbox.standin import version   # the lab's own copy, to validate before touching the host

        if release is None:
            self.root_exec(name, ["rm", "-f", STANDIN_VERSION_FILE])
        else:
            try:
                version.parse(release)
            except version.VersionError as exc:
                raise LabError(str(exc)) from None
            self.root_exec(name, ["sh", "-c", 'cat > "$1" && chmod 644 "$1"', "sh", STANDIN_VERSION_FILE],
                           input=f"{release}\n")
        self._restart_meta_if_active(name, restart)

    def enable_grpc_tls(self, name: str, *, restart: bool = True) -> str:
        """Serve TLS on host `name`'s meta gRPC API; returns the self-signed certificate (PEM) for a CA file.

        openssl (on this machine) makes a key + certificate for CN=localhost with SANs localhost and the host's IP;
        they go to /etc/databend/tls/grpc.{crt,key} (key mode 640, group databend), and the top-level keys
        `grpc_tls_server_cert` / `grpc_tls_server_key` are set in /etc/databend/databend-meta.toml (after the
        `grpc_api_address` line). databend-meta is restarted if it is active and `restart`. `reset` undoes it all.
        Raises LabError if openssl is missing or a step fails.
        """
        spec = self.host(name)
        if shutil.which("openssl") is None:
            raise LabError("enable_grpc_tls needs openssl on this machine (Debian package openssl)")
        import tempfile

        with tempfile.TemporaryDirectory(prefix="lab-tls-") as tmp:
            key, crt = Path(tmp) / "grpc.key", Path(tmp) / "grpc.crt"
            proc = subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(crt),
                 "-days", "30", "-subj", "/CN=localhost", "-addext", f"subjectAltName=DNS:localhost,IP:{spec.ip}"],
                capture_output=True, text=True, timeout=60)
            if proc.returncode != 0:
                raise LabError(f"openssl req exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
            cert_text, key_text = crt.read_text(), key.read_text()
        install = 'mkdir -p "$(dirname "$1")" && cat > "$1" && chown "root:$2" "$1" && chmod "$3" "$1"'
        self.root_exec(name, ["sh", "-c", install, "sh", f"{GRPC_TLS_DIR}/grpc.crt", "root", "644"], input=cert_text)
        self.root_exec(name, ["sh", "-c", install, "sh", f"{GRPC_TLS_DIR}/grpc.key", "databend", "640"],
                       input=key_text)
        path = "/etc/databend/databend-meta.toml"
        text = self.root_exec(name, ["cat", path]).stdout
        self.root_exec(name, ["sh", "-c", 'cat > "$1"', "sh", path], input=with_grpc_tls(
            text, f"{GRPC_TLS_DIR}/grpc.crt", f"{GRPC_TLS_DIR}/grpc.key"))
        self._restart_meta_if_active(name, restart)
        return cert_text

    def _restart_meta_if_active(self, name: str, restart: bool) -> None:
        """`systemctl restart databend-meta` on `name` when `restart` and the service is active."""
        active = self.root_exec(name, ["systemctl", "is-active", META_SERVICE], check=False).stdout.strip()
        if restart and active == "active":
            self.root_exec(name, ["systemctl", "restart", META_SERVICE])

    # ---------------------------------------------------------------- faults
    def crash(self, name: str) -> int:
        """SIGKILL the databend-meta main process on host `name`; returns its PID as the host sees it.

        Raises LabError if the service is not running there.
        """
        self.host(name)
        out = self.root_exec(name, ["systemctl", "show", "-p", "MainPID", "--value", META_SERVICE]).stdout.strip()
        if not out.isdigit() or int(out) == 0:
            raise LabError(f"{name}: {META_SERVICE} is not running (MainPID {out or 'unknown'}); nothing to crash")
        self.root_exec(name, ["kill", "-KILL", out])
        return int(out)

    def stop_host(self, name: str) -> None:
        """Power host `name` off (its disk is kept). Idempotent."""
        self.host(name)
        self._power_off(name)

    def start_host(self, name: str) -> None:
        """Boot host `name` again from the same disk and wait until it is up. Idempotent."""
        spec = self.host(name)
        if self.is_running(name):
            return
        self._launch(spec)
        self._wait_booted(name)

    def cut(self, name: str) -> None:
        """Partition host `name`: its eth0 goes down. Idempotent."""
        netns.set_host_link(self.prefix, self.host(name).index, up=False)

    def heal(self, name: str) -> None:
        """Undo `cut`: host `name`'s eth0 goes up again. Idempotent."""
        netns.set_host_link(self.prefix, self.host(name).index, up=True)

    # ---------------------------------------------------------------- down
    def _kill_cgroup(self, name: str | None = None) -> None:
        """SIGKILL whatever is left in the lab's (or a host's) cgroups, then remove those cgroups."""
        pids = self._cgroup_pids(name)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _wait_until(lambda: all(_is_dead(p) for p in pids), 5)
        for hierarchy in CGROUP_HIERARCHIES:
            base = self._cgroup(hierarchy, name)
            if not base.exists():
                continue
            for directory in sorted(_cgroup_dirs(base), key=lambda p: -len(p.parts)):
                _wait_until(lambda d=directory: _try_rmdir(d), 5)
            _wait_until(lambda: _try_rmdir(base), 5)

    def down(self) -> float:
        """Power off every host and remove the lab's netns, cgroups and host disks; returns seconds taken.

        Leaves no process, netns, mount, cgroup or veth. A lab that is not up is a no-op success.
        """
        started = time.monotonic()
        owns_files = self._directory_owner() in (None, self.prefix)   # never delete another lab's disks
        hosts_dir = self.directory / "hosts"
        names = sorted(p.name for p in hosts_dir.iterdir()) if owns_files and hosts_dir.is_dir() else []
        if names:
            self._parallel(self._power_off, names)
        self._kill_cgroup()
        for hierarchy in CGROUP_HIERARCHIES:
            _try_rmdir(self._cgroup(hierarchy))
        for name in netns.list_netns(self.prefix):
            if name != self.lab_netns:
                netns.delete_netns(name)
        netns.delete_netns(self.lab_netns)
        if owns_files:
            shutil.rmtree(hosts_dir, ignore_errors=True)
            self._remove_generated_files()
            (self.directory / "prefix").unlink(missing_ok=True)
        return time.monotonic() - started

    def _power_off(self, name: str) -> None:
        """Power host `name` off: SIGTERM to nspawn (clean poweroff), SIGKILL after a deadline; drop its cgroups."""
        pid = self._nspawn_pid(name)
        if pid is not None:
            os.kill(pid, signal.SIGTERM)   # nspawn --boot turns this into a clean poweroff of the container
            if not _wait_until(lambda: self._launcher_dead(name), POWEROFF_TIMEOUT_S):
                os.kill(pid, signal.SIGKILL)
                _wait_until(lambda: self._launcher_dead(name), 5)
        self._kill_cgroup(name)
        self._children.pop(name, None)
        self._pid_file(name).unlink(missing_ok=True)

    def _remove_generated_files(self) -> None:
        """Delete the client files a previous `up` wrote (keys, ssh_config, inventory, hosts.json)."""
        for name in ("id_ed25519", "id_ed25519.pub", "known_hosts", "ssh_config", "inventory.toml", "hosts.json",
                     "baseline-fingerprints.json", "raft_secret"):
            (self.directory / name).unlink(missing_ok=True)

    # ---------------------------------------------------------------- status
    def status(self) -> list[dict[str, object]]:
        """One row per host: name, ip, role, running, link (eth0 up), ssh port open, databend service state."""
        rows: list[dict[str, object]] = []
        for spec in self.hosts.values():
            running = self.is_running(spec.name)
            service = QUERY_SERVICE if spec.role == "query" else META_SERVICE
            active = "-"
            if running:
                active = self.root_exec(spec.name, ["systemctl", "is-active", service], check=False).stdout.strip()
            rows.append({
                "name": spec.name, "ip": spec.ip, "role": spec.role, "running": running,
                "link": netns.host_link_is_up(self.prefix, spec.index),
                "ssh": running and netns.tcp_port_open(self.lab_netns, spec.ip, 22),
                "service": f"{service}={active}",
            })
        return rows


_STATUS_MARK = "--- status ---"
_MEMBERSHIP_LINE = re.compile(r"^(Node|State|Leader|CurrentTerm|LastLogIndex|Voters|NonVoters)|^  - id=")


def _membership_lines(status_json: str) -> str:
    """The lines of `databend-metactl status` (newest format) that describe membership, for a node's gRPC status
    JSON; "" if the node did not answer with one."""
    from sandbox.standin.metactl import render_status

    try:
        text = render_status(json.loads(status_json))
    except (ValueError, KeyError, TypeError):
        return ""
    return "".join(f"{line}\n" for line in text.splitlines() if _MEMBERSHIP_LINE.match(line))


def _cgroup_dirs(base: Path) -> list[Path]:
    """`base` and every cgroup below it (tolerates cgroups vanishing during the walk); [] if absent."""
    return [Path(root) for root, _dirs, _files in os.walk(base, onerror=lambda err: None)]


def _try_rmdir(path: Path) -> bool:
    """rmdir `path`; True if it is gone afterwards."""
    try:
        path.rmdir()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def preflight() -> None:
    """Raise LabError if the lab cannot be built here: not root, or packages missing. Then make sure the
    kernel allows enough inotify instances (see ensure_inotify_instances)."""
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, mounts, cgroups); run it as root")
    missing = missing_packages()
    if missing:
        raise LabError(f"missing Debian packages: {' '.join(missing)}; run `make setup`")
    absent = [str(CGROUP_ROOT / h) for h in CGROUP_HIERARCHIES if not (CGROUP_ROOT / h).is_dir()]
    if absent:
        raise LabError(f"the lab needs the hybrid cgroup layout (cgroup v1 name=systemd plus cgroup2 'unified'); "
                       f"missing here: {', '.join(absent)}")
    ensure_inotify_instances()


def ensure_inotify_instances(minimum: int = INOTIFY_INSTANCES) -> None:
    """Raise fs.inotify.max_user_instances to `minimum` if it is lower.

    Every host's systemd (and its journald, logind, dbus, user manager) takes inotify instances, all charged to
    root; with the default 128 the second or third lab on a machine boots 'degraded'
    (systemd-ask-password-*.path fail). Side effect: one machine-wide sysctl, only ever raised.
    """
    knob = Path("/proc/sys/fs/inotify/max_user_instances")
    if int(knob.read_text()) < minimum:
        knob.write_text(f"{minimum}\n")


def with_grpc_tls(text: str, cert: str, key: str) -> str:
    """databend-meta.toml `text` with top-level `grpc_tls_server_cert` / `grpc_tls_server_key` set (old lines of
    those keys dropped; the new ones go after `grpc_api_address`, else before the first table)."""
    lines = [ln for ln in text.splitlines() if not re.match(r"\s*grpc_tls_server_(cert|key)\s*=", ln)]
    new = [f"grpc_tls_server_cert = {json.dumps(cert)}", f"grpc_tls_server_key = {json.dumps(key)}"]
    at = next((i + 1 for i, ln in enumerate(lines) if re.match(r"\s*grpc_api_address\s*=", ln)), None)
    if at is None:
        at = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith("[")), len(lines))
    return "\n".join(lines[:at] + new + lines[at:]) + "\n"


def render_ssh_config(lab: Lab, specs: list[HostSpec]) -> str:
    """OpenSSH client config: one alias per host, ops + lab key + strict known_hosts, proxy into the lab netns."""
    aliases = "".join(f"Host {s.name}\n  HostName {s.ip}\n" for s in specs)
    return (f"# lab {lab.prefix}: generated by sandbox/lab.py; use with `ssh -F {lab.ssh_config} meta1 ...`\n"
            f"{aliases}"
            "Host *\n"
            "  User ops\n"
            f"  IdentityFile {lab.key_file}\n"
            "  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {lab.known_hosts}\n"
            "  GlobalKnownHostsFile /dev/null\n"
            "  StrictHostKeyChecking yes\n"
            f"  ProxyCommand ip netns exec {lab.lab_netns} nc %h %p\n"
            "  BatchMode yes\n"
            "  ConnectTimeout 5\n"
            "  LogLevel ERROR\n")


def render_inventory(lab: Lab, specs: list[HostSpec]) -> str:
    """inventory.toml for cluster "lab" (docs/ARCHITECTURE.md): meta hosts as [[meta]], query hosts as [[query]],
    spare hosts as the spare pool [[spare]]."""
    lines = [
        'name = "lab"', "",
        "[ssh]", 'user = "ops"', f"private_key_file = {json.dumps(str(lab.key_file))}",
        f"known_hosts_file = {json.dumps(str(lab.known_hosts))}",
        f'proxy_command = "ip netns exec {lab.lab_netns} nc %h %p"',
        "port = 22", "connect_timeout_s = 3", "command_timeout_s = 30", "sudo = true", "",
        "[paths]", 'meta_config = "/etc/databend/databend-meta.toml"',
        'query_config = "/etc/databend/databend-query.toml"', f'meta_service = "{META_SERVICE}"',
        f'query_service = "{QUERY_SERVICE}"', 'raft_dir = "/var/lib/databend/raft"',
    ]
    for s in (s for s in specs if s.role == "meta"):
        lines += ["", "[[meta]]", f"id = {s.meta_id}", f'host = "{s.ip}"', f"raft_port = {RAFT_PORT}",
                  f"grpc_port = {GRPC_PORT}", f"admin_port = {ADMIN_PORT}"]
    for s in (s for s in specs if s.role == "query"):
        lines += ["", "[[query]]", f'host = "{s.ip}"']
    for s in (s for s in specs if s.role == "spare"):  # the spare pool replace-node takes from
        lines += ["", "[[spare]]", f'host = "{s.ip}"']
    return "\n".join(lines) + "\n"
