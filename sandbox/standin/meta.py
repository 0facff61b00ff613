"""`databend-meta`: the server (`--config-file`), leave (`--leave-id/--leave-via`) and `--cmd kvapi::*` modes."""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from typing import Any

from . import raft_secret, version, wire
from .config import (CRATE_VERSION, DATA_VERSION_DEBUG, BINARY_VERSION, ConfigError, MetaConfig, build_parser,
                     from_args, parse_socket_addr)
from .logs import MetaLog, eprint


# ----- leave ---------------------------------------------------------------------------------------------------------
def run_leave(cfg: MetaConfig, log: MetaLog) -> int:
    """Forward Leave{leave_id} to the first leave_via address that answers; silent exit 0 on success.

    The request carries this process's `raft_secret` (from --config-file or --raft-secret), as upstream's
    `MetaNode::leave_cluster` connects with `connect_raft_service` (databend-meta raft_secret.rs).
    """
    node_id, via = cfg.leave_id, cfg.leave_via
    assert node_id is not None
    headers = raft_secret.outgoing_headers(cfg)
    errors = []
    log.info(f"leave cluster: leave_id={node_id} leave_via={via}")
    for addr in via:
        try:
            reply = wire.call_json(addr, "POST", "/v1/raft/forward", {"op": "leave", "node_id": node_id},
                                   headers=headers)
        except wire.Unreachable as e:
            errors.append(f"tonic::transport::error::Error: transport error: {e} while: leave {node_id} via: {addr}")
            continue
        except (OSError, RuntimeError, ValueError) as e:
            errors.append(f"{raft_secret.rpc_error_text(e)} while: leave {node_id} via: {addr}")
            continue
        if reply.get("ok"):
            log.info(f"node {node_id} has left cluster")
            return 0
        err = json.dumps({"action": "leave", "msg": reply.get("error", "")})
        errors.append(f"{err} while: leave {node_id} via: {addr}")
    quoted = ", ".join(json.dumps(a) for a in via)
    msg = f"fail to leave {node_id} cluster via [{quoted}], caused by errors: {', '.join(errors)}"
    log.warn(msg)
    eprint(f"Error: {msg}")
    return 1


# ----- kvapi ---------------------------------------------------------------------------------------------------------
def run_kvapi(cmd: str, addr: str, keys: list[str], value: str, prefix: str) -> int:
    """`--cmd kvapi::upsert|get|list` against the node's gRPC API; prints the JSON result."""
    try:
        if cmd == "kvapi::upsert":
            if len(keys) != 1:
                eprint("Error: kvapi::upsert needs exactly one --key")
                return 1
            result = wire.call_json(addr, "POST", "/v1/grpc/kv/upsert", {"key": keys[0], "value": value})
        elif cmd == "kvapi::get":
            result = [wire.call_json(addr, "POST", "/v1/grpc/kv/get", {"key": k}) for k in keys]
            result = result[0] if len(result) == 1 else result
        elif cmd == "kvapi::list":
            result = wire.call_json(addr, "POST", "/v1/grpc/kv/list", {"prefix": prefix})
        else:
            eprint(f"Error: unknown cmd {cmd!r}; valid: ver, kvapi::upsert, kvapi::get, kvapi::list")
            return 1
    except wire.Unreachable as e:
        eprint(f"Error: ConnectionError: while creating rpc channel source: ChannelError: {e}: transport error")
        return 1
    except (OSError, RuntimeError) as e:
        eprint(f"Error: {e}")
        return 1
    print(json.dumps(result))
    return 0


