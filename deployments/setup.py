"""Prepare a Prefect server for metascale. Idempotent: run it as often as you like.

    python -m deployments.setup [--cluster NAME ...]
        [--cluster-block NAME --inventory FILE [--ssh-key-file FILE --ssh-key-secret NAME]]

* creates the process work pool `metascale-pool` (for `prefect deploy --all` + `prefect worker start`);
* registers the block types (`metascale-cluster`, `secret`);
* creates the global concurrency limit `metascale-cluster-<name>` (limit 1) for every given cluster
  (and for the cluster of `--inventory`), or sets it back to limit 1 and active;
* with `--cluster-block`: sets the Prefect variable `metascale-cluster-block` (the deployments' default cluster,
  read by `prefect deploy`) to it, unless it is already set;
* with `--cluster-block`: saves the inventory as a `metascale-cluster` block; with `--ssh-key-file` the key goes into
  the Secret block `--ssh-key-secret` (default `<block>-ssh-key`) and the block's inventory refers to it by name;
* with `--notify-webhook URL` or `--notify-block TYPE/NAME`: the notification block and the automations of
  `deployments/automations/` (deployments/notifications.py).
Needs PREFECT_API_URL pointing at the server.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from deployments.specs import WORK_POOL


@dataclass
class SetupReport:
    """What `setup` found or changed, one sentence per item."""

    lines: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        self.lines.append(line)


def ensure_work_pool(report: SetupReport, name: str = WORK_POOL) -> None:
    """Create the process work pool `name` unless it exists. Idempotent."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            report.add(f"work pool {name} already exists")
            return
        except ObjectNotFound:
            pass
        try:
            client.create_work_pool(WorkPoolCreate(
                name=name, type="process", description="Runs metascale flows as local processes on the worker host",
                base_job_template=ProcessWorker.get_default_base_job_template()))
            report.add(f"work pool {name} created (type process)")
        except ObjectAlreadyExists:
            report.add(f"work pool {name} already exists")


def ensure_default_cluster(report: SetupReport, block: str) -> None:
    """Set the Prefect variable `metascale-cluster-block` (the cluster prefect.yaml's deployments default to) to
    ``block`` unless it is already set: an operator's choice is never overwritten."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import VariableCreate
    from prefect.exceptions import ObjectAlreadyExists

    name = "metascale-cluster-block"
    with get_client(sync_client=True) as client:
        current = client.read_variable_by_name(name)
        if current is None:
            try:
                client.create_variable(VariableCreate(name=name, value=block))
                report.add(f"variable {name} set to {block!r} (the deployments' default cluster; redeploy after "
                           f"changing it)")
                return
            except ObjectAlreadyExists:
                current = client.read_variable_by_name(name)
        value = current.value if current is not None else None
        report.add(f"variable {name} stays {value!r} (set before; change it in the UI or with "
                   f"`prefect variable set {name} NAME --overwrite`, then redeploy)")


def save_cluster(report: SetupReport, block: str, inventory_path: Path, key_file: Path | None,
                 key_secret: str | None) -> str:
    """Save `inventory_path` as the `metascale-cluster` block `block` (and the key as a Secret). Returns the cluster
    name. With a key file, the stored inventory refers to the Secret instead of the file. Idempotent."""
    from metascale.inventory import load_inventory
    from tasks.cluster_block import save_cluster_block, save_key_secret

    inventory = load_inventory(inventory_path)
    secret_name = ""
    if key_file is not None:
        secret_name = key_secret or f"{block}-ssh-key"
        save_key_secret(secret_name, key_file)
        ssh = inventory.ssh.model_copy(update={"private_key_file": None, "private_key_secret": secret_name})
        inventory = inventory.model_copy(update={"ssh": ssh})
        report.add(f"secret block {secret_name} holds the key from {key_file}")
    save_cluster_block(block, inventory, ssh_key_secret=secret_name or None)
    report.add(f"cluster block {block} saved: cluster {inventory.name}, meta ids {inventory.meta_ids}")
    return inventory.name


def run_setup(clusters: list[str], block: str | None = None, inventory: Path | None = None,
              key_file: Path | None = None, key_secret: str | None = None) -> SetupReport:
    """Do everything the module docstring lists against the current Prefect API. Idempotent."""
    from flows.cluster_lock import ensure_cluster_limit  # the one copy (the flows create it too)
    from tasks.cluster_block import check_block_name, register_block_types

    report = SetupReport()
    ensure_work_pool(report)
    register_block_types()
    report.add("block types metascale-cluster and secret registered")
    names = list(clusters)
    if block is not None:
        if inventory is None:
            raise ValueError(f"--cluster-block {block} needs --inventory FILE (the inventory to store in it)")
        check_block_name(block, "cluster block")
        names.append(save_cluster(report, block, inventory, key_file, key_secret))
        ensure_default_cluster(report, block)
    for cluster in dict.fromkeys(names):
        check_block_name(cluster, "cluster")
        report.add(ensure_cluster_limit(cluster, reset=True))
    return report


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; prints one line per item. Returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m deployments.setup",
                                     description="Prepare a Prefect server for metascale (idempotent).")
    parser.add_argument("--cluster", action="append", default=[], help="cluster name to create a limit for")
    parser.add_argument("--cluster-block", help="save --inventory as this metascale-cluster block")
    parser.add_argument("--inventory", type=Path, help="inventory TOML to store in the block")
    parser.add_argument("--ssh-key-file", type=Path, help="private key to store in a Secret block")
    parser.add_argument("--ssh-key-secret", help="Secret block name for the key (default <block>-ssh-key)")
    parser.add_argument("--notify-webhook", metavar="URL", help="notify through a webhook (deployments/notifications.py)")
    parser.add_argument("--notify-block", metavar="TYPE/NAME", help="notify through this existing notification block")
    args = parser.parse_args(argv)
    try:
        report = run_setup(args.cluster, args.cluster_block, args.inventory, args.ssh_key_file, args.ssh_key_secret)
        if args.notify_webhook or args.notify_block:
            from deployments.notifications import setup_notifications

            report.lines += setup_notifications(args.notify_webhook, args.notify_block)
    except ValueError as exc:
        parser.exit(2, f"setup: {exc}\n")
    for line in report.lines:
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
