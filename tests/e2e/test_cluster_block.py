"""The MetaCluster block and load_cluster against the session Prefect server."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from prefect.blocks.system import Secret

from metascale.errors import InventoryError
from metascale.inventory import MetaNode, parse_inventory
from tasks.cluster_block import (
    BLOCK_TYPE_SLUG,
    MetaCluster,
    load_cluster,
    register_block_types,
    save_cluster_block,
    save_key_secret,
)

pytestmark = pytest.mark.prefect

FAKE_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAAfakekeymaterial\n-----END OPENSSH PRIVATE KEY-----\n"


def inventory_text(key_line: str = 'private_key_file = "/keys/id_ed25519"') -> str:
    return f"""
name = "blocktest"
[ssh]
user = "ops"
{key_line}
known_hosts_file = "/keys/known_hosts"
[[meta]]
id = 1
host = "127.100.0.11"
[[meta]]
id = 2
host = "127.100.0.12"
[[query]]
host = "127.100.0.16"
"""


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_block_round_trip_returns_inventory_and_key_from_the_named_secret(tmp_path: Path) -> None:
    register_block_types()
    secret, cluster = unique("key"), unique("cluster")
    key_file = tmp_path / "id_ed25519"
    key_file.write_text(FAKE_KEY)
    save_key_secret(secret, key_file)
    save_cluster_block(cluster, parse_inventory(inventory_text()), ssh_key_secret=secret)

    inventory, key = load_cluster(cluster_block=cluster)

    assert inventory.name == "blocktest" and inventory.meta_ids == [1, 2]
    assert key == FAKE_KEY
    stored = MetaCluster.load(cluster)
    assert FAKE_KEY.splitlines()[1] not in stored.inventory_toml  # the key never lands in the block


def test_saving_a_new_inventory_keeps_the_secret_name() -> None:
    register_block_types()
    secret, cluster = unique("key"), unique("cluster")
    Secret(value=FAKE_KEY).save(secret)
    first = parse_inventory(inventory_text())
    save_cluster_block(cluster, first, ssh_key_secret=secret)

    save_cluster_block(cluster, first.with_meta_node(MetaNode(node_id=3, host="127.100.0.14")))

    stored = MetaCluster.load(cluster)
    assert stored.ssh_key_secret == secret
    assert parse_inventory(stored.inventory_toml).meta_ids == [1, 2, 3]


def test_inventory_path_with_a_key_file_returns_no_key_text(tmp_path: Path) -> None:
    path = tmp_path / "inventory.toml"
    path.write_text(inventory_text())

    inventory, key = load_cluster(inventory_path=str(path))

    assert inventory.ssh.private_key_file == "/keys/id_ed25519"
    assert key is None


def test_inventory_naming_a_secret_returns_its_key(tmp_path: Path) -> None:
    secret = unique("key")
    Secret(value=FAKE_KEY).save(secret)
    path = tmp_path / "inventory.toml"
    path.write_text(inventory_text(f'private_key_secret = "{secret}"'))

    _, key = load_cluster(inventory_path=str(path))

    assert key == FAKE_KEY


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({}, "neither of inventory"),
    ({"inventory_path": "/x.toml", "cluster_block": "c"}, "both of inventory"),
    ({"cluster_block": "no-such-cluster"}, "no metascale-cluster block named 'no-such-cluster'"),
    ({"cluster_block": "Bad Name"}, "cluster block name 'Bad Name' is invalid"),
])
def test_load_cluster_refuses_with_one_clear_line(kwargs: dict[str, str], fragment: str) -> None:
    register_block_types()
    with pytest.raises(ValueError) as caught:
        load_cluster(**kwargs)

    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)


def test_malformed_inventory_in_block_names_the_block() -> None:
    register_block_types()
    cluster = unique("cluster")
    MetaCluster(inventory_toml="name = 'x'\n[ssh]\nuser = 'ops'\n").save(cluster)

    with pytest.raises(InventoryError) as caught:
        load_cluster(cluster_block=cluster)

    assert f"cluster block {cluster}" in str(caught.value)
    assert "known_hosts_file" in str(caught.value)


def test_missing_secret_is_named_but_never_shown() -> None:
    register_block_types()
    cluster = unique("cluster")
    save_cluster_block(cluster, parse_inventory(inventory_text()), ssh_key_secret="absent-secret")

    with pytest.raises(InventoryError, match="no Secret block named 'absent-secret'"):
        load_cluster(cluster_block=cluster)


def test_block_type_slug_is_stable() -> None:
    assert MetaCluster.get_block_type_slug() == BLOCK_TYPE_SLUG == "metascale-cluster"
    assert MetaCluster._logo_url is None
