"""One SSH connection per host per flow run: a registry of ``SshPool`` objects keyed by flow run id.

The flow opens the run's pool (``run_pool``) with the private key text; tasks only receive models (Inventory,
MetaNode) and borrow connections with ``pool_for(inventory)``. The key text never passes through task parameters,
so it is never logged or stored by Prefect. Outside a flow run (``task.fn`` in tests) a pool per inventory name is
kept under the key ``"local"``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from prefect.runtime import flow_run as runtime_flow_run

from metascale.inventory import Inventory
from metascale.remote import SshPool

_POOLS: dict[str, SshPool] = {}
_LOCK = threading.Lock()


def _run_key() -> str:
    """Return the current flow run id, or "local" outside a run."""
    run_id = runtime_flow_run.id
    return str(run_id) if run_id else "local"


def register_pool(pool: SshPool, key: str | None = None) -> str:
    """Make ``pool`` the connection pool of the current run (or of ``key``); return the key."""
    key = key or _run_key()
    with _LOCK:
        old = _POOLS.get(key)
        _POOLS[key] = pool
    if old is not None and old is not pool:
        old.close()
    return key


def pool_for(inventory: Inventory) -> SshPool:
    """Return the current run's pool, opening one from the inventory's key file when the run has none."""
    key = _run_key()
    with _LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = SshPool.for_inventory(inventory)
        return pool


def close_pool(key: str | None = None) -> None:
    """Close and forget the pool of the current run (or of ``key``). Idempotent."""
    with _LOCK:
        pool = _POOLS.pop(key or _run_key(), None)
    if pool is not None:
        pool.close()


@contextmanager
def run_pool(inventory: Inventory, private_key_text: str | None = None) -> Iterator[SshPool]:
    """Open the run's pool for the block and close it (every connection) when the block ends."""
    pool = SshPool.for_inventory(inventory, private_key_text=private_key_text)
    key = register_pool(pool)
    try:
        yield pool
    finally:
        close_pool(key)
