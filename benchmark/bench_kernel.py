"""Speed and memory of the fast eNTK strategy against the reference (jvp) strategy.

Run ``python -m benchmark.bench_kernel --help``. In one process, on the same model, inputs and
thread count, it times the fast strategy (all asked formulas in one pass) and the reference
strategy (one pass per formula, two for ``asym``; training batches of ``--ref-train-batch``, 1
as in the reference's scripts), checks that the kernels agree (1e-5 relative; 2e-4 for
``signgd``, or more when the model has more round-off-level gradient entries, whose signs may
flip between two correct autograd paths), and prints wall and CPU time, their ratio, the time of
the per-example gradients alone, and the peak extra memory. Unless ``--ref-full``, the reference
is timed on the first ``--ref-eval`` and on a quarter as many evaluation examples and
extrapolated to ``--n-eval`` along the line through the two (said so in the output).
It ends with an estimate for roberta-base on 16-shot SST-2 from the measured per-gradient cost.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from benchmark.bench_floor import float64_error, one_pass_floor
from benchmark.kernels import PeakMemory, empirical_ntks, normalize_formula, parse_bytes
from benchmark.kernels.memory import default_budget
from registry import BenchError

SIGN_TOLERANCE = 2e-4
TOLERANCE = 1e-5


@dataclass
class Measured:
    """Wall time, CPU time and peak extra memory of one call."""

    wall: float
    cpu: float
    peak: int
    result: Any


def measure(fn: Callable[[], Any], device: torch.device) -> Measured:
    """Run ``fn`` once, timing it and tracking the peak memory it adds."""
    with PeakMemory(device) as peak:
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return Measured(wall, cpu, peak.peak_bytes, result)


def _random_roberta(seed: int, dtype: torch.dtype, *, vocab: int, hidden: int, layers: int, heads: int,
                    intermediate: int, mask: int) -> tuple[torch.nn.Module, dict[str, int]]:
    """A randomly initialised RoBERTa masked LM of the given sizes (eager attention), and its special ids."""
    from transformers import RobertaConfig, RobertaForMaskedLM

    torch.manual_seed(seed)
    config = RobertaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=514,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        attn_implementation="eager",
    )
    model = RobertaForMaskedLM(config).to(dtype).eval()
    return model, {"vocab": vocab, "pad": 1, "bos": 0, "eos": 2, "mask": mask, "first": 5}


def random_roberta(seed: int, dtype: torch.dtype) -> tuple[torch.nn.Module, dict[str, int]]:
    """The random 4.5M-parameter RoBERTa-shaped masked LM (bert-tiny sizes, RoBERTa layout)."""
    return _random_roberta(seed, dtype, vocab=30522, hidden=128, layers=2, heads=2, intermediate=512, mask=4)


def roberta_base(seed: int, dtype: torch.dtype) -> tuple[torch.nn.Module, dict[str, int]]:
    """A random masked LM of roberta-base's shape (124.7M parameters) from a `RobertaConfig`, no download."""
    return _random_roberta(seed, dtype, vocab=50265, hidden=768, layers=12, heads=12, intermediate=3072, mask=50264)


def local_model(path: str, dtype: torch.dtype) -> tuple[torch.nn.Module, dict[str, int]]:
    """A saved masked LM (and its tokenizer's special ids), loaded with eager attention."""
    from benchmark.backbones import load_masked_lm, resolve_backbone

    model, tokenizer = load_masked_lm(resolve_backbone(path), dtype=dtype)
    special = [i for i in tokenizer.all_special_ids if i is not None]
    return model.eval(), {
        "vocab": int(model.config.vocab_size),
        "pad": int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0),
        "bos": int(tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id or 0),
        "eos": int(tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id or 0),
        "mask": int(tokenizer.mask_token_id if tokenizer.mask_token_id is not None else 0),
        "first": max(special, default=0) + 1,
    }


