"""`bench perf kernel`: the fast eNTK strategy against the reference (jvp) one, on the same model and inputs.

In one process, on the same model, inputs and thread count, it times the fast strategy (all asked
formulas in one pass) and the reference strategy (one pass per formula, two for ``asym``; training
batches of ``--ref-train-batch``, 1 as in the reference's scripts), checks that the kernels agree
(`benchmark.perf.agreement`), and prints wall and CPU time per phase, their ratio, the plan
(passes, the stored representation), the peak extra memory, the error against float64 on a
sub-block and the ratio to the measured one-pass floor. Unless ``--ref-full``, the reference is
timed on the first ``--ref-eval`` and on a quarter as many evaluation examples and extrapolated
to ``--n-eval`` along the line through the two (said so in the output). On the CPU with a small
model it ends with an estimate for roberta-base on 16-shot SST-2 (the planner's plan for that
shape, `benchmark.perf.estimate`). Timings are printed, never asserted.
With ``--plan-only`` it prints the fast strategy's plan for the sizes (passes, the stored
representation, the budget's shares) after a probe, and computes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from benchmark.kernels import default_budget, empirical_ntks, normalize_formula, parse_bytes
from benchmark.perf.agreement import agreement
from benchmark.perf.estimate import Shape, roberta_base_estimate, roberta_base_work
from benchmark.perf.floor import float64_error, one_pass_floor
from benchmark.perf.inputs import first_examples, local_model, make_batches, param_counts, preset_model
from benchmark.perf.options import KernelBenchOptions
from benchmark.perf.timing import Measured, gib, measure, ratio
from registry import BenchError
from registry.formulas import get_formula, sign_combos

PHASES = ("probe", "forward", "backward", "per_example", "fallback")


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise BenchError(f"--device: unknown device '{name}'; use cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda: no CUDA device is visible here; use --device cpu")
    return device


def run_kernel_bench(options: KernelBenchOptions, echo: Callable[[str], None] = print) -> bool:
    """Measure and print the report; returns whether the two strategies' kernels agree."""
    from benchmark.models import PromptLogitModel

    formulas = list(dict.fromkeys(normalize_formula(f) for f in options.formulas))
    budget = parse_bytes(options.memory_budget) if options.memory_budget else None
    device = _device(options.device)
    torch.set_num_threads(options.threads)
    dtype = torch.float64 if options.dtype == "float64" else torch.float32
    if options.model:
        mlm, ids = local_model(options.model, dtype)
    else:
        mlm, ids = preset_model(options.preset, options.seed, dtype)
    mlm.to(device)
    generator = torch.Generator().manual_seed(options.seed)
    n_words = 2 if options.num_labels == 1 else options.num_labels
    if n_words > ids["vocab"] - ids["first"]:
        raise BenchError(f"--num-labels {options.num_labels}: the model's vocabulary has too few words")
    words = (ids["first"] + torch.randperm(ids["vocab"] - ids["first"], generator=generator)[:n_words]).tolist()
    model = PromptLogitModel(mlm, words, binary=options.num_labels == 1).to(device).eval()
    train = make_batches(options.n_train, options.batch_size, options.seq_len, ids, generator)
    evals = make_batches(options.n_eval, options.batch_size, options.seq_len, ids, generator)
    budget = budget or default_budget(device)
    total, dense, hidden = param_counts(mlm)
    C = model.num_outputs
    name = options.model or f"random RoBERTa-shaped ({options.preset})"
    echo(f"model: {name} ({total / 1e6:.2f}M parameters, {dense / 1e6:.2f}M dense non-embedding), "
         f"{options.dtype}, device {device}, {torch.get_num_threads()} thread(s)")
    echo(f"inputs: N_train={options.n_train}, N_eval={options.n_eval}, seq len {options.seq_len} (padded, lengths "
         f"L/2..L), C={C}, batch {options.batch_size}, formulas {','.join(formulas)}, params {options.params}, "
         f"budget {gib(budget)}")

    stats: dict[str, Any] = {}
    if options.plan_only:
        _report_plan(echo, model, train, evals, formulas, options.params, budget, stats)
        return True
    fast = measure(lambda: empirical_ntks(model, train, {"eval": evals}, formulas=formulas, params=options.params,
                                          memory_budget=budget, progress=options.progress, stats=stats)["eval"],
                   device)
    _report_fast(echo, fast, stats, budget, C, dense)
    if options.floor:
        cols = int(stats.get("dense_cols", dense))
        floor = one_pass_floor(model, train + evals, C * options.n_train, C * options.n_eval, cols, options.params)
        echo(f"  one-pass floor (batched forward + {C} reverse pass(es) over all {options.n_train + options.n_eval} "
             f"examples, plus one float32 product over {cols} dense columns): CPU {floor.total:.2f} s (forward "
             f"{floor.forward:.2f}, reverse {floor.reverse:.2f}, product {floor.gemm:.2f}); "
             f"fast / floor = {ratio(fast.cpu, floor.total):.2f}x")
    if options.error_sub and dtype != torch.float64:
        n_a, n_b = min(options.error_sub, options.n_train), min(options.error_sub, options.n_eval)
        errors = float64_error(mlm, words, C == 1, first_examples(train, n_a), first_examples(evals, n_b),
                               fast.result, formulas, options.params)
        shown = ", ".join(f"{k} {v:.2e}" for k, v in errors.items())
        echo(f"  error vs float64 on the first {n_a} x {n_b} block (max |diff| / max |kernel|): {shown}")

    agree = True
    if options.reference:
        agree = _reference(options, echo, model, mlm, words, train, evals, formulas, fast, device)
    echo("")
    if options.preset == "roberta-base" and not options.model:
        echo("roberta-base measured directly above (no estimate)")
    elif device.type == "cpu":
        bench = Shape(dense, hidden, int(mlm.config.num_hidden_layers))
        work = roberta_base_work(formulas, options.params, budget, options.seq_len, options.batch_size,
                                 options.num_labels, options.seed)
        echo(roberta_base_estimate(stats, bench, options.n_train, options.n_eval, options.seq_len, C,
                                   len(sign_combos([get_formula(f) for f in formulas])), work, budget))
    else:  # a small model leaves a GPU launch-bound: its per-FLOP costs say nothing about roberta-base
        echo("estimate for roberta-base: printed on the CPU only (per-FLOP costs of a small model on a GPU "
             "are launch-bound)")
    return agree


