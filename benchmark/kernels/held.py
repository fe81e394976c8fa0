"""One buffer for the records a streamed unit holds: its batches' layer inputs and output gradients.

A unit of streamed batches (`passes.PassOps._stream_unit`) keeps every batch's recorded inputs and
output gradients until the unit's segments are assembled. Left where the forward and reverse
passes put them, they sit between the short-lived activations of the batch's graph, so the host
allocator can give little of that memory back: measured on roberta-base (64 tokens), a held
example cost the process 95 MiB where its tensors take 72. Copied into one buffer kept across
units (`HeldPool`), a held example costs what its tensors take, and each batch's graph frees
whole memory that the next batch reuses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from benchmark.kernels.per_example import view_key

#: Start of every tensor in the buffer, in bytes (a multiple of every element size).
ALIGN = 64


class HeldPool:
    """A byte buffer that held tensors are copied into, front to back (a new pool over the same buffer
    for each unit)."""

    def __init__(self, buffer: torch.Tensor) -> None:
        if buffer.dtype != torch.uint8 or buffer.dim() != 1:
            raise ValueError("a held pool is a flat uint8 buffer")
        self.buffer = buffer
        self.used = 0

    def keep(self, tensor: torch.Tensor) -> torch.Tensor | None:
        """A copy of ``tensor`` in the buffer (same shape and dtype, contiguous), or None if it does not fit."""
        nbytes = tensor.numel() * tensor.element_size()
        start = -(-self.used // ALIGN) * ALIGN
        if start + nbytes > self.buffer.numel():
            return None
        copy = self.buffer[start : start + nbytes].view(tensor.dtype).view(tensor.shape)
        copy.copy_(tensor)
        self.used = start + nbytes
        return copy

    def keep_batch(self, rec: Any, grads: list[dict[int, torch.Tensor]]) -> bool:
        """Move a batch's recorded inputs and output gradients into the buffer, in place.

        Inputs shared by several calls (a query, key and value projection's) are copied once. All or
        nothing: when the batch does not fit (a batch padded longer than the probe's), it keeps its
        own tensors and this returns False.
        """
        start = self.used
        inputs: dict[tuple[int, tuple[int, ...], tuple[int, ...]], torch.Tensor] = {}
        moved_inputs = []
        for call in rec.order:
            key = view_key(call.input)
            if key not in inputs:
                copy = self.keep(call.input)
                if copy is None:
                    self.used = start
                    return False
                inputs[key] = copy
            moved_inputs.append((call, inputs[key]))
        moved_grads = []
        for per_logit in grads:
            for key, grad in per_logit.items():
                copy = self.keep(grad)
                if copy is None:
                    self.used = start
                    return False
                moved_grads.append((per_logit, key, copy))
        for call, copy in moved_inputs:
            call.input = copy
        for per_logit, key, copy in moved_grads:
            per_logit[key] = copy
        return True


@dataclass(frozen=True)
class HeldPerWidth:
    """Bytes a streamed example holds in a unit as a function of its batch's width (tokens run):
    ``fixed + per_token * width``, fitted from the probe's records at two widths (`fit`)."""

    fixed: float
    per_token: float

    def at(self, width: int) -> float:
        """Bytes per example of a batch ``width`` tokens wide."""
        return self.fixed + self.per_token * width

    @staticmethod
    def fit(wide: tuple[int, float], narrow: tuple[int, float]) -> HeldPerWidth | None:
        """Through (width, bytes per example) at two widths; None when they do not give a growing line."""
        (w1, h1), (w0, h0) = wide, narrow
        if w1 <= w0 or h1 <= h0:
            return None
        per_token = (h1 - h0) / (w1 - w0)
        fixed = max(0.0, h1 - per_token * w1)
        return HeldPerWidth(fixed, (h1 - fixed) / w1)
