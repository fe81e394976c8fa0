"""The `bench` command line: list plugins, inspect data, run methods, open the MLflow UI."""

from __future__ import annotations

import json
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from benchmark.grids import GRID_FLAGS, refuse_missing_grid
from benchmark.perf import perf_app
from benchmark.quiet import quiet_libraries
from registry import BenchError, first_error

app = typer.Typer(add_completion=False, no_args_is_help=True, help="kernel-bench: fine-tuning vs. its kernel analogs.")
app.add_typer(perf_app, name="perf")
console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

KIND_CHOICES = ("tasks", "templates", "backbones", "methods")


def parse_value(text: str) -> Any:
    """A CLI value as JSON when it parses (numbers, booleans, lists), else the plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_options(
    opts: list[str], train_grid: list[str] = [], solver_grid: list[str] = []  # noqa: B006
) -> dict[str, Any]:
    """``--opt key=value``, ``--train-grid key=v1,v2`` and ``--solver-grid key=v1,v2`` as a method-options dict."""
    options: dict[str, Any] = {}
    for item in opts:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BenchError(f"--opt expects key=value, got '{item}'")
        options[key.strip().replace("-", "_")] = parse_value(value.strip())
    for name, items in (("train_grid", train_grid), ("solver_grid", solver_grid)):
        if items:
            options[name] = parse_grid(items, GRID_FLAGS[name])
    return options


def parse_grid(items: list[str], flag: str) -> dict[str, list[Any]]:
    """``key=v1,v2`` items (of ``flag``) as ``{key: [v1, v2]}``, in the order given."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise BenchError(f"{flag} expects key=v1,v2,..., got '{item}'")
        grid[key.strip().replace("-", "_")] = [parse_value(v.strip()) for v in values.split(",")]
    return grid


def parse_label_words(text: str | None) -> tuple[str, ...] | dict[str, str] | None:
    """``w1,w2`` (label order) or ``label=word,label=word`` pairs."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    if any(not p for p in parts):
        raise BenchError(f"--label-words has an empty word: '{text}'")
    if all("=" in p for p in parts):
        return {k.strip(): v.strip() for k, v in (p.split("=", 1) for p in parts)}
    if any("=" in p for p in parts):
        raise BenchError("--label-words takes either words in label order or label=word pairs, not both")
    return tuple(parts)


def parse_seeds(values: list[str]) -> list[int]:
    """Seeds from repeated or comma-separated ``--seed`` values; 'all' = LM-BFF's five seeds."""
    from benchmark.config import LMBFF_SEEDS

    seeds: list[int] = []
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if part == "all":
                seeds.extend(LMBFF_SEEDS)
            elif part.lstrip("-").isdigit():
                seeds.append(int(part))
            else:
                raise BenchError(f"--seed expects integers (or 'all'), got '{part}'")
    return list(dict.fromkeys(seeds))


def _validation_message(exc: ValidationError) -> str:
    where, message = first_error(exc, "config")
    return f"invalid {where}: {message}"


def _click_exception_types() -> tuple[type[BaseException], ...]:
    """Click's exception base class, and typer's bundled copy of it (typer >= 0.22 vendors click)."""
    types: list[type[BaseException]] = []
    try:
        import click

        types.append(click.ClickException)
    except ImportError:  # pragma: no cover - typer without click
        pass
    try:
        from typer._click.exceptions import ClickException as TyperClickException

        types.append(TyperClickException)
    except ImportError:  # older typer: click's own classes
        pass
    return tuple(types)


def _show_usage_error(exc: Any) -> None:
    """One ``error:`` line, then the command's usage and where to get help (no traceback)."""
    if type(exc).__name__ == "NoArgsIsHelpError":
        exc.show()  # a bare group (`bench`): its help is the answer
        return
    err_console.print(f"[bold red]error:[/] {exc.format_message()}", highlight=False, soft_wrap=True)
    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        err_console.print(ctx.get_usage(), highlight=False, markup=False, soft_wrap=True)
        err_console.print(f"Try '{ctx.command_path} --help' for help.", highlight=False, markup=False)


