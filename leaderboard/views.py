"""Leaderboard views: a registry of what a leaderboard shows, with the built-in views and their order.

A `View` turns the aggregated runs into blocks (a `Table`, a `Paragraph` or `Plot` figures) that every
renderer formats the same way. A *section* view is built once per backbone and k (it gets a `Section`);
a *board* view once for the whole leaderboard (it gets the `BoardData`), under its own heading. Views are
registered in `VIEWS` (``bench leaderboard --view NAME``); a package adds one through the entry-point group
``kernel_bench.views`` (``name = module:VIEW`` where ``VIEW`` is a `View` named ``name``)::

    from leaderboard.tables import Table
    from leaderboard.views import View

    def seeds(section):
        rows = [[r["method"], r["task"], r["seeds"]] for _, r in section.rows.iterrows()]
        return Table(title=f"Seeds ({section.title})", columns=["method", "task", "seeds"], rows=rows)

    VIEW = View(name="seeds", summary="the seeds behind every mean", build=seeds)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

from leaderboard.methods import Catalog, method_pairs, registered_catalog
from leaderboard.plots import diff_figure, pair_markers, plot_groups, scatter_figure
from leaderboard.tables import Table, diagnostics_table, headline, paired_table, reference_table, task_method_table
from registry import BenchError, Registry

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class Paragraph:
    """A paragraph of text under a bold ``label`` (``key``: its CSS class in HTML)."""

    label: str
    text: str
    key: str = ""


@dataclass(frozen=True)
class Plot:
    """A figure, drawn only when rendered (``stem``: its file name without ``.png``)."""

    stem: str
    caption: str
    draw: Callable[[], Figure]


Block = Table | Paragraph | Plot


@dataclass(frozen=True)
class BoardData:
    """What every view reads: the runs, the per-seed selection, the aggregate, the paired rows, the methods."""

    runs: pd.DataFrame
    best: pd.DataFrame
    agg: pd.DataFrame
    pairs: pd.DataFrame
    methods: Catalog
    reference_sources: list[str] | None = None
    """The published numbers' sources when a reference file was given (None: no reference)."""


@dataclass(frozen=True)
class Section:
    """One backbone and k of a leaderboard: its aggregated ``rows`` and its title."""

    data: BoardData
    backbone: str
    k: int
    title: str
    rows: pd.DataFrame


@dataclass(frozen=True)
class View:
    """A registered view: ``build(Section)`` (scope ``section``) or ``build(BoardData)`` (scope ``board``)
    returns a block, a list of blocks, or None (nothing to show)."""

    name: str
    summary: str
    build: Callable[[Any], Block | Sequence[Block] | None]
    scope: Literal["section", "board"] = "section"
    heading: str = ""
    """A board view's heading (its part of the leaderboard); section views appear under their section's."""


def _is_view(_name: str, obj: object) -> str | None:
    return None if isinstance(obj, View) else f"it is a {type(obj).__name__}, not a leaderboard.views.View"


VIEWS: Registry[View] = Registry("view", "kernel_bench.views", check=_is_view)
DEFAULT_VIEWS: tuple[str, ...] = ("headline", "tasks", "paired", "diagnostics", "reference", "plots")
"""What a leaderboard shows unless ``--view`` says otherwise (``--view default`` names this set)."""


def register_view(view: View) -> View:
    """Register ``view`` under its name."""
    VIEWS.add(view.name, view)
    return view


def resolve_views(names: Sequence[str] | None = None) -> list[View]:
    """The views ``names`` (None: `DEFAULT_VIEWS`; ``default`` expands to them), each once, in the given order.

    An unknown name raises `BenchError` listing the registered views.
    """
    expanded: list[str] = []
    for name in names or ("default",):
        expanded.extend(DEFAULT_VIEWS if name.strip().lower() == "default" else (name,))
    views: list[View] = []
    for name in expanded:
        view = VIEWS.get(name)
        if view not in views:
            views.append(view)
    return views


def _blocks(built: Block | Sequence[Block] | None, view: View) -> list[Block]:
    if built is None:
        return []
    blocks = [built] if isinstance(built, Table | Paragraph | Plot) else list(built)
    for block in blocks:
        if not isinstance(block, Table | Paragraph | Plot):
            raise BenchError(f"view '{view.name}' returned a {type(block).__name__}; a view returns Table, "
                             "Paragraph or Plot blocks (leaderboard.views)")
    return blocks


def build_views(data: BoardData, sections: Sequence[Section], views: Sequence[View]
                ) -> tuple[list[tuple[str, list[Block]]], list[tuple[str, list[Block]]]]:
    """(section title, blocks) per section from the section views, and (heading, blocks) per board view that
    shows something, each in the order of ``views``."""
    by_section = [(s.title, [b for v in views if v.scope == "section" for b in _blocks(v.build(s), v)])
                  for s in sections]
    parts = [(v.heading or v.name, blocks) for v in views if v.scope == "board"
             for blocks in [_blocks(v.build(data), v)] if blocks]
    return by_section, parts


# ------------------------------------------------------------------------------------------ built-in


def _headline(section: Section) -> Paragraph:
    text = headline(section.rows, section.data.pairs, section.backbone, section.k)
    return Paragraph(label="At a glance.", text=text, key="headline")


def _tasks(section: Section) -> Table:
    return task_method_table(section.rows, f"Tasks × methods ({section.title})", section.data.methods)


def _paired(section: Section) -> Table | None:
    return paired_table(section.data.pairs, section.backbone, section.k,
                        f"Fine-tuning vs. its kernel analog ({section.title})")


def _diagnostics(section: Section) -> Table | None:
    return diagnostics_table(section.rows, f"Linearization diagnostics ({section.title})")


def _reference(data: BoardData) -> Table | None:
    if data.reference_sources is None or data.agg.empty:
        return None
    return reference_table(data.agg, data.reference_sources)


def _plots(data: BoardData) -> list[Plot]:
    # Every registered pair keeps its place (and marker), whichever pairs this board has.
    markers = pair_markers(method_pairs({**registered_catalog(), **data.methods}))
    out: list[Plot] = []
    for slug, title, group in plot_groups(data.pairs):
        out.append(Plot(f"diff-{slug}", f"Kernel analog minus fine-tuning per task over the shared seeds ({title}); "
                        "bars: 95% paired t-interval; dashed: no difference",
                        lambda group=group, title=title: diff_figure(group, title)))
        out.append(Plot(f"scatter-{slug}", f"Kernel analog vs. fine-tuning across tasks ({title}); dashed: diagonal",
                        lambda group=group, title=title: scatter_figure(group, title, markers)))
    return out


for _view in (
    View("headline", "one paragraph per section: the best method, zero-shot, each FT | kernel verdict", _headline),
    View("tasks", "task x method table: mean (std) over seeds of the best-dev run, best per task in bold", _tasks),
    View("paired", "each fine-tuning method next to its kernel analog: paired difference with its 95% interval, "
         "share of FT's gain recovered", _paired),
    View("diagnostics", "linearization diagnostics of the runs that carry them", _diagnostics),
    View("reference", "our numbers next to published ones (with --reference)", _reference, scope="board",
         heading="Published numbers"),
    View("plots", "kernel − FT per task with its interval, and kernel vs. FT across tasks", _plots, scope="board",
         heading="Plots"),
):
    register_view(_view)
