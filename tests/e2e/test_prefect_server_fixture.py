"""The session Prefect server fixture really serves this test process and plain HTTP callers."""

from __future__ import annotations

import json
import urllib.request

import pytest
from prefect import flow, task
from prefect.client.orchestration import get_client


@task
def _double(x: int) -> int:
    return 2 * x


@flow(name="fixture-probe")
def _probe(x: int) -> int:
    return _double(x)


@pytest.mark.prefect
def test_flow_run_is_recorded_by_the_session_server(prefect_api_url: str) -> None:
    state = _probe(21, return_state=True)

    assert state.is_completed()
    assert state.result() == 42
    with get_client(sync_client=True) as client:
        assert str(client.api_url).rstrip("/") == prefect_api_url
        run = client.read_flow_run(state.state_details.flow_run_id)
    assert run.state is not None and run.state.is_completed()


def test_api_url_answers_health_over_plain_http(prefect_api_url: str) -> None:
    assert prefect_api_url.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(f"{prefect_api_url}/health", timeout=5) as response:
        assert json.loads(response.read()) is True
