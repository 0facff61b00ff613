"""The inventory: a typed, validated description of one Databend meta cluster and how to reach its hosts.

Loaded from TOML (format in docs/ARCHITECTURE.md). Every validation failure becomes one ``InventoryError`` whose
message names the bad key, the bad value and what is valid.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import tomlkit
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from metascale.errors import InventoryError

DEFAULT_RAFT_PORT = 28004
DEFAULT_GRPC_PORT = 9191
DEFAULT_ADMIN_PORT = 28002

_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_LABEL_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_UNIT_RE = re.compile(r"^[A-Za-z0-9@_.:-]+$")
_SSH_USER_RE = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")


def validate_host(value: str) -> str:
    """Return ``value`` if it is a DNS name (labels of ``[A-Za-z0-9-]`` joined by ``.``) or an IP literal without a
    zone id; raise ValueError naming it otherwise.

    So a host never carries a character a shell, ssh or a ``proxy_command`` behind a bastion could interpret
    (``ipaddress`` alone would accept ``fe80::1%<anything>``).
    """
    if not isinstance(value, str) or not value:
        raise ValueError(f"{value!r} is not a host: expected a DNS name or an IP address")
    if "%" in value:
        raise ValueError(f"{value!r} is not a host: an IPv6 zone id (%...) is not supported (valid: an IP literal "
                         "without a zone id, or a DNS name of [A-Za-z0-9.-])")
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    labels = value.rstrip(".").split(".")
    if len(value) > 253 or not all(_LABEL_RE.fullmatch(label) for label in labels) or labels[-1].isdigit():
        raise ValueError(
            f"{value!r} is not a hostname or IP literal (valid: a DNS name of letters, digits, '-' and '.' labels, "
            "or an IPv4/IPv6 address without a zone id)"
        )
    return value


def _check_port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise ValueError(f"port {value} is out of range (valid: 1-65535)")
    return value


def _check_abs_path(value: str) -> str:
    if not value.startswith("/") or any(ch in value for ch in "\n\r\0"):
        raise ValueError(f"{value!r} is not an absolute path (valid: starts with '/', one line)")
    return value


_PROXY_TOKEN_RE = re.compile(r"%(.?)")
PROXY_TOKENS = {"h": "host", "p": "port", "r": "user", "%": "a literal %"}


def check_proxy_command(value: str | None) -> str | None:
    """Return ``value`` if it is a one-line command using only the tokens %h %p %r %%; raise ValueError otherwise.

    The values put in for the tokens are validated (host: ``validate_host``, port: a number, user: a user name), so
    nothing from the inventory can reach a shell even when the command hands %h to one (``ssh bastion nc %h %p``).
    """
    if value is None:
        return None
    if not value.strip() or any(ch in value for ch in "\n\r\0"):
        raise ValueError(f"proxy_command {value!r} must be one non-blank line")
    for token in _PROXY_TOKEN_RE.findall(value):
        if token not in PROXY_TOKENS:
            raise ValueError(f"proxy_command {value!r} uses %{token}, which metascale does not expand "
                             "(valid tokens: %h host, %p port, %r user, %% a literal %)")
    return value


def check_ssh_user(value: str) -> str:
    """Return ``value`` if it is a valid login name; raise ValueError naming it otherwise."""
    if not _SSH_USER_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid user name (valid: [a-z_][a-z0-9_.-]*)")
    return value


class SshOverride(BaseModel):
    """Per-node SSH settings that replace the cluster-wide ones for that node only."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    user: str | None = None
    port: int | None = None
    proxy_command: str | None = None

    @field_validator("port")
    @classmethod
    def _port(cls, value: int | None) -> int | None:
        return None if value is None else _check_port(value)

    @field_validator("user")
    @classmethod
    def _user(cls, value: str | None) -> str | None:
        return None if value is None else check_ssh_user(value)

    @field_validator("proxy_command")
    @classmethod
    def _proxy(cls, value: str | None) -> str | None:
        return check_proxy_command(value)


