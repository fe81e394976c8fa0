"""Public entry points: `empirical_ntk` (one kernel) and `empirical_ntks` (several, sharing the a side).

For a logit model f with C outputs and g_a(x) = d f_a(x) / d theta over the selected parameters:

* ``sgd``:    K(x, x')_ab = <g_a(x), g_b(x')>
* ``signgd``: K(x, x')_ab = <sign g_a(x), sign g_b(x')>
* ``asym``:   K(x, x')_ab = <sign g_a(x), g_b(x')> (A-SignGD, sign on the a / training side) and its
  flipped kernel <g_a(x), sign g_b(x')> (sign on the b side).

Kernels are float64 tensors ``[N_a, C, N_b, C]`` in the order of the examples in the batches.

Sign kernels and round-off: a gradient entry that is zero in exact arithmetic (e.g. the attention
key bias, whose gradient cancels through the softmax) comes out as |g| ~ 1e-9 round-off whose
sign depends on the order of floating-point operations, so two correct implementations (this
engine and the reference jvp/jacrev path) can disagree on such entries. A flip changes a
``signgd`` entry by 2, so sign kernels agree to about 2e-4 relative (exactly where no gradient
entry is near zero), and an ``asym`` entry by twice the other side's gradient entry: in float32 an
entry of a few 1e-9 (within round-off) can take either sign, which can move an ``asym`` kernel by
~1e-5 relative; in float64 only analytically-zero entries remain, whose partners are themselves
round-off, so ``asym`` agrees to ~1e-12.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from benchmark.kernels.fast import Combo, FastKernelEngine, dist_info
from benchmark.kernels.memory import default_budget, parse_bytes
from benchmark.kernels.params import ParamsSpec, select_parameters
from benchmark.kernels.reference import reference_kernels
from registry import BenchError

FORMULAS = ("sgd", "signgd", "asym")
STRATEGIES = ("fast", "reference")
_FORMULA_ALIASES = {"asymmetric_signgd": "asym", "asymmetric-signgd": "asym", "a-signgd": "asym", "adam": "asym"}
_COMBOS: dict[str, list[Combo]] = {
    "sgd": [(False, False)],
    "signgd": [(True, True)],
    "asym": [(True, False), (False, True)],
}

Batch = Mapping[str, Any]


class AsymKernel(NamedTuple):
    """The A-SignGD kernel (sign on the a side) and its flipped kernel (sign on the b side)."""

    kernel: torch.Tensor
    flipped: torch.Tensor


KernelValue = torch.Tensor | AsymKernel


def normalize_formula(formula: str) -> str:
    """Canonical formula name; raises `BenchError` for an unknown one."""
    key = str(formula).strip().lower()
    key = _FORMULA_ALIASES.get(key, key)
    if key not in FORMULAS:
        raise BenchError(f"unknown kernel formula '{formula}'; choose from {', '.join(FORMULAS)}")
    return key


def _strategy(strategy: str) -> str:
    key = str(strategy).strip().lower()
    if key in ("auto", "default", "per-example"):
        key = "fast"
    if key in ("jvp", "functorch"):
        key = "reference"
    if key not in STRATEGIES:
        raise BenchError(f"unknown kernel strategy '{strategy}'; choose from {', '.join(STRATEGIES)}")
    return key


def empirical_ntks(
    model: nn.Module,
    batches_a: Sequence[Batch],
    targets: Mapping[str, Sequence[Batch] | None],
    *,
    formulas: Sequence[str] = ("sgd",),
    params: ParamsSpec = None,
    strategy: str = "fast",
    memory_budget: int | str | None = None,
    progress: bool = True,
    stats: dict[str, Any] | None = None,
    validate: bool = True,
    exact_signs: bool = True,
) -> dict[str, dict[str, KernelValue]]:
    """Several kernels against the same ``a`` side, in one set of passes.

    ``targets`` maps a name to the ``b`` side's batches, or to ``None`` for ``a x a`` (e.g.
    ``{"train": None, "dev": dev_batches, "test": test_batches}``). Returns
    ``{name: {formula: kernel}}`` with ``kernel`` a float64 tensor ``[N_a, C, N_b, C]``, or an
    `AsymKernel` for ``asym``. The fast strategy computes each example's gradients once for all
    targets and all formulas; ``stats`` (if given) receives timings and the memory plan.
    """
    names = list(dict.fromkeys(normalize_formula(f) for f in formulas))
    if not names:
        raise BenchError("ask for at least one kernel formula")
    how = _strategy(strategy)
    batches_a = list(batches_a)
    if not batches_a:
        raise BenchError("the kernel needs at least one batch of examples on the first side")
    selection = select_parameters(model, params)
    if how == "reference":
        out: dict[str, dict[str, KernelValue]] = {}
        for name, batches_b in targets.items():
            computed = reference_kernels(
                model,
                selection,
                batches_a,
                list(batches_b) if batches_b is not None else None,
                names,
                progress=progress,
            )
            out[name] = {f: (AsymKernel(*v) if isinstance(v, tuple) else v) for f, v in computed.items()}
        return out
    device = selection[0].tensor.device
    if memory_budget is not None:
        budget = parse_bytes(memory_budget)
    else:  # processes on one host share its memory (each GPU has its own)
        budget = default_budget(device)
        _, world = dist_info()
        if device.type != "cuda" and world > 1:
            budget //= int(os.environ.get("LOCAL_WORLD_SIZE", world))
    _, world = dist_info()
    if world > 1:  # one plan for all ranks: the smallest budget
        agreed = torch.tensor([budget], dtype=torch.int64, device=device if device.type == "cuda" else "cpu")
        torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MIN)
        budget = int(agreed.item())
    combos = [combo for f in names for combo in _COMBOS[f]]
    engine = FastKernelEngine(
        model,
        selection,
        combos,
        memory_budget=budget,
        progress=progress,
        stats=stats,
        validate=validate,
        exact_signs=exact_signs,
    )
    raw = engine.run(batches_a, {k: (list(v) if v is not None else None) for k, v in targets.items()})
    result: dict[str, dict[str, KernelValue]] = {}
    for name, per_combo in raw.items():
        result[name] = {}
        for f in names:
            if f == "asym":
                result[name][f] = AsymKernel(per_combo[(True, False)], per_combo[(False, True)])
            else:
                result[name][f] = per_combo[_COMBOS[f][0]]
    return result


@torch.no_grad()
def initial_logits(model: nn.Module, batches: Sequence[Batch]) -> torch.Tensor:
    """The model's logits ``[N, C]`` (float64, CPU) at its current weights, in eval mode: f0 for the solvers."""
    from benchmark.kernels.fast import prepare

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        rows = [model(**batch).to("cpu", torch.float64) for batch in prepare(batches, device, model).batches]
    finally:
        model.train(was_training)
    if not rows:
        raise BenchError("no examples to compute logits for")
    return torch.cat(rows)


