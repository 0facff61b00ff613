"""Remote execution over SSH (paramiko): one connection per host per run, strict host keys, quoted argv, timeouts.

``Remote`` is the protocol every step uses; ``ParamikoRemote`` implements it over one pooled SSH connection and
``SshPool`` owns those connections (one handshake per host, counted in ``pool.handshakes``). Commands are argv
lists joined with ``shlex.join``; nothing is ever string-formatted into a shell line. Private keys never appear in
logs or exceptions.
"""

from __future__ import annotations

import io
import logging
import re
import secrets
import shlex
import socket
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any, Protocol, runtime_checkable

import paramiko
from pydantic import BaseModel, ConfigDict
from tenacity import (
    Retrying,
    retry_if_exception_type,
    retry_if_not_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_random,
)

from metascale.errors import (
    HostKeyRejected,
    HostUnreachable,
    InventoryError,
    MetaScaleError,
    RemoteCommandError,
    RemoteTimeout,
    SshAuthFailed,
)
from metascale.inventory import (
    Inventory,
    MetaNode,
    QueryNode,
    SshSettings,
    SshTarget,
    check_proxy_command,
    check_ssh_user,
    validate_host,
)
from metascale.redact import register_from_config

log = logging.getLogger(__name__)

_SUDO_USER_RE = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
_KEY_CLASSES: tuple[type[paramiko.PKey], ...] = (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey)
_RETRYABLE_CONNECT = (OSError, EOFError, paramiko.SSHException)
_NEVER_RETRY_CONNECT = (paramiko.AuthenticationException, paramiko.BadHostKeyException, HostKeyRejected)
CONNECT_WAIT = wait_random(0.2, 1.0)
"""Pause between SSH connect attempts (tests replace it with ``tenacity.wait_none()``)."""
KEEPALIVE_INTERVAL_S = 5.0
"""An idle connection sends an SSH keepalive after this many seconds (keeps NAT and firewall state alive)."""
PEER_REPLY_S = 5.0
"""How long a host may take to answer a keepalive request once a command has run out of time: no answer means the
connection is wedged (the host went silent), and it is closed. Also the grace after a command's own limit."""
SILENT_HOST_HINT = ("the host stopped answering on its open SSH connection; metascale closed that connection, "
                    "the next command reconnects")


class CommandResult(BaseModel):
    """What one remote command did: where, what, exit code, output and how long it took."""

    model_config = ConfigDict(frozen=True)

    host: str
    command: str
    exit_code: int
    stdout: str
    stderr: str
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        """True when the command exited 0."""
        return self.exit_code == 0

    def tail(self, lines: int = 10, stream: str = "stderr") -> str:
        """The last ``lines`` lines of ``stream`` ("stderr" or "stdout")."""
        text = self.stderr if stream == "stderr" else self.stdout
        return "\n".join(text.rstrip().splitlines()[-lines:])

    def raise_for_status(self) -> CommandResult:
        """Return self when ok; otherwise raise RemoteCommandError with host, command, exit code, stderr tail."""
        if not self.ok:
            raise RemoteCommandError(self.host, self.command, self.exit_code, self.tail() or self.tail(stream="stdout"))
        return self


@runtime_checkable
class Remote(Protocol):
    """One host, as the steps see it. ``ParamikoRemote`` and the tests' ``FakeRemote`` implement it."""

    host: str
    cache: dict[tuple[str, str], Any]
    """Facts read from this host during this connection (``metascale.nodeinfo``), keyed by (kind, path);
    ``write_text_atomic(path, …)`` drops every entry of that path."""

    def run(
        self,
        argv: Sequence[str],
        *,
        sudo: bool = False,
        timeout_s: float | None = None,
        check: bool = True,
        cwd: str | None = None,
        sudo_user: str | None = None,
    ) -> CommandResult:
        """Run ``argv`` (quoted with shlex); ``sudo_user`` runs it as that user (``sudo -n -u USER``).
        Raises RemoteCommandError if ``check`` and exit != 0, RemoteTimeout."""
        ...

    def private_tmpdir(self) -> str:
        """A directory only this connection uses (``mktemp -d`` once, removed at close): metactl's CWD."""
        ...

    def read_text(self, path: str) -> str:
        """Return the text of the remote file ``path``. Raises RemoteCommandError when it cannot be read."""
        ...

    def write_text_atomic(self, path: str, text: str) -> str | None:
        """Replace ``path`` with ``text`` atomically, keeping owner and mode; return the backup path (None if new)."""
        ...


