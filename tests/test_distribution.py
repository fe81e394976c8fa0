"""Distribution as one context object: methods see rank, world size and a stepper factory, never a launcher;
runners take a run resolved once at the edge."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from mlflow.tracking import MlflowClient

from benchmark.config import RunConfig
from benchmark.distribution import LOCAL, Distribution, torch_stepper
from benchmark.method import RunContext
from benchmark.resolve import ResolvedRun, resolve_run
from registry import METHODS, BenchError, load_builtins
from runners import deepspeed as ds_runner
from runners import make_runner, sweep_runner
from tests.test_finetune import experiment_runs, write_mr

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def make_config(tmp_path: Path, tiny_bert_dir: Path, mlflow_uri: str):
    """A RunConfig factory on synthetic MR data and the tiny BERT, logging to this test's experiment."""
    data = write_mr(tmp_path / "data")

    def make(method: str = "ft-adam", **options) -> RunConfig:
        if method.startswith("ft-"):
            options = {"steps": 12, "eval_every": 4, "batch_size": 4, "lr": 3e-3, **options}
        return RunConfig(task="mr", method=method, backbone=str(tiny_bert_dir), k=4, seed=13, data_dir=data,
                         tracking_uri=mlflow_uri, experiment=tmp_path.name, cache_dir=tmp_path / "cache",
                         batch_size=8, options=options)

    return make


# ------------------------------------------------------------------------------------ the context object


def test_run_context_carries_one_distribution_and_no_launcher_fields():
    fields = {f.name for f in dataclasses.fields(RunContext)}
    assert fields == {"run", "splits", "tracker", "device", "work_dir", "distribution"}
    assert {f.name: f.default for f in dataclasses.fields(RunContext)}["distribution"] is LOCAL
    assert (LOCAL.rank, LOCAL.world_size, LOCAL.make_stepper, LOCAL.distributed) == (0, 1, torch_stepper, False)
    assert Distribution(rank=1, world_size=2).distributed
    with pytest.raises(ValueError, match="rank 2 is outside a world of 2"):
        Distribution(rank=2, world_size=2)


def test_method_metadata_says_which_methods_share_their_work():
    load_builtins()
    shared = {name for name in METHODS.names() if METHODS.get(name).distributed}
    assert {"ft-adam", "ft-sgd", "lora-adam", "lora-sgd", "ntk-sgd", "ntk-signgd", "ntk-adam"} <= shared
    assert not {"zero-shot", "linear-probe"} & shared


