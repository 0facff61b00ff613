"""The runbook's happy paths on the strict lab (issue #9 "Done when"): every meta node has a strict raft secret,
binds its own IP only and carries data a new voter must catch up on. Scale up 3 -> 4, then scale down the leader
4 -> 3, through the flows on a real Prefect server."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from flows.scale_down import scale_down
from flows.scale_up import scale_up
from metascale import config
from metascale.inventory import load_inventory
from sandbox.lab import Lab

pytestmark = [pytest.mark.lab, pytest.mark.prefect]

META_TOML = "/etc/databend/databend-meta.toml"
QUERY_TOML = "/etc/databend/databend-query.toml"
NAMES = {1: "meta1", 2: "meta2", 3: "meta3", 4: "spare1"}


@pytest.fixture
def inventory(fresh_lab: Lab, tmp_path: Path) -> Path:
    """A private copy of the lab's inventory (the flows rewrite it)."""
    copy = tmp_path / "inventory.toml"
    shutil.copyfile(fresh_lab.inventory, copy)
    return copy


def _config(lab: Lab, name: str) -> str:
    return lab.root_exec(name, ["cat", META_TOML]).stdout


def _status_text(lab: Lab, name: str) -> str:
    return lab.root_exec(name, ["sh", "-c", 'cd /tmp && databend-metactl status --grpc-api-address "$1"', "sh",
                                lab.grpc_address(name)]).stdout


def _assert_strict_and_own_ip(lab: Lab, name: str, secret: str) -> None:
    text = _config(lab, name)
    facts = config.read_meta_config_facts(text)
    ip = lab.host(name).ip
    assert facts.raft_secret_set and re.search(r"^raft_secret_strict\s*=\s*true", text, re.M), name
    assert f'"{secret}"' in text, f"{name} does not carry the cluster's raft secret"
    assert (facts.grpc_api_address, facts.admin_api_address) == (f"{ip}:9191", f"{ip}:28002"), name
    assert facts.raft_listen_host == facts.raft_advertise_host == facts.grpc_api_advertise_host == ip, name
    loopback = lab.root_exec(name, ["sh", "-c", "cd /tmp && databend-metactl status"], check=False)
    assert loopback.returncode == 1, f"127.0.0.1:9191 answers on {name}: it must bind its own IP only"


def test_runbook_happy_paths_on_strict_lab(fresh_lab: Lab, inventory: Path) -> None:
    secret = fresh_lab.raft_secret
    spare = fresh_lab.host("spare1").ip

    up = scale_up(new_nodes=[{"host": spare}], inventory=str(inventory), require_approval=False)
    assert up.changed and up.voters_after == [1, 2, 3, 4]
    for name in NAMES.values():
        _assert_strict_and_own_ip(fresh_lab, name, secret)
    leader_name = next(n for n in NAMES.values() if fresh_lab.meta_status(n)[0] == "Leader")
    replication = _status_text(fresh_lab, leader_name)
    assert re.search(r"^\s+- \[4\] T\d+-N\d+\.\d+$", replication, re.M), replication  # caught up: no " *"
    assert config.read_join(_config(fresh_lab, "spare1")) == [f"127.100.0.1{i}:28004" for i in (1, 2, 3)]
    assert f"{spare}:9191" in fresh_lab.root_exec("query1", ["cat", QUERY_TOML]).stdout

    leader = next(i for i, n in NAMES.items() if n == leader_name)
    down = scale_down(node_ids=[leader], inventory=str(inventory), require_approval=False)
    remaining = sorted(set(NAMES) - {leader})
    assert down.changed and down.voters_after == remaining
    for node_id in remaining:
        name = NAMES[node_id]
        assert fresh_lab.meta_status(name)[1] == set(remaining), name
        join = config.read_join(_config(fresh_lab, name))
        own = f"{fresh_lab.host(name).ip}:28004"
        assert sorted(join) == sorted(f"{fresh_lab.host(NAMES[i]).ip}:28004" for i in remaining if i != node_id)
        assert own not in join
    for query in ("query1", "query2"):
        endpoints = config.read_meta_endpoints(fresh_lab.root_exec(query, ["cat", QUERY_TOML]).stdout)
        assert sorted(endpoints) == sorted(f"{fresh_lab.host(NAMES[i]).ip}:9191" for i in remaining), query
    leaver = NAMES[leader]
    assert _config(fresh_lab, leaver).startswith("# metascale: this node was removed")
    assert fresh_lab.root_exec(leaver, ["systemctl", "is-enabled", "databend-meta"], check=False).stdout.strip() \
        == "disabled"
    raft_dir = config.read_meta_config_facts(_config(fresh_lab, leaver)).raft_dir
    retired = fresh_lab.root_exec(leaver, ["sh", "-c", 'ls -d "$1".removed-*', "sh", raft_dir], check=False)
    assert retired.returncode == 0 and retired.stdout.strip(), f"{raft_dir} of {leaver} was not moved aside"
    assert load_inventory(inventory).meta_ids == remaining
    for outcome in (up, down):
        assert secret not in outcome.model_dump_json()


def test_scale_up_refuses_an_old_databend_meta_on_the_new_host_before_planning(fresh_lab: Lab,
                                                                               inventory: Path) -> None:
    fresh_lab.install_version("spare1", "1.2.600")
    spare = fresh_lab.host("spare1").ip
    state = scale_up(new_nodes=[{"host": spare}], inventory=str(inventory), dry_run=True, return_state=True,
                     require_approval=False)
    assert state.is_failed()
    assert re.search(rf"databend-meta 1\.2\.600\S* on {re.escape(spare)} is older than 1\.2\.612, the oldest "
                     "metascale supports", str(state.message)), state.message
    assert fresh_lab.meta_status("meta1")[1] == {1, 2, 3}
