"""eNTK engine: kernels equal an explicit per-example autograd computation; strategies, chunking,
processes, parameter choices, the disk cache and the reference-file loader."""

from __future__ import annotations

import copy
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.kernels import (
    AsymKernel,
    KernelCache,
    empirical_ntk,
    empirical_ntks,
    initial_logits,
    load_reference_kernels,
    parse_bytes,
    per_example,
    reference_kernel_path,
    select_parameters,
)
from benchmark.kernels.fast import FastKernelEngine
from benchmark.kernels.params import params_predicate
from benchmark.models import ClsHeadLogitModel, PromptLogitModel
from registry import BenchError
from tests import tiny

pytestmark = pytest.mark.usefixtures("one_thread")

ROUNDOFF = 1e-9  # |g| below this (relative to the largest entry) is round-off whose sign is arbitrary


def make_batches(
    vocab: int, pad: int, mask: int, sizes: list[int], length: int, seed: int, cls: int | None = None
) -> list[dict[str, torch.Tensor]]:
    """Random prompts of varying length (padded), one mask position each."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for size in sizes:
        ids = torch.randint(5, vocab, (size, length), generator=g)
        lengths = torch.randint(length // 2, length + 1, (size,), generator=g)
        lengths[0] = length // 2  # always some padding
        keep = torch.arange(length)[None] < lengths[:, None]
        ids[~keep] = pad
        if cls is not None:
            ids[:, 0] = cls
        pos = 1 + (torch.rand(size, generator=g) * (lengths - 2).float()).long()
        ids[torch.arange(size), pos] = mask
        out.append({"input_ids": ids, "attention_mask": keep.long(), "mask_pos": pos})
    return out


def explicit_gradients(model: nn.Module, batches: list[dict], predicate: Callable[[str], bool]) -> torch.Tensor:
    """``[N, C, P]`` per-example gradients by plain autograd, one example at a time.

    Registrations the predicate rejects become buffers (as the reference code does), so a tied
    tensor keeps only its selected uses.
    """
    m = copy.deepcopy(model)
    for module_name, module in list(m.named_modules()):
        for attr, p in list(module._parameters.items()):
            if p is None:
                continue
            name = f"{module_name}.{attr}" if module_name else attr
            if not predicate(name):
                del module._parameters[attr]
                module.register_buffer(attr, p.detach(), persistent=False)
    tensors = list(m.parameters())
    for t in tensors:
        t.requires_grad_(True)
    rows = []
    for batch in batches:
        for i in range(batch["input_ids"].shape[0]):
            logits = m(**{k: v[i : i + 1] for k, v in batch.items()})
            per_logit = []
            for c in range(logits.shape[1]):
                grads = torch.autograd.grad(logits[0, c], tensors, retain_graph=True, allow_unused=True)
                flat = [
                    (g if g is not None else torch.zeros_like(t)).reshape(-1)
                    for g, t in zip(grads, tensors, strict=True)
                ]
                per_logit.append(torch.cat(flat))
            rows.append(torch.stack(per_logit))
    return torch.stack(rows).double()


def explicit_kernels(ga: torch.Tensor, gb: torch.Tensor) -> dict[str, torch.Tensor]:
    """sgd / signgd / asym / flipped kernels from explicit gradients."""
    k = lambda x, y: torch.einsum("ncp,mdp->ncmd", x, y)  # noqa: E731
    return {
        "sgd": k(ga, gb),
        "signgd": k(ga.sign(), gb.sign()),
        "asym": k(ga.sign(), gb),
        "flipped": k(ga, gb.sign()),
    }


def roundoff_count(g: torch.Tensor) -> torch.Tensor:
    """Per example: entries that are non-zero but at round-off level."""
    scale = g.abs().amax(dim=(1, 2), keepdim=True)
    return ((g != 0) & (g.abs() < ROUNDOFF * scale)).sum(dim=(1, 2))


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float) -> None:
    scale = float(expected.abs().max())
    err = float((actual - expected).abs().max())
    assert err <= rtol * scale, f"relative error {err / scale:.3e} > {rtol:.0e}"


def assert_sign_close(actual: torch.Tensor, expected: torch.Tensor, ga: torch.Tensor, gb: torch.Tensor) -> None:
    """Sign kernels agree exactly except for entries where a gradient entry is round-off."""
    bound = 2.0 * (roundoff_count(ga)[:, None, None, None] + roundoff_count(gb)[None, None, :, None])
    diff = (actual - expected).abs()
    assert bool((diff <= bound + 1e-9).all()), f"sign kernel off by {float(diff.max())}"


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def roberta(roberta_tok) -> dict:
    mlm = tiny.roberta_mlm(roberta_tok, seed=1).double()
    words = roberta_tok.convert_tokens_to_ids(["Ġgreat", "Ġterrible", "Ġokay"])
    ids = dict(vocab=len(roberta_tok), pad=roberta_tok.pad_token_id, mask=roberta_tok.mask_token_id, cls=0)
    return {"mlm": mlm, "words": words, "ids": ids}


def _data(spec: dict, seed: int = 0) -> tuple[list[dict], list[dict]]:
    i = spec["ids"]
    a = make_batches(i["vocab"], i["pad"], i["mask"], [3, 2], 10, seed, i["cls"])
    b = make_batches(i["vocab"], i["pad"], i["mask"], [2, 4], 9, seed + 1, i["cls"])
    return a, b


NO_KEY_BIAS = lambda name: "key.bias" not in name  # noqa: E731 - custom predicate

PARAMS = ["all", "no-embeddings", "no-head", "biases", ("no-embeddings", "no-head"), NO_KEY_BIAS]
_EXPLICIT: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}


# ---------------------------------------------------------------- equality with explicit autograd
def _name(params: object) -> str:
    return params if isinstance(params, str) else ("+".join(params) if isinstance(params, tuple) else "custom")


_CASES = [(arch, params, arch == "roberta") for arch in ("roberta", "bert") for params in PARAMS]
_CASES += [("bert", "all", True), ("roberta", "all", False), ("roberta", "no-embeddings", False)]


@pytest.mark.parametrize(
    ("arch", "params", "sparse"),
    _CASES,
    ids=[f"{arch}-{_name(p)}-{'sparse' if s else 'dense'}" for arch, p, s in _CASES],
)
def test_kernels_equal_explicit_autograd(request, arch, params, sparse, monkeypatch) -> None:
    spec = request.getfixturevalue(arch)
    if sparse:  # the tiny vocabularies are small: lower the threshold so the row-sparse path is used
        monkeypatch.setattr(per_example, "SPARSE_MIN_ROWS", 64)
    model = PromptLogitModel(spec["mlm"], spec["words"]).eval()
    a, b = _data(spec)
    stats: dict = {}
    out = empirical_ntks(
        model, a, {"ab": b, "aa": None}, formulas=["sgd", "signgd", "asym"], params=params, progress=False, stats=stats
    )
    assert stats["fallback_params"] == []
    key = (arch, PARAMS.index(params))
    if key not in _EXPLICIT:  # the same for the sparse and the dense run
        predicate = params_predicate(params)
        _EXPLICIT[key] = explicit_gradients(model, a, predicate), explicit_gradients(model, b, predicate)
    ga, gb = _EXPLICIT[key]
    for name, g_other in (("ab", gb), ("aa", ga)):
        expected = explicit_kernels(ga, g_other)
        got = out[name]
        assert got["sgd"].dtype == torch.float64
        assert got["sgd"].shape == (5, 3, 6 if name == "ab" else 5, 3)
        assert_close(got["sgd"], expected["sgd"], 1e-8)
        assert isinstance(got["asym"], AsymKernel)
        assert_close(got["asym"].kernel, expected["asym"], 1e-8)
        assert_close(got["asym"].flipped, expected["flipped"], 1e-8)
        assert_sign_close(got["signgd"], expected["signgd"], ga, g_other)
        if params is NO_KEY_BIAS:  # no round-off-level entries left: sign kernels are exact
            assert torch.equal(got["signgd"], expected["signgd"])
    assert_close(out["aa"]["sgd"], out["aa"]["sgd"].permute(2, 3, 0, 1), 1e-12)


@pytest.mark.parametrize("arch", ["roberta", "bert"])
def test_binary_logit_and_cls_head(request, arch, monkeypatch) -> None:
    spec = request.getfixturevalue(arch)
    monkeypatch.setattr(per_example, "SPARSE_MIN_ROWS", 64)
    a, b = _data(spec, seed=3)
    binary = PromptLogitModel(spec["mlm"], spec["words"][:2], binary=True).eval()
    cls = ClsHeadLogitModel(spec["mlm"], 3, seed=0).eval()
    no_mask = [[{k: v for k, v in batch.items() if k != "mask_pos"} for batch in side] for side in (a, b)]
    for model, (xa, xb) in ((binary, (a, b)), (cls, no_mask)):
        out = empirical_ntks(model, xa, {"ab": xb}, formulas=["sgd", "asym"], params=NO_KEY_BIAS, progress=False)["ab"]
        ga, gb = explicit_gradients(model, xa, NO_KEY_BIAS), explicit_gradients(model, xb, NO_KEY_BIAS)
        expected = explicit_kernels(ga, gb)
        assert out["sgd"].shape[1] == (1 if model is binary else 3)
        assert_close(out["sgd"], expected["sgd"], 1e-8)
        assert_close(out["asym"].kernel, expected["asym"], 1e-8)
        assert_close(out["asym"].flipped, expected["flipped"], 1e-8)


def test_float32_within_1e5_with_float64_signs_on_the_training_side(roberta_tok) -> None:
    mlm = tiny.roberta_mlm(roberta_tok, seed=4)
    words = roberta_tok.convert_tokens_to_ids(["Ġgreat", "Ġterrible"])
    model = PromptLogitModel(mlm, words).eval()
    a = make_batches(len(roberta_tok), 1, 4, [4], 10, 5, 0)
    b = make_batches(len(roberta_tok), 1, 4, [3, 2], 8, 6, 0)
    stats: dict = {}
    out = empirical_ntks(model, a, {"ab": b}, formulas=["sgd", "asym"], progress=False, stats=stats)["ab"]
    assert stats["exact_signs"] and out["sgd"].dtype == torch.float64
    everything = lambda n: True  # noqa: E731
    ga, gb = explicit_gradients(model, a, everything), explicit_gradients(model, b, everything)
    exact = PromptLogitModel(copy.deepcopy(mlm).double(), words).eval()
    ga64 = explicit_gradients(exact, a, everything)
    assert_close(out["sgd"], explicit_kernels(ga, gb)["sgd"], 1e-5)
    # the training side's signs come from float64 gradients, the other side is float32
    assert_close(out["asym"].kernel, torch.einsum("ncp,mdp->ncmd", ga64.sign(), gb), 1e-5)
    assert_close(out["asym"].flipped, explicit_kernels(ga64, gb)["flipped"], 1e-5)
    plain = empirical_ntk(model, a, b, formula="asym", progress=False, exact_signs=False)
    assert_close(plain.flipped, explicit_kernels(ga, gb)["flipped"], 1e-5)


def test_lora_adapters_only(roberta) -> None:
    peft = pytest.importorskip("peft")
    mlm = copy.deepcopy(roberta["mlm"]).float()
    config = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["query", "value"], lora_dropout=0.0, init_lora_weights=False
    )
    wrapped = peft.get_peft_model(mlm, config).base_model.model.double()
    model = PromptLogitModel(wrapped, roberta["words"]).eval()
    a, b = _data(roberta, seed=7)
    selected = select_parameters(model, "lora")
    assert selected and all("lora_" in s.name for s in selected)
    out = empirical_ntks(model, a, {"ab": b}, formulas=["sgd", "signgd"], params="lora", progress=False)["ab"]
    predicate = params_predicate("lora")
    ga, gb = explicit_gradients(model, a, predicate), explicit_gradients(model, b, predicate)
    expected = explicit_kernels(ga, gb)
    assert_close(out["sgd"], expected["sgd"], 1e-8)
    assert torch.equal(out["signgd"], expected["signgd"])
    # the reference's LoRA kernel (adapters + head) is available too
    both = empirical_ntk(model, a, b, params="lora+head", progress=False)
    pred2 = params_predicate("lora+head")
    assert_close(
        both, explicit_kernels(explicit_gradients(model, a, pred2), explicit_gradients(model, b, pred2))["sgd"], 1e-8
    )


class _FunctionalHead(nn.Module):
    """A logit model that uses a Linear's weight functionally (its forward never runs)."""

    def __init__(self, inner: PromptLogitModel) -> None:
        super().__init__()
        self.inner = inner
        hidden = inner.encoder.config.hidden_size
        self.extra = nn.Linear(hidden, inner.num_outputs).double()
        self.scale = nn.Parameter(torch.full((inner.num_outputs,), 1.5, dtype=torch.float64))

    def forward(self, input_ids, attention_mask, mask_pos):
        feats = self.inner.features(input_ids, attention_mask, mask_pos)
        return self.inner(input_ids, attention_mask, mask_pos) * self.scale + F.linear(feats, self.extra.weight)


