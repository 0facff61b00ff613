"""cluster-check proposes, a person decides (issue #12), on the lab with the real Prefect server: a voter that stops
answering is remembered from the first run that saw it silent; once silent for `silent_threshold_s` the run
publishes the `replace-proposal-<cluster>` artifact (node, since when, the spare, the command) and emits ONE
`metascale.replace-node.proposed` event per silent episode; the automation shipped in prefect.yaml turns that event
into a `replace-node` run with `require_approval` on; a voter that answers again is forgotten.

Registering the automation on a test server (for the end-to-end dead-node test): `apply_replace_node()` below
applies the `replace-node` deployment built from prefect.yaml (`deployments.specs.to_runner_deployments`), which
creates its trigger's automation exactly as `prefect deploy` / `python -m deployments.serve` do. Nothing serves that
deployment, so the runs the automation creates stay Scheduled: execute one with
`prefect flow-run execute <id>` (a subprocess, PREFECT_API_URL inherited) to watch it pause for approval, or start
`python -m deployments.serve` (tests/e2e/test_demo.py starts it) instead of `apply_replace_node()` to have runs
picked up by themselves. `remove_replace_node()` deletes the deployment, its automation and its runs again.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    DeploymentFilter,
    DeploymentFilterId,
)
from prefect.events import emit_event
from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter
from prefect.events.worker import EventsWorker
from prefect.states import State

from deployments.specs import load_specs, to_runner_deployments
from flows.cluster_check import cluster_check, read_silence
from metascale.inventory import load_inventory
from metascale.silence import PROPOSAL_EVENT, iso
from sandbox.lab import Lab
from tests.faults.test_fault_matrix import poll
from tests.flows.test_replace_node import assert_files_follow
from tests.security.test_security import _inventory_with_bad_key

pytestmark = [pytest.mark.prefect]

CLUSTER = "lab"
META3, SPARE1 = "127.100.0.13", "127.100.0.14"
RESOURCE = f"metascale.cluster.{CLUSTER}"
SENTINEL = "metascale.test.sentinel"
CONNECT_TIMEOUT_S = 3


# ------------------------------------------------------------------------------------------ the automation helper

def apply_replace_node() -> UUID:
    """Register `replace-node` from prefect.yaml on the current Prefect server, with its trigger: afterwards the
    automation `replace-node-on-proposal` exists and starts a (Scheduled, unserved) replace-node run for every
    `metascale.replace-node.proposed` event. Returns the deployment id."""
    (spec,) = [s for s in load_specs() if s.name == "replace-node"]
    (deployment,) = to_runner_deployments([spec])
    return deployment.apply()


def remove_replace_node(deployment_id: UUID) -> None:
    """Delete the deployment's runs, its automation(s) and the deployment (so no later test triggers it)."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))
        for run in runs:
            client.delete_flow_run(run.id)
        client.delete_resource_owned_automations(f"prefect.deployment.{deployment_id}")
        client.delete_deployment(deployment_id)


# --------------------------------------------------------------------------------------------------- helpers

def _forget_record() -> None:
    with get_client(sync_client=True) as client:
        if client.read_variable_by_name(f"metascale-silent-{CLUSTER}") is not None:
            client.delete_variable_by_name(f"metascale-silent-{CLUSTER}")


