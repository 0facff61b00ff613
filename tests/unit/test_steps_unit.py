"""Every runbook step against a FakeRemote: it acts once, a second run changes nothing, dry runs write nothing,
and failures carry host, command, exit code and stderr."""

from __future__ import annotations

from pathlib import Path

import pytest

from metascale import config, steps
from metascale.errors import ConfigEditError, PlanRefused, RemoteCommandError, RemoteTimeout
from metascale.inventory import MetaNode, parse_inventory
from tests.unit.fakes import LAB_SECRET, FakeRemote, metactl_status_text, own_ip_meta_config

CONFIGS = Path(__file__).parent.parent / "fixtures" / "configs"
META = (CONFIGS / "databend-meta.toml").read_text()
QUERY = (CONFIGS / "databend-query.toml").read_text()
META_PATH = "/etc/databend/databend-meta.toml"
QUERY_PATH = "/etc/databend/databend-query.toml"
INV = parse_inventory(
    'name = "lab"\n[ssh]\nprivate_key_file = "/k"\nknown_hosts_file = "/kh"\n'
    + "".join(f'[[meta]]\nid = {i}\nhost = "127.10.0.{i}"\n' for i in (1, 2, 3))
    + '[[query]]\nhost = "127.10.0.16"\n'
)
NEW = MetaNode(node_id=4, host="127.10.0.4")
JOIN = ["127.10.0.1:28004", "127.10.0.2:28004", "127.10.0.3:28004"]


def meta_host(node_id: int, text: str = META) -> FakeRemote:
    return FakeRemote(host=f"127.10.0.{node_id}", files={META_PATH: text},
                      units={"databend-meta": ["active", "enabled"]}, dirs={"/var/lib/databend/raft": ["df_meta"]})


def test_copy_config_reads_the_existing_nodes_file() -> None:
    assert steps.copy_config_from_existing_node(meta_host(1), INV, INV.meta_node(1)) == META


def test_copy_config_refuses_a_file_that_is_not_a_meta_config() -> None:
    with pytest.raises(ConfigEditError, match=r"127\.10\.0\.1:/etc/databend/databend-meta.toml.*raft_config"):
        steps.copy_config_from_existing_node(meta_host(1, "x = 1\n"), INV, INV.meta_node(1))


def test_write_new_node_config_dry_run_then_real_then_no_op() -> None:
    spare = meta_host(4)
    dry = steps.write_new_node_config(spare, INV, NEW, META, JOIN, dry_run=True)
    assert dry.changed and dry.dry_run and "+id            = 4" in dry.diff and spare.writes == []
    first = steps.write_new_node_config(spare, INV, NEW, META, JOIN)
    assert first.changed and first.backup_path == f"{META_PATH}.20260101T000000.bak"
    assert config.read_node_id(spare.files[META_PATH]) == 4
    assert config.read_join(spare.files[META_PATH]) == JOIN
    second = steps.write_new_node_config(spare, INV, NEW, META, JOIN)
    assert not second.changed and len(spare.writes) == 1


def test_write_new_node_config_creates_missing_directory() -> None:
    bare = FakeRemote(host="127.10.0.4")
    result = steps.write_new_node_config(bare, INV, NEW, META, JOIN)
    assert result.changed and result.backup_path is None
    assert ["mkdir", "-p", "/etc/databend"] in bare.sudo_commands


def test_start_meta_service_enables_and_starts_once() -> None:
    spare = meta_host(4)
    spare.units["databend-meta"] = ["inactive", "disabled"]
    dry = steps.start_meta_service(spare, INV, dry_run=True)
    assert dry.changed and spare.ran("systemctl", "start") == []
    first = steps.start_meta_service(spare, INV)
    assert first.changed and "enabled and started" in first.detail
    assert spare.ran("systemctl", "enable") == [["systemctl", "enable", "databend-meta"]]
    assert not steps.start_meta_service(spare, INV).changed
    assert len(spare.ran("systemctl", "start")) == 1


