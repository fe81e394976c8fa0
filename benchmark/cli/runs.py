"""`bench run` and `bench kernel`: run methods through a runner (``--launcher``), compute and save kernels."""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from benchmark.cli.app import app, console, err_console
from benchmark.cli.options import (
    BackboneOpt,
    CacheDirOpt,
    DataDirOpt,
    DeepspeedConfigOpt,
    HostfileOpt,
    KOpt,
    LabelWordsOpt,
    LauncherOpt,
    LaunchOptOpt,
    NumGpusOpt,
    NumNodesOpt,
    TaskFileOpt,
    TaskOpt,
    TemplateOpt,
    TestCapOpt,
    TrackingUriOpt,
)
from benchmark.cli.parsing import parse_label_words, parse_options, parse_seeds
from benchmark.grids import refuse_missing_grid
from registry import BenchError


def _summary_table(outcomes: list[Any]) -> Table:
    metric_names = sorted({m for o in outcomes for m in o.result.metrics
                           if m.startswith(("dev_", "test_")) and m.endswith(("_acc", "_f1"))})
    table = Table(title="summary")
    table.add_column("seed")
    for name in metric_names:
        table.add_column(name, justify="right")
    table.add_column("run id")
    for outcome in outcomes:
        values = [f"{outcome.result.metrics[m]:.4f}" if m in outcome.result.metrics else "-" for m in metric_names]
        table.add_row(str(outcome.config.seed), *values, outcome.run_id)
    if len(outcomes) > 1:
        cells = []
        for name in metric_names:
            values = [o.result.metrics[name] for o in outcomes if name in o.result.metrics]
            std = statistics.pstdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.fmean(values):.4f} ± {std:.4f}")
        table.add_row("mean ± std", *cells, "", style="bold")
    return table


@app.command("run")
def run_cmd(
    method: Annotated[str, typer.Option("--method", "-m", help="registered method, e.g. zero-shot, ntk-adam")],
    task: TaskOpt = "",
    task_file: TaskFileOpt = None,
    backbone: BackboneOpt = "roberta-base",
    k: KOpt = 16,
    seed: Annotated[list[str], typer.Option("--seed", help="seed(s): repeat, comma-separate, or 'all'")] = ["13"],  # noqa: B006
    data_dir: DataDirOpt = None,
    template: TemplateOpt = None,
    label_words: LabelWordsOpt = None,
    test_cap: TestCapOpt = 1000,
    binary: Annotated[bool | None, typer.Option("--binary/--no-binary", help="one logit-difference output")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="evaluation batch size")] = 32,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda")] = "auto",
    opt: Annotated[list[str], typer.Option("--opt", help="method option key=value (repeatable)")] = [],  # noqa: B006
    train_grid: Annotated[list[str], typer.Option(
        "--train-grid", help="fine-tuning: in-run search key=v1,v2, best dev kept (repeatable)")] = [],  # noqa: B006
    solver_grid: Annotated[list[str], typer.Option(
        "--solver-grid", help="kernel methods: solver settings key=v1,v2 tried on dev (repeatable)")] = [],  # noqa: B006
    grid: Annotated[list[str], typer.Option("--grid", hidden=True, help="a bench sweep flag")] = [],  # noqa: B006
    tracking_uri: TrackingUriOpt = None,
    experiment: Annotated[str, typer.Option("--experiment", help="MLflow experiment name")] = "kernel-bench",
    cache_dir: CacheDirOpt = None,
    launcher: LauncherOpt = "local",
    launch_opt: LaunchOptOpt = [],  # noqa: B006
    num_gpus: NumGpusOpt = None,
    num_nodes: NumNodesOpt = None,
    hostfile: HostfileOpt = None,
    deepspeed_config: DeepspeedConfigOpt = None,
    save_kernels: Annotated[bool, typer.Option("--save-kernels", help="kernel methods: log the kernels")] = False,
    load_kernels: Annotated[
        Path | None, typer.Option("--load-kernels", help="kernel methods: solve on the reference's kernel files in DIR")
    ] = None,
    diagnostics: Annotated[
        bool, typer.Option("--diagnostics", help="ft-*/lora-*: kernel-regime diagnostics (= --opt diagnostics=true)")
    ] = False,
) -> None:
    """Run a method on a task for one or more seeds; each seed is one MLflow run."""
    from benchmark.config import RunConfig

    if not task and task_file is None:
        raise BenchError("give --task NAME or --task-file FILE")
    if grid:
        raise BenchError("bench run has no --grid (a bench sweep flag: one run per value); inside one run use "
                         "--train-grid key=v1,v2 (fine-tuning) or --solver-grid key=v1,v2 (kernel solver settings)")
    options = parse_options(opt, train_grid, solver_grid)
    refuse_missing_grid(method, options)
    if save_kernels:
        options["save_kernels"] = True
    if diagnostics:
        options["diagnostics"] = True
    if load_kernels is not None:
        if not load_kernels.is_dir():
            raise BenchError(f"--load-kernels directory '{load_kernels}' does not exist")
        options["load_kernels"] = str(load_kernels.resolve())
    words = parse_label_words(label_words)
    configs = [
        RunConfig(task=task, task_file=task_file, method=method, backbone=backbone, k=k, seed=s, data_dir=data_dir,
                  template=template, label_words=words, test_cap=test_cap, binary=binary, batch_size=batch_size,
                  device=device, tracking_uri=tracking_uri, experiment=experiment, cache_dir=cache_dir,
                  options=options)
        for s in parse_seeds(seed)
    ]
    runner = _runner(launcher, launch_opt, num_gpus, num_nodes, hostfile, deepspeed_config)
    from benchmark.resolve import resolve_run

    runs = [resolve_run(config) for config in configs]  # once, here: the runner and the engine take them as they are
    if runner.name == "deepspeed":
        _deepspeed_first_run_note()
    outcomes = []
    for config, run in zip(configs, runs, strict=True):
        outcome = runner.launch(run)
        metrics = ", ".join(f"{k}={v:.4f}" for k, v in sorted(outcome.result.metrics.items()))
        console.print(f"[green]done[/] {config.task or task_file} {config.method} seed={config.seed}: {metrics} "
                      f"({outcome.seconds:.1f}s, run {outcome.run_id})", highlight=False)
        outcomes.append(outcome)
    console.print(_summary_table(outcomes))
    console.print(where_it_went(configs[0].tracking_uri, experiment, [o.run_id for o in outcomes]),
                  highlight=False, soft_wrap=True)


