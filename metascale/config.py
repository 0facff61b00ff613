"""Pure text -> text edits of databend-meta.toml and databend-query.toml (tomlkit).

Comments, key order and formatting outside the changed keys stay byte-for-byte identical. Existing arrays are
mutated in place (one-item-per-line layouts and per-item comments survive). ``single = true`` is turned off by
commenting the line out (``# single = true``), the packaged file's own instruction. Invalid TOML or a missing
table raises ``ConfigEditError`` and returns nothing, so nothing can be written.
"""

from __future__ import annotations

import difflib
import ipaddress
import posixpath
import re
from collections.abc import Sequence
from typing import Any

import tomlkit
from tomlkit.items import Array, Table
from pydantic import BaseModel, ConfigDict

from metascale import redact as _redact
from metascale.errors import ConfigEditError

META_CONFIG = "databend-meta.toml"
QUERY_CONFIG = "databend-query.toml"
_WILDCARD_HOSTS = {"0.0.0.0", "::", "[::]", "127.0.0.1", "localhost"}
_HEADER_RE = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_SINGLE_RE = re.compile(r"^(\s*)single(\s*=.*)$")


def _parse(text: str, path: str) -> tomlkit.TOMLDocument:
    try:
        return tomlkit.parse(text)
    except Exception as exc:  # tomlkit's ParseError family; message has line and column
        raise ConfigEditError(path, f"invalid TOML: {exc}") from None


def _table(doc: tomlkit.TOMLDocument, name: str, path: str) -> Table:
    table = doc.get(name)
    if not isinstance(table, Table):
        raise ConfigEditError(path, f"no [{name}] table (is this the right file?)")
    return table


def _set_array(table: Table, key: str, values: Sequence[str]) -> None:
    """Make ``table[key]`` hold exactly ``values``; an existing array is mutated in place (layout kept)."""
    wanted = [str(v) for v in values]
    current = table.get(key)
    if not isinstance(current, Array):
        table[key] = wanted
        return
    if list(current) == wanted or sorted(current) == sorted(wanted):
        return
    for value in [v for v in current if v not in wanted]:
        current.remove(value)
    for value in [v for v in wanted if v not in current]:
        current.append(value)


def _set_scalar(container: Any, key: str, value: Any) -> None:
    if container.get(key) != value or type(container.get(key)) is not type(value):
        container[key] = value


def _comment_out_single(text: str, path: str) -> str:
    """Comment out an active ``single = true`` inside [raft_config] (text-level, so the line stays visible)."""
    lines = text.splitlines(keepends=True)
    section = ""
    for index, line in enumerate(lines):
        header = _HEADER_RE.match(line)
        if header:
            section = header.group(1)
            continue
        match = _SINGLE_RE.match(line)
        if section == "raft_config" and match:
            ending = line[len(line.rstrip("\r\n")):]
            lines[index] = f"{match.group(1)}# single{match.group(2).rstrip(chr(13) + chr(10))}{ending}"
    result = "".join(lines)
    raft = _table(_parse(result, path), "raft_config", path)
    if "single" in raft:
        raise ConfigEditError(path, "could not turn `single` off in [raft_config]")
    return result


def _single_is_on(doc: tomlkit.TOMLDocument) -> bool:
    raft = doc.get("raft_config") or {}
    return bool(raft.get("single", False))


def set_join(text: str, addresses: Sequence[str], *, path: str = META_CONFIG) -> str:
    """Return ``text`` with [raft_config] ``join`` = ``addresses`` and ``single`` off. Idempotent.

    Raises: ConfigEditError for invalid TOML, a missing [raft_config], or an empty ``addresses``.
    """
    if not addresses:
        raise ConfigEditError(path, "join needs at least one address (an empty join with single off will not start)")
    doc = _parse(text, path)
    _table(doc, "raft_config", path)
    if _single_is_on(doc):
        doc = _parse(_comment_out_single(text, path), path)
    _set_array(_table(doc, "raft_config", path), "join", addresses)
    return tomlkit.dumps(doc)


