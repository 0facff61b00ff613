"""Notifications, crash hooks and audit (issue #11), end to end on the session Prefect server and lab: the automations
shipped in deployments/automations/ notify a webhook receiver on 127.0.0.1 through the block `deployments.setup`
creates; a refusal ends "Refused" and notifies nobody of a failure; a cancelled change publishes the
`cluster-state-unknown-<cluster>` artifact and starts cluster-check; the audit events and the outcome artifact can be
read through the REST API.

The cancelled change is served (`serve_warm` of the scale-down and cluster-check deployments from prefect.yaml,
without their schedules) so that its cancellation goes through Prefect's runner, which runs the flow's on_cancellation
hook; its process is a fork of serve's warm process (deployments/serve.py);
the other runs are in-process. All use their own cluster name (the lab's hosts, inventory `name = "notify-lab"`):
the lock a killed run leaves behind for its lease (60 s) and the records of this test never touch the `lab` cluster
of the other tests. The automations and the block are deleted afterwards.
"""

from __future__ import annotations

import html
import json
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelling

from deployments.local_server import ManagedProcess, start_process
from deployments.notifications import setup_notifications
from deployments.specs import PROJECT_ROOT
from flows.cluster_check import cluster_check
from flows.common import ScaleOutcome
from flows.scale_down import scale_down
from flows.sync_inventory import sync_inventory
from metascale.inventory import Inventory, load_inventory
from sandbox.lab import Lab
from tests.e2e import browser

pytestmark = [pytest.mark.prefect, pytest.mark.lab]

CLUSTER = "notify-lab"
SCREENSHOTS = PROJECT_ROOT / "docs" / "screenshots"
REASON = "not during the Friday sale"
SERVE_CODE = """
from deployments.serve import serve_warm
from deployments.specs import load_specs, to_runner_deployments
specs = [s for s in load_specs() if s.name in ("scale-down", "cluster-check")]
deployments = to_runner_deployments(specs)
for d in deployments:
    d.schedules, d.triggers = [], []
serve_warm(deployments, [s.load_flow() for s in specs], limit=4, poll_s=0.5)
"""


