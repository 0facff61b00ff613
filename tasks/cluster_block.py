"""The `MetaCluster` Prefect block: a cluster's inventory (editable in the UI) plus the NAME of the Secret with its key.

The private key itself lives only in a Prefect `Secret` block; it never appears in this block, in flow parameters,
logs or artifacts. Flows call `load_cluster(inventory_path=…)` or `load_cluster(cluster_block=…)` and get the
validated `Inventory` and, when a Secret is named, the key text to hand to the SSH layer.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from prefect.blocks.core import Block
from prefect.blocks.system import Secret
from prefect.exceptions import ObjectNotFound
from pydantic import Field

from metascale.errors import InventoryError
from metascale.inventory import Inventory, load_inventory, parse_inventory

BLOCK_TYPE_SLUG = "metascale-cluster"
BLOCK_NAME_PATTERN = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"  # a whole name (fullmatch); the flows' schema uses it too
_BLOCK_NAME_RE = re.compile(BLOCK_NAME_PATTERN)
_VALID_NAME = "lowercase letters, digits and '-', e.g. 'prod-eu'"


class MetaCluster(Block):
    """A Databend meta cluster that metascale flows can scale: its inventory TOML and the SSH key's Secret name."""

    _block_type_name = "Metascale Cluster"
    _block_type_slug = BLOCK_TYPE_SLUG
    _logo_url = None  # keep the UI offline
    _description = ("A Databend Meta Service cluster for the metascale flows: the inventory (TOML, editable here) "
                    "and the name of the Prefect Secret block that holds the SSH private key.")

    inventory_toml: str = Field(
        description="The cluster's inventory file (TOML, see docs/ARCHITECTURE.md). The flows rewrite it after a "
                    "scale-up or scale-down so it stays true.",
        json_schema_extra={"format": "textarea"},
    )
    ssh_key_secret: str = Field(
        default="",
        description="Name of a Prefect Secret block holding the SSH private key (PEM/OpenSSH text). Empty: use "
                    "the inventory's [ssh] private_key_file or private_key_secret.",
    )


def check_block_name(name: str, what: str = "block") -> str:
    """Return `name` if Prefect accepts it as a block document name; raise ValueError naming it otherwise."""
    if not _BLOCK_NAME_RE.fullmatch(name):
        raise ValueError(f"{what} name {name!r} is invalid (valid: {_VALID_NAME})")
    return name


def cluster_block_name(value: MetaCluster | dict[str, Any] | str | None) -> str:
    """Return the block name a flow's `cluster_block` parameter stands for: the name itself, or the name of the
    saved `MetaCluster` the form's block picker chose. The engine turns the picker's `{"$ref": {"block_document_id":
    …}}` into that block before the flow runs; a raw reference (a flow run's parameters as the API stores them) is
    loaded here. None means no block ("").

    Raises: ValueError when the block was never saved (it has no name to record the inventory under)."""
    if value is None or isinstance(value, str):
        return value or ""
    if isinstance(value, dict):
        value = MetaCluster.load_from_ref(value.get("$ref", value))
    name = getattr(value, "_block_document_name", None)
    if not name:
        raise ValueError("this Metascale Cluster block was never saved, so it has no name: save it first "
                         "(`MetaCluster(...).save(NAME)`) or pass its name as cluster_block")
    return str(name)


def _load_block(name: str) -> MetaCluster:
    check_block_name(name, "cluster block")
    try:
        block = MetaCluster.load(name)
    except (ValueError, ObjectNotFound) as exc:
        if "Unable to find block document" not in str(exc) and not isinstance(exc, ObjectNotFound):
            raise
        raise InventoryError(f"no {BLOCK_TYPE_SLUG} block named {name!r} (create it with "
                             f"`python -m deployments.setup --cluster-block {name} --inventory FILE` or in the UI "
                             "under Blocks)", f"cluster block {name}") from None
    return block


