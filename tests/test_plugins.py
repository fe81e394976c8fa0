"""A third-party package registers a task and a method through entry points; `bench` uses them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

from tests.plugin_site import install_plugin

PLUGIN = '''
from registry import TaskSpec, LocalSource
from benchmark.method import Method, RunResult
from benchmark.metrics import split_metrics
import torch

TOY_TASK = TaskSpec(
    name="toy-sentiment", display_name="Toy sentiment (plugin)", labels=("0", "1"),
    local=LocalSource(dir="toy", train_file="train.csv", test_file="test.csv",
                      text_columns=(1,), label_column=0),
    template="*cls**sent_0*_It_was*mask*.*sep+*", label_words={"0": "bad", "1": "good"},
)


class Majority(Method):
    name = "majority"
    summary = "predicts the most frequent training label"
    family = "baseline"
    uses_backbone = False

    def run(self, ctx):
        labels = [e.label for e in ctx.splits.train]
        top = max(set(labels), key=labels.count)
        metrics, predictions = {}, {}
        for split in ("dev", "test"):
            gold = torch.tensor([e.label for e in getattr(ctx.splits, split)])
            predicted = torch.full_like(gold, top)
            metrics.update(split_metrics(split, predicted, gold, report_f1=False))
            predictions[split] = predicted.tolist()
        return RunResult(metrics=metrics, predictions=predictions)
'''


def test_plugin_task_and_method_via_entry_points(tmp_path: Path) -> None:
    env = install_plugin(tmp_path / "site", "kb_toy_plugin", "0.1", PLUGIN,
                         "[kernel_bench.tasks]\ntoy-sentiment = kb_toy_plugin:TOY_TASK\n\n"
                         "[kernel_bench.methods]\nmajority = kb_toy_plugin:Majority\n")
    data = tmp_path / "data" / "original" / "toy"
    data.mkdir(parents=True)
    (data / "train.csv").write_text("".join(f"{i % 2},sentence number {i}\n" for i in range(21)))
    (data / "test.csv").write_text("".join(f"{i % 3 == 0:d},test sentence {i}\n" for i in range(9)))
    bench = [sys.executable, "-c", "from benchmark.cli import main; main()"]

    listed = subprocess.run([*bench, "list", "tasks"], env=env, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert "toy-sentiment" in listed.stdout
    listed = subprocess.run([*bench, "list", "methods"], env={**env, "COLUMNS": "250"}, capture_output=True,
                            text=True, timeout=120)
    assert "majority" in listed.stdout and "kb-toy-plugin 0.1" in listed.stdout  # where the entry comes from

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ran = subprocess.run(
        [*bench, "run", "--task", "toy-sentiment", "--method", "majority", "--k", "4", "--seed", "13",
         "--data-dir", str(tmp_path / "data"), "--tracking-uri", uri, "--cache-dir", str(tmp_path / "cache")],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert ran.returncode == 0, ran.stderr
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("kernel-bench").experiment_id])
    assert run.data.tags["task"] == "toy-sentiment" and run.data.tags["method"] == "majority"
    # 3 of the 9 test labels are 1; the majority of train (11 zeros, 10 ones) is 0 -> 6/9.
    assert abs(run.data.metrics["test_acc"] - 6 / 9) < 1e-9


BAD_PLUGIN = '''
from registry import BackboneSpec, TaskSpec, TemplateSpec
from benchmark.methods.baselines import ZeroShot


class FakeAdam(ZeroShot):
    name = "ft-adam"


NOT_A_SPEC = {"name": "dict-task"}
OTHER_NAME = BackboneSpec(name="real-name", path="x/y")
MR_AGAIN = TaskSpec(name="mr", display_name="MR again", labels=("0", "1"), template="*cls**sent_0**mask*.*sep+*",
                    label_words={"0": "bad", "1": "good"})
SST2_AGAIN = TemplateSpec(name="sst2", template="*cls**sent_0*_Awful*mask*.*sep+*")
'''


def test_bad_plugins_are_one_warning_each_and_never_replace_builtins(tmp_path: Path) -> None:
    env = install_plugin(tmp_path / "site", "kb_bad_plugin", "0.3", BAD_PLUGIN, (
        "[kernel_bench.methods]\nft-adam = kb_bad_plugin:FakeAdam\n\n"
        "[kernel_bench.tasks]\nmr = kb_bad_plugin:MR_AGAIN\ndict-task = kb_bad_plugin:NOT_A_SPEC\n"
        "gone = kb_missing_module:TASK\n\n"
        "[kernel_bench.backbones]\nalias-name = kb_bad_plugin:OTHER_NAME\n\n"
        "[kernel_bench.templates]\nsst2 = kb_bad_plugin:SST2_AGAIN\n"
    ))
    env["COLUMNS"] = "250"
    bench = [sys.executable, "-c", "from benchmark.cli import main; main()"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*bench, *args], env=env, capture_output=True, text=True, timeout=120)

    listed = run("list", "tasks")
    assert listed.returncode == 0, listed.stderr
    warnings = listed.stderr.strip().splitlines()
    assert len(warnings) == 3 and all(w.startswith("warning: ") and "kb-bad-plugin 0.3" in w for w in warnings)
    assert any("task 'mr' is registered twice" in w and "the built-in one" in w for w in warnings)
    assert any("'dict-task'" in w and "it is a dict, not a registry.TaskSpec" in w for w in warnings)
    assert any("'gone'" in w and "failed to load (ModuleNotFoundError" in w for w in warnings)
    assert "sst2" in listed.stdout and "built-in" in listed.stdout and "dict-task" not in listed.stdout

    listed = run("list", "backbones")
    assert listed.returncode == 0 and "its name is 'real-name', not the entry-point name 'alias-name'" in listed.stderr
    assert "(bundled with the suite)" in listed.stdout

    ran = run("run", "--task", "sst2", "--method", "ft-adam", "--backbone", "nope/nope")
    assert ran.returncode == 2
    assert "method 'ft-adam' is registered twice: by plugin kb-bad-plugin 0.3" in ran.stderr
    assert "and the built-in one" in ran.stderr and "Traceback" not in ran.stderr
    listed = run("list", "templates")  # a plugin template cannot take a built-in task template's name
    assert listed.returncode == 0, listed.stderr
    assert "template 'sst2' is registered twice: by plugin kb-bad-plugin 0.3" in listed.stderr
    described = run("describe", "zero-shot")  # commands that do not need the broken entries keep working
    assert described.returncode == 0 and "zero-shot (baseline)" in described.stdout