def test_unsupported_uses_fall_back_to_autograd(bert) -> None:
    model = _FunctionalHead(PromptLogitModel(bert["mlm"], bert["words"])).eval()
    a, b = _data(bert, seed=8)
    stats: dict = {}
    got = empirical_ntk(model, a, b, formula="asym", params=NO_KEY_BIAS, progress=False, stats=stats)
    assert "extra.weight" in stats["fallback_params"] and "scale" in stats["fallback_params"]
    ga, gb = explicit_gradients(model, a, NO_KEY_BIAS), explicit_gradients(model, b, NO_KEY_BIAS)
    expected = explicit_kernels(ga, gb)
    assert_close(got.kernel, expected["asym"], 1e-8)
    assert_close(got.flipped, expected["flipped"], 1e-8)


# ---------------------------------------------------------------- strategies, chunking, memory
@pytest.mark.parametrize("formula", ["sgd", "signgd", "asym"])
def test_fast_equals_reference_strategy(roberta, formula, monkeypatch) -> None:
    monkeypatch.setattr(per_example, "SPARSE_MIN_ROWS", 64)
    model = PromptLogitModel(roberta["mlm"], roberta["words"][:2]).eval()
    a, b = _data(roberta, seed=9)
    params = NO_KEY_BIAS if formula == "signgd" else "all"
    for other in (b, None):
        fast = empirical_ntk(model, a, other, formula=formula, params=params, progress=False)
        ref = empirical_ntk(model, a, other, formula=formula, params=params, strategy="reference", progress=False)
        for f, r in zip(fast if formula == "asym" else [fast], ref if formula == "asym" else [ref], strict=True):
            assert_close(f, r, 1e-8)


