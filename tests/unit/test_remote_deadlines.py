"""Hosts that stop answering (issue #10): every remote command and SFTP operation has a hard deadline, also when the
peer goes silent on a connection that is already open.

A real paramiko SSH server (exec + SFTP) runs in this process on 127.0.0.1 behind a TCP proxy that can be frozen:
frozen, it keeps both sockets open but moves no byte either way, which is what a host whose network was cut looks like
to an open SSH connection (no RST, no FIN, just silence). Every call under test runs in a guard thread, so a call that
blocks for ever fails the test instead of hanging it.
"""

from __future__ import annotations

import io
import os
import select
import shlex
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from tenacity import wait_none

from metascale import remote
from metascale.errors import RemoteTimeout
from metascale.inventory import SshSettings
from metascale.remote import SILENT_HOST_HINT, SshPool

HOST = "127.0.0.1"
COMMAND_TIMEOUT_S = 1.5
PEER_REPLY_S = 0.5
SLACK_S = 1.5   # thread scheduling on a shared 2-core machine


# ------------------------------------------------------------------------------------------ a local SSH server
class _Handle(paramiko.SFTPHandle):
    def stat(self) -> paramiko.SFTPAttributes:
        return paramiko.SFTPAttributes.from_stat(os.fstat(self.readfile.fileno()))

    def chattr(self, attr: paramiko.SFTPAttributes) -> int:
        return paramiko.SFTP_OK


