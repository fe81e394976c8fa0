"""Batches as one sequence of examples, device placement, and the autograd state of a kernel call."""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from benchmark.kernels.per_example import Batch, batch_size, slice_batch


@dataclass
class Examples:
    """A list of batches seen as one sequence of examples."""

    batches: list[dict[str, Any]]
    sizes: list[int]

    @property
    def total(self) -> int:
        """Number of examples."""
        return sum(self.sizes)

    @property
    def max_len(self) -> int:
        """Longest sequence (for memory estimates)."""
        lengths = [b["input_ids"].shape[-1] for b in self.batches if isinstance(b.get("input_ids"), torch.Tensor)]
        return max(lengths, default=128)

    def pieces(self, start: int, stop: int, max_batch: int) -> Iterator[tuple[int, dict[str, Any]]]:
        """Sub-batches covering examples ``start:stop``: (first example index, batch)."""
        offset = 0
        for batch, size in zip(self.batches, self.sizes, strict=True):
            lo, hi = max(start, offset), min(stop, offset + size)
            for s in range(lo, hi, max_batch):
                e = min(hi, s + max_batch)
                yield (
                    s,
                    (batch if (s - offset, e - offset) == (0, size) else slice_batch(batch, s - offset, e - offset)),
                )
            offset += size


def accepted_keys(model: nn.Module) -> set[str] | None:
    """Keyword arguments ``model.forward`` accepts (None when it takes ``**kwargs``)."""
    try:
        signature = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
        return None
    return set(signature.parameters)


def prepare(batches: Sequence[Batch], device: torch.device, model: nn.Module | None = None) -> Examples:
    """Move batches to ``device``; drop labels and keys the model's forward does not take."""
    keys = accepted_keys(model) if model is not None else None
    out: list[dict[str, Any]] = []
    for batch in batches:
        moved = {
            k: (v.to(device) if isinstance(v, torch.Tensor) else v)
            for k, v in batch.items()
            if k not in ("labels", "label") and (keys is None or k in keys)
        }
        out.append(moved)
    return Examples(out, [batch_size(b) for b in out])


@contextmanager
def differentiable(model: nn.Module, tensors: Sequence[torch.Tensor]) -> Iterator[None]:
    """Eval mode, gradients on ``tensors`` only, autograd enabled; restored afterwards."""
    saved = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    model.eval()
    try:
        for p, _ in saved:
            p.requires_grad_(False)
        for t in tensors:
            t.requires_grad_(True)
        with torch.enable_grad():
            yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)
        model.train(was_training)
