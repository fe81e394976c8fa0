"""Trailing padding cut from the batches the engine runs: which columns go, the order the kernels come back
in, and a model that does not attend by its mask keeps its padding."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn

from benchmark.kernels import select_parameters
from benchmark.kernels.batches import Examples
from benchmark.kernels.fast import FastKernelEngine
from benchmark.kernels.padding import by_length, mask_is_honoured, restore_order, trim_padding
from benchmark.models import PromptLogitModel
from tests.test_kernels import assert_sign_close, explicit_gradients, make_batches

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 300
COMBOS = [(False, False), (True, True), (True, False), (False, True)]


def _batch(mask: list[list[int]], **extra: torch.Tensor) -> dict[str, torch.Tensor]:
    m = torch.tensor(mask)
    ids = torch.arange(m.numel()).view(m.shape) + 5
    return {"input_ids": ids, "attention_mask": m, "token_type_ids": torch.zeros_like(m),
            "mask_pos": torch.tensor([1] * m.shape[0]), **extra}


def test_trailing_columns_no_example_attends_to_are_cut_and_nothing_else() -> None:
    batch = _batch([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    cut = trim_padding(batch)
    assert cut["input_ids"].tolist() == [[5, 6, 7], [10, 11, 12]]
    assert cut["attention_mask"].shape == cut["token_type_ids"].shape == (2, 3)
    assert torch.equal(cut["mask_pos"], batch["mask_pos"])  # not a per-token input
    full = _batch([[1, 1, 1], [1, 1, 0]])
    assert trim_padding(full) is full
    # another [B, L] input the cut would not know how to treat, an additive mask, no mask: left whole
    for kept in (_batch([[1, 1, 0], [1, 0, 0]], labels_per_token=torch.ones(2, 3)),
                 {"input_ids": torch.ones(2, 3, dtype=torch.long),
                  "attention_mask": torch.tensor([[0.0, 0.0, -1e9], [0.0, -1e9, -1e9]])},
                 {"input_ids": torch.ones(2, 3, dtype=torch.long)}):
        assert trim_padding(kept) is kept


def test_examples_are_ordered_by_length_within_their_batch_and_kernels_put_back() -> None:
    first = _batch([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    second = _batch([[1, 1], [1, 0]])
    ordered, order = by_length(Examples([first, second], [3, 2]))
    assert order is not None and order.tolist() == [1, 0, 2, 4, 3]
    assert ordered.batches[0]["attention_mask"].sum(1).tolist() == [1, 3, 4]
    assert torch.equal(ordered.batches[0]["input_ids"][0], first["input_ids"][1])
    assert ordered.batches[1]["mask_pos"].tolist() == [1, 1] and ordered.sizes == [3, 2]
    _, none_moved = by_length(Examples([_batch([[1, 0], [1, 1]])], [2]))
    assert none_moved is None
    given = torch.randn(5, 2, 4, 2, dtype=torch.float64)
    cols = torch.tensor([3, 0, 2, 1])
    computed = given[order][:, :, cols]  # what a run in the sorted orders produces
    assert torch.equal(restore_order(computed, order, cols), given)
    assert restore_order(given, None, None) is given


@pytest.fixture(scope="module")
def model() -> PromptLogitModel:
    from transformers import RobertaConfig, RobertaForMaskedLM

    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=48, type_vocab_size=1, pad_token_id=1,
                           attn_implementation="eager")
    return PromptLogitModel(RobertaForMaskedLM(config).eval(), [10, 11]).eval()


def _run(model: nn.Module, a: list, targets: dict, **overrides: int) -> tuple[dict, dict]:
    stats: dict = {}
    engine = FastKernelEngine(model, select_parameters(model), COMBOS, memory_budget=2**30, stats=stats,
                              overrides={"max_batch": 2, **overrides})
    return engine.run(a, targets), stats


@pytest.mark.parametrize("overrides", [{}, {"factors": 1, "segment_cols": 2**14, "unit_rows": 8},
                                       {"factors": 1, "segment_cols": 2**14}])  # units sized by their bytes
def test_kernels_with_padding_cut_are_those_of_the_padded_batches(model, overrides) -> None:
    """Every formula, ``a x b`` and ``a x a``, raw and factored plans: cut sub-batches of examples ordered by
    length give the padded batches' kernels, in the given order: to float32 round-off, and ``signgd`` (whose
    streamed signs of entries at round-off of zero may flip) within its round-off bound of the float64
    per-example gradients' sign kernel, as the padded run."""
    a = make_batches(VOCAB, 1, 4, [5, 4], 24, seed=1, cls=0)
    b = make_batches(VOCAB, 1, 4, [6, 3], 20, seed=2, cls=0)
    targets = {"ab": b, "aa": None}
    cut, stats = _run(model, a, targets, **overrides)
    padded, padded_stats = _run(model, a, targets, no_trim=1, **overrides)
    assert 0 < stats["tokens_run"] < 0.9 * stats["tokens_given"]
    assert "tokens_run" not in padded_stats
    assert stats["held_per_token"] > 0 and "held_per_token" not in padded_stats
    assert ("unit_rows_run" in stats) == (overrides.get("factors") == 1)
    for name in targets:
        for combo in COMBOS[:1] + COMBOS[2:]:
            scale = float(padded[name][combo].abs().max())
            assert float((cut[name][combo] - padded[name][combo]).abs().max()) <= 1e-6 * scale, (name, combo)
    assert torch.allclose(cut["aa"][(False, False)], cut["aa"][(False, False)].permute(2, 3, 0, 1), atol=1e-5)
    exact = copy.deepcopy(model).double()
    ga, gb = (explicit_gradients(exact, side, lambda name: True) for side in (a, b))
    for result in (cut, padded):
        assert_sign_close(result["ab"][(True, True)], torch.einsum("ncp,mdp->ncmd", ga.sign(), gb.sign()), ga, gb)
        assert_sign_close(result["aa"][(True, True)], torch.einsum("ncp,mdp->ncmd", ga.sign(), ga.sign()), ga, ga)