def test_start_meta_service_reports_a_failed_unit() -> None:
    spare = meta_host(4)
    spare.units["databend-meta"] = ["inactive", "enabled"]
    spare.on(["systemctl", "is-active"], exit_code=3, stdout="failed\n")
    with pytest.raises(RemoteCommandError, match="failed right after start"):
        steps.start_meta_service(spare, INV)


def test_start_missing_unit_raises_with_host_and_stderr() -> None:
    remote = FakeRemote(host="127.10.0.4")
    with pytest.raises(RemoteCommandError) as info:
        steps.start_meta_service(remote, INV)
    assert info.value.host == "127.10.0.4" and info.value.exit_code == 5
    assert "not found" in info.value.stderr_tail and "systemctl enable databend-meta" in info.value.command


def test_stop_meta_service_stops_and_disables_once() -> None:
    node = meta_host(3)
    assert steps.stop_meta_service(node, INV).detail == "stopped and disabled databend-meta"
    assert node.units["databend-meta"] == ["inactive", "disabled"]
    assert not steps.stop_meta_service(node, INV).changed


def test_stop_without_disable_keeps_it_enabled() -> None:
    node = meta_host(3)
    steps.stop_meta_service(node, INV, disable=False)
    assert node.units["databend-meta"] == ["inactive", "enabled"]


def test_retire_raft_dir_moves_the_raft_dir_named_by_the_nodes_own_config() -> None:
    node = meta_host(3, own_ip_meta_config("127.10.0.3", 3, raft_dir="/data/meta/raft"))
    node.dirs = {"/data/meta/raft": ["df_meta"], "/var/lib/databend/raft": ["other"]}
    node.units["databend-meta"] = ["inactive", "disabled"]
    result = steps.retire_raft_dir(node, INV)
    assert result.backup_path and result.backup_path.startswith("/data/meta/raft.removed-")
    assert node.dirs["/var/lib/databend/raft"] == ["other"]  # the inventory's default path is not touched


def test_retire_raft_dir_moves_it_aside_once() -> None:
    node = meta_host(3)
    with pytest.raises(PlanRefused, match="still active"):
        steps.retire_raft_dir(node, INV)
    node.units["databend-meta"] = ["inactive", "disabled"]
    result = steps.retire_raft_dir(node, INV)
    assert result.changed and result.backup_path and result.backup_path.startswith("/var/lib/databend/raft.removed-")
    assert node.dirs["/var/lib/databend/raft"] == [] and node.dirs[result.backup_path] == ["df_meta"]
    assert ["install", "-d", "-o", "databend", "-g", "databend", "-m", "750", "/var/lib/databend/raft"] in node.commands
    assert not steps.retire_raft_dir(node, INV).changed


def test_update_join_changes_once_and_keeps_comments() -> None:
    node = meta_host(1)
    dry = steps.update_join(node, INV, INV.meta_node(1), [*JOIN, "127.10.0.4:28004"], dry_run=True)
    assert dry.changed and node.writes == []
    first = steps.update_join(node, INV, INV.meta_node(1), [*JOIN, "127.10.0.4:28004"])
    assert first.changed and first.backup_path
    assert "# NOTE: comment out this line after the first run." in node.files[META_PATH]
    assert not steps.update_join(node, INV, INV.meta_node(1), [*JOIN, "127.10.0.4:28004"]).changed
    assert len(node.writes) == 1


def test_update_join_leaves_out_own_listen_address() -> None:
    node = meta_host(1, META.replace('raft_listen_host = "0.0.0.0"', 'raft_listen_host = "127.10.0.1"'))
    steps.update_join(node, INV, INV.meta_node(1), JOIN)
    assert config.read_join(node.files[META_PATH]) == ["127.10.0.2:28004", "127.10.0.3:28004"]


def test_update_join_on_bad_file_names_host_and_writes_nothing() -> None:
    node = meta_host(1, "[raft_config\n")
    with pytest.raises(ConfigEditError, match=r"127\.10\.0\.1:/etc/databend/databend-meta\.toml: .*invalid TOML"):
        steps.update_join(node, INV, INV.meta_node(1), JOIN)
    assert node.writes == []


