"""The leaderboard: MLflow runs -> best dev per seed -> mean ± std over seeds -> views -> markdown / HTML / CSV.

It reads MLflow and the registries (`registry`: tag names, method metadata, task order, views), never the
engine::

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
    Metric,
    aggregate,
    attach_reference,
    display_backbone,
    load_reference,
    paired_rows,
    sections,
    select_best,
)
from leaderboard.collect import LeaderboardError, collect_runs, resolve_uri
from leaderboard.methods import method_catalog
from leaderboard.tables import Table
from leaderboard.views import (
    DEFAULT_VIEWS,
    VIEWS,
    Block,
    BoardData,
    Paragraph,
    Section,
    View,
    build_views,
    register_view,
    resolve_views,
)


@dataclass
class Leaderboard:
    """Everything a renderer needs: the per-seed selection, the aggregate, and the views' blocks."""

    runs: pd.DataFrame
    best: pd.DataFrame
    agg: pd.DataFrame
    pairs: pd.DataFrame
    sections: list[tuple[str, list[Block]]]
    """(section title, blocks of the section views) per backbone and k."""
    parts: list[tuple[str, list[Block]]] = field(default_factory=list)
    """(heading, blocks) of each board view that shows something (published numbers, plots)."""
    views: tuple[str, ...] = DEFAULT_VIEWS
    source: str = ""
    source_kind: str = "the MLflow store"
    """What ``source`` is (the header says: from <source_kind> `<source>`)."""
    experiment: str = ""
    metric: Metric = "acc"
    command: str = ""
    """The command that generated it (shown in the header, so that anyone can regenerate it)."""
    generated: str = field(default_factory=lambda: _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"))

    @property
    def tables(self) -> list[tuple[str, list[Table]]]:
        """(section title, [its tables]) per backbone and k."""
        return [(title, [b for b in blocks if isinstance(b, Table)]) for title, blocks in self.sections]

    @property
    def headlines(self) -> dict[str, str]:
        """Section title -> its headline paragraph (the ``headline`` view), where shown."""
        return {title: b.text for title, blocks in self.sections for b in blocks
                if isinstance(b, Paragraph) and b.key == "headline"}


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
    views: Sequence[str] | None = None,
) -> Leaderboard:
    """Build the leaderboard from a runs frame (as `collect_runs` returns) with ``views`` (names in `VIEWS`;
    None: `DEFAULT_VIEWS`; ``default`` stands for them)."""
    chosen = resolve_views(views)
    if not runs.empty and "backbone" in runs.columns:  # never a machine path in headings or file names
        runs = runs.assign(backbone=runs["backbone"].map(display_backbone))
    if not runs.empty and k is not None:
        runs = runs[runs["k"] == k]
    if not runs.empty and backbone is not None:
        runs = runs[runs["backbone"] == display_backbone(backbone)]
    methods = method_catalog(runs)
    best = select_best(runs, metric)
    agg = aggregate(best, seeds, methods=methods)
    sources: list[str] | None = None
    if reference is not None:
        ref_frame, sources = load_reference(reference)
        if not agg.empty:
            agg = attach_reference(agg, ref_frame)
    pairs = paired_rows(agg, best, methods=methods)
    data = BoardData(runs=runs, best=best, agg=agg, pairs=pairs, methods=methods, reference_sources=sources)
    parts = [Section(data, bb, kk, f"{bb}, k = {kk}", rows) for bb, kk, rows in sections(agg)]
    by_section, board_parts = build_views(data, parts, chosen)
    return Leaderboard(runs=runs, best=best, agg=agg, pairs=pairs, sections=by_section, parts=board_parts,
                       views=tuple(v.name for v in chosen), source=source, experiment=experiment, metric=metric)


def build(
    tracking_uri: str | None = None,
    experiment: str = "kernel-bench",
    *,
    k: int | None = None,
    backbone: str | None = None,
    metric: Metric = "acc",
    seeds: Sequence[int] | None = None,
    reference: str | Path | None = None,
    views: Sequence[str] | None = None,
) -> Leaderboard:
    """Read the FINISHED runs of ``experiment`` from MLflow and build the leaderboard (``views``: see `from_runs`)."""
    runs = collect_runs(tracking_uri, experiment)
    return from_runs(runs, k=k, backbone=backbone, metric=metric, seeds=seeds, reference=reference,
                     source=resolve_uri(tracking_uri), experiment=experiment, views=views)


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
    "DEFAULT_VIEWS",
    "LMBFF_SEEDS",
    "VIEWS",
    "Leaderboard",
    "LeaderboardError",
    "View",
    "aggregate",
    "build",
    "collect_runs",
    "from_runs",
    "register_view",
    "render_board",
    "select_best",
]
