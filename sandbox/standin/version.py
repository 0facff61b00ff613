"""Which databend-meta release the stand-in plays on this host, and what changes with it (issue #9 item 5).

The installed version is read, in this order, from:
  1. the environment variable DATABEND_STANDIN_VERSION (local tests only),
  2. the file VERSION beside the `standin` package (on a lab host: /usr/lib/databend-standin/VERSION, written by
     `Lab.install_version(host, "1.2.600")` / `python -m sandbox install-version HOST 1.2.600`),
  3. else the newest release the stand-in plays (NEWEST).
A value is `1.2.N` with an optional `v` prefix and `-nightly` suffix; anything else is refused at use.

Landmarks (upstream databendlabs/databend, `git show <tag>:<path>`; /work/shared/reference/databend-meta.md §0, §1.4):
  * v1.2.165  `databend-metactl --status` flag added            (src/binaries/metactl/main.rs, v1.2.165-nightly)
  * v1.2.468  status prints `KeyNumber:`                        (src/binaries/metactl/main.rs, v1.2.468-nightly)
  * v1.2.550  on-disk DATA_VERSION V002 -> V003                  (src/meta/raft-store/src/ondisk/mod.rs)
  * v1.2.583  openraft 0.10: LogId text `1-1-200` -> `T1-N1.200`  (Cargo.toml; openraft 0.9 leader_id_adv.rs)
  * v1.2.612  metactl subcommands `status`, `transfer-leader`; `--status` removed
                                                                 (src/meta/binaries/metactl/main.rs, v1.2.612-nightly)
  * v1.2.655  DATA_VERSION V004                                  (src/meta/raft-store/src/ondisk/mod.rs)
  * v1.2.658  `RaftLogSize`/`SnapshotKeyCount` replace `DBSize`/`KeyNumber`; v1.2.663 adds the `RaftLog:` block
  * v1.2.670  `--cmd ver` min-compatible-client-version 0.9.41 -> 1.2.288 (changed between v1.2.660 and v1.2.670;
              src/meta/service/src/version.rs MIN_METACLI_SEMVER)
  * v1.2.782  metactl `trigger-snapshot`; v1.2.818 `member-list`
  * v1.2.880  meta core split out: gRPC status BinaryVersion = the databend-meta crate version; `--cmd ver` prints
              MIN_QUERY_VER_FOR_METASRV 1.2.676 (src/meta/binaries/meta/entry.rs run_cmd, src/meta/ver/src/lib.rs)
"""
from __future__ import annotations

import os
import pathlib
import re

NEWEST = (1, 2, 934)
NEWEST_CRATE_VERSION = "260629.2.0"          # gRPC BinaryVersion after the split ([DB] HEAD pins databend-meta)
OLDEST_PLAYED = (1, 2, 100)
VERSION_FILE = pathlib.Path(__file__).resolve().parent.parent / "VERSION"
ENV = "DATABEND_STANDIN_VERSION"
_RE = re.compile(r"v?1\.2\.(\d+)(-nightly)?")

DATA_VERSIONS = {   # Display / Debug forms, src/meta/raft-store/src/ondisk/data_version.rs
    "V002": "V002(2023-07-22: Store snapshot in a file)",
    "V003": "V003(2024-05-31: Store snapshot in rotbl)",
    "V004": "V004(2024-11-11: WAL based raft-log)",
}


class VersionError(ValueError):
    """The configured stand-in version is not one the stand-in can play."""


def parse(text: str) -> tuple[int, int, int]:
    """`1.2.600`, `v1.2.600` or `v1.2.600-nightly` -> (1, 2, 600); VersionError naming the value otherwise."""
    m = _RE.fullmatch(text.strip())
    if not m or not OLDEST_PLAYED[2] <= int(m.group(1)) <= NEWEST[2]:
        raise VersionError(f"stand-in version {text.strip()!r} is not valid: use 1.2.N with "
                           f"{OLDEST_PLAYED[2]} <= N <= {NEWEST[2]}, e.g. 1.2.600")
    return 1, 2, int(m.group(1))


def installed() -> tuple[int, int, int]:
    """The version this host plays (env, then the VERSION file, then NEWEST)."""
    text = os.environ.get(ENV, "")
    if not text:
        try:
            text = VERSION_FILE.read_text()
        except OSError:
            return NEWEST
    return parse(text) if text.strip() else NEWEST


def semver(v: tuple[int, int, int]) -> str:
    """DATABEND_GIT_SEMVER without the `v` (what `--cmd ver` prints): `1.2.600-nightly`."""
    return f"{v[0]}.{v[1]}.{v[2]}-nightly"


def commit_version(v: tuple[int, int, int]) -> str:
    """METASRV_COMMIT_VERSION-like text (upstream `v1.2.600-nightly-<sha>(<rustc>-<ts>)`; here the sha is `standin`),
    the HTTP binary_version and, before v1.2.880, the gRPC BinaryVersion."""
    return f"v{semver(v)}-standin"


def grpc_binary_version(v: tuple[int, int, int]) -> str:
    """gRPC status BinaryVersion: the commit version before the split (v1.2.880), the crate version after."""
    return NEWEST_CRATE_VERSION if v >= (1, 2, 880) else commit_version(v)


def data_version(v: tuple[int, int, int]) -> str:
    """On-disk DATA_VERSION (Display form) of release `v`."""
    if v >= (1, 2, 655):
        return "V004"
    return "V003" if v >= (1, 2, 550) else "V002"


def min_compatible_client(v: tuple[int, int, int]) -> str:
    """`--cmd ver` min-compatible-client-version of release `v`."""
    if v >= (1, 2, 880):
        return "1.2.676"
    return "1.2.288" if v >= (1, 2, 670) else "0.9.41"


def ver_text(v: tuple[int, int, int]) -> str:
    """`databend-meta --cmd ver` output (entry.rs run_cmd): version, min-compatible-client-version, data-version."""
    return (f"version: {semver(v)}\nmin-compatible-client-version: {min_compatible_client(v)}\n"
            f"data-version: {DATA_VERSIONS[data_version(v)]}")


def log_id_text(v: tuple[int, int, int], term: int, node: int, index: int) -> str:
    """LogId Display: `T1-N1.200` (openraft 0.10, v1.2.583+), `1-1-200` before."""
    return f"T{term}-N{node}.{index}" if v >= (1, 2, 583) else f"{term}-{node}-{index}"
