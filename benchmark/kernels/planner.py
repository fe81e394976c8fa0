"""The memory planner of the fast eNTK strategy: a pure function from sizes to a `Plan`.

`plan` sees only numbers (tensor sizes, example counts, the budget, bytes per entry), never a
model, and changes none of its inputs; the engine carries the plan out. It decides:

* the **storage of the training (stored) side**: the raw gradients where a formula needs them
  (``sgd``, the ``b``-sign half of ``asym``) and the signs, as one byte per entry (``int8``), where
  a formula takes signs on that side (``signgd``, ``asym``). A sign formula alone stores only the
  signs, a quarter of the raw gradients, so it needs no more passes than ``sgd``;
* how the budget is shared: the kernels themselves first, then 45% for the stored side, 20% for
  the streaming workspace, 35% for a batch's activations;
* the **passes**: one if every training example's gradients fit; else the cheaper of chunks of
  training examples (each chunk re-streams the ``b`` side) or groups of tensors (one pass per
  group, all training examples stored per group; each pass's reverse stops at the group's lowest
  layer and assembles only the group's gradients);
* the **factored** tensors: a weight matrix whose rule gives its gradient as per-token factors
  (``nn.Linear``: ``dW = go^T a``) can be stored as its layer's inputs and output gradients,
  ``T * (n + C * m)`` numbers per example instead of ``C * m * n``; when the raw per-example
  gradients need more than one pass, the plan stores every tensor for which that is smaller as
  factors, and keeps that choice if its estimated work (`_cost`: passes, and forming the stored
  columns again) is smaller. The stored columns of a factored tensor are formed again from the
  factors, one segment at a time, where they are multiplied (where the raw gradients are formed
  anyway, the signs are taken from them inside the products, `signs_from_raw`, not formed beside
  them); so that this happens rarely and the products are wide, the streamed batches are then
  taken in units (``unit_rows``: their recorded inputs and output gradients held together in one
  buffer, ``Request.held`` bytes per example as the probe measured them). Segments are then at most
  `FACTORED_SEGMENT` wide (a factored tensor split by rows, `row_parts`) and the unit takes all
  the memory that the stored side, one segment of its formed columns and the in-flight batch's
  graph leave (`_unit_examples`): at 16-shot SST-2 on roberta-base, products of 94 streamed rows
  ran at ~72 GFLOP/s on one core and of 128 rows at ~93;
* the largest batch and the column segment width of the streamed side.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

Combo = tuple[bool, bool]  # (sign on the a side, sign on the b side)

MIN_SEGMENT = 2**16
#: Widest segment of a factored plan, whose stored tensors are formed again a part of their rows at
#: a time: at 16-shot SST-2 on roberta-base, segments of one attention matrix (0.59M columns) rather
#: than of a whole feed-forward matrix (2.36M) leave ~1 GiB more of an 8 GiB budget to the streamed units.
FACTORED_SEGMENT = 2**20
#: Widest column segment (bounded so one segment's workspace stays a modest allocation).
MAX_SEGMENT = 2**24
MIN_WORK_BYTES = 64 * 2**20
#: Most streamed examples held together (their recorded inputs and output gradients).
MAX_UNIT_EXAMPLES = 128
#: Share of the memory left out of a unit for the host allocator (fragmentation, short-lived work
#: buffers): at 3%, `asym` 16 x 16 on roberta-base under 4 GiB peaked at 4.01 GiB.
UNIT_HEADROOM = 0.06
SIGN_BYTES = 1  # int8 signs
#: Relative costs of forward : reverse : assembly per example (measured on BERT/RoBERTa shapes).
COST_FORWARD, COST_REVERSE, COST_ASSEMBLY = 1.0, 2.0, 3.0
#: Forming one example-logit's factored gradients again, against a forward pass of one example.
COST_FORMING = 1.0


@dataclass(frozen=True)
class TensorSize:
    """What the planner knows of one selected tensor."""

    numel: int
    sparse: bool = False
    width: int = 1  # entries per row of a row-sparse tensor
    fallback: bool = False  # computed by the per-example autograd loop
    factor_shape: tuple[int, int] | None = None  # (m, n) of a tensor whose gradient comes as per-token factors
    calls: int = 1  # recorded calls per example (each adds its tokens to the factors)


@dataclass(frozen=True)
class Request:
    """Everything the plan depends on."""

    tensors: tuple[TensorSize, ...]
    n_a: int
    targets: tuple[int | None, ...]  # examples of each b side; None for a x a
    batch_sizes: tuple[int, ...]  # sizes of all given batches (both sides)
    num_outputs: int
    combos: tuple[Combo, ...]
    budget: int
    itemsize: int = 4
    longest: int = 128  # longest sequence
    captured: int = 1  # recorded activation bytes per example
    held: int = 0  # bytes a streamed example holds in a unit (inputs, C output gradients); 0: estimated
    overrides: Mapping[str, int] = field(default_factory=dict)
    reserved: int = 0  # bytes held outside the plan's shares (the float64 copy of the model for exact signs)
    scratch_itemsize: int = 0  # bytes per entry of the buffer a stored batch passes through (0: written in place)


@dataclass(frozen=True)
class Plan:
    """What the engine does: tensor groups (indices into ``Request.tensors``), one pass per group and chunk."""

    groups: tuple[tuple[int, ...], ...]
    chunk: int
    max_batch: int
    segment_cols: int
    store_raw: bool
    store_sign: bool
    store_budget: float
    work_budget: float
    act_budget: float
    passes: int
    kernel_bytes: int
    note: str = ""
    factored: tuple[int, ...] = ()  # tensors stored as layer inputs and output gradients
    unit_rows: int = 0  # streamed rows (example-logits) multiplied together in a group of several segments

    @property
    def representation(self) -> str:
        """How the stored side is kept, in words."""
        kinds = (["float gradients"] if self.store_raw else []) + (["int8 signs"] if self.store_sign else [])
        words = "per-example " + " + ".join(kinds)
        if self.factored:
            words += f"; {len(self.factored)} weight matrices as layer inputs + output gradients"
        return words


def stored_needs(combos: tuple[Combo, ...], symmetric: bool) -> tuple[bool, bool]:
    """(raw, sign) needed on the stored side; an ``a x a`` target also uses it as the other side."""
    sides = {x for x, _ in combos} | ({y for _, y in combos} if symmetric else set())
    return False in sides, True in sides


def signs_from_raw(combos: tuple[Combo, ...] | list[Combo], store_raw: bool) -> bool:
    """Whether the formed stored columns' signs are taken from their raw gradients inside the products.

    So where the raw gradients are formed anyway (a formula uses them on the stored side) and no
    product is the integer sign x sign one (``signgd``): the signs then cost no int8 copy and no
    widening back to float (`products.accumulate`'s ``sign_left``).
    """
    return store_raw and (True, True) not in combos and any(x for x, _ in combos)


def stream_entry_bytes(combos: tuple[Combo, ...] | list[Combo], itemsize: int) -> int:
    """Bytes per streamed dense entry: the raw gradient and, for sign x sign (``signgd``), an int8 sign.

    Against the stored raw gradients or signs, the streamed signs are taken a block at a time
    inside the product (`products.accumulate`), so only the integer sign x sign product keeps them.
    """
    return itemsize + (SIGN_BYTES if (True, True) in combos else 0)


def entry_bytes(store_raw: bool, store_sign: bool, itemsize: int) -> int:
    """Bytes the stored side keeps per dense gradient entry."""
    return (itemsize if store_raw else 0) + (SIGN_BYTES if store_sign else 0)


def row_parts(shape: tuple[int, int], cols: int) -> list[tuple[int, int]]:
    """Row ranges ``[r0, r1)`` splitting an ``[m, n]`` tensor into the fewest near-equal parts of at
    most ``cols`` entries each (whole rows; a row wider than ``cols`` is a part of its own)."""
    m, n = shape
    parts = min(m, max(1, math.ceil(m * n / max(1, cols))))
    rows = math.ceil(m / parts)
    return [(r0, min(m, r0 + rows)) for r0 in range(0, m, rows)]


def _factored_segment(r: Request, factored: set[int]) -> int:
    """Columns of a factored plan's segments: its widest tensor that is not factored, or else one
    part of a factored tensor's rows (`row_parts` of `FACTORED_SEGMENT`)."""
    widest = MIN_SEGMENT
    for i, t in enumerate(r.tensors):
        if t.sparse or t.fallback:
            continue
        if i in factored and t.factor_shape is not None:
            widest = max(widest, max((r1 - r0) * t.factor_shape[1]
                                     for r0, r1 in row_parts(t.factor_shape, FACTORED_SEGMENT)))
        else:
            widest = max(widest, t.numel)
    return widest


def plan(request: Request) -> Plan:
    """The plan for ``request`` (pure: no model, no side effects)."""
    r = request
    if r.n_a < 1 or not r.tensors:
        raise ValueError("a plan needs at least one training example and one tensor")
    C = r.num_outputs
    kernel_bytes = sum(r.n_a * C * (t if t is not None else r.n_a) * C * 8 * len(r.combos) for t in r.targets)
    avail = r.budget - kernel_bytes - r.reserved
    note = ""
    if avail < MIN_WORK_BYTES:
        note = (
            f"budget {r.budget / 2**20:.0f} MiB leaves {avail / 2**20:.0f} MiB beside the kernels"
            f"{' and the float64 model copy' if r.reserved else ''}; "
            f"working with {MIN_WORK_BYTES / 2**20:.0f} MiB"
        )
        avail = MIN_WORK_BYTES
    dense = _layout(r, avail, (), kernel_bytes, note)
    force = r.overrides.get("factors")
    candidates = tuple(i for i, t in enumerate(r.tensors) if _factor_bytes(r, t) < _dense_bytes(r, t))
    if force == 0 or not candidates or (force is None and dense.passes == 1):
        return dense
    factored = _layout(r, avail, candidates, kernel_bytes, note)
    return factored if force == 1 or (force is None and _cost(r, factored) < _cost(r, dense)) else dense


def _cost(r: Request, p: Plan) -> float:
    """Estimated work of a plan, in forward passes of one example.

    Every pass runs a forward and the reverse passes over the stored and the streamed examples;
    a factored plan also forms the stored columns again, for ``C * chunk`` example-logits (about
    one forward pass each) once per streamed unit or batch and per diagonal.
    """
    C = r.num_outputs
    streamed = sum(t for t in r.targets if t is not None)
    passes = p.passes * (r.n_a + streamed) * (COST_FORWARD + COST_REVERSE)
    if not p.factored:
        return passes
    rows = p.unit_rows or C * max(1, min(p.max_batch, max(r.batch_sizes, default=1)))
    formings = sum(math.ceil(C * t / rows) for t in r.targets if t is not None) + sum(t is None for t in r.targets)
    return passes + p.passes * formings * C * min(p.chunk, r.n_a) * COST_FORMING


def _dense_bytes(r: Request, t: TensorSize) -> float:
    """Bytes one training example adds to the stored side for ``t`` as per-example gradients."""
    store_raw, store_sign = stored_needs(r.combos, any(x is None for x in r.targets))
    C = r.num_outputs
    if t.sparse:
        return C * (int(store_raw) + int(store_sign)) * (r.longest + C + 2) * (t.width * r.itemsize + 16) * 2
    return C * entry_bytes(store_raw, store_sign, r.itemsize) * t.numel


def _factor_bytes(r: Request, t: TensorSize) -> float:
    """Bytes one training example adds for ``t`` as layer inputs and output gradients (inf: not factorable)."""
    if t.factor_shape is None or t.sparse or t.fallback:
        return math.inf
    m, n = t.factor_shape
    return t.calls * r.longest * (n + r.num_outputs * m) * r.itemsize


def _layout(r: Request, avail: float, factored: tuple[int, ...], kernel_bytes: int, note: str) -> Plan:
    """Groups, chunk, batch and segment width with the tensors ``factored`` stored as factors."""
    C = r.num_outputs
    store_budget, work_budget, act_budget = 0.45 * avail, 0.20 * avail, 0.35 * avail
    store_raw, store_sign = stored_needs(r.combos, any(t is None for t in r.targets))
    as_factors = set(factored)
    # bytes one training example adds to the stored side, per tensor
    sizes = [_factor_bytes(r, t) if i in as_factors else _dense_bytes(r, t) for i, t in enumerate(r.tensors)]
    if "group_slots" in r.overrides:
        size = r.overrides["group_slots"]
        groups = [tuple(range(k, min(len(r.tensors), k + size))) for k in range(0, len(r.tensors), size)]
    else:
        groups = _groups(sizes, r.n_a, store_budget)
    largest = max(sum(sizes[i] for i in g) for g in groups)
    chunk = max(1, min(r.n_a, int(store_budget // max(largest, 1.0))))
    chunk = r.overrides.get("chunk", chunk)

    stream_bytes = stream_entry_bytes(r.combos, r.itemsize)
    if factored:  # a batch gets half the activations' share; what is left after it goes to the streamed units
        act_budget = act_budget / 2
    max_batch = max(1, int(act_budget // (max(1, r.captured) * (3 + C))))
    widest = max((t.numel for t in r.tensors if not t.sparse and not t.fallback), default=0)
    if widest:
        max_batch = max(1, min(max_batch, int(work_budget // (C * widest * stream_bytes))))
    if r.scratch_itemsize and factored:  # each stored tensor is formed in float64 and float32 once, per batch
        max_batch = max(1, min(max_batch, int(work_budget // max(1, _fix_scratch_bytes(r) * widest))))
    elif r.scratch_itemsize:  # a stored batch's gradients pass through a [batch, segment columns] buffer
        widest_group = max(sum(r.tensors[i].numel for i in g if not r.tensors[i].sparse) for g in groups)
        widest_segment = max(min(widest_group, MAX_SEGMENT), widest)
        max_batch = max(1, min(max_batch, int(work_budget // max(1, r.scratch_itemsize * widest_segment))))
    target_batch = min(max_batch, max(r.batch_sizes, default=1))
    unit_rows = 0
    if factored:
        seg_cols = _factored_segment(r, as_factors)
        unit_rows = C * max(target_batch, _unit_examples(r, avail, seg_cols, chunk, chunk * largest, max_batch, widest))
    else:
        per_col = C * max(1, target_batch) * stream_bytes
        seg_cols = max(MIN_SEGMENT, min(MAX_SEGMENT, int(work_budget // per_col)))
    max_batch = r.overrides.get("max_batch", max_batch)
    seg_cols = r.overrides.get("segment_cols", seg_cols)
    unit_rows = r.overrides.get("unit_rows", unit_rows)
    return Plan(
        groups=tuple(groups),
        chunk=chunk,
        max_batch=max_batch,
        segment_cols=seg_cols,
        store_raw=store_raw,
        store_sign=store_sign,
        store_budget=store_budget,
        work_budget=work_budget,
        act_budget=act_budget,
        passes=len(groups) * math.ceil(r.n_a / chunk),
        kernel_bytes=kernel_bytes,
        note=note,
        factored=tuple(sorted(as_factors)),
        unit_rows=unit_rows,
    )


def _fix_scratch_bytes(r: Request) -> int:
    """Bytes per entry of the work buffers a factored plan's store finds its sign fixes in: the tensor
    formed in the twin's precision, its signs and the formed tensor in the model's, and where they differ."""
    return r.scratch_itemsize + 2 * r.itemsize + 1


def _unit_examples(
    r: Request, avail: float, seg_cols: int, chunk: int, stored: float, max_batch: int, widest: int
) -> int:
    """Streamed examples held in one unit of a factored plan: as many as the memory left allows.

    Segments are then narrow (`_factored_segment`; a product's speed does not depend on them),
    and whatever the stored side, one segment of its formed columns, the in-flight batch's graph
    and the store-time work buffers leave goes to the unit: each example holds its recorded
    inputs and output gradients (``Request.held``, as the probe measured them) and C rows
    of the streamed segment. Wider units mean fewer formings of the stored columns and wider products.
    """
    C = r.num_outputs
    symmetric = any(t is None for t in r.targets)
    store_raw, store_sign = stored_needs(r.combos, symmetric)
    # an a x a target's diagonal block multiplies the formed signs themselves
    formed_sign = store_sign and (symmetric or not signs_from_raw(r.combos, store_raw))
    formed = C * min(chunk, r.n_a) * seg_cols * entry_bytes(store_raw, formed_sign, r.itemsize)
    # held: the recorded inputs and C gradients of the outputs; else estimated from the
    # recorded bytes (outputs about half of them)
    held = r.held or max(1, r.captured) * (2 + C) / 2
    # the batch in flight, until its records are copied into the unit's buffer (`held.HeldPool`): its graph,
    # about three times its recorded bytes (measured at 16-shot SST-2 on roberta-base), and its output gradients
    graph = max_batch * (3 * min(max(1, r.captured), held) + held)
    scratch = max_batch * widest * _fix_scratch_bytes(r) if r.scratch_itemsize else 0
    free = avail * (1 - UNIT_HEADROOM) - stored - formed - graph - scratch
    return max(1, min(MAX_UNIT_EXAMPLES, int(free // (held + C * seg_cols * stream_entry_bytes(r.combos, r.itemsize)))))


def _groups(sizes: list[float], n_a: int, store_budget: float) -> list[tuple[int, ...]]:
    """One group if all training examples fit; else the cheaper of example chunks or tensor groups.

    Example chunks: ``ceil(N_a / chunk)`` passes, each a forward, a full reverse and the assembly of
    every gradient per streamed example. Tensor groups (tensors in model order, all examples
    stored per group): one pass per group, each a forward and a reverse pass, and the assembly of
    each gradient once in all.
    """
    everything = tuple(range(len(sizes)))
    per_example = sum(sizes)
    if per_example * n_a <= store_budget:
        return [everything]
    chunk = int(store_budget // max(per_example, 1.0))
    example_passes = math.ceil(n_a / chunk) if chunk >= 1 else math.inf
    biggest = max(sizes)
    rows = n_a if biggest * n_a <= store_budget else max(1, int(store_budget // max(biggest, 1.0)))
    groups: list[tuple[int, ...]] = []
    current: list[int] = []
    used = 0.0
    for i, size in enumerate(sizes):
        cost = size * rows
        if current and used + cost > store_budget:
            groups.append(tuple(current))
            current, used = [], 0.0
        current.append(i)
        used += cost
    groups.append(tuple(current))
    group_passes = len(groups) * math.ceil(n_a / rows)
    by_examples = example_passes * (COST_FORWARD + COST_REVERSE + COST_ASSEMBLY)
    by_groups = group_passes * (COST_FORWARD + COST_REVERSE) + COST_ASSEMBLY
    return [everything] if by_examples <= by_groups else groups
