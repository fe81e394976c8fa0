"""Kernel products ``left @ right.T`` accumulated in float64, whatever the length of the rows.

A float32 matrix product sums its terms in float32. Over millions of columns that sum loses
~1e-5 relative of a kernel entry (more where the terms cancel), although each gradient entry is
within ~1e-7 of its float64 value. Here the columns are cut into blocks of at most
``BLOCK`` columns; each block's product runs in the operands' precision (at full speed), and
the block results are added into a float64 accumulator. Within a block of 4,096 columns the
float32 sum is accurate to a few 1e-7 of the block's terms, and the blocks add in float64, so
the kernel is within ~1e-7 of the float64 product of the same gradients.

Signs (int8 +-1 and 0) against signs are multiplied as integers (`torch._int_mm`, int32 sums, on
the CPU): exact, and on this suite's CPU (AVX-512 VNNI) ~4x the speed of the float product of
the same shape. A sign side against a float side is widened to float one block at a time.
"""

from __future__ import annotations

import torch

#: Longest run of columns summed in the operands' precision.
BLOCK = 2**12
#: Longest run of columns summed in int32 by one integer product (|sum| <= columns < 2^31).
INT_BLOCK = 2**30


def _integer_products(device: torch.device) -> bool:
    """Whether int8 x int8 products go through `torch._int_mm` on ``device`` (the CPU has no shape limits)."""
    return device.type == "cpu" and hasattr(torch, "_int_mm")


def _unit_columns(*tensors: torch.Tensor) -> bool:
    """Whether every tensor's columns are adjacent in memory (what the integer product takes)."""
    return all(t.stride(-1) == 1 for t in tensors)


def accumulate(out: torch.Tensor, left: torch.Tensor, right: torch.Tensor, *, block: int = BLOCK) -> torch.Tensor:
    """``out += left @ right.T`` with ``out`` float64 and the sum over columns taken in bounded blocks.

    ``left`` is ``[M, K]``, ``right`` ``[N, K]`` (any strides), ``out`` ``[M, N]`` float64. Operands
    already in float64 are multiplied in one product; two int8 operands (signs) exactly as
    integers on the CPU (elsewhere in float32 blocks, exact too); one int8 operand is widened block
    by block to the other's type. Returns ``out``.
    """
    cols = left.shape[1]
    if right.shape[1] != cols:
        raise ValueError(f"column counts differ: {cols} and {right.shape[1]}")
    if cols == 0:
        return out
    if left.dtype == torch.float64 and right.dtype == torch.float64:
        return out.addmm_(left, right.t())
    if left.dtype == right.dtype == torch.int8 and _integer_products(left.device) and _unit_columns(left, right):
        for start in range(0, cols, INT_BLOCK):
            out.add_(torch._int_mm(left[:, start : start + INT_BLOCK], right[:, start : start + INT_BLOCK].t()))
        return out
    dtype = torch.promote_types(left.dtype, right.dtype)
    if not dtype.is_floating_point:  # int8 signs against int8 signs: exact in float32 within a block
        dtype = torch.float32
    # The operand with more rows goes first: with the narrow one first, MKL's [M, 4096] x [4096, N]
    # products ran at ~55 GFLOP/s on one core where the swapped order reached ~70-85 (M = 64, N = 172).
    if right.shape[0] > left.shape[0]:
        left, right, target = right, left, out.t()
    else:
        target = out
    part = torch.empty(target.shape, dtype=dtype, device=left.device)
    widened = {side: torch.empty(x.shape[0], min(block, cols), dtype=dtype, device=x.device)
               for side, x in (("left", left), ("right", right)) if x.dtype != dtype}
    for start in range(0, cols, block):
        stop = min(cols, start + block)
        x, y = left[:, start:stop], right[:, start:stop]
        # int8 signs are widened one block at a time, never as a whole, into buffers kept across blocks
        if "left" in widened:
            x = widened["left"][:, : stop - start].copy_(x)
        if "right" in widened:
            y = widened["right"][:, : stop - start].copy_(y)
        torch.mm(x, y.t(), out=part)
        target.add_(part)
    return out


def product(left: torch.Tensor, right: torch.Tensor, *, block: int = BLOCK) -> torch.Tensor:
    """``left @ right.T`` as a new float64 tensor, accumulated as in `accumulate`."""
    out = torch.zeros(left.shape[0], right.shape[0], dtype=torch.float64, device=left.device)
    return accumulate(out, left, right, block=block)


def gram(left: torch.Tensor, right: torch.Tensor, *, symmetric: bool, rows: int = 512) -> torch.Tensor:
    """``left @ right.T`` in float64; with ``symmetric`` (``left`` and ``right`` the same rows) only
    the upper block triangle is multiplied and mirrored."""
    n = left.shape[0]
    if not symmetric or n <= rows:
        return product(left, right)
    out = torch.zeros(n, n, dtype=torch.float64, device=left.device)
    for i in range(0, n, rows):
        upper = product(left[i : i + rows], right[i:])
        out[i : i + rows, i:] = upper
        out[i:, i : i + rows] = upper.t()
    return out
