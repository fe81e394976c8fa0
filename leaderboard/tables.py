"""The leaderboard's tables: `Table` and `Cell` (format-independent), and the built-in views' table builders.

Each builder turns aggregated rows (`leaderboard.aggregate`) into one `Table` that every renderer formats
the same way; `leaderboard.views` registers them as views.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from leaderboard.aggregate import ZERO_SHOT, diagnostic_columns
from leaderboard.methods import Catalog, method_order
from registry.schema import task_order


@dataclass(frozen=True)
class Cell:
    """One ``mean (std)`` entry of a table, in percent; ``bold`` marks the best of its column."""

    mean: float
    std: float | None = None
    n_seeds: int = 0
    n_expected: int = 0
    bold: bool = False
    note: str = ""

    def text(self) -> str:
        """``88.1 (1.2)``, with ``[3/5]`` when seeds are missing and the note appended."""
        out = f"{self.mean:.1f}" if self.std is None else f"{self.mean:.1f} ({self.std:.1f})"
        if self.n_expected and self.n_seeds < self.n_expected:
            out += f" [{self.n_seeds}/{self.n_expected}]"
        return out + self.note


Value = Cell | str | float | int | None


@dataclass
class Table:
    """A rendered-format-independent table: a title, column names, rows of values, footnotes."""

    title: str
    columns: list[str]
    rows: list[list[Value]]
    notes: list[str] = field(default_factory=list)
    key: str = ""


def format_value(value: Value) -> str:
    """The text of one table value (cells ``mean (std)``, floats with one decimal, None as ``–``)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, Cell):
        return value.text()
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def row_label(method: str, template: str) -> str:
    """A method's row name; a non-default template is shown after it."""
    return method if template in ("default", "", None) else f"{method} [{template}]"


def task_method_table(section: pd.DataFrame, title: str, methods: Catalog | None = None) -> Table:
    """View 1: one row per method (and template), one column per task, an Avg column; best per task bold."""
    tasks = task_order(section["task"])
    labels: dict[tuple[str, str], str] = {}
    for method in method_order(section["method"], methods):
        for template in sorted(section.loc[section["method"] == method, "template"].unique()):
            labels[(method, template)] = row_label(method, template)
    best = section.groupby("task")["mean"].max().to_dict()
    averages: dict[tuple[str, str], tuple[float, bool]] = {}
    for key in labels:
        sub = section[(section["method"] == key[0]) & (section["template"] == key[1])]
        averages[key] = (float(sub["mean"].mean()), len(sub) == len(tasks))
    complete = [avg for avg, full in averages.values() if full]
    best_avg = max(complete) if complete else None
    rows: list[list[Value]] = []
    partial = False
    for key, label in labels.items():
        sub = section[(section["method"] == key[0]) & (section["template"] == key[1])].set_index("task")
        row: list[Value] = [label]
        for task in tasks:
            if task in sub.index:
                r = sub.loc[task]
                row.append(Cell(r["mean"], r["std"], int(r["n_seeds"]), int(r["n_expected"]),
                                bold=bool(np.isclose(r["mean"], best[task]))))
            else:
                row.append(None)
        avg, full = averages[key]
        partial |= not full
        row.append(Cell(avg, None, bold=full and best_avg is not None and bool(np.isclose(avg, best_avg)),
                        note="" if full else "†"))
        rows.append(row)
    metrics = sorted(section["metric"].unique())
    notes = [f"test {'/'.join(metrics)} in %: mean (population std) over seeds of the best-dev run per seed; "
             "best per task in bold; [n/m]: seeds present / expected"]
    if partial:
        notes.append("†: average over the tasks that row has (not comparable with complete rows)")
    missing = missing_seeds_note(section)
    if missing:
        notes.append(missing)
    return Table(title=title, columns=["method", *tasks, "Avg"], rows=rows, notes=notes, key="tasks")


