"""Parsing `databend-metactl status` of every known format, reading it over a (fake) remote, cluster predicates."""

from __future__ import annotations

from pathlib import Path

import pytest

from metascale.errors import MetaUnreachable, RemoteCommandError, StatusParseError
from metascale.inventory import MetaNode, parse_inventory
from metascale.status import (
    ClusterStatus,
    NodeProbe,
    parse_admin_status,
    parse_log_id,
    parse_metactl_status,
    read_admin_status,
    read_cluster_status,
    read_node_status,
)
from tests.unit.fakes import LAB_SECRET, FakePool, FakeRemote, metactl_status_text, own_ip_meta_config

SAMPLES = Path(__file__).parent.parent / "fixtures" / "metactl_status"

# file -> (node_id, state, leader_id, voter_ids, non_voter_ids, term, last_log_index, last_applied index,
#          replication, lagging)
EXPECTED = {
    "newest_leader.txt": (1, "Leader", 1, [1, 2, 3], [], 3, 812, 812, {1: 812, 2: 812, 3: 790}, [3]),
    "newest_follower_with_learner.txt": (2, "Follower", 1, [1, 2, 3], [4], 3, 812, 812, {}, []),
    "newest_candidate_no_leader.txt": (3, "Candidate", None, [1, 2, 3], [], 9, 30, 30, {}, []),
    "newest_learner_midjoin.txt": (4, "Learner", 1, [1], [4], 2, 0, 0, {}, []),
    "v1.2.660_leader.txt": (2, "Leader", 2, [2, 3], [], 5, 77, 77, {2: 77, 3: 77}, []),
    "v1.2.640_follower.txt": (3, "Follower", 1, [1, 2, 3], [], 4, 120, 120, {}, []),
    "v1.2.500_follower.txt": (2, "Follower", 1, [1, 2], [], 2, 210, 210, {}, []),
    "v1.2.410_leader.txt": (1, "Leader", 1, [1, 2, 3], [], 1, 200, 200, {1: 200, 2: 200, 3: 198}, [3]),
}


