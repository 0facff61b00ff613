"""Seed the stand-in "packages" into a lab host's overlay upper directory (the lab calls this before boot).

Layout written under `upper` (the same paths the official deb/tarball installs):
  usr/bin/databend-meta, usr/bin/databend-metactl, usr/bin/databend-query   launchers (#!/usr/bin/python3)
  usr/lib/databend-standin/standin/, usr/lib/databend-standin/pysyncobj/    the code (stdlib + pysyncobj)
  etc/databend/databend-meta.toml | databend-query.toml                     packaged config files
  etc/systemd/system/databend-meta.service | databend-query.service         units (Restart=no, User=databend)
  etc/default/databend-meta | databend-query, var/lib/databend/raft, var/log/databend
Ownership of var/lib/databend and var/log/databend is left to the host's preinstall step (the lab's boot.sh chowns
them to `databend`, as the package's preinstall.sh does).
"""
from __future__ import annotations

import json
import pathlib
import re
import shutil

from . import packaged

STANDIN_DIR = pathlib.Path(__file__).resolve().parent
LIB_DIR = "usr/lib/databend-standin"


def _pysyncobj_dir() -> pathlib.Path:
    """Return the directory of the pysyncobj package the test environment has installed."""
    import pysyncobj  # imported here: install.py runs in the venv, the hosts only get a copy

    return pathlib.Path(pysyncobj.__file__).resolve().parent


def _write(path: pathlib.Path, text: str, mode: int = 0o644) -> None:
    """Write `text` to `path` (parents created) and set `mode`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _install_code(upper: pathlib.Path) -> None:
    """Copy the stand-in package and pysyncobj to usr/lib/databend-standin/ (replacing an older copy)."""
    lib = upper / LIB_DIR
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "README.md")
    for src, name in ((STANDIN_DIR, "standin"), (_pysyncobj_dir(), "pysyncobj")):
        dst = lib / name
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(src, dst, ignore=ignore)
    for p in [lib, *lib.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)


def _install_launcher(upper: pathlib.Path, program: str, module: str) -> None:
    """Write usr/bin/<program>, a tiny python launcher for standin.<module>.main."""
    _write(upper / "usr/bin" / program, packaged.LAUNCHER.format(program=program, module=module), 0o755)


def install_meta_package(upper: pathlib.Path) -> None:
    """Seed the databend-meta package (binaries, packaged config, unit, dirs) into `upper`. Idempotent.

    The config is the PACKAGED one (id=0, single=true); write a node's own config with render_meta_config().
    """
    upper = pathlib.Path(upper)
    _install_code(upper)
    _install_launcher(upper, "databend-meta", "meta")
    _install_launcher(upper, "databend-metactl", "metactl")
    _write(upper / "etc/databend/databend-meta.toml", packaged.PACKAGED_META_TOML)
    _write(upper / "etc/systemd/system/databend-meta.service", packaged.META_UNIT)
    _write(upper / "etc/default/databend-meta", packaged.META_DEFAULT)
    for d in ("var/lib/databend/raft", "var/log/databend"):
        (upper / d).mkdir(parents=True, exist_ok=True)
    (upper / "var/lib/databend").chmod(0o750)


def install_query_package(upper: pathlib.Path, meta_grpc_endpoints: list[str]) -> None:
    """Seed the databend-query package into `upper`, its config pointing at `meta_grpc_endpoints`. Idempotent."""
    upper = pathlib.Path(upper)
    _install_code(upper)
    _install_launcher(upper, "databend-query", "query")
    _write(upper / "etc/databend/databend-query.toml", render_query_config(meta_grpc_endpoints))
    _write(upper / "etc/systemd/system/databend-query.service", packaged.QUERY_UNIT)
    _write(upper / "etc/default/databend-query", packaged.QUERY_DEFAULT)
    for d in ("var/lib/databend/data", "var/log/databend"):
        (upper / d).mkdir(parents=True, exist_ok=True)


def _toml_str_list(items: list[str]) -> str:
    """Render a TOML inline array of strings."""
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def _replace_line(text: str, pattern: str, line: str) -> str:
    """Replace the one line matching `pattern` (multiline regex) with `line`; fail loudly if it is missing."""
    new, n = re.subn(pattern, line.replace("\\", "\\\\"), text, count=1, flags=re.M)
    if n != 1:
        raise ValueError(f"packaged config has no line matching {pattern!r}")
    return new


def render_meta_config(node_id: int, host: str, single: bool, join: list[str], *,
                       raft_secret: str | None = None) -> str:
    """Return the packaged databend-meta.toml set up for one node that binds its own IP only ("like production").

    `id` = node_id; `admin_api_address` = host:28002, `grpc_api_address` = host:9191 (IP literals: databend-meta
    parses both as SocketAddr), `grpc_api_advertise_host`, `raft_listen_host` and `raft_advertise_host` = host;
    `single = true` when `single`, else that line commented out; `join = [...]` when `join` is non-empty (list only
    the OTHER nodes: with the listen host = own IP, databend-meta refuses a join list containing itself). With
    `raft_secret`: `raft_secret`, `raft_accepted_secrets = [it]` and `raft_secret_strict = true` are appended to
    [raft_config] (strict needs a non-empty accepted list, databend-meta raft-store config.rs `check`).
    Every other line of the packaged file (comments, blank lines, order) is kept.
    """
    import ipaddress
    if node_id < 0:
        raise ValueError(f"node_id must be >= 0, got {node_id}")
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        raise ValueError(f"host {host!r} is not an IPv4 address (databend-meta binds IP:port literals)") from None
    if raft_secret is not None and not re.fullmatch(r"[A-Za-z0-9_-]+", raft_secret):
        raise ValueError("raft_secret must be non-empty and use only [A-Za-z0-9_-]")
    text = packaged.PACKAGED_META_TOML
    text = _replace_line(text, r"^admin_api_address\s*=.*$", f'admin_api_address       = "{host}:28002"')
    text = _replace_line(text, r"^grpc_api_address\s*=.*$", f'grpc_api_address        = "{host}:9191"')
    text = _replace_line(text, r"^id\s*=.*$", f"id            = {node_id}")
    text = _replace_line(text, r"^grpc_api_advertise_host\s*=.*$", f'grpc_api_advertise_host = "{host}"')
    text = _replace_line(text, r"^raft_listen_host\s*=.*$", f'raft_listen_host = "{host}"')
    text = _replace_line(text, r"^raft_advertise_host\s*=.*$", f'raft_advertise_host = "{host}"')
    text = _replace_line(text, r"^single\s*=.*$", "single        = true" if single else "# single        = true")
    if join:
        text = _replace_line(text, r"^# join\s*=.*$", f"join          = {_toml_str_list(join)}")
    if raft_secret is not None:
        text += ("\n# Raft shared secret (databend-meta 260629+): sent on every raft RPC; strict mode refuses one\n"
                 "# without an accepted secret.\n"
                 f'raft_secret = "{raft_secret}"\n'
                 f'raft_accepted_secrets = ["{raft_secret}"]\n'
                 "raft_secret_strict = true\n")
    return text


def render_query_config(meta_grpc_endpoints: list[str]) -> str:
    """Return the packaged databend-query.toml with `[meta] endpoints` = meta_grpc_endpoints (comments kept)."""
    if not meta_grpc_endpoints:
        raise ValueError("meta_grpc_endpoints must list at least one meta gRPC address (host:9191)")
    return _replace_line(packaged.PACKAGED_QUERY_TOML, r"^endpoints\s*=.*$",
                         f"endpoints = {_toml_str_list(meta_grpc_endpoints)}")
