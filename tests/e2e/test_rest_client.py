"""deployments/rest.py (retries, error reporting) and deployments/local_server.py (stopping by PID), no Prefect."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from deployments import rest
from deployments.local_server import pid_alive, start_process, stop_pid


class _Scripted(BaseHTTPRequestHandler):
    """Answers each request with the next (status, body) from the server's script."""

    def _answer(self) -> None:
        status, body = self.server.script.pop(0)  # type: ignore[attr-defined]
        length = int(self.headers.get("content-length") or 0)
        self.server.bodies.append(self.rfile.read(length))  # type: ignore[attr-defined]
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def scripted() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    server.script, server.bodies = [], []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def url(server: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/api"


def test_503_is_retried_until_the_server_answers(scripted: ThreadingHTTPServer) -> None:
    scripted.script += [(503, {"exception_message": "Service Unavailable"})] * 2 + [(201, {"id": "r1"})]

    run = rest.create_flow_run(url(scripted), "dep-1", {"node_ids": [3]})

    assert run == {"id": "r1"}
    assert len(scripted.bodies) == 3
    assert json.loads(scripted.bodies[-1]) == {"parameters": {"node_ids": [3]}}


def test_other_errors_are_raised_with_method_url_and_body(scripted: ThreadingHTTPServer) -> None:
    scripted.script.append((422, {"detail": "bad parameters"}))

    with pytest.raises(rest.PrefectApiError) as caught:
        rest.create_flow_run(url(scripted), "dep-1", {})

    assert caught.value.status == 422
    assert "POST" in str(caught.value) and "/deployments/dep-1/create_flow_run" in str(caught.value)
    assert "bad parameters" in str(caught.value)


def test_resume_checks_the_body_status_not_the_http_code(scripted: ThreadingHTTPServer) -> None:
    scripted.script.append((200, {"status": "REJECT", "details": {"reason": "'approve' is a required property"}}))
    scripted.script.append((201, {"status": "ACCEPT", "details": None}))

    with pytest.raises(rest.PrefectApiError, match="REJECT.*approve"):
        rest.resume_flow_run(url(scripted), "run-1", {"reason": "x"})
    assert rest.resume_flow_run(url(scripted), "run-1", {"approve": True})["status"] == "ACCEPT"
    assert json.loads(scripted.bodies[-1]) == {"run_input": {"approve": True}}


def test_refused_connection_fails_after_the_deadline() -> None:
    with pytest.raises(rest.PrefectApiError, match="still failing after"):
        rest.request_json("GET", "http://127.0.0.1:9/api/health", deadline_s=1)


def test_ui_url_drops_the_api_suffix() -> None:
    assert rest.ui_url("http://127.0.0.1:4200/api", "abc") == "http://127.0.0.1:4200/runs/flow-run/abc"


def test_stop_pid_only_stops_a_process_whose_command_line_matches(tmp_path: Path) -> None:
    child = start_process("sleeper", [sys.executable, "-c", "import time; time.sleep(120)"], env={},
                          log_path=tmp_path / "sleeper.log")
    try:
        assert stop_pid(child.pid, must_contain="deployments.serve") is False
        assert pid_alive(child.pid)

        assert stop_pid(child.pid, must_contain="time.sleep(120)") is True
        child.popen.wait(timeout=10)
        assert not pid_alive(child.pid)
    finally:
        child.stop()


def test_managed_process_stop_escalates_past_an_ignored_sigterm(tmp_path: Path) -> None:
    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
            "time.sleep(120)")
    child = start_process("stubborn", [sys.executable, "-c", code], env={}, log_path=tmp_path / "stubborn.log")
    assert _wait_for_text(tmp_path / "stubborn.log", "ready"), "the child installs its SIGTERM handler first"

    code_or_signal = child.stop(term_wait_s=0.5)

    assert code_or_signal == -9
    assert not pid_alive(child.pid)


def _wait_for_text(path: Path, text: str, timeout_s: float = 10) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return True
        time.sleep(0.05)
    return False
