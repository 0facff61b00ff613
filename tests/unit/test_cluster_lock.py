"""The cluster lock without a server: a fake Prefect API (limits, leases, variables) that can be switched off.

What is proved here (issue #10, "One change at a time, for real"): an inactive limit or one above 1 is refused
instead of admitting a second change; the lock names its holder; an API outage shorter than the lease changes
nothing; a lost lease and SIGTERM/SIGINT stop the change at the next step boundary, never inside a step; an
unfinished change is recorded for the next run and cluster-check; the CLI refuses a real change without the team's
Prefect API.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from flows.cluster_lock import (
    PHASE_CHANGING,
    ChangeGuard,
    ChangeStopped,
    ClusterLock,
    GuardedProgress,
    LockHolder,
    holder_variable,
    interrupted_change_reason,
    lock_name,
    read_holder,
)
from metascale.errors import PlanRefused


class HttpError(Exception):
    """Stands in for httpx.HTTPStatusError: the lock only looks at `.response.status_code`."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.response = SimpleNamespace(status_code=status)


class FakeApi:
    """The parts of the Prefect server the lock uses; `down` makes every call fail like a refused connection."""

    def __init__(self, limit: int = 1, active: bool = True) -> None:
        self.limit, self.active = limit, active
        self.slots: dict[str, Any] = {}      # lease id -> holder, for leases that took a slot
        self.slotless: set[str] = set()      # leases granted by an inactive limit (no slot, as the server does)
        self.variables: dict[str, Any] = {}
        self.down = False
        self.renewals = 0

    def client(self) -> FakeClient:
        return FakeClient(self)


class FakeClient:
    def __init__(self, api: FakeApi) -> None:
        self.api = api

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def _up(self) -> None:
        if self.api.down:
            raise ConnectionRefusedError("the Prefect API is down")

    def read_global_concurrency_limit_by_name(self, name: str) -> Any:
        self._up()
        return SimpleNamespace(name=name, active=self.api.active, limit=self.api.limit,
                               active_slots=len(self.api.slots))

    def increment_concurrency_slots_with_lease(self, names: list[str], slots: int, mode: str, lease_duration: float,
                                               holder: Any = None) -> Any:
        self._up()
        lease = str(uuid.uuid4())
        if not self.api.active:
            self.api.slotless.add(lease)
        elif len(self.api.slots) + slots > self.api.limit:
            raise HttpError(423)
        else:
            self.api.slots[lease] = holder
        return SimpleNamespace(json=lambda: {"lease_id": lease, "limits": [{"name": names[0]}]})

    def renew_concurrency_lease(self, lease_id: str, lease_duration: float) -> None:
        self._up()
        if lease_id not in self.api.slots and lease_id not in self.api.slotless:
            raise HttpError(410)
        self.api.renewals += 1

    def release_concurrency_slots_with_lease(self, lease_id: str) -> None:
        self._up()
        self.api.slots.pop(lease_id, None)
        self.api.slotless.discard(lease_id)

    def read_variable_by_name(self, name: str) -> Any:
        self._up()
        return SimpleNamespace(value=self.api.variables[name]) if name in self.api.variables else None

    def create_variable(self, variable: Any) -> None:
        self._up()
        self.api.variables[variable.name] = variable.value

    def update_variable(self, variable: Any) -> None:
        self._up()
        self.api.variables[variable.name] = variable.value

    def delete_variable_by_name(self, name: str) -> None:
        self._up()
        self.api.variables.pop(name, None)


def take(api: FakeApi, run: str = "run-a", **kwargs: Any) -> ClusterLock:
    return ClusterLock.acquire("lab", run_id=str(uuid.uuid5(uuid.NAMESPACE_DNS, run)), run_name=run,
                               action="scale-up", client_factory=api.client, poll_s=0.01,
                               fast_fail=contextlib.nullcontext, **kwargs)


