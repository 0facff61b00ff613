"""Issue #10, Input: what a host may be, IPv6 brackets everywhere a host:port is built, removed ids never reused.

Pure: no hosts, no Prefect.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import tomlkit

from metascale import config
from metascale.errors import InventoryError, PlanRefused
from metascale.inventory import Inventory, MetaNode, SshSettings, SshTarget, parse_inventory, validate_host
from metascale.plan import ClusterView, HostFacts, NewNodeSpec, plan_scale_up
from metascale.preview import preview_file_changes, view_of_cluster
from metascale.status import ClusterStatus, NodeProbe, member_node, parse_metactl_status

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


# ----- what a host may be -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["127.100.0.11", "fd00::4", "::1", "meta-1.example.com", "meta1"])
def test_ip_literals_and_dns_names_are_hosts(host: str) -> None:
    assert validate_host(host) == host


@pytest.mark.parametrize("host", ["fe80::1%eth0", "fe80::1%$(reboot)", "fd00::4%25lo", "a;b", "-oProxyCommand=x",
                                  "meta_1", "[fd00::4]", "a b", "host\n"])
def test_zone_ids_and_shell_characters_are_not_hosts(host: str) -> None:
    with pytest.raises(ValueError, match="is not a h"):
        validate_host(host)


def test_inventory_with_a_zone_id_is_refused_naming_key_and_value() -> None:
    text = ('name = "lab"\n[ssh]\nprivate_key_file = "/k"\nknown_hosts_file = "/kh"\n'
            '[[meta]]\nid = 1\nhost = "fe80::1%$(id)"\n')
    with pytest.raises(InventoryError, match=r"meta\[0\]\.host: 'fe80::1%\$\(id\)' is not a host: an IPv6 zone id"):
        parse_inventory(text)


@pytest.mark.parametrize(("command", "message"), [
    ("ssh -W %h:%p %n jump", "uses %n"),
    ("ssh jump nc %h %p\nreboot", "must be one non-blank line"),
    ("   ", "must be one non-blank line"),
])
def test_proxy_command_with_unknown_tokens_or_lines_is_refused(command: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SshSettings(private_key_file="/k", known_hosts_file="/kh", proxy_command=command)


def test_a_host_from_the_clusters_own_status_never_reaches_proxy_command_unless_valid() -> None:
    """A member found only in the cluster's status is probed at the host its record names: that host must be a
    valid host before it can become an SshTarget (and so %h)."""
    with pytest.raises(ValueError, match="is not a host"):
        SshTarget(host="fe80::1%$(id)", port=22, user="ops", proxy_command="ssh jump nc %h %p")
    record = parse_metactl_status(_status_text([(4, "fe80::1%$(id)")])).voters[0]
    assert member_node(record) is None


# ----- IPv6: brackets everywhere a host:port is built ---------------------------------------------------------------
V6 = {1: "fd00::1", 2: "fd00::2", 3: "fd00::3"}
NEW = "fd00::4"


def _status_text(nodes: list[tuple[int, str]], me: int | None = None, leader: int | None = None) -> str:
    """metactl status as databend-meta prints it: an endpoint is ``addr:port``, an IPv6 addr NOT in brackets."""
    me = nodes[0][0] if me is None else me
    leader = nodes[0][0] if leader is None else leader
    host = dict(nodes)
    lines = [f"Node: id={me} raft={host[me]}:28004", f"State: {'Leader' if me == leader else 'Follower'}",
             f"Leader: id={leader} raft={host[leader]}:28004 grpc={host[leader]}:9191", "CurrentTerm: 3",
             "LastLogIndex: 812", "LastApplied: T3-N1.812", "Voters:"]
    lines += [f"  - id={i} raft={h}:28004 grpc={h}:9191" for i, h in nodes]
    return "\n".join(lines) + "\n"


def _v6_inventory() -> Inventory:
    return Inventory.model_validate({
        "name": "v6", "ssh": {"private_key_file": "/k", "known_hosts_file": "/kh"},
        "meta": [{"id": i, "host": h} for i, h in V6.items()], "query": [{"host": "fd00::10"}],
    })


def test_metactl_ipv6_addresses_are_read_in_brackets() -> None:
    status = parse_metactl_status(_status_text(list(V6.items())))
    assert status.raft_addr == "[fd00::1]:28004"
    assert [v.raft_addr for v in status.voters] == [f"[{h}]:28004" for h in V6.values()]
    assert status.voters[0].grpc_addr == "[fd00::1]:9191"
    node = member_node(status.voters[1])
    assert node is not None and (node.host, node.raft_port, node.grpc_port) == ("fd00::2", 28004, 9191)


def test_ipv6_scale_up_plan_end_to_end_in_the_planner() -> None:
    inventory = _v6_inventory()
    probes = [NodeProbe(node_id=i, host=h, status=parse_metactl_status(_status_text(list(V6.items()), me=i)))
              for i, h in V6.items()]
    view = view_of_cluster(ClusterStatus(cluster="v6", probes=probes))
    assert view.node_addrs == {i: f"[{h}]:28004" for i, h in V6.items()}
    facts = {NEW: HostFacts(host=NEW, reachable=True, has_package=True)}
    plan = plan_scale_up(inventory, view, [NewNodeSpec(host=NEW)], facts)
    (change,) = plan.changes
    assert change.node_id == 4 and change.raft_addr == "[fd00::4]:28004" and change.grpc_addr == "[fd00::4]:9191"
    assert change.join == ("[fd00::1]:28004", "[fd00::2]:28004", "[fd00::3]:28004")
    assert plan.join_after == ("[fd00::1]:28004", "[fd00::2]:28004", "[fd00::3]:28004", "[fd00::4]:28004")
    assert plan.endpoints_after == ("[fd00::1]:9191", "[fd00::2]:9191", "[fd00::3]:9191", "[fd00::4]:9191")

    meta_text = (FIXTURES / "configs/databend-meta.toml").read_text()
    existing = {h: config.set_node_identity(meta_text, node_id=i, host=h,
                                            join=[f"[{o}]:28004" for j, o in V6.items() if j != i])
                for i, h in V6.items()}
    files = {**{(h, inventory.paths.meta_config): t for h, t in existing.items()},
             (NEW, inventory.paths.meta_config): meta_text,
             ("fd00::10", inventory.paths.query_config): (FIXTURES / "configs/databend-query.toml").read_text()}
    changes = preview_file_changes(inventory, plan, lambda host, path: files[(host, path)], "20260101T000000Z")
    by_host = {c.host: c.diff for c in changes}
    assert '+endpoints = ["[fd00::1]:9191", "[fd00::2]:9191", "[fd00::3]:9191", "[fd00::4]:9191"]' \
        in by_host["fd00::10"].replace("'", '"')
    new_doc = _apply_added_config(meta_text, plan)
    assert new_doc["raft_config"]["join"] == ["[fd00::1]:28004", "[fd00::2]:28004", "[fd00::3]:28004"]
    assert new_doc["grpc_api_advertise_host"] == NEW and new_doc["raft_config"]["raft_advertise_host"] == NEW
    assert "fd00::4:28004" not in "".join(c.diff for c in changes).replace("[fd00::4]:28004", "")
    # an existing node's join never lists itself, in brackets or not
    assert config.join_without_self(existing["fd00::1"].replace('"0.0.0.0"', '"fd00::1"'), plan.join_after) == \
        ["[fd00::2]:28004", "[fd00::3]:28004", "[fd00::4]:28004"]


def _apply_added_config(meta_text: str, plan) -> dict:  # type: ignore[no-untyped-def]
    (change,) = plan.changes
    text = config.set_node_identity(meta_text, node_id=change.node_id, host=change.host, join=list(change.join))
    return tomlkit.parse(text).unwrap()


def test_inventory_addresses_of_ipv6_nodes_are_bracketed() -> None:
    node = MetaNode(id=4, host=NEW)
    assert (node.raft_addr, node.grpc_addr) == ("[fd00::4]:28004", "[fd00::4]:9191")
    with pytest.raises(InventoryError, match=r"address \[fd00::1\]:28004 is used twice"):
        parse_inventory('name = "v6"\n[ssh]\nprivate_key_file = "/k"\nknown_hosts_file = "/kh"\n'
                        '[[meta]]\nid = 1\nhost = "fd00::1"\n[[meta]]\nid = 2\nhost = "fd00::1"\n')


# ----- removed ids are never handed out again -----------------------------------------------------------------------
def _inventory_with_removed(removed: int = 4) -> Inventory:
    return Inventory.model_validate({
        "name": "lab", "ssh": {"private_key_file": "/k", "known_hosts_file": "/kh"},
        "meta": [{"id": i, "host": f"127.100.0.{10 + i}"} for i in (1, 2, 3)],
        "removed": [{"id": removed, "host": "127.100.0.14", "removed_at": "20260101T000000Z"}],
    })


def _view() -> ClusterView:
    return ClusterView(cluster="lab", leader_id=1, voters=frozenset({1, 2, 3}), answering={1: 9, 2: 9, 3: 9},
                       node_addrs={i: f"127.100.0.{10 + i}:28004" for i in (1, 2, 3)})


SPARE = "127.100.0.15"


def test_a_removed_id_is_not_picked_automatically_even_when_it_was_the_highest() -> None:
    inventory = _inventory_with_removed(4)
    assert inventory.next_free_id() == 5
    plan = plan_scale_up(inventory, _view(), [NewNodeSpec(host=SPARE)],
                         {SPARE: HostFacts(host=SPARE, reachable=True, has_package=True)})
    assert [c.node_id for c in plan.changes] == [5]


def test_a_removed_id_given_explicitly_is_refused_saying_why_and_what_to_use() -> None:
    with pytest.raises(PlanRefused, match=r"node id 4 belonged to meta-4 \(127\.100\.0\.14\), removed from cluster "
                                          r"lab at 20260101T000000Z; a removed id is never handed out again.*pick 5"):
        plan_scale_up(_inventory_with_removed(4), _view(), [NewNodeSpec(host=SPARE, node_id=4)],
                      {SPARE: HostFacts(host=SPARE, reachable=True, has_package=True)})
