"""Voters that stop answering, remembered between `cluster-check` runs, and the replacement it proposes (pure).

`cluster-check` keeps, per cluster, the FIRST time it saw each voter silent (the flow stores the record between
runs in a Prefect Variable, `metascale-silent-<cluster>`). A voter that answers again is forgotten, so its next
silence starts a new episode. A voter silent for at least the threshold is due for a proposal: replace it with a
spare through `replace-node`, started with `require_approval` on. The proposal event is sent once per episode
(``proposed_at`` records when); the artifact is published on every run while the voter stays silent.

Nothing here does I/O: the flow reads the record, calls these functions with the silent voters and the time, and
writes back what they return.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

REPLACE_DEPLOYMENT = "replace-node/replace-node"
PROPOSAL_EVENT = "metascale.replace-node.proposed"


def variable_name(cluster: str) -> str:
    """The Prefect Variable that holds ``cluster``'s record: `metascale-silent-<cluster>`."""
    return f"metascale-silent-{cluster}"


def cluster_resource_id(cluster: str) -> str:
    """The event resource id of ``cluster``: `metascale.cluster.<name>` (the automation matches
    `metascale.cluster.*`)."""
    return f"metascale.cluster.{cluster}"


def iso(moment: datetime) -> str:
    """``moment`` in UTC as ISO 8601 with a `Z`, to the second: `2026-11-28T02:00:00Z`."""
    return moment.astimezone(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def duration_text(seconds: float) -> str:
    """A short human duration: `45 s`, `5 min 12 s`, `2 h 5 min`, `3 d 4 h`."""
    total = max(int(seconds), 0)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"


class SilentVoter(BaseModel):
    """One voter that does not answer: since when (the first run that saw it silent), and when replace-node was
    proposed for it (None: not yet)."""

    model_config = ConfigDict(frozen=True)

    since: datetime = Field(description="UTC time the first cluster-check saw it silent")
    proposed_at: datetime | None = Field(default=None, description="UTC time the proposal event was sent")

    @field_validator("since", "proposed_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"{value.isoformat()} has no time zone (expected UTC)")
        return value.astimezone(timezone.utc)

    def silent_for_s(self, now: datetime) -> float:
        """Seconds between ``since`` and ``now``."""
        return (now - self.since).total_seconds()


SilenceRecord = dict[int, SilentVoter]
"""node id -> SilentVoter, for one cluster."""


def record_from_json(value: Any) -> SilenceRecord:
    """Parse the stored form (``{"3": {"since": iso, "proposed_at": iso or null}}``). An entry that does not parse
    is dropped (a damaged record only restarts that voter's count); a value that is not a mapping is an empty
    record."""
    if not isinstance(value, Mapping):
        return {}
    record: SilenceRecord = {}
    for key, entry in value.items():
        try:
            node_id = int(key)
            record[node_id] = SilentVoter.model_validate(entry)
        except (TypeError, ValueError, ValidationError):
            continue
    return record


def record_to_json(record: SilenceRecord) -> dict[str, dict[str, str | None]]:
    """The stored form of ``record``: node ids as text, times as ISO UTC (JSON-able, for a Prefect Variable)."""
    return {str(node_id): {"since": iso(entry.since),
                           "proposed_at": iso(entry.proposed_at) if entry.proposed_at else None}
            for node_id, entry in sorted(record.items())}


def update_record(record: SilenceRecord, silent: Iterable[int], now: datetime) -> SilenceRecord:
    """Return the record after a run that saw the voters ``silent`` not answering at ``now``: a voter silent before
    keeps its first ``since`` (and ``proposed_at``), a newly silent one starts at ``now``, and a voter that is not
    silent any more (it answers again, or is no voter) is forgotten."""
    return {node_id: record.get(node_id) or SilentVoter(since=now) for node_id in sorted(set(silent))}


def due_for_proposal(record: SilenceRecord, now: datetime, threshold_s: float) -> list[int]:
    """The voters silent for at least ``threshold_s`` seconds at ``now``, by id."""
    return sorted(node_id for node_id, entry in record.items() if entry.silent_for_s(now) >= threshold_s)


def mark_proposed(record: SilenceRecord, node_ids: Iterable[int], now: datetime) -> SilenceRecord:
    """Return the record with ``proposed_at = now`` for ``node_ids`` that have none yet (an episode is proposed
    once)."""
    marked = set(node_ids)
    return {node_id: (entry.model_copy(update={"proposed_at": now})
                      if node_id in marked and entry.proposed_at is None else entry)
            for node_id, entry in record.items()}


# ---------------------------------------------------------------------------------------------------- the proposal

class Proposal(BaseModel):
    """What cluster-check proposes for one silent voter."""

    model_config = ConfigDict(frozen=True)

    node_id: int
    host: str = Field(description="the silent voter's host ('' when unknown)")
    since: datetime
    new_host: str = Field(default="", description="the spare that would replace it; '' when there is none")
    no_spare: str = Field(default="", description="why no spare was picked (the planner's refusal), else ''")

    def parameters(self, inventory: str, cluster_block: str) -> dict[str, Any]:
        """The `replace-node` parameters that start this replacement paused for approval (the cluster as
        cluster-check was given it: exactly one of ``inventory`` / ``cluster_block``)."""
        params: dict[str, Any] = {"node_id": self.node_id, "new_host": self.new_host}
        params.update({"inventory": inventory} if inventory else {"cluster_block": cluster_block})
        params["require_approval"] = True
        return params

    def event_payload(self, inventory: str, cluster_block: str) -> dict[str, Any]:
        """The payload of the `metascale.replace-node.proposed` event (the automation templates its parameters
        from it)."""
        return {"node_id": self.node_id, "new_host": self.new_host, "since": iso(self.since),
                "inventory": inventory, "cluster_block": cluster_block}


def _cli_value(value: Any) -> str:
    """A `--param` value: the CLI reads it as JSON when it parses, so a text that would parse (`"123"`, `"true"`)
    is given as a JSON string."""
    if not isinstance(value, str):
        return json.dumps(value)
    try:
        json.loads(value)
    except ValueError:
        return value
    return json.dumps(value)


def replace_cli_command(parameters: Mapping[str, Any]) -> str:
    """`prefect deployment run 'replace-node/replace-node' --param k=v ...` for ``parameters``, shell-quoted; an
    empty ``new_host`` is shown as the placeholder `<HOST>` to fill in."""
    parts = ["prefect", "deployment", "run", f"'{REPLACE_DEPLOYMENT}'"]
    for key, value in parameters.items():
        text = "<HOST>" if key == "new_host" and value == "" else _cli_value(value)
        parts += ["--param", shlex.quote(f"{key}={text}")]
    return " ".join(parts)


def proposal_markdown(cluster: str, proposals: list[Proposal], now: datetime, threshold_s: float, *,
                      inventory: str, cluster_block: str, api_url: str = "", deployment_id: str = "",
                      ui_url: str = "", proposed_now: Iterable[int] = ()) -> str:
    """The `replace-proposal-<cluster>` artifact: per silent voter, since when and for how long, the spare that would
    replace it (or why there is none), and the ready ways to start `replace-node` with `require_approval` on: the
    CLI command always; the REST call and the UI link when the deployment exists on the server (``deployment_id``)
    and the URLs are known. ``proposed_now``: the voters whose proposal event this run sent."""
    sent = set(proposed_now)
    lines = [f"# Replace proposal for cluster `{cluster}`", "",
             f"cluster-check at {iso(now)} found {len(proposals)} voter(s) silent for at least "
             f"{duration_text(threshold_s)} (threshold `silent_threshold_s = {threshold_s:g}`). Nothing was changed: "
             f"a person decides. `replace-node` removes a dead node first (through the live voters), then adds the "
             f"spare, in one plan, after one approval.", ""]
    for proposal in proposals:
        where = f" ({proposal.host})" if proposal.host else ""
        silent_for = duration_text((now - proposal.since).total_seconds())
        lines += [f"## meta-{proposal.node_id}{where}", "",
                  f"* silent since **{iso(proposal.since)}** (for {silent_for})"]
        if proposal.new_host:
            lines.append(f"* would be replaced by spare **{proposal.new_host}**")
        else:
            lines += [f"* **no spare** to replace it: {proposal.no_spare}",
                      "* name a host: fill in `new_host` below (it must have databend-meta installed)"]
        if proposal.node_id in sent:
            lines.append(f"* event `{PROPOSAL_EVENT}` sent now (once per silent episode): the automation shipped in "
                         f"prefect.yaml (`replace-node-on-proposal`) starts this run, paused for approval")
        params = proposal.parameters(inventory, cluster_block)
        lines += ["", "Start `replace-node` (it pauses for approval before it changes anything):", "",
                  "```sh", replace_cli_command(params), "```", ""]
        if deployment_id and api_url:
            body = json.dumps({"parameters": {**params, "new_host": params["new_host"] or "<HOST>"}})
            lines += ["REST:", "", "```http", f"POST {api_url.rstrip('/')}/deployments/{deployment_id}/create_flow_run",
                      "Content-Type: application/json", "", body, "```", ""]
            if ui_url:
                lines += [f"UI: [{REPLACE_DEPLOYMENT}]({ui_url.rstrip('/')}/deployments/deployment/{deployment_id}) "
                          f"(Run > Custom run, with the parameters above)", ""]
        elif not deployment_id:
            lines += [f"(The deployment `{REPLACE_DEPLOYMENT}` is not on this server: `prefect deploy --all` or "
                      f"`python -m deployments.serve` registers it.)", ""]
    return "\n".join(lines).rstrip() + "\n"