def test_every_sample_file_has_an_expectation() -> None:
    assert sorted(p.name for p in SAMPLES.glob("*.txt")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parse_sample(name: str) -> None:
    node_id, state, leader, voters, learners, term, last_log, applied, replication, lagging = EXPECTED[name]
    status = parse_metactl_status((SAMPLES / name).read_text())
    assert status.node_id == node_id
    assert status.state == state
    assert status.leader_id == leader
    assert status.voter_ids == voters
    assert status.non_voter_ids == learners
    assert status.term == term
    assert status.last_log_index == last_log
    assert status.last_applied_index == applied
    assert status.replication == replication
    assert status.lagging_ids == lagging


def test_newest_leader_records_addresses_and_version() -> None:
    status = parse_metactl_status((SAMPLES / "newest_leader.txt").read_text())
    assert status.raft_addr == "127.16.125.128:28004"
    assert status.leader_raft_addr == "127.16.125.128:28004"
    assert status.voters[2].grpc_addr == "127.16.125.130:9191"
    assert status.binary_version == "260304.0.0"
    assert status.data_version == "V004"
    assert status.is_leader


def test_voter_without_grpc_address_has_empty_grpc() -> None:
    status = parse_metactl_status((SAMPLES / "newest_follower_with_learner.txt").read_text())
    assert status.voters[2].grpc_addr == ""
    assert status.voters[2].raft_addr == "127.16.125.130:28004"


def test_midjoin_node_line_with_empty_raft() -> None:
    status = parse_metactl_status((SAMPLES / "newest_learner_midjoin.txt").read_text())
    assert status.raft_addr == ""


def test_unknown_lines_and_unordered_replication_are_tolerated() -> None:
    text = (SAMPLES / "newest_leader.txt").read_text()
    text = "FutureField: 7\n" + text.replace("Voters:", "SomethingNew:\n  - whatever\nVoters:")
    status = parse_metactl_status(text)
    assert status.voter_ids == [1, 2, 3]
    assert status.replication == {1: 812, 2: 812, 3: 790}


def test_old_log_id_formats() -> None:
    assert parse_log_id("1-1-200").index == 200  # type: ignore[union-attr]
    assert parse_log_id("T3-N2.77").node_id == 2  # type: ignore[union-attr]
    assert parse_log_id("garbage") is None


@pytest.mark.parametrize(
    "text",
    ["", "Error: ConnectionError: cannot connect to http://127.0.0.1:9191", "\x00\xff" * 40,
     "Node: id=x\nState: Leader\nCurrentTerm: 1", "Node: id=1 raft=a:1\nState: Boss\nCurrentTerm: 1",
     "Node: id=1 raft=a:1\nState: Leader\nCurrentTerm: zz", "Usage: databend-metactl <COMMAND>\n"],
)
def test_garbage_raises_status_parse_error(text: str) -> None:
    with pytest.raises(StatusParseError):
        parse_metactl_status(text)


def test_admin_status_json() -> None:
    status = parse_admin_status((SAMPLES / "admin_status_newest.json").read_text())
    assert (status.node_id, status.state, status.leader_id, status.term) == (1, "Leader", 1, 3)
    assert status.voter_ids == [1, 2, 3]
    assert status.replication == {1: 40, 2: 40}
    assert status.voters[2].grpc_addr == ""


def test_admin_status_garbage() -> None:
    with pytest.raises(StatusParseError):
        parse_admin_status("<html>404</html>")


NODE = MetaNode(node_id=2, host="127.10.0.2", grpc_port=9292)
META_PATH = "/etc/databend/databend-meta.toml"
ADMIN_JSON = (SAMPLES / "admin_status_newest.json").read_text()
REFUSED = "Error: ConnectionError: cannot connect to http://127.10.0.2:9292: transport error\n"


def own_ip_node(**kwargs: object) -> FakeRemote:
    """meta-2 bound to its own IP (gRPC on 9292, admin on 28012), as on the strict lab."""
    text = own_ip_meta_config("127.10.0.2", 2, grpc_port=9292, admin_port=28012, **kwargs)  # type: ignore[arg-type]
    return FakeRemote(host="127.10.0.2", files={META_PATH: text})


def test_read_node_status_asks_the_grpc_address_of_the_nodes_own_config_from_a_private_dir() -> None:
    remote = own_ip_node()
    remote.on(["databend-metactl"], stdout=metactl_status_text(2))
    status = read_node_status(remote, NODE)
    assert remote.commands == [["databend-metactl", "status", "--grpc-api-address", "127.10.0.2:9292"]]
    assert remote.cwds == [remote.tmpdir] and remote.tmpdir != "/tmp"  # metactl writes ./.databend/logs there
    assert status.node_id == 2 and status.leader_id == 1 and status.read_via == "metactl"
    read_node_status(remote, NODE)
    assert remote.reads == [META_PATH]  # the config is read once per connection


def test_read_node_status_asks_loopback_when_the_node_binds_the_wildcard() -> None:
    packaged = (Path(__file__).parent.parent / "fixtures" / "configs" / "databend-meta.toml").read_text()
    remote = FakeRemote(host="127.10.0.2", files={META_PATH: packaged})
    remote.on(["databend-metactl"], stdout=metactl_status_text(2))
    read_node_status(remote, NODE)
    assert remote.commands == [["databend-metactl", "status", "--grpc-api-address", "127.0.0.1:9191"]]


def test_a_rewritten_config_is_read_again() -> None:
    remote = own_ip_node()
    remote.on(["databend-metactl"], stdout=metactl_status_text(2))
    read_node_status(remote, NODE)
    remote.write_text_atomic(META_PATH, own_ip_meta_config("127.10.0.2", 2, grpc_port=9393))
    read_node_status(remote, NODE)
    assert remote.commands[-1][-1] == "127.10.0.2:9393" and remote.reads == [META_PATH, META_PATH]


def test_read_node_status_refused_is_meta_unreachable_with_metactls_error() -> None:
    remote = own_ip_node()
    remote.on(["databend-metactl"], exit_code=1, stderr=REFUSED)
    remote.on(["curl"], exit_code=7, stderr="curl: (7) Failed to connect to 127.10.0.2 port 28012")
    with pytest.raises(MetaUnreachable, match="cannot connect"):
        read_node_status(remote, NODE)


def test_read_node_status_timeout_is_meta_unreachable() -> None:
    remote = own_ip_node()
    remote.on(["databend-metactl"], timeout=True)
    with pytest.raises(MetaUnreachable, match="timed out"):
        read_node_status(remote, NODE, timeout_s=0.5)


def test_read_node_status_missing_binary_is_a_hard_error() -> None:
    remote = own_ip_node()
    remote.on(["databend-metactl"], exit_code=127, stderr="sh: databend-metactl: not found")
    with pytest.raises(RemoteCommandError) as info:
        read_node_status(remote, NODE)
    assert not isinstance(info.value, MetaUnreachable) and info.value.exit_code == 127


def test_read_node_status_without_a_readable_config_is_a_hard_error() -> None:
    remote = FakeRemote(host="127.10.0.2")
    with pytest.raises(RemoteCommandError, match="No such file"):
        read_node_status(remote, NODE)
    assert remote.ran("databend-metactl") == []  # never guesses 127.0.0.1


def test_read_admin_status_curls_the_configured_admin_address_on_the_node() -> None:
    remote = own_ip_node()
    remote.on(["curl"], stdout=ADMIN_JSON)
    assert read_admin_status(remote, NODE).leader_id == 1
    assert remote.commands[0][-1] == "http://127.10.0.2:28012/v1/cluster/status"
    remote.on(["curl"], exit_code=7, stderr="curl: (7) Failed to connect")
    with pytest.raises(MetaUnreachable):
        read_admin_status(remote, NODE)


def test_grpc_tls_in_the_config_reads_the_admin_api_and_never_runs_metactl() -> None:
    remote = own_ip_node(extra_top='grpc_tls_server_cert = "/etc/databend/tls.pem"\n'
                                   'admin_tls_server_cert = "/etc/databend/tls.pem"\n')
    remote.on(["curl"], stdout=ADMIN_JSON)
    status = read_node_status(remote, NODE)
    assert status.read_via == "admin" and status.leader_id == 1
    assert remote.ran("databend-metactl") == []
    assert remote.commands == [["curl", "-sS", "--fail", "--max-time", "10", "-k",
                                "https://127.10.0.2:28012/v1/cluster/status"]]


def test_metactl_transport_error_while_admin_answers_falls_back_to_the_admin_api() -> None:
    remote = own_ip_node()
    remote.on(["databend-metactl"], exit_code=1, stderr="Error: h2 protocol error: transport error\n")
    remote.on(["curl"], stdout=ADMIN_JSON)
    status = read_node_status(remote, NODE)
    assert status.read_via == "admin" and status.voter_ids == [1, 2, 3]
    assert remote.ran("curl")[0][-1] == "http://127.10.0.2:28012/v1/cluster/status"


def _cluster(*probes: tuple[int, str | None, int | None, list[int]]) -> ClusterStatus:
    out = []
    for node_id, state, leader, voters in probes:
        if state is None:
            out.append(NodeProbe(node_id=node_id, host=f"127.10.0.{node_id}", error="down", error_type="MetaUnreachable"))
        else:
            text = metactl_status_text(node_id, state, leader, voters)
            out.append(NodeProbe(node_id=node_id, host=f"127.10.0.{node_id}", status=parse_metactl_status(text)))
    return ClusterStatus(cluster="lab", probes=out)


def test_healthy_cluster_predicates() -> None:
    c = _cluster((1, "Leader", 1, [1, 2, 3]), (2, "Follower", 1, [1, 2, 3]), (3, "Follower", 1, [1, 2, 3]))
    assert c.leader_id == 1 and c.voter_ids == [1, 2, 3] and c.answering_ids == [1, 2, 3]
    assert c.agrees_on_membership()
    assert c.removal_blocked_reason(3) is None
    assert c.stable_reason([1, 2, 3]) is None
    assert c.addition_blocked_reason(4) is None
    assert "already a member" in (c.addition_blocked_reason(2) or "")


def test_no_majority_leader_blocks_removal() -> None:
    c = _cluster((1, "Candidate", None, [1, 2, 3]), (2, "Follower", 3, [1, 2, 3]), (3, None, None, []))
    assert c.leader_id is None
    assert "no leader" in (c.removal_blocked_reason(2) or "")


def test_removal_blocked_when_remaining_voters_lack_a_majority() -> None:
    c = _cluster((1, "Leader", 1, [1, 2, 3]), (2, None, None, []), (3, "Follower", 1, [1, 2, 3]))
    assert c.removal_blocked_reason(2) is None  # removing the dead one leaves 1 and 3, both answering
    assert "majority" in (c.removal_blocked_reason(3) or "")
    assert c.unreachable_ids == [2]


def test_only_voter_cannot_be_removed() -> None:
    c = _cluster((1, "Leader", 1, [1]))
    assert "only voter" in (c.removal_blocked_reason(1) or "")


def test_disagreement_is_not_stable() -> None:
    c = _cluster((1, "Leader", 1, [1, 2, 3]), (2, "Follower", 1, [1, 2]), (3, "Follower", 1, [1, 2, 3]))
    assert not c.agrees_on_membership()
    assert "disagree" in (c.stable_reason([1, 2, 3]) or "")


INVENTORY = parse_inventory(
    'name = "lab"\n[ssh]\nprivate_key_file = "/k"\nknown_hosts_file = "/kh"\n'
    + "".join(f'[[meta]]\nid = {i}\nhost = "127.10.0.{i}"\n' for i in (1, 2, 3))
)


def _pool(broken: dict[str, Exception] | None = None) -> FakePool:
    pool = FakePool(broken=broken or {})
    for i in (1, 2, 3):
        if f"127.10.0.{i}" not in pool.broken:
            pool.remote(f"127.10.0.{i}").files[META_PATH] = own_ip_meta_config(f"127.10.0.{i}", i)
    return pool


def test_read_cluster_status_records_answers_and_errors() -> None:
    pool = _pool(broken={"127.10.0.3": MetaUnreachable("127.10.0.3", 3, "refused")})
    for i, state in ((1, "Leader"), (2, "Follower")):
        pool.remote(f"127.10.0.{i}").on(["databend-metactl"], stdout=metactl_status_text(i, state))
    cluster = read_cluster_status(pool, INVENTORY)
    assert cluster.answering_ids == [1, 2]
    assert cluster.unreachable_ids == [3]
    probe = cluster.probe(3)
    assert probe is not None and probe.error_type == "MetaUnreachable" and "refused" in (probe.error or "")
    assert cluster.leader_id == 1
    assert pool.remote("127.10.0.1").ran("databend-metactl") == [
        ["databend-metactl", "status", "--grpc-api-address", "127.10.0.1:9191"]]


def test_read_cluster_status_keeps_unexpected_errors_per_node() -> None:
    pool = _pool(broken={"127.10.0.2": RuntimeError("paramiko internals")})
    for i in (1, 3):
        pool.remote(f"127.10.0.{i}").on(["databend-metactl"], stdout=metactl_status_text(i, "Leader" if i == 1 else "Follower"))
    cluster = read_cluster_status(pool, INVENTORY)
    assert cluster.unreachable_ids == [2] and cluster.probe(2).error_type == "RuntimeError"  # type: ignore[union-attr]
    assert cluster.removal_blocked_reason(3) is not None  # 1 of the remaining [1, 2] answers: no majority


def test_the_tls_note_comes_once_per_host_per_connection() -> None:
    pool = _pool()
    tls = 'grpc_tls_server_cert = "/etc/databend/tls.pem"\n'
    pool.remote("127.10.0.2").files[META_PATH] = own_ip_meta_config("127.10.0.2", 2, extra_top=tls)
    for i in (1, 2, 3):
        pool.remote(f"127.10.0.{i}").on(["databend-metactl"], stdout=metactl_status_text(i))
    pool.remote("127.10.0.2").on(["curl"], stdout=ADMIN_JSON)
    first, second = read_cluster_status(pool, INVENTORY), read_cluster_status(pool, INVENTORY)
    notes = [p.note for c in (first, second) for p in c.probes if p.note]
    assert notes == ["gRPC on 127.10.0.2 uses TLS; reading status from the admin API /v1/cluster/status"]
    assert first.answering_ids == [1, 2, 3] and pool.remote("127.10.0.2").ran("databend-metactl") == []


def test_a_status_read_never_carries_the_raft_secret() -> None:
    pool = _pool()
    for i in (1, 2, 3):
        pool.remote(f"127.10.0.{i}").on(["databend-metactl"], exit_code=1, stderr=REFUSED)
        pool.remote(f"127.10.0.{i}").on(["curl"], exit_code=7, stderr="curl: (7) refused")
    cluster = read_cluster_status(pool, INVENTORY)
    assert cluster.unreachable_ids == [1, 2, 3]
    assert LAB_SECRET not in cluster.model_dump_json()
    assert all(LAB_SECRET not in " ".join(c) for r in pool.remotes.values() for c in r.commands)
