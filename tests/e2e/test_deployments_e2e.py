"""End to end, the way a team runs it: Prefect server on PostgreSQL, `prefect deploy --all` (from a directory that is
not the project), a worker on the process pool (started in yet another place), a scale-down with approval triggered
and approved through the REST API, checked on the lab and in the UI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from deployments import rest
from deployments.local_server import ManagedProcess, prefect_executable, server_env, start_process, start_prefect_server
from deployments.specs import (
    DEPLOYMENT_NAMES,
    PREFECT_YAML,
    PROJECT_ROOT,
    WORK_POOL,
    code_version,
    load_specs,
    to_runner_deployments,
)
from tests.e2e import browser
from tests.e2e.postgres import start_private_postgres

pytestmark = pytest.mark.lab
ARTIFACTS = PROJECT_ROOT / "test-artifacts"


@pytest.fixture(scope="module")
def pg_api() -> Iterator[tuple[str, dict[str, str]]]:
    """A Prefect server on a private PostgreSQL; yields (API URL, environment for Prefect subprocesses)."""
    postgres = start_private_postgres()
    home = Path(tempfile.mkdtemp(prefix="metascale-e2e-home-"))
    try:
        server, api_url = start_prefect_server(home, database_url=postgres.url)
        try:
            env = server_env(home, api_url, postgres.url)  # no PYTHONPATH: runs import the installed metascale
            yield api_url, env
        finally:
            server.stop()
    finally:
        postgres.stop()
        shutil.rmtree(home, ignore_errors=True)


def run_cli(argv: list[str], env: dict[str, str], timeout_s: float = 180, cwd: Path = PROJECT_ROOT) -> str:
    result = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout_s,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory that is neither the project nor related to it: deploys and the worker start here."""
    return tmp_path_factory.mktemp("elsewhere")


@pytest.fixture(scope="module")
def deployed(pg_api: tuple[str, dict[str, str]], lab: Any, elsewhere: Path) -> dict[str, dict[str, Any]]:
    """Setup (pool, block types, `lab` block + key Secret, limit, default-cluster variable) and `prefect deploy --all`
    run from another directory; name → deployment."""
    api_url, env = pg_api
    run_cli([sys.executable, "-m", "deployments.setup", "--cluster-block", "lab", "--inventory", str(lab.inventory),
             "--ssh-key-file", str(lab.key_file)], env)
    run_cli([prefect_executable(), "--no-prompt", "deploy", "--all", "--prefect-file", str(PREFECT_YAML)],
            dict(env, PWD=str(elsewhere)), cwd=elsewhere)
    return {name: rest.read_deployment(api_url, name, name) for name in DEPLOYMENT_NAMES}


@pytest.fixture(scope="module")
def worker(pg_api: tuple[str, dict[str, str]], deployed: dict[str, Any], elsewhere: Path) -> Iterator[ManagedProcess]:
    """`prefect worker start` on the process pool, in another directory; stopped with TERM, then escalated
    (prefect-notes §4)."""
    _, env = pg_api
    process = start_process("worker", [prefect_executable(), "worker", "start", "--pool", WORK_POOL, "--name",
                                       f"e2e-{os.getpid()}"], env=dict(env, PWD="/"),
                            log_path=ARTIFACTS / "e2e-worker.log", cwd=elsewhere)
    try:
        yield process
    finally:
        process.stop(term_wait_s=10)
        assert process.popen.poll() is not None, f"worker pid {process.pid} survived TERM, TERM, KILL"


def _schedules(deployment: dict[str, Any]) -> list[tuple[str | None, str, str, dict[str, Any]]]:
    return sorted((s["slug"], s["schedule"]["cron"], s["schedule"]["timezone"], s.get("parameters") or {})
                  for s in deployment["schedules"])


def test_deployed_with_the_hourly_check_the_default_cluster_and_the_commit(deployed: dict[str, dict[str, Any]]) -> None:
    assert _schedules(deployed["cluster-check"]) == [("hourly", "0 * * * *", "UTC", {})]
    assert deployed["cluster-check"]["schedules"][0]["active"] is True, "on when first created"
    version = code_version()["version"]
    for name, deployment in deployed.items():
        assert deployment["work_pool_name"] == WORK_POOL
        assert deployment["version"] == version, name
        assert deployment["parameters"]["cluster_block"] == "lab", "the variable `deployments.setup` set"
        if name != "cluster-check":
            assert deployment["schedules"] == [], f"{name}: no shipped schedule; the operator adds their own"


def _automation(automation: dict[str, Any]) -> tuple[Any, ...]:
    """What an automation of a deployment trigger does, comparable between the API's answer and a served trigger."""
    trigger, (action,) = automation["trigger"], automation["actions"]
    return (automation["name"], automation["enabled"], sorted(trigger["expect"]), trigger["match"],
            trigger["posture"], action["type"], action["deployment_id"], sorted(action["parameters"]))


