"""``bench sweep FILE --launcher slurm``: a sweep's unfinished cells as one SLURM job array.

The CLI hands `SlurmRunner.sweep` a prepared sweep (`benchmark.sweeps.prepare`: cells expanded and
checked, store open); this module uses only that object's public API (cells, store, display, parent
run), never imports the sweeps package (which sits above the runners).

1. The cells are expanded as for any sweep (`benchmark.sweeps`); those with a FINISHED run in the
   store are skipped, and so are cells whose job from an earlier submission of the same sweep is
   still pending or running (the sweep's parent run records every submission: tag
   ``slurm_job_ids`` and an artifact ``slurm/<job id>.json`` mapping array tasks to cell hashes).
2. The rest are submitted as one array (``--max-parallel N`` throttles it), one cell per task, in
   cell order, so no cross-machine lock is needed: each cell is in exactly one live task.
3. Unless ``--no-wait``, the sweep waits with the usual progress display, states from the store
   (FINISHED runs) and from SLURM (``sacct``). A task that died before its run finished has its run
   closed KILLED / FAILED with SLURM's state and reason (`runners.slurm.close_dead_run`).
4. Rerunning the same sweep resubmits exactly the cells without a FINISHED run and without a live
   task; ``--status`` shows where each cell stands without submitting anything.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry import BenchError
from runners.slurm_jobs import (
    JobState,
    close_dead_run,
    inner_launcher,
    job_states,
    make_executor,
    submit_error,
)

# A task that sacct has not listed this long after its submission is taken as lost (accounting purged).
UNLISTED_S = 600.0


@dataclass(frozen=True)
class Submission:
    """One job array of the sweep: when, and which cell each task runs."""

    job_id: str
    submitted: float
    tasks: dict[str, str]  # task id (``12_3``; ``12`` for a one-task array) -> cell hash


def _submissions(store: Any, parent_run_id: str) -> list[Submission]:
    """The job arrays recorded in the parent run, oldest first."""
    run = store.client.get_run(parent_run_id)
    ids = [j for j in run.data.tags.get("slurm_job_ids", "").split(",") if j]
    out: list[Submission] = []
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory(prefix="kernel-bench-slurm-") as tmp:
        for job_id in ids:
            try:
                path = store.client.download_artifacts(parent_run_id, f"slurm/{job_id}.json", tmp)
            except Exception as exc:  # MLflow raises several types for a missing artifact
                raise BenchError(f"the sweep's parent run {parent_run_id} lacks slurm/{job_id}.json: {exc}") from None
            payload = json.loads(Path(path).read_text())
            out.append(Submission(job_id, float(payload["submitted"]),
                                  dict(zip(payload["tasks"], payload["cells"], strict=True))))
    return out


def _record_submission(store: Any, parent_run_id: str, job_id: str, tasks: list[str], hashes: list[str]) -> None:
    run = store.client.get_run(parent_run_id)
    ids = [j for j in run.data.tags.get("slurm_job_ids", "").split(",") if j]
    payload = {"job_id": job_id, "submitted": time.time(), "tasks": tasks, "cells": hashes}
    with tempfile.TemporaryDirectory(prefix="kernel-bench-slurm-") as tmp:
        path = Path(tmp) / f"{job_id}.json"
        path.write_text(json.dumps(payload))
        store.client.log_artifact(parent_run_id, str(path), artifact_path="slurm")
    store.client.set_tag(parent_run_id, "slurm_job_ids", ",".join([*ids, job_id]))


def _latest_tasks(submissions: list[Submission]) -> dict[str, tuple[str, float]]:
    """``{cell hash: (task id, submission time)}`` of each cell's latest submission."""
    latest: dict[str, tuple[str, float]] = {}
    for submission in sorted(submissions, key=lambda s: s.submitted):
        for task, cell_hash in submission.tasks.items():
            latest[cell_hash] = (task, submission.submitted)
    return latest