def set_meta_endpoints(text: str, endpoints: Sequence[str], *, path: str = QUERY_CONFIG) -> str:
    """Return query-node config ``text`` with [meta] ``endpoints`` = ``endpoints`` (gRPC addresses). Idempotent.

    Raises: ConfigEditError for invalid TOML, a missing [meta] table, or no endpoints.
    """
    if not endpoints:
        raise ConfigEditError(path, "endpoints needs at least one meta gRPC address")
    doc = _parse(text, path)
    _set_array(_table(doc, "meta", path), "endpoints", endpoints)
    return tomlkit.dumps(doc)


def is_ip_literal(value: str) -> bool:
    """True for an IPv4 or IPv6 address literal (no brackets)."""
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return False


def _new_bind_host(current: str, host: str) -> str:
    """The bind host a NEW node gets for a copied bind host ``current``: a wildcard (0.0.0.0, ::) and a local-only
    bind (127.0.0.1, ::1) stay, ``localhost`` becomes 127.0.0.1, anything else (another node's IP or a name) becomes ``host``.
    So only IP literals are ever written (databend-meta refuses a host name there at start)."""
    if current in ("0.0.0.0", "::", "127.0.0.1", "::1"):  # not 127.x.y.z in general: a host may own one
        return current
    if current == "localhost":
        return "127.0.0.1"
    return host


def set_node_identity(
    text: str,
    *,
    node_id: int,
    host: str,
    join: Sequence[str],
    raft_port: int | None = None,
    grpc_port: int | None = None,
    admin_port: int | None = None,
    path: str = META_CONFIG,
) -> str:
    """Return a copied meta config made right for a NEW node: id, single off, join, advertise hosts = ``host``.

    ``host`` is the new node's IP address (a name is resolved once by the caller, ``nodeinfo.
    resolve_host_address``). ``grpc_api_address``, ``admin_api_address`` and ``raft_listen_host`` only ever get
    IP literals: a wildcard bind or 127.0.0.1 / ::1 stays as it is, ``localhost`` becomes 127.0.0.1, another node's
    address becomes ``host`` (IPv6 in brackets). Idempotent. Raises: ConfigEditError (``host`` not an IP, bad
    TOML, no [raft_config], empty join, or a join list that contains ``host`` itself). ``*_port`` given: those
    ports are set too.
    """
    if not is_ip_literal(host):
        raise ConfigEditError(path, f"new node host {host!r} is not an IP address (grpc_api_address, "
                                    "admin_api_address and raft_listen_host take IP literals only): resolve it first")
    doc = _parse(text, path)
    raft = _table(doc, "raft_config", path)
    port = raft_port if raft_port is not None else int(raft.get("raft_api_port", 28004))
    own = {f"{host}:{port}", join_host_port(host, port)}
    if own & set(join):
        raise ConfigEditError(path, f"join {list(join)} contains the new node's own address "
                                    f"{join_host_port(host, port)}")
    text = set_join(text, join, path=path)
    doc = _parse(text, path)
    raft = _table(doc, "raft_config", path)
    _set_scalar(raft, "id", int(node_id))
    if raft_port is not None:
        _set_scalar(raft, "raft_api_port", int(raft_port))
    _set_scalar(raft, "raft_advertise_host", host)
    listen = raft.get("raft_listen_host")
    if listen is not None:
        _set_scalar(raft, "raft_listen_host", _new_bind_host(str(listen), host))
    _set_scalar(doc, "grpc_api_advertise_host", host)
    for key, new_port in (("grpc_api_address", grpc_port), ("admin_api_address", admin_port)):
        value = doc.get(key)
        if isinstance(value, str):
            try:
                bind, old_port = split_host_port(str(value))
            except ValueError as exc:
                raise ConfigEditError(path, f"{key}: {exc}") from None
            address = join_host_port(_new_bind_host(bind, host), new_port if new_port is not None else old_port)
            _set_scalar(doc, key, address)
    return tomlkit.dumps(doc)


DISARMED_MARK = "# metascale: this node was removed from its cluster"


