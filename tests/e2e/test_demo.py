"""`make demo`'s program end to end on the session lab: server, serve, scale-up and scale-down through the REST API."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from deployments.local_server import free_port, pid_alive
from deployments.specs import PROJECT_ROOT

pytestmark = pytest.mark.lab


def demo(args: list[str], env: dict[str, str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deployments.demo", *args], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)


def test_demo_scales_up_spare1_then_removes_the_leader_and_stops_what_it_started(fresh_lab: Any,
                                                                                  tmp_path: Path) -> None:
    env = dict(os.environ, MSLAB_PREFIX=fresh_lab.prefix, MSLAB_DIR=str(fresh_lab.directory),
               METASCALE_DEMO_DIR=str(tmp_path / "demo"), METASCALE_DEMO_PORT=str(free_port()))
    env.pop("PREFECT_API_URL", None)
    try:
        result = demo(["up"], env, timeout_s=600)
        state = json.loads((tmp_path / "demo" / "state.json").read_text())
    finally:
        stopped = demo(["down", "--keep-lab"], env, timeout_s=120)

    (PROJECT_ROOT / "test-artifacts").mkdir(exist_ok=True)
    (PROJECT_ROOT / "test-artifacts" / "demo-output.txt").write_text(result.stdout + result.stderr)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    out = result.stdout
    assert re.search(r"scale-up: scale-up-lab-127\.100\.0\.14 COMPLETED after [\d.]+ s", out), out
    leader = int(re.search(r"scale-down of the current leader meta-(\d+)", out).group(1))  # type: ignore[union-attr]
    assert re.search(rf"scale-down: scale-down-lab-node-{leader} COMPLETED after [\d.]+ s", out), out
    assert "approving with POST /flow_runs/" in out
    _, voters = fresh_lab.meta_status("meta2" if leader == 1 else "meta1")
    assert voters == {1, 2, 3, 4} - {leader}
    assert out.count("/runs/flow-run/") >= 4
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped serve" in stopped.stdout and "stopped Prefect server" in stopped.stdout
    assert not pid_alive(state["serve_pid"]) and not pid_alive(state["server_pid"])
    assert fresh_lab.is_up(), "--keep-lab leaves the lab running"
