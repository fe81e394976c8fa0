"""The local runner: the run executes in the calling process, on the CPU or one GPU."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from benchmark.resolve import ResolvedRun
from benchmark.run import RunOutcome, execute, start_tracker
from benchmark.tracking import tracked


class LocalOptions(BaseModel):
    """The local runner takes no options."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class LocalRunner:
    """``--launcher local`` (the default): execute in this process (``--device`` picks CPU or GPU)."""

    name: ClassVar[str] = "local"
    Options: ClassVar[type[BaseModel]] = LocalOptions

    def __init__(self, options: BaseModel | None = None) -> None:
        self.options = options or LocalOptions()

    def launch(self, run: ResolvedRun, parent_run_id: str | None = None) -> RunOutcome:
        """Run ``run`` here; with ``parent_run_id`` its MLflow run is nested under that run."""
        return run_local(run, parent_run_id=parent_run_id)


def run_local(run: ResolvedRun, parent_run_id: str | None = None) -> RunOutcome:
    """Run ``run`` in this process (``--device`` picks CPU or GPU) and return its outcome."""
    if parent_run_id is None:
        return execute(run)
    tracker = start_tracker(run, parent_run_id=parent_run_id)
    with tracked(tracker):
        return execute(run, tracker=tracker, finish=False)
