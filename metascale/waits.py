"""'Wait until the cluster shows X' helpers (tenacity), each with an explicit deadline.

Polling starts fast and slows down (0.05 s doubling up to 0.2 s, ``DEFAULT_WAIT``) so a change is noticed
within a few hundred milliseconds without hammering the nodes. Only "not there yet" is retried: a reader result
that does not match, or ``MetaUnreachable``. Hard errors (HostKeyRejected, auth failures, other remote command
errors, parse errors) propagate at once. At the deadline a ``ClusterNotConverged(expected, last_seen, waited_s)``
is raised; tenacity's ``RetryError`` never escapes. ``on_attempt(n, seen)`` is called after every attempt with the
observation (or the MetaUnreachable error) so the Prefect layer can log progress.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    retry_if_result,
    stop_before_delay,
    wait_exponential,
)
from tenacity.wait import wait_base

from metascale.errors import ClusterNotConverged, MetaUnreachable
from metascale.status import ClusterStatus, MetaStatus

T = TypeVar("T")
OnAttempt = Callable[[int, Any], None]

DEFAULT_WAIT: wait_base = wait_exponential(multiplier=0.05, min=0.05, max=0.2)
"""Poll schedule: 0.05, 0.1, 0.2, 0.2 ... seconds (a read itself takes ~0.1 s, so the cluster reaching the goal is
    noticed within ~0.3 s). Tests replace it with ``tenacity.wait_none()``."""


def describe_status(status: MetaStatus) -> str:
    """Short text of one node's view, used as ``last_seen``."""
    return (f"meta-{status.node_id} says state={status.state} leader={status.leader_id} "
            f"voters={status.voter_ids} learners={status.non_voter_ids} term={status.term}")


def describe_cluster(cluster: ClusterStatus) -> str:
    """Short text of a cluster snapshot, used as ``last_seen``."""
    return cluster.summary()


def wait_until(
    read: Callable[[], T],
    done: Callable[[T], bool],
    *,
    expected: str,
    timeout_s: float,
    describe: Callable[[T], str] = str,
    on_attempt: OnAttempt | None = None,
    wait: wait_base | None = None,
) -> T:
    """Call ``read`` until ``done(result)`` or ``timeout_s`` passes; return the first result that is done.

    Retries on a not-done result and on MetaUnreachable only. Raises: ClusterNotConverged at the deadline (with
    ``expected`` and the last observation), or any other error ``read`` raised, unchanged.
    """
    started = time.monotonic()
    attempts = 0

    def attempt() -> T:
        nonlocal attempts
        attempts += 1
        try:
            seen = read()
        except MetaUnreachable as exc:
            if on_attempt:
                on_attempt(attempts, exc)
            raise
        if on_attempt:
            on_attempt(attempts, seen)
        return seen

    retrying = Retrying(
        retry=retry_if_exception_type(MetaUnreachable) | retry_if_result(lambda seen: not done(seen)),
        stop=stop_before_delay(timeout_s),
        wait=wait if wait is not None else DEFAULT_WAIT,
    )
    try:
        return retrying(attempt)
    except RetryError as exc:
        last = exc.last_attempt
        if last.failed:
            error = last.exception()
            last_seen = f"{type(error).__name__}: {error}"
        else:
            last_seen = describe(last.result())
        raise ClusterNotConverged(expected, f"{last_seen} (after {attempts} attempts)",
                                  round(time.monotonic() - started, 3)) from None


def wait_for_voter(read_status: Callable[[], MetaStatus], node_id: int, timeout_s: float,
                   on_attempt: OnAttempt | None = None, wait: wait_base | None = None) -> MetaStatus:
    """Runbook scale-up 4: wait until a node's status lists ``node_id`` as a voter under a known leader."""
    return wait_until(
        read_status, lambda s: s.leader_id is not None and node_id in s.voter_ids,
        expected=f"meta-{node_id} is a voter under a leader", timeout_s=timeout_s, describe=describe_status,
        on_attempt=on_attempt, wait=wait,
    )


def caught_up_reason(leader: MetaStatus, node: MetaStatus | None, node_id: int, target_index: int) -> str | None:
    """Why voter ``node_id`` has not caught up yet, or None: the leader's matched index for it (its `Replication:`
    line, reference §1.3) must reach ``target_index`` (the leader's applied index when the node joined). When the
    leader reports no replication at all, the node's own applied index is used instead. Pure."""
    matched = leader.replication.get(node_id)
    if matched is None and not leader.replication and node is not None:
        matched = node.last_applied_index
        source = "its own applied index"
    else:
        source = "the leader's replication of it"
    if matched is None:
        return f"meta-{node_id} is a voter; the leader shows no replicated log for it yet"
    if matched < target_index:
        return (f"meta-{node_id} is a voter but still catching up: {source} is at index {matched}, the leader had "
                f"applied {target_index} when it joined")
    return None


