"""eNTK engine on CUDA: the same kernels as explicit per-example autograd on the CPU.

Skipped where no CUDA device is visible (CI); run on a GPU machine with
``pytest -m cuda tests/test_kernels_cuda.py``.
"""

from __future__ import annotations

import copy

import pytest
import torch

from benchmark.kernels import AsymKernel, empirical_ntk, empirical_ntks, per_example
from benchmark.kernels.memory import PeakMemory, parse_bytes
from benchmark.kernels.params import params_predicate
from benchmark.models import ClsHeadLogitModel, PromptLogitModel
from tests import tiny
from tests.test_kernels import (
    NO_KEY_BIAS,
    _data,
    assert_close,
    assert_sign_close,
    explicit_gradients,
    explicit_kernels,
)

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
CUDA = torch.device("cuda")


@pytest.fixture(scope="module", autouse=True)
def _exact_matmuls():
    """float32 comparisons at 1e-5 need IEEE matrix products, not TF32."""
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = saved


def _spec(arch: str, bert_tok, roberta_tok) -> dict:
    if arch == "roberta":
        tok, mlm, words = roberta_tok, tiny.roberta_mlm(roberta_tok, seed=1), ["Ġgreat", "Ġterrible", "Ġokay"]
        cls = 0
    else:
        tok, mlm, words = bert_tok, tiny.bert_mlm(bert_tok, seed=2), ["great", "terrible", "okay"]
        cls = tok.cls_token_id
    ids = dict(vocab=len(tok), pad=tok.pad_token_id, mask=tok.mask_token_id, cls=cls)
    return {"mlm": mlm, "words": tok.convert_tokens_to_ids(words), "ids": ids}


def _on_cpu(value):
    if isinstance(value, AsymKernel):
        return AsymKernel(value.kernel.cpu(), value.flipped.cpu())
    return value.cpu()


@pytest.mark.parametrize("arch", ["roberta", "bert"])
@pytest.mark.parametrize("params", ["all", "no-embeddings", "biases"])
@pytest.mark.parametrize("sparse", [True, False], ids=["sparse", "dense"])
def test_cuda_kernels_equal_explicit_cpu_autograd(arch, params, sparse, bert_tok, roberta_tok, monkeypatch) -> None:
    if sparse:
        monkeypatch.setattr(per_example, "SPARSE_MIN_ROWS", 64)
    spec = _spec(arch, bert_tok, roberta_tok)
    cpu_model = PromptLogitModel(spec["mlm"].double(), spec["words"]).eval()
    gpu_model = copy.deepcopy(cpu_model).to(CUDA)
    a, b = _data(spec)
    out = empirical_ntks(gpu_model, a, {"ab": b, "aa": None}, formulas=["sgd", "signgd", "asym"], params=params,
                         progress=False)
    predicate = params_predicate(params)
    ga, gb = explicit_gradients(cpu_model, a, predicate), explicit_gradients(cpu_model, b, predicate)
    for name, g_other in (("ab", gb), ("aa", ga)):
        got = {f: out[name][f] for f in ("sgd", "signgd", "asym")}
        assert got["sgd"].device.type == "cuda" and got["sgd"].dtype == torch.float64
        expected = explicit_kernels(ga, g_other)
        assert_close(got["sgd"].cpu(), expected["sgd"], 1e-8)
        assert_close(got["asym"].kernel.cpu(), expected["asym"], 1e-8)
        assert_close(got["asym"].flipped.cpu(), expected["flipped"], 1e-8)
        assert_sign_close(got["signgd"].cpu(), expected["signgd"], ga, g_other)


@pytest.mark.parametrize("formula", ["sgd", "signgd", "asym"])
def test_cuda_fast_equals_cuda_reference_and_cpu(formula, roberta_tok) -> None:
    spec = _spec("roberta", None, roberta_tok)
    cpu_model = PromptLogitModel(spec["mlm"].double(), spec["words"][:2], binary=True).eval()
    gpu_model = copy.deepcopy(cpu_model).to(CUDA)
    a, b = _data(spec, seed=9)
    params = NO_KEY_BIAS if formula == "signgd" else "all"
    fast = _on_cpu(empirical_ntk(gpu_model, a, b, formula=formula, params=params, progress=False))
    ref = _on_cpu(empirical_ntk(gpu_model, a, b, formula=formula, params=params, strategy="reference",
                                progress=False))
    cpu = empirical_ntk(cpu_model, a, b, formula=formula, params=params, progress=False)
    pairs = zip(fast, ref, cpu, strict=True) if formula == "asym" else [(fast, ref, cpu)]
    for f, r, c in pairs:
        assert_close(f, r, 1e-8)
        assert_close(f, c, 1e-8)


def test_cuda_float32_cls_head_and_budget(bert_tok) -> None:
    spec = _spec("bert", bert_tok, None)
    model32 = ClsHeadLogitModel(spec["mlm"], 3, seed=0).eval()
    exact = copy.deepcopy(model32).double()
    a, b = _data(spec, seed=3)
    a, b = ([{k: v for k, v in batch.items() if k != "mask_pos"} for batch in side] for side in (a, b))
    budget = parse_bytes("8MiB")
    gpu_model = copy.deepcopy(model32).to(CUDA)
    with PeakMemory(CUDA) as peak:
        out = empirical_ntk(gpu_model, a, b, formula="asym", progress=False, memory_budget=budget)
    everything = lambda n: True  # noqa: E731
    ga64, gb = explicit_gradients(exact, a, everything), explicit_gradients(model32, b, everything)
    assert_close(out.kernel.cpu(), torch.einsum("ncp,mdp->ncmd", ga64.sign(), gb), 1e-5)
    assert_close(out.flipped.cpu(), explicit_kernels(ga64, gb)["flipped"], 1e-5)
    assert peak.peak_bytes <= budget


def test_logit_models_wrap_a_model_already_on_the_gpu(bert_tok) -> None:
    spec = _spec("bert", bert_tok, None)
    cpu_prompt = PromptLogitModel(spec["mlm"], spec["words"]).eval()
    cpu_cls = ClsHeadLogitModel(spec["mlm"], 3, seed=0).eval()
    gpu_mlm = copy.deepcopy(spec["mlm"]).to(CUDA)
    a, _ = _data(spec, seed=5)
    batch = {k: v.to(CUDA) for k, v in a[0].items()}
    no_mask = {k: v for k, v in batch.items() if k != "mask_pos"}
    with torch.no_grad():
        prompt = PromptLogitModel(gpu_mlm, spec["words"]).eval()(**batch)
        cls = ClsHeadLogitModel(gpu_mlm, 3, seed=0).eval()(**no_mask)
        assert_close(prompt.cpu(), cpu_prompt(**a[0]), 1e-5)
        assert_close(cls.cpu(), cpu_cls(**{k: v for k, v in a[0].items() if k != "mask_pos"}), 1e-5)
