"""Runners: launch options, DeepSpeed launch validation, worker failures, and the multi-process path for real."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from mlflow.tracking import MlflowClient
from pydantic import ValidationError

from benchmark.config import RunConfig
from benchmark.distribution import Distribution
from benchmark.examples import Example
from benchmark.models import PromptLogitModel
from benchmark.prompts import PromptEncoder
from benchmark.training import TrainingOptions, train_model
from registry import BenchError
from runners import LaunchOptions, launch
from runners import deepspeed as ds_runner
from runners.deepspeed_stepper import deepspeed_train_config
from tests import tiny
from tests.test_finetune import NEGATIVE, POSITIVE, TEMPLATE, experiment_runs, write_mr


@pytest.fixture()
def make_config(tmp_path: Path, tiny_bert_dir: Path, mlflow_uri: str):
    """A RunConfig factory on synthetic MR data and the tiny BERT, logging to this test's experiment."""
    data = write_mr(tmp_path / "data")

    def make(**options) -> RunConfig:
        return RunConfig(task="mr", method="ft-adam", backbone=str(tiny_bert_dir), k=4, seed=13, data_dir=data,
                         tracking_uri=mlflow_uri, experiment=tmp_path.name, cache_dir=tmp_path / "cache",
                         batch_size=8, options={"steps": 12, "eval_every": 4, "batch_size": 4, "lr": 3e-3, **options})

    return make


# ------------------------------------------------------------------------------------ options and validation


def test_launch_options_defaults_and_local_rejects_launcher_flags():
    assert LaunchOptions().launcher == "local"
    with pytest.raises(ValidationError, match="need --launcher deepspeed"):
        LaunchOptions(num_gpus=2)
    with pytest.raises(ValidationError):
        LaunchOptions(launcher="slurm")
    assert LaunchOptions(launcher="deepspeed", num_gpus=2).num_gpus == 2


def test_local_runner_runs_in_process(make_config):
    config = make_config()
    outcome = launch(config)
    assert outcome.result.metrics["dev_acc"] >= 0
    assert [run.info.status for run in experiment_runs(config)] == ["FINISHED"]


def test_bundled_configs_parse_and_default_is_zero2():
    assert ds_runner.bundled_configs() == ["zero0", "zero1", "zero2"]
    assert ds_runner.load_deepspeed_config(None)["zero_optimization"]["stage"] == 2
    assert ds_runner.load_deepspeed_config(Path("zero1"))["zero_optimization"]["stage"] == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [("{not json", "is not valid JSON"), ("[1, 2]", "must be a JSON object"),
     ('{"zero_optimization": {"stage": "two"}}', "integer stage")],
)
def test_unparseable_deepspeed_config_is_one_clear_error(make_config, tmp_path, content, message):
    path = tmp_path / "ds.json"
    path.write_text(content)
    config = make_config()
    with pytest.raises(BenchError, match=message):
        launch(config, LaunchOptions(launcher="deepspeed", num_gpus=1, deepspeed_config=path))
    assert experiment_runs(config) == []  # nothing was logged


def test_missing_deepspeed_config_names_the_bundled_ones(make_config, tmp_path):
    with pytest.raises(BenchError, match=r"does not exist.*zero0, zero1, zero2"):
        launch(make_config(), LaunchOptions(launcher="deepspeed", deepspeed_config=tmp_path / "nope.json"))


