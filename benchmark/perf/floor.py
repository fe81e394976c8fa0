"""The one-pass floor of an eNTK computation, and a kernel's error against float64 on a sub-block.

The floor is what any per-example-gradient method must at least spend: one batched forward and
one batched reverse pass per logit (parameter gradients included) over all examples of both
sides, plus one float32 matrix product ``[C * N_a, P] x [P, C * N_b]`` over the dense gradient
columns. The product is timed on a slice of columns and scaled to all of them.
"""

from __future__ import annotations

import copy
import inspect
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from benchmark.kernels import empirical_ntks, select_parameters
from benchmark.kernels.batches import differentiable
from benchmark.perf.timing import synchronize


@dataclass
class Floor:
    """CPU seconds of the floor's parts."""

    forward: float
    reverse: float
    gemm: float

    @property
    def total(self) -> float:
        """The whole floor."""
        return self.forward + self.reverse + self.gemm


def _model_inputs(model: torch.nn.Module, batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    accepted = set(inspect.signature(model.forward).parameters)
    return {k: v.to(device) for k, v in batch.items() if k in accepted}


def one_pass_floor(
    model: torch.nn.Module, batches: Sequence[dict[str, Any]], rows_a: int, rows_b: int, cols: int, params: Any
) -> Floor:
    """Measure the floor over ``batches`` (both sides) and a ``[rows_a, cols] x [cols, rows_b]`` product."""
    tensors = [s.tensor for s in select_parameters(model, params)]
    device = tensors[0].device
    forward = reverse = 0.0
    with differentiable(model, tensors):
        for batch in batches:
            inputs = _model_inputs(model, batch, device)
            t = time.process_time()
            logits = model(**inputs)
            synchronize(device)
            forward += time.process_time() - t
            t = time.process_time()
            C = logits.shape[1]
            for c in range(C):
                torch.autograd.grad(logits[:, c].sum(), tensors, retain_graph=c < C - 1, allow_unused=True)
            synchronize(device)
            reverse += time.process_time() - t
            del logits
    dtype = tensors[0].dtype
    width = max(1, min(cols, 2**28 // (4 * (rows_a + rows_b))))  # at most 256 MiB of operands
    g = torch.Generator(device="cpu").manual_seed(0)
    left = torch.randn(rows_a, width, generator=g).to(device, dtype)
    right = torch.randn(rows_b, width, generator=g).to(device, dtype)
    torch.mm(left, right.t())  # warm-up
    synchronize(device)
    t = time.process_time()
    torch.mm(left, right.t())
    synchronize(device)
    gemm = (time.process_time() - t) * cols / width
    return Floor(forward, reverse, gemm)


def relative(got: torch.Tensor, want: torch.Tensor) -> float:
    """Max |difference| / max |want| (the absolute difference when ``want`` is all zeros)."""
    diff = float((got - want).abs().max())
    scale = float(want.abs().max())
    return diff / scale if scale else diff


def float64_kernels(
    mlm: torch.nn.Module, words: list[int], binary: bool, train: Sequence[dict[str, Any]],
    evals: Sequence[dict[str, Any]], formulas: Sequence[str], params: Any,
) -> dict[str, Any]:
    """The kernels of a float64 copy of ``mlm`` between ``train`` and ``evals`` (the arbiter of round-off)."""
    from benchmark.models import PromptLogitModel

    exact = PromptLogitModel(copy.deepcopy(mlm).double(), words, binary=binary).eval()
    return empirical_ntks(exact, train, {"eval": evals}, formulas=formulas, params=params, progress=False)["eval"]


def float64_error(
    mlm: torch.nn.Module, words: list[int], binary: bool, train: Sequence[dict[str, Any]],
    evals: Sequence[dict[str, Any]], kernels: dict[str, Any], formulas: Sequence[str], params: Any,
) -> dict[str, float]:
    """Relative error of ``kernels`` on their first examples (as many as ``train`` x ``evals``) against float64."""
    n_a = sum(b["input_ids"].shape[0] for b in train)
    n_b = sum(b["input_ids"].shape[0] for b in evals)
    exact = float64_kernels(mlm, words, binary, train, evals, formulas, params)
    out = {}
    for f in formulas:
        got, want = kernels[f], exact[f]
        pairs = [("kernel", got[0], want[0]), ("flipped", got[1], want[1])] if f == "asym" else [("", got, want)]
        for name, x, y in pairs:
            out[f"{f} {name}".strip()] = relative(x[:n_a, :, :n_b].cpu(), y.cpu())
    return out
