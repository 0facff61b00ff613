"""The `metascale` command: `status` (plain core, no Prefect), `scale-up`, `scale-down`, `replace` and
`sync-inventory` (the Prefect flows).

`scale-up` / `scale-down` / `replace` / `sync-inventory` run the same flows as the deployments, in this process,
against the Prefect API of PREFECT_API_URL (environment or Prefect profile): they take the same cluster lock as
deployment runs (a dry run takes none: it changes nothing). Without a configured API every one of them is refused in one line that says how to point it at one
(no temporary server is started). The operator who types the command is the approval: each flow gets
``require_approval=False`` explicitly (the flows default to True).

Output: the run's progress streams as its log lines (without tracebacks unless ``--verbose``); the last lines are
the result (a dry run's plan, the outcome) or one line ``Refused: <reason>`` / ``Failed: <reason>``, then
``run: <the run's page in the Prefect UI>``. Exit codes: ExitCode. README "The `metascale` command: output and exit
codes" documents both.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from enum import IntEnum
from typing import Any


class ExitCode(IntEnum):
    """Process exit codes of `metascale`."""

    OK = 0
    FAILED = 1          # a breakage: the run failed or crashed (its message says where the cluster is and what to do
    #                     next), or the Prefect API / the hosts could not be reached
    USAGE = 2           # bad command line (argparse)
    REFUSED = 3         # refused before any change: bad input, unsafe plan, outside the window, lock busy, no Prefect
    #                     API configured (the run's state is named "Refused")
    UNHEALTHY = 4       # `status`: no leader, a voter does not answer, or the nodes disagree
    DRIFT = 5           # `status`: the cluster is healthy, but the inventory does not match its membership
    INTERRUPTED = 130   # Ctrl-C


CHANGE_COMMANDS = ("scale-up", "scale-down", "replace", "sync-inventory")
# set before Prefect is imported: client telemetry off, and never a temporary ("ephemeral") server (12-30 s, and a
# lock nobody else sees): without an API the command says how to point it at one instead
_PREFECT_ENV_DEFAULTS = {"DO_NOT_TRACK": "1", "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore"}
_PREFECT_ENV_FORCED = {"PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": "false"}
_EXAMPLE_API = "http://prefect.example:4200/api"
_LOCAL_API = "http://127.0.0.1:4200/api"


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true",
                        help="show the full log, with the traceback of a failure")
    parser = argparse.ArgumentParser(prog="metascale", description="Scale a Databend Meta Service cluster safely.",
                                     epilog="exit codes: 0 ok, 1 failed (a breakage), 2 bad command line, 3 refused "
                                            "before any change, 4 unhealthy (status), 5 inventory drift (status), "
                                            "130 interrupted")
    sub = parser.add_subparsers(dest="command", required=True)

    def cluster_args(p: argparse.ArgumentParser) -> None:
        which = p.add_mutually_exclusive_group(required=True)
        which.add_argument("--inventory", help="path to the cluster's inventory TOML")
        which.add_argument("--cluster-block", help="name of the cluster's Metascale Cluster block on the Prefect "
                                                   "server (instead of --inventory)")

    status = sub.add_parser("status", parents=[common],
                            help="show leader, voters, non-voters and who answers (read-only, fast)")
    cluster_args(status)
    status.add_argument("--json", action="store_true", help="print one JSON object (for scripts; see README)")
    up = sub.add_parser("scale-up", parents=[common], help="add a meta node (runs the scale-up flow)")
    cluster_args(up)
    up.add_argument("--host", required=True, action="append", help="host to add (repeat for several)")
    up.add_argument("--id", type=int, help="raft id of the new node (one host only; default: next free id)")
    up.add_argument("--dry-run", action="store_true", help="plan only; change nothing")
    up.add_argument("--verify-deadline", type=float, default=60, help="seconds to wait for each verification")
    up.add_argument("--reset-new-node", action="store_true",
                    help="a new host that already runs databend-meta as a one-node cluster of its own: stop it and "
                         "move its raft dir aside first (anything else already initialised is refused)")
    up.add_argument("--restart-query-nodes", action="store_true",
                    help="restart the query nodes one at a time after their endpoints are written")
    up.add_argument("--accept-no-fault-tolerance", action="store_true",
                    help="allow a change that leaves 1 or 2 voters (no failure tolerated); refused without it")
    down = sub.add_parser("scale-down", parents=[common], help="remove a meta node (runs the scale-down flow)")
    cluster_args(down)
    down.add_argument("--id", type=int, required=True, action="append", help="raft id to remove (repeatable)")
    down.add_argument("--force", action="store_true", help="the node's host is dead: remove it via the live nodes")
    down.add_argument("--dry-run", action="store_true", help="plan only; change nothing")
    down.add_argument("--verify-deadline", type=float, default=60)
    down.add_argument("--leave-timeout", type=float, default=60)
    down.add_argument("--restart-query-nodes", action="store_true",
                      help="restart the query nodes one at a time after their endpoints are written")
    down.add_argument("--accept-no-fault-tolerance", action="store_true",
                      help="allow a change that leaves 1 or 2 voters (no failure tolerated); refused without it")
    replace = sub.add_parser("replace", parents=[common],
                             help="replace a meta node by a new host in one run (runs the replace-node flow: a dead "
                                  "node is removed first, a live one after the new joined)")
    cluster_args(replace)
    replace.add_argument("--id", type=int, required=True, help="raft id of the node to replace")
    replace.add_argument("--host", default="", help="the new host (default: the first free [[spare]] of the "
                                                     "inventory)")
    replace.add_argument("--dry-run", action="store_true", help="plan only; change nothing")
    replace.add_argument("--verify-deadline", type=float, default=60)
    replace.add_argument("--leave-timeout", type=float, default=60)
    replace.add_argument("--reset-new-node", action="store_true",
                         help="the new host runs databend-meta as a one-node cluster of its own: stop it and move its "
                              "raft dir aside first")
    replace.add_argument("--restart-query-nodes", action="store_true",
                         help="restart the query nodes one at a time after their endpoints are written")
    sync = sub.add_parser("sync-inventory", parents=[common],
                          help="write the cluster's membership into the inventory file or block (runs the "
                               "sync-inventory flow; shows the diff first)")
    cluster_args(sync)
    sync.add_argument("--dry-run", action="store_true", help="show the drift and the diff; write nothing")
    return parser


# ------------------------------------------------------------------------------------------------------- status
def _status_table(status: object) -> str:
    """Render a ClusterStatus as aligned text: a header line, then one row per node."""
    rows = [("NODE", "HOST", "STATE", "LEADER", "VOTERS", "NON-VOTERS", "NOTE")]
    for probe in status.probes:  # type: ignore[attr-defined]
        if probe.status is None:
            note = ("not in inventory; " if not probe.in_inventory else "") + (probe.error or "")
            rows.append((f"meta-{probe.node_id}", probe.host or "?", "no answer", "-", "-", "-", note[:80]))
            continue
        s = probe.status
        rows.append((f"meta-{probe.node_id}", probe.host, s.state, str(s.leader_id), _ids(s.voter_ids),
                     _ids(s.non_voter_ids), "" if probe.in_inventory else "not in inventory"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def _ids(ids: Sequence[int]) -> str:
    return ",".join(str(i) for i in ids) or "-"


def status_report(status: Any, drift: Sequence[Any], reason: str | None) -> dict[str, Any]:
    """The `metascale status --json` object (a stable shape, documented in the README):

    ``cluster``; ``leader`` (id or null); ``voters`` / ``non_voters`` (ids as the leader — else the answering
    nodes — report them, null when no node answered); ``answering`` (ids); ``nodes`` (one per probed node:
    ``node_id``, ``host``, ``in_inventory``, ``answer`` (bool), ``state`` (Leader/Follower/Learner/…, null without
    answer), ``leader``, ``voters``, ``non_voters`` (that node's view, null without answer), ``error`` (why it did
    not answer, else null)); ``drift`` (``kind``, ``node_id``, ``host``, ``problem``, ``fix``, ``line``);
    ``healthy`` (bool) and ``reason`` (why not, else null); ``exit_code`` (0, 4 or 5, the process's exit code)."""
    nodes = []
    for probe in status.probes:
        s = probe.status
        nodes.append({"node_id": probe.node_id, "host": probe.host, "in_inventory": probe.in_inventory,
                      "answer": s is not None, "state": s.state if s else None, "leader": s.leader_id if s else None,
                      "voters": list(s.voter_ids) if s else None, "non_voters": list(s.non_voter_ids) if s else None,
                      "error": probe.error if s is None else None})
    code = ExitCode.UNHEALTHY if reason else ExitCode.DRIFT if drift else ExitCode.OK
    voters, non_voters = status.voter_ids, status.non_voter_ids
    return {
        "cluster": status.cluster,
        "leader": status.leader_id,
        "voters": list(voters) if voters is not None else None,
        "non_voters": list(non_voters) if non_voters is not None else None,
        "answering": list(status.answering_ids),
        "nodes": nodes,
        "drift": [{"kind": d.kind, "node_id": d.node_id, "host": d.host, "problem": d.problem, "fix": d.fix,
                   "line": d.line()} for d in drift],
        "healthy": reason is None,
        "reason": reason,
        "exit_code": int(code),
    }


def cmd_status(inventory_path: str = "", cluster_block: str = "", *, as_json: bool = False) -> ExitCode:
    """Print the cluster's status table (members the inventory lacks are found in the cluster's status and probed
    too) and every difference between the inventory and the membership with its fix; UNHEALTHY when there is no
    leader, a voter is silent or nodes disagree, else DRIFT when the inventory does not match the membership.

    ``cluster_block`` reads the cluster (and its SSH key Secret) from the Prefect server instead of a file.
    ``as_json`` prints ``status_report`` instead of the table."""
    from metascale.drift import inventory_drift
    from metascale.preview import view_of_cluster
    from metascale.remote import SshPool
    from metascale.status import read_cluster_status

    key_text = None
    if cluster_block:
        from tasks.cluster_block import load_cluster  # imports Prefect: only for a block

        inventory, key_text = load_cluster(cluster_block=cluster_block)
        hint = f"`metascale sync-inventory --cluster-block {cluster_block}`"
    else:
        from metascale.inventory import load_inventory

        inventory = load_inventory(inventory_path)
        hint = f"`metascale sync-inventory --inventory {inventory_path}`"
    with SshPool.for_inventory(inventory, private_key_text=key_text) as pool:
        status = read_cluster_status(pool, inventory)
    view = view_of_cluster(status)
    drift = inventory_drift(inventory, view.voters, view.learners, view.node_addrs, sync_hint=hint)
    reason = status.stable_reason(status.voter_ids or inventory.meta_ids)
    report = status_report(status, drift, reason)
    if as_json:
        print(json.dumps(report, indent=2))
        return ExitCode(report["exit_code"])
    print(f"cluster {inventory.name}: leader {status.leader_id}, voters {status.voter_ids}, "
          f"answering {status.answering_ids}")
    print(_status_table(status))
    for item in drift:
        print(f"DRIFT: {item.line()}")
    if reason:
        print(f"NOT HEALTHY: {reason}", file=sys.stderr)
    elif drift:
        where = f"block {cluster_block}" if cluster_block else inventory_path
        print(f"the cluster is healthy; the inventory {where} does not match its membership "
              f"({len(drift)} difference(s), listed above)", file=sys.stderr)
    return ExitCode(report["exit_code"])


# ------------------------------------------------------------------------------------------- the Prefect API
def configured_api_url() -> str | None:
    """The Prefect API this command would use: PREFECT_API_URL from the environment, else from the active Prefect
    profile (that lookup imports Prefect's settings, so the environment is read first), else None."""
    url = os.environ.get("PREFECT_API_URL", "").strip()
    if url:
        return url
    from prefect.settings import get_current_settings

    return get_current_settings().api.url or None


def no_api_refusal(command: str, dry_run: bool) -> str:
    """The one line printed when no Prefect API is configured: how to point the command at one.

    A change must hold the cluster's lock on the team's Prefect server (the one `serve` or the worker uses), the
    same lock deployment runs take; a server started just for this command would hold a lock nobody else sees, so
    a real change names the team's server. A dry run changes nothing and may use any server, e.g. a local one.
    `status --cluster-block` reads the block from the server that holds it."""
    if command == "status":
        return (f"no Prefect API configured: --cluster-block reads the block from your team's Prefect server: set "
                f"PREFECT_API_URL to it (e.g. export PREFECT_API_URL={_EXAMPLE_API}), or give --inventory FILE "
                f"(no Prefect API needed)")
    if dry_run:
        return (f"no Prefect API configured: set PREFECT_API_URL to your team's Prefect server (e.g. export "
                f"PREFECT_API_URL={_EXAMPLE_API}), or for a dry run start a local one with `prefect server start "
                f"--background` and export PREFECT_API_URL={_LOCAL_API}")
    return (f"no Prefect API configured: `metascale {command}` changes the cluster and must take its lock on your "
            f"team's Prefect server: set PREFECT_API_URL to that server's API (e.g. export "
            f"PREFECT_API_URL={_EXAMPLE_API}), or add --dry-run to only plan")


def api_unreachable(api_url: str, timeout_s: float = 5.0) -> str | None:
    """None when ``api_url`` answers HTTP (any status: an API behind authentication answers too), else why not.
    Plain HTTP, no Prefect import: a wrong URL costs milliseconds, not a client's retries."""
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout_s):  # noqa: S310
            return None
    except urllib.error.HTTPError:
        return None
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"cannot reach the Prefect API at {api_url} ({reason}): start that server or fix PREFECT_API_URL"


