"""What metascale reads from a node itself, once per connection: its meta config, the service's user, the
databend-meta version, and what a host name resolves to.

Every address, path and secret-bearing option comes from the node's OWN config (``read_node_config``), never from
inventory defaults or 127.0.0.1. Results are cached on the ``Remote`` (``remote.cache``, keyed by (kind, path)), so
a run reads each fact once per host; ``write_text_atomic`` of a path drops that path's entries. Read-only.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from metascale import config
from metascale.config import MetaConfigFacts, is_ip_literal
from metascale.errors import ConfigEditError, MetaScaleError, PlanRefused, RemoteCommandError
from metascale.inventory import Inventory, Paths
from metascale.remote import Remote

log = logging.getLogger(__name__)

OLDEST_SUPPORTED_VERSION = (1, 2, 612)
"""metactl's ``status`` / ``transfer-leader`` subcommands appear in v1.2.612 (reference §1.2)."""
OLDEST_SUPPORTED_TEXT = "1.2.612"
_VERSION_RE = re.compile(r"^\s*version:\s*v?(\d+)\.(\d+)\.(\d+)(\S*)\s*$", re.MULTILINE)
_USER_RE = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")


def _cache(remote: Remote) -> dict[tuple[str, str], Any]:
    cache = getattr(remote, "cache", None)
    return cache if isinstance(cache, dict) else {}


def read_node_config(remote: Remote, inventory: Inventory | None = None, *, path: str | None = None
                     ) -> MetaConfigFacts:
    """The facts of the meta config on ``remote``'s host (``inventory.paths.meta_config``, or ``path``), read
    once per connection (read_text: SFTP, else ``sudo -n cat``). The raft secret's value is never kept.

    Raises: RemoteCommandError when the file cannot be read; ConfigEditError (naming the host) when it is not a
    meta config.
    """
    where = path or (inventory.paths if inventory is not None else Paths()).meta_config
    cache = _cache(remote)
    key = ("meta_config", where)
    if key not in cache:
        try:
            cache[key] = config.read_meta_config_facts(remote.read_text(where), path=where)
        except ConfigEditError as exc:
            raise ConfigEditError(where, exc.reason, remote.host) from None
    facts = cache[key]
    assert isinstance(facts, MetaConfigFacts)
    return facts


def read_service_user(remote: Remote, unit: str) -> str:
    """The ``User=`` of systemd unit ``unit`` (``systemctl show -p User --value``), "root" when it sets none.
    Cached per connection. Raises: RemoteCommandError when systemctl fails or prints something not a user name."""
    cache = _cache(remote)
    key = ("service_user", unit)
    if key not in cache:
        result = remote.run(["systemctl", "show", "-p", "User", "--value", unit], timeout_s=10)
        user = result.stdout.strip() or "root"
        if not _USER_RE.match(user):
            raise RemoteCommandError(remote.host, result.command, 0, f"User= of {unit} is {user!r}, not a user name")
        cache[key] = user
    return str(cache[key])


def parse_meta_version(text: str) -> tuple[int, int, int] | None:
    """``version: 1.2.934-nightly`` / ``version: v1.2.600`` / ``version: 260629.2.0`` (``databend-meta --cmd
    ver``) -> (major, minor, patch); None when there is no such line. Crate versions like 260629.2.0 are dates
    and compare newer than every 1.2.x."""
    match = _VERSION_RE.search(text or "")
    return (int(match.group(1)), int(match.group(2)), int(match.group(3))) if match else None


def version_text(text: str) -> str:
    """The version as ``databend-meta --cmd ver`` prints it (``1.2.600``), or "" when absent."""
    match = _VERSION_RE.search(text or "")
    return f"{match.group(1)}.{match.group(2)}.{match.group(3)}{match.group(4)}" if match else ""


def is_supported_version(version: tuple[int, int, int]) -> bool:
    """True for 1.2.612 and newer (date-style crate versions such as 260629.2.0 included)."""
    return version >= OLDEST_SUPPORTED_VERSION