def make_batches(
    n: int, batch_size: int, seq_len: int, ids: dict[str, int], generator: torch.Generator
) -> list[dict[str, torch.Tensor]]:
    """Random prompts with padding: <s> tokens... <mask> ... </s> <pad>*, lengths in [L/2, L]."""
    batches = []
    for start in range(0, n, batch_size):
        size = min(batch_size, n - start)
        tokens = torch.randint(ids["first"], ids["vocab"], (size, seq_len), generator=generator)
        lengths = torch.randint(max(4, seq_len // 2), seq_len + 1, (size,), generator=generator)
        keep = torch.arange(seq_len)[None, :] < lengths[:, None]
        tokens[~keep] = ids["pad"]
        tokens[:, 0] = ids["bos"]
        tokens[torch.arange(size), lengths - 1] = ids["eos"]
        mask_pos = 1 + (torch.rand(size, generator=generator) * (lengths - 2).float()).long()
        tokens[torch.arange(size), mask_pos] = ids["mask"]
        batches.append({"input_ids": tokens, "attention_mask": keep.long(), "mask_pos": mask_pos})
    return batches


def roundoff_entries(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]], params: str) -> int:
    """Most gradient entries with 0 < |g| < 1e-9 (round-off) of any logit of a few examples.

    Their signs are arbitrary, so two correct computations of a sign kernel may differ by up to
    twice the number of such entries on each side.
    """
    from benchmark.kernels import select_parameters

    tensors = [s.tensor for s in select_parameters(model, params)]
    flags = [t.requires_grad for t in tensors]
    worst = 0
    try:
        for t in tensors:
            t.requires_grad_(True)
        for batch in batches[:1]:
            for i in range(min(2, batch["input_ids"].shape[0])):
                device = tensors[0].device
                logits = model(**{k: v[i : i + 1].to(device) for k, v in batch.items()})
                for c in range(logits.shape[1]):
                    grads = torch.autograd.grad(logits[0, c], tensors, retain_graph=True, allow_unused=True)
                    count = sum(int(((g != 0) & (g.abs() < 1e-9)).sum()) for g in grads if g is not None)
                    worst = max(worst, count)
    finally:
        for t, flag in zip(tensors, flags, strict=True):
            t.requires_grad_(flag)
    return worst


def _first_examples(batches: list[dict[str, torch.Tensor]], n: int) -> list[dict[str, torch.Tensor]]:
    out, left = [], n
    for batch in batches:
        if left <= 0:
            break
        take = min(left, batch["input_ids"].shape[0])
        out.append({k: v[:take] for k, v in batch.items()})
        left -= take
    return out


def _relative(fast: torch.Tensor, ref: torch.Tensor) -> float:
    scale = float(ref.abs().max())
    return float((fast - ref).abs().max()) / scale if scale else float((fast - ref).abs().max())


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _param_counts(model: torch.nn.Module) -> tuple[int, int, int]:
    """(all, dense non-embedding, hidden size) of a masked LM."""
    total = sum(p.numel() for p in model.parameters())
    embed = sum(p.numel() for n, p in model.named_parameters() if "embed" in n)
    dense = total - embed - int(model.config.vocab_size)  # decoder bias is sparse too
    return total, dense, int(model.config.hidden_size)


@dataclass(frozen=True)
class Shape:
    """What the cost model needs of a model: dense non-embedding parameters, width, depth."""

    dense: int
    hidden: int
    layers: int

    def forward_flops(self, seq_len: int) -> float:
        """One example's forward pass (matrix products and attention)."""
        return 2.0 * seq_len * self.dense + 4.0 * seq_len * seq_len * self.hidden * self.layers

    def assembly_flops(self, seq_len: int) -> float:
        """One example-logit's per-example weight gradients (sum over positions of outer products)."""
        return 2.0 * seq_len * self.dense


ROBERTA_BASE = Shape(dense=85_648_896, hidden=768, layers=12)  # encoder + LM-head dense, no embeddings


