"""The core package never imports prefect (it must stay usable and testable without it)."""

from __future__ import annotations

import subprocess
import sys


def test_importing_every_core_module_leaves_prefect_out() -> None:
    code = (
        "import sys, pkgutil, importlib, metascale\n"
        "names = [m.name for m in pkgutil.iter_modules(metascale.__path__)]\n"
        "for name in names: importlib.import_module(f'metascale.{name}')\n"
        "assert {'errors', 'inventory', 'remote', 'config', 'status', 'steps', 'waits'} <= set(names), names\n"
        "bad = sorted(m for m in sys.modules if m == 'prefect' or m.startswith('prefect.'))\n"
        "print(len(names)); assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) >= 7
