"""The `bench perf` sub-app: `bench perf kernel` and `bench perf train` (typer), thin over their modules.

The commands validate their options into `benchmark.perf.options` models (a bad value is one
`BenchError` line, exit 2) and import torch and the engine only when they run, so mounting the
sub-app costs `bench` nothing at start-up.
"""

from __future__ import annotations

from typing import Annotated

import typer

from benchmark.perf.options import KernelBenchOptions, TrainBenchOptions, validated

perf_app = typer.Typer(no_args_is_help=True, add_completion=False,
                       help="Benchmarks: the eNTK engine and the fine-tuning loop against their baselines.")


@perf_app.command("kernel")
def kernel_cmd(
    model: Annotated[str | None, typer.Option(help="registered backbone (e.g. bert-tiny) or masked-LM directory "
                                                   "(default: a random model, see --preset)")] = None,
    preset: Annotated[str, typer.Option(help="random model: small (4.4M, bert-tiny sizes) or roberta-base "
                                             "(124.7M, from a RobertaConfig; no download)")] = "small",
    n_train: Annotated[int, typer.Option(help="training examples (the stored side)")] = 32,
    n_eval: Annotated[int, typer.Option(help="evaluation examples")] = 1000,
    seq_len: Annotated[int, typer.Option(help="tokens per example (lengths L/2..L, padded)")] = 64,
    num_labels: Annotated[int, typer.Option("--num-labels", "-C", help="C (1 = the binary logit difference)")] = 2,
    threads: Annotated[int, typer.Option(help="torch threads")] = 1,
    formulas: Annotated[str, typer.Option(help="comma-separated: sgd,signgd,asym")] = "sgd",
    params: Annotated[str, typer.Option(help="parameter preset: all, no-embeddings, no-head, biases")] = "all",
    memory_budget: Annotated[str | None, typer.Option(help="e.g. 4GiB (default: half the free memory)")] = None,
    batch_size: Annotated[int, typer.Option(help="examples per input batch")] = 16,
    ref_eval: Annotated[int, typer.Option(help="eval examples the reference is timed on")] = 64,
    ref_train_batch: Annotated[int, typer.Option(help="the reference's training batch (1, as its scripts)")] = 1,
    ref_full: Annotated[bool, typer.Option(help="time the reference on all --n-eval examples")] = False,
    reference: Annotated[bool, typer.Option(help="also time the reference (jvp) strategy and compare")] = True,
    floor: Annotated[bool, typer.Option(help="measure the one-pass floor")] = True,
    error_sub: Annotated[int, typer.Option(help="train and eval examples of the float64 check (0: none)")] = 4,
    device: Annotated[str, typer.Option(help="cpu or cuda[:N]")] = "cpu",
    dtype: Annotated[str, typer.Option(help="float32 or float64")] = "float32",
    seed: Annotated[int, typer.Option(help="seed of the random model and inputs")] = 0,
    progress: Annotated[bool, typer.Option(help="progress bars")] = False,
    plan_only: Annotated[bool, typer.Option(help="print the fast strategy's plan for these sizes and stop")] = False,
) -> None:
    """The fast eNTK strategy vs the reference one: phases, plan, peak memory, float64 error, floor ratio.

    Exit status 1 when the two strategies' kernels disagree beyond their tolerance.
    """
    options = validated(KernelBenchOptions, model=model, preset=preset, n_train=n_train, n_eval=n_eval,
                        seq_len=seq_len, num_labels=num_labels, threads=threads, formulas=formulas, params=params,
                        memory_budget=memory_budget, batch_size=batch_size, ref_eval=ref_eval,
                        ref_train_batch=ref_train_batch, ref_full=ref_full, reference=reference, floor=floor,
                        error_sub=error_sub, device=device, dtype=dtype, seed=seed, progress=progress,
                        plan_only=plan_only)
    from benchmark.perf.kernel import run_kernel_bench

    if not run_kernel_bench(options, echo=_echo):  # type: ignore[arg-type]
        raise typer.Exit(1)


@perf_app.command("train")
def train_cmd(
    model: Annotated[str, typer.Option(help="registered backbone or masked-LM directory")] = "bert-tiny",
    batch_size: Annotated[int, typer.Option(help="training batch")] = 8,
    examples: Annotated[int, typer.Option(help="random training sentences")] = 64,
    words: Annotated[int, typer.Option(help="most words per sentence")] = 40,
    steps: Annotated[int, typer.Option(help="timed steps per round")] = 60,
    rounds: Annotated[int, typer.Option(help="rounds, alternating between the loops")] = 3,
    check_steps: Annotated[int, typer.Option(help="steps of the same-work check, dropout off (0: none)")] = 2,
    full_vocab: Annotated[bool, typer.Option(help="also time a plain loop scoring the whole vocabulary")] = False,
    threads: Annotated[int | None, typer.Option(help="torch threads (default: torch's)")] = None,
    seed: Annotated[int, typer.Option(help="seed of the sentences, batch order and dropout")] = 13,
) -> None:
    """The suite's fine-tuning step vs a plain PyTorch loop that scores only the mask position: steps/s, ratio."""
    options = validated(TrainBenchOptions, model=model, batch_size=batch_size, examples=examples, words=words,
                        steps=steps, rounds=rounds, check_steps=check_steps, full_vocab=full_vocab, threads=threads,
                        seed=seed)
    from benchmark.perf.train import run_train_bench

    run_train_bench(options, echo=_echo)  # type: ignore[arg-type]


def _echo(line: str) -> None:
    print(line, flush=True)
