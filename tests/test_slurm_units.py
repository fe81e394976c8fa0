"""The slurm runner and `bench server` without a cluster: options, sbatch parameters, sacct parsing, commands."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from benchmark.server import server_command
from registry import BenchError
from runners import make_runner
from runners.slurm import SlurmRunner
from runners.slurm_jobs import JobState, SlurmOptions, _expand, inner_launcher, make_executor


def test_slurm_options_are_validated_with_a_clear_message():
    runner = make_runner("slurm", {"partition": "gpu", "timeout_min": 30, "gpus_per_node": 4})
    assert isinstance(runner, SlurmRunner) and runner.options.partition == "gpu"
    with pytest.raises(BenchError, match=r"--launch-opt timeout_min: Input should be greater than or equal to 1 "
                                         r"\(launcher 'slurm' takes: partition, timeout_min"):
        make_runner("slurm", {"timeout_min": 0})
    with pytest.raises(BenchError, match="--launch-opt gpus: Extra inputs are not permitted"):
        make_runner("slurm", {"gpus": 2})


def test_executor_carries_the_options_as_sbatch_parameters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # submitit builds a SLURM executor only where `srun` is on the PATH; nothing here runs it
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    options = SlurmOptions(partition="gpu", timeout_min=45, gpus_per_node=2, cpus_per_task=8, mem_gb=16,
                           account="lab", max_parallel=3, sbatch={"reservation": "paper"})
    params = make_executor(options, tmp_path, name="kb-x").parameters
    assert params["partition"] == "gpu" and params["time"] == 45 and params["gpus_per_node"] == 2
    assert params["cpus_per_task"] == 8 and params["mem"] == "16384M" and params["account"] == "lab"
    assert params["array_parallelism"] == 3 and params["additional_parameters"] == {"reservation": "paper"}
    assert make_executor(options, tmp_path, name="kb-x", max_parallel=5).parameters["array_parallelism"] == 5
    assert inner_launcher(options) == ("deepspeed", {"num_gpus": 2})
    assert inner_launcher(SlurmOptions(gpus_per_node=1)) == ("local", {})


def test_sacct_array_ids_and_states():
    assert _expand("12_[0-2,5%2]") == ["12_0", "12_1", "12_2", "12_5"]
    assert _expand("12_7") == ["12_7"] and _expand("9") == ["9"]
    assert not JobState("1_0", "CANCELLED").alive and JobState("1_0", "PENDING").alive
    assert JobState("1_0", "OUT_OF_MEMORY", "None", "0:125").describe == "OUT_OF_MEMORY (exit 0:125)"
    assert JobState("1_0", "FAILED", "NonZeroExitCode", "1:0").describe == "FAILED (reason NonZeroExitCode, exit 1:0)"


def test_server_command_takes_a_sql_store_and_serves_artifacts(tmp_path: Path):
    command = server_command(f"sqlite:///{tmp_path}/mlflow.db")
    assert command[2:4] == ["mlflow", "server"] and "--serve-artifacts" in command
    assert command[command.index("--artifacts-destination") + 1] == str(tmp_path / "mlartifacts")
    assert command[command.index("--host") + 1] == "127.0.0.1" and command[-1] == "1"
    assert server_command("postgresql://u@db/mlflow", artifacts=tmp_path)[-1] == "4"
    with pytest.raises(BenchError, match="must be a SQL database URI"):
        server_command(str(tmp_path / "mlruns"))
    with pytest.raises(BenchError, match="a SQLite store takes one writer"):
        server_command(f"sqlite:///{tmp_path}/mlflow.db", workers=2)


def test_slurm_sweep_flags_need_the_slurm_launcher(monkeypatch, capsys):
    from tests.test_cli_e2e import invoke

    code, _, err = invoke(["sweep", "--tasks", "mr", "--methods", "zero-shot", "--status"], monkeypatch, capsys)
    assert code == 2 and "--status and --max-parallel are for --launcher slurm" in err


def test_a_jobs_cell_runs_once_and_an_inner_runner_gets_the_resolved_run(tmp_path: Path, tiny_bert_dir: Path,
                                                                          monkeypatch):
    """`run_cell` (what a SLURM job executes) without a cluster: the cell is resolved once in the job and run by
    the inner runner; a second job of the same cell finds its FINISHED run and skips it."""
    from mlflow.tracking import MlflowClient

    from benchmark.config import RunConfig
    from benchmark.resolve import ResolvedRun
    from runners.slurm_job import run_cell
    from tests.test_cli_e2e import write_mr_fixture

    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = RunConfig(task="mr", method="zero-shot", backbone=str(tiny_bert_dir), k=4, seed=13, test_cap=12,
                       data_dir=write_mr_fixture(tmp_path / "data"), tracking_uri=uri, cache_dir=tmp_path / "cache")
    first = run_cell(config.model_dump(mode="json"), None, "local", {})
    assert not first["skipped"]
    run = MlflowClient(uri).get_run(first["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["slurm_job_id"] == "4242"
    assert run.data.metrics["test_acc"] == first["metrics"]["test_acc"]
    again = run_cell(config.model_dump(mode="json"), None, "local", {})
    assert again["skipped"] and again["run_id"] == first["run_id"]
    assert {k: again["metrics"][k] for k in first["metrics"]} == first["metrics"]  # the store's (+ wall_seconds)
    other = config.model_copy(update={"seed": 21})
    # Inner deepspeed (a multi-GPU job): the DeepSpeed parent gets the job's resolved run; its launcher is replaced
    # by a script that reports a result, as in tests/test_runners.py.
    from runners import deepspeed as ds_runner

    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    parents: list[object] = []
    run_deepspeed = ds_runner.run_deepspeed

    def recording_ds(run, options, parent_run_id=None):
        parents.append(run)
        return run_deepspeed(run, options, parent_run_id=parent_run_id)

    script = "import json, sys; json.dump({'metrics': {'dev_acc': 0.25}}, open(sys.argv[1], 'w'))"
    monkeypatch.setattr(ds_runner, "run_deepspeed", recording_ds)
    monkeypatch.setattr(ds_runner, "launcher_command", lambda options, *, num_gpus, port, worker_args: [
        sys.executable, "-c", script, worker_args[worker_args.index("--result") + 1]])
    through = run_cell(other.model_dump(mode="json"), None, "deepspeed", {"num_gpus": 2})
    (given,) = parents
    assert isinstance(given, ResolvedRun) and given.config.seed == 21
    assert through == {"run_id": through["run_id"], "metrics": {"dev_acc": 0.25}, "skipped": False}
    tags = MlflowClient(uri).get_run(through["run_id"]).data.tags
    assert tags["slurm_job_id"] == "4242" and tags["world_size"] == "2" and tags["config_hash"] == given.config_hash()


def _cell(cell_hash: str):
    from types import SimpleNamespace

    return SimpleNamespace(hash=cell_hash, label=cell_hash, config=cell_hash, status="pending", run_id="",
                           metrics={}, seconds=0.0, error="")


def test_a_job_cancelled_after_its_run_finished_is_a_done_cell(monkeypatch):
    """`scancel` can land in a job's last seconds, after its run closed FINISHED: SLURM says CANCELLED, the
    store's snapshot of that poll may predate the run's end. The cell is done (no KILLED run is added);
    a cancelled job without a finished run is a failed cell closed through `close_dead_run`."""
    from types import SimpleNamespace

    from runners import slurm_jobs, slurm_sweep

    finished = SimpleNamespace(info=SimpleNamespace(status="FINISHED", run_id="r-done", start_time=2),
                               data=SimpleNamespace(metrics={"test_acc": 0.75, "wall_seconds": 3.0}))
    queries: list[str | None] = []

    class Store:
        def runs_by_hash(self, config_hash=None):
            queries.append(config_hash)
            return {} if len(queries) == 1 else {"late": [finished]}  # the first snapshot predates the run's end

    closed: list[tuple[str, str]] = []

    def close_dead_run(config, parent, state, *, since_ms):
        closed.append((config, state.state))
        return f"SLURM job {state.job_id} ended {state.state} before the run finished"

    monkeypatch.setattr(slurm_jobs, "job_states", lambda ids: {i: JobState(i, "CANCELLED") for i in ids})
    monkeypatch.setattr(slurm_sweep, "close_dead_run", close_dead_run)
    late, dead = _cell("late"), _cell("dead")
    ended: list[str] = []
    display = SimpleNamespace(start=lambda cells: None, refresh=lambda *a: None, stop=lambda: None,
                              cell_done=lambda cell: ended.append(cell.hash))
    parent = SimpleNamespace(status="", close=lambda status: setattr(parent, "status", status))
    sweep = SimpleNamespace(display=display, cells=[late, dead], parent=parent)
    runner = SimpleNamespace(options=SlurmOptions(poll_s=60))
    slurm_sweep._follow(sweep, {"7_0": late, "7_1": dead}, {"late": late, "dead": dead}, Store(), runner, "p")
    assert late.status == "done" and late.run_id == "r-done" and late.metrics["test_acc"] == 0.75
    assert dead.status == "failed" and dead.error == "SLURM job 7_1 ended CANCELLED before the run finished"
    assert closed == [("dead", "CANCELLED")] and ended == ["late", "dead"] and parent.status == "FAILED"
    assert queries[:2] == [None, None]  # the cancelled job's cell asked the store again before being called dead


def test_a_dead_jobs_run_is_closed_once_and_a_self_closed_run_keeps_its_error(tmp_path: Path, tiny_bert_dir: Path):
    """`close_dead_run`: a RUNNING run is closed KILLED with SLURM's state; a run that closed itself (its own
    error, or the job's SIGTERM) keeps status and error and gains SLURM's tags; no second run is opened."""
    import time

    from mlflow.tracking import MlflowClient

    from benchmark.config import RunConfig
    from benchmark.run import start_tracker
    from benchmark.tracking import close_run
    from runners.slurm_jobs import close_dead_run
    from tests.test_cli_e2e import write_mr_fixture

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = RunConfig(task="mr", method="zero-shot", backbone=str(tiny_bert_dir), k=4, seed=13, test_cap=12,
                       data_dir=write_mr_fixture(tmp_path / "data"), tracking_uri=uri, cache_dir=tmp_path / "cache")
    since_ms = int(time.time() * 1000) - 1000
    client = MlflowClient(uri)
    running = start_tracker(config)
    message = close_dead_run(config, None, JobState("9_0", "CANCELLED", "None", "0:15"), since_ms=since_ms)
    assert message == "SLURM job 9_0 ended CANCELLED (exit 0:15) before the run finished"
    run = client.get_run(running.run_id)
    assert run.info.status == "KILLED" and run.data.tags["slurm_state"] == "CANCELLED"
    assert run.data.tags["error"] == message

    config = config.model_copy(update={"seed": 21})
    own = start_tracker(config)
    close_run(own, "FAILED", "RuntimeError: out of cheese")
    close_dead_run(config, None, JobState("9_1", "FAILED", "NonZeroExitCode", "1:0"), since_ms=since_ms)
    run = client.get_run(own.run_id)
    assert run.info.status == "FAILED" and run.data.tags["error"] == "RuntimeError: out of cheese"
    assert run.data.tags["slurm_state"] == "FAILED" and run.data.tags["slurm_job_id"] == "9_1"
    experiment = client.get_experiment_by_name(config.experiment).experiment_id
    assert len(client.search_runs([experiment])) == 2


def test_sigterm_in_a_jobs_cell_closes_its_run_killed(tmp_path: Path, tiny_bert_dir: Path, monkeypatch):
    """submitit lets SIGTERM (scancel, the time limit) through to the job; the cell stops at once and its run
    closes KILLED instead of running on until SLURM's SIGKILL leaves it RUNNING."""
    import os
    import signal
    import time

    from mlflow.tracking import MlflowClient

    from benchmark.config import RunConfig
    from benchmark.lifecycle import Terminated
    from runners.slurm_job import run_cell
    from tests.test_cli_e2e import write_mr_fixture

    def cancelled(run, tracker, finish):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
        raise AssertionError("SIGTERM did not stop the cell")

    monkeypatch.setattr("benchmark.run.execute", cancelled)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = RunConfig(task="mr", method="zero-shot", backbone=str(tiny_bert_dir), k=4, seed=13, test_cap=12,
                       data_dir=write_mr_fixture(tmp_path / "data"), tracking_uri=uri, cache_dir=tmp_path / "cache")
    started = time.monotonic()
    with pytest.raises(Terminated):
        run_cell(config.model_dump(mode="json"), None, "local", {})
    assert time.monotonic() - started < 20
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name(config.experiment).experiment_id])
    assert run.info.status == "KILLED" and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