def main() -> None:
    """Entry point of the ``bench`` console script: user errors print one line and exit 2.

    SIGTERM (``timeout``, ``kill``, SLURM, ``docker stop``) stops as Ctrl-C does: the run in progress is
    closed as KILLED, one line on stderr, exit 143 (130 for Ctrl-C).
    """
    from benchmark.lifecycle import sigterm_as_interrupt

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_libraries()
    with sigterm_as_interrupt():
        _main()


TERMINATED_LINE = "terminated (SIGTERM): the run in progress is marked KILLED"


def _main() -> None:
    from benchmark.lifecycle import acknowledge_interrupt, sigterm_received

    click_errors = _click_exception_types()
    try:
        # Without standalone mode click returns (not raises) exit codes and Ctrl-C: pass them on.
        code = app(prog_name="bench", standalone_mode=False)
        if isinstance(code, int) and code:
            if code == 130 and sigterm_received():
                acknowledge_interrupt()
                err_console.print(TERMINATED_LINE, highlight=False)
                sys.exit(143)
            sys.exit(code)
    except BenchError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except ValidationError as exc:
        err_console.print(f"[bold red]error:[/] {_validation_message(exc)}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        acknowledge_interrupt()
        if sigterm_received():
            err_console.print(TERMINATED_LINE, highlight=False)
            sys.exit(143)
        err_console.print("aborted")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except click_errors as exc:  # usage errors (unknown command or option, bad or missing value)
        _show_usage_error(exc)
        sys.exit(getattr(exc, "exit_code", 2))


@app.command("list")
def list_cmd(
    kind: Annotated[str, typer.Argument(help="tasks | templates | backbones | methods",
                                        metavar="tasks|templates|backbones|methods")],
) -> None:
    """List the registered tasks, templates, backbones or methods."""
    from registry import BACKBONES, METHODS, TASKS, load_builtins

    load_builtins()
    kind = kind.lower()
    if kind not in KIND_CHOICES:
        raise BenchError(f"unknown list kind '{kind}'; choose one of: {', '.join(KIND_CHOICES)}")
    table = Table(title=f"registered {kind}")
    table.add_column("name", no_wrap=True, style="bold")
    if kind == "tasks":
        for column in ("task", "labels", "template", "label words", "max len", "from"):
            table.add_column(column)
        for name, spec in TASKS.items():
            words = ", ".join(spec.label_words[label] for label in spec.labels)
            table.add_row(name, spec.display_name, str(spec.num_labels), spec.template, words, str(spec.max_seq_len),
                          TASKS.origin(name))
    elif kind == "templates":
        from benchmark.prompts import register_task_templates
        from registry import TEMPLATES

        register_task_templates()
        for column in ("template", "label words", "description", "from"):
            table.add_column(column)
        for name, spec in TEMPLATES.items():
            words = ", ".join(spec.label_words.values()) if spec.label_words else "(task's)"
            table.add_row(spec.name, spec.template, words, spec.description, TEMPLATES.origin(name))
    elif kind == "backbones":
        from benchmark import bundled

        for column in ("path", "family", "description", "from"):
            table.add_column(column)
        for name, spec in BACKBONES.items():
            path = "(bundled with the suite)" if spec.path == str(bundled.model_dir()) else spec.path
            table.add_row(name, path, spec.family, spec.description, BACKBONES.origin(name))
        table.caption = "any Hub id (org/name) or local model directory also works"
    else:
        for column in ("aliases", "family", "summary", "options (bench describe METHOD)", "from"):
            table.add_column(column)
        for name, method in METHODS.items():
            options = ", ".join(f"{o}={d}" for o, _, d, _ in option_rows(method))
            table.add_row(name, ", ".join(METHODS.aliases_of(name)), method.family, method.summary, options,
                          METHODS.origin(name))
    console.print(table)


def option_rows(method: Any) -> list[tuple[str, str, str, str]]:
    """(name, type, default, description) of each option in a method's pydantic ``Options`` model."""
    from pydantic_core import PydanticUndefined

    rows = []
    for name, info in method.Options.model_fields.items():
        annotation = info.annotation
        kind = getattr(annotation, "__name__", None) if getattr(annotation, "__args__", None) is None else None
        kind = kind or str(annotation).replace("typing.", "")
        if info.default is not PydanticUndefined:
            default = repr(info.default)
        elif info.default_factory is not None:
            default = repr(info.default_factory())
        else:
            default = "(required)"
        rows.append((name, kind, default, info.description or ""))
    return rows


@app.command("describe")
def describe_cmd(method: Annotated[str, typer.Argument(help="registered method name or alias")]) -> None:
    """Show a method's options (``--opt key=value``, ``--train-grid`` / ``--solver-grid key=v1,v2``) and defaults."""
    from registry import METHODS, load_builtins

    load_builtins()
    cls = METHODS.get(method)
    name = METHODS.resolve_name(method)
    console.print(f"[bold]{name}[/] ({cls.family}): {cls.summary}", highlight=False)
    aliases = METHODS.aliases_of(name)
    if aliases:
        console.print(f"aliases: {', '.join(aliases)}", highlight=False)
    table = Table(title=f"options of {name}")
    for column in ("option", "type", "default", "description"):
        table.add_column(column, overflow="fold")
    for row in option_rows(cls):
        table.add_row(*row)
    console.print(table)


def _task_and_splits(task: str, task_file: Path | None, k: int, seed: int, data_dir: Path | None, test_cap: int):
    from benchmark.config import RunConfig
    from benchmark.run import load_config_splits, resolve_run

    config = RunConfig(task=task, task_file=task_file, method="zero-shot", k=k, seed=seed,
                       data_dir=data_dir, test_cap=test_cap)
    run = resolve_run(config, check_tokenizer=False)
    return run.task, load_config_splits(run)


TaskOpt = Annotated[str, typer.Option("--task", "-t", help="registered task name")]
TaskFileOpt = Annotated[Path | None, typer.Option("--task-file", help="a TaskSpec YAML/TOML file")]
KOpt = Annotated[int, typer.Option("--k", help="examples per label in train (and dev)")]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="local data root (LM-BFF layout); default: Hub")]
TemplateOpt = Annotated[str | None, typer.Option("--template", help="template name, LM-BFF template string, or 'none'")]
LabelWordsOpt = Annotated[str | None, typer.Option("--label-words", help="w1,w2,... in label order or label=word")]
BackboneOpt = Annotated[str, typer.Option("--backbone", "-b", help="registered backbone, Hub id, or local path")]
TestCapOpt = Annotated[int, typer.Option("--test-cap", help="test examples kept (0 = all)")]
TrackingUriOpt = Annotated[str | None, typer.Option("--tracking-uri", help="MLflow store URI")]
CacheDirOpt = Annotated[Path | None, typer.Option("--cache-dir", help="cache for splits and kernels")]
LauncherOpt = Annotated[str, typer.Option("--launcher", help="runner: local | deepspeed | slurm | a plugin's")]
LaunchOptOpt = Annotated[list[str], typer.Option("--launch-opt", help="runner option key=value (repeatable)")]
NumGpusOpt = Annotated[int | None, typer.Option("--num-gpus", help="processes per node (deepspeed)")]
NumNodesOpt = Annotated[int | None, typer.Option("--num-nodes", help="nodes (deepspeed; default 1)")]
HostfileOpt = Annotated[Path | None, typer.Option("--hostfile", help="DeepSpeed hostfile")]
DeepspeedConfigOpt = Annotated[Path | None, typer.Option("--deepspeed-config", help="DeepSpeed JSON config")]


