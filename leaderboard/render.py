"""Render a `Leaderboard` as markdown (READMEs), one self-contained HTML file (tables + plots), or CSV.

All three show the same numbers: the tables are built once (`leaderboard.aggregate.Table`) and each
renderer only formats them. Plots are drawn with matplotlib's object API (no pyplot state, no GUI
backend) and embedded in the HTML as base64 PNG; the markdown links PNG files written next to it.
"""

from __future__ import annotations

import base64
import html
import io
import re
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from leaderboard.aggregate import PAIRS, Cell, Table, format_value, row_label

if TYPE_CHECKING:
    from matplotlib.figure import Figure

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


def _slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9]+", "-", text).strip("-").lower()


def short_name(backbone: str) -> str:
    """A local model path's last component (for plot titles); registered names and Hub ids unchanged."""
    from leaderboard.aggregate import display_backbone

    return display_backbone(backbone)


def plot_groups(pairs: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """(slug, title, rows) for each backbone, k and template that has paired FT / kernel results."""
    if pairs.empty:
        return []
    out = []
    for (backbone, k, template), group in pairs.groupby(["backbone", "k", "template"], sort=True):
        suffix = "" if template == "default" else f", template {template}"
        out.append((_slug(f"{backbone}-k{k}-{template}"), f"{short_name(backbone)}, k = {k}{suffix}", group))
    return out


def diff_figure(group: pd.DataFrame, title: str) -> Figure:
    """Per task and pair: kernel − FT (points) over the shared seeds with its 95% t-interval, around 0."""
    from matplotlib.figure import Figure

    rows = group.reset_index(drop=True)
    labels = [f"{r['ft_method']} | {r['kernel_method']}\n{r['task']}" for _, r in rows.iterrows()]
    fig = Figure(figsize=(6.4, 0.55 * len(rows) + 1.6), layout="constrained")
    ax = fig.subplots()
    ys = list(range(len(rows)))[::-1]
    has_ci = "diff_low" in rows.columns
    means = rows["diff_mean"] if "diff_mean" in rows.columns else rows["gap"]
    for y, (_, r), mean in zip(ys, rows.iterrows(), means, strict=True):
        low, high = (r["diff_low"], r["diff_high"]) if has_ci else (float("nan"), float("nan"))
        color = "#4C72B0" if pd.isna(low) or low <= 0 <= high else ("#55A868" if low > 0 else "#C44E52")
        if not pd.isna(low):
            ax.plot([low, high], [y, y], color=color, linewidth=2)
        ax.plot([mean], [y], "o", color=color)
        ax.annotate(f"n={int(r['n_shared'])}" if "n_shared" in r else "", (mean, y), xytext=(0, 6),
                    textcoords="offset points", fontsize=7, ha="center")
    ax.axvline(0, color="gray", linestyle="--", linewidth=1)
    span = pd.concat([means, rows.get("diff_low", means), rows.get("diff_high", means)]).abs().max()
    span = float(span) * 1.15 if pd.notna(span) and span > 0 else 1.0
    ax.set_xlim(-span, span)
    ax.set_yticks(ys, labels, fontsize=8)
    ax.set_xlabel("kernel − fine-tuning, test (points); bar: 95% paired t-interval")
    ax.set_title(f"Kernel analog minus fine-tuning, paired over seeds\n({title})", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return fig


def scatter_figure(group: pd.DataFrame, title: str) -> Figure:
    """Kernel accuracy against FT accuracy across tasks (one marker per pair), with the diagonal."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.6, 5.2), layout="constrained")
    ax = fig.subplots()
    markers = dict(zip(PAIRS, ("o", "s", "^", "D"), strict=True))
    for (ft, kernel), rows in group.groupby(["ft_method", "kernel_method"], sort=False):
        ax.errorbar(rows["ft_mean"], rows["kernel_mean"], xerr=rows["ft_std"], yerr=rows["kernel_std"],
                    fmt=markers.get((ft, kernel), "o"), capsize=2, label=f"{ft} | {kernel}", alpha=0.85)
        for _, r in rows.iterrows():
            ax.annotate(r["task"], (r["ft_mean"], r["kernel_mean"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    lows = pd.concat([group["ft_mean"] - group["ft_std"], group["kernel_mean"] - group["kernel_std"]])
    highs = pd.concat([group["ft_mean"] + group["ft_std"], group["kernel_mean"] + group["kernel_std"]])
    low, high = max(0.0, float(lows.min()) - 3), min(100.0, float(highs.max()) + 3)
    ax.plot([low, high], [low, high], color="gray", linestyle="--", linewidth=1, label="kernel = FT")
    ax.set_xlim(low, high)
    ax.set_ylim(low, high)
    ax.set_aspect("equal")
    ax.set_xlabel("fine-tuning test (%)")
    ax.set_ylabel("kernel analog test (%)")
    ax.set_title(f"Kernel vs. fine-tuning across tasks\n({title})", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", frameon=True, framealpha=0.9)
    ax.grid(alpha=0.3)
    return fig


def figures(board: Leaderboard) -> list[tuple[str, str, Figure]]:
    """(file stem, caption, figure) for every plot of the leaderboard."""
    out = []
    for slug, title, group in plot_groups(board.pairs):
        out.append((f"diff-{slug}", f"Kernel analog minus fine-tuning per task over the shared seeds ({title}); "
                    "bars: 95% paired t-interval; dashed: no difference", diff_figure(group, title)))
        out.append((f"scatter-{slug}", f"Kernel analog vs. fine-tuning across tasks ({title}); dashed: diagonal",
                    scatter_figure(group, title)))
    return out


def png_bytes(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


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
    for title, tables in board.tables:
        lines += [f"## {title}", ""]
        if board.headlines.get(title):
            lines += [f"**At a glance.** {board.headlines[title]}", ""]
        for table in tables:
            lines += [table_markdown(table)]
    if board.reference is not None:
        lines += ["## Published numbers", "", table_markdown(board.reference)]
    if plots_dir is not None:
        plots_dir.mkdir(parents=True, exist_ok=True)
        figs = figures(board)
        if figs:
            lines += ["## Plots", ""]
        for stem, caption, fig in figs:
            (plots_dir / f"{stem}.png").write_bytes(png_bytes(fig))
            link = f"{plots_link.rstrip('/')}/{stem}.png" if plots_link else f"{stem}.png"
            lines += [f"![{caption}]({link})", "", f"*{caption}*", ""]
    return "\n".join(lines).rstrip() + "\n"


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


def _md_inline(text: str) -> str:
    escaped = html.escape(text)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)


def to_html(board: Leaderboard) -> str:
    """One self-contained HTML file: the tables and the plots (base64 PNG, no external resources)."""
    body = ["<h1>kernel-bench leaderboard</h1>"]
    body += [f'<p class="meta">{_md_inline(line)}</p>' for line in _header(board) if line]
    if board.agg.empty:
        body.append("<p><em>No finished runs with dev and test metrics match.</em></p>")
    for title, tables in board.tables:
        body.append(f"<h2>{html.escape(title)}</h2>")
        if board.headlines.get(title):
            body.append(f'<p class="headline"><strong>At a glance.</strong> {html.escape(board.headlines[title])}</p>')
        body += [table_html(t) for t in tables]
    if board.reference is not None:
        body += ["<h2>Published numbers</h2>", table_html(board.reference)]
    figs = figures(board)
    if figs:
        body += ["<h2>Plots</h2>", '<div class="plots">']
        for stem, caption, fig in figs:
            data = base64.b64encode(png_bytes(fig)).decode()
            body.append(f'<figure id="{stem}"><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        body.append("</div>")
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


__all__ = ["figures", "pairs_csv", "row_label", "selections_csv", "to_csv", "to_html", "to_markdown", "write_all"]