def disarm_removed_node(text: str, *, cluster: str, node_id: int, when: str, path: str = META_CONFIG) -> str:
    """Return the config of a node that LEFT the cluster, made unable to start: ``join`` emptied, ``single`` off.

    databend-meta refuses to start with neither ``single`` nor ``join`` ("at least one of `single` and `join`
    needs to be enabled"), so a stray ``systemctl start`` can never re-join the old cluster nor found a new one.
    A comment at the top says why and how to reuse the host. Idempotent. Raises: ConfigEditError.
    """
    if text.startswith(DISARMED_MARK):
        return text
    doc = _parse(text, path)
    _table(doc, "raft_config", path)
    if _single_is_on(doc):
        doc = _parse(_comment_out_single(text, path), path)
    raft = _table(doc, "raft_config", path)
    if "join" in raft:
        _set_array(raft, "join", [])
    header = (f"{DISARMED_MARK} `{cluster}` (meta-{node_id}) at {when}.\n"
              "# join is empty and single is off, so databend-meta refuses to start here. To reuse this host,\n"
              "# add it again with `metascale scale-up` (it writes a fresh config).\n")
    return header + tomlkit.dumps(doc)


def join_without_self(text: str, addresses: Sequence[str], *, path: str = META_CONFIG) -> list[str]:
    """``addresses`` minus this node's own raft LISTEN address (databend-meta refuses a join that contains it).

    With the packaged ``raft_listen_host = "0.0.0.0"`` nothing is removed. Raises: ConfigEditError.
    """
    raft = _table(_parse(text, path), "raft_config", path)
    listen = str(raft.get("raft_listen_host", "127.0.0.1"))
    port = int(raft.get("raft_api_port", 28004))
    own = {join_host_port(listen, port), f"{listen}:{port}"}  # bracketed IPv6, and the unbracketed form too
    return [a for a in addresses if a not in own]


def read_join(text: str, *, path: str = META_CONFIG) -> list[str]:
    """The [raft_config] ``join`` list ([] when absent). Raises: ConfigEditError."""
    raft = _table(_parse(text, path), "raft_config", path)
    return [str(v) for v in raft.get("join", [])]


def read_single(text: str, *, path: str = META_CONFIG) -> bool:
    """Whether [raft_config] ``single`` is on. Raises: ConfigEditError."""
    return bool(_table(_parse(text, path), "raft_config", path).get("single", False))


def read_node_id(text: str, *, path: str = META_CONFIG) -> int | None:
    """The [raft_config] ``id`` (None when absent). Raises: ConfigEditError."""
    value = _table(_parse(text, path), "raft_config", path).get("id")
    return None if value is None else int(value)


def read_meta_endpoints(text: str, *, path: str = QUERY_CONFIG) -> list[str]:
    """The query config's [meta] ``endpoints`` ([] when absent). Raises: ConfigEditError."""
    return [str(v) for v in _table(_parse(text, path), "meta", path).get("endpoints", [])]


class MetaConfigFacts(BaseModel):
    """What metascale needs to know from one node's own databend-meta.toml (never the inventory's defaults).

    Defaults are databend-meta's code defaults for an absent key (reference §5.1). ``raft_secret_set`` only says
    whether a secret is configured: the value is never read into this model.
    """

    model_config = ConfigDict(frozen=True)

    node_id: int | None = None
    grpc_api_address: str = "127.0.0.1:9191"
    admin_api_address: str = "127.0.0.1:28002"
    grpc_api_advertise_host: str | None = None
    raft_listen_host: str = "127.0.0.1"
    raft_advertise_host: str | None = None
    raft_api_port: int = 28004
    raft_dir: str = "/.databend/meta"
    log_dir: str = "/.databend/logs"
    grpc_tls: bool = False
    admin_tls: bool = False
    raft_secret_set: bool = False
    single: bool = False
    join: tuple[str, ...] = ()

    @property
    def grpc_probe_address(self) -> str:
        """Where a client ON the node reaches the gRPC API (a wildcard bind is reached on loopback)."""
        return probe_address(self.grpc_api_address)

    @property
    def admin_probe_address(self) -> str:
        """Where a client ON the node reaches the admin HTTP API (a wildcard bind is reached on loopback)."""
        return probe_address(self.admin_api_address)