@runtime_checkable
class RemotePool(Protocol):
    """Hands out one ``Remote`` per host (``SshPool``, or a fake in tests)."""

    def remote(self, node: MetaNode | QueryNode | str) -> Remote:
        """The connection to ``node``'s host (opened on first use)."""
        ...


def load_private_key(*, path: str | None = None, text: str | None = None) -> paramiko.PKey:
    """Load an unencrypted Ed25519/ECDSA/RSA private key from ``path`` or from ``text``.

    Raises: InventoryError that names the file (never the key text) when no key type accepts it.
    """
    source = f"private key file {path}" if path else "private key text"
    try:
        data = text if text is not None else open(path or "", encoding="utf-8").read()
    except OSError as exc:
        raise InventoryError(f"cannot read: {exc.strerror}", source) from None
    for cls in _KEY_CLASSES:
        try:
            return cls.from_private_key(io.StringIO(data))
        except (paramiko.SSHException, ValueError, IndexError, TypeError):
            continue
    raise InventoryError("not an unencrypted Ed25519, ECDSA or RSA private key", source)


def substitute_proxy_command(template: str, target: SshTarget) -> str:
    """Expand OpenSSH tokens %h %p %r %% in ``template``.

    paramiko runs the result without a shell (``shlex.split`` + exec), but the command may hand %h to a shell on a
    bastion (``ssh jump nc %h %p``), where quoting does not protect. So the values are validated, not quoted: a
    host that is not an IP literal or a DNS name, a user that is not a login name, or an unknown token is refused.
    Raises: InventoryError naming the bad value.
    """
    try:
        check_proxy_command(template)
        validate_host(target.host)
        check_ssh_user(target.user)
        if not 1 <= int(target.port) <= 65535:
            raise ValueError(f"port {target.port!r} is out of range (valid: 1-65535)")
    except ValueError as exc:
        raise InventoryError(f"refusing to run proxy_command for {target.host!r}: {exc}", "proxy_command") from None
    values = {"h": target.host, "p": str(int(target.port)), "r": target.user, "%": "%"}
    out, i = [], 0
    while i < len(template):
        ch = template[i]
        if ch == "%" and i + 1 < len(template) and template[i + 1] in values:
            out.append(values[template[i + 1]])
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


class _RejectUnknownHost(paramiko.MissingHostKeyPolicy):
    """RejectPolicy that raises HostKeyRejected naming the host and the offered key's SHA256 fingerprint."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise HostKeyRejected(hostname, "host is not in known_hosts", key.fingerprint)


_INSTALL_SCRIPT = r"""set -e
path=$1 upload=$2 staged=$3 stamp=$4 backup=
trap 'rm -f -- "$upload" "$staged"' EXIT
trap 'rm -f -- "$upload" "$staged"; trap - EXIT; exit 129' HUP
trap 'rm -f -- "$upload" "$staged"; trap - EXIT; exit 130' INT
trap 'rm -f -- "$upload" "$staged"; trap - EXIT; exit 143' TERM
if [ -e "$path" ]; then
  backup="$path.$stamp.bak"; n=2
  while [ -e "$backup" ]; do backup="$path.$stamp-$n.bak"; n=$((n + 1)); done
  cp -p -- "$path" "$backup"
  install -m 600 -- "$upload" "$staged"
  chown --reference="$path" -- "$staged"
  chmod --reference="$path" -- "$staged"
