"""eNTK kernels (sgd, signgd, asym) of a logit model, kernel solvers, and a validated disk cache.

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
    STRATEGIES,
    AsymKernel,
    KernelValue,
    empirical_ntk,
    empirical_ntks,
    initial_logits,
    normalize_formula,
)
from benchmark.kernels.params import PRESETS, ParamsSpec, params_tag, select_parameters
from benchmark.kernels.solvers import (
    SOLVERS,
    KernelSolver,
    KernelSplit,
    Selection,
    accuracy,
    default_grid,
    get_solver,
    one_standard_error,
    predict_labels,
    select_hyperparameters,
)

__all__ = [
    "CACHE_FORMAT",
    "FORMULAS",
    "PRESETS",
    "SOLVERS",
    "STRATEGIES",
    "AsymKernel",
    "KernelCache",
    "KernelSolver",
    "KernelSplit",
    "KernelValue",
    "ParamsSpec",
    "PeakMemory",
    "ReferenceKernels",
    "Selection",
    "accuracy",
    "default_budget",
    "default_grid",
    "empirical_ntk",
    "empirical_ntks",
    "get_solver",
    "initial_logits",
    "load_reference_kernels",
    "normalize_formula",
    "one_standard_error",
    "params_tag",
    "parse_bytes",
    "predict_labels",
    "reference_kernel_path",
    "select_hyperparameters",
    "select_parameters",
]
