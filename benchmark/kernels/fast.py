"""The fast eNTK strategy: per-example gradients once per example, then matrix products.

Layout. The selected tensors are split into *groups* (normally one). Within a group the dense
tensors are laid out side by side in columns; row-sparse tensors (embedding tables, the tied
decoder) keep (row id, row vector) entries.

Passes. The ``a`` side (the training set) is cut into chunks of examples. For each (group,
chunk) pass:

1. *Store*: one forward and C reverse passes per batch of the chunk write every example-logit's
   gradient into a preallocated buffer ``S`` of shape ``[C * A, columns]`` (plus its signs when a
   sign formula is asked for), and collect the sparse entries.
2. *Stream*: every batch of the ``b`` side goes through one forward and C reverse passes; its
   per-example gradients are assembled segment by segment (a few million columns at a time) into
   a small workspace and immediately contracted with the matching columns of ``S``:
   ``block += S_x @ G_y^T`` for each needed sign combination, so the ``b`` side's gradients are
   never held whole. Sparse tensors are contracted by joining entries on their row id.

All formulas come out of the same pass: ``sgd`` = (raw, raw), ``signgd`` = (sign, sign),
``asym`` = (sign, raw) and its flipped kernel (raw, sign). Each segment's float32 product is
added into float64 accumulators (segments have fewer than 2^24 columns, so sign kernels, sums
of +-1, are exact in float32).

Memory. The planner splits the budget between the stored side, the streaming workspace and a
batch's activations (the kernel accumulators themselves are counted first). When the stored
gradients of all training examples do not fit, the tensors are split into groups, one pass per
group: a pass assembles and contracts only its group's gradients and its reverse passes stop at
the group's lowest layer, so this costs less than re-streaming every example's full gradient per
chunk of examples; examples are chunked as well only when one tensor's gradients for all of them
exceed the budget. The planner also picks the segment width and splits batches that are too large.

Symmetry. For the ``a x a`` kernel only chunk pairs ``i <= j`` are computed; the lower blocks are
the transposes (for ``asym``, the transpose of the flipped kernel), and the diagonal blocks come
from ``S`` alone, without a second pass over those examples.

Several processes. When ``torch.distributed`` is initialised, the work units (streamed batches,
diagonal blocks) are dealt round-robin to the ranks, each rank fills its entries and the
accumulators are summed with ``all_reduce``; every entry is computed by exactly one rank, so the
result is the one-process result.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from benchmark.kernels.params import SelectedTensor
from benchmark.kernels.per_example import (
    Batch,
    Slot,
    SparseRows,
    batch_size,
    fallback_gradients,
    modules_of,
    plan_slots,
    probe,
    record,
    slice_batch,
    sparse_entries,
    sparse_join,
    write_dense,
)
from registry import BenchError

logger = logging.getLogger(__name__)

Combo = tuple[bool, bool]  # (sign on the a side, sign on the b side)
#: Column segments stay below 2**24 so that float32 sums of signs are exact.
MAX_SEGMENT = 2**22
MIN_SEGMENT = 2**16
MIN_WORK_BYTES = 64 * 2**20


@dataclass
class Segment:
    """Contiguous columns ``start:stop`` of a group's dense layout and the slots inside."""

    start: int
    stop: int
    slots: list[Slot]


@dataclass
class Group:
    """A set of selected tensors handled in one pass."""

    dense: list[Slot]
    sparse: list[Slot]
    cols: int = 0
    segments: list[Segment] = field(default_factory=list)

    @property
    def modules(self) -> list[nn.Module]:
        """Modules to record for this group."""
        return modules_of(self.dense + self.sparse)

    @property
    def fallback(self) -> list[Slot]:
        """Dense slots computed by the autograd loop."""
        return [s for s in self.dense if s.fallback]


@dataclass
class Stored:
    """The stored side of a pass: examples ``start:stop`` of ``a``, rows ordered ``c * A + a``."""

    start: int
    stop: int
    dense: torch.Tensor
    dense_sign: torch.Tensor | None
    sparse: dict[int, SparseRows]

    @property
    def size(self) -> int:
        """Examples in the chunk."""
        return self.stop - self.start

    def variant(self, sign: bool) -> torch.Tensor:
        """The stored gradients or their signs."""
        return self.dense_sign if sign and self.dense_sign is not None else self.dense


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


