"""Trailing padding the model never attends to, left out of the batches the engine runs.

Batches arrive right-padded to their longest example, and the engine runs them a few examples at
a time (the plan's ``max_batch``). Ordering each batch's examples by length (`by_length`) and
cutting every sub-batch to its longest example (`trim_padding`: the columns where the attention
mask is 0 for all of its examples) spares the forward and reverse passes those tokens, and a
streamed unit the memory of their records. The kernel's entries are put back in the given order
(`restore_order`).

Cutting is exact for a model that attends by its mask (a masked key gets weight 0 and a padded
position feeds no logit); `mask_is_honoured` checks that on one padded example before any batch is
cut, and the engine keeps the batches whole when it fails.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from benchmark.kernels.batches import Examples
from benchmark.kernels.per_example import batch_size, slice_batch

#: The per-token inputs cut with the mask. A batch with any other ``[B, L, ...]`` tensor is never cut.
PER_TOKEN_KEYS = frozenset({"input_ids", "attention_mask", "token_type_ids", "position_ids"})
#: Largest relative change of a padded example's logits when its padding is cut, for a model that
#: attends by its mask (float32 round-off of sums over a different number of keys).
HONOURED_TOLERANCE = 1e-4


def _mask(batch: dict[str, Any]) -> torch.Tensor | None:
    """The batch's 0/1 attention mask ``[B, L]``, or None when it has none (or one of another kind,
    such as an additive mask) or another per-token input that would not be cut with it."""
    mask = batch.get("attention_mask")
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        return None
    width = mask.shape[1]
    for key, value in batch.items():
        if key not in PER_TOKEN_KEYS and isinstance(value, torch.Tensor) and value.dim() >= 2 \
                and value.shape[1] == width:
            return None
    if not bool(((mask == 0) | (mask == 1)).all()):
        return None
    return mask


def lengths(batch: dict[str, Any]) -> torch.Tensor | None:
    """Per example, one past its last attended position (0 for an example with none); None without a mask."""
    mask = _mask(batch)
    if mask is None:
        return None
    positions = torch.arange(1, mask.shape[1] + 1, device=mask.device)
    return (mask.ne(0) * positions).amax(dim=1)


def trim_padding(batch: dict[str, Any]) -> dict[str, Any]:
    """``batch`` without its trailing columns that no example attends to (the batch itself if none)."""
    ends = lengths(batch)
    if ends is None:
        return batch
    width = batch["attention_mask"].shape[1]
    keep = max(1, int(ends.max()))
    if keep == width:
        return batch
    return {
        key: value[:, :keep] if key in PER_TOKEN_KEYS and isinstance(value, torch.Tensor) and value.dim() >= 2
        else value
        for key, value in batch.items()
    }


def by_length(examples: Examples) -> tuple[Examples, torch.Tensor | None]:
    """Each batch's examples in order of length (stable), and for each example of the result its index
    among the given ones (None when no example moved)."""
    batches, order, offset, moved = [], [], 0, False
    for batch, size in zip(examples.batches, examples.sizes, strict=True):
        ends = lengths(batch)
        perm = torch.argsort(ends.cpu(), stable=True) if ends is not None else torch.arange(size)
        if not torch.equal(perm, torch.arange(size)):
            moved = True
            batch = {
                key: value.index_select(0, perm.to(value.device))
                if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == size else value
                for key, value in batch.items()
            }
        batches.append(batch)
        order.append(perm + offset)
        offset += size
    return Examples(batches, list(examples.sizes)), (torch.cat(order) if moved else None)


def restore_order(kernel: torch.Tensor, rows: torch.Tensor | None, cols: torch.Tensor | None) -> torch.Tensor:
    """A ``[N_a, C, N_b, C]`` kernel computed in `by_length` order, in the given order of both sides."""
    if rows is not None:
        kernel = torch.empty_like(kernel).index_copy_(0, rows.to(kernel.device), kernel)
    if cols is not None:
        kernel = torch.empty_like(kernel).index_copy_(2, cols.to(kernel.device), kernel)
    return kernel


def padded_example(sides: Iterable[Examples]) -> dict[str, Any] | None:
    """One example with trailing padding (the shortest of the first batch that has one), or None."""
    for examples in sides:
        for batch in examples.batches:
            ends = lengths(batch)
            if ends is not None and int(ends.min()) < batch["attention_mask"].shape[1]:
                b = int(torch.argmin(ends))
                return slice_batch(batch, b, b + 1)
    return None


@torch.no_grad()
def mask_is_honoured(model: nn.Module, sides: Iterable[Examples]) -> bool | None:
    """Whether cutting a padded example's trailing padding leaves its logits as they are (within
    float32 round-off; a model that fails on the cut example does not); None when no example has
    trailing padding (nothing would be cut)."""
    example = padded_example(sides)
    if example is None:
        return None
    assert batch_size(example) == 1
    whole = model(**example).double()
    try:
        cut = model(**trim_padding(example)).double()
    except (IndexError, RuntimeError, ValueError):  # e.g. an index input pointing into the padding
        return False
    if cut.shape != whole.shape:
        return False
    scale = float(whole.abs().max()) or 1.0
    return float((whole - cut).abs().max()) <= HONOURED_TOLERANCE * scale