@app.command("data")
def data_cmd(
    task: TaskOpt = "",
    task_file: TaskFileOpt = None,
    k: KOpt = 16,
    seed: Annotated[int, typer.Option("--seed")] = 13,
    data_dir: DataDirOpt = None,
    template: TemplateOpt = None,
    label_words: LabelWordsOpt = None,
    backbone: BackboneOpt = "roberta-base",
    test_cap: TestCapOpt = 1000,
    show: Annotated[int, typer.Option("--show", help="encoded examples shown")] = 3,
) -> None:
    """Show split sizes and a few encoded examples (filled template, mask position, label word ids)."""
    from benchmark.backbones import resolve_backbone
    from benchmark.prompts import PromptEncoder, resolve_prompt

    if not task and task_file is None:
        raise BenchError("give --task NAME or --task-file FILE")
    spec, splits = _task_and_splits(task, task_file, k, seed, data_dir, test_cap)
    sizes = Table(title=f"{spec.name}: k={k}, seed={seed}")
    for column in ("split", "examples", *spec.labels):
        sizes.add_column(column)
    for name in ("train", "dev", "test"):
        examples = getattr(splits, name)
        counts = [str(sum(e.label == i for e in examples)) for i in range(spec.num_labels)]
        sizes.add_row(name, str(len(examples)), *counts)
    console.print(sizes)
    from transformers import AutoTokenizer

    from benchmark.hub import hub_reachable

    bspec = resolve_backbone(backbone)
    local_only = not Path(bspec.path).exists() and not hub_reachable()
    try:
        tokenizer = AutoTokenizer.from_pretrained(bspec.path, local_files_only=local_only)
    except OSError as exc:
        raise BenchError(
            f"cannot load the tokenizer of '{backbone}' (Hub unreachable or not cached); pass --backbone DIR"
        ) from exc
    tmpl, words = resolve_prompt(spec, template, parse_label_words(label_words))
    encoder = PromptEncoder(tokenizer, template=tmpl, label_words=words, max_seq_len=spec.max_seq_len,
                            first_sent_limit=spec.first_sent_limit, other_sent_limit=spec.other_sent_limit)
    console.print(f"template: {tmpl if tmpl is not None else 'none ([CLS] head)'}")
    if encoder.prompt_based:
        triples = zip(spec.labels, words, encoder.label_word_ids, strict=True)
        pairs = ", ".join(f"{lab}={w} ({i})" for lab, w, i in triples)
        console.print(f"label words: {pairs}")
    for example in splits.train[:show]:
        encoded = encoder.encode(example)
        console.print(f"[bold]{example.guid}[/] label={spec.labels[example.label]} mask_pos={encoded.mask_pos} "
                      f"len={len(encoded.input_ids)}", highlight=False)
        console.print(f"  {encoder.render(example)}", highlight=False, markup=False)


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
    from runners import make_runner, parse_launch_opts

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


