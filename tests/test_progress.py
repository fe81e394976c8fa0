"""Run output: each run says where it went; a grid's progress bars name the grid values."""

from __future__ import annotations

import pytest

from tests.test_cli_e2e import _run_args, invoke, workspace  # noqa: F401 - the fixture

pytestmark = pytest.mark.usefixtures("one_thread")


def test_run_ends_with_where_it_went(workspace, monkeypatch, capsys) -> None:  # noqa: F811
    code, out, err = invoke(_run_args(workspace, "--task", "mr", "--method", "zero-shot"), monkeypatch, capsys)
    assert code == 0, err
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=workspace["uri"])
    (run,) = client.search_runs([client.get_experiment_by_name("kernel-bench").experiment_id])
    last = out.strip().splitlines()[-1]
    assert last == (f"logged to {workspace['uri']}, experiment 'kernel-bench', run {run.info.run_id}; "
                    f"see them with: bench ui --tracking-uri {workspace['uri']}")


def test_grid_progress_bars_name_the_values(workspace, monkeypatch, capsys) -> None:  # noqa: F811
    from benchmark import training

    descriptions: list[str] = []
    real = training.tqdm

    def recording(*args, **kwargs):
        descriptions.append(kwargs.get("desc", ""))
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "tqdm", recording)
    code, _out, err = invoke(_run_args(workspace, "--task", "mr", "--method", "ft-sgd", "--opt", "steps=2",
                                       "--opt", "eval_every=2", "--train-grid", "lr=0.01,0.001"), monkeypatch, capsys)
    assert code == 0, err
    assert [d for d in descriptions if d.endswith("train")] == ["lr=0.01 train", "lr=0.001 train"]


def test_deepspeed_first_run_note_only_before_the_op_is_compiled(tmp_path, monkeypatch, capsys) -> None:
    from benchmark.cli.runs import _deepspeed_first_run_note

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    _deepspeed_first_run_note()
    err = capsys.readouterr().err
    assert "compiles an op" in err and str(tmp_path / "ext") in err
    built = tmp_path / "ext" / "deepspeed_shm_comm"
    built.mkdir(parents=True)
    (built / "deepspeed_shm_comm.so").write_bytes(b"")
    _deepspeed_first_run_note()
    assert capsys.readouterr().err == ""
