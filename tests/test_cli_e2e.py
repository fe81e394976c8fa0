"""`bench` end to end on a tiny random model and LM-BFF-layout fixture data, and its error paths."""

from __future__ import annotations

import csv
import json
import random
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from benchmark.cli import main

POSITIVE = "great fun loved good best".split()
NEGATIVE = "terrible boring hated bad worst".split()


def write_mr_fixture(root: Path, n_train: int = 60, n_test: int = 30, seed: int = 0) -> Path:
    """``<root>/original/mr/{train,test}.csv`` in LM-BFF's headerless label,sentence layout."""
    rng = random.Random(seed)
    folder = root / "original" / "mr"
    folder.mkdir(parents=True)
    for name, n in (("train", n_train), ("test", n_test)):
        with (folder / f"{name}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            for i in range(n):
                label = i % 2
                word = rng.choice(POSITIVE if label else NEGATIVE)
                writer.writerow([label, f"the movie was {word} , said the man"])
    return root


@pytest.fixture()
def workspace(tmp_path: Path, tiny_bert_dir: Path) -> dict[str, str]:
    """Paths for a run: data dir, model dir, tracking store, cache."""
    return {
        "data": str(write_mr_fixture(tmp_path / "data")),
        "model": str(tiny_bert_dir),
        "uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "cache": str(tmp_path / "cache"),
    }


def invoke(
    args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    """Run `bench ARGS` in-process; returns (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["bench", *args])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _run_args(ws: dict[str, str], *extra: str) -> list[str]:
    return ["run", "--backbone", ws["model"], "--data-dir", ws["data"], "--tracking-uri", ws["uri"],
            "--cache-dir", ws["cache"], "--k", "4", *extra]


def test_zero_shot_and_linear_probe_runs_are_logged(workspace, monkeypatch, capsys) -> None:
    code, out, err = invoke(_run_args(workspace, "--task", "mr", "--method", "zero-shot", "--seed", "13,21"),
                            monkeypatch, capsys)
    assert code == 0, err
    assert "mean ± std" in out and "test_acc" in out
    code, out, err = invoke(_run_args(workspace, "--task", "mr", "--method", "linear-probe"), monkeypatch, capsys)
    assert code == 0, err
    client = MlflowClient(tracking_uri=workspace["uri"])
    experiment = client.get_experiment_by_name("kernel-bench")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted((r.data.tags["method"], r.data.tags["seed"]) for r in runs) == [
        ("linear-probe", "13"), ("zero-shot", "13"), ("zero-shot", "21")
    ]
    for run in runs:
        assert run.info.status == "FINISHED"
        assert 0.0 <= run.data.metrics["test_acc"] <= 1.0 and "dev_acc" in run.data.metrics
        assert run.data.params["k"] == "4" and run.data.params["n_train"] == "8" and run.data.params["n_test"] == "30"
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.json", "predictions.json"} <= artifacts
        predictions = json.loads(Path(client.download_artifacts(run.info.run_id, "predictions.json")).read_text())
        assert len(predictions["test"]) == 30 and len(predictions["dev"]) == 8


def test_data_command_shows_the_filled_template(workspace, monkeypatch, capsys) -> None:
    code, out, err = invoke(["data", "--task", "mr", "--k", "4", "--backbone", workspace["model"],
                             "--data-dir", workspace["data"], "--show", "2"], monkeypatch, capsys)
    assert code == 0, err
    assert "it was [MASK]." in out and "terrible" in out and "mask_pos=" in out


def test_list_commands(monkeypatch, capsys) -> None:
    for kind, expected in (("tasks", "agnews"), ("methods", "linear-probe"), ("backbones", "roberta-base"),
                           ("templates", "sst2")):
        code, out, err = invoke(["list", kind], monkeypatch, capsys)
        assert code == 0, err
        assert expected in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--task", "mrr", "--method", "zero-shot"], "unknown task 'mrr'. Did you mean: mr"),
        (["--task", "mr", "--method", "zero-shoot"], "unknown method 'zero-shoot'. Did you mean: zero-shot"),
        (["--task", "mr", "--method", "zero-shot", "--k", "100"], "k"),
        (["--task", "mr", "--method", "zero-shot", "--template", "*cls**sent_0*.*sep+*"], "*mask*"),
        (["--task", "mr", "--method", "zero-shot", "--label-words", "terrible,greatmovie"], "greatmovie"),
        (["--task", "mr", "--method", "zero-shot", "--opt", "nope=1"], "nope"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(workspace, monkeypatch, capsys, extra, message) -> None:
    args = _run_args(workspace)
    if "--k" in extra:
        args = [a for a in args if a not in ("--k", "4")]
    code, _out, err = invoke(args + extra, monkeypatch, capsys)
    assert code == 2
    assert err.startswith("error: ") and message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_unknown_backbone_and_missing_data(workspace, monkeypatch, capsys, tmp_path) -> None:
    args = ["run", "--task", "mr", "--method", "zero-shot", "--k", "4", "--tracking-uri", workspace["uri"],
            "--cache-dir", workspace["cache"]]
    code, _, err = invoke([*args, "--backbone", "robrta-base", "--data-dir", workspace["data"]], monkeypatch, capsys)
    assert code == 2 and "unknown backbone 'robrta-base'. Did you mean: roberta-base" in err
    code, _, err = invoke([*args, "--backbone", workspace["model"], "--data-dir", str(tmp_path / "nope")],
                          monkeypatch, capsys)
    assert code == 2 and "nope" in err
    code, _, err = invoke([*args, "--backbone", "roberta-base", "--data-dir", workspace["data"]], monkeypatch, capsys)
    assert code == 2 and "Hugging Face Hub" in err and "--backbone DIR" in err
    code, _, err = invoke([*args, "--backbone", workspace["model"]], monkeypatch, capsys)
    assert code == 2 and "Hub" in err and "--data-dir" in err


def test_failed_run_is_marked_failed(workspace, monkeypatch, capsys) -> None:
    from benchmark.methods import baselines

    def explode(self, ctx):
        raise RuntimeError("method exploded")

    monkeypatch.setattr(baselines.ZeroShot, "run", explode)
    with pytest.raises(RuntimeError, match="method exploded"):
        invoke(_run_args(workspace, "--task", "mr", "--method", "zero-shot"), monkeypatch, capsys)
    client = MlflowClient(tracking_uri=workspace["uri"])
    runs = client.search_runs([client.get_experiment_by_name("kernel-bench").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
