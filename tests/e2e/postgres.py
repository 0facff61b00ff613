"""A private PostgreSQL cluster for the e2e tests: initdb + postgres as the `postgres` user, 127.0.0.1 only.

Debian's `postgresql` package (Makefile APT_PACKAGES) provides the binaries; the system cluster is not used.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from deployments.local_server import free_port

PG_USER = "postgres"


def pg_bin_dir() -> Path:
    """The newest /usr/lib/postgresql/<version>/bin. Raises FileNotFoundError pointing at `make setup`."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[-3]))
    if not versions:
        raise FileNotFoundError("no /usr/lib/postgresql/*/bin/postgres; install the Debian package `postgresql` "
                                "(`make setup` does)")
    return versions[-1].parent


@dataclass
class PrivatePostgres:
    """A running private cluster: its data dir, port, postmaster process and a database for Prefect."""

    directory: Path
    port: int
    popen: subprocess.Popen[bytes]
    database: str = "prefect"

    @property
    def url(self) -> str:
        """SQLAlchemy URL for Prefect (trust auth on 127.0.0.1, so no password)."""
        return f"postgresql+asyncpg://{PG_USER}@127.0.0.1:{self.port}/{self.database}"

    def log_tail(self, lines: int = 30) -> str:
        log = self.directory / "postgres.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""

    def stop(self) -> None:
        """Fast shutdown (SIGINT) of the postmaster by PID, SIGKILL if it lingers; remove the data dir."""
        for sig, wait_s in ((signal.SIGINT, 20.0), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
            if self.popen.poll() is not None:
                break
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                continue
        shutil.rmtree(self.directory, ignore_errors=True)


def _as_postgres(argv: list[str], directory: Path, timeout_s: float = 120) -> None:
    result = subprocess.run(argv, user=PG_USER, group=PG_USER, cwd=directory, capture_output=True, text=True,
                            timeout=timeout_s, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)}` exited {result.returncode}: {result.stderr[-2000:]}")


def _wait_ready(bin_dir: Path, port: int, popen: subprocess.Popen[bytes], directory: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise RuntimeError(f"postgres exited {popen.returncode}; log:\n{(directory / 'postgres.log').read_text()}")
        ready = subprocess.run([str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-q"],
                               stdin=subprocess.DEVNULL)
        if ready.returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError(f"postgres on 127.0.0.1:{port} not ready within {timeout_s:.0f} s")


def start_private_postgres(timeout_s: float = 60) -> PrivatePostgres:
    """initdb a cluster in a fresh temp dir, start it on 127.0.0.1:<free port>, create the `prefect` database.

    Side effects: a postgres process (stop it with `.stop()`).
    """
    bin_dir = pg_bin_dir()
    directory = Path(tempfile.mkdtemp(prefix="metascale-pg-"))
    pg = pwd.getpwnam(PG_USER)
    os.chown(directory, pg.pw_uid, pg.pw_gid)
    data = directory / "data"
    _as_postgres([str(bin_dir / "initdb"), "-D", str(data), "-U", PG_USER, "--auth=trust", "-E", "UTF8",
                  "--no-sync"], directory)
    port = free_port()
    log = open(directory / "postgres.log", "wb")  # noqa: SIM115 - owned by the child for its lifetime
    os.chown(directory / "postgres.log", pg.pw_uid, pg.pw_gid)
    popen = subprocess.Popen(
        [str(bin_dir / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port), "-k", str(directory),
         "-c", "fsync=off", "-c", "max_connections=100"],
        user=PG_USER, group=PG_USER, cwd=directory, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True)
    log.close()
    server = PrivatePostgres(directory=directory, port=port, popen=popen)
    try:
        _wait_ready(bin_dir, port, popen, directory, timeout_s)
        _as_postgres([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER,
                      server.database], directory)
    except BaseException:
        server.stop()
        raise
    return server
