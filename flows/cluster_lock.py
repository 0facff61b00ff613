"""One change at a time per cluster, for real: the cluster lock, its holder record and the change guard.

The lock is the Prefect global concurrency limit `metascale-cluster-<name>` (limit 1), taken with a lease whose
holder is the flow run. Prefect's own `concurrency()` helper is not used for it because of three behaviours
(prefect-notes §9): a strict lease whose renewal fails injects a cancellation (a BaseException) into the flow
between two statements; an inactive limit grants a lease without taking a slot; a limit raised above 1 admits two
holders. Here instead:

* before and after taking the slot the limit must be active, limit 1, and (after) hold exactly one slot; otherwise
  the run gives the slot back and refuses (PlanRefused) saying what is wrong and how to fix it. Two runs that race
  past a raised limit both see two slots taken and both refuse: nothing changes twice.
* the holder is recorded: in the lease (`holder` = the flow run) and in the Prefect variable
  `metascale-holder-<name>` (run id and name, action, phase, current step, since), so a run that waits names who
  holds the lock, and `cluster-check` and the next run can tell an interrupted change.
* the lease is renewed by our own thread every RENEW_EVERY_S; an API outage shorter than the lease's remaining time
  (at least LOCK_LEASE_S - RENEW_EVERY_S = 55 s) changes nothing; a lease that is gone (expired, or revoked) is
  recorded and the change stops at its next step boundary (ChangeStopped, an ordinary Exception: diagnostics are
  collected).
* `ChangeGuard` defers SIGTERM/SIGINT while the cluster is being changed (serve or a worker stopping, Ctrl-C): the
  step that runs finishes, and the run stops at the next step boundary with the usual "failed at step … rerun"
  message. The holder record stays in phase `changing` until a change completes, so a run killed outright
  (SIGKILL after the runner's grace period) is still known: the next run's plan and `cluster-check` say the
  cluster may be half-changed.
"""

from __future__ import annotations

import contextvars
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from types import FrameType
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, PrivateAttr

from metascale.errors import PlanRefused
from tasks import runbook as rb

LOCK_WAIT_S = 300.0
LOCK_LEASE_S = 60.0  # a killed run frees the cluster lock after this long (the server's minimum lease is 60 s)
RENEW_EVERY_S = 5.0  # so an API outage (a server restart included) of up to ~55 s never costs the lease
POLL_S = 1.0  # between two attempts to take a busy lock, and between two renewal attempts while the API is down
PHASE_PLANNING = "planning"  # holds the lock, has changed nothing yet
PHASE_CHANGING = "changing"  # has started (or finished some of) the changes
PHASE_DONE = "done"  # the changes completed


def lock_name(cluster: str) -> str:
    """Return the global concurrency limit name of ``cluster``."""
    return f"metascale-cluster-{cluster}"


def holder_variable(cluster: str) -> str:
    """Return the name of the Prefect variable that records who holds ``cluster``'s lock."""
    return f"metascale-holder-{cluster}"


class LockHolder(BaseModel):
    """Who holds (or last held) a cluster's lock, and how far its change got. Stored as a Prefect variable."""

    model_config = ConfigDict(frozen=True)

    cluster: str
    run_id: str
    run_name: str
    action: str
    phase: str = PHASE_PLANNING
    step: str = ""
    since: str  # UTC, ISO 8601, when the lock was taken
    stopped: str = ""  # why the change stopped before it completed ("" while it runs, or when killed outright)

    def describe(self) -> str:
        """One line: `flow run NAME (id ID, scale-up, changing, step 'S', since T)`."""
        step = f", step '{self.step}'" if self.step else ""
        return (f"flow run {self.run_name} (id {self.run_id}, {self.action}, {self.phase}{step}, since "
                f"{self.since})")


def limit_refusal(name: str, limit: Any, *, after_acquire: bool = False) -> str | None:
    """Return why the limit ``limit`` (a GlobalConcurrencyLimitResponse) does not make a lock, or None.

    A lock is a limit that is active with limit 1; after taking a slot it must also show exactly one slot taken.
    """
    fix = (f"set it back with `prefect gcl update {name} --limit 1` and `prefect gcl enable {name}` "
           f"(or `python -m deployments.setup --cluster <name>`)")
    if not limit.active:
        return f"the concurrency limit {name} is inactive, so it would let two changes run at once; {fix}"
    if limit.limit != 1:
        return f"the concurrency limit {name} allows {limit.limit} runs at once (it must be 1); {fix}"
    if after_acquire and limit.active_slots != 1:
        return (f"the concurrency limit {name} shows {limit.active_slots} slots taken after this run took one: "
                f"another run may be changing the cluster")
    return None


