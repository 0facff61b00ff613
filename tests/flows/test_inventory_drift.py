"""The cluster is the truth about membership, the inventory about access (issue #10), on the lab: with an inventory
that lacks a live voter, `metascale status` shows the cluster as it is and names the drift, plans and cluster-check
name it with its fix (never "dead", never "force"), `sync-inventory` shows the diff and writes the membership, and a
member the inventory never listed (half-added) is removed by `scale-down` by its id. Real Prefect server, real lab."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from deployments.cli import ExitCode
from flows.cluster_check import cluster_check
from flows.scale_down import scale_down
from flows.sync_inventory import sync_inventory
from metascale.inventory import Inventory, load_inventory
from sandbox.lab import Lab
from tests.flows.test_scale_flows import _voters

pytestmark = [pytest.mark.lab, pytest.mark.prefect]
REPO = Path(__file__).resolve().parent.parent.parent


def _cli(*args: str, timeout_s: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deployments.cli", *args], capture_output=True, text=True,
                          timeout=timeout_s, cwd=REPO)


def _without_meta_3(full: Inventory) -> str:
    """The lab's inventory with meta-3 left out (not recorded as removed): a live voter the inventory lacks."""
    data = full.model_dump(by_alias=True, exclude_none=True)
    data["meta"] = [n for n in data["meta"] if n["id"] != 3]
    return Inventory.model_validate(data).to_toml()


def test_a_stale_inventory_is_named_as_drift_synced_and_a_half_added_node_removed_by_id(
        fresh_lab: Lab, tmp_path: Path) -> None:
    path = tmp_path / "inventory.toml"
    stale = _without_meta_3(load_inventory(fresh_lab.inventory))
    path.write_text(stale)

    status = _cli("status", "--inventory", str(path))
    assert status.returncode == ExitCode.DRIFT, (status.stdout, status.stderr)
    row = next(line for line in status.stdout.splitlines() if line.startswith("meta-3"))
    assert "no answer" not in row and "not in inventory" in row
    assert "DRIFT: meta-3 (127.100.0.13:28004) is a voter of cluster lab but missing from the inventory" in status.stdout
    assert f"metascale sync-inventory --inventory {path}" in status.stdout and "NOT HEALTHY" not in status.stderr

    refused = scale_down(node_ids=[2], inventory=str(path), dry_run=True, return_state=True, require_approval=False)
    message = str(refused.message)
    assert refused.is_failed() and "meta-3" in message and "missing from the inventory" in message
    assert "sync-inventory" in message and "force" not in message and "dead" not in message

    check = cluster_check(inventory=str(path), return_state=True)
    assert check.is_failed() and "does not match the cluster" in str(check.message) and "meta-3" in str(check.message)

    dry = _cli("sync-inventory", "--inventory", str(path), "--dry-run")
    assert dry.returncode == ExitCode.OK, dry.stderr
    assert "+id = 3" in dry.stdout and '+host = "127.100.0.13"' in dry.stdout and path.read_text() == stale

    synced = sync_inventory(inventory=str(path), require_approval=False)
    assert synced.changed and load_inventory(path).meta_ids == [1, 2, 3]
    assert not sync_inventory(inventory=str(path), require_approval=False).changed  # the second sync records nothing

    path.write_text(stale)  # meta-3 is now a member the inventory never listed, as after a failed scale-up
    removed = scale_down(node_ids=[3], inventory=str(path), accept_no_fault_tolerance=True, require_approval=False)
    assert removed.changed and _voters(fresh_lab, "meta1") == {1, 2}
    after = load_inventory(path)
    assert after.meta_ids == [1, 2] and after.removed_node(3) is not None and after.next_free_id() == 4
    assert fresh_lab.root_exec("meta3", ["systemctl", "is-active", "databend-meta"], check=False).stdout.strip() \
        == "inactive"
    again = sync_inventory(inventory=str(path), dry_run=True, require_approval=False)
    assert not again.changed and "nothing to do" in again.message
