"""Issue #10, Secrets: plant a unique query password (query1, query2) and use the lab's unique raft secret (every
meta config, strict), then run a dry run, a real run and failed runs, through the flows and the `metascale` CLI, and
search every output for both: flow results, state messages, run logs, artifacts, task run states, CLI stdout/stderr.

The planted values are also appended to each meta node's newest service log, as a service that dumps its config
would: the failed run's diagnostics artifact quotes those lines, so value-based redaction is proven, not only the
key-based masking of diffs.
"""

from __future__ import annotations

import contextlib
import io
import secrets
from pathlib import Path
from typing import Any

import pytest

from deployments.cli import main as cli_main
from flows.scale_down import scale_down
from flows.scale_up import scale_up
from sandbox.lab import Lab
from tests.security.test_security import _all_logs

pytestmark = [pytest.mark.lab, pytest.mark.prefect]

QUERY_TOML = "/etc/databend/databend-query.toml"


def _plant(lab: Lab, password: str) -> None:
    for query in ("query1", "query2"):
        text = lab.root_exec(query, ["cat", QUERY_TOML]).stdout
        assert 'password = "root"' in text
        lab.root_exec(query, ["tee", QUERY_TOML], input=text.replace('password = "root"', f'password = "{password}"'))
    line = f"loaded config: raft_secret={lab.raft_secret} meta.password={password}\n"
    for meta in ("meta1", "meta2", "meta3"):
        newest = lab.root_exec(meta, ["sh", "-c", 'ls -t "$1"/* | head -n 1', "sh", "/var/log/databend"]).stdout
        assert newest.strip(), f"no log file on {meta}"
        lab.root_exec(meta, ["tee", "-a", newest.strip()], input=line)


def _cli(*argv: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(list(argv))
    return code, out.getvalue() + err.getvalue()


@pytest.fixture(scope="module")
def planted_runs(lab: Lab, prefect_server: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    lab.reset()
    password = f"q-pw-{secrets.token_hex(8)}"
    _plant(lab, password)
    work = tmp_path_factory.mktemp("planted")
    inventory = work / "inventory.toml"
    inventory.write_text(lab.inventory.read_text())
    spare1, spare2 = lab.host("spare1").ip, lab.host("spare2").ip
    states = [
        scale_up(new_nodes=[{"host": spare1}], inventory=str(inventory), dry_run=True, return_state=True,
                 require_approval=False),
        scale_up(new_nodes=[{"host": spare1}], inventory=str(inventory), return_state=True, require_approval=False),
    ]
    cli = [_cli("scale-down", "--inventory", str(inventory), "--id", "4", "--dry-run"),
           _cli("scale-down", "--inventory", str(inventory), "--id", "1", "--id", "2", "--id", "3", "--id", "4"),
           _cli("status", "--inventory", str(inventory))]
    # fails after changing the cluster: a new voter needs ~1.5 s to catch up -> diagnostics are collected
    states.append(scale_up(new_nodes=[{"host": spare2}], inventory=str(inventory), verify_deadline_s=0.05,
                           return_state=True, require_approval=False))
    yield {"states": states, "cli": cli, "secrets": (lab.raft_secret, password)}
    lab.reset()


def test_the_runs_did_what_the_test_needs(planted_runs: dict[str, Any]) -> None:
    dry, real, failed = planted_runs["states"]
    assert dry.is_completed() and real.is_completed() and real.result().changed, (dry, real)
    assert failed.is_failed() and "failed at step" in str(failed.message), failed.message
    (dry_code, dry_out), (refused_code, refused_out), _ = planted_runs["cli"]
    assert dry_code == 0 and "dry run: nothing was changed" in dry_out, dry_out
    assert refused_code == 3 and "refusing scale-down" in refused_out, refused_out


def test_no_planted_secret_in_any_output(planted_runs: dict[str, Any]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterId

    states = planted_runs["states"]
    texts = [str(s.message) for s in states] + [out for _, out in planted_runs["cli"]]
    texts += [states[0].result().model_dump_json(), states[1].result().model_dump_json(),
              str(states[2].result(raise_on_failure=False))]
    artifacts_text = ""
    with get_client(sync_client=True) as client:
        for state in states:
            run_id = state.state_details.flow_run_id
            texts += [log.message for log in _all_logs(client, run_id)]
            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
            artifacts_text += "\n".join(f"{a.key} {a.data} {a.description}" for a in artifacts)
            run = client.read_flow_run(run_id)
            texts += [str(run.parameters), str(run.state.message if run.state else "")]
            task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
            texts += [f"{t.name} {t.state.message if t.state else ''}" for t in task_runs]
    blob = "\n".join(texts) + artifacts_text
    # the secrets were in reach: the query password line is in the endpoints diff (masked), the planted log lines
    # are in the diagnostics (redacted by value)
    assert 'password = "***"' in artifacts_text, "the plan's query config diff does not show the password line"
    assert "loaded config: raft_secret=*** meta.password=***" in artifacts_text, "diagnostics lack the log line"
    for secret in planted_runs["secrets"]:
        assert secret not in blob, "a planted secret appears in a run's output"
