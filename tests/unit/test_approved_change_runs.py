"""Issue #10, "the change that was approved is the change that runs": fault tolerance rules in the plan, the plan
compared again after the approval, the approval wait capped by the maintenance window, and leadership moving to a
node that stays (the leader at that moment). Pure or Prefect-free: no hosts, no server."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from metascale.errors import PlanRefused
from metascale.inventory import Inventory
from metascale.plan import (
    ClusterView,
    FileChange,
    HostFacts,
    NewNodeSpec,
    ScalePlan,
    plan_differences,
    plan_scale_down,
    plan_scale_up,
)
from metascale.steps import StepResult
from metascale.window import parse_window, time_left

SPARE = "127.100.0.14"
HOSTS = {f"127.100.0.{10 + i}" for i in range(1, 8)}


def _inventory(ids: tuple[int, ...] = (1, 2, 3)) -> Inventory:
    return Inventory.model_validate({
        "name": "lab", "ssh": {"private_key_file": "/k", "known_hosts_file": "/kh"},
        "meta": [{"id": i, "host": f"127.100.0.{10 + i}"} for i in ids]})


def _view(voters: tuple[int, ...] = (1, 2, 3), leader: int | None = 1,
          answering: dict[int, int] | None = None) -> ClusterView:
    answering = {i: 10 for i in voters} if answering is None else answering
    return ClusterView(cluster="lab", leader_id=leader, voters=frozenset(voters), answering=answering,
                       node_addrs={i: f"127.100.0.{10 + i}:28004" for i in voters})


def _spare_ok(host: str = SPARE) -> dict[str, HostFacts]:
    return {host: HostFacts(host=host, reachable=True, has_package=True)}


# --------------------------------------------------------------------------------------------- fault tolerance
@pytest.mark.parametrize(("voters", "remove"), [((1, 2, 3), [3]), ((1, 2, 3), [2, 3]), ((1, 2), [2])])
def test_scale_down_to_two_or_one_voters_is_flagged_at_the_top_and_refused_without_the_parameter(
        voters: tuple[int, ...], remove: list[int]) -> None:
    plan = plan_scale_down(_inventory(voters), _view(voters), remove, force=False, reachable_hosts=HOSTS)
    assert plan.leaves_no_fault_tolerance
    top = plan.to_markdown().split("\n")[:4]
    assert top[0].startswith("# Plan") and "WARNING: NO FAULT TOLERANCE" in top[2], top
    assert "tolerates 0 failures" in top[2] and "accept_no_fault_tolerance=True" in top[2]
    assert "NO FAULT TOLERANCE" in plan.summary()
    reason = plan.fault_tolerance_refusal()
    assert reason and "accept_no_fault_tolerance=True" in reason and "--accept-no-fault-tolerance" in reason
    accepted = plan_scale_down(_inventory(voters), _view(voters), remove, force=False, reachable_hosts=HOSTS,
                               accept_no_fault_tolerance=True)
    assert accepted.fault_tolerance_refusal() is None
    assert "accepted with accept_no_fault_tolerance" in accepted.to_markdown().split("\n")[2]


def test_scale_up_from_one_to_two_voters_also_needs_the_parameter() -> None:
    plan = plan_scale_up(_inventory((1,)), _view((1,)), [NewNodeSpec(host=SPARE)], _spare_ok())
    assert plan.voters_after == (1, 2) and plan.fault_tolerance_refusal()


@pytest.mark.parametrize(("voters", "remove"), [((1, 2, 3, 4, 5), [5]), ((1, 2, 3, 4, 5, 6, 7), [7])])
def test_even_voter_count_is_pointed_out_but_needs_no_parameter(voters: tuple[int, ...], remove: list[int]) -> None:
    plan = plan_scale_down(_inventory(voters), _view(voters), remove, force=False, reachable_hosts=HOSTS)
    (warning,) = plan.warnings()
    after = len(voters) - len(remove)
    assert warning.startswith(f"EVEN NUMBER OF VOTERS: {after} voters tolerate") and f"no more than {after - 1}" \
        in warning
    assert warning in plan.to_markdown().split("\n")[2]
    assert plan.fault_tolerance_refusal() is None and not plan.leaves_no_fault_tolerance


def test_scale_up_to_three_voters_has_no_warning() -> None:
    plan = plan_scale_up(_inventory((1, 2)), _view((1, 2)), [NewNodeSpec(host=SPARE)], _spare_ok())
    assert plan.warnings() == () and plan.fault_tolerance_refusal() is None
    assert plan.to_markdown().split("\n")[2].startswith("scale-up on cluster lab")


def test_a_rerun_with_nothing_to_do_needs_no_parameter() -> None:
    """A finished removal to 2 voters, rerun: the membership no longer changes, nothing is refused."""
    plan = plan_scale_down(_inventory((1, 2, 3)), _view((1, 2)), [3], force=False, reachable_hosts=HOSTS)
    assert plan.membership_changes == () and plan.fault_tolerance_refusal() is None and plan.warnings() == ()


def test_shipped_deployments_and_schedules_never_accept_no_fault_tolerance() -> None:
    from deployments.specs import load_specs

    specs = load_specs()
    assert specs, "prefect.yaml has no deployments"
    for spec in specs:
        assert not spec.parameters.get("accept_no_fault_tolerance"), spec.name
        for schedule in spec.schedules:
            assert not schedule.parameters.get("accept_no_fault_tolerance"), (spec.name, schedule)


def test_cli_has_the_accept_no_fault_tolerance_flag_off_by_default() -> None:
    from deployments.cli import _parser

    down = _parser().parse_args(["scale-down", "--inventory", "i.toml", "--id", "3"])
    assert down.accept_no_fault_tolerance is False
    up = _parser().parse_args(["scale-up", "--inventory", "i.toml", "--host", SPARE, "--accept-no-fault-tolerance"])
    assert up.accept_no_fault_tolerance is True


# --------------------------------------------------------------------------------------------- leader handover
def test_a_leaving_leader_never_hands_over_to_another_node_of_the_same_request() -> None:
    """Leader meta-1 and meta-2 (the most up to date) both leave: leadership must go to a node that stays."""
    view = _view((1, 2, 3, 4, 5), leader=1, answering={1: 50, 2: 99, 3: 10, 4: 40, 5: 10})
    plan = plan_scale_down(_inventory((1, 2, 3, 4, 5)), view, [1, 2], force=False, reachable_hosts=HOSTS)
    assert plan.changes[0].transfer_leader_to == 4          # the staying voter with the highest log index
    assert plan.transfer_targets(1) == [4, 3, 5] and plan.transfer_targets(2) == [3, 4, 5]
    assert "move leadership to meta-4" in plan.to_markdown()


def test_removing_every_voter_is_refused_as_removing_the_last_voter() -> None:
    with pytest.raises(PlanRefused, match=r"removes every voter \[1, 2, 3\].*last voter"):
        plan_scale_down(_inventory(), _view(), [1, 2, 3], force=False, reachable_hosts=HOSTS)


class _FakeCluster:
    """The leader as the cluster sees it, changed by transfers and by elections after a leave."""

    def __init__(self, leader: int, elect_after_leave: dict[int, int]) -> None:
        self.leader, self.elect_after_leave = leader, elect_after_leave
        self.log: list[tuple[Any, ...]] = []

    def tasks(self) -> dict[str, Any]:
        def result(step: str, host: str) -> StepResult:
            return StepResult(step=step, host=host, changed=True, detail=step)

        def transfer(cluster: Inventory, leader: Any, target: int) -> StepResult:
            self.log.append(("transfer", leader.node_id, target))
            self.leader = target
            return result("transfer_leadership", leader.host)

        def leave(cluster: Inventory, node_id: int, via: list[str], timeout_s: float) -> StepResult:
            self.log.append(("leave", node_id, self.leader))
            self.leader = self.elect_after_leave.get(node_id, self.leader)
            return result("leave_cluster", "via")

        def moved(cluster: Inventory, node_id: int, wait_s: float) -> int:
            assert self.leader != node_id
            return self.leader

        return {
            "check_leader": lambda cluster, nodes=None: self.leader, "transfer_leadership": transfer,
            "verify_leadership_moved": moved, "check_quorum_before_leave": lambda *a: None, "leave_cluster": leave,
            "verify_node_removed": lambda *a: None, "verify_cluster_stable": lambda *a: None,
            "stop_meta_service": lambda c, n: result("stop_meta_service", n.host),
            "retire_raft_dir": lambda c, n: result("retire_raft_dir", n.host),
            "disarm_removed_node": lambda c, n: result("disarm_removed_node", n.host),
        }


def test_leadership_moves_off_whichever_node_leads_at_the_moment_of_its_leave(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Planned with meta-1 leading; meta-2 leads by the time it leaves, and after that election makes meta-3 (the
    other leaving node) the leader. Before each leave leadership must move to a node that stays (1, 4 or 5)."""
    import flows.scale_down as sd
    from tasks import runbook as rb

    inventory = _inventory((1, 2, 3, 4, 5))
    plan = plan_scale_down(inventory, _view((1, 2, 3, 4, 5)), [2, 3], force=False, reachable_hosts=HOSTS)
    assert all(c.transfer_leader_to is None for c in plan.changes)    # the plan saw meta-1 leading
    fake = _FakeCluster(leader=2, elect_after_leave={2: 3})
    for name, fn in fake.tasks().items():
        monkeypatch.setattr(rb, name, fn)
    monkeypatch.setattr(sd, "get_run_logger", lambda: logging.getLogger("test"))
    progress, current = rb.Progress(), inventory
    for change in plan.changes:
        sd.remove_one_node(current, change, progress, 10, 10, plan)
        current = current.without_meta_node(change.node_id, removed_at="20261126T000000Z")
    transfers = [(src, dst) for kind, src, dst in fake.log if kind == "transfer"]
    leaves = [(node, leader) for kind, node, leader in fake.log if kind == "leave"]
    assert [src for src, _ in transfers] == [2, 3], fake.log
    assert all(dst in (1, 4, 5) for _, dst in transfers), fake.log
    assert all(node != leader for node, leader in leaves), f"a node left while it led: {fake.log}"