def experiment_links(uri: str, base_url: str) -> list[str]:
    """``name: URL`` of each experiment's runs table (headline columns shown) in the MLflow UI at ``base_url``.

    Experiments made before the suite tagged them get the classic-ML kind and the headline view tags here.
    """
    from mlflow.tracking import MlflowClient

    from benchmark.tracking import EXPERIMENT_TAGS, HEADLINE_VIEW

    try:
        client = MlflowClient(tracking_uri=uri)
        experiments = [e for e in client.search_experiments() if e.name != "Default"]
        for experiment in experiments:
            for key, value in EXPERIMENT_TAGS.items():
                if key not in experiment.tags:
                    client.set_experiment_tag(experiment.experiment_id, key, value)
    except Exception:  # an empty, read-only or foreign store: the UI still opens
        return []
    return [f"{e.name}: {base_url}/#/experiments/{e.experiment_id}/runs?viewStateShareKey={HEADLINE_VIEW}"
            for e in experiments]


def serve_until_signal(command: list[str]) -> int:
    """Run ``command`` (a server) in its own process group until it exits, Ctrl-C or SIGTERM.

    On SIGINT or SIGTERM the whole group is terminated (killed after 10 s), so no worker keeps the port.
    """
    import signal
    import subprocess

    process = subprocess.Popen(command, start_new_session=True)

    def stop(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        return process.wait()
    except KeyboardInterrupt:
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


@app.command("ui")
def ui_cmd(
    tracking_uri: TrackingUriOpt = None,
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 5000,
) -> None:
    """Start the MLflow UI on the tracking store (stopped, with its workers, by Ctrl-C or SIGTERM)."""
    from benchmark.tracking import default_tracking_uri

    uri = tracking_uri or default_tracking_uri()
    base_url = f"http://{host}:{port}"
    console.print(f"MLflow UI for {uri} at {base_url} (Ctrl-C to stop)", highlight=False, soft_wrap=True)
    for line in experiment_links(uri, base_url):
        console.print(f"  runs of {line}", highlight=False, soft_wrap=True)
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port),
               "--workers", "1"]
    code = serve_until_signal(command)
    if code == 130:
        err_console.print("stopped the MLflow UI")
    raise typer.Exit(code)