class SshSettings(BaseModel):
    """How to reach every host: user, key (file or the name of a Prefect Secret), known_hosts, timeouts, sudo."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    user: str = "ops"
    private_key_file: str | None = None
    private_key_secret: str | None = Field(
        default=None, description="name of a Prefect Secret block holding the private key text"
    )
    known_hosts_file: str
    proxy_command: str | None = None
    port: int = 22
    connect_timeout_s: float = Field(default=10, gt=0, le=600)
    command_timeout_s: float = Field(default=30, gt=0, le=3600)
    sudo: bool = True

    @field_validator("port")
    @classmethod
    def _port(cls, value: int) -> int:
        return _check_port(value)

    @field_validator("user")
    @classmethod
    def _user(cls, value: str) -> str:
        return check_ssh_user(value)

    @field_validator("proxy_command")
    @classmethod
    def _proxy(cls, value: str | None) -> str | None:
        return check_proxy_command(value)

    @model_validator(mode="after")
    def _one_key_source(self) -> SshSettings:
        if (self.private_key_file is None) == (self.private_key_secret is None):
            raise ValueError("set exactly one of private_key_file or private_key_secret")
        return self


class Paths(BaseModel):
    """Files and systemd units on the hosts; defaults are the official package's layout."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    meta_config: str = "/etc/databend/databend-meta.toml"
    query_config: str = "/etc/databend/databend-query.toml"
    meta_service: str = "databend-meta"
    query_service: str = "databend-query"
    raft_dir: str = Field(default="/var/lib/databend/raft", description="only for a new host without a meta config: "
                          "every node's raft_dir is read from its own config (metascale.nodeinfo.read_node_config)")
    log_dir: str = Field(default="/var/log/databend", description="ignored (the log dir is read from each node's "
                         "own config); accepted so older inventory files load")

    @field_validator("meta_config", "query_config", "raft_dir", "log_dir")
    @classmethod
    def _abs(cls, value: str) -> str:
        return _check_abs_path(value)

    @field_validator("meta_service", "query_service")
    @classmethod
    def _unit(cls, value: str) -> str:
        if not _UNIT_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not a systemd unit name (valid: letters, digits, '@_.:-')")
        return value


class MetaNode(BaseModel):
    """One databend-meta node: raft id, host (SSH host and advertise host) and its three ports."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_by_name=True, validate_by_alias=True)

    node_id: int = Field(alias="id", ge=0, description="[raft_config].id")
    host: str = Field(description="SSH host; also the raft and gRPC advertise host")
    raft_port: int = DEFAULT_RAFT_PORT
    grpc_port: int = DEFAULT_GRPC_PORT
    admin_port: int = DEFAULT_ADMIN_PORT
    ssh: SshOverride | None = None

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return validate_host(value)

    @field_validator("raft_port", "grpc_port", "admin_port")
    @classmethod
    def _port(cls, value: int) -> int:
        return _check_port(value)

    @property
    def name(self) -> str:
        """A display name: ``meta-<id>``."""
        return f"meta-{self.node_id}"

    @property
    def raft_addr(self) -> str:
        """``host:raft_port``: what `join` and `--leave-via` use."""
        return f"{_bracket(self.host)}:{self.raft_port}"

    @property
    def grpc_addr(self) -> str:
        """``host:grpc_port``: what query nodes' `[meta] endpoints` use."""
        return f"{_bracket(self.host)}:{self.grpc_port}"

    @property
    def admin_addr(self) -> str:
        """``127.0.0.1:admin_port``: the admin API, only ever reached on the node itself."""
        return f"127.0.0.1:{self.admin_port}"


class RemovedNode(BaseModel):
    """A meta node that metascale removed from the cluster: kept so a rerun knows it is done, and so its id is
    never handed out again (as etcd never reuses a member id)."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_by_name=True, validate_by_alias=True)

    node_id: int = Field(alias="id", ge=0)
    host: str
    removed_at: str = Field(default="", description="UTC time of the removal, e.g. 20261126T142233")

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return validate_host(value)


class SpareHost(BaseModel):
    """A host in the cluster's spare pool (``[[spare]]``): databend-meta installed, not a member. `replace-node`
    takes the first free one when no host is named, and records here which node it replaced."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str
    raft_port: int = DEFAULT_RAFT_PORT
    grpc_port: int = DEFAULT_GRPC_PORT
    admin_port: int = DEFAULT_ADMIN_PORT
    ssh: SshOverride | None = None
    replaced: int | None = Field(default=None, ge=0, description="set by replace-node: the id of the node this "
                                                                 "spare replaced (the spare is used)")
    used_at: str = Field(default="", description="UTC time the spare was used, e.g. 20261202T142233Z")

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return validate_host(value)

    @field_validator("raft_port", "grpc_port", "admin_port")
    @classmethod
    def _port(cls, value: int) -> int:
        return _check_port(value)

    @property
    def used(self) -> bool:
        """True once replace-node made this spare a meta node."""
        return self.replaced is not None


