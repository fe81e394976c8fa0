"""The reference eNTK algorithm (forward-mode), kept for validation and as the speed baseline.

As in princeton-nlp/LM-Kernel-FT: for each batch of the outer (training) side, the per-example
Jacobian of the logits with respect to the selected parameters is taken in reverse mode
(``jacrev``); then, for every inner batch, the model is differentiated forward (``jvp``) along
each of those ``B_outer * C`` gradient tangents (``vmap`` over them), giving the block
``[B_outer, C, B_inner, C]``. Each sign combination of a formula's outputs (see
`registry.formulas`) is computed on its own: (raw, raw) by jvp along raw tangents, (sign, raw) by
jvp along signed tangents, (sign, sign) from the inner Jacobians' signs, and (raw, sign) as the
transpose of (sign, raw) with the sides swapped. The cost is about ``N_a * C`` forward-mode passes
per inner example.

This strategy has no memory planner, no per-layer gradients to validate and no float64 sign side:
`benchmark.kernels.strategies` refuses those arguments for it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, jacrev, jvp, vmap
from tqdm.auto import tqdm

from benchmark.kernels.batches import Examples, differentiable, prepare
from benchmark.kernels.distributed import Ranks, gather_rows
from benchmark.kernels.params import SelectedTensor

Combo = tuple[bool, bool]  # (sign on the a side, sign on the b side)


class _Functional:
    """The logit model as a function of the selected tensors (one argument per tensor)."""

    def __init__(self, model: nn.Module, selection: list[SelectedTensor]) -> None:
        self.model = model
        self.names = [[reg.name for reg in sel.selected] for sel in selection]
        self.primals = tuple(sel.tensor.detach() for sel in selection)

    def __call__(self, params: tuple[torch.Tensor, ...], batch: dict[str, Any]) -> torch.Tensor:
        mapping = {name: p for p, names in zip(params, self.names, strict=True) for name in names}
        return functional_call(self.model, mapping, args=(), kwargs=batch, tie_weights=False, strict=False)

    def jacobian(self, batch: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        """Per-example Jacobians ``[B, C, *shape]`` for each selected tensor."""
        argnums = tuple(range(len(self.primals)))
        return jacrev(lambda *p: self(p, batch), argnums=argnums)(*self.primals)

    def jvp_block(self, tangents: tuple[torch.Tensor, ...], batch: dict[str, Any]) -> torch.Tensor:
        """``[B_outer, C, B_inner, C]``: jvp of the inner batch along each outer tangent."""

        def one(tangent: tuple[torch.Tensor, ...]) -> torch.Tensor:
            return jvp(lambda *p: self(p, batch), self.primals, tangent)[1]

        return vmap(vmap(one))(tangents)


def _sign_block(outer: tuple[torch.Tensor, ...], inner: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return sum(
        torch.einsum("olw,ikw->olik", o.sign().flatten(2).double(), i.sign().flatten(2).double())
        for o, i in zip(outer, inner, strict=True)
    )  # type: ignore[return-value]


def _kernel(
    fn: _Functional,
    outer: Examples,
    inner: Examples,
    *,
    sign_outer: bool,
    mode: str,
    num_outputs: int,
    progress: Callable[[int], None],
) -> torch.Tensor:
    ranks = Ranks.current()
    rows: list[torch.Tensor] = []
    for index, batch in enumerate(outer.batches):
        if not ranks.mine(index):
            rows.append(torch.zeros(0))
            progress(batch["input_ids"].shape[0])
            continue
        grads = fn.jacobian(batch)
        if sign_outer:
            grads = tuple(g.sign() for g in grads)
        blocks = []
        for inner_batch in inner.batches:
            if mode == "signgd":
                blocks.append(_sign_block(grads, fn.jacobian(inner_batch)))
            else:
                blocks.append(fn.jvp_block(grads, inner_batch).double())
        rows.append(torch.cat(blocks, dim=2).detach())
        progress(batch["input_ids"].shape[0])
    C = num_outputs
    return gather_rows(rows, outer.sizes, ranks, (C, inner.total, C), fn.primals[0].device)


def _cost(combos: Sequence[Combo], a: Examples, b: Examples, symmetric: bool) -> int:
    """Outer examples the combos go through (for the progress bar)."""
    total = 0
    for combo in combos:
        if combo == (False, True):
            total += 0 if symmetric and (True, False) in combos else (a.total if symmetric else b.total)
        else:
            total += a.total
    return total


def reference_kernels(
    model: nn.Module,
    selection: list[SelectedTensor],
    batches_a: Sequence[dict[str, Any]],
    batches_b: Sequence[dict[str, Any]] | None,
    combos: Sequence[Combo],
    *,
    progress: bool = False,
) -> dict[Combo, torch.Tensor]:
    """Kernels ``[N_a, C, N_b, C]`` (float64) by the reference algorithm, one per sign combination."""
    device = selection[0].tensor.device
    a = prepare(batches_a, device, model)
    b = prepare(batches_b, device, model) if batches_b is not None else a
    symmetric = batches_b is None
    fn = _Functional(model, selection)
    combos = list(dict.fromkeys(combos))
    rank = Ranks.current().rank
    bar = tqdm(total=_cost(combos, a, b, symmetric), unit="ex", desc="eNTK (reference)",
               disable=not progress or rank != 0)
    out: dict[Combo, torch.Tensor] = {}
    try:
        with differentiable(model, []):
            with torch.no_grad():
                first = a.batches[0]
                C = int(model(**{k: v[:1] if isinstance(v, torch.Tensor) else v for k, v in first.items()}).shape[1])
            common = {"num_outputs": C, "progress": bar.update}
            # (raw, sign) last: on a x a it is the transpose of (sign, raw), computed first if asked
            for combo in sorted(combos, key=lambda c: c == (False, True)):
                if combo == (False, False):
                    out[combo] = _kernel(fn, a, b, sign_outer=False, mode="jvp", **common)
                elif combo == (True, True):
                    out[combo] = _kernel(fn, a, b, sign_outer=True, mode="signgd", **common)
                elif combo == (True, False):
                    out[combo] = _kernel(fn, a, b, sign_outer=True, mode="jvp", **common)
                else:  # <g(x_a), sign g(x_b)> = (<sign g(x_b), g(x_a)>)^T
                    swapped = out.get((True, False)) if symmetric else None
                    if swapped is None:
                        swapped = _kernel(fn, b, a, sign_outer=True, mode="jvp", **common)
                    out[combo] = swapped.permute(2, 3, 0, 1).contiguous()
    finally:
        bar.close()
    return {combo: out[combo] for combo in combos}
