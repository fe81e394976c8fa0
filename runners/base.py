"""The runner protocol and the registry of runners (``--launcher NAME``, entry-point group ``kernel_bench.runners``).

A runner decides *where* a run executes, never *what* it computes: it takes a `ResolvedRun`
(resolved once, at the edge: the CLI or a sweep) and returns the run's outcome (one MLflow run,
nested under ``parent_run_id`` when given). Each runner has its own pydantic ``Options``
(``--launch-opt key=value``); they are validated there and nowhere else::

    runner = make_runner("deepspeed", {"num_gpus": 2})
    outcome = runner.launch(resolve_run(config), parent_run_id=None)

What a runner needs to know about the method is its metadata: ``run.method.distributed`` (does it
share its work across ranks) and ``run.method.check_world_size(n)`` (do its options suit n ranks).

A plugin adds a runner with an entry point::

    [project.entry-points."kernel_bench.runners"]
    my-cluster = "my_pkg.runner:MyRunner"
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ValidationError

from benchmark.config import RunConfig
from benchmark.resolve import ResolvedRun
from benchmark.run import RunOutcome, as_resolved
from registry import BenchError, Registry, first_error


@runtime_checkable
class Runner(Protocol):
    """Executes one run somewhere: in this process, on DeepSpeed ranks, as a SLURM job, ..."""

    name: ClassVar[str]
    Options: ClassVar[type[BaseModel]]
    options: BaseModel

    def launch(self, run: ResolvedRun, parent_run_id: str | None = None) -> RunOutcome:
        """Execute ``run`` (a nested run of ``parent_run_id`` if given) and return its outcome."""
        ...


RUNNERS: Registry[Any] = Registry("launcher", "kernel_bench.runners")
RUNNERS.add("local", "runners.local:LocalRunner")
RUNNERS.add("deepspeed", "runners.deepspeed:DeepSpeedRunner")
RUNNERS.add("slurm", "runners.slurm:SlurmRunner")


#: ``bench run`` / ``bench sweep`` flags that are shorthands for runner options (the DeepSpeed runner's).
SHORTHAND_FLAGS = {"num_gpus": "--num-gpus", "num_nodes": "--num-nodes", "hostfile": "--hostfile",
                   "deepspeed_config": "--deepspeed-config"}


def runner_options(name: str, options: dict[str, Any], *, shorthands: dict[str, Any] | None = None) -> BaseModel:
    """``options`` validated by runner ``name``'s ``Options``; a bad one is a one-line `BenchError`.

    ``shorthands`` are options given through their own flags (`SHORTHAND_FLAGS`; None = not given), validated
    by the same ``Options`` (``options`` win); the error then names the flag.
    """
    cls = RUNNERS.get(name)
    given = {key: value for key, value in (shorthands or {}).items() if value is not None}
    merged = {**given, **options}
    try:
        return cls.Options.model_validate(merged)
    except ValidationError as exc:
        key, message = first_error(exc, "options")
        known = ", ".join(cls.Options.model_fields) or "none"
        if key in given and key not in options:
            if exc.errors()[0]["type"] == "extra_forbidden":
                raise BenchError(f"{'/'.join(SHORTHAND_FLAGS.values())} need --launcher deepspeed (launcher "
                                 f"'{cls.name}' takes --launch-opt key=value: {known})") from None
            raise BenchError(f"{SHORTHAND_FLAGS.get(key, key)}: {message} (launcher '{cls.name}')") from None
        raise BenchError(f"--launch-opt {key}: {message} (launcher '{cls.name}' takes: {known})") from None


def make_runner(name: str, options: dict[str, Any] | None = None, *,
                shorthands: dict[str, Any] | None = None) -> Runner:
    """The runner registered as ``name`` with its options (and shorthand flags, see `runner_options`) validated."""
    cls = RUNNERS.get(name)
    return cls(runner_options(name, options or {}, shorthands=shorthands))


CellRunner = Callable[[RunConfig | ResolvedRun, str], tuple[str, dict[str, float]]]
"""``(run, parent_run_id) -> (run_id, metrics)``: a sweep's cell runner; raises when the run fails."""


def sweep_runner(runner: Runner) -> CellRunner:
    """``runner`` as a sweep's cell runner: ``(resolved run or config, parent_run_id) -> (run_id, metrics)``.

    The sweep has resolved every cell already and passes its `ResolvedRun`; a `RunConfig` is resolved here, once.
    """

    def run(cell: RunConfig | ResolvedRun, parent_run_id: str) -> tuple[str, dict[str, float]]:
        outcome = runner.launch(as_resolved(cell), parent_run_id=parent_run_id)
        return outcome.run_id, dict(outcome.result.metrics)

    return run
