"""Logging for the stand-in: stdout (the journal under systemd) plus an hourly file under [log.file] dir."""
from __future__ import annotations

import datetime
import os
import sys
import threading


class MetaLog:
    """Writes `<ts> <LEVEL> <msg>` lines to stdout and to <dir>/databend-meta-<id>@<cluster>-<YYYY-MM-DD-HH>.log."""

    def __init__(self, prefix: str = "databend-meta") -> None:
        self.prefix = prefix
        self.dir: str | None = None
        self.name = prefix
        self._lock = threading.Lock()
        self.file_error: str | None = None
        self.quiet_stdout = False   # leave mode: info/warn go to the log file only (upstream's stderr log is off)

    def open_dir(self, log_dir: str, name: str) -> None:
        """Start writing files named `<name>-<hour>.log` in log_dir (created if missing); remember failures."""
        try:
            os.makedirs(log_dir, exist_ok=True)
            self.dir, self.name = log_dir, name
        except OSError as e:
            self.file_error = f"cannot create log dir {log_dir}: {e.strerror}"

    def _path(self, now: datetime.datetime) -> str | None:
        if self.dir is None:
            return None
        return os.path.join(self.dir, f"{self.name}-{now:%Y-%m-%d-%H}.log")

    def _write(self, level: str, msg: str, to_stdout: bool) -> None:
        now = datetime.datetime.now(datetime.timezone.utc)
        line = f"{now:%Y-%m-%dT%H:%M:%S.%fZ} {level:>5} {self.prefix}: {msg}"
        with self._lock:
            if to_stdout and not self.quiet_stdout:
                print(line, flush=True)
            path = self._path(now)
            if path is not None:
                try:
                    with open(path, "a") as f:
                        f.write(line + "\n")
                except OSError as e:
                    self.file_error = f"cannot write {path}: {e.strerror}"

    def banner(self, text: str) -> None:
        """Print a startup banner line to stdout (and the log file)."""
        with self._lock:
            print(text, flush=True)
        self._write("INFO", text, to_stdout=False)

    def info(self, msg: str) -> None:
        self._write("INFO", msg, to_stdout=True)

    def warn(self, msg: str) -> None:
        self._write("WARN", msg, to_stdout=True)

    def debug(self, msg: str) -> None:
        self._write("DEBUG", msg, to_stdout=False)


def eprint(msg: str) -> None:
    """Print to stderr and flush."""
    print(msg, file=sys.stderr, flush=True)
