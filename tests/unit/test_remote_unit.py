"""Remote execution without a network: quoting, ProxyCommand expansion, key loading, connect retry policy,
CommandResult, and every error surviving a pickle round trip."""

from __future__ import annotations

import pickle
import shlex
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from tenacity import wait_none

from metascale import errors, remote
from metascale.errors import HostKeyRejected, HostUnreachable, InventoryError, RemoteCommandError, SshAuthFailed
from metascale.inventory import SshSettings, SshTarget
from metascale.remote import CommandResult, ParamikoRemote, SshPool, load_private_key, substitute_proxy_command


def openssh_key(kind: str) -> str:
    key = {"ed25519": ed25519.Ed25519PrivateKey.generate, "rsa": lambda: rsa.generate_private_key(65537, 2048),
           "ecdsa": lambda: ec.generate_private_key(ec.SECP256R1())}[kind]()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                             serialization.NoEncryption()).decode()


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "id_ed25519"
    path.write_text(openssh_key("ed25519"))
    return path


@pytest.fixture
def pool(key_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SshPool:
    monkeypatch.setattr(remote, "CONNECT_WAIT", wait_none())
    (tmp_path / "known_hosts").write_text("")
    settings = SshSettings(private_key_file=str(key_file), known_hosts_file=str(tmp_path / "known_hosts"))
    return SshPool(settings)


@pytest.mark.parametrize("kind", ["ed25519", "rsa", "ecdsa"])
def test_private_key_from_text(kind: str) -> None:
    assert isinstance(load_private_key(text=openssh_key(kind)), paramiko.PKey)


def test_bad_key_text_never_appears_in_the_error() -> None:
    secret = "-----BEGIN OPENSSH PRIVATE KEY-----\nTOPSECRETMATERIAL\n-----END OPENSSH PRIVATE KEY-----\n"
    with pytest.raises(InventoryError) as info:
        load_private_key(text=secret)
    assert "TOPSECRET" not in str(info.value) and "TOPSECRET" not in repr(info.value.args)


def test_pool_with_secret_name_needs_the_key_text(tmp_path: Path) -> None:
    settings = SshSettings(private_key_secret="lab-key", known_hosts_file=str(tmp_path / "kh"))
    with pytest.raises(InventoryError, match="lab-key"):
        SshPool(settings)
    assert SshPool(settings, private_key_text=openssh_key("ed25519")).handshakes == {}


def test_proxy_command_tokens_are_expanded_with_validated_values_only() -> None:
    target = SshTarget(host="127.10.0.1", port=22, user="ops", proxy_command=None)
    assert substitute_proxy_command("ip netns exec lab nc %h %p", target) == "ip netns exec lab nc 127.10.0.1 22"
    v6 = SshTarget(host="fd00::4", port=2222, user="ops", proxy_command=None)
    expanded = substitute_proxy_command("ssh -W [%h]:%p -l %r jump 100%%", v6)
    assert shlex.split(expanded) == ["ssh", "-W", "[fd00::4]:2222", "-l", "ops", "jump", "100%"]
    # issue #10: quoting does not protect a shell behind the proxy (ssh jump nc %h %p): bad values never get in,
    # also when a target was built without validation
    evil = SshTarget.model_construct(host="a b;c", port=2222, user="ops", proxy_command=None)
    with pytest.raises(InventoryError, match=r"'a b;c' is not a hostname"):
        substitute_proxy_command("ssh jump nc %h %p", evil)


def test_commands_are_quoted_with_sudo_timeout_and_cwd(pool: SshPool) -> None:
    target = SshTarget(host="127.10.0.1", port=22, user="ops", proxy_command=None)
    r = ParamikoRemote(pool, target)
    shown, sent = r.build_command(["cat", "/etc/x y; rm -rf /"], sudo=True, cwd="/tmp", timeout_s=5)
    assert shown == "cd /tmp && sudo -n cat '/etc/x y; rm -rf /'"
    assert sent == "cd /tmp && sudo -n timeout -k 2 6 cat '/etc/x y; rm -rf /'"
    with pytest.raises(TypeError):
        r.build_command("echo hi")  # type: ignore[arg-type]  # a string would be split into characters


def test_sudo_user_runs_the_command_as_that_user_with_the_timeout_backstop(pool: SshPool) -> None:
    r = ParamikoRemote(pool, SshTarget(host="127.10.0.1", port=22, user="ops", proxy_command=None))
    argv = ["databend-meta", "--config-file", "/etc/databend/databend-meta.toml", "--leave-id", "4",
            "--leave-via", "127.10.0.1:28004"]
    shown, sent = r.build_command(argv, cwd="/", timeout_s=60, sudo_user="databend")
    assert shown == ("cd / && sudo -n -u databend databend-meta --config-file /etc/databend/databend-meta.toml "
                     "--leave-id 4 --leave-via 127.10.0.1:28004")
    assert shlex.split(sent.removeprefix("cd / && ")) == ["sudo", "-n", "-u", "databend", "timeout", "-k", "2",
                                                         "61", *argv]
    with pytest.raises(ValueError, match="'x; rm' is not a user name"):
        r.build_command(["true"], sudo_user="x; rm")


def test_private_tmpdir_is_made_once_and_removed_at_close(pool: SshPool, monkeypatch: pytest.MonkeyPatch) -> None:
    r = ParamikoRemote(pool, SshTarget(host="127.10.0.1", port=22, user="ops", proxy_command=None))
    ran: list[list[str]] = []

    def fake_run(argv: list[str], **kwargs: object) -> CommandResult:
        ran.append(list(argv))
        out = "/tmp/metascale.Ab12Cd34Ef\n" if argv[0] == "mktemp" else ""
        return CommandResult(host=r.host, command=shlex.join(argv), exit_code=0, stdout=out, stderr="")

    class Live:
        def get_transport(self) -> object:
            return type("T", (), {"is_active": lambda self: True})()

        def close(self) -> None:
            ran.append(["<closed>"])

    monkeypatch.setattr(r, "run", fake_run)
    assert r.private_tmpdir() == r.private_tmpdir() == "/tmp/metascale.Ab12Cd34Ef"
    r.cache[("meta_config", "/etc/x")] = "facts"
    r._client = Live()  # type: ignore[assignment]
    r.close()
    assert ran == [["mktemp", "-d", "-t", "metascale.XXXXXXXXXX"], ["rm", "-rf", "--", "/tmp/metascale.Ab12Cd34Ef"],
                   ["<closed>"]]
    assert r.cache == {}


def test_no_sudo_prefix_when_inventory_says_sudo_false(key_file: Path, tmp_path: Path) -> None:
    settings = SshSettings(private_key_file=str(key_file), known_hosts_file=str(tmp_path / "kh"), sudo=False)
    r = ParamikoRemote(SshPool(settings), SshTarget(host="h", port=22, user="root", proxy_command=None))
    assert r.build_command(["systemctl", "start", "x"], sudo=True)[0] == "systemctl start x"


def _fail_then(pool: SshPool, monkeypatch: pytest.MonkeyPatch, failures: list[BaseException]) -> list[int]:
    calls: list[int] = []

    def connect_once(target: SshTarget) -> paramiko.SSHClient:
        calls.append(1)
        if failures:
            raise failures.pop(0)
        return paramiko.SSHClient()
    monkeypatch.setattr(pool, "_connect_once", connect_once)
    return calls


TARGET = SshTarget(host="127.10.0.7", port=22, user="ops", proxy_command=None)


def test_connect_retries_network_errors_and_counts_one_handshake(pool: SshPool, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fail_then(pool, monkeypatch, [ConnectionRefusedError("refused"), EOFError()])
    pool._open_client(TARGET)
    assert len(calls) == 3
    assert pool.handshakes == {"127.10.0.7": 1}


def test_connect_gives_up_as_host_unreachable(pool: SshPool, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fail_then(pool, monkeypatch, [OSError("no route")] * 5)
    with pytest.raises(HostUnreachable, match=r"127\.10\.0\.7: .*no route.*gave up after"):
        pool._open_client(TARGET)
    assert len(calls) == 3 and pool.handshakes == {}


def test_auth_failure_is_never_retried(pool: SshPool, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fail_then(pool, monkeypatch, [paramiko.AuthenticationException("Authentication failed.")])
    with pytest.raises(SshAuthFailed, match="127.10.0.7"):
        pool._open_client(TARGET)
    assert len(calls) == 1


def test_changed_host_key_is_never_retried_and_shows_fingerprint(pool: SshPool, monkeypatch: pytest.MonkeyPatch) -> None:
    got = load_private_key(text=openssh_key("ed25519"))
    expected = load_private_key(text=openssh_key("ed25519"))
    calls = _fail_then(pool, monkeypatch, [paramiko.BadHostKeyException("127.10.0.7", got, expected)])
    with pytest.raises(HostKeyRejected) as info:
        pool._open_client(TARGET)
    assert len(calls) == 1
    assert got.fingerprint.startswith("SHA256:") and got.fingerprint in str(info.value)
    assert "127.10.0.7" in str(info.value)


def test_unknown_host_key_policy_names_the_fingerprint() -> None:
    key = load_private_key(text=openssh_key("ed25519"))
    with pytest.raises(HostKeyRejected, match="not in known_hosts") as info:
        remote._RejectUnknownHost().missing_host_key(paramiko.SSHClient(), "127.10.0.8", key)
    assert key.fingerprint in str(info.value)


def test_command_result() -> None:
    ok = CommandResult(host="h", command="true", exit_code=0, stdout="a\n", stderr="")
    assert ok.ok and ok.raise_for_status() is ok
    bad = CommandResult(host="h", command="false", exit_code=2, stdout="",
                        stderr="".join(f"line {i}\n" for i in range(20)))
    assert bad.tail(2) == "line 18\nline 19"
    with pytest.raises(RemoteCommandError) as info:
        bad.raise_for_status()
    assert info.value.exit_code == 2 and "line 19" in str(info.value) and "line 9\n" not in str(info.value)
    assert "h: `false` exited 2" in str(info.value)


ERRORS = [
    errors.InventoryError("bad host", "inv.toml"),
    errors.PlanRefused("scale-down", "no leader"),
    errors.RemoteCommandError("h", "systemctl start x", 1, "boom"),
    errors.RemoteTimeout("h", "databend-meta --leave-id 3", 60.0, "", "leave hangs without quorum"),
    errors.HostUnreachable("h", "refused"),
    errors.SshAuthFailed("h", "denied"),
    errors.HostKeyRejected("h", "changed", "SHA256:abc"),
    errors.ConfigEditError("/etc/x.toml", "invalid TOML", "h"),
    errors.StatusParseError("no Node: line", "garbage", "h"),
    errors.MetaUnreachable("h", 3, "refused"),
    errors.ClusterNotConverged("voters [1, 2]", "voters [1, 2, 3]", 60.0),
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_every_error_pickles_and_keeps_its_message(error: errors.MetaScaleError) -> None:
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is type(error)
    assert str(clone) == str(error)
    assert vars(clone) == vars(error)
    assert isinstance(error, errors.MetaScaleError)


def test_every_error_class_is_covered() -> None:
    classes = {obj for obj in vars(errors).values()
               if isinstance(obj, type) and issubclass(obj, errors.MetaScaleError) and obj is not errors.MetaScaleError}
    assert classes == {type(e) for e in ERRORS}
