"""A float32 kernel is within 1e-6 relative of the float64 kernel, whatever the size, budget and plan.

The model is wide enough (~0.5M dense gradient columns) for a float32 matrix product over the
full rows to be ~2e-5 off; the engine's products accumulate in float64 (`products.accumulate`).
"""

from __future__ import annotations

import copy

import pytest
import torch

from benchmark.kernels import empirical_ntks, products, select_parameters
from benchmark.kernels.factored import _give_fixed_signs
from benchmark.kernels.fast import FastKernelEngine
from benchmark.kernels.products import accumulate, accumulate_signed, gram, product
from benchmark.models import PromptLogitModel
from tests.test_kernels import assert_sign_close, explicit_gradients, make_batches

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 2000
SGD = (False, False)


@pytest.fixture(scope="module")
def models() -> tuple[PromptLogitModel, PromptLogitModel]:
    """(float32, float64) copies of one random 1-layer, 128-wide RoBERTa masked LM (484K parameters)."""
    from transformers import RobertaConfig, RobertaForMaskedLM

    torch.manual_seed(0)
    config = RobertaConfig(
        vocab_size=VOCAB,
        hidden_size=128,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=512,
        max_position_embeddings=80,
        type_vocab_size=1,
        pad_token_id=1,
        attn_implementation="eager",
    )
    mlm = RobertaForMaskedLM(config).eval()
    return PromptLogitModel(mlm, [10, 11]).eval(), PromptLogitModel(copy.deepcopy(mlm).double(), [10, 11]).eval()


