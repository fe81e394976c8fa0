"""Render a `Leaderboard` as markdown (READMEs), one self-contained HTML file (tables + plots), or CSV.

All three show the same numbers: the views' blocks are built once (`leaderboard.views`: tables, paragraphs,
plots) and each renderer only formats them. Plots (`leaderboard.plots`) are embedded in the HTML as base64
PNG; the markdown links PNG files written next to it. The CSV files hold the data, whichever views are shown.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import TYPE_CHECKING

from leaderboard.plots import png_bytes
from leaderboard.tables import Cell, Table, format_value, row_label
from leaderboard.views import Block, Paragraph, Plot

if TYPE_CHECKING:
    from leaderboard import Leaderboard

REGENERATE = "bench leaderboard --out leaderboard/"
CONVENTIONS = (
    "Per seed, the run with the best dev metric among the hyper-parameter grid is selected (as the reference's "
    "`tools/gather_result.py`); test metric in %: mean (population standard deviation, numpy's default "
    "ddof=0, as the reference) over seeds. [n/m]: seeds present / seeds expected."
)
CSV_FIRST = ["backbone", "k", "template", "task", "method", "method_family", "metric", "mean", "std", "median",
             "n_seeds", "seeds", "missing_seeds", "n_runs", "dev_mean", "acc_mean", "acc_std", "f1_mean", "f1_std",
             "ref_mean", "ref_std", "ref_diff"]


# ------------------------------------------------------------------------------------------- plots


# ---------------------------------------------------------------------------------------- markdown


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("*", "\\*")


def table_markdown(table: Table) -> str:
    """One table as GitHub markdown (best cells in bold, notes in italics below)."""
    lines = [f"### {table.title}", ""]
    lines.append("| " + " | ".join(_md_escape(c) for c in table.columns) + " |")
    lines.append("|" + "|".join([":---"] + ["---:"] * (len(table.columns) - 1)) + "|")
    for row in table.rows:
        cells = []
        for value in row:
            text = _md_escape(format_value(value))
            if isinstance(value, Cell) and value.bold:
                text = f"**{text}**"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.extend(f"*{_md_escape(note)}*  " for note in table.notes)
    return "\n".join(lines).rstrip() + "\n"


def _header(board: Leaderboard) -> list[str]:
    return [
        f"Generated {board.generated} from {board.source_kind} `{board.source}`, experiment `{board.experiment}` "
        f"({len(board.runs)} finished runs, {len(board.agg)} groups). Regenerate with `{board.command or REGENERATE}`.",
        "",
        CONVENTIONS,
    ]


def to_markdown(board: Leaderboard, *, plots_dir: Path | None = None, plots_link: str = "") -> str:
    """The leaderboard as markdown; with ``plots_dir`` the plots are written there as PNGs and linked
    (as ``plots_link/<name>.png``)."""
    lines = ["# kernel-bench leaderboard", "", *_header(board), ""]
    if board.agg.empty:
        lines += ["*No finished runs with dev and test metrics match.*", ""]
    if plots_dir is not None:
        plots_dir.mkdir(parents=True, exist_ok=True)
    for title, blocks in board.sections:
        lines += [f"## {title}", ""]
        for block in blocks:
            lines += _block_markdown(block, plots_dir, plots_link)
    for heading, blocks in board.parts:
        shown = [line for block in blocks for line in _block_markdown(block, plots_dir, plots_link)]
        if shown:  # plots without a plots directory show nothing
            lines += [f"## {heading}", "", *shown]
    return "\n".join(lines).rstrip() + "\n"


def _block_markdown(block: Block, plots_dir: Path | None, plots_link: str) -> list[str]:
    """The markdown lines of one view block; a plot is written to ``plots_dir`` (none without one)."""
    if isinstance(block, Table):
        return [table_markdown(block)]
    if isinstance(block, Paragraph):
        return [f"**{block.label}** {block.text}", ""]
    if plots_dir is None:
        return []
    (plots_dir / f"{block.stem}.png").write_bytes(png_bytes(block.draw()))
    link = f"{plots_link.rstrip('/')}/{block.stem}.png" if plots_link else f"{block.stem}.png"
    return [f"![{block.caption}]({link})", "", f"*{block.caption}*", ""]


# -------------------------------------------------------------------------------------------- html

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.6em; }
h3 { font-size: 1.05em; margin-bottom: .4em; }
table { border-collapse: collapse; margin: .4em 0; font-size: .88em; }
th, td { border: 1px solid #ccc; padding: .25em .55em; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
tr:nth-child(even) td { background: #fafafa; }
td.best { font-weight: bold; background: #e8f3e8 !important; }
p.note { font-size: .82em; color: #555; margin: .15em 0; font-style: italic; }
p.meta { font-size: .9em; color: #444; }
p.headline { background: #f4f8fc; border-left: 4px solid #4C72B0; padding: .5em .8em; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: .85em; color: #555; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
"""


