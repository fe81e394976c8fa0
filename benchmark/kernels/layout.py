"""What the fast strategy's passes work on: tensor groups and their column segments, the stored
side of a pass (per-example gradients, and the factors of the tensors stored as layer inputs and
output gradients), the float64 twin of the model, the buffer gathering streamed rows, and where a
block goes in the kernel."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import nn

from benchmark.kernels.params import Registration, SelectedTensor
from benchmark.kernels.per_example import Slot, SparseRows, Use, modules_of
from benchmark.kernels.planner import row_parts


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
    factored: frozenset[int] = frozenset()  # slot indices stored as layer inputs and output gradients
    stored_offsets: dict[int, int] = field(default_factory=dict)  # slot index -> column of the stored gradients
    stored_cols: int = 0  # columns of the stored per-example gradients (the dense slots not factored)

    def lay_out_stored(self) -> None:
        """Columns of the stored per-example gradients: every dense slot not stored as factors, in order."""
        self.stored_offsets, at = {}, 0
        for slot in self.dense:
            if slot.index not in self.factored:
                self.stored_offsets[slot.index] = at
                at += slot.numel
        self.stored_cols = at

    def lay_out_segments(self, segment_cols: int) -> None:
        """Give the dense slots their columns and pack them, in order, into segments of at most
        ``segment_cols`` columns (a wider slot alone in one). A factored tensor wider than that is
        split into parts of its rows (`planner.row_parts`), each formed again on its own."""
        offset = 0
        segment = Segment(0, 0, [])
        for slot in self.dense:
            slot.offset = offset
            whole = slot.index in self.factored and slot.numel > segment_cols
            parts = [slot.part(rows) for rows in row_parts(tuple(slot.tensor.shape), segment_cols)] if whole else [slot]
            for part in parts:
                if segment.slots and part.offset + part.numel - segment.start > segment_cols:
                    self.segments.append(segment)
                    segment = Segment(part.offset, part.offset, [])
                segment.slots.append(part)
                segment.stop = part.offset + part.numel
            offset += slot.numel
        if segment.slots:
            self.segments.append(segment)
        self.cols = offset
        self.lay_out_stored()

    @property
    def modules(self) -> list[nn.Module]:
        """Modules to record for this group."""
        return modules_of(self.dense + self.sparse)

    @property
    def fallback(self) -> list[Slot]:
        """Dense slots computed by the autograd loop."""
        return [s for s in self.dense if s.fallback]


@dataclass
class FactorBatch:
    """A factored tensor's factors for one batch of stored examples (rows ``first:first + size`` of the chunk).

    ``terms`` has one entry per recorded call of the tensor's modules: the output gradients, one
    ``[size, T, m]`` per logit, and the inputs ``[size, T, n]``; example ``b``'s gradient for logit
    ``c`` is the sum over the calls of ``left_c[b]^T @ right[b]``. No terms: the gradients are zero.
    ``fixes`` (with the float64 twin) holds per logit the flat entries of ``[size, numel]`` whose
    formed sign differs from the float64 gradient's, and their float64 signs.
    """

    first: int
    size: int
    terms: list[tuple[list[torch.Tensor], torch.Tensor]]
    fixes: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # per logit: (entries, signs)

    def fixes_of(self, c: int, slot: Slot) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Logit ``c``'s fixes within ``slot`` (a whole tensor, or a part of its rows: `Slot.part`) as flat
        entries of ``[size, slot.numel]`` and their signs; None without fixes.

        A part's are split out where they are used and not kept: kept with the piece (allocated while the
        first streamed unit ran), they raised a 16-shot SST-2 `asym` run's peak from 6.95 to 8.39 GiB.
        """
        if not self.fixes:
            return None
        wrong, fixed = self.fixes[c]
        if slot.rows is None:
            return wrong, fixed
        whole, n = slot.tensor.numel(), slot.tensor.shape[1]
        example, column = wrong // whole, wrong % whole
        lo, hi = slot.rows[0] * n, slot.rows[1] * n
        inside = (column >= lo) & (column < hi)
        return example[inside] * slot.numel + column[inside] - lo, fixed[inside]


