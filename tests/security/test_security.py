"""Issue #6, security: strict host keys, no secret anywhere, quoted remote commands, admin API only on the node.

One scale-up and one scale-down of the leader run through a `metascale-cluster` block whose SSH key lives only in a
Prefect Secret block (no key file in the inventory). Every command the runs send is recorded at the SSH layer
(`ParamikoRemote.build_command`), then: every log line, artifact and failure message of those runs (read back
through the Prefect API) is searched for the key; every command is checked to be the shell-quoted argv; every use of
the admin API is checked to be 127.0.0.1 on the node whose admin API it is.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flows.cluster_check import cluster_check
from flows.scale_down import scale_down
from flows.scale_up import scale_up
from metascale.inventory import load_inventory
from metascale.remote import ParamikoRemote
from sandbox.lab import Lab
from tests.faults.lab_state import assert_consistent, snapshot, voters_and_leader

pytestmark = [pytest.mark.lab, pytest.mark.prefect]

SPARE1 = "127.100.0.14"
BLOCK, SECRET = "sec-lab", "sec-lab-ssh-key"


def _key_fragments(key_text: str) -> list[str]:
    """Pieces of the private key that must never appear: the whole text and every base64 body line."""
    lines = [line.strip() for line in key_text.splitlines() if line.strip() and "PRIVATE KEY" not in line]
    return [key_text.strip(), *[line for line in lines if len(line) >= 16]]


@pytest.fixture(scope="module")
def secured_runs(lab: Lab, prefect_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Run scale-up, scale-down of the leader and one failing run through a block + Secret; record every command."""
    from tasks.cluster_block import register_block_types, save_cluster_block, save_key_secret

    lab.reset()
    work = tmp_path_factory.mktemp("security")
    key_file = lab.directory / "id_ed25519"
    text = lab.inventory.read_text().replace(f'private_key_file = "{key_file}"', f'private_key_secret = "{SECRET}"')
    assert "private_key_file" not in text
    inventory_path = work / "inventory.toml"
    inventory_path.write_text(text)
    register_block_types()
    save_key_secret(SECRET, key_file)
    save_cluster_block(BLOCK, load_inventory(inventory_path), ssh_key_secret=SECRET)

    commands: list[tuple[str, list[str], str]] = []
    original = ParamikoRemote.build_command

    def recording(self: ParamikoRemote, argv: Any, **kwargs: Any) -> tuple[str, str]:
        shown, sent = original(self, argv, **kwargs)
        commands.append((self.host, list(argv), sent))
        return shown, sent

    ParamikoRemote.build_command = recording  # type: ignore[method-assign]
    try:
        up = scale_up(new_nodes=[{"host": SPARE1}], cluster_block=BLOCK, return_state=True, require_approval=False)
        _, leader = voters_and_leader(lab, ["meta1", "meta2", "meta3", "spare1"])
        down = scale_down(node_ids=[leader], cluster_block=BLOCK, return_state=True, require_approval=False)
        failed = scale_down(node_ids=[1, 2, 3, 4], cluster_block=BLOCK, return_state=True, require_approval=False)
    finally:
        ParamikoRemote.build_command = original  # type: ignore[method-assign]
    yield {"states": [up, down, failed], "commands": commands, "key": key_file.read_text(), "leader": leader,
           "inventory": load_inventory(inventory_path), "work": work}
    lab.reset()


def _run_ids(states: list[Any]) -> list[Any]:
    return [state.state_details.flow_run_id for state in states]


def test_runs_through_a_secret_block_succeed(secured_runs: dict[str, Any]) -> None:
    up, down, failed = secured_runs["states"]
    assert up.is_completed() and down.is_completed(), (up, down)
    assert failed.is_failed() and "last voter" in str(failed.message)


def test_runs_leave_the_cluster_consistent(secured_runs: dict[str, Any], lab: Lab) -> None:
    work: Path = secured_runs["work"]
    recorded = work / "recorded.toml"
    key = str(lab.directory / "id_ed25519")
    recorded.write_text(secured_runs_inventory_text(secured_runs, key))
    voters = assert_consistent(lab, recorded)
    assert secured_runs["leader"] not in voters and len(voters) == 3


def secured_runs_inventory_text(secured_runs: dict[str, Any], key_file: str) -> str:
    """The block's inventory as recorded after the runs, with the key file instead of the Secret (for reading)."""
    from tasks.cluster_block import MetaCluster

    text = MetaCluster.load(BLOCK).inventory_toml
    return text.replace(f'private_key_secret = "{SECRET}"', f'private_key_file = "{key_file}"')