def test_chunks_groups_segments_and_split_batches_give_the_same_kernels(roberta, monkeypatch) -> None:
    monkeypatch.setattr(per_example, "SPARSE_MIN_ROWS", 64)
    model = PromptLogitModel(roberta["mlm"], roberta["words"]).eval()
    a, b = _data(roberta, seed=10)
    combos = [(False, False), (True, True), (True, False), (False, True)]
    targets = {"ab": b, "aa": None}

    def run(**overrides: int) -> dict:
        sel = select_parameters(model, NO_KEY_BIAS)
        engine = FastKernelEngine(model, sel, combos, memory_budget=2**30, overrides=overrides)
        return engine.run(a, targets)

    base = run()
    for overrides in (
        {"chunk": 2, "max_batch": 1},
        {"group_slots": 5, "chunk": 3},
        {"segment_cols": 1000, "max_batch": 3, "chunk": 4},
        {"gather_rows": 9, "max_batch": 2},
        {"factors": 1},  # weight matrices stored as layer inputs and output gradients
        {"factors": 1, "segment_cols": 1000, "unit_rows": 12, "max_batch": 2, "chunk": 3},
    ):
        other = run(**overrides)
        for name in targets:
            for combo in combos:
                assert_close(other[name][combo], base[name][combo], 1e-10)
    model_training = model.training
    assert not model_training and all(p.requires_grad for p in model.parameters())


