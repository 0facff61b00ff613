"""Headless Chromium (Debian `chromium`) for looking at Prefect UI pages: DOM text and screenshots."""

from __future__ import annotations

import html
import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--virtual-time-budget=15000",
         "--window-size=1400,1000"]


def chromium() -> str:
    """Path of the chromium binary. Raises FileNotFoundError pointing at `make setup`."""
    found = shutil.which("chromium")
    if found is None:
        raise FileNotFoundError("no `chromium` on PATH; install the Debian package `chromium` (`make setup` does)")
    return found


def _run(extra: list[str], url: str, timeout_s: float) -> str:
    profile = tempfile.mkdtemp(prefix="metascale-chromium-")
    argv = [chromium(), *FLAGS, f"--user-data-dir={profile}", *extra, url]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the session we started: chromium and its helpers
        process.communicate()
        raise TimeoutError(f"chromium did not finish {url} within {timeout_s:.0f} s") from None
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    if process.returncode != 0:
        raise RuntimeError(f"chromium exited {process.returncode} on {url}: {err.decode(errors='replace')[-1500:]}")
    return out.decode(errors="replace")


def dump_dom(url: str, timeout_s: float = 90) -> str:
    """The rendered DOM of `url` after the page's scripts ran (virtual time budget 15 s)."""
    return _run(["--dump-dom"], url, timeout_s)


def visible_text(dom: str) -> str:
    """Rough visible text of a DOM dump: tags and scripts removed, entities decoded, whitespace collapsed."""
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", dom)).split())


def screenshot(url: str, path: Path, timeout_s: float = 90) -> Path:
    """Save a PNG of `url` at `path` (directories created). Returns `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _run([f"--screenshot={path}"], url, timeout_s)
    if not path.exists() or path.stat().st_size == 0:
        raise RuntimeError(f"chromium wrote no screenshot to {path} for {url}")
    return path
