"""eNTK kernels of a logit model (formulas, strategies), kernel solvers, and a validated disk cache.

Formulas (``sgd``, ``signgd``, ``asym``, plugins') are plain data in `registry.formulas.FORMULAS`;
strategies (``fast``, ``reference``) in `STRATEGIES`; solvers in `SOLVERS`; per-layer per-example
gradient rules in `per_example.GRAD_RULES`. All four take entry-point plugins.

Typical use by a kernel method::

    from benchmark.kernels import KernelCache, KernelSplit, empirical_ntks, select_hyperparameters

    k = empirical_ntks(model, train, {"train": None, "dev": dev, "test": test}, formulas=["sgd"])
    fit = select_hyperparameters("lstsq", KernelSplit.of(k["train"]["sgd"]), y_train,
                                 KernelSplit.of(k["dev"]["sgd"]), y_dev)
    test_pred = fit.solver.predict(KernelSplit.of(k["test"]["sgd"]))
"""

from benchmark.kernels.cache import (
    CACHE_FORMAT,
    KernelCache,
    ReferenceKernels,
    load_reference_kernels,
    reference_kernel_path,
)
from benchmark.kernels.memory import PeakMemory, default_budget, parse_bytes
from benchmark.kernels.ntk import (
    FORMULAS,
    AsymKernel,
    KernelOutputs,
    KernelValue,
    empirical_ntk,
    empirical_ntks,
    formula_value,
    initial_logits,
    normalize_formula,
)
from benchmark.kernels.params import PRESETS, ParamsSpec, params_tag, select_parameters
from benchmark.kernels.selection import Selection, one_standard_error, score_accuracy, select_hyperparameters
from benchmark.kernels.solvers import SOLVERS, KernelSolver, KernelSplit, default_grid, get_solver, register_solver
from benchmark.kernels.strategies import STRATEGIES, KernelArgs, Strategy, get_strategy, register_strategy

__all__ = [
    "CACHE_FORMAT",
    "FORMULAS",
    "PRESETS",
    "SOLVERS",
    "STRATEGIES",
    "AsymKernel",
    "KernelArgs",
    "KernelCache",
    "KernelOutputs",
    "KernelSolver",
    "KernelSplit",
    "KernelValue",
    "ParamsSpec",
    "PeakMemory",
    "ReferenceKernels",
    "Selection",
    "Strategy",
    "default_budget",
    "default_grid",
    "empirical_ntk",
    "empirical_ntks",
    "formula_value",
    "get_solver",
    "get_strategy",
    "initial_logits",
    "load_reference_kernels",
    "normalize_formula",
    "one_standard_error",
    "params_tag",
    "parse_bytes",
    "reference_kernel_path",
    "register_solver",
    "register_strategy",
    "score_accuracy",
    "select_hyperparameters",
    "select_parameters",
]