# --------------------------------------------------------------------------------------------- re-plan compare
def _removal(view: ClusterView, diff: str = "") -> ScalePlan:
    plan = plan_scale_down(_inventory((1, 2, 3, 4, 5)), view, [5], force=False, reachable_hosts=HOSTS)
    return plan.with_file_changes([FileChange(host="127.100.0.15", path="/etc/databend/databend-meta.toml",
                                              diff=diff or "-join = [1]\n+# disarmed at 20261126T101010\n")])


def test_the_same_plan_read_again_has_no_differences_even_with_a_new_timestamp() -> None:
    view = _view((1, 2, 3, 4, 5))
    again = _removal(view, "-join = [1]\n+# disarmed at 20261126T111111\n")
    assert plan_differences(_removal(view), again) == []


def test_a_moved_leader_a_dead_voter_a_new_member_and_an_edited_file_are_each_named() -> None:
    approved = _removal(_view((1, 2, 3, 4, 5)))
    moved = _removal(_view((1, 2, 3, 4, 5), leader=2))
    assert plan_differences(approved, moved) == ["the leader moved: meta-1 -> meta-2"]
    dead = plan_differences(approved, _removal(_view((1, 2, 3, 4, 5), answering={1: 9, 2: 9, 3: 9, 5: 9})))
    assert any("meta-4 stopped answering" in d for d in dead), dead
    edited = plan_differences(approved, _removal(_view((1, 2, 3, 4, 5)), "-join = [2]\n+join = []\n"))
    assert edited == ["the change to 127.100.0.15:/etc/databend/databend-meta.toml differs from the approved diff "
                      "(the file or the plan changed)"]
    grown = plan_scale_down(_inventory((1, 2, 3, 4, 5, 6)), _view((1, 2, 3, 4, 5, 6)), [5], force=False,
                            reachable_hosts=HOSTS)
    assert any(d.startswith("the voters changed: [1, 2, 3, 4, 5] -> [1, 2, 3, 4, 5, 6]")
               for d in plan_differences(approved, grown))