def table_html(table: Table) -> str:
    """One table as HTML (best cells with class ``best``)."""
    out = [f'<h3>{html.escape(table.title)}</h3>', f'<table class="{html.escape(table.key)}">', "<thead><tr>"]
    out += [f"<th>{html.escape(c)}</th>" for c in table.columns]
    out.append("</tr></thead><tbody>")
    for row in table.rows:
        out.append("<tr>")
        for value in row:
            css = ' class="best"' if isinstance(value, Cell) and value.bold else ""
            out.append(f"<td{css}>{html.escape(format_value(value))}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    out += [f'<p class="note">{html.escape(note)}</p>' for note in table.notes]
    return "\n".join(out)


def _blocks_html(blocks: list[Block]) -> list[str]:
    """HTML of view blocks; consecutive plots share one ``<div class="plots">``."""
    out: list[str] = []
    in_plots = False
    for block in blocks:
        if isinstance(block, Plot) != in_plots:
            out.append('<div class="plots">' if not in_plots else "</div>")
            in_plots = not in_plots
        if isinstance(block, Table):
            out.append(table_html(block))
        elif isinstance(block, Paragraph):
            css = f' class="{html.escape(block.key)}"' if block.key else ""
            out.append(f"<p{css}><strong>{html.escape(block.label)}</strong> {html.escape(block.text)}</p>")
        else:
            data = base64.b64encode(png_bytes(block.draw())).decode()
            out.append(f'<figure id="{block.stem}"><img alt="{html.escape(block.caption)}" '
                       f'src="data:image/png;base64,{data}"><figcaption>{html.escape(block.caption)}</figcaption>'
                       "</figure>")
    if in_plots:
        out.append("</div>")
    return out


def _md_inline(text: str) -> str:
    escaped = html.escape(text)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)


def to_html(board: Leaderboard) -> str:
    """One self-contained HTML file: the tables and the plots (base64 PNG, no external resources)."""
    body = ["<h1>kernel-bench leaderboard</h1>"]
    body += [f'<p class="meta">{_md_inline(line)}</p>' for line in _header(board) if line]
    if board.agg.empty:
        body.append("<p><em>No finished runs with dev and test metrics match.</em></p>")
    for title, blocks in board.sections:
        body.append(f"<h2>{html.escape(title)}</h2>")
        body += _blocks_html(blocks)
    for heading, blocks in board.parts:
        body += [f"<h2>{html.escape(heading)}</h2>", *_blocks_html(blocks)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>kernel-bench leaderboard</title><style>{_CSS}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


# --------------------------------------------------------------------------------------------- csv


def to_csv(board: Leaderboard) -> str:
    """The aggregate (one row per task, method, backbone, k, template) as CSV, numbers in percent."""
    agg = board.agg
    if agg.empty:
        return ",".join(CSV_FIRST[:13]) + "\n"
    first = [c for c in CSV_FIRST if c in agg.columns]
    rest = [c for c in agg.columns if c not in first and c not in ("n_expected", "run_ids")]
    return agg[[*first, *rest, "run_ids"]].to_csv(index=False, float_format="%.4f")


def pairs_csv(board: Leaderboard) -> str:
    """The paired FT-vs-kernel view as CSV (gap and recovered share in percent)."""
    return board.pairs.to_csv(index=False, float_format="%.4f")


def selections_csv(board: Leaderboard) -> str:
    """The run selected per (group, seed): its dev and test metric, trials, hyper-parameters and run id."""
    best = board.best
    if best.empty:
        return ""
    first = [c for c in ["backbone", "k", "template", "task", "method", "seed", "dev_metric", "dev", "test_metric",
                         "test", "n_trials", "config_hash", "run_id"] if c in best.columns]
    options = sorted(c for c in best.columns if c.startswith(("opt.", "result.")))
    return best[first + options].to_csv(index=False, float_format="%.4f")


def write_all(board: Leaderboard, out_dir: Path) -> list[Path]:
    """Write ``README.md`` (markdown + linked PNG plots), ``leaderboard.html``, ``leaderboard.csv``,
    ``pairs.csv`` and ``selections.csv`` into ``out_dir``; returns the written files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = out_dir / "plots"
    for old in plots.glob("*.png") if plots.is_dir() else []:
        old.unlink()
    written = {
        out_dir / "README.md": to_markdown(board, plots_dir=plots, plots_link="plots"),
        out_dir / "leaderboard.html": to_html(board),
        out_dir / "leaderboard.csv": to_csv(board),
        out_dir / "pairs.csv": pairs_csv(board),
        out_dir / "selections.csv": selections_csv(board),
    }
    for path, text in written.items():
        path.write_text(text)
    return [*written, *sorted(plots.glob("*.png"))]


__all__ = ["pairs_csv", "row_label", "selections_csv", "to_csv", "to_html", "to_markdown", "write_all"]
