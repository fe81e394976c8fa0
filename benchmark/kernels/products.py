"""Kernel products ``left @ right.T`` accumulated in float64, whatever the length of the rows.

A float32 matrix product sums its terms in float32. Over millions of columns that sum loses
~1e-5 relative of a kernel entry (more where the terms cancel), although each gradient entry is
within ~1e-7 of its float64 value. Here the columns are cut into blocks of at most
``BLOCK`` columns; each block's product runs in the operands' precision (at full speed), and
the block results are added into a float64 accumulator. Within a block of 4,096 columns the
float32 sum is accurate to a few 1e-7 of the block's terms, and the blocks add in float64, so
the kernel is within ~1e-7 of the float64 product of the same gradients.

Signs (int8 +-1 and 0) against signs are multiplied as integers (`torch._int_mm`, int32 sums) on a
CPU where that is faster than the float product, else widened to float32 like any int8 side; both
are exact, so the choice (`integer_products`, timed once per process) changes only the speed: on an
AVX-512 VNNI CPU the integer product ran ~4x the float one, on an AVX2 one (AMD EPYC) 17x slower
(3 G op/s against 52-54 GFLOP/s at ``[64, 786,432] x [786,432, 96]``, one core). With all three
formulas the signs go into the stacked float product instead (`integer_sign_product`). A sign side
against a float side is widened to float a group of blocks at a time, and the signs of a float
side (``sign_left``, ``sign_right``) are taken the same way, so that a streamed side's signs (or a
formed side's) need not be stored. The blocks of a group run as one batched product. Several
combinations of one pair of operands (`accumulate_signed`) share each group's signs, and where
they are every left variant with every right one (all three formulas: four) run as one product
of the stacked variants.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Mapping

import torch

#: Longest run of columns summed in the operands' precision.
BLOCK = 2**12
#: Most bytes of one batched product's float32 block results, or of a group's widened int8 operands.
GROUP_BYTES = 2**25
#: Most bytes of the widened operands of one group in `accumulate_signed`, whose combinations each read
#: the group again: kept near the cache, they ran the four combinations of all three formulas at 63-64
#: GFLOP/s where 2^25 bytes gave 57 (one core, AVX2, ``[64, 786,432] x [786,432, 96]``).
SHARED_GROUP_BYTES = 2**22
#: Longest run of columns summed in int32 by one integer product (|sum| <= columns < 2^31).
INT_BLOCK = 2**30


def uses_integer_products(device: torch.device) -> bool:
    """Whether int8 x int8 products go through `torch._int_mm` on ``device``: on the CPU (no shape
    limits there) where it beats the float32 product (`integer_products`). Elsewhere int8 signs are
    widened to float32 a group at a time, and a float side's signs are better taken inside the product."""
    return device.type == "cpu" and integer_products()


#: Every combination of a side's floats or signs with the other's: the products of all three formulas.
ALL_COMBINATIONS = frozenset({(False, False), (True, True), (True, False), (False, True)})


def integer_sign_product(combos: Iterable[tuple[bool, bool]], device: torch.device) -> bool:
    """Whether the sign x sign combination among ``combos`` runs as an integer product on ``device``
    (`uses_integer_products`): not where ``combos`` are all four, whose one stacked float product
    (`accumulate_signed`) gives sign x sign at a quarter of its cost. On an AVX-512 CPU with AMX
    whose integer product ran 6-8x the float one, the four combinations at ``[64, 786,432] x
    [786,432, 96]`` took 0.455 s stacked against 0.60-0.66 s with the integer product (the three
    float combinations then not stacked), before the int8 signs of the streamed side are formed."""
    wanted = set(combos)
    return (True, True) in wanted and wanted != ALL_COMBINATIONS and uses_integer_products(device)


#: The shape `integer_products` times: ``[rows, cols] x [cols, rows_right]``, ~0.1 G multiply-adds.
_TIMED_SHAPE = (64, 8192, 96)


@functools.cache
def integer_products() -> bool:
    """Whether this CPU multiplies int8 signs faster with `torch._int_mm` than as float32 blocks.

    Timed once per process on one small product each way (best of three after a warm-up; ~0.1 s
    where the integer product is slow). Both ways are exact, so this decides only the speed.
    """
    if not hasattr(torch, "_int_mm"):
        return False
    rows, cols, rows_right = _TIMED_SHAPE
    g = torch.Generator().manual_seed(0)
    left = torch.randint(-1, 2, (rows, cols), generator=g, dtype=torch.int8)
    right = torch.randint(-1, 2, (rows_right, cols), generator=g, dtype=torch.int8)

    def integer() -> None:
        torch._int_mm(left, right.t())

    def floating() -> None:
        _add_blocks(torch.zeros(rows, rows_right, dtype=torch.float64), left.float(), right.float(), BLOCK)

    return _best_time(integer) < _best_time(floating)


