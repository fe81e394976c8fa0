"""Best-dev selection per seed, mean and standard deviation over seeds, and the leaderboard's views.

Selection follows the reference's result gathering (LM-Kernel-FT / LM-BFF ``tools/gather_result.py``):
the runs of one group (task, method, backbone, k, template) are split by seed; repeated runs of one
configuration (same config hash) count once, the latest kept; per seed the run with the best dev
metric among the hyper-parameter grid is selected, ties going to the first in a fixed order (the
smallest config hash, where the reference sorts by output directory). The test metric of the
selected runs is averaged over seeds and its **population** standard deviation (``numpy.std``,
ddof=0) is reported, both in percent, as the reference does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, Literal

import numpy as np
import pandas as pd

LMBFF_SEEDS: tuple[int, ...] = (13, 21, 42, 87, 100)
GROUP_KEYS: list[str] = ["task", "method", "backbone", "k", "template"]
SECTION_KEYS: list[str] = ["backbone", "k"]
PAIRS: tuple[tuple[str, str], ...] = (
    ("ft-sgd", "ntk-sgd"),
    ("ft-adam", "ntk-adam"),
    ("lora-sgd", "lora-ntk-sgd"),
    ("lora-adam", "lora-ntk-adam"),
)
"""Each fine-tuning method and its kernel analog (the paper's comparison)."""
ZERO_SHOT = "zero-shot"
METHOD_ORDER: tuple[str, ...] = (
    "zero-shot", "linear-probe", "ft-sgd", "ntk-sgd", "ft-adam", "ntk-adam", "ntk-signgd",
    "lora-sgd", "lora-ntk-sgd", "lora-adam", "lora-ntk-adam",
)
TASK_ORDER: tuple[str, ...] = (
    "sst2", "sst5", "mr", "cr", "mpqa", "subj", "trec", "agnews", "mnli", "snli", "qnli", "rte", "mrpc", "qqp",
)
METHOD_ALIASES: dict[str, str] = {"ft": "ft-adam", "lora": "lora-adam"}
DIAG_PREFIXES: tuple[str, ...] = ("diag_", "diag/")
"""Metrics whose names start with one of these are linearization diagnostics (shown when present)."""

Metric = Literal["acc", "f1"]


def _order(values: Iterable[str], preferred: Sequence[str]) -> list[str]:
    rank = {name: i for i, name in enumerate(preferred)}
    return sorted(set(values), key=lambda v: (rank.get(v, len(rank)), v))


def method_order(methods: Iterable[str]) -> list[str]:
    """Methods in the paper's order (baselines, then each FT method followed by its kernel analog)."""
    return _order(methods, METHOD_ORDER)


def task_order(tasks: Iterable[str]) -> list[str]:
    """Tasks in LM-BFF's table order, unknown ones after, alphabetically."""
    return _order(tasks, TASK_ORDER)


def diagnostic_columns(frame: pd.DataFrame) -> list[str]:
    """The linearization-diagnostic metric columns present in ``frame``."""
    return sorted(c for c in frame.columns if isinstance(c, str) and c.startswith(DIAG_PREFIXES))


def _metric_keys(task_runs: pd.DataFrame, metric: Metric) -> tuple[str, str]:
    """(dev key, test key) for one task: F1 when asked and the task's runs carry it, else accuracy."""
    if metric == "f1" and {"dev_f1", "test_f1"} <= set(task_runs.columns):
        if task_runs["test_f1"].notna().any() and task_runs["dev_f1"].notna().any():
            return "dev_f1", "test_f1"
    return "dev_acc", "test_acc"


def select_best(runs: pd.DataFrame, metric: Metric = "acc") -> pd.DataFrame:
    """One row per (group, seed): the run with the best dev metric, as the reference's gathering.

    ``metric='acc'`` selects by ``dev_acc`` and reports ``test_acc``; ``metric='f1'`` selects by
    ``dev_f1`` and reports ``test_f1`` for tasks whose runs have F1 (MRPC, QQP), accuracy elsewhere.
    Adds columns ``dev``, ``test`` (fractions), ``dev_metric``, ``test_metric`` and ``n_trials``
    (distinct configurations tried for that seed). Runs missing the dev or test metric are ignored.
    """
    columns = [*GROUP_KEYS, "seed", "dev", "test", "dev_metric", "test_metric", "n_trials"]
    if runs.empty or "dev_acc" not in runs.columns or "test_acc" not in runs.columns:
        return pd.DataFrame(columns=columns)
    parts = []
    for _, task_runs in runs.groupby("task", sort=False):
        dev_key, test_key = _metric_keys(task_runs, metric)
        part = task_runs.assign(dev=task_runs[dev_key], test=task_runs[test_key],
                                dev_metric=dev_key, test_metric=test_key)
        parts.append(part)
    frame = pd.concat(parts, ignore_index=True)
    frame = frame[frame["dev"].notna() & frame["test"].notna()].copy()
    if frame.empty:
        return pd.DataFrame(columns=columns)
    if "config_hash" not in frame.columns:
        frame["config_hash"] = ""
    # One configuration counts once: the latest finished run of a config hash (reference: per output_dir).
    frame["_identity"] = frame["config_hash"].where(frame["config_hash"].astype(str) != "", frame["run_id"])
    sort_time = frame["end_time"] if "end_time" in frame.columns else pd.Series(0, index=frame.index)
    frame = frame.assign(_time=sort_time.fillna(0)).sort_values(["_time", "run_id"], kind="stable")
    frame = frame.drop_duplicates([*GROUP_KEYS, "seed", "_identity"], keep="last")
    keys = [*GROUP_KEYS, "seed"]
    frame = frame.sort_values([*keys, "_identity", "run_id"], kind="stable").reset_index(drop=True)
    trials = frame.groupby(keys, sort=False)["_identity"].transform("size")
    frame["n_trials"] = trials.astype(int)
    best_index = frame.groupby(keys, sort=False)["dev"].idxmax()
    best = frame.loc[sorted(best_index.tolist())].drop(columns=["_identity", "_time"]).reset_index(drop=True)
    return best


def _parse_seeds(text: Any) -> set[int]:
    if not isinstance(text, str) or not text.strip():
        return set()
    return {int(part) for part in text.split(",") if part.strip().lstrip("-").isdigit()}


def _expected_seeds(group: pd.DataFrame, seeds: Sequence[int] | None) -> set[int]:
    if seeds:
        return set(seeds)
    from_sweeps: set[int] = set()
    if "sweep_seeds" in group.columns:
        for text in group["sweep_seeds"]:
            from_sweeps |= _parse_seeds(text)
    return from_sweeps or set(LMBFF_SEEDS)


def aggregate(best: pd.DataFrame, seeds: Sequence[int] | None = None) -> pd.DataFrame:
    """Mean and population std (percent) of the selected runs' test metric over seeds, per group.

    Columns: the group keys, ``metric`` (acc / f1), ``mean``, ``std``, ``median``, ``dev_mean``,
    ``n_seeds``, ``seeds``, ``missing_seeds`` (expected seeds without a run: ``seeds`` if given, else
    the seeds of the sweeps the runs came from, else LM-BFF's 13, 21, 42, 87, 100), ``n_runs``,
    ``acc_mean``/``acc_std`` and ``f1_mean``/``f1_std`` where the runs have them, the mean of each
    diagnostic metric, and ``run_ids`` of the selected runs.
    """
    diag = diagnostic_columns(best)
    rows: list[dict[str, Any]] = []
    if best.empty:
        return pd.DataFrame(columns=[*GROUP_KEYS, "metric", "mean", "std", "n_seeds", "seeds", "missing_seeds"])
    for key, group in best.groupby(GROUP_KEYS, sort=False):
        test = group["test"].to_numpy(dtype=float)
        present = sorted(int(s) for s in group["seed"])
        expected = _expected_seeds(group, seeds)
        row: dict[str, Any] = dict(zip(GROUP_KEYS, key, strict=True))
        row.update(
            method_family=group["method_family"].iloc[0] if "method_family" in group.columns else "",
            metric="f1" if group["test_metric"].iloc[0] == "test_f1" else "acc",
            mean=float(np.mean(test) * 100),
            std=float(np.std(test) * 100),  # population std (ddof=0), as the reference
            median=float(np.median(test) * 100),
            dev_mean=float(np.mean(group["dev"].to_numpy(dtype=float)) * 100),
            n_seeds=len(present),
            n_expected=len(expected | set(present)),
            seeds=",".join(map(str, present)),
            missing_seeds=",".join(map(str, sorted(expected - set(present)))),
            n_runs=int(group["n_trials"].sum()),
        )
        for name in ("acc", "f1"):
            column = f"test_{name}"
            if column in group.columns and group[column].notna().all():
                values = group[column].to_numpy(dtype=float)
                row[f"{name}_mean"] = float(np.mean(values) * 100)
                row[f"{name}_std"] = float(np.std(values) * 100)
        for column in diag:
            values = group[column].dropna().to_numpy(dtype=float)
            if len(values):
                row[column] = float(np.mean(values))
        row["run_ids"] = ",".join(group["run_id"].astype(str))
        rows.append(row)
    frame = pd.DataFrame(rows)
    return sort_groups(frame)


def sort_groups(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows ordered by backbone, k, template, task (LM-BFF order), method (paper order)."""
    if frame.empty:
        return frame
    task_rank = {t: i for i, t in enumerate(task_order(frame["task"]))}
    method_rank = {m: i for i, m in enumerate(method_order(frame["method"]))}
    keyed = frame.assign(_t=frame["task"].map(task_rank), _m=frame["method"].map(method_rank))
    keyed = keyed.sort_values(["backbone", "k", "template", "_t", "_m"], kind="stable")
    return keyed.drop(columns=["_t", "_m"]).reset_index(drop=True)


# ------------------------------------------------------------------------------------------- views


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


def sections(agg: pd.DataFrame) -> list[tuple[str, int, pd.DataFrame]]:
    """(backbone, k, rows) for each backbone and k in ``agg``."""
    if agg.empty:
        return []
    out = []
    for (backbone, k), group in agg.groupby(SECTION_KEYS, sort=True):
        out.append((str(backbone), int(k), group))
    return out


def task_method_table(section: pd.DataFrame, title: str) -> Table:
    """View 1: one row per method (and template), one column per task, an Avg column; best per task bold."""
    tasks = task_order(section["task"])
    labels: dict[tuple[str, str], str] = {}
    for method in method_order(section["method"]):
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


def _lookup(section: pd.DataFrame, task: str, method: str, template: str) -> pd.Series | None:
    sub = section[(section["task"] == task) & (section["method"] == method) & (section["template"] == template)]
    return None if sub.empty else sub.iloc[0]


def zero_shot_mean(agg: pd.DataFrame, task: str, backbone: str, k: int, template: str) -> float | None:
    """The zero-shot mean for a cell: the same k if present, else any k (zero-shot does not train)."""
    sub = agg[(agg["method"] == ZERO_SHOT) & (agg["task"] == task) & (agg["backbone"] == backbone)
              & (agg["template"] == template)]
    if sub.empty:
        return None
    same_k = sub[sub["k"] == k]
    return float((same_k if not same_k.empty else sub)["mean"].iloc[0])


def recovered_share(kernel: float, ft: float, zero_shot: float | None) -> float | None:
    """Share (percent) of fine-tuning's gain over zero-shot that the kernel recovers; None if FT gains nothing."""
    if zero_shot is None or ft - zero_shot <= 1e-9:
        return None
    return 100.0 * (kernel - zero_shot) / (ft - zero_shot)


def display_backbone(backbone: Any) -> str:
    """A backbone as shown: a registered name or Hub id as is, a local model path by its directory name."""
    text = str(backbone)
    if text.startswith(("/", ".", "~")) or "\\" in text:
        return PurePath(text.replace("\\", "/")).name or text
    return text


def paired_difference(ft_runs: pd.DataFrame, kernel_runs: pd.DataFrame, confidence: float = 0.95) -> dict[str, Any]:
    """Kernel − FT test metric (points) over the seeds both have: mean, t-interval, number of shared seeds.

    The interval is Student's t at ``confidence`` on the per-seed differences (sample std, ddof=1);
    with fewer than two shared seeds it is NaN.
    """
    from scipy import stats

    merged = ft_runs[["seed", "test"]].merge(kernel_runs[["seed", "test"]], on="seed", suffixes=("_ft", "_kernel"))
    diffs = (merged["test_kernel"].to_numpy(dtype=float) - merged["test_ft"].to_numpy(dtype=float)) * 100
    n = len(diffs)
    mean = float(diffs.mean()) if n else math.nan
    low = high = math.nan
    if n >= 2:
        half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * diffs.std(ddof=1) / math.sqrt(n))
        low, high = mean - half, mean + half
    return {"diff_mean": mean, "diff_low": low, "diff_high": high, "n_shared": n,
            "shared_seeds": ",".join(str(int(s)) for s in sorted(merged["seed"]))}


def training_budget(runs: pd.DataFrame) -> str:
    """The steps and learning rate(s) of the selected fine-tuning runs (``opt.*`` params), e.g. ``300 steps, lr 1e-4``.

    Values the runs did not set are the method's defaults (shown as ``default``); several values over
    seeds (a grid) are listed.
    """
    parts = []
    for column, unit in (("opt.steps", "steps"), ("opt.lr", "lr")):
        values = runs[column].dropna().astype(str).unique().tolist() if column in runs.columns else []
        shown = "/".join(sorted(values, key=_numeric_key)) if values else "default"
        parts.append(f"{shown} {unit}" if unit == "steps" else f"{unit} {shown}")
    return ", ".join(parts)


def _numeric_key(text: str) -> tuple[float, str]:
    try:
        return float(text), text
    except ValueError:
        return math.inf, text


def _runs_of(best: pd.DataFrame, backbone: str, k: int, template: str, task: str, method: str) -> pd.DataFrame:
    if best.empty:
        return best
    return best[(best["backbone"] == backbone) & (best["k"] == k) & (best["template"] == template)
                & (best["task"] == task) & (best["method"] == method)]


def paired_rows(agg: pd.DataFrame, best: pd.DataFrame | None = None) -> pd.DataFrame:
    """View 2 as data: one row per (backbone, k, template, pair, task) where both sides have runs.

    With ``best`` (the per-seed selection) each row also has the paired difference over the shared
    seeds (`paired_difference`) and the fine-tuning runs' budget (`training_budget`).
    """
    rows: list[dict[str, Any]] = []
    for backbone, k, section in sections(agg):
        for template in sorted(section["template"].unique()):
            for ft, kernel in PAIRS:
                for task in task_order(section["task"]):
                    a = _lookup(section, task, ft, template)
                    b = _lookup(section, task, kernel, template)
                    if a is None or b is None:
                        continue
                    zs = zero_shot_mean(agg, task, backbone, k, template)
                    row = {
                        "backbone": backbone, "k": k, "template": template, "task": task,
                        "ft_method": ft, "kernel_method": kernel,
                        "ft_mean": a["mean"], "ft_std": a["std"], "ft_seeds": int(a["n_seeds"]),
                        "kernel_mean": b["mean"], "kernel_std": b["std"], "kernel_seeds": int(b["n_seeds"]),
                        "ft_expected": int(a["n_expected"]), "kernel_expected": int(b["n_expected"]),
                        "gap": b["mean"] - a["mean"], "zero_shot": zs,
                        "recovered": recovered_share(b["mean"], a["mean"], zs),
                    }
                    if best is not None and not best.empty:
                        ft_runs = _runs_of(best, backbone, k, template, task, ft)
                        row.update(paired_difference(ft_runs, _runs_of(best, backbone, k, template, task, kernel)))
                        row["ft_budget"] = training_budget(ft_runs)
                    rows.append(row)
    return pd.DataFrame(rows)


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


# --------------------------------------------------------------------------------------- reference


def load_reference(path: Any) -> tuple[pd.DataFrame, list[str]]:
    """A CSV of published numbers: columns task, method, k, mean, std (percent), optionally backbone,
    template; ``#`` lines are comments, and ``# source: ...`` lines cite where the numbers come from.
    Returns the frame and the cited sources. Raises `LeaderboardError` on a bad file.
    """
    from pathlib import Path

    from leaderboard.collect import LeaderboardError

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise LeaderboardError(f"cannot read reference file {path}: {exc.strerror}") from None
    sources = [line.split(":", 1)[1].strip() for line in text.splitlines()
               if line.lstrip().startswith("#") and line.lstrip("# ").lower().startswith("source:")]
    import io

    try:
        frame = pd.read_csv(io.StringIO(text), comment="#", skipinitialspace=True, dtype={"task": str, "method": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise LeaderboardError(f"reference file {path} is not a CSV: {exc}") from None
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    missing = [c for c in ("task", "method", "k", "mean", "std") if c not in frame.columns]
    if missing:
        raise LeaderboardError(f"reference file {path} lacks column(s) {', '.join(missing)} "
                               "(needs: task, method, k, mean, std; optional: backbone, template)")
    for column in ("k", "mean", "std"):
        numeric = pd.to_numeric(frame[column], errors="coerce")
        if numeric.isna().any():
            bad = frame.loc[numeric.isna(), column].iloc[0]
            raise LeaderboardError(f"reference file {path}: column '{column}' has a non-number '{bad}'")
        frame[column] = numeric
    frame["k"] = frame["k"].astype(int)
    frame["task"] = frame["task"].astype(str).str.strip().str.lower()
    frame["method"] = frame["method"].astype(str).str.strip().str.lower().replace(METHOD_ALIASES)
    return frame, sources


def attach_reference(agg: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """``agg`` with ``ref_mean``, ``ref_std`` and ``ref_diff`` (ours − published) where the reference has the cell.

    Rows match on task, method and k, and also on backbone / template where the reference gives them.
    """
    out = agg.copy()
    out["ref_mean"] = np.nan
    out["ref_std"] = np.nan
    for _, ref in reference.iterrows():
        mask = (out["task"] == ref["task"]) & (out["method"] == ref["method"]) & (out["k"] == ref["k"])
        for optional in ("backbone", "template"):
            if optional in reference.columns and isinstance(ref[optional], str) and ref[optional].strip():
                mask &= out[optional] == ref[optional].strip()
        out.loc[mask, "ref_mean"] = float(ref["mean"])
        out.loc[mask, "ref_std"] = float(ref["std"])
    out["ref_diff"] = out["mean"] - out["ref_mean"]
    return out


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
