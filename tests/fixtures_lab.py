"""Lab fixtures (owned by the lab work): one lab per test session, reset between tests that change it.

`lab`: session-scoped; brings up 3 meta, 2 spare, 2 query hosts with prefix MSLAB_PREFIX (default "mst") in
MSLAB_DIR (default <repo>/.lab-test), tears down a stale lab of that prefix first, and always brings it down at
session end (also on failure, Ctrl-C or SIGTERM). `fresh_lab`: `lab` after `lab.reset()` (baseline cluster).
"""
from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from sandbox.lab import Lab

REPO = Path(__file__).resolve().parent.parent
TEST_PREFIX = "mst"
TEST_SHAPE = {"meta": 3, "spare": 2, "query": 2}


def lab_from_env() -> Lab:
    """The test suite's lab: MSLAB_PREFIX / MSLAB_DIR, defaulting to its own prefix and directory."""
    return Lab(os.environ.get("MSLAB_DIR", str(REPO / ".lab-test")), os.environ.get("MSLAB_PREFIX", TEST_PREFIX))


def _sigterm_as_interrupt(signum: int, frame: FrameType | None) -> None:
    """Turn SIGTERM into KeyboardInterrupt so fixture teardown (lab.down) still runs."""
    raise KeyboardInterrupt(f"signal {signum}")


def _live_owner(the_lab: Lab) -> int | None:
    """PID of another live test session that owns this lab (recorded in <dir>/session.pid), else None."""
    try:
        pid = int((the_lab.directory / "session.pid").read_text())
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (FileNotFoundError, ValueError):
        return None
    return pid if pid != os.getpid() and "pytest" in argv else None


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """A running lab (3 meta in a cluster, 2 spare, 2 query) for the whole session; down at the end."""
    the_lab = lab_from_env()
    owner = _live_owner(the_lab)
    if owner is not None:
        pytest.exit(f"lab {the_lab.prefix} ({the_lab.directory}) is in use by test session pid {owner}; "
                    f"set MSLAB_PREFIX and MSLAB_DIR to run another session beside it", returncode=3)
    previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    marker = the_lab.directory / "session.pid"
    try:
        if the_lab.is_up():   # left over from an interrupted session
            the_lab.down()
        the_lab.directory.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{os.getpid()}\n")
        the_lab.up(**TEST_SHAPE)
        yield the_lab
    finally:
        the_lab.down()
        marker.unlink(missing_ok=True)
        signal.signal(signal.SIGTERM, previous)


@pytest.fixture
def fresh_lab(lab: Lab) -> Iterator[Lab]:
    """The session lab brought back to the baseline cluster (`lab.reset()`) before the test."""
    lab.reset()
    yield lab