def test_more_processes_than_available_is_an_error(make_config, monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    too_many = (os.cpu_count() or 1) + 1
    config = make_config()
    with pytest.raises(BenchError, match=f"--num-gpus {too_many} is more than available"):
        launch(config, LaunchOptions(launcher="deepspeed", num_gpus=too_many))
    assert experiment_runs(config) == []


def test_hostfile_checks(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# nodes\nnode-a slots=4\nnode-b slots=2\n")
    assert ds_runner.parse_hostfile(hostfile) == {"node-a": 4, "node-b": 2}
    options = LaunchOptions(launcher="deepspeed", num_gpus=2, num_nodes=2, hostfile=hostfile)
    assert ds_runner.processes_per_node(options, on_cpu=True) == 2
    with pytest.raises(BenchError, match="more than available"):
        ds_runner.processes_per_node(options.model_copy(update={"num_gpus": 3}), on_cpu=True)
    with pytest.raises(BenchError, match="lists 2 host"):
        ds_runner.processes_per_node(options.model_copy(update={"num_nodes": 3}), on_cpu=True)
    with pytest.raises(BenchError, match="needs --hostfile"):
        ds_runner.processes_per_node(LaunchOptions(launcher="deepspeed", num_nodes=2), on_cpu=True)
    hostfile.write_text("node-a 4\n")
    with pytest.raises(BenchError, match="expected 'hostname slots=N'"):
        ds_runner.parse_hostfile(hostfile)
    command = ds_runner.launcher_command(options, num_gpus=2, port=1234, worker_args=["--x"])
    assert command[-3:] == ["--module", "runners.worker", "--x"]
    assert command[command.index("--hostfile"):][:4] == ["--hostfile", str(hostfile), "--num_nodes", "2"]


def test_the_cpu_backends_shared_memory_buffers_of_a_finished_job_are_removed(tmp_path):
    """DeepSpeed's CPU allreduce leaves one /dev/shm file per rank; only the finished job's (this user, its port)
    are removed, not another job's or another user's."""
    uid = os.getuid()
    names = {
        "mine_0": f"deepspeed_allreduce_buffer_{uid}_127.0.0.1_29500_0",
        "mine_1": f"deepspeed_allreduce_buffer_{uid}_127.0.0.1_29500_1",
        "other_port": f"deepspeed_allreduce_buffer_{uid}_127.0.0.1_129500_0",
        "longer_port": f"deepspeed_allreduce_buffer_{uid}_127.0.0.1_295001_0",
        "other_user": f"deepspeed_allreduce_buffer_{uid + 1}_127.0.0.1_29500_0",
        "unrelated": "torch_shm_29500_0",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"x")
    removed = ds_runner.remove_shm_buffers(29500, tmp_path)
    assert sorted(p.name for p in removed) == sorted([names["mine_0"], names["mine_1"]])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(v for k, v in names.items() if not k.startswith("mine"))
    assert ds_runner.remove_shm_buffers(29500, tmp_path) == []


def _shm_buffers() -> set[str]:
    return {p.name for p in ds_runner.SHM_DIR.glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*")}


def test_precision_needs_gpus_and_sets_the_config():
    with pytest.raises(BenchError, match="needs CUDA GPUs"):
        ds_runner.apply_precision({}, "bf16", on_cpu=True)
    assert ds_runner.apply_precision({}, "bf16", on_cpu=False)["bf16"] == {"enabled": True}
    with pytest.raises(BenchError, match="conflicts"):
        ds_runner.apply_precision({"fp16": {"enabled": True}}, "bf16", on_cpu=False)


def test_train_config_uses_the_global_batch():
    options = TrainingOptions(batch_size=8, max_grad_norm=0.5)
    config = deepspeed_train_config({"zero_optimization": {"stage": 2}}, options, world_size=2)
    assert (config["train_batch_size"], config["train_micro_batch_size_per_gpu"]) == (8, 4)
    assert config["gradient_accumulation_steps"] == 1 and config["gradient_clipping"] == 0.5
    with pytest.raises(BenchError, match="not divisible by the 3 processes"):
        deepspeed_train_config({}, options, world_size=3)
    with pytest.raises(BenchError, match="remove 'optimizer'"):
        deepspeed_train_config({"optimizer": {"type": "Adam"}}, options, world_size=2)
    with pytest.raises(BenchError, match="ZeRO stage 3 is not supported"):
        deepspeed_train_config({"zero_optimization": {"stage": 3}}, options, world_size=2)


# ------------------------------------------------------------------------------------ worker failures


def _fake_launcher(monkeypatch: pytest.MonkeyPatch, script: str) -> None:
    """Replace the DeepSpeed launcher by ``python -c script RESULT_PATH``."""

    def command(options, *, num_gpus, port, worker_args):
        result = worker_args[worker_args.index("--result") + 1]
        return [sys.executable, "-c", script, result]

    monkeypatch.setattr(ds_runner, "launcher_command", command)


def test_worker_crash_fails_the_run_and_streams_output(make_config, monkeypatch, capsys):
    _fake_launcher(monkeypatch, "import sys; print('worker says boom', flush=True); sys.exit(3)")
    config = make_config()
    with pytest.raises(BenchError, match="failed with exit code 3"):
        launch(config, LaunchOptions(launcher="deepspeed", num_gpus=1))
    assert "worker says boom" in capsys.readouterr().out
    (run,) = experiment_runs(config)
    assert run.info.status == "FAILED" and "exit code 3" in run.data.tags["error"]


def test_worker_error_message_becomes_the_error(make_config, monkeypatch):
    script = ("import json, sys; json.dump({'error': 'batch_size 3 is not divisible'}, "
              "open(sys.argv[1] + '.error-rank1', 'w')); sys.exit(2)")
    _fake_launcher(monkeypatch, script)
    config = make_config()
    with pytest.raises(BenchError, match=r"^batch_size 3 is not divisible$"):
        launch(config, LaunchOptions(launcher="deepspeed", num_gpus=1))
    (run,) = experiment_runs(config)
    assert run.info.status == "FAILED"


def test_worker_success_reports_the_result(make_config, monkeypatch):
    script = ("import json, sys; json.dump({'metrics': {'dev_acc': 0.75}, 'predictions': {'dev': [1]}, "
              "'params': {}}, open(sys.argv[1], 'w'))")
    _fake_launcher(monkeypatch, script)
    config = make_config()
    outcome = launch(config, LaunchOptions(launcher="deepspeed", num_gpus=1))
    assert outcome.result.metrics == {"dev_acc": 0.75} and outcome.result.predictions == {"dev": [1]}
    (run,) = experiment_runs(config)
    assert run.info.status == "FINISHED" and run.data.tags["launcher"] == "deepspeed"


# ------------------------------------------------------------------------------------ two processes for real


def _tiny_problem(directory: Path):
    tokenizer = tiny.bert_tokenizer(directory)
    encoder = PromptEncoder(tokenizer, template=TEMPLATE, label_words=["terrible", "great"], max_seq_len=32)
    words = (NEGATIVE, POSITIVE)
    # Varied lengths (padding differs per shard) and 10 examples: batches of 4, 4, 2 (a short last batch).
    examples = [Example(guid=str(i), texts=(f"{words[i % 2][i % 5]} " + "and the plot " * (i % 4) + ".",),
                        label=i % 2) for i in range(10)]
    model = PromptLogitModel(tiny.bert_mlm(tokenizer), encoder.label_word_ids)
    return model, encoder.encode_all(examples), encoder.encode_all(examples[:6])


def _train_rank(rank: int, world_size: int, port: int, directory: str, out: str) -> None:
    torch.set_num_threads(1)
    if world_size > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    model, train, dev = _tiny_problem(Path(directory) / f"tok{rank}")
    options = TrainingOptions(lr=3e-3, batch_size=4, steps=9, eval_every=3)
    result = train_model(model, train, dev, options, optimizer="adam", seed=13, device=torch.device("cpu"),
                         dist=Distribution(rank=rank, world_size=world_size))
    if rank == 0:
        history = [(r.step, r.train_loss, r.metrics["dev_acc"]) for r in result.history]
        torch.save({"history": history, "params": dict(model.named_parameters())}, out)
    if world_size > 1:
        torch.distributed.destroy_process_group()


def test_two_gloo_ranks_follow_the_local_run(tmp_path):
    """Two torch.distributed (gloo) ranks, same global batch and seed: the local trajectory, with dropout on."""
    _train_rank(0, 1, 0, str(tmp_path), str(tmp_path / "local.pt"))
    mp.spawn(_train_rank, args=(2, ds_runner.free_port(), str(tmp_path), str(tmp_path / "dist.pt")), nprocs=2)
    local, dist = torch.load(tmp_path / "local.pt"), torch.load(tmp_path / "dist.pt")
    for (step, loss, acc), (step2, loss2, acc2) in zip(local["history"], dist["history"], strict=True):
        assert (step, acc) == (step2, acc2) and loss == pytest.approx(loss2, abs=1e-5)
    for name, value in local["params"].items():
        assert torch.allclose(value, dist["params"][name], atol=1e-5), name


@pytest.mark.slow
def test_deepspeed_two_cpu_ranks_match_the_local_run(make_config, monkeypatch, capsys, tmp_path):
    """``--launcher deepspeed --num-gpus 2`` on CPU (gloo): the local run's numbers, one MLflow run."""
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    config = make_config(batch_size=6)  # 8 train examples: batches of 6 and 2 (a short last batch)
    local = launch(config)
    capsys.readouterr()
    buffers = _shm_buffers()
    distributed = launch(config, LaunchOptions(launcher="deepspeed", num_gpus=2))
    assert _shm_buffers() <= buffers  # the CPU backend's shared-memory buffers are gone with the job
    shown = capsys.readouterr()
    output = shown.out + shown.err
    assert "train:" in output  # rank 0's training progress reaches the user
    assert "Loading weights" not in output and "FutureWarning" not in output  # ranks stay quiet otherwise
    assert distributed.result.metrics == local.result.metrics
    assert distributed.result.predictions == local.result.predictions
    runs = experiment_runs(config)
    assert len(runs) == 2 and {run.info.status for run in runs} == {"FINISHED"}
    client = MlflowClient(config.tracking_uri)
    local_metrics, ds_metrics = (client.get_run(o.run_id).data.metrics for o in (local, distributed))
    assert ds_metrics["best_step"] == local_metrics["best_step"]
    assert ds_metrics["final_train_loss"] == pytest.approx(local_metrics["final_train_loss"], abs=1e-4)
    history = client.get_metric_history(distributed.run_id, "train/loss")
    assert [m.step for m in history] == [4, 8, 12]  # logged once (rank 0), not per rank
    assert client.get_run(distributed.run_id).data.tags["world_size"] == "2"

    # A worker that fails for real (the config sets an optimizer): the run is FAILED, the error comes back.
    bad = tmp_path / "with-optimizer.json"
    bad.write_text(json.dumps({"zero_optimization": {"stage": 2}, "optimizer": {"type": "Adam"}}))
    with pytest.raises(BenchError, match="remove 'optimizer' from the config"):
        launch(config, LaunchOptions(launcher="deepspeed", num_gpus=2, deepspeed_config=bad))
    failed = [run for run in experiment_runs(config) if run.info.status == "FAILED"]
    assert len(failed) == 1 and "remove 'optimizer'" in failed[0].data.tags["error"]
    assert "error (rank" in capsys.readouterr().out


def test_batch_size_that_ranks_cannot_split_fails_before_launch(make_config, monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    config = make_config(train_grid={"batch_size": [4, 3]})
    with pytest.raises(BenchError, match="batch_size 3 is not divisible by the 2 processes"):
        launch(config, LaunchOptions(launcher="deepspeed", num_gpus=2))
    assert experiment_runs(config) == []
