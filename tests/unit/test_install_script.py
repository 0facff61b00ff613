"""The privileged half of the atomic config write (`remote._INSTALL_SCRIPT`), run locally with `sh`.

Proves (issue #10, Files): the staged copy is synced to disk before the rename, and the upload and the staged copy
are removed when the script gets TERM, HUP or INT (a signal death skips an EXIT trap).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from metascale.remote import _INSTALL_SCRIPT


def _fake_tool(bin_dir: Path, name: str, body: str) -> None:
    tool = bin_dir / name
    tool.write_text(f"#!/bin/sh\n{body}\n")
    tool.chmod(0o755)


def _setup(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    etc = tmp_path / "etc"
    etc.mkdir()
    target = etc / "databend-meta.toml"
    target.write_text("old\n")
    target.chmod(0o640)
    upload = tmp_path / "upload"
    upload.write_text("new\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    return target, upload, etc / "databend-meta.toml.tmp-abcd", bin_dir


def _default_signals() -> None:
    """In the child: the dispositions sshd + sudo give the script. A shell cannot trap a signal that was ignored
    when it started, and a test session started with nohup or `&` ignores HUP / INT."""
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)


def _start(target: Path, upload: Path, staged: Path, bin_dir: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return subprocess.Popen(["sh", "-c", _INSTALL_SCRIPT, "metascale-install", str(target), str(upload),
                             str(staged), "20260101T000000"], env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True, preexec_fn=_default_signals)


def test_staged_copy_is_synced_before_the_rename_and_the_directory_after(tmp_path: Path) -> None:
    target, upload, staged, bin_dir = _setup(tmp_path)
    log = tmp_path / "sync.log"
    # the fake sync records what it was asked to sync and what the target held at that moment
    _fake_tool(bin_dir, "sync", f'echo "$2 target=$(cat {target})" >> {log}')
    proc = _start(target, upload, staged, bin_dir)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert log.read_text().splitlines() == [f"{staged} target=old", f"{target.parent}/ target=new"]
    assert target.read_text() == "new\n" and oct(target.stat().st_mode & 0o777) == "0o640"
    assert Path(out).read_text() == "old\n"          # the backup path is printed
    assert not upload.exists() and not staged.exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
def test_signal_before_the_rename_removes_the_staged_copy_and_the_upload(tmp_path: Path, sig: int) -> None:
    target, upload, staged, bin_dir = _setup(tmp_path)
    marker = tmp_path / "mv-started"
    _fake_tool(bin_dir, "mv", f"touch {marker}\nexec sleep 60")  # hangs where the rename would happen
    proc = _start(target, upload, staged, bin_dir)
    deadline = time.monotonic() + 20
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "the script never reached the rename"
        time.sleep(0.02)
    assert staged.exists() and upload.exists()       # the state a signal interrupts
    os.killpg(proc.pid, sig)                          # as `timeout` and a closed session do: the whole group
    proc.communicate(timeout=20)
    assert proc.returncode == 128 + sig
    assert not staged.exists() and not upload.exists()
    assert target.read_text() == "old\n"
