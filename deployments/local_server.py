"""Start, probe and stop local Prefect processes (server, serve, worker) by PID.

Used by `make demo` (deployments/demo.py) and by the test fixtures (tests/fixtures_prefect.py, tests/e2e).
Never imports prefect: every Prefect process is a subprocess started from this venv's `prefect` executable.

Why not Prefect's own `prefect server start --background` / `prefect server stop` (they exist in 3.9.1; the README
tells an operator to use them for a local server): this module is the one copy of what those lack for a test session
and the demo: several servers side by side (one PID file per PREFECT_HOME there), a wait until `/health` answers
(with the log tail when it dies), the server's output kept in a file (`--background` pipes it to a parent that has
exited), a pre-migrated template database, and stopping only the PIDs recorded here. The `metascale` command does
not start servers at all (deployments/cli.py: without an API it says in one line how to point it at one).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# Telemetry off, no ephemeral fallback, quick pick-up of new runs (prefect-notes §2, §4, "Recommended environment").
QUIET_PREFECT_ENV: dict[str, str] = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
    "PREFECT_WORKER_QUERY_SECONDS": "1",
    "PREFECT_RUNNER_POLL_FREQUENCY": "1",
    "PREFECT_CLI_PROMPT": "false",
}


LEASE_STORAGE_ON_DISK = "prefect.server.concurrency.lease_storage.filesystem"


def prefect_executable() -> str:
    """Return the `prefect` script of the running interpreter's venv (falls back to PATH)."""
    candidate = Path(sys.executable).with_name("prefect")
    if candidate.exists():
        return str(candidate)
    found = shutil.which("prefect")
    if found is None:
        raise FileNotFoundError(f"no `prefect` executable next to {sys.executable} or on PATH; run `make setup`")
    return found


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sqlite_url(db_path: Path) -> str:
    """Return the SQLAlchemy URL Prefect's server uses for the SQLite file `db_path`."""
    return f"sqlite+aiosqlite:///{db_path}"


