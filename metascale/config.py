"""Pure text -> text edits of databend-meta.toml and databend-query.toml (tomlkit).

Comments, key order and formatting outside the changed keys stay byte-for-byte identical. Existing arrays are
mutated in place (one-item-per-line layouts and per-item comments survive). ``single = true`` is turned off by
commenting the line out (``# single = true``), the packaged file's own instruction. Invalid TOML or a missing
table raises ``ConfigEditError`` and returns nothing, so nothing can be written.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from typing import Any

import tomlkit
from tomlkit.items import Array, Table

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


def _replace_host(address: str, host: str) -> str:
    """``127.10.0.1:9191`` -> ``<host>:9191`` unless the host part is a wildcard/loopback (then unchanged)."""
    head, sep, port = address.rpartition(":")
    if not sep or head in _WILDCARD_HOSTS:
        return address
    bracketed = f"[{host}]" if ":" in host else host
    return f"{bracketed}:{port}"


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

    Listen hosts stay 0.0.0.0 when they are; a listen host/address that names another host (copied from an
    existing node) is pointed at ``host``. Idempotent. Raises: ConfigEditError (bad TOML, no [raft_config],
    empty join, or a join list that contains ``host`` itself). ``*_port`` given: those ports are set too.
    """
    doc = _parse(text, path)
    raft = _table(doc, "raft_config", path)
    port = raft_port if raft_port is not None else raft.get("raft_api_port", 28004)
    own = {f"{host}:{port}", f"[{host}]:{port}"}
    if own & set(join):
        raise ConfigEditError(path, f"join {list(join)} contains the new node's own address {host}:{port}")
    text = set_join(text, join, path=path)
    doc = _parse(text, path)
    raft = _table(doc, "raft_config", path)
    _set_scalar(raft, "id", int(node_id))
    if raft_port is not None:
        _set_scalar(raft, "raft_api_port", int(raft_port))
    _set_scalar(raft, "raft_advertise_host", host)
    listen = raft.get("raft_listen_host")
    if listen is not None and str(listen) not in _WILDCARD_HOSTS:
        _set_scalar(raft, "raft_listen_host", host)
    _set_scalar(doc, "grpc_api_advertise_host", host)
    for key, new_port in (("grpc_api_address", grpc_port), ("admin_api_address", admin_port)):
        value = doc.get(key)
        if isinstance(value, str):
            address = _replace_host(str(value), host)
            if new_port is not None:
                address = f"{address.rpartition(':')[0]}:{new_port}"
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
    own = f"{listen}:{raft.get('raft_api_port', 28004)}"
    return [a for a in addresses if a != own]


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


def unified_diff(old: str, new: str, label: str) -> str:
    """A unified diff of ``old`` -> ``new`` labelled with ``label`` ("" when they are equal)."""
    return "".join(
        difflib.unified_diff(
            old.splitlines(keepends=True), new.splitlines(keepends=True), fromfile=f"{label} (before)",
            tofile=f"{label} (after)",
        )
    )


__all__ = [
    "disarm_removed_node",
    "join_without_self",
    "read_join",
    "read_meta_endpoints",
    "read_node_id",
    "read_single",
    "set_join",
    "set_meta_endpoints",
    "set_node_identity",
    "unified_diff",
]