@dataclass
class Stored:
    """The stored side of a pass: examples ``start:stop`` of ``a``, rows ordered ``c * A + a``.

    ``dense``/``dense_sign`` hold the columns of the group's stored layout (`Group.stored_offsets`);
    ``factors`` the factored slots' `FactorBatch` list.
    """

    start: int
    stop: int
    dense: torch.Tensor | None  # raw gradients, when a formula uses them on this side
    dense_sign: torch.Tensor | None  # int8 signs, when a formula takes signs on this side
    sparse: dict[int, SparseRows]
    factors: dict[int, list[FactorBatch]] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """Examples in the chunk."""
        return self.stop - self.start

    def variant(self, sign: bool) -> torch.Tensor:
        """The stored gradients or their signs (as the plan stored them)."""
        chosen = self.dense_sign if sign else self.dense
        if chosen is None:
            raise RuntimeError(f"the plan did not store the {'signs' if sign else 'raw gradients'}")
        return chosen


@dataclass
class Twin:
    """A float64 copy of the model and of the groups' slots, for the stored (training) side.

    Signs are taken of the stored side's gradients (``asym``, ``signgd``); an entry within float32
    round-off of zero has an arbitrary sign in float32, and in ``asym`` each such flip moves the
    kernel by twice the other side's (not small) entry. Computing the stored side in float64 (it is
    the small side: the training set) fixes those signs at little cost.
    """

    model: nn.Module
    groups: dict[int, Group]
    model_dtype: torch.dtype = torch.float64

    @staticmethod
    def build(model: nn.Module, groups: list[Group]) -> Twin:
        """Copy ``model`` in float64 and map every slot and use onto the copy."""
        import copy

        twin = copy.deepcopy(model).to(torch.float64).eval()
        modules = {id(m): t for m, t in zip(model.modules(), twin.modules(), strict=True)}
        originals = [p for m in model.modules() for p in m._parameters.values() if p is not None]
        copies = [p for m in twin.modules() for p in m._parameters.values() if p is not None]
        tensors = {id(p): q for p, q in zip(originals, copies, strict=True)}

        def mapped(slot: Slot) -> Slot:
            sel = slot.selected
            regs = [Registration(r.name, modules[id(r.module)], r.attr) for r in sel.registrations]
            chosen = [Registration(r.name, modules[id(r.module)], r.attr) for r in sel.selected]
            uses = [Use(modules[id(u.module)], u.rule, u.role) for u in slot.uses]
            copy_sel = SelectedTensor(tensors[id(sel.tensor)], regs, chosen)
            return replace(slot, selected=copy_sel, uses=uses)

        mapped_groups = {}
        for group in groups:
            copy_group = Group([mapped(s) for s in group.dense], [mapped(s) for s in group.sparse], group.cols,
                               factored=group.factored)
            copy_group.lay_out_stored()
            copy_group.segments = [Segment(g.start, g.stop, [mapped(s) for s in g.slots]) for g in group.segments]
            mapped_groups[id(group)] = copy_group
        return Twin(twin, mapped_groups)

    def tensors(self) -> list[torch.Tensor]:
        """The copy's selected tensors."""
        return [s.tensor for g in self.groups.values() for s in g.dense + g.sparse]


@dataclass
class Pending:
    """Streamed gradient rows of several batches waiting for one product with the stored side."""

    work: torch.Tensor  # [capacity, columns]
    used: int = 0
    pieces: list[tuple[int, int, int]] = field(default_factory=list)  # (first example, size, first row)

    @property
    def capacity(self) -> int:
        """Rows the buffer holds."""
        return int(self.work.shape[0])


def place(
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