def joined_and_caught_up(node_id: int, on_voter: Callable[[int], None] | None = None
                         ) -> Callable[[ClusterStatus], str | None]:
    """Return ``not_yet(cluster) -> reason | None`` for "meta-``node_id`` joined": a voter under an agreed leader,
    answering, AND caught up. The target index is the leader's applied index the first time the node is seen as a
    voter (openraft adds voters directly, without a learner phase, so a voter can lag far behind);
    ``on_voter(target)`` is called once at that moment."""
    target: list[int] = []

    def not_yet(cluster: ClusterStatus) -> str | None:
        if cluster.leader_id is None:
            return cluster.unhealthy_reason() or "no leader"
        leader = cluster.leader_status
        if leader is None:
            return f"the leader meta-{cluster.leader_id} did not answer"
        if node_id not in leader.voter_ids:
            return f"voters are {leader.voter_ids}, meta-{node_id} not yet among them"
        if not target:
            target.append(leader.last_applied_index or leader.last_log_index or 0)
            if on_voter:
                on_voter(target[0])
        if node_id not in cluster.answering_ids:
            return f"meta-{node_id} does not answer yet"
        return caught_up_reason(leader, cluster.status_of(node_id), node_id, target[0])

    return not_yet


def wait_for_caught_up(read_cluster: Callable[[], ClusterStatus], node_id: int, timeout_s: float,
                       on_attempt: OnAttempt | None = None, wait: wait_base | None = None,
                       on_voter: Callable[[int], None] | None = None) -> ClusterStatus:
    """Runbook scale-up 4, as metascale means it: wait until meta-``node_id`` is a voter AND has caught up with the
    leader's applied index at the time of its join (``joined_and_caught_up``)."""
    not_yet = joined_and_caught_up(node_id, on_voter)
    return wait_until(
        read_cluster, lambda c: not_yet(c) is None,
        expected=f"meta-{node_id} is a voter and has caught up", timeout_s=timeout_s,
        describe=lambda c: f"{not_yet(c)}; {c.summary()}", on_attempt=on_attempt, wait=wait,
    )


def wait_for_voters(read_status: Callable[[], MetaStatus], expected_ids: Iterable[int], timeout_s: float,
                    on_attempt: OnAttempt | None = None, wait: wait_base | None = None) -> MetaStatus:
    """Runbook scale-down 5: wait until the voters are exactly ``expected_ids`` under a known leader."""
    expected = sorted(expected_ids)
    return wait_until(
        read_status, lambda s: s.leader_id is not None and s.voter_ids == expected,
        expected=f"voters {expected} under a leader", timeout_s=timeout_s, describe=describe_status,
        on_attempt=on_attempt, wait=wait,
    )


def wait_for_leader_change(read_status: Callable[[], MetaStatus], old_leader_id: int, timeout_s: float,
                           expect: int | None = None, on_attempt: OnAttempt | None = None,
                           wait: wait_base | None = None) -> MetaStatus:
    """Runbook scale-down 3: wait until the leader is known and is not ``old_leader_id`` (and is ``expect``)."""
    wanted = f"meta-{expect}" if expect is not None else f"any node but meta-{old_leader_id}"
    return wait_until(
        read_status,
        lambda s: s.leader_id is not None and s.leader_id != old_leader_id
        and (expect is None or s.leader_id == expect),
        expected=f"leader is {wanted}", timeout_s=timeout_s, describe=describe_status,
        on_attempt=on_attempt, wait=wait,
    )


def wait_for_stable_cluster(read_cluster: Callable[[], ClusterStatus], expected_voters: Iterable[int],
                            timeout_s: float, on_attempt: OnAttempt | None = None,
                            wait: wait_base | None = None) -> ClusterStatus:
    """Runbook scale-down 7: wait until a majority-agreed leader exists, the voters are exactly
    ``expected_voters``, every one of them answers and all answering nodes agree."""
    expected = sorted(expected_voters)
    return wait_until(
        read_cluster, lambda c: c.stable_reason(expected) is None,
        expected=f"stable cluster with voters {expected}", timeout_s=timeout_s,
        describe=lambda c: f"{c.stable_reason(expected)}; {c.summary()}",
        on_attempt=on_attempt, wait=wait,
    )


__all__ = [
    "DEFAULT_WAIT",
    "caught_up_reason",
    "joined_and_caught_up",
    "wait_for_caught_up",
    "describe_cluster",
    "describe_status",
    "wait_for_leader_change",
    "wait_for_stable_cluster",
    "wait_for_voter",
    "wait_for_voters",
    "wait_until",
]
