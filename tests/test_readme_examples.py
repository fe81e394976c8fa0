"""The README's task plugin example, in Python and in YAML, loads, gives the same TaskSpec, and reads its data."""

from __future__ import annotations

import re
from pathlib import Path

from benchmark.data import load_task_pools
from registry import TaskSpec, load_task_file

README = Path(__file__).resolve().parents[1] / "README.md"


def _block(marker: str, language: str) -> str:
    match = re.search(rf"<!-- {marker} -->\s*```{language}\n(.*?)```", README.read_text(), re.S)
    assert match, f"README has no {language} block after <!-- {marker} -->"
    return match.group(1)


def test_python_and_yaml_task_examples_are_the_same_spec(tmp_path: Path) -> None:
    namespace: dict[str, object] = {}
    exec(compile(_block("task-plugin-python", "python"), "README.md", "exec"), namespace)
    python_spec = namespace["MY_TASK"]
    assert isinstance(python_spec, TaskSpec)
    (tmp_path / "reviews.yaml").write_text(_block("task-plugin-yaml", "yaml"))
    yaml_spec = load_task_file(tmp_path / "reviews.yaml")  # label_map: {0: negative} has int keys
    assert yaml_spec == python_spec
    # The data layout the README shows: DATA/original/<local.dir>/train.csv, headerless label,sentence rows.
    folder = tmp_path / "data" / "original" / "reviews"
    folder.mkdir(parents=True)
    (folder / "train.csv").write_text('0,"a dull , lifeless film"\n1,"warm , funny and wise"\n' * 5)
    (folder / "test.csv").write_text('1,"warm , funny and wise"\n0,"a dull , lifeless film"\n')
    train, test = load_task_pools(yaml_spec, tmp_path / "data")
    assert len(train) == 10 and [e.label for e in test] == [1, 0]
    assert test[1].texts == ("a dull , lifeless film",)


def test_describe_lists_each_option_with_its_default(monkeypatch, capsys) -> None:
    from benchmark.methods.finetune import FtAdam
    from tests.test_cli_e2e import invoke

    monkeypatch.setenv("COLUMNS", "200")
    code, out, err = invoke(["describe", "ft"], monkeypatch, capsys)
    assert code == 0, err
    defaults = FtAdam.Options()
    assert out.startswith("ft-adam (finetune):") and "aliases: ft" in out
    for name in ("lr", "steps", "batch_size", "warmup_ratio", "loss"):
        line = next(line for line in out.splitlines() if line.startswith(f"│ {name} "))
        assert f" {getattr(defaults, name)!r} " in line, line
    code, out, err = invoke(["list", "methods"], monkeypatch, capsys)
    assert code == 0 and "steps=1000" in out
    code, _out, err = invoke(["describe", "ft-adamm"], monkeypatch, capsys)
    assert code == 2 and "unknown method 'ft-adamm'. Did you mean: ft-adam" in err


def test_sweep_takes_a_task_file(tmp_path, monkeypatch, capsys, tiny_bert_dir) -> None:
    from benchmark import sweeps as sw
    from benchmark.cli.sweep import spec_from_cli
    from tests.test_cli_e2e import invoke

    task_file = tmp_path / "reviews.yaml"
    task_file.write_text(_block("task-plugin-yaml", "yaml"))
    folder = tmp_path / "data" / "original" / "reviews"
    folder.mkdir(parents=True)
    (folder / "train.csv").write_text('0,"a dull , lifeless film"\n1,"warm , funny and wise"\n' * 6)
    (folder / "test.csv").write_text('1,"warm , funny and wise"\n0,"a dull , lifeless film"\n')
    spec = spec_from_cli(None, {"task_files": [task_file], "methods": "zero-shot", "k": "2", "seeds": [13],
                                   "backbones": str(tiny_bert_dir), "data_dir": tmp_path / "data"}, [], [])
    (cell,) = sw.expand_cells(spec, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert (cell.config.task, cell.config.task_file) == ("reviews", task_file)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code, _out, err = invoke(["sweep", "--task-file", str(task_file), "--methods", "zero-shot", "--k", "2",
                             "--seeds", "13", "--backbone", str(tiny_bert_dir), "--data-dir", str(tmp_path / "data"),
                             "--tracking-uri", uri, "--cache-dir", str(tmp_path / "cache")], monkeypatch, capsys)
    assert code == 0, err
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("kernel-bench").experiment_id],
                              "tags.task = 'reviews'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].data.params["n_test"] == "2"
