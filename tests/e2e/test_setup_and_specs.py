"""deployments/setup.py against the session server, and prefect.yaml as the one source of the deployments."""

from __future__ import annotations

import inspect
import uuid
from contextlib import suppress
from pathlib import Path

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate, VariableCreate
from prefect.exceptions import ObjectNotFound

from deployments.setup import run_setup
from deployments.specs import (
    DEPLOYMENT_NAMES,
    ENVIRONMENT_VARIABLES,
    PREFECT_YAML,
    WORK_POOL,
    code_version,
    load_specs,
    to_runner_deployments,
)
from tasks.cluster_block import MetaCluster, load_cluster

DEFAULT_CLUSTER = "metascale-cluster-block"
WINDOW = "Sat,Sun 02:00-04:00 Europe/Berlin"
KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAAsetupfake\n-----END OPENSSH PRIVATE KEY-----\n"


@pytest.mark.prefect
def test_setup_is_idempotent_and_creates_pool_limit_block_and_default_cluster(tmp_path: Path) -> None:
    cluster = f"c-{uuid.uuid4().hex[:6]}"
    inventory = tmp_path / "inventory.toml"
    key = tmp_path / "id_ed25519"
    key.write_text(KEY)
    inventory.write_text(f"""name = "{cluster}"
[ssh]
private_key_file = "{key}"
known_hosts_file = "{tmp_path}/known_hosts"
[[meta]]
id = 1
host = "127.100.0.11"
""")
    with get_client(sync_client=True) as client:
        had_default = client.read_variable_by_name(DEFAULT_CLUSTER) is not None
    try:
        first = run_setup(["other-cluster"], block=cluster, inventory=inventory, key_file=key)
        with get_client(sync_client=True) as client:  # an operator raised the limit and switched it off
            client.update_global_concurrency_limit(f"metascale-cluster-{cluster}",
                                                   GlobalConcurrencyLimitUpdate(limit=2, active=False))
        second = run_setup(["other-cluster"], block=cluster, inventory=inventory, key_file=key)

        assert f"concurrency limit metascale-cluster-{cluster} created (limit 1)" in first.lines
        assert (f"concurrency limit metascale-cluster-{cluster} reset to limit 1 and active (was 2, inactive)"
                in second.lines)
        assert "concurrency limit metascale-cluster-other-cluster already exists (limit 1)" in second.lines
        assert f"work pool {WORK_POOL} already exists" in second.lines
        if not had_default:
            assert any(line.startswith(f"variable {DEFAULT_CLUSTER} set to '{cluster}'") for line in first.lines)
        assert any(line.startswith(f"variable {DEFAULT_CLUSTER} stays") for line in second.lines), \
            "an operator's choice is never overwritten"
        with get_client(sync_client=True) as client:
            assert client.read_work_pool(WORK_POOL).type == "process"
            for name in (cluster, "other-cluster"):
                limit = client.read_global_concurrency_limit_by_name(f"metascale-cluster-{name}")
                assert (limit.limit, limit.active) == (1, True)
        loaded, key_text = load_cluster(cluster_block=cluster)
        assert loaded.name == cluster
        assert loaded.ssh.private_key_file is None and loaded.ssh.private_key_secret == f"{cluster}-ssh-key"
        assert key_text == KEY
        assert "PRIVATE KEY" not in MetaCluster.load(cluster).inventory_toml
    finally:
        if not had_default:
            with get_client(sync_client=True) as client, suppress(ObjectNotFound):
                client.delete_variable_by_name(DEFAULT_CLUSTER)


