"""The leaderboard: MLflow runs -> best dev per seed -> mean ± std over seeds -> markdown / HTML / CSV.

It reads MLflow and nothing else (no import of the engine)::

    from leaderboard import build, render_board
    board = build(tracking_uri="sqlite:///mlruns/mlflow.db", experiment="kernel-bench", k=16)
    print(render_board(board, "md"))
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from leaderboard.aggregate import (
    LMBFF_SEEDS,
    PAIRS,
    Metric,
    Table,
    aggregate,
    attach_reference,
    diagnostics_table,
    display_backbone,
    headline,
    load_reference,
    paired_rows,
    paired_table,
    reference_table,
    sections,
    select_best,
    task_method_table,
)
from leaderboard.collect import LeaderboardError, collect_runs, resolve_uri


@dataclass
class Leaderboard:
    """Everything a renderer needs: the per-seed selection, the aggregate, and the views as tables."""

    runs: pd.DataFrame
    best: pd.DataFrame
    agg: pd.DataFrame
    pairs: pd.DataFrame
    tables: list[tuple[str, list[Table]]]
    """(section title, [task x method, paired, diagnostics]) per backbone and k."""
    headlines: dict[str, str] = field(default_factory=dict)
    """Section title -> one paragraph answering its question (best method, FT vs. kernel verdicts)."""
    reference: Table | None = None
    source: str = ""
    source_kind: str = "the MLflow store"
    """What ``source`` is (the header says: from <source_kind> `<source>`)."""
    experiment: str = ""
    metric: Metric = "acc"
    command: str = ""
    """The command that generated it (shown in the header, so that anyone can regenerate it)."""
    generated: str = field(default_factory=lambda: _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"))


def from_runs(
    runs: pd.DataFrame,
    *,
    k: int | None = None,
    backbone: str | None = None,
    metric: Metric = "acc",
    seeds: Sequence[int] | None = None,
    reference: str | Path | None = None,
    source: str = "",
    experiment: str = "",
) -> Leaderboard:
    """Build the leaderboard from a runs frame (as `collect_runs` returns)."""
    if not runs.empty and "backbone" in runs.columns:  # never a machine path in headings or file names
        runs = runs.assign(backbone=runs["backbone"].map(display_backbone))
    if not runs.empty and k is not None:
        runs = runs[runs["k"] == k]
    if not runs.empty and backbone is not None:
        runs = runs[runs["backbone"] == display_backbone(backbone)]
    best = select_best(runs, metric)
    agg = aggregate(best, seeds)
    ref_table = None
    if reference is not None:
        ref_frame, sources = load_reference(reference)
        if not agg.empty:
            agg = attach_reference(agg, ref_frame)
        ref_table = reference_table(agg, sources) if not agg.empty else None
    pairs = paired_rows(agg, best)
    tables: list[tuple[str, list[Table]]] = []
    headlines: dict[str, str] = {}
    for bb, kk, section in sections(agg):
        title = f"{bb}, k = {kk}"
        headlines[title] = headline(section, pairs, bb, kk)
        views = [task_method_table(section, f"Tasks × methods ({title})")]
        paired = paired_table(pairs, bb, kk, f"Fine-tuning vs. its kernel analog ({title})")
        if paired is not None:
            views.append(paired)
        diag = diagnostics_table(section, f"Linearization diagnostics ({title})")
        if diag is not None:
            views.append(diag)
        tables.append((title, views))
    return Leaderboard(runs=runs, best=best, agg=agg, pairs=pairs, tables=tables, headlines=headlines,
                       reference=ref_table,
                       source=source, experiment=experiment, metric=metric)


def build(
    tracking_uri: str | None = None,
    experiment: str = "kernel-bench",
    *,
    k: int | None = None,
    backbone: str | None = None,
    metric: Metric = "acc",
    seeds: Sequence[int] | None = None,
    reference: str | Path | None = None,
) -> Leaderboard:
    """Read the FINISHED runs of ``experiment`` from MLflow and build the leaderboard."""
    runs = collect_runs(tracking_uri, experiment)
    return from_runs(runs, k=k, backbone=backbone, metric=metric, seeds=seeds, reference=reference,
                     source=resolve_uri(tracking_uri), experiment=experiment)


def render_board(board: Leaderboard, fmt: str, *, plots_dir: Path | None = None, plots_link: str = "") -> str:
    """The leaderboard as ``md``, ``html`` or ``csv`` text (see the `leaderboard.render` module)."""
    from leaderboard.render import to_csv, to_html, to_markdown

    if fmt == "md":
        return to_markdown(board, plots_dir=plots_dir, plots_link=plots_link)
    if fmt == "html":
        return to_html(board)
    if fmt == "csv":
        return to_csv(board)
    raise LeaderboardError(f"unknown format '{fmt}'; choose md, html or csv")


__all__ = [
    "LMBFF_SEEDS",
    "PAIRS",
    "Leaderboard",
    "LeaderboardError",
    "aggregate",
    "build",
    "collect_runs",
    "from_runs",
    "render_board",
    "select_best",
]
