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
