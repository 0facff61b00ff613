"""Issue #6, bad input: every class of bad parameter, inventory or host state is refused before any change.

Each case runs a real flow (real Prefect server, real lab hosts) and asserts: the run fails, its message names the
problem, and every config file, service state, the membership and the inventory file are exactly as before.
Cases that need a broken host or a dead node set it up themselves and the lab is reset after them.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from flows.scale_down import scale_down
from flows.scale_up import scale_up
from sandbox.lab import Lab
from tests.faults.lab_state import META_TOML, QUERY_TOML, snapshot

pytestmark = [pytest.mark.lab, pytest.mark.prefect]

SPARE1 = "127.100.0.14"
PWNED = "/tmp/metascale-pwned"


@dataclass(frozen=True)
class Case:
    """One bad input: the flow, its parameters ({inv} = the inventory copy), the text the message must contain,
    and an optional setup that breaks the lab first (the lab is then reset afterwards)."""

    flow: Callable[..., Any]
    params: dict[str, Any]
    needle: str
    setup: Callable[[Lab, Path], None] | None = None
    inventory_text: Callable[[str], str] | None = None
    cleanup: Callable[[Lab], None] | None = None


def _crash_meta3(lab: Lab, _inv: Path) -> None:
    lab.crash("meta3")


def _break_query_toml(lab: Lab, _inv: Path) -> None:
    lab.root_exec("query2", ["sh", "-c", f"echo 'endpoints = [unclosed' >> {QUERY_TOML}"])


def _drop_raft_config(lab: Lab, _inv: Path) -> None:
    lab.root_exec("meta2", ["sed", "-i", "s/^\\[raft_config\\]/[raft_settings]/", META_TOML])


def _occupy_raft_port(lab: Lab, _inv: Path) -> None:
    """Something else listens on spare1's raft port (28004)."""
    lab.root_exec("spare1", ["systemd-run", "--unit=metascale-squatter", "nc", "-lk", "28004"])
    deadline = time.monotonic() + 20
    while "28004" not in lab.root_exec("spare1", ["ss", "-Htln", "sport = :28004"], check=False).stdout:
        assert time.monotonic() < deadline, "the squatter on spare1:28004 never listened"
        time.sleep(0.1)


def _free_raft_port(lab: Lab) -> None:
    lab.root_exec("spare1", ["systemctl", "stop", "metascale-squatter"], check=False)


def _metachar_host_in_inventory(text: str) -> str:
    return text.replace('host = "127.100.0.13"', 'host = "127.100.0.13;touch /tmp/metascale-pwned"')


def _duplicate_id_in_inventory(text: str) -> str:
    return text.replace("id = 3", "id = 2")


def _bad_name_in_inventory(text: str) -> str:
    return text.replace('name = "lab"', 'name = "Lab $(id)"')


def _not_toml(text: str) -> str:
    return text + "\n[[meta]\nid = 9\n"