def status_rows(cells: list[Any], store: Any, parent_run_id: str) -> list[tuple[Any, str, str]]:
    """(cell, store status, SLURM state of its latest task) for every cell."""
    existing = store.runs_by_hash()
    tasks = {h: t for h, (t, _) in _latest_tasks(_submissions(store, parent_run_id)).items()} if parent_run_id else {}
    states = job_states(list(tasks.values()))
    rows = []
    for cell in cells:
        statuses = {r.info.status for r in existing.get(cell.hash, [])}
        stored = next((s for s in ("FINISHED", "RUNNING", "FAILED", "KILLED") if s in statuses), "no run")
        task = tasks.get(cell.hash)
        state = states.get(task) if task else None
        slurm = f"{task} {state.describe}" if state else (f"{task} PENDING" if task else "-")
        rows.append((cell, stored, slurm))
    return rows


def status_table(rows: list[tuple[Any, str, str]]) -> Any:
    """A rich table of `status_rows`."""
    from rich.table import Table

    table = Table(title=f"sweep on SLURM: {len(rows)} cells")
    for column in ("#", "cell", "run", "SLURM task"):
        table.add_column(column)
    styles = {"FINISHED": "green", "RUNNING": "cyan", "FAILED": "red", "KILLED": "red"}
    for cell, stored, slurm in rows:
        table.add_row(str(cell.index + 1), cell.label, f"[{styles.get(stored, 'bold')}]{stored}[/]", slurm)
    return table


def slurm_sweep(sweep: Any, runner: Any, *, wait: bool = True, max_parallel: int | None = None,
                status: bool = False, console: Any = None) -> Any:
    """Submit the unfinished cells of ``sweep`` (a prepared `benchmark.sweeps.Sweep`) as one job array and
    (``wait``) follow them to the end; returns its report.

    With ``status`` nothing is submitted: the report's cells carry their current state.
    """
    from runners.slurm_job import run_cell

    cells, store = sweep.cells, sweep.store
    if status:
        report = sweep.report()
        report.parent_run_id = sweep.parent.find()
        rows = status_rows(cells, store, report.parent_run_id)
        for cell, stored, _ in rows:
            cell.status = {"FINISHED": "skipped", "RUNNING": "running", "FAILED": "failed", "KILLED": "failed"}.get(
                stored, "pending")
        if console is not None:
            console.print(status_table(rows))
        return report

    sweep.skip_finished()
    parent = sweep.parent.open()
    report = sweep.report()
    latest = _latest_tasks(_submissions(store, parent))
    states = job_states([latest[c.hash][0] for c in cells if c.status != "skipped" and c.hash in latest])
    followed: dict[str, Any] = {}  # task id -> cell
    for cell in cells:
        if cell.status == "skipped" or cell.hash not in latest:
            continue
        task, submitted = latest[cell.hash]
        state = states.get(task)
        if state is None and time.time() - submitted > UNLISTED_S:
            state = JobState(task, "UNKNOWN", "not in SLURM's accounting")
        if state is None or state.alive:  # not in sacct yet (just submitted) or still pending / running
            cell.status = "running" if state is not None and state.state == "RUNNING" else "pending"
            followed[task] = cell
        else:  # its job ended without a FINISHED run: close what it left open, then resubmit
            close_dead_run(cell.config, parent, state, since_ms=int(submitted * 1000) - 1000)
    queued = {c.hash for c in followed.values()}
    todo = [c for c in cells if c.status == "pending" and c.hash not in queued]
    by_hash = {c.hash: c for c in cells}
    if todo:
        executor = make_executor(runner.options, _folder(runner, cells[0]), name=f"kb-sweep-{sweep.hash[:8]}",
                                 max_parallel=max_parallel)
        configs = [c.config.model_dump(mode="json") for c in todo]
        inner, inner_options = inner_launcher(runner.options)
        try:
            jobs = executor.map_array(run_cell, configs, [parent] * len(todo), [inner] * len(todo),
                                      [inner_options] * len(todo))
        except Exception as exc:
            sweep.parent.close("FAILED")
            raise submit_error(exc) from None
        array_id = jobs[0].job_id.split("_")[0]
        _record_submission(store, parent, array_id, [job.job_id for job in jobs], [c.hash for c in todo])
        for job, cell in zip(jobs, todo, strict=True):
            followed[job.job_id] = cell
        if console is not None:
            console.print(f"submitted SLURM job array {array_id}: {len(todo)} cell(s)"
                          + (f", at most {max_parallel or runner.options.max_parallel} at a time"
                             if (max_parallel or runner.options.max_parallel) else "")
                          + f"; logs in {_folder(runner, cells[0])}/{array_id}_*", highlight=False)
    elif console is not None:
        console.print(f"nothing to submit: {sum(c.status == 'skipped' for c in cells)} finished, "
                      f"{len(followed)} still queued or running", highlight=False)
    if not wait:
        if todo:
            print(array_id, flush=True)
        sweep.parent.detach()  # the parent stays RUNNING; `--status` or a later sweep follows it
        return report
    _follow(sweep, followed, by_hash, store, runner, parent)
    return report


