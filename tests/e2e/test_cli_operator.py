"""The `metascale` command as an operator meets it (issue #11), each call a new process like a cold shell: a failure
prints one line and the run's link (the traceback only with --verbose), without a Prefect API it says in one line how
to point it at one, and `status --json` / `--cluster-block` for scripts. Real Prefect server, real lab."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from deployments.cli import ExitCode
from deployments.local_server import free_port
from metascale.inventory import load_inventory
from sandbox.lab import Lab

REPO = Path(__file__).resolve().parent.parent.parent
RUN_LINK = re.compile(r"run: http://127\.0\.0\.1:\d+/runs/flow-run/[0-9a-f-]{36}")
STATUS_KEYS = {"cluster", "leader", "voters", "non_voters", "answering", "nodes", "drift", "healthy", "reason",
               "exit_code"}
NODE_KEYS = {"node_id", "host", "in_inventory", "answer", "state", "leader", "voters", "non_voters", "error"}


def _metascale(*args: str, env: dict[str, str] | None = None, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deployments.cli", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout_s, env=env, stdin=subprocess.DEVNULL)


@pytest.mark.lab
@pytest.mark.prefect
def test_status_json_through_a_cluster_block_and_its_exit_codes(fresh_lab: Lab) -> None:
    from tasks.cluster_block import register_block_types, save_cluster_block

    register_block_types()
    save_cluster_block("cli-operator", load_inventory(fresh_lab.inventory))
    healthy = _metascale("status", "--cluster-block", "cli-operator", "--json")
    assert healthy.returncode == ExitCode.OK, healthy.stderr
    report = json.loads(healthy.stdout)  # stdout is the JSON object and nothing else
    assert set(report) == STATUS_KEYS and report["exit_code"] == 0
    assert (report["cluster"], report["leader"], report["voters"], report["non_voters"]) == ("lab", 1, [1, 2, 3], [])
    assert report["healthy"] is True and report["reason"] is None and report["drift"] == []
    assert [n["node_id"] for n in report["nodes"]] == [1, 2, 3]
    assert all(set(n) == NODE_KEYS and n["answer"] and n["error"] is None for n in report["nodes"])
    assert [n["state"] for n in report["nodes"]] == ["Leader", "Follower", "Follower"]

    fresh_lab.crash("meta2")
    sick = _metascale("status", "--inventory", str(fresh_lab.inventory), "--json")
    assert sick.returncode == ExitCode.UNHEALTHY, sick.stderr
    report = json.loads(sick.stdout)
    assert report["exit_code"] == ExitCode.UNHEALTHY and report["healthy"] is False and report["reason"]
    node2 = next(n for n in report["nodes"] if n["node_id"] == 2)
    assert node2["answer"] is False and node2["state"] is None and node2["error"]


def test_without_a_prefect_api_one_line_says_how_to_point_it_at_one(tmp_path: Path) -> None:
    inventory = str(tmp_path / "inventory.toml")  # never read: the command stops before
    # a user's shell: no PREFECT_* at all (Prefect's default profile would start a temporary server), fresh home
    bare = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | {"PREFECT_HOME": str(tmp_path)}
    # (a real change gets the same line naming the team's server and its lock: tests/unit/test_cluster_lock.py)
    none = _metascale("scale-down", "--inventory", inventory, "--id", "3", "--dry-run", env=bare)
    assert none.returncode == ExitCode.REFUSED, (none.stdout[-500:], none.stderr[-2000:])
    assert none.stdout == "" and len(none.stderr.splitlines()) == 1, none.stderr
    assert none.stderr.startswith("refused: no Prefect API configured: ") and "PREFECT_API_URL" in none.stderr
    assert "`prefect server start --background`" in none.stderr, none.stderr

    gone = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
    down = _metascale("scale-down", "--inventory", inventory, "--id", "3", "--dry-run",
                      env=bare | {"PREFECT_API_URL": gone})
    assert down.returncode == ExitCode.FAILED, down.stderr[-2000:]
    assert down.stderr.splitlines() == [f"error: cannot reach the Prefect API at {gone} ([Errno 111] Connection "
                                        f"refused): start that server or fix PREFECT_API_URL; nothing was changed"]


_BREAKAGE = textwrap.dedent("""
    import sys
    from prefect import flow
    import flows.scale_down

    @flow(name="cli-breakage-probe")
    def boom(node_ids: list[int], inventory: str = "", cluster_block: str = "", force: bool = False,
             dry_run: bool = False, require_approval: bool = True, verify_deadline_s: float = 60,
             leave_timeout_s: float = 60, restart_query_nodes: bool = False,
             accept_no_fault_tolerance: bool = False) -> None:
        raise RuntimeError(f"the disk is on fire\\n(require_approval={require_approval})")

    flows.scale_down.scale_down = boom  # the command runs this instead of the real flow
    sys.argv = ["metascale", *sys.argv[1:]]
    from deployments.cli import main
    sys.exit(main())
""")


@pytest.mark.prefect
def test_a_failed_run_prints_one_line_and_its_link_the_traceback_only_with_verbose(tmp_path: Path) -> None:
    script = tmp_path / "breakage.py"
    script.write_text(_BREAKAGE)
    argv = [sys.executable, str(script), "scale-down", "--inventory", "unused.toml", "--id", "3"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    failed = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert failed.returncode == ExitCode.FAILED, failed.stderr[-2000:]
    reason, link = failed.stderr.rstrip("\n").splitlines()[-2:]
    # D4: the command passes require_approval=False (the flows default to True)
    assert reason == "Failed: the disk is on fire (require_approval=False)", failed.stderr[-2000:]
    assert RUN_LINK.fullmatch(link), link
    assert "Traceback" not in failed.stdout + failed.stderr, failed.stderr

    verbose = subprocess.run([*argv, "--verbose"], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert verbose.returncode == ExitCode.FAILED
    assert "Traceback (most recent call last)" in verbose.stderr and "RuntimeError: the disk is on fire" in \
        verbose.stderr
    assert RUN_LINK.fullmatch(verbose.stderr.rstrip("\n").splitlines()[-1])