# ----- server --------------------------------------------------------------------------------------------------------
def _routes(node: Any, cfg: MetaConfig) -> tuple[dict, dict, dict, dict]:
    """(admin GET, grpc GET, grpc POST, raft POST/GET) route tables."""
    from .node import node_json, OpError

    def admin_transfer(q: dict[str, str], _b: Any) -> tuple[int, str, bytes]:
        to = int(q["to"]) if q.get("to", "").isdigit() else None
        status, body = node.trigger_transfer_leader(to)
        return wire.json_reply(body) if status == 200 else wire.text_reply(str(body), status)

    def features_set(q: dict[str, str], _b: Any) -> tuple[int, str, bytes]:
        if "feature" not in q or "enable" not in q:
            return wire.text_reply("'feature' and 'enable' query parameters are required", 400)
        if node.view.state != "Leader":
            cur = node.view.id_of(node.view.leader_internal)
            return wire.text_reply(f"This node is not leader, cannot set feature; id={node.node_id}; "
                                   f"current_leader={'Some(%d)' % cur if cur is not None else 'None'}", 404)
        return wire.json_reply({"features": ["dummy", "dummy_feature2"], "enabled": []})

    admin = {
        "/v1/health": lambda q, b: wire.json_reply({"status": "pass"}),
        "/v1/config": lambda q, b: wire.text_reply(repr(cfg)),
        "/v1/cluster/nodes": lambda q, b: wire.json_reply(
            [node_json(i, r) for i, r in sorted(node.view.nodes.items())]),
        "/v1/cluster/status": lambda q, b: wire.json_reply(versioned_status(node, grpc=False)),
        "/v1/ctrl/trigger_transfer_leader": admin_transfer,
        "/v1/ctrl/trigger_snapshot": lambda q, b: wire.json_reply(None),
        "/v1/features/list": lambda q, b: wire.json_reply({"features": ["dummy", "dummy_feature2"], "enabled": []}),
        "/v1/features/set": features_set,
        "/v1/metrics": lambda q, b: (200, "text/plain; version=0.0.4; charset=utf-8", node.metrics().encode()),
    }

    def kv_upsert(q: dict[str, str], b: Any) -> tuple[int, str, bytes]:
        if node.so is None:
            return wire.text_reply("meta node is not started", 503)
        try:
            return wire.json_reply(node.replicate(node.sm.upsert, str(b["key"]), str(b["value"]), timeout=10.0))
        except OpError as e:
            return wire.text_reply(str(e), 503)

    grpc_get = {
        "/v1/grpc/handshake": lambda q, b: wire.json_reply({"protocol_version": 1, "server": CRATE_VERSION}),
        "/v1/grpc/status": lambda q, b: wire.json_reply(versioned_status(node, grpc=True)),
        "/v1/grpc/member_list": lambda q, b: wire.json_reply(
            {"data": [r.get("grpc_api_advertise_address") or "" for _, r in sorted(node.view.nodes.items())]}),
    }
    def kv_transaction(q: dict[str, str], b: Any) -> tuple[int, str, bytes]:
        """Many puts as one raft log entry, like upstream's MetaService/Transaction with Put ops (the lab's preload)."""
        if node.so is None:
            return wire.text_reply("meta node is not started", 503)
        try:
            puts = [(str(k), str(v)) for k, v in b["puts"]]
            return wire.json_reply(node.replicate(node.sm.upsert_many, puts, timeout=30.0))
        except OpError as e:
            return wire.text_reply(str(e), 503)

    grpc_post = {
        "/v1/grpc/kv/transaction": kv_transaction,
        "/v1/grpc/kv/upsert": kv_upsert,
        "/v1/grpc/kv/get": lambda q, b: wire.json_reply(node.sm.kv.get(str(b["key"]))),
        "/v1/grpc/kv/list": lambda q, b: wire.json_reply(
            [[k, v] for k, v in sorted(node.sm.kv.items()) if k.startswith(str(b.get("prefix", "")))]),
    }

    def members(q: dict[str, str], b: Any) -> tuple[int, str, bytes]:
        view = node.view
        return wire.json_reply({"members": sorted(view.members), "leader": view.leader_internal,
                                "initialized": bool(node.persisted.get("initialized"))})

    def left(q: dict[str, str], b: Any) -> tuple[int, str, bytes]:
        node.handle_left(int(b["node_id"]))
        return wire.json_reply({"ok": True})

    raft_get = {"/v1/raft/members": members}
    raft_post = {"/v1/raft/forward": lambda q, b: wire.json_reply(node.handle_forward(b)), "/v1/raft/left": left}
    return admin, grpc_get, grpc_post, {"GET": raft_get, "POST": raft_post}