def missing_seeds_note(section: pd.DataFrame, limit: int = 12) -> str:
    """``missing seeds: ft-adam 87,100 (sst2, mr); ...`` for the groups that lack expected seeds."""
    if "missing_seeds" not in section.columns:
        return ""
    lacking = section[section["missing_seeds"].astype(str) != ""]
    if lacking.empty:
        return ""
    entries = []
    for (method, template, seeds), group in lacking.groupby(["method", "template", "missing_seeds"], sort=False):
        entries.append(f"{row_label(method, template)} {seeds} ({', '.join(task_order(group['task']))})")
    more = f"; … {len(entries) - limit} more (see the CSV)" if len(entries) > limit else ""
    return "missing seeds: " + "; ".join(entries[:limit]) + more


def within_noise(row: Any) -> str:
    """``within noise`` when the difference's interval holds 0, else which side is better; ``–`` without one."""
    low, high = _maybe(row.get("diff_low")), _maybe(row.get("diff_high"))
    if low is None or high is None:
        return "–"
    if low <= 0 <= high:
        return "within noise"
    return "kernel better" if low > 0 else "FT better"


def _interval(row: Any) -> str | None:
    mean, low, high = _maybe(row.get("diff_mean")), _maybe(row.get("diff_low")), _maybe(row.get("diff_high"))
    if mean is None:
        return None
    if low is None or high is None:
        return f"{mean:+.1f}"
    return f"{mean:+.1f} [{low:+.1f}, {high:+.1f}]"


RECOVERED_NOTE = (
    "recovered = (kernel − zero-shot) / (FT − zero-shot) with the means over seeds: the share of fine-tuning's gain "
    "over zero-shot that the kernel analog reaches ('–' when FT does not beat zero-shot or zero-shot is missing). "
    "It exceeds 100% when the kernel beats FT, and with a small FT gain (a few points here) seed noise of ±1 point "
    "moves it by tens of percent: read it with the paired interval"
)
PAIRED_NOTE = (
    "kernel − FT: mean over the seeds both have of the per-seed difference of test metrics (points), with its 95% "
    "Student-t interval [low, high] over n shared seeds; 'within noise' when the interval holds 0"
)


def paired_table(pairs: pd.DataFrame, backbone: str, k: int, title: str) -> Table | None:
    """View 2: each FT method next to its kernel analog, the paired difference with its interval, the share of
    FT's gain recovered, and FT's training budget."""
    sub = pairs[(pairs["backbone"] == backbone) & (pairs["k"] == k)] if not pairs.empty else pairs
    if sub.empty:
        return None
    paired = "diff_mean" in sub.columns
    rows: list[list[Value]] = []
    for (template, ft, kernel), group in sub.groupby(["template", "ft_method", "kernel_method"], sort=False):
        label = f"{row_label(ft, template)} | {row_label(kernel, template)}"
        for i, (_, r) in enumerate(group.iterrows()):
            extra = [_interval(r), int(r["n_shared"]), within_noise(r)] if paired else [f"{r['gap']:+.1f}"]
            rows.append([label if i == 0 else "", r["task"],
                         Cell(r["ft_mean"], r["ft_std"], r["ft_seeds"], r["ft_expected"]),
                         Cell(r["kernel_mean"], r["kernel_std"], r["kernel_seeds"], r["kernel_expected"]),
                         *extra, _maybe(r["zero_shot"]), _share(r["recovered"]),
                         *([r.get("ft_budget", "")] if paired else [])])
        if len(group) > 1:
            zs = group["zero_shot"]
            shares = group["recovered"].dropna()
            extra = ["", "", ""] if paired else [f"{group['gap'].mean():+.1f}"]
            rows.append(["", "Avg", Cell(group["ft_mean"].mean()), Cell(group["kernel_mean"].mean()), *extra,
                         _maybe(zs.mean()) if zs.notna().all() else None,
                         _share(shares.mean()) if len(shares) == len(group) else None, *([""] if paired else [])])
    if paired:
        columns = ["FT | kernel", "task", "FT", "kernel", "kernel − FT [95% CI]", "n", "verdict", "zero-shot",
                   "recovered", "FT budget"]
        notes = [PAIRED_NOTE, RECOVERED_NOTE, "FT budget: training steps and learning rate of the selected "
                 "fine-tuning runs ('default': the method's default, not set in the runs)"]
    else:
        columns = ["FT | kernel", "task", "FT", "kernel", "gap", "zero-shot", "recovered"]
        notes = ["gap = kernel − FT (points); " + RECOVERED_NOTE]
    return Table(title=title, columns=columns, rows=rows, notes=notes, key="paired")