# systemd starts a system service in "/" unless the unit sets WorkingDirectory=; the packaged unit does not.
SERVICE_WORKING_DIRECTORY = "/"


def _absolute(path: str) -> str:
    return path if path.startswith("/") else posixpath.normpath(posixpath.join(SERVICE_WORKING_DIRECTORY, path))


def split_host_port(address: str) -> tuple[str, int]:
    """``1.2.3.4:9191`` / ``[fd00::1]:9191`` -> (host without brackets, port). Raises ValueError naming it."""
    head, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{address!r} is not HOST:PORT")
    return head[1:-1] if head.startswith("[") and head.endswith("]") else head, int(port)


def join_host_port(host: str, port: int) -> str:
    """(host, port) -> ``host:port``, an IPv6 literal in brackets (a host already in brackets stays as it is)."""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def normalize_host_port(address: str) -> str:
    """``address`` with an IPv6 host in brackets (``fd00::4:28004`` -> ``[fd00::4]:28004``); anything that is not
    HOST:PORT (e.g. "") comes back unchanged. databend-meta prints an endpoint as ``addr:port`` without brackets."""
    try:
        host, port = split_host_port(address)
    except ValueError:
        return address
    return join_host_port(host, port)


def probe_address(bind: str) -> str:
    """The address a local client uses for a server bound to ``bind``: 0.0.0.0 -> 127.0.0.1, :: -> [::1]."""
    host, port = split_host_port(bind)
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return join_host_port(host, port)


def read_meta_config_facts(text: str, *, path: str = META_CONFIG) -> MetaConfigFacts:
    """Parse a databend-meta.toml into MetaConfigFacts (absent keys take databend-meta's defaults; relative
    ``raft_dir`` / log dirs resolve against the service's working directory ``/``). Raises: ConfigEditError."""
    doc = _parse(text, path)
    raft = _table(doc, "raft_config", path)
    log_file = doc.get("log", {}).get("file", {}) if isinstance(doc.get("log"), dict) else {}
    log_dir = str(log_file.get("dir", "./.databend/logs"))
    legacy = doc.get("log_dir")                 # legacy top-level key wins when set to a non-default value
    if legacy is not None and str(legacy) != "./.databend/logs":
        log_dir = str(legacy)
    values: dict[str, Any] = {
        "node_id": None if raft.get("id") is None else int(raft.get("id")),
        "grpc_api_advertise_host": None if doc.get("grpc_api_advertise_host") is None
        else str(doc.get("grpc_api_advertise_host")),
        "raft_advertise_host": None if raft.get("raft_advertise_host") is None
        else str(raft.get("raft_advertise_host")),
        "raft_dir": _absolute(str(raft.get("raft_dir", "./.databend/meta"))),
        "log_dir": _absolute(log_dir),
        "grpc_tls": bool(doc.get("grpc_tls_server_cert")),
        "admin_tls": bool(doc.get("admin_tls_server_cert")),
        "raft_secret_set": bool(raft.get("raft_secret")),
        "single": bool(raft.get("single", False)),
        "join": tuple(str(v) for v in raft.get("join", [])),
    }
    for key in ("grpc_api_address", "admin_api_address"):
        if doc.get(key) is not None:
            values[key] = str(doc.get(key))
    if raft.get("raft_listen_host") is not None:
        values["raft_listen_host"] = str(raft.get("raft_listen_host"))
    if raft.get("raft_api_port") is not None:
        values["raft_api_port"] = int(raft.get("raft_api_port"))
    try:
        facts = MetaConfigFacts(**values)
        facts.grpc_probe_address, facts.admin_probe_address  # noqa: B018 - validate both addresses now
    except ValueError as exc:
        raise ConfigEditError(path, f"cannot read the node's addresses: {exc}") from None
    return facts


MASK = '"***"'