def read_key_secret(secret_name: str) -> str:
    """Return the private key text stored in the Prefect Secret block `secret_name`.

    Raises: InventoryError naming the Secret (never its value) when it does not exist or is empty.
    """
    check_block_name(secret_name, "SSH key secret")
    try:
        value = Secret.load(secret_name).get()
    except (ValueError, ObjectNotFound):
        raise InventoryError(f"no Secret block named {secret_name!r} holding the SSH private key (create it with "
                             "`python -m deployments.setup … --ssh-key-file FILE` or in the UI under Blocks)",
                             f"secret {secret_name}") from None
    if not isinstance(value, str) or "PRIVATE KEY" not in value:
        raise InventoryError(f"Secret block {secret_name!r} does not hold a private key (expected PEM/OpenSSH "
                             "text with a 'PRIVATE KEY' header)", f"secret {secret_name}")
    return value


def load_cluster(inventory_path: str = "", cluster_block: str = "") -> tuple[Inventory, str | None]:
    """Load the cluster from an inventory file OR a `MetaCluster` block (exactly one).

    Returns the validated inventory and the SSH private key text when a Secret is named (by the block's
    `ssh_key_secret`, else by the inventory's `[ssh] private_key_secret`), else None (the inventory's
    `private_key_file` is used). Key text, when returned, takes precedence over `private_key_file`.
    Raises: InventoryError (a ValueError) with a one-line message: both/neither given, unknown block or secret,
    malformed inventory.
    """
    if bool(inventory_path.strip()) == bool(cluster_block.strip()):
        given = "both" if inventory_path.strip() else "neither"
        raise InventoryError(f"{given} of inventory ({inventory_path!r}) and cluster_block ({cluster_block!r}) "
                             "given; set exactly one: a path to an inventory TOML or the name of a "
                             f"{BLOCK_TYPE_SLUG} block", "parameters")
    if inventory_path.strip():
        inventory = load_inventory(Path(inventory_path.strip()))
        secret_name = inventory.ssh.private_key_secret or ""
    else:
        name = cluster_block.strip()
        block = _load_block(name)
        inventory = parse_inventory(block.inventory_toml, source=f"cluster block {name}")
        secret_name = block.ssh_key_secret or inventory.ssh.private_key_secret or ""
    return inventory, (read_key_secret(secret_name) if secret_name else None)


def save_cluster_block(name: str, inventory: Inventory, ssh_key_secret: str | None = None) -> MetaCluster:
    """Create or overwrite the `MetaCluster` block `name` with `inventory`.

    Keeps the block's existing `ssh_key_secret` unless a new one is given. Idempotent.
    """
    check_block_name(name, "cluster block")
    if ssh_key_secret is None:
        try:
            ssh_key_secret = MetaCluster.load(name).ssh_key_secret
        except (ValueError, ObjectNotFound):
            ssh_key_secret = ""
    if ssh_key_secret:
        check_block_name(ssh_key_secret, "SSH key secret")
    block = MetaCluster(inventory_toml=inventory.to_toml(), ssh_key_secret=ssh_key_secret)
    block.save(name, overwrite=True)
    return block


def save_key_secret(name: str, key_path: Path) -> None:
    """Store the private key file `key_path` in the Prefect Secret block `name` (overwrites). Idempotent.

    Raises: ValueError naming the file (never its content) when it is not a private key.
    """
    check_block_name(name, "SSH key secret")
    text = key_path.read_text(encoding="utf-8")
    if "PRIVATE KEY" not in text:
        raise ValueError(f"{key_path} is not a private key file (expected a 'PRIVATE KEY' header)")
    Secret(value=text).save(name, overwrite=True)


def register_block_types() -> None:
    """Register the `MetaCluster` block type (and Secret) with the current Prefect API. Idempotent."""
    Secret.register_type_and_schema()
    MetaCluster.register_type_and_schema()
