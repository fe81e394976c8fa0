"""The factored training side: weight matrices kept as their layers' inputs and output gradients.

For a tensor whose gradient rule gives it as per-token factors (``nn.Linear``: ``dW_b = go_b^T a_b``),
the stored side keeps, per batch of training examples, the recorded inputs and the output
gradients of every call (`layout.FactorBatch`), ``T * (n + C * m)`` numbers per example instead
of ``C * m * n``. Where the stored columns are multiplied, `FactorOps._stored_columns` forms them
again, one segment at a time, into work buffers. With the float64 twin of the model (exact signs)
the factors are rounded to the model's precision, and the entries whose sign a float32 forming
gets wrong are found once, at store time, against a float64 forming and kept as fixes: the signs
formed later are those of the float64 gradients (`FactorOps._store_factored`).
"""

from __future__ import annotations

from typing import Any

import torch

from benchmark.kernels.clock import now
from benchmark.kernels.layout import FactorBatch, Group, Segment, Stored, Twin
from benchmark.kernels.per_example import Slot, factors_of, form_rows, live_tokens, view_key
from benchmark.kernels.planner import Plan


class FactorOps:
    """Storing and forming again the factored tensors' gradients (a part of `passes.PassOps`)."""

    num_outputs: int
    dtype: torch.dtype
    plan: Plan | None
    twin: Twin | None
    stats: dict[str, Any]

    # provided by `passes.PassOps`
    def _tick(self, key: str, start: tuple[float, float]) -> tuple[float, float]:
        raise NotImplementedError

    def _scratch(self, name: str, rows: int, cols: int, dtype: torch.dtype) -> torch.Tensor:
        raise NotImplementedError

    def _store_rows(self, slots: list[Slot], base: int, columns: slice, at: slice, rec: Any,
                    grads: dict[int, torch.Tensor], fallback: torch.Tensor | None, fb_offsets: dict[int, int],
                    dense: torch.Tensor | None, dense_sign: torch.Tensor | None, c: int) -> None:
        raise NotImplementedError

    def _store_factored(
        self,
        group: Group,
        rec: Any,
        grads: list[dict[int, torch.Tensor]],
        fallback: torch.Tensor | None,
        fb_offsets: dict[int, int],
        dense: torch.Tensor | None,
        dense_sign: torch.Tensor | None,
        factors: dict[int, list[FactorBatch]],
        local: int,
        size: int,
        A: int,
    ) -> None:
        """One stored batch of a group with factored slots: their factors, and the other slots' gradients.

        The factors are the recorded layer inputs and the output gradients themselves (no copy;
        inputs shared by several layers, as a query, key and value projection's, are kept once).
        With the float64 twin they are rounded to the model's precision, and where the stored signs
        are used, each factored gradient is formed once in float64 here: the entries whose sign the
        float32 forming gets wrong (within its round-off of zero) are kept as fixes, so that the
        signs formed later are those of the float64 gradients.
        """
        C = self.num_outputs
        assert self.plan is not None
        terms_of: dict[int, list[tuple[list[torch.Tensor], torch.Tensor]]] = {}
        for slot in group.dense:
            if slot.index in group.factored:
                terms_of[slot.index] = terms = []
                for use in slot.uses:
                    for call in rec.calls.get(id(use.module), []):
                        per_logit = [g.get(call.key) for g in grads]
                        if all(go is None for go in per_logit):
                            continue
                        some = next(go for go in per_logit if go is not None)
                        lefts = [factors_of(use, call, go if go is not None else torch.zeros_like(some), size)[0]
                                 for go in per_logit]
                        right = factors_of(use, call, some, size)[1]
                        terms.append((lefts, right))
        kept_of = self._rounded(terms_of)
        for slot in group.dense:
            if slot.index in group.factored:
                for piece, exact in _pieces(local, size, kept_of[slot.index], terms_of[slot.index]):
                    if self.twin is not None and self.plan.store_sign:
                        for c in range(C):  # in work buffers: no large short-lived allocations between the factors
                            twin_formed = self._form(exact, c, slot, "formed_twin")
                            torch.sign(twin_formed, out=twin_formed)  # before rounding: no float64 value underflows
                            # compared in one dtype: torch.ne of float64 against float32 ran at 6-40 ns per entry
                            signs = self._scratch("formed_twin_signs", piece.size, slot.numel, self.dtype)
                            signs.copy_(twin_formed)
                            formed = self._form(piece, c, slot)
                            torch.sign(formed, out=formed)
                            differ = self._scratch("formed_differ", piece.size, slot.numel, torch.bool)
                            torch.ne(signs, formed, out=differ)
                            wrong = differ.view(-1).nonzero().squeeze(1)
                            piece.fixes.append((wrong, signs.view(-1)[wrong]))
                            self.stats["sign_fixes"] = self.stats.get("sign_fixes", 0) + wrong.numel()
                    factors[slot.index].append(piece)
                continue
            offset = group.stored_offsets[slot.index]
            for c in range(C):
                self._store_rows([slot], slot.offset, slice(offset, offset + slot.numel),
                                 slice(c * A + local, c * A + local + size), rec, grads[c], fallback, fb_offsets,
                                 dense, dense_sign, c)

    def _rounded(
        self, terms_of: dict[int, list[tuple[list[torch.Tensor], torch.Tensor]]]
    ) -> dict[int, list[tuple[list[torch.Tensor], torch.Tensor]]]:
        """The factors in the model's precision (the float64 twin's rounded), in one allocation per batch.

        Each viewed memory is rounded once (a query, key and value projection's input is one),
        keyed by where the view lies (a view object's id is reused once it is freed; the viewed
        memory is held by the batch's records). One flat buffer, rather than a copy per factor,
        keeps the long-lived factors from scattering through the heap between the batch's
        short-lived float64 buffers (which then could not be given back to the system).
        """
        tensors = [t for terms in terms_of.values() for lefts, right in terms for t in (*lefts, right)]
        if all(t.dtype == self.dtype for t in tensors):
            return terms_of
        at: dict[tuple[int, tuple[int, ...], tuple[int, ...]], tuple[int, torch.Tensor]] = {}
        total = 0
        for t in tensors:
            key = view_key(t)
            if key not in at:
                at[key] = (total, t)
                total += t.numel()
        flat = torch.empty(total, dtype=self.dtype, device=tensors[0].device)
        copies = {}
        for key, (offset, t) in at.items():
            copies[key] = flat[offset : offset + t.numel()].view(t.shape)
            copies[key].copy_(t)

        def copy_of(t: torch.Tensor) -> torch.Tensor:
            return copies[view_key(t)]

        return {index: [([copy_of(x) for x in lefts], copy_of(right)) for lefts, right in terms]
                for index, terms in terms_of.items()}

    def _form(
        self, piece: FactorBatch, c: int, slot: Slot, name: str = "formed_piece", into: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logit ``c``'s gradients of ``slot`` (or of its part's rows) for the examples of ``piece``,
        formed from its factors.

        ``[size, numel]``, into ``into`` (rows of any stride) or else a work buffer ``name``
        (overwritten by the next call); always the same operations on the same tensors, so the same
        numbers whenever a piece is formed (a product's sums do not depend on where it writes).
        """
        rows = slot.rows or (0, slot.tensor.shape[0])
        dtype = piece.terms[0][1].dtype if piece.terms else self.dtype
        formed = into if into is not None else self._scratch(name, piece.size, slot.numel, dtype)
        if not piece.terms:
            formed.zero_()
        for k, (lefts, right) in enumerate(piece.terms):
            form_rows(formed, lefts[c], right, rows, first=k == 0)
        return formed

    def _stored_columns(
        self, group: Group, stored: Stored, segment: Segment, variants: set[bool], *, exact_raw_signs: bool = False
    ) -> dict[bool, torch.Tensor]:
        """The stored side's columns of ``segment`` (``[C * A, columns]``), raw and/or signed, per variant.

        Without factored slots these are views of the stored buffers. Otherwise a factored slot's
        columns are formed again from its factors (``left_c^T @ right`` per example, summed over the
        calls; signs corrected by the piece's fixes, see `_store_factored`) and the others are
        copied, into work buffers kept across batches. With ``exact_raw_signs`` the raw columns'
        own signs are made the stored signs (`_give_fixed_signs`), for products that take them there.
        """
        if not group.factored:
            return {v: stored.variant(v)[:, segment.start : segment.stop] for v in variants}
        t = now()
        rows, cols, A = self.num_outputs * stored.size, segment.stop - segment.start, stored.size
        out = {v: self._scratch(f"formed_{v}", rows, cols, torch.int8 if v else self.dtype) for v in variants}
        for slot in segment.slots:
            lo = slot.offset - segment.start
            columns = slice(lo, lo + slot.numel)
            if slot.index not in group.factored:
                offset = group.stored_offsets[slot.index]
                for v, target in out.items():
                    target[:, columns].copy_(stored.variant(v)[:, offset : offset + slot.numel])
                continue
            for piece in stored.factors[slot.index]:
                for c in range(self.num_outputs):
                    at = slice(c * A + piece.first, c * A + piece.first + piece.size)
                    fixes = piece.fixes_of(c, slot)
                    if False in out:  # formed where it is used: no copy through a work buffer
                        raw = self._form(piece, c, slot, into=out[False][at, columns])
                        if exact_raw_signs and fixes is not None:
                            _give_fixed_signs(raw, *fixes)
                    if True in out:  # the signs, through a work buffer (the fixes index its entries)
                        signs = self._scratch("formed_piece", piece.size, slot.numel, self.dtype)
                        torch.sign(raw if False in out else self._form(piece, c, slot), out=signs)
                        if fixes is not None:
                            signs.view(-1).index_copy_(0, *fixes)
                        out[True][at, columns].copy_(signs)
        self._tick("formed", t)
        return out


Terms = list[tuple[list[torch.Tensor], torch.Tensor]]


def _give_fixed_signs(raw: torch.Tensor, wrong: torch.Tensor, fixed: torch.Tensor) -> None:
    """Give the entries ``wrong`` (flat indices into ``raw``'s ``[rows, columns]``) the signs ``fixed``.

    Each keeps its magnitude (the smallest normal value where it was formed as zero), or becomes
    zero where the fixed sign is zero. A fixed entry's float64 value lies within the float32
    forming's round-off of zero, so the raw value moves by no more than that round-off.
    """
    if not wrong.numel():
        return
    rows, cols = wrong // raw.shape[1], wrong % raw.shape[1]
    values = raw[rows, cols].abs().clamp_min_(torch.finfo(raw.dtype).tiny)
    raw[rows, cols] = fixed * values


def _pieces(first: int, size: int, kept: Terms, exact: Terms) -> list[tuple[FactorBatch, FactorBatch]]:
    """A stored batch's factors as one piece, or one piece per example over its live tokens.

    Per example when `live_tokens` trims enough of the batch's padding: forming the columns again
    then multiplies only the tokens whose output gradients are non-zero (exactly the same sums).
    ``kept`` are the factors in the model's precision, ``exact`` those they were rounded from
    (the same tensors without the float64 twin); both are cut at the spans of ``exact``.
    """
    spans = [live_tokens(lefts) for lefts, _ in exact]
    if all(s is None for s in spans):
        return [(FactorBatch(first, size, kept), FactorBatch(first, size, exact))]

    def cut(terms: Terms, b: int) -> Terms:
        out = []
        for (lefts, right), span in zip(terms, spans, strict=True):
            lo, hi = span[b] if span is not None else (0, right.shape[1])
            if hi > lo:
                out.append(([x[b : b + 1, lo:hi] for x in lefts], right[b : b + 1, lo:hi]))
        return out

    return [(FactorBatch(first + b, 1, cut(kept, b)), FactorBatch(first + b, 1, cut(exact, b))) for b in range(size)]