def _mask_line(body: str) -> tuple[str, str | None]:
    """One line with the value of every secret-holding ``key = value`` on it (at the start, dotted or quoted keys,
    inside an inline table, in a comment) replaced by MASK. Returns (line, closing delimiter of a value that goes
    on to the next lines, or None)."""
    out: list[str] = []
    pos = 0
    for match in _redact._PAIR_RE.finditer(body):
        if not _redact.is_secret_key(match.group("key")):
            continue
        value, start, end = match.group("value"), match.start("value"), match.end("value")
        if value[0] not in "\"'[":  # true / false / a number: not a secret, keep it readable
            continue
        if value in ('"""', "'''"):
            close = body.find(value, end)
            if close < 0:
                out.append(body[pos:start] + MASK)
                return "".join(out), value
            end = close + 3
        elif value.startswith("[") and "]" not in value:
            out.append(body[pos:start] + MASK)
            return "".join(out), "]"
        out.append(body[pos:start] + MASK)
        pos = end
    out.append(body[pos:])
    return "".join(out), None


def mask_secrets(text: str) -> str:
    """``text`` with the value of every secret-holding key replaced by ``"***"``: ``password``, ``secret``,
    ``token``, ``key``, ``credential``, ``auth_string`` in any table, also in inline tables, with dotted or quoted
    keys, in comments, and over several lines (arrays, multi-line strings).

    Line-based, so it also works on text that is not valid TOML. Used for every diff metascale shows.
    """
    out: list[str] = []
    closing: str | None = None
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        ending = line[len(body):]
        if closing is not None:  # inside a multi-line secret value: drop the line
            code = body if closing != "]" else body.split("#", 1)[0]
            if closing in code:
                closing = None
            continue
        masked, closing = _mask_line(body)
        out.append(masked + ending)
    return "".join(out)


# databend-query's code defaults (reference §5.2; upstream src/query/config/src/config.rs): auto sync off, admin API
# on 127.0.0.1:8080 (`GET /v1/health`, src/query/service/src/servers/admin/admin_service.rs).
QUERY_DEFAULT_AUTO_SYNC_INTERVAL = 0.0
QUERY_DEFAULT_ADMIN_API_ADDRESS = "127.0.0.1:8080"


def read_query_config_facts(text: str, *, path: str = QUERY_CONFIG) -> tuple[float, list[str], str]:
    """Return ([meta] auto_sync_interval, [meta] endpoints, [query] admin_api_address) of a databend-query.toml,
    absent keys at the code defaults. Raises: ConfigEditError (bad TOML, no [meta], a non-number interval)."""
    doc = _parse(text, path)
    meta = _table(doc, "meta", path)
    raw = meta.get("auto_sync_interval", QUERY_DEFAULT_AUTO_SYNC_INTERVAL)
    try:
        interval = float(raw)
    except (TypeError, ValueError):
        raise ConfigEditError(path, f"[meta] auto_sync_interval {raw!r} is not a number of seconds") from None
    query = doc.get("query")
    admin = str(query.get("admin_api_address", QUERY_DEFAULT_ADMIN_API_ADDRESS)) if isinstance(query, Table) \
        else QUERY_DEFAULT_ADMIN_API_ADDRESS
    return interval, [str(v) for v in meta.get("endpoints", [])], admin


def unified_diff(old: str, new: str, label: str) -> str:
    """A unified diff of ``old`` -> ``new`` labelled with ``label`` ("" when they are equal).

    Secret values (``password``, ``raft_secret``, ``token``, … in any table) are shown as ``"***"``.
    """
    if old == new:
        return ""
    return "".join(
        difflib.unified_diff(
            mask_secrets(old).splitlines(keepends=True), mask_secrets(new).splitlines(keepends=True),
            fromfile=f"{label} (before)", tofile=f"{label} (after)",
        )
    ) or f"--- {label} (before)\n+++ {label} (after)\n(only secret values differ; not shown)\n"


__all__ = [
    "is_ip_literal",
    "MetaConfigFacts",
    "join_host_port",
    "normalize_host_port",
    "probe_address",
    "read_meta_config_facts",
    "read_query_config_facts",
    "split_host_port",
    "disarm_removed_node",
    "join_without_self",
    "mask_secrets",
    "read_join",
    "read_meta_endpoints",
    "read_node_id",
    "read_single",
    "set_join",
    "set_meta_endpoints",
    "set_node_identity",
    "unified_diff",
]
