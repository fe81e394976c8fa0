"""The sweeps package's contracts: method policy (``sweep_defaults``), options passed as they are, the cell's
resolved run handed to the runner, the parent-run API, and the SLURM status view without a cluster."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest
from mlflow.tracking import MlflowClient

from benchmark.cli.sweep import spec_from_cli
from benchmark.lifecycle import HOST_TAG, PID_TAG, START_TAG, close_dead_runs, owner_state, owner_tags
from benchmark.resolve import ResolvedRun, resolve_run
from benchmark.sweeps import ParentRun, Sweep, expand_cells, local_runner, open_store, validate_spec
from registry import BenchError
from tests.test_cli_e2e import invoke
from tests.test_sweep import cell_runs, initialized_store, sweep_args, write_fixture

UNUSED = "sqlite:///unused.db"


@pytest.fixture()
def ws(tmp_path: Path, tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory,
       monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """As `tests.test_sweep.ws`: MR fixture data, the tiny model, a copy of an initialized store, a cache."""
    write_fixture(tmp_path / "data", "mr")
    shutil.copy(initialized_store(tmp_path_factory), tmp_path / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    return {"data": str(tmp_path / "data"), "model": str(tiny_bert_dir), "uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "cache": str(tmp_path / "cache"), "tmp": str(tmp_path)}


@pytest.fixture()
def policy_probe(monkeypatch: pytest.MonkeyPatch) -> str:
    """``policy-probe``: the linear probe with a ``diagnostics`` option it is *not* asked to turn on in sweeps,
    and ``sweep_defaults`` that set another option."""
    from benchmark.methods.baselines import LinearProbe, LinearProbeOptions
    from registry import METHODS, load_builtins

    class PolicyOptions(LinearProbeOptions):
        diagnostics: bool = False
        pause: float = 0.0

    class PolicyProbe(LinearProbe):
        name = "policy-probe"
        summary = "test only: sweep defaults come from the method"
        Options = PolicyOptions
        sweep_defaults: ClassVar[dict[str, Any]] = {"pause": 0.25}

    load_builtins()
    monkeypatch.setitem(METHODS._objects, "policy-probe", PolicyProbe)
    return "policy-probe"


def _options(spec, method: str) -> list[dict[str, Any]]:
    return [c.config.options for c in expand_cells(spec, tracking_uri=UNUSED) if c.config.method == method]


def test_sweep_defaults_come_from_the_method_and_the_sweep_can_override_them(ws, policy_probe, tmp_path) -> None:
    base = {"tasks": "mr", "methods": f"{policy_probe},ft-adam,zero-shot", "seeds": [13], "k": "4",
            "backbones": ws["model"], "data_dir": ws["data"]}
    spec = spec_from_cli(None, base, [], [])
    # The method's ClassVar, not a field name: policy-probe has `diagnostics` but does not ask for it.
    assert _options(spec, policy_probe) == [{"pause": 0.25}]
    assert _options(spec, "ft-adam") == [{"diagnostics": True}] and _options(spec, "zero-shot") == [{}]
    spec = spec_from_cli(None, base, [f"{policy_probe}:pause=0", "ft-adam:diagnostics=false"], [])
    assert _options(spec, policy_probe) == [{"pause": 0}] and _options(spec, "ft-adam") == [{"diagnostics": False}]
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text(f"tasks: [mr]\nmethods:\n  {policy_probe}: {{options: {{pause: 0.5}}}}\n"
                          f"grid: {{}}\nk: [4]\nseeds: [13]\nbackbone: {ws['model']}\ndata_dir: {ws['data']}\n")
    spec = spec_from_cli(sweep_file, {}, [], [f"{policy_probe}:pause=0.1,0.2"])  # the sweep's grid wins
    assert _options(spec, policy_probe) == [{"pause": 0.1}, {"pause": 0.2}]
    spec = spec_from_cli(sweep_file, {}, [], [])
    (cell,) = expand_cells(spec, tracking_uri=UNUSED)
    assert cell.config.options == {"pause": 0.5}
    assert cell.hash == resolve_run(cell.config).config_hash()


def test_dict_and_list_valued_method_options_pass_from_a_sweep_file_as_they_are(ws, tmp_path) -> None:
    """A method's own in-run grid is an ordinary option: one cell, the option intact (`grid:`: a cell per point)."""
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text(
        "tasks: [mr]\nmethods:\n"
        "  ft-adam: {options: {train_grid: {lr: [1.0e-4, 1.0e-3]}, steps: 2}}\n"
        "  ntk-sgd: {options: {solver_grid: {regularization: [0.0, 0.01]}}}\n"
        "  linear-probe: {options: {c_grid: [0.5, 2.0]}, grid: {max_iter: [50, 100]}}\n"
        f"k: [4]\nseeds: [13, 21]\nbackbone: {ws['model']}\ndata_dir: {ws['data']}\n")
    cells = expand_cells(spec_from_cli(sweep_file, {}, [], []), tracking_uri=UNUSED)
    by_method: dict[str, list[dict[str, Any]]] = {}
    for cell in cells:
        if cell.config.seed == 13:
            by_method.setdefault(cell.config.method, []).append(cell.config.options)
    assert by_method["ft-adam"] == [{"diagnostics": True, "train_grid": {"lr": [1e-4, 1e-3]}, "steps": 2}]
    assert by_method["ntk-sgd"] == [{"solver_grid": {"regularization": [0.0, 0.01]}}]
    assert by_method["linear-probe"] == [{"c_grid": [0.5, 2.0], "max_iter": m} for m in (50, 100)]
    ft = next(c for c in cells if c.config.method == "ft-adam")
    assert ft.run is not None and ft.run.method.options.train_grid == {"lr": [1e-4, 1e-3]}  # validated by the method
    kernel = next(c for c in cells if c.config.method == "ntk-sgd")
    assert kernel.run is not None and kernel.run.method.options.solver_grid == [{"regularization": 0.0},
                                                                                {"regularization": 0.01}]
    # The same from the command line, and the in-run grid is part of the cell's identity.
    spec = spec_from_cli(None, {"tasks": "mr", "methods": "ft-adam", "k": "4", "seeds": [13], "backbones": ws["model"],
                                "data_dir": ws["data"]}, ['ft-adam:train_grid={"lr": [0.0001, 0.001]}', "steps=2"], [])
    (cli_cell,) = expand_cells(spec, tracking_uri=UNUSED)
    assert cli_cell.config.options == ft.config.options and cli_cell.hash == ft.hash
    spec = spec_from_cli(None, {"tasks": "mr", "methods": "ft-adam", "k": "4", "seeds": [13], "backbones": ws["model"],
                                "data_dir": ws["data"]}, ['ft-adam:train_grid={"lr": [0.0001]}', "steps=2"], [])
    assert expand_cells(spec, tracking_uri=UNUSED)[0].hash != ft.hash
    with pytest.raises(BenchError, match="method 'ntk-sgd' has no option 'grid' any more: it is 'solver_grid'"):
        expand_cells(validate_spec({"tasks": ["mr"], "methods": {"ntk-sgd": {"options": {"grid": {"lr": [1]}}}},
                                    "k": [4], "seeds": [13], "backbone": ws["model"], "data_dir": ws["data"]}),
                     tracking_uri=UNUSED)


