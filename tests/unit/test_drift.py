"""The cluster is the truth about membership, the inventory about access (issue #10): members missing from the
inventory are found in the cluster's status and probed, drift is named with its fix in status / plans /
cluster-check, `sync-inventory` writes the membership into the inventory, and a half-added node is removed by id."""

from __future__ import annotations

import pytest

from metascale.drift import inventory_drift, plan_sync, synced_inventory
from metascale.errors import PlanRefused
from metascale.inventory import Inventory, parse_inventory
from metascale.plan import ClusterView, HostFacts, NewNodeSpec, plan_scale_down, plan_scale_up
from metascale.preview import preview_file_changes, view_of_cluster
from metascale.status import read_cluster_status
from tests.unit.fakes import FakePool, metactl_status_text, own_ip_meta_config

META = "/etc/databend/databend-meta.toml"
NET = "127.10.0"


def _inventory(ids: tuple[int, ...] = (1, 2, 3), removed: tuple[int, ...] = ()) -> Inventory:
    text = ('name = "lab"\n[ssh]\nprivate_key_file = "/k"\nknown_hosts_file = "/kh"\n'
            + "".join(f'[[meta]]\nid = {i}\nhost = "{NET}.{i}"\n' for i in ids)
            + '[[query]]\nhost = "127.10.0.16"\n'
            + "".join(f'[[removed]]\nid = {i}\nhost = "{NET}.{i}"\nremoved_at = "20260101T000000Z"\n'
                      for i in removed))
    return parse_inventory(text)


def _after_make_demo_pool() -> FakePool:
    """`make demo`'s end state: meta-4 (spare1) added, the leader meta-1 removed (service stopped), meta-2 leads;
    the inventory FILE still lists [1, 2, 3] (the demo recorded the change in the cluster block)."""
    pool = FakePool()
    for i in (1, 2, 3, 4):
        pool.remote(f"{NET}.{i}").files[META] = own_ip_meta_config(f"{NET}.{i}", i)
    pool.remote(f"{NET}.1").on(["databend-metactl"], exit_code=1, stderr="Error: transport error: refused\n")
    pool.remote(f"{NET}.1").on(["curl"], exit_code=7, stderr="curl: (7) refused")
    for i in (2, 3, 4):
        pool.remote(f"{NET}.{i}").on(["databend-metactl"], stdout=metactl_status_text(
            i, "Leader" if i == 2 else "Follower", leader_id=2, voters=(2, 3, 4), net=NET))
    return pool


def test_a_live_voter_missing_from_the_inventory_is_probed_and_answers() -> None:
    status = read_cluster_status(_after_make_demo_pool(), _inventory())
    assert status.answering_ids == [2, 3, 4] and status.unreachable_ids == [1]
    assert status.not_in_inventory_ids == [4] and status.probe(4).host == f"{NET}.4"  # type: ignore[union-attr]
    assert status.leader_id == 2 and status.voter_ids == [2, 3, 4]
    assert status.stable_reason(status.voter_ids or []) is None  # healthy: meta-4 is not called dead


def test_scale_down_with_a_stale_inventory_names_the_drift_and_never_advises_forcing_a_live_voter() -> None:
    """The reported case: scale-down --id 3 refused with "remove the dead node meta-4 first (scale-down with
    force)" although meta-4 was alive, only missing from the inventory file."""
    inventory = _inventory()
    view = view_of_cluster(read_cluster_status(_after_make_demo_pool(), inventory))
    hosts = {f"{NET}.{i}" for i in (2, 3, 4)}
    with pytest.raises(PlanRefused) as refused:
        plan_scale_down(inventory, view, [3], force=False, reachable_hosts=hosts)
    text = str(refused.value)
    assert "meta-4 (127.10.0.4:28004) is a voter of cluster lab but missing from the inventory" in text
    assert 'add [[meta]] id = 4, host = "127.10.0.4", raft_port = 28004' in text and "sync-inventory" in text
    assert "meta-1 (127.10.0.1:28004) is in the inventory but not a member" not in text  # not blocking
    assert "dead" not in text and "force" not in text and "answering" not in text