class ChangeStopped(Exception):
    """The run stopped at a step boundary before the next step (stop signal, or the lock was lost)."""

    def __init__(self, next_step: str, reason: str) -> None:
        super().__init__(next_step, reason)
        self.next_step, self.reason = next_step, reason

    def __str__(self) -> str:
        return f"stopped at a step boundary before '{self.next_step}': {self.reason}"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status_code(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _default_client_factory() -> Any:
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


@contextmanager
def _no_client_retries() -> Iterator[None]:
    """Make this thread's Prefect client calls fail fast (the renewal loop retries on its own clock)."""
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    with temporary_settings(updates={PREFECT_CLIENT_MAX_RETRIES: 0}):
        yield


class ClusterLock:
    """The cluster's lock while held: lease renewal, the holder record, and whether the lease was lost.

    Use ``ClusterLock.acquire(...)`` (waits, checks the limit, records the holder, starts renewing) and
    ``release()``. ``client_factory`` returns a context-managed sync Prefect client (tests pass a fake).
    """

    def __init__(self, cluster: str, holder: LockHolder, lease_id: UUID | str, *,
                 client_factory: Callable[[], Any] = _default_client_factory, lease_s: float = LOCK_LEASE_S,
                 renew_every_s: float = RENEW_EVERY_S, retry_s: float = POLL_S,
                 fast_fail: Callable[[], Any] = _no_client_retries) -> None:
        self.cluster, self.name, self.lease_id = cluster, lock_name(cluster), lease_id
        self._client_factory, self._fast_fail = client_factory, fast_fail
        self.lease_s, self.renew_every_s, self.retry_s = lease_s, renew_every_s, retry_s
        self._holder = holder
        self._holder_dirty = False
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.lost_reason: str | None = None
        self.renewals = 0
        self.renewal_failures = 0
        self._last_renewed = time.monotonic()
        self._thread: threading.Thread | None = None
        self.previous: LockHolder | None = None  # the holder record found when this run took the lock

    # ------------------------------------------------------------------------------------------------ acquiring
    @classmethod
    def acquire(cls, cluster: str, *, run_id: str, run_name: str, action: str, wait_s: float = LOCK_WAIT_S,
                client_factory: Callable[[], Any] = _default_client_factory, poll_s: float = POLL_S,
                log: Callable[[str], None] = lambda line: None, **kwargs: Any) -> ClusterLock:
        """Take the lock (waiting at most ``wait_s``), check it is a real lock, record the holder, start renewing.

        Raises: PlanRefused when the limit is not a lock (inactive, limit != 1, two slots taken) or another run
        holds it for longer than ``wait_s`` (naming that run).
        """
        from prefect.client.schemas.objects import ConcurrencyLeaseHolder

        name = lock_name(cluster)
        ensure_cluster_limit(cluster, client_factory=client_factory)
        try:
            holder_ref = ConcurrencyLeaseHolder(type="flow_run", id=UUID(run_id))
        except ValueError:
            holder_ref = None  # not a flow run (tests): the variable still names the holder
        deadline = time.monotonic() + wait_s
        logged_wait = False
        with client_factory() as client:
            while True:
                reason = limit_refusal(name, client.read_global_concurrency_limit_by_name(name))
                if reason:
                    raise PlanRefused("change", reason)
                try:
                    response = client.increment_concurrency_slots_with_lease(
                        names=[name], slots=1, mode="concurrency", lease_duration=kwargs.get("lease_s", LOCK_LEASE_S),
                        holder=holder_ref)
                    break
                except Exception as exc:
                    if _status_code(exc) != 423:
                        raise
                if time.monotonic() >= deadline:
                    current = read_holder(cluster, client)
                    who = current.describe() if current else "a run that left no holder record"
                    raise PlanRefused(
                        "change", f"another run holds the lock {name} of cluster {cluster} for more than "
                        f"{wait_s:.0f} s: {who}; wait for it to finish and rerun (if that run is dead, its lease "
                        f"ends within {LOCK_LEASE_S:.0f} s)")
                if not logged_wait:
                    current = read_holder(cluster, client)
                    log(f"the lock {name} is held by {current.describe() if current else 'another run'}; "
                        f"waiting up to {wait_s:.0f} s")
                    logged_wait = True
                time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
            lease_id = response.json()["lease_id"]
            lock = cls(cluster, LockHolder(cluster=cluster, run_id=run_id, run_name=run_name, action=action,
                                           since=_now()), lease_id, client_factory=client_factory, **kwargs)
            try:
                reason = limit_refusal(name, client.read_global_concurrency_limit_by_name(name), after_acquire=True)
                if reason:
                    raise PlanRefused("change", reason)
                lock.previous = read_holder(cluster, client)
                _write_holder(client, lock._holder)
            except BaseException:
                lock._release_lease(client)
                raise
        context = contextvars.copy_context()  # this run's Prefect settings (API URL) in the renewal thread too
        lock._thread = threading.Thread(target=context.run, args=(lock._renewal_loop,), daemon=True,
                                        name=f"metascale-lock-{cluster}")
        lock._thread.start()
        return lock

    # ------------------------------------------------------------------------------------------------ while held
    @property
    def holder(self) -> LockHolder:
        with self._lock:
            return self._holder

    def update_holder(self, **changes: Any) -> None:
        """Change the holder record (phase, step, stopped); written by the renewal thread, best effort."""
        with self._lock:
            self._holder = self._holder.model_copy(update=changes)
            self._holder_dirty = True
        self._wake.set()

    def _renewal_loop(self) -> None:
        """Renew the lease every ``renew_every_s`` and write holder changes; on failure retry every ``retry_s``
        until the lease would have expired, then record it as lost."""
        with self._fast_fail(), self._client_factory() as client:
            next_renewal = time.monotonic() + self.renew_every_s
            while not self._stop.is_set():
                self._wake.wait(max(0.0, next_renewal - time.monotonic()))
                self._wake.clear()
                if self._stop.is_set():
                    return
                self._flush_holder(client)
                if time.monotonic() < next_renewal:
                    continue
                try:
                    client.renew_concurrency_lease(lease_id=self.lease_id, lease_duration=self.lease_s)
                    self._last_renewed = time.monotonic()
                    self.renewals += 1
                    next_renewal = self._last_renewed + self.renew_every_s
                except Exception as exc:
                    self.renewal_failures += 1
                    if _status_code(exc) == 410:
                        self.lost_reason = (f"the lease on the lock {self.name} is gone (expired or revoked on the "
                                            f"Prefect server); another run may take the lock")
                        return
                    if time.monotonic() - self._last_renewed >= self.lease_s:
                        self.lost_reason = (f"the lease on the lock {self.name} could not be renewed for "
                                            f"{self.lease_s:.0f} s (Prefect API: {type(exc).__name__}); another "
                                            f"run may take the lock")
                        return
                    next_renewal = time.monotonic() + self.retry_s

    def _flush_holder(self, client: Any) -> None:
        with self._lock:
            if not self._holder_dirty:
                return
            holder, self._holder_dirty = self._holder, False
        try:
            _write_holder(client, holder)
        except Exception:
            with self._lock:
                self._holder_dirty = True  # the API is down: write it on a later wake-up

    # ------------------------------------------------------------------------------------------------ releasing
    def release(self) -> None:
        """Stop renewing, settle the holder record and give the slot back. Idempotent; never raises.

        The holder record is removed when nothing was changed (phase planning) or the change completed (phase done);
        else it stays (phase changing) so the next run and cluster-check know the cluster may be half-changed.
        """
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            with self._client_factory() as client:
                holder = self.holder
                try:
                    if holder.phase != PHASE_CHANGING:
                        current = read_holder(self.cluster, client)
                        if current is not None and current.run_id == holder.run_id:
                            client.delete_variable_by_name(holder_variable(self.cluster))
                    else:
                        _write_holder(client, holder)
                finally:
                    self._release_lease(client)
        except Exception as exc:
            _warn(f"could not release the lock {self.name} cleanly ({type(exc).__name__}: {exc}); its lease ends "
                  f"within {self.lease_s:.0f} s")

    def _release_lease(self, client: Any) -> None:
        client.release_concurrency_slots_with_lease(lease_id=self.lease_id)


def _warn(line: str) -> None:
    try:
        from prefect import get_run_logger

        get_run_logger().warning("%s", line)
    except Exception:
        import logging

        logging.getLogger(__name__).warning("%s", line)


def ensure_cluster_limit(cluster: str, *, reset: bool = False,
                         client_factory: Callable[[], Any] = _default_client_factory) -> str:
    """Create the cluster's global concurrency limit (limit 1) if it is missing. Idempotent; safe in a race.
    Returns one sentence saying what it found or did. The one copy: the flows and `deployments.setup` call it.

    Without ``reset`` (a flow taking the lock) an existing limit is never changed: an inactive one or one above 1 is
    refused when the lock is taken. With ``reset`` (`deployments.setup`, the operator's repair) it is set back to
    limit 1 and active.
    """
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    name = lock_name(cluster)
    with client_factory() as client:
        try:
            existing = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            existing = None
        if existing is None:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
                return f"concurrency limit {name} created (limit 1)"
            except ObjectAlreadyExists:
                return f"concurrency limit {name} already exists"
        if reset and (existing.limit != 1 or not existing.active):
            client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=1, active=True))
            return (f"concurrency limit {name} reset to limit 1 and active (was {existing.limit}, "
                    f"{'active' if existing.active else 'inactive'})")
        return f"concurrency limit {name} already exists (limit {existing.limit})"


