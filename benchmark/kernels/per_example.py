"""Per-example, per-logit gradients assembled from each layer's activations and output gradients.

For a batch, one forward pass records, for every module that owns a selected parameter, its input
(activation) and its output tensor. For each logit c, one reverse pass of ``logits[:, c].sum()``
with respect to those outputs gives every example's output gradient at once (examples in a batch
do not interact in eval mode). Each example's parameter gradient is then a small product of the
two, the technique Opacus uses for per-sample gradients:

the rule of the module's type (`benchmark.kernels.grad_rules`: ``nn.Linear``, ``nn.LayerNorm``,
``nn.Embedding``, and any registered with ``register_grad_rule``).

A tensor used by several modules (tied weights) sums the contributions of its selected uses.

Row-sparse tensors (the word-embedding matrix, the MLM decoder weight tied to it, the decoder
bias) are never materialised densely: an example touches only the rows of its tokens and of the
label words, so their gradients are kept as (row id, row vector) entries and contracted by
joining on the row id.

Parameters used outside module types with a rule (functional uses, custom modules) are found by
a probe on the first batch (the sum of the per-example gradients must equal autograd's batch
gradient) and computed by a plain per-example autograd loop instead.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from benchmark.kernels.grad_rules import (
    EMBEDDING,
    GRAD_RULES,
    LAYER_NORM,
    LINEAR,
    Call,
    Entries,
    GradRule,
    Use,
    embedding_entries,
    factors_of,
    form_rows,
    grad_rule,
    live_tokens,
    module_kind,
    register_grad_rule,
    require_grad_rule,
    sparse_entries,
    supported_types,
    write_dense,
)
from benchmark.kernels.params import SelectedTensor
from registry import BenchError

#: Re-exported: the rules live in `benchmark.kernels.grad_rules`.
__all__ = ["EMBEDDING", "GRAD_RULES", "LAYER_NORM", "LINEAR", "Call", "Entries", "GradRule", "Use",
           "embedding_entries", "factors_of", "form_rows", "grad_rule", "live_tokens", "module_kind",
           "register_grad_rule", "require_grad_rule", "sparse_entries", "supported_types", "write_dense"]

logger = logging.getLogger(__name__)

#: A tensor with at least this many rows, used only as an embedding table or as the weight/bias of
#: a Linear layer with that many outputs, is handled as row-sparse.
SPARSE_MIN_ROWS = 8192

Batch = Mapping[str, Any]


@dataclass
class Slot:
    """One selected parameter tensor and how its per-example gradient is produced."""

    index: int
    selected: SelectedTensor
    uses: list[Use]
    sparse: bool = False
    fallback: bool = False
    offset: int = 0  # first column in its group's dense layout (dense slots)
    calls: int = 1  # recorded calls of its modules per forward pass (set by `probe`)
    rows: tuple[int, int] | None = None  # a part of a factorable tensor: its rows [r0, r1) (`part`)

    @property
    def tensor(self) -> torch.Tensor:
        """The parameter tensor."""
        return self.selected.tensor

    @property
    def numel(self) -> int:
        """Number of gradient entries (of the part's rows, for a part)."""
        if self.rows is None:
            return self.selected.tensor.numel()
        return (self.rows[1] - self.rows[0]) * self.selected.tensor.shape[1]

    def part(self, rows: tuple[int, int]) -> Slot:
        """Rows ``[r0, r1)`` of this (whole, 2-D) tensor, at their columns of the group's layout: the
        columns a factored tensor's gradient ``left^T @ right`` gives with ``left[..., r0:r1]``."""
        if self.rows is not None or self.selected.tensor.dim() != 2:
            raise ValueError(f"only a whole 2-D tensor is split by rows, not {self.name}")
        return replace(self, rows=rows, offset=self.offset + rows[0] * self.selected.tensor.shape[1])

    @property
    def width(self) -> int:
        """Entries per row (row-sparse slots): the embedding dimension, or 1 for a bias vector."""
        shape = self.selected.tensor.shape
        return 1 if len(shape) == 1 else math.prod(shape[1:])

    @property
    def name(self) -> str:
        """Reported name."""
        return self.selected.name

    @property
    def factorable(self) -> bool:
        """Whether every use's rule gives this (2-D, dense) tensor's gradient as per-token factors."""
        return (
            not self.sparse
            and not self.fallback
            and self.selected.tensor.dim() == 2
            and all(u.rule.factors is not None and u.role in u.rule.factor_roles for u in self.uses)
        )


def plan_slots(selection: list[SelectedTensor]) -> list[Slot]:
    """Decide, per selected tensor, its supported uses and whether it is row-sparse or needs fallback."""
    slots: list[Slot] = []
    for index, sel in enumerate(selection):
        uses: list[Use] = []
        unsupported: list[str] = []
        for reg in sel.selected:
            rule = grad_rule(reg.module)
            if rule is not None and reg.attr in rule.roles:
                uses.append(Use(reg.module, rule, reg.attr))
            else:
                unsupported.append(f"{reg.name} ({type(reg.module).__name__})")
        if unsupported and not sel.full and not uses:
            raise BenchError(
                f"parameter '{sel.name}' is shared by several modules and only some of its uses are selected, "
                f"but the selected use {unsupported[0]} has no per-example gradient rule (rules exist for "
                f"{supported_types()}), so its gradient cannot be separated per use; select all uses of this "
                "parameter or none"
            )
        slot = Slot(index, sel, uses, fallback=not uses)
        shape = tuple(sel.tensor.shape)
        if uses and len(shape) in (1, 2) and shape[0] >= SPARSE_MIN_ROWS:
            slot.sparse = all(u.rule.sparse is not None and u.rule.row_sparse(u.module, u.role, shape) for u in uses)
        slots.append(slot)
    return slots


class Recorder:
    """Forward hooks recording every call of the given modules.

    An embedding looked up once for the whole batch and broadcast (BERT's position embeddings,
    called with ``position_ids`` of shape ``[1, L]``) is expanded to the batch size by the hook,
    so that its output gradient is still per example; the values the model sees are unchanged.
    """

    def __init__(self, batch: int) -> None:
        self.batch = batch
        self.calls: dict[int, list[Call]] = {}
        self.order: list[Call] = []

    def hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        """Forward hook: record the call if its output takes part in autograd."""
        if not isinstance(output, torch.Tensor) or not args or not isinstance(args[0], torch.Tensor):
            return None
        if not output.requires_grad:
            return None
        inp = args[0]
        replaced = None
        if isinstance(module, nn.Embedding) and inp.dim() >= 1 and inp.shape[0] == 1 and self.batch > 1:
            inp = inp.expand(self.batch, *inp.shape[1:])
            output = replaced = output.expand(self.batch, *output.shape[1:])
        call = Call(inp.detach(), output, key=len(self.order))
        self.calls.setdefault(id(module), []).append(call)
        self.order.append(call)
        return replaced

    def outputs(self) -> list[torch.Tensor]:
        """Recorded outputs, in call order."""
        return [call.output for call in self.order if call.output is not None]

    def release_outputs(self) -> None:
        """Let the recorded outputs go (their gradients, keyed by `Call.key`, are all that is still needed)."""
        for call in self.order:
            call.output = None

    def drop_caches(self) -> None:
        """Let go of what the rules cached per call (a LayerNorm's normalized input, as big as its input).

        A held batch's cache would otherwise grow through a unit's segments, beside the held records."""
        for call in self.order:
            call.cache.clear()

    def held_bytes(self, num_outputs: int) -> int:
        """Bytes a batch keeps while it is held in a streamed unit (`held.HeldPool`): its recorded inputs
        (once each: an output that is another call's input stays as that input) and ``num_outputs``
        gradients of every output; the outputs themselves are let go (`release_outputs`)."""
        outputs = sum(call.output.numel() * call.output.element_size() for call in self.order
                      if call.output is not None)
        return self._unique_bytes(call.input for call in self.order) + num_outputs * outputs

    def captured_bytes(self) -> int:
        """Bytes of the recorded inputs and outputs (an activation-memory estimate)."""
        return self._unique_bytes(t for call in self.order for t in (call.input, call.output))

    @staticmethod
    def _unique_bytes(tensors: Iterable[torch.Tensor | None]) -> int:
        seen: set[int] = set()
        total = 0
        for t in tensors:
            if t is not None and t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
        return total


@contextmanager
def record(modules: Iterable[nn.Module], batch: int) -> Iterator[Recorder]:
    """Record the calls of ``modules`` inside the block (a forward pass over ``batch`` examples)."""
    recorder = Recorder(batch)
    handles = []
    seen: set[int] = set()
    for module in modules:
        if id(module) not in seen:
            seen.add(id(module))
            handles.append(module.register_forward_hook(recorder.hook))
    try:
        yield recorder
    finally:
        for handle in handles:
            handle.remove()


def modules_of(slots: Iterable[Slot]) -> list[nn.Module]:
    """Unique modules behind the uses of ``slots``."""
    found: dict[int, nn.Module] = {}
    for slot in slots:
        for use in slot.uses:
            found.setdefault(id(use.module), use.module)
    return list(found.values())


@dataclass
class SparseRows:
    """Aggregated row-sparse gradients: one entry per (row of the kernel side, table row id), sorted by id."""

    ids: torch.Tensor  # [n] table row id
    rows: torch.Tensor  # [n] kernel-side row (example-logit)
    values: torch.Tensor  # [n, width]
    signs: torch.Tensor | None = None

    @staticmethod
    def build(rows: torch.Tensor, ids: torch.Tensor, values: torch.Tensor, num_rows: int) -> SparseRows:
        """Sum duplicate (row, id) entries and sort by id."""
        if rows.numel() == 0:
            return SparseRows(ids, rows, values)
        key = ids * num_rows + rows
        unique, inverse = torch.unique(key, sorted=True, return_inverse=True)
        summed = values.new_zeros(unique.numel(), values.shape[1]).index_add_(0, inverse, values)
        return SparseRows(unique // num_rows, unique % num_rows, summed)

    @staticmethod
    def concat(parts: list[SparseRows], num_rows: int) -> SparseRows:
        """Merge parts (re-aggregating duplicates)."""
        ids = torch.cat([p.ids for p in parts])
        rows = torch.cat([p.rows for p in parts])
        values = torch.cat([p.values for p in parts])
        return SparseRows.build(rows, ids, values, num_rows)

    def variant(self, sign: bool) -> torch.Tensor:
        """The values, or their signs (cached)."""
        if not sign:
            return self.values
        if self.signs is None:
            self.signs = torch.sign(self.values)
        return self.signs


def sparse_join(
    stored: SparseRows,
    stream: SparseRows,
    out: dict[tuple[bool, bool], torch.Tensor],
    max_pairs: int,
) -> None:
    """``out[(s, t)][i, j] += sum_id <v_s(stored row i, id), v_t(stream row j, id)>`` (s, t: sign or not).

    Pairs of entries with equal row id are enumerated (chunked to ``max_pairs`` pairs) and
    their dot products scattered into the float64 blocks in ``out``.
    """
    if stored.ids.numel() == 0 or stream.ids.numel() == 0:
        return
    lo = torch.searchsorted(stored.ids, stream.ids)
    hi = torch.searchsorted(stored.ids, stream.ids, right=True)
    counts = hi - lo
    hit = counts > 0
    if not bool(hit.any()):
        return
    lo, counts = lo[hit], counts[hit]
    stream_index = hit.nonzero().squeeze(1)
    ends = torch.cumsum(counts, 0)
    width = stored.values.shape[1]
    step = max(1, max_pairs // max(1, width))
    start_entry = 0
    while start_entry < counts.numel():
        base = int(ends[start_entry - 1]) if start_entry else 0
        stop_entry = int(torch.searchsorted(ends, torch.tensor(base + step, device=ends.device), right=True))
        stop_entry = max(stop_entry, start_entry + 1)
        c = counts[start_entry:stop_entry]
        owner = torch.repeat_interleave(torch.arange(c.numel(), device=c.device), c)
        first = torch.cumsum(c, 0) - c
        within = torch.arange(int(c.sum()), device=c.device) - first[owner]
        stored_idx = lo[start_entry:stop_entry][owner] + within
        stream_idx = stream_index[start_entry:stop_entry][owner]
        out_rows = stored.rows[stored_idx]
        out_cols = stream.rows[stream_idx]
        for (s_sign, t_sign), block in out.items():
            dots = (stored.variant(s_sign)[stored_idx] * stream.variant(t_sign)[stream_idx]).sum(1)
            block.index_put_((out_rows, out_cols), dots.to(block.dtype), accumulate=True)
        start_entry = stop_entry


def view_key(tensor: torch.Tensor) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """Where a view lies (its memory, shape and strides): equal for the same view of the same memory, as
    a query, key and value projection's shared input (a view object's id is reused once it is freed)."""
    return tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride())


def slice_batch(batch: Batch, start: int, stop: int) -> dict[str, Any]:
    """Examples ``start:stop`` of a batch (tensors with a leading batch dimension are sliced)."""
    size = batch_size(batch)
    return {
        k: (v[start:stop] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == size else v)
        for k, v in batch.items()
    }


def batch_size(batch: Batch) -> int:
    """Number of examples in a batch (leading dimension of ``input_ids`` or its first tensor)."""
    tensor = batch.get("input_ids")
    if not isinstance(tensor, torch.Tensor):
        tensor = next((v for v in batch.values() if isinstance(v, torch.Tensor) and v.dim() > 0), None)
    if tensor is None:
        raise BenchError("a kernel batch must hold tensors (input_ids, attention_mask, ...)")
    return int(tensor.shape[0])


def _largest_magnitude(x: torch.Tensor) -> float:
    """max |x| without a temporary of x's size (0 for an empty tensor)."""
    if not x.numel():
        return 0.0
    lo, hi = torch.aminmax(x)
    return max(-float(lo), float(hi))


def _by_size(slots: list[Slot], limit: int) -> Iterator[list[Slot]]:
    part: list[Slot] = []
    used = 0
    for slot in slots:
        if part and used + slot.numel > limit:
            yield part
            part, used = [], 0
        part.append(slot)
        used += slot.numel
    if part:
        yield part


def fallback_gradients(model: nn.Module, batch: Batch, slots: list[Slot], num_outputs: int) -> torch.Tensor:
    """Per-example gradients of ``slots`` by a plain autograd loop: ``[C, B, sum numel]``."""
    size = batch_size(batch)
    tensors = [slot.tensor for slot in slots]
    total = sum(slot.numel for slot in slots)
    out = tensors[0].new_zeros(num_outputs, size, total)
    for b in range(size):
        logits = model(**slice_batch(batch, b, b + 1))
        for c in range(num_outputs):
            grads = torch.autograd.grad(logits[0, c], tensors, retain_graph=c < num_outputs - 1, allow_unused=True)
            offset = 0
            for slot, grad in zip(slots, grads, strict=True):
                if grad is not None:
                    out[c, b, offset : offset + slot.numel] = grad.reshape(-1)
                offset += slot.numel
    return out


@dataclass(frozen=True)
class Captured:
    """Memory of one example's recorded calls, as the probe measured it."""

    recorded: int  # its layer inputs and outputs (an activation-memory estimate)
    held: int  # what a streamed example keeps in a unit: its inputs and C output gradients (outputs let go)


def probe(
    model: nn.Module, batch: Batch, slots: list[Slot], *, check: bool = True
) -> tuple[list[Slot], Captured, int]:
    """One forward pass on a small batch: (slots to compute by fallback, memory per example, C).

    A slot whose module calls do not carry the batch as leading dimension cannot be assembled per
    example and always falls back. With ``check``, for every fully selected tensor the sum over
    examples and logits of the assembled per-example gradients must also equal autograd's
    gradient of the summed logits; a tensor with a use the hooks do not see (a functional call, an
    in-place change of a module output, a custom module) fails and is computed by
    `fallback_gradients` instead.
    """
    size = batch_size(batch)
    with record(modules_of(slots), size) as rec:
        logits = model(**batch)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise BenchError(f"the logit model must return logits [B, C], got {shape}")
    num_outputs = int(logits.shape[1])
    captured = rec.captured_bytes() // max(1, size)
    held = rec.held_bytes(num_outputs) // max(1, size)
    for slot in slots:
        slot.calls = max(1, sum(len(rec.calls.get(id(use.module), [])) for use in slot.uses))
    failed: list[Slot] = [
        slot
        for slot in slots
        if not slot.fallback
        and any(
            call.input.dim() == 0 or call.input.shape[0] != size or call.output is None or call.output.shape[0] != size
            for use in slot.uses
            for call in rec.calls.get(id(use.module), [])
        )
    ]
    for slot in failed:
        if not slot.selected.full:
            raise BenchError(
                f"parameter '{slot.name}' is used without a per-example batch dimension and only some of its "
                "uses are selected; select all uses of this parameter or none"
            )
    checked = [s for s in slots if s.selected.full and not s.fallback and s not in failed] if check else []
    if not checked:
        return failed, Captured(captured, held), num_outputs
    total = logits.sum()
    outputs = rec.outputs()
    grad_of: dict[Any, torch.Tensor | None] = {}
    results: list[tuple[Slot, float, float]] = []
    for k, part in enumerate(_by_size(checked, 2**26)):  # autograd's batch gradients, tens of millions at a time
        # the first reverse pass also gives the output gradients the rules assemble from (one pass fewer)
        wrt = [s.tensor for s in part] + (outputs if k == 0 else [])
        got = torch.autograd.grad(total, wrt, retain_graph=True, allow_unused=True)
        auto = got[: len(part)]
        if k == 0:
            grad_of = {call.key: g for call, g in zip(rec.order, got[len(part) :], strict=True)}
        for slot, reference in zip(part, auto, strict=True):
            assembled = torch.zeros_like(slot.tensor)
            flat = assembled.reshape(-1)
            for use in slot.uses:
                for call in rec.calls.get(id(use.module), []):
                    go = grad_of.get(call.key)
                    if go is None:
                        continue
                    if slot.sparse:
                        _, ids, values = sparse_entries(use, call, go, size)
                        assembled.reshape(slot.tensor.shape[0], -1).index_add_(0, ids, values)
                    else:
                        per_example = slot.tensor.new_zeros(size, slot.numel)
                        write_dense(use, call, go, per_example, first=True)
                        flat += per_example.sum(0)
            ref = reference if reference is not None else torch.zeros_like(slot.tensor)
            err = float(assembled.sub_(ref).abs_().max()) if ref.numel() else 0.0
            results.append((slot, err, _largest_magnitude(ref)))
    scale = max((largest for _, _, largest in results), default=0.0)
    for slot, err, largest in results:
        if not math.isfinite(err) or err > 1e-3 * largest + 1e-5 * scale + 1e-30:
            failed.append(slot)
    return failed, Captured(captured, held), num_outputs