def test_memory_budget_is_respected_by_the_plan(roberta) -> None:
    model = PromptLogitModel(roberta["mlm"], roberta["words"]).eval()
    a, b = _data(roberta, seed=11)
    stats: dict = {}
    small = empirical_ntk(model, a, b, formula="signgd", memory_budget="1MiB", progress=False, stats=stats)
    assert stats["budget"] == 2**20
    big = empirical_ntk(model, a, b, formula="signgd", memory_budget=2**32, progress=False)
    assert torch.equal(small, big)
    assert parse_bytes("1GiB") == 2**30 and parse_bytes("512MB") == 512_000_000
    with pytest.raises(BenchError):
        parse_bytes("lots")


def test_progress_bar_and_state_restored(bert, capsys) -> None:
    model = PromptLogitModel(copy.deepcopy(bert["mlm"]), bert["words"]).train()
    next(model.parameters()).requires_grad_(False)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    a, b = _data(bert, seed=12)
    empirical_ntk(model, a, b, progress=True)
    assert model.training
    f0 = initial_logits(model, b)
    assert model.training and f0.shape == (6, 3) and f0.dtype == torch.float64
    with torch.no_grad():
        assert torch.allclose(f0[:2], model.eval()(**b[0]).double())
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}
    assert "eNTK" in capsys.readouterr().err