@app.command("server")
def server_cmd(
    backend_store_uri: Annotated[str | None, typer.Option(
        "--backend-store-uri", help="SQL store: sqlite:///PATH, postgresql://... (default: the default store)")] = None,
    artifacts: Annotated[Path | None, typer.Option(
        "--artifacts", help="where the server keeps artifacts (default: next to a SQLite file)")] = None,
    host: Annotated[str, typer.Option("--host", help="interface (MLflow has no auth: loopback by default)")] = (
        "127.0.0.1"),
    port: Annotated[int, typer.Option("--port")] = 5000,
    workers: Annotated[int | None, typer.Option("--workers", help="server processes (SQLite: 1)")] = None,
) -> None:
    """Start one MLflow tracking server (SQL store, served artifacts) for every node: --tracking-uri http://HOST:PORT."""
    import subprocess

    from benchmark.server import server_command
    from benchmark.tracking import default_tracking_uri

    command = server_command(backend_store_uri or default_tracking_uri(), artifacts=artifacts, host=host, port=port,
                             workers=workers)
    console.print(f"MLflow server for {command[5]} (artifacts in {command[8]}) at http://{host}:{port}; "
                  f"use --tracking-uri http://{host}:{port} (Ctrl-C to stop)", highlight=False, soft_wrap=True)
    raise typer.Exit(subprocess.call(command))


@app.command("sweep")
def sweep_cmd(
    file: Annotated[Path | None, typer.Argument(help="sweep file (YAML/TOML); the options below override it")] = None,
    tasks: Annotated[str | None, typer.Option("--tasks", help="tasks, comma-separated")] = None,
    task_file: Annotated[list[Path] | None, typer.Option(
        "--task-file", help="a TaskSpec YAML/TOML file (repeatable); its task is added to the sweep's")] = None,
    methods: Annotated[str | None, typer.Option("--methods", help="methods, comma-separated")] = None,
    k: Annotated[str | None, typer.Option("--k", help="k values, comma-separated")] = None,
    seeds: Annotated[list[str] | None, typer.Option("--seeds", help="seeds, comma-separated, or 'all'")] = None,
    backbone: Annotated[str | None, typer.Option("--backbone", "-b", help="backbone(s), comma-separated")] = None,
    template: Annotated[list[str] | None, typer.Option("--template", help="template(s), repeatable")] = None,
    opt: Annotated[list[str], typer.Option("--opt", help="[METHOD:]key=value (repeatable)")] = [],  # noqa: B006
    grid: Annotated[list[str], typer.Option("--grid", help="[METHOD:]key=v1,v2: one cell per value")] = [],  # noqa: B006
    data_dir: DataDirOpt = None,
    test_cap: Annotated[int | None, typer.Option("--test-cap", help="test examples kept (0 = all)")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="evaluation batch size")] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto | cpu | cuda")] = None,
    tracking_uri: TrackingUriOpt = None,
    experiment: Annotated[str | None, typer.Option("--experiment", help="MLflow experiment name")] = None,
    cache_dir: CacheDirOpt = None,
    launcher: LauncherOpt = "local",
    launch_opt: LaunchOptOpt = [],  # noqa: B006
    num_gpus: NumGpusOpt = None,
    num_nodes: NumNodesOpt = None,
    hostfile: HostfileOpt = None,
    deepspeed_config: DeepspeedConfigOpt = None,
    fail_fast: Annotated[bool, typer.Option("--fail-fast", help="stop at the first failed cell")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list the cells and which are done; run nothing")] = False,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="wait for cells another sweep is running "
                                       "(slurm: for the submitted jobs; --no-wait prints the job id)")] = True,
    max_parallel: Annotated[int | None, typer.Option("--max-parallel", min=1,
                                                     help="slurm: array tasks running at once")] = None,
    status: Annotated[bool, typer.Option("--status", help="slurm: where each cell stands; submits nothing")] = False,
) -> None:
    """Run a grid of cells (tasks x methods x k x seeds x grid points), skipping finished ones (resumable)."""
    from benchmark import sweep as sw

    overrides = {
        "tasks": tasks, "task_files": task_file or None, "methods": methods, "k": k,
        "seeds": parse_seeds(seeds) if seeds else None,
        "backbones": backbone, "templates": template or None, "data_dir": data_dir, "test_cap": test_cap,
        "batch_size": batch_size, "device": device, "tracking_uri": tracking_uri, "experiment": experiment,
        "cache_dir": cache_dir,
    }
    spec = sw.spec_from_cli(file, overrides, opt, grid)
    runner = _runner(launcher, launch_opt, num_gpus, num_nodes, hostfile, deepspeed_config)
    if dry_run:
        from benchmark.tracking import default_tracking_uri

        cells = sw.expand_cells(spec, tracking_uri=spec.tracking_uri or default_tracking_uri())
        store = sw.open_store(cells[0].config.tracking_uri, spec.experiment, spec.cache_dir, create=False)
        states = sw.dry_run(cells, store)
        console.print(sw.dry_run_table(states))
        counts = {state: sum(s == state for _, s in states) for state in dict.fromkeys(s for _, s in states)}
        console.print(", ".join(f"{state}: {n}" for state, n in counts.items()), highlight=False)
        return
    if hasattr(runner, "sweep"):  # a runner that submits a whole sweep at once (slurm)
        report = runner.sweep(spec, wait=wait, max_parallel=max_parallel, status=status, console=console)
        if status or not wait:
            return
        for line in sw.summary_lines(report):
            console.print(line, highlight=False, markup=False, soft_wrap=True)
        if report.failed or report.count("not run", "pending", "running"):
            sys.exit(1)
        return
    if status or max_parallel is not None:
        raise BenchError(f"--status and --max-parallel are for --launcher slurm (not '{launcher}'); "
                         "--dry-run shows a local sweep's cells")
    try:
        from runners import sweep_runner

        report = sw.run_sweep(spec, runner=sweep_runner(runner), fail_fast=fail_fast, wait=wait, console=console)
    except KeyboardInterrupt:  # typer would swallow it (exit code 0 under standalone_mode=False)
        err_console.print("aborted: the running cell and the sweep are marked KILLED; rerun to resume")
        sys.exit(130)
    for line in sw.summary_lines(report):
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    if report.failed or report.count("not run"):
        sys.exit(1)  # not typer.Exit: app(standalone_mode=False) returns its code instead of exiting


