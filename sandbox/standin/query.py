"""`databend-query` stand-in: needs one live meta node among `[meta] endpoints`, then serves GET /v1/health.

The meta client (issue #9 item 8; /work/shared/reference/databend-meta.md §5.2, §7 item 8, §9.7) as upstream's
MetaGrpcClient does it (databend `git show v1.2.870-nightly:src/meta/client/src/grpc_client.rs` `set_endpoints`,
`sync_endpoints`, `auto_sync_endpoints`; `.../endpoints.rs` `Endpoints::new`, `replace_nodes`):
  * the endpoint list lives in memory only; it starts from `[meta] endpoints` (a sorted, de-duplicated set: a
    BTreeMap in upstream) at every start; a restart forgets what was synced;
  * only when `auto_sync_interval` (u64 seconds; upstream default 0 = never) > 0: every interval it asks its
    current endpoint (then the others) for MemberList, i.e. every meta node's `grpc_api_advertise_host:port`
    ("" when unset); if the non-empty entries are a majority (`>= len/2 + 1`) the list is REPLACED by them (an
    empty entry included), else it is kept. A list of unreachable addresses (the packaged `localhost`) is adopted
    as well: the query then reaches no meta node and every later sync fails, so it keeps that list until restarted;
  * `[meta] rpc_tls_meta_server_root_ca_cert` (+ `rpc_tls_meta_service_domain_name`, default "localhost") makes it
    speak TLS to the meta gRPC API (databend src/query/config/src/config.rs MetaConfig).
`GET /v1/meta/endpoints` on the admin API shows the in-memory state: endpoints, current, configured,
auto_sync_interval, syncs, last_sync.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
import tomllib
from typing import Any

from . import wire
from .logs import MetaLog, eprint


class MetaClient:
    """The query's in-memory meta endpoint list and its MemberList auto-sync."""

    def __init__(self, configured: list[str], timeout: float, log: MetaLog, tls: Any = None) -> None:
        self.configured = list(configured)
        self.nodes = sorted(set(configured))
        self.current: str | None = None
        self.timeout, self.log, self.tls = timeout, log, tls
        self.syncs = 0
        self.last_sync: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def _call(self, ep: str, path: str) -> Any:
        return wire.call_json(ep, "GET", path, timeout=self.timeout, tls=self.tls)

    def _candidates(self) -> list[str]:
        """The current endpoint first, then the others in list order (upstream rotates on failure)."""
        with self._lock:
            nodes, cur = list(self.nodes), self.current
        return ([cur] if cur in nodes else []) + [n for n in nodes if n != cur]

    def connect(self) -> str | None:
        """Handshake with the first endpoint that answers; it becomes `current`. None if none answers."""
        for ep in self._candidates():
            try:
                self._call(ep, "/v1/grpc/handshake")
            except (OSError, RuntimeError, ValueError):
                continue
            with self._lock:
                self.current = ep
            return ep
        return None

    def sync(self) -> None:
        """One sync_endpoints: MemberList from the first endpoint that answers, then set_endpoints' majority rule."""
        errors = []
        for ep in self._candidates():
            try:
                data = [str(a) for a in self._call(ep, "/v1/grpc/member_list")["data"]]
            except (OSError, RuntimeError, ValueError, KeyError, TypeError) as e:
                errors.append(f"{ep}: {e}")
                continue
            non_empty = sum(1 for a in data if a)
            with self._lock:
                self.syncs += 1
                self.current = ep
                if data and non_empty >= len(data) // 2 + 1:
                    new = sorted(set(data))
                    if new != self.nodes:
                        self.log.info(f"meta endpoints synced: {self.nodes} -> {new}")
                    self.nodes = new
                    if self.current not in new:
                        self.current = None
                    self.last_sync = {"at": time.time(), "ok": True, "received": data, "replaced": True}
                else:
                    self.log.warn(f"distinct endpoints small than majority of meta cluster nodes "
                                  f"{non_empty}<{len(data)}, endpoints: {data}")
                    self.last_sync = {"at": time.time(), "ok": True, "received": data, "replaced": False}
            return
        self.log.warn(f"auto_sync_endpoints failed: no meta endpoint answered: {'; '.join(errors)}")
        with self._lock:
            self.syncs += 1
            self.last_sync = {"at": time.time(), "ok": False, "error": "; ".join(errors)}

    def snapshot(self, interval: int) -> dict[str, Any]:
        with self._lock:
            return {"endpoints": list(self.nodes), "current": self.current, "configured": self.configured,
                    "auto_sync_interval": interval, "syncs": self.syncs, "last_sync": self.last_sync}


