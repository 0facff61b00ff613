"""Test doubles for the core: ``FakeRemote`` implements the ``Remote`` protocol with in-memory files, a small
systemd model and scripted command answers; ``FakePool`` hands out FakeRemotes by host."""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from metascale.errors import RemoteCommandError, RemoteTimeout
from metascale.inventory import MetaNode, QueryNode
from metascale.remote import CommandResult

Handler = Callable[[list[str]], "tuple[int, str, str] | None"]


@dataclass
class FakeRemote:
    """An in-memory host: ``files`` (path -> text), ``units`` (unit -> (active, enabled)), ``dirs`` (path -> entries),
    scripted answers by argv prefix, and a log of every command (``commands``) and write (``writes``)."""

    host: str = "127.10.0.9"
    files: dict[str, str] = field(default_factory=dict)
    units: dict[str, list[str]] = field(default_factory=dict)
    dirs: dict[str, list[str]] = field(default_factory=dict)
    scripted: list[tuple[tuple[str, ...], Handler]] = field(default_factory=list)
    commands: list[list[str]] = field(default_factory=list)
    sudo_commands: list[list[str]] = field(default_factory=list)
    writes: list[tuple[str, str]] = field(default_factory=list)
    cwds: list[str | None] = field(default_factory=list)
    sudo_users: list[str | None] = field(default_factory=list)
    cache: dict[tuple[str, str], Any] = field(default_factory=dict)
    tmpdir: str = "/tmp/metascale.fAkE000001"
    tmpdirs_made: int = 0
    reads: list[str] = field(default_factory=list)

    def on(self, prefix: Sequence[str], exit_code: int = 0, stdout: str = "", stderr: str = "",
           timeout: bool = False) -> None:
        """Answer commands starting with ``prefix`` with this result (or a RemoteTimeout); newest rule wins."""
        def handler(argv: list[str]) -> tuple[int, str, str] | None:
            if timeout:
                return None
            return exit_code, stdout, stderr
        self.scripted.insert(0, (tuple(prefix), handler))

    def on_call(self, prefix: Sequence[str], handler: Handler) -> None:
        """Answer commands starting with ``prefix`` by calling ``handler(argv)``."""
        self.scripted.insert(0, (tuple(prefix), handler))

    def ran(self, *prefix: str) -> list[list[str]]:
        """Commands run so far that start with ``prefix``."""
        return [c for c in self.commands if tuple(c[: len(prefix)]) == prefix]

    # ---- Remote protocol ------------------------------------------------------------------------------------
    def run(self, argv: Sequence[str], *, sudo: bool = False, timeout_s: float | None = None, check: bool = True,
            cwd: str | None = None, sudo_user: str | None = None) -> CommandResult:
        argv = list(argv)
        assert all(isinstance(a, str) for a in argv), argv
        self.commands.append(argv)
        self.cwds.append(cwd)
        self.sudo_users.append(sudo_user)
        if sudo:
            self.sudo_commands.append(argv)
        command = shlex.join(argv)
        outcome = self._answer(argv)
        if outcome is None:
            raise RemoteTimeout(self.host, command, timeout_s or 30.0)
        code, out, err = outcome
        result = CommandResult(host=self.host, command=command, exit_code=code, stdout=out, stderr=err)
        if check and code != 0:
            raise RemoteCommandError(self.host, command, code, err)
        return result

    def private_tmpdir(self) -> str:
        """The connection's private directory (``mktemp -d`` on a real host; counted, not logged as a command)."""
        if not self.tmpdirs_made:
            self.tmpdirs_made = 1
        return self.tmpdir

    def read_text(self, path: str) -> str:
        self.reads.append(path)
        if path not in self.files:
            raise RemoteCommandError(self.host, f"read {path}", None, f"{path}: No such file or directory")
        return self.files[path]

    def write_text_atomic(self, path: str, text: str) -> str | None:
        for key in [k for k in self.cache if k[1] == path]:
            self.cache.pop(key)
        backup = f"{path}.20260101T000000.bak" if path in self.files else None
        if backup:
            self.files[backup] = self.files[path]
        self.files[path] = text
        self.writes.append((path, text))
        return backup

    # ---- built-in behaviour -------------------------------------------------------------------------------------
    def _answer(self, argv: list[str]) -> tuple[int, str, str] | None:
        for prefix, handler in self.scripted:
            if tuple(argv[: len(prefix)]) == prefix:
                return handler(argv)
        if argv[:2] == ["test", "-e"]:
            return (0, "", "") if argv[2] in self.files or argv[2] in self.dirs else (1, "", "")
        if argv[0] == "mkdir":
            self.dirs.setdefault(argv[-1], [])
            return 0, "", ""
        if argv[0] == "systemctl" and argv[1] in ("is-active", "is-enabled", "start", "stop", "enable", "disable"):
            return self._systemctl(argv[1], argv[2])
        if argv[0] == "find" and argv[1] in self.dirs:
            entries = self.dirs[argv[1]]
            return 0, (f"{argv[1]}/{entries[0]}\n" if entries else ""), ""
        if argv[0] == "find":
            return 1, "", f"find: '{argv[1]}': No such file or directory"
        if argv[0] == "stat" and argv[-1] in self.dirs:
            return 0, "databend databend 750\n", ""
        if argv[0] == "mv" and argv[-2] in self.dirs:
            self.dirs[argv[-1]] = self.dirs.pop(argv[-2])
            return 0, "", ""
        if argv[:2] == ["install", "-d"]:
            self.dirs[argv[-1]] = []
            return 0, "", ""
        return 0, "", ""

    def _systemctl(self, verb: str, unit: str) -> tuple[int, str, str]:
        if unit not in self.units:
            return (4 if verb.startswith("is-") else 5), "", f"Unit {unit}.service not found.\n"
        state = self.units[unit]
        if verb == "is-active":
            return (0 if state[0] == "active" else 3), state[0] + "\n", ""
        if verb == "is-enabled":
            return (0 if state[1] == "enabled" else 1), state[1] + "\n", ""
        updates = {"start": (0, "active"), "stop": (0, "inactive"), "enable": (1, "enabled"),
                   "disable": (1, "disabled")}
        index, value = updates[verb]
        state[index] = value
        return 0, "", ""