# ---------------------------------------------------------------- bad input
def test_bad_input_raises_bench_error(bert) -> None:
    model = PromptLogitModel(bert["mlm"], bert["words"]).eval()
    a, _ = _data(bert)
    with pytest.raises(BenchError, match="unknown kernel formula"):
        empirical_ntk(model, a, formula="adagrad", progress=False)
    with pytest.raises(BenchError, match="unknown kernel strategy"):
        empirical_ntk(model, a, strategy="magic", progress=False)
    with pytest.raises(BenchError, match="unknown params"):
        empirical_ntk(model, a, params="everything", progress=False)
    with pytest.raises(BenchError, match="LoRA"):
        empirical_ntk(model, a, params="lora", progress=False)
    with pytest.raises(BenchError, match="selects no parameter"):
        empirical_ntk(model, a, params=lambda name: False, progress=False)
    with pytest.raises(BenchError, match="at least one batch"):
        empirical_ntk(model, [], progress=False)


# ---------------------------------------------------------------- several processes
def _tiny_bert_for_workers() -> tuple[nn.Module, list[dict], list[dict]]:
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=120,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        attn_implementation="eager",
    )
    model = PromptLogitModel(BertForMaskedLM(config).double().eval(), [10, 11]).eval()
    a = make_batches(120, 0, 4, [3, 2], 8, 0, 2)
    b = make_batches(120, 0, 4, [2, 2, 3], 7, 1, 2)
    return model, a, b


def _chunked(model: nn.Module, a: list[dict], b: list[dict]) -> dict:
    """Several chunks and groups: exercises how the blocks are dealt to the ranks."""
    sel = select_parameters(model)
    engine = FastKernelEngine(
        model,
        sel,
        [(True, False), (False, True)],
        memory_budget=2**30,
        overrides={"chunk": 2, "group_slots": 7, "max_batch": 2, "gather_rows": 6},
    )
    return engine.run(a, {"ab": b, "aa": None})  # chunks of 2, groups of 7 tensors, products of <= 3 examples


def _factored(model: PromptLogitModel, a: list, b: list) -> dict:
    """Weights stored as factors, several segments, streamed units of 3 examples."""
    engine = FastKernelEngine(model, select_parameters(model), [(False, False), (True, False)], memory_budget=2**30,
                              overrides={"factors": 1, "segment_cols": 5000, "unit_rows": 6, "max_batch": 1})
    return engine.run(a, {"ab": b, "aa": None})