def empirical_ntk(
    model: nn.Module,
    batches_a: Sequence[Batch],
    batches_b: Sequence[Batch] | None = None,
    *,
    formula: str = "sgd",
    params: ParamsSpec = None,
    strategy: str = "fast",
    memory_budget: int | str | None = None,
    progress: bool = True,
    stats: dict[str, Any] | None = None,
    validate: bool = True,
    exact_signs: bool = True,
) -> KernelValue:
    """The empirical NTK of ``model`` between ``batches_a`` and ``batches_b`` (default: ``batches_a``).

    Args:
        model: a logit model, ``model(**batch) -> [B, C]``; it is put in eval mode for the call.
        batches_a: batches (dicts of ``input_ids``, ``attention_mask``, ``mask_pos``, ...) of the
            training side; ``labels`` keys are ignored.
        batches_b: the other side; ``None`` for the (symmetric) ``a x a`` kernel.
        formula: ``"sgd"``, ``"signgd"`` or ``"asym"``.
        params: which parameters count (see `benchmark.kernels.params.PRESETS`, or a predicate on
            registration names).
        strategy: ``"fast"`` (per-example gradients + matrix products) or ``"reference"`` (jvp).
        memory_budget: bytes or a string like ``"1GiB"`` for the fast strategy's peak extra memory;
            default: half the free host memory, shared by the processes of a host (80% of the free
            memory of each process's GPU).
        progress: show a progress bar over examples.
        stats: a dict to receive timings in seconds (``probe``, ``forward``, ``backward``,
            ``per_example`` assembly, ``fallback``, ``contract``, ``gather``) and the plan
            (``passes``, ``groups``, ``chunk``, ``max_batch``, ``segment_cols``, ``budget``,
            ``fallback_params``, ``dense_cols``, and ``representation``: how the training side
            was stored, see `benchmark.kernels.planner.Plan`).
        validate: check the per-layer gradients against autograd on a probe batch first.
        exact_signs: for sign formulas on a float32/16 model, compute the training (``a``) side's
            gradients with a float64 copy of the model, so that their signs are not round-off.

    Returns:
        float64 ``[N_a, C, N_b, C]``; for ``asym`` an `AsymKernel` ``(kernel, flipped)``.
    """
    out = empirical_ntks(
        model,
        batches_a,
        {"b": batches_b},
        formulas=(formula,),
        params=params,
        strategy=strategy,
        memory_budget=memory_budget,
        progress=progress,
        stats=stats,
        validate=validate,
        exact_signs=exact_signs,
    )
    return out["b"][normalize_formula(formula)]
