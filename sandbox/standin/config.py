"""databend-meta configuration: TOML file (`--config-file`) plus CLI flags, with the real code defaults."""
from __future__ import annotations

import argparse
import dataclasses
import socket
import tomllib

BINARY_VERSION = "v1.2.934-nightly-standin"     # HTTP /v1/cluster/status binary_version (DATABEND_SEMVER-like)
CRATE_VERSION = "260629.2.0"                     # gRPC status BinaryVersion (databend-meta crate version)
DATA_VERSION = "V004"
DATA_VERSION_DEBUG = "V004(2024-11-11: WAL based raft-log)"
INTERNAL_PORT_OFFSET = 1000                      # pysyncobj transport listens on raft_api_port + 1000


class ConfigError(ValueError):
    """The configuration is invalid; str() is the exact message databend-meta prints after `Error: `."""


class Secret:
    """A raft shared secret: repr/str show `***` (databend-meta's `Secret` redacts itself in every config dump and log,
    databend-meta crates/server/raft-store/src/secret.rs as used by config.rs); `expose()` gives the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = str(value)

    def expose(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "***"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def parse_socket_addr(addr: str) -> tuple[str, int]:
    """Parse `addr` the way Rust's `SocketAddr::from_str` does (IPv4 `a.b.c.d:port` or `[v6]:port`, no host names).

    databend-meta binds its admin API with `api_address.parse::<SocketAddr>()` (databend
    src/meta/admin/src/http_service.rs `do_start`) and its gRPC API from `grpc_api_address` split by the same parse
    (databend src/meta/cli-config/src/lib.rs `parse_host_port`; databend-meta crates/server/service/src/api/
    grpc_server.rs `bind`). Raises ValueError("invalid socket address syntax"), Rust's AddrParseError text.
    """
    import ipaddress
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535 or port != str(int(port)):
        raise ValueError("invalid socket address syntax")
    try:
        if host.startswith("[") and host.endswith("]"):
            ipaddress.IPv6Address(host[1:-1])
            host = host[1:-1]
        else:
            ipaddress.IPv4Address(host)
    except ValueError:
        raise ValueError("invalid socket address syntax") from None
    return host, int(port)


@dataclasses.dataclass
class Timing:
    """pysyncobj timings (seconds): close to databend-meta's heartbeat 500 ms / election 1.0-1.5 s, but faster."""

    raft_min_timeout: float = 0.6
    raft_max_timeout: float = 1.4
    append_entries_period: float = 0.1
    connection_timeout: float = 1.5
    connection_retry_time: float = 0.5
    leader_fallback_timeout: float = 2.0
    # Catch-up after join (not pysyncobj): the leader reports a newly added voter behind for
    # data_bytes / catchup_bytes_per_s seconds (see node.py `_leader_join`); the lab's preload takes ~1.5 s.
    catchup_bytes_per_s: float = 100000.0