def test_the_engine_imports_neither_runners_nor_deepspeed():
    """Statically (no engine module names them) and at run time (importing the engine loads neither)."""
    offenders = []
    for path in (REPO / "benchmark").rglob("*.py"):
        if path.relative_to(REPO / "benchmark").parts[0] in ("cli.py", "cli", "sweep.py", "sweeps"):
            continue  # the CLI and the sweeps sit above the runners
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(REPO)}: {n}" for n in names
                          if n.split(".")[0] in ("runners", "deepspeed")]
    assert offenders == []
    code = ("import sys, benchmark.run, benchmark.training, benchmark.methods.finetune, benchmark.methods.kernel; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('runners', 'deepspeed')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------ a method on two gloo ranks


def _execute_rank(rank: int, world_size: int, port: int, config_json: dict, out: str) -> None:
    """One rank: the fine-tuning method through `execute` with a Distribution whose stepper factory counts."""
    from benchmark.run import execute
    from benchmark.tracking import NullTracker

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    built: list[type] = []
    logged: list[tuple[int | None, dict[str, float]]] = []

    class Recording(NullTracker):
        def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
            logged.append((step, dict(metrics)))

    def counting(model, optimizer, schedule, options, distribution):
        stepper = torch_stepper(model, optimizer, schedule, options, distribution)
        built.append(type(stepper))
        return stepper

    run = resolve_run(RunConfig.model_validate(config_json))
    distribution = Distribution(rank=rank, world_size=world_size, make_stepper=counting)
    outcome = execute(run, tracker=Recording(), finish=False, distribution=distribution)
    if rank == 0:
        losses = [m["train/loss"] for _, m in logged if "train/loss" in m]
        Path(out).write_text(json.dumps({"metrics": outcome.result.metrics, "predictions": outcome.result.predictions,
                                         "params": outcome.result.params, "losses": losses,
                                         "steppers": [t.__name__ for t in built]}))
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_a_method_on_two_gloo_ranks_through_its_distribution_matches_the_local_run(make_config, tmp_path):
    """ft-adam with the engine's local Distribution vs. two torch.distributed ranks given a Distribution each:
    the same losses, dev/test numbers and predictions, and the injected stepper factory is the one the method used.
    (The same against two DeepSpeed ranks: tests/test_runners.py::test_deepspeed_two_cpu_ranks_match_the_local_run.)"""
    config = make_config(batch_size=4, lr=1e-2)
    local = make_runner("local").launch(resolve_run(config))
    history = MlflowClient(config.tracking_uri).get_metric_history(local.run_id, "train/loss")
    out = tmp_path / "rank0.json"
    mp.spawn(_execute_rank, args=(2, ds_runner.free_port(), config.model_dump(mode="json"), str(out)), nprocs=2)
    two = json.loads(out.read_text())
    assert two["steppers"] == ["TorchStepper"]  # built once, through the injected factory (no grid)
    assert two["losses"] == pytest.approx([m.value for m in sorted(history, key=lambda m: m.step)], abs=1e-5)
    assert two["metrics"] == local.result.metrics and two["predictions"] == local.result.predictions
    assert two["params"] == local.result.params


# ------------------------------------------------------------------------------------ resolved once, at the edge


@pytest.fixture()
def resolved(make_config) -> ResolvedRun:
    """A zero-shot run resolved here, the edge, before `no_resolution` takes effect."""
    return resolve_run(make_config("zero-shot"))


@pytest.fixture()
def no_resolution(resolved: ResolvedRun, monkeypatch: pytest.MonkeyPatch):
    """After ``resolved``, resolving a RunConfig anywhere in the engine or the runners fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a run was resolved again below the edge")

    import benchmark.resolve
    import benchmark.run

    for module in (benchmark.resolve, benchmark.run):
        monkeypatch.setattr(module, "resolve_run", refuse)
        monkeypatch.setattr(module, "resolve_method", refuse)
        monkeypatch.setattr(module, "resolve_task", refuse)


def test_runners_take_the_resolved_run_without_resolving_it_again(resolved, no_resolution, mlflow_uri):
    client = MlflowClient(mlflow_uri)
    outcome = make_runner("local").launch(resolved)
    assert client.get_run(outcome.run_id).data.tags["config_hash"] == resolved.config_hash()
    parent = client.create_run(client.get_experiment_by_name(resolved.config.experiment).experiment_id).info.run_id
    run_id, metrics = sweep_runner(make_runner("local"))(resolved, parent)
    nested = client.get_run(run_id)
    assert nested.data.tags["mlflow.parentRunId"] == parent and nested.info.status == "FINISHED"
    assert metrics["test_acc"] == outcome.result.metrics["test_acc"]


def _fake_launcher(monkeypatch: pytest.MonkeyPatch, script: str) -> list[list[str]]:
    """Replace the DeepSpeed launcher by ``python -c script RESULT_PATH``; returns the worker args seen."""
    seen: list[list[str]] = []

    def command(options, *, num_gpus, port, worker_args):
        seen.append(worker_args)
        return [sys.executable, "-c", script, worker_args[worker_args.index("--result") + 1]]

    monkeypatch.setattr(ds_runner, "launcher_command", command)
    return seen


def test_deepspeed_runner_passes_the_resolved_run_and_its_hash_to_the_workers(resolved, no_resolution, monkeypatch,
                                                                               capsys):
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    script = "import json, sys; json.dump({'metrics': {'dev_acc': 0.5}}, open(sys.argv[1], 'w'))"
    seen = _fake_launcher(monkeypatch, script)
    outcome = make_runner("deepspeed", {"num_gpus": 2}).launch(resolved)
    (args,) = seen
    assert args[args.index("--config-hash") + 1] == resolved.config_hash()
    assert ds_runner.decode(args[args.index("--config") + 1])["method"] == "zero-shot"
    assert outcome.result.metrics == {"dev_acc": 0.5} and outcome.config.device == "cpu"
    # zero-shot does not split its work: the user is told every rank runs it whole (it still runs).
    assert "method 'zero-shot' does not split its work across ranks: each of the 2 ranks runs it whole" in (
        capsys.readouterr().err)


def test_world_size_check_is_the_methods_own(make_config, monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    config = make_config(train_grid={"batch_size": [4, 3]})
    run = resolve_run(config)
    run.method.check_world_size(1)
    with pytest.raises(BenchError, match="batch_size 3 is not divisible by the 2 processes"):
        run.method.check_world_size(2)
    with pytest.raises(BenchError, match="batch_size 3 is not divisible by the 2 processes"):
        make_runner("deepspeed", {"num_gpus": 2}).launch(run)
    assert experiment_runs(config) == []  # refused before anything was logged


# ------------------------------------------------------------------------------------ one validation of options


def test_shorthand_flags_are_validated_by_the_runners_own_options():
    runner = make_runner("deepspeed", {"num_gpus": 2}, shorthands={"num_gpus": 1, "num_nodes": None, "hostfile": None})
    assert runner.options.num_gpus == 2 and runner.options.num_nodes == 1  # --launch-opt wins; None = not given
    assert make_runner("deepspeed", shorthands={"deepspeed_config": Path("zero1")}).options.deepspeed_config == Path(
        "zero1")
    with pytest.raises(BenchError, match=r"^--num-gpus: Input should be greater than or equal to 1 \(launcher "
                                         r"'deepspeed'\)$"):
        make_runner("deepspeed", shorthands={"num_gpus": 0})
    with pytest.raises(BenchError, match=r"need --launcher deepspeed \(launcher 'slurm' takes --launch-opt "
                                         r"key=value: partition, timeout_min"):
        make_runner("slurm", shorthands={"num_gpus": 2})
    assert make_runner("local", shorthands={"num_gpus": None, "num_nodes": None}).name == "local"


@pytest.mark.slow  # a worker process: DeepSpeed's import and gloo start-up
def test_a_worker_whose_resolution_differs_from_the_launchers_refuses_to_run(resolved, tmp_path, mlflow_uri):
    """The worker resolves the run in its own process; a config hash other than the launcher's (its model or
    data differ on that node) is a user error before any training, reported through the rank's error file."""
    client = MlflowClient(mlflow_uri)
    run_id = client.create_run(client.create_experiment(resolved.config.experiment)).info.run_id
    result = tmp_path / "result.json"
    args = ["--config", ds_runner.encode(resolved.config.model_dump(mode="json")), "--config-hash", "0" * 16,
            "--run-id", run_id, "--deepspeed-config", ds_runner.encode({}), "--result", str(result)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "DS_ACCELERATOR": "cpu", "RANK": "0", "LOCAL_RANK": "0",
           "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(ds_runner.free_port())}
    done = subprocess.run([sys.executable, "-m", "runners.worker", *args], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    error = json.loads((tmp_path / "result.json.error-rank0").read_text())["error"]
    assert error == (f"rank 0 resolved the run to config hash {resolved.config_hash()}, the launcher to "
                     f"{'0' * 16}: its model or data differ on this node; give every node the same")
    assert not result.exists()