def _best_time(run: Callable[[], None], repeats: int = 3) -> float:
    """The shortest of ``repeats`` timed calls of ``run``, after one untimed call."""
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def _unit_columns(*tensors: torch.Tensor) -> bool:
    """Whether every tensor's columns are adjacent in memory (what the integer product takes)."""
    return all(t.stride(-1) == 1 for t in tensors)


def accumulate(
    out: torch.Tensor,
    left: torch.Tensor,
    right: torch.Tensor,
    *,
    block: int = BLOCK,
    sign_left: bool = False,
    sign_right: bool = False,
) -> torch.Tensor:
    """``out += left @ right.T`` with ``out`` float64 and the sum over columns taken in bounded blocks.

    ``left`` is ``[M, K]``, ``right`` ``[N, K]`` (any strides), ``out`` ``[M, N]`` float64. Operands
    already in float64 are multiplied in one product; two int8 operands (signs) exactly as
    integers on the CPU (elsewhere in float32 blocks, exact too); one int8 operand is widened a group of
    blocks at a time to the other's type. With ``sign_left`` / ``sign_right`` the product is with the
    signs of that (floating-point) operand, taken a group of blocks at a time into the same work
    buffer (so a float side's signs are never stored). Returns ``out``.
    """
    cols = left.shape[1]
    if right.shape[1] != cols:
        raise ValueError(f"column counts differ: {cols} and {right.shape[1]}")
    if cols == 0:
        return out
    for name, signed_side, x in (("sign_left", sign_left, left), ("sign_right", sign_right, right)):
        if signed_side and not x.dtype.is_floating_point:
            raise ValueError(f"{name} takes the signs of a floating-point operand, not {x.dtype}")
    if left.dtype == torch.float64 and right.dtype == torch.float64 and not (sign_left or sign_right):
        return out.addmm_(left, right.t())
    if left.dtype == right.dtype == torch.int8 and uses_integer_products(left.device) and _unit_columns(left, right):
        for start in range(0, cols, INT_BLOCK):
            out.add_(torch._int_mm(left[:, start : start + INT_BLOCK], right[:, start : start + INT_BLOCK].t()))
        return out
    dtype = torch.promote_types(left.dtype, right.dtype)
    if not dtype.is_floating_point:  # int8 signs against int8 signs: exact in float32 within a block
        dtype = torch.float32
    # The operand with more rows goes first: with the narrow one first, MKL's [M, 4096] x [4096, N]
    # products ran at ~55 GFLOP/s on one core where the swapped order reached ~70-85 (M = 64, N = 172).
    signed = {"left": sign_left, "right": sign_right}
    if right.shape[0] > left.shape[0]:
        left, right, target = right, left, out.t()
        signed = {"left": sign_right, "right": sign_left}
    else:
        target = out
    sides = {"left": left, "right": right}
    work = [side for side, x in sides.items() if x.dtype != dtype or signed[side]]
    blocks = _group_blocks(left.shape[0] * right.shape[0], sum(sides[side].shape[0] for side in work), block)
    widened = {side: torch.empty(sides[side].shape[0], min(blocks * block, cols), dtype=dtype, device=left.device)
               for side in work}
    for start in range(0, cols, blocks * block):
        stop = min(cols, start + blocks * block)
        parts = {side: x[:, start:stop] for side, x in sides.items()}
        # int8 signs are widened (and a float side's signs taken) a group of blocks at a time, never as a
        # whole, into buffers kept across groups
        for side in work:
            buffer = widened[side][:, : stop - start]
            parts[side] = torch.sign(parts[side], out=buffer) if signed[side] else buffer.copy_(parts[side])
        _add_blocks(target, parts["left"], parts["right"], block)
    return out


