"""Every runbook step against the lab's stand-in cluster, worded like the runbook: the step acts once, a second
run changes nothing, and the cluster ends where the runbook says."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from metascale import config, steps
from metascale.errors import MetaUnreachable, RemoteCommandError, RemoteTimeout
from metascale.inventory import Inventory, MetaNode, load_inventory
from metascale.remote import SshPool
from metascale.status import read_admin_status, read_cluster_status, read_node_status
from metascale.waits import wait_for_leader_change, wait_for_stable_cluster, wait_for_voter, wait_for_voters

pytestmark = pytest.mark.lab


@pytest.fixture
def inventory(lab) -> Inventory:  # type: ignore[no-untyped-def]
    return load_inventory(lab.directory / "inventory.toml")


@pytest.fixture
def pool(inventory: Inventory) -> Iterator[SshPool]:
    with SshPool.for_inventory(inventory) as the_pool:
        yield the_pool


def spare_host(lab) -> str:  # type: ignore[no-untyped-def]
    return next(spec.ip for name, spec in sorted(lab.hosts.items()) if spec.role == "spare")


def test_real_status_output_parses_on_every_node(lab, pool: SshPool, inventory: Inventory) -> None:  # type: ignore[no-untyped-def]
    cluster = read_cluster_status(pool, inventory)
    assert cluster.answering_ids == [1, 2, 3], cluster.summary()
    assert cluster.leader_id in (1, 2, 3) and cluster.voter_ids == [1, 2, 3]
    assert cluster.stable_reason([1, 2, 3]) is None
    for node in inventory.meta_nodes:
        status = cluster.status_of(node.node_id)
        assert status is not None and status.raft_addr == node.raft_addr
        assert [v.grpc_addr for v in status.voters] == inventory.meta_endpoints()
    leader = inventory.meta_node(cluster.leader_id)  # type: ignore[arg-type]
    admin = read_admin_status(pool.remote(leader), leader)
    assert admin.state == "Leader" and admin.voter_ids == [1, 2, 3]


def test_transfer_leadership_moves_the_leader_once(fresh_lab, pool: SshPool, inventory: Inventory) -> None:  # type: ignore[no-untyped-def]
    old_id = read_cluster_status(pool, inventory).leader_id
    assert old_id is not None
    old = inventory.meta_node(old_id)
    target = next(n.node_id for n in inventory.meta_nodes if n.node_id != old_id)
    remote = pool.remote(old)
    result = steps.transfer_leadership(remote, old, target)
    assert result.changed, result.detail
    seen = wait_for_leader_change(lambda: read_node_status(remote, old), old_id, timeout_s=15, expect=target)
    assert seen.leader_id == target
    again = steps.transfer_leadership(remote, old, target)
    assert not again.changed and "already leads" in again.detail


def test_leaving_via_the_leader_itself_is_refused_with_stderr(fresh_lab, pool: SshPool, inventory: Inventory) -> None:  # type: ignore[no-untyped-def]
    leader_id = read_cluster_status(pool, inventory).leader_id
    assert leader_id is not None
    leader = inventory.meta_node(leader_id)
    with pytest.raises(RemoteCommandError, match=f"can not leave id={leader_id}") as info:
        steps.leave_cluster(pool.remote(leader), leader_id, [leader.raft_addr], timeout_s=30)
    assert info.value.exit_code == 1 and info.value.host == leader.host


def test_scale_down_node_3_as_the_runbook_says(fresh_lab, pool: SshPool, inventory: Inventory) -> None:  # type: ignore[no-untyped-def]
    leaving = inventory.meta_node(3)
    remaining = [n for n in inventory.meta_nodes if n.node_id != 3]
    via = remaining[0]
    # 1-3: if node 3 leads, move leadership away first
    cluster = read_cluster_status(pool, inventory)
    if cluster.leader_id == 3:
        steps.transfer_leadership(pool.remote(leaving), leaving, via.node_id)
        wait_for_leader_change(lambda: read_node_status(pool.remote(via), via), 3, timeout_s=15)
    # 4: leave, via the remaining nodes' raft addresses
    left = steps.leave_cluster(pool.remote(via), 3, [n.raft_addr for n in remaining], timeout_s=30, probe=via)
    assert left.changed
    # 5: the node is no longer listed
    wait_for_voters(lambda: read_node_status(pool.remote(via), via), [1, 2], timeout_s=15)
    assert not steps.leave_cluster(pool.remote(via), 3, [via.raft_addr], probe=via).changed
    # 6: stop the service (and disable it); then retire its raft dir so it can never re-join
    assert steps.stop_meta_service(pool.remote(leaving), inventory).changed
    assert not steps.stop_meta_service(pool.remote(leaving), inventory).changed
    with pytest.raises(MetaUnreachable):
        read_node_status(pool.remote(leaving), leaving, timeout_s=10)
    retired = steps.retire_raft_dir(pool.remote(leaving), inventory)
    assert retired.changed and retired.backup_path
    assert not steps.retire_raft_dir(pool.remote(leaving), inventory).changed
    assert pool.remote(leaving).run(["test", "-d", retired.backup_path], sudo=True).ok
    # 7: verify from the remaining nodes
    after = inventory.without_meta_node(3)
    stable = wait_for_stable_cluster(lambda: read_cluster_status(pool, after), [1, 2], timeout_s=20)
    assert stable.voter_ids == [1, 2]
    # 8: join on the remaining meta nodes
    for node in remaining:
        assert steps.update_join(pool.remote(node), after, node, after.join_addresses()).changed
        assert not steps.update_join(pool.remote(node), after, node, after.join_addresses()).changed
        text = pool.remote(node).read_text(inventory.paths.meta_config)
        # the lab's nodes listen on their own IP, so their own address is left out (databend-meta refuses it)
        assert config.read_join(text) == [a for a in after.join_addresses() if a != node.raft_addr]
        assert not config.read_single(text)
    # 9: query nodes' endpoints
    for query in inventory.query_nodes:
        result = steps.update_query_meta_endpoints(pool.remote(query), after, query, after.meta_endpoints())
        assert result.changed and result.backup_path
        assert not steps.update_query_meta_endpoints(pool.remote(query), after, query, after.meta_endpoints()).changed
        text = pool.remote(query).read_text(inventory.paths.query_config)
        assert config.read_meta_endpoints(text) == after.meta_endpoints()
    assert set(pool.handshakes.values()) == {1}


def test_scale_up_a_spare_host_as_node_4(fresh_lab, pool: SshPool, inventory: Inventory) -> None:  # type: ignore[no-untyped-def]
    source = inventory.meta_nodes[0]
    new = MetaNode(node_id=inventory.next_free_id(), host=spare_host(fresh_lab))
    spare = pool.remote(new)
    before = spare.read_text(inventory.paths.meta_config)
    # 1: copy the configuration from an existing node
    template = steps.copy_config_from_existing_node(pool.remote(source), inventory, source)
    # 2: modify it (dry run first: nothing written)
    join = inventory.join_addresses()
    dry = steps.write_new_node_config(spare, inventory, new, template, join, dry_run=True)
    assert dry.changed and dry.diff and spare.read_text(inventory.paths.meta_config) == before
    written = steps.write_new_node_config(spare, inventory, new, template, join)
    assert written.changed and written.backup_path
    assert not steps.write_new_node_config(spare, inventory, new, template, join).changed
    text = spare.read_text(inventory.paths.meta_config)
    assert config.read_node_id(text) == new.node_id and config.read_join(text) == join
    # 3: start the service
    assert steps.start_meta_service(spare, inventory).changed
    assert not steps.start_meta_service(spare, inventory).changed
    # 4: verify the new node is added
    wait_for_voter(lambda: read_node_status(pool.remote(source), source), new.node_id, timeout_s=30)
    # 5-6: join everywhere, endpoints on the query nodes
    bigger = inventory.with_meta_node(new)
    for node in bigger.meta_nodes:
        steps.update_join(pool.remote(node), bigger, node, bigger.join_addresses())
        assert not steps.update_join(pool.remote(node), bigger, node, bigger.join_addresses()).changed
    for query in bigger.query_nodes:
        steps.update_query_meta_endpoints(pool.remote(query), bigger, query, bigger.meta_endpoints())
    stable = wait_for_stable_cluster(lambda: read_cluster_status(pool, bigger), [1, 2, 3, 4], timeout_s=30)
    assert stable.status_of(4) is not None and stable.status_of(4).raft_addr == new.raft_addr  # type: ignore[union-attr]


def test_diagnostics_show_unit_journal_and_log(lab, pool: SshPool, inventory: Inventory) -> None:  # type: ignore[no-untyped-def]
    node = inventory.meta_nodes[0]
    text = steps.collect_diagnostics(pool.remote(node), inventory)
    assert "## systemctl status (exit 0)" in text and "databend-meta" in text
    assert "## journalctl (last 50)" in text
    assert "## tail /var/log/databend/" in text


def test_leave_without_quorum_times_out_and_explains_why(fresh_lab, pool: SshPool, inventory: Inventory) -> None:  # type: ignore[no-untyped-def]
    leader_id = read_cluster_status(pool, inventory).leader_id
    assert leader_id is not None
    leader = inventory.meta_node(leader_id)
    followers = [n for n in inventory.meta_nodes if n.node_id != leader_id]
    for node in followers:  # both followers down at once: no membership change can commit
        pool.remote(node).run(["systemctl", "stop", "databend-meta"], sudo=True)
    remote = pool.remote(leader)
    with pytest.raises(RemoteTimeout, match="quorum") as info:
        steps.leave_cluster(remote, followers[0].node_id, [leader.raft_addr], timeout_s=4)
    assert info.value.host == leader.host and f"--leave-id {followers[0].node_id}" in info.value.command
    deadline = time.monotonic() + 10  # the remote `timeout` backstop kills the hanging leave
    while remote.run(["pgrep", "-f", "databend-meta --leave-[i]d"], check=False).ok:
        assert time.monotonic() < deadline, "the hanging leave is still running on the host"
        time.sleep(0.2)