def _report_fast(echo: Callable[[str], None], fast: Measured, stats: dict[str, Any], budget: int, C: int,
                 dense: int) -> None:
    grad_wall = sum(stats.get(k, 0.0) for k in PHASES)
    grad_cpu = sum(stats.get(f"{k}_cpu", 0.0) for k in PHASES)
    echo("\nfast strategy (per-example gradients + products, all formulas in one pass)")
    echo(f"  wall {fast.wall:8.2f} s   CPU {fast.cpu:8.2f} s   peak extra memory {gib(fast.peak)} "
         f"(budget {gib(budget)}: {'within' if fast.peak <= budget else 'OVER'})")
    echo(f"  per-example gradients alone: wall {grad_wall:.2f} s, CPU {grad_cpu:.2f} s (CPU: forward "
         f"{stats.get('forward_cpu', 0):.2f}, reverse {stats.get('backward_cpu', 0):.2f}, assembly "
         f"{stats.get('per_example_cpu', 0):.2f}); products: wall {stats.get('contract', 0):.2f} s, CPU "
         f"{stats.get('contract_cpu', 0):.2f} s; stored columns formed again from factors: CPU "
         f"{stats.get('formed_cpu', 0):.2f} s")
    echo(f"  plan: {stats.get('passes')} pass(es), chunk {stats.get('chunk')} train examples, "
         f"{stats.get('groups')} parameter group(s), max batch {stats.get('max_batch')}, "
         f"segment {stats.get('segment_cols')} columns, streamed units of {stats.get('unit_rows') or '-'} rows"
         f"{_units_run(stats)}, "
         f"fallback {stats.get('fallback_params') or 'none'}")
    echo(f"  training side stored as: {stats.get('representation', 'per-example gradients')}")
    if stats.get("tokens_given"):
        run, given = stats["tokens_run"], stats["tokens_given"]
        echo(f"  padding: batches run cut to their longest example (each batch ordered by length): "
             f"{run:,} of {given:,} token positions run ({1 - run / given:.0%} cut)")
    if "activation_bytes" in stats:
        grads = C * int(stats.get("dense_cols", dense)) * 4
        recorded = int(stats["activation_bytes"])
        echo(f"  per training example: per-example gradients {grads / 2**20:.0f} MiB; recorded layer inputs and "
             f"outputs {recorded / 2**20:.1f} MiB")