def _group_blocks(result_entries: int, widened_rows: int, block: int, widened_bytes: int | None = None) -> int:
    """Blocks multiplied by one batched product: up to 64, with their float32 results within
    `GROUP_BYTES` and the operands widened for them within ``widened_bytes`` (default `GROUP_BYTES`).

    One batched product over 64 blocks of 4,096 columns ran ~11% faster than 64 single products on
    one core (medians of 5 interleaved runs at 116 x 64 rows: 79 and 71 GFLOP/s).
    """
    blocks = min(64, GROUP_BYTES // max(1, 4 * result_entries))
    if widened_rows:
        blocks = min(blocks, (widened_bytes or GROUP_BYTES) // (4 * block * widened_rows))
    return max(1, blocks)


def _add_blocks(target: torch.Tensor, left: torch.Tensor, right: torch.Tensor, block: int) -> None:
    """``target += left @ right.T`` (float64 ``target``): each ``block`` columns' product in the operands'
    precision, added in float64. Whole blocks go through one batched product where the columns allow it."""
    cols = left.shape[1]
    whole = cols // block * block if _unit_columns(left, right) else 0
    if whole:
        n = whole // block
        parts = torch.bmm(left[:, :whole].view(left.shape[0], n, block).transpose(0, 1),
                          right[:, :whole].view(right.shape[0], n, block).permute(1, 2, 0))
        target.add_(parts.sum(0, dtype=torch.float64))
    for start in range(whole, cols, block):
        stop = min(cols, start + block)
        target.add_(torch.mm(left[:, start:stop], right[:, start:stop].t()))


def product(
    left: torch.Tensor, right: torch.Tensor, *, block: int = BLOCK, sign_left: bool = False, sign_right: bool = False
) -> torch.Tensor:
    """``left @ right.T`` (or with either side's signs) as a new float64 tensor, accumulated as in `accumulate`."""
    out = torch.zeros(left.shape[0], right.shape[0], dtype=torch.float64, device=left.device)
    return accumulate(out, left, right, block=block, sign_left=sign_left, sign_right=sign_right)


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



def accumulate_signed(
    outs: Mapping[tuple[bool, bool], torch.Tensor],
    left: torch.Tensor | None,
    right: torch.Tensor,
    *,
    left_signs: torch.Tensor | None = None,
    right_signs: torch.Tensor | None = None,
    block: int = BLOCK,
) -> None:
    """``outs[(x, y)] += L_x @ R_y.T`` for every ``(x, y)`` in ``outs``, in one pass over the columns.

    ``L_False`` is ``left`` (float, ``[M, K]``), ``L_True`` its signs: ``left_signs`` (int8) where
    given, else taken from ``left``; likewise ``R`` from ``right`` (float, ``[N, K]``) and
    ``right_signs``. Each group of blocks takes each side's signs (or widens its int8 signs) once for
    all the combinations that use them, where `accumulate` per combination takes them once each: the
    four combinations of ``sgd``, ``signgd`` and ``asym`` take two sign passes instead of four. Where
    the combinations are every left variant with every right one, each side's variants are stacked
    and one product gives them all (`_stacked_products`). Sums as in `accumulate` (float64 over
    blocks of ``block`` columns; int8 x int8 through `torch._int_mm` where `integer_sign_product`
    says so: where it is faster, unless all four combinations are stacked). ``outs`` are float64 ``[M, N]``.
    """
    operands = {"left": (left, left_signs), "right": (right, right_signs)}

    def source(side: str, signed: bool) -> tuple[torch.Tensor, bool]:
        """The tensor behind ``side``'s variant, and whether its signs are still to be taken."""
        floats, signs = operands[side]
        if signed and signs is not None:
            return signs, False
        if floats is None:
            raise ValueError(f"{side}: no float columns to take {'signs' if signed else 'products'} of")
        return floats, signed

    pending = dict(outs)
    both = pending.get((True, True))
    if (both is not None and left_signs is not None and right_signs is not None
            and integer_sign_product(pending, right.device) and _unit_columns(left_signs, right_signs)):
        accumulate(both, left_signs, right_signs, block=block)
        del pending[(True, True)]
    dtype = right.dtype
    if len(pending) <= 1 or dtype == torch.float64:  # nothing to share, or one float64 product each
        for (x, y), out in pending.items():
            (a, sign_a), (b, sign_b) = source("left", x), source("right", y)
            accumulate(out, a, b, block=block, sign_left=sign_a, sign_right=sign_b)
        return
    variants = {"left": sorted({x for x, _ in pending}), "right": sorted({y for _, y in pending})}
    sources = {(side, v): source(side, v) for side, vs in variants.items() for v in vs}
    cols = right.shape[1]
    for (side, _), (x, _) in sources.items():
        if x.shape[1] != cols:
            raise ValueError(f"column counts differ: {x.shape[1]} ({side}) and {cols}")
    if set(pending) == {(x, y) for x in variants["left"] for y in variants["right"]}:
        _stacked_products(pending, variants, sources, dtype, block)
    else:
        _shared_products(pending, variants, sources, dtype, block)


Sources = Mapping[tuple[str, bool], tuple[torch.Tensor, bool]]


def _stacked_products(pending: Mapping[tuple[bool, bool], torch.Tensor], variants: Mapping[str, list[bool]],
                      sources: Sources, dtype: torch.dtype, block: int) -> None:
    """`accumulate_signed` where the combinations are every left variant with every right one: each
    side's variants are stacked row-wise into one buffer a group at a time, and one product per block
    gives all the combinations. At the 16-shot unit shape (96 x 64 rows, 4,096 columns) one
    ``[192, 4096] x [4096, 128]`` product ran at 74-79 GFLOP/s where four ``[96, 4096] x [4096, 64]``
    ran at 59-62 (microbenchmark, one core, AVX2); the products phase of one such unit in the engine
    ran 1.06x faster (185 against 197 s), at 16 x 32 1.2-1.3x."""
    rows = {side: sources[(side, vs[0])][0].shape[0] for side, vs in variants.items()}
    # a side is used in place when it has one variant that needs no widening; else it is stacked
    stacked = [side for side, vs in variants.items() if len(vs) > 1 or sources[(side, vs[0])][1]
               or sources[(side, vs[0])][0].dtype != dtype]
    height = {side: rows[side] * len(vs) for side, vs in variants.items()}
    cols = sources[("right", variants["right"][0])][0].shape[1]
    device = sources[("right", variants["right"][0])][0].device
    blocks = _group_blocks(height["left"] * height["right"], sum(height[side] for side in stacked), block,
                           SHARED_GROUP_BYTES)
    width = min(blocks * block, cols)
    buffers = {side: torch.empty(height[side], width, dtype=dtype, device=device) for side in stacked}
    acc = torch.zeros(height["left"], height["right"], dtype=torch.float64, device=device)
    first, second = ("right", "left") if height["right"] > height["left"] else ("left", "right")  # see `accumulate`
    target = acc if first == "left" else acc.t()
    for start in range(0, cols, blocks * block):
        stop = min(cols, start + blocks * block)
        parts = {}
        for side, vs in variants.items():
            if side not in buffers:
                parts[side] = sources[(side, vs[0])][0][:, start:stop]
                continue
            buffer = buffers[side][:, : stop - start]
            for i, v in enumerate(vs):
                x, take_sign = sources[(side, v)]
                rows_of = buffer[i * rows[side] : (i + 1) * rows[side]]
                if take_sign:
                    torch.sign(x[:, start:stop], out=rows_of)
                else:
                    rows_of.copy_(x[:, start:stop])
            parts[side] = buffer
        _add_blocks(target, parts[first], parts[second], block)
    index = {side: {v: i for i, v in enumerate(vs)} for side, vs in variants.items()}
    for (x, y), out in pending.items():
        i, j = index["left"][x] * rows["left"], index["right"][y] * rows["right"]
        out.add_(acc[i : i + rows["left"], j : j + rows["right"]])


def _shared_products(pending: Mapping[tuple[bool, bool], torch.Tensor], variants: Mapping[str, list[bool]],
                     sources: Sources, dtype: torch.dtype, block: int) -> None:
    """`accumulate_signed` for any set of combinations: each group takes each side's signs (or widens
    its int8 signs) once, and every combination runs its own product over the group."""
    rows = {side: sources[(side, vs[0])][0].shape[0] for side, vs in variants.items()}
    cols = sources[("right", variants["right"][0])][0].shape[1]
    device = sources[("right", variants["right"][0])][0].device
    first, second = ("right", "left") if rows["right"] > rows["left"] else ("left", "right")  # see `accumulate`
    to_widen = [key for key, (x, take_sign) in sources.items() if take_sign or x.dtype != dtype]
    blocks = _group_blocks(rows["left"] * rows["right"], sum(rows[side] for side, _ in to_widen), block,
                           SHARED_GROUP_BYTES)
    buffers = {key: torch.empty(rows[key[0]], min(blocks * block, cols), dtype=dtype, device=device)
               for key in to_widen}
    for start in range(0, cols, blocks * block):
        stop = min(cols, start + blocks * block)
        parts = {}
        for key, (x, take_sign) in sources.items():
            part = x[:, start:stop]
            if key in buffers:
                buffer = buffers[key][:, : stop - start]
                part = torch.sign(part, out=buffer) if take_sign else buffer.copy_(part)
            parts[key] = part
        for (x, y), out in pending.items():
            signed = {"left": x, "right": y}
            target = out if first == "left" else out.t()
            _add_blocks(target, parts[(first, signed[first])], parts[(second, signed[second])], block)
