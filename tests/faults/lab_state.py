"""What the fault, bad-input and load tests assert about the lab after a run: snapshots and consistency checks.

`snapshot(lab)` captures every databend config file, the meta services' state and the membership each meta host
reports, so "changed nothing" is `snapshot(lab) == before`. `assert_consistent(lab, inventory)` is the check after a
run that changed the cluster: every config file parses, `join`/`endpoints` match the voters, the inventory matches
the voters, and the voters have a leader and a majority that answers.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from metascale.inventory import load_inventory
from sandbox.lab import Lab

META_TOML = "/etc/databend/databend-meta.toml"
QUERY_TOML = "/etc/databend/databend-query.toml"
RAFT_PORT, GRPC_PORT = 28004, 9191


def config_path(lab: Lab, name: str) -> str:
    """The databend config file of host `name` (query hosts: databend-query.toml; others databend-meta.toml)."""
    return QUERY_TOML if lab.hosts[name].role == "query" else META_TOML


def read_config(lab: Lab, name: str) -> str:
    """The text of `name`'s databend config file (as root, bypassing SSH)."""
    return lab.root_exec(name, ["cat", config_path(lab, name)]).stdout


def snapshot(lab: Lab) -> dict[str, Any]:
    """Every config file, every meta/spare service state (active, enabled) and each meta host's membership view."""
    files = {name: read_config(lab, name) for name in lab.hosts}
    services = {}
    for name, spec in lab.hosts.items():
        if spec.role == "query":
            continue
        active = lab.root_exec(name, ["systemctl", "is-active", "databend-meta"], check=False).stdout.strip()
        enabled = lab.root_exec(name, ["systemctl", "is-enabled", "databend-meta"], check=False).stdout.strip()
        services[name] = (active, enabled)
    membership = {name: lab.meta_status(name) for name, (active, _) in services.items() if active == "active"}
    return {"files": files, "services": services, "membership": membership}


def host_of_ip(lab: Lab, ip: str) -> str:
    """The lab host name with address `ip`."""
    for name, spec in lab.hosts.items():
        if spec.ip == ip:
            return name
    raise AssertionError(f"no lab host has address {ip}")


def voters_and_leader(lab: Lab, names: list[str]) -> tuple[set[int], int | None]:
    """The voter set the leader among `names` reports and the leader's id (state read as root)."""
    for name in names:
        state, voters = lab.meta_status(name)
        if state == "Leader":
            node_id = tomllib.loads(read_config(lab, name))["raft_config"]["id"]
            return set(voters), int(node_id)
    raise AssertionError(f"no leader among {names}")


def assert_consistent(lab: Lab, inventory: Path) -> set[int]:
    """Assert the cluster and every file agree after a run; return the voter ids.

    Checks: every config parses as TOML; the inventory's meta ids are the voters; each voter's `join` lists the
    other voters (its own address allowed) and `single` is off; each query host's endpoints are the voters' gRPC
    addresses; a majority of the voters answer with the same voter set.
    """
    parsed = {name: tomllib.loads(read_config(lab, name)) for name in lab.hosts}   # raises on a partial file
    cluster = load_inventory(inventory)
    meta_names = [host_of_ip(lab, n.host) for n in cluster.meta_nodes]
    voters, _leader = voters_and_leader(lab, meta_names)
    assert sorted(voters) == cluster.meta_ids, f"inventory meta ids {cluster.meta_ids} != voters {sorted(voters)}"
    raft = {f"{n.host}:{RAFT_PORT}" for n in cluster.meta_nodes}
    grpc = [f"{n.host}:{GRPC_PORT}" for n in cluster.meta_nodes]
    for node, name in zip(cluster.meta_nodes, meta_names, strict=True):
        section = parsed[name]["raft_config"]
        assert section["id"] == node.node_id, f"{name}: id {section['id']} != {node.node_id}"
        assert not section.get("single", False), f"{name}: single is still on"
        own = f"{node.host}:{RAFT_PORT}"
        assert set(section.get("join", [])) | {own} == raft, f"{name}: join {section.get('join')} != {sorted(raft)}"
    for name, spec in lab.hosts.items():
        if spec.role == "query":
            assert sorted(parsed[name]["meta"]["endpoints"]) == sorted(grpc), f"{name}: {parsed[name]['meta']}"
    agreeing = sum(1 for name in meta_names if lab.meta_status(name)[1] == voters)
    assert agreeing * 2 > len(voters), f"only {agreeing} of voters {sorted(voters)} answer with that voter set"
    return voters
