"""`databend-metactl`: status, transfer-leader, member-list, trigger-snapshot, as the installed release has them.

Newest (v1.2.663+) by default; an older release installed (version.py) changes the command line and the output:
  * v1.2.612+ subcommands (databend src/meta/binaries/metactl/main.rs, `git show v1.2.612-nightly:...`):
    `status` 612-657 prints DBSize/KeyNumber, 658-662 RaftLogSize/SnapshotKeyCount without the RaftLog block
    (databend commits 9af8ba3381, 22a8a82bc3); `trigger-snapshot` from v1.2.782, `member-list` from v1.2.818.
  * v1.2.165-v1.2.611: no subcommands, `--status` flag with the global `--grpc-api-address`
    (`git show v1.2.600-nightly:src/meta/binaries/metactl/main.rs`, before v1.2.5xx src/binaries/metactl/main.rs);
    `KeyNumber:` from v1.2.468. A subcommand word is a clap usage error: exit 2.
  * LogIds are formatted by the server: `1-1-200` before v1.2.583 (openraft 0.9), `T1-N1.200` after.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from . import version, wire


def _node_text(n: dict[str, Any]) -> str:
    """Node Display: `id=<name> raft=<addr>:<port> grpc=<addr or empty>`."""
    ep = n["endpoint"]
    return f"id={n['name']} raft={ep['addr']}:{ep['port']} grpc={n.get('grpc_api_advertise_address') or ''}"


def _log_id_text(lid: dict[str, Any] | None, server: tuple[int, int, int] = version.NEWEST) -> str:
    """LogId text as the server formats it: `T<term>-N<node>.<index>` (openraft 0.10), `1-1-200` before v1.2.583."""
    if lid is None:
        return ""
    return version.log_id_text(server, lid["leader_id"]["term"], lid["leader_id"]["node_id"], lid["index"])


def render_status(st: dict[str, Any], client: tuple[int, int, int] = version.NEWEST) -> str:
    """The `databend-metactl status` text for a status object, line order as release `client` prints it."""
    server = version.parse(st["standin_version"]) if st.get("standin_version") else version.NEWEST
    rl = st["raft_log"]
    lines = [f"BinaryVersion: {st['binary_version']}", f"DataVersion: {st['data_version']}"]
    if client < (1, 2, 658):
        lines.append(f"DBSize: {rl['wal_total_size']}")
        if client >= (1, 2, 468):
            lines.append(f"KeyNumber: {st['snapshot_key_count']}")
    else:
        lines.append(f"RaftLogSize: {rl['wal_total_size']}")
        if client >= (1, 2, 663):
            lines += ["RaftLog:",
                      f"  - CacheItems: {rl['cache_items']}", f"  - CacheUsedSize: {rl['cache_used_size']}",
                      f"  - WALTotalSize: {rl['wal_total_size']}", f"  - WALOpenChunkSize: {rl['wal_open_chunk_size']}",
                      f"  - WALOffset: {rl['wal_offset']}", f"  - WALClosedChunkCount: {rl['wal_closed_chunk_count']}",
                      f"  - WALClosedChunkTotalSize: {rl['wal_closed_chunk_total_size']}", "  - WALClosedChunkSizes:"]
            lines += [f"    - {k}: {v}" for k, v in rl["wal_closed_chunk_sizes"].items()]
        lines.append(f"SnapshotKeyCount: {st['snapshot_key_count']}")
    lines += [f"Node: id={st['id']} raft={st['endpoint'] or ''}", f"State: {st['state']}"]
    if st.get("leader"):
        lines.append(f"Leader: {_node_text(st['leader'])}")
    applied = _log_id_text(st["last_applied"], server)
    lines += [f"CurrentTerm: {st['current_term']}", f"LastSeq: {st['last_seq']}",
              f"LastLogIndex: {st['last_log_index']}", f"LastApplied: {applied}"]
    if st.get("snapshot_last_log_id"):
        lines.append(f"SnapshotLastLogID: {_log_id_text(st['snapshot_last_log_id'], server)}")
    if st.get("purged"):
        lines.append(f"Purged: {_log_id_text(st['purged'], server)}")
    if st.get("replication"):
        lines.append("Replication:")
        for nid, lid in st["replication"].items():
            text = _log_id_text(lid, server)
            lines.append(f"  - [{nid}] {text}" + (" *" if text != applied else ""))
    for title, key in (("Voters:", "voters"), ("NonVoters:", "non_voters")):
        if st.get(key):
            lines.append(title)
            lines += [f"  - {_node_text(n)}" for n in st[key]]
    return "\n".join(lines)


def _grpc_error(e: wire.Unreachable) -> str:
    return f"Error: ConnectionError: while creating rpc channel source: ChannelError: {e}: transport error"


def _transport_error(addr: str, e: Exception) -> str:
    """A TCP connection was made but no plain gRPC exchange: e.g. the node serves TLS (`grpc_tls_server_cert`) and
    metactl has no TLS options; upstream fails the handshake with a tonic transport error (exit 1)."""
    return (f"Error: ConnectionError: failed to handshake with http://{addr} source: transport error: "
            f"h2 protocol error: connection closed: {e}")


def cmd_status(addr: str, client: tuple[int, int, int] = version.NEWEST) -> int:
    try:
        st = wire.call_json(addr, "GET", "/v1/grpc/status")
    except wire.Unreachable as e:
        print(_grpc_error(e), file=sys.stderr)
        return 1
    except (OSError, RuntimeError, ValueError) as e:
        print(_transport_error(addr, e), file=sys.stderr)
        return 1
    print(render_status(st, client))
    return 0


def cmd_member_list(addr: str) -> int:
    try:
        reply = wire.call_json(addr, "GET", "/v1/grpc/member_list")
    except wire.Unreachable as e:
        print(_grpc_error(e), file=sys.stderr)
        return 1
    except (OSError, RuntimeError, ValueError) as e:
        print(_transport_error(addr, e), file=sys.stderr)
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


class _ClapStyleParser(argparse.ArgumentParser):
    """argparse with clap 4's usage-error text and exit code 2 (`error: unexpected argument 'X' found`)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        import re
        if m := re.match(r"unrecognized arguments: (\S+)", message):
            text = f"error: unexpected argument '{m.group(1)}' found"
        elif m := re.match(r"argument command: invalid choice: '([^']+)'", message):
            text = f"error: unrecognized subcommand '{m.group(1)}'"
        else:
            text = f"error: {message}"
        self.exit(2, f"{text}\n\nUsage: {self.prog} [OPTIONS] [COMMAND]\n\nFor more information, try '--help'.\n")


