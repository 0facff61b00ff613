"""Issue #11, the Custom run form, against the session Prefect server: the REST API refuses a bad parameter before a
run exists (the deployment's parameter schema), accepts the block picker's value, and the form shows each
parameter's description and a picker of the Metascale Cluster blocks (headless Chromium; screenshot for the README).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

from deployments import rest
from deployments.specs import PROJECT_ROOT
from flows.scale_down import scale_down
from tasks.cluster_block import MetaCluster, cluster_block_name, register_block_types
from tests.e2e import browser

pytestmark = pytest.mark.prefect
SCREENSHOT = PROJECT_ROOT / "docs" / "screenshots" / "custom-run-form.png"


@pytest.fixture(scope="module")
def form(prefect_api_url: str) -> Iterator[dict[str, Any]]:
    """A scale-down deployment with no cluster preset (as a fresh install has) and two Metascale Cluster blocks;
    removed afterwards with the runs it got."""
    register_block_types()
    blocks = {}
    for name in ("prod-eu", "staging-eu"):
        MetaCluster(inventory_toml=f'name = "{name}"\n').save(name, overwrite=True)
        blocks[name] = str(MetaCluster.load(name)._block_document_id)
    deployment_id = str(scale_down.to_deployment(name=f"operator-form-{uuid.uuid4().hex[:6]}").apply())
    info = {"id": deployment_id, "blocks": blocks, "api": prefect_api_url}
    try:
        yield info
    finally:
        for run in _runs(prefect_api_url, deployment_id):
            rest.request_json("DELETE", f"{prefect_api_url}/flow_runs/{run['id']}")
        rest.request_json("DELETE", f"{prefect_api_url}/deployments/{deployment_id}")
        for block_id in blocks.values():
            rest.request_json("DELETE", f"{prefect_api_url}/block_documents/{block_id}")


def _runs(api_url: str, deployment_id: str) -> list[dict[str, Any]]:
    return rest.request_json("POST", f"{api_url}/flow_runs/filter",
                             {"flow_runs": {"deployment_id": {"any_": [deployment_id]}}})


BAD = {
    "no node": {"node_ids": []},
    "negative deadline": {"node_ids": [3], "cluster_block": "lab", "verify_deadline_s": -1},
    "zero leave timeout": {"node_ids": [3], "cluster_block": "lab", "leave_timeout_s": 0},
    "block name with a shell metacharacter": {"node_ids": [3], "cluster_block": "lab;reboot"},
    "inventory path with a command substitution": {"node_ids": [3], "inventory": "/tmp/$(reboot).toml"},
    "maintenance window that is no window": {"node_ids": [3], "cluster_block": "lab", "maintenance_window": "now"},
}


def test_rest_refuses_bad_parameters_before_a_run_exists_and_takes_the_block_pickers_value(
        form: dict[str, Any]) -> None:
    api, deployment_id = form["api"], form["id"]
    url = f"{api}/deployments/{deployment_id}/create_flow_run"
    assert _runs(api, deployment_id) == []

    for case, parameters in BAD.items():
        with pytest.raises(rest.PrefectApiError) as refused:
            rest.request_json("POST", url, {"parameters": parameters})
        error = refused.value
        assert error.status is not None and 400 <= error.status < 500, f"{case}: {error}"
        assert "Validation failed" in error.body, f"{case}: {error.body}"
    assert _runs(api, deployment_id) == [], "a refused request must not leave a flow run behind"

    name, block_id = next(iter(form["blocks"].items()))
    picked = {"node_ids": [3], "cluster_block": {"$ref": {"block_document_id": block_id}}}   # what the form sends
    by_name = {"node_ids": [3], "cluster_block": name, "maintenance_window": "Sat,Sun 02:00-04:00 Europe/Berlin"}
    created = [rest.request_json("POST", url, {"parameters": p}) for p in (picked, by_name)]
    assert sorted(r["id"] for r in _runs(api, deployment_id)) == sorted(r["id"] for r in created)
    # what the engine does with the stored parameters before the flow body runs: the picked block is its name
    assert scale_down.validate_parameters(created[0]["parameters"])["cluster_block"] == name
    assert scale_down.validate_parameters(created[1]["parameters"])["cluster_block"] == name
    assert cluster_block_name(created[0]["parameters"]["cluster_block"]) == name   # a hook reading the raw run


def test_custom_run_form_shows_the_descriptions_and_the_cluster_block_picker(form: dict[str, Any]) -> None:
    page_url = f"{form['api'].removesuffix('/api')}/deployments/deployment/{form['id']}/run"
    text = browser.visible_text(browser.dump_dom(page_url))   # opened fresh: nothing chosen yet
    for description in ("raft ids of the meta nodes to remove", "choose one of the Metascale Cluster blocks",
                        "seconds each verification (node removed, cluster stable) may wait",
                        "pause after the plan until an operator approves it"):
        assert description in text, f"{description!r} not on the form: {text[:3000]}"
    assert "MetaCluster" in text and "block name" in text, text[:3000]   # the picker, and typing a name instead
    for name in form["blocks"]:
        assert name in text, f"block {name} is not offered by the picker: {text[:3000]}"
    chosen = {"node_ids": [4], "cluster_block": {"$ref": {"block_document_id": form["blocks"]["prod-eu"]}}}
    browser.screenshot(f"{page_url}?parameters={quote(json.dumps(chosen))}", SCREENSHOT)   # a block picked
    assert SCREENSHOT.stat().st_size > 10_000


def test_crash_hook_names_the_cluster_of_a_block_picked_in_the_form(form: dict[str, Any]) -> None:
    """A run that crashed before it read its inventory has no `cluster:` tag; its parameters hold the picker's
    reference, and the hook still names the cluster after the picked block (it said "unknown" before)."""
    from types import SimpleNamespace

    from flows.hooks import cluster_of

    ref = {"$ref": {"block_document_id": form["blocks"]["staging-eu"]}}
    assert cluster_of(SimpleNamespace(tags=["metascale"], parameters={"cluster_block": ref})) == "staging-eu"
    assert cluster_of(SimpleNamespace(tags=[], parameters={"cluster_block": "prod-eu"})) == "prod-eu"
    assert cluster_of(SimpleNamespace(tags=["cluster:lab"], parameters={"cluster_block": ref})) == "lab"
