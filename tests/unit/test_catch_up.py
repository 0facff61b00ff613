"""Issue #9 item 4: "joined" means voter AND caught up (reference §1.3 `Replication:` and its ` *` marker).

openraft adds voters directly, without a learner phase, so the leader lists a new node as a voter while its
replication still lags. metascale waits until the leader's matched index for it reaches the leader's applied index
at the time of the join. Samples are `databend-metactl status` texts (newest format) parsed by the real parser.
"""

from __future__ import annotations

import pytest
from tenacity import wait_none

from metascale import waits
from metascale.errors import ClusterNotConverged
from metascale.plan import ClusterView, HostFacts, NewNodeSpec, catch_up_note, plan_scale_up
from metascale.inventory import Inventory
from metascale.status import ClusterStatus, NodeProbe, parse_metactl_status

NET = "127.100.0"


def _rec(i: int) -> str:
    return f"id={i} raft={NET}.{10 + i}:28004 grpc={NET}.{10 + i}:9191"


def leader_text(applied: int, replication: dict[int, int], voters: tuple[int, ...] = (1, 2, 3, 4)) -> str:
    """The leader meta-1's status: LastApplied ``applied``; a ` *` on every target whose matched index differs."""
    lines = ["BinaryVersion: 260304.0.0", "DataVersion: V004", "RaftLogSize: 4096", "SnapshotKeyCount: 2000",
             f"Node: id=1 raft={NET}.11:28004", "State: Leader", f"Leader: {_rec(1)}", "CurrentTerm: 3",
             f"LastSeq: {applied}", f"LastLogIndex: {applied}", f"LastApplied: T3-N1.{applied}", "Replication:"]
    lines += [f"  - [{i}] T3-N1.{m}{' *' if m != applied else ''}" for i, m in replication.items()]
    lines += ["Voters:", *(f"  - {_rec(v)}" for v in voters)]
    return "\n".join(lines) + "\n"


def follower_text(node_id: int, applied: int, voters: tuple[int, ...] = (1, 2, 3, 4)) -> str:
    lines = [f"Node: id={node_id} raft={NET}.{10 + node_id}:28004", "State: Follower", f"Leader: {_rec(1)}",
             "CurrentTerm: 3", f"LastLogIndex: {applied}", f"LastApplied: T3-N1.{applied}",
             "Voters:", *(f"  - {_rec(v)}" for v in voters)]
    return "\n".join(lines) + "\n"


def cluster(leader: str, new_node: str | None, voters: tuple[int, ...] = (1, 2, 3, 4)) -> ClusterStatus:
    probes = [NodeProbe(node_id=1, host=f"{NET}.11", status=parse_metactl_status(leader))]
    probes += [NodeProbe(node_id=i, host=f"{NET}.{10 + i}", status=parse_metactl_status(follower_text(i, 2010,
                                                                                                     voters)))
               for i in (2, 3)]
    probes.append(NodeProbe(node_id=4, host=f"{NET}.14", status=parse_metactl_status(new_node) if new_node else None,
                            error=None if new_node else "connection refused"))
    return ClusterStatus(cluster="lab", probes=probes)


def test_parser_marks_the_lagging_voter() -> None:
    status = parse_metactl_status(leader_text(2010, {1: 2010, 2: 2010, 3: 2010, 4: 150}))
    assert status.replication[4] == 150 and status.lagging_ids == [4] and status.last_applied_index == 2010


@pytest.mark.parametrize(("matched", "target", "reason"), [
    (150, 2010, "still catching up: the leader's replication of it is at index 150, the leader had applied 2010"),
    (2010, 2010, None),
    (2050, 2010, None),  # the leader moved on under writes (a ` *` again), but the node passed the join-time index
])
def test_caught_up_reason_compares_matched_with_the_index_at_join(matched: int, target: int,
                                                                  reason: str | None) -> None:
    leader = parse_metactl_status(leader_text(max(matched, target), {1: max(matched, target), 4: matched}))
    got = waits.caught_up_reason(leader, None, 4, target)
    assert (got is None) if reason is None else (got is not None and reason in got)