def test_every_kind_of_drift_comes_with_its_fix() -> None:
    inventory = _inventory((1, 2, 3), removed=(4,))
    addrs = {i: f"{NET}.{i}:28004" for i in (1, 2, 4, 5)}
    drifts = {d.kind: d for d in inventory_drift(inventory, {1, 2, 4}, {5}, addrs)}
    assert set(drifts) == {"missing", "removed-but-member", "not-a-member"}
    assert drifts["missing"].node_id == 5 and "is a learner" in drifts["missing"].problem
    assert "scale-down --id 5" in drifts["missing"].fix
    assert drifts["removed-but-member"].node_id == 4 and "[[removed]]" in drifts["removed-but-member"].problem
    assert drifts["not-a-member"].node_id == 3 and "scale-down --id 3" in drifts["not-a-member"].fix
    assert inventory_drift(inventory, set(), set(), {}) == []  # membership unknown: no claim


def test_scale_up_refuses_while_a_member_is_missing_but_resumes_its_own_half_added_node() -> None:
    inventory = _inventory()
    view = ClusterView(cluster="lab", leader_id=1, voters=frozenset({1, 2, 3, 4}),
                       answering={i: 9 for i in (1, 2, 3, 4)}, node_addrs={i: f"{NET}.{i}:28004" for i in (1, 2, 3, 4)})
    facts = {h: HostFacts(host=h, reachable=True, has_package=True) for h in (f"{NET}.5", f"{NET}.4")}
    with pytest.raises(PlanRefused, match="meta-4 .* missing from the inventory.*sync-inventory"):
        plan_scale_up(inventory, view, [NewNodeSpec(host=f"{NET}.5")], facts)
    resumed = plan_scale_up(inventory, view, [NewNodeSpec(host=f"{NET}.4")], facts)
    assert resumed.changes[0].already_member and resumed.drift == ()


def test_a_half_added_node_is_removed_by_its_id_and_recorded_as_removed() -> None:
    inventory = _inventory()
    view = ClusterView(cluster="lab", leader_id=1, voters=frozenset({1, 2, 3, 4}),
                       answering={i: 9 for i in (1, 2, 3, 4)},
                       node_addrs={i: f"{NET}.{i}:28004" for i in (1, 2, 3, 4)},
                       grpc_addrs={i: f"{NET}.{i}:9292" for i in (1, 2, 3, 4)})
    plan = plan_scale_down(inventory, view, [4], force=False, reachable_hosts={f"{NET}.{i}" for i in (1, 2, 3, 4)})
    (change,) = plan.changes
    assert (change.in_inventory, change.host, change.raft_port, change.grpc_port) == (False, f"{NET}.4", 28004, 9292)
    assert change.leave_via == tuple(f"{NET}.{i}:28004" for i in (1, 2, 3)) and plan.voters_after == (1, 2, 3)
    assert plan.join_after == tuple(f"{NET}.{i}:28004" for i in (1, 2, 3)) and plan.drift == ()
    files = {f"{NET}.{i}": own_ip_meta_config(f"{NET}.{i}", i, join=[f"{NET}.1:28004"]) for i in (1, 2, 3, 4)}
    query = '[meta]\nendpoints = ["127.10.0.1:9191"]\n'
    changes = preview_file_changes(inventory, plan, lambda host, path: files.get(host, query) if path == META
                                   else query, "20260101T000000Z")
    disarm = next(c for c in changes if c.host == f"{NET}.4")
    assert '-join = ["127.10.0.1:28004"]' in disarm.diff  # the half-added node's own config is disarmed too
    recorded = inventory.with_removed_record(4, f"{NET}.4", "20260101T000000Z")
    assert recorded.meta_ids == [1, 2, 3] and recorded.removed_node(4) is not None and recorded.next_free_id() == 5
    with pytest.raises(PlanRefused, match="not reachable over SSH"):
        plan_scale_down(inventory, view, [4], force=False, reachable_hosts={f"{NET}.{i}" for i in (1, 2, 3)})