else
  install -o root -g root -m 644 -- "$upload" "$staged"
fi
sync -- "$staged"
mv -f -- "$staged" "$path"
sync -- "${path%/*}/"
printf '%s' "$backup"
"""
"""The privileged half of ``write_text_atomic`` as one remote command (arguments: path, upload, staged, stamp):
backup, install with the old owner/mode, fsync the staged copy (``sync FILE``: coreutils >= 8.24), rename into
place, fsync the directory. The upload and a stray staged file are removed on exit and on HUP, INT and TERM (a
plain signal death skips the EXIT trap; ``timeout`` sends TERM to the whole process group)."""


def _utc_stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")


class _Watchdog:
    """The hard deadline of one remote operation: if the block is still running after ``seconds``, the host's SSH
    connection is closed (``ParamikoRemote._abort``), which wakes every read blocked on it with an error; ``fired``
    then tells the operation to report a timeout rather than a lost connection. A timer thread, so it also fires
    when the blocked call holds the remote's lock or never looks at the clock (``exec_command``, SFTP reads)."""

    def __init__(self, remote: ParamikoRemote, what: str, seconds: float) -> None:
        self.fired = False
        self._remote = remote
        self._what = what
        self._seconds = seconds
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def _fire(self) -> None:
        self.fired = True
        self._remote._abort(f"{self._what} still had no answer after {self._seconds:g} s")


