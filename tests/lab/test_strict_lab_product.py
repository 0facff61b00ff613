"""The product against the strict lab (issue #9 items 2, 3, 5, 6, 7): nodes bind their own IP only, the raft
secret is strict, an old release or gRPC TLS can be played on a host. Each test fails on the product as it was
before (probes on 127.0.0.1, a leave without --config-file, no version check, no TLS fallback)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from metascale import nodeinfo, steps
from metascale.errors import PlanRefused
from metascale.inventory import Inventory, load_inventory
from metascale.remote import SshPool
from metascale.status import read_cluster_status, read_node_status
from metascale.waits import wait_for_voters
from sandbox.lab import Lab

pytestmark = pytest.mark.lab
META_TOML = "/etc/databend/databend-meta.toml"


@pytest.fixture
def inventory(lab: Lab) -> Inventory:
    return load_inventory(lab.inventory)


@pytest.fixture
def pool(inventory: Inventory) -> Iterator[SshPool]:
    with SshPool.for_inventory(inventory) as the_pool:
        yield the_pool


def test_probes_ask_each_nodes_own_ip_and_loopback_is_refused_there(fresh_lab: Lab, pool: SshPool,
                                                                    inventory: Inventory) -> None:
    loopback = fresh_lab.root_exec("meta1", ["sh", "-c", "cd /tmp && databend-metactl status"], check=False)
    assert loopback.returncode == 1 and "Error" in loopback.stderr  # 127.0.0.1:9191 does not answer on a meta host
    cluster = read_cluster_status(pool, inventory)
    assert cluster.answering_ids == [1, 2, 3], cluster.summary()
    assert cluster.stable_reason([1, 2, 3]) is None
    assert all(p.status is not None and p.status.read_via == "metactl" for p in cluster.probes)


def test_metactl_runs_in_a_private_directory_that_is_removed_at_close(fresh_lab: Lab, inventory: Inventory) -> None:
    with SshPool.for_inventory(inventory) as the_pool:
        remote = the_pool.remote(inventory.meta_node(1))
        read_node_status(remote, inventory.meta_node(1))
        private = remote.private_tmpdir()
        assert private.startswith("/tmp/metascale.")
        listing = fresh_lab.root_exec("meta1", ["ls", "-a", f"{private}/.databend"], check=False)
        assert listing.returncode == 0 and "logs" in listing.stdout  # metactl's ./.databend/logs went there
    assert fresh_lab.root_exec("meta1", ["test", "-e", private], check=False).returncode == 1


def test_leave_on_a_strict_secret_cluster_runs_with_the_nodes_config_as_the_service_user(
        fresh_lab: Lab, pool: SshPool, inventory: Inventory) -> None:
    secret = fresh_lab.raft_secret
    via = [inventory.meta_node(1).raft_addr, inventory.meta_node(2).raft_addr]
    bare = fresh_lab.root_exec("meta2", ["databend-meta", "--leave-id", "3", "--leave-via", via[0]], check=False)
    assert bare.returncode != 0  # without --config-file the strict leader refuses the leave (no secret)
    assert fresh_lab.meta_status("meta1")[1] == {1, 2, 3}
    remote = pool.remote(inventory.meta_node(2))
    result = steps.leave_cluster(remote, 3, via, timeout_s=60, probe=inventory.meta_node(2), inventory=inventory)
    assert result.changed and "run as databend" in result.detail and secret not in result.model_dump_json()
    wait_for_voters(lambda: read_node_status(pool.remote(inventory.meta_node(1)), inventory.meta_node(1)), [1, 2],
                    timeout_s=20)
    again = steps.leave_cluster(remote, 3, via, probe=inventory.meta_node(2), inventory=inventory)
    assert not again.changed


def test_an_old_databend_meta_is_refused_by_version(fresh_lab: Lab, pool: SshPool, inventory: Inventory) -> None:
    fresh_lab.install_version("spare1", "1.2.600")
    spare = fresh_lab.host("spare1").ip
    with pytest.raises(PlanRefused) as info:
        nodeinfo.check_supported_version(pool.remote(spare))
    printed = fresh_lab.root_exec("spare1", ["databend-meta", "--cmd", "ver"]).stdout.splitlines()[0]
    assert printed.startswith("version: 1.2.600")  # as the release prints it (e.g. 1.2.600-nightly)
    assert info.value.reason == (f"databend-meta {printed.removeprefix('version: ')} on {spare} is older than "
                                 "1.2.612, the oldest metascale supports")
    newest = nodeinfo.check_supported_version(pool.remote(inventory.meta_node(1)))
    assert newest is not None and nodeinfo.is_supported_version(nodeinfo.parse_meta_version(f"version: {newest}")
                                                                or (0, 0, 0))


def test_status_of_a_node_with_grpc_tls_comes_from_the_admin_api_once_noted(
        fresh_lab: Lab, pool: SshPool, inventory: Inventory) -> None:
    fresh_lab.enable_grpc_tls("meta2")
    plain = fresh_lab.root_exec("meta2", ["sh", "-c", 'cd /tmp && databend-metactl status --grpc-api-address "$1"',
                                          "sh", fresh_lab.grpc_address("meta2")], check=False)
    assert plain.returncode == 1  # plain metactl cannot talk to a TLS gRPC API
    first, second = read_cluster_status(pool, inventory), read_cluster_status(pool, inventory)
    assert first.answering_ids == [1, 2, 3], first.summary()
    probe = first.probe(2)
    assert probe is not None and probe.status is not None and probe.status.read_via == "admin"
    notes = [p.note for c in (first, second) for p in c.probes if p.note]
    assert notes == [f"gRPC on {fresh_lab.host('meta2').ip} uses TLS; reading status from the admin API "
                     "/v1/cluster/status"]