# ------------------------------------------------------------------------------------------- console output
class _NoTracebackFormatter(logging.Formatter):
    """Wraps a console handler's formatter: the line without the exception's traceback (the run's log on the
    server keeps it; ``--verbose`` shows it here too)."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text or record.stack_info:
            record = logging.makeLogRecord(record.__dict__)  # a copy: the API handler still sends the traceback
            record.exc_info, record.exc_text, record.stack_info = None, None, None
        return self.inner.format(record)


@contextmanager
def console_without_tracebacks() -> Iterator[int]:
    """While the block runs, Prefect's console handlers print log lines without tracebacks; yields how many
    handlers were changed, and puts their formatters back at the end. Prefect's engine logs a failed run's exception
    with its traceback (``logger.exception("Encountered exception during execution: %r")``): that is where a
    failure's traceback on the console came from. Only Prefect's console handlers: pytest's or the caller's own
    handlers are left alone."""
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger()] + [obj for obj in logging.Logger.manager.loggerDict.values()
                                       if isinstance(obj, logging.Logger)]
    changed: list[tuple[logging.Handler, logging.Formatter | None]] = []
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, PrefectConsoleHandler) and not isinstance(handler.formatter,
                                                                             _NoTracebackFormatter):
                changed.append((handler, handler.formatter))
                handler.setFormatter(_NoTracebackFormatter(handler.formatter))
    try:
        yield len(changed)
    finally:
        for handler, formatter in changed:
            handler.setFormatter(formatter)  # type: ignore[arg-type]


def one_line(text: object) -> str:
    """``text`` on one line (whitespace runs, newlines included, become one space)."""
    return " ".join(str(text).split())


def run_url(state: Any) -> str | None:
    """The Prefect UI page of the flow run that ended in ``state`` (Prefect's own url_for), or None."""
    run_id = getattr(getattr(state, "state_details", None), "flow_run_id", None)
    if run_id is None:
        return None
    from prefect.utilities.urls import url_for

    try:
        return url_for("flow-run", obj_id=run_id)
    except Exception:  # noqa: BLE001 - a missing link must never hide the result
        return None


def exit_code_for(state: Any, error: object) -> ExitCode:
    """D1: a run whose state is named "Refused" -> REFUSED (3); a PlanRefused / bad parameter / bad inventory raised
    before any change -> REFUSED; anything else that did not complete (Failed, Crashed, Cancelled) -> FAILED (1)."""
    from metascale.errors import InventoryError, PlanRefused
    from prefect.exceptions import ParameterTypeError

    if state.name == "Refused" or isinstance(error, (PlanRefused, InventoryError, ParameterTypeError)):
        return ExitCode.REFUSED
    return ExitCode.FAILED


def stop_heartbeats_without_waiting() -> bool:
    """Make this process's flow runs stop their heartbeat thread at the end without joining it. Prefect's sync
    engine joins it, and the thread sleeps in 1 s steps, so each run's end waited up to 1 s (0.5-0.9 s measured)
    after the flow had returned; Prefect's async engine does not join it either. Only for the command: its process
    ends right after the run (``_flush_prefect_and_exit``). Heartbeats themselves are unchanged. Returns False when
    this Prefect has no such hook (a private name: the runs then just end as before)."""
    import functools

    import prefect.flow_engine as engine

    send = getattr(engine, "_send_heartbeats", None)
    if send is None or getattr(send, "func", None) is not None:
        return send is not None
    try:
        engine._send_heartbeats = functools.partial(send, join_on_exit=False)  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - a speed-up, never a reason to fail
        return False
    return True


def _run_flow(flow: object, *, verbose: bool = False, send_logs_first: bool = False,
              **parameters: object) -> ExitCode:
    """Run ``flow`` in this process; print its outcome, or its one-line reason; then the run's link; map the
    final state to an exit code (exit_code_for). ``send_logs_first``: send the run's queued log lines and events
    before printing (the command's last lines are then the result, not Prefect's "still processing" notes)."""
    state = flow(return_state=True, **parameters)  # type: ignore[operator]
    if send_logs_first:
        send_queued_logs_and_events()
    url = run_url(state)
    link = f"run: {url}" if url else ""
    if state.is_completed():
        outcome = state.result()
        if outcome.dry_run:
            print(outcome.plan_markdown)
        print(outcome.message)
        if link:
            print(link)
        return ExitCode.OK
    error = state.result(raise_on_failure=False)
    reason = str(error) if isinstance(error, BaseException) and str(error) else (state.message or state.type.value)
    print(f"{state.name}: {reason if verbose else one_line(reason)}", file=sys.stderr)
    if link:
        print(link, file=sys.stderr)
    return exit_code_for(state, error)


def _flow_call(args: argparse.Namespace) -> tuple[object, dict[str, object]]:
    """The flow and its parameters for a change command. require_approval=False: the operator who types the
    command is the approval (deployment runs pause; D4)."""
    where: dict[str, object] = ({"cluster_block": args.cluster_block} if args.cluster_block
                                else {"inventory": args.inventory})
    if args.command == "replace":
        from flows.replace_node import replace_node

        return replace_node, {"node_id": args.id, "new_host": args.host, **where, "dry_run": args.dry_run,
                              "require_approval": False, "verify_deadline_s": args.verify_deadline,
                              "leave_timeout_s": args.leave_timeout, "reset_new_node": args.reset_new_node,
                              "restart_query_nodes": args.restart_query_nodes}
    if args.command == "sync-inventory":
        from flows.sync_inventory import sync_inventory

        return sync_inventory, {**where, "dry_run": args.dry_run, "require_approval": False}
    if args.command == "scale-up":
        from flows.scale_up import scale_up

        nodes = [{"host": h, **({"node_id": args.id} if args.id is not None else {})} for h in args.host]
        return scale_up, {"new_nodes": nodes, **where, "dry_run": args.dry_run, "require_approval": False,
                          "verify_deadline_s": args.verify_deadline, "reset_new_node": args.reset_new_node,
                          "restart_query_nodes": args.restart_query_nodes,
                          "accept_no_fault_tolerance": args.accept_no_fault_tolerance}
    from flows.scale_down import scale_down

    return scale_down, {"node_ids": args.id, **where, "force": args.force, "dry_run": args.dry_run,
                        "require_approval": False, "verify_deadline_s": args.verify_deadline,
                        "leave_timeout_s": args.leave_timeout, "restart_query_nodes": args.restart_query_nodes,
                        "accept_no_fault_tolerance": args.accept_no_fault_tolerance}


def _run(args: argparse.Namespace, as_command: bool = False) -> ExitCode:
    if args.command == "scale-up" and args.id is not None and len(args.host) != 1:
        print("--id can only be given with a single --host", file=sys.stderr)
        return ExitCode.USAGE
    if args.command != "status" or args.cluster_block:  # a flow run, or a block to read: both need the API
        api_url = configured_api_url()
        if not api_url:
            print(f"refused: {no_api_refusal(args.command, getattr(args, 'dry_run', True))}", file=sys.stderr)
            return ExitCode.REFUSED
        unreachable = api_unreachable(api_url)
        if unreachable:
            print(f"error: {unreachable}; nothing was changed", file=sys.stderr)
            return ExitCode.FAILED
    if args.command == "status":
        return cmd_status(args.inventory or "", args.cluster_block or "", as_json=args.json)
    flow, parameters = _flow_call(args)  # imports Prefect (its console logging is set up on import)
    if as_command:
        stop_heartbeats_without_waiting()
    if args.verbose:
        return _run_flow(flow, verbose=True, send_logs_first=as_command, **parameters)
    with console_without_tracebacks():
        return _run_flow(flow, send_logs_first=as_command, **parameters)


def send_queued_logs_and_events(timeout_s: float = 10.0) -> None:
    """Send the log lines and events this process still queues for the Prefect API (at most ``timeout_s`` each).
    Never raises: the run's result matters more than a lost log line."""
    if "prefect" not in sys.modules:
        return
    notes = [logging.getLogger(name) for name in ("APILogWorker", "EventsWorker")]  # "Still processing items…"
    levels = [logger.level for logger in notes]
    try:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        for logger in notes:
            logger.setLevel(logging.ERROR)
        APILogWorker.drain_all(timeout=timeout_s)
        EventsWorker.drain_all(timeout=timeout_s)
    except Exception:  # noqa: BLE001
        pass
    finally:
        for logger, level in zip(notes, levels, strict=True):
            logger.setLevel(level)


def _flush_prefect_and_exit(code: int) -> None:
    """End the `metascale` process now: send what is still queued for the API, flush stdout/stderr, then
    ``os._exit``. Skips the interpreter's own shutdown of Prefect's background threads and module teardown, which
    took 0.3-1 s (more under load) after the result was printed (bench/cli_timing.py)."""
    send_queued_logs_and_events()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `metascale`; returns the process exit code.

    ``argv=None`` means "the command itself" (console script / ``python -m deployments.cli``): the process then
    ends here, right after the run's logs are sent (``_flush_prefect_and_exit``). With an explicit ``argv`` (tests)
    it returns the code. Never prints a traceback unless ``--verbose``.
    """
    from metascale.redact import install_log_redaction, redact_std_streams

    for key, value in _PREFECT_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    os.environ.update(_PREFECT_ENV_FORCED)
    install_log_redaction()
    redact_std_streams()  # nothing the CLI or a flow run in it prints shows a secret value it has read
    args = _parser().parse_args(argv)
    try:
        code = int(_run(args, as_command=argv is None))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = int(ExitCode.INTERRUPTED)
    except Exception as exc:  # bad inventory, unreachable hosts, the API going away: one line, no traceback
        from metascale.errors import InventoryError, MetaScaleError, PlanRefused

        if args.verbose:
            import traceback

            traceback.print_exc()
        kind = "" if isinstance(exc, MetaScaleError) else f"{type(exc).__name__}: "
        print(f"error: {kind}{one_line(exc)}", file=sys.stderr)
        code = int(ExitCode.REFUSED if isinstance(exc, (InventoryError, PlanRefused)) else ExitCode.FAILED)
    if argv is None:
        _flush_prefect_and_exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
