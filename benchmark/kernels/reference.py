"""The reference eNTK algorithm (forward-mode), kept for validation and as the speed baseline.

As in princeton-nlp/LM-Kernel-FT: for each batch of the outer (training) side, the per-example
Jacobian of the logits with respect to the selected parameters is taken in reverse mode
(``jacrev``); then, for every inner batch, the model is differentiated forward (``jvp``) along
each of those ``B_outer * C`` gradient tangents (``vmap`` over them), giving the block
``[B_outer, C, B_inner, C]``. ``signgd`` takes the inner Jacobians too and contracts the signs;
``asym`` uses signed outer tangents, and its flipped kernel repeats the computation with the
sides swapped. The cost is about ``N_a * C`` forward-mode passes per inner example.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, jacrev, jvp, vmap
from tqdm.auto import tqdm

from benchmark.kernels.batches import Examples, differentiable, dist_info, prepare
from benchmark.kernels.params import SelectedTensor


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
    rank, world = dist_info()
    rows: list[torch.Tensor] = []
    for index, batch in enumerate(outer.batches):
        if index % world != rank:
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
    if world == 1:
        return torch.cat(rows, dim=0)
    C, device = num_outputs, fn.primals[0].device
    full = torch.zeros(outer.total, C, inner.total, C, dtype=torch.float64, device=device)
    offset = 0
    for index, (row, size) in enumerate(zip(rows, outer.sizes, strict=True)):
        if index % world == rank:
            full[offset : offset + size] = row.to(device)
        offset += size
    torch.distributed.all_reduce(full, op=torch.distributed.ReduceOp.SUM)
    return full


def reference_kernels(
    model: nn.Module,
    selection: list[SelectedTensor],
    batches_a: Sequence[dict[str, Any]],
    batches_b: Sequence[dict[str, Any]] | None,
    formulas: Sequence[str],
    *,
    progress: bool = False,
) -> dict[str, torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
    """Kernels by the reference algorithm: ``{formula: K}`` (``asym``: ``(K, flipped)``)."""
    device = selection[0].tensor.device
    a = prepare(batches_a, device, model)
    b = prepare(batches_b, device, model) if batches_b is not None else a
    fn = _Functional(model, selection)
    flips = "asym" in formulas and batches_b is not None
    total = len(formulas) * a.total + (b.total if flips else 0)
    rank, _ = dist_info()
    bar = tqdm(total=total, unit="ex", desc="eNTK (reference)", disable=not progress or rank != 0)
    out: dict[str, torch.Tensor | tuple[torch.Tensor, torch.Tensor]] = {}
    try:
        with differentiable(model, []):
            with torch.no_grad():
                first = a.batches[0]
                C = int(model(**{k: v[:1] if isinstance(v, torch.Tensor) else v for k, v in first.items()}).shape[1])
            for formula in formulas:
                common = {"num_outputs": C, "progress": bar.update}
                if formula == "sgd":
                    out[formula] = _kernel(fn, a, b, sign_outer=False, mode="jvp", **common)
                elif formula == "signgd":
                    out[formula] = _kernel(fn, a, b, sign_outer=True, mode="signgd", **common)
                else:
                    kernel = _kernel(fn, a, b, sign_outer=True, mode="jvp", **common)
                    if batches_b is None:
                        flipped = kernel.permute(2, 3, 0, 1).contiguous()
                    else:
                        flipped = _kernel(fn, b, a, sign_outer=True, mode="jvp", **common)
                        flipped = flipped.permute(2, 3, 0, 1).contiguous()
                    out[formula] = (kernel, flipped)
    finally:
        bar.close()
    return out