def grpc_tls_files(cfg: MetaConfig) -> tuple[str, str] | None:
    """(cert, key) when both `grpc_tls_server_cert` and `grpc_tls_server_key` are set, else None: the gRPC API then
    serves TLS only (databend src/meta/cli-config/src/lib.rs -> TlsConfig; databend-meta
    crates/server/service/src/api/grpc_server.rs loads the identity when the TLS config is enabled)."""
    if cfg.grpc_tls_server_cert and cfg.grpc_tls_server_key:
        return cfg.grpc_tls_server_cert, cfg.grpc_tls_server_key
    return None


def versioned_status(node: Any, grpc: bool) -> dict[str, Any]:
    """node.status() as the installed release reports it (version.py): BinaryVersion (gRPC: the crate version
    after v1.2.880, the commit version before; HTTP: the commit version), DataVersion, and, for the stand-in's
    metactl only, `standin_version` (the server formats LogIds, `1-1-200` before v1.2.583)."""
    v = version.installed()
    st = node.status(version.grpc_binary_version(v) if grpc else version.commit_version(v))
    st["data_version"] = version.data_version(v)
    if grpc:
        st["standin_version"] = ".".join(map(str, v))
    return st


def _install_signal_handlers(node: Any, log: MetaLog) -> None:
    """SIGTERM/SIGINT/SIGHUP: print `Databend Metasrv shutdown`, stop, exit 0 (ctrlc `termination` semantics)."""
    def handler(signum: int, _frame: Any) -> None:
        log.banner("Databend Metasrv shutdown")
        try:
            node.shutdown()
        finally:
            sys.stdout.flush()
            os._exit(0)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, handler)


def _banner(cfg: MetaConfig, node: Any, log: MetaLog) -> None:
    status = "single" if cfg.single else "join " + json.dumps(cfg.join)
    ver = version.installed()
    data_debug = version.DATA_VERSIONS[version.data_version(ver)]
    for line in [
        "Databend Metasrv", f"Version: {version.commit_version(ver)}", f"Working DataVersion: {data_debug}",
        "Raft Feature set:", "    Server Provide: { append:v0, install_snapshot:v1, install_snapshot:v3, vote:v0 }",
        "    Client Require: { append:v0, install_snapshot:v3, vote:v0 }", "",
        f"Disk  Data: {data_debug}; Upgrading: None", f"      Dir: {cfg.raft_dir}", "",
        f"Log   File: enabled={cfg.log_file_on}, level={cfg.log_level}, dir={cfg.log_dir}, format=text",
        "      Stderr: enabled=false", f"Raft  Id: {node.node_id}; Cluster: {cfg.cluster_name}",
        f"      Dir: {cfg.raft_dir}", f"      Status: {status}", "",
        f"HTTP API listen at: {cfg.admin_api_address}",
        f"gRPC API listen at: {cfg.grpc_api_address} advertise: {cfg.grpc_advertise_addr or '-'}",
        f"Raft API listen at: {cfg.raft_listen_addr} advertise: {cfg.raft_advertise_addr}",
        "Raft API max message: 32MB", "",
    ]:
        log.banner(line)