def _distributed_worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        model, a, b = _tiny_bert_for_workers()
        per_example.SPARSE_MIN_ROWS = 64
        out = empirical_ntks(model, a, {"ab": b, "aa": None}, formulas=["sgd", "asym"], progress=False)
        ref = empirical_ntk(model, a, b, formula="sgd", strategy="reference", progress=False)
        chunked = _chunked(model, a, b)
        factored = _factored(model, a, b)
        torch.save(
            {"ab": out["ab"]["sgd"], "aa": out["aa"]["asym"].kernel, "ref": ref, "chunked": chunked,
             "factored": factored},
            f"{out_dir}/rank{rank}.pt",
        )
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_give_the_one_process_kernel(tmp_path, monkeypatch) -> None:
    torch.multiprocessing.spawn(_distributed_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    monkeypatch.setattr(per_example, "SPARSE_MIN_ROWS", 64)
    model, a, b = _tiny_bert_for_workers()
    out = empirical_ntks(model, a, {"ab": b, "aa": None}, formulas=["sgd", "asym"], progress=False)
    chunked = _chunked(model, a, b)
    factored = _factored(model, a, b)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for name in ("ab", "aa"):
            for combo, kernel in factored[name].items():
                assert torch.equal(got["factored"][name][combo], kernel), (name, combo)
            assert_close(factored[name][(True, False)], out[name]["asym"].kernel, 1e-10)
            assert_close(factored["ab"][(False, False)], out["ab"]["sgd"], 1e-10)
        assert torch.equal(got["ab"], out["ab"]["sgd"])
        assert torch.equal(got["aa"], out["aa"]["asym"].kernel)
        assert_close(got["ref"], out["ab"]["sgd"], 1e-10)
        for name in ("ab", "aa"):
            for combo, kernel in chunked[name].items():
                assert torch.equal(got["chunked"][name][combo], kernel)
                assert_close(kernel, out[name]["asym"][0 if combo == (True, False) else 1], 1e-10)


# ---------------------------------------------------------------- disk cache and reference files
def test_cache_roundtrip_corruption_and_mismatch(tmp_path, caplog) -> None:
    cache = KernelCache(tmp_path)
    config = {"run": {"task": "sst2", "k": 16, "seed": 13}, "formula": "sgd", "params": "all", "split": "test"}

    tensors = {"train": torch.randn(4, 2, 4, 2, dtype=torch.float64), "test": torch.randn(4, 2, 6, 2).double()}
    calls = []

    def compute() -> dict:
        calls.append(1)
        return tensors

    expected = {"train": (4, 2, 4, 2), "test": (4, 2, 6, 2)}
    first = cache.get_or_compute(config, compute, expected)
    second = cache.get_or_compute(config, compute, expected)
    assert (
        len(calls) == 1
        and torch.equal(second["test"], tensors["test"])
        and torch.equal(first["train"], tensors["train"])
    )
    assert [p.name for p in tmp_path.iterdir()] == [cache.path(config).name]  # no temporary files left
    # another configuration misses; a wrong expected shape misses
    assert cache.load({**config, "seed": 21}) is None
    assert cache.load(config, {"train": (4, 2, 4, 2), "test": (4, 2, 7, 2)}) is None
    # a file for another config copied in place is not used
    other = {**config, "formula": "signgd"}
    cache.save(other, tensors)
    cache.path(config).write_bytes(cache.path(other).read_bytes())
    assert cache.load(config) is None
    # corrupt bytes (truncated, or flipped inside the data) are never used, and get recomputed
    path = cache.save(config, tensors)
    data = bytearray(path.read_bytes())
    path.write_bytes(bytes(data[: len(data) // 2]))
    assert cache.load(config) is None
    cache.save(config, tensors)
    data = bytearray(path.read_bytes())
    raw = tensors["test"].numpy().tobytes()
    at = bytes(data).find(raw[:16])
    assert at > 0
    data[at + 3] ^= 0xFF
    path.write_bytes(bytes(data))
    assert cache.load(config) is None
    assert "checksum" in caplog.text
    cache.get_or_compute(config, compute, expected)
    assert len(calls) == 2 and cache.load(config, expected) is not None


def _write_reference(path: Path, kernel: torch.Tensor, labels: torch.Tensor) -> None:
    torch.save((kernel, labels), path)


def test_reference_kernel_files(tmp_path) -> None:
    path = reference_kernel_path(tmp_path, "test", "SST-2")
    assert path.name == "test_kernels_SST-2.pt"
    _write_reference(path, torch.randn(4, 1, 6, 1), torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0, -1.0]))
    loaded = load_reference_kernels(path, formula="sgd", n_train=4, n_examples=6, num_outputs=1)
    assert loaded.kernel.dtype == torch.float64 and loaded.flipped is None
    assert loaded.labels.tolist() == [1, 0, 1, 1, 0, 0]
    asym = tmp_path / "dev_kernels_trec.pt"
    _write_reference(asym, torch.randn(2, 4, 6, 5, 6), torch.arange(5))
    both = load_reference_kernels(asym, formula="asymmetric_signgd", n_train=4, num_outputs=6)
    assert both.flipped is not None and both.kernel.shape == (4, 6, 5, 6)
    with pytest.raises(BenchError, match="N_x is 6, expected 7"):
        load_reference_kernels(path, formula="sgd", n_examples=7)
    with pytest.raises(BenchError, match="C is 1, expected 2"):
        load_reference_kernels(path, formula="sgd", num_outputs=2)
    with pytest.raises(BenchError, match="stack"):
        load_reference_kernels(path, formula="asym")
    with pytest.raises(BenchError, match="expected \\[N_train, C, N_x, C\\]"):
        load_reference_kernels(asym, formula="sgd")
    bad = tmp_path / "bad.pt"
    torch.save({"kernel": torch.zeros(1)}, bad)
    with pytest.raises(BenchError, match="pair"):
        load_reference_kernels(bad, formula="sgd")
    bad.write_bytes(b"not a torch file")
    with pytest.raises(BenchError, match="cannot read"):
        load_reference_kernels(bad, formula="sgd")
    with pytest.raises(BenchError, match="not found"):
        load_reference_kernels(tmp_path / "missing.pt", formula="sgd")
