"""Deployments that stay as the operator set them: redeploy (`prefect deploy --all`, from another directory) and
restart serve (what `python -m deployments.serve` applies), and the operator's schedule switch, own schedule, its
parameters and the per-environment variables are all still there; every deployment carries the git commit.
(That a run of such a deployment works from anywhere and records the commit: tests/e2e/test_deployments_e2e.py.)
"""

from __future__ import annotations

import os
import subprocess
import uuid
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import VariableCreate
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.exceptions import ObjectNotFound

from deployments.local_server import prefect_executable
from deployments.setup import run_setup
from deployments.specs import (
    DEPLOYMENT_NAMES,
    ENVIRONMENT_VARIABLES,
    PREFECT_YAML,
    code_version,
    load_specs,
    to_runner_deployments,
)

pytestmark = pytest.mark.prefect
WINDOW = "Sat,Sun 02:00-04:00 Europe/Berlin"


def _deploy(cwd: Path) -> None:
    """`prefect --no-prompt deploy --all --prefect-file <repo>/prefect.yaml`, run from ``cwd``."""
    env = dict(os.environ, PWD=str(cwd))
    result = subprocess.run([prefect_executable(), "--no-prompt", "deploy", "--all", "--prefect-file",
                             str(PREFECT_YAML)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"deploy from {cwd} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"


def _deployments(client: Any) -> dict[str, Any]:
    return {name: client.read_deployment_by_name(f"{name}/{name}") for name in DEPLOYMENT_NAMES}


def _forget(client: Any) -> None:
    """Remove the deployments (their runs and automations) and the per-environment variables."""
    for name in DEPLOYMENT_NAMES:
        try:
            deployment = client.read_deployment_by_name(f"{name}/{name}")
        except ObjectNotFound:
            continue
        for run in client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(
                any_=[deployment.id]))):
            client.delete_flow_run(run.id)
        client.delete_resource_owned_automations(f"prefect.deployment.{deployment.id}")
        client.delete_deployment(deployment.id)
    for variable in ENVIRONMENT_VARIABLES:
        with suppress(ObjectNotFound):
            client.delete_variable_by_name(variable)


def _assert_kept(deployments: dict[str, Any], when: str, block: str, own: dict[str, Any]) -> None:
    """The operator's settings (see the test) are all there ``when``."""
    (hourly,) = deployments["cluster-check"].schedules
    assert (hourly.slug, hourly.active) == ("hourly", False), f"{when}: the operator's switch stays off"
    (own_now,) = deployments["scale-down"].schedules
    assert own_now.active is True and own_now.schedule.cron == own["schedule"]["cron"], f"{when}: own schedule"
    assert own_now.parameters == own["parameters"], f"{when}: the schedule's parameters stay"
    for name in ("scale-up", "scale-down", "replace-node"):
        assert deployments[name].parameters["maintenance_window"] == WINDOW, f"{when}: {name} reads the variable"
    assert all(d.parameters["cluster_block"] == block for d in deployments.values()), when


def _serve_starts() -> None:
    """What `python -m deployments.serve` does with the deployments when it starts (`prefect.serve` applies them)."""
    for deployment in to_runner_deployments(load_specs()):
        deployment.apply()


def test_redeploy_and_serve_restart_keep_the_operators_settings(tmp_path: Path) -> None:
    block = f"redeploy-{uuid.uuid4().hex[:6]}"
    elsewhere = tmp_path / "elsewhere"   # neither the project nor the deploying shell's directory
    elsewhere.mkdir()
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(f'name = "{block}"\n[ssh]\nprivate_key_file = "{tmp_path}/id"\n'
                         f'known_hosts_file = "{tmp_path}/known_hosts"\n[[meta]]\nid = 1\nhost = "127.100.0.11"\n')
    with get_client(sync_client=True) as client:
        _forget(client)
    try:
        setup = run_setup([], block=block, inventory=inventory)
        assert any(line.startswith("variable metascale-cluster-block set to") for line in setup.lines), setup.lines
        _serve_starts()

        # ---- what the operator does in the UI (here through the same API the UI uses)
        own = {"schedule": {"cron": "0 3 * * 6", "timezone": "Europe/Berlin"}, "active": True,
               "parameters": {"node_ids": [3], "require_approval": True}}
        with get_client(sync_client=True) as client:
            served = _deployments(client)
            (hourly,) = served["cluster-check"].schedules
            assert hourly.active, "cluster-check's hourly check is on when first created"
            client.request("PATCH", "/deployments/{id}/schedules/{schedule_id}",
                           path_params={"id": served["cluster-check"].id, "schedule_id": hourly.id},
                           json={"active": False})
            client.request("POST", "/deployments/{id}/schedules", path_params={"id": served["scale-down"].id},
                           json=[own])
            client.create_variable(VariableCreate(name="metascale-maintenance-window", value=WINDOW))

        # ---- redeployed with `prefect deploy --all`, from another directory
        _deploy(elsewhere)
        version = code_version()["version"]
        assert len(version.removesuffix("-dirty")) == 40, version
        with get_client(sync_client=True) as client:
            deployed = _deployments(client)
        _assert_kept(deployed, "after `prefect deploy --all`", block, own)
        check = deployed["cluster-check"]
        assert check.pull_steps == [{"deployments.specs.set_project_directory": {}}]
        assert check.entrypoint == "flows.cluster_check.cluster_check"
        assert all(d.version == version for d in deployed.values()), "the git commit deployed"

        # ---- serve started again
        _serve_starts()
        with get_client(sync_client=True) as client:
            restarted = _deployments(client)
        _assert_kept(restarted, "after serve started again", block, own)
        assert all(d.version == version for d in restarted.values())
    finally:
        with get_client(sync_client=True) as client:
            _forget(client)
