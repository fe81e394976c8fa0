"""The fast eNTK strategy: per-example gradients once per example, then matrix products.

Layout. The selected tensors are split into *groups* (normally one). Within a group the dense
tensors are laid out side by side in columns; row-sparse tensors (embedding tables, the tied
decoder) keep (row id, row vector) entries.

Passes. The ``a`` side (the training set) is cut into chunks of examples. For each (group,
chunk) pass:

1. *Store*: one forward and C reverse passes per batch of the chunk write every example-logit's
   gradient into a preallocated buffer ``S`` of shape ``[C * A, columns]``: the raw gradients
   where a formula uses them on this side, their signs as int8 where a formula takes signs here
   (the plan says which, `planner.Plan.representation`), and collect the sparse entries. When
   the raw gradients would need more than one pass, the weight matrices are stored instead as
   their layers' recorded inputs and output gradients (``dW = go^T a``: ``T * (n + C * m)``
   numbers per example instead of ``C * m * n``, about a tenth for roberta-base at 64 tokens);
   their stored columns are formed again, one segment at a time, where they are multiplied.
2. *Stream*: every batch of the ``b`` side goes through one forward and C reverse passes; its
   per-example gradients are assembled segment by segment (a few million columns at a time) into
   a small workspace and immediately contracted with the matching columns of ``S``:
   ``block += S_x @ G_y^T`` for each needed sign combination, so the ``b`` side's gradients are
   never held whole. When a group fits in one segment, the rows of several consecutive batches
   (up to 256) are gathered first, so that each product is wide enough to run near the machine's
   peak. With factored weights and several segments, the batches are taken in units whose
   recorded inputs and output gradients are held together (`planner.Plan.unit_rows`; copied into
   one buffer kept across units, `benchmark.kernels.held`), so that each segment's stored columns
   are formed once per unit and the products are as wide as the unit. Sparse tensors are
   contracted by joining entries on their row id.

Padding. Each batch's examples are run in order of length, and every batch run is cut to its
longest example (the trailing columns its attention mask gives to no example), once one padded
example's logits are seen not to change when its padding is cut (`benchmark.kernels.padding`);
the kernels come back in the given order.

All formulas come out of the same pass: ``sgd`` = (raw, raw), ``signgd`` = (sign, sign),
``asym`` = (sign, raw) and its flipped kernel (raw, sign). Every product sums at most 4,096
columns in the operands' precision and adds those partial products into float64 accumulators
(`products.accumulate`), so a float32 kernel is within ~1e-7 of the float64 product of the same
gradients whatever the plan (a plain float32 product over millions of columns is ~1e-5 off), and
sign kernels are exact sums of +-1. When signs are asked for, the stored side is computed with a
float64 copy of the model, so that its signs are those of the float64 gradients rather than of
float32 round-off (an ``asym`` entry moves by twice the other side's entry per flipped sign).

Memory. `planner.plan` (a pure function of sizes) splits the budget between the stored side, the
streaming workspace and a batch's activations (the kernel accumulators themselves are counted
first). When the stored gradients of all training examples do not fit, the tensors are split into
groups, one pass per group: a pass assembles and contracts only its group's gradients and its
reverse passes stop at the group's lowest layer, so this costs less than re-streaming every
example's full gradient per chunk of examples; examples are chunked as well only when one
tensor's gradients for all of them exceed the budget. The planner also picks the segment width
and splits batches that are too large.

Symmetry. For the ``a x a`` kernel only chunk pairs ``i <= j`` are computed; the lower blocks are
the transposes (for ``asym``, the transpose of the flipped kernel), and the diagonal blocks come
from ``S`` alone, without a second pass over those examples.

Several processes. When ``torch.distributed`` is initialised, the work units (groups of streamed
batches, diagonal blocks, off-diagonal pieces) are dealt to the ranks by their position in the
kernel, the same in every pass; each rank fills its entries, and the accumulators are summed with
``all_reduce``. Every entry is computed by exactly one rank in the one-process order, and all ranks
agree on one plan (the smallest budget), so the result is the one-process result, bit for bit
(`benchmark.kernels.distributed`).

This module plans the passes and drives them; the work of one pass (reverse passes, assembly,
store, stream, diagonal blocks) is `benchmark.kernels.passes`, and the factored training side's
(storing the factors, forming the stored columns again) `benchmark.kernels.factored`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from benchmark.kernels.batches import Examples, accepted_keys, differentiable, prepare
from benchmark.kernels.clock import now
from benchmark.kernels.distributed import Ranks, dist_info, sum_over_ranks
from benchmark.kernels.held import HeldPerWidth
from benchmark.kernels.layout import Group, Pending, Stored, Twin, place
from benchmark.kernels.memory import release_free_memory
from benchmark.kernels.padding import by_length, lengths, mask_is_honoured, restore_order, trim_padding
from benchmark.kernels.params import SelectedTensor
from benchmark.kernels.passes import PassOps
from benchmark.kernels.per_example import (
    Batch,
    Captured,
    batch_size,
    modules_of,
    plan_slots,
    probe,
    record,
    slice_batch,
)
from benchmark.kernels.planner import (
    Combo,
    Plan,
    Request,
    TensorSize,
    entry_bytes,
    plan,
    stored_needs,
    stream_entry_bytes,
)
from benchmark.kernels.units import stream_units
from registry import BenchError

#: Re-exported for callers of the former single module.
__all__ = ["Combo", "Examples", "FastKernelEngine", "accepted_keys", "differentiable", "dist_info", "prepare"]

logger = logging.getLogger(__name__)

#: Examples the probe runs (`per_example.probe`): two show a batch dimension as well as four did, and the
#: per-example bytes it measures were the same; on roberta-base at 64 tokens (1 thread) the probe took 3.2 s
#: CPU with two, 5.0 s with four.
PROBE_EXAMPLES = 2


class FastKernelEngine(PassOps):
    """Computes ``a x b`` eNTKs for several sign combinations in one set of passes.

    ``combos`` lists (sign on the a side, sign on the b side) pairs; `run` returns one float64
    kernel ``[N_a, C, N_b, C]`` per target and combination, on the model's device. With
    ``exact_signs`` (and a sign combination, and a model below float64) the stored side is
    computed with a float64 copy of the model (`Twin`), which costs one model's worth of memory.
    ``overrides`` forces parts of the plan (tests).
    """

    def __init__(
        self,
        model: nn.Module,
        selection: list[SelectedTensor],
        combos: Sequence[Combo],
        *,
        memory_budget: int,
        progress: bool = False,
        stats: dict[str, Any] | None = None,
        validate: bool = True,
        overrides: Mapping[str, int] | None = None,
        exact_signs: bool = True,
    ) -> None:
        self.model = model
        # Plan overrides, for tests: "chunk", "max_batch", "segment_cols", "group_slots", "gather_rows";
        # "no_gather" and "no_pool" turn the gathering of streamed rows and the held records' buffer off.
        self.overrides = dict(overrides or {})
        self.slots = plan_slots(selection)
        self.combos = list(dict.fromkeys(combos))
        self.budget = memory_budget
        self.progress = progress
        self.stats = stats if stats is not None else {}
        self.validate = validate
        first = selection[0].tensor
        self.device = first.device
        self.dtype = first.dtype
        self.itemsize = first.element_size()
        self.ranks = Ranks.current()
        self.num_outputs = 0
        self.held_bytes = 0  # what one streamed example keeps in a unit, as the probe measured it
        self.work_budget = 0.0
        self.plan: Plan | None = None
        self._scratches: dict[str, torch.Tensor] = {}
        self.exact_signs = exact_signs
        self.twin: Twin | None = None
        self._bar: Any = None
        self._trim = False  # cut each batch run to its longest example (`padding`)
        self.held_per_width: HeldPerWidth | None = None  # held bytes per example against the batch's width

    def _mine(self, key: int) -> bool:
        """Whether work unit ``key`` belongs to this rank.

        Keys depend only on where the unit's entries lie in the kernel (never on the pass), so every
        entry is accumulated over all passes by one rank, in the one-process order, and the
        ``all_reduce`` only adds zeros: the result is the one-process result, bit for bit.
        """
        return self.ranks.mine(key)

    # ------------------------------------------------------------------ planning
    def _plan(
        self, a: Examples, targets: Mapping[str, Examples | None], captured: Captured
    ) -> tuple[list[Group], int, int]:
        """Ask the planner (`planner.plan`) and lay the groups and their column segments out."""
        request = Request(
            tensors=tuple(
                TensorSize(
                    s.numel, s.sparse, s.width if s.sparse else 1, s.fallback,
                    factor_shape=tuple(s.tensor.shape) if s.factorable else None,  # type: ignore[arg-type]
                    calls=s.calls,
                )
                for s in self.slots
            ),
            n_a=a.total,
            targets=tuple(t.total if t is not None else None for t in targets.values()),
            batch_sizes=tuple(a.sizes + [n for t in targets.values() if t is not None for n in t.sizes]),
            num_outputs=self.num_outputs,
            combos=tuple(self.combos),
            budget=self.budget,
            itemsize=self.itemsize,
            longest=max([a.max_len] + [t.max_len for t in targets.values() if t is not None]),
            captured=captured.recorded * (2 if self._wants_twin() else 1),  # the float64 twin's are twice as big
            held=captured.held,  # streamed examples run the model itself, never the float64 twin
            overrides=self.overrides,
            reserved=self._twin_bytes() if self._wants_twin() else 0,
            scratch_itemsize=(8 if self._wants_twin() else self.itemsize) if self._stores_signs(targets) else 0,
        )
        chosen = plan(request)
        if chosen.note:
            logger.warning(chosen.note)
        self.plan = chosen
        self.work_budget = chosen.work_budget
        groups = []
        for indices in chosen.groups:
            part = [self.slots[i] for i in indices]
            factored = frozenset(self.slots[i].index for i in indices if i in chosen.factored)
            groups.append(Group([s for s in part if not s.sparse], [s for s in part if s.sparse], factored=factored))
        for group in groups:
            group.lay_out_segments(chosen.segment_cols)
        self.stats.update(
            groups=len(groups),
            chunk=chosen.chunk,
            max_batch=chosen.max_batch,
            segment_cols=chosen.segment_cols,
            passes=chosen.passes,
            dense_cols=sum(g.cols for g in groups),
            representation=chosen.representation,
            factored=len(chosen.factored),
            unit_rows=chosen.unit_rows,
            row_parts=sum(s.rows is not None for g in groups for seg in g.segments for s in seg.slots),
            budget=self.budget,
            fallback_params=[s.name for s in self.slots if s.fallback],
        )
        return groups, chosen.chunk, chosen.max_batch

    def _pending(self, group: Group, max_batch: int, stored_rows: int) -> Pending | None:
        """A buffer gathering several streamed batches before one product (one-segment groups only).

        Products with more columns run closer to the machine's peak; the buffer is sized from the
        workspace share of the budget (at most 256 rows, so that processes still share the work),
        less the stored columns formed again from factors (``stored_rows`` rows per variant).
        """
        if len(group.segments) != 1 or self.overrides.get("no_gather"):
            return None
        cols = group.segments[0].stop - group.segments[0].start
        entry = stream_entry_bytes(self.combos, self.itemsize)
        variants = {x for x, _ in self.combos} | {y for _, y in self.combos}
        formed = stored_rows * cols * entry_bytes(False in variants, True in variants, self.itemsize)
        rows = min(256, int((self.work_budget - (formed if group.factored else 0)) // max(1, entry * cols)))
        rows = self.overrides.get("gather_rows", rows)
        if rows < 2 * self.num_outputs * max_batch:
            return None
        return Pending(self._scratch("pending", rows, cols, self.dtype))

    def _wants_twin(self) -> bool:
        """Whether the stored side is computed with a float64 copy of the model (see `Twin`)."""
        signs = any(x or y for x, y in self.combos)
        return self.exact_signs and signs and self.dtype != torch.float64

    def _twin_bytes(self) -> int:
        """Memory of the float64 copy of the model."""
        return sum(t.numel() * 8 for t in list(self.model.parameters()) + list(self.model.buffers()))

    def _stores_signs(self, targets: Mapping[str, Examples | None]) -> bool:
        """Whether stored gradients pass through a scratch buffer (signs kept, or a float64 twin)."""
        symmetric = any(t is None for t in targets.values())
        return stored_needs(tuple(self.combos), symmetric)[1] or self._wants_twin()

    # ------------------------------------------------------------------ driver
    def run(
        self, batches_a: Sequence[Batch], targets: Mapping[str, Sequence[Batch] | None], *, plan_only: bool = False
    ) -> dict[str, dict[Combo, torch.Tensor]]:
        """Kernels ``[N_a, C, N_b, C]`` (float64) per target name and sign combination.

        A target ``None`` means ``a x a``. With ``plan_only`` the engine probes the model and plans
        (``stats`` and `plan` say what it would do), computes nothing and returns ``{}``.
        """
        a = prepare(batches_a, self.device, self.model)
        if a.total == 0:
            raise BenchError("the kernel needs at least one example on the first side")
        streams = {
            name: (prepare(b, self.device, self.model) if b is not None else None) for name, b in targets.items()
        }
        tensors = [s.tensor for s in self.slots]
        with differentiable(self.model, tensors):
            t = now()
            a, streams, order_a, orders = self._cut_padding(a, streams)
            sample = slice_batch(a.batches[0], 0, min(PROBE_EXAMPLES, a.sizes[0]))
            failed, captured, C = probe(self.model, sample, self.slots, check=self.validate)
            self.num_outputs = C
            for slot in failed:
                logger.warning(
                    "parameter %s: per-layer gradients disagree with autograd; using the per-example loop", slot.name
                )
                slot.fallback, slot.sparse = True, False
            self._tick("probe", t)
            self.stats["activation_bytes"] = captured.recorded  # per example: recorded layer inputs and outputs
            self.held_bytes = self.stats["held_bytes"] = captured.held  # per streamed example held in a unit
            self.held_per_width = self._fit_held(sample, captured)
            if self.held_per_width is not None:
                self.stats["held_per_token"] = self.held_per_width.per_token
            groups, chunk, max_batch = self._plan(a, streams, captured)
            if plan_only:
                return {}
            if self._wants_twin():
                self.twin = Twin.build(self.model, groups)
            self.stats["exact_signs"] = self.twin is not None
            max_pairs = int(0.05 * self.budget // self.itemsize) + 2**16
            kernels = {
                name: {
                    combo: torch.zeros(
                        a.total, C, (s.total if s is not None else a.total), C, dtype=torch.float64, device=self.device
                    )
                    for combo in self.combos
                }
                for name, s in streams.items()
            }
            n_chunks = math.ceil(a.total / chunk)
            total_work = len(groups) * (
                a.total
                + sum(
                    (
                        s.total * n_chunks
                        if s is not None
                        else sum(min(a.total, (j + 1) * chunk) - j * chunk for j in range(n_chunks) for _ in range(j))
                    )
                    for s in streams.values()
                )
            )
            quiet = not self.progress or self.ranks.rank != 0
            self._bar = tqdm(total=total_work, unit="ex", desc="eNTK", disable=quiet)
            twin_grads = (
                differentiable(self.twin.model, self.twin.tensors()) if self.twin is not None else nullcontext()
            )
            try:
                with twin_grads:
                    for group in groups:
                        for i in range(n_chunks):
                            a0, a1 = i * chunk, min(a.total, (i + 1) * chunk)
                            stored = self._store(group, a, a0, a1, max_batch)
                            for name, stream in streams.items():
                                if stream is None:
                                    self._self_blocks(
                                        group, stored, a, kernels[name], chunk, n_chunks, i, max_batch, max_pairs
                                    )
                                else:
                                    self._stream_target(group, stored, stream, kernels[name], max_batch, max_pairs)
                            del stored
            finally:
                if self._bar is not None:
                    self._bar.close()
                self._scratches.clear()
            if self.ranks.world > 1:
                t = now()
                sum_over_ranks(tensor for per_combo in kernels.values() for tensor in per_combo.values())
                self._tick("gather", t)
        return {
            name: {combo: restore_order(k, order_a, orders[name] if name in orders else order_a)
                   for combo, k in per_combo.items()}
            for name, per_combo in kernels.items()
        }

    def _cut_padding(
        self, a: Examples, streams: dict[str, Examples | None]
    ) -> tuple[Examples, dict[str, Examples | None], torch.Tensor | None, dict[str, torch.Tensor | None]]:
        """Both sides with each batch's examples in order of length, and the orders to put the kernels back in
        (`padding.by_length`), when the model attends by its mask (`padding.mask_is_honoured`); then every
        batch run is cut to its longest example (`PassOps._backward`). Unchanged with the override
        ``no_trim`` or a model whose logits change when padding is cut."""
        self._trim = False
        sides = [a, *(s for s in streams.values() if s is not None)]
        if self.overrides.get("no_trim"):
            return a, streams, None, {}
        honoured = mask_is_honoured(self.model, sides)
        if honoured is None:
            return a, streams, None, {}
        if not honoured:
            logger.warning("the model's logits change when trailing padding (attention mask 0) is cut: "
                           "its batches are run padded")
            return a, streams, None, {}
        self._trim = True
        a, order_a = by_length(a)
        sorted_streams: dict[str, Examples | None] = {}
        orders: dict[str, torch.Tensor | None] = {}
        for name, stream in streams.items():
            if stream is None:
                sorted_streams[name] = None
                continue
            sorted_streams[name], orders[name] = by_length(stream)
        return a, sorted_streams, order_a, orders

    def _fit_held(self, sample: dict[str, Any], captured: Captured) -> HeldPerWidth | None:
        """With padding cut, how the bytes a streamed example holds grow with its batch's width: the probe's
        sample recorded again cut to its longest example (a forward pass of a few examples); None when it
        is not narrower (units are then sized by examples at the probe's width)."""
        given, cut = sample.get("attention_mask"), trim_padding(sample)
        narrow = cut.get("attention_mask")
        if not self._trim or not isinstance(given, torch.Tensor) or narrow is given:
            return None
        width = int(given.shape[1])
        size = batch_size(cut)
        with record(modules_of(self.slots), size) as rec:
            self.model(**cut)
        held = rec.held_bytes(self.num_outputs) / size
        del rec
        return HeldPerWidth.fit((width, float(captured.held)), (int(narrow.shape[1]), held))

    def _held_estimate(self, batch: dict[str, Any]) -> float:
        """Bytes ``batch``'s records will hold in a unit (cut to its longest example when padding is cut)."""
        size = batch_size(batch)
        ends = lengths(batch)
        if self.held_per_width is None or ends is None:
            return size * self.held_bytes
        return size * self.held_per_width.at(max(1, int(ends.max())))

    def _stream_target(
        self,
        group: Group,
        stored: Stored,
        stream: Examples,
        out: dict[Combo, torch.Tensor],
        max_batch: int,
        max_pairs: int,
    ) -> None:
        """Stream every (assigned) batch of one ``b`` side against the stored chunk."""
        C = self.num_outputs
        pending = self._pending(group, max_batch, C * stored.size)
        assert self.plan is not None
        wide = pending is None and len(group.segments) > 1 and self.plan.unit_rows >= 2 * C * max_batch
        capacity = pending.capacity if pending is not None else self.plan.unit_rows if wide else None
        room = None
        if wide and self.held_per_width is not None and "unit_rows" not in self.overrides:
            # the memory the plan gives a unit, at the probe's width; examples cut shorter hold less, so more fit
            row = C * self.plan.segment_cols * stream_entry_bytes(self.combos, self.itemsize)
            room = (lambda piece: self._held_estimate(piece) + batch_size(piece) * row,
                    (self.plan.unit_rows // C) * (self.held_bytes + row))
        units = stream_units(stream, max_batch, C, capacity, room)
        if wide:
            widest = max(C * sum(batch_size(piece) for _, piece in unit) for unit in units)
            self.stats["unit_rows_run"] = max(self.stats.get("unit_rows_run", 0), widest)
        for key, unit in enumerate(units):
            if not self._mine(key):
                self._advance(sum(batch_size(piece) for _, piece in unit))
                continue
            if pending is None:  # a unit of several batches when wide, else of one
                for first, size, block_of in self._stream_unit(group, stored, unit, self.combos, max_pairs):
                    for combo in self.combos:
                        place(out[combo], block_of(combo), stored.start, stored.size, first, size, C)
                if wide and self.device.type == "cpu":
                    release_free_memory()  # the unit's held records are freed between long-lived buffers
                continue
            for first, piece in unit:
                blocks = self._stream(group, stored, piece, self.combos, max_pairs, pending, first)
                for combo, block in blocks.items():
                    place(out[combo], block, stored.start, stored.size, first, batch_size(piece), C)
            self._flush(group, pending, stored, out, stored.start)

    def _self_blocks(
        self,
        group: Group,
        stored: Stored,
        a: Examples,
        out: dict[Combo, torch.Tensor],
        chunk: int,
        n_chunks: int,
        i: int,
        max_batch: int,
        max_pairs: int,
    ) -> None:
        """The ``a x a`` blocks of chunk ``i``: its diagonal block and its pairs with chunks ``j > i``."""
        C = self.num_outputs
        mirrored = list(dict.fromkeys(self.combos + [(y, x) for x, y in self.combos]))
        if self._mine(i):
            blocks = self._diagonal(group, stored, self.combos, max_pairs)
            for combo, block in blocks.items():
                place(out[combo], block, stored.start, stored.size, stored.start, stored.size, C)
        for j in range(i + 1, n_chunks):
            b0, b1 = j * chunk, min(a.total, (j + 1) * chunk)
            for k, (first, batch) in enumerate(a.pieces(b0, b1, max_batch)):
                if not self._mine(i + j + k):
                    self._advance(batch_size(batch))
                    continue
                blocks = self._stream(group, stored, batch, mirrored, max_pairs)
                size = batch_size(batch)
                for x, y in self.combos:
                    place(out[(x, y)], blocks[(x, y)], stored.start, stored.size, first, size, C)
                    place(out[(x, y)], blocks[(y, x)], stored.start, stored.size, first, size, C, transpose=True)
