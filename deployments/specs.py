"""The one description of metascale's deployments: read from prefect.yaml, used by `serve` and by the tests.

`prefect deploy --all` reads prefect.yaml itself; deployments/serve.py builds its deployments from `load_specs()`,
so names, descriptions, parameters, tags, schedules and triggers (the automations Prefect creates for a deployment)
are the same by construction.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PREFECT_YAML = PROJECT_ROOT / "prefect.yaml"
WORK_POOL = "metascale-pool"
DEPLOYMENT_NAMES = ("scale-up", "scale-down", "cluster-check", "sync-inventory", "replace-node")


@dataclass(frozen=True)
class ScheduleSpec:
    """One cron schedule of a deployment."""

    cron: str
    timezone: str
    active: bool
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DeploymentSpec:
    """One deployment as prefect.yaml declares it."""

    name: str
    entrypoint: str                      # "flows/scale_up.py:scale_up"
    description: str
    tags: tuple[str, ...]
    parameters: dict[str, Any]
    schedules: tuple[ScheduleSpec, ...]
    work_pool: str
    triggers: tuple[dict[str, Any], ...] = ()   # prefect.yaml's `triggers:` entries, as written

    def deployment_triggers(self) -> list[Any]:
        """The `triggers:` as Prefect deployment triggers (e.g. `DeploymentEventTrigger`), validated and named the
        way `prefect deploy` does it (an unnamed trigger becomes `<deployment>__automation_<n>`)."""
        return _triggers(self.name, self.triggers)

    @property
    def module(self) -> str:
        """The dotted module of the entrypoint: `flows.scale_up`."""
        path, _, _ = self.entrypoint.partition(":")
        return path.removesuffix(".py").replace("/", ".")

    @property
    def function(self) -> str:
        return self.entrypoint.partition(":")[2]

    def load_flow(self) -> Any:
        """Import and return the flow object the entrypoint names."""
        return getattr(importlib.import_module(self.module), self.function)


def _schedule(deployment: str, raw: dict[str, Any]) -> ScheduleSpec:
    if "cron" not in raw or "timezone" not in raw:
        raise ValueError(f"prefect.yaml deployment {deployment!r}: every schedule needs `cron` and `timezone` "
                         f"(got keys {sorted(raw)})")
    return ScheduleSpec(cron=str(raw["cron"]), timezone=str(raw["timezone"]), active=bool(raw.get("active", True)),
                        parameters=dict(raw.get("parameters") or {}))


def _triggers(deployment: str, raw: tuple[dict[str, Any], ...]) -> list[Any]:
    from prefect.events import DeploymentTriggerTypes
    from pydantic import TypeAdapter

    adapter: TypeAdapter[Any] = TypeAdapter(DeploymentTriggerTypes)
    return [adapter.validate_python({"name": f"{deployment}__automation_{i}", **spec})
            for i, spec in enumerate(raw, start=1)]


def _trigger_specs(path: Path, deployment: str, raw: Any) -> tuple[dict[str, Any], ...]:
    """prefect.yaml's `triggers:` of ``deployment``, checked now (a bad trigger fails loading, not deploying)."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise ValueError(f"{path}: deployment {deployment!r}: `triggers` must be a list of mappings")
    from pydantic import ValidationError

    specs = tuple(raw)
    try:
        _triggers(deployment, specs)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']} (got {e.get('input')!r})"
                             for e in exc.errors())
        raise ValueError(f"{path}: deployment {deployment!r} has an invalid trigger: {problems}") from None
    return specs


def load_specs(path: Path = PREFECT_YAML) -> list[DeploymentSpec]:
    """Parse prefect.yaml's `deployments:` into specs. Raises ValueError naming the file and the bad entry."""
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    specs = []
    for raw in document.get("deployments") or []:
        name = raw.get("name", "?")
        try:
            specs.append(DeploymentSpec(
                name=raw["name"], entrypoint=raw["entrypoint"], description=str(raw["description"]),
                tags=tuple(raw.get("tags") or ()), parameters=dict(raw.get("parameters") or {}),
                schedules=tuple(_schedule(name, s) for s in raw.get("schedules") or ()),
                work_pool=raw["work_pool"]["name"], triggers=_trigger_specs(path, name, raw.get("triggers"))))
        except KeyError as exc:
            raise ValueError(f"{path}: deployment {name!r} lacks required key {exc.args[0]!r}") from None
    return specs


def to_runner_deployments(specs: list[DeploymentSpec]) -> list[Any]:
    """Build `RunnerDeployment`s (for `prefect.serve`) with exactly the specs' names, parameters, tags, schedules
    and triggers (applying one creates its automations, as `prefect deploy` does)."""
    from prefect.schedules import Cron

    return [
        spec.load_flow().to_deployment(
            name=spec.name,
            description=spec.description,
            tags=list(spec.tags),
            parameters=spec.parameters,
            schedules=[Cron(s.cron, timezone=s.timezone, active=s.active, parameters=s.parameters)
                       for s in spec.schedules],
            triggers=spec.deployment_triggers(),
        )
        for spec in specs
    ]