class _Sftp(paramiko.SFTPServerInterface):
    """SFTP over a directory: ``/x/y`` is ``<root>/x/y``."""

    def __init__(self, server: paramiko.ServerInterface, root: str) -> None:
        super().__init__(server)
        self.root = root

    def _real(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def open(self, path: str, flags: int, attr: paramiko.SFTPAttributes) -> paramiko.SFTPHandle | int:
        real = self._real(path)
        os.makedirs(os.path.dirname(real), exist_ok=True)
        try:
            fd = os.open(real, flags, 0o600)
        except OSError as exc:
            return paramiko.SFTPServer.convert_errno(exc.errno)
        handle = _Handle(flags)
        handle.readfile = handle.writefile = os.fdopen(fd, "r+b" if flags & (os.O_WRONLY | os.O_RDWR) else "rb")
        return handle

    def stat(self, path: str) -> paramiko.SFTPAttributes | int:
        try:
            return paramiko.SFTPAttributes.from_stat(os.stat(self._real(path)))
        except OSError as exc:
            return paramiko.SFTPServer.convert_errno(exc.errno)

    lstat = stat


class _Server(paramiko.ServerInterface):
    """Accepts one client key; `exec` understands `echo ARGS` and `sleep S` (after the `timeout -k` backstop);
    records every global request it receives (keepalives)."""

    def __init__(self, owner: SshServer) -> None:
        self.owner = owner

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        ok = key.get_base64() == self.owner.client_key.get_base64()
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return paramiko.OPEN_SUCCEEDED if kind == "session" else paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_global_request(self, kind: str, msg: paramiko.Message) -> bool:
        self.owner.global_requests.append(kind)
        return False   # unknown request: answered with a failure message (as OpenSSH does)

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        threading.Thread(target=self.owner.execute, args=(channel, command.decode()), daemon=True).start()
        return True


class SshServer:
    """An SSH server (exec + SFTP over `root`) on 127.0.0.1:`port`; stop() ends it and every session."""

    def __init__(self, root: Path) -> None:
        self.host_key = paramiko.ECDSAKey.generate()
        self.client_key_text = ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()).decode()
        self.client_key = paramiko.Ed25519Key.from_private_key(io.StringIO(self.client_key_text))
        self.root = str(root)
        self.global_requests: list[str] = []
        self.commands: list[str] = []
        self.stopped = threading.Event()
        self._transports: list[paramiko.Transport] = []
        self._listener = socket.create_server((HOST, 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            transport = paramiko.Transport(sock)
            transport.add_server_key(self.host_key)
            transport.set_subsystem_handler("sftp", paramiko.SFTPServer, _Sftp, self.root)
            self._transports.append(transport)
            transport.start_server(server=_Server(self))

    def execute(self, channel: paramiko.Channel, command: str) -> None:
        self.commands.append(command)
        argv = shlex.split(command)
        if argv[:2] == ["timeout", "-k"]:
            argv = argv[4:]
        if argv[0] == "sleep":
            self.stopped.wait(float(argv[1]))   # ends early when the server stops
        elif argv[0] == "echo":
            channel.sendall((" ".join(argv[1:]) + "\n").encode())
        channel.send_exit_status(0)
        channel.shutdown_write()   # EOF; the client closes the channel (a close sent now could overtake the exec reply)

    def stop(self) -> None:
        self.stopped.set()
        self._listener.close()
        for transport in self._transports:
            transport.close()


class FreezableProxy:
    """A TCP forwarder 127.0.0.1:`port` -> 127.0.0.1:`target_port`. freeze(): no byte moves either way and every
    socket stays open (a silent peer); thaw(): bytes move again (the host is back)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.frozen = threading.Event()
        self.closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server((HOST, 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection((HOST, self.target_port))
            self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        while not self.closed.is_set():
            if self.frozen.is_set():   # leave the bytes in the kernel buffers: nobody hears anything
                self.closed.wait(0.02)
                continue
            try:
                ready, _, _ = select.select([source], [], [], 0.02)
                if not ready or self.frozen.is_set():
                    continue
                data = source.recv(65536)
                if not data:
                    sink.shutdown(socket.SHUT_WR)
                    return
                sink.sendall(data)
            except OSError:
                return

    def freeze(self) -> None:
        self.frozen.set()

    def thaw(self) -> None:
        self.frozen.clear()

    def close(self) -> None:
        self.closed.set()
        self._listener.close()
        for sock in self._sockets:
            sock.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[SshServer]:
    (tmp_path / "root" / "etc").mkdir(parents=True)
    (tmp_path / "root" / "tmp").mkdir()
    (tmp_path / "root" / "etc" / "node.toml").write_text("id = 1\n")
    the_server = SshServer(tmp_path / "root")
    yield the_server
    the_server.stop()


@pytest.fixture
def proxy(server: SshServer) -> Iterator[FreezableProxy]:
    the_proxy = FreezableProxy(server.port)
    yield the_proxy
    the_proxy.close()


def make_pool(server: SshServer, proxy: FreezableProxy, tmp_path: Path, **kwargs: float) -> SshPool:
    key = tmp_path / "id_ed25519"
    key.write_text(server.client_key_text)
    known = tmp_path / "known_hosts"
    known.write_text(f"[{HOST}]:{proxy.port} {server.host_key.get_name()} {server.host_key.get_base64()}\n")
    settings = SshSettings(user="ops", private_key_file=str(key), known_hosts_file=str(known), port=proxy.port,
                           connect_timeout_s=2, command_timeout_s=COMMAND_TIMEOUT_S, sudo=False)
    return SshPool(settings, peer_reply_s=PEER_REPLY_S, **kwargs)


@pytest.fixture
def pool(server: SshServer, proxy: FreezableProxy, tmp_path: Path,
         monkeypatch: pytest.MonkeyPatch) -> Iterator[SshPool]:
    monkeypatch.setattr(remote, "CONNECT_WAIT", wait_none())
    the_pool = make_pool(server, proxy, tmp_path)
    yield the_pool
    the_pool.close()


def within(seconds: float, call: Callable[[], Any]) -> tuple[Any, BaseException | None, float]:
    """Run `call` in a guard thread; fail the test if it is still blocked after `seconds`.
    Returns (value, exception, elapsed seconds)."""
    box: dict[str, Any] = {}

    def target() -> None:
        started = time.monotonic()
        try:
            box["value"] = call()
        except BaseException as exc:  # handed back to the test
            box["error"] = exc
        box["elapsed"] = time.monotonic() - started

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"the call was still blocked after {seconds} s (no deadline on a silent peer)"
    return box.get("value"), box.get("error"), box["elapsed"]


# ------------------------------------------------------------------------------------------ the tests
def test_command_on_a_silent_open_connection_fails_at_its_deadline_then_reconnects_when_the_host_is_back(
        pool: SshPool, proxy: FreezableProxy) -> None:
    assert pool.remote(HOST).run(["echo", "before"]).stdout == "before\n"
    proxy.freeze()
    _, error, elapsed = within(15, lambda: pool.remote(HOST).run(["echo", "during"], timeout_s=1))
    assert isinstance(error, RemoteTimeout), error
    assert elapsed < 1 + PEER_REPLY_S + SLACK_S, elapsed
    assert str(error).startswith(f"{HOST}: `echo during` did not finish within 1 s"), str(error)
    assert SILENT_HOST_HINT in str(error)
    assert pool.wedged == {HOST: 1}, "the wedged connection was closed"
    proxy.thaw()
    value, error, _ = within(15, lambda: pool.remote(HOST).run(["echo", "after"]))
    assert error is None and value.stdout == "after\n", error
    assert pool.reconnects == {HOST: 1} and pool.handshakes == {HOST: 2}


@pytest.mark.parametrize("freeze_after_exec", [False, True],
                         ids=["silent before the exec request", "silent while the command runs"])
def test_command_whose_session_goes_silent_fails_at_its_deadline(
        pool: SshPool, proxy: FreezableProxy, monkeypatch: pytest.MonkeyPatch, freeze_after_exec: bool) -> None:
    pool.remote(HOST).run(["echo", "connected"])
    original = paramiko.Channel.exec_command

    def exec_in_silence(channel: paramiko.Channel, command: str) -> None:
        if not freeze_after_exec:
            proxy.freeze()   # the channel is open; the exec request meets silence (paramiko waits with no timeout)
        original(channel, command)
        proxy.freeze()

    monkeypatch.setattr(paramiko.Channel, "exec_command", exec_in_silence)
    _, error, elapsed = within(15, lambda: pool.remote(HOST).run(["sleep", "3"], timeout_s=1))
    assert isinstance(error, RemoteTimeout), error
    assert elapsed < 1 + PEER_REPLY_S + SLACK_S, elapsed
    assert str(error).startswith(f"{HOST}: `sleep 3` did not finish within 1 s") and SILENT_HOST_HINT in str(error)
    assert pool.wedged == {HOST: 1}


@pytest.mark.parametrize("sftp_open_before", [True, False], ids=["sftp session already open", "first sftp use"])
def test_sftp_read_on_a_silent_open_connection_fails_at_its_deadline(
        pool: SshPool, proxy: FreezableProxy, sftp_open_before: bool) -> None:
    if sftp_open_before:
        assert pool.remote(HOST).read_text("/etc/node.toml") == "id = 1\n"
    else:
        pool.remote(HOST).run(["echo", "connected"])
    proxy.freeze()
    _, error, elapsed = within(15, lambda: pool.remote(HOST).read_text("/etc/node.toml"))
    assert isinstance(error, RemoteTimeout), error
    assert elapsed < COMMAND_TIMEOUT_S + SLACK_S, elapsed
    assert f"{HOST}: `read /etc/node.toml over SFTP` did not finish within {COMMAND_TIMEOUT_S:g} s" in str(error)
    assert pool.wedged == {HOST: 1}


def test_upload_on_a_silent_open_connection_fails_at_its_deadline_without_a_cleanup_command(
        pool: SshPool, proxy: FreezableProxy, server: SshServer) -> None:
    assert pool.remote(HOST).read_text("/etc/node.toml") == "id = 1\n"
    proxy.freeze()
    _, error, elapsed = within(15, lambda: pool.remote(HOST).write_text_atomic("/etc/node.toml", "id = 2\n"))
    assert isinstance(error, RemoteTimeout), error
    assert elapsed < COMMAND_TIMEOUT_S + SLACK_S, elapsed
    assert "for /etc/node.toml over SFTP" in str(error) and str(error).startswith(HOST)
    assert not server.commands, "nothing ran: no install script and no `rm` sent into the silence"


def test_slow_command_on_a_live_connection_times_out_and_keeps_the_connection(
        pool: SshPool, server: SshServer) -> None:
    pool.remote(HOST).run(["echo", "connected"])
    _, error, elapsed = within(15, lambda: pool.remote(HOST).run(["sleep", "5"], timeout_s=0.5))
    assert isinstance(error, RemoteTimeout), error
    assert elapsed < 0.5 + PEER_REPLY_S + SLACK_S, elapsed
    assert SILENT_HOST_HINT not in str(error), "the host answered the keepalive: it is only a slow command"
    assert "keepalive@openssh.com" in server.global_requests, "the host was asked whether it still answers"
    assert pool.wedged == {}
    assert pool.remote(HOST).run(["echo", "still here"]).stdout == "still here\n"
    assert pool.handshakes == {HOST: 1} and pool.reconnects == {}


def test_idle_connection_sends_ssh_keepalives(server: SshServer, proxy: FreezableProxy, tmp_path: Path) -> None:
    with make_pool(server, proxy, tmp_path, keepalive_s=0.2) as fast:
        fast.remote(HOST).run(["echo", "connected"])
        deadline = time.monotonic() + 10
        while "keepalive@lag.net" not in server.global_requests:
            assert time.monotonic() < deadline, f"no keepalive within 10 s; requests seen: {server.global_requests}"
            server.stopped.wait(0.05)
    assert SshPool.__init__.__kwdefaults__["keepalive_s"] == remote.KEEPALIVE_INTERVAL_S > 0
