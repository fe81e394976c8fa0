"""The kernel engine's tables: formulas and solvers from plugin entry points (used by `bench run`),
the strategy table (what each strategy honours or refuses), and per-module gradient rules."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn

from benchmark.data import load_splits
from benchmark.kernels import (
    SOLVERS,
    STRATEGIES,
    KernelOutputs,
    KernelSplit,
    empirical_ntk,
    empirical_ntks,
    per_example,
)
from benchmark.kernels.grad_rules import GRAD_RULES, grad_rule, register_grad_rule, require_grad_rule
from benchmark.metrics import accuracy, predict_labels
from benchmark.models import PromptLogitModel
from registry import TASKS, BenchError
from registry.formulas import FORMULAS, Formula, KernelOutput, get_formula
from tests.plugin_site import install_plugin
from tests.test_cli_e2e import invoke, write_mr_fixture
from tests.test_kernels import _data, assert_close, assert_sign_close, explicit_gradients, explicit_kernels

pytestmark = pytest.mark.usefixtures("one_thread")

PLUGIN = '''
import dataclasses

import torch

from benchmark.kernels.solvers import KernelSolver, flatten, target_matrix
from benchmark.kernels.strategies import Strategy, get_strategy
from registry.formulas import Formula, KernelOutput

# sign on the eval side only: <g(x_train), sign g(x)>
EVAL_SIGN = Formula(name="evalsign", outputs=(KernelOutput(name="kernel", sign_a=False, sign_b=True),),
                    default_solver="centroid", aliases=("eval-sign",))


class Centroid(KernelSolver):
    """Scores = mean kernel row of each class's training pairs (a Parzen-window classifier)."""

    name = "centroid"
    supports_f0 = False

    @classmethod
    def default_grid(cls, *, with_f0=False):
        return [{"regularization": 0.0}]

    def fit(self, train, labels):
        targets = self._check_fit(train, labels).reshape(-1)
        self.weights = (targets > 0).double() / (targets > 0).double().sum()
        self.rest = (targets <= 0).double() / (targets <= 0).double().sum()
        return self

    def decision(self, split):
        self._check_predict(split)
        k = flatten(split.kernel).t()
        return (k @ self.weights - k @ self.rest).reshape(split.n, self.num_outputs)


def _small_fast(model, selection, batches_a, targets, combos, args):
    """The fast strategy under a fixed 64 MiB budget."""
    fast = get_strategy("fast")
    return fast.compute(model, selection, batches_a, targets, combos, dataclasses.replace(args, memory_budget="64MiB"))