def test_prefect_yaml_declares_the_deployments_so_that_a_redeploy_keeps_the_operators_settings() -> None:
    specs = {s.name: s for s in load_specs()}
    document = yaml.safe_load(PREFECT_YAML.read_text())

    assert tuple(specs) == DEPLOYMENT_NAMES
    assert {s.work_pool for s in specs.values()} == {WORK_POOL}
    assert document["pull"] == [{"deployments.specs.set_project_directory": {}}], "no `{{ $PWD }}`"
    assert document["build"] == [{"deployments.specs.code_version": {"id": "code"}}]
    variables = {f"{{{{ prefect.variables.{name} }}}}" for name in ENVIRONMENT_VARIABLES}
    for spec in specs.values():
        assert spec.entrypoint == f"flows.{spec.name.replace('-', '_')}.{spec.name.replace('-', '_')}"
        assert spec.config["version"] == "{{ code.version }}"
        assert spec.description.strip()
        assert {"inventory", "cluster_block"} <= set(spec.parameters)
        # only per-environment values, each from a Prefect variable; every other default lives in the code
        assert set(spec.parameters.values()) <= variables, (spec.name, spec.parameters)
        flow_defaults = {k: v.default for k, v in inspect.signature(spec.load_flow().fn).parameters.items()}
        assert flow_defaults.get("require_approval", True) is True, spec.name
        if spec.name != "cluster-check":  # schedules: null: the operator's own schedules, never touched by a deploy
            assert not spec.manages_schedules and spec.schedules == (), spec.name
    (hourly,) = specs["cluster-check"].schedules
    assert (hourly.slug, hourly.schedule.cron, hourly.schedule.timezone) == ("hourly", "0 * * * *", "UTC")
    assert "active" not in hourly.model_fields_set, "a shipped `active` would undo the operator's switch on deploy"
    assert hourly.parameters == {}
    assert "read-only" in specs["cluster-check"].tags
    for name in ("scale-up", "scale-down", "replace-node"):
        assert "destructive" in specs[name].tags
        assert "maintenance_window" in specs[name].parameters
    replace = specs["replace-node"]  # never scheduled; started by hand or by its automation, paused for approval
    (trigger,) = replace.deployment_triggers()
    assert type(trigger).__name__ == "DeploymentEventTrigger" and trigger.enabled
    assert trigger.name == "replace-node-on-proposal"
    assert trigger.expect == {"metascale.replace-node.proposed"} and trigger.posture == "Reactive"
    assert trigger.match.model_dump() == {"prefect.resource.id": "metascale.cluster.*"}
    assert trigger.parameters == {
        "node_id": "{{ event.payload.node_id }}", "new_host": "{{ event.payload.new_host }}",
        "inventory": "{{ event.payload.inventory }}", "cluster_block": "{{ event.payload.cluster_block }}",
        "require_approval": True}
    assert all(spec.triggers == () for spec in specs.values() if spec.name != "replace-node")


@pytest.mark.prefect
def test_serve_builds_exactly_what_prefect_yaml_declares_with_the_variables_rendered() -> None:
    specs = load_specs()
    with get_client(sync_client=True) as client:
        had_window = client.read_variable_by_name("metascale-maintenance-window")
        if had_window is None:
            client.create_variable(VariableCreate(name="metascale-maintenance-window", value=WINDOW))
    try:
        served = to_runner_deployments(specs)
    finally:
        if had_window is None:
            with get_client(sync_client=True) as client:
                client.delete_variable_by_name("metascale-maintenance-window")

    version = code_version()["version"]
    assert version and len(version.removesuffix("-dirty")) == 40, version
    assert [d.name for d in served] == [s.name for s in specs]
    for spec, deployment in zip(specs, served):
        assert deployment.flow_name == spec.name, "flow names equal deployment names (scale-up/scale-up, …)"
        assert deployment.entrypoint == spec.entrypoint, "a module path: no directory in it"
        assert deployment.description == spec.description
        assert sorted(deployment.tags) == sorted(spec.tags)
        assert deployment.parameters.keys() == spec.parameters.keys()
        assert "{{" not in str(deployment.parameters), "variables are rendered, as `prefect deploy` does"
        if "maintenance_window" in spec.parameters and had_window is None:
            assert deployment.parameters["maintenance_window"] == WINDOW
        assert deployment.version == version
        if spec.manages_schedules:
            assert [s.model_dump(exclude_unset=True) for s in deployment.schedules] == [
                s.model_dump(exclude_unset=True) for s in spec.schedules]
        else:
            assert deployment.schedules is None and "schedules" not in deployment.model_fields_set
        assert [t.model_dump() for t in deployment.triggers] == [t.model_dump() for t in spec.deployment_triggers()]
        assert [t.name for t in deployment.triggers] == [t.get("name") for t in spec.triggers]


def test_a_bad_prefect_yaml_fails_loading_with_the_deployment_named(tmp_path: Path) -> None:
    bad = tmp_path / "prefect.yaml"
    bad.write_text(PREFECT_YAML.read_text().replace("posture: Reactive", "posture: Sometimes"))
    with pytest.raises(ValueError, match=r"deployment 'replace-node' has an invalid trigger: .*posture"):
        load_specs(bad)

    bad.write_text(PREFECT_YAML.read_text().replace("entrypoint: flows.scale_down.scale_down",
                                                    "entrypoint: flows/scale_down.py:scale_down"))
    with pytest.raises(ValueError, match=r"deployment 'scale-down': entrypoint 'flows/scale_down.py:scale_down' "
                                         r"must be a module path"):
        load_specs(bad)