def test_update_query_meta_endpoints_once() -> None:
    query = FakeRemote(host="127.10.0.16", files={QUERY_PATH: QUERY})
    endpoints = [n.grpc_addr for n in INV.meta_nodes]
    first = steps.update_query_meta_endpoints(query, INV, INV.query_nodes[0], endpoints)
    assert first.changed and config.read_meta_endpoints(query.files[QUERY_PATH]) == endpoints
    assert '-endpoints = ["0.0.0.0:9191"]' in first.diff
    assert not steps.update_query_meta_endpoints(query, INV, INV.query_nodes[0], endpoints).changed


def test_transfer_leadership_runs_on_the_leader_against_local_admin() -> None:
    leader = meta_host(1)
    leader.on(["databend-metactl", "status"], stdout=metactl_status_text(1, "Leader", 1))
    leader.on(["databend-metactl", "transfer-leader"], stdout="triggered leader transfer from 1 to 2.\nvoter ids: [1, 2, 3]\n")
    result = steps.transfer_leadership(leader, INV.meta_node(1), 2)
    assert result.changed and "triggered leader transfer from 1 to 2." in result.detail
    assert leader.ran("databend-metactl", "transfer-leader") == [
        ["databend-metactl", "transfer-leader", "--to", "2", "--admin-api-address", "127.0.0.1:28002"]]
    assert leader.cwds[-1] == leader.tmpdir


def test_transfer_leadership_uses_the_admin_address_of_the_leaders_own_config() -> None:
    leader = meta_host(1, own_ip_meta_config("127.10.0.1", 1, admin_port=28012))
    leader.on(["databend-metactl", "status"], stdout=metactl_status_text(1, "Leader", 1))
    steps.transfer_leadership(leader, INV.meta_node(1), 3, inventory=INV)
    assert leader.ran("databend-metactl", "transfer-leader") == [
        ["databend-metactl", "transfer-leader", "--to", "3", "--admin-api-address", "127.10.0.1:28012"]]
    assert leader.ran("databend-metactl", "status")[0][-1] == "127.10.0.1:9191"


def test_transfer_leadership_with_admin_tls_uses_https() -> None:
    facts = config.read_meta_config_facts(own_ip_meta_config(
        "127.10.0.1", 1, extra_top='admin_tls_server_cert = "/etc/databend/a.pem"\n'))
    assert steps.transfer_leader_argv(facts, 2, 15) == [
        "curl", "-sS", "--fail", "--max-time", "15", "-k",
        "https://127.10.0.1:28002/v1/ctrl/trigger_transfer_leader?to=2"]


def test_transfer_leadership_is_a_no_op_when_not_leader_any_more() -> None:
    former = meta_host(1)
    former.on(["databend-metactl", "status"], stdout=metactl_status_text(1, "Follower", 2))
    assert not steps.transfer_leadership(former, INV.meta_node(1), 3).changed
    assert former.ran("databend-metactl", "transfer-leader") == []


def test_transfer_leadership_to_a_non_voter_is_refused() -> None:
    leader = meta_host(1)
    leader.on(["databend-metactl", "status"], stdout=metactl_status_text(1, "Leader", 1))
    with pytest.raises(PlanRefused, match="meta-9 is not a voter"):
        steps.transfer_leadership(leader, INV.meta_node(1), 9)


def test_leave_cluster_runs_with_the_nodes_config_as_the_service_user() -> None:
    node = meta_host(2, own_ip_meta_config("127.10.0.2", 2))
    node.on(["systemctl", "show", "-p", "User", "--value"], stdout="databend\n")
    result = steps.leave_cluster(node, 3, ["127.10.0.1:28004", "127.10.0.2:28004"], timeout_s=5, inventory=INV)
    assert result.changed
    assert node.commands[-1] == ["databend-meta", "--config-file", META_PATH, "--leave-id", "3",
                                 "--leave-via", "127.10.0.1:28004", "--leave-via", "127.10.0.2:28004"]
    assert node.sudo_users[-1] == "databend" and node.cwds[-1] == "/"
    assert ["systemctl", "show", "-p", "User", "--value", "databend-meta"] in node.commands
    shown = " ".join(" ".join(c) for c in node.commands) + result.model_dump_json()
    assert LAB_SECRET not in shown  # the secret stays in the file; --config-file hands it to databend-meta


