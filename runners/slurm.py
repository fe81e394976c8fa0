"""The SLURM runner (``--launcher slurm``): each run is a SLURM job submitted with submitit.

``bench run ... --launcher slurm --launch-opt partition=gpu --launch-opt timeout_min=120`` submits
one job per run and waits for it; ``bench sweep FILE --launcher slurm`` submits the sweep's
unfinished cells as one job array (`runners.slurm_sweep`). A job runs `runners.slurm_job.run_cell`:
the cell against the shared MLflow store, as a nested run of the sweep's parent. A job that dies
without closing its run (cancelled, timed out, out of memory, node failure) is seen through SLURM's
accounting (``sacct``) and its run is closed KILLED or FAILED with SLURM's state and reason.

Multi-GPU cells (``gpus_per_node`` > 1) run the DeepSpeed runner inside the allocation.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, ClassVar

from pydantic import BaseModel

from benchmark.method import RunResult
from benchmark.resolve import ResolvedRun
from benchmark.run import RunOutcome
from registry import BenchError
from runners.slurm_jobs import (
    JobState,
    SlurmOptions,
    close_dead_run,
    inner_launcher,
    job_folder,
    make_executor,
    submit_error,
    wait_for_jobs,
)

# ------------------------------------------------------------------------------------------ the runner


class SlurmRunner:
    """``--launcher slurm``: one SLURM job per run (submitit); a sweep is one job array."""

    name: ClassVar[str] = "slurm"
    Options: ClassVar[type[BaseModel]] = SlurmOptions

    def __init__(self, options: BaseModel | None = None) -> None:
        self.options: SlurmOptions = options or SlurmOptions()  # type: ignore[assignment]

    def submit(self, run: ResolvedRun, parent_run_id: str | None = None) -> Any:
        """Submit ``run`` as one job (resolved at the edge: every user error failed there, not in the job);
        returns the submitit job."""
        from benchmark.tracking import default_tracking_uri
        from runners.slurm_job import run_cell

        config = run.config.model_copy(update={"tracking_uri": run.config.tracking_uri or default_tracking_uri()})
        executor = make_executor(self.options, job_folder(self.options, config), name=f"kb-{run.config_hash()[:8]}")
        inner, inner_options = inner_launcher(self.options)
        try:
            return executor.submit(run_cell, config.model_dump(mode="json"), parent_run_id, inner, inner_options)
        except Exception as exc:  # submitit raises subprocess / its own errors for a refused sbatch
            raise submit_error(exc) from None

    def launch(self, run: ResolvedRun, parent_run_id: str | None = None) -> RunOutcome:
        """Submit ``run`` and wait for its job; a job that dies is a `BenchError` with SLURM's reason."""
        from benchmark.tracking import default_tracking_uri

        start = time.perf_counter()
        since_ms = int(time.time() * 1000) - 1000
        # Where it logs is no part of the run's identity: the resolved run stays valid.
        run = dataclasses.replace(run, config=run.config.model_copy(
            update={"tracking_uri": run.config.tracking_uri or default_tracking_uri()}))
        config = run.config
        job = self.submit(run, parent_run_id)
        print(f"submitted SLURM job {job.job_id} (logs: {job.paths.stdout})", flush=True)
        ended: dict[str, Any] = {}

        def on_change(key: str, what: str, state: JobState | None) -> None:
            ended["what"], ended["state"] = what, state

        wait_for_jobs({job.job_id: job.job_id}, lambda _: job.paths.result_pickle.exists(), poll_s=self.options.poll_s,
                      on_change=lambda k, w, s: on_change(k, w, s) if w != "running" else None)
        if ended.get("what") == "dead":
            state = ended["state"] or JobState(job.job_id, "UNKNOWN")
            if job.paths.result_pickle.exists():
                ended["what"] = "done"
            else:
                raise BenchError(close_dead_run(run, parent_run_id, state, since_ms=since_ms))
        try:
            reported = job.result()
        except Exception as exc:
            lines = str(exc).strip().splitlines()
            error = next((line for line in reversed(lines) if "Error" in line), lines[-1] if lines else repr(exc))
            raise BenchError(f"SLURM job {job.job_id} failed: {error.strip()}") from None
        result = RunResult(metrics=reported["metrics"], predictions={}, params={})
        return RunOutcome(run_id=reported["run_id"], config=config, result=result, seconds=time.perf_counter() - start)

    def sweep(self, spec: Any, **kwargs: Any) -> Any:
        """Submit a sweep's unfinished cells as one job array (see `runners.slurm_sweep.slurm_sweep`)."""
        from runners.slurm_sweep import slurm_sweep

        return slurm_sweep(spec, self, **kwargs)
