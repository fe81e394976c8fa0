"""The slurm runner and `bench server` without a cluster: options, sbatch parameters, sacct parsing, commands."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmark.server import server_command
from registry import BenchError
from runners import make_runner
from runners.slurm import JobState, SlurmOptions, SlurmRunner, _expand, inner_launcher, make_executor


def test_slurm_options_are_validated_with_a_clear_message():
    runner = make_runner("slurm", {"partition": "gpu", "timeout_min": 30, "gpus_per_node": 4})
    assert isinstance(runner, SlurmRunner) and runner.options.partition == "gpu"
    with pytest.raises(BenchError, match=r"--launch-opt timeout_min: Input should be greater than or equal to 1 "
                                         r"\(launcher 'slurm' takes: partition, timeout_min"):
        make_runner("slurm", {"timeout_min": 0})
    with pytest.raises(BenchError, match="--launch-opt gpus: Extra inputs are not permitted"):
        make_runner("slurm", {"gpus": 2})


def test_executor_carries_the_options_as_sbatch_parameters(tmp_path: Path):
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