@dataclasses.dataclass
class MetaConfig:
    """Effective databend-meta configuration (names as in the TOML; defaults as in the real cli-config)."""

    config_file: str | None = None
    admin_api_address: str = "127.0.0.1:28002"
    grpc_api_address: str = "127.0.0.1:9191"
    grpc_api_advertise_host: str | None = None
    # TLS on the gRPC API when both are set (databend src/meta/cli-config/src/lib.rs `grpc_tls_server_cert/_key`)
    grpc_tls_server_cert: str = ""
    grpc_tls_server_key: str = ""
    log_dir: str = "./.databend/logs"
    log_level: str = "Warn,databend_=Info,openraft=Info"
    log_file_on: bool = True
    id: int = 0
    raft_dir: str = "./.databend/meta"
    raft_api_port: int = 28004
    raft_listen_host: str = "127.0.0.1"
    raft_advertise_host: str = dataclasses.field(default_factory=socket.gethostname)
    single: bool = False
    join: list[str] = dataclasses.field(default_factory=list)
    learner: bool = False
    cluster_name: str = "foo_cluster"
    wait_leader_timeout_ms: int = 180000
    heartbeat_interval_ms: int = 500
    leave_via: list[str] = dataclasses.field(default_factory=list)
    leave_id: int | None = None
    # databend-meta 260629: [raft_config] raft_secret / raft_accepted_secrets / raft_secret_strict (databend
    # src/meta/cli-config/src/lib.rs; databend-meta crates/server/raft-store/src/config.rs). Shown as *** by repr().
    raft_secret: Secret | None = None
    raft_accepted_secrets: list[Secret] = dataclasses.field(default_factory=list)
    raft_secret_strict: bool | None = None
    timing: Timing = dataclasses.field(default_factory=Timing)

    @property
    def raft_advertise_addr(self) -> str:
        return f"{self.raft_advertise_host}:{self.raft_api_port}"

    @property
    def raft_listen_addr(self) -> str:
        return f"{self.raft_listen_host}:{self.raft_api_port}"

    @property
    def internal_addr(self) -> str:
        """pysyncobj node address (what peers connect to)."""
        return f"{self.raft_advertise_host}:{self.raft_api_port + INTERNAL_PORT_OFFSET}"

    @property
    def internal_bind(self) -> str:
        return f"{self.raft_listen_host}:{self.raft_api_port + INTERNAL_PORT_OFFSET}"

    @property
    def grpc_advertise_addr(self) -> str | None:
        if not self.grpc_api_advertise_host:
            return None
        return f"{self.grpc_api_advertise_host}:{self.grpc_api_address.rpartition(':')[2]}"

    @property
    def strict(self) -> bool:
        """`raft_secret_strict`, default false (RaftConfig::raft_secret_strict())."""
        return bool(self.raft_secret_strict)

    def check(self) -> None:
        """Raise ConfigError exactly as databend-meta's RaftConfig::check() does, in its order
        (databend-meta crates/server/raft-store/src/config.rs `check`): an empty `raft_secret`; then, when leaving
        (`leave_via` set), only "leave_id is set" is checked; then accepted secrets, strict without accepted secrets,
        single/join, join-to-itself."""
        if self.raft_secret is not None and not self.raft_secret.expose():
            raise ConfigError("`raft_secret` must not be empty")
        if self.leave_via:
            if self.leave_id is None:
                raise ConfigError("`leave_via` is set but `leave_id` is not: "
                                  "the node to remove from the cluster is unknown")
            return
        if any(not s.expose() for s in self.raft_accepted_secrets):
            raise ConfigError("`raft_accepted_secrets` must not contain an empty secret")
        if self.strict and not self.raft_accepted_secrets:
            raise ConfigError("`raft_secret_strict` is enabled but `raft_accepted_secrets` is empty: "
                              "the node would reject every incoming raft RPC")
        if bool(self.join) == bool(self.single):
            raise ConfigError("at least one of `single` and `join` needs to be enabled")
        if self.raft_listen_addr in self.join:
            raise ConfigError("--join must not be set to itself")


