"""`databend-query` stand-in: needs one live meta node among `[meta] endpoints`, then serves GET /v1/health.

It keeps the meta endpoint list in memory and refreshes it from MemberList every `auto_sync_interval` seconds
(only when the non-empty addresses are a majority), like the real meta client. `GET /v1/standin/meta_endpoints`
shows the current list.
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


def live_endpoints(endpoints: list[str], timeout: float) -> list[str]:
    """The endpoints whose meta gRPC API answers a handshake."""
    live = []
    for ep in endpoints:
        try:
            wire.call_json(ep, "GET", "/v1/grpc/handshake", timeout=timeout)
            live.append(ep)
        except (OSError, RuntimeError, ValueError):
            pass
    return live


def _auto_sync(state: dict[str, Any], interval: float, timeout: float, log: MetaLog) -> None:
    """Every `interval` s, replace the endpoint list with MemberList's if the non-empty ones are a majority."""
    while True:
        time.sleep(interval)
        for ep in list(state["endpoints"]):
            try:
                data = wire.call_json(ep, "GET", "/v1/grpc/member_list", timeout=timeout)["data"]
            except (OSError, RuntimeError, ValueError, KeyError):
                continue
            good = [a for a in data if a]
            if good and len(good) * 2 > len(data) and good != state["endpoints"]:
                log.info(f"meta endpoints synced: {state['endpoints']} -> {good}")
                state["endpoints"] = good
            break


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
    live = live_endpoints(endpoints, timeout)
    if not live:
        log.warn(f"none of the meta endpoints {endpoints} is a live meta node")
        eprint(f"Error: cannot connect to any meta endpoint of {endpoints}: none is a live databend-meta node")
        return 1
    state: dict[str, Any] = {"endpoints": endpoints, "connected": live[0]}
    log.info(f"connected to meta node {live[0]}")
    routes = {
        "/v1/health": lambda q, b: wire.json_reply({"status": "pass"}),
        "/v1/standin/meta_endpoints": lambda q, b: wire.json_reply(state),
    }
    try:
        server = wire.serve(admin, routes, {}, "query-admin")
    except OSError as e:
        eprint(f"Error: cannot listen on {admin}: {e}")
        return 1
    interval = float(meta.get("auto_sync_interval", 0))
    if interval > 0:
        threading.Thread(target=_auto_sync, args=(state, interval, timeout, log), daemon=True).start()

    def stop(signum: int, _frame: Any) -> None:
        log.banner("Databend Query shutdown")
        server.shutdown()
        sys.stdout.flush()
        os._exit(0)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    log.banner(f"Admin HTTP API listen at: {admin}")
    log.banner("Databend Query started")
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