def where_it_went(tracking_uri: str | None, experiment: str, run_ids: list[str]) -> str:
    """The line that ends a run: the store, the experiment, the run id(s), and how to look at them."""
    import shlex

    from benchmark.tracking import default_tracking_uri

    uri = tracking_uri or default_tracking_uri()
    runs = f"run {run_ids[0]}" if len(run_ids) == 1 else f"runs {', '.join(run_ids)}"
    ui = "bench ui" if tracking_uri is None else f"bench ui --tracking-uri {shlex.quote(uri)}"
    return f"logged to {uri}, experiment '{experiment}', {runs}; see them with: {ui}"


def _deepspeed_first_run_note() -> None:
    """Say why the first DeepSpeed run on a machine is slow: it compiles an op once (cached afterwards)."""
    cache = Path(os.environ.get("TORCH_EXTENSIONS_DIR", Path.home() / ".cache" / "torch_extensions"))
    if not cache.is_dir() or not any(cache.rglob("*.so")):
        err_console.print(f"note: the first DeepSpeed run on this machine compiles an op (a minute or more, "
                          f"once; cached in {cache}); rank 0 shows the training progress, other ranks are quiet",
                          highlight=False, soft_wrap=True)


def _runner(launcher: str, launch_opt: list[str], num_gpus: int | None, num_nodes: int | None,
            hostfile: Path | None, deepspeed_config: Path | None) -> Any:
    """The runner for ``--launcher``; its options (``--launch-opt``, the shorthand flags) are validated by it."""
    from benchmark.cli.parsing import parse_launch_opts
    from runners import make_runner

    shorthands = {"num_gpus": num_gpus, "num_nodes": num_nodes, "hostfile": hostfile,
                  "deepspeed_config": deepspeed_config}
    return make_runner(launcher, parse_launch_opts(launch_opt), shorthands=shorthands)


@app.command("kernel")
def kernel_cmd(
    method: Annotated[str, typer.Option("--method", "-m", help="kernel method: ntk-sgd, ntk-signgd, ntk-adam, ...")],
    out: Annotated[Path, typer.Option("--out", help="folder for {train,dev,test}_kernels_<task>.pt")],
    task: TaskOpt = "",
    task_file: TaskFileOpt = None,
    backbone: BackboneOpt = "roberta-base",
    k: KOpt = 16,
    seed: Annotated[int, typer.Option("--seed")] = 13,
    data_dir: DataDirOpt = None,
    template: TemplateOpt = None,
    label_words: LabelWordsOpt = None,
    test_cap: TestCapOpt = 1000,
    binary: Annotated[bool | None, typer.Option("--binary/--no-binary", help="one logit-difference output")] = None,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda")] = "auto",
    opt: Annotated[list[str], typer.Option("--opt", help="method option key=value (repeatable)")] = [],  # noqa: B006
    cache_dir: CacheDirOpt = None,
) -> None:
    """Compute a kernel method's kernels and save them (reference file layout) without solving."""
    from benchmark.config import RunConfig
    from benchmark.methods.kernel import KernelMethod, export_kernels
    from benchmark.run import build_context, resolve_run

    if not task and task_file is None:
        raise BenchError("give --task NAME or --task-file FILE")
    config = RunConfig(task=task, task_file=task_file, method=method, backbone=backbone, k=k, seed=seed,
                       data_dir=data_dir, template=template, label_words=parse_label_words(label_words),
                       test_cap=test_cap, binary=binary, device=device, cache_dir=cache_dir,
                       options=parse_options(opt, []))
    run = resolve_run(config)
    kernel_method = run.method
    if not isinstance(kernel_method, KernelMethod):
        raise BenchError(f"'{method}' is not a kernel method; use ntk-sgd, ntk-signgd, ntk-adam, lora-ntk-sgd or "
                         "lora-ntk-adam")
    with build_context(run) as ctx:
        paths = export_kernels(kernel_method, ctx, out)
    for path in paths:
        console.print(f"wrote {path}", highlight=False)