def load_toml(cfg: MetaConfig, path: str) -> None:
    """Fill `cfg` from the TOML file at `path`; raise ConfigError naming the file when unreadable."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"failed to load config file {path}: {e}") from None
    cfg.config_file = path
    for key in ("admin_api_address", "grpc_api_address", "grpc_api_advertise_host", "grpc_tls_server_cert",
                "grpc_tls_server_key"):
        if key in doc:
            setattr(cfg, key, doc[key])
    log_file = doc.get("log", {}).get("file", {})
    if "dir" in log_file:
        cfg.log_dir = log_file["dir"]
    if "log_dir" in doc and doc["log_dir"] != "./.databend/logs":
        cfg.log_dir = doc["log_dir"]
    cfg.log_level = log_file.get("level", cfg.log_level)
    cfg.log_file_on = bool(log_file.get("on", True))
    raft = doc.get("raft_config", {})
    for key in ("id", "raft_dir", "raft_api_port", "raft_listen_host", "raft_advertise_host", "single", "join",
                "learner", "cluster_name", "leave_via", "leave_id"):
        if key in raft:
            setattr(cfg, key, raft[key])
    if "raft_secret" in raft:
        cfg.raft_secret = Secret(raft["raft_secret"])
    if "raft_accepted_secrets" in raft:
        cfg.raft_accepted_secrets = [Secret(v) for v in raft["raft_accepted_secrets"]]
    if "raft_secret_strict" in raft:
        cfg.raft_secret_strict = bool(raft["raft_secret_strict"])
    if "wait_leader_timeout" in raft:
        cfg.wait_leader_timeout_ms = int(raft["wait_leader_timeout"])
    standin = doc.get("standin", {})         # optional stand-in timing knobs (seconds), not in the real file
    for f in dataclasses.fields(Timing):
        if f.name in standin:
            setattr(cfg.timing, f.name, float(standin[f.name]))


def build_parser() -> argparse.ArgumentParser:
    """The databend-meta command line (the subset the stand-in implements)."""
    p = argparse.ArgumentParser(prog="databend-meta", description="Databend Meta Service (stand-in)")
    p.add_argument("-c", "--config-file")
    p.add_argument("--cmd", default="")
    p.add_argument("--key", action="append", default=[])
    p.add_argument("--value", default="")
    p.add_argument("--prefix", default="")
    p.add_argument("--admin-api-address")
    p.add_argument("--grpc-api-address")
    p.add_argument("--grpc-api-advertise-host")
    p.add_argument("--grpc-tls-server-cert")
    p.add_argument("--grpc-tls-server-key")
    p.add_argument("--log-dir")
    p.add_argument("--log-file-dir")
    p.add_argument("--id", type=int)
    p.add_argument("--raft-dir")
    p.add_argument("--raft-api-port", type=int)
    p.add_argument("--raft-listen-host")
    p.add_argument("--raft-advertise-host")
    p.add_argument("--single", action="store_true", default=None)
    p.add_argument("--join", action="append")
    p.add_argument("--learner", action="store_true", default=None)
    p.add_argument("--cluster-name")
    p.add_argument("--wait-leader-timeout", type=int)
    p.add_argument("--leave-id", type=int)
    p.add_argument("--leave-via", action="append")
    # clap flags of the same names exist upstream (databend src/meta/cli-config/src/lib.rs RaftConfig); they override
    # the config file. Operators should use --config-file (a flag value shows in `ps`).
    p.add_argument("--raft-secret")
    p.add_argument("--raft-accepted-secrets", action="append")
    p.add_argument("--raft-secret-strict", type=lambda v: {"true": True, "false": False}[v.lower()],
                   metavar="{true,false}")
    return p


def from_args(args: argparse.Namespace) -> MetaConfig:
    """Build the effective config: defaults, then the TOML file, then CLI flags."""
    cfg = MetaConfig()
    if args.config_file:
        load_toml(cfg, args.config_file)
    flag_map = {"admin_api_address": "admin_api_address", "grpc_api_address": "grpc_api_address",
                "grpc_api_advertise_host": "grpc_api_advertise_host", "log_dir": "log_dir",
                "grpc_tls_server_cert": "grpc_tls_server_cert", "grpc_tls_server_key": "grpc_tls_server_key",
                "log_file_dir": "log_dir", "id": "id", "raft_dir": "raft_dir", "raft_api_port": "raft_api_port",
                "raft_listen_host": "raft_listen_host", "raft_advertise_host": "raft_advertise_host",
                "single": "single", "join": "join", "learner": "learner", "cluster_name": "cluster_name",
                "wait_leader_timeout": "wait_leader_timeout_ms", "leave_via": "leave_via", "leave_id": "leave_id",
                "raft_secret_strict": "raft_secret_strict"}
    for flag, key in flag_map.items():
        value = getattr(args, flag)
        if value is not None:
            setattr(cfg, key, value)
    if args.raft_secret is not None:
        cfg.raft_secret = Secret(args.raft_secret)
    if args.raft_accepted_secrets is not None:
        cfg.raft_accepted_secrets = [Secret(v) for v in args.raft_accepted_secrets]
    return cfg