CASES: dict[str, Case] = {
    "duplicate id": Case(scale_up, {"new_nodes": [{"host": SPARE1, "node_id": 2}]}, "node id 2 is already used"),
    "duplicate id within the request": Case(
        scale_up, {"new_nodes": [{"host": SPARE1, "node_id": 7}, {"host": "127.100.0.15", "node_id": 7}]},
        "listed twice"),
    "id listed twice": Case(scale_down, {"node_ids": [2, 2]}, "listed twice"),
    "id not a member": Case(scale_down, {"node_ids": [9]}, "meta-9 is not a member"),
    "removing the last node": Case(scale_down, {"node_ids": [1, 2, 3]}, "last voter"),
    "removal that would lose quorum": Case(scale_down, {"node_ids": [2]}, "quorum", setup=_crash_meta3),
    "address already used": Case(scale_up, {"new_nodes": [{"host": "127.100.0.12", "node_id": 7}]},
                                 "already voter meta-2"),
    "unreachable new host": Case(scale_up, {"new_nodes": [{"host": "127.100.0.99"}]}, "not reachable over SSH"),
    "host without the meta package": Case(scale_up, {"new_nodes": [{"host": "127.100.0.16"}]},
                                          "no databend-meta package"),
    "port already in use on the new host": Case(scale_up, {"new_nodes": [{"host": SPARE1}]}, "in use",
                                                setup=_occupy_raft_port, cleanup=_free_raft_port),
    "shell metacharacters in a new host": Case(scale_up, {"new_nodes": [{"host": f"a;touch {PWNED}"}]},
                                               "is not a host"),
    "shell metacharacters in a command substitution host": Case(
        scale_up, {"new_nodes": [{"host": f"$(touch {PWNED})"}]}, "is not a host"),
    "shell metacharacters in the inventory path": Case(scale_down, {"node_ids": [3], "inventory": f"/tmp/x;touch {PWNED}"},
                                                       "shell metacharacters"),
    "shell metacharacters in the cluster block name": Case(
        scale_down, {"node_ids": [3], "inventory": "", "cluster_block": f"lab`touch {PWNED}`"}, "not a block name"),
    "shell metacharacters in the maintenance window": Case(
        scale_down, {"node_ids": [3], "maintenance_window": f"Sat 02:00-04:00 $(touch {PWNED})"}, "invalid maintenance window"),
    "shell metacharacters in an inventory host": Case(scale_down, {"node_ids": [3]}, "not a host",
                                                      inventory_text=_metachar_host_in_inventory),
    "malformed inventory (not TOML)": Case(scale_down, {"node_ids": [3]}, "invalid TOML", inventory_text=_not_toml),
    "malformed inventory (duplicate meta id)": Case(scale_down, {"node_ids": [3]}, "appears more than once",
                                                    inventory_text=_duplicate_id_in_inventory),
    "unknown cluster name": Case(scale_down, {"node_ids": [3], "inventory": "", "cluster_block": "no-such-cluster"},
                                 "no-such-cluster"),
    "invalid cluster name in the inventory": Case(scale_down, {"node_ids": [3]}, "cluster name",
                                                  inventory_text=_bad_name_in_inventory),
    "malformed TOML on a host": Case(scale_down, {"node_ids": [3]}, "cannot edit config", setup=_break_query_toml),
    "config without [raft_config]": Case(scale_down, {"node_ids": [3]}, "raft_config", setup=_drop_raft_config),
    "zero verify deadline": Case(scale_down, {"node_ids": [3], "verify_deadline_s": 0}, "verify_deadline_s must be > 0"),
    "negative leave timeout": Case(scale_down, {"node_ids": [3], "leave_timeout_s": -5},
                                   "leave_timeout_s must be > 0"),
    "zero approval timeout": Case(scale_up, {"new_nodes": [{"host": SPARE1}], "approval_timeout_s": 0},
                                  "approval_timeout_s must be > 0"),
    "contradictory flags: inventory and cluster block": Case(scale_down, {"node_ids": [3], "cluster_block": "lab"},
                                                            "exactly one"),
    "contradictory flags: force on a live node": Case(scale_down, {"node_ids": [3], "force": True},
                                                     "force is for a dead node"),
    "negative node id": Case(scale_down, {"node_ids": [-1]}, "must be >= 0"),
    "port out of range": Case(scale_up, {"new_nodes": [{"host": SPARE1, "raft_port": 70000}]}, "65535"),
}


@pytest.fixture(scope="module")
def baseline(lab: Lab) -> Iterator[Lab]:
    """The session lab at its baseline once for the module (refusals change nothing, which each case proves)."""
    lab.reset()
    yield lab
    lab.reset()


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_refused_before_any_change(name: str, baseline: Lab, tmp_path: Path) -> None:
    case = CASES[name]
    lab = baseline
    inventory = tmp_path / "inventory.toml"
    shutil.copyfile(lab.inventory, inventory)
    if case.inventory_text is not None:
        inventory.write_text(case.inventory_text(inventory.read_text()))
    params = {"inventory": str(inventory), **case.params}
    try:
        if case.setup is not None:
            case.setup(lab, inventory)
        before = snapshot(lab)
        inventory_before = inventory.read_text()
        state = case.flow(return_state=True, require_approval=False, **params)
        message = str(state.message)
        assert state.is_failed(), f"{name}: the run did not fail: {state}"
        assert case.needle in message, f"{name}: {case.needle!r} not in the message: {message}"
        assert snapshot(lab) == before, f"{name}: the lab changed"
        assert inventory.read_text() == inventory_before, f"{name}: the inventory file changed"
        assert not Path(PWNED).exists(), f"{name}: a shell metacharacter was executed locally"
        for host in ("meta1", "meta2", "meta3", "spare1"):
            assert lab.root_exec(host, ["test", "!", "-e", PWNED], check=False).returncode == 0, \
                f"{name}: a shell metacharacter was executed on {host}"
    finally:
        if case.cleanup is not None:
            case.cleanup(lab)
        if case.setup is not None:
            lab.reset()
