"""The bundled real model (backbone ``bert-tiny``) and MR data (``--data-dir bundled``) run a job anywhere."""

from __future__ import annotations

import csv
import tomllib
from fnmatch import fnmatch
from pathlib import Path

from mlflow.tracking import MlflowClient

from benchmark import bundled
from benchmark.backbones import resolve_backbone
from benchmark.data import load_task_pools
from registry import TASKS, load_builtins
from tests.test_cli_e2e import invoke

ROOT = Path(__file__).resolve().parents[1]


def test_bundled_files_are_package_data_with_their_notices() -> None:
    package = ROOT / "benchmark" / "bundled"
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "benchmark*" in config["packages"]["find"]["include"]
    globs = config["package-data"]["benchmark.bundled"]
    files = [p.relative_to(package).as_posix() for p in package.rglob("*")
             if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".py"]
    assert files and all(any(fnmatch(f, g) for g in globs) for f in files), files
    assert "Apache-2.0" in (package / "models" / "bert-tiny" / "NOTICE").read_text()
    assert "Pang & Lee" in (package / "data" / "README.md").read_text()


def test_bundled_mr_is_the_real_data_set() -> None:
    load_builtins()
    train, test = load_task_pools(TASKS.get("mr"), "bundled")
    # data/README.md: train 8,453 sentences (4,180 positive), test 2,000 (1,035 positive).
    assert (len(train), sum(e.label for e in train)) == (8453, 4180)
    assert (len(test), sum(e.label for e in test)) == (2000, 1035)
    with (bundled.data_dir() / "original" / "mr" / "test.csv").open(newline="") as handle:
        first = next(csv.reader(handle))
    assert test[0].texts[0] == first[1] and test[0].label == int(first[0])


def test_bert_tiny_backbone_is_the_bundled_model() -> None:
    spec = resolve_backbone("bert-tiny")
    assert Path(spec.path) == bundled.model_dir() and spec.family == "bert"
    assert (Path(spec.path) / "model.safetensors").stat().st_size > 17_000_000


def test_real_job_offline_from_an_empty_folder(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)  # no sibling folders: everything comes from the installed suite
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code, out, err = invoke(["run", "--task", "mr", "--method", "zero-shot", "--backbone", "bert-tiny",
                             "--data-dir", "bundled", "--test-cap", "200", "--tracking-uri", uri,
                             "--cache-dir", str(tmp_path / "cache")], monkeypatch, capsys)
    assert code == 0, err
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("kernel-bench").experiment_id])
    assert run.data.tags["backbone"] == "bert-tiny" and run.data.params["n_test"] == "200"
    assert f"test_acc={run.data.metrics['test_acc']:.4f}" in out
    # A real model on real data: above chance on 200 test sentences is not what a random model gives.
    assert 0.4 < run.data.metrics["test_acc"] < 0.8


def test_hub_unreachable_error_points_at_the_bundled_copy(tmp_path, monkeypatch, capsys) -> None:
    code, _, err = invoke(["data", "--task", "mr", "--backbone", "bert-tiny"], monkeypatch, capsys)
    assert code == 2 and "--data-dir bundled" in err and len(err.strip().splitlines()) == 1