def server_env(home: Path, api_url: str, database_url: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return the environment for a private Prefect server and its clients (own PREFECT_HOME and database)."""
    env = dict(os.environ if base is None else base)
    env.update(QUIET_PREFECT_ENV)
    env["PREFECT_HOME"] = str(home)
    env["PREFECT_API_URL"] = api_url
    env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database_url
    env["PREFECT_SERVER_ALLOW_EPHEMERAL_MODE"] = "false"
    env["PREFECT_UI_API_URL"] = api_url
    # concurrency leases (the cluster lock) on disk under PREFECT_HOME, not in the server's memory: a server restart
    # then keeps the lease of a change in progress instead of leaking its slot (flows/cluster_lock.py)
    env.setdefault("PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE", LEASE_STORAGE_ON_DISK)
    return env


@dataclass
class ManagedProcess:
    """A subprocess we started, with the file its output goes to."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 30) -> str:
        """Return the last `lines` lines of the process's output file."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, *, term_wait_s: float = 10.0) -> int | None:
        """Stop the process: SIGTERM, wait, SIGTERM again (a worker escalates itself), wait, SIGKILL.

        Returns the exit code (negative: the signal). Idempotent.
        """
        return stop_popen(self.popen, term_wait_s=term_wait_s)


def start_process(name: str, argv: list[str], *, env: Mapping[str, str], log_path: Path,
                  cwd: Path | None = None) -> ManagedProcess:
    """Start `argv` in its own session with stdout+stderr to `log_path`. Side effects: a running process."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(argv, env=dict(env), stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, cwd=cwd, start_new_session=True)
    return ManagedProcess(name=name, popen=popen, log_path=log_path)


def stop_popen(popen: subprocess.Popen[bytes], *, term_wait_s: float = 10.0) -> int | None:
    """Stop one child process by PID, escalating TERM → TERM → KILL. Idempotent."""
    for sig, wait_s in ((signal.SIGTERM, term_wait_s), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if popen.poll() is not None:
            return popen.returncode
        try:
            popen.send_signal(sig)
        except ProcessLookupError:
            return popen.poll()
        try:
            return popen.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
    return popen.poll()


def pid_alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def pid_cmdline(pid: int) -> str:
    """Return the command line of `pid` with spaces between arguments ("" when it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def stop_pid(pid: int, *, must_contain: str, term_wait_s: float = 10.0) -> bool:
    """Stop a process we recorded earlier, but only if its command line still contains `must_contain`.

    Escalates TERM → TERM → KILL. Returns True if a matching process was signalled. Idempotent.
    """
    if must_contain not in pid_cmdline(pid):
        return False
    for sig, wait_s in ((signal.SIGTERM, term_wait_s), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return True
            time.sleep(0.1)
    return True


def api_get(url: str, *, timeout_s: float = 5.0) -> object:
    """GET `url` and return the decoded JSON body. Raises OSError/urllib errors on failure."""
    with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - 127.0.0.1 only
        return json.loads(response.read() or b"null")


def wait_for_health(api_url: str, *, timeout_s: float, process: ManagedProcess | None = None) -> float:
    """Poll `<api_url>/health` until it answers `true`; return the seconds waited.

    Raises: RuntimeError naming the URL (and the process log tail) when the process exits or the deadline passes.
    """
    started = time.monotonic()
    deadline = started + timeout_s
    last_error = "no answer yet"
    while time.monotonic() < deadline:
        if process is not None and process.popen.poll() is not None:
            raise RuntimeError(f"{process.name} (pid {process.pid}) exited with {process.popen.returncode} before "
                               f"{api_url}/health answered; log tail:\n{process.log_tail()}")
        try:
            if api_get(f"{api_url}/health", timeout_s=2.0) is True:
                return time.monotonic() - started
        except (OSError, ValueError) as exc:
            last_error = str(exc)
        time.sleep(0.2)
    tail = f"; log tail:\n{process.log_tail()}" if process is not None else ""
    raise RuntimeError(f"{api_url}/health did not answer true within {timeout_s:.0f} s (last: {last_error}){tail}")


def migrated_template_db(cache_dir: Path, *, timeout_s: float = 180.0) -> Path:
    """Return a SQLite DB already migrated for this Prefect version, creating it once under `cache_dir`.

    Cuts a fresh server's start from ~20 s to ~12 s (prefect-notes §3). Safe against concurrent callers:
    the file is built in a private directory and renamed into place.
    """
    from importlib.metadata import version

    template = cache_dir / f"prefect-{version('prefect')}-template.db"
    if template.exists():
        return template
    build_home = cache_dir / f"build-{os.getpid()}"
    build_home.mkdir(parents=True, exist_ok=True)
    db = build_home / "prefect.db"
    env = server_env(build_home, "http://127.0.0.1:9/api", sqlite_url(db))
    result = subprocess.run([prefect_executable(), "server", "database", "upgrade", "-y"], env=env,
                            capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    if result.returncode != 0 or not db.exists():
        raise RuntimeError(f"`prefect server database upgrade -y` in {build_home} exited {result.returncode}: "
                           f"{result.stderr[-2000:]}")
    os.replace(db, template)
    shutil.rmtree(build_home, ignore_errors=True)
    return template


def start_prefect_server(home: Path, *, port: int | None = None, database_url: str | None = None,
                         template_db: Path | None = None,
                         health_timeout_s: float = 120.0) -> tuple[ManagedProcess, str]:
    """Start `prefect server start` on 127.0.0.1 with PREFECT_HOME=`home` and wait until healthy.

    SQLite at `home`/prefect.db (copied from `template_db` when given) unless `database_url` is set.
    Returns the process and its API URL (`http://127.0.0.1:<port>/api`).
    Side effects: a server process; stop it with `process.stop()`.
    """
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    if database_url is None:
        db = home / "prefect.db"
        if template_db is not None and not db.exists():
            shutil.copyfile(template_db, db)
        database_url = sqlite_url(db)
    env = server_env(home, api_url, database_url)
    argv = [prefect_executable(), "server", "start", "--host", "127.0.0.1", "--port", str(port), "--analytics-off"]
    process = start_process("prefect server", argv, env=env, log_path=home / "server.log")
    try:
        wait_for_health(api_url, timeout_s=health_timeout_s, process=process)
    except BaseException:
        process.stop()
        raise
    return process, api_url
