"""metascale core: plain Python that scales a Databend meta cluster over SSH. Never imports prefect.

Modules: errors, inventory, remote, config, status, plan, steps, waits, window (see docs/ARCHITECTURE.md).
"""

__version__ = "0.1.0"
