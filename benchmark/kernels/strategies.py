"""How a kernel is computed, chosen from a table (as neural-tangents' ``implementation=``).

A `Strategy` computes, for given sign combinations, the kernels of the ``a`` side against every
target; every strategy receives the same `KernelArgs`. An argument a strategy cannot honour is
refused with a `BenchError` that names it (``None`` means "the strategy's default" and is always
accepted), never silently ignored:

=============  ======  =========================================================
argument       fast    reference
=============  ======  =========================================================
progress       yes     yes
stats          yes     yes (strategy, seconds; no plan: it has none)
memory_budget  yes     refused: no memory planner
validate       yes     refused: it differentiates the model itself, nothing to check
exact_signs    yes     refused unless False: signs come from the model's own precision
=============  ======  =========================================================

Strategies are in the registry `STRATEGIES` (entry-point group ``kernel_bench.strategies``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import nn

from benchmark.kernels.distributed import agreed_budget, host_budget
from benchmark.kernels.memory import parse_bytes
from benchmark.kernels.params import SelectedTensor
from registry import BenchError
from registry.registry import Registry

Combo = tuple[bool, bool]
Batch = Mapping[str, Any]
#: ``{target: {combo: kernel [N_a, C, N_b, C]}}``
Computed = dict[str, dict[Combo, torch.Tensor]]


@dataclass(frozen=True)
class KernelArgs:
    """The arguments every strategy receives (``None``: the strategy's default)."""

    progress: bool = True
    stats: dict[str, Any] | None = None
    memory_budget: int | str | None = None
    validate: bool | None = None
    exact_signs: bool | None = None


ARGUMENTS = tuple(f.name for f in fields(KernelArgs))


@dataclass(frozen=True)
class Strategy:
    """One way to compute kernels: ``compute(model, selection, batches_a, targets, combos, args)``.

    ``refuses`` maps an argument of `KernelArgs` to why this strategy cannot honour it; such an
    argument must be left ``None`` (or equal ``accepts[argument]``, a value that means what the
    strategy does anyway).
    """

    name: str
    compute: Callable[[nn.Module, list[SelectedTensor], list[Batch], Mapping[str, list[Batch] | None],
                       tuple[Combo, ...], KernelArgs], Computed]
    summary: str = ""
    refuses: Mapping[str, str] = field(default_factory=dict)
    accepts: Mapping[str, Any] = field(default_factory=dict)

    def check(self, args: KernelArgs) -> None:
        """Raise `BenchError` naming the first given argument this strategy cannot honour."""
        for name, why in self.refuses.items():
            value = getattr(args, name)
            if value is None or (name in self.accepts and value == self.accepts[name]):
                continue
            raise BenchError(f"kernel strategy '{self.name}' does not take {name}={value!r}: {why}; leave "
                             f"{name} out or use another strategy")

    def honours(self, name: str) -> bool:
        """Whether the argument ``name`` is honoured (not refused)."""
        if name not in ARGUMENTS:
            raise KeyError(name)
        return name not in self.refuses


def _check_strategy(_name: str, obj: object) -> str | None:
    return None if isinstance(obj, Strategy) else f"it is a {type(obj).__name__}, not a kernel Strategy"


STRATEGIES: Registry[Strategy] = Registry("kernel strategy", "kernel_bench.strategies", check=_check_strategy)


def register_strategy(strategy: Strategy, *, aliases: tuple[str, ...] = ()) -> Strategy:
    """Add ``strategy`` to the table."""
    STRATEGIES.add(strategy.name, strategy, aliases=aliases)
    return strategy


def get_strategy(name: str) -> Strategy:
    """The strategy ``name`` (aliases and case folded); unknown names raise `BenchError`."""
    return STRATEGIES.get(str(name))


def _fast(model: nn.Module, selection: list[SelectedTensor], batches_a: list[Batch],
          targets: Mapping[str, list[Batch] | None], combos: tuple[Combo, ...], args: KernelArgs) -> Computed:
    from benchmark.kernels.fast import FastKernelEngine

    device = selection[0].tensor.device
    budget = parse_bytes(args.memory_budget) if args.memory_budget is not None else host_budget(device)
    engine = FastKernelEngine(
        model,
        selection,
        combos,
        memory_budget=agreed_budget(budget, device),
        progress=args.progress,
        stats=args.stats,
        validate=True if args.validate is None else args.validate,
        exact_signs=True if args.exact_signs is None else args.exact_signs,
    )
    out = engine.run(batches_a, targets)
    if args.stats is not None:
        args.stats["strategy"] = "fast"
    return out


def _reference(model: nn.Module, selection: list[SelectedTensor], batches_a: list[Batch],
               targets: Mapping[str, list[Batch] | None], combos: tuple[Combo, ...], args: KernelArgs) -> Computed:
    from benchmark.kernels.reference import reference_kernels

    start = time.perf_counter(), time.process_time()
    out = {name: reference_kernels(model, selection, batches_a, batches_b, combos, progress=args.progress)
           for name, batches_b in targets.items()}
    if args.stats is not None:
        args.stats.update(strategy="reference", reference=time.perf_counter() - start[0],
                          reference_cpu=time.process_time() - start[1])
    return out


register_strategy(Strategy(
    "fast", _fast, summary="per-example gradients once per example, then chunked matrix products (default)",
), aliases=("auto", "default", "per-example"))
register_strategy(Strategy(
    "reference", _reference, summary="reverse-mode training gradients, then jvp per eval batch (LM-Kernel-FT)",
    refuses={
        "memory_budget": "it has no memory planner (its memory grows with the batch sizes)",
        "validate": "it differentiates the whole model by autograd, there are no per-layer gradients to check",
        "exact_signs": "it takes signs of the gradients in the model's own precision",
    },
    accepts={"exact_signs": False},
), aliases=("jvp", "functorch"))


def compute(strategy: str, model: nn.Module, selection: list[SelectedTensor], batches_a: Sequence[Batch],
            targets: Mapping[str, Sequence[Batch] | None], combos: Sequence[Combo], args: KernelArgs) -> Computed:
    """Kernels of every combo for every target by ``strategy`` (arguments checked first)."""
    chosen = get_strategy(strategy)
    chosen.check(args)
    lists = {name: (list(b) if b is not None else None) for name, b in targets.items()}
    return chosen.compute(model, selection, list(batches_a), lists, tuple(dict.fromkeys(combos)), args)
