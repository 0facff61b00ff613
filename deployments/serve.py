"""Serve scale-up, scale-down, cluster-check, sync-inventory and replace-node from this one process (no work pool,
no worker).

    python -m deployments.serve            # needs PREFECT_API_URL pointing at a Prefect server

The deployments are built from prefect.yaml (deployments/specs.py): the same names, descriptions, parameters, tags,
schedules and triggers as `prefect deploy --all`, so serving creates the same automation (`replace-node-on-proposal`:
cluster-check's `metascale.replace-node.proposed` event starts replace-node paused for approval). Runs execute as
child processes of this process's warm forkserver (below). On SIGTERM it stops gracefully and pauses its deployments (Prefect's `serve`
behaviour); starting it again un-pauses them.

From trigger to first step (BENCHMARKS.md): the runner asks the API for runs to start every `--poll-s` seconds
(default 0.5, Prefect's Runner `query_seconds`; PREFECT_RUNNER_POLL_FREQUENCY is whole seconds, 10 by default). It
starts each run in a process forked from a warm one: at start-up this process has Python's multiprocessing start a
`forkserver` that imports Prefect's engine and every flow module once (2-3 s here); a run's process is a fork of it
and starts its first step well under a second after the runner picked the run up. Prefect's own way, a fresh
`python -m prefect.engine` interpreter per run, pays that import on every run. The price: the runs execute the code
this process loaded, so restart serve after changing the code (`make demo` does; the deployments' `version` is the
commit serve started from, so the run history says which code ran).
"""

from __future__ import annotations

import argparse
import importlib
import multiprocessing
import pickle
import sys
from collections.abc import Sequence
from typing import Any

from deployments.specs import PREFECT_YAML, load_specs, to_runner_deployments


POLL_S = 0.5  # how often the runner asks the API for runs to start: a triggered run waits half of it on average


def describe_runner_settings(poll_s: float = POLL_S) -> str:
    """How this serve picks up runs, in words (BENCHMARKS.md names the settings its figures were taken with)."""
    return f"runner poll every {poll_s:g} s (--poll-s)"


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of seconds (e.g. 0.5)")
    return value


def warm_start(modules: Sequence[str]) -> Any:
    """Make Prefect start served runs as forks of a warm process that imported ``modules`` once, and start that
    process now (so the first run does not wait for it). Returns the multiprocessing context.

    Prefect's runner starts a flow it holds in memory with `prefect.flow_engine.run_flow_in_subprocess`, which asks
    `multiprocessing.get_context("spawn")` for a fresh interpreter. Here that module's `multiprocessing` answers with
    the `forkserver` context instead: a single-threaded server process (started clean, not forked from this
    multi-threaded one) preloads ``modules`` and forks one child per run. The child is an ordinary process with its
    own PID: the runner's cancellation (SIGTERM, then SIGKILL, by PID) and exit-code handling work unchanged.
    Side effects: starts the forkserver process; it exits when this process does."""
    from prefect import flow_engine

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(modules))
    flow_engine.multiprocessing = _ContextOverride(context)  # type: ignore[attr-defined]
    process = context.Process(target=_nothing)
    process.start()
    process.join()
    return context


class _ContextOverride:
    """Stands in for the `multiprocessing` module inside `prefect.flow_engine`: `get_context(...)` returns the warm
    context, everything else is the real module."""

    def __init__(self, context: Any) -> None:
        self._context = context

    def get_context(self, method: str | None = None) -> Any:
        return self._context

    def __getattr__(self, name: str) -> Any:
        return getattr(multiprocessing, name)


def pickle_by_reference(flows: Sequence[Any]) -> None:
    """Send ``flows`` to a run's process as "module and name", imported there, not as a copy.

    The runner pickles the flow object it holds into the run's process (cloudpickle). A flow's function is not
    found under its own name in its module (the `@flow` object is), so cloudpickle copies the function with a
    globals dict of its own: the annotations of `from __future__ import annotations` then name types that dict
    lacks (pydantic refuses the parameters) and module state would be a second copy. With this reduction the run
    uses the module the warm process imported. Other flows pickle as before."""
    import copyreg

    from prefect import Flow

    where = {id(flow): (flow.fn.__module__, name) for flow in flows
             for name, value in vars(sys.modules[flow.fn.__module__]).items() if value is flow}

    def reduce_flow(flow: Any) -> Any:
        if id(flow) in where:
            return load_flow, where[id(flow)]
        return flow.__reduce_ex__(pickle.HIGHEST_PROTOCOL)  # type: ignore[operator]

    copyreg.pickle(Flow, reduce_flow)


def load_flow(module: str, name: str) -> Any:
    """The flow ``name`` of ``module`` (the other end of `pickle_by_reference`)."""
    return getattr(importlib.import_module(module), name)


def _nothing() -> None:
    """The first child of the forkserver: starting it starts the server and waits for its preloads."""


def serve_warm(deployments: Sequence[Any], flows: Sequence[Any], *, limit: int, poll_s: float) -> None:
    """Serve ``deployments`` (`RunnerDeployment`s; ``flows[i]`` is the flow of ``deployments[i]``) like
    `prefect.serve`, with each run started from the warm process (`warm_start`). Side effects: long-running."""
    import asyncio

    from prefect.exceptions import TerminationSignal
    from prefect.runner import Runner

    pickle_by_reference(flows)
    warm_start(["prefect.flow_engine", __name__, *sorted({flow.fn.__module__ for flow in flows})])
    runner = Runner(limit=limit, query_seconds=poll_s)
    for deployment, flow in zip(deployments, flows, strict=True):
        deployment_id = runner.add_deployment(deployment)
        # What `Runner.add_flow` does after applying: the runner then starts this deployment's runs from the flow
        # object it holds (`DirectSubprocessStarter`), not from its entrypoint in a new interpreter.
        runner._deployment_registry.register_flow(deployment_id, flow)
    print(f"serving {len(deployments)} deployments: " + ", ".join(d.name for d in deployments), flush=True)
    try:
        asyncio.run(runner.start())
    except (KeyboardInterrupt, TerminationSignal) as exc:  # as `prefect.serve`: a stop request ends quietly
        print(f"received {type(exc).__name__}, stopped serving", flush=True)


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and serve every deployment in prefect.yaml until stopped. Side effects: long-running."""
    parser = argparse.ArgumentParser(prog="python -m deployments.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=4, help="at most this many runs at once (default 4)")
    parser.add_argument("--poll-s", type=_positive_seconds, default=POLL_S,
                        help=f"ask the API for runs to start every this many seconds (default {POLL_S:g})")
    args = parser.parse_args(argv)

    specs = load_specs(PREFECT_YAML)
    serve_warm(to_runner_deployments(specs), [spec.load_flow() for spec in specs], limit=args.limit,
               poll_s=args.poll_s)


if __name__ == "__main__":
    main()