def _all_logs(client: Any, run_id: Any) -> list[Any]:
    """Every log line of flow run ``run_id`` (its task runs included), page by page."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=30)   # run logs reach the API in batches, in the background
    deadline = time.monotonic() + 30
    while True:
        logs: list[Any] = []
        while True:
            page = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])), limit=200,
                                    offset=len(logs))
            logs += page
            if len(page) < 200:
                break
        if logs or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert logs, f"no logs for flow run {run_id}"
    return logs


def test_no_secret_in_any_log_line_artifact_or_failure_message(secured_runs: dict[str, Any]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterId

    fragments = _key_fragments(secured_runs["key"])
    run_ids = _run_ids(secured_runs["states"])
    texts: list[str] = [str(s.message) for s in secured_runs["states"]]
    with get_client(sync_client=True) as client:
        for run_id in run_ids:
            texts += [log.message for log in _all_logs(client, run_id)]
            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
            assert artifacts, f"no artifacts for flow run {run_id}"
            texts += [f"{a.key} {a.data} {a.description}" for a in artifacts]
            run = client.read_flow_run(run_id)
            texts += [str(run.parameters), str(run.state.message if run.state else "")]
            task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
            texts += [f"{t.name} {t.state.message if t.state else ''}" for t in task_runs]
    assert len(texts) > 50, "too little was read back to prove anything"
    blob = "\n".join(texts)
    assert "PRIVATE KEY" not in blob
    for fragment in fragments:
        assert fragment not in blob, "a piece of the private key appears in a log, artifact or message"


def test_every_remote_command_is_the_quoted_argv(secured_runs: dict[str, Any]) -> None:
    commands = secured_runs["commands"]
    assert len(commands) > 30, f"only {len(commands)} commands recorded"
    for host, argv, sent in commands:
        tail = sent.split(" && ", 1)[-1] if sent.startswith("cd ") else sent
        words = shlex.split(tail)
        assert words[-len(argv):] == argv, f"{host}: {sent!r} does not carry {argv!r} verbatim"
        assert shlex.join(argv) in tail, f"{host}: {sent!r} is not the quoted argv"


def test_admin_api_is_only_reached_on_the_node_itself(secured_runs: dict[str, Any]) -> None:
    admin_uses = [(host, argv) for host, argv, _ in secured_runs["commands"]
                  if "transfer-leader" in argv or any("28002" in a or "admin-api" in a for a in argv)]
    transfers = [(host, argv) for host, argv in admin_uses if "transfer-leader" in argv]
    assert transfers, "the scale-down of the leader sent no transfer-leader"
    leader_host = f"127.100.0.{10 + secured_runs['leader']}"
    assert all(host == leader_host for host, _ in transfers), transfers
    for host, argv in admin_uses:  # the admin address the node's own config binds, asked on that node only
        for arg in argv:
            if ":28002" in arg:
                assert f"{host}:28002" in arg, f"admin API of another node asked from {host}: {argv}"


# ------------------------------------------------------------------------------------------ host keys
def _inventory_with_known_hosts(lab: Lab, tmp_path: Path, known_hosts: str) -> Path:
    hosts_file = tmp_path / "known_hosts"
    hosts_file.write_text(known_hosts)
    inventory = tmp_path / "inventory.toml"
    text = lab.inventory.read_text().replace(str(lab.directory / "known_hosts"), str(hosts_file))
    inventory.write_text(text)
    assert str(hosts_file) in text
    return inventory


def _other_key(tmp_path: Path) -> str:
    key = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    kind, body = (key.with_suffix(".pub")).read_text().split()[:2]
    return f"{kind} {body}"


def _inventory_with_bad_key(lab: Lab, tmp_path: Path, change: str, target: str) -> Path:
    """An inventory copy whose known_hosts lacks `target` ("unknown") or holds another key for it ("changed")."""
    lines = (lab.directory / "known_hosts").read_text().splitlines()
    kept = [line for line in lines if not line.startswith(target)]
    assert len(kept) < len(lines), f"{target} not in the lab's known_hosts"
    if change == "changed":
        kept.append(f"{target} {_other_key(tmp_path)}")
    return _inventory_with_known_hosts(lab, tmp_path, "\n".join(kept) + "\n")


@pytest.mark.parametrize("change", ["unknown", "changed"])
def test_host_key_not_matching_is_refused_and_nothing_changes(fresh_lab: Lab, tmp_path: Path, change: str) -> None:
    target = "127.100.0.13"
    inventory = _inventory_with_bad_key(fresh_lab, tmp_path, change, target)
    before = snapshot(fresh_lab)
    state = scale_down(node_ids=[3], inventory=str(inventory), return_state=True, require_approval=False)
    assert state.is_failed(), state
    assert target in str(state.message), state.message
    check = cluster_check(inventory=str(inventory), return_state=True)
    assert check.is_failed() and "3" in str(check.message), check.message
    assert snapshot(fresh_lab) == before


@pytest.mark.parametrize("change", ["unknown", "changed"])
def test_refusal_for_a_bad_host_key_says_so_and_never_suggests_force(fresh_lab: Lab, tmp_path: Path,
                                                                    change: str) -> None:
    """A rejected host key is a possible man-in-the-middle, not a dead host: the message must say "host key" and
    must not advise force=True (which would remove a live node without stopping it)."""
    target = "127.100.0.13"
    inventory = _inventory_with_bad_key(fresh_lab, tmp_path, change, target)
    state = scale_down(node_ids=[3], inventory=str(inventory), return_state=True, require_approval=False)
    message = str(state.message)
    assert state.is_failed(), state
    assert "host key" in message and "force=True" not in message, message


def test_strict_host_key_checking_has_no_off_switch(fresh_lab: Lab, tmp_path: Path) -> None:
    """The inventory cannot turn host-key checking off: an unknown option is rejected, not ignored."""
    inventory = tmp_path / "inventory.toml"
    shutil.copyfile(fresh_lab.inventory, inventory)
    inventory.write_text(inventory.read_text().replace("[ssh]\n", "[ssh]\nstrict_host_key_checking = false\n"))
    state = cluster_check(inventory=str(inventory), return_state=True)
    assert state.is_failed() and "strict_host_key_checking" in str(state.message), state.message
