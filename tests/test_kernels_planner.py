"""The memory planner alone: a pure function of sizes (no model)."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math

import pytest

from benchmark.kernels.planner import MAX_SEGMENT, MIN_WORK_BYTES, Request, TensorSize, plan, signs_from_raw

SGD, SIGNGD = ((False, False),), ((True, True),)
ASYM = ((True, False), (False, True))
MiB = 2**20


def _request(combos=SGD, budget=1024 * MiB, n_a=8, targets=(16,), tensors=None, **extra) -> Request:
    tensors = tensors or tuple(TensorSize(1_000_000) for _ in range(6))
    return Request(
        tensors=tensors,
        n_a=n_a,
        targets=targets,
        batch_sizes=(4, 4, 8, 8),
        num_outputs=2,
        combos=combos,
        budget=budget,
        captured=100_000,
        **extra,
    )


def _store_budget(request: Request) -> float:
    kernels = sum(
        request.n_a * 2 * (t if t is not None else request.n_a) * 2 * 8 * len(request.combos) for t in request.targets
    )
    return 0.45 * max(request.budget - kernels, MIN_WORK_BYTES)


def test_everything_fits_in_one_pass_and_the_request_is_untouched() -> None:
    request = _request()
    before = copy.deepcopy(request)
    chosen = plan(request)
    assert request == before
    assert chosen.groups == (tuple(range(6)),) and chosen.chunk == 8 and chosen.passes == 1
    assert (chosen.store_raw, chosen.store_sign) == (True, False)
    assert chosen.representation == "per-example float gradients"
    assert chosen.kernel_bytes == 8 * 2 * 16 * 2 * 8
    assert chosen.store_budget == pytest.approx(_store_budget(request))
    assert plan(request) == chosen  # deterministic


@pytest.mark.parametrize(
    ("combos", "targets", "raw", "sign", "per_entry"),
    [
        (SGD, (16,), True, False, 4),
        (SIGNGD, (16,), False, True, 1),
        (ASYM, (16,), True, True, 5),
        (((True, False),), (16,), False, True, 1),  # sign on the stored side only
        (((True, False),), (None,), True, True, 5),  # a x a: the stored side is also the other side
        (((False, True),), (16,), True, False, 4),
    ],
)
def test_stored_representation_follows_the_formulas(combos, targets, raw, sign, per_entry) -> None:
    # a budget that holds 3 training examples' raw gradients (2 logits x 6M entries x 4 bytes each)
    budget = int(3 * 2 * 6_000_000 * 4 / 0.45) + 8 * 2 * 16 * 2 * 8 * len(combos) + 2**20
    request = _request(combos, budget=budget, targets=targets, overrides={"group_slots": 6})
    chosen = plan(request)
    assert (chosen.store_raw, chosen.store_sign) == (raw, sign)
    expected_chunk = min(8, int(_store_budget(request) // (2 * 6_000_000 * per_entry)))
    assert chosen.chunk == expected_chunk and chosen.passes == math.ceil(8 / expected_chunk)


def test_sign_formulas_need_no_more_passes_than_sgd() -> None:
    for budget in (100 * MiB, 250 * MiB, 400 * MiB, 1024 * MiB):
        sgd = plan(_request(SGD, budget=budget))
        assert plan(_request(SIGNGD, budget=budget)).passes <= sgd.passes
    # and at 250 MiB sgd is split while signgd (a quarter of the bytes) is not
    assert plan(_request(SGD, budget=250 * MiB)).passes > 1 == plan(_request(SIGNGD, budget=250 * MiB)).passes


def test_tensor_groups_when_every_tensor_fits_for_all_examples() -> None:
    request = _request(budget=300 * MiB)  # 8 examples x 2 logits x 6M entries x 4 B = 384 MB do not fit
    chosen = plan(request)
    flat = [i for group in chosen.groups for i in group]
    assert flat == list(range(6)) and len(chosen.groups) > 1  # every tensor once, in model order
    assert chosen.chunk == 8 and chosen.passes == len(chosen.groups)
    for group in chosen.groups:  # each group's stored side fits its share of the budget
        assert len(group) * 8 * 2 * 1_000_000 * 4 <= chosen.store_budget


def test_example_chunks_when_one_tensor_is_too_big_for_all_examples() -> None:
    tensors = (TensorSize(20_000_000), TensorSize(1_000))
    chosen = plan(_request(budget=500 * MiB, tensors=tensors))  # 8 x 2 x 20M x 4 B = 1.28 GB
    per_example = 2 * 20_001_000 * 4
    assert chosen.groups == ((0, 1),)
    assert chosen.chunk == int(chosen.store_budget // per_example)
    assert chosen.passes == math.ceil(8 / chosen.chunk)


def test_tiny_budget_is_raised_with_a_note_and_overrides_win() -> None:
    chosen = plan(_request(budget=MiB))
    assert "working with 64 MiB" in chosen.note and chosen.store_budget == pytest.approx(0.45 * MIN_WORK_BYTES)
    forced = plan(_request(overrides={"chunk": 3, "max_batch": 2, "segment_cols": 5000, "group_slots": 4}))
    assert (forced.chunk, forced.max_batch, forced.segment_cols) == (3, 2, 5000)
    assert forced.groups == ((0, 1, 2, 3), (4, 5)) and forced.passes == 2 * 3


def test_sparse_tensors_and_batches() -> None:
    tensors = (TensorSize(50_000 * 64, sparse=True, width=64), TensorSize(100_000))
    chosen = plan(_request(tensors=tensors, longest=32))
    assert chosen.passes == 1
    # the largest batch keeps activations within their share and the widest dense tensor's workspace
    assert chosen.max_batch == min(
        int(chosen.act_budget // (100_000 * 4)), int(chosen.work_budget // (2 * 100_000 * 4))
    )


def test_bad_request() -> None:
    with pytest.raises(ValueError, match="at least one training example"):
        plan(_request(n_a=0))


def test_float64_model_copy_and_store_scratch_are_counted() -> None:
    plain = plan(_request(ASYM, budget=1024 * MiB))
    reserved = plan(_request(ASYM, budget=1024 * MiB, reserved=500 * MiB))
    assert reserved.store_budget == pytest.approx(plain.store_budget - 0.45 * 500 * MiB)
    assert reserved.passes >= plain.passes
    # a stored batch passes through a float64 [batch, segment columns] buffer: the batch fits the workspace
    scratch = plan(_request(ASYM, budget=1024 * MiB, scratch_itemsize=8))
    widest_group = min(max(len(g) for g in scratch.groups) * 1_000_000, MAX_SEGMENT)
    assert scratch.max_batch == max(1, min(plain.max_batch, int(scratch.work_budget // (8 * widest_group))))
    assert scratch.max_batch * 8 * widest_group <= scratch.work_budget or scratch.max_batch == 1


def _roberta_base_tensors(layers: int = 12, hidden: int = 768, inner: int = 3072) -> tuple[TensorSize, ...]:
    """The dense tensors of a roberta-base-shaped encoder, in model order (weights as per-token factors)."""
    def linear(out: int, inp: int) -> list[TensorSize]:
        return [TensorSize(out * inp, factor_shape=(out, inp)), TensorSize(out)]

    norm = [TensorSize(hidden), TensorSize(hidden)]
    tensors: list[TensorSize] = []
    for _ in range(layers):
        for _ in range(4):  # query, key, value, attention output
            tensors += linear(hidden, hidden)
        tensors += norm + linear(inner, hidden) + linear(hidden, inner) + norm
    return tuple(tensors)


def _factor_bytes(request: Request, tensor: TensorSize) -> int:
    m, n = tensor.factor_shape  # type: ignore[misc]
    return tensor.calls * request.longest * (n + request.num_outputs * m) * 4


def test_factored_training_side_when_raw_gradients_need_several_passes() -> None:
    """16 x 32 ``sgd`` on the roberta-base shape under 4 GiB: six passes as raw gradients, one as factors."""
    tensors = _roberta_base_tensors()
    request = _request(budget=4 * 2**30, n_a=16, targets=(32, None), tensors=tensors, longest=64)
    raw = plan(_request(budget=4 * 2**30, n_a=16, targets=(32, None), longest=64,
                        tensors=tuple(TensorSize(t.numel) for t in tensors)))
    chosen = plan(request)
    assert raw.passes > 2 and not raw.factored
    assert chosen.passes == 1 and len(chosen.groups) == 1
    weights = tuple(i for i, t in enumerate(tensors) if t.factor_shape is not None)
    assert chosen.factored == weights
    assert "72 weight matrices as layer inputs + output gradients" in chosen.representation
    stored = sum(16 * (_factor_bytes(request, tensors[i]) if i in weights else 2 * 4 * tensors[i].numel)
                 for i in range(len(tensors)))
    assert stored <= chosen.store_budget
    # segments of a third of a feed-forward matrix (its 3,072 rows formed in three parts); the streamed unit, one
    # segment's formed stored columns and the stored side fit in the budget together
    assert chosen.segment_cols == 1024 * 768
    assert _streaming_bytes(request, chosen, stored, chosen.unit_rows // 2) <= request.budget - _kernel_bytes(request)


def test_factors_only_when_they_save_passes_and_overrides_decide() -> None:
    tensors = _roberta_base_tensors(layers=1, hidden=64, inner=256)
    fits = _request(budget=1024 * MiB, n_a=4, tensors=tensors, longest=32)
    assert plan(fits).passes == 1 and not plan(fits).factored  # raw gradients fit: nothing to form again
    forced = plan(_request(budget=1024 * MiB, n_a=4, tensors=tensors, longest=32, overrides={"factors": 1}))
    assert forced.factored and forced.passes == 1
    # a token-long factor bigger than the gradient (long sequences, few outputs) is never chosen
    long = plan(_request(budget=1024 * MiB, n_a=4, tensors=tensors, longest=4096, overrides={"factors": 1}))
    assert not long.factored
    tight = _request(budget=4 * 2**30, n_a=16, targets=(32,), tensors=_roberta_base_tensors(), longest=64)
    assert plan(dataclasses.replace(tight, overrides={"factors": 0})).factored == ()


def test_factors_are_kept_only_when_their_estimated_work_is_smaller() -> None:
    """Fewer passes are not enough: forming the stored columns again once per streamed unit counts too.

    32 x 1,064 ``sgd`` with 1,000 MiB of recorded activations per example under 24 GiB: the streamed
    units are a few examples, so forming the factored columns again for every unit costs more than
    the one extra pass of the raw gradients; with ordinary activations the factors win, and with the
    float64 model copy (all formulas) too, in one pass.
    """
    from benchmark.kernels.planner import _cost

    common = dict(n_a=32, targets=(1064, None), tensors=_roberta_base_tensors(), longest=64)
    heavy = dataclasses.replace(_request(SGD, budget=24 * 2**30, **common), captured=1000 * MiB, batch_sizes=(16,) * 4)
    raw, factored = (plan(dataclasses.replace(heavy, overrides={"factors": f})) for f in (0, 1))
    assert factored.passes < raw.passes and _cost(heavy, factored) > _cost(heavy, raw)
    assert plan(heavy).factored == ()
    every = SGD + SIGNGD + ASYM
    signs = dataclasses.replace(_request(every, budget=int(8.5 * 2**30), reserved=2**30, scratch_itemsize=8, **common),
                                captured=2 * 42 * MiB, batch_sizes=(16,) * 4)
    chosen, raw_signs = plan(signs), plan(dataclasses.replace(signs, overrides={"factors": 0}))
    assert chosen.factored and chosen.passes == 1 < raw_signs.passes
    assert _cost(signs, chosen) < _cost(signs, raw_signs)


def test_streamed_units_are_sized_from_the_measured_held_bytes() -> None:
    """A unit holds each streamed example's inputs, outputs and output gradients as the probe measured them (the
    streamed side runs the model itself: the float64 copy's doubled activations do not count there), and takes
    all the memory the rest of the streaming leaves: one example more would not fit."""
    common = dict(n_a=32, targets=(1064,), tensors=_roberta_base_tensors(), longest=64, overrides={"factors": 1})
    base = dataclasses.replace(_request(SGD, budget=8 * 2**30, **common), captured=2 * 42 * MiB,
                               batch_sizes=(16,) * 4)
    estimated = plan(base)  # from the recorded bytes: 2 * 84 MiB per example at C = 2
    request = dataclasses.replace(base, held=84 * MiB)
    measured = plan(request)
    assert measured.unit_rows > estimated.unit_rows
    stored = 32 * sum(_factor_or_dense(base, t) for t in base.tensors)
    avail = request.budget - _kernel_bytes(request)
    examples = measured.unit_rows // 2
    assert 2 * measured.max_batch < measured.unit_rows < 2 * 128
    assert _streaming_bytes(request, measured, stored, examples) <= avail < _streaming_bytes(
        request, measured, stored, examples + 1)


def test_asym_takes_the_stored_signs_from_the_formed_raw_columns() -> None:
    """``asym`` forms the stored raw columns (its flip uses them) and takes their signs inside the products: one
    segment's formed columns are float32 only, as for ``sgd``, and the unit takes the memory int8 copies would.
    The integer sign x sign product (``signgd``) still needs int8 signs formed."""
    assert signs_from_raw(ASYM, store_raw=True) and signs_from_raw(((True, False),), store_raw=True)
    assert not signs_from_raw(ASYM + SIGNGD, store_raw=True)  # int8 x int8
    assert not signs_from_raw(SGD, store_raw=True)  # no signs on the stored side
    assert not signs_from_raw(((True, False),), store_raw=False)  # no raw gradients to take them from
    common = dict(n_a=32, targets=(1064,), tensors=_roberta_base_tensors(), longest=64, overrides={"factors": 1})
    request = dataclasses.replace(_request(ASYM, budget=8 * 2**30, **common), captured=2 * 42 * MiB,
                                  batch_sizes=(16,) * 4, held=84 * MiB)
    chosen = plan(request)
    assert chosen.store_raw and chosen.store_sign
    stored = 32 * sum(_factor_or_dense(request, t) for t in request.tensors)
    examples = chosen.unit_rows // 2
    avail = request.budget - _kernel_bytes(request)
    assert _streaming_bytes(request, chosen, stored, examples) <= avail < _streaming_bytes(
        request, chosen, stored, examples + 1)


def test_a_factored_store_counts_its_sign_fix_buffers() -> None:
    """With the float64 model copy, a factored store forms each tensor in float64 and in float32 and compares
    their signs through a float32 copy of the float64 signs and a bool mask (17 bytes per entry of a [batch,
    widest tensor] buffer): the store's batch fits the workspace with them, and a unit leaves them room."""
    common = dict(n_a=32, targets=(1064,), tensors=_roberta_base_tensors(), longest=64, overrides={"factors": 1})
    per_entry, widest = 8 + 4 + 4 + 1, 3072 * 768
    for budget in (8 * 2**30, 6 * 2**30):
        request = dataclasses.replace(_request(ASYM, budget=budget, scratch_itemsize=8, **common),
                                      captured=2 * 42 * MiB, batch_sizes=(16,) * 4, held=84 * MiB)
        chosen = plan(request)
        assert chosen.max_batch * widest * per_entry <= chosen.work_budget or chosen.max_batch == 1
        scratch = chosen.max_batch * widest * per_entry
        stored = 32 * sum(_factor_or_dense(request, t) for t in request.tensors)
        examples = chosen.unit_rows // 2
        avail = request.budget - _kernel_bytes(request)
        assert _streaming_bytes(request, chosen, stored, examples) + scratch <= avail < _streaming_bytes(
            request, chosen, stored, examples + 1) + scratch