class ParamikoRemote:
    """A ``Remote`` over one pooled SSH connection. Reconnects once (counted) when the connection dropped."""

    def __init__(self, pool: SshPool, target: SshTarget) -> None:
        self.host = target.host
        self._pool = pool
        self._target = target
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._lock = threading.Lock()
        self._tmpdir: str | None = None
        self._tmpdir_lock = threading.Lock()
        self.cache: dict[tuple[str, str], Any] = {}

    @property
    def use_sudo(self) -> bool:
        """Whether ``sudo=True`` commands are prefixed with ``sudo -n`` (inventory ``ssh.sudo``)."""
        return self._pool.settings.sudo

    def connect(self) -> None:
        """Open the connection now unless it is open. Raises HostKeyRejected, SshAuthFailed, HostUnreachable."""
        with self._lock:
            self._ensure_connected()

    def _ensure_connected(self) -> paramiko.Transport:
        transport = self._client.get_transport() if self._client else None
        if transport is not None and transport.is_active():
            return transport
        if self._client is not None:
            self._pool._count_reconnect(self.host)
            self._drop()
        self._client = self._pool._open_client(self._target)
        transport = self._client.get_transport()
        assert transport is not None
        return transport

    def _drop(self) -> None:
        if self._sftp is not None:
            try:
                self._sftp.close()
            except Exception:  # closing a dead channel may raise anything; the connection is gone either way
                pass
        if self._client is not None:
            self._client.close()
        self._sftp, self._client = None, None

    def _abort(self, why: str) -> None:
        """Close the SSH connection now, from any thread and without the lock (the thread holding it may be the one
        blocked on this connection): every read waiting on it fails, and the next operation reconnects (counted)."""
        client = self._client
        transport = client.get_transport() if client is not None else None
        if transport is None or not transport.is_active():
            return
        log.warning("%s: %s; closing its SSH connection (%s)", self.host, why, SILENT_HOST_HINT)
        self._pool._count_wedged(self.host)
        transport.close()

    def _connection_active(self) -> bool:
        client = self._client
        transport = client.get_transport() if client is not None else None
        return transport is not None and transport.is_active()

    def _peer_answers(self, within_s: float) -> bool:
        """Whether the host answers an SSH global request (``keepalive@openssh.com``, want-reply; servers answer
        unknown requests with a failure message) within ``within_s``. Read-only; asked after a command timed out."""
        client = self._client
        transport = client.get_transport() if client is not None else None
        if transport is None or not transport.is_active():
            return False
        answered = threading.Event()

        def ask() -> None:
            try:
                transport.global_request("keepalive@openssh.com", wait=True)
            except Exception:  # the connection died under the request: not an answer
                return
            if transport.is_active():  # global_request also returns when the transport closes
                answered.set()

        threading.Thread(target=ask, name=f"metascale-keepalive-{self.host}", daemon=True).start()
        return answered.wait(within_s)

    def close(self) -> None:
        """Remove the private temporary directory (if the connection is still up), forget the cached facts and
        close the SSH connection (a later command reconnects and counts a handshake)."""
        with self._tmpdir_lock:
            tmpdir, self._tmpdir = self._tmpdir, None
        transport = self._client.get_transport() if self._client else None
        if tmpdir and transport is not None and transport.is_active():
            try:
                self.run(["rm", "-rf", "--", tmpdir], timeout_s=10, check=False)
            except MetaScaleError as exc:
                log.warning("%s: could not remove %s: %s", self.host, tmpdir, exc)
        self.cache.clear()
        with self._lock:
            self._drop()

    def private_tmpdir(self) -> str:
        """This connection's own directory on the host (``mktemp -d -t metascale.XXXXXXXXXX`` as the SSH user,
        made on first use, removed by close()). metactl writes ``./.databend/logs`` under its CWD: it runs here.

        Raises: RemoteCommandError when mktemp fails or prints something that is not a /tmp-like path.
        """
        with self._tmpdir_lock:
            if self._tmpdir is None:
                result = self.run(["mktemp", "-d", "-t", "metascale.XXXXXXXXXX"], timeout_s=10)
                path = result.stdout.strip()
                if not path.startswith("/") or "\n" in path or "/metascale." not in path:
                    raise RemoteCommandError(self.host, result.command, 0, f"unexpected mktemp output {path!r}")
                self._tmpdir = path
            return self._tmpdir

    def _open_channel(self, within_s: float) -> paramiko.Channel | None:
        """A new session channel, or None when the open connection gave no answer within ``within_s`` (capped at
        ``connect_timeout_s``): the host went silent on it (the caller closes it). A connection that dropped is
        reopened once."""
        with self._lock:
            transport = self._ensure_connected()
            try:
                return transport.open_session(timeout=min(self._pool.settings.connect_timeout_s, within_s))
            except (paramiko.SSHException, EOFError, OSError) as exc:
                if isinstance(exc, paramiko.ChannelException) and transport.is_active():
                    # the server refused this session (e.g. sshd's MaxSessions); the connection itself is fine
                    raise HostUnreachable(self.host, f"SSH session refused: {exc}") from None
                if transport.is_active():  # "Timeout opening channel.": no answer at all on an open connection
                    return None
                log.info("%s: SSH connection dropped; reconnecting once", self.host)
                self._pool._count_reconnect(self.host)
                self._drop()
                self._client = self._pool._open_client(self._target)
                transport = self._client.get_transport()
                assert transport is not None
                try:
                    return transport.open_session(timeout=self._pool.settings.connect_timeout_s)
                except (paramiko.SSHException, EOFError, OSError) as exc:
                    self._drop()
                    raise HostUnreachable(self.host, f"session refused after reconnect: {exc}") from None

    def build_command(self, argv: Sequence[str], *, sudo: bool = False, cwd: str | None = None,
                      timeout_s: float | None = None, sudo_user: str | None = None) -> tuple[str, str]:
        """Return (shown command, sent command) for ``argv``: quoted, ``sudo -n`` (``sudo -n -u USER`` with
        ``sudo_user``) and a remote ``timeout`` backstop. With ``ssh.sudo = false`` no sudo is ever added."""
        if isinstance(argv, str) or not argv or any(not isinstance(a, str) for a in argv):
            raise TypeError(f"argv must be a non-empty list of str, got {argv!r}")
        if sudo_user is not None and not _SUDO_USER_RE.match(sudo_user):
            raise ValueError(f"sudo_user {sudo_user!r} is not a user name (valid: [a-z_][a-z0-9_.-]*)")
        prefix: list[str] = []
        if self.use_sudo and sudo_user is not None:
            prefix = ["sudo", "-n", "-u", sudo_user]
        elif self.use_sudo and sudo:
            prefix = ["sudo", "-n"]
        shown = shlex.join([*prefix, *argv])
        backstop = ["timeout", "-k", "2", f"{timeout_s + 1:g}"] if timeout_s else []
        sent = shlex.join([*prefix, *backstop, *argv])
        if cwd:
            shown = f"cd {shlex.quote(cwd)} && {shown}"
            sent = f"cd {shlex.quote(cwd)} && {sent}"
        return shown, sent

    def run(
        self,
        argv: Sequence[str],
        *,
        sudo: bool = False,
        timeout_s: float | None = None,
        check: bool = True,
        cwd: str | None = None,
        sudo_user: str | None = None,
    ) -> CommandResult:
        """Run ``argv`` on the host and wait at most ``timeout_s`` (default: inventory command timeout); as
        ``sudo_user`` when given (``sudo -n -u USER``), else as root with ``sudo``, else as the SSH user.

        Raises: RemoteTimeout (the command is also killed remotely) after ``timeout_s``, at most ``peer_reply_s``
        later when the host went silent on the open connection (which is then closed: hint SILENT_HOST_HINT);
        RemoteCommandError when ``check`` and exit != 0; HostUnreachable / HostKeyRejected / SshAuthFailed when the
        connection cannot be (re)opened or drops.
        """
        limit = timeout_s if timeout_s is not None else self._pool.settings.command_timeout_s
        shown, sent = self.build_command(argv, sudo=sudo, cwd=cwd, timeout_s=limit, sudo_user=sudo_user)
        started = time.monotonic()
        grace = self._pool.peer_reply_s
        channel = self._open_channel(limit + grace)  # bounded by connect_timeout_s (and one reconnect)
        if channel is None:
            self._abort(f"opening a session for `{shown}` got no answer")
            raise RemoteTimeout(self.host, shown, limit, "", SILENT_HOST_HINT)
        hint = ""
        with _Watchdog(self, f"`{shown}`", limit + grace) as deadline:
            try:
                channel.exec_command(sent)  # waits for the server's reply with no timeout of its own
                exit_code, out, err = _collect(channel, started + limit)
            except (paramiko.SSHException, EOFError, OSError) as exc:
                if deadline.fired:
                    raise RemoteTimeout(self.host, shown, limit, "", SILENT_HOST_HINT) from None
                raise HostUnreachable(self.host, f"connection lost while running `{shown}`: {exc}") from None
            finally:
                channel.close()
            if exit_code is None and not self._peer_answers(grace):  # slow command, or a host gone silent?
                self._abort(f"`{shown}` ran out of time and a keepalive got no answer within {grace:g} s")
                hint = SILENT_HOST_HINT
        duration = time.monotonic() - started
        if deadline.fired and exit_code in (None, -1):
            exit_code, hint = None, SILENT_HOST_HINT
        elif exit_code == -1 and not self._connection_active():
            raise HostUnreachable(self.host, f"connection lost while running `{shown}` (no exit status)")
        if exit_code is None:
            raise RemoteTimeout(self.host, shown, limit, err, hint)
        result = CommandResult(host=self.host, command=shown, exit_code=exit_code, stdout=out, stderr=err,
                               duration_s=duration)
        log.debug("%s: `%s` exited %s in %.3f s", self.host, shown, exit_code, duration)
        return result.raise_for_status() if check else result

    def _sftp_client(self) -> paramiko.SFTPClient:
        with self._lock:
            self._ensure_connected()
            if self._sftp is None:
                assert self._client is not None
                self._sftp = self._client.open_sftp()
            return self._sftp

    def read_text(self, path: str) -> str:
        """Read ``path`` over SFTP; on permission denied fall back to ``sudo -n cat``.

        Raises: RemoteCommandError (exit_code None over SFTP) naming the host and the path when it cannot be read;
        RemoteTimeout when the SFTP read (opening the SFTP session included) takes longer than the inventory's
        ``command_timeout_s`` (the connection is then closed: the host went silent).
        """
        limit = self._pool.settings.command_timeout_s
        try:
            with _Watchdog(self, f"SFTP read of {path}", limit) as deadline:
                try:
                    with self._sftp_client().open(path, "r") as handle:
                        return register_from_config(handle.read().decode("utf-8"))  # redact its secrets
                except (paramiko.SSHException, EOFError, OSError):
                    if deadline.fired:
                        raise RemoteTimeout(self.host, f"read {path} over SFTP", limit, "", SILENT_HOST_HINT) from None
                    raise
        except PermissionError:
            return register_from_config(self.run(["cat", "--", path], sudo=True).stdout)
        except FileNotFoundError:
            raise RemoteCommandError(self.host, f"read {path}", None, f"{path}: No such file or directory") from None
        except OSError as exc:
            raise RemoteCommandError(self.host, f"read {path}", None, f"{path}: {exc}") from None
        except (paramiko.SSHException, EOFError) as exc:
            raise HostUnreachable(self.host, f"SFTP failed while reading {path}: {exc}") from None

    def stat(self, path: str) -> tuple[str, str, str, int] | None:
        """(owner, group, octal mode, inode) of ``path``, or None when it does not exist."""
        result = self.run(["stat", "-c", "%U %G %a %i", "--", path], sudo=True, check=False)
        if not result.ok:
            if "No such file" in result.stderr:
                return None
            result.raise_for_status()
        owner, group, mode, inode = result.stdout.split()
        return owner, group, mode, int(inode)

    def write_text_atomic(self, path: str, text: str) -> str | None:
        """Replace ``path`` with ``text`` so readers only ever see the old or the new file.

        Side effects: the text is uploaded to /tmp over SFTP (mode 600); then ONE sudo command makes the backup
        ``<path>.<YYYYmmddTHHMMSS>.bak`` (``cp -p``), installs the upload as ``<path>.tmp-XXXX`` with the old
        owner/group/mode (``--reference``) and renames it onto ``path`` (``_INSTALL_SCRIPT``). A missing file is
        created root:root 0644 without a backup. Returns the backup path or None. The caller decides whether to
        write at all (nothing here compares old and new).
        """
        token = secrets.token_hex(4)
        upload = f"/tmp/metascale-{token}.upload"
        staged = f"{path}.tmp-{token}"
        limit = self._pool.settings.command_timeout_s
        try:
            with _Watchdog(self, f"SFTP upload for {path}", limit) as deadline:
                try:
                    with self._sftp_client().open(upload, "w") as handle:
                        handle.chmod(0o600)  # the text may hold secrets (query passwords); private until installed
                        handle.write(text.encode("utf-8"))
                except (paramiko.SSHException, EOFError, OSError):
                    if deadline.fired:  # the host is silent: no cleanup command either (it would wait again)
                        log.warning("%s: %s (mode 600) may be left behind by the timed-out upload", self.host, upload)
                        raise RemoteTimeout(self.host, f"upload {upload} for {path} over SFTP", limit, "",
                                            SILENT_HOST_HINT) from None
                    raise
        except OSError as exc:
            self._remove_quietly(upload)
            raise RemoteCommandError(self.host, f"upload {upload}", None, f"{upload}: {exc}") from None
        except (paramiko.SSHException, EOFError) as exc:
            self._remove_quietly(upload)  # reconnects once: a dropped upload leaves no partial file behind
            raise HostUnreachable(self.host, f"SFTP failed while uploading for {path}: {exc}") from None
        for key in [k for k in self.cache if k[1] == path]:  # facts read from the old text are stale now
            self.cache.pop(key, None)
        result = self.run(["sh", "-c", _INSTALL_SCRIPT, "metascale-install", path, upload, staged, _utc_stamp()],
                          sudo=True)
        return result.stdout.strip() or None

    def _remove_quietly(self, path: str) -> None:
        """Best-effort ``rm -f path`` (cleanup after a failure; its own failure is only logged)."""
        try:
            self.run(["rm", "-f", "--", path], sudo=True, check=False)
        except MetaScaleError as exc:
            log.warning("%s: could not remove %s after a failed upload: %s", self.host, path, exc)