def test_prefect_yaml_and_serve_define_the_same_deployments(pg_api: tuple[str, dict[str, str]],
                                                            deployed: dict[str, dict[str, Any]]) -> None:
    api_url, _ = pg_api
    with temporary_settings(updates={PREFECT_API_URL: api_url}):  # the variables of this server
        served = {d.name: d for d in to_runner_deployments(load_specs())}

    assert set(served) == set(deployed) == set(DEPLOYMENT_NAMES)
    for name, api in deployed.items():
        mine = served[name]
        assert api["description"] == mine.description
        assert sorted(api["tags"]) == sorted(mine.tags)
        assert api["parameters"] == mine.parameters
        assert api["version"] == mine.version
        assert api["entrypoint"] == mine.entrypoint
        assert _schedules(api) == sorted((s.slug, s.schedule.cron, s.schedule.timezone, s.parameters or {})
                                         for s in mine.schedules or ())
        assert api["parameter_openapi_schema"]["properties"].keys() == mine._parameter_openapi_schema.properties.keys()
        related = rest.request_json("GET", f"{api_url}/automations/related-to/prefect.deployment.{api['id']}")
        automations = [a for a in related  # `prefect deploy` created the triggers' automations, which run it
                       if [x.get("deployment_id") for x in a["actions"]] == [api["id"]]]
        for trigger in mine.triggers:
            trigger.set_deployment_id(api["id"])
        assert sorted(map(_automation, automations)) == sorted(
            _automation(t.as_automation().model_dump(mode="json")) for t in mine.triggers)
    (proposal,) = rest.request_json("GET", f"{api_url}/automations/related-to/prefect.deployment."
                                           f"{deployed['replace-node']['id']}")
    assert proposal["name"] == "replace-node-on-proposal"
    assert proposal["trigger"]["expect"] == ["metascale.replace-node.proposed"]


def test_scale_down_with_approval_through_the_rest_api(pg_api: tuple[str, dict[str, str]],
                                                       deployed: dict[str, dict[str, Any]], worker: ManagedProcess,
                                                       fresh_lab: Any) -> None:
    api_url, _ = pg_api
    _, voters_before = fresh_lab.meta_status("meta1")
    assert voters_before == {1, 2, 3}
    parameters = {"cluster_block": "lab", "node_ids": [3], "require_approval": True, "approval_timeout_s": 600,
                  "accept_no_fault_tolerance": True}

    triggered = time.monotonic()
    run = rest.create_flow_run(api_url, deployed["scale-down"]["id"], parameters)
    paused = rest.wait_for_state(api_url, run["id"], {"PAUSED"}, timeout_s=240)
    to_paused_s = time.monotonic() - triggered

    assert rest.state_type(paused) == "PAUSED", f"{paused['name']}: {paused['state']}\n{worker.log_tail()}"
    assert paused["parameters"]["node_ids"] == [3]
    plans = [a for a in rest.artifacts_of(api_url, run["id"]) if (a.get("key") or "").startswith("plan-")]
    assert plans, "the plan is published before the approval pause"
    plan_text = str(plans[0]["data"])
    assert plan_text.startswith("# Plan: scale-down on cluster `lab`") and "meta-3" in plan_text
    with pytest.raises(rest.PrefectApiError, match="REJECT"):   # not a boolean: the API refuses, run stays paused
        rest.resume_flow_run(api_url, run["id"], {"approve": "yes please", "reason": "typo"})
    assert rest.state_type(rest.read_flow_run(api_url, run["id"])) == "PAUSED"

    approved = time.monotonic()
    rest.resume_flow_run(api_url, run["id"], {"approve": True, "reason": "e2e test"})
    final = rest.wait_for_state(api_url, run["id"], rest.TERMINAL_STATES, timeout_s=300)
    finished = time.monotonic()

    assert rest.state_type(final) == "COMPLETED", f"{final['state']}\n{worker.log_tail(60)}"
    assert final["deployment_version"] == code_version()["version"], "the run records the git commit it ran"
    assert "set_project_directory" in worker.log_path.read_text(errors="replace"), "the pull step ran"
    state_after, voters_after = fresh_lab.meta_status("meta1")
    assert voters_after == {1, 2} and state_after in {"Leader", "Follower"}
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "e2e-timings.json").write_text(json.dumps({
        "trigger_to_paused_s": round(to_paused_s, 1), "approve_to_completed_s": round(finished - approved, 1),
        "trigger_to_completed_s": round(finished - triggered, 1)}, indent=2))

    page = browser.visible_text(browser.dump_dom(rest.ui_url(api_url, run["id"])))
    assert final["name"] in page and "Completed" in page, page[:2000]
    browser.screenshot(rest.ui_url(api_url, run["id"]), ARTIFACTS / "e2e-scale-down-run.png")
    plan_url = f"{api_url.removesuffix('/api')}/artifacts/artifact/{plans[0]['id']}"
    plan_page = browser.visible_text(browser.dump_dom(plan_url))
    assert "Plan: scale-down on cluster lab" in plan_page, plan_page[:2000]
    assert "tolerated failures" in plan_page
    browser.screenshot(plan_url, ARTIFACTS / "e2e-scale-down-plan.png")