def test_sync_writes_the_clusters_membership_and_a_second_sync_changes_nothing() -> None:
    inventory = _inventory((1, 2, 3), removed=(4,))
    addrs = {i: f"{NET}.{i}:28004" for i in (1, 2, 4, 5)}
    grpc = {i: f"{NET}.{i}:9191" for i in (1, 2, 4, 5)}
    plan = plan_sync(inventory, "inv.toml", {1, 2, 4, 5}, set(), addrs, grpc, removed_at="20260202T000000Z")
    after = plan.inventory_after
    assert after.meta_ids == [1, 2, 4, 5] and [r.node_id for r in after.removed_nodes] == [3]
    assert after.removed_node(3).removed_at == "20260202T000000Z"  # type: ignore[union-attr]
    assert after.ssh == inventory.ssh and after.query_nodes == inventory.query_nodes
    assert "+id = 5" in plan.diff and "-id = 3" in plan.diff and len(plan.drift) == 3
    assert "Only the inventory changes" in plan.to_markdown() and "```diff" in plan.to_markdown()
    again = plan_sync(after, "inv.toml", {1, 2, 4, 5}, set(), addrs, grpc, removed_at="20260303T000000Z")
    assert again.nothing_to_do and again.inventory_after == after and again.drift == ()


def test_sync_refuses_when_the_membership_is_unknown_or_a_host_is_not_valid() -> None:
    with pytest.raises(PlanRefused, match="membership of cluster lab is unknown"):
        synced_inventory(_inventory(), set(), set(), {})
    with pytest.raises(PlanRefused, match="names no usable host"):
        synced_inventory(_inventory(), {1, 2, 3, 4}, set(), {4: "a;b:28004"})


class _PoolCM(FakePool):
    def __enter__(self) -> _PoolCM:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def test_cli_status_shows_the_cluster_as_it_is_and_names_the_drift(tmp_path, monkeypatch, capsys) -> None:
    from deployments import cli
    from metascale import remote

    pool = _PoolCM(remotes=_after_make_demo_pool().remotes)
    path = tmp_path / "inventory.toml"
    path.write_text(_inventory().to_toml())
    monkeypatch.setattr(remote.SshPool, "for_inventory", classmethod(lambda cls, inv, **kw: pool))
    code = cli.cmd_status(str(path))
    out, err = capsys.readouterr()
    assert code == cli.ExitCode.DRIFT and "NOT HEALTHY" not in err
    row = next(line for line in out.splitlines() if line.startswith("meta-4"))
    assert "Follower" in row and "not in inventory" in row
    assert "DRIFT: meta-4 (127.10.0.4:28004) is a voter of cluster lab but missing from the inventory" in out
    assert f"`metascale sync-inventory --inventory {path}` does this" in out
    assert "DRIFT: meta-1 (127.10.0.1:28004) is in the inventory but not a member" in out


def test_an_unlisted_member_whose_record_names_no_valid_host_is_kept_as_an_error_probe() -> None:
    pool = FakePool()
    for i in (1, 2, 3):
        pool.remote(f"{NET}.{i}").files[META] = own_ip_meta_config(f"{NET}.{i}", i)
        text = metactl_status_text(i, "Leader" if i == 1 else "Follower", voters=(1, 2, 3, 4), net=NET)
        pool.remote(f"{NET}.{i}").on(["databend-metactl"], stdout=text.replace(f"id=4 raft={NET}.4:28004",
                                                                                "id=4 raft=:28004"))
    status = read_cluster_status(pool, _inventory())
    probe = status.probe(4)
    assert probe is not None and not probe.in_inventory and probe.error_type == "UnknownHost"
    assert set(pool.remotes) == {f"{NET}.{i}" for i in (1, 2, 3)}  # nothing was asked to connect anywhere else


def test_the_removed_node_left_out_of_a_read_on_purpose_is_not_probed_again() -> None:
    pool = _after_make_demo_pool()
    inventory = _inventory((1, 2, 3, 4))
    status = read_cluster_status(pool, inventory, nodes=[n for n in inventory.meta_nodes if n.node_id != 4])
    assert status.probe(4) is None  # listed in the inventory: only the caller decides whether to ask it
    assert status.not_in_inventory_ids == []