def read_meta_version(remote: Remote, timeout_s: float = 10) -> str | None:
    """The databend-meta version on ``remote``'s host (``databend-meta --cmd ver``, as the SSH user), cached per
    connection; None when the binary is missing (exit 126/127: the package pre-flight reports that).

    Raises: PlanRefused when it runs but prints no ``version:`` line; RemoteTimeout, HostUnreachable.
    """
    cache = _cache(remote)
    key = ("version", "databend-meta")
    if key not in cache:
        result = remote.run(["databend-meta", "--cmd", "ver"], timeout_s=timeout_s, check=False,
                            cwd=remote.private_tmpdir())
        if result.exit_code in (126, 127):
            return None
        text = version_text(result.stdout)
        if not result.ok or parse_meta_version(result.stdout) is None:
            raise PlanRefused("pre-flight", f"cannot read the databend-meta version on {remote.host}: `databend-meta "
                                            f"--cmd ver` exited {result.exit_code}: "
                                            f"{(result.tail(2) or result.tail(2, 'stdout'))[:200]!r}")
        cache[key] = text
    return str(cache[key])


def check_supported_version(remote: Remote, timeout_s: float = 10) -> str | None:
    """Refuse a host whose databend-meta is older than 1.2.612; return its version (None: binary missing).

    Raises: PlanRefused("databend-meta X on HOST is older than 1.2.612, the oldest metascale supports").
    """
    version = read_meta_version(remote, timeout_s)
    parsed = parse_meta_version(f"version: {version}") if version else None
    if parsed is not None and not is_supported_version(parsed):
        raise PlanRefused("pre-flight", f"databend-meta {version} on {remote.host} is older than "
                                        f"{OLDEST_SUPPORTED_TEXT}, the oldest metascale supports")
    return version


def parse_getent_ahosts(text: str) -> list[str]:
    """The distinct addresses in ``getent ahosts NAME`` output, in order (``192.0.2.5  STREAM name`` lines)."""
    seen: list[str] = []
    for line in text.splitlines():
        address = line.split()[0] if line.split() else ""
        if address and is_ip_literal(address) and address not in seen:
            seen.append(address)
    return seen


def resolve_host_address(remote: Remote, host: str, timeout_s: float = 10) -> str:
    """The one IP address ``host`` stands for, as the cluster sees it: ``host`` itself when it is an IP literal,
    else ``getent ahosts HOST`` run on ``remote`` (an existing meta node), once.

    Raises: PlanRefused with a one-line reason when the name does not resolve there or resolves to several
    addresses (databend-meta binds and advertises one address: give that IP instead).
    """
    if is_ip_literal(host):
        return host
    try:
        result = remote.run(["getent", "ahosts", host], timeout_s=timeout_s, check=False)
    except MetaScaleError as exc:
        raise PlanRefused("pre-flight", f"cannot resolve {host!r} on {remote.host}: {exc}") from None
    addresses = parse_getent_ahosts(result.stdout) if result.ok else []
    if not addresses:
        raise PlanRefused("pre-flight", f"host name {host!r} does not resolve on {remote.host} (`getent ahosts` "
                                        f"exit {result.exit_code}); give the new node's IP address instead")
    if len(addresses) > 1:
        raise PlanRefused("pre-flight", f"host name {host!r} resolves to several addresses on {remote.host} "
                                        f"({', '.join(addresses)}); give the one IP address the node should use")
    return addresses[0]


__all__ = [
    "OLDEST_SUPPORTED_TEXT",
    "OLDEST_SUPPORTED_VERSION",
    "check_supported_version",
    "is_ip_literal",
    "is_supported_version",
    "parse_getent_ahosts",
    "parse_meta_version",
    "read_meta_version",
    "read_node_config",
    "read_service_user",
    "resolve_host_address",
    "version_text",
]
