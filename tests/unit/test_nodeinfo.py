"""What metascale reads from a node itself (metascale.nodeinfo): its own config (once per connection), the
service's user, the databend-meta version and the oldest supported one, and host name resolution."""

from __future__ import annotations

import pytest

from metascale import nodeinfo
from metascale.errors import ConfigEditError, PlanRefused, RemoteCommandError
from metascale.inventory import parse_inventory
from tests.unit.fakes import LAB_SECRET, FakeRemote, own_ip_meta_config

META_PATH = "/etc/databend/databend-meta.toml"
INV = parse_inventory('name = "lab"\n[ssh]\nprivate_key_file = "/k"\nknown_hosts_file = "/kh"\n'
                      '[paths]\nmeta_config = "/opt/meta/meta.toml"\n[[meta]]\nid = 1\nhost = "127.10.0.1"\n')


def test_read_node_config_reads_the_inventory_path_once_and_again_after_a_rewrite() -> None:
    remote = FakeRemote(host="127.10.0.1", files={"/opt/meta/meta.toml": own_ip_meta_config("127.10.0.1", 1)})
    facts = nodeinfo.read_node_config(remote, INV)
    assert facts.grpc_probe_address == "127.10.0.1:9191" and facts.raft_secret_set
    assert nodeinfo.read_node_config(remote, INV) is facts and remote.reads == ["/opt/meta/meta.toml"]
    remote.write_text_atomic("/opt/meta/meta.toml", own_ip_meta_config("127.10.0.1", 1, admin_port=28099))
    assert nodeinfo.read_node_config(remote, INV).admin_probe_address == "127.10.0.1:28099"
    assert LAB_SECRET not in repr(facts) and LAB_SECRET not in str(remote.cache)


def test_read_node_config_of_a_broken_file_names_the_host() -> None:
    remote = FakeRemote(host="127.10.0.1", files={META_PATH: "id = = 1"})
    with pytest.raises(ConfigEditError) as info:
        nodeinfo.read_node_config(remote)
    assert info.value.host == "127.10.0.1" and META_PATH in str(info.value)


def test_service_user_comes_from_the_unit_and_defaults_to_root() -> None:
    remote = FakeRemote()
    remote.on(["systemctl", "show"], stdout="databend\n")
    assert nodeinfo.read_service_user(remote, "databend-meta") == "databend"
    assert nodeinfo.read_service_user(remote, "databend-meta") == "databend"
    assert remote.commands == [["systemctl", "show", "-p", "User", "--value", "databend-meta"]]
    other = FakeRemote()
    other.on(["systemctl", "show"], stdout="\n")
    assert nodeinfo.read_service_user(other, "databend-meta") == "root"
    odd = FakeRemote()
    odd.on(["systemctl", "show"], stdout="a b\n")
    with pytest.raises(RemoteCommandError, match="not a user name"):
        nodeinfo.read_service_user(odd, "databend-meta")


@pytest.mark.parametrize(("text", "expected"), [
    ("version: 1.2.934-nightly\nmin-compatible-client-version: 1.2.288\n", (1, 2, 934)),
    ("version: v1.2.600\n", (1, 2, 600)),
    ("version: 260629.2.0\ndata-version: V004\n", (260629, 2, 0)),
    ("Databend Meta Service\n", None),
    ("", None),
])
def test_parse_meta_version(text: str, expected: tuple[int, int, int] | None) -> None:
    assert nodeinfo.parse_meta_version(text) == expected


@pytest.mark.parametrize(("version", "supported"), [
    ((1, 2, 611), False), ((1, 2, 612), True), ((1, 2, 934), True), ((1, 1, 999), False), ((0, 9, 0), False),
    ((260629, 2, 0), True), ((260304, 0, 0), True),
])
def test_oldest_supported_version_is_1_2_612_and_date_versions_are_newer(version: tuple[int, int, int],
                                                                        supported: bool) -> None:
    assert nodeinfo.is_supported_version(version) is supported


def test_an_old_databend_meta_is_refused_with_version_and_host() -> None:
    remote = FakeRemote(host="127.10.0.14")
    remote.on(["databend-meta", "--cmd", "ver"], stdout="version: 1.2.600\nmin-compatible-client-version: 1.2.288\n")
    with pytest.raises(PlanRefused) as info:
        nodeinfo.check_supported_version(remote)
    assert info.value.reason == ("databend-meta 1.2.600 on 127.10.0.14 is older than 1.2.612, the oldest "
                                 "metascale supports")
    with pytest.raises(PlanRefused):
        nodeinfo.check_supported_version(remote)
    assert remote.ran("databend-meta") == [["databend-meta", "--cmd", "ver"]]  # read once per connection
    assert remote.cwds == [remote.tmpdir]


def test_a_supported_version_passes_and_a_missing_binary_is_left_to_the_package_check() -> None:
    new = FakeRemote()
    new.on(["databend-meta"], stdout="version: 260629.2.0\n")
    assert nodeinfo.check_supported_version(new) == "260629.2.0"
    missing = FakeRemote()
    missing.on(["databend-meta"], exit_code=127, stderr="sh: 1: databend-meta: not found")
    assert nodeinfo.check_supported_version(missing) is None


