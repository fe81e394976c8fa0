"""The per-batch work of the fast eNTK strategy: reverse passes, assembly, storing and streaming.

`FastKernelEngine` (`benchmark.kernels.fast`) plans the passes and drives them; the operations of
one pass live here: the forward and C reverse passes of a batch (`_backward`), the assembly of its
per-example gradients into dense columns or sparse rows, the stored side of a chunk (`_store`), the
blocks of a streamed batch against it (`_stream`, `_flush` for gathered rows) and the diagonal
blocks of an ``a x a`` kernel (`_diagonal`). See the `benchmark.kernels.fast` docstring for the
algorithm and its memory and precision.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from benchmark.kernels.batches import Examples
from benchmark.kernels.clock import now
from benchmark.kernels.factored import FactorOps
from benchmark.kernels.held import HeldPool
from benchmark.kernels.layout import FactorBatch, Group, Pending, Segment, Stored, Twin, place
from benchmark.kernels.memory import release_free_memory
from benchmark.kernels.padding import trim_padding
from benchmark.kernels.per_example import (
    Slot,
    SparseRows,
    batch_size,
    factors_of,
    fallback_gradients,
    form_rows,
    record,
    sparse_entries,
    sparse_join,
    write_dense,
)
from benchmark.kernels.planner import Combo, Plan, signs_from_raw
from benchmark.kernels.products import accumulate_signed, gram, integer_sign_product

#: Entries of a streamed buffer whose float signs are taken at once before their int8 copy (512 KiB: in
#: cache for the copy; 1.45 G entries/s on one core where 16 MiB chunks ran at 1.15).
SIGN_CHUNK = 2**17


class PassOps(FactorOps):
    """The operations of one pass, shared by `FastKernelEngine` (which owns the state named here)."""

    model: nn.Module
    combos: list[Combo]
    num_outputs: int
    held_bytes: int
    overrides: dict[str, int]
    device: torch.device
    dtype: torch.dtype
    plan: Plan | None
    twin: Twin | None
    stats: dict[str, Any]
    _scratches: dict[str, torch.Tensor]
    _bar: Any
    _trim: bool

    # ------------------------------------------------------------------ timing helpers
    def _tick(self, key: str, start: tuple[float, float]) -> tuple[float, float]:
        """Add the wall and CPU seconds since ``start`` to ``stats[key]`` and ``stats[key + '_cpu']``."""
        stop = now()
        self.stats[key] = self.stats.get(key, 0.0) + stop[0] - start[0]
        self.stats[key + "_cpu"] = self.stats.get(key + "_cpu", 0.0) + stop[1] - start[1]
        return stop


    def _scratch(self, name: str, rows: int, cols: int, dtype: torch.dtype) -> torch.Tensor:
        """A ``[rows, cols]`` work buffer kept across batches and passes (grown when too small).

        Allocating (and first touching) a fresh buffer per batch costs page faults and zeroing that
        show up in the engine's time; the contents are always overwritten before use.
        """
        need = rows * cols
        buffer = self._scratches.get(name)
        if buffer is None or buffer.numel() < need or buffer.dtype != dtype:
            buffer = torch.empty(need, dtype=dtype, device=self.device)
            self._scratches[name] = buffer
        return buffer[:need].view(rows, cols)

    def _signs(self, work: torch.Tensor, name: str) -> torch.Tensor:
        """The signs of ``work`` (contiguous) as int8 in a work buffer ``name``: a quarter of a float copy.

        Taken `SIGN_CHUNK` entries at a time through one small float buffer (no float copy of ``work``).
        """
        signs = self._scratch(name, *work.shape, torch.int8)
        flat, out = work.view(-1), signs.view(-1)
        for start in range(0, flat.numel(), SIGN_CHUNK):
            part = flat[start : start + SIGN_CHUNK]
            chunk = self._scratch("sign_chunk", 1, part.numel(), work.dtype)[0]
            out[start : start + SIGN_CHUNK].copy_(torch.sign(part, out=chunk))
        return signs

    def _advance(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    # ------------------------------------------------------------------ one batch
    def _backward(
        self, group: Group, batch: dict[str, Any], model: nn.Module | None = None
    ) -> tuple[Any, list[dict[int, torch.Tensor]], torch.Tensor | None]:
        model = model if model is not None else self.model
        t = now()
        if self._trim:
            given = batch["attention_mask"].numel() if "attention_mask" in batch else 0
            batch = trim_padding(batch)
            kept = batch["attention_mask"].numel() if "attention_mask" in batch else 0
            self.stats["tokens_given"] = self.stats.get("tokens_given", 0) + given
            self.stats["tokens_run"] = self.stats.get("tokens_run", 0) + kept
        with record(group.modules, batch_size(batch)) as rec:
            logits = model(**batch)
        t = self._tick("forward", t)
        outputs = rec.outputs()
        C = self.num_outputs
        grads: list[dict[int, torch.Tensor]] = []
        for c in range(C):
            if outputs:
                g = torch.autograd.grad(logits[:, c].sum(), outputs, retain_graph=c < C - 1, allow_unused=True)
                grads.append({call.key: x for call, x in zip(rec.order, g, strict=True) if x is not None})
            else:
                grads.append({})
        t = self._tick("backward", t)
        fallback = None
        if group.fallback:
            fallback = fallback_gradients(model, batch, group.fallback, C)
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
        """Write logit ``c``'s per-example gradients of ``slots`` into ``target`` (columns from ``base``).

        A part of a tensor's rows (`Slot.part`) is formed from its factors, ``left[..., r0:r1]^T @ right``.
        """
        for slot in slots:
            view = target[:, slot.offset - base : slot.offset - base + slot.numel]
            if slot.fallback:
                start = fb_offsets[slot.index]
                view.copy_(fallback[c, :, start : start + slot.numel])  # type: ignore[index]
                continue
            first = True
            for use in slot.uses:
                for call in rec.calls.get(id(use.module), []):
                    go = grads.get(call.key)
                    if go is None:
                        continue
                    if slot.rows is None:
                        write_dense(use, call, go, view, first)
                    else:
                        form_rows(view, *factors_of(use, call, go, view.shape[0]), slot.rows, first)
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
                    go = per_c.get(call.key)
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
        """Per-example gradients of examples ``start:stop`` of ``a`` for ``group``, with their signs.

        With a float64 twin of the model (see `Twin`), the gradients are computed in float64 and
        rounded into the stored buffer, so their signs are those of the float64 gradients.
        """
        C, A = self.num_outputs, stop - start
        twin = self.twin
        model, work_group = (twin.model, twin.groups[id(group)]) if twin is not None else (self.model, group)
        assert self.plan is not None
        cols = group.stored_cols
        dense = torch.zeros(C * A, cols, dtype=self.dtype, device=self.device) if self.plan.store_raw else None
        dense_sign = torch.zeros(C * A, cols, dtype=torch.int8, device=self.device) if self.plan.store_sign else None
        factors: dict[int, list[FactorBatch]] = {index: [] for index in group.factored}
        direct = twin is None and dense_sign is None  # gradients written straight into the stored rows
        parts: dict[int, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {s.index: [] for s in group.sparse}
        fb_offsets = self._fb_offsets(group)
        for first, batch in a.pieces(start, stop, max_batch):
            size = batch_size(batch)
            rec, grads, fallback = self._backward(work_group, batch, model)
            t = now()
            local = first - start
            if group.factored:
                self._store_factored(work_group, rec, grads, fallback, fb_offsets, dense, dense_sign, factors,
                                     local, size, A)
            else:
                for c in range(C):
                    at = slice(c * A + local, c * A + local + size)
                    if direct:
                        self._fill_dense(work_group.dense, rec, grads[c], fallback, fb_offsets, dense[at], 0, c)  # type: ignore[index]
                        continue
                    for segment in work_group.segments:  # one segment at a time: the scratch stays small
                        self._store_rows(segment.slots, segment.start, slice(segment.start, segment.stop), at, rec,
                                         grads[c], fallback, fb_offsets, dense, dense_sign, c)
            for slot in work_group.sparse:
                parts[slot.index] += self._sparse_rows(
                    slot, rec, grads, size, lambda c, r, local=local: r + c * A + local
                )
            self._tick("per_example", t)
            del rec, grads, fallback
            if self.device.type == "cpu":
                release_free_memory()
            self._advance(size)
        t = now()
        sparse = {}
        for slot in group.sparse:
            items = parts[slot.index]
            if items:
                rows, ids, values = (torch.cat(x) for x in zip(*items, strict=True))
            else:
                rows = ids = torch.zeros(0, dtype=torch.long, device=self.device)
                values = torch.zeros(0, slot.width, dtype=self.dtype, device=self.device)
            entries = SparseRows.build(rows, ids, values, C * A)
            if entries.values.dtype != self.dtype:
                entries = SparseRows(entries.ids, entries.rows, entries.values.to(self.dtype))
            sparse[slot.index] = entries
        self._tick("per_example", t)
        return Stored(start, stop, dense, dense_sign, sparse, factors)


    def _store_rows(
        self,
        slots: list[Slot],
        base: int,
        columns: slice,
        at: slice,
        rec: Any,
        grads: dict[int, torch.Tensor],
        fallback: torch.Tensor | None,
        fb_offsets: dict[int, int],
        dense: torch.Tensor | None,
        dense_sign: torch.Tensor | None,
        c: int,
    ) -> None:
        """Logit ``c``'s gradients of ``slots`` (the group's columns from ``base``) into rows ``at`` and
        ``columns`` of the stored buffers: computed in the model's precision (float64 with a twin) in a
        work buffer, then rounded and/or signed."""
        dtype = self.twin.model_dtype if self.twin else self.dtype
        exact = self._scratch("store", at.stop - at.start, columns.stop - columns.start, dtype)
        self._fill_dense(slots, rec, grads, fallback, fb_offsets, exact, base, c)
        if dense is not None:
            dense[at, columns].copy_(exact)
        if dense_sign is not None:
            signs = exact.sign_()
            dense_sign[at, columns].copy_(signs)
            if dense is not None and dense.dtype != signs.dtype:
                # an entry below the model precision's smallest value rounds to zero: it keeps its sign
                # (as the smallest normal value), so that the raw gradients' signs are the stored signs
                rounded = dense[at, columns]
                lost = (rounded == 0) & (signs != 0)
                if lost.any():
                    rounded[lost] = signs[lost].to(dense.dtype) * torch.finfo(dense.dtype).tiny

    # ------------------------------------------------------------------ stream
    def _stream(
        self,
        group: Group,
        stored: Stored,
        batch: dict[str, Any],
        combos: list[Combo],
        max_pairs: int,
        pending: Pending | None = None,
        first: int = 0,
    ) -> dict[Combo, torch.Tensor]:
        """Blocks ``[C * A, C * B]`` (float64) of ``stored`` against this batch, for each combo.

        With ``pending`` (a group of one segment), the dense gradients are only written into its
        buffer, to be multiplied later together with other batches' (`_flush`); the blocks then hold
        the sparse part only. Without, this is `_stream_unit` of the one batch.
        """
        if pending is None:
            ((_, _, block_of),) = self._stream_unit(group, stored, [(first, batch)], combos, max_pairs)
            return {combo: block_of(combo) for combo in combos}
        C, size = self.num_outputs, batch_size(batch)
        rec, grads, fallback = self._backward(group, batch)
        blocks = {
            combo: torch.zeros(C * stored.size, C * size, dtype=torch.float64, device=self.device) for combo in combos
        }
        t = now()
        segment = group.segments[0]
        fb_offsets = self._fb_offsets(group)
        rows = pending.work[pending.used : pending.used + C * size]
        for c in range(C):
            target = rows[c * size : (c + 1) * size]
            self._fill_dense(segment.slots, rec, grads[c], fallback, fb_offsets, target, segment.start, c)
        pending.pieces.append((first, size, pending.used))
        pending.used += C * size
        self._tick("per_example", t)
        self._contract_sparse(group, stored, rec, grads, size, blocks, max_pairs)
        self._advance(size)
        return blocks

    def _contract_sparse(
        self,
        group: Group,
        stored: Stored,
        rec: Any,
        grads: list[dict[int, torch.Tensor]],
        size: int,
        blocks: dict[Combo, torch.Tensor],
        max_pairs: int,
    ) -> None:
        """Add one streamed batch's row-sparse tensors into its ``[C * A, C * size]`` ``blocks`` (joined on row id)."""
        C = self.num_outputs
        for slot in group.sparse:
            t = now()
            items = self._sparse_rows(slot, rec, grads, size, lambda c, r: r + c * size)
            if items:
                rows, ids, values = (torch.cat(x) for x in zip(*items, strict=True))
                stream = SparseRows.build(rows, ids, values, C * size)
                t = self._tick("per_example", t)
                sparse_join(stored.sparse[slot.index], stream, blocks, max_pairs)
                self._tick("contract", t)

    def _stream_unit(
        self, group: Group, stored: Stored, unit: list[tuple[int, dict[str, Any]]], combos: list[Combo], max_pairs: int
    ) -> list[tuple[int, int, Any]]:
        """Blocks of ``stored`` against several streamed batches at once, segment by segment.

        Every batch's recorded inputs and output gradients are held (its outputs let go), so that each
        segment's stored columns are formed (`_stored_columns`) once for the whole unit and each
        product is as wide as the unit. Returns ``(first, size, block_of)`` per batch, with
        ``block_of(combo)`` its ``[C * A, C * size]`` float64 block.
        """
        C = self.num_outputs
        held = []
        offset = 0
        pool = self._held_pool(sum(self._held_estimate(batch) for _, batch in unit))
        for first, batch in unit:
            size = batch_size(batch)
            rec, grads, fallback = self._backward(group, batch)
            rec.release_outputs()
            if pool is not None:
                t = now()
                kept = pool.keep_batch(rec, grads)  # the batch's own tensors (and its graph's memory) go
                key = "pooled_batches" if kept else "unpooled_batches"  # unpooled: padded longer than the probe's
                self.stats[key] = self.stats.get(key, 0) + 1
                self._tick("per_example", t)
            held.append((first, size, offset, rec, grads, fallback))
            offset += C * size
        wide = {combo: torch.zeros(C * stored.size, offset, dtype=torch.float64, device=self.device)
                for combo in combos}
        fb_offsets = self._fb_offsets(group)
        need_sign = self._integer_sign_product(combos)
        from_raw = self._signs_from_raw(group, combos)
        variants = {False} if from_raw else {x for x, _ in combos}
        for segment in group.segments:
            stored_cols = self._stored_columns(group, stored, segment, variants, exact_raw_signs=from_raw)
            t = now()
            cols = segment.stop - segment.start
            work = self._scratch("stream", offset, cols, self.dtype)
            for _, size, at, rec, grads, fallback in held:
                for c in range(C):
                    rows = work[at + c * size : at + (c + 1) * size]
                    self._fill_dense(segment.slots, rec, grads[c], fallback, fb_offsets, rows, segment.start, c)
                rec.drop_caches()  # a segment's tensors are assembled once per unit: nothing reuses them
            work_sign = self._signs(work, "stream_sign") if need_sign else None
            t = self._tick("per_example", t)
            self._multiply(wide, stored_cols, work, work_sign)
            self._tick("contract", t)
        for _, size, at, rec, grads, _ in held:
            views = {combo: block[:, at : at + C * size] for combo, block in wide.items()}
            self._contract_sparse(group, stored, rec, grads, size, views, max_pairs)
            self._advance(size)
        return [(first, size, lambda combo, at=at, size=size: wide[combo][:, at : at + C * size])
                for first, size, at, *_ in held]

    def _signs_from_raw(self, group: Group, combos: list[Combo]) -> bool:
        """Whether this group's stored signs are taken from its formed raw columns inside the products
        (`planner.signs_from_raw`; only formed columns, whose signs `_stored_columns` makes exact)."""
        assert self.plan is not None
        return bool(group.factored) and signs_from_raw(combos, self.plan.store_raw)

    def _integer_sign_product(self, combos: list[Combo]) -> bool:
        """Whether the streamed side's signs are formed as int8: only for the integer sign x sign
        (``signgd``) product, where this device runs it faster than float32 and the formulas are not all
        three (`products.integer_sign_product`)."""
        return integer_sign_product(combos, self.device)

    @staticmethod
    def _multiply(
        out: dict[Combo, torch.Tensor],
        stored_cols: dict[bool, torch.Tensor],
        work: torch.Tensor,
        work_sign: torch.Tensor | None,
    ) -> None:
        """``out[combo] +=`` the stored columns (or their signs) times the streamed rows ``work`` (or
        their signs), every combination in one pass over the columns (`products.accumulate_signed`:
        signs not stored are taken there, once per group for all the combinations)."""
        accumulate_signed(out, stored_cols.get(False), work, left_signs=stored_cols.get(True), right_signs=work_sign)

    def _held_estimate(self, batch: dict[str, Any]) -> float:
        raise NotImplementedError  # `fast.FastKernelEngine._held_estimate`

    def _held_pool(self, held: float) -> HeldPool | None:
        """The buffer a unit's records (``held`` bytes, as estimated from the probe) are copied into
        (`held.HeldPool`)."""
        if not self.held_bytes or self.overrides.get("no_pool"):
            return None
        nbytes = int(held * 1.01) + 2**20  # room for each tensor's alignment
        return HeldPool(self._scratch("held_pool", 1, nbytes, torch.uint8)[0])

    def _flush(
        self, group: Group, pending: Pending, stored: Stored, out: dict[Combo, torch.Tensor], a0: int
    ) -> None:
        """Multiply the pending streamed rows with the stored side and place the blocks."""
        if not pending.used:
            return
        from_raw = self._signs_from_raw(group, self.combos)
        variants = {False} if from_raw else {x for x, _ in self.combos}
        stored_cols = self._stored_columns(group, stored, group.segments[0], variants, exact_raw_signs=from_raw)
        t = now()
        C = self.num_outputs
        work = pending.work[: pending.used]
        work_sign = self._signs(work, "flush_sign") if self._integer_sign_product(self.combos) else None
        t = self._tick("per_example", t)
        blocks = {combo: torch.zeros(C * stored.size, work.shape[0], dtype=torch.float64, device=self.device)
                  for combo in self.combos}
        self._multiply(blocks, stored_cols, work, work_sign)
        for combo, block in blocks.items():
            for first, size, offset in pending.pieces:
                place(out[combo], block[:, offset : offset + C * size], a0, stored.size, first, size, C)
        pending.used, pending.pieces = 0, []
        self._tick("contract", t)

    def _diagonal(self, group: Group, stored: Stored, combos: list[Combo], max_pairs: int) -> dict[Combo, torch.Tensor]:
        t = now()
        n = self.num_outputs * stored.size
        blocks = {combo: torch.zeros(n, n, dtype=torch.float64, device=self.device) for combo in combos}
        variants = {x for x, _ in combos} | {y for _, y in combos}
        # without factored slots the stored buffers are used whole; else segment by segment, formed again
        spans = group.segments if group.factored else [Segment(0, group.cols, group.dense)] if group.cols else []
        for segment in spans:
            t = self._tick("contract", t)
            stored_cols = self._stored_columns(group, stored, segment, variants)  # timed as "formed"
            t = now()
            for x, y in combos:
                blocks[(x, y)].add_(gram(stored_cols[x], stored_cols[y], symmetric=x == y))
        for slot in group.sparse:
            rows = stored.sparse[slot.index]
            sparse_join(rows, rows, blocks, max_pairs)
        self._tick("contract", t)
        return blocks
