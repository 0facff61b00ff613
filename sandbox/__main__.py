"""`python -m sandbox up|down|status|reset|fault KIND HOST|install-version HOST V|grpc-tls HOST`: the lab from the
command line.

Prefix and directory come from MSLAB_PREFIX / MSLAB_DIR. Errors print one line and exit non-zero.
"""
from __future__ import annotations

import argparse
import sys

from sandbox.lab import Lab, LabError

FAULTS = ("crash", "stop-host", "start-host", "cut", "heal")


def build_parser() -> argparse.ArgumentParser:
    """The command-line grammar."""
    parser = argparse.ArgumentParser(prog="python -m sandbox", description="Local lab of databend-meta test hosts.")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="build the lab and form the meta cluster")
    up.add_argument("--meta", type=int, default=3, help="meta hosts (default 3)")
    up.add_argument("--spare", type=int, default=2, help="spare hosts, not in the cluster (default 2)")
    up.add_argument("--query", type=int, default=2, help="query hosts (default 2)")
    sub.add_parser("down", help="remove everything the lab created (no-op if not up)")
    sub.add_parser("status", help="one line per host")
    reset = sub.add_parser("reset", help="back to the baseline cluster without recreating hosts")
    reset.add_argument("--full", action="store_true", help="re-form the cluster even if it looks like the baseline")
    fault = sub.add_parser("fault", help="inject a fault")
    fault.add_argument("kind", choices=FAULTS)
    fault.add_argument("host", help="host name, e.g. meta2")
    ver = sub.add_parser("install-version", help="make a host play an older databend-meta release")
    ver.add_argument("host", help="host name, e.g. meta2")
    ver.add_argument("release", help='e.g. 1.2.600, or "newest"')
    tls = sub.add_parser("grpc-tls", help="serve TLS on a host's meta gRPC API (self-signed); prints the cert")
    tls.add_argument("host", help="host name, e.g. meta2")
    return parser


def run(args: argparse.Namespace, lab: Lab) -> str:
    """Do the command; returns the line(s) to print."""
    if args.command == "up":
        seconds = lab.up(args.meta, args.spare, args.query)
        return (f"lab {lab.prefix} up: {len(lab.hosts)} hosts in {seconds:.1f} s; "
                f"try: ssh -F {lab.ssh_config} meta1 databend-metactl status "
                f"--grpc-api-address {lab.grpc_address('meta1')}")
    if args.command == "down":
        return f"lab {lab.prefix} down in {lab.down():.1f} s"
    if args.command == "reset":
        return f"lab {lab.prefix} reset in {lab.reset(full=args.full):.1f} s"
    if args.command == "status":
        rows = lab.status()
        if not rows:
            return f"lab {lab.prefix} is not up ({lab.directory})"
        return "\n".join(
            f"{r['name']:<8} {r['ip']:<14} {r['role']:<6} {'running' if r['running'] else 'stopped':<8} "
            f"link={'up' if r['link'] else 'CUT'} ssh={'open' if r['ssh'] else 'closed'} {r['service']}"
            for r in rows)
    if args.command == "install-version":
        lab.install_version(args.host, None if args.release == "newest" else args.release)
        return f"{args.host}: databend-meta release {args.release} installed"
    if args.command == "grpc-tls":
        return lab.enable_grpc_tls(args.host).rstrip("\n")
    action = {"crash": lab.crash, "stop-host": lab.stop_host, "start-host": lab.start_host,
              "cut": lab.cut, "heal": lab.heal}[args.kind]
    action(args.host)
    return f"{args.kind} {args.host}: done"


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 1 lab error, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    try:
        print(run(args, Lab()))
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
