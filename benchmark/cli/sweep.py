"""`bench sweep`: a grid of runs from a sweep file and/or flags, run here or handed to a runner (resumable).

`spec_from_cli` merges a sweep file with the flags into a `benchmark.sweeps.SweepSpec`; the sweeps
package does the rest (`benchmark.sweeps.prepare` / `run_sweep`), and `benchmark.cli.sweep_display`
shows it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from benchmark.cli.app import app, console, err_console
from benchmark.cli.options import (
    CacheDirOpt,
    DataDirOpt,
    DeepspeedConfigOpt,
    HostfileOpt,
    LauncherOpt,
    LaunchOptOpt,
    NumGpusOpt,
    NumNodesOpt,
    TrackingUriOpt,
)
from benchmark.cli.parsing import parse_scoped, parse_seeds
from benchmark.cli.runs import _runner
from benchmark.cli.sweep_display import SweepDisplay, dry_run_table, summary_lines
from registry import BenchError

if TYPE_CHECKING:
    from benchmark.sweeps import SweepSpec


def spec_from_cli(file: Path | None, overrides: dict[str, Any], opts: list[str], grids: list[str]) -> SweepSpec:
    """A `SweepSpec` from a sweep file (if any) with CLI values (those not None) on top.

    ``--opt [METHOD:]key=value`` sets a method option (any value JSON can spell, dicts and lists included);
    ``--grid [METHOD:]key=v1,v2`` adds a sweep grid axis: one cell per value.
    """
    from benchmark.sweeps import as_list, load_spec_file, normalize_methods, validate_spec

    data: dict[str, Any] = load_spec_file(file) if file is not None else {}
    source = str(file) if file is not None else "sweep"
    overrides = dict(overrides)
    task_files = [Path(f) for f in overrides.pop("task_files", None) or []]
    for key, value in overrides.items():
        if value is not None:
            data.pop({"backbones": "backbone", "templates": "template"}.get(key, ""), None)
            data[key] = value
    if task_files:  # --task-file adds its tasks to those of the file or --tasks
        from registry import load_task_file

        names = [load_task_file(path).name for path in task_files]
        data["tasks"] = list(dict.fromkeys([*(as_list(data.get("tasks")) or []), *names]))
        data["task_files"] = [*data.get("task_files", []), *map(str, task_files)]
    if not file and not data.get("tasks"):
        raise BenchError("give a sweep file, or --tasks and --methods")
    if "methods" not in data or not data["methods"]:
        raise BenchError(f"{source}: no methods; give --methods or a 'methods' entry")
    methods = normalize_methods(data["methods"])
    if not isinstance(methods, dict):
        raise BenchError(f"{source}: 'methods' must be a list of names or a mapping name -> {{options, grid}}")
    methods = {name: dict(entry) if isinstance(entry, dict) else entry for name, entry in methods.items()}
    for items, flag, field_name in ((opts, "--opt", "options"), (grids, "--grid", "grid")):
        common, scoped = parse_scoped(items, flag=flag, multi=field_name == "grid")
        if common:
            data[field_name] = {**data.get(field_name, {}), **common}
        for method, values in scoped.items():
            match = next((m for m in methods if m.lower() == method.lower()), None)
            if match is None:
                raise BenchError(f"{flag} {method}:... names a method that is not in the sweep "
                                 f"({', '.join(methods)})")
            entry = methods[match]
            if isinstance(entry, dict):
                entry[field_name] = {**entry.get(field_name, {}), **values}
    data["methods"] = methods
    return validate_spec(data, source)


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
    from benchmark import sweeps as sw

    overrides = {
        "tasks": tasks, "task_files": task_file or None, "methods": methods, "k": k,
        "seeds": parse_seeds(seeds) if seeds else None,
        "backbones": backbone, "templates": template or None, "data_dir": data_dir, "test_cap": test_cap,
        "batch_size": batch_size, "device": device, "tracking_uri": tracking_uri, "experiment": experiment,
        "cache_dir": cache_dir,
    }
    spec = spec_from_cli(file, overrides, opt, grid)
    runner = _runner(launcher, launch_opt, num_gpus, num_nodes, hostfile, deepspeed_config)
    if dry_run:
        from benchmark.tracking import default_tracking_uri

        cells = sw.expand_cells(spec, tracking_uri=spec.tracking_uri or default_tracking_uri())
        store = sw.open_store(cells[0].config.tracking_uri, spec.experiment, spec.cache_dir, create=False)
        states = sw.dry_run(cells, store)
        console.print(dry_run_table(states))
        counts = {state: sum(s == state for _, s in states) for state in dict.fromkeys(s for _, s in states)}
        console.print(", ".join(f"{state}: {n}" for state, n in counts.items()), highlight=False)
        return
    if hasattr(runner, "sweep"):  # a runner that submits a whole sweep at once (slurm)
        prepared = sw.prepare(spec, display=SweepDisplay(console))
        report = runner.sweep(prepared, wait=wait, max_parallel=max_parallel, status=status, console=console)
        if status or not wait:
            return
        for line in summary_lines(report):
            console.print(line, highlight=False, markup=False, soft_wrap=True)
        if report.failed or report.count("not run", "pending", "running"):
            sys.exit(1)
        return
    if status or max_parallel is not None:
        raise BenchError(f"--status and --max-parallel are for --launcher slurm (not '{launcher}'); "
                         "--dry-run shows a local sweep's cells")
    try:
        report = sw.run_sweep(spec, runner=runner, fail_fast=fail_fast, wait=wait, display=SweepDisplay(console))
    except KeyboardInterrupt:  # typer would swallow it (exit code 0 under standalone_mode=False)
        err_console.print("aborted: the running cell and the sweep are marked KILLED; rerun to resume")
        sys.exit(130)
    for line in summary_lines(report):
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    if report.failed or report.count("not run"):
        sys.exit(1)  # not typer.Exit: app(standalone_mode=False) returns its code instead of exiting