def test_the_runner_gets_the_cells_resolved_run(ws) -> None:
    spec = spec_from_cli(None, {"tasks": "mr", "methods": "zero-shot", "k": "4", "seeds": [13, 21],
                                "backbones": ws["model"], "data_dir": ws["data"], "cache_dir": ws["cache"],
                                "test_cap": 12}, [], [])
    cells = expand_cells(spec, tracking_uri=ws["uri"])
    store = open_store(ws["uri"], "kernel-bench")
    seen: list[tuple[Any, str]] = []

    def recording(run: Any, parent_run_id: str) -> tuple[str, dict[str, float]]:
        seen.append((run, parent_run_id))
        return local_runner(run, parent_run_id)

    sweep = Sweep(cells, store, runner=recording)
    report = sweep.run()
    assert report.ok and report.count("done") == 2
    assert [type(run) for run, _ in seen] == [ResolvedRun, ResolvedRun]
    assert [run.config_hash() for run, _ in seen] == [c.hash for c in cells]
    assert {parent for _, parent in seen} == {report.parent_run_id}
    runs = {r.data.tags["config_hash"]: r for r in cell_runs(ws["uri"])}
    assert set(runs) == {c.hash for c in cells}
    assert all(r.data.tags["mlflow.parentRunId"] == report.parent_run_id for r in runs.values())


