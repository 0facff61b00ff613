"""The `metascale` command: `status` (plain core, no Prefect), `scale-up`, `scale-down`, `replace` and
`sync-inventory` (the Prefect flows).

`scale-up` / `scale-down` / `sync-inventory` run the same flows as the deployments, in this process, against
PREFECT_API_URL: they take the same cluster lock as deployment runs, so without PREFECT_API_URL a real change is
refused (a `--dry-run` then uses a temporary local Prefect server). Progress streams as the run's log lines; a
failed run prints the flow's message and exits non-zero (see ExitCode).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes of `metascale`."""

    OK = 0
    FAILED = 1          # a run failed while changing the cluster (see its message: state and next step)
    USAGE = 2           # bad command line (argparse)
    REFUSED = 3         # refused before any change: bad input, unsafe plan, rejected, outside the window
    UNHEALTHY = 4       # `status`: no leader, a voter does not answer, or the nodes disagree
    DRIFT = 5           # `status`: the cluster is healthy, but the inventory does not match its membership
    INTERRUPTED = 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metascale", description="Scale a Databend Meta Service cluster safely.")
    sub = parser.add_subparsers(dest="command", required=True)
    status = sub.add_parser("status", help="show leader, voters, non-voters and who answers (read-only, fast)")
    status.add_argument("--inventory", required=True, help="path to the cluster's inventory TOML")
    up = sub.add_parser("scale-up", help="add a meta node (runs the scale-up flow)")
    up.add_argument("--inventory", required=True)
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
    down = sub.add_parser("scale-down", help="remove a meta node (runs the scale-down flow)")
    down.add_argument("--inventory", required=True)
    down.add_argument("--id", type=int, required=True, action="append", help="raft id to remove (repeatable)")
    down.add_argument("--force", action="store_true", help="the node's host is dead: remove it via the live nodes")
    down.add_argument("--dry-run", action="store_true")
    down.add_argument("--verify-deadline", type=float, default=60)
    down.add_argument("--leave-timeout", type=float, default=60)
    down.add_argument("--restart-query-nodes", action="store_true",
                      help="restart the query nodes one at a time after their endpoints are written")
    down.add_argument("--accept-no-fault-tolerance", action="store_true",
                      help="allow a change that leaves 1 or 2 voters (no failure tolerated); refused without it")
    replace = sub.add_parser("replace", help="replace a meta node by a new host in one run (runs the replace-node "
                                             "flow: a dead node is removed first, a live one after the new joined)")
    replace.add_argument("--inventory", required=True)
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
    sync = sub.add_parser("sync-inventory", help="write the cluster's membership into the inventory file (runs "
                                                 "the sync-inventory flow; shows the diff first)")
    sync.add_argument("--inventory", required=True, help="path to the cluster's inventory TOML")
    sync.add_argument("--dry-run", action="store_true", help="show the drift and the diff; write nothing")
    return parser


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


def cmd_status(inventory_path: str) -> ExitCode:
    """Print the cluster's status table (members the inventory lacks are found in the cluster's status and probed
    too) and every difference between the inventory and the membership with its fix; UNHEALTHY when there is no
    leader, a voter is silent or nodes disagree, else DRIFT when the inventory does not match the membership."""
    from metascale.drift import inventory_drift
    from metascale.inventory import load_inventory
    from metascale.preview import view_of_cluster
    from metascale.remote import SshPool
    from metascale.status import read_cluster_status

    inventory = load_inventory(inventory_path)
    with SshPool.for_inventory(inventory) as pool:
        status = read_cluster_status(pool, inventory)
    print(f"cluster {inventory.name}: leader {status.leader_id}, voters {status.voter_ids}, "
          f"answering {status.answering_ids}")
    print(_status_table(status))
    view = view_of_cluster(status)
    hint = f"`metascale sync-inventory --inventory {inventory_path}`"
    drift = inventory_drift(inventory, view.voters, view.learners, view.node_addrs, sync_hint=hint)
    for item in drift:
        print(f"DRIFT: {item.line()}")
    reason = status.stable_reason(status.voter_ids or inventory.meta_ids)
    if reason:
        print(f"NOT HEALTHY: {reason}", file=sys.stderr)
        return ExitCode.UNHEALTHY
    if drift:
        print(f"the cluster is healthy; the inventory {inventory_path} does not match its membership "
              f"({len(drift)} difference(s), listed above)", file=sys.stderr)
        return ExitCode.DRIFT
    return ExitCode.OK