class Receiver:
    """A webhook receiver on 127.0.0.1 that records every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        received = self.messages

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received.append(json.loads(body or b"{}"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, match: Callable[[dict[str, Any]], bool], what: str, timeout_s: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = [m for m in list(self.messages) if match(m)]
            if found:
                return found[0]
            time.sleep(0.2)
        raise AssertionError(f"no notification {what} within {timeout_s:.0f} s; got: {self.messages}")


@pytest.fixture
def receiver(prefect_api_url: str) -> Iterator[Receiver]:
    """The receiver; afterwards the notification automations and block setup made are deleted again."""
    from deployments.notifications import WEBHOOK_BLOCK_NAME, load_automations

    receiver = Receiver()
    try:
        yield receiver
    finally:
        receiver.server.shutdown()
        with get_client(sync_client=True) as client:
            for automation in load_automations(uuid4()):
                for existing in client.read_automations_by_name(automation.name):
                    client.delete_automation(existing.id)
            try:
                block = client.read_block_document_by_name(WEBHOOK_BLOCK_NAME, block_type_slug="custom-webhook")
                client.delete_block_document(block.id)
            except ObjectNotFound:
                pass


class Served:
    """`serve` of scale-down and cluster-check from prefect.yaml (no schedules), started in the background."""

    NAMES = ("scale-down", "cluster-check")

    def __init__(self) -> None:
        import os

        self.process: ManagedProcess = start_process(
            "serve", [sys.executable, "-c", SERVE_CODE], env=dict(os.environ), cwd=PROJECT_ROOT,
            log_path=PROJECT_ROOT / "test-artifacts" / "notifications-serve.log")
        self.ids: dict[str, str] = {}

    def deployment_id(self, name: str, timeout_s: float = 90) -> str:
        """The id of the served deployment ``name`` (waits until serve registered it)."""
        deadline = time.monotonic() + timeout_s
        with get_client(sync_client=True) as client:
            while name not in self.ids:
                assert self.process.popen.poll() is None, f"serve exited:\n{self.process.log_tail()}"
                assert time.monotonic() < deadline, f"{name} not served:\n{self.process.log_tail()}"
                try:
                    self.ids[name] = str(client.read_deployment_by_name(f"{name}/{name}").id)
                except ObjectNotFound:
                    time.sleep(0.3)
        return self.ids[name]


@pytest.fixture
def served(prefect_api_url: str) -> Iterator[Served]:
    """Serve in the background while the test starts; afterwards stop it and delete both deployments and their
    runs."""
    served = Served()
    try:
        yield served
    finally:
        served.process.stop(term_wait_s=10)
        with get_client(sync_client=True) as client:
            for name in Served.NAMES:
                try:
                    deployment_id = served.ids.get(name) or str(client.read_deployment_by_name(f"{name}/{name}").id)
                except ObjectNotFound:
                    continue
                runs = _post(prefect_api_url, "flow_runs/filter", {"deployments": {"id": {"any_": [deployment_id]}}})
                for run in runs:
                    client.delete_flow_run(run["id"])
                client.delete_deployment(deployment_id)


def _inventory(lab: Lab, path: Path, *, without_meta_3: bool = False) -> Path:
    data = load_inventory(lab.inventory).model_dump(by_alias=True, exclude_none=True)
    data["name"] = CLUSTER
    if without_meta_3:
        data["meta"] = [n for n in data["meta"] if n["id"] != 3]
    path.write_text(Inventory.model_validate(data).to_toml())
    return path


def _post(api_url: str, path: str, body: dict[str, Any]) -> Any:
    """POST ``body`` to the REST API as any API caller would; the decoded answer."""
    request = urllib.request.Request(f"{api_url}/{path}", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 - 127.0.0.1
        return json.loads(answer.read())


def _run(run_id: str) -> Any:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id)


def _ended(run_id: str, wanted: set[str], timeout_s: float = 90) -> Any:
    """Poll the run until its state type is one of ``wanted``; the run."""
    return _poll(lambda: (run := _run(run_id)).state and run.state.type.value in wanted and run,
                 f"run {run_id} to reach {wanted}", timeout_s)


def _paused_change(deployment_id: str, inventory: Path) -> str:
    with get_client(sync_client=True) as client:
        run = client.create_flow_run_from_deployment(deployment_id, parameters={
            "node_ids": [3], "inventory": str(inventory), "cluster_block": "", "maintenance_window": "",
            "require_approval": True, "approval_timeout_s": 600, "accept_no_fault_tolerance": True})
    state = _ended(str(run.id), {"PAUSED", "FAILED", "CRASHED", "COMPLETED"}).state
    assert state.type.value == "PAUSED", state
    return str(run.id)


def _outcome(api_url: str, run_id: str) -> ScaleOutcome:
    (artifact,) = _post(api_url, "artifacts/filter", {"artifacts": {
        "key": {"any_": [f"outcome-{CLUSTER}"]}, "flow_run_id": {"any_": [run_id]}}})
    return ScaleOutcome.from_artifact_markdown(artifact["data"])


def _events(api_url: str, since: datetime) -> list[dict[str, Any]]:
    page = _post(api_url, "events/filter", {"filter": {
        "occurred": {"since": since.isoformat(), "until": datetime.now(timezone.utc).isoformat()},
        "resource": {"id": [f"metascale.cluster.{CLUSTER}"]}}, "limit": 50})
    return list(page["events"])


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")


def _children(pid: int) -> list[int]:
    """The PIDs of the live child processes of ``pid``."""
    return [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()]


def _poll(done: Callable[[], Any], what: str, timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := done()):
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f} s waiting for {what}"
        time.sleep(0.3)
    return value


def _screenshot_notification(message: dict[str, Any], path: Path) -> None:
    page = path.with_suffix(".html")
    page.write_text(
        "<html><body style='font-family:sans-serif;margin:24px;width:900px'><h3>Received by the webhook</h3>"
        f"<p><b>subject:</b> {html.escape(message['subject'])}</p>"
        f"<pre style='background:#f4f4f4;padding:12px;white-space:pre-wrap'>{html.escape(message['body'])}</pre>"
        "</body></html>")
    browser.screenshot(page.as_uri(), path)
    page.unlink()


def test_notifications_refusal_crash_hook_audit_and_outcome(fresh_lab: Lab, receiver: Receiver,
                                                            served: Served, tmp_path: Path,
                                                            prefect_api_url: str) -> None:
    from prefect.flow_runs import resume_flow_run

    from tests.flows.test_scale_flows import _paused_run_id, _run_in_thread

    since = datetime.now(timezone.utc) - timedelta(seconds=5)
    ui = prefect_api_url.removesuffix("/api")
    lines = setup_notifications(webhook=receiver.url)
    assert len([line for line in lines if line.startswith("automation metascale-")]) == 3, lines
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.client.orchestration import get_client

    from deployments.notifications import WEBHOOK_BLOCK_NAME

    with get_client(sync_client=True) as client:  # the block as the UI and the API show it: the URL masked
        shown = client.read_block_document_by_name(
            WEBHOOK_BLOCK_NAME, block_type_slug=CustomWebhookNotificationBlock.get_block_type_slug(),
            include_secrets=False)
    assert shown.data["url"] == "{{url}}" and receiver.url not in str(shown.data), shown.data
    inventory = _inventory(fresh_lab, tmp_path / "inventory.toml")
    stale = _inventory(fresh_lab, tmp_path / "stale.toml", without_meta_3=True)

    # a failed change: notified with the run's link and the error
    failed = scale_down(node_ids=[3], inventory=str(tmp_path / "missing.toml"), return_state=True)
    failed_id = str(failed.state_details.flow_run_id)
    assert failed.name == "Failed", failed
    told = receiver.wait_for(lambda m: failed_id in m["body"], "of the failed run")
    assert f"{ui}/runs/flow-run/{failed_id}" in told["body"] and "cannot read inventory" in told["body"], told

    # cluster-check on a drifted inventory: notified
    assert cluster_check(inventory=str(stale), return_state=True).is_failed()
    drifted = receiver.wait_for(lambda m: "metascale.cluster.drifted" in m["subject"], "of the drift")
    assert "meta-3" in drifted["body"] and "missing from the inventory" in drifted["body"], drifted

    # a change paused for approval: notified with the plan's and the run's link; rejected -> Refused, no failure
    thread, box = _run_in_thread(sync_inventory, inventory=str(stale), require_approval=True)
    paused = str(_paused_run_id(f"sync-inventory-{CLUSTER}"))
    asked = receiver.wait_for(lambda m: "waits for approval" in m["subject"] and paused in m["body"],
                              "asking for approval")
    assert f"{ui}/artifacts/artifact/" in asked["body"] and f"{ui}/runs/flow-run/{paused}" in asked["body"], asked
    resume_flow_run(paused, run_input={"approve": False, "reason": REASON})
    thread.join(60)
    refused = box["state"]
    assert refused.name == "Refused" and REASON in str(refused.message), refused
    outcome = _outcome(prefect_api_url, paused)  # what an API caller reads after the run
    assert outcome.state == "Refused" and REASON in outcome.message and outcome.voters_before == [1, 2, 3]
    assert outcome.voters_after == [1, 2, 3] and "+id = 3" in outcome.plan_markdown and not outcome.changed
    assert sync_inventory(inventory=str(stale), require_approval=False).changed  # audit: inventory synced
    _screenshot_notification(asked, SCREENSHOTS / "notification.png")
    assert not [m for m in receiver.messages if paused in m["body"] and "ended" in m["body"]], \
        "the refusal was notified as a failure"  # the notifications of later events came through by now

    # a served change paused for approval, then cancelled: the hook publishes the artifact, starts cluster-check
    cancelled = _paused_change(served.deployment_id("scale-down"), inventory)
    (warm,) = [pid for pid in _children(served.process.popen.pid) if "multiprocessing.forkserver" in _cmdline(pid)]
    assert _children(warm), "the served run is not a fork of serve's warm process (a fresh interpreter per run?)"
    browser.screenshot(f"{ui}/runs/flow-run/{cancelled}", SCREENSHOTS / "paused-run.png", timeout_s=180)
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(cancelled, Cancelling())
    _ended(cancelled, {"CANCELLED"})
    (artifact,) = _poll(lambda: _post(prefect_api_url, "artifacts/filter", {"artifacts": {
        "key": {"any_": [f"cluster-state-unknown-{CLUSTER}"]}, "flow_run_id": {"any_": [cancelled]}}}),
        "the cluster-state-unknown artifact")
    assert "ended **Cancelled**" in artifact["data"] and "started cluster-check/cluster-check" in artifact["data"]
    check = _poll(lambda: _post(prefect_api_url, "flow_runs/filter", {
        "deployments": {"id": {"any_": [served.deployment_id("cluster-check")]}}}),
        "the cluster-check run the hook started")[0]
    assert check["parameters"]["inventory"] == str(inventory), check["parameters"]
    receiver.wait_for(lambda m: "state-unknown" in m["subject"] and cancelled in m["body"], "of the unknown state")

    # the audit trail: events on metascale.cluster.<name>, related to their runs
    events = _poll(lambda: (e := _events(prefect_api_url, since)) and
                   "metascale.cluster.state-unknown" in {x["event"] for x in e} and e, "the audit events")
    names = {e["event"] for e in events}
    assert {"metascale.plan.published", "metascale.approval.requested", "metascale.change.rejected",
            "metascale.cluster.drifted", "metascale.inventory.synced", "metascale.cluster.state-unknown"} <= names
    (rejected,) = [e for e in events if e["event"] == "metascale.change.rejected"]
    assert rejected["payload"] == {"action": "sync-inventory", "reason": REASON}
    assert f"prefect.flow-run.{paused}" in {r["prefect.resource.id"] for r in rejected["related"]}
