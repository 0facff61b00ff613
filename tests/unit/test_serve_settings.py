"""deployments/serve.py hands its runner settings to the runner (no server: `serve_warm` is replaced)."""

from __future__ import annotations

from typing import Any

import pytest

from deployments import serve as serve_module


def test_serve_passes_the_poll_interval_and_the_limit_to_prefect(monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    seen: dict[str, Any] = {}

    def fake_serve(deployments: Any, flows: Any, **kwargs: Any) -> None:
        seen.clear()
        seen.update(kwargs, served=list(deployments), flows=list(flows))

    class Spec(str):
        def load_flow(self) -> str:
            return f"flow of {self}"

    monkeypatch.setattr(serve_module, "serve_warm", fake_serve)
    monkeypatch.setattr(serve_module, "load_specs", lambda path: [Spec("scale-up"), Spec("scale-down")])
    monkeypatch.setattr(serve_module, "to_runner_deployments", list)

    serve_module.main([])
    assert seen == {"poll_s": serve_module.POLL_S, "limit": 4, "served": ["scale-up", "scale-down"],
                    "flows": ["flow of scale-up", "flow of scale-down"]}
    assert serve_module.POLL_S < 1  # below what PREFECT_RUNNER_POLL_FREQUENCY (whole seconds) can express
    serve_module.main(["--poll-s", "0.25", "--limit", "2"])
    assert (seen["poll_s"], seen["limit"]) == (0.25, 2)
    with pytest.raises(SystemExit):
        serve_module.main(["--poll-s", "0"])
    assert "--poll-s: 0 is not a positive number of seconds" in capsys.readouterr().err
