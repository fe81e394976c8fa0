"""SLURM jobs as the `slurm` runner and its job arrays see them: options, submitit executors, job states from
``sacct``, waiting for jobs, and closing the run of a job that died (`runners.slurm`, `runners.slurm_sweep`)."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from benchmark.config import RunConfig
from benchmark.resolve import ResolvedRun
from benchmark.run import as_resolved, start_tracker
from registry import BenchError

# SLURM job states (sacct's first word) after which a job runs no more.
ALIVE_STATES = frozenset({"PENDING", "RUNNING", "REQUEUED", "RESIZING", "SUSPENDED", "CONFIGURING", "COMPLETING",
                          "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "STOPPED"})
KILLED_STATES = frozenset({"CANCELLED", "TIMEOUT", "PREEMPTED", "DEADLINE", "REVOKED"})
# sacct keeps a job's last *pending* reason after it ended: those say nothing about why it ended.
SCHEDULING_REASONS = frozenset({"None", "Priority", "Resources", "JobArrayTaskLimit", "Dependency", "BeginTime",
                                "QOSMaxJobsPerUserLimit", "AssocMaxJobsLimit", "ReqNodeNotAvail"})


class SlurmOptions(BaseModel):
    """``--launch-opt key=value`` of ``--launcher slurm`` (each maps to one ``sbatch`` option)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    partition: str | None = Field(default=None, description="sbatch --partition (default: the cluster's)")
    timeout_min: int = Field(default=60, ge=1, description="sbatch --time, minutes per job")
    gpus_per_node: int = Field(default=0, ge=0, description="GPUs per job; > 1 runs DeepSpeed inside the job")
    cpus_per_task: int = Field(default=1, ge=1, description="sbatch --cpus-per-task (also torch's thread count)")
    mem_gb: float | None = Field(default=None, gt=0, description="sbatch --mem in GB")
    account: str | None = Field(default=None, description="sbatch --account")
    qos: str | None = Field(default=None, description="sbatch --qos")
    constraint: str | None = Field(default=None, description="sbatch --constraint")
    max_parallel: int | None = Field(default=None, ge=1, description="array throttle (sbatch --array=...%N)")
    folder: Path | None = Field(default=None, description="submitit's job folder on a shared disk "
                                                          "(default: <cache dir>/slurm)")
    poll_s: float = Field(default=2.0, gt=0, description="seconds between state polls while waiting")
    sbatch: dict[str, str] = Field(default_factory=dict, description="more sbatch options, e.g. {\"reservation\": "
                                                                    "\"x\"} (as JSON)")


def job_folder(options: SlurmOptions, config: RunConfig) -> Path:
    """Where submitit writes job scripts, pickles and logs (must be visible from the compute nodes)."""
    return Path(options.folder or config.resolved_cache_dir() / "slurm").expanduser().resolve()


def make_executor(options: SlurmOptions, folder: Path, *, name: str, max_parallel: int | None = None) -> Any:
    """A submitit `SlurmExecutor` with ``options`` as sbatch parameters."""
    try:
        import submitit
    except ImportError as exc:  # pragma: no cover - submitit is a dependency
        raise BenchError(f"--launcher slurm needs submitit: {exc}") from exc
    executor = submitit.SlurmExecutor(folder=folder / "%j", max_num_timeout=0)
    params: dict[str, Any] = {"job_name": name, "time": options.timeout_min, "cpus_per_task": options.cpus_per_task,
                              "nodes": 1, "ntasks_per_node": 1}
    for key, value in (("partition", options.partition), ("account", options.account), ("qos", options.qos),
                       ("constraint", options.constraint)):
        if value is not None:
            params[key] = value
    if options.gpus_per_node:
        params["gpus_per_node"] = options.gpus_per_node
    if options.mem_gb is not None:
        params["mem"] = f"{int(options.mem_gb * 1024)}M"
    parallel = max_parallel or options.max_parallel
    if parallel is not None:
        params["array_parallelism"] = parallel
    if options.sbatch:
        params["additional_parameters"] = dict(options.sbatch)
    executor.update_parameters(**params)
    return executor


def inner_launcher(options: SlurmOptions) -> tuple[str, dict[str, Any]]:
    """The runner a job uses inside its allocation: DeepSpeed on the job's GPUs when it has more than one."""
    if options.gpus_per_node > 1:
        return "deepspeed", {"num_gpus": options.gpus_per_node}
    return "local", {}


def submit_error(exc: Exception) -> BenchError:
    """A submission failure (no sbatch, bad partition, ...) as a one-line `BenchError`."""
    text = str(exc).strip().splitlines()
    detail = next((line for line in reversed(text) if "error" in line.lower()), text[-1] if text else repr(exc))
    return BenchError(f"sbatch refused the job: {detail.strip()} (is the cluster up? see `sinfo`)")


# ------------------------------------------------------------------------------------------ job states


@dataclass(frozen=True)
class JobState:
    """One SLURM job (or array task) as ``sacct`` reports it."""

    job_id: str
    state: str
    reason: str = ""
    exit_code: str = ""

    @property
    def alive(self) -> bool:
        """Pending or running (or about to be)."""
        return self.state in ALIVE_STATES

    @property
    def describe(self) -> str:
        """``CANCELLED (reason None, exit 0:15)`` for messages."""
        extra = [f"reason {self.reason}"] if self.reason and self.reason not in SCHEDULING_REASONS else []
        if self.exit_code and self.exit_code != "0:0":
            extra.append(f"exit {self.exit_code}")
        return self.state + (f" ({', '.join(extra)})" if extra else "")