def dist_info() -> tuple[int, int]:
    """(rank, world size), (0, 1) without an initialised process group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


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


class FastKernelEngine:
    """Computes ``a x b`` eNTKs for several sign combinations in one set of passes."""

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
    ) -> None:
        self.model = model
        self.overrides = dict(overrides or {})  # "chunk", "max_batch", "segment_cols", "group_slots" (tests)
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
        self.rank, self.world = dist_info()
        self.num_outputs = 0
        self._unit = 0
        self._bar: Any = None

    # ------------------------------------------------------------------ timing helpers
    def _tick(self, key: str, start: float) -> float:
        now = time.perf_counter()
        self.stats[key] = self.stats.get(key, 0.0) + now - start
        return now

    def _mine(self) -> bool:
        """Whether the next work unit belongs to this rank (advances the shared counter)."""
        unit = self._unit
        self._unit += 1
        return unit % self.world == self.rank

    # ------------------------------------------------------------------ planning
    def _plan(self, a: Examples, targets: Mapping[str, Examples | None], captured: int) -> tuple[list[Group], int, int]:
        C = self.num_outputs
        out_bytes = sum(
            a.total * C * (t.total if t is not None else a.total) * C * 8 * len(self.combos) for t in targets.values()
        )
        avail = self.budget - out_bytes
        if avail < MIN_WORK_BYTES:
            logger.warning(
                "memory budget %.0f MiB leaves %.0f MiB beside the kernels themselves; working with %.0f MiB",
                self.budget / 2**20,
                avail / 2**20,
                MIN_WORK_BYTES / 2**20,
            )
            avail = MIN_WORK_BYTES
        store_budget, work_budget, act_budget = 0.45 * avail, 0.20 * avail, 0.35 * avail
        sign = any(x or y for x, y in self.combos)
        factor = 2 if sign else 1
        longest = max([a.max_len] + [t.max_len for t in targets.values() if t is not None])

        # Bytes one example adds to the stored side, per slot.
        def row_bytes(slot: Slot) -> float:
            if slot.sparse:
                return C * factor * (longest + C + 2) * (slot.width * self.itemsize + 16) * 2
            return C * factor * slot.numel * self.itemsize

        dense = [s for s in self.slots if not s.sparse]
        sparse = [s for s in self.slots if s.sparse]
        per_example = sum(row_bytes(s) for s in self.slots)
        if "group_slots" in self.overrides:
            size = self.overrides["group_slots"]
            groups = []
            for k in range(0, len(self.slots), size):
                part = self.slots[k : k + size]
                groups.append(Group([s for s in part if not s.sparse], [s for s in part if s.sparse]))
        else:
            groups = self._groups(dense, sparse, row_bytes, per_example, a.total, store_budget)
        largest = max(sum(row_bytes(s) for s in g.dense + g.sparse) for g in groups)
        chunk = max(1, min(a.total, int(store_budget // max(largest, 1.0))))

        act_per_example = max(1, captured) * (3 + C)
        max_batch = max(1, int(act_budget // act_per_example))
        widest = max((s.numel for s in dense if not s.fallback), default=0)
        stream_factor = 2 if sign else 1
        if widest:
            max_batch = max(1, min(max_batch, int(work_budget // (stream_factor * C * widest * self.itemsize))))
        sizes = a.sizes + [n for t in targets.values() if t is not None for n in t.sizes]
        target_batch = min(max_batch, max(sizes, default=1))
        seg_cols = int(work_budget // (stream_factor * C * max(1, target_batch) * self.itemsize))
        seg_cols = max(MIN_SEGMENT, min(MAX_SEGMENT, seg_cols))
        chunk = self.overrides.get("chunk", chunk)
        max_batch = self.overrides.get("max_batch", max_batch)
        seg_cols = self.overrides.get("segment_cols", seg_cols)
        for group in groups:
            offset = 0
            segment = Segment(0, 0, [])
            for slot in group.dense:
                slot.offset = offset
                if segment.slots and offset + slot.numel - segment.start > seg_cols:
                    group.segments.append(segment)
                    segment = Segment(offset, offset, [])
                segment.slots.append(slot)
                offset += slot.numel
                segment.stop = offset
            if segment.slots:
                group.segments.append(segment)
            group.cols = offset
        self.stats.update(
            groups=len(groups),
            chunk=chunk,
            max_batch=max_batch,
            segment_cols=seg_cols,
            passes=len(groups) * math.ceil(a.total / chunk),
            budget=self.budget,
            fallback_params=[s.name for s in self.slots if s.fallback],
        )
        return groups, chunk, max_batch

    def _groups(
        self,
        dense: list[Slot],
        sparse: list[Slot],
        row_bytes: Callable[[Slot], float],
        per_example: float,
        n_a: int,
        store_budget: float,
    ) -> list[Group]:
        """One group if all training examples fit; else the cheaper of example chunks or tensor groups.

        Example chunks: ``ceil(N_a / chunk)`` passes, each a forward, a full reverse pass and the
        assembly of every gradient per streamed example. Tensor groups (all examples stored per
        group, tensors in model order): one pass per group, each a forward, a reverse pass that
        stops at the group's lowest layer and the assembly of that group's gradients only. With
        forward : reverse : assembly costs of about 1 : 2 : 3 (measured), a pass of tensor groups
        costs at most half a pass of example chunks, plus the assembly once.
        """
        if per_example * n_a <= store_budget:
            return [Group(dense, sparse)]
        chunk = int(store_budget // max(per_example, 1.0))
        example_passes = math.ceil(n_a / chunk) if chunk >= 1 else math.inf
        biggest = max(row_bytes(s) for s in self.slots)
        rows = n_a if biggest * n_a <= store_budget else max(1, int(store_budget // max(biggest, 1.0)))
        groups, current, used = [], Group([], []), 0.0
        for slot in self.slots:
            cost = row_bytes(slot) * rows
            if (current.dense or current.sparse) and used + cost > store_budget:
                groups.append(current)
                current, used = Group([], []), 0.0
            (current.sparse if slot.sparse else current.dense).append(slot)
            used += cost
        groups.append(current)
        group_passes = len(groups) * math.ceil(n_a / rows)
        if example_passes * 6 <= group_passes * 3 + 3:
            return [Group(dense, sparse)]
        return groups

    # ------------------------------------------------------------------ one batch
    def _backward(
        self, group: Group, batch: dict[str, Any]
    ) -> tuple[Any, list[dict[int, torch.Tensor]], torch.Tensor | None]:
        t = time.perf_counter()
        with record(group.modules, batch_size(batch)) as rec:
            logits = self.model(**batch)
        t = self._tick("forward", t)
        outputs = rec.outputs()
        C = self.num_outputs
        grads: list[dict[int, torch.Tensor]] = []
        for c in range(C):
            if outputs:
                g = torch.autograd.grad(logits[:, c].sum(), outputs, retain_graph=c < C - 1, allow_unused=True)
                grads.append({id(o): x for o, x in zip(outputs, g, strict=True) if x is not None})
            else:
                grads.append({})
        t = self._tick("backward", t)
        fallback = None
        if group.fallback:
            fallback = fallback_gradients(self.model, batch, group.fallback, C)
            self._tick("fallback", t)
        return rec, grads, fallback

    def _fill_dense(
        self,
        slots: list[Slot],
        rec: Any,
        grads: dict[int, torch.Tensor],
        fallback: torch.Tensor | None,
        fb_offsets: dict[int, int],
        target: torch.Tensor,
        base: int,
        c: int,
    ) -> None:
        """Write logit ``c``'s per-example gradients of ``slots`` into ``target`` (columns from ``base``)."""
        for slot in slots:
            view = target[:, slot.offset - base : slot.offset - base + slot.numel]
            if slot.fallback:
                start = fb_offsets[slot.index]
                view.copy_(fallback[c, :, start : start + slot.numel])  # type: ignore[index]
                continue
            first = True
            for use in slot.uses:
                for call in rec.calls.get(id(use.module), []):
                    go = grads.get(id(call.output))
                    if go is not None:
                        write_dense(use, call, go, view, first)
                        first = False
            if first:
                view.zero_()

    def _sparse_rows(
        self, slot: Slot, rec: Any, grads: list[dict[int, torch.Tensor]], size: int, row_of: Any
    ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        parts = []
        for c, per_c in enumerate(grads):
            for use in slot.uses:
                for call in rec.calls.get(id(use.module), []):
                    go = per_c.get(id(call.output))
                    if go is not None:
                        rows, ids, values = sparse_entries(use, call, go, size)
                        parts.append((row_of(c, rows), ids, values))
        return parts

    @staticmethod
    def _fb_offsets(group: Group) -> dict[int, int]:
        offsets, at = {}, 0
        for slot in group.fallback:
            offsets[slot.index] = at
            at += slot.numel
        return offsets

    # ------------------------------------------------------------------ store
    def _store(self, group: Group, a: Examples, start: int, stop: int, max_batch: int) -> Stored:
        C, A = self.num_outputs, stop - start
        dense = torch.zeros(C * A, group.cols, dtype=self.dtype, device=self.device)
        parts: dict[int, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {s.index: [] for s in group.sparse}
        fb_offsets = self._fb_offsets(group)
        for first, batch in a.pieces(start, stop, max_batch):
            size = batch_size(batch)
            rec, grads, fallback = self._backward(group, batch)
            t = time.perf_counter()
            local = first - start
            for c in range(C):
                rows = dense[c * A + local : c * A + local + size]
                self._fill_dense(group.dense, rec, grads[c], fallback, fb_offsets, rows, 0, c)
            for slot in group.sparse:
                parts[slot.index] += self._sparse_rows(
                    slot, rec, grads, size, lambda c, r, local=local: r + c * A + local
                )
            self._tick("per_example", t)
            del rec, grads, fallback
            self._advance(size)
        t = time.perf_counter()
        sparse = {}
        for slot in group.sparse:
            items = parts[slot.index]
            if items:
                rows, ids, values = (torch.cat(x) for x in zip(*items, strict=True))
            else:
                rows = ids = torch.zeros(0, dtype=torch.long, device=self.device)
                values = torch.zeros(0, slot.width, dtype=self.dtype, device=self.device)
            sparse[slot.index] = SparseRows.build(rows, ids, values, C * A)
        need_sign = any(x or y for x, y in self.combos)
        dense_sign = torch.sign(dense) if need_sign and group.cols else None
        self._tick("per_example", t)
        return Stored(start, stop, dense, dense_sign, sparse)

    # ------------------------------------------------------------------ stream
    def _stream(
        self, group: Group, stored: Stored, batch: dict[str, Any], combos: list[Combo], max_pairs: int
    ) -> dict[Combo, torch.Tensor]:
        """Blocks ``[C * A, C * B]`` (float64) of ``stored`` against this batch, for each combo."""
        C, size = self.num_outputs, batch_size(batch)
        rec, grads, fallback = self._backward(group, batch)
        blocks = {
            combo: torch.zeros(C * stored.size, C * size, dtype=torch.float64, device=self.device) for combo in combos
        }
        fb_offsets = self._fb_offsets(group)
        need_sign = any(y for _, y in combos)
        for segment in group.segments:
            t = time.perf_counter()
            cols = segment.stop - segment.start
            work = torch.empty(C * size, cols, dtype=self.dtype, device=self.device)
            for c in range(C):
                self._fill_dense(
                    segment.slots,
                    rec,
                    grads[c],
                    fallback,
                    fb_offsets,
                    work[c * size : (c + 1) * size],
                    segment.start,
                    c,
                )
            work_sign = torch.sign(work) if need_sign else None
            t = self._tick("per_example", t)
            for x, y in combos:
                left = stored.variant(x)[:, segment.start : segment.stop]
                right = work_sign if y else work
                blocks[(x, y)].add_(torch.mm(left, right.t()))  # type: ignore[arg-type]
            self._tick("contract", t)
            del work, work_sign
        for slot in group.sparse:
            t = time.perf_counter()
            items = self._sparse_rows(slot, rec, grads, size, lambda c, r: r + c * size)
            if items:
                rows, ids, values = (torch.cat(x) for x in zip(*items, strict=True))
                stream = SparseRows.build(rows, ids, values, C * size)
                t = self._tick("per_example", t)
                sparse_join(stored.sparse[slot.index], stream, blocks, max_pairs)
                self._tick("contract", t)
        self._advance(size)
        return blocks

    def _diagonal(self, group: Group, stored: Stored, combos: list[Combo], max_pairs: int) -> dict[Combo, torch.Tensor]:
        t = time.perf_counter()
        n = self.num_outputs * stored.size
        blocks = {}
        for x, y in combos:
            block = torch.zeros(n, n, dtype=torch.float64, device=self.device)
            if group.cols:
                left, right = stored.variant(x), stored.variant(y)
                block.add_(_gram(left, right, symmetric=x == y))
            blocks[(x, y)] = block
        for slot in group.sparse:
            rows = stored.sparse[slot.index]
            sparse_join(rows, rows, blocks, max_pairs)
        self._tick("contract", t)
        return blocks

    def _advance(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    # ------------------------------------------------------------------ driver
    def run(
        self, batches_a: Sequence[Batch], targets: Mapping[str, Sequence[Batch] | None]
    ) -> dict[str, dict[Combo, torch.Tensor]]:
        """Kernels ``[N_a, C, N_b, C]`` (float64) per target name and sign combination.

        A target ``None`` means ``a x a``.
        """
        a = prepare(batches_a, self.device, self.model)
        if a.total == 0:
            raise BenchError("the kernel needs at least one example on the first side")
        streams = {
            name: (prepare(b, self.device, self.model) if b is not None else None) for name, b in targets.items()
        }
        tensors = [s.tensor for s in self.slots]
        with differentiable(self.model, tensors):
            t = time.perf_counter()
            sample = slice_batch(a.batches[0], 0, min(4, a.sizes[0]))
            failed, captured, C = probe(self.model, sample, self.slots, check=self.validate)
            self.num_outputs = C
            for slot in failed:
                logger.warning(
                    "parameter %s: per-layer gradients disagree with autograd; using the per-example loop", slot.name
                )
                slot.fallback, slot.sparse = True, False
            self._tick("probe", t)
            groups, chunk, max_batch = self._plan(a, streams, captured)
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
            self._bar = tqdm(total=total_work, unit="ex", desc="eNTK", disable=not self.progress or self.rank != 0)
            try:
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
                                for first, batch in stream.pieces(0, stream.total, 10**12):
                                    if not self._mine():
                                        self._advance(batch_size(batch))
                                        continue
                                    for s0, piece in _split(first, batch, max_batch):
                                        blocks = self._stream(group, stored, piece, self.combos, max_pairs)
                                        for combo, block in blocks.items():
                                            _place(kernels[name][combo], block, a0, a1 - a0, s0, batch_size(piece), C)
                        del stored
            finally:
                if self._bar is not None:
                    self._bar.close()
            if self.world > 1:
                t = time.perf_counter()
                for per_combo in kernels.values():
                    for tensor in per_combo.values():
                        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
                self._tick("gather", t)
        return kernels

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
        if self._mine():
            blocks = self._diagonal(group, stored, self.combos, max_pairs)
            for combo, block in blocks.items():
                _place(out[combo], block, stored.start, stored.size, stored.start, stored.size, C)
        for j in range(i + 1, n_chunks):
            b0, b1 = j * chunk, min(a.total, (j + 1) * chunk)
            for first, batch in a.pieces(b0, b1, max_batch):
                if not self._mine():
                    self._advance(batch_size(batch))
                    continue
                blocks = self._stream(group, stored, batch, mirrored, max_pairs)
                size = batch_size(batch)
                for x, y in self.combos:
                    _place(out[(x, y)], blocks[(x, y)], stored.start, stored.size, first, size, C)
                    _place(out[(x, y)], blocks[(y, x)], stored.start, stored.size, first, size, C, transpose=True)


def _split(first: int, batch: dict[str, Any], max_batch: int) -> Iterator[tuple[int, dict[str, Any]]]:
    size = batch_size(batch)
    if size <= max_batch:
        yield first, batch
        return
    for s in range(0, size, max_batch):
        yield first + s, slice_batch(batch, s, min(size, s + max_batch))


def _place(
    kernel: torch.Tensor, block: torch.Tensor, a0: int, na: int, b0: int, nb: int, C: int, *, transpose: bool = False
) -> None:
    """Add a ``[C * na, C * nb]`` block (rows ``c * na + a``) into ``kernel[N_a, C, N_b, C]``.

    With ``transpose`` the block's transpose goes to ``kernel[b0:b0+nb, :, a0:a0+na, :]``.
    """
    view = block.view(C, na, C, nb)
    if transpose:
        kernel[b0 : b0 + nb, :, a0 : a0 + na, :] += view.permute(3, 2, 1, 0)
    else:
        kernel[a0 : a0 + na, :, b0 : b0 + nb, :] += view.permute(1, 0, 3, 2)


def _gram(left: torch.Tensor, right: torch.Tensor, *, symmetric: bool, block: int = 512) -> torch.Tensor:
    """``left @ right.T`` in float64; for ``left is right`` only the upper block triangle is multiplied."""
    n = left.shape[0]
    if not symmetric or n <= block:
        return torch.mm(left, right.t()).to(torch.float64)
    out = torch.zeros(n, n, dtype=torch.float64, device=left.device)
    for i in range(0, n, block):
        rows = left[i : i + block]
        upper = torch.mm(rows, right[i:].t()).to(torch.float64)
        out[i : i + block, i:] = upper
        out[i:, i : i + block] = upper.t()
    return out
