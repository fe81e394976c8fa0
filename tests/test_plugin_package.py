"""One plugin package, from outside the repository and through entry points only, adds a launcher, a kernel
formula, a solver and a leaderboard view; `bench run` and `bench leaderboard` (subprocesses) use all four."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

from tests.plugin_site import install_plugin
from tests.test_cli_e2e import write_mr_fixture
from tests.test_kernel_registries import PLUGIN as KERNEL_PLUGIN  # its formula (eval side signed) and solver

PLUGIN = KERNEL_PLUGIN + '''
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from leaderboard.tables import Table
from leaderboard.views import View
from runners.local import run_local


class TagOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str


class TagRunner:
    """Runs in this process, then tags the run with its label."""

    name: ClassVar[str] = "tagged"
    Options: ClassVar[type[BaseModel]] = TagOptions

    def __init__(self, options):
        self.options = options

    def launch(self, run, parent_run_id=None):
        from mlflow.tracking import MlflowClient
        outcome = run_local(run, parent_run_id=parent_run_id)
        MlflowClient(run.config.tracking_uri).set_tag(outcome.run_id, "launched_by", self.options.label)
        return outcome


def _seeds(section):
    rows = [[r["method"], r["task"], r["seeds"]] for _, r in section.rows.iterrows()]
    return Table(title=f"Seeds per cell ({section.title})", columns=["method", "task", "seeds"], rows=rows)


VIEW = View(name="seeds-per-cell", summary="the seeds behind each mean", build=_seeds)
'''

ENTRY_POINTS = """\
[kernel_bench.runners]
tagged = {m}:TagRunner

[kernel_bench.formulas]
evalsign = {m}:EVAL_SIGN

[kernel_bench.solvers]
centroid = {m}:Centroid

[kernel_bench.views]
seeds-per-cell = {m}:VIEW
"""


def test_one_plugin_package_adds_a_launcher_formula_solver_and_view(tmp_path: Path, tiny_bert_dir: Path) -> None:
    module = "kb_everything_plugin"
    env = install_plugin(tmp_path / "site", module, "0.3", PLUGIN, ENTRY_POINTS.format(m=module))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    bench = [sys.executable, "-c", "from benchmark.cli import main; main()"]
    run = [*bench, "run", "--task", "mr", "--method", "ntk-sgd", "--backbone", str(tiny_bert_dir), "--k", "4",
           "--data-dir", str(write_mr_fixture(tmp_path / "data")), "--tracking-uri", uri,
           "--cache-dir", str(tmp_path / "cache"), "--launcher", "tagged", "--launch-opt", "label=from-plugin",
           "--opt", "formula=evalsign", "--test-cap", "20"]
    done = subprocess.run(run, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr

    client = MlflowClient(tracking_uri=uri)
    (logged,) = client.search_runs([client.get_experiment_by_name("kernel-bench").experiment_id])
    assert logged.info.status == "FINISHED"
    assert logged.data.tags["launched_by"] == "from-plugin"  # the plugin launcher ran it
    assert logged.data.params["result.formula"] == "evalsign"  # the plugin formula
    assert logged.data.params["result.solver"] == "centroid"  # the formula's default solver, from the plugin
    assert 0.0 <= logged.data.metrics["test_acc"] <= 1.0

    board = subprocess.run([*bench, "leaderboard", "--tracking-uri", uri, "--view", "tasks", "--view",
                            "seeds-per-cell", "--out", str(tmp_path / "board") + "/"],
                           env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert board.returncode == 0, board.stderr
    readme = (tmp_path / "board" / "README.md").read_text()
    assert "Seeds per cell" in readme and "| ntk-sgd | mr | 13 |" in readme  # the plugin view, on the run above