@app.command("leaderboard")
def leaderboard_cmd(
    tracking_uri: TrackingUriOpt = None,
    experiment: Annotated[str, typer.Option("--experiment", help="MLflow experiment name")] = "kernel-bench",
    k: Annotated[int | None, typer.Option("--k", help="only this k (default: every k, one section each)")] = None,
    backbone: Annotated[str | None, typer.Option("--backbone", help="only this backbone")] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="md | html | csv (default: from --out, else md)")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="output file; a directory (no suffix): all formats")] = None,
    reference: Annotated[Path | None, typer.Option("--reference", help="CSV of published numbers")] = None,
    metric: Annotated[str, typer.Option("--metric", help="acc | f1 (F1 where the task reports it)")] = "acc",
    seeds: Annotated[list[str] | None,
                     typer.Option("--seeds", help="expected seeds (default: the sweep's, else LM-BFF's)")] = None,
    from_selections: Annotated[Path | None, typer.Option(
        "--from-selections", help="rebuild from an earlier leaderboard's selections.csv instead of a store")] = None,
    view: Annotated[list[str] | None, typer.Option(
        "--view", help="a view to show, repeatable, in order (default: headline, tasks, paired, diagnostics, "
        "reference, plots; 'default' names that set)")] = None,
) -> None:
    """Aggregate MLflow runs: best dev per seed, mean ± std over seeds, FT vs. kernel; md, html or csv."""
    import shlex

    from leaderboard import LeaderboardError, build, render_board
    from leaderboard.render import write_all

    if metric not in ("acc", "f1"):
        raise BenchError(f"--metric must be acc or f1, got '{metric}'")
    to_dir = out is not None and fmt is None and (out.is_dir() or not out.suffix)
    if fmt is None:
        suffix = out.suffix.lower().lstrip(".") if out is not None and not to_dir else ""
        fmt = {"markdown": "md", "htm": "html"}.get(suffix, suffix) or "md"
    if fmt not in ("md", "html", "csv"):
        raise BenchError(f"--format must be md, html or csv, got '{fmt}'")
    try:
        if from_selections is not None:
            from leaderboard import from_runs
            from leaderboard.collect import runs_from_selections

            board = from_runs(runs_from_selections(from_selections), k=k, backbone=backbone,
                              metric=metric,  # type: ignore[arg-type]
                              seeds=parse_seeds(seeds) if seeds else None, reference=reference,
                              source=str(from_selections), experiment=experiment, views=view)
            board.source_kind = ("the runs an earlier leaderboard selected (its MLflow store is not here; "
                                 "diagnostic metrics and unselected runs are not in that file)")
        else:
            board = build(tracking_uri, experiment, k=k, backbone=backbone, metric=metric,  # type: ignore[arg-type]
                          seeds=parse_seeds(seeds) if seeds else None, reference=reference, views=view)
        board.command = "bench " + shlex.join(sys.argv[1:])
        if to_dir:
            assert out is not None
            for path in write_all(board, out):
                console.print(f"wrote {path}", highlight=False, soft_wrap=True)
            return
        plots = out.parent / f"{out.stem}_plots" if out is not None and fmt == "md" else None
        text = render_board(board, fmt, plots_dir=plots, plots_link=plots.name if plots else "")
    except LeaderboardError as exc:
        raise BenchError(str(exc)) from None
    if out is None:
        sys.stdout.write(text)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    console.print(f"wrote {out} ({len(board.agg)} groups from {len(board.runs)} runs)", highlight=False)