def _proposal_artifact(state: State) -> str | None:
    """The markdown of the `replace-proposal-lab` artifact the run of ``state`` published, or None."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[f"replace-proposal-{CLUSTER}"]),
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    return str(found[0].data) if found else None


def _events(name: str, since: datetime) -> list[Any]:
    with get_client(sync_client=True) as client:
        page = client.read_events(filter=EventFilter(
            occurred=EventOccurredFilter(since=since, until=datetime.now(timezone.utc)),
            event=EventNameFilter(name=[name]), resource=EventResourceFilter(id=[RESOURCE])), limit=50)
    return list(page.events)


def _all_events_in(since: datetime) -> None:
    """Wait until every event this process sent so far is readable: send a sentinel after them and poll for it."""
    emit_event(event=SENTINEL, resource={"prefect.resource.id": RESOURCE})
    EventsWorker.drain_all(timeout=10)
    poll(lambda: len(_events(SENTINEL, since)) > 0, "the sentinel event to be readable", timeout_s=30)


def _replace_runs(deployment_id: UUID) -> list[Any]:
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))


@pytest.fixture
def inventory(fresh_lab: Lab, tmp_path: Path) -> Iterator[Path]:
    """A private copy of the lab inventory with a short SSH connect deadline (each check waits that long for the
    powered-off host); the silent-voter record starts empty."""
    text = fresh_lab.inventory.read_text()
    assert "connect_timeout_s = 3" in text
    copy = tmp_path / "inventory.toml"
    copy.write_text(text.replace("connect_timeout_s = 3", f"connect_timeout_s = {CONNECT_TIMEOUT_S}"))
    _forget_record()
    yield copy
    _forget_record()


# ------------------------------------------------------------------------------------------------------- test

@pytest.mark.lab
def test_a_dead_voter_is_remembered_proposed_once_started_for_approval_and_forgotten_when_back(
        fresh_lab: Lab, inventory: Path, prefect_api_url: str) -> None:
    started = datetime.now(timezone.utc)
    path, tmp = str(inventory), inventory.parent
    deployment_id = apply_replace_node()
    try:
        with get_client(sync_client=True) as client:
            (automation,) = client.read_automations_by_name("replace-node-on-proposal")
        assert automation.enabled and automation.trigger.expect == {PROPOSAL_EVENT}
        assert automation.trigger.match.model_dump() == {"prefect.resource.id": "metascale.cluster.*"}
        assert [str(a.deployment_id) for a in automation.actions] == [str(deployment_id)]

        fresh_lab.stop_host("meta3")
        try:
            # 1. first sight: `since` recorded, nothing proposed (threshold not reached)
            first = cluster_check(inventory=path, silent_threshold_s=3600, return_state=True)
            assert first.is_failed() and "voters [3] do not answer" in str(first.message), first.message
            record = read_silence(CLUSTER)
            assert list(record) == [3] and record[3].proposed_at is None and started <= record[3].since
            since = record[3].since
            assert _proposal_artifact(first) is None

            # 2. silent for >= threshold (0 here): the proposal artifact and one event, which starts replace-node
            second = cluster_check(inventory=path, silent_threshold_s=0, return_state=True)
            assert second.is_failed() and "voters [3] do not answer" in str(second.message), second.message
            text = _proposal_artifact(second)
            assert text is not None, "the second run published no replace-proposal-lab artifact"
            assert f"## meta-3 ({META3})" in text and f"silent since **{iso(since)}**" in text
            assert f"would be replaced by spare **{SPARE1}**" in text
            assert (f"prefect deployment run 'replace-node/replace-node' --param node_id=3 --param new_host={SPARE1} "
                    f"--param inventory={path} --param require_approval=true") in text
            assert f"/deployments/{deployment_id}/create_flow_run" in text
            assert f"/deployments/deployment/{deployment_id})" in text, "the UI link of the deployment"
            assert f"event `{PROPOSAL_EVENT}` sent now" in text
            assert read_silence(CLUSTER)[3].since == since and read_silence(CLUSTER)[3].proposed_at is not None

            poll(lambda: len(_replace_runs(deployment_id)) > 0, "the automation to start replace-node", timeout_s=60)
            (run,) = _replace_runs(deployment_id)
            proposed = {k: run.parameters.get(k) for k in ("node_id", "new_host", "inventory", "cluster_block",
                                                            "require_approval")}
            assert proposed == {"node_id": 3, "new_host": SPARE1, "inventory": path, "cluster_block": "",
                                "require_approval": True}
            assert type(run.parameters["node_id"]) is int, "the server renders `{{ event.payload.node_id }}` as JSON"
            assert run.state is not None and run.state.type.value in {"SCHEDULED", "PENDING", "RUNNING", "PAUSED"}

            # 3. still silent: the artifact again, no second event, no second run
            third = cluster_check(inventory=path, silent_threshold_s=0, return_state=True)
            assert third.is_failed()
            again = _proposal_artifact(third)
            assert again is not None and f"silent since **{iso(since)}**" in again and "sent now" not in again

            # 3b. a new episode on a cluster without a free spare: the artifact says so and asks for a host; no event
            no_spare = inventory.with_name("no-spare.toml")
            no_spare.write_text(inventory.read_text().split("\n[[spare]]")[0] + "\n")
            _forget_record()
            fourth = cluster_check(inventory=str(no_spare), silent_threshold_s=0, return_state=True)
            assert fourth.is_failed()
            asks = _proposal_artifact(fourth)
            assert asks is not None and "**no spare** to replace it" in asks and "no free spare" in asks, asks
            assert "--param 'new_host=<HOST>'" in asks and "sent now" not in asks
            assert read_silence(CLUSTER)[3].proposed_at is None, "no event sent: a spare added later is proposed"
            _all_events_in(started)
            (event,) = _events(PROPOSAL_EVENT, started)
            assert event.payload == {"node_id": 3, "new_host": SPARE1, "since": iso(since), "inventory": path,
                                     "cluster_block": ""}
            assert event.resource.id == RESOURCE and event.resource.get("prefect.resource.name") == CLUSTER
            assert len(_replace_runs(deployment_id)) == 1
        finally:
            fresh_lab.start_host("meta3")

        # 4. meta3 answers again: the record is cleared
        poll(lambda: fresh_lab.meta_status("meta3")[1] == {1, 2, 3}, "meta3 back as a voter", timeout_s=90)
        healthy = cluster_check(inventory=path, silent_threshold_s=0, return_state=True)
        assert healthy.is_completed(), healthy.message
        assert read_silence(CLUSTER) == {}
        assert _proposal_artifact(healthy) is None

        # 5. a host whose key is rejected answered (maybe a man-in-the-middle): unhealthy, but never "silent"
        (tmp / "bad-key").mkdir()
        bad_key = _inventory_with_bad_key(fresh_lab, tmp / "bad-key", "changed", META3)
        refused = cluster_check(inventory=str(bad_key), silent_threshold_s=0, return_state=True)
        assert refused.is_failed() and "voters [3] do not answer" in str(refused.message), refused.message
        assert read_silence(CLUSTER) == {} and _proposal_artifact(refused) is None

        # 6. meta3 dies again; the run the automation started is executed: it plans (dead node: remove first, then
        #    spare1), pauses for a person's answer, and only after the approval replaces meta-3 by spare1
        fresh_lab.stop_host("meta3")
        _approve_the_proposed_run(run.id, prefect_api_url)
        assert fresh_lab.meta_status("spare1")[1] == {1, 2, 4}
        recorded = load_inventory(inventory)
        assert recorded.meta_ids == [1, 2, 4] and recorded.removed_node(3) is not None
        assert recorded.spare(SPARE1).replaced == 3 and recorded.meta_node(4).host == SPARE1
        assert_files_follow(fresh_lab, inventory, META3)
        replaced = cluster_check(inventory=path, silent_threshold_s=0, return_state=True)
        assert replaced.is_completed(), replaced.message  # 3 voters answer; meta-3 is no voter: forgotten
        assert read_silence(CLUSTER) == {}
    finally:
        remove_replace_node(deployment_id)


def _approve_the_proposed_run(run_id: UUID, api_url: str) -> None:
    """Execute the Scheduled replace-node run (`prefect flow-run execute`, as a worker would), wait until it pauses
    for approval with the remove-first plan, check nothing changed yet, approve through the REST API, wait until it
    completes. The subprocess is stopped by PID if it outlives the test."""
    from deployments import rest
    from deployments.local_server import prefect_executable
    from deployments.specs import PROJECT_ROOT

    log = Path(tempfile.mkdtemp(prefix="metascale-replace-")) / "execute.log"
    with log.open("w") as out:
        process = subprocess.Popen([prefect_executable(), "flow-run", "execute", str(run_id)], cwd=PROJECT_ROOT,
                                   stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        paused = rest.wait_for_state(api_url, str(run_id), {"PAUSED", *rest.TERMINAL_STATES}, timeout_s=180)
        assert rest.state_type(paused) == "PAUSED", f"{paused['state']}\n{log.read_text()[-3000:]}"
        plans = [a for a in rest.artifacts_of(api_url, str(run_id)) if (a.get("key") or "").startswith("plan-")]
        assert plans, "the plan is published before the approval pause"
        plan = str(plans[0]["data"])
        assert plan.startswith("# Plan: replace-node on cluster `lab`") and "ORDER: remove meta-3 first" in plan
        assert "1. remove meta-3" in plan and f"2. add meta-4 ({SPARE1})" in plan
        assert load_inventory(Path(paused["parameters"]["inventory"])).meta_ids == [1, 2, 3], "changed before approval"
        rest.resume_flow_run(api_url, str(run_id), {"approve": True, "reason": "meta3 is dead (test)"})
        final = rest.wait_for_state(api_url, str(run_id), rest.TERMINAL_STATES, timeout_s=240)
        assert rest.state_type(final) == "COMPLETED", f"{final['state']}\n{log.read_text()[-3000:]}"
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def test_a_negative_threshold_is_refused_before_anything_is_read() -> None:
    state = cluster_check(inventory="/nonexistent/inventory.toml", silent_threshold_s=-1.5, return_state=True)

    assert state.is_failed()
    assert "silent_threshold_s must be >= 0 (got -1.5)" in str(state.message), state.message