class QueryNode(BaseModel):
    """One databend-query node whose `[meta] endpoints` follow the meta cluster."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str
    ssh: SshOverride | None = None

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return validate_host(value)


class SshTarget(BaseModel):
    """The resolved SSH parameters for one host (cluster settings with the node's overrides applied)."""

    model_config = ConfigDict(frozen=True)

    host: str
    port: int
    user: str
    proxy_command: str | None

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return validate_host(value)  # also a host read from the cluster's own status (it reaches %h)

    @field_validator("port")
    @classmethod
    def _port(cls, value: int) -> int:
        return _check_port(value)

    @field_validator("user")
    @classmethod
    def _user(cls, value: str) -> str:
        return check_ssh_user(value)

    @field_validator("proxy_command")
    @classmethod
    def _proxy(cls, value: str | None) -> str | None:
        return check_proxy_command(value)


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class Inventory(BaseModel):
    """One cluster: name, SSH settings, paths, meta nodes and query nodes. Immutable; edits return copies."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_by_name=True, validate_by_alias=True)

    name: str
    ssh: SshSettings
    paths: Paths = Paths()
    meta_nodes: list[MetaNode] = Field(alias="meta", min_length=1)
    query_nodes: list[QueryNode] = Field(default_factory=list, alias="query")
    removed_nodes: list[RemovedNode] = Field(default_factory=list, alias="removed")
    spares: list[SpareHost] = Field(default_factory=list, alias="spare")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME_RE.fullmatch(value):
            raise ValueError(f"cluster name {value!r} is invalid (valid: 1-63 chars of [a-z0-9-], not starting "
                             "or ending with '-')")
        return value

    @model_validator(mode="after")
    def _unique(self) -> Inventory:
        ids = [n.node_id for n in self.meta_nodes]
        dup_ids = sorted({i for i in ids if ids.count(i) > 1})
        if dup_ids:
            raise ValueError(f"meta node id {dup_ids[0]} appears more than once (ids must be unique)")
        addresses: dict[str, str] = {}
        for node in self.meta_nodes:
            for kind, port in (("raft", node.raft_port), ("grpc", node.grpc_port), ("admin", node.admin_port)):
                key = f"{_bracket(node.host)}:{port}"
                if key in addresses:
                    raise ValueError(
                        f"address {key} is used twice ({addresses[key]} and meta-{node.node_id} {kind}); "
                        "every node's host:port must be unique"
                    )
                addresses[key] = f"meta-{node.node_id} {kind}"
        query_hosts = [q.host for q in self.query_nodes]
        dup_q = sorted({h for h in query_hosts if query_hosts.count(h) > 1})
        if dup_q:
            raise ValueError(f"query host {dup_q[0]} appears more than once (hosts must be unique)")
        spare_hosts = [s.host for s in self.spares]
        dup_s = sorted({h for h in spare_hosts if spare_hosts.count(h) > 1})
        if dup_s:
            raise ValueError(f"spare host {dup_s[0]} appears more than once (hosts must be unique)")
        return self

    # ---- queries -------------------------------------------------------------------------------------------
    def meta_node(self, node_id: int) -> MetaNode:
        """Return the meta node with ``node_id``; raise InventoryError naming the known ids otherwise."""
        for node in self.meta_nodes:
            if node.node_id == node_id:
                return node
        known = ", ".join(str(n.node_id) for n in self.meta_nodes)
        raise InventoryError(f"no meta node with id {node_id} (known ids: {known})", f"inventory {self.name}")

    def meta_node_by_host(self, host: str) -> MetaNode | None:
        """Return the (first) meta node on ``host``, or None."""
        return next((n for n in self.meta_nodes if n.host == host), None)

    @property
    def meta_ids(self) -> list[int]:
        """Sorted ids of all meta nodes."""
        return sorted(n.node_id for n in self.meta_nodes)

    def join_addresses(self) -> list[str]:
        """Raft addresses of every meta node, in inventory order (the `join` list)."""
        return [n.raft_addr for n in self.meta_nodes]

    def meta_endpoints(self) -> list[str]:
        """gRPC addresses of every meta node, in inventory order (query nodes' `[meta] endpoints`)."""
        return [n.grpc_addr for n in self.meta_nodes]

    def next_free_id(self) -> int:
        """The smallest id above every existing and every removed meta node id (at least 1): ids are not reused."""
        return max([0, *(n.node_id for n in self.meta_nodes), *(r.node_id for r in self.removed_nodes)]) + 1

    def removed_node(self, node_id: int) -> RemovedNode | None:
        """Return the record of meta node ``node_id`` if metascale removed it earlier, else None."""
        return next((r for r in reversed(self.removed_nodes) if r.node_id == node_id), None)

    def free_spares(self) -> list[SpareHost]:
        """The spares not used yet and not already a meta node of the inventory, in pool order."""
        meta_hosts = {n.host for n in self.meta_nodes}
        return [s for s in self.spares if not s.used and s.host not in meta_hosts]

    def spare(self, host: str) -> SpareHost | None:
        """Return the spare-pool entry for ``host``, or None."""
        return next((s for s in self.spares if s.host == host), None)

    def ssh_target(self, node: MetaNode | QueryNode | str) -> SshTarget:
        """SSH parameters for ``node`` (a node or a bare host): cluster settings with the node's overrides."""
        host = node if isinstance(node, str) else node.host
        override = None if isinstance(node, str) else node.ssh
        if isinstance(node, str):
            found = (self.meta_node_by_host(host) or next((q for q in self.query_nodes if q.host == host), None)
                     or self.spare(host))
            override = found.ssh if found else None
        return SshTarget(
            host=host,
            port=(override.port if override and override.port else self.ssh.port),
            user=(override.user if override and override.user else self.ssh.user),
            proxy_command=(override.proxy_command if override and override.proxy_command else self.ssh.proxy_command),
        )

    # ---- edits (return validated copies) ---------------------------------------------------------------------
    def with_meta_node(self, node: MetaNode) -> Inventory:
        """Return a copy with ``node`` appended. Raises InventoryError on a duplicate id or address."""
        return _validated(self._as_data(meta_nodes=[*self.meta_nodes, node]), f"inventory {self.name}")

    def without_meta_node(self, node_id: int, removed_at: str = "") -> Inventory:
        """Return a copy without meta node ``node_id``, recorded under ``[[removed]]``. Raises InventoryError if
        it is unknown or the last one."""
        node = self.meta_node(node_id)
        rest = [n for n in self.meta_nodes if n.node_id != node_id]
        removed = [*self.removed_nodes, RemovedNode(node_id=node_id, host=node.host, removed_at=removed_at)]
        return _validated(self._as_data(meta_nodes=rest, removed_nodes=removed), f"inventory {self.name}")

    def with_removed_record(self, node_id: int, host: str, removed_at: str = "") -> Inventory:
        """Return a copy that records ``node_id`` under ``[[removed]]`` (a member the inventory never listed, e.g.
        a half-added node, removed by scale-down): its id is never handed out again. No-op if already recorded."""
        if node_id in self.meta_ids:
            return self.without_meta_node(node_id, removed_at)
        if self.removed_node(node_id) is not None:
            return self
        removed = [*self.removed_nodes, RemovedNode(node_id=node_id, host=host, removed_at=removed_at)]
        return _validated(self._as_data(removed_nodes=removed), f"inventory {self.name}")

    def with_spare_used(self, host: str, replaced: int, used_at: str = "") -> Inventory:
        """Return a copy whose spare ``host`` is recorded as used to replace meta-``replaced``; no-op when ``host``
        is not in the pool or is already recorded so."""
        spare = self.spare(host)
        if spare is None or spare.replaced == replaced:
            return self
        spares = [s.model_copy(update={"replaced": replaced, "used_at": used_at}) if s.host == host else s
                  for s in self.spares]
        return _validated(self._as_data(spares=spares), f"inventory {self.name}")

    def _as_data(self, **replace: Any) -> dict[str, Any]:
        data = self.model_dump(by_alias=True, exclude_none=True)
        for field, alias in (("meta_nodes", "meta"), ("removed_nodes", "removed"), ("spares", "spare")):
            if field in replace:
                data[alias] = [n.model_dump(by_alias=True, exclude_none=True) for n in replace[field]]
        return data

    def to_toml(self) -> str:
        """Serialize to inventory TOML (defaults written out, None values omitted); parse_inventory reads it back."""
        data = self.model_dump(by_alias=True, exclude_none=True)
        doc = tomlkit.document()
        doc.add("name", data["name"])
        doc.add("ssh", data["ssh"])
        doc.add("paths", data["paths"])
        meta = tomlkit.aot()
        for node in data["meta"]:
            meta.append(_table_with_inline_ssh(node))
        doc.add("meta", meta)
        if data["query"]:
            query = tomlkit.aot()
            for q in data["query"]:
                query.append(_table_with_inline_ssh(q))
            doc.add("query", query)
        if data["removed"]:
            removed = tomlkit.aot()
            for r in data["removed"]:
                removed.append(_table_with_inline_ssh(r))
            doc.add("removed", removed)
        if data["spare"]:
            spare = tomlkit.aot()
            for entry in data["spare"]:
                spare.append(_table_with_inline_ssh({k: v for k, v in entry.items() if k != "used_at" or v}))
            doc.add("spare", spare)
        return tomlkit.dumps(doc)


def _table_with_inline_ssh(node: dict[str, Any]) -> Any:
    """A TOML table for one node; its `ssh` override (if any) as an inline table, as the docs show it."""
    table = tomlkit.table()
    for key, value in node.items():
        if key == "ssh":
            inline = tomlkit.inline_table()
            inline.update(value)
            table.add(key, inline)
        else:
            table.add(key, value)
    return table


def _format_validation_error(error: ValidationError) -> str:
    """One line per problem, joined with '; ': ``meta[1].host: 'a;b' is not a hostname ...``."""
    parts = []
    for item in error.errors():
        loc = ""
        for piece in item["loc"]:
            loc += f"[{piece}]" if isinstance(piece, int) else (f".{piece}" if loc else str(piece))
        msg = str(item["msg"]).removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            msg = f"unknown key (value {item.get('input')!r})"
        elif item["type"] == "missing":
            msg = "required key is missing"
        elif "input" in item and item["type"] not in ("value_error",) and not isinstance(item["input"], dict):
            msg = f"{msg} (got {item['input']!r})"
        parts.append(f"{loc or '<top>'}: {msg}")
    return "; ".join(parts)


def _validated(data: dict[str, Any], source: str) -> Inventory:
    try:
        return Inventory.model_validate(data)
    except ValidationError as exc:
        raise InventoryError(_format_validation_error(exc), source) from None


def parse_inventory(text: str, source: str = "<text>", base_dir: Path | None = None) -> Inventory:
    """Parse inventory TOML ``text``. Relative key/known_hosts paths resolve against ``base_dir``.

    Raises: InventoryError (a ValueError) with a one-line message naming the bad key and value.
    """
    try:
        data = tomlkit.parse(text).unwrap()
    except Exception as exc:  # tomlkit raises several ParseError subclasses
        raise InventoryError(f"invalid TOML: {exc}", source) from None
    ssh = data.get("ssh")
    if base_dir is not None and isinstance(ssh, dict):
        for key in ("private_key_file", "known_hosts_file"):
            value = ssh.get(key)
            if isinstance(value, str) and value and not value.startswith("/"):
                ssh[key] = str((base_dir / value).resolve())
    return _validated(data, source)


def load_inventory(path: str | Path) -> Inventory:
    """Read and validate the inventory file at ``path``.

    Raises: InventoryError when the file is missing, unreadable, not TOML or invalid.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise InventoryError(f"cannot read inventory: {exc.strerror}", str(file)) from None
    return parse_inventory(text, source=str(file), base_dir=file.parent)


def write_inventory(inventory: Inventory, path: str | Path) -> str | None:
    """Write ``inventory`` to the TOML file at ``path``, atomically, after a timestamped backup beside it.

    Returns the backup path, or None when the file already describes ``inventory`` (nothing is written).
    Side effects: ``<path>.<UTC ts>.bak`` and a rename in place (same mode). Raises: InventoryError, OSError.
    """
    file = Path(path)
    if load_inventory(file) == inventory:
        return None
    backup = file.with_name(f"{file.name}.{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}.bak")
    backup.write_bytes(file.read_bytes())
    fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(inventory.to_toml())
        os.chmod(tmp, file.stat().st_mode & 0o777)
        os.replace(tmp, file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return str(backup)


__all__ = [
    "InventoryError",
    "DEFAULT_ADMIN_PORT",
    "DEFAULT_GRPC_PORT",
    "DEFAULT_RAFT_PORT",
    "Inventory",
    "MetaNode",
    "Paths",
    "QueryNode",
    "RemovedNode",
    "SshOverride",
    "SshSettings",
    "SshTarget",
    "SpareHost",
    "load_inventory",
    "parse_inventory",
    "check_proxy_command",
    "check_ssh_user",
    "validate_host",
    "write_inventory",
]
