"""Notifications through Prefect's own mechanisms: a notification block and the automations shipped as files in
`deployments/automations/*.yaml` (the format `prefect automation create -f` reads: Prefect's AutomationCore).

    python -m deployments.setup --notify-webhook URL          # a Custom Webhook block `metascale-notify` (JSON POST)
    python -m deployments.setup --notify-block slack-webhook/ops   # any notification block that already exists

Each file's `${NOTIFY_BLOCK_ID}` is replaced by the block's id; an automation with the same name is updated, else
created (idempotent). What the automations send: deployments/automations/ and the README ("Notifications, crash
hooks and audit").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

AUTOMATIONS_DIR = Path(__file__).resolve().parent / "automations"
BLOCK_PLACEHOLDER = "${NOTIFY_BLOCK_ID}"
WEBHOOK_BLOCK_NAME = "metascale-notify"


def check_webhook_url(url: str) -> str:
    """Return ``url`` if it is an http(s) URL with a host. Raises ValueError naming its scheme and host only: a
    webhook URL's path or query can be its token (Slack, Teams), which never goes into an error."""
    try:
        parts = urlsplit(url)
        scheme, host = parts.scheme, parts.hostname
    except ValueError:
        scheme, host = "", None
    if scheme not in ("http", "https") or not host:
        raise ValueError(f"--notify-webhook is not an http:// or https:// URL with a host (got scheme {scheme!r}, "
                         f"host {host!r}; the rest is not shown, it can hold a token)")
    return url


def save_webhook_block(url: str, name: str = WEBHOOK_BLOCK_NAME) -> UUID:
    """Save (or overwrite) the Custom Webhook notification block ``name`` that POSTs
    `{"subject": ..., "body": ...}` as JSON to ``url``. Returns its block document id. Idempotent.

    The URL is kept in the block's `secrets` (masked in the UI and the API, like a Secret block) and its `url` field
    is the placeholder `{{url}}`: a webhook URL often is the credential (Slack, Teams)."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    block = CustomWebhookNotificationBlock(name="metascale", url="{{url}}", secrets={"url": check_webhook_url(url)},
                                           json_data={"subject": "{{subject}}", "body": "{{body}}"})
    return UUID(str(block.save(name, overwrite=True)))


def find_block(spec: str) -> UUID:
    """The id of the existing notification block ``spec`` = `TYPE/NAME` (e.g. `slack-webhook/ops`, as
    `prefect block ls` shows it). Raises ValueError naming it when it is malformed, missing or cannot notify."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    slug, _, name = spec.partition("/")
    if not slug or not name:
        raise ValueError(f"--notify-block {spec!r} is not TYPE/NAME (e.g. slack-webhook/ops; see `prefect block ls`)")
    with get_client(sync_client=True) as client:
        try:
            document = client.read_block_document_by_name(name, block_type_slug=slug)
        except ObjectNotFound:
            raise ValueError(f"--notify-block {spec!r}: no such block here (see `prefect block ls`)") from None
    if document.block_schema is None or "notify" not in document.block_schema.capabilities:
        raise ValueError(f"--notify-block {spec!r} is not a notification block (it cannot notify)")
    return UUID(str(document.id))


def load_automations(block_id: UUID, directory: Path = AUTOMATIONS_DIR) -> list[Any]:
    """Every automation in ``directory``/*.yaml with ``block_id`` in place of `${NOTIFY_BLOCK_ID}`, validated as
    Prefect's AutomationCore. Raises ValueError naming the file."""
    import yaml
    from prefect.events.schemas.automations import AutomationCore
    from pydantic import ValidationError

    automations = []
    for path in sorted(directory.glob("*.yaml")):
        data = yaml.safe_load(path.read_text().replace(BLOCK_PLACEHOLDER, str(block_id)))
        items = data.get("automations", [data]) if isinstance(data, dict) else data
        for item in items:
            try:
                automations.append(AutomationCore.model_validate(item))
            except ValidationError as exc:
                raise ValueError(f"{path}: not a valid automation: {exc.errors()[0]['msg']}") from None
    return automations


def apply_automations(automations: list[Any]) -> list[str]:
    """Create each automation, or update the one with the same name (idempotent). Returns one line per automation."""
    from prefect.client.orchestration import get_client

    lines = []
    with get_client(sync_client=True) as client:
        for automation in automations:
            existing = client.read_automations_by_name(automation.name)
            if existing:
                client.update_automation(existing[0].id, automation)
                for extra in existing[1:]:  # one automation per name
                    client.delete_automation(extra.id)
                lines.append(f"automation {automation.name} updated")
            else:
                client.create_automation(automation)
                lines.append(f"automation {automation.name} created")
    return lines


def setup_notifications(webhook: str | None = None, block: str | None = None) -> list[str]:
    """Create the notification block (``webhook``) or find it (``block`` = TYPE/NAME), then create or update the
    shipped automations to notify through it. Returns one line per item. Raises ValueError for a bad option."""
    if bool(webhook) == bool(block):
        raise ValueError("give exactly one of --notify-webhook URL or --notify-block TYPE/NAME")
    if webhook:
        block_id = save_webhook_block(webhook)
        lines = [f"notification block custom-webhook/{WEBHOOK_BLOCK_NAME} saved (POSTs JSON to the webhook)"]
    else:
        block_id = find_block(str(block))
        lines = [f"notification block {block} found"]
    return lines + apply_automations(load_automations(block_id))