def roberta_base_estimate(
    stats: dict[str, Any], bench: Shape, n_train: int, n_eval: int, seq_len: int, C: int, combos: int, budget: int
) -> str:
    """Estimated fast-strategy time for roberta-base on 16-shot SST-2 (train 32, dev 32, test 872, C = 2).

    Seconds per FLOP of each phase (forward, reverse, assembly, products) are measured on the
    benchmark model and applied to roberta-base's FLOPs; the pass structure follows the planner
    (all training gradients stored if they fit, else tensor groups or example chunks).
    """
    passes = max(1, int(stats.get("passes", 1)))
    examples = n_train + passes * n_eval
    rate_f = stats.get("forward_cpu", 0.0) / max(1.0, examples * bench.forward_flops(seq_len))
    rate_r = stats.get("backward_cpu", 0.0) / max(1.0, examples * C * bench.forward_flops(seq_len))
    rate_s = stats.get("per_example_cpu", 0.0) / max(1.0, examples * C * bench.assembly_flops(seq_len))
    rate_p = stats.get("contract_cpu", 0.0) / max(1.0, 2.0 * n_train * C * n_eval * C * bench.dense * combos)

    n_tr, n_other, c = 32, 32 + 872, 2
    f = rate_f * ROBERTA_BASE.forward_flops(seq_len)
    r = rate_r * c * ROBERTA_BASE.forward_flops(seq_len)
    a = rate_s * c * ROBERTA_BASE.assembly_flops(seq_len)
    sign = combos > 1
    stored = n_tr * c * ROBERTA_BASE.dense * 4 * (2 if sign else 1)
    out = n_tr * c * (n_tr + n_other) * c * 8 * combos
    store = 0.45 * max(budget - out, 64 * 2**20)
    if stored <= store:
        how, seconds = "1 pass", (n_tr + n_other) * (f + r + a)
    else:
        chunks = math.ceil(stored / store)  # example chunks, or about as many tensor groups
        by_examples = n_tr * (f + r + a) + chunks * n_other * (f + r + a)
        by_groups = chunks * (n_tr + n_other) * (f + r) + (n_tr + n_other) * a
        how = f"{chunks} passes ({'tensor groups' if by_groups < by_examples else 'example chunks'})"
        seconds = min(by_examples, by_groups)
    seconds += rate_p * 2.0 * n_tr * c * (n_tr + n_other) * c * ROBERTA_BASE.dense * combos
    return (
        f"estimate: roberta-base, 16-shot SST-2 (N_train=32, N_dev=32, N_test=872, C=2, ~{seq_len} tokens, "
        f"{combos} sign combination(s)): ~{seconds / 60:.0f} min of fast strategy on this CPU with "
        f"{torch.get_num_threads()} thread(s), {how} with a {_gib(budget)} budget "
        "(per-FLOP costs of each phase measured here, applied to roberta-base's FLOPs)"
    )