def _join(node: Any, cfg: MetaConfig, log: MetaLog) -> str | None:
    """Join via the config's addresses (3 attempts each); return None on success or the error text."""
    targets = [a for a in cfg.join if a != cfg.raft_advertise_addr]
    headers = raft_secret.outgoing_headers(cfg)
    errors: list[str] = []
    for addr in targets:
        for attempt in range(3):
            try:
                info = wire.call_json(addr, "GET", "/v1/raft/members", timeout=10.0, headers=headers)
                if node.so is None:
                    node.quiet = True
                    node.start_catchup()      # behind from the first replicated entry until the leader says
                    node.start_raft(list(info["members"]))
                reply = wire.call_json(addr, "POST", "/v1/raft/forward", {
                    "op": "join", "node_id": node.node_id, "raft_internal": cfg.internal_addr,
                    "endpoint": {"addr": cfg.raft_advertise_host, "port": cfg.raft_api_port},
                    "grpc_api_advertise_address": cfg.grpc_advertise_addr}, timeout=60.0, headers=headers)
            except RuntimeError as e:
                if not str(e).startswith("401 "):
                    log.warn(f"join via {addr} attempt {attempt + 1}: {e}")
                    time.sleep(1.0)
                    continue
                # refused by a strict node (raft secret missing/unaccepted): retrying cannot help
                errors.append(f"{raft_secret.rpc_error_text(e)} while: join via {addr}")
                log.warn(f"join via {addr} attempt {attempt + 1}: {raft_secret.rpc_error_text(e)}")
                break
            except (OSError, ValueError) as e:
                log.warn(f"join via {addr} attempt {attempt + 1}: {e}")
                time.sleep(1.0)
                continue
            if reply.get("ok"):
                node.persisted.update(initialized=True, left=False, partners=list(info["members"]))
                node.save()
                node.end_catchup_in(float(reply.get("catchup_s") or 0.0))
                node.quiet = False
                log.info(f"joined cluster via {addr}")
                return None
            log.warn(f"join via {addr} attempt {attempt + 1}: {reply.get('error')}")
            if not reply.get("retryable"):
                errors.append(f"{reply.get('error')} while: join via {addr}")
                break
            time.sleep(1.0)
    node.end_catchup_in(None)
    return f"fail to join node-{node.node_id} to cluster via {json.dumps(targets)}, errors: {', '.join(errors)}"


def _register(node: Any, cfg: MetaConfig, log: MetaLog) -> str | None:
    """Wait for a leader, then (re)write this node's record; return None or the error text."""
    from .node import OpError
    timeout_s = cfg.wait_leader_timeout_ms / 1000
    log.banner(f"Wait for {timeout_s:.0f}s for active leader...")
    deadline = time.monotonic() + timeout_s
    while True:
        leader = node.view.leader_internal
        if leader is not None and node.view.id_of(leader) is not None:
            break
        if time.monotonic() >= deadline:
            return (f"timeout after {timeout_s:.0f}s when receive an active leader latest: "
                    f"state={node.view.state} term={node.view.term}")
        time.sleep(0.05)
    log.banner(f"Leader Id: {node.view.id_of(node.view.leader_internal)}")
    rec = node.own_record()
    log.banner(f"Register this node: {{id={node.node_id} raft={cfg.raft_advertise_addr} "
               f"grpc={cfg.grpc_advertise_addr or ''}}}")
    backoff = 0.5
    while True:
        try:
            node.replicate(node.sm.add_node, node.node_id, rec, True, timeout=5.0)
            log.banner("    Register-node: Ok")
            return None
        except OpError as e:
            log.banner(f"    Error: {e}")
            log.banner(f"    Sleep {int(backoff * 1000)}ms and retry")
            if time.monotonic() >= deadline:
                return f"fail to register node {node.node_id}: {e}"
            time.sleep(backoff)
            backoff = min(backoff * 2, 5.0)


