"""The one description of metascale's deployments: read from prefect.yaml, used by `serve` and by the tests.

`prefect deploy --all` reads prefect.yaml itself; deployments/serve.py builds its deployments from `load_specs()`,
so names, descriptions, parameters, tags and schedules are the same by construction.
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
DEPLOYMENT_NAMES = ("scale-up", "scale-down", "cluster-check", "sync-inventory")


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
                work_pool=raw["work_pool"]["name"]))
        except KeyError as exc:
            raise ValueError(f"{path}: deployment {name!r} lacks required key {exc.args[0]!r}") from None
    return specs


def to_runner_deployments(specs: list[DeploymentSpec]) -> list[Any]:
    """Build `RunnerDeployment`s (for `prefect.serve`) with exactly the specs' names, parameters, tags, schedules."""
    from prefect.schedules import Cron

    return [
        spec.load_flow().to_deployment(
            name=spec.name,
            description=spec.description,
            tags=list(spec.tags),
            parameters=spec.parameters,
            schedules=[Cron(s.cron, timezone=s.timezone, active=s.active, parameters=s.parameters)
                       for s in spec.schedules],
        )
        for spec in specs
    ]