def build_parser(v: tuple[int, int, int] = version.NEWEST) -> argparse.ArgumentParser:
    """Subcommand command line (v1.2.612+): the subcommands release `v` has."""
    p = _ClapStyleParser(prog="databend-metactl", description="Databend Meta control (stand-in)")
    p.add_argument("--grpc-api-address", default=os.environ.get("METASRV_GRPC_API_ADDRESS", "127.0.0.1:9191"),
                   help="deprecated global flag; ignored by the subcommands")
    p.add_argument("--log-level", default="Warn,databend_=Info,openraft=Info")
    sub = p.add_subparsers(dest="command")
    s = sub.add_parser("status")
    s.add_argument("--grpc-api-address", dest="sub_grpc", default="127.0.0.1:9191")
    t = sub.add_parser("transfer-leader")
    t.add_argument("--to", type=int)
    t.add_argument("--admin-api-address", default="127.0.0.1:28002")
    if v >= (1, 2, 818):
        m = sub.add_parser("member-list")
        m.add_argument("--grpc-api-address", dest="sub_grpc", default="127.0.0.1:9191")
    if v >= (1, 2, 782):
        ts = sub.add_parser("trigger-snapshot")
        ts.add_argument("--admin-api-address", default="127.0.0.1:28101")
    return p


# Flags of the pre-subcommand metactl (`git show v1.2.600-nightly:src/meta/binaries/metactl/main.rs` `Config`):
# name -> takes a value. `--status` only from v1.2.165.
_LEGACY_FLAGS = {"--cmd": True, "--log-level": True, "--status": False, "--import": False, "--export": False,
                 "--export-chunk-size": True, "--grpc-api-address": True, "--raft-dir": True, "--db": True,
                 "--initial-cluster": True, "--id": True}


def _legacy_usage_error(arg: str) -> int:
    sys.stderr.write(f"error: unexpected argument '{arg}' found\n\nUsage: databend-metactl [OPTIONS]\n\n"
                     "For more information, try '--help'.\n")
    return 2


def legacy_main(argv: list[str], v: tuple[int, int, int]) -> int:
    """metactl before v1.2.612: flags only (clap, no subcommands); `--status` prints the status of the node at the
    global `--grpc-api-address` (env METASRV_GRPC_API_ADDRESS, default 127.0.0.1:9191)."""
    opts: dict[str, Any] = {"--grpc-api-address": os.environ.get("METASRV_GRPC_API_ADDRESS", "127.0.0.1:9191")}
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if name not in _LEGACY_FLAGS or (name == "--status" and v < (1, 2, 165)):
            return _legacy_usage_error(arg)
        if _LEGACY_FLAGS[name]:
            if not eq:
                i += 1
                if i >= len(argv):
                    sys.stderr.write(f"error: a value is required for '{name} <{name[2:].upper()}>' "
                                     "but none was supplied\n\nFor more information, try '--help'.\n")
                    return 2
                value = argv[i]
            opts[name] = value
        else:
            opts[name] = True
        i += 1
    if not _make_log_dir():
        return 101
    if opts.get("--status"):
        return cmd_status(opts["--grpc-api-address"], v)
    if opts.get("--cmd"):
        print(f"Error: unknown cmd: {opts['--cmd']}", file=sys.stderr)
        return 1
    print("Error: Nothing to do", file=sys.stderr)
    return 1


def _make_log_dir() -> bool:
    """Create ./.databend/logs like the real binary; print its panic and return False when that fails."""
    try:
        os.makedirs(os.path.join(".databend", "logs"), exist_ok=True)
    except OSError as e:
        print(f"thread 'main' panicked: failed to initialize rolling file appender: {e}", file=sys.stderr)
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    """databend-metactl entry point (the installed release's command line). Creates ./.databend/logs in the CWD."""
    try:
        v = version.installed()
    except version.VersionError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    if v < (1, 2, 612):
        return legacy_main(sys.argv[1:] if argv is None else list(argv), v)
    parser = build_parser(v)
    args = parser.parse_args(argv)
    if not _make_log_dir():
        return 101
    if args.command == "status":
        return cmd_status(args.sub_grpc, v)
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