class _IgnoresMask(nn.Module):
    """Logits summed over every position, padding included: cutting padding changes them."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(input_ids)).sum(dim=1)


def test_a_model_that_does_not_attend_by_its_mask_keeps_its_padding(caplog) -> None:
    model = _IgnoresMask().eval()
    a = [{k: v for k, v in batch.items() if k != "mask_pos"} for batch in make_batches(VOCAB, 1, 4, [4], 12, 3)]
    b = [{k: v for k, v in batch.items() if k != "mask_pos"} for batch in make_batches(VOCAB, 1, 4, [3], 10, 4)]
    assert mask_is_honoured(model, [Examples(a, [4])]) is False
    with caplog.at_level(logging.WARNING, logger="benchmark.kernels.fast"):
        got, stats = _run(model, a, {"ab": b})
    assert "its batches are run padded" in caplog.text and "tokens_run" not in stats
    padded, _ = _run(model, a, {"ab": b}, no_trim=1)
    for combo in COMBOS:
        assert torch.equal(got["ab"][combo], padded["ab"][combo])
    no_padding = [{"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 3)}]
    assert mask_is_honoured(model, [Examples(no_padding, [2])]) is None
    # a model reading a position inside the padding (an index input) fails on the cut example: not honoured
    picks = [{**a[0], "pick": torch.full((4,), 11)}]
    assert mask_is_honoured(_PicksAPosition().eval(), [Examples(picks, [4])]) is False


class _PicksAPosition(_IgnoresMask):
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pick: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(input_ids)[torch.arange(input_ids.shape[0]), pick])


def test_held_bytes_grow_with_the_width_as_the_probe_fitted_them(model) -> None:
    """The line through the probe's held bytes at two widths gives a batch's held bytes at any other width
    (the records are per token, plus per-example parts): checked against a third, independent recording."""
    from benchmark.kernels.held import HeldPerWidth
    from benchmark.kernels.per_example import modules_of, record

    assert HeldPerWidth.fit((64, 6500.0), (32, 3300.0)) == HeldPerWidth(100.0, 100.0)
    assert HeldPerWidth.fit((64, 100.0), (32, 100.0)) is None and HeldPerWidth.fit((32, 9.0), (32, 8.0)) is None
    assert HeldPerWidth.fit((10, 50.0), (5, 40.0)) == HeldPerWidth(30.0, 2.0)
    stats: dict = {}
    engine = FastKernelEngine(model, select_parameters(model), [(False, False)], memory_budget=2**30, stats=stats)
    a = make_batches(VOCAB, 1, 4, [4], 24, seed=5, cls=0)
    engine.run(a, {"ab": make_batches(VOCAB, 1, 4, [3], 24, seed=6, cls=0)})
    fitted = engine.held_per_width
    assert fitted is not None and fitted.at(24) == pytest.approx(stats["held_bytes"])
    third = trim_padding({k: v[:, :9] if v.dim() == 2 else v for k, v in a[0].items()})
    third["mask_pos"] = torch.full((4,), 3)
    with torch.enable_grad(), record(modules_of(engine.slots), 4) as rec:
        for p in model.parameters():
            p.requires_grad_(True)
        model(**third)
    assert rec.held_bytes(engine.num_outputs) / 4 == pytest.approx(fitted.at(9), rel=1e-9)


def test_units_take_cut_batches_while_their_bytes_fit() -> None:
    from benchmark.kernels.units import stream_units

    widths = [2, 2, 3, 3, 5, 5, 8, 8]
    mask = torch.tensor([[1] * w + [0] * (8 - w) for w in widths])
    stream = Examples([{"input_ids": torch.ones(8, 8, dtype=torch.long), "attention_mask": mask}], [8])

    def cost(piece: dict) -> float:  # 10 bytes per example-token of the cut sub-batch
        return 10.0 * piece["attention_mask"].shape[0] * int(piece["attention_mask"].sum(1).max())

    units = stream_units(stream, 2, 2, None, (cost, 100.0))
    assert [[first for first, _ in unit] for unit in units] == [[0, 2], [4], [6]]  # 40 + 60, then 100, then 160
    by_rows = stream_units(stream, 2, 2, 8, None)
    assert [[first for first, _ in unit] for unit in by_rows] == [[0, 2], [4, 6]]