SMALL_FAST = Strategy("small-fast", _small_fast, refuses={"memory_budget": "its budget is fixed at 64 MiB"})
'''
ENTRY_POINTS = ("[kernel_bench.formulas]\nevalsign = {m}:EVAL_SIGN\n\n"
                "[kernel_bench.solvers]\ncentroid = {m}:Centroid\n\n"
                "[kernel_bench.strategies]\nsmall-fast = {m}:SMALL_FAST\n")


@pytest.fixture()
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A throwaway distribution with a formula and a solver, discovered through entry points in this process."""
    module = "kb_kernel_plugin"
    install_plugin(tmp_path / "site", module, "0.2", PLUGIN, ENTRY_POINTS.format(m=module))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    for reg in (FORMULAS, SOLVERS, STRATEGIES):  # rediscover, and forget the plugin afterwards
        for attr in ("_objects", "_aliases", "_origins", "_broken"):
            monkeypatch.setattr(reg, attr, dict(getattr(reg, attr)))
        monkeypatch.setattr(reg, "_plugins_loaded", False)
    monkeypatch.delitem(sys.modules, module, raising=False)
    return module


# ---------------------------------------------------------------- formulas
def test_plugin_formula_equals_explicit_autograd(plugin, bert, monkeypatch) -> None:
    monkeypatch.setattr(per_example, "SPARSE_MIN_ROWS", 64)
    assert get_formula("eval-sign").name == "evalsign" and "kb-kernel-plugin 0.2" in FORMULAS.origin("evalsign")
    model = PromptLogitModel(bert["mlm"], bert["words"]).eval()
    a, b = _data(bert, seed=3)
    ga, gb = explicit_gradients(model, a, lambda _n: True), explicit_gradients(model, b, lambda _n: True)
    expected = torch.einsum("ncp,mdp->ncmd", ga, gb.sign())
    out = empirical_ntks(model, a, {"ab": b, "aa": None}, formulas=["evalsign", "sgd"], progress=False)
    assert_close(out["ab"]["evalsign"], expected, 1e-8)
    assert_close(out["ab"]["sgd"], explicit_kernels(ga, gb)["sgd"], 1e-8)
    assert_close(out["aa"]["evalsign"], torch.einsum("ncp,mdp->ncmd", ga, ga.sign()), 1e-8)
    ref = empirical_ntk(model, a, b, formula="evalsign", strategy="reference", progress=False)
    assert_close(ref, expected, 1e-8)
    stats: dict = {}  # a plugin strategy from the same distribution
    small = empirical_ntk(model, a, b, formula="evalsign", strategy="small-fast", progress=False, stats=stats)
    assert_close(small, expected, 1e-8)
    assert stats["budget"] == 64 * 2**20
    with pytest.raises(BenchError, match="kernel strategy 'small-fast' does not take memory_budget"):
        empirical_ntk(model, a, b, strategy="small-fast", memory_budget="1GiB", progress=False)


def test_formula_outputs_name_the_kernels(bert) -> None:
    two = Formula(name="both-sides", outputs=(KernelOutput(name="kernel", sign_a=True, sign_b=True),
                                              KernelOutput(name="plain", sign_a=False, sign_b=False)))
    assert two.combos == ((True, True), (False, False)) and two.signed
    with pytest.raises(ValueError, match="first output must be named 'kernel'"):
        Formula(name="x", outputs=(KernelOutput(name="flipped", sign_a=False, sign_b=True),))
    with pytest.raises(ValueError, match="bad output name 'logits'"):
        Formula(name="x", outputs=(KernelOutput(name="kernel", sign_a=False, sign_b=False),
                                   KernelOutput(name="logits", sign_a=True, sign_b=False)))
    model = PromptLogitModel(bert["mlm"], bert["words"]).eval()
    a, b = _data(bert, seed=4)
    value = empirical_ntk(model, a, b, formula="asym", progress=False)
    assert isinstance(value, KernelOutputs) and value.names == ("kernel", "flipped")
    assert value.flipped is value[1] and set(value.as_dict()) == {"kernel", "flipped"}
    with pytest.raises(AttributeError, match="no kernel output 'plain'"):
        _ = value.plain
    with pytest.raises(BenchError, match="unknown kernel formula 'nope'"):
        empirical_ntk(model, a, b, formula="nope", progress=False)


@pytest.fixture()
def ws(tmp_path: Path, tiny_bert_dir: Path) -> dict[str, str]:
    data = write_mr_fixture(tmp_path / "data", n_train=40, n_test=12)
    return {"data": str(data), "model": str(tiny_bert_dir), "uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "cache": str(tmp_path / "cache"), "tmp": str(tmp_path)}


def _run(ws: dict[str, str], *opts: str) -> list[str]:
    return ["run", "--task", "mr", "--method", "ntk-sgd", "--backbone", ws["model"], "--data-dir", ws["data"],
            "--tracking-uri", ws["uri"], "--cache-dir", ws["cache"], "--k", "3", "--seed", "13", *opts]


def _cached(cache: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Kernel cache files by formula."""
    out = {}
    for path in sorted((cache / "kernels").glob("kernels-*.pt")):
        payload = torch.load(path, weights_only=True)
        out[json.loads(payload["config"])["formula"]] = payload["tensors"]
    return out


def test_bench_run_uses_a_plugin_formula_and_solver(plugin, ws, monkeypatch, capsys) -> None:
    code, _, err = invoke(_run(ws, "--opt", "formula=eval-sign"), monkeypatch, capsys)
    assert code == 0, err
    client = MlflowClient(tracking_uri=ws["uri"])
    (run,) = client.search_runs([client.get_experiment_by_name("kernel-bench").experiment_id])
    assert run.data.params["result.formula"] == "evalsign"
    assert run.data.params["result.solver"] == "centroid"  # the formula's default solver, from the plugin
    cached = _cached(Path(ws["cache"]))
    assert set(cached) == {"sgd", "signgd", "asym", "evalsign"}  # one gradient pass for every formula
    for split in ("train", "dev", "test"):  # the same sign combination as asym's flipped kernel
        assert torch.equal(cached["evalsign"][f"{split}_kernel"], cached["asym"][f"{split}_flipped"])
    # the plugin solver's test predictions, recomputed here from the cached kernels and the split labels
    splits = load_splits(TASKS.get("mr"), k=3, seed=13, data_dir=Path(ws["data"]))
    y_train = torch.tensor([e.label for e in splits.train])
    fitted = SOLVERS.get("centroid")().fit(KernelSplit(cached["evalsign"]["train_kernel"]), y_train)
    predicted = predict_labels(fitted.decision(KernelSplit(cached["evalsign"]["test_kernel"])))
    y_test = torch.tensor([e.label for e in splits.test])
    assert run.data.metrics["test_acc"] == pytest.approx(accuracy(predicted, y_test), abs=1e-12)
    logged = json.loads(Path(client.download_artifacts(run.info.run_id, "predictions.json", ws["tmp"])).read_text())
    assert logged["test"] == predicted.tolist()

    # the built-in method of the same cell reuses the pass (the formula option is not part of the kernel key)
    code, _, err = invoke(_run(ws), monkeypatch, capsys)
    assert code == 0, err
    runs = client.search_runs([client.get_experiment_by_name("kernel-bench").experiment_id],
                              order_by=["attributes.start_time ASC"])
    assert runs[1].data.params["result.formula"] == "sgd" and runs[1].data.metrics["kernel_cache_hit"] == 1.0
    assert runs[1].data.tags["config_hash"] != run.data.tags["config_hash"]

    # a solver that needs an output the formula lacks is refused before anything is computed
    code, _, err = invoke(_run(ws, "--opt", "formula=evalsign", "--opt", "solver=asym"), monkeypatch, capsys)
    assert code == 2 and "needs the kernel output(s) 'flipped', which formula 'evalsign' does not" in err
    assert "formulas with it: asym" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- strategies
@pytest.mark.parametrize(("argument", "value"), [("memory_budget", "1GiB"), ("validate", True),
                                                 ("validate", False), ("exact_signs", True)])
def test_reference_refuses_what_it_cannot_honour(bert, argument, value) -> None:
    model = PromptLogitModel(bert["mlm"], bert["words"]).eval()
    a, b = _data(bert, seed=5)
    assert not STRATEGIES.get("reference").honours(argument) and STRATEGIES.get("fast").honours(argument)
    with pytest.raises(BenchError, match=f"kernel strategy 'reference' does not take {argument}="):
        empirical_ntk(model, a, b, strategy="reference", progress=False, **{argument: value})


def test_every_strategy_honours_stats_and_the_same_arguments(bert, capsys) -> None:
    model = PromptLogitModel(bert["mlm"], bert["words"]).eval()
    a, b = _data(bert, seed=6)
    ref_stats: dict = {}
    ref = empirical_ntk(model, a, b, formula="signgd", strategy="jvp", exact_signs=False, stats=ref_stats,
                        progress=True)
    assert "eNTK (reference)" in capsys.readouterr().err  # progress honoured
    assert ref_stats["strategy"] == "reference" and ref_stats["reference"] > 0
    fast_stats: dict = {}
    fast = empirical_ntk(model, a, b, formula="signgd", memory_budget="64MiB", validate=False, exact_signs=False,
                         stats=fast_stats, progress=False)
    assert fast_stats["strategy"] == "fast" and fast_stats["budget"] == 64 * 2**20
    assert fast_stats["exact_signs"] is False and "probe" in fast_stats
    ga, gb = explicit_gradients(model, a, lambda _n: True), explicit_gradients(model, b, lambda _n: True)
    for got in (ref, fast):
        assert_sign_close(got, explicit_kernels(ga, gb)["signgd"], ga, gb)
    with pytest.raises(BenchError, match="unknown kernel strategy 'magic'"):
        empirical_ntk(model, a, b, strategy="magic", progress=False)


def test_kernel_method_refuses_a_budget_for_the_reference_strategy(ws, monkeypatch, capsys) -> None:
    code, _, err = invoke(_run(ws, "--opt", "strategy=reference", "--opt", "memory_budget=1GiB"), monkeypatch, capsys)
    assert code == 2 and "kernel strategy 'reference' does not take memory_budget='1GiB'" in err
    assert len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- per-module gradient rules
class Scale(nn.Module):
    """``y = x * weight`` (elementwise over the last dimension): a module type without a built-in rule."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, dim, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


class ScaledModel(nn.Module):
    """A prompt logit model whose output logits pass through a `Scale`."""

    def __init__(self, inner: nn.Module, outputs: int) -> None:
        super().__init__()
        self.inner, self.scale = inner, Scale(outputs)

    def forward(self, input_ids, attention_mask, mask_pos):
        return self.scale(self.inner(input_ids, attention_mask, mask_pos))


def test_unknown_module_type_error_and_a_registered_rule(bert, monkeypatch) -> None:
    with pytest.raises(BenchError, match=r"no per-example gradient rule for module type Scale.*Embedding, LayerNorm"):
        require_grad_rule(Scale(2))
    with pytest.raises(BenchError, match="no per-example gradient rule for module type Conv1d"):
        require_grad_rule(nn.Conv1d(2, 2, 1))
    assert grad_rule(nn.Embedding(4, 2, max_norm=1.0)) is None  # a configuration the rule does not cover
    model = ScaledModel(PromptLogitModel(bert["mlm"], bert["words"]), len(bert["words"])).eval()
    a, b = _data(bert, seed=7)
    only_scale = lambda name: name == "scale.weight" or name.endswith("LayerNorm.bias")  # noqa: E731
    stats: dict = {}
    empirical_ntk(model, a, b, params=only_scale, progress=False, stats=stats)
    assert stats["fallback_params"] == ["scale.weight"]  # no rule: the per-example autograd loop

    monkeypatch.setattr("benchmark.kernels.grad_rules.GRAD_RULES", dict(GRAD_RULES))
    from benchmark.kernels import grad_rules

    @register_grad_rule(Scale, kind="scale", roles=("weight",))
    def _scale(module, role, call, grad_out, target, first):
        value = (grad_out * call.input).reshape(target.shape[0], -1, module.weight.numel()).sum(1)
        target.copy_(value) if first else target.add_(value)

    assert grad_rules.grad_rule(Scale(2)).kind == "scale"
    with pytest.raises(BenchError, match="already has a per-example gradient rule"):
        register_grad_rule(Scale, kind="again")(_scale)
    stats = {}
    got = empirical_ntk(model, a, b, params=only_scale, progress=False, stats=stats)
    assert stats["fallback_params"] == []  # assembled by the registered rule
    ga, gb = explicit_gradients(model, a, only_scale), explicit_gradients(model, b, only_scale)
    assert_close(got, explicit_kernels(ga, gb)["sgd"], 1e-10)
