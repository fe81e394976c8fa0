"""The leaderboard's plots, drawn with matplotlib's object API (no pyplot state, no GUI backend).

One figure pair per backbone, k and template with paired results: the per-task kernel − FT difference with
its interval, and kernel against FT across tasks. Each FT | kernel pair keeps one marker on every plot of a
board; markers (and matplotlib's colours) cycle, so any number of pairs can be drawn.
"""

from __future__ import annotations

import io
import itertools
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MARKERS: tuple[str, ...] = ("o", "s", "^", "D", "v", "P", "X", "*")
"""Scatter markers of the pairs, in pair order; they cycle when there are more pairs."""


def pair_markers(pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """A marker for each (FT, kernel) pair, in order, cycling through `MARKERS`."""
    return dict(zip(pairs, itertools.cycle(MARKERS), strict=False))


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


def scatter_figure(group: pd.DataFrame, title: str, markers: Mapping[tuple[str, str], str] | None = None) -> Figure:
    """Kernel accuracy against FT accuracy across tasks (one marker per pair, ``markers`` or `pair_markers` of the
    group's pairs), with the diagonal."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.6, 5.2), layout="constrained")
    ax = fig.subplots()
    pairs = list(dict.fromkeys(zip(group["ft_method"], group["kernel_method"], strict=True)))
    styles = {**pair_markers(pairs), **(markers or {})}
    for (ft, kernel), rows in group.groupby(["ft_method", "kernel_method"], sort=False):
        ax.errorbar(rows["ft_mean"], rows["kernel_mean"], xerr=rows["ft_std"], yerr=rows["kernel_std"],
                    fmt=styles[(ft, kernel)], capsize=2, label=f"{ft} | {kernel}", alpha=0.85)
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


def png_bytes(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
