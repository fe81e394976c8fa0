"""How a streamed side is dealt into work units: consecutive sub-batches multiplied together.

`FastKernelEngine` (`benchmark.kernels.fast`) takes the streamed side in units: several batches held
together so that the stored columns are formed once per unit and the products are as wide as the
unit (or gathered rows of a one-segment group, `layout.Pending`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from benchmark.kernels.batches import Examples
from benchmark.kernels.per_example import batch_size
from benchmark.kernels.planner import MAX_UNIT_EXAMPLES


def stream_units(
    stream: Examples, max_batch: int, C: int, capacity: int | None,
    room: tuple[Callable[[dict[str, Any]], float], float] | None = None,
) -> list[list[tuple[int, dict[str, Any]]]]:
    """Work units of a streamed side: consecutive sub-batches, as many as fill ``capacity`` rows (one product).

    With ``room`` = (bytes of a sub-batch, bytes of a unit), a unit takes sub-batches
    while their bytes fit, up to `planner.MAX_UNIT_EXAMPLES` examples. Units depend only on the
    batches and the plan, never on the number of processes, so each product has the same shape (and
    rounding) whichever rank computes it.
    """
    units: list[list[tuple[int, dict[str, Any]]]] = []
    rows, used = 0, 0.0
    if room is not None:
        capacity = C * MAX_UNIT_EXAMPLES
    for first, piece in stream.pieces(0, stream.total, max_batch):
        need = C * batch_size(piece)
        cost = room[0](piece) if room is not None else 0.0
        full = room is not None and used + cost > room[1]
        if capacity is None or not units or rows + need > capacity or full:
            units.append([])
            rows, used = 0, 0.0
        units[-1].append((first, piece))
        rows += need
        used += cost
    return units