def read_holder(cluster: str, client: Any | None = None) -> LockHolder | None:
    """Return the holder record of ``cluster``'s lock, or None (none, or unreadable)."""
    if client is None:
        with _default_client_factory() as own:
            return read_holder(cluster, own)
    variable = client.read_variable_by_name(holder_variable(cluster))
    if variable is None:
        return None
    try:
        return LockHolder.model_validate(variable.value)
    except Exception:
        return None


def _write_holder(client: Any, holder: LockHolder) -> None:
    from prefect.client.schemas.actions import VariableCreate, VariableUpdate

    name = holder_variable(holder.cluster)
    value = holder.model_dump()
    if client.read_variable_by_name(name) is None:
        client.create_variable(VariableCreate(name=name, value=value, tags=["metascale"]))
    else:
        client.update_variable(VariableUpdate(name=name, value=value))


def lock_is_held(cluster: str, client: Any | None = None) -> bool:
    """True when some run holds a slot of ``cluster``'s lock right now."""
    from prefect.exceptions import ObjectNotFound

    if client is None:
        with _default_client_factory() as own:
            return lock_is_held(cluster, own)
    try:
        return client.read_global_concurrency_limit_by_name(lock_name(cluster)).active_slots > 0
    except ObjectNotFound:
        return False


def interrupted_change_reason(holder: LockHolder | None, *, own_run_id: str = "",
                              lock_held: bool = False) -> str | None:
    """Return the sentence that says the cluster may be half-changed, or None.

    A holder record in phase `changing` belongs to a change that did not complete. It is "interrupted" when that
    run no longer holds the lock (``lock_held`` False, or the caller holds it now: ``own_run_id`` differs).
    """
    if holder is None or holder.phase != PHASE_CHANGING or holder.run_id == own_run_id:
        return None
    if lock_held and not own_run_id:
        return None  # that run still holds the lock: a change is in progress, not interrupted
    how = f"stopped: {holder.stopped}" if holder.stopped else "ended without finishing (killed or crashed)"
    step = f" at step '{holder.step}'" if holder.step else ""
    return (f"the cluster may be half-changed: the last change, {holder.action} by flow run {holder.run_name} "
            f"(id {holder.run_id}, started {holder.since}), {how}{step}. Rerun that change with the same "
            f"parameters (every step checks the current state first); a completed change clears this note")


