"""The Prefect task wrappers (tasks/runbook.py) and flow helpers, called through `.fn` against fake hosts.

No Prefect server and no lab: the run's SSH pool is replaced by tests/unit/fakes.FakePool under the key "local".
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.common import ScaleApproval, check_common_parameters
from metascale.errors import ClusterNotConverged, PlanRefused
from metascale.inventory import Inventory, load_inventory
from metascale.plan import NewNodeSpec, plan_scale_down
from metascale.preview import listening_ports, view_of_cluster
from tasks import runbook as rb
from tasks import pool as pool_module
from tasks.pool import register_pool
from tests.unit.fakes import FakePool, metactl_status_text

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "configs"
META_CONFIG = "/etc/databend/databend-meta.toml"
QUERY_CONFIG = "/etc/databend/databend-query.toml"
NET = "127.10.0"


def _inventory(tmp_path: Path, ids: tuple[int, ...] = (1, 2, 3)) -> Path:
    meta = "".join(f'[[meta]]\nid = {i}\nhost = "{NET}.{i}"\n\n' for i in ids)
    path = tmp_path / "inventory.toml"
    path.write_text(f'name = "unit"\n\n[ssh]\nprivate_key_file = "/k"\nknown_hosts_file = "/kh"\n\n{meta}'
                    f'[[query]]\nhost = "{NET}.6"\n')
    return path


@pytest.fixture
def pool() -> Iterator[FakePool]:
    """A FakePool installed as the pool of "runs" outside Prefect (key "local"); removed afterwards."""
    fake = FakePool()
    register_pool(fake, "local")  # type: ignore[arg-type]
    yield fake
    pool_module._POOLS.pop("local", None)  # FakePool has nothing to close


def _cluster(pool: FakePool, inventory: Inventory, leader: int = 1, voters: tuple[int, ...] = (1, 2, 3),
             answering: tuple[int, ...] | None = None) -> None:
    """Make every meta node answer `databend-metactl status` with this view; the meta config on each."""
    meta_text = (FIXTURES / "databend-meta.toml").read_text()
    for node in inventory.meta_nodes:
        remote = pool.remote(node.host)
        remote.files[META_CONFIG] = meta_text
        if answering is not None and node.node_id not in answering:
            remote.on(["databend-metactl", "status"], 1, "", "Error: cannot connect to http://127.0.0.1:9191")
            continue
        state = "Leader" if node.node_id == leader else "Follower"
        remote.on(["databend-metactl", "status"], 0,
                  metactl_status_text(node.node_id, state, leader, voters, net=NET))
    for query in inventory.query_nodes:
        pool.remote(query.host).files[QUERY_CONFIG] = (FIXTURES / "databend-query.toml").read_text()


def test_listening_ports_reads_proc_net_tcp() -> None:
    text = ("  sl  local_address rem_address   st\n"
            "   0: 00000000:23E7 00000000:0000 0A 00000000:00000000\n"       # 9191 LISTEN
            "   1: 0100007F:6D64 0100007F:C350 01 00000000:00000000\n")      # 28004 ESTABLISHED
    assert listening_ports(text) == {9191}


def test_check_new_host_reports_package_ports_and_service(pool: FakePool, tmp_path: Path) -> None:
    inventory = load_inventory(_inventory(tmp_path))
    spare = pool.remote(f"{NET}.4")
    spare.on(["test", "-x"], 1)
    spare.on(["cat", "/proc/net/tcp"], 0, "   0: 00000000:6D64 00000000:0000 0A 0\n")
    facts = rb.check_new_host.fn(inventory, NewNodeSpec(host=f"{NET}.4"))
    assert facts.reachable and not facts.has_package and facts.busy_ports == (28004,) and not facts.meta_active


def test_check_new_host_unreachable_is_a_fact_not_an_error(pool: FakePool, tmp_path: Path) -> None:
    from metascale.errors import HostUnreachable

    inventory = load_inventory(_inventory(tmp_path))
    pool.broken[f"{NET}.4"] = HostUnreachable(f"{NET}.4", "connection refused")
    facts = rb.check_new_host.fn(inventory, NewNodeSpec(host=f"{NET}.4"))
    assert not facts.reachable and "connection refused" in facts.reason


def test_cluster_view_from_a_status_read(pool: FakePool, tmp_path: Path) -> None:
    inventory = load_inventory(_inventory(tmp_path))
    _cluster(pool, inventory, leader=2, answering=(1, 2))
    view = view_of_cluster(rb.read_cluster_status.fn(inventory))
    assert view.leader_id == 2 and view.voters == {1, 2, 3} and set(view.answering) == {1, 2}
    assert view.node_addrs[3] == f"{NET}.3:28004" and view.disagreements == ()


def test_cluster_view_reports_disagreement(pool: FakePool, tmp_path: Path) -> None:
    inventory = load_inventory(_inventory(tmp_path))
    _cluster(pool, inventory)
    pool.remote(f"{NET}.3").on(["databend-metactl", "status"], 0,
                                metactl_status_text(3, "Follower", 1, (1, 3), net=NET))
    view = view_of_cluster(rb.read_cluster_status.fn(inventory, settle_s=0.2))  # re-reads while they disagree
    assert any("meta-3 sees leader 1 and voters [1, 3]" in d for d in view.disagreements)


def test_update_join_changes_once_then_reports_no_change(pool: FakePool, tmp_path: Path) -> None:
    inventory = load_inventory(_inventory(tmp_path))
    _cluster(pool, inventory)
    node = inventory.meta_node(2)
    join = [n.raft_addr for n in inventory.meta_nodes]
    first = rb.update_join_on_existing_nodes.fn(inventory, node, join)
    second = rb.update_join_on_existing_nodes.fn(inventory, node, join)
    assert first.changed and first.backup_path and not second.changed
    assert len(pool.remote(node.host).writes) == 1


def test_preview_file_changes_of_a_scale_down(pool: FakePool, tmp_path: Path) -> None:
    inventory = load_inventory(_inventory(tmp_path))
    _cluster(pool, inventory)
    view = view_of_cluster(rb.read_cluster_status.fn(inventory))
    plan = plan_scale_down(inventory, view, [3], force=False, reachable_hosts={f"{NET}.{i}" for i in range(1, 7)})
    changes = rb.preview_file_changes.fn(inventory, plan)
    assert {c.host for c in changes} == {f"{NET}.1", f"{NET}.2", f"{NET}.3", f"{NET}.6"}
    assert "+# metascale: this node was removed" in next(c.diff for c in changes if c.host == f"{NET}.3")
    assert all(c.diff for c in changes) and f"+endpoints = [\"{NET}.1:9191\", \"{NET}.2:9191\"]" in \
        next(c.diff for c in changes if c.host == f"{NET}.6")
    assert not any(p.writes for p in pool.remotes.values())  # a preview writes nothing


def test_preview_refuses_malformed_toml_on_a_host(pool: FakePool, tmp_path: Path) -> None:
    inventory = load_inventory(_inventory(tmp_path))
    _cluster(pool, inventory)
    pool.remote(f"{NET}.6").files[QUERY_CONFIG] = "[meta\nendpoints = ["
    view = view_of_cluster(rb.read_cluster_status.fn(inventory))
    plan = plan_scale_down(inventory, view, [3], force=False, reachable_hosts={f"{NET}.{i}" for i in range(1, 7)})
    with pytest.raises(PlanRefused, match=f"{NET}.6:{QUERY_CONFIG}: cannot edit config: invalid TOML"):
        rb.preview_file_changes.fn(inventory, plan)


def test_verify_cluster_stable_waits_then_succeeds(pool: FakePool, tmp_path: Path) -> None:
    inventory = load_inventory(_inventory(tmp_path))
    _cluster(pool, inventory, voters=(1, 2, 3, 4))
    reads = {"n": 0}
    stable = metactl_status_text(1, "Leader", 1, (1, 2, 3), net=NET)
    unstable = metactl_status_text(1, "Leader", 1, (1, 2, 3, 4), net=NET)

    def leader_answer(argv: list[str]) -> tuple[int, str, str]:
        reads["n"] += 1
        return 0, (stable if reads["n"] > 2 else unstable), ""

    pool.remote(f"{NET}.1").on_call(["databend-metactl", "status"], leader_answer)
    for i in (2, 3):
        pool.remote(f"{NET}.{i}").on(["databend-metactl", "status"], 0,
                                     metactl_status_text(i, "Follower", 1, (1, 2, 3), net=NET))
    status = rb.verify_cluster_stable.fn(inventory, list(inventory.meta_nodes), [1, 2, 3], 5.0)
    assert status.voter_ids == [1, 2, 3] and reads["n"] == 3


def test_verify_node_removed_times_out_with_what_it_saw(pool: FakePool, tmp_path: Path) -> None:
    inventory = load_inventory(_inventory(tmp_path))
    _cluster(pool, inventory)
    with pytest.raises(ClusterNotConverged) as error:
        rb.verify_node_removed.fn(inventory, 3, [1, 2], 0.3)
    assert "voters are [1, 2, 3], expected [1, 2]" in str(error.value)


def test_leave_cluster_is_a_no_op_for_a_non_member(pool: FakePool, tmp_path: Path) -> None:
    inventory = load_inventory(_inventory(tmp_path, (1, 2, 3)))
    _cluster(pool, inventory, voters=(1, 2))
    result = rb.leave_cluster.fn(inventory, 3, [f"{NET}.1:28004", f"{NET}.2:28004"], 5.0)
    assert not result.changed and not pool.remote(f"{NET}.1").ran("databend-meta")


def test_leave_cluster_runs_databend_meta_with_one_flag_per_address(pool: FakePool, tmp_path: Path) -> None:
    inventory = load_inventory(_inventory(tmp_path))
    _cluster(pool, inventory)
    result = rb.leave_cluster.fn(inventory, 3, [f"{NET}.1:28004", f"{NET}.2:28004"], 5.0)
    assert result.changed
    assert pool.remote(f"{NET}.1").ran("databend-meta") == [
        ["databend-meta", "--config-file", META_CONFIG, "--leave-id", "3", "--leave-via", f"{NET}.1:28004",
         "--leave-via", f"{NET}.2:28004"]]


def test_record_inventory_writes_once_with_a_backup(tmp_path: Path) -> None:
    path = _inventory(tmp_path)
    smaller = load_inventory(path).without_meta_node(3)
    first = rb.record_inventory.fn(smaller, str(path), "")
    second = rb.record_inventory.fn(smaller, str(path), "")
    assert first.changed and not second.changed
    assert load_inventory(path).meta_ids == [1, 2]
    assert Path(first.backup_path or "").read_text().count("[[meta]]") == 3


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"inventory": "", "cluster_block": ""}, "exactly one"),
        ({"inventory": "/x.toml", "cluster_block": "lab"}, "exactly one"),
        ({"inventory": "/tmp/x;rm -rf /"}, "metacharacters"),
        ({"inventory": "", "cluster_block": "Lab Prod"}, "not a block name"),
        ({"verify_deadline_s": 0}, "verify_deadline_s must be > 0"),
        ({"approval_timeout_s": -5}, "approval_timeout_s must be > 0"),
        ({"maintenance_window": "someday"}, "someday"),
    ],
)
def test_common_parameters_are_refused_with_the_bad_value(kwargs: dict[str, object], needle: str) -> None:
    args: dict[str, object] = {"inventory": "/x.toml", "cluster_block": "", "approval_timeout_s": 60,
                               "verify_deadline_s": 60, "maintenance_window": ""}
    args.update(kwargs)
    with pytest.raises(PlanRefused, match=needle):
        check_common_parameters("scale-up", **args)  # type: ignore[arg-type]


def test_approval_input_has_approve_and_reason() -> None:
    answer = ScaleApproval(approve=False, reason="not tonight")
    assert not answer.approve and answer.reason == "not tonight"
    assert {"approve", "reason"} <= set(ScaleApproval.model_json_schema()["properties"])



def test_verify_cluster_stable_tolerates_only_voters_that_were_silent_before(pool: FakePool, tmp_path: Path) -> None:
    inventory = load_inventory(_inventory(tmp_path, (1, 2, 3, 4)))
    _cluster(pool, inventory, voters=(1, 2, 3, 4), answering=(1, 2, 3))
    nodes = list(inventory.meta_nodes)
    assert rb.verify_cluster_stable.fn(inventory, nodes, [1, 2, 3, 4], 1.0, [4]).leader_id == 1
    with pytest.raises(ClusterNotConverged, match=r"voters \[4\] do not answer"):
        rb.verify_cluster_stable.fn(inventory, nodes, [1, 2, 3, 4], 0.3, [])
