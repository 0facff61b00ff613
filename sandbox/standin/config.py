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


@dataclasses.dataclass
class Timing:
    """pysyncobj timings (seconds): close to databend-meta's heartbeat 500 ms / election 1.0-1.5 s, but faster."""

    raft_min_timeout: float = 0.6
    raft_max_timeout: float = 1.4
    append_entries_period: float = 0.1
    connection_timeout: float = 1.5
    connection_retry_time: float = 0.5
    leader_fallback_timeout: float = 2.0


@dataclasses.dataclass
class MetaConfig:
    """Effective databend-meta configuration (names as in the TOML; defaults as in the real cli-config)."""

    config_file: str | None = None
    admin_api_address: str = "127.0.0.1:28002"
    grpc_api_address: str = "127.0.0.1:9191"
    grpc_api_advertise_host: str | None = None
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

    def check(self) -> None:
        """Raise ConfigError exactly as databend-meta's RaftConfig::check() does."""
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
    for key in ("admin_api_address", "grpc_api_address", "grpc_api_advertise_host"):
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
                "learner", "cluster_name"):
        if key in raft:
            setattr(cfg, key, raft[key])
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
    p.add_argument("--leave-via", action="append", default=[])
    return p


def from_args(args: argparse.Namespace) -> MetaConfig:
    """Build the effective config: defaults, then the TOML file, then CLI flags."""
    cfg = MetaConfig()
    if args.config_file:
        load_toml(cfg, args.config_file)
    flag_map = {"admin_api_address": "admin_api_address", "grpc_api_address": "grpc_api_address",
                "grpc_api_advertise_host": "grpc_api_advertise_host", "log_dir": "log_dir",
                "log_file_dir": "log_dir", "id": "id", "raft_dir": "raft_dir", "raft_api_port": "raft_api_port",
                "raft_listen_host": "raft_listen_host", "raft_advertise_host": "raft_advertise_host",
                "single": "single", "join": "join", "learner": "learner", "cluster_name": "cluster_name",
                "wait_leader_timeout": "wait_leader_timeout_ms"}
    for flag, key in flag_map.items():
        value = getattr(args, flag)
        if value is not None:
            setattr(cfg, key, value)
    return cfg
