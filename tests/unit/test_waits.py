"""Waits with fake readers: they return as soon as the state is there, retry only "not yet", and end with
ClusterNotConverged (never tenacity's RetryError) at the deadline."""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator

import pytest
from tenacity import RetryError, wait_none

from metascale import waits
from metascale.errors import ClusterNotConverged, HostKeyRejected, MetaUnreachable, RemoteCommandError
from metascale.status import ClusterStatus, MetaStatus, NodeProbe, parse_metactl_status
from tests.unit.fakes import metactl_status_text

ORIGINAL_WAIT = waits.DEFAULT_WAIT  # captured before the autouse fixture patches it


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(waits, "DEFAULT_WAIT", wait_none())


def status(node_id: int = 1, state: str = "Follower", leader: int | None = 1,
           voters: tuple[int, ...] = (1, 2, 3)) -> MetaStatus:
    return parse_metactl_status(metactl_status_text(node_id, state, leader, voters))


def sequence(*items: MetaStatus | Exception) -> Callable[[], MetaStatus]:
    """A reader that returns/raises ``items`` in order, then repeats the last one."""
    iterator: Iterator[MetaStatus | Exception] = iter(items)
    last: list[MetaStatus | Exception] = [items[0]]

    def read() -> MetaStatus:
        item = next(iterator, last[0])
        last[0] = item
        if isinstance(item, Exception):
            raise item
        return item
    return read


def test_wait_for_voter_returns_once_the_node_is_a_voter() -> None:
    seen: list[tuple[int, object]] = []
    read = sequence(MetaUnreachable("h", 1, "refused"), status(voters=(1, 2, 3)), status(voters=(1, 2, 3, 4)))
    result = waits.wait_for_voter(read, 4, timeout_s=5, on_attempt=lambda n, s: seen.append((n, s)))
    assert result.voter_ids == [1, 2, 3, 4]
    assert [n for n, _ in seen] == [1, 2, 3]
    assert isinstance(seen[0][1], MetaUnreachable)


def test_wait_for_voter_needs_a_leader() -> None:
    read = sequence(status(leader=None, voters=(1, 2, 3, 4)), status(voters=(1, 2, 3, 4)))
    assert waits.wait_for_voter(read, 4, timeout_s=5).leader_id == 1


def test_deadline_raises_cluster_not_converged_with_last_seen() -> None:
    with pytest.raises(ClusterNotConverged) as info:
        waits.wait_for_voters(sequence(status(voters=(1, 2, 3))), [1, 2], timeout_s=0.05)
    error = info.value
    assert error.expected == "voters [1, 2] under a leader"
    assert "voters=[1, 2, 3]" in str(error.last_seen)
    assert 0 < error.waited_s < 1
    assert not isinstance(error, RetryError)
    assert pickle.loads(pickle.dumps(error)).last_seen == error.last_seen


def test_deadline_while_unreachable_reports_the_error() -> None:
    with pytest.raises(ClusterNotConverged, match="MetaUnreachable"):
        waits.wait_for_voter(sequence(MetaUnreachable("h", 1, "refused")), 1, timeout_s=0.05)


@pytest.mark.parametrize(
    "error",
    [HostKeyRejected("h", "changed", "SHA256:abc"), RemoteCommandError("h", "databend-metactl status", 127, "nf")],
)
def test_hard_errors_are_not_retried(error: Exception) -> None:
    calls = []

    def read() -> MetaStatus:
        calls.append(1)
        raise error
    with pytest.raises(type(error)):
        waits.wait_for_voter(read, 1, timeout_s=5)
    assert calls == [1]


def test_wait_for_leader_change_and_expected_target() -> None:
    read = sequence(status(leader=1), status(leader=None), status(leader=3), status(leader=2))
    assert waits.wait_for_leader_change(read, 1, timeout_s=5).leader_id == 3
    read = sequence(status(leader=1), status(leader=3), status(leader=2))
    assert waits.wait_for_leader_change(read, 1, timeout_s=5, expect=2).leader_id == 2


def cluster(*views: MetaStatus | None) -> ClusterStatus:
    probes = [NodeProbe(node_id=i + 1, host=f"h{i + 1}", status=v, error=None if v else "down")
              for i, v in enumerate(views)]
    return ClusterStatus(cluster="lab", probes=probes)


def test_wait_for_stable_cluster() -> None:
    flaky = cluster(status(1, "Leader", 1, (1, 2)), None)
    split = cluster(status(1, "Leader", 1, (1, 2)), status(2, "Follower", 1, (1, 2, 3)))
    good = cluster(status(1, "Leader", 1, (1, 2)), status(2, "Follower", 1, (1, 2)))
    reads = iter([flaky, split, good])
    result = waits.wait_for_stable_cluster(lambda: next(reads), [1, 2], timeout_s=5)
    assert result is good
    with pytest.raises(ClusterNotConverged, match=r"do not answer"):
        waits.wait_for_stable_cluster(lambda: flaky, [1, 2], timeout_s=0.05)


def test_default_poll_schedule_starts_short_and_grows() -> None:
    from tenacity import RetryCallState, Retrying

    schedule = ORIGINAL_WAIT
    state = RetryCallState(Retrying(), None, (), {})
    delays = []
    for number in range(1, 7):
        state.attempt_number = number
        delays.append(schedule(state))
    assert delays == [0.05, 0.1, 0.2, 0.2, 0.2, 0.2]