def _units_run(stats: dict[str, Any]) -> str:
    """How wide the streamed units ran when examples cut shorter let more into one (else nothing)."""
    run, planned = stats.get("unit_rows_run", 0), stats.get("unit_rows") or 0
    return f" at the probe's width (up to {run} run, examples cut shorter)" if run > planned else ""


def _report_plan(echo: Callable[[str], None], model: torch.nn.Module, train: list, evals: list, formulas: list[str],
                 params: str, budget: int, stats: dict[str, Any]) -> None:
    """Probe and plan as the fast strategy would, and print the plan (nothing is computed)."""
    from benchmark.kernels import select_parameters
    from benchmark.kernels.fast import FastKernelEngine
    combos = sign_combos([get_formula(name) for name in formulas])
    engine = FastKernelEngine(model, select_parameters(model, params), combos, memory_budget=budget, stats=stats)
    engine.run(train, {"eval": evals}, plan_only=True)
    plan = engine.plan
    assert plan is not None
    echo("\nplan of the fast strategy (nothing computed)")
    echo(f"  {plan.passes} pass(es), {len(plan.groups)} parameter group(s), chunk {plan.chunk} train examples, "
         f"max batch {plan.max_batch}, segment {plan.segment_cols} columns, streamed units of "
         f"{plan.unit_rows or '-'} rows, float64 model copy: {'yes' if engine._wants_twin() else 'no'}")
    echo(f"  training side stored as: {plan.representation}")
    echo(f"  budget {gib(budget)}: kernels {gib(plan.kernel_bytes)}, stored side {gib(plan.store_budget)}, "
         f"workspace {gib(plan.work_budget)}, activations {gib(plan.act_budget)}")


def _reference(
    options: KernelBenchOptions, echo: Callable[[str], None], model: torch.nn.Module, mlm: torch.nn.Module,
    words: list[int], train: list[dict[str, torch.Tensor]], evals: list[dict[str, torch.Tensor]],
    formulas: list[str], fast: Measured, device: torch.device,
) -> bool:
    """Time the reference strategy (measured, or extrapolated from two subsets) and compare its kernels."""
    n_eval = options.n_eval
    n_ref = n_eval if options.ref_full else min(n_eval, options.ref_eval)
    step = options.ref_train_batch
    ref_train = [{k: v[i : i + step] for k, v in batch.items()}
                 for batch in train for i in range(0, batch["input_ids"].shape[0], step)]

    def run(n: int) -> Measured:
        sub = first_examples(evals, n)
        return measure(lambda: empirical_ntks(model, ref_train, {"eval": sub}, formulas=formulas,
                                              params=options.params, strategy="reference",
                                              progress=options.progress)["eval"], device)

    ref = run(n_ref)
    if n_ref == n_eval:
        label = "measured on all eval examples"
        ref_wall, ref_cpu = ref.wall, ref.cpu
    else:
        # The reference has a fixed part (the training Jacobians) and a part linear in N_eval:
        # time two subset sizes and extrapolate the line through them.
        n_small = max(1, n_ref // 4)
        small = run(n_small) if n_small < n_ref else ref
        span = max(1, n_ref - n_small)
        ref_wall = ref.wall + (ref.wall - small.wall) / span * (n_eval - n_ref)
        ref_cpu = ref.cpu + (ref.cpu - small.cpu) / span * (n_eval - n_ref)
        label = (f"EXTRAPOLATED to {n_eval} eval examples along the line through measurements on "
                 f"{n_small} (CPU {small.cpu:.1f} s) and {n_ref} (CPU {ref.cpu:.1f} s) eval examples")
    echo(f"\nreference strategy (jacrev + jvp, one pass per formula; training batches of {step}, eval batches of "
         f"{options.batch_size}) -- {label}")
    echo(f"  wall {ref_wall:8.2f} s   CPU {ref_cpu:8.2f} s   peak extra memory {gib(ref.peak)} "
         f"(on {n_ref} eval examples)")
    echo(f"\nspeed-up (reference / fast): wall {ratio(ref_wall, fast.wall):.1f}x, CPU {ratio(ref_cpu, fast.cpu):.1f}x")
    lines, agree = agreement(model, mlm, words, train, first_examples(evals, n_ref), formulas, options.params,
                             fast.result, ref.result, n_ref)
    for line in lines:
        echo(line)
    return agree