def _folder(runner: Any, cell: Any) -> Path:
    from runners.slurm_jobs import job_folder

    return job_folder(runner.options, cell.config)


def _follow(sweep: Any, followed: dict[str, Any], by_hash: dict[str, Any], store: Any, runner: Any,
            parent: str) -> None:
    """Wait for the followed tasks with the progress display; close the parent at the end."""
    from runners.slurm_jobs import wait_for_jobs

    started = {task: time.perf_counter() for task in followed}
    since_ms = int(time.time() * 1000) - 24 * 3600 * 1000

    snapshot: dict[str, Any] = {"at": 0.0, "runs": {}}

    def finished(cell_hash: str, *, fresh: bool = False) -> bool:
        # One store query per poll for all cells, not one per cell.
        if fresh or time.monotonic() - snapshot["at"] > runner.options.poll_s / 2:
            snapshot["runs"], snapshot["at"] = store.runs_by_hash(), time.monotonic()
        done = [r for r in snapshot["runs"].get(cell_hash, []) if r.info.status == "FINISHED"]
        if done:
            cell = by_hash[cell_hash]
            cell.run_id, cell.metrics = done[0].info.run_id, dict(done[0].data.metrics)
            cell.seconds = cell.metrics.get("wall_seconds", 0.0)
        return bool(done)

    task_of = {cell.hash: task for task, cell in followed.items()}

    def on_change(cell_hash: str, what: str, state: JobState | None) -> None:
        cell = by_hash[cell_hash]
        if not cell.seconds:
            cell.seconds = time.perf_counter() - started[task_of[cell_hash]]
        if what == "running":
            cell.status = "running"
            sweep.display.refresh(f"running {cell.label}")
            return
        # A job cancelled just after its run closed FINISHED (the signal came in the job's last
        # seconds) ends CANCELLED with a complete run: the cell is done. The snapshot may predate it.
        if what == "done" or finished(cell_hash, fresh=True):
            cell.status = "done"
        else:
            cell.status = "failed"
            cell.error = close_dead_run(cell.config, parent, state or JobState(task_of[cell_hash], "UNKNOWN"),
                                        since_ms=since_ms)
            runs = store.runs_by_hash(cell_hash).get(cell_hash, [])
            cell.run_id = max(runs, key=lambda r: r.info.start_time or 0).info.run_id if runs else ""
        sweep.display.cell_done(cell)

    sweep.display.start(sweep.cells)
    status = "FINISHED"
    try:
        wait_for_jobs({task: cell.hash for task, cell in followed.items()}, finished, poll_s=runner.options.poll_s,
                      on_change=on_change)
    except KeyboardInterrupt:
        status = "RUNNING"
        raise
    finally:
        sweep.display.stop()
        if status != "RUNNING":
            ok = all(c.status in ("done", "skipped") for c in sweep.cells)
            sweep.parent.close("FINISHED" if ok else "FAILED")
        else:
            sweep.parent.detach()  # the jobs go on; the parent stays RUNNING until a later sweep closes it
