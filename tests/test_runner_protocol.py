"""The runner protocol: registry, ``--launcher``/``--launch-opt`` validated by each runner's options, plugins."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from benchmark.cli.parsing import parse_launch_opts
from benchmark.config import RunConfig
from registry import BenchError
from runners import RUNNERS, Runner, make_runner
from runners.deepspeed import DeepSpeedOptions, DeepSpeedRunner
from runners.local import LocalRunner
from tests.plugin_site import install_plugin
from tests.test_cli_e2e import invoke, write_mr_fixture

PLUGIN = '''
from typing import ClassVar
from pydantic import BaseModel, ConfigDict
from runners.local import run_local


class NoteOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: str
    times: int = 1


class NoteRunner:
    name: ClassVar[str] = "note"
    Options: ClassVar[type[BaseModel]] = NoteOptions

    def __init__(self, options):
        self.options = options

    def launch(self, run, parent_run_id=None):
        from mlflow.tracking import MlflowClient
        from benchmark.resolve import ResolvedRun
        assert isinstance(run, ResolvedRun), type(run)  # resolved once, by the CLI
        outcome = run_local(run, parent_run_id=parent_run_id)
        client = MlflowClient(run.config.tracking_uri)
        client.set_tag(outcome.run_id, "plugin_note", self.options.note * self.options.times)
        client.set_tag(outcome.run_id, "plugin_saw", f"{run.method.name} {run.method.distributed} {run.config_hash()}")
        return outcome
'''


def test_builtin_runners_are_registered_and_satisfy_the_protocol():
    assert {"local", "deepspeed"} <= set(RUNNERS.names())
    local = make_runner("local")
    assert isinstance(local, LocalRunner) and isinstance(local, Runner)
    ds = make_runner("deepspeed", {"num_gpus": 2, "deepspeed_config": "zero1"})
    assert isinstance(ds, DeepSpeedRunner) and ds.options == DeepSpeedOptions(num_gpus=2, deepspeed_config="zero1")


def test_launch_opts_parse_and_are_validated_by_the_runner():
    assert parse_launch_opts(["num-gpus=2", "hostfile=/tmp/h", "flag=true"]) == {
        "num_gpus": 2, "hostfile": "/tmp/h", "flag": True}
    with pytest.raises(BenchError, match="--launch-opt expects key=value, got 'oops'"):
        parse_launch_opts(["oops"])
    with pytest.raises(BenchError, match=r"--launch-opt partition: Extra inputs are not permitted \(launcher "
                                         r"'deepspeed' takes: num_gpus, num_nodes"):
        make_runner("deepspeed", {"partition": "gpu"})
    with pytest.raises(BenchError, match="--launch-opt num_gpus: Input should be greater than or equal to 1"):
        make_runner("deepspeed", {"num_gpus": 0})
    with pytest.raises(BenchError, match=r"unknown launcher 'deepsped'\. Did you mean: deepspeed"):
        make_runner("deepsped")


def test_local_runner_nests_under_a_parent_run(tmp_path: Path, tiny_bert_dir: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    parent = client.create_run(client.create_experiment("nest")).info.run_id
    config = RunConfig(task="mr", method="zero-shot", backbone=str(tiny_bert_dir), k=4, seed=13,
                       data_dir=write_mr_fixture(tmp_path / "data"), tracking_uri=uri, experiment="nest",
                       cache_dir=tmp_path / "cache")
    outcome = make_runner("local").launch(config, parent_run_id=parent)
    run = client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.metrics["test_acc"] == pytest.approx(outcome.result.metrics["test_acc"])


def test_cli_launch_flags_errors_are_one_line(monkeypatch, capsys, tmp_path: Path):
    base = ["run", "--task", "mr", "--method", "zero-shot", "--data-dir", str(tmp_path)]
    code, _, err = invoke([*base, "--num-gpus", "2"], monkeypatch, capsys)
    assert code == 2 and "--num-gpus/--num-nodes/--hostfile/--deepspeed-config need --launcher deepspeed" in err
    code, _, err = invoke([*base, "--launcher", "deepspeed", "--launch-opt", "bogus=1"], monkeypatch, capsys)
    assert code == 2 and "--launch-opt bogus: Extra inputs are not permitted" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = invoke([*base, "--launcher", "nope"], monkeypatch, capsys)
    assert code == 2 and "unknown launcher 'nope'" in err


def test_plugin_runner_via_entry_points(tmp_path: Path, tiny_bert_dir: Path) -> None:
    env = install_plugin(tmp_path / "site", "kb_note_runner", "0.1", PLUGIN,
                         "[kernel_bench.runners]\nnote = kb_note_runner:NoteRunner\n")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [sys.executable, "-c", "from benchmark.cli import main; main()", "run", "--task", "mr",
            "--method", "zero-shot", "--backbone", str(tiny_bert_dir), "--k", "4",
            "--data-dir", str(write_mr_fixture(tmp_path / "data")), "--tracking-uri", uri,
            "--cache-dir", str(tmp_path / "cache"), "--launcher", "note"]
    bad = subprocess.run([*args, "--launch-opt", "times=2"], env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert "--launch-opt note: Field required (launcher 'note' takes: note, times)" in bad.stderr
    ran = subprocess.run([*args, "--launch-opt", "note=hi", "--launch-opt", "times=2"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("kernel-bench").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["plugin_note"] == "hihi"
    assert run.data.tags["plugin_saw"] == f"zero-shot False {run.data.tags['config_hash']}"
