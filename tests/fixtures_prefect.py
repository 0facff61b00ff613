"""Prefect fixtures (owned by the deployments work): one Prefect server per test session.

* `prefect_server` (session): a real `prefect server start` on 127.0.0.1:<free port>, SQLite in its own temporary
  PREFECT_HOME (copied from a pre-migrated template cached under `.prefect/`), telemetry off. While it is up, this
  test process's Prefect client and any subprocess started with `os.environ` point at it. Stopped by PID at the end.
* `prefect_api_url`: the server's API URL (`http://127.0.0.1:<port>/api`) for plain HTTP tests.
* Tests marked `@pytest.mark.prefect` get the server automatically.

Without the fixture there is no Prefect API on purpose (ephemeral mode is off): a flow called by a test that forgot
the marker fails at once with "No Prefect API URL provided" instead of silently starting a 12–30 s temporary server.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from deployments.local_server import QUIET_PREFECT_ENV, migrated_template_db, start_prefect_server

REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPLATE_CACHE = REPO_ROOT / ".prefect" / "test-db"
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="metascale-prefect-test-"))


def pytest_configure(config: pytest.Config) -> None:
    """Before collection (so before prefect is imported by test modules): a private, quiet, serverless client."""
    for key, value in QUIET_PREFECT_ENV.items():
        os.environ.setdefault(key, value)
    os.environ["PREFECT_HOME"] = str(_SESSION_HOME / "client-home")
    os.environ["PREFECT_SERVER_ALLOW_EPHEMERAL_MODE"] = "false"
    os.environ.pop("PREFECT_API_URL", None)
    os.environ.pop("PREFECT_API_KEY", None)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Remove the session's temporary Prefect homes (the server is already stopped by then)."""
    shutil.rmtree(_SESSION_HOME, ignore_errors=True)


def _sigterm_as_interrupt(signum: int, frame: FrameType | None) -> None:
    """Turn SIGTERM into KeyboardInterrupt so the server is stopped by the fixture's teardown."""
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[str]:
    """Start one Prefect server for the session, point this process at it, yield its API URL, stop it by PID."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    template = migrated_template_db(TEMPLATE_CACHE)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:  # `timeout pytest …`: still run the teardown below
        signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    process, api_url = start_prefect_server(_SESSION_HOME / "server-home", template_db=template)
    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = api_url  # subprocesses (prefect CLI, workers) inherit it
    try:
        with temporary_settings(updates={PREFECT_API_URL: api_url}):  # this process, even if prefect is imported
            yield api_url
            _drain_prefect_background_senders()
    finally:
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous
        process.stop()


def _drain_prefect_background_senders() -> None:
    """Send the logs and events this process still queues, while the server is up (avoids errors at exit)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)


@pytest.fixture(scope="session")
def prefect_api_url(prefect_server: str) -> str:
    """The session server's API URL, e.g. `http://127.0.0.1:43121/api`."""
    return prefect_server


@pytest.fixture(autouse=True)
def _prefect_server_for_marked_tests(request: pytest.FixtureRequest) -> None:
    """Give tests marked `prefect` the session server without naming the fixture."""
    if request.node.get_closest_marker("prefect") is not None:
        request.getfixturevalue("prefect_server")
        _forget_holder_records()


def _forget_holder_records() -> None:
    """Delete every `metascale-holder-<cluster>` variable: a change a previous test left unfinished on purpose must
    not make this test's (reset) lab look half-changed. Likewise every `metascale-silent-<cluster>` record: a voter a
    previous test left silent must not be "silent since" then in this test (cluster-check would propose it)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for variable in client.read_variables():
            if variable.name.startswith(("metascale-holder-", "metascale-silent-")):
                client.delete_variable_by_name(variable.name)
