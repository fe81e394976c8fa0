"""`bench leaderboard`, `bench diagnose` and `bench doctor`: read what the runs recorded, and repair the store."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from benchmark.cli.app import app, console
from benchmark.cli.options import TrackingUriOpt
from benchmark.cli.parsing import parse_seeds
from registry import BenchError


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
