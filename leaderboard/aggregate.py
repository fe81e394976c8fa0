"""Best-dev selection per seed, mean and standard deviation over seeds, and the paired FT-vs-kernel rows.

Selection follows the reference's result gathering (LM-Kernel-FT / LM-BFF ``tools/gather_result.py``):
the runs of one group (task, method, backbone, k, template) are split by seed; repeated runs of one
configuration (same config hash) count once, the latest kept; per seed the run with the best dev
metric among the hyper-parameter grid is selected, ties going to the first in a fixed order (the
smallest config hash, where the reference sorts by output directory). The test metric of the
selected runs is averaged over seeds and its **population** standard deviation (``numpy.std``,
ddof=0) is reported, both in percent, as the reference does.

Which methods pair up and in which order they come are the methods' own metadata (`leaderboard.methods`);
tasks come in the task registry's order (`registry.schema.task_order`). The tables are in `leaderboard.tables`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import PurePath
from typing import Any, Literal

import numpy as np
import pandas as pd

from leaderboard.methods import Catalog, complete, method_order, method_pairs
from registry.schema import LMBFF_SEEDS, canonical_method, task_order

__all__ = ["LMBFF_SEEDS", "aggregate", "method_order", "paired_rows", "select_best", "sort_groups", "task_order"]

GROUP_KEYS: list[str] = ["task", "method", "backbone", "k", "template"]
SECTION_KEYS: list[str] = ["backbone", "k"]
ZERO_SHOT = "zero-shot"
DIAG_PREFIXES: tuple[str, ...] = ("diag_", "diag/")
"""Metrics whose names start with one of these are linearization diagnostics (shown when present)."""

Metric = Literal["acc", "f1"]


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


def aggregate(best: pd.DataFrame, seeds: Sequence[int] | None = None, *, methods: Catalog | None = None
              ) -> pd.DataFrame:
    """Mean and population std (percent) of the selected runs' test metric over seeds, per group.

    Columns: the group keys, ``metric`` (acc / f1), ``mean``, ``std``, ``median``, ``dev_mean``,
    ``n_seeds``, ``seeds``, ``missing_seeds`` (expected seeds without a run: ``seeds`` if given, else
    the seeds of the sweeps the runs came from, else LM-BFF's 13, 21, 42, 87, 100), ``n_runs``,
    ``acc_mean``/``acc_std`` and ``f1_mean``/``f1_std`` where the runs have them, the mean of each
    diagnostic metric, and ``run_ids`` of the selected runs. Rows come in `sort_groups`' order (``methods``:
    the methods' metadata, `leaderboard.methods.method_catalog`; missing ones from the registry).
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
    return sort_groups(frame, methods)


def sort_groups(frame: pd.DataFrame, methods: Catalog | None = None) -> pd.DataFrame:
    """Rows ordered by backbone, k, template, task (registry order), method (display order)."""
    if frame.empty:
        return frame
    task_rank = {t: i for i, t in enumerate(task_order(frame["task"]))}
    method_rank = {m: i for i, m in enumerate(method_order(frame["method"], methods))}
    keyed = frame.assign(_t=frame["task"].map(task_rank), _m=frame["method"].map(method_rank))
    keyed = keyed.sort_values(["backbone", "k", "template", "_t", "_m"], kind="stable")
    return keyed.drop(columns=["_t", "_m"]).reset_index(drop=True)


# ------------------------------------------------------------------------------------------ paired


def sections(agg: pd.DataFrame) -> list[tuple[str, int, pd.DataFrame]]:
    """(backbone, k, rows) for each backbone and k in ``agg``."""
    if agg.empty:
        return []
    out = []
    for (backbone, k), group in agg.groupby(SECTION_KEYS, sort=True):
        out.append((str(backbone), int(k), group))
    return out


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


def paired_rows(agg: pd.DataFrame, best: pd.DataFrame | None = None, *, methods: Catalog | None = None
                ) -> pd.DataFrame:
    """View 2 as data: one row per (backbone, k, template, pair, task) where both sides have runs.

    With ``best`` (the per-seed selection) each row also has the paired difference over the shared
    seeds (`paired_difference`) and the fine-tuning runs' budget (`training_budget`).
    """
    rows: list[dict[str, Any]] = []
    for backbone, k, section in sections(agg):
        for template in sorted(section["template"].unique()):
            for ft, kernel in method_pairs(complete(section["method"].unique(), methods)):
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
    frame["method"] = frame["method"].astype(str).str.strip().map(canonical_method)
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


