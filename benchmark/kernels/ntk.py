"""Public entry points: `empirical_ntk` (one kernel) and `empirical_ntks` (several, sharing the a side).

For a logit model f with C outputs and g_a(x) = d f_a(x) / d theta over the selected parameters,
a formula (`registry.formulas.FORMULAS`) lists its outputs, each a sign combination; the built-ins:

* ``sgd``:    K(x, x')_ab = <g_a(x), g_b(x')>
* ``signgd``: K(x, x')_ab = <sign g_a(x), sign g_b(x')>
* ``asym``:   K(x, x')_ab = <sign g_a(x), g_b(x')> (A-SignGD, sign on the a / training side) and its
  flipped kernel <g_a(x), sign g_b(x')> (sign on the b side).

Kernels are float64 tensors ``[N_a, C, N_b, C]`` in the order of the examples in the batches; a
formula with several outputs gives a `KernelOutputs` (a tuple of them, by position or output name).
The strategy (`benchmark.kernels.strategies`) computes every sign combination the formulas need once.

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

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from benchmark.kernels.batches import prepare
from benchmark.kernels.params import ParamsSpec, select_parameters
from benchmark.kernels.strategies import STRATEGIES, KernelArgs, compute
from registry import BenchError
from registry.formulas import FORMULAS, Formula, get_formula, sign_combos

Batch = Mapping[str, Any]

__all__ = ["FORMULAS", "STRATEGIES", "AsymKernel", "KernelOutputs", "KernelValue", "empirical_ntk",
           "empirical_ntks", "formula_value", "initial_logits", "normalize_formula"]


class KernelOutputs(tuple):
    """The kernels of a formula with several outputs, in its output order; also by name (``.flipped``).

    ``KernelOutputs(kernel, flipped)`` builds asym's pair; ``KernelOutputs(*tensors, names=...)`` any other.
    """

    names: tuple[str, ...]

    def __new__(cls, *tensors: torch.Tensor, names: Sequence[str] = ("kernel", "flipped")) -> KernelOutputs:
        if len(names) != len(tensors):
            raise ValueError(f"{len(tensors)} kernels for the output names {list(names)}")
        self = super().__new__(cls, tensors)
        self.names = tuple(names)
        return self

    def __getattr__(self, name: str) -> torch.Tensor:
        if name.startswith("__") or name == "names":  # not set yet (copy, unpickling)
            raise AttributeError(name)
        try:
            return self[self.names.index(name)]
        except ValueError:
            raise AttributeError(f"no kernel output '{name}' (outputs: {', '.join(self.names)})") from None

    def __getnewargs_ex__(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return tuple(self), {"names": self.names}

    def as_dict(self) -> dict[str, torch.Tensor]:
        """``{output name: kernel}``."""
        return dict(zip(self.names, self, strict=True))


#: asym's (kernel, flipped): the name callers of the three built-in formulas know.
AsymKernel = KernelOutputs
KernelValue = torch.Tensor | KernelOutputs


def normalize_formula(formula: str) -> str:
    """Canonical formula name; raises `BenchError` for an unknown one."""
    return get_formula(str(formula).strip()).name


def formula_value(formula: Formula, per_combo: Mapping[tuple[bool, bool], torch.Tensor]) -> KernelValue:
    """A formula's result from the kernels of its sign combinations: a tensor, or `KernelOutputs`."""
    if len(formula.outputs) == 1:
        return per_combo[formula.outputs[0].combo]
    return KernelOutputs(*(per_combo[o.combo] for o in formula.outputs), names=formula.output_names)


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
    validate: bool | None = None,
    exact_signs: bool | None = None,
) -> dict[str, dict[str, KernelValue]]:
    """Several kernels against the same ``a`` side, in one set of passes.

    ``targets`` maps a name to the ``b`` side's batches, or to ``None`` for ``a x a`` (e.g.
    ``{"train": None, "dev": dev_batches, "test": test_batches}``). Returns
    ``{name: {formula: kernel}}`` with ``kernel`` a float64 tensor ``[N_a, C, N_b, C]``, or
    `KernelOutputs` for a formula with several outputs (``asym``). The fast strategy computes each
    example's gradients once for all targets and all formulas; ``stats`` (if given) receives timings
    and the memory plan. Arguments a strategy cannot honour raise `BenchError` (see `strategies`).
    """
    chosen = list({f.name: f for f in (get_formula(str(name).strip()) for name in formulas)}.values())
    if not chosen:
        raise BenchError("ask for at least one kernel formula")
    args = KernelArgs(progress=progress, stats=stats, memory_budget=memory_budget, validate=validate,
                      exact_signs=exact_signs)
    STRATEGIES.get(strategy).check(args)
    batches_a = list(batches_a)
    if not batches_a:
        raise BenchError("the kernel needs at least one batch of examples on the first side")
    selection = select_parameters(model, params)
    combos = sign_combos(chosen)
    raw = compute(strategy, model, selection, batches_a, targets, combos, args)
    return {name: {f.name: formula_value(f, per_combo) for f in chosen} for name, per_combo in raw.items()}


@torch.no_grad()
def initial_logits(model: nn.Module, batches: Sequence[Batch]) -> torch.Tensor:
    """The model's logits ``[N, C]`` (float64, CPU) at its current weights, in eval mode: f0 for the solvers."""
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
    validate: bool | None = None,
    exact_signs: bool | None = None,
) -> KernelValue:
    """The empirical NTK of ``model`` between ``batches_a`` and ``batches_b`` (default: ``batches_a``).

    Args:
        model: a logit model, ``model(**batch) -> [B, C]``; it is put in eval mode for the call.
        batches_a: batches (dicts of ``input_ids``, ``attention_mask``, ``mask_pos``, ...) of the
            training side; ``labels`` keys are ignored.
        batches_b: the other side; ``None`` for the (symmetric) ``a x a`` kernel.
        formula: a registered formula: ``"sgd"``, ``"signgd"``, ``"asym"`` or a plugin's.
        params: which parameters count (see `benchmark.kernels.params.PRESETS`, or a predicate on
            registration names).
        strategy: ``"fast"`` (per-example gradients + matrix products) or ``"reference"`` (jvp), or
            any registered strategy (`benchmark.kernels.strategies.STRATEGIES`).
        memory_budget: bytes or a string like ``"1GiB"`` for the fast strategy's peak extra memory;
            default: half the free host memory, shared by the processes of a host (80% of the free
            memory of each process's GPU). The reference strategy refuses it.
        progress: show a progress bar over examples.
        stats: a dict to receive timings in seconds (``probe``, ``forward``, ``backward``,
            ``per_example`` assembly, ``fallback``, ``contract``, ``gather``) and the plan
            (``passes``, ``groups``, ``chunk``, ``max_batch``, ``segment_cols``, ``budget``,
            ``fallback_params``, ``dense_cols``, and ``representation``: how the training side
            was stored, see `benchmark.kernels.planner.Plan`), and ``strategy``.
        validate: check the per-layer gradients against autograd on a probe batch first (fast; default
            on). The reference strategy refuses it.
        exact_signs: for sign formulas on a float32/16 model, compute the training (``a``) side's
            gradients with a float64 copy of the model, so that their signs are not round-off (fast;
            default on). The reference strategy takes only ``False``.

    Returns:
        float64 ``[N_a, C, N_b, C]``; for a formula with several outputs (``asym``) `KernelOutputs`
        ``(kernel, flipped)``.
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
