"""Bad input is refused with one clear message before any change; a failure before the join is undone;
`cluster-check` and the `metascale` command. Real Prefect server, real lab hosts."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from deployments.cli import ExitCode
from flows.cluster_check import cluster_check
from flows.scale_down import scale_down
from flows.scale_up import scale_up
from metascale.inventory import load_inventory
from sandbox.lab import Lab
from tests.flows.test_scale_flows import SPARE1, _snapshot, _voters

pytestmark = [pytest.mark.lab, pytest.mark.prefect]
REPO = Path(__file__).resolve().parent.parent.parent
RUN_LINK = re.compile(r"run: http://127\.0\.0\.1:\d+/runs/flow-run/[0-9a-f-]{36}")


@pytest.fixture
def inventory(fresh_lab: Lab, tmp_path: Path) -> Path:
    copy = tmp_path / "inventory.toml"
    shutil.copyfile(fresh_lab.inventory, copy)
    return copy


def _closed_window() -> str:
    """A one-hour window on a weekday other than today (UTC): now is always outside it."""
    other = (datetime.now(timezone.utc) + timedelta(days=3)).strftime("%a")
    return f"{other} 03:00-04:00 UTC"


def test_bad_input_is_refused_before_any_change(fresh_lab: Lab, inventory: Path, tmp_path: Path) -> None:
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("name = [unclosed\n")
    inv = str(inventory)
    cases: list[tuple[Any, dict[str, Any], str]] = [
        (scale_up, {"new_nodes": [{"host": "a;rm -rf /"}], "inventory": inv}, "not a hostname"),
        (scale_up, {"new_nodes": [{"host": SPARE1, "node_id": 2}], "inventory": inv}, "node id 2 is already used"),
        (scale_up, {"new_nodes": [{"host": "127.100.0.12", "node_id": 7}], "inventory": inv}, "already voter meta-2"),
        (scale_up, {"new_nodes": [{"host": "127.100.0.16"}], "inventory": inv}, "no databend-meta package"),
        (scale_up, {"new_nodes": [{"host": "127.100.0.99"}], "inventory": inv}, "not reachable over SSH"),
        (scale_up, {"new_nodes": [], "inventory": inv}, "new_nodes is empty"),
        (scale_down, {"node_ids": [1, 2, 3], "inventory": inv}, "last voter"),
        (scale_down, {"node_ids": [2], "inventory": inv, "cluster_block": "lab"}, "exactly one"),
        (scale_down, {"node_ids": [2], "inventory": inv, "verify_deadline_s": 0}, "verify_deadline_s must be > 0"),
        (scale_down, {"node_ids": [2], "inventory": inv, "leave_timeout_s": -1}, "leave_timeout_s must be > 0"),
        (scale_down, {"node_ids": [2], "inventory": inv, "force": True}, "force is for a dead node"),
        (scale_down, {"node_ids": [2], "inventory": str(bad_toml)}, "invalid TOML"),
        (scale_down, {"node_ids": [2], "cluster_block": "no-such-block"}, "no-such-block"),
        (scale_down, {"node_ids": [2], "inventory": inv, "maintenance_window": _closed_window(),
                      "accept_no_fault_tolerance": True}, "outside the maintenance window"),
    ]
    before = _snapshot(fresh_lab)
    inventory_text = inventory.read_text()
    for flow, kwargs, needle in cases:
        state = flow(return_state=True, **kwargs)
        assert state.is_failed(), (kwargs, state)
        assert needle in str(state.message), (needle, state.message)
    assert _snapshot(fresh_lab) == before and inventory.read_text() == inventory_text


def test_malformed_config_on_a_host_is_refused_before_any_change(fresh_lab: Lab, inventory: Path) -> None:
    fresh_lab.root_exec("query2", ["sh", "-c", "echo '[meta' >> /etc/databend/databend-query.toml"])
    fresh_lab.root_exec("meta2", ["sh", "-c", "sed -i 's/^\\[raft_config\\]/[raft]/' /etc/databend/databend-meta.toml"])
    before = _snapshot(fresh_lab)
    down = scale_down(node_ids=[3], inventory=str(inventory), return_state=True, require_approval=False)
    assert down.is_failed() and "cannot edit config" in str(down.message)
    assert _snapshot(fresh_lab) == before


def test_failure_before_the_join_is_undone(fresh_lab: Lab, inventory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect import task

    from metascale.errors import RemoteCommandError
    from tasks import runbook

    @task(name="start-meta-service")
    def broken(inventory: Any, node: Any) -> Any:
        raise RemoteCommandError(node.host, "systemctl start databend-meta", 1, "injected by the test")

    spare_before = fresh_lab.root_exec("spare1", ["cat", "/etc/databend/databend-meta.toml"]).stdout
    monkeypatch.setattr(runbook, "start_meta_service", broken)
    state = scale_up(new_nodes=[{"host": SPARE1}], inventory=str(inventory), return_state=True, require_approval=False)
    assert state.is_failed()
    message = str(state.message)
    assert "failed at step 'start meta-4'" in message and "restored 127.100.0.14:/etc/databend" in message
    assert fresh_lab.root_exec("spare1", ["cat", "/etc/databend/databend-meta.toml"]).stdout == spare_before
    assert _voters(fresh_lab, "meta1") == {1, 2, 3}


def test_cluster_check_passes_then_fails_on_a_dead_voter(fresh_lab: Lab, inventory: Path) -> None:
    assert "leader=1" in cluster_check(inventory=str(inventory))
    fresh_lab.crash("meta2")
    state = cluster_check(inventory=str(inventory), return_state=True)
    assert state.is_failed() and "voters [2] do not answer" in str(state.message)


def _cli(*args: str, timeout_s: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deployments.cli", *args], capture_output=True, text=True,
                          timeout=timeout_s, cwd=REPO)


def test_cli_status_scale_up_dry_run_and_refusal(fresh_lab: Lab, inventory: Path) -> None:
    status = _cli("status", "--inventory", str(inventory))
    assert status.returncode == ExitCode.OK, status.stderr
    assert "meta-1  127.100.0.11  Leader" in status.stdout

    dry = _cli("scale-up", "--inventory", str(inventory), "--host", SPARE1, "--dry-run")
    assert dry.returncode == ExitCode.OK, dry.stderr
    assert "# Plan: scale-up on cluster `lab`" in dry.stdout and "dry run: nothing was changed" in dry.stdout
    assert RUN_LINK.search(dry.stdout.splitlines()[-1]), dry.stdout[-300:]  # the run's page, last

    replace = _cli("replace", "--inventory", str(inventory), "--id", "2", "--dry-run")  # issue #12: the CLI
    assert replace.returncode == ExitCode.OK, replace.stderr
    assert "# Plan: replace-node on cluster `lab`" in replace.stdout and "dry run: nothing was changed" in replace.stdout
    assert f"1. add meta-4 ({SPARE1})" in replace.stdout and "ORDER: add meta-4 first" in replace.stdout

    refused = _cli("scale-down", "--inventory", str(inventory), "--id", "1", "--id", "2", "--id", "3")
    assert refused.returncode == ExitCode.REFUSED and "last voter" in refused.stderr
    # issue #11: the one-line reason, then the run's link; no traceback (the engine used to log one per refusal)
    reason, link = refused.stderr.rstrip("\n").splitlines()[-2:]
    assert reason.startswith("Refused: refusing scale-down: ") and "last voter" in reason, refused.stderr[-500:]
    assert RUN_LINK.fullmatch(link), link
    assert "Traceback" not in refused.stdout + refused.stderr, refused.stderr

    done = _cli("scale-down", "--inventory", str(inventory), "--id", "3", "--accept-no-fault-tolerance")
    assert done.returncode == ExitCode.OK, done.stderr
    assert load_inventory(inventory).meta_ids == [1, 2]

    fresh_lab.crash("meta2")
    unhealthy = _cli("status", "--inventory", str(inventory))
    assert unhealthy.returncode == ExitCode.UNHEALTHY and "no answer" in unhealthy.stdout


def test_scale_down_through_a_cluster_block_with_the_key_in_a_secret(fresh_lab: Lab) -> None:
    from metascale.inventory import Inventory
    from tasks.cluster_block import load_cluster, register_block_types, save_cluster_block, save_key_secret

    data = load_inventory(fresh_lab.inventory).model_dump(by_alias=True, exclude_none=True)
    data["ssh"].pop("private_key_file")
    data["ssh"]["private_key_secret"] = "h4-lab-key"
    register_block_types()
    save_key_secret("h4-lab-key", fresh_lab.key_file)
    save_cluster_block("h4-lab", Inventory.model_validate(data))

    outcome = scale_down(node_ids=[3], cluster_block="h4-lab", accept_no_fault_tolerance=True, require_approval=False)
    assert outcome.voters_after == [1, 2] and _voters(fresh_lab, "meta1") == {1, 2}
    recorded, key_text = load_cluster(cluster_block="h4-lab")
    assert recorded.meta_ids == [1, 2] and key_text is not None
    assert "PRIVATE KEY" not in outcome.message + outcome.plan_markdown