def headline(section: pd.DataFrame, pairs: pd.DataFrame, backbone: str, k: int) -> str:
    """One paragraph answering the section's question: the best method, zero-shot, and each FT | kernel verdict."""
    best = section.loc[section["mean"].idxmax()]
    tasks = task_order(section["task"])
    parts = [f"{len(tasks)} task{'s' if len(tasks) > 1 else ''} ({', '.join(tasks)}), "
             f"{section['method'].nunique()} methods."]
    parts.append(f"Best: {row_label(best['method'], best['template'])} on {best['task']} with "
                 f"{best['mean']:.1f} ({best['std']:.1f}).")
    zs = section[section["method"] == ZERO_SHOT]
    if not zs.empty:
        parts.append("Zero-shot: " + ", ".join(f"{r['mean']:.1f} on {r['task']}" + (
            f" [{r['template']}]" if r["template"] != "default" else "") for _, r in zs.iterrows()) + ".")
    sub = pairs[(pairs["backbone"] == backbone) & (pairs["k"] == k)] if not pairs.empty else pairs
    if not sub.empty and "diff_mean" in sub.columns:
        verdicts = [within_noise(r) for _, r in sub.iterrows()]
        noise = verdicts.count("within noise")
        parts.append(f"Fine-tuning vs. its kernel analog: {noise} of {len(sub)} pairs within noise (95% paired "
                     "interval over the shared seeds holds 0)" + ("" if noise == len(sub) else "; ") + "; ".join(
                         f"{row_label(r['ft_method'], r['template'])} | {row_label(r['kernel_method'], r['template'])}"
                         f" on {r['task']}: "
                         f"{_interval(r)} ({v}, {int(r['n_shared'])} seeds)"
                         for (_, r), v in zip(sub.iterrows(), verdicts, strict=True) if v != "within noise") + ".")
        widest = sub.loc[(sub["diff_high"] - sub["diff_low"]).idxmax()] if sub["diff_low"].notna().any() else None
        if widest is not None:
            parts.append(f"The widest interval spans {widest['diff_high'] - widest['diff_low']:.1f} points: "
                         "differences smaller than that are not resolved by these seeds.")
    return " ".join(parts)


def _maybe(value: Any) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _share(value: Any) -> str | None:
    value = _maybe(value)
    return None if value is None else f"{value:.0f}%"


def diagnostics_table(section: pd.DataFrame, title: str) -> Table | None:
    """View 3: the linearization diagnostics (mean over the selected seeds) of the runs that carry them."""
    columns = [c for c in diagnostic_columns(section) if section[c].notna().any()]
    sub = section.dropna(subset=columns, how="all") if columns else section.iloc[0:0]
    if sub.empty:  # no run of this section carries diagnostics: no empty table
        return None
    rows: list[list[Value]] = []
    for _, r in sub.iterrows():
        rows.append([row_label(r["method"], r["template"]), r["task"],
                     *[None if pd.isna(r[c]) else f"{r[c]:.4g}" for c in columns]])
    return Table(title=title, columns=["method", "task", *columns], rows=rows,
                 notes=["diagnostic metrics (names starting with diag_ or diag/), mean over the selected runs"],
                 key="diagnostics")


def reference_table(agg: pd.DataFrame, sources: list[str]) -> Table | None:
    """Our numbers next to the published ones, with the difference (ours − published)."""
    if "ref_mean" not in agg.columns:
        return None
    sub = agg[agg["ref_mean"].notna()]
    rows: list[list[Value]] = []
    for _, r in sub.iterrows():
        rows.append([r["task"], row_label(r["method"], r["template"]), str(r["backbone"]), int(r["k"]),
                     Cell(r["mean"], r["std"], int(r["n_seeds"]), int(r["n_expected"])),
                     Cell(r["ref_mean"], r["ref_std"]), f"{r['ref_diff']:+.1f}"])
    cited = "; ".join(sources) if sources else "not given in the reference file"
    return Table(title="Comparison with published numbers",
                 columns=["task", "method", "backbone", "k", "ours", "published", "Δ"], rows=rows,
                 notes=[f"published numbers: {cited}", "Δ = ours − published (points)"], key="reference")