def test_parent_run_api_find_open_reopen_detach_close(ws) -> None:
    spec = spec_from_cli(None, {"tasks": "mr", "methods": "zero-shot", "k": "4", "seeds": [13],
                                "backbones": ws["model"], "data_dir": ws["data"]}, [], [])
    cells = expand_cells(spec, tracking_uri=ws["uri"])
    store = open_store(ws["uri"], "kernel-bench")
    client = MlflowClient(tracking_uri=ws["uri"])
    sweep = Sweep(cells, store, spec=spec)
    first = sweep.parent
    assert first.find() == "" and first.run_id == ""
    run_id = first.open()
    assert run_id == first.run_id == sweep.parent_run_id == first.find()
    run = client.get_run(run_id)
    tags = run.data.tags
    assert run.info.status == "RUNNING" and tags["run_kind"] == "sweep" and tags["sweep_hash"] == sweep.hash
    assert {k: tags[k] for k in (HOST_TAG, PID_TAG, START_TAG)} == owner_tags() and owner_state(tags) == "alive"
    assert tags["n_cells"] == "1" and tags["sweep_methods"] == "zero-shot"
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert artifacts == {"sweep.json", "cells.json"}
    # While it is held, another sweep of the same cells gets a parent of its own.
    other = ParentRun(store, sweep.hash, cells)
    second = other.open()
    assert second != run_id and other.find() == second  # the latest parent of the hash
    other.close("FINISHED")
    cells[0].status = "done"
    first.close("FINISHED")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["cells_done"] == 1.0
    assert run.data.metrics["cells_failed"] == 0.0
    # Lock free: the same sweep reopens its latest parent, owned by this process again.
    again = ParentRun(store, sweep.hash, cells)
    before = time.time()
    assert again.open() == second
    reopened = client.get_run(second)
    assert reopened.info.status == "RUNNING" and int(reopened.data.tags["resumed"]) >= int(before)
    assert owner_state(reopened.data.tags) == "alive"
    # Detached (the jobs go on without this process): RUNNING, no owner, so nothing takes it for a dead run.
    again.detach()
    detached = client.get_run(second)
    assert detached.info.status == "RUNNING" and not {HOST_TAG, PID_TAG, START_TAG} & set(detached.data.tags)
    assert owner_state(detached.data.tags) == "unknown"
    assert close_dead_runs(client, store.experiment_id) == []
    assert client.get_run(second).info.status == "RUNNING"
    lock = store.lock(f"sweep-{sweep.hash}")
    assert lock.acquire(blocking=False)  # detach dropped the lock
    lock.release()
    later = ParentRun(store, sweep.hash, cells)
    assert later.open() == second  # a later sweep takes it over
    later.close("FAILED")
    assert client.get_run(second).info.status == "FAILED"


def test_slurm_status_reads_the_store_without_a_cluster(ws, monkeypatch, capsys) -> None:
    """`--status` submits nothing and asks SLURM nothing when no job was recorded: the store decides."""
    args = sweep_args(ws, methods="zero-shot", seeds=(13, 21), tasks=("mr",))
    code, out, err = invoke(args, monkeypatch, capsys)
    assert code == 0, err
    parent = {r.data.tags["mlflow.parentRunId"] for r in cell_runs(ws["uri"])}
    code, out, err = invoke([*args, "--launcher", "slurm", "--status"], monkeypatch, capsys)
    assert code == 0, err
    assert "sweep on SLURM: 2 cells" in out and out.count("FINISHED") == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in cell_runs(ws["uri"])} == parent
    assert MlflowClient(tracking_uri=ws["uri"]).get_run(parent.pop()).info.status == "FINISHED"  # left as it was