@dataclass
class FakePool:
    """A ``RemotePool`` over FakeRemotes keyed by host; hosts in ``broken`` raise the given error on connect."""

    remotes: dict[str, FakeRemote] = field(default_factory=dict)
    broken: dict[str, Exception] = field(default_factory=dict)

    def remote(self, node: MetaNode | QueryNode | str) -> FakeRemote:
        host = node if isinstance(node, str) else node.host
        if host in self.broken:
            raise self.broken[host]
        return self.remotes.setdefault(host, FakeRemote(host=host))


def metactl_status_text(node_id: int, state: str = "Follower", leader_id: int | None = 1,
                        voters: Sequence[int] = (1, 2, 3), learners: Sequence[int] = (), term: int = 1,
                        net: str = "127.10.0") -> str:
    """`databend-metactl status` output (newest format) for a node with this view of the cluster."""
    def rec(i: int) -> str:
        return f"id={i} raft={net}.{i}:28004 grpc={net}.{i}:9191"
    lines = ["BinaryVersion: 260304.0.0", "DataVersion: V004", "RaftLogSize: 10", "SnapshotKeyCount: 1",
             f"Node: id={node_id} raft={net}.{node_id}:28004", f"State: {state}"]
    if leader_id is not None:
        lines.append(f"Leader: {rec(leader_id)}")
    lines += [f"CurrentTerm: {term}", "LastSeq: 1", "LastLogIndex: 20", f"LastApplied: T{term}-N{leader_id or 0}.20"]
    if state == "Leader":
        lines += ["Replication:", *(f"  - [{v}] T{term}-N{node_id}.20" for v in reversed(list(voters)))]
    if voters:
        lines += ["Voters:", *(f"  - {rec(v)}" for v in voters)]
    if learners:
        lines += ["NonVoters:", *(f"  - {rec(v)}" for v in learners)]
    return "\n".join(lines) + "\n"


LAB_SECRET = "unit-raft-s3cret-4b1d"
"""The raft secret of ``own_ip_meta_config``: tests assert it never shows in argv, details, logs or errors."""


def own_ip_meta_config(host: str, node_id: int, *, grpc_port: int = 9191, admin_port: int = 28002,
                       raft_dir: str = "/var/lib/databend/raft", log_dir: str = "/var/log/databend",
                       join: Sequence[str] = (), extra_top: str = "") -> str:
    """A databend-meta.toml like the strict lab's: every bind on the node's own IP, a strict raft secret."""
    joined = ", ".join(f'"{a}"' for a in join)
    return (f'{extra_top}admin_api_address = "{host}:{admin_port}"\ngrpc_api_address = "{host}:{grpc_port}"\n'
            f'grpc_api_advertise_host = "{host}"\n\n[log]\n[log.file]\nlevel = "WARN"\ndir = "{log_dir}"\n\n'
            f'[raft_config]\nid = {node_id}\nraft_dir = "{raft_dir}"\nraft_api_port = 28004\n'
            f'raft_listen_host = "{host}"\nraft_advertise_host = "{host}"\njoin = [{joined}]\n'
            f'raft_secret = "{LAB_SECRET}"\nraft_secret_strict = true\n')
