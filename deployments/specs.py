"""metascale's deployments as prefect.yaml declares them, for `serve` and the tests; and prefect.yaml's own steps.

prefect.yaml is the one description. `prefect deploy --all` reads it itself; `to_runner_deployments()` builds the
same deployments for `python -m deployments.serve` with Prefect's own pieces, in the order `prefect deploy` uses them
(prefect 3.9.1, `cli/deploy/_core.py`): the file is validated by Prefect's prefect.yaml model; `{{ prefect.blocks.* }}`,
`{{ prefect.variables.* }}` and `{{ $ENV }}` are rendered by `prefect.utilities.templating`; the build steps run with
`prefect.deployments.steps.run_steps` and their outputs fill `{{ code.version }}`; schedules and triggers are
converted by the helpers `prefect deploy` calls. So names, parameters, tags, schedules, triggers and version are the
same whichever way a deployment was registered.

What a redeploy keeps (README "Deployments that stay as you set them"): a deployment whose prefect.yaml entry says
`schedules: null` has its schedules left alone, by `prefect deploy` and here; a schedule with a `slug` and no `active`
keeps the operator's on/off switch.

The two steps prefect.yaml names (they run wherever metascale is installed, whatever the current directory):
* `code_version` (build step, when deploying): the git commit of this checkout;
* `set_project_directory` (pull step, on the worker before each run): start the run in this installation's project
  directory.
"""

from __future__ import annotations

import importlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PREFECT_YAML = PROJECT_ROOT / "prefect.yaml"
WORK_POOL = "metascale-pool"
DEPLOYMENT_NAMES = ("scale-up", "scale-down", "cluster-check", "sync-inventory", "replace-node")
# The per-environment values prefect.yaml reads from Prefect variables when deploying (missing = "").
ENVIRONMENT_VARIABLES = ("metascale-cluster-block", "metascale-inventory", "metascale-maintenance-window")


# ------------------------------------------------------------------------------------------ prefect.yaml's steps

def code_version(directory: str | None = None) -> dict[str, str]:
    """prefect.yaml's build step: ``{"version": <git commit of the checkout>}``, with ``-dirty`` appended when tracked
    files differ from that commit, or ``""`` outside a git checkout (Prefect then uses the flow's own version).

    ``directory`` defaults to this installation's project directory, not the current one."""
    where = directory or str(PROJECT_ROOT)

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", where, *args], capture_output=True, text=True, check=True,
                              timeout=30, stdin=subprocess.DEVNULL).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"version": ""}
    return {"version": f"{commit}-dirty" if dirty else commit}


def set_project_directory() -> dict[str, str]:
    """prefect.yaml's pull step: run in the project directory of the metascale installed on this host (the one whose
    `deployments` package is imported here). Returns ``{"directory": ...}`` like Prefect's `set_working_directory`."""
    from prefect.deployments.steps import set_working_directory

    return set_working_directory(str(PROJECT_ROOT))


# ------------------------------------------------------------------------------------------------- the specs

@dataclass(frozen=True)
class DeploymentSpec:
    """One deployment as prefect.yaml declares it, templates not yet rendered (``config`` is the entry as Prefect's
    prefect.yaml model reads it)."""

    config: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.config["name"])

    @property
    def entrypoint(self) -> str:
        """A module path, `flows.scale_up.scale_up`: imported from the installed package, wherever it is."""
        return str(self.config["entrypoint"])

    @property
    def description(self) -> str:
        return str(self.config.get("description") or "")

    @property
    def tags(self) -> tuple[str, ...]:
        return tuple(self.config.get("tags") or ())

    @property
    def parameters(self) -> dict[str, Any]:
        """The deployment's parameters as written (variables not rendered); the flows' code holds the rest."""
        return dict(self.config.get("parameters") or {})

    @property
    def work_pool(self) -> str:
        return str((self.config.get("work_pool") or {}).get("name") or "")

    @property
    def manages_schedules(self) -> bool:
        """False for `schedules: null`: deploys and serve leave the deployment's schedules as they are."""
        return self.config.get("schedules") is not None

    @property
    def schedules(self) -> tuple[Any, ...]:
        """The schedules prefect.yaml declares, as Prefect's `DeploymentScheduleCreate` (unset fields such as `active`
        stay unset, so an update leaves them as the operator set them)."""
        return tuple(_schedule_creates(self.config.get("schedules")))

    @property
    def triggers(self) -> tuple[dict[str, Any], ...]:
        """prefect.yaml's `triggers:` entries, as written."""
        return tuple(self.config.get("triggers") or ())

    def deployment_triggers(self) -> list[Any]:
        """The `triggers:` as Prefect deployment triggers, validated and named the way `prefect deploy` does it."""
        return _triggers(self.name, self.triggers)

    @property
    def module(self) -> str:
        """The dotted module of the entrypoint: `flows.scale_up`."""
        return self.entrypoint.rpartition(".")[0]

    @property
    def function(self) -> str:
        return self.entrypoint.rpartition(".")[2]

    def load_flow(self) -> Any:
        """Import and return the flow object the entrypoint names."""
        return getattr(importlib.import_module(self.module), self.function)