def _agreement(
    model: torch.nn.Module,
    mlm: torch.nn.Module,
    words: list[int],
    train: list[dict[str, torch.Tensor]],
    sub: list[dict[str, torch.Tensor]],
    formulas: list[str],
    args: argparse.Namespace,
    fast: Measured,
    ref: Measured,
    n_ref: int,
) -> int:
    """Print how the two strategies' kernels agree; returns 1 on a real mismatch.

    A kernel with a sign in it is sensitive to round-off: a gradient entry within float32 round-off
    of zero has an arbitrary sign, and a flip changes the kernel by twice the other side's entry.
    So the same kernel is also computed in float64 (fast strategy, the compared examples only) as
    the arbiter: beyond the tolerance, the fast kernel still passes when it is at least as close
    to the float64 kernel as the reference's is (the difference is then the reference's round-off).
    """
    from benchmark.models import PromptLogitModel

    truth = None
    if dtype_of(model) != torch.float64 and any(f != "sgd" for f in formulas):
        exact = PromptLogitModel(copy.deepcopy(mlm).double(), words, binary=model.num_outputs == 1).eval()
        truth = empirical_ntks(exact, train, {"eval": sub}, formulas=formulas, params=args.params, progress=False)
        truth = truth["eval"]
    print("agreement on the common eval examples (max |difference| / max |kernel|):")
    status = 0
    for f in formulas:
        parts = [("kernel", 0), ("flipped", 1)] if f == "asym" else [("kernel", None)]
        for name, index in parts:
            pick = lambda v, index=index: v if index is None else v[index]  # noqa: E731
            fk, rk = pick(fast.result[f])[:, :, :n_ref].cpu(), pick(ref.result[f]).cpu()
            err = _relative(fk, rk)
            tol, note = TOLERANCE, ""
            if f == "asym" and name == "flipped" and dtype_of(model) != torch.float64:
                tol = SIGN_TOLERANCE  # both strategies take this kernel's signs from float32 eval-side gradients
                note = "; signs from float32 eval-side gradients in both strategies"
            if f == "signgd":
                noisy = roundoff_entries(model, train, args.params)
                allowed = 4.0 * noisy / float(rk.abs().max())
                tol = max(SIGN_TOLERANCE, allowed)
                note = (
                    f"; {noisy} gradient entries per example are round-off (0 < |g| < 1e-9, e.g. the attention "
                    f"key bias, whose exact gradient is 0) and may flip sign: up to {allowed:.1e}"
                )
            ok = err <= tol
            line = f"  {f:7s} {name:8s} fast vs reference {err:.2e} (tolerance {tol:.1e}{note})"
            if truth is not None and f != "sgd":
                tk = pick(truth[f]).cpu()
                err_fast, err_ref = _relative(fk, tk), _relative(rk, tk)
                line += f"; vs float64: fast {err_fast:.2e}, reference {err_ref:.2e}"
                if not ok and err_fast <= max(err_ref, tol):
                    ok = True
                    line += " (the reference is the one off: float32 sign round-off)"
            status |= 0 if ok else 1
            print(f"{line} {'OK' if ok else 'MISMATCH'}")
    return status


