"""The silent-voter record cluster-check keeps between runs, and the replacement proposal it renders
(metascale/silence.py, pure)."""

from __future__ import annotations

import json
import shlex
from datetime import datetime, timedelta, timezone

import pytest

from metascale.silence import (
    Proposal,
    SilentVoter,
    due_for_proposal,
    duration_text,
    iso,
    mark_proposed,
    proposal_markdown,
    record_from_json,
    record_to_json,
    replace_cli_command,
    update_record,
    variable_name,
)

T0 = datetime(2026, 11, 28, 2, 0, 0, tzinfo=timezone.utc)


def later(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_the_first_silence_is_kept_until_the_voter_answers_again() -> None:
    first = update_record({}, [3], T0)
    second = update_record(first, [3, 2], later(60))
    third = update_record(second, [2], later(120))   # meta-3 answers again: forgotten
    fourth = update_record(third, [2, 3], later(180))  # a new episode for meta-3

    assert first == {3: SilentVoter(since=T0)}
    assert second == {2: SilentVoter(since=later(60)), 3: SilentVoter(since=T0)}
    assert third == {2: SilentVoter(since=later(60))}
    assert fourth[3].since == later(180) and fourth[2].since == later(60)
    assert update_record(fourth, [], later(240)) == {}


def test_a_voter_is_due_once_silent_for_the_threshold() -> None:
    record = update_record(update_record({}, [3], T0), [3, 1], later(200))

    assert due_for_proposal(record, later(299), 300) == []
    assert due_for_proposal(record, later(300), 300) == [3]   # the threshold itself is enough
    assert due_for_proposal(record, later(500), 300) == [1, 3]
    assert due_for_proposal(record, later(200), 0) == [1, 3]


def test_an_episode_is_proposed_once_and_a_new_episode_again() -> None:
    record = mark_proposed(update_record({}, [3], T0), [3], later(300))
    again = mark_proposed(update_record(record, [3], later(400)), [3], later(400))
    after_recovery = update_record(update_record(again, [], later(500)), [3], later(600))

    assert record[3].proposed_at == later(300)
    assert again[3] == SilentVoter(since=T0, proposed_at=later(300)), "the first proposal time is kept"
    assert after_recovery[3] == SilentVoter(since=later(600))


def test_the_record_round_trips_through_json_and_damaged_entries_are_dropped() -> None:
    record = mark_proposed(update_record({}, [3, 2], T0), [3], later(300))

    stored = json.loads(json.dumps(record_to_json(record)))

    assert stored == {"2": {"since": "2026-11-28T02:00:00Z", "proposed_at": None},
                      "3": {"since": "2026-11-28T02:00:00Z", "proposed_at": "2026-11-28T02:05:00Z"}}
    assert record_from_json(stored) == record
    damaged = {**stored, "x": {"since": "2026-11-28T02:00:00Z"}, "4": {"since": "yesterday"},
               "5": {"since": "2026-11-28T02:00:00"}, "6": "silent"}  # not an id, not a time, no zone, not a map
    assert record_from_json(damaged) == record
    assert record_from_json(None) == {} and record_from_json([1, 2]) == {}
    assert record_from_json({"3": {"since": "2026-11-28T03:00:00+01:00"}})[3].since == T0, "kept as UTC"


@pytest.mark.parametrize(("seconds", "text"), [(0, "0 s"), (45.9, "45 s"), (312, "5 min 12 s"),
                                               (7500, "2 h 5 min"), (3 * 86400 + 4 * 3600 + 5, "3 d 4 h"),
                                               (-3, "0 s")])
def test_duration_text(seconds: float, text: str) -> None:
    assert duration_text(seconds) == text


def test_names_and_times() -> None:
    assert variable_name("lab") == "metascale-silent-lab"
    assert iso(datetime(2026, 11, 28, 3, 0, 0, 123456, tzinfo=timezone(timedelta(hours=1)))) == "2026-11-28T02:00:00Z"


def test_the_cli_command_starts_replace_node_with_approval_and_reads_back_as_the_parameters() -> None:
    proposal = Proposal(node_id=3, host="127.100.0.13", since=T0, new_host="127.100.0.14")
    params = proposal.parameters("/srv/metascale/lab inventory.toml", "")

    command = replace_cli_command(params)

    assert command.startswith("prefect deployment run 'replace-node/replace-node' --param node_id=3 "
                              "--param new_host=127.100.0.14 ")
    assert command.endswith(" --param require_approval=true")
    argv = shlex.split(command)
    pairs = dict(argv[i + 1].split("=", 1) for i, word in enumerate(argv) if word == "--param")
    assert pairs == {"node_id": "3", "new_host": "127.100.0.14", "inventory": "/srv/metascale/lab inventory.toml",
                     "require_approval": "true"}


def test_a_block_name_the_cli_would_read_as_a_number_is_given_as_a_json_string() -> None:
    params = Proposal(node_id=2, host="", since=T0, new_host="127.100.0.15").parameters("", "123")

    assert params == {"node_id": 2, "new_host": "127.100.0.15", "cluster_block": "123", "require_approval": True}
    assert "--param 'cluster_block=\"123\"'" in replace_cli_command(params)


def test_the_proposal_names_node_since_spare_command_and_rest_call() -> None:
    proposal = Proposal(node_id=3, host="127.100.0.13", since=T0, new_host="127.100.0.14")

    text = proposal_markdown("lab", [proposal], later(3900), 300, inventory="", cluster_block="lab",
                             api_url="http://127.0.0.1:4200/api", deployment_id="d-1",
                             ui_url="http://127.0.0.1:4200", proposed_now=[3])

    assert "# Replace proposal for cluster `lab`" in text
    assert "## meta-3 (127.100.0.13)" in text
    assert "silent since **2026-11-28T02:00:00Z** (for 1 h 5 min)" in text
    assert "would be replaced by spare **127.100.0.14**" in text
    assert ("prefect deployment run 'replace-node/replace-node' --param node_id=3 --param new_host=127.100.0.14 "
            "--param cluster_block=lab --param require_approval=true") in text
    assert "POST http://127.0.0.1:4200/api/deployments/d-1/create_flow_run" in text
    body = json.loads(text.split("Content-Type: application/json\n\n", 1)[1].split("\n", 1)[0])
    assert body == {"parameters": {"node_id": 3, "new_host": "127.100.0.14", "cluster_block": "lab",
                                   "require_approval": True}}
    assert "(http://127.0.0.1:4200/deployments/deployment/d-1)" in text
    assert "event `metascale.replace-node.proposed` sent now" in text


def test_without_a_spare_or_a_deployment_the_proposal_says_so() -> None:
    proposal = Proposal(node_id=3, host="127.100.0.13", since=T0, no_spare="no free spare in the spare pool")

    text = proposal_markdown("lab", [proposal], later(400), 300, inventory="/srv/lab.toml", cluster_block="",
                             api_url="http://127.0.0.1:4200/api")
    deployed = proposal_markdown("lab", [proposal], later(400), 300, inventory="/srv/lab.toml", cluster_block="",
                                 api_url="http://127.0.0.1:4200/api", deployment_id="d-1")

    assert "**no spare** to replace it: no free spare in the spare pool" in text and "name a host" in text
    assert "--param 'new_host=<HOST>'" in text and "--param inventory=/srv/lab.toml" in text
    assert "create_flow_run" not in text and "is not on this server" in text
    assert "sent now" not in text
    assert '"new_host": "<HOST>"' in deployed and "is not on this server" not in deployed
