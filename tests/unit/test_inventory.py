"""Inventory loading and validation: good files load, bad ones fail with one clear line naming the value."""

from __future__ import annotations

from pathlib import Path

import pytest

from metascale.errors import InventoryError
from metascale.inventory import MetaNode, load_inventory, parse_inventory

GOOD = """\
name = "prod-eu-1"

[ssh]
user = "ops"
private_key_file = "keys/id_ed25519"
known_hosts_file = "/etc/metascale/known_hosts"
proxy_command = "ssh -W %h:%p bastion"

[[meta]]
id = 1
host = "127.10.0.1"

[[meta]]
id = 2
host = "meta-2.example.internal"
raft_port = 28104
ssh = { user = "admin", port = 2222 }

[[meta]]
id = 3
host = "fd00::3"

[[query]]
host = "127.10.1.1"
"""


def head(rest: str) -> str:
    return 'name = "lab"\n[ssh]\nprivate_key_file = "/k"\nknown_hosts_file = "/kh"\n' + rest


def test_good_inventory_loads_with_defaults(tmp_path: Path) -> None:
    path = tmp_path / "inventory.toml"
    path.write_text(GOOD)
    inv = load_inventory(path)
    assert inv.name == "prod-eu-1"
    assert inv.ssh.private_key_file == str(tmp_path / "keys" / "id_ed25519")  # relative to the file
    assert inv.ssh.connect_timeout_s == 10 and inv.ssh.command_timeout_s == 30 and inv.ssh.sudo is True
    assert inv.paths.meta_config == "/etc/databend/databend-meta.toml"
    assert inv.paths.raft_dir == "/var/lib/databend/raft"
    node1 = inv.meta_node(1)
    assert (node1.raft_port, node1.grpc_port, node1.admin_port) == (28004, 9191, 28002)
    assert node1.raft_addr == "127.10.0.1:28004" and node1.grpc_addr == "127.10.0.1:9191"
    assert inv.meta_node(3).raft_addr == "[fd00::3]:28004"
    assert inv.join_addresses() == ["127.10.0.1:28004", "meta-2.example.internal:28104", "[fd00::3]:28004"]
    assert inv.query_nodes[0].host == "127.10.1.1"


def test_per_node_ssh_override() -> None:
    inv = parse_inventory(GOOD)
    target = inv.ssh_target(inv.meta_node(2))
    assert (target.user, target.port, target.proxy_command) == ("admin", 2222, "ssh -W %h:%p bastion")
    assert inv.ssh_target("127.10.0.1").user == "ops"


def test_to_toml_round_trips() -> None:
    inv = parse_inventory(GOOD)
    assert parse_inventory(inv.to_toml()) == inv


def test_edits_return_validated_copies() -> None:
    inv = parse_inventory(GOOD)
    assert inv.next_free_id() == 4
    bigger = inv.with_meta_node(MetaNode(node_id=4, host="127.10.0.4"))
    assert bigger.meta_ids == [1, 2, 3, 4] and inv.meta_ids == [1, 2, 3]
    assert bigger.without_meta_node(2).meta_ids == [1, 3, 4]
    with pytest.raises(InventoryError, match="id 1 appears more than once"):
        inv.with_meta_node(MetaNode(node_id=1, host="127.10.0.9"))
    with pytest.raises(InventoryError, match=r"127\.10\.0\.1:28004 is used twice"):
        inv.with_meta_node(MetaNode(node_id=9, host="127.10.0.1"))
    with pytest.raises(InventoryError, match=r"no meta node with id 7 \(known ids: 1, 2, 3\)"):
        inv.meta_node(7)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (head('[[meta]]\nid = 1\nhost = "a;rm -rf /"\n'), r"meta\[0\]\.host: 'a;rm -rf /' is not a hostname or IP"),
        (head('[[meta]]\nid = 1\nhost = "$(reboot)"\n'), r"'\$\(reboot\)' is not a hostname"),
        (head('[[meta]]\nid = 1\nhost = "-oProxyCommand=x"\n'), "is not a hostname"),
        (head('[[meta]]\nid = 1\nhost = "h"\nraft_port = 70000\n'), r"raft_port: port 70000 is out of range \(valid: 1-65535\)"),
        (head('[[meta]]\nid = 1\nhost = "a"\n[[meta]]\nid = 1\nhost = "b"\n'), "id 1 appears more than once"),
        (head('[[meta]]\nid = 1\nhost = "a"\n[[meta]]\nid = 2\nhost = "a"\n'), "a:28004 is used twice"),
        (head('[[meta]]\nid = 1\nhost = "a"\n[[query]]\nhost = "q"\n[[query]]\nhost = "q"\n'), "query host q appears more"),
        (head('[[meta]]\nid = 1\nhost = "a"\nhots = "x"\n'), r"meta\[0\]\.hots: unknown key"),
        (head(""), "meta: required key is missing"),
        (head('[[meta]]\nid = -1\nhost = "a"\n'), r"meta\[0\]\.id"),
        ('name = "Prod_1"\n[ssh]\nprivate_key_file = "/k"\nknown_hosts_file = "/kh"\n[[meta]]\nid = 1\nhost = "a"\n',
         r"cluster name 'Prod_1' is invalid \(valid: 1-63 chars of \[a-z0-9-\]"),
        ('name = "lab"\n[ssh]\nknown_hosts_file = "/kh"\n[[meta]]\nid = 1\nhost = "a"\n',
         "exactly one of private_key_file or private_key_secret"),
        ('name = "lab"\n[ssh]\nprivate_key_file = "/k"\n[[meta]]\nid = 1\nhost = "a"\n',
         r"ssh\.known_hosts_file: required key is missing"),
        (head('[paths]\nmeta_config = "etc/x.toml"\n[[meta]]\nid = 1\nhost = "a"\n'), "is not an absolute path"),
        (head('[paths]\nmeta_service = "x; reboot"\n[[meta]]\nid = 1\nhost = "a"\n'), "is not a systemd unit name"),
        ("name = [", "invalid TOML"),
    ],
)
def test_bad_inventory_names_the_value(text: str, message: str) -> None:
    with pytest.raises(InventoryError, match=message) as info:
        parse_inventory(text, source="inv.toml")
    assert isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("inv.toml: ")


def test_secret_name_instead_of_key_file() -> None:
    inv = parse_inventory('name = "lab"\n[ssh]\nprivate_key_secret = "lab-ssh-key"\nknown_hosts_file = "/kh"\n'
                          '[[meta]]\nid = 1\nhost = "a"\n')
    assert inv.ssh.private_key_secret == "lab-ssh-key" and inv.ssh.private_key_file is None


def test_missing_file_is_an_inventory_error(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match="cannot read inventory"):
        load_inventory(tmp_path / "nope.toml")


def test_a_removed_node_is_recorded_survives_toml_and_its_id_is_not_reused() -> None:
    inv = parse_inventory(GOOD).without_meta_node(3, removed_at="20261126T120000Z")
    assert inv.meta_ids == [1, 2] and inv.next_free_id() == 4
    text = inv.to_toml()
    assert '[[removed]]\nid = 3\nhost = "fd00::3"\nremoved_at = "20261126T120000Z"' in text
    again = parse_inventory(text)
    assert again == inv and again.removed_node(3) is not None and again.removed_node(1) is None
