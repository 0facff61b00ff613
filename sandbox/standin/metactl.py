"""`databend-metactl`: status, transfer-leader, member-list, trigger-snapshot (newest formats, v1.2.663+)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from . import wire


def _node_text(n: dict[str, Any]) -> str:
    """Node Display: `id=<name> raft=<addr>:<port> grpc=<addr or empty>`."""
    ep = n["endpoint"]
    return f"id={n['name']} raft={ep['addr']}:{ep['port']} grpc={n.get('grpc_api_advertise_address') or ''}"


def _log_id_text(lid: dict[str, Any] | None) -> str:
    """openraft 0.10 LogId text `T<term>-N<node>.<index>`."""
    if lid is None:
        return ""
    return f"T{lid['leader_id']['term']}-N{lid['leader_id']['node_id']}.{lid['index']}"


def render_status(st: dict[str, Any]) -> str:
    """The `databend-metactl status` text for a status object, line order as in databend HEAD."""
    rl = st["raft_log"]
    lines = [f"BinaryVersion: {st['binary_version']}", f"DataVersion: {st['data_version']}",
             f"RaftLogSize: {rl['wal_total_size']}", "RaftLog:",
             f"  - CacheItems: {rl['cache_items']}", f"  - CacheUsedSize: {rl['cache_used_size']}",
             f"  - WALTotalSize: {rl['wal_total_size']}", f"  - WALOpenChunkSize: {rl['wal_open_chunk_size']}",
             f"  - WALOffset: {rl['wal_offset']}", f"  - WALClosedChunkCount: {rl['wal_closed_chunk_count']}",
             f"  - WALClosedChunkTotalSize: {rl['wal_closed_chunk_total_size']}", "  - WALClosedChunkSizes:"]
    lines += [f"    - {k}: {v}" for k, v in rl["wal_closed_chunk_sizes"].items()]
    lines += [f"SnapshotKeyCount: {st['snapshot_key_count']}", f"Node: id={st['id']} raft={st['endpoint'] or ''}",
              f"State: {st['state']}"]
    if st.get("leader"):
        lines.append(f"Leader: {_node_text(st['leader'])}")
    applied = _log_id_text(st["last_applied"])
    lines += [f"CurrentTerm: {st['current_term']}", f"LastSeq: {st['last_seq']}",
              f"LastLogIndex: {st['last_log_index']}", f"LastApplied: {applied}"]
    if st.get("snapshot_last_log_id"):
        lines.append(f"SnapshotLastLogID: {_log_id_text(st['snapshot_last_log_id'])}")
    if st.get("purged"):
        lines.append(f"Purged: {_log_id_text(st['purged'])}")
    if st.get("replication"):
        lines.append("Replication:")
        for nid, lid in st["replication"].items():
            text = _log_id_text(lid)
            lines.append(f"  - [{nid}] {text}" + (" *" if text != applied else ""))
    for title, key in (("Voters:", "voters"), ("NonVoters:", "non_voters")):
        if st.get(key):
            lines.append(title)
            lines += [f"  - {_node_text(n)}" for n in st[key]]
    return "\n".join(lines)


def _grpc_error(e: wire.Unreachable) -> str:
    return f"Error: ConnectionError: while creating rpc channel source: ChannelError: {e}: transport error"


def cmd_status(addr: str) -> int:
    try:
        st = wire.call_json(addr, "GET", "/v1/grpc/status")
    except wire.Unreachable as e:
        print(_grpc_error(e), file=sys.stderr)
        return 1
    except (OSError, RuntimeError, ValueError) as e:
        print(f"Error: handshake with {addr} failed: {e}", file=sys.stderr)
        return 1
    print(render_status(st))
    return 0


def cmd_member_list(addr: str) -> int:
    try:
        reply = wire.call_json(addr, "GET", "/v1/grpc/member_list")
    except wire.Unreachable as e:
        print(_grpc_error(e), file=sys.stderr)
        return 1
    except (OSError, RuntimeError, ValueError) as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    for a in reply["data"]:
        print(a)
    return 0


def _admin_get(addr: str, path: str) -> tuple[int, str, bytes] | None:
    """GET on the admin API; print the reqwest-style error and return None when unreachable."""
    try:
        return wire.request(addr, "GET", path)
    except OSError as e:
        print(f"Error: error sending request for url (http://{addr}{path}): {e}", file=sys.stderr)
        return None


def cmd_transfer_leader(addr: str, to: int | None) -> int:
    path = "/v1/ctrl/trigger_transfer_leader" + (f"?to={to}" if to is not None else "")
    res = _admin_get(addr, path)
    if res is None:
        return 1
    status, reason, body = res
    if status != 200:
        print(f"Error: status code: {status} {reason}, msg: {body.decode(errors='replace')}", file=sys.stderr)
        return 1
    reply = json.loads(body)
    print(f"triggered leader transfer from {reply['from']} to {reply['to']}.")
    print(f"voter ids: [{', '.join(map(str, reply['voter_ids']))}]")
    return 0


def cmd_trigger_snapshot(addr: str) -> int:
    res = _admin_get(addr, "/v1/ctrl/trigger_snapshot")
    if res is None:
        return 1
    status, reason, body = res
    if status != 200:
        print(f"Error: status code: {status} {reason}, msg: {body.decode(errors='replace')}", file=sys.stderr)
        return 1
    print("triggered snapshot successfully.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="databend-metactl", description="Databend Meta control (stand-in)")
    p.add_argument("--grpc-api-address", default=os.environ.get("METASRV_GRPC_API_ADDRESS", "127.0.0.1:9191"),
                   help="deprecated global flag; ignored by the subcommands")
    p.add_argument("--log-level", default="Warn,databend_=Info,openraft=Info")
    sub = p.add_subparsers(dest="command")
    s = sub.add_parser("status")
    s.add_argument("--grpc-api-address", dest="sub_grpc", default="127.0.0.1:9191")
    t = sub.add_parser("transfer-leader")
    t.add_argument("--to", type=int)
    t.add_argument("--admin-api-address", default="127.0.0.1:28002")
    m = sub.add_parser("member-list")
    m.add_argument("--grpc-api-address", dest="sub_grpc", default="127.0.0.1:9191")
    ts = sub.add_parser("trigger-snapshot")
    ts.add_argument("--admin-api-address", default="127.0.0.1:28101")
    return p


def main(argv: list[str] | None = None) -> int:
    """databend-metactl entry point. Creates ./.databend/logs in the CWD like the real binary."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        os.makedirs(os.path.join(".databend", "logs"), exist_ok=True)
    except OSError as e:
        print(f"thread 'main' panicked: failed to initialize rolling file appender: {e}", file=sys.stderr)
        return 101
    if args.command == "status":
        return cmd_status(args.sub_grpc)
    if args.command == "member-list":
        return cmd_member_list(args.sub_grpc)
    if args.command == "transfer-leader":
        return cmd_transfer_leader(args.admin_api_address, args.to)
    if args.command == "trigger-snapshot":
        return cmd_trigger_snapshot(args.admin_api_address)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