def test_caught_up_reason_without_a_replication_line_for_the_node() -> None:
    leader = parse_metactl_status(leader_text(2010, {1: 2010, 2: 2010, 3: 2010}))
    assert "shows no replicated log for it yet" in (waits.caught_up_reason(leader, None, 4, 2010) or "")


def test_caught_up_reason_falls_back_to_the_nodes_own_applied_index_without_replication_lines() -> None:
    leader = parse_metactl_status(leader_text(2010, {}))
    behind = parse_metactl_status(follower_text(4, 100))
    done = parse_metactl_status(follower_text(4, 2010))
    assert "its own applied index is at index 100" in (waits.caught_up_reason(leader, behind, 4, 2010) or "")
    assert waits.caught_up_reason(leader, done, 4, 2010) is None


def test_joined_waits_for_catch_up_not_just_voter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(waits, "DEFAULT_WAIT", wait_none())
    snapshots = [
        cluster(leader_text(2000, {1: 2000, 2: 2000, 3: 2000}, (1, 2, 3)), None, (1, 2, 3)),   # not a voter yet
        cluster(leader_text(2010, {1: 2010, 2: 2010, 3: 2010, 4: 12}), follower_text(4, 12)),  # voter, lagging
        cluster(leader_text(2020, {1: 2020, 2: 2020, 3: 2020, 4: 900}), follower_text(4, 900)),
        cluster(leader_text(2030, {1: 2030, 2: 2030, 3: 2030, 4: 2015}), follower_text(4, 2015)),  # past 2010
    ]
    seen: list[int] = []
    targets: list[int] = []
    reads = iter(snapshots)
    result = waits.wait_for_caught_up(lambda: next(reads), 4, timeout_s=5, on_voter=targets.append,
                                      on_attempt=lambda n, _s: seen.append(n))
    assert result is snapshots[-1] and seen == [1, 2, 3, 4]
    assert targets == [2010]  # the leader's applied index when meta-4 was first seen as a voter, recorded once


def test_a_voter_that_never_catches_up_times_out_saying_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(waits, "DEFAULT_WAIT", wait_none())
    lagging = cluster(leader_text(2010, {1: 2010, 2: 2010, 3: 2010, 4: 40}), follower_text(4, 40))
    with pytest.raises(ClusterNotConverged) as failed:
        waits.wait_for_caught_up(lambda: lagging, 4, timeout_s=0.2)
    assert "meta-4 is a voter and has caught up" in str(failed.value)
    assert "index 40" in str(failed.value) and "applied 2010" in str(failed.value)


def test_the_plan_says_a_new_voter_is_waited_for_until_caught_up() -> None:
    inventory = Inventory.model_validate({
        "name": "lab", "ssh": {"private_key_file": "/k", "known_hosts_file": "/kh"},
        "meta": [{"id": i, "host": f"{NET}.{10 + i}"} for i in (1, 2, 3)]})
    view = ClusterView(cluster="lab", leader_id=1, voters=frozenset({1, 2, 3}), answering={1: 1, 2: 1, 3: 1},
                       node_addrs={i: f"{NET}.{10 + i}:28004" for i in (1, 2, 3)})
    facts = {h: HostFacts(host=h, reachable=True, has_package=True) for h in (f"{NET}.14", f"{NET}.15")}
    plan = plan_scale_up(inventory, view, [NewNodeSpec(host=f"{NET}.14"), NewNodeSpec(host=f"{NET}.15")], facts)
    markdown = plan.to_markdown()
    assert ("meta-4 counts as a voter as soon as it joins; metascale waits until it has caught up"
            in markdown)
    assert catch_up_note(5) in plan.notes and "has caught up" in markdown.split("## Steps")[1]