def _kernel_bytes(r: Request) -> int:
    return sum(r.n_a * 2 * (t if t is not None else r.n_a) * 2 * 8 * len(r.combos) for t in r.targets)


def _streaming_bytes(r: Request, p, stored: float, examples: int) -> float:
    """What streaming a factored plan holds at once, counted independently of the planner: the stored side, one
    segment of its formed float32 columns, ``examples`` held examples with C float32 rows of a segment each, and
    the in-flight batch's graph (three times its recorded bytes) and its own held tensors, and 6% of the budget
    for the allocator."""
    held = r.held or r.captured * 2
    graph = p.max_batch * (3 * min(r.captured, held) + held)
    formed = 2 * r.n_a * p.segment_cols * 4
    return stored + formed + examples * (held + 2 * p.segment_cols * 4) + graph + 0.06 * (r.budget - _kernel_bytes(r))


def _factor_or_dense(r: Request, t: TensorSize) -> float:
    from benchmark.kernels.planner import _dense_bytes, _factor_bytes

    return min(_factor_bytes(r, t), _dense_bytes(r, t))


def test_row_parts_split_a_tensor_into_the_fewest_near_equal_parts() -> None:
    from benchmark.kernels.planner import row_parts

    assert row_parts((3072, 768), 2**20) == [(0, 1024), (1024, 2048), (2048, 3072)]  # 786,432 columns each
    assert row_parts((768, 768), 2**20) == [(0, 768)]  # fits whole
    assert row_parts((3, 4), 6) == [(0, 2), (2, 3)]
    assert row_parts((4, 100), 50) == [(0, 1), (1, 2), (2, 3), (3, 4)]  # a row wider than the columns: one row each
    for shape, cols in (((3072, 768), 2**20), ((777, 13), 1000), ((5, 5), 1)):
        parts = row_parts(shape, cols)
        assert parts[0][0] == 0 and parts[-1][1] == shape[0]
        assert all(a[1] == b[0] for a, b in itertools.pairwise(parts))
        assert all((r1 - r0) * shape[1] <= max(cols, shape[1]) for r0, r1 in parts)