def _collect(channel: paramiko.Channel, deadline: float) -> tuple[int | None, str, str]:
    """Read stdout/stderr until exit or ``deadline``; exit code None means the deadline passed.

    Waits on paramiko's exit-status event (no busy loop: the transport thread needs the GIL to deliver packets),
    draining output every few milliseconds so a chatty command never fills the channel window.
    """
    out, err = bytearray(), bytearray()
    while not channel.exit_status_ready():
        while channel.recv_ready():
            out += channel.recv(65536)
        while channel.recv_stderr_ready():
            err += channel.recv_stderr(65536)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
        channel.status_event.wait(min(remaining, 0.005))
    channel.settimeout(max(deadline - time.monotonic(), 1.0))
    try:
        while chunk := channel.recv(65536):  # until EOF, which follows the exit status
            out += chunk
        while channel.recv_stderr_ready():
            err += channel.recv_stderr(65536)
    except socket.timeout:
        pass
    return channel.recv_exit_status(), out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


class SshPool:
    """SSH connections for one run: one per host, opened on first use, reused by every step.

    ``handshakes[host]`` counts completed connects (first connect plus reconnects), ``reconnects[host]`` the
    reconnects, ``connect_seconds[host]`` how long each connect took, ``wedged[host]`` how often a connection was
    closed because the host went silent on it. Use as a context manager or call close().

    Deadlines (the host may go silent at any moment, also on a connection that is already open): connecting and
    opening a channel are bounded by ``connect_timeout_s`` (one reconnect each); a command by its ``timeout_s`` plus
    ``peer_reply_s`` (after its limit a keepalive must be answered, else the connection is closed); every SFTP
    operation by ``command_timeout_s``. Idle connections send keepalives every ``keepalive_s``.
    """

    def __init__(
        self,
        settings: SshSettings,
        *,
        private_key_text: str | None = None,
        resolve: Callable[[MetaNode | QueryNode | str], SshTarget] | None = None,
        connect_attempts: int = 3,
        keepalive_s: float = KEEPALIVE_INTERVAL_S,
        peer_reply_s: float = PEER_REPLY_S,
    ) -> None:
        self.settings = settings
        self.keepalive_s = keepalive_s
        self.peer_reply_s = peer_reply_s
        if private_key_text is None and settings.private_key_file is None:
            raise InventoryError(
                f"the key lives in the Prefect Secret {settings.private_key_secret!r}; pass its text as "
                "private_key_text", "ssh private key")
        self._pkey = load_private_key(path=settings.private_key_file if private_key_text is None else None,
                                      text=private_key_text)
        self._resolve = resolve or self._default_resolve
        self._connect_attempts = connect_attempts
        self._remotes: dict[str, ParamikoRemote] = {}
        self._lock = threading.Lock()
        self.handshakes: dict[str, int] = {}
        self.reconnects: dict[str, int] = {}
        self.connect_seconds: dict[str, list[float]] = {}
        self.wedged: dict[str, int] = {}

    @classmethod
    def for_inventory(cls, inventory: Inventory, *, private_key_text: str | None = None) -> SshPool:
        """A pool using the inventory's SSH settings and per-node overrides."""
        return cls(inventory.ssh, private_key_text=private_key_text, resolve=inventory.ssh_target)

    def _default_resolve(self, node: MetaNode | QueryNode | str) -> SshTarget:
        host = node if isinstance(node, str) else node.host
        return SshTarget(host=host, port=self.settings.port, user=self.settings.user,
                         proxy_command=self.settings.proxy_command)

    def __repr__(self) -> str:
        return f"SshPool(user={self.settings.user!r}, hosts={sorted(self._remotes)})"

    def remote(self, node: MetaNode | QueryNode | str) -> ParamikoRemote:
        """The connection to ``node``'s host, connected now if needed. Raises HostKeyRejected/SshAuthFailed/..."""
        target = self._resolve(node)
        with self._lock:
            remote = self._remotes.get(target.host)
            if remote is None:
                remote = self._remotes[target.host] = ParamikoRemote(self, target)
        remote.connect()
        return remote

    def _count_reconnect(self, host: str) -> None:
        with self._lock:
            self.reconnects[host] = self.reconnects.get(host, 0) + 1

    def _count_wedged(self, host: str) -> None:
        with self._lock:
            self.wedged[host] = self.wedged.get(host, 0) + 1

    def _open_client(self, target: SshTarget) -> paramiko.SSHClient:
        """Connect with tenacity retries on network errors; never retry auth or host-key failures."""
        retrying = Retrying(
            # fast failures (refused, reset) get every attempt; a host that times out costs ~one connect timeout
            stop=stop_after_attempt(self._connect_attempts) | stop_after_delay(self.settings.connect_timeout_s),
            wait=CONNECT_WAIT,
            retry=retry_if_exception_type(_RETRYABLE_CONNECT) & retry_if_not_exception_type(_NEVER_RETRY_CONNECT),
            reraise=True,
        )
        started = time.monotonic()
        try:
            client = retrying(self._connect_once, target)
        except HostKeyRejected:
            raise
        except paramiko.BadHostKeyException as exc:
            raise HostKeyRejected(target.host, "host key differs from known_hosts (possible man-in-the-middle, or "
                                  "the host was reinstalled)", exc.key.fingerprint) from None
        except paramiko.AuthenticationException as exc:
            raise SshAuthFailed(target.host, f"user {target.user!r} rejected: {exc}") from None
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise HostUnreachable(target.host, f"{type(exc).__name__}: {exc} (port {target.port}, "
                                  f"gave up after {time.monotonic() - started:.1f} s)") from None
        elapsed = time.monotonic() - started
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(self.keepalive_s)  # paramiko only compares the interval: a float works
        with self._lock:
            self.handshakes[target.host] = self.handshakes.get(target.host, 0) + 1
            self.connect_seconds.setdefault(target.host, []).append(elapsed)
        log.info("%s: SSH connected as %s in %.3f s", target.host, target.user, elapsed)
        return client

    def _connect_once(self, target: SshTarget) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        try:
            client.load_host_keys(self.settings.known_hosts_file)
        except OSError as exc:
            raise InventoryError(f"cannot read known_hosts: {exc.strerror}", self.settings.known_hosts_file) from None
        client.set_missing_host_key_policy(_RejectUnknownHost())
        sock: paramiko.ProxyCommand | socket.socket | None = None
        if target.proxy_command:
            sock = paramiko.ProxyCommand(substitute_proxy_command(target.proxy_command, target))
        timeout = self.settings.connect_timeout_s
        try:
            client.connect(
                target.host, port=target.port, username=target.user, pkey=self._pkey, sock=sock,
                allow_agent=False, look_for_keys=False, timeout=timeout, banner_timeout=timeout,
                auth_timeout=timeout, channel_timeout=timeout,
            )
        except BaseException:
            client.close()
            if isinstance(sock, paramiko.ProxyCommand):
                sock.close()
            raise
        return client

    def close(self) -> None:
        """Close every connection of this pool."""
        with self._lock:
            remotes = list(self._remotes.values())
            self._remotes.clear()
        for remote in remotes:
            remote.close()

    def __enter__(self) -> SshPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = [
    "CommandResult",
    "ParamikoRemote",
    "Remote",
    "RemotePool",
    "SshPool",
    "load_private_key",
    "substitute_proxy_command",
]
