"""TOML edits on the packaged config files: only the intended lines change, a second edit is a no-op."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomlkit

from metascale import config
from metascale.errors import ConfigEditError

CONFIGS = Path(__file__).parent.parent / "fixtures" / "configs"
META = (CONFIGS / "databend-meta.toml").read_text()
QUERY = (CONFIGS / "databend-query.toml").read_text()


def changed_lines(old: str, new: str) -> tuple[list[str], list[str]]:
    """(removed, added) lines of the unified diff."""
    diff = config.unified_diff(old, new, "f").splitlines()
    removed = [d[1:] for d in diff if d.startswith("-") and not d.startswith("---")]
    added = [d[1:] for d in diff if d.startswith("+") and not d.startswith("+++")]
    return removed, added


def test_set_join_on_packaged_file_changes_exactly_single_and_join() -> None:
    new = config.set_join(META, ["127.10.0.1:28004", "127.10.0.2:28004"])
    removed, added = changed_lines(META, new)
    assert removed == ["single        = true"]
    assert added == ["# single        = true", 'join = ["127.10.0.1:28004", "127.10.0.2:28004"]']
    assert config.read_join(new) == ["127.10.0.1:28004", "127.10.0.2:28004"]
    assert config.read_single(new) is False
    assert new.startswith("# Usage:\n# databend-meta -c databend-meta.toml\n")  # comments kept


def test_set_join_twice_is_a_no_op() -> None:
    once = config.set_join(META, ["127.10.0.1:28004", "127.10.0.2:28004"])
    assert config.set_join(once, ["127.10.0.1:28004", "127.10.0.2:28004"]) == once
    assert config.set_join(once, ["127.10.0.2:28004", "127.10.0.1:28004"]) == once  # same set, order kept


def test_set_join_mutates_a_multiline_array_in_place() -> None:
    text = META.replace("single        = true\n", "").replace(
        '# join          = ["127.0.0.1:28004"]',
        'join = [\n    "127.10.0.1:28004", # meta1\n    "127.10.0.2:28004",\n    "127.10.0.3:28004", # meta3\n]')
    new = config.set_join(text, ["127.10.0.1:28004", "127.10.0.3:28004", "127.10.0.4:28004"])
    removed, added = changed_lines(text, new)
    assert removed == ['    "127.10.0.2:28004",']
    assert added == ['    "127.10.0.4:28004",']
    assert '"127.10.0.1:28004", # meta1' in new and '"127.10.0.3:28004", # meta3' in new


def test_set_join_refuses_an_empty_list() -> None:
    with pytest.raises(ConfigEditError, match="at least one"):
        config.set_join(META, [])


@pytest.mark.parametrize("bad", ["[raft_config\nid = 1", "id = 1\n", 'single = true\n[log]\nlevel = "x"\n'])
def test_invalid_toml_or_missing_raft_config(bad: str) -> None:
    with pytest.raises(ConfigEditError) as info:
        config.set_join(bad, ["a:1"], path="/etc/databend/databend-meta.toml")
    assert "/etc/databend/databend-meta.toml" in str(info.value)


def test_single_in_another_table_is_not_touched() -> None:
    text = "[other]\nsingle = true\n\n[raft_config]\nid = 1\nsingle = true\n"
    new = config.set_join(text, ["a:28004"])
    assert tomlkit.parse(new)["other"]["single"] is True  # type: ignore[index]
    assert config.read_single(new) is False


def test_set_meta_endpoints_on_packaged_query_file() -> None:
    new = config.set_meta_endpoints(QUERY, ["127.10.0.1:9191", "127.10.0.2:9191"])
    removed, added = changed_lines(QUERY, new)
    assert removed == ['endpoints = ["0.0.0.0:9191"]']
    assert added == ['endpoints = ["127.10.0.1:9191", "127.10.0.2:9191"]']
    assert config.set_meta_endpoints(new, ["127.10.0.1:9191", "127.10.0.2:9191"]) == new
    assert config.read_meta_endpoints(new) == ["127.10.0.1:9191", "127.10.0.2:9191"]


def test_set_meta_endpoints_needs_meta_table() -> None:
    with pytest.raises(ConfigEditError, match=r"\[meta\]"):
        config.set_meta_endpoints(META, ["a:9191"])


def test_set_node_identity_on_packaged_file() -> None:
    new = config.set_node_identity(META, node_id=4, host="127.10.0.4", join=["127.10.0.1:28004", "127.10.0.2:28004"])
    removed, added = changed_lines(META, new)
    assert removed == ['grpc_api_advertise_host = "127.0.0.1"', "id            = 0",
                       'raft_advertise_host = "localhost"', "single        = true"]
    assert added == ['grpc_api_advertise_host = "127.10.0.4"', "id            = 4",
                     'raft_advertise_host = "127.10.0.4"', "# single        = true",
                     'join = ["127.10.0.1:28004", "127.10.0.2:28004"]']
    assert config.read_node_id(new) == 4
    assert 'raft_listen_host = "0.0.0.0"' in new  # listen host kept
    again = config.set_node_identity(new, node_id=4, host="127.10.0.4", join=["127.10.0.1:28004", "127.10.0.2:28004"])
    assert again == new


def test_set_node_identity_repoints_listen_addresses_copied_from_another_node() -> None:
    copied = config.set_node_identity(META.replace("0.0.0.0", "127.10.0.1"), node_id=1, host="127.10.0.1",
                                      join=["127.10.0.2:28004"])
    new = config.set_node_identity(copied, node_id=4, host="127.10.0.4", join=["127.10.0.1:28004"])
    assert "127.10.0.1:28002" not in new and 'admin_api_address       = "127.10.0.4:28002"' in new
    assert 'raft_listen_host = "127.10.0.4"' in new
    assert config.read_join(new) == ["127.10.0.1:28004"]


def test_set_node_identity_writes_only_ip_literals_into_binds() -> None:
    named = (META.replace('"0.0.0.0:9191"', '"meta1.example:9191"').replace('"0.0.0.0:28002"', '"localhost:28002"')
             .replace('raft_listen_host = "0.0.0.0"', 'raft_listen_host = "meta1.example"'))
    new = config.set_node_identity(named, node_id=4, host="127.10.0.4", join=["127.10.0.1:28004"])
    facts = config.read_meta_config_facts(new)
    assert facts.grpc_api_address == "127.10.0.4:9191"      # another host's name -> the new node's IP
    assert facts.admin_api_address == "127.0.0.1:28002"     # localhost stays local, as a literal
    assert facts.raft_listen_host == "127.10.0.4"
    assert facts.raft_advertise_host == facts.grpc_api_advertise_host == "127.10.0.4"


def test_set_node_identity_keeps_wildcard_binds_and_brackets_ipv6() -> None:
    v6 = META.replace('"0.0.0.0:9191"', '"[fd00::1]:9191"')
    new = config.set_node_identity(v6, node_id=4, host="fd00::4", join=["[fd00::1]:28004"], grpc_port=9292)
    facts = config.read_meta_config_facts(new)
    assert facts.grpc_api_address == "[fd00::4]:9292" and facts.admin_api_address == "0.0.0.0:28002"
    assert facts.raft_listen_host == "0.0.0.0" and facts.raft_advertise_host == "fd00::4"


def test_set_node_identity_refuses_a_host_name() -> None:
    with pytest.raises(ConfigEditError, match="'spare.example' is not an IP address"):
        config.set_node_identity(META, node_id=4, host="spare.example", join=["127.10.0.1:28004"])


def test_set_node_identity_refuses_own_address_in_join() -> None:
    with pytest.raises(ConfigEditError, match="own address"):
        config.set_node_identity(META, node_id=4, host="127.10.0.4", join=["127.10.0.4:28004"])


def test_join_without_self_only_drops_a_specific_listen_address() -> None:
    addresses = ["127.10.0.1:28004", "127.10.0.2:28004"]
    assert config.join_without_self(META, addresses) == addresses
    assert config.join_without_self(META.replace("0.0.0.0", "127.10.0.1"), addresses) == ["127.10.0.2:28004"]


def test_unified_diff_is_empty_for_equal_texts() -> None:
    assert config.unified_diff(META, META, "x") == ""
    assert "x (before)" in config.unified_diff(META, META + "\n", "x")


def test_disarm_removed_node_empties_join_turns_single_off_and_says_why() -> None:
    member = config.set_join(META, ["127.10.0.1:28004", "127.10.0.2:28004"])
    disarmed = config.disarm_removed_node(member, cluster="prod", node_id=3, when="20261126T120000")
    assert config.read_join(disarmed) == []
    assert config.read_single(disarmed) is False
    assert disarmed.startswith(config.DISARMED_MARK + " `prod` (meta-3) at 20261126T120000.")
    assert disarmed.endswith(member.split("join = ")[-1].split("\n", 1)[1])  # everything after join is untouched
    again = config.disarm_removed_node(disarmed, cluster="prod", node_id=3, when="20991231T000000")
    assert again == disarmed  # idempotent: the first stamp is kept


def test_disarm_removed_node_turns_off_a_packaged_single() -> None:
    disarmed = config.disarm_removed_node(META, cluster="c", node_id=0, when="t")
    assert config.read_single(disarmed) is False
    assert config.read_join(disarmed) == []


def test_meta_config_facts_of_the_packaged_file_take_its_values_and_probe_on_loopback() -> None:
    facts = config.read_meta_config_facts(META)
    assert (facts.grpc_api_address, facts.admin_api_address) == ("0.0.0.0:9191", "0.0.0.0:28002")
    assert (facts.grpc_probe_address, facts.admin_probe_address) == ("127.0.0.1:9191", "127.0.0.1:28002")
    assert facts.raft_dir == "/var/lib/databend/raft" and facts.log_dir == "/var/log/databend"
    assert facts.single and not facts.raft_secret_set and not facts.grpc_tls


def test_meta_config_facts_follow_a_node_bound_to_its_own_ip_with_secret_and_tls() -> None:
    text = (META.replace('"0.0.0.0:9191"', '"127.100.0.11:9191"').replace('"0.0.0.0:28002"', '"[::1]:28002"')
            .replace("[raft_config]", '[raft_config]\nraft_secret = "do-not-show-me"')
            .replace('grpc_api_address', 'grpc_tls_server_cert = "/etc/databend/tls.pem"\ngrpc_api_address', 1))
    facts = config.read_meta_config_facts(text)
    assert facts.grpc_probe_address == "127.100.0.11:9191"
    assert facts.admin_probe_address == "[::1]:28002"
    assert facts.raft_secret_set and facts.grpc_tls
    assert "do-not-show-me" not in repr(facts)


def test_meta_config_facts_use_databend_meta_defaults_for_absent_keys() -> None:
    facts = config.read_meta_config_facts('[raft_config]\nid = 7\nraft_dir = "data/raft"\njoin = ["127.0.0.2:28004"]\n')
    assert facts.node_id == 7 and facts.join == ("127.0.0.2:28004",)
    assert facts.grpc_probe_address == "127.0.0.1:9191" and facts.admin_probe_address == "127.0.0.1:28002"
    assert facts.raft_dir == "/data/raft"          # relative to the service's working directory "/"
    assert facts.log_dir == "/.databend/logs"


def test_meta_config_facts_refuse_an_address_without_a_port() -> None:
    with pytest.raises(ConfigEditError, match="'127.0.0.1' is not HOST:PORT"):
        config.read_meta_config_facts('grpc_api_address = "127.0.0.1"\n[raft_config]\nid = 1\n')


def test_host_port_helpers_bracket_ipv6() -> None:
    assert config.join_host_port("fd00::4", 28004) == "[fd00::4]:28004"
    assert config.split_host_port("[fd00::4]:28004") == ("fd00::4", 28004)
    assert config.probe_address("[::]:9191") == "[::1]:9191"


def test_diffs_never_show_secret_values_in_any_table() -> None:
    meta = META.replace("[raft_config]", '[raft_config]\nraft_secret = "raft-s3cr3t-9f2"\n'
                        'raft_accepted_secrets = [\n  "old-s3cr3t-11a",\n]')
    query = QUERY.replace('password = "root"', 'password = "qu3ry-pw-77"')
    new_meta = config.set_join(meta, ["127.10.0.1:28004", "127.10.0.2:28004"])
    new_query = config.set_meta_endpoints(query, ["127.10.0.1:9191"])
    shown = config.unified_diff(meta, new_meta, "m") + config.unified_diff(query, new_query, "q")
    assert "join = " in shown and "127.10.0.1:9191" in shown
    for secret in ("raft-s3cr3t-9f2", "old-s3cr3t-11a", "qu3ry-pw-77"):
        assert secret not in shown
    assert 'password = "***"' in config.mask_secrets(query)


def test_a_diff_where_only_a_secret_changed_says_so_without_the_value() -> None:
    shown = config.unified_diff('password = "a1"\n', 'password = "b2"\n', "q")
    assert "only secret values differ" in shown and "a1" not in shown and "b2" not in shown