def test_leave_cluster_runs_as_root_when_the_unit_sets_no_user() -> None:
    node = meta_host(2)
    node.on(["systemctl", "show"], stdout="\n")
    steps.leave_cluster(node, 3, ["127.10.0.1:28004"], timeout_s=5)
    assert node.sudo_users[-1] == "root" and node.commands[-1][:3] == ["databend-meta", "--config-file", META_PATH]


def test_leave_cluster_no_op_when_not_a_member() -> None:
    node = meta_host(2)
    node.on(["databend-metactl", "status"], stdout=metactl_status_text(2, "Follower", 1, voters=(1, 2)))
    result = steps.leave_cluster(node, 3, ["127.10.0.1:28004"], probe=INV.meta_node(2))
    assert not result.changed and node.ran("databend-meta") == []


def test_leave_cluster_timeout_explains_quorum() -> None:
    node = meta_host(2)
    node.on(["databend-meta"], timeout=True)
    with pytest.raises(RemoteTimeout, match="quorum") as info:
        steps.leave_cluster(node, 3, ["127.10.0.1:28004"], timeout_s=0.1)
    assert info.value.host == "127.10.0.2" and "--leave-id 3" in info.value.command


def test_leave_cluster_on_a_silent_host_says_the_host_went_silent_not_quorum() -> None:
    from metascale.remote import SILENT_HOST_HINT

    node = meta_host(2)

    def silent(argv: list[str]) -> None:
        raise RemoteTimeout(node.host, " ".join(argv), 0.1, "", SILENT_HOST_HINT)

    node.on_call(["databend-meta"], silent)
    with pytest.raises(RemoteTimeout) as info:
        steps.leave_cluster(node, 3, ["127.10.0.1:28004"], timeout_s=0.1)
    assert info.value.hint == SILENT_HOST_HINT and "quorum" not in str(info.value)


def test_leave_cluster_refusal_carries_stderr() -> None:
    node = meta_host(2)
    node.on(["databend-meta"], exit_code=1,
            stderr='Error: fail to leave 1 cluster via ["127.10.0.1:28004"], caused by errors: can not leave id=1 via itself')
    with pytest.raises(RemoteCommandError, match="can not leave id=1 via itself") as info:
        steps.leave_cluster(node, 1, ["127.10.0.1:28004"])
    assert info.value.exit_code == 1


def test_collect_diagnostics_gathers_status_journal_and_newest_log() -> None:
    node = meta_host(2)
    node.on(["systemctl", "status"], exit_code=3, stdout="databend-meta.service - Databend Meta\n  Active: failed")
    node.on(["journalctl"], stdout="Nov 26 databend-meta[1]: Error: --join must not be set to itself\n")
    node.on(["find", "/var/log/databend"], stdout="100.0 /var/log/databend/old.log\n200.5 /var/log/databend/new.log\n")
    node.on(["tail"], stdout="last line\n")
    text = steps.collect_diagnostics(node, INV)
    assert "Active: failed" in text and "must not be set to itself" in text and "last line" in text
    assert ["tail", "-n", "50", "/var/log/databend/new.log"] in node.commands
    assert ["journalctl", "-u", "databend-meta", "-n", "50", "--no-pager"] in node.commands


def test_collect_diagnostics_reads_the_log_dir_of_the_nodes_own_config() -> None:
    node = meta_host(2, own_ip_meta_config("127.10.0.2", 2, log_dir="/srv/logs/meta"))
    node.on(["find", "/srv/logs/meta"], stdout="100.0 /srv/logs/meta/databend-meta.log\n")
    steps.collect_diagnostics(node, INV)
    assert ["tail", "-n", "50", "/srv/logs/meta/databend-meta.log"] in node.commands
    assert not node.ran("find", "/var/log/databend")


def test_the_fakes_implement_the_core_protocols() -> None:
    from metascale.remote import Remote, RemotePool
    from tests.unit.fakes import FakePool

    assert isinstance(FakeRemote(), Remote)
    assert isinstance(FakePool(), RemotePool)
    assert not isinstance(object(), Remote)