def poll(done: Callable[[], bool], what: str, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


# ------------------------------------------------------------------------------------ a limit that is not a lock
@pytest.mark.parametrize(("limit", "active", "clue"), [(1, False, "is inactive"), (2, True, "allows 2 runs")])
def test_a_limit_that_would_admit_two_changes_is_refused(limit: int, active: bool, clue: str) -> None:
    api = FakeApi(limit=limit, active=active)
    with pytest.raises(PlanRefused) as refused:
        take(api)
    assert clue in str(refused.value) and lock_name("lab") in str(refused.value), refused.value
    assert "prefect gcl update metascale-cluster-lab --limit 1" in str(refused.value)
    assert not api.slots and not api.slotless and not api.variables, "a refused run holds nothing"


def test_a_limit_raised_while_a_run_waits_makes_the_second_run_refuse_after_taking_a_slot() -> None:
    api = FakeApi()
    first = take(api, "run-a")
    api.limit = 2                                       # someone raises the limit in the UI during the change
    api_check = api.client().read_global_concurrency_limit_by_name
    calls = {"n": 0}

    def read_limit(name: str) -> Any:                   # the second run checked before the raise, takes a slot after
        calls["n"] += 1
        answer = api_check(name)
        return SimpleNamespace(**{**vars(answer), "limit": 1}) if calls["n"] == 1 else answer

    original = FakeClient.read_global_concurrency_limit_by_name
    FakeClient.read_global_concurrency_limit_by_name = (  # type: ignore[method-assign]
        lambda self, name: read_limit(name))
    try:
        with pytest.raises(PlanRefused) as refused:
            take(api, "run-b")
    finally:
        FakeClient.read_global_concurrency_limit_by_name = original  # type: ignore[method-assign]
    assert "allows 2 runs" in str(refused.value) or "2 slots taken" in str(refused.value), refused.value
    assert len(api.slots) == 1, "the second run gave its slot back"
    first.release()


# ------------------------------------------------------------------------------------ the holder
def test_a_waiting_run_names_the_flow_run_that_holds_the_lock() -> None:
    api = FakeApi()
    first = take(api, "scale-up-lab-127.100.0.14")
    seen: list[str] = []
    with pytest.raises(PlanRefused) as refused:
        take(api, "scale-down-lab-node-3", wait_s=0.2, log=seen.append)
    message = str(refused.value)
    assert "flow run scale-up-lab-127.100.0.14" in message and first.holder.run_id in message, message
    assert seen and "scale-up-lab-127.100.0.14" in seen[0], seen
    first.release()
    assert not api.slots and holder_variable("lab") not in api.variables, "released: no slot, no holder record"


def test_the_lease_names_the_flow_run_as_holder() -> None:
    api = FakeApi()
    lock = take(api)
    (holder,) = api.slots.values()
    assert holder.type == "flow_run" and str(holder.id) == lock.holder.run_id
    lock.release()


# ------------------------------------------------------------------------------------ API outage, lost lease
def test_an_api_outage_shorter_than_the_lease_keeps_the_lock() -> None:
    api = FakeApi()
    lock = take(api, lease_s=2.0, renew_every_s=0.05, retry_s=0.02)
    poll(lambda: api.renewals >= 1, "a first renewal")
    api.down = True
    poll(lambda: lock.renewal_failures >= 5, "renewals failing while the API is down")
    api.down = False
    before = api.renewals
    poll(lambda: api.renewals > before, "a renewal once the API is back")
    assert lock.lost_reason is None
    guard = ChangeGuard(lock)
    progress = GuardedProgress.under(guard)
    progress.step = "update join on every meta node"     # a step boundary: goes on
    assert progress.step == "update join on every meta node"
    lock.release()


def test_a_lost_lease_stops_the_change_at_the_next_step_boundary() -> None:
    api = FakeApi()
    lock = take(api, lease_s=5.0, renew_every_s=0.02, retry_s=0.02)
    guard = ChangeGuard(lock)
    progress = GuardedProgress.under(guard)
    progress.step = "start meta-4"
    api.slots.clear()                                   # the server forgot the lease (expired, revoked)
    poll(lambda: lock.lost_reason is not None, "the lost lease to be noticed")
    with pytest.raises(ChangeStopped) as stopped:
        progress.step = "verify meta-4 joined"
    assert "before 'verify meta-4 joined'" in str(stopped.value) and "lease" in str(stopped.value), stopped.value
    assert progress.step == "start meta-4", "the step that ran is the one reported"
    assert isinstance(stopped.value, Exception), "an ordinary exception: the flow's `except Exception` sees it"
    lock.release()


def test_a_lease_unrenewable_for_its_whole_duration_counts_as_lost() -> None:
    api = FakeApi()
    lock = take(api, lease_s=0.3, renew_every_s=0.02, retry_s=0.02)
    api.down = True
    poll(lambda: lock.lost_reason is not None, "the lease to be given up")
    assert "could not be renewed for" in (lock.lost_reason or "")
    api.down = False
    lock.release()


# ------------------------------------------------------------------------------------ SIGTERM / SIGINT
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_during_a_change_lets_the_step_finish_and_stops_at_the_boundary(sig: signal.Signals) -> None:
    api = FakeApi()
    lock = take(api)
    previous = signal.getsignal(sig)
    with pytest.raises(ChangeStopped) as stopped:
        with ChangeGuard(lock) as guard:
            progress = GuardedProgress.under(guard)
            progress.step = "write the config of meta-4"
            os.kill(os.getpid(), sig)                    # serve / the worker stops, or Ctrl-C
            finished_step = True                         # the step body goes on: the signal was deferred
            progress.step = "start meta-4"
    assert finished_step
    assert sig.name in str(stopped.value) and "before 'start meta-4'" in str(stopped.value), stopped.value
    assert signal.getsignal(sig) == previous, "the previous handler is back after the change"
    lock.release()
    recorded = read_holder("lab", api.client())
    assert recorded is not None and recorded.phase == PHASE_CHANGING and recorded.step == "write the config of meta-4"
    assert sig.name in recorded.stopped


# ------------------------------------------------------------------------------------ unfinished changes
def test_the_holder_record_outlives_only_an_unfinished_change() -> None:
    api = FakeApi()
    planning_only = take(api, "dry")
    planning_only.release()
    assert holder_variable("lab") not in api.variables, "a run that changed nothing leaves no record"

    done = take(api, "done")
    with ChangeGuard(done) as guard:
        GuardedProgress.under(guard).step = "start meta-4"
    done.release()
    assert holder_variable("lab") not in api.variables, "a completed change leaves no record"

    killed = take(api, "killed")
    with ChangeGuard(killed) as guard:
        GuardedProgress.under(guard).step = "update join on every meta node"
    killed._stop.set()                                  # killed outright: no ChangeGuard exit, no release
    killed.update_holder(phase=PHASE_CHANGING)
    killed._flush_holder(api.client())
    api.slots.clear()                                   # its lease ran out
    nxt = take(api, "next")
    reason = interrupted_change_reason(nxt.previous, own_run_id=nxt.holder.run_id)
    assert reason is not None and "half-changed" in reason and "flow run killed" in reason, reason
    assert "update join on every meta node" in reason and "Rerun that change" in reason
    nxt.release()


def test_interrupted_change_reason_tells_a_running_change_from_a_dead_one() -> None:
    holder = LockHolder(cluster="lab", run_id="r1", run_name="scale-up-lab-x", action="scale-up",
                        phase=PHASE_CHANGING, step="start meta-4", since="2026-11-26T10:00:00Z")
    assert interrupted_change_reason(holder, lock_held=True) is None          # still running: in progress
    assert "half-changed" in (interrupted_change_reason(holder, lock_held=False) or "")
    assert interrupted_change_reason(holder, own_run_id="r1") is None          # our own record
    assert interrupted_change_reason(holder.model_copy(update={"phase": "planning"}), lock_held=False) is None
    assert interrupted_change_reason(None) is None


def test_the_guard_does_not_touch_signals_outside_the_main_thread() -> None:
    previous = signal.getsignal(signal.SIGTERM)
    seen: list[Any] = []

    def run() -> None:
        with ChangeGuard(None) as guard:
            seen.append(signal.getsignal(signal.SIGTERM))
            GuardedProgress.under(guard).step = "x"

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    assert seen == [previous]


# ------------------------------------------------------------------------------------ the CLI
def test_the_cli_refuses_a_real_change_without_the_teams_prefect_api(capsys: pytest.CaptureFixture[str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from deployments.cli import ExitCode, main

    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.delenv("PREFECT_API_URL", raising=False)  # a full run has the session server's URL set …
    with temporary_settings(updates={PREFECT_API_URL: None}):  # … in the environment and in Prefect's settings
        code = main(["scale-down", "--inventory", "/nonexistent/inventory.toml", "--id", "3"])
    err = capsys.readouterr().err
    assert code == ExitCode.REFUSED, err
    assert "PREFECT_API_URL" in err and "--dry-run" in err and "lock" in err, err


def test_status_of_a_block_without_a_prefect_api_says_where_blocks_live(capsys: pytest.CaptureFixture[str],
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from deployments.cli import ExitCode, main

    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(updates={PREFECT_API_URL: None}):
        code = main(["status", "--cluster-block", "prod-eu"])
    err = capsys.readouterr().err
    assert code == ExitCode.REFUSED and len(err.strip().splitlines()) == 1, err
    assert "PREFECT_API_URL" in err and "--inventory" in err and "dry run" not in err, err


def test_the_command_ends_its_runs_without_waiting_for_the_heartbeat_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Prefect's sync engine joins the flow run's heartbeat thread, which sleeps in 1 s steps: up to 1 s after every
    run of the `metascale` command. The command stops it without joining; heartbeats themselves stay on."""
    import prefect.flow_engine as engine

    from deployments.cli import stop_heartbeats_without_waiting

    monkeypatch.setattr(engine, "_send_heartbeats", engine._send_heartbeats)  # restored after the test
    assert stop_heartbeats_without_waiting() and stop_heartbeats_without_waiting()  # idempotent
    patched = engine._send_heartbeats
    assert patched.keywords == {"join_on_exit": False}, patched

    stopped: list[bool] = []
    fake_engine = SimpleNamespace(heartbeat_seconds=30, flow_run=None, logger=SimpleNamespace(debug=print),
                                  _build_heartbeat_event_template=lambda: ({}, []),
                                  _emit_flow_run_heartbeat=lambda resource, related: stopped.append(False))
    started = time.monotonic()
    with patched(fake_engine):
        deadline = time.monotonic() + 5
        while not stopped and time.monotonic() < deadline:  # the first heartbeat is sent at once
            time.sleep(0.01)
    assert stopped and time.monotonic() - started < 0.9  # left without waiting for the thread's 1 s sleep