def _schedule_creates(configs: list[dict[str, Any]] | None) -> list[Any]:
    from prefect.cli.deploy._schedules import _schedule_config_to_deployment_schedule
    from prefect.client.schemas.actions import DeploymentScheduleCreate

    return [DeploymentScheduleCreate(**_schedule_config_to_deployment_schedule(config)) for config in configs or ()]


def _triggers(deployment: str, raw: tuple[dict[str, Any], ...]) -> list[Any]:
    from prefect.cli.deploy._triggers import _initialize_deployment_triggers

    return _initialize_deployment_triggers(deployment, [dict(spec) for spec in raw])


def load_specs(path: Path = PREFECT_YAML) -> list[DeploymentSpec]:
    """Read prefect.yaml's `deployments:` with Prefect's own prefect.yaml model (what `prefect deploy` validates).

    Raises ValueError naming the file and the bad entry (a bad trigger or schedule fails loading, not deploying)."""
    from prefect.cli.deploy._models import PrefectYamlModel
    from pydantic import ValidationError

    try:
        model = PrefectYamlModel.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    except ValidationError as exc:
        raise ValueError(f"{path}: {_problems(exc)}") from None
    specs = []
    for deployment in model.deployments:
        spec = DeploymentSpec(deployment.model_dump(exclude_unset=True, mode="json"))
        name = spec.config.get("name", "?")
        for key in ("name", "entrypoint", "work_pool"):
            if not spec.config.get(key):
                raise ValueError(f"{path}: deployment {name!r} lacks required key {key!r}")
        if ":" in spec.entrypoint:
            raise ValueError(f"{path}: deployment {name!r}: entrypoint {spec.entrypoint!r} must be a module path "
                             f"such as 'flows.scale_up.scale_up' (a file path depends on the current directory)")
        try:
            spec.deployment_triggers()
        except ValidationError as exc:
            raise ValueError(f"{path}: deployment {name!r} has an invalid trigger: {_problems(exc)}") from None
        spec.schedules  # noqa: B018 - converts (and so checks) the schedules now
        specs.append(spec)
    return specs


def _problems(exc: Any) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']} (got {e.get('input')!r})"
                     for e in exc.errors())


# ------------------------------------------------------------------------------------------- rendering (serve)

def build_outputs(path: Path = PREFECT_YAML) -> dict[str, Any]:
    """Run prefect.yaml's build steps with Prefect's `run_steps` (as `prefect deploy` does); return their outputs
    (e.g. ``{"code": {"version": ...}}`` for `{{ code.version }}`)."""
    from prefect.deployments.steps.core import run_steps
    from prefect.utilities.asyncutils import run_coro_as_sync

    steps = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("build") or []
    return run_coro_as_sync(run_steps(steps, print_function=lambda *_: None)) or {}


def render(config: dict[str, Any], step_outputs: dict[str, Any]) -> dict[str, Any]:
    """Render a deployment entry's templates the way `prefect deploy` does: block references, Prefect variables and
    `$ENV` values first, then the build steps' outputs. Trigger parameters keep their `{{ event.* }}` templates
    (the server renders them when the event arrives)."""
    from prefect.utilities.asyncutils import run_coro_as_sync
    from prefect.utilities.templating import apply_values, resolve_block_document_references, resolve_variables

    async def _resolved() -> dict[str, Any]:
        return await resolve_variables(await resolve_block_document_references(config))

    rendered = apply_values(run_coro_as_sync(_resolved()), os.environ, remove_notset=False)
    triggers = rendered.pop("triggers", None)
    rendered = apply_values(rendered, step_outputs, skip_prefixes=["ctx."])
    if triggers is not None:
        rendered["triggers"] = triggers
    return rendered


def to_runner_deployments(specs: list[DeploymentSpec], path: Path = PREFECT_YAML) -> list[Any]:
    """Build `RunnerDeployment`s (for `prefect.serve`) with exactly what `prefect deploy` registers for ``specs``:
    rendered parameters, tags, schedules, triggers (applying one creates its automations) and version. A spec with
    `schedules: null` leaves the deployment's schedules as they are."""
    from prefect.deployments.runner import EntrypointType

    outputs = build_outputs(path)
    deployments = []
    for spec in specs:
        config = render(spec.config, outputs)
        deployment = spec.load_flow().to_deployment(
            name=spec.name,
            description=config.get("description") or None,
            tags=list(config.get("tags") or ()),
            parameters=config.get("parameters") or {},
            schedules=_schedule_creates(config.get("schedules")) or None,
            triggers=_triggers(spec.name, tuple(config.get("triggers") or ())),
            version=config.get("version") or None,
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
        if config.get("schedules") is None:
            # Unset, as in `prefect deploy`: the update then carries no schedules and the server keeps them.
            deployment.schedules = None
            deployment.model_fields_set.discard("schedules")
        deployments.append(deployment)
    return deployments