def _sides(n_a: int, n_b: int, seed: int) -> tuple[list[dict], list[dict]]:
    a = make_batches(VOCAB, 1, 4, [n_a - n_a // 2, n_a // 2] if n_a > 1 else [1], 32, seed, 0)
    b = make_batches(VOCAB, 1, 4, [n_b - n_b // 3, n_b // 3] if n_b > 2 else [n_b], 30, seed + 1, 0)
    return a, b


def _relative(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max())


@pytest.mark.parametrize(("n_a", "n_b"), [(1, 2), (4, 6), (9, 5)])
def test_float32_kernel_within_1e6_of_float64_for_every_plan(models, n_a, n_b) -> None:
    m32, m64 = models
    a, b = _sides(n_a, n_b, seed=n_a)
    targets = {"ab": b, "aa": None}
    exact = empirical_ntks(m64, a, targets, formulas=["sgd"], progress=False)
    plans = [
        {},  # one pass, one segment, rows gathered across batches
        {"segment_cols": 2**16},  # several segments per pass
        {"segment_cols": 2**19, "no_gather": 1},  # one segment, one product per batch
        {"group_slots": 3},  # one pass per group of three tensors
        {"chunk": 1, "max_batch": 1},  # one pass per training example
        {"chunk": 2, "group_slots": 5, "gather_rows": 4},
        # the training side's weight matrices kept as layer inputs and output gradients
        {"factors": 1},
        {"factors": 1, "segment_cols": 2**16, "max_batch": 1},
        {"factors": 1, "chunk": 2, "no_gather": 1},
        {"factors": 1, "group_slots": 4, "gather_rows": 4},
        {"factors": 1, "segment_cols": 2**16, "unit_rows": 12, "max_batch": 2},  # streamed batches held in units
    ]
    passes = set()
    for overrides in plans:
        stats: dict = {}
        engine = FastKernelEngine(
            m32, select_parameters(m32), [SGD], memory_budget=2**30, overrides=overrides, stats=stats
        )
        got = engine.run(a, targets)
        passes.add(stats["passes"])
        assert (stats["factored"] > 0) == ("factors" in overrides), overrides
        for name in targets:
            err = _relative(got[name][SGD], exact[name]["sgd"])
            assert err <= 1e-6, f"{overrides} {name}: relative error {err:.2e}"
    assert len(passes) >= 3  # the plans really differ
    for budget in ("64MiB", "1GiB"):  # budgets through the public entry point
        stats = {}
        got = empirical_ntks(m32, a, targets, formulas=["sgd"], memory_budget=budget, progress=False, stats=stats)
        for name in targets:
            assert _relative(got[name]["sgd"], exact[name]["sgd"]) <= 1e-6, (budget, name)


def test_asym_float32_within_1e6_of_float64_with_exact_signs(models) -> None:
    """The training side's signs come from a float64 copy, so only the raw side's round-off remains."""
    m32, m64 = models
    a, b = _sides(4, 5, seed=11)
    exact = empirical_ntks(m64, a, {"ab": b}, formulas=["asym"], progress=False)["ab"]["asym"]
    got = empirical_ntks(m32, a, {"ab": b}, formulas=["asym"], progress=False)["ab"]["asym"]
    assert _relative(got.kernel, exact.kernel) <= 1e-6


@pytest.mark.parametrize("integer", [True, False], ids=["int_mm", "float32-blocks"])
def test_factored_training_side_gives_the_kernels_of_stored_gradients(models, integer, monkeypatch) -> None:
    """Weight gradients formed again from layer inputs and output gradients: every formula, both targets.

    In float64 the factored and the raw stored side agree to round-off; in float32 with the float64
    twin the training side's signs are those of float64 gradients either way (``signgd`` compared
    with its round-off bound, as its signs of near-zero streamed entries may flip). Run with int8
    sign x sign products as integers and as float32 blocks, whichever this CPU would choose.
    """
    monkeypatch.setattr(products, "integer_products", lambda: integer)
    m32, m64 = models
    a, b = _sides(5, 6, seed=3)
    targets = {"ab": b, "aa": None}
    combos = [SGD, (True, True), (True, False), (False, True)]
    for model in (m64, m32):
        stats: dict = {}
        raw = FastKernelEngine(model, select_parameters(model), combos, memory_budget=2**30,
                               overrides={"factors": 0}).run(a, targets)
        factored = FastKernelEngine(model, select_parameters(model), combos, memory_budget=2**30,
                                    overrides={"factors": 1, "segment_cols": 2**16}, stats=stats).run(a, targets)
        assert stats["factored"] == 7 and "layer inputs + output gradients" in stats["representation"]
        split_stats: dict = {}  # the feed-forward matrices (65,536 entries) formed in parts of their rows
        split = FastKernelEngine(model, select_parameters(model), combos, memory_budget=2**30,
                                 overrides={"factors": 1, "segment_cols": 2**14}, stats=split_stats).run(a, targets)
        assert split_stats["row_parts"] == 2 * 4
        tolerance = 1e-12 if model is m64 else 1e-6
        for name in targets:
            for combo in (SGD, (True, False), (False, True)):
                assert _relative(factored[name][combo], raw[name][combo]) <= tolerance, (name, combo)
                assert _relative(split[name][combo], factored[name][combo]) <= tolerance, (name, combo)
            assert torch.equal(split[name][(True, True)], factored[name][(True, True)])
    everything = lambda name: True  # noqa: E731
    ga, gb = explicit_gradients(m64, a, everything), explicit_gradients(m64, b, everything)
    got = FastKernelEngine(m64, select_parameters(m64), [(True, True)], memory_budget=2**30,
                           overrides={"factors": 1}).run(a, {"ab": b})["ab"][(True, True)]
    assert_sign_close(got, torch.einsum("ncp,mdp->ncmd", ga.sign(), gb.sign()), ga, gb)


def test_blocked_products_match_float64_and_keep_sign_sums_exact() -> None:
    g = torch.Generator().manual_seed(0)
    # terms that cancel: a shared large component plus small differences, 2^20 columns
    base = torch.randn(1, 2**20, generator=g, dtype=torch.float64)
    left64 = base + 0.05 * torch.randn(3, 2**20, generator=g, dtype=torch.float64)
    right64 = torch.cat([-base, base]) + 0.05 * torch.randn(2, 2**20, generator=g, dtype=torch.float64)
    left, right = left64.float(), right64.float()
    expected = left.double() @ right.double().t()  # the same float32 numbers, float64 sums
    plain = (left @ right.t()).double()
    blocked = product(left, right)
    assert blocked.dtype == torch.float64
    assert _relative(blocked, expected) < 1e-7 < _relative(plain, expected)
    out = torch.ones(3, 2, dtype=torch.float64)
    assert torch.equal(accumulate(out, left64, right64), 1 + left64 @ right64.t())
    signs = torch.sign(left)
    assert torch.equal(gram(signs, signs, symmetric=True, rows=2), signs.double() @ signs.double().t())
    with pytest.raises(ValueError, match="column counts differ"):
        accumulate(out, left, right[:, 1:])


@pytest.mark.parametrize("integer", [True, False], ids=["int_mm", "float32-blocks"])
def test_sign_products_are_exact_integers_and_either_operand_order_agrees(integer, monkeypatch) -> None:
    """int8 x int8 products (integer sums, or float32 blocks where this CPU's integer product is the
    slower: both are run here) equal the int64 product exactly; a float side against an int8 side,
    and a wider right operand (multiplied first), agree with float64 sums.

    These random terms cancel as much as terms can (the sums grow like the square root of the
    column count), so a float32 block sum is only ~1e-6 relative of float64 here, and where exactly
    depends on the order of the BLAS's sums: 8.1e-7 and 1.03e-6 on an AVX2 CPU. Real kernels, whose
    terms do not cancel so, are checked at 1e-6 elsewhere; the signs taken inside a product are
    checked exactly, against the same product of signs formed outside it."""
    monkeypatch.setattr(products, "integer_products", lambda: integer)
    tolerance = 2e-6
    g = torch.Generator().manual_seed(1)
    cols = 3 * 2**12 + 5  # a partial last block
    left = torch.randn(3, cols, generator=g)
    right = torch.randn(7, cols, generator=g)
    left[0, :10] = 0  # zero signs stay zero
    left_sign, right_sign = torch.sign(left).to(torch.int8), torch.sign(right).to(torch.int8)
    exact = left_sign.long() @ right_sign.long().t()
    assert torch.equal(product(left_sign, right_sign), exact.double())
    assert torch.equal(product(right_sign, left_sign), exact.t().double())
    strided_left, strided_right = left_sign[:, ::2], right_sign[:, ::2]
    assert torch.equal(product(strided_left, strided_right), (strided_left.long() @ strided_right.long().t()).double())
    for x, y in ((left, right), (right, left), (left_sign, right), (left, right_sign), (right_sign, left)):
        expected = x.double() @ y.double().t()
        got = product(x, y)
        assert got.shape == expected.shape and got.dtype == torch.float64
        assert _relative(got, expected) < tolerance, (x.dtype, y.dtype, x.shape)
    # the signs of a float right operand, taken inside the product, whichever operand is multiplied first
    for x, y in ((left, right), (right, left), (left[:, ::2], right[:, ::2])):
        expected = x.double() @ torch.sign(y).double().t()
        got = product(x, y, sign_right=True)
        assert torch.equal(got, product(x, torch.sign(y)))
        assert _relative(got, expected) < tolerance
    for x, y in ((left_sign, right), (right_sign, left)):  # sign x sign of a float side: exact integers
        assert torch.equal(product(x, y, sign_right=True), (x.long() @ torch.sign(y).long().t()).double())
    # the signs of a float left operand (a formed stored side's), alone or with the right's
    for x, y in ((left, right), (right, left), (left[:, ::2], right[:, ::2]), (left, right_sign)):
        expected = torch.sign(x).double() @ y.double().t()
        got = product(x, y, sign_left=True)
        assert torch.equal(got, product(torch.sign(x), y))
        assert _relative(got, expected) < tolerance, (x.shape, y.dtype)
    for x, y in ((left, right), (right, left)):
        both = product(x, y, sign_left=True, sign_right=True)
        assert torch.equal(both, torch.sign(x).double() @ torch.sign(y).double().t())
    with pytest.raises(ValueError, match="sign_right takes the signs of a floating-point operand"):
        product(left, right_sign, sign_right=True)
    with pytest.raises(ValueError, match="sign_left takes the signs of a floating-point operand"):
        product(left_sign, right, sign_left=True)


def test_integer_products_choice_is_timed_once_and_used_only_on_the_cpu(monkeypatch) -> None:
    """`integer_products` times both ways once per process (cached) and answers a bool; the int8 path
    asks it only for CPU operands, and either answer gives the same exact kernel."""
    first = products.integer_products()
    assert isinstance(first, bool) and products.integer_products() is first
    assert products.integer_products.cache_info().hits >= 1
    assert not products.uses_integer_products(torch.device("meta"))
    signs = torch.randint(-1, 2, (5, 3 * 2**12 + 7), generator=torch.Generator().manual_seed(2), dtype=torch.int8)
    answers = []
    for integer in (True, False):
        monkeypatch.setattr(products, "integer_products", lambda integer=integer: integer)
        assert products.uses_integer_products(torch.device("cpu")) is integer
        answers.append(product(signs, signs[:3]))
    assert torch.equal(answers[0], answers[1])
    assert torch.equal(answers[0], (signs.long() @ signs[:3].long().t()).double())


ALL_COMBOS = [(False, False), (True, True), (True, False), (False, True)]


@pytest.mark.parametrize("integer", [True, False], ids=["int_mm", "float32-blocks"])
def test_signed_products_in_one_pass_equal_one_product_per_combination(integer, monkeypatch) -> None:
    """`accumulate_signed` (each side's signs taken once per group for all combinations) gives every
    combination's product: sign x sign exactly, the others within float32 block round-off of float64
    (as `accumulate`), and the same numbers whether int8 signs are given or taken from the floats;
    either operand the wider, several groups and a partial last block; combinations that are every
    left variant with every right one (one stacked product) and those that are not."""
    monkeypatch.setattr(products, "integer_products", lambda: integer)
    monkeypatch.setattr(products, "SHARED_GROUP_BYTES", 2**18)  # several groups of blocks
    g = torch.Generator().manual_seed(3)
    cols = 5 * 2**12 + 9
    for left_rows, right_rows in ((6, 4), (3, 7)):
        left, right = torch.randn(left_rows, cols, generator=g), torch.randn(right_rows, cols, generator=g)
        left[0, :50] = 0
        left_sign, right_sign = torch.sign(left).to(torch.int8), torch.sign(right).to(torch.int8)
        exact = {(x, y): (torch.sign(left) if x else left).double() @ (torch.sign(right) if y else right).double().t()
                 for x, y in ALL_COMBOS}
        for combos in (ALL_COMBOS, ALL_COMBOS[2:], ALL_COMBOS[::2], ALL_COMBOS[:1], [(True, True)]):
            runs = []
            for given_left, given_right in ((left_sign, right_sign), (left_sign, None), (None, None)):
                outs = {c: torch.ones(left_rows, right_rows, dtype=torch.float64) for c in combos}
                accumulate_signed(outs, left, right, left_signs=given_left, right_signs=given_right)
                for c in combos:
                    if c == (True, True):
                        assert torch.equal(outs[c], 1 + exact[c])
                    else:
                        assert _relative(outs[c] - 1, exact[c]) < 2e-6, (c, left_rows)
                runs.append(outs)
            # with the integer product, given signs on both sides take (True, True) apart and the other
            # combinations run one product each: the same sums in another order (checked above)
            same = [c for c in combos if not integer or c == (True, True)]
            assert all(torch.equal(run[c], runs[0][c]) for run in runs for c in same)
    # a float64 side: one float64 product per combination, as `accumulate`
    outs = {c: torch.zeros(3, 4, dtype=torch.float64) for c in ALL_COMBOS}
    left64, right64 = left[:, :100].double(), right[:4, :100].double()
    accumulate_signed(outs, left64, right64)
    for x, y in ALL_COMBOS:
        want = (torch.sign(left64) if x else left64) @ (torch.sign(right64) if y else right64).t()
        torch.testing.assert_close(outs[(x, y)], want, rtol=1e-12, atol=1e-12)
    only_signs = {c: torch.zeros(3, 7, dtype=torch.float64) for c in ((True, False), (True, True))}
    accumulate_signed(only_signs, None, right, left_signs=torch.sign(left).to(torch.int8))  # no float left needed
    assert torch.equal(only_signs[(True, True)], exact[(True, True)])
    with pytest.raises(ValueError, match="left: no float columns"):
        accumulate_signed({c: torch.zeros(3, 7, dtype=torch.float64) for c in ALL_COMBOS}, None, right,
                          left_signs=torch.sign(left).to(torch.int8))
    with pytest.raises(ValueError, match="column counts differ"):
        accumulate_signed({c: torch.zeros(3, 7, dtype=torch.float64) for c in ALL_COMBOS}, left[:, 1:], right)


def test_all_three_formulas_multiply_signs_in_the_stacked_float_product(monkeypatch) -> None:
    """Where the integer product is the faster, sign x sign still goes into the one stacked float
    product when all four combinations are wanted (no `torch._int_mm` call; the engine asks the same
    `integer_sign_product` whether to form the streamed side's int8 signs), and through
    `torch._int_mm` otherwise; the sums are exact either way."""
    monkeypatch.setattr(products, "integer_products", lambda: True)
    calls = []
    int_mm = torch._int_mm
    monkeypatch.setattr(torch, "_int_mm", lambda a, b: calls.append(a.shape) or int_mm(a, b))
    cpu = torch.device("cpu")
    assert not products.integer_sign_product(ALL_COMBOS, cpu)
    assert products.integer_sign_product(ALL_COMBOS[1:], cpu) and products.integer_sign_product([(True, True)], cpu)
    assert not products.integer_sign_product(ALL_COMBOS[2:], cpu)
    assert not products.integer_sign_product(ALL_COMBOS[1:], torch.device("meta"))
    g = torch.Generator().manual_seed(4)
    left, right = torch.randn(5, 2**13 + 3, generator=g), torch.randn(3, 2**13 + 3, generator=g)
    left_sign, right_sign = torch.sign(left).to(torch.int8), torch.sign(right).to(torch.int8)
    exact = left_sign.long() @ right_sign.long().t()
    for combos, integer_calls in ((ALL_COMBOS, 0), (ALL_COMBOS[1:], 1)):
        calls.clear()
        outs = {c: torch.zeros(5, 3, dtype=torch.float64) for c in combos}
        accumulate_signed(outs, left, right, left_signs=left_sign, right_signs=right_sign)
        assert len(calls) == integer_calls, combos
        assert torch.equal(outs[(True, True)], exact.double())
        want = torch.sign(left).double() @ right.double().t()
        assert _relative(outs[(True, False)], want) < 2e-6


def test_fixed_signs_keep_magnitudes_within_round_off() -> None:
    """`_give_fixed_signs` on a strided view: flipped entries keep their magnitude, zeros become the
    smallest normal value of the fixed sign, a fixed zero sign zeroes the entry; nothing else moves."""
    base = torch.arange(1.0, 25.0).view(4, 6)
    base[1, 2] = 0.0
    before = base.clone()
    view = base[1:3, 1:5]  # rows of stride 6, as a formed piece inside a segment's columns
    wrong = torch.tensor([0 * 4 + 1, 1 * 4 + 0, 1 * 4 + 3])  # (0, 1) = base[1, 2] (zero), (1, 0), (1, 3)
    _give_fixed_signs(view, wrong, torch.tensor([-1.0, -1.0, 0.0]))
    tiny = torch.finfo(torch.float32).tiny
    assert base[1, 2] == -tiny and base[2, 1] == -before[2, 1] and base[2, 4] == 0
    untouched = torch.ones_like(base, dtype=torch.bool)
    untouched[1, 2] = untouched[2, 1] = untouched[2, 4] = False
    assert torch.equal(base[untouched], before[untouched])


class _Underflowing(torch.nn.Module):
    """A factored layer and a plain parameter ``p`` whose float64 gradient, ``exp(-115 u) w`` with
    ``u = 1`` (the first token), is ~1e-50: below float32's smallest value, so the stored float32
    gradient rounds to 0 while its float64 sign is that of ``w``. Eval examples (``u = 0``) have ``w``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = torch.nn.Linear(4, 6)
        self.p = torch.nn.Parameter(torch.tensor([0.5, -1.0, 2.0]))
        self.register_buffer("w", torch.tensor([1.0, -2.0, 3.0]))
        self.register_buffer("scale", torch.tensor([1.0, 2.0, -1.0, 0.5]))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = input_ids.to(self.w.dtype)
        h = self.proj(x.unsqueeze(-1) * self.scale).sum(1).view(-1, 2, 3).sum(-1)  # [B, 2]
        return h + torch.exp(-115 * x[:, :1]) * (self.p * self.w).sum()


def test_stored_gradients_below_float32_keep_their_float64_signs() -> None:
    """``asym`` with a factored training side takes the stored signs from the formed raw columns; a
    stored entry that underflows in float32 still gives its float64 sign there."""
    model = _Underflowing()
    a = [{"input_ids": torch.tensor([[1.0, 0.3], [1.0, -0.4]])}]
    b = [{"input_ids": torch.tensor([[0.0, 0.2], [0.0, 0.7], [0.0, -0.5]])}]
    stats: dict = {}
    engine = FastKernelEngine(model, select_parameters(model), [(True, False), (False, True)],
                              memory_budget=2**30, overrides={"factors": 1}, stats=stats)
    got = engine.run(a, {"ab": b})["ab"][(True, False)]
    assert stats["factored"] == 1
    exact = empirical_ntks(copy.deepcopy(model).double(), a, {"ab": b}, formulas=["asym"], progress=False)
    assert _relative(got, exact["ab"]["asym"].kernel) <= 1e-6


def test_sign_only_formula_stores_int8_signs_only(models) -> None:
    """``signgd`` alone keeps one byte per stored entry and gives the kernel of explicit gradients."""
    _, m64 = models
    a, b = _sides(3, 4, seed=21)
    stats: dict = {}
    alone = empirical_ntks(m64, a, {"ab": b, "aa": None}, formulas=["signgd"], progress=False, stats=stats)
    assert stats["representation"] == "per-example int8 signs"
    both_stats: dict = {}
    both = empirical_ntks(m64, a, {"ab": b}, formulas=["sgd", "signgd"], progress=False, stats=both_stats)
    assert both_stats["representation"] == "per-example float gradients + int8 signs"
    assert torch.equal(alone["ab"]["signgd"], both["ab"]["signgd"])
    everything = lambda name: True  # noqa: E731
    ga, gb = explicit_gradients(m64, a, everything), explicit_gradients(m64, b, everything)
    for name, other in (("ab", gb), ("aa", ga)):
        expected = torch.einsum("ncp,mdp->ncmd", ga.sign(), other.sign())
        assert_sign_close(alone[name]["signgd"], expected, ga, other)


class _Cancelling(torch.nn.Module):
    """Two tokens whose activations ``exp(s)`` are equal in float32 but not in float64 (``s = 0, 1e-8``).

    Logit 0 is ``sum(h_0 - h_1)``, so its weight gradient ``(x_0 - x_1)`` is exactly 0 in float32
    and about -1e-8 in float64: a float32 forming of the factors gets its sign wrong everywhere.
    """

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = torch.nn.Linear(4, 3, bias=False)
        self.register_buffer("scale", torch.tensor([1.0, 2.0, -1.0, 0.5]))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = torch.exp(input_ids.to(self.scale.dtype)).unsqueeze(-1) * self.scale  # [B, 2, 4]
        h = self.proj(x)
        return torch.stack([(h[:, 0] - h[:, 1]).sum(-1), (h[:, 0] + h[:, 1]).sum(-1)], dim=1)


def test_factored_signs_are_those_of_float64_gradients() -> None:
    """The float32 forming's wrong signs are fixed from the float64 twin, as the raw stored side's are."""
    model = _Cancelling()
    a = [{"input_ids": torch.tensor([[0.0, 1e-8], [0.0, 1e-8], [0.3, -0.2]])}]
    b = [{"input_ids": torch.tensor([[0.1, 0.4], [0.0, 1e-8]])}]
    asym = [(True, False), (False, True)]

    def run(combos: list = asym, **overrides: int) -> tuple[dict, dict]:
        stats: dict = {}
        engine = FastKernelEngine(model, select_parameters(model), combos, memory_budget=2**30, overrides=overrides,
                                  stats=stats)
        return engine.run(a, {"ab": b})["ab"], stats

    factored, stats = run(factors=1)
    raw, raw_stats = run(factors=0)
    parts, parts_stats = run(factors=1, segment_cols=6)  # the 3 x 4 weight formed as rows 0:2 and 2:3
    assert stats["factored"] == 1 and raw_stats["factored"] == 0 and parts_stats["row_parts"] == 2
    assert stats["sign_fixes"] == 2 * 12  # logit 0 of the two cancelling training examples, every entry
    exact = empirical_ntks(copy.deepcopy(model).double(), a, {"ab": b}, formulas=["asym"], progress=False)["ab"]
    for combo in asym:  # the raw factored side is formed in float32 (0 where float64 has 1e-8)
        assert _relative(factored[combo], raw[combo]) <= 1e-6, combo
        assert _relative(parts[combo], factored[combo]) <= 1e-6, combo
    # (the flipped kernel takes the float32 eval side's signs, in every strategy: not compared with float64)
    assert _relative(factored[(True, False)], exact["asym"].kernel) <= 1e-6
    assert _relative(parts[(True, False)], exact["asym"].kernel) <= 1e-6
    # the int8 signs formed for the sign x sign product take the same fixes, part by part, and give the
    # same kernel whether they are multiplied as integers or widened to float32 blocks
    signs = [(True, True), (True, False), (False, False)]
    runs = []
    for integer in (True, False):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(products, "integer_products", lambda integer=integer: integer)
            whole_signs, parts_signs = run(signs, factors=1)[0], run(signs, factors=1, segment_cols=6)[0]
        assert torch.equal(parts_signs[(True, True)], whole_signs[(True, True)])
        assert _relative(parts_signs[(True, False)], exact["asym"].kernel) <= 1e-6
        runs.append(whole_signs)
    assert torch.equal(runs[0][(True, True)], runs[1][(True, True)])
    assert _relative(runs[1][(True, False)], runs[0][(True, False)]) <= 1e-6
    # without the twin (exact_signs=False) the float32 signs are 0 there, and the kernel is visibly off
    loose = FastKernelEngine(model, select_parameters(model), asym, memory_budget=2**30, overrides={"factors": 1},
                             exact_signs=False).run(a, {"ab": b})["ab"]
    assert _relative(loose[(True, False)], exact["asym"].kernel) > 1e-2


def test_live_tokens_trim_padding_and_the_linear_rule_gives_the_batched_gradient() -> None:
    """Tokens whose output gradient is zero (padding) are left out of an example's ``go^T a``, exactly."""
    from benchmark.kernels.grad_rules import grad_rule, live_tokens
    from benchmark.kernels.per_example import Call, Use

    g = torch.Generator().manual_seed(3)
    go = torch.randn(3, 8, 5, generator=g, dtype=torch.float64)
    go[0, 6:] = 0  # right padding
    go[1, :2] = 0  # left padding
    go[1, 5:] = 0
    go[2] = 0  # no live token at all
    assert live_tokens([go]) == [(0, 6), (2, 5), (0, 0)]
    other = torch.zeros_like(go)
    other[2, 7] = 1.0  # the union over the logits' gradients
    assert live_tokens([go, other]) == [(0, 6), (2, 5), (7, 8)]
    assert live_tokens([torch.randn(3, 8, 5, generator=g)]) is None  # nothing to trim
    layer = torch.nn.Linear(4, 5).double()
    act = torch.randn(3, 8, 4, generator=g, dtype=torch.float64)
    use = Use(layer, grad_rule(layer), "weight")
    expected = torch.einsum("btm,btn->bmn", go, act).reshape(3, -1)
    for first, start in ((True, torch.full((3, 20), float("nan"), dtype=torch.float64)),
                         (False, torch.ones(3, 20, dtype=torch.float64))):
        target = start.clone()
        use.rule.dense(layer, "weight", Call(act, None), go, target, first)
        assert torch.allclose(target, expected + (0 if first else 1), rtol=1e-13, atol=1e-13)


def test_held_bytes_and_the_outputs_a_streamed_batch_lets_go(models) -> None:
    """A held batch keeps its recorded inputs and C output gradients; every recorded output that is not also
    some call's input is freed when the outputs are let go, so it is not counted (weak references to the
    outputs' memory tell)."""
    from torch.multiprocessing.reductions import StorageWeakRef

    from benchmark.kernels.batches import differentiable
    from benchmark.kernels.per_example import modules_of, plan_slots, record

    model = models[0]
    slots = plan_slots(select_parameters(model, "all"))
    (batch,) = make_batches(VOCAB, 1, 4, [3], 24, 5, 0)
    with differentiable(model, [s.tensor for s in slots]), record(modules_of(slots), 3) as rec:
        logits = model(**batch)
        outputs = rec.outputs()
        grads = [torch.autograd.grad(logits[:, c].sum(), outputs, retain_graph=c == 0, allow_unused=True)
                 for c in range(2)]
    held = rec.held_bytes(2)
    inputs = {call.input.data_ptr() for call in rec.order}
    output_refs = [(StorageWeakRef(call.output.untyped_storage()), call.output.data_ptr() in inputs)
                   for call in rec.order]
    inputs_bytes = sum(t.numel() * t.element_size() for t in {c.input.data_ptr(): c.input for c in rec.order}.values())
    output_bytes = sum(call.output.numel() * call.output.element_size() for call in rec.order)
    assert held == inputs_bytes + 2 * output_bytes
    assert sum(g.numel() * g.element_size() for per_c in grads for g in per_c if g is not None) <= 2 * output_bytes
    del logits, outputs
    rec.release_outputs()
    assert any(not shared for _, shared in output_refs)
    for ref, shared in output_refs:
        assert ref.expired() != shared  # freed unless it is another call's input


def test_held_pool_copies_once_all_or_nothing() -> None:
    """Shared inputs are copied once, every tensor keeps its values, shape and dtype; a batch that does not fit
    keeps its own tensors and leaves the pool as it was."""
    from benchmark.kernels.grad_rules import Call
    from benchmark.kernels.held import ALIGN, HeldPool

    g = torch.Generator().manual_seed(4)
    shared = torch.randn(2, 5, 3, generator=g)
    ids = torch.arange(5).expand(2, 5)  # an expanded (stride 0) int64 input, as a broadcast position id
    calls = [Call(shared, None, key=0), Call(shared.detach(), None, key=1), Call(ids, None, key=2)]
    rec = type("Rec", (), {"order": calls})()
    grads = [{0: torch.randn(2, 5, 4, generator=g, dtype=torch.float64), 2: torch.randn(2, 5, 3, generator=g)}]
    before = [c.input.clone() for c in calls], {k: v.clone() for k, v in grads[0].items()}
    pool = HeldPool(torch.empty(10_000, dtype=torch.uint8))
    assert pool.keep_batch(rec, grads)
    assert calls[0].input.data_ptr() == calls[1].input.data_ptr() != shared.data_ptr()  # copied once
    pointer = pool.buffer.data_ptr()
    for call, value in zip(calls, before[0], strict=True):
        assert torch.equal(call.input, value) and call.input.dtype == value.dtype
        assert pointer <= call.input.data_ptr() < pointer + 10_000 and (call.input.data_ptr() - pointer) % ALIGN == 0
    for key, value in before[1].items():
        assert torch.equal(grads[0][key], value) and grads[0][key].dtype == value.dtype
    used = pool.used  # 120 bytes at 0, 80 at 128, 320 at 256, 120 at 576
    assert used == 696
    big = [{5: torch.zeros(10_000)}]
    other = [Call(torch.ones(3), None, key=5)]
    assert not pool.keep_batch(type("Rec", (), {"order": other})(), big)
    assert pool.used == used and other[0].input.data_ptr() != pointer and big[0][5].numel() == 10_000
    with pytest.raises(ValueError, match="flat uint8"):
        HeldPool(torch.empty(4))


def test_held_records_in_one_buffer_give_the_same_kernels(models) -> None:
    """Streamed units whose records are copied into the held buffer (contiguous copies of the same values) give
    the kernels of units that keep the batches' own tensors, to float32 round-off; ``signgd`` within its
    round-off bound (a streamed entry at round-off of zero may take the other sign)."""
    model = models[0]
    a, b = _sides(5, 9, seed=6)
    combos = [SGD, (True, True), (True, False), (False, True)]
    results = []
    for extra in ({}, {"no_pool": 1}):
        stats: dict = {}
        engine = FastKernelEngine(model, select_parameters(model), combos, memory_budget=2**30, stats=stats,
                                  overrides={"factors": 1, "segment_cols": 2**16, "unit_rows": 8, "max_batch": 2,
                                             **extra})
        results.append(engine.run(a, {"ab": b})["ab"])
        # 9 streamed examples in batches of at most 2, units of 4: [2, 2], [2, 2], [1]
        assert stats["held_bytes"] > 0 and stats.get("pooled_batches", 0) == (0 if extra else 5)
        assert "unpooled_batches" not in stats
    for combo in (SGD, (True, False), (False, True)):
        assert _relative(results[0][combo], results[1][combo]) < 1e-6, combo
    m64 = models[1]
    ga, gb = (explicit_gradients(m64, side, lambda name: True) for side in (a, b))
    for result in results:
        assert_sign_close(result[(True, True)], torch.einsum("ncp,mdp->ncmd", ga.sign(), gb.sign()), ga, gb)
