"""The Prefect REST API as a caller without Prefect sees it (curl, a CI job): trigger, watch, approve.

Test support only: no product code uses it (the demo, the CLI and the flows use Prefect's own client, which already
retries 429/502/503, and `run_deployment` / `resume_flow_run`). Tests use it where the point is the raw HTTP view: the
JSON a script sends and gets back, a refusal's status code, `resume` answering HTTP 200 with {"status": "REJECT"}.
Plain urllib, no prefect import, so it also shows what such a caller must do itself, including retrying HTTP 503,
which a SQLite-backed server returns while it is busy (prefect-notes §4).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

RETRY_STATUSES = frozenset({429, 502, 503})
TERMINAL_STATES = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})


class PrefectApiError(RuntimeError):
    """The API answered with an error (or not at all before the deadline)."""

    def __init__(self, method: str, url: str, status: int | None, body: str) -> None:
        super().__init__(method, url, status, body)
        self.method, self.url, self.status, self.body = method, url, status, body

    def __str__(self) -> str:
        answer = self.status if self.status is not None else "no answer"
        return f"{self.method} {self.url} -> {answer}: {self.body[:500]}"


def request_json(method: str, url: str, body: Any = None, *, deadline_s: float = 60.0) -> Any:
    """Send one JSON request; retry 429/502/503 and refused connections with backoff until `deadline_s`.

    Returns the decoded JSON body. Raises: PrefectApiError for any other error status or when the deadline passes.
    """
    data = None if body is None else json.dumps(body).encode()
    deadline = time.monotonic() + deadline_s
    delay = 0.2
    while True:
        request = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
        status: int | None = None
        text = ""
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - operator-given API URL
                raw = response.read()
                return json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            status, text = exc.code, exc.read().decode(errors="replace")
            if status not in RETRY_STATUSES:
                raise PrefectApiError(method, url, status, text) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            text = str(exc)
        if time.monotonic() + delay > deadline:
            raise PrefectApiError(method, url, status, f"still failing after {deadline_s:.0f} s: {text}")
        time.sleep(delay)
        delay = min(delay * 2, 2.0)


def read_deployment(api_url: str, flow_name: str, deployment_name: str) -> dict[str, Any]:
    """GET /deployments/name/<flow>/<deployment>. Raises PrefectApiError (404) when it does not exist."""
    path = f"{urllib.parse.quote(flow_name)}/{urllib.parse.quote(deployment_name)}"
    return request_json("GET", f"{api_url}/deployments/name/{path}")


def create_flow_run(api_url: str, deployment_id: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """POST /deployments/<id>/create_flow_run with `parameters` (merged over the deployment's defaults)."""
    return request_json("POST", f"{api_url}/deployments/{deployment_id}/create_flow_run",
                        {"parameters": parameters})


def read_flow_run(api_url: str, flow_run_id: str) -> dict[str, Any]:
    """GET /flow_runs/<id>."""
    return request_json("GET", f"{api_url}/flow_runs/{flow_run_id}")


def state_type(flow_run: dict[str, Any]) -> str:
    """The run's state type (SCHEDULED, PENDING, RUNNING, PAUSED, COMPLETED, FAILED, …)."""
    return str((flow_run.get("state") or {}).get("type") or flow_run.get("state_type") or "UNKNOWN")


def wait_for_state(api_url: str, flow_run_id: str, wanted: frozenset[str] | set[str], *, timeout_s: float,
                   poll_s: float = 0.5) -> dict[str, Any]:
    """Poll the run until its state type is in `wanted` (or terminal); return the run.

    Raises: TimeoutError naming the run and its last state when the deadline passes.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        run = read_flow_run(api_url, flow_run_id)
        current = state_type(run)
        if current in wanted or current in TERMINAL_STATES:
            return run
        if time.monotonic() > deadline:
            raise TimeoutError(f"flow run {run.get('name')} ({flow_run_id}) still {current} after {timeout_s:.0f} s")
        time.sleep(poll_s)


def resume_flow_run(api_url: str, flow_run_id: str, run_input: dict[str, Any]) -> dict[str, Any]:
    """POST /flow_runs/<id>/resume with a typed `run_input` (the approval form).

    The API answers HTTP 200/201 even when it rejects the input; this checks the body's `status`.
    Raises: PrefectApiError when the status is not ACCEPT (the body names the reason).
    """
    url = f"{api_url}/flow_runs/{flow_run_id}/resume"
    answer = request_json("POST", url, {"run_input": run_input})
    if not isinstance(answer, dict) or answer.get("status") != "ACCEPT":
        verdict = {"status": answer.get("status"), "details": answer.get("details")} if isinstance(answer, dict) \
            else answer
        raise PrefectApiError("POST", url, 200, json.dumps(verdict))
    return answer


def ui_url(api_url: str, flow_run_id: str) -> str:
    """The UI page of a flow run: `http://host:port/runs/flow-run/<id>` (the API URL without `/api`)."""
    return f"{api_url.removesuffix('/').removesuffix('/api')}/runs/flow-run/{flow_run_id}"


def artifacts_of(api_url: str, flow_run_id: str) -> list[dict[str, Any]]:
    """POST /artifacts/filter: the artifacts (plan, status tables) a run created."""
    return request_json("POST", f"{api_url}/artifacts/filter",
                        {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}, "sort": "CREATED_DESC"})
