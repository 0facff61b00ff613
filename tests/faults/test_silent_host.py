"""Issue #10, hosts that stop answering: a host whose network is cut in the middle of a step, after its SSH
connection is open (no RST, no FIN: the connection just goes silent).

The step fails within its deadline (the inventory's `command_timeout_s`) with a message naming the host, the cluster
lock is released, and a rerun converges once the host is back. Unit-level proofs of every deadline (exec, channel
open, SFTP read/upload, keepalives) are in tests/unit/test_remote_deadlines.py.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from prefect import task

from flows.cluster_lock import lock_is_held
from flows.scale_up import scale_up
from metascale.inventory import QueryNode
from metascale.remote import SILENT_HOST_HINT
from sandbox.lab import Lab, LabError
from tasks import runbook
from tests.faults.lab_state import assert_consistent, read_config
from tests.faults.test_fault_matrix import poll

pytestmark = [pytest.mark.lab, pytest.mark.prefect]

SPARE1 = "127.100.0.14"
QUERY1 = "127.100.0.16"
COMMAND_TIMEOUT_S = 10
SLACK_S = 5


@pytest.fixture
def inventory(fresh_lab: Lab, tmp_path: Path) -> Path:
    """A private copy of the lab's inventory with a short command deadline (the flows rewrite it)."""
    text = fresh_lab.inventory.read_text()
    assert "command_timeout_s = 30" in text
    copy = tmp_path / "inventory.toml"
    copy.write_text(text.replace("command_timeout_s = 30", f"command_timeout_s = {COMMAND_TIMEOUT_S}"))
    return copy


def _answers_ssh(lab: Lab, name: str) -> bool:
    try:
        return lab.ssh(name, ["true"], timeout_s=5).returncode == 0
    except LabError:
        return False


def test_query_host_cut_mid_step_fails_within_its_deadline_releases_the_lock_and_a_rerun_converges(
        fresh_lab: Lab, inventory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = runbook.update_query_meta_endpoints
    step_seconds: dict[str, float] = {}

    @task(name=original.name, task_run_name=f"{original.name} (query1 cut)")
    def cut_then_update(inventory: Any, query: QueryNode, endpoints: list[str]) -> Any:
        if query.host != QUERY1:
            return original.fn(inventory, query, endpoints)
        fresh_lab.cut("query1")   # its connection (SFTP included) was opened by the pre-flight read of its config
        started = time.monotonic()
        try:
            return original.fn(inventory, query, endpoints)
        finally:
            step_seconds[QUERY1] = time.monotonic() - started

    monkeypatch.setattr(runbook, "update_query_meta_endpoints", cut_then_update)
    query1_before = read_config(fresh_lab, "query1")
    try:
        state = scale_up(new_nodes=[{"host": SPARE1}], inventory=str(inventory), verify_deadline_s=30,
                         return_state=True, require_approval=False)
        message = str(state.message)
        assert state.is_failed(), state
        assert step_seconds[QUERY1] < COMMAND_TIMEOUT_S + SLACK_S, step_seconds
        assert f"{QUERY1}: `read /etc/databend/databend-query.toml over SFTP` did not finish within " \
               f"{COMMAND_TIMEOUT_S} s" in message, message
        assert SILENT_HOST_HINT in message and "update query meta endpoints" in message, message
        assert not lock_is_held("lab"), "the failed run released the cluster lock"
        assert read_config(fresh_lab, "query1") == query1_before, "the silent host's config was not touched"
    finally:
        fresh_lab.heal("query1")
    monkeypatch.undo()
    poll(lambda: _answers_ssh(fresh_lab, "query1"), "query1 answering SSH again")
    rerun = scale_up(new_nodes=[{"host": SPARE1}], inventory=str(inventory), verify_deadline_s=30,
                     require_approval=False)
    assert rerun.voters_after == [1, 2, 3, 4], rerun
    assert assert_consistent(fresh_lab, inventory) == {1, 2, 3, 4}   # inventory, join and endpoints included