# --------------------------------------------------------------------------------------------- window and wait
BERLIN_SAT_0358 = datetime(2026, 11, 28, 2, 58, 30, tzinfo=timezone.utc)  # Sat 03:58:30 Europe/Berlin (UTC+1)


@pytest.mark.parametrize(("spec", "now", "left"), [
    ("Sat 02:00-04:00 Europe/Berlin", BERLIN_SAT_0358, timedelta(seconds=90)),
    ("Sat 02:00-04:00 Europe/Berlin", BERLIN_SAT_0358 + timedelta(minutes=2), timedelta(0)),
    ("Fri 22:00-02:00 UTC", datetime(2026, 11, 28, 1, 0, tzinfo=timezone.utc), timedelta(hours=1)),
    ("Fri 22:00-02:00 UTC", datetime(2026, 11, 27, 23, 0, tzinfo=timezone.utc), timedelta(hours=3)),
    ("* 00:00-24:00 UTC", datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc), timedelta(days=8, hours=12)),
    ("", BERLIN_SAT_0358, None),
])
def test_time_left_in_the_window(spec: str, now: datetime, left: timedelta | None) -> None:
    assert time_left(spec, now) == left
    if left:
        assert parse_window(spec).closes_at(now) == now + left


def test_the_approval_wait_is_capped_at_the_time_left_in_the_window() -> None:
    from flows.common import approval_wait_s

    spec = "Sat 02:00-04:00 Europe/Berlin"
    wait, why = approval_wait_s(3600, spec, False, BERLIN_SAT_0358)
    assert wait == 90 and "closes at Sat 2026-11-28 04:00 CET, in 90 s" in why
    assert approval_wait_s(60, spec, False, BERLIN_SAT_0358) == (60, "")
    assert approval_wait_s(3600, spec, True, BERLIN_SAT_0358) == (3600, "")   # override_window: no window
    assert approval_wait_s(3600, "", False, BERLIN_SAT_0358) == (3600, "")