def _auto_sync(client: MetaClient, interval: int) -> None:
    """auto_sync_endpoints: sleep `interval` s, sync, forever."""
    while True:
        time.sleep(interval)
        client.sync()


def main(argv: list[str] | None = None) -> int:
    """databend-query entry point."""
    p = argparse.ArgumentParser(prog="databend-query")
    p.add_argument("-c", "--config-file", required=True)
    args = p.parse_args(argv)
    try:
        with open(args.config_file, "rb") as f:
            doc = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        eprint(f"Error: failed to load config file {args.config_file}: {e}")
        return 1
    meta = doc.get("meta", {})
    endpoints = [str(e) for e in meta.get("endpoints", [])]
    timeout = float(meta.get("client_timeout_in_second", 4))
    admin = doc.get("query", {}).get("admin_api_address", "0.0.0.0:8080")
    log_dir = doc.get("log", {}).get("file", {}).get("dir", "./.databend/logs")
    log = MetaLog("databend-query")
    log.open_dir(log_dir, "databend-query-default")
    log.banner("Databend Query (stand-in)")
    log.banner(f"Meta endpoints: {endpoints}")
    if not endpoints:
        log.warn("no meta endpoints configured in [meta] endpoints")
        eprint("Error: [meta] endpoints is empty: need at least one databend-meta gRPC address")
        return 1
    interval = meta.get("auto_sync_interval", 0)   # u64 seconds upstream: a float or negative fails to load
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 0:
        eprint(f"Error: invalid [meta] auto_sync_interval {interval!r}: must be a whole number of seconds >= 0")
        return 1
    tls = None
    ca = str(meta.get("rpc_tls_meta_server_root_ca_cert", ""))
    if ca:
        try:
            tls = wire.client_tls(ca, str(meta.get("rpc_tls_meta_service_domain_name", "localhost")))
        except OSError as e:
            eprint(f"Error: cannot load [meta] rpc_tls_meta_server_root_ca_cert {ca}: {e}")
            return 1
    client = MetaClient(endpoints, timeout, log, tls)
    current = client.connect()
    if current is None:
        log.warn(f"none of the meta endpoints {endpoints} is a live meta node")
        eprint(f"Error: cannot connect to any meta endpoint of {endpoints}: none is a live databend-meta node")
        return 1
    log.info(f"connected to meta node {current}")
    routes = {
        "/v1/health": lambda q, b: wire.json_reply({"status": "pass"}),
        "/v1/meta/endpoints": lambda q, b: wire.json_reply(client.snapshot(interval)),
    }
    try:
        server = wire.serve(admin, routes, {}, "query-admin")
    except OSError as e:
        eprint(f"Error: cannot listen on {admin}: {e}")
        return 1
    if interval > 0:
        threading.Thread(target=_auto_sync, args=(client, interval), daemon=True).start()

    def stop(signum: int, _frame: Any) -> None:
        log.banner("Databend Query shutdown")
        server.shutdown()
        sys.stdout.flush()
        os._exit(0)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):   # SIGHUP (systemctl reload) = shutdown, as upstream
        signal.signal(sig, stop)
    log.banner(f"Admin HTTP API listen at: {admin}")
    log.banner("Databend Query started")
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