# ---------------------------------------------------------------------------------------------------- the guard
class ChangeGuard:
    """While the cluster is being changed: defer SIGTERM/SIGINT to the next step boundary, stop there when the lock
    was lost, and keep the holder record's phase and step current."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, lock: ClusterLock | None, log: Callable[[str], None] = lambda line: None) -> None:
        self.lock, self.log = lock, log
        self.stop_reason: str | None = None
        self._previous: dict[int, Any] = {}

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.stop_reason is None:
            self.stop_reason = (f"{name} received while changing the cluster; the step that was running finished "
                                f"and the run stopped here")
        self.log(f"{name} received: finishing the current step, then stopping at the next step boundary")

    def __enter__(self) -> ChangeGuard:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._on_signal)
        if self.lock is not None:
            self.lock.update_holder(phase=PHASE_CHANGING, step="")
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        if self.lock is None:
            return
        if exc is None:
            self.lock.update_holder(phase=PHASE_DONE)
        else:
            self.lock.update_holder(stopped=str(exc)[:500])

    def checkpoint(self, next_step: str) -> None:
        """Called at each step boundary, before ``next_step`` starts. Raises ChangeStopped to stop here."""
        reason = self.stop_reason or (self.lock.lost_reason if self.lock is not None else None)
        if reason:
            raise ChangeStopped(next_step, reason)
        if self.lock is not None:
            self.lock.update_holder(step=next_step)


class GuardedProgress(rb.Progress):
    """rb.Progress whose every new step passes the guard's checkpoint first (a step boundary)."""

    _guard: ChangeGuard | None = PrivateAttr(default=None)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "step" and self._guard is not None and value != self.step:
            self._guard.checkpoint(str(value))
        super().__setattr__(name, value)

    @classmethod
    def under(cls, guard: ChangeGuard) -> GuardedProgress:
        """Return a new Progress whose step changes are checkpoints of ``guard``."""
        progress = cls()
        progress._guard = guard
        return progress