@app.command("diagnose")
def diagnose_cmd(
    run_id: Annotated[str, typer.Option("--run-id", help="MLflow run id of an ft-*/lora-* run saved with save_model")],
    tracking_uri: TrackingUriOpt = None,
    log: Annotated[bool, typer.Option("--log/--no-log", help="log the diagnostics into the run")] = True,
) -> None:
    """Kernel-regime diagnostics of an existing fine-tuning run (linearization, kernel drift, movement).

    theta_0 is rebuilt from the run's config (same seed and head init) and theta_FT is loaded from its
    saved weights (``--opt save_model=true``); the metrics and diagnostics.json are logged into the run.
    """
    from benchmark.diagnostics import format_diagnostics
    from benchmark.finetuned import diagnose_run

    diag = diagnose_run(run_id, tracking_uri=tracking_uri, log=log)
    for line in format_diagnostics(diag):
        console.print(line, highlight=False)
    if log:
        console.print(f"logged to run {run_id}", highlight=False)


@app.command("doctor")
def doctor_cmd(
    tracking_uri: TrackingUriOpt = None,
    experiment: Annotated[str | None, typer.Option("--experiment", help="only this experiment (default: all)")] = None,
    older_than: Annotated[float | None, typer.Option(
        "--older-than", help="also close runs of other hosts / unknown owners started more than HOURS ago")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list what would be fixed; change nothing")] = False,
) -> None:
    """Find runs left RUNNING by processes that are gone (killed, store failed) and mark them FAILED.

    The owner (host, pid) is a tag of every run: on its own host a dead owner is certain; runs of other
    hosts (or from before the tags) are only listed, unless ``--older-than`` says they are stale.
    """
    from benchmark.lifecycle import doctor
    from benchmark.tracking import default_tracking_uri, open_client, sqlite_path

    uri = tracking_uri or default_tracking_uri()
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise BenchError(f"no MLflow store at {db}; pass the store with --tracking-uri")
    client, uri = open_client(uri)
    experiments = {str(e.experiment_id): e.name for e in client.search_experiments(max_results=50000)}
    if experiment is not None:
        experiments = {i: name for i, name in experiments.items() if name == experiment}
        if not experiments:
            raise BenchError(f"no experiment '{experiment}' in {uri}")
    findings = doctor(client, experiments, older_than_hours=older_than, fix=not dry_run)
    if not findings:
        console.print(f"no RUNNING runs in {uri}", highlight=False, soft_wrap=True)
        return
    table = Table(title=f"RUNNING runs in {uri}")
    for column in ("run id", "experiment", "name", "started", "owner", "action"):
        table.add_column(column)
    import datetime

    for finding in findings:
        run = finding.run
        started = datetime.datetime.fromtimestamp(run.start_ms / 1000).strftime("%Y-%m-%d %H:%M")
        table.add_row(run.run_id, run.experiment, run.name, started, run.owner, finding.action)
    console.print(table)
    fixed = sum(f.fixed for f in findings)
    console.print(f"{fixed} of {len(findings)} RUNNING run(s) marked FAILED" if not dry_run else
                  f"dry run: {sum('would mark' in f.action for f in findings)} of {len(findings)} would be marked "
                  "FAILED", highlight=False)


if __name__ == "__main__":
    main()