def _run_flow(flow: object, **parameters: object) -> ExitCode:
    """Run ``flow`` in this process; print its outcome or failure message; map the result to an exit code."""
    from metascale.errors import InventoryError, PlanRefused

    state = flow(return_state=True, **parameters)  # type: ignore[operator]
    from prefect.exceptions import ParameterTypeError

    if state.is_completed():
        outcome = state.result()
        if outcome.dry_run:
            print(outcome.plan_markdown)
        print(outcome.message)
        return ExitCode.OK
    error = state.result(raise_on_failure=False)
    print(f"{state.name}: {error if isinstance(error, BaseException) else state.message}", file=sys.stderr)
    if isinstance(error, (PlanRefused, InventoryError, ValueError, ParameterTypeError)) or state.is_cancelled():
        return ExitCode.REFUSED
    return ExitCode.FAILED


def team_api_refusal(command: str, dry_run: bool) -> str | None:
    """Why `command` may not change a cluster from here, or None.

    A change must hold the cluster's lock on the team's Prefect server (the one `serve` or the worker uses), the
    same lock deployment runs take; a temporary local server would hold a lock nobody else sees. So a real
    scale-up/scale-down needs PREFECT_API_URL (environment or Prefect profile); a dry run changes nothing and
    may use a temporary server.
    """
    if dry_run:
        return None
    from prefect.settings import get_current_settings

    if get_current_settings().api.url:
        return None
    return (f"`metascale {command}` changes the cluster and must take its lock on your team's Prefect server: set "
            f"PREFECT_API_URL to that server's API (e.g. http://prefect.example:4200/api), or add --dry-run to "
            f"only plan")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `metascale`; returns the process exit code."""
    from metascale.redact import install_log_redaction, redact_std_streams

    install_log_redaction()
    redact_std_streams()  # nothing the CLI or a flow run in it prints shows a secret value it has read
    args = _parser().parse_args(argv)
    try:
        if args.command == "status":
            return int(cmd_status(args.inventory))
        if args.command in ("scale-up", "scale-down", "sync-inventory", "replace"):
            refusal = team_api_refusal(args.command, args.dry_run)
            if refusal:
                print(f"refused: {refusal}", file=sys.stderr)
                return int(ExitCode.REFUSED)
        if args.command == "replace":
            from flows.replace_node import replace_node

            # the operator who types the command is the approval: no pause for a UI answer (deployment runs pause)
            return int(_run_flow(replace_node, node_id=args.id, new_host=args.host, inventory=args.inventory,
                                 dry_run=args.dry_run, require_approval=False, verify_deadline_s=args.verify_deadline,
                                 leave_timeout_s=args.leave_timeout, reset_new_node=args.reset_new_node,
                                 restart_query_nodes=args.restart_query_nodes))
        if args.command == "sync-inventory":
            from flows.sync_inventory import sync_inventory

            return int(_run_flow(sync_inventory, inventory=args.inventory, dry_run=args.dry_run))
        if args.command == "scale-up":
            if args.id is not None and len(args.host) != 1:
                print("--id can only be given with a single --host", file=sys.stderr)
                return int(ExitCode.USAGE)
            from flows.scale_up import scale_up

            nodes = [{"host": h, **({"node_id": args.id} if args.id is not None else {})} for h in args.host]
            return int(_run_flow(scale_up, new_nodes=nodes, inventory=args.inventory, dry_run=args.dry_run,
                                 verify_deadline_s=args.verify_deadline, reset_new_node=args.reset_new_node,
                                 restart_query_nodes=args.restart_query_nodes,
                                 accept_no_fault_tolerance=args.accept_no_fault_tolerance))
        from flows.scale_down import scale_down

        return int(_run_flow(scale_down, node_ids=args.id, inventory=args.inventory, force=args.force,
                             dry_run=args.dry_run, verify_deadline_s=args.verify_deadline,
                             leave_timeout_s=args.leave_timeout, restart_query_nodes=args.restart_query_nodes,
                             accept_no_fault_tolerance=args.accept_no_fault_tolerance))
    except KeyboardInterrupt:
        return int(ExitCode.INTERRUPTED)
    except Exception as exc:  # bad inventory file, unreachable hosts for `status`: one line, no traceback
        from metascale.errors import MetaScaleError

        if not isinstance(exc, (MetaScaleError, OSError)):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return int(ExitCode.REFUSED if isinstance(exc, ValueError) else ExitCode.FAILED)


if __name__ == "__main__":
    sys.exit(main())
