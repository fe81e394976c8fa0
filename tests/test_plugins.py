"""A third-party package registers a task and a method through entry points; `bench` uses them."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from mlflow.tracking import MlflowClient

PLUGIN = '''
from registry import TaskSpec, LocalSource
from benchmark.methods.base import Method, RunResult
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
    site = tmp_path / "site"
    site.mkdir()
    (site / "kb_toy_plugin.py").write_text(textwrap.dedent(PLUGIN))
    dist = site / "kb_toy_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: kb-toy-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[kernel_bench.tasks]\ntoy-sentiment = kb_toy_plugin:TOY_TASK\n\n"
        "[kernel_bench.methods]\nmajority = kb_toy_plugin:Majority\n"
    )
    data = tmp_path / "data" / "original" / "toy"
    data.mkdir(parents=True)
    (data / "train.csv").write_text("".join(f"{i % 2},sentence number {i}\n" for i in range(21)))
    (data / "test.csv").write_text("".join(f"{i % 3 == 0:d},test sentence {i}\n" for i in range(9)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    bench = [sys.executable, "-c", "from benchmark.cli import main; main()"]

    listed = subprocess.run([*bench, "list", "tasks"], env=env, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert "toy-sentiment" in listed.stdout
    listed = subprocess.run([*bench, "list", "methods"], env=env, capture_output=True, text=True, timeout=120)
    assert "majority" in listed.stdout

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
