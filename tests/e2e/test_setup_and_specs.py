"""deployments/setup.py against the session server, and prefect.yaml as the one source of the deployments."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client

from deployments.setup import run_setup
from deployments.specs import DEPLOYMENT_NAMES, PREFECT_YAML, WORK_POOL, load_specs, to_runner_deployments
from metascale.window import parse_window
from tasks.cluster_block import MetaCluster, load_cluster

KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAAsetupfake\n-----END OPENSSH PRIVATE KEY-----\n"


@pytest.mark.prefect
def test_setup_is_idempotent_and_creates_pool_limit_and_block(tmp_path: Path) -> None:
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

    first = run_setup(["other-cluster"], block=cluster, inventory=inventory, key_file=key)
    second = run_setup(["other-cluster"], block=cluster, inventory=inventory, key_file=key)

    assert f"concurrency limit metascale-cluster-{cluster} created (limit 1)" in first.lines
    assert f"concurrency limit metascale-cluster-{cluster} already exists (limit 1)" in second.lines
    assert f"work pool {WORK_POOL} already exists" in second.lines
    with get_client(sync_client=True) as client:
        assert client.read_work_pool(WORK_POOL).type == "process"
        for name in (cluster, "other-cluster"):
            assert client.read_global_concurrency_limit_by_name(f"metascale-cluster-{name}").limit == 1
    loaded, key_text = load_cluster(cluster_block=cluster)
    assert loaded.name == cluster
    assert loaded.ssh.private_key_file is None and loaded.ssh.private_key_secret == f"{cluster}-ssh-key"
    assert key_text == KEY
    assert "PRIVATE KEY" not in MetaCluster.load(cluster).inventory_toml


def test_prefect_yaml_declares_the_deployments_with_timezoned_cron_schedules() -> None:
    specs = {s.name: s for s in load_specs()}

    assert tuple(specs) == DEPLOYMENT_NAMES
    assert {s.work_pool for s in specs.values()} == {WORK_POOL}
    for name in ("scale-up", "scale-down"):
        (schedule,) = specs[name].schedules
        assert schedule.active is False, f"{name}: destructive schedules ship inactive"
        assert schedule.timezone == "Europe/Berlin"
        parse_window(schedule.parameters["maintenance_window"])
        assert specs[name].parameters["require_approval"] is True
        assert "destructive" in specs[name].tags
    (check,) = specs["cluster-check"].schedules
    assert (check.cron, check.timezone, check.active) == ("0 * * * *", "UTC", True)
    assert "read-only" in specs["cluster-check"].tags
    sync = specs["sync-inventory"]  # writes only the inventory, after approval; never scheduled
    assert sync.parameters["require_approval"] is True and sync.schedules == ()
    assert specs["cluster-check"].parameters["silent_threshold_s"] == 300
    replace = specs["replace-node"]  # never scheduled; started by hand or by its automation, paused for approval
    assert replace.schedules == () and replace.parameters["require_approval"] is True
    assert "destructive" in replace.tags and replace.entrypoint == "flows/replace_node.py:replace_node"
    (trigger,) = replace.deployment_triggers()
    assert type(trigger).__name__ == "DeploymentEventTrigger" and trigger.enabled
    assert trigger.expect == {"metascale.replace-node.proposed"} and trigger.posture == "Reactive"
    assert trigger.match.model_dump() == {"prefect.resource.id": "metascale.cluster.*"}
    assert trigger.parameters == {
        "node_id": "{{ event.payload.node_id }}", "new_host": "{{ event.payload.new_host }}",
        "inventory": "{{ event.payload.inventory }}", "cluster_block": "{{ event.payload.cluster_block }}",
        "require_approval": True}
    assert all(spec.triggers == () for spec in specs.values() if spec.name != "replace-node")
    for spec in specs.values():
        assert spec.description.strip()
        assert {"inventory", "cluster_block"} <= set(spec.parameters)


def test_serve_builds_exactly_what_prefect_yaml_declares() -> None:
    specs = load_specs()

    served = to_runner_deployments(specs)

    assert [d.name for d in served] == [s.name for s in specs]
    for spec, deployment in zip(specs, served):
        assert deployment.flow_name == spec.name, "flow names equal deployment names (scale-up/scale-up, …)"
        assert deployment.description == spec.description
        assert sorted(deployment.tags) == sorted(spec.tags)
        assert deployment.parameters == spec.parameters
        assert [(s.schedule.cron, s.schedule.timezone, s.active, s.parameters) for s in deployment.schedules] == [
            (s.cron, s.timezone, s.active, s.parameters) for s in spec.schedules]
        assert deployment.entrypoint.endswith(spec.entrypoint.split("/")[-1])
        assert [t.model_dump() for t in deployment.triggers] == [t.model_dump() for t in spec.deployment_triggers()]
        assert [t.name for t in deployment.triggers] == [t.get("name") for t in spec.triggers]


def test_a_bad_trigger_in_prefect_yaml_fails_loading_with_the_deployment_named(tmp_path: Path) -> None:
    text = PREFECT_YAML.read_text().replace("posture: Reactive", "posture: Sometimes")
    bad = tmp_path / "prefect.yaml"
    bad.write_text(text)

    with pytest.raises(ValueError, match=r"deployment 'replace-node' has an invalid trigger: .*posture"):
        load_specs(bad)