def test_unreadable_version_output_is_refused_with_what_was_printed() -> None:
    remote = FakeRemote(host="127.10.0.2")
    remote.on(["databend-meta"], exit_code=1, stderr="Invalid cmd: ver")
    with pytest.raises(PlanRefused, match="cannot read the databend-meta version on 127.10.0.2.*Invalid cmd"):
        nodeinfo.read_meta_version(remote)


def test_an_ip_literal_needs_no_resolution() -> None:
    remote = FakeRemote()
    assert nodeinfo.resolve_host_address(remote, "192.0.2.5") == "192.0.2.5"
    assert nodeinfo.resolve_host_address(remote, "fd00::5") == "fd00::5"
    assert remote.commands == []


def test_a_host_name_resolves_once_on_an_existing_node() -> None:
    remote = FakeRemote(host="127.10.0.1")
    remote.on(["getent", "ahosts", "spare.example"],
              stdout="192.0.2.5       STREAM spare.example\n192.0.2.5       DGRAM  \n192.0.2.5       RAW    \n")
    assert nodeinfo.resolve_host_address(remote, "spare.example") == "192.0.2.5"
    assert remote.commands == [["getent", "ahosts", "spare.example"]]


def test_a_name_that_does_not_resolve_or_resolves_to_several_addresses_is_refused() -> None:
    remote = FakeRemote(host="127.10.0.1")
    remote.on(["getent", "ahosts", "nowhere.example"], exit_code=2)
    with pytest.raises(PlanRefused, match="'nowhere.example' does not resolve on 127.10.0.1"):
        nodeinfo.resolve_host_address(remote, "nowhere.example")
    remote.on(["getent", "ahosts", "multi.example"],
              stdout="192.0.2.5 STREAM multi.example\nfd00::5 STREAM multi.example\n")
    with pytest.raises(PlanRefused, match=r"several addresses on 127.10.0.1 \(192.0.2.5, fd00::5\)"):
        nodeinfo.resolve_host_address(remote, "multi.example")


# ---- the task wrappers (tasks/runbook.py) over a FakePool registered as the "local" run's pool ------------------
def _fake_pool_inventory() -> tuple[object, object]:
    from tasks import pool as pool_module
    from tasks.pool import register_pool
    from tests.unit.fakes import FakePool

    inv = parse_inventory('name = "lab"\n[ssh]\nprivate_key_file = "/k"\nknown_hosts_file = "/kh"\n'
                          + "".join(f'[[meta]]\nid = {i}\nhost = "127.10.0.{i}"\n' for i in (1, 2, 3)))
    fake = FakePool()
    register_pool(fake, "local")  # type: ignore[arg-type]
    return fake, (inv, pool_module)


def test_check_meta_versions_refuses_the_old_host_and_reads_each_once() -> None:
    from tasks import runbook as rb

    fake, (inv, pool_module) = _fake_pool_inventory()
    try:
        for i in (1, 2, 3):
            fake.remote(f"127.10.0.{i}").on(["databend-meta"], stdout="version: 1.2.934-nightly\n")  # type: ignore[attr-defined]
            fake.remote(f"127.10.0.{i}").files[inv.paths.meta_config] = own_ip_meta_config(f"127.10.0.{i}", i)  # type: ignore[attr-defined]
        fake.remote("127.10.0.14").on(["databend-meta"], stdout="version: 1.2.611\n")  # type: ignore[attr-defined]
        hosts = [f"127.10.0.{i}" for i in (1, 2, 3)]
        assert rb.check_meta_versions.fn(inv, hosts) == {h: "1.2.934-nightly" for h in hosts}
        with pytest.raises(PlanRefused, match="databend-meta 1.2.611 on 127.10.0.14 is older than 1.2.612"):
            rb.check_meta_versions.fn(inv, [*hosts, "127.10.0.14"])
        assert fake.remote("127.10.0.1").ran("databend-meta") == [["databend-meta", "--cmd", "ver"]]  # type: ignore[attr-defined]
        # a member whose own config is not a meta config is refused by name, not taken for a dead node
        fake.remote("127.10.0.2").files[inv.paths.meta_config] = "[raft]\nid = 2\n"  # type: ignore[attr-defined]
        fake.remote("127.10.0.2").cache.clear()  # type: ignore[attr-defined]
        with pytest.raises(ConfigEditError, match="127.10.0.2:.*cannot edit config: no \\[raft_config\\] table"):
            rb.check_meta_versions.fn(inv, hosts)
    finally:
        pool_module._POOLS.pop("local", None)  # type: ignore[attr-defined]


def test_resolve_new_hosts_turns_a_name_into_its_ip_with_a_plan_note() -> None:
    from metascale.plan import NewNodeSpec
    from tasks import runbook as rb

    fake, (inv, pool_module) = _fake_pool_inventory()
    try:
        fake.remote("127.10.0.1").on(["getent", "ahosts", "spare.example"],  # type: ignore[attr-defined]
                                     stdout="192.0.2.5 STREAM spare.example\n")
        specs, notes = rb.resolve_new_hosts.fn(inv, [NewNodeSpec(host="spare.example"), NewNodeSpec(host="192.0.2.6")])
        assert [s.host for s in specs] == ["192.0.2.5", "192.0.2.6"]
        assert len(notes) == 1 and notes[0].startswith("spare.example → 192.0.2.5")
    finally:
        pool_module._POOLS.pop("local", None)  # type: ignore[attr-defined]