_ARRAY_RANGE = re.compile(r"^(\d+)_\[([^\]]+)\]$")


def _expand(job_id: str) -> list[str]:
    """``12_[0-2,5%2]`` -> ``12_0 12_1 12_2 12_5``; other ids unchanged."""
    match = _ARRAY_RANGE.match(job_id)
    if match is None:
        return [job_id]
    base, body = match.group(1), match.group(2).split("%")[0]
    out = []
    for part in body.split(","):
        lo, _, hi = part.partition("-")
        out += [f"{base}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return out


def job_states(job_ids: list[str]) -> dict[str, JobState]:
    """The state of each job / array task of ``job_ids`` (array ids expand to their tasks) from ``sacct``.

    Tasks that ``sacct`` does not list yet are absent; raises `BenchError` if ``sacct`` cannot run.
    """
    if not job_ids:
        return {}
    command = ["sacct", "-X", "-n", "-P", "-o", "JobID,State,Reason,ExitCode",
               "-j", ",".join(dict.fromkeys(j.split("_")[0] for j in job_ids))]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BenchError(f"cannot query SLURM's accounting (sacct): {exc}") from None
    if done.returncode != 0:
        raise BenchError(f"sacct failed: {done.stderr.strip() or done.stdout.strip()} (is slurmdbd running?)")
    states: dict[str, JobState] = {}
    for line in done.stdout.splitlines():
        parts = line.split("|")
        if len(parts) < 4:
            continue
        state = parts[1].split()[0] if parts[1].strip() else "UNKNOWN"
        for task in _expand(parts[0].strip()):
            states[task] = JobState(task, state, parts[2].strip(), parts[3].strip())
    return states


# ------------------------------------------------------------------------------------------ dead jobs


def close_dead_run(run: RunConfig | ResolvedRun, parent_run_id: str | None, job: JobState, *, since_ms: int) -> str:
    """Record that the job of ``run`` died: its RUNNING run (or, if it never started one, a new run)
    is closed KILLED (cancelled, timed out, preempted) or FAILED (failed, out of memory, node failure),
    tagged with SLURM's state and reason. A run that closed itself keeps its status and error and
    gains SLURM's tags. Returns the error message."""
    from mlflow.tracking import MlflowClient

    from benchmark.tracking import default_tracking_uri

    run = as_resolved(run)
    config = run.config
    status = "KILLED" if job.state in KILLED_STATES else "FAILED"
    message = f"SLURM job {job.job_id} ended {job.describe} before the run finished"
    client = MlflowClient(tracking_uri=config.tracking_uri or default_tracking_uri())
    experiment = client.get_experiment_by_name(config.experiment)
    runs = [] if experiment is None else client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.config_hash = '{run.config_hash()}' and "
                      f"attributes.start_time >= {since_ms}")
    slurm_tags = (("slurm_job_id", job.job_id), ("slurm_state", job.state), ("slurm_reason", job.reason))
    open_runs = [r for r in runs if r.info.status in ("RUNNING", "SCHEDULED")]
    closed = [r for r in runs if r.info.status in ("FAILED", "KILLED")]
    if not open_runs and closed:
        # The run closed itself (a Python error, or the job's SIGTERM) and keeps its own error: it
        # gains SLURM's word on how the job ended.
        latest = max(closed, key=lambda r: r.info.start_time or 0)
        for key, value in slurm_tags:
            client.set_tag(latest.info.run_id, key, value)
        return message
    if not open_runs:
        tracker = start_tracker(run, parent_run_id=parent_run_id)
        open_runs = [client.get_run(tracker.run_id)]
    for found in open_runs:
        for key, value in (*slurm_tags, ("error", message), ("killed_reason", message)):
            client.set_tag(found.info.run_id, key, value)
        client.set_terminated(found.info.run_id, status=status)
    return message


def wait_for_jobs(pending: dict[str, str], finished: Callable[[str], bool], *, poll_s: float,
                  on_change: Callable[[str, str, JobState | None], None], grace_s: float = 10.0) -> None:
    """Poll until every job of ``pending`` (job id -> key) has ended.

    ``finished(key)`` says whether the store holds the key's FINISHED run; ``on_change(key, what, state)``
    is called with ``what`` = ``running``, ``done`` or ``dead``. A job that SLURM reports COMPLETED
    whose run the store does not show finished within ``grace_s`` counts as dead.
    """
    seen: dict[str, str] = {}
    completed_at: dict[str, float] = {}
    while pending:
        states = job_states(list(pending))
        for job_id, key in list(pending.items()):
            state = states.get(job_id)
            if finished(key):
                on_change(key, "done", state)
                del pending[job_id]
            elif state is not None and state.state == "COMPLETED":
                first = completed_at.setdefault(job_id, time.monotonic())
                if time.monotonic() - first > grace_s:
                    on_change(key, "dead", state)
                    del pending[job_id]
            elif state is not None and not state.alive:
                on_change(key, "dead", state)
                del pending[job_id]
            elif state is not None and state.state != seen.get(job_id):
                seen[job_id] = state.state
                if state.state == "RUNNING":
                    on_change(key, "running", state)
        if pending:
            time.sleep(poll_s)