def dtype_of(model: torch.nn.Module) -> torch.dtype:
    """The dtype of the model's first parameter."""
    return next(model.parameters()).dtype


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m benchmark.bench_kernel", description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="local masked-LM directory (default: a random model, see --preset)")
    p.add_argument(
        "--preset",
        default="small",
        choices=("small", "roberta-base"),
        help="random model: small (4.5M, bert-tiny sizes) or roberta-base (124.7M, from a RobertaConfig)",
    )
    p.add_argument("--no-floor", action="store_true", help="skip the one-pass floor measurement")
    p.add_argument(
        "--error-sub", type=int, default=4, help="train and eval examples of the float64 check (0: no check)"
    )
    p.add_argument("--n-train", type=int, default=32)
    p.add_argument("--n-eval", type=int, default=1000)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--num-labels", "-C", type=int, default=2, help="C (1 = binary logit difference)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--formulas", default="sgd", help="comma-separated: sgd,signgd,asym")
    p.add_argument("--params", default="all", help="parameter preset (all, no-embeddings, no-head, biases)")
    p.add_argument("--memory-budget", default=None, help="e.g. 1GiB (default: half the free memory)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--ref-eval", type=int, default=64, help="eval examples the reference is timed on")
    p.add_argument(
        "--ref-train-batch",
        type=int,
        default=1,
        help="training (outer) batch size of the reference, 1 as in the reference's run_fewshot.sh",
    )
    p.add_argument("--ref-full", action="store_true", help="time the reference on all --n-eval examples")
    p.add_argument("--no-reference", action="store_true", help="time the fast strategy only")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the report; returns 1 if the kernels disagree."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    formulas = list(dict.fromkeys(normalize_formula(f) for f in args.formulas.split(",") if f.strip()))
    from benchmark.models import PromptLogitModel

    if args.model:
        mlm, ids = local_model(args.model, dtype)
    else:
        mlm, ids = (roberta_base if args.preset == "roberta-base" else random_roberta)(args.seed, dtype)
    mlm.to(device)
    generator = torch.Generator().manual_seed(args.seed)
    n_words = 2 if args.num_labels == 1 else args.num_labels
    words = (ids["first"] + torch.randperm(ids["vocab"] - ids["first"], generator=generator)[:n_words]).tolist()
    model = PromptLogitModel(mlm, words, binary=args.num_labels == 1).to(device).eval()
    train = make_batches(args.n_train, args.batch_size, args.seq_len, ids, generator)
    evals = make_batches(args.n_eval, args.batch_size, args.seq_len, ids, generator)
    budget = parse_bytes(args.memory_budget) if args.memory_budget else default_budget(device)
    total, dense, hidden = _param_counts(mlm)
    name = args.model or f"random RoBERTa-shaped ({args.preset})"
    print(
        f"model: {name} ({total / 1e6:.2f}M parameters, {dense / 1e6:.2f}M dense "
        f"non-embedding), {args.dtype}, device {device}, {torch.get_num_threads()} thread(s)"
    )
    print(
        f"inputs: N_train={args.n_train}, N_eval={args.n_eval}, seq len {args.seq_len} (padded, lengths "
        f"L/2..L), C={model.num_outputs}, batch {args.batch_size}, formulas {','.join(formulas)}, "
        f"params {args.params}, budget {_gib(budget)}"
    )

    stats: dict[str, Any] = {}
    fast = measure(
        lambda: empirical_ntks(
            model,
            train,
            {"eval": evals},
            formulas=formulas,
            params=args.params,
            memory_budget=budget,
            progress=args.progress,
            stats=stats,
        )["eval"],
        device,
    )
    phases = ("probe", "forward", "backward", "per_example", "fallback")
    grad_time = sum(stats.get(k, 0.0) for k in phases)
    grad_cpu = sum(stats.get(f"{k}_cpu", 0.0) for k in phases)
    print("\nfast strategy (per-example gradients + products, all formulas in one pass)")
    print(
        f"  wall {fast.wall:8.2f} s   CPU {fast.cpu:8.2f} s   peak extra memory {_gib(fast.peak)} "
        f"(budget {_gib(budget)}: {'within' if fast.peak <= budget else 'OVER'})"
    )
    print(
        f"  per-example gradients alone: wall {grad_time:.2f} s, CPU {grad_cpu:.2f} s (CPU: forward "
        f"{stats.get('forward_cpu', 0):.2f}, reverse {stats.get('backward_cpu', 0):.2f}, assembly "
        f"{stats.get('per_example_cpu', 0):.2f}); products: wall {stats.get('contract', 0):.2f} s, CPU "
        f"{stats.get('contract_cpu', 0):.2f} s"
    )
    print(
        f"  plan: {stats.get('passes')} pass(es), chunk {stats.get('chunk')} train examples, "
        f"{stats.get('groups')} parameter group(s), max batch {stats.get('max_batch')}, "
        f"segment {stats.get('segment_cols')} columns, fallback {stats.get('fallback_params') or 'none'}"
    )
    print(f"  training side stored as: {stats.get('representation', 'per-example gradients')}")
    if "activation_bytes" in stats:
        C = model.num_outputs
        grads = C * int(stats.get("dense_cols", dense)) * 4
        factored = int(stats["activation_bytes"]) * (1 + C) / 2  # inputs once, output gradients per logit
        print(
            f"  per training example: per-example gradients {grads / 2**20:.0f} MiB; recorded layer inputs and "
            f"outputs {int(stats['activation_bytes']) / 2**20:.1f} MiB (inputs + {C} output gradient(s) "
            f"~{factored / 2**20:.1f} MiB: the factored representation, not implemented)"
        )
    if not args.no_floor:
        C = model.num_outputs
        floor = one_pass_floor(
            model, train + evals, C * args.n_train, C * args.n_eval, int(stats.get("dense_cols", dense)), args.params
        )
        print(
            f"  one-pass floor (batched forward + {C} reverse pass(es) over all {args.n_train + args.n_eval} "
            f"examples, plus one float32 product over {stats.get('dense_cols', dense)} dense columns): CPU "
            f"{floor.total:.2f} s (forward {floor.forward:.2f}, reverse {floor.reverse:.2f}, product "
            f"{floor.gemm:.2f}); fast / floor = {fast.cpu / max(floor.total, 1e-9):.2f}x"
        )
    if args.error_sub and dtype != torch.float64:
        n_sub = args.error_sub
        errors = float64_error(
            mlm,
            words,
            args.num_labels == 1,
            _first_examples(train, n_sub),
            _first_examples(evals, n_sub),
            fast.result,
            formulas,
            args.params,
        )
        shown = ", ".join(f"{k} {v:.2e}" for k, v in errors.items())
        print(f"  error vs float64 on the first {n_sub} x {n_sub} block (max |diff| / max |kernel|): {shown}")

    status = 0
    if not args.no_reference:
        n_ref = args.n_eval if args.ref_full else min(args.n_eval, args.ref_eval)
        ref_train = [
            {k: v[i : i + args.ref_train_batch] for k, v in batch.items()}
            for batch in train
            for i in range(0, batch["input_ids"].shape[0], args.ref_train_batch)
        ]

        def run_reference(n: int) -> Measured:
            sub = _first_examples(evals, n)
            return measure(
                lambda: empirical_ntks(
                    model,
                    ref_train,
                    {"eval": sub},
                    formulas=formulas,
                    params=args.params,
                    strategy="reference",
                    progress=args.progress,
                )["eval"],
                device,
            )

        ref = run_reference(n_ref)
        if n_ref == args.n_eval:
            label = "measured on all eval examples"
            ref_wall, ref_cpu = ref.wall, ref.cpu
        else:
            # The reference has a fixed part (the training Jacobians) and a part linear in N_eval:
            # time two subset sizes and extrapolate the line through them.
            n_small = max(1, n_ref // 4)
            small = run_reference(n_small)
            slope_wall = (ref.wall - small.wall) / (n_ref - n_small)
            slope_cpu = (ref.cpu - small.cpu) / (n_ref - n_small)
            ref_wall = ref.wall + slope_wall * (args.n_eval - n_ref)
            ref_cpu = ref.cpu + slope_cpu * (args.n_eval - n_ref)
            label = (
                f"EXTRAPOLATED to {args.n_eval} eval examples along the line through measurements on "
                f"{n_small} (CPU {small.cpu:.1f} s) and {n_ref} (CPU {ref.cpu:.1f} s) eval examples"
            )
        print(
            f"\nreference strategy (jacrev + jvp, one pass per formula; training batches of "
            f"{args.ref_train_batch}, eval batches of {args.batch_size}) -- {label}"
        )
        print(
            f"  wall {ref_wall:8.2f} s   CPU {ref_cpu:8.2f} s   peak extra memory {_gib(ref.peak)} "
            f"(on {n_ref} eval examples)"
        )
        print(f"\nspeed-up (reference / fast): wall {ref_wall / fast.wall:.1f}x, CPU {ref_cpu / fast.cpu:.1f}x")
        status = _agreement(model, mlm, words, train, _first_examples(evals, n_ref), formulas, args, fast, ref, n_ref)
    print()
    combos = len({c for f in formulas for c in {"sgd": ["ff"], "signgd": ["tt"], "asym": ["tf", "ft"]}[f]})
    bench = Shape(dense, hidden, int(mlm.config.num_hidden_layers))
    C = model.num_outputs
    if args.preset == "roberta-base" and not args.model:
        print("roberta-base measured directly above (no estimate)")
    elif device.type == "cpu":
        print(roberta_base_estimate(stats, bench, args.n_train, args.n_eval, args.seq_len, C, combos, budget))
    else:  # a small model leaves a GPU launch-bound: its per-FLOP costs say nothing about roberta-base
        print(
            "estimate for roberta-base: printed on the CPU only (per-FLOP costs of a small model on a GPU "
            "are launch-bound)"
        )
    return status


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
