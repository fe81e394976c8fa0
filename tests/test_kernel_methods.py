"""Kernel methods end to end on a tiny model: runs, caching, multi-class A-SignGD, reference files, errors."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.test_cli_e2e import invoke, write_mr_fixture

WORDS = ["terrible", "bad", "okay", "good", "great"]


def write_sst5_fixture(root: Path, per_label: int = 6, n_test: int = 15) -> Path:
    """``<root>/original/sst-5/{train,test}.csv``: five classes, headerless label,sentence."""
    rng = random.Random(1)
    folder = root / "original" / "sst-5"
    folder.mkdir(parents=True)
    for name, n in (("train", 5 * per_label), ("test", n_test)):
        with (folder / f"{name}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            for i in range(n):
                writer.writerow([i % 5, f"the {rng.choice(['movie', 'film'])} was {WORDS[i % 5]}"])
    return root


@pytest.fixture()
def ws(tmp_path: Path, tiny_bert_dir: Path) -> dict[str, str]:
    """A workspace: MR and SST-5 fixtures, the tiny model, a store and a cache."""
    data = write_mr_fixture(tmp_path / "data", n_train=40, n_test=12)
    write_sst5_fixture(data)
    return {"data": str(data), "model": str(tiny_bert_dir), "uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "cache": str(tmp_path / "cache"), "tmp": str(tmp_path)}


def _args(ws: dict[str, str], task: str, method: str, *extra: str, k: int = 3) -> list[str]:
    return ["run", "--task", task, "--method", method, "--backbone", ws["model"], "--data-dir", ws["data"],
            "--tracking-uri", ws["uri"], "--cache-dir", ws["cache"], "--k", str(k), "--seed", "13", *extra]


def _runs(ws: dict[str, str]) -> list:
    client = MlflowClient(tracking_uri=ws["uri"])
    return client.search_runs([client.get_experiment_by_name("kernel-bench").experiment_id],
                              order_by=["attributes.start_time ASC"])


def test_ntk_sgd_logs_and_reuses_cached_kernels(ws, monkeypatch, capsys) -> None:
    code, _, err = invoke(_args(ws, "mr", "ntk-sgd"), monkeypatch, capsys)
    assert code == 0, err
    code, _, err = invoke(_args(ws, "mr", "ntk-sgd"), monkeypatch, capsys)
    assert code == 0, err
    first, second = _runs(ws)
    for run in (first, second):
        assert run.info.status == "FINISHED"
        assert run.data.params["result.solver"] == "lstsq" and int(run.data.params["result.kernel_params"]) > 0
        assert 0 <= run.data.metrics["test_acc"] <= 1
    assert first.data.metrics["kernel_cache_hit"] == 0.0 and "kernel_seconds" in first.data.metrics
    assert second.data.metrics["kernel_cache_hit"] == 1.0
    assert second.data.metrics["test_acc"] == first.data.metrics["test_acc"]


def test_ntk_adam_runs_on_a_five_class_task(ws, monkeypatch, capsys) -> None:
    code, _, err = invoke(_args(ws, "sst5", "ntk-adam", "--opt", "f0=false"), monkeypatch, capsys)
    assert code == 0, err
    (run,) = _runs(ws)
    assert run.data.params["result.solver"] == "asym" and run.data.params["result.formula"] == "asym"
    assert {"result.solver.gamma", "result.solver.lam"} <= set(run.data.params)
    assert run.data.params["n_train"] == "15" and run.data.params["n_test"] == "15"


def test_bench_kernel_files_round_trip_through_load_kernels(ws, monkeypatch, capsys) -> None:
    out_dir = Path(ws["tmp"]) / "kernels"
    code, _out, err = invoke(["kernel", "--task", "mr", "--method", "ntk-adam", "--out", str(out_dir),
                             "--backbone", ws["model"], "--data-dir", ws["data"], "--cache-dir", ws["cache"],
                             "--k", "3"], monkeypatch, capsys)
    assert code == 0, err
    kernel, labels = torch.load(out_dir / "test_kernels_mr.pt")
    assert kernel.shape == (2, 6, 1, 12, 1) and labels.shape == (12,)
    code, _, err = invoke(_args(ws, "mr", "ntk-adam", "--load-kernels", str(out_dir)), monkeypatch, capsys)
    assert code == 0, err
    code, _, err = invoke(_args(ws, "mr", "ntk-adam"), monkeypatch, capsys)
    assert code == 0, err
    from_files, computed = _runs(ws)
    assert from_files.data.metrics["test_acc"] == computed.data.metrics["test_acc"]
    # A kernel file for another k does not fit: one clear error.
    code, _, err = invoke(_args(ws, "mr", "ntk-adam", "--load-kernels", str(out_dir), k=2), monkeypatch, capsys)
    assert code == 2 and "does not fit this run" in err
    # Files of the SGD formula are not A-SignGD stacks.
    code, _, err = invoke(_args(ws, "mr", "ntk-sgd", "--load-kernels", str(out_dir)), monkeypatch, capsys)
    assert code == 2 and "expected [N_train, C, N_x, C]" in err


@pytest.mark.parametrize(
    ("method", "opts", "message"),
    [
        ("ntk-sgd", ["--opt", "solver=ridge"], "unknown kernel solver 'ridge'"),
        ("ntk-sgd", ["--opt", "params=lora"], "lora"),
        ("ntk-sgd", ["--opt", "params=everything"], "unknown params choice 'everything'"),
    ],
)
def test_kernel_bad_input(ws, monkeypatch, capsys, method, opts, message) -> None:
    code, _, err = invoke(_args(ws, "mr", method, *opts), monkeypatch, capsys)
    assert code == 2 and message in err
    assert len(err.strip().splitlines()) == 1


def test_lora_kernel_counts_only_adapters(ws, monkeypatch, capsys) -> None:
    code, _, err = invoke(_args(ws, "mr", "lora-ntk-sgd", "--opt", "lora_r=2"), monkeypatch, capsys)
    assert code == 0, err
    (run,) = _runs(ws)
    # 2 layers x (query, value) x (A: r x 32 + B: 32 x r) with r = 2
    assert int(run.data.params["result.kernel_params"]) == 2 * 2 * (2 * 32 + 32 * 2)


def test_sibling_formulas_reuse_one_gradient_pass(ws, monkeypatch, capsys) -> None:
    for method in ("ntk-signgd", "ntk-sgd", "ntk-adam"):
        code, _, err = invoke(_args(ws, "mr", method), monkeypatch, capsys)
        assert code == 0, err
    runs = _runs(ws)
    assert [r.data.params["result.formula"] for r in runs] == ["signgd", "sgd", "asym"]
    assert [r.data.metrics["kernel_cache_hit"] for r in runs] == [0.0, 1.0, 1.0]
