"""Kernel products ``left @ right.T`` accumulated in float64, whatever the length of the rows.

A float32 matrix product sums its terms in float32. Over millions of columns that sum loses
~1e-5 relative of a kernel entry (more where the terms cancel), although each gradient entry is
within ~1e-7 of its float64 value. Here the columns are cut into blocks of at most
``BLOCK`` columns; each block's product runs in the operands' precision (at full speed), and
the block results are added into a float64 accumulator. Within a block of 4,096 columns the
float32 sum is accurate to a few 1e-7 of the block's terms, and the blocks add in float64, so
the kernel is within ~1e-7 of the float64 product of the same gradients. Sums of signs (+-1
and 0) stay exact, since a block's integer sum is far below 2^24.
"""

from __future__ import annotations

import torch

#: Longest run of columns summed in the operands' precision.
BLOCK = 2**12


def accumulate(out: torch.Tensor, left: torch.Tensor, right: torch.Tensor, *, block: int = BLOCK) -> torch.Tensor:
    """``out += left @ right.T`` with ``out`` float64 and the sum over columns taken in bounded blocks.

    ``left`` is ``[M, K]``, ``right`` ``[N, K]`` (any strides), ``out`` ``[M, N]`` float64. Operands
    already in float64 are multiplied in one product; int8 operands (signs) are widened block by
    block to the other operand's type (float32 for two int8 operands). Returns ``out``.
    """
    cols = left.shape[1]
    if right.shape[1] != cols:
        raise ValueError(f"column counts differ: {cols} and {right.shape[1]}")
    if cols == 0:
        return out
    if left.dtype == torch.float64 and right.dtype == torch.float64:
        return out.addmm_(left, right.t())
    dtype = torch.promote_types(left.dtype, right.dtype)
    if not dtype.is_floating_point:  # int8 signs against int8 signs: exact in float32 within a block
        dtype = torch.float32
    part = torch.empty(out.shape, dtype=dtype, device=left.device)
    for start in range(0, cols, block):
        stop = min(cols, start + block)
        x, y = left[:, start:stop], right[:, start:stop]
        # int8 signs are widened one block at a time, never as a whole
        torch.mm(x if x.dtype == dtype else x.to(dtype), (y if y.dtype == dtype else y.to(dtype)).t(), out=part)
        out.add_(part)
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
