"""Issue 10: a run's identity is its content, caches are keyed and checked by content, typos never become runs."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from benchmark.config import RunConfig
from benchmark.data import load_splits
from benchmark.resolve import resolve_run
from benchmark.run import execute
from registry import BenchError
from tests.test_cli_e2e import invoke, write_mr_fixture

TASK_FILE = """\
name: toy
display_name: Toy sentiment
labels: [negative, positive]
local: {dir: mr, train_file: train.csv, test_file: test.csv, text_columns: [1], label_column: 0,
        label_map: {"0": negative, "1": positive}}
template: "*cls**sent_0*_It_was*mask*.*sep+*"
label_words: {negative: terrible, positive: great}
"""


@pytest.fixture()
def ws(tmp_path: Path, tiny_bert_dir: Path) -> dict[str, str]:
    """MR fixture data, the tiny model, a store and a cache, all under ``tmp_path``."""
    data = write_mr_fixture(tmp_path / "data", n_train=40, n_test=16)
    return {"data": str(data), "model": str(tiny_bert_dir), "uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "cache": str(tmp_path / "cache"), "tmp": str(tmp_path)}


def config(ws: dict[str, str], **changes) -> RunConfig:
    """An ``ntk-sgd`` MR run on the workspace (k = 3), with ``changes``."""
    fields = {"task": "mr", "method": "ntk-sgd", "backbone": ws["model"], "k": 3, "seed": 13,
              "data_dir": Path(ws["data"]), "tracking_uri": ws["uri"], "cache_dir": Path(ws["cache"])}
    return RunConfig(**{**fields, **changes})


def runs(ws: dict[str, str]) -> list:
    client = MlflowClient(tracking_uri=ws["uri"])
    experiment = client.get_experiment_by_name("kernel-bench")
    return client.search_runs([experiment.experiment_id]) if experiment else []


# ------------------------------------------------------------------------ content identity (item 3)
def test_spelling_does_not_change_the_hash(ws, monkeypatch) -> None:
    base = resolve_run(config(ws, method="ft-adam"))
    model = Path(ws["model"])
    monkeypatch.chdir(model.parent)
    relative = resolve_run(config(ws, method="ft", task="MR", backbone=model.name,
                                  data_dir=Path(os.path.relpath(ws["data"], model.parent))))
    assert relative.config.backbone == str(model.resolve()) and relative.config.method == "ft-adam"
    assert relative.config.task == "mr"
    assert relative.config_hash() == base.config_hash()
    # where a run is logged, its cache and its device are not identity; measurement-only options neither
    elsewhere = config(ws, method="ft-adam", tracking_uri="sqlite:///elsewhere.db", cache_dir=Path(ws["tmp"]) / "c2",
                       device="cpu", options={"diagnostics": True, "save_model": True, "checkpoint": "disk"})
    assert resolve_run(elsewhere).config_hash() == base.config_hash()
    # an option spelled at its default value is the default
    assert resolve_run(config(ws, method="ft-adam", options={"lr": 1e-5})).config_hash() == base.config_hash()
    assert resolve_run(config(ws, method="ft-adam", options={"lr": 2e-5})).config_hash() != base.config_hash()
    assert resolve_run(config(ws, method="ft-adam", seed=21)).config_hash() != base.config_hash()


def test_model_and_data_count_by_content_not_path(ws, tmp_path) -> None:
    base = resolve_run(config(ws))
    copy = shutil.copytree(ws["model"], tmp_path / "copy-of-model")
    data_copy = shutil.copytree(ws["data"], tmp_path / "copy-of-data")
    moved = resolve_run(config(ws, backbone=str(copy), data_dir=data_copy))
    assert moved.config_hash() == base.config_hash()
    config_json = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config_json, "layer_norm_eps": 1e-6}))
    assert resolve_run(config(ws, backbone=str(copy))).config_hash() != base.config_hash()
    with (data_copy / "original" / "mr" / "test.csv").open("a") as handle:
        handle.write("1,one more sentence\n")
    assert resolve_run(config(ws, data_dir=data_copy)).config_hash() != base.config_hash()


def test_task_file_counts_by_content(ws, tmp_path) -> None:
    first = tmp_path / "a" / "toy.yaml"
    first.parent.mkdir()
    first.write_text(TASK_FILE)
    second = tmp_path / "b" / "task.yaml"
    second.parent.mkdir()
    shutil.copy(first, second)
    a = resolve_run(config(ws, task="", task_file=first))
    b = resolve_run(config(ws, task="", task_file=second))
    assert a.config.task == "toy" and a.config_hash() == b.config_hash()
    second.write_text(TASK_FILE.replace("positive: great", "positive: good"))
    edited = resolve_run(config(ws, task="", task_file=second))
    assert edited.label_words == ("terrible", "good") and edited.config_hash() != a.config_hash()


def test_label_words_and_named_templates_resolve_to_content(ws) -> None:
    base = resolve_run(config(ws))
    assert resolve_run(config(ws, label_words=("terrible", "great"))).config_hash() == base.config_hash()
    assert resolve_run(config(ws, label_words=("bad", "good"))).config_hash() != base.config_hash()
    same_string = resolve_run(config(ws, template=base.template))
    assert same_string.config_hash() == base.config_hash()
    assert resolve_run(config(ws, template="none")).config_hash() != base.config_hash()


def test_finished_run_is_tagged_with_canonical_names(ws) -> None:
    outcome = execute(config(ws, method="zero-shot", task="MR"))
    run = MlflowClient(ws["uri"]).get_run(outcome.run_id)
    assert run.data.tags["task"] == "mr" and run.data.params["task"] == "mr"
    assert run.data.tags["config_hash"] == resolve_run(config(ws, method="zero-shot")).config_hash()
    assert run.data.params["label_words"] == "terrible,great"


# ---------------------------------------------------------------------------- stale kernels (item 1)
def test_label_words_change_misses_the_kernel_cache(ws, tmp_path) -> None:
    cap = {"test_cap": 12}
    first = execute(config(ws, label_words=("terrible", "great"), **cap))
    changed = execute(config(ws, label_words=("bad", "good"), **cap))
    fresh = execute(config(ws, label_words=("bad", "good"), cache_dir=tmp_path / "fresh-cache", **cap))
    assert first.result.metrics["kernel_cache_hit"] == 0.0
    assert changed.result.metrics["kernel_cache_hit"] == 0.0
    assert changed.result.predictions == fresh.result.predictions
    again = execute(config(ws, label_words=("bad", "good"), **cap))
    assert again.result.metrics["kernel_cache_hit"] == 1.0 and again.result.predictions == fresh.result.predictions


def test_a_different_model_directory_misses_the_kernel_cache(ws, tmp_path) -> None:
    from tests import tiny

    first = execute(config(ws))
    other = tmp_path / "other-model"
    tokenizer = tiny.bert_tokenizer(tmp_path / "tok")
    tiny.save_pretrained(tiny.bert_mlm(tokenizer, seed=1), tokenizer, other)
    second = execute(config(ws, backbone=str(other)))
    assert first.result.metrics["kernel_cache_hit"] == 0.0 and second.result.metrics["kernel_cache_hit"] == 0.0


# ----------------------------------------------------------------------- corrupt split cache (item 2)
def _split_cache_file(ws) -> Path:
    (path,) = (Path(ws["cache"]) / "splits").glob("*.json")
    return path


@pytest.mark.parametrize("flip", ["one", "all"])
def test_corrupt_split_cache_is_recomputed_with_a_warning(ws, caplog, flip) -> None:
    from registry import TASKS, load_builtins

    load_builtins()
    task = TASKS.get("mr")

    def load():
        return load_splits(task, k=3, seed=13, data_dir=Path(ws["data"]), test_cap=16,
                           cache_dir=Path(ws["cache"]) / "splits")

    clean = load()
    path = _split_cache_file(ws)
    payload = json.loads(path.read_text())
    rows = payload["splits"]["train"] if flip == "all" else payload["splits"]["train"][:1]
    for row in rows:
        row["label"] = 1 - row["label"]
    path.write_text(json.dumps(payload))
    with caplog.at_level(logging.WARNING, logger="benchmark.data"):
        again = load()
    assert again == clean
    warnings = [r for r in caplog.records if "split cache" in r.getMessage()]
    assert len(warnings) == 1 and "checksum" in warnings[0].getMessage()
    caplog.clear()
    assert load() == clean and not caplog.records  # rewritten: the next load is clean and silent


def test_corrupt_split_cache_gives_the_clean_result_end_to_end(ws, tmp_path) -> None:
    clean = execute(config(ws, cache_dir=tmp_path / "clean"))
    execute(config(ws))
    path = _split_cache_file(ws)
    payload = json.loads(path.read_text())
    for row in payload["splits"]["train"]:
        row["label"] = 1 - row["label"]
    path.write_text(json.dumps(payload))
    shutil.rmtree(Path(ws["cache"]) / "kernels")
    again = execute(config(ws))
    assert again.result.predictions == clean.result.predictions
    assert again.result.metrics["test_acc"] == clean.result.metrics["test_acc"]


# --------------------------------------------------------------------- cache write failures (item 7)
def test_unwritable_kernel_cache_warns_and_the_run_finishes(ws, tmp_path, caplog) -> None:
    clean = execute(config(ws, cache_dir=tmp_path / "clean"))
    cache = Path(ws["cache"])
    cache.mkdir(parents=True)
    (cache / "kernels").write_text("not a directory")  # every kernel write fails (also as root)
    (cache / "splits").write_text("not a directory")
    with caplog.at_level(logging.WARNING):
        outcome = execute(config(ws))
    assert outcome.result.metrics["test_acc"] == clean.result.metrics["test_acc"]
    assert MlflowClient(ws["uri"]).get_run(outcome.run_id).info.status == "FINISHED"
    messages = [r.getMessage() for r in caplog.records]
    assert any("could not write the kernel cache" in m for m in messages)
    assert any("could not write the split cache" in m for m in messages)


# --------------------------------------------------------------------- imported kernels (item 6)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_load_kernels_with_non_finite_values_is_refused_before_a_run(ws, tmp_path, monkeypatch, capsys, bad) -> None:
    out = tmp_path / "kernels"
    base = ["--task", "mr", "--method", "ntk-sgd", "--backbone", ws["model"], "--data-dir", ws["data"],
            "--cache-dir", ws["cache"], "--k", "3"]
    code, _, err = invoke(["kernel", "--out", str(out), *base], monkeypatch, capsys)
    assert code == 0, err
    for split in ("train", "test"):
        kernel, labels = torch.load(out / f"{split}_kernels_mr.pt")
        kernel[0, 0, 1, 0] = bad
        torch.save((kernel, labels), out / f"{split}_kernels_mr.pt")
    code, _, err = invoke(["run", *base, "--tracking-uri", ws["uri"], "--load-kernels", str(out)], monkeypatch, capsys)
    assert code == 2 and "NaN or Inf" in err and len(err.strip().splitlines()) == 1
    assert runs(ws) == []


def test_load_kernels_with_wrong_labels_is_refused_before_a_run(ws, tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "kernels"
    base = ["--task", "mr", "--method", "ntk-sgd", "--backbone", ws["model"], "--data-dir", ws["data"],
            "--cache-dir", ws["cache"], "--k", "3"]
    code, _, err = invoke(["kernel", "--out", str(out), *base], monkeypatch, capsys)
    assert code == 0, err
    kernel, labels = torch.load(out / "dev_kernels_mr.pt")
    torch.save((kernel, labels.flip(0)), out / "dev_kernels_mr.pt")
    code, _, err = invoke(["run", *base, "--tracking-uri", ws["uri"], "--load-kernels", str(out)], monkeypatch, capsys)
    assert code == 2 and "do not match this run's dev split" in err
    code, _, err = invoke(["run", *base, "--tracking-uri", ws["uri"], "--load-kernels", str(out), "--k", "2"],
                          monkeypatch, capsys)
    assert code == 2 and "does not fit this run" in err
    assert runs(ws) == []


def test_loaded_kernels_count_by_content(ws, tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "kernels"
    code, _, err = invoke(["kernel", "--out", str(out), "--task", "mr", "--method", "ntk-sgd", "--backbone",
                           ws["model"], "--data-dir", ws["data"], "--cache-dir", ws["cache"], "--k", "3"],
                          monkeypatch, capsys)
    assert code == 0, err
    copy = shutil.copytree(out, tmp_path / "copy")
    first = resolve_run(config(ws, options={"load_kernels": str(out)}))
    assert resolve_run(config(ws, options={"load_kernels": str(copy)})).config_hash() == first.config_hash()
    kernel, labels = torch.load(copy / "test_kernels_mr.pt")
    torch.save((kernel * 2, labels), copy / "test_kernels_mr.pt")
    assert resolve_run(config(ws, options={"load_kernels": str(copy)})).config_hash() != first.config_hash()
    assert resolve_run(config(ws)).config_hash() != first.config_hash()


# ------------------------------------------------------------------ typos never become runs (item 9)
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--template", "no-such-template"], "unknown template"),
        (["--label-words", "terrible,wonderfulness"], "wonderfulness"),
        (["--opt", "memory_budget=lots"], "cannot read memory size 'lots'"),
        (["--backbone", "./no/such/model"], "no/such/model"),
        (["--load-kernels", "."], "no reference kernel file"),
        (["--method", "zero-shot", "--template", "none"], "zero-shot needs a prompt"),
    ],
)
def test_typos_fail_before_any_mlflow_run(ws, monkeypatch, capsys, extra, message) -> None:
    args = ["run", "--task", "mr", "--method", "ntk-sgd", "--backbone", ws["model"], "--data-dir", ws["data"],
            "--tracking-uri", ws["uri"], "--cache-dir", ws["cache"], "--k", "3"]
    monkeypatch.chdir(ws["tmp"])
    code, _, err = invoke([*args, *extra], monkeypatch, capsys)
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1
    assert runs(ws) == []


def test_sweep_with_a_bad_template_fails_before_any_cell(ws, monkeypatch, capsys) -> None:
    from benchmark import pipeline

    def no_model(*args, **kwargs):  # the sweep must fail before loading any model
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(pipeline, "load_masked_lm", no_model)
    code, _, err = invoke(["sweep", "--tasks", "mr", "--methods", "zero-shot,ntk-sgd", "--k", "3", "--seeds", "13,21",
                           "--backbone", ws["model"], "--data-dir", ws["data"], "--tracking-uri", ws["uri"],
                           "--cache-dir", ws["cache"], "--template", "*cls**sent_0*_It_was*mask*.*sep+*",
                           "--template", "*cls**sent_0*_It_was*maskk*.*sep+*"], monkeypatch, capsys)
    assert code == 2 and "maskk" in err
    assert runs(ws) == []


def test_resolve_rejects_a_task_name_that_contradicts_the_file(ws, tmp_path) -> None:
    path = tmp_path / "toy.yaml"
    path.write_text(TASK_FILE)
    with pytest.raises(BenchError, match="does not match the name 'toy'"):
        resolve_run(config(ws, task="sst2", task_file=path))
    assert resolve_run(config(ws, task="TOY", task_file=path)).config.task == "toy"


def test_file_digests_are_remembered_and_a_damaged_memo_is_ignored(tmp_path, caplog) -> None:
    import hashlib

    from benchmark import identity

    target = tmp_path / "weights.bin"
    target.write_bytes(b"0123456789" * 1000)
    truth = hashlib.sha256(target.read_bytes()).hexdigest()
    assert identity.file_digest(target, cache_dir=tmp_path / "cache") == truth
    memo = tmp_path / "cache" / "digests.json"
    data = json.loads(memo.read_text())
    assert list(data["entries"].values()) == [truth]
    data["entries"] = {key: "0" * 64 for key in data["entries"]}  # an edited memo must not be believed
    memo.write_text(json.dumps(data))
    identity._memo.clear()
    with caplog.at_level(logging.WARNING, logger="benchmark.identity"):
        assert identity.file_digest(target, cache_dir=tmp_path / "cache") == truth
    assert "damaged or was edited" in caplog.text
    target.write_bytes(b"changed")  # new size and mtime: hashed again
    assert identity.file_digest(target, cache_dir=tmp_path / "cache") == hashlib.sha256(b"changed").hexdigest()
