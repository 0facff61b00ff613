"""Every error metascale raises. One base class, one class per kind of failure.

Each ``__init__`` passes all its fields to ``super().__init__`` so the exception survives a pickle round trip
(Prefect stores task exceptions with cloudpickle when results are persisted). Messages say where, what was seen
versus expected, and what is blocked. No message ever contains a private key or other secret.
"""

from __future__ import annotations

from typing import Any

from metascale.redact import redact


def _tail(text: str, lines: int = 10) -> str:
    """Return the last ``lines`` lines of ``text`` (stripped of trailing blank lines)."""
    return "\n".join(text.rstrip().splitlines()[-lines:])


class MetaScaleError(Exception):
    """Base class of every error metascale raises on purpose.

    Its text never shows a secret value metascale has read (``redact.redact``): every subclass's ``__str__`` is
    wrapped when the class is defined, so a stderr tail or a library message that echoes a password shows ``***``.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("__str__")
        if own is not None and not getattr(own, "_redacted", False):
            def __str__(self: MetaScaleError, _own: Any = own) -> str:
                return redact(_own(self))

            __str__._redacted = True  # type: ignore[attr-defined]
            cls.__str__ = __str__  # type: ignore[method-assign]

    def __str__(self) -> str:
        return redact(super().__str__())


class InventoryError(MetaScaleError, ValueError):
    """The inventory file or model is invalid. ``source`` names the file (or ``<text>``)."""

    def __init__(self, reason: str, source: str = "<inventory>") -> None:
        super().__init__(reason, source)
        self.reason = reason
        self.source = source

    def __str__(self) -> str:
        return f"{self.source}: {self.reason}"


class PlanRefused(MetaScaleError):
    """A scale plan was refused before anything changed (``action`` e.g. "scale-down", ``reason`` a sentence)."""

    def __init__(self, action: str, reason: str) -> None:
        super().__init__(action, reason)
        self.action = action
        self.reason = reason

    def __str__(self) -> str:
        return f"refusing {self.action}: {self.reason}"


class RemoteCommandError(MetaScaleError):
    """A remote command exited non-zero (``exit_code`` None when it never finished)."""

    def __init__(self, host: str, command: str, exit_code: int | None, stderr_tail: str) -> None:
        super().__init__(host, command, exit_code, stderr_tail)
        self.host = host
        self.command = command
        self.exit_code = exit_code
        self.stderr_tail = stderr_tail

    def __str__(self) -> str:
        tail = _tail(self.stderr_tail) or "(empty)"
        return f"{self.host}: `{self.command}` exited {self.exit_code}; stderr tail:\n{tail}"


class RemoteTimeout(RemoteCommandError):
    """A remote command did not finish within ``timeout_s``; ``hint`` explains what usually causes it."""

    def __init__(
        self, host: str, command: str, timeout_s: float, stderr_tail: str = "", hint: str = ""
    ) -> None:
        Exception.__init__(self, host, command, timeout_s, stderr_tail, hint)
        self.host = host
        self.command = command
        self.exit_code = None
        self.timeout_s = timeout_s
        self.stderr_tail = stderr_tail
        self.hint = hint

    def __str__(self) -> str:
        text = f"{self.host}: `{self.command}` did not finish within {self.timeout_s:g} s"
        if self.hint:
            text += f" ({self.hint})"
        if self.stderr_tail.strip():
            text += f"; stderr tail:\n{_tail(self.stderr_tail)}"
        return text


class HostUnreachable(MetaScaleError):
    """SSH could not reach or log in to ``host`` (network, auth, or protocol failure)."""

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(host, reason)
        self.host = host
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.host}: cannot open SSH session: {self.reason}"


class SshAuthFailed(HostUnreachable):
    """The host refused our key (never retried)."""

    def __str__(self) -> str:
        return f"{self.host}: SSH authentication failed: {self.reason}"


class HostKeyRejected(HostUnreachable):
    """The host offered a key that is unknown or differs from known_hosts (never retried)."""

    def __init__(self, host: str, reason: str, fingerprint: str = "") -> None:
        Exception.__init__(self, host, reason, fingerprint)
        self.host = host
        self.reason = reason
        self.fingerprint = fingerprint

    def __str__(self) -> str:
        offered = f"; offered key {self.fingerprint}" if self.fingerprint else ""
        return f"{self.host}: host key rejected: {self.reason}{offered}"


class ConfigEditError(MetaScaleError):
    """A config file could not be edited (bad TOML, missing table); nothing was written."""

    def __init__(self, path: str, reason: str, host: str = "") -> None:
        super().__init__(path, reason, host)
        self.path = path
        self.reason = reason
        self.host = host

    def __str__(self) -> str:
        where = f"{self.host}:{self.path}" if self.host else self.path
        return f"{where}: cannot edit config: {self.reason}"


class StatusParseError(MetaScaleError):
    """`databend-metactl status` output could not be understood; ``excerpt`` is the start of the text."""

    def __init__(self, reason: str, excerpt: str = "", host: str = "") -> None:
        super().__init__(reason, excerpt, host)
        self.reason = reason
        self.excerpt = excerpt
        self.host = host

    def __str__(self) -> str:
        where = f"{self.host}: " if self.host else ""
        shown = self.excerpt[:200].replace("\n", "\\n")
        return f"{where}cannot parse metactl status: {self.reason}; output starts: {shown!r}"


class MetaUnreachable(MetaScaleError):
    """The meta service on ``host`` did not answer (not running, refused, or timed out)."""

    def __init__(self, host: str, node_id: int | None, reason: str) -> None:
        super().__init__(host, node_id, reason)
        self.host = host
        self.node_id = node_id
        self.reason = reason

    def __str__(self) -> str:
        who = f"meta-{self.node_id} ({self.host})" if self.node_id is not None else self.host
        return f"{who}: meta service not answering: {self.reason}"


class ClusterNotConverged(MetaScaleError):
    """A wait reached its deadline: ``expected`` was never seen; ``last_seen`` is the last observation."""

    def __init__(self, expected: Any, last_seen: Any, waited_s: float) -> None:
        super().__init__(expected, last_seen, waited_s)
        self.expected = expected
        self.last_seen = last_seen
        self.waited_s = waited_s

    def __str__(self) -> str:
        return (
            f"cluster did not converge after {self.waited_s:.1f} s: expected {self.expected}; "
            f"last seen {self.last_seen}"
        )


__all__ = [
    "ClusterNotConverged",
    "ConfigEditError",
    "HostKeyRejected",
    "HostUnreachable",
    "InventoryError",
    "MetaScaleError",
    "MetaUnreachable",
    "PlanRefused",
    "RemoteCommandError",
    "RemoteTimeout",
    "SshAuthFailed",
    "StatusParseError",
]