def run_server(cfg: MetaConfig) -> int:
    """Start a meta node, in databend-meta's order: data, raft, HTTP, gRPC, join, register, `started`."""
    from .node import MetaNode
    try:
        cfg.check()
        version.installed()
    except (ConfigError, version.VersionError) as e:
        eprint(f"Error: {e}")
        return 1
    log = MetaLog()
    node = MetaNode(cfg, log)
    try:
        node.open_data()
    except (OSError, RuntimeError, ValueError) as e:
        eprint(f"Error: {e}")
        return 1
    if cfg.log_file_on:
        log.open_dir(cfg.log_dir, f"databend-meta-{node.node_id}@{cfg.cluster_name}")
    _install_signal_handlers(node, log)
    _banner(cfg, node, log)

    admin, grpc_get, grpc_post, raft = _routes(node, cfg)
    try:
        node.servers.append(wire.serve(cfg.raft_listen_addr, raft["GET"], raft["POST"], "raft",
                                       check=raft_secret.Checker(cfg, log)))
        if node.persisted.get("initialized") and node.persisted.get("left") and cfg.join:
            log.info(f"node {node.node_id} was removed from its cluster: wiping the raft log and joining again")
            node.wipe_raft_log()
            node.persisted.update(initialized=False, left=False, partners=[])
            node.save()
        if node.persisted.get("initialized"):
            node.quiet = bool(node.persisted.get("left"))
            node.quiet_until = time.monotonic() + 2 * cfg.timing.raft_max_timeout
            node.start_raft(list(node.persisted.get("partners", [])))
            if cfg.single:
                log.info("Already initialized")
        elif cfg.single:
            node.start_raft([])
            if node.wait_leader(10.0) is None:
                eprint("Error: single node did not become leader within 10s")
                return 1
            node.replicate(node.sm.add_node, node.node_id, node.own_record(), False, timeout=5.0)
            node.persisted.update(initialized=True, left=False, partners=[])
            node.save()
        # Upstream binds exactly these addresses, parsed as SocketAddr (IP literal + port, no host name), and a
        # parse failure is a panic after the raft node is up: entry.rs `srv.do_start().await.expect("Failed to
        # start http server")` (admin: src/meta/admin/src/http_service.rs `do_start`) and `.expect("Databend meta
        # service error")` (gRPC: databend-meta crates/server/service/src/api/grpc_server.rs `bind`). Exit 101.
        for addr, what in ((cfg.admin_api_address, "Failed to start http server"),
                           (cfg.grpc_api_address, "Databend meta service error")):
            try:
                parse_socket_addr(addr)
            except ValueError as e:
                line = 180 if what.startswith("Failed") else 201
                eprint(f"panicked at src/meta/binaries/meta/entry.rs:{line}:37:\n"
                       f"{what}: BadAddressFormat(AnyError {{ typ: \"core::net::parser::AddrParseError\", "
                       f"msg: \"{e}\", source: None, context: [], backtrace: None }})")
                log.warn(f"{what}: {e}: {addr!r}")
                node.shutdown()
                return 101
            if what.startswith("Failed"):
                node.servers.append(wire.serve(cfg.admin_api_address, admin, {}, "admin"))
            else:
                node.servers.append(wire.serve(cfg.grpc_api_address, grpc_get, grpc_post, "grpc",
                                               tls_files=grpc_tls_files(cfg)))
    except OSError as e:
        eprint(f"Error: cannot listen: {e}")
        node.shutdown()
        return 1

    if cfg.join:
        if node.persisted.get("initialized"):
            log.info(f"skip joining, because: node {node.node_id} already in cluster")
        else:
            err = _join(node, cfg, log)
            if err is not None:
                eprint(f"Error: {err}")
                node.shutdown()
                return 1
    err = _register(node, cfg, log)
    if err is not None:
        eprint(f"Error: {err}")
        node.shutdown()
        return 1
    log.banner("Databend Metasrv started")
    threading.Event().wait()   # until a signal handler exits the process
    return 0


def main(argv: list[str] | None = None) -> int:
    """databend-meta entry point."""
    args = build_parser().parse_args(argv)
    if args.cmd == "ver":   # entry.rs run_cmd "ver"; the values follow the installed release (version.py)
        try:
            print(version.ver_text(version.installed()))
        except version.VersionError as e:
            eprint(f"Error: {e}")
            return 1
        return 0
    if args.cmd.startswith("kvapi::"):
        cfg = from_args(args)
        return run_kvapi(args.cmd, cfg.grpc_api_address, args.key, args.value, args.prefix)
    if args.cmd:
        eprint(f"Error: unknown cmd {args.cmd!r}; valid: ver, kvapi::upsert, kvapi::get, kvapi::list")
        return 1
    try:
        cfg = from_args(args)
    except ConfigError as e:
        eprint(f"Error: {e}")
        return 1
    if cfg.leave_via:
        # entry.rs: init_logging_system (the config's log dir, file `databend-meta-<config id>@<cluster>`), then
        # `raft_config.check()` (which, with leave_via set, only requires leave_id), then leave_cluster.
        log = MetaLog()
        if cfg.log_file_on:
            log.open_dir(cfg.log_dir, f"databend-meta-{cfg.id}@{cfg.cluster_name}")
        log.quiet_stdout = True
        try:
            cfg.check()
        except ConfigError as e:
            eprint(f"Error: {e}")
            return 1
        return run_leave(cfg, log)
    return run_server(cfg)


if __name__ == "__main__":
    sys.exit(main())
