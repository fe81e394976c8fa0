"""The runner protocol and the registry of runners (``--launcher NAME``, entry-point group ``kernel_bench.runners``).

A runner decides *where* a run executes, never *what* it computes: it takes a validated
`RunConfig` and returns the run's outcome (one MLflow run, nested under ``parent_run_id`` when
given). Each runner has its own pydantic ``Options`` (``--launch-opt key=value``)::

    runner = make_runner("deepspeed", {"num_gpus": 2})
    outcome = runner.launch(config, parent_run_id=None)

A plugin adds a runner with an entry point::

    [project.entry-points."kernel_bench.runners"]
    my-cluster = "my_pkg.runner:MyRunner"
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ValidationError

from benchmark.config import RunConfig
from benchmark.run import RunOutcome
from registry import BenchError, Registry, first_error


@runtime_checkable
class Runner(Protocol):
    """Executes one run somewhere: in this process, on DeepSpeed ranks, as a SLURM job, ..."""

    name: ClassVar[str]
    Options: ClassVar[type[BaseModel]]
    options: BaseModel

    def launch(self, config: RunConfig, parent_run_id: str | None = None) -> RunOutcome:
        """Execute ``config`` (a nested run of ``parent_run_id`` if given) and return its outcome."""
        ...


RUNNERS: Registry[Any] = Registry("launcher", "kernel_bench.runners")
RUNNERS.add("local", "runners.local:LocalRunner")
RUNNERS.add("deepspeed", "runners.deepspeed:DeepSpeedRunner")
RUNNERS.add("slurm", "runners.slurm:SlurmRunner")


def parse_launch_opts(items: list[str]) -> dict[str, Any]:
    """``--launch-opt key=value`` items as a dict (values as JSON when they parse, else strings)."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BenchError(f"--launch-opt expects key=value, got '{item}'")
        try:
            parsed: Any = json.loads(value.strip())
        except json.JSONDecodeError:
            parsed = value.strip()
        options[key.strip().replace("-", "_")] = parsed
    return options


def runner_options(name: str, options: dict[str, Any]) -> BaseModel:
    """``options`` validated by runner ``name``'s ``Options``; a bad one is a one-line `BenchError`."""
    cls = RUNNERS.get(name)
    try:
        return cls.Options.model_validate(options)
    except ValidationError as exc:
        key, message = first_error(exc, "options")
        known = ", ".join(cls.Options.model_fields) or "none"
        raise BenchError(f"--launch-opt {key}: {message} (launcher '{cls.name}' takes: {known})") from None


def make_runner(name: str, options: dict[str, Any] | None = None) -> Runner:
    """The runner registered as ``name`` with its options validated."""
    cls = RUNNERS.get(name)
    return cls(runner_options(name, options or {}))


def sweep_runner(runner: Runner) -> Any:
    """``runner`` as a sweep's cell runner: ``(config, parent_run_id) -> (run_id, metrics)``; None for ``local``
    (the sweep then runs cells in its own process, as it always has)."""
    if runner.name == "local":
        return None

    def run(config: RunConfig, parent_run_id: str) -> tuple[str, dict[str, float]]:
        outcome = runner.launch(config, parent_run_id=parent_run_id)
        return outcome.run_id, dict(outcome.result.metrics)

    return run