def test_the_window_is_checked_again_after_the_approval(monkeypatch: pytest.MonkeyPatch) -> None:
    import flows.common as common

    monkeypatch.setattr(common, "get_run_logger", lambda: logging.getLogger("test"))
    spec = "Sat 02:00-04:00 Europe/Berlin"
    common.check_maintenance_window("scale-down", spec, False, BERLIN_SAT_0358, after_approval=True)
    with pytest.raises(PlanRefused, match="the approval came after the maintenance window closed: outside"):
        common.check_maintenance_window("scale-down", spec, False, BERLIN_SAT_0358 + timedelta(minutes=2),
                                        after_approval=True)


def test_a_changed_plan_after_the_approval_is_refused_saying_what_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    import flows.common as common

    monkeypatch.setattr(common, "get_run_logger", lambda: logging.getLogger("test"))
    approved = _removal(_view((1, 2, 3, 4, 5)))
    common.confirm_plan_unchanged("scale-down", approved, _removal(_view((1, 2, 3, 4, 5))))
    with pytest.raises(PlanRefused) as caught:
        common.confirm_plan_unchanged("scale-down", approved, _removal(_view((1, 2, 3, 4, 5), leader=3)))
    assert "the cluster changed while waiting for approval" in str(caught.value)
    assert "the leader moved: meta-1 -> meta-3" in str(caught.value) and "nothing was changed" in str(caught.value)


def test_no_fault_tolerance_refusal_is_a_plan_refusal() -> None:
    import flows.common as common

    plan = plan_scale_down(_inventory(), _view(), [3], force=False, reachable_hosts=HOSTS)
    with pytest.raises(PlanRefused, match="accept_no_fault_tolerance=True"):
        common.refuse_without_fault_tolerance("scale-down", plan)
    common.refuse_without_fault_tolerance("scale-down", plan.model_copy(update={"accept_no_fault_tolerance": True}))
