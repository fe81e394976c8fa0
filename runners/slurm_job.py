"""What a SLURM job of the ``slurm`` runner executes: one cell against the shared store (`run_cell`).

Imported inside the job (submitit unpickles a reference to `run_cell`), so it must stay importable
from the compute nodes with the submitting environment (``sbatch`` exports it).
"""

from __future__ import annotations

import os
from typing import Any


def slurm_job_id() -> str:
    """``<array job>_<task>`` inside an array task, else the job id (empty outside SLURM)."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID", "")


def run_cell(config_json: dict[str, Any], parent_run_id: str | None, inner: str,
             inner_options: dict[str, Any]) -> dict[str, Any]:
    """Run one cell inside a SLURM job; returns ``{"run_id", "metrics", "skipped"}``.

    A cell that already has a FINISHED run in the store (finished by an earlier job) is not run
    again; SIGTERM inside the cell closes its run KILLED. ``inner`` is the runner used inside the
    allocation (``local``, or ``deepspeed`` on the job's GPUs); with ``local`` the run is tagged with
    the job id from the start.
    """
    import torch
    from mlflow.tracking import MlflowClient

    from benchmark.config import RunConfig
    from benchmark.lifecycle import sigterm_as_interrupt
    from benchmark.resolve import resolve_run
    from benchmark.run import execute, start_tracker
    from benchmark.tracking import tracked
    from runners import make_runner

    run = resolve_run(RunConfig.model_validate(config_json))
    config = run.config
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if cpus and cpus.isdigit():
        torch.set_num_threads(int(cpus))
    client = MlflowClient(tracking_uri=config.tracking_uri)
    experiment = client.get_experiment_by_name(config.experiment)
    if experiment is not None:
        done = client.search_runs([experiment.experiment_id], max_results=1,
                                  filter_string=f"tags.config_hash = '{run.config_hash()}' and "
                                                "attributes.status = 'FINISHED'")
        if done:
            return {"run_id": done[0].info.run_id, "metrics": dict(done[0].data.metrics), "skipped": True}
    job_tags = {"launcher": "slurm", "slurm_job_id": slurm_job_id(),
                "slurm_node": os.environ.get("SLURMD_NODENAME", "")}
    if inner == "local":
        tracker = start_tracker(run, parent_run_id=parent_run_id)
        tracker.set_tags(job_tags)
        # submitit lets SIGTERM (scancel, the time limit) pass; the cell stops there and closes KILLED
        # rather than run on until SLURM's SIGKILL leaves it RUNNING.
        with sigterm_as_interrupt(), tracked(tracker):
            outcome = execute(run, tracker=tracker, finish=False)
    else:
        outcome = make_runner(inner, inner_options).launch(run, parent_run_id=parent_run_id)
        for key, value in job_tags.items():
            client.set_tag(outcome.run_id, key, value)
    return {"run_id": outcome.run_id, "metrics": dict(outcome.result.metrics), "skipped": False}
