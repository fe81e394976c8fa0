"""How a run executes: runners are plugins (`runners.base.Runner`, registry `RUNNERS`, ``--launcher NAME``).

Built in: ``local`` (this process) and ``deepspeed`` (N ranks per node, one or more nodes).
The launcher does not change a run's numbers, so its
options live with the runner, outside `RunConfig`::

    from runners import make_runner
    outcome = make_runner("deepspeed", {"num_gpus": 2}).launch(resolve_run(config))

`LaunchOptions` / `launch` are the older shorthand for ``local`` and ``deepspeed`` (``launch`` also
takes a plain `RunConfig` and resolves it, once).
"""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from benchmark.config import RunConfig
from benchmark.resolve import ResolvedRun
from benchmark.run import RunOutcome, as_resolved
from runners.base import (
    RUNNERS,
    SHORTHAND_FLAGS,
    CellRunner,
    Runner,
    make_runner,
    runner_options,
    sweep_runner,
)
from runners.deepspeed import DeepSpeedOptions


class LaunchOptions(DeepSpeedOptions):
    """Where and how to run: ``local`` (this process, CPU or one GPU) or ``deepspeed`` (its options, inherited)."""

    launcher: Literal["local", "deepspeed"] = "local"

    @model_validator(mode="after")
    def _local_takes_no_launcher_options(self) -> LaunchOptions:
        if self.launcher == "local":
            extra = (self.num_gpus not in (None, 1) or self.num_nodes != 1 or self.hostfile is not None
                     or self.deepspeed_config is not None or self.precision != "fp32"
                     or self.node_rank is not None or self.master_addr is not None)
            if extra:
                raise ValueError("--num-gpus/--num-nodes/--hostfile/--deepspeed-config/--precision need "
                                 "--launcher deepspeed")
        return self

    def runner_options(self) -> dict[str, object]:
        """The options of `launcher`'s runner that these shorthand fields set."""
        options = self.model_dump(exclude={"launcher"}, exclude_defaults=True)
        if self.launcher == "local":
            options.pop("num_gpus", None)  # 1 (the validator allows no other): what local means anyway
        return options


def launch(run: RunConfig | ResolvedRun, options: LaunchOptions | None = None,
           parent_run_id: str | None = None) -> RunOutcome:
    """Execute ``run`` with the chosen launcher and return its outcome (one MLflow run either way).

    Raises `registry.BenchError` for bad launcher input (unparseable DeepSpeed config, more
    processes than devices, ...) and when the DeepSpeed workers fail (the run is then FAILED).
    """
    options = options or LaunchOptions()
    runner = make_runner(options.launcher, options.runner_options())
    return runner.launch(as_resolved(run), parent_run_id=parent_run_id)


__all__ = ["RUNNERS", "SHORTHAND_FLAGS", "CellRunner", "LaunchOptions", "RunOutcome", "Runner", "launch",
           "make_runner", "runner_options", "sweep_runner"]
