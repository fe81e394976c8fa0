"""In-run grids: ``train_grid`` (fine-tuning) and ``solver_grid`` (kernel methods), their flags and errors."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from benchmark.config import RunConfig
from benchmark.grids import product, settings_list
from benchmark.methods.kernel import KernelOptions
from benchmark.resolve import resolve_run
from registry import METHODS, BenchError, load_builtins
from tests.test_cli_e2e import _run_args, invoke, workspace  # noqa: F401 - the fixture

pytestmark = pytest.mark.usefixtures("one_thread")


def test_product_is_in_key_order_and_solver_grid_accepts_both_forms() -> None:
    assert product({"a": [1, 2], "b": ["x", "y"]}) == [
        {"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "x"}, {"a": 2, "b": "y"}]
    with pytest.raises(ValueError, match="solver_grid key 'b' needs a non-empty list"):
        settings_list({"a": [1], "b": []})
    as_dict = KernelOptions(solver_grid={"regularization": [0.0, 0.1], "f0_scaling": [None, 10.0]})
    as_list = KernelOptions(solver_grid=[{"regularization": 0.0, "f0_scaling": None},
                                         {"regularization": 0.0, "f0_scaling": 10.0},
                                         {"regularization": 0.1, "f0_scaling": None},
                                         {"regularization": 0.1, "f0_scaling": 10.0}])
    assert as_dict == as_list and KernelOptions().solver_grid is None
    with pytest.raises(ValueError, match="the solver grid is empty"):
        KernelOptions(solver_grid={})


def test_config_hash_is_of_the_settings_not_their_spelling(tiny_bert_dir) -> None:
    def config_hash(method: str, options: dict) -> str:
        config = RunConfig(task="mr", method=method, backbone=str(tiny_bert_dir), options=options)
        return resolve_run(config, check_tokenizer=False).config_hash()

    grid = {"regularization": [0.0, 0.1]}
    listed = [{"regularization": 0.0}, {"regularization": 0.1}]
    assert config_hash("ntk-sgd", {"solver_grid": grid}) == config_hash("ntk-sgd", {"solver_grid": listed})
    assert config_hash("ntk-sgd", {"solver_grid": grid}) != config_hash("ntk-sgd", {})
    assert config_hash("ft-adam", {"train_grid": {"lr": [1e-5, 2e-5]}}) != config_hash("ft-adam", {})
    options = resolve_run(RunConfig(task="mr", method="ft-adam", backbone=str(tiny_bert_dir)),
                          check_tokenizer=False).identity()["options"]
    assert options["train_grid"] == {} and "grid" not in options


@pytest.mark.parametrize(("method", "new"), [("ft-sgd", "train_grid"), ("lora-adam", "train_grid"),
                                             ("ntk-sgd", "solver_grid"), ("lora-ntk-adam", "solver_grid")])
def test_the_old_option_name_grid_names_the_new_one(method: str, new: str) -> None:
    load_builtins()
    config = RunConfig(task="mr", method=method, options={"grid": {"lr": [1e-3]}})
    with pytest.raises(BenchError, match=rf"^method '{method}' has no option 'grid' any more: it is '{new}'"):
        METHODS.get(method).from_config(config)


def test_solver_grid_settings_the_solver_does_not_take_fail_before_the_run() -> None:
    load_builtins()
    config = RunConfig(task="mr", method="ntk-sgd", options={"solver_grid": {"gamma": [1.0]}})
    with pytest.raises(BenchError, match="bad hyper-parameters for solver 'lstsq'"):
        METHODS.get("ntk-sgd").from_config(config)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "ntk-sgd", "--train-grid", "lr=1e-3,1e-2"],
         "method 'ntk-sgd' has no --train-grid (no option 'train_grid'); use --solver-grid key=v1,v2"),
        (["--method", "ft-adam", "--solver-grid", "regularization=0,0.1"],
         "method 'ft-adam' has no --solver-grid (no option 'solver_grid'); use --train-grid key=v1,v2"),
        (["--method", "zero-shot", "--train-grid", "lr=1e-3"],
         "method 'zero-shot' has no --train-grid (no option 'train_grid'); make one run per value with bench sweep "
         "--grid key=v1,v2"),
        (["--method", "ft-adam", "--grid", "lr=1e-3,1e-2"],
         "bench run has no --grid (a bench sweep flag: one run per value); inside one run use --train-grid key=v1,v2 "
         "(fine-tuning) or --solver-grid key=v1,v2 (kernel solver settings)"),
        (["--method", "ntk-adam", "--opt", 'grid=[{"gamma": 1.0}]'],
         "method 'ntk-adam' has no option 'grid' any more: it is 'solver_grid'"),
        (["--method", "ft-adam", "--opt", 'grid={"lr": [1e-3]}'],
         "method 'ft-adam' has no option 'grid' any more: it is 'train_grid'"),
    ],
)
def test_run_grid_flags_refused_in_one_line(workspace, monkeypatch, capsys, args, message) -> None:  # noqa: F811
    code, out, err = invoke(_run_args(workspace, "--task", "mr", *args), monkeypatch, capsys)
    assert code == 2, out
    assert message in err and len(err.strip().splitlines()) == 1
    experiment = MlflowClient(tracking_uri=workspace["uri"]).get_experiment_by_name("kernel-bench")
    assert experiment is None or not MlflowClient(tracking_uri=workspace["uri"]).search_runs(
        [experiment.experiment_id])


def test_solver_grid_flag_runs_a_kernel_method_on_those_settings(workspace, monkeypatch, capsys) -> None:  # noqa: F811
    """`bench run -m ntk-sgd --solver-grid regularization=0,0.1` (was: "Input should be a valid list")."""
    code, _out, err = invoke(_run_args(workspace, "--task", "mr", "--method", "ntk-sgd", "--opt", "selection=best",
                                       "--solver-grid", "regularization=0,0.1"), monkeypatch, capsys)
    assert code == 0, err
    client = MlflowClient(tracking_uri=workspace["uri"])
    (run,) = client.search_runs([client.get_experiment_by_name("kernel-bench").experiment_id])
    history = client.get_metric_history(run.info.run_id, "solver_grid_dev_acc")
    assert [m.step for m in history] == [0, 1]  # the two settings given, no built-in grid
    assert float(run.data.params["result.solver.regularization"]) in (0.0, 0.1)
    assert "result.solver.f0_scaling" not in run.data.params
    assert run.data.params["opt.solver_grid"] == "[{'regularization': 0}, {'regularization': 0.1}]"
    best = max(history, key=lambda m: (m.value, -m.step))  # rule "best": the first of the top scores
    assert float(run.data.params["result.solver.regularization"]) == [0.0, 0.1][best.step]
