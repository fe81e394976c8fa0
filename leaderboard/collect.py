"""Read runs from an MLflow tracking store into a pandas DataFrame (one row per run).

This module talks to MLflow only; it never imports the engine. A run belongs to the leaderboard
when it carries the cell tags the engine writes (``task``, ``method``, ``backbone``, ``k``, ``seed``,
``template``, ``config_hash``); sweep parent runs and anything else in the experiment are ignored.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

import pandas as pd

from registry.schema import (
    CELL_TAGS,
    DEFAULT_STORE,
    METHOD_ANALOG_TAG,
    METHOD_ORDER_TAG,
    PARENT_RUN_TAG,
    RUN_KIND_TAG,
    RUN_NAME_TAG,
    SWEEP_RUN_KIND,
    SWEEP_SEEDS_TAG,
    http_unreachable,
    resolve_uri,
    sqlite_path,
)

__all__ = ["CELL_TAGS", "DEFAULT_STORE", "SWEEP_SEEDS_TAG", "LeaderboardError", "collect_runs", "connect",
           "resolve_uri", "runs_frame", "runs_from_selections"]


class LeaderboardError(Exception):
    """A problem the user can fix (unreachable store, unknown experiment, bad reference file)."""


def connect(tracking_uri: str | None, *, timeout: float = 5.0) -> Any:
    """An ``MlflowClient`` for an existing, reachable store; `LeaderboardError` otherwise.

    A SQLite store must already exist (reading never creates an empty one); an HTTP server must
    answer within ``timeout`` seconds (MLflow's own client would retry for minutes).
    """
    import logging

    from mlflow.tracking import MlflowClient

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    uri = resolve_uri(tracking_uri)
    sqlite = sqlite_path(uri)
    if sqlite is not None and not sqlite.is_file():
        raise LeaderboardError(f"no MLflow tracking store at {uri} (file {sqlite} does not exist); "
                               "pass --tracking-uri of the store the runs were logged to")
    if uri.startswith(("http://", "https://")):
        reason = http_unreachable(uri, timeout, health=True)
        if reason is not None:
            raise LeaderboardError(f"cannot reach the MLflow tracking server at {uri}: {reason}")
    elif uri.startswith("file:") or "://" not in uri:
        local = Path(urllib.parse.urlparse(uri).path if uri.startswith("file:") else uri)
        if not local.is_dir():
            raise LeaderboardError(f"no MLflow tracking store at {uri} (directory {local} does not exist)")
    try:
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)
    except Exception as exc:  # MLflow raises many types for a bad store
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LeaderboardError(f"cannot read MLflow tracking store {uri}: {first}") from None
    return client


def find_experiment(client: Any, experiment: str) -> Any:
    """The experiment named ``experiment``; `LeaderboardError` listing the existing ones if absent."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = sorted(e.name for e in client.search_experiments())
        known = ", ".join(names) if names else "none"
        raise LeaderboardError(f"experiment '{experiment}' does not exist in {client.tracking_uri} "
                               f"(experiments: {known}); pass --experiment NAME")
    return found


def _search_all(client: Any, experiment_ids: list[str], filter_string: str) -> list[Any]:
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def runs_frame(runs: list[Any], parents: dict[str, Any] | None = None) -> pd.DataFrame:
    """MLflow ``Run`` objects as a DataFrame: cell tags, status, times, metrics, ``opt.*`` params.

    Runs without the cell tags (sweep parents, foreign runs) are dropped; ``k`` and ``seed`` are
    integers; ``sweep_seeds`` holds the parent sweep's seeds when the run is nested in a sweep; the method
    metadata tags (``method_analog_of``, ``method_display_order``) are None where the run predates them.
    """
    parents = parents or {}
    rows: list[dict[str, Any]] = []
    for run in runs:
        tags = run.data.tags
        if not all(tags.get(name) for name in ("task", "method", "k", "seed")):
            continue
        try:
            k, seed = int(tags["k"]), int(tags["seed"])
        except ValueError:
            continue
        parent_id = tags.get(PARENT_RUN_TAG)
        parent = parents.get(parent_id) if parent_id else None
        row: dict[str, Any] = {name: tags.get(name, "") for name in CELL_TAGS}
        row.update({name: tags.get(name) for name in (METHOD_ANALOG_TAG, METHOD_ORDER_TAG)})
        row.update(
            k=k,
            seed=seed,
            template=tags.get("template") or "default",
            run_id=run.info.run_id,
            run_name=tags.get(RUN_NAME_TAG, ""),
            status=run.info.status,
            start_time=run.info.start_time,
            end_time=run.info.end_time,
            parent_run_id=parent_id or "",
            sweep_seeds=parent.data.tags.get(SWEEP_SEEDS_TAG, "") if parent is not None else "",
        )
        row.update({f"opt.{key[4:]}" if key.startswith("opt.") else key: value
                    for key, value in run.data.params.items() if key.startswith(("opt.", "result."))})
        row.update(run.data.metrics)
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        frame = pd.DataFrame(columns=[*CELL_TAGS, "run_id", "status", "start_time", "end_time"])
    return frame


def collect_runs(tracking_uri: str | None = None, experiment: str = "kernel-bench", *,
                 status: str | None = "FINISHED") -> pd.DataFrame:
    """All cell runs of ``experiment`` (only those with ``status``; None = any) as a DataFrame.

    Raises `LeaderboardError` when the store cannot be read or the experiment does not exist.
    """
    client = connect(tracking_uri)
    found = find_experiment(client, experiment)
    filter_string = f"attributes.status = '{status}'" if status else ""
    runs = _search_all(client, [found.experiment_id], filter_string)
    parent_ids = {r.data.tags.get(PARENT_RUN_TAG) for r in runs} - {None}
    parents: dict[str, Any] = {}
    if parent_ids:
        for parent in _search_all(client, [found.experiment_id], f"tags.{RUN_KIND_TAG} = '{SWEEP_RUN_KIND}'"):
            if parent.info.run_id in parent_ids:
                parents[parent.info.run_id] = parent
    return runs_frame(runs, parents)


def runs_from_selections(path: str | Path) -> pd.DataFrame:
    """The runs a leaderboard selected, read back from its ``selections.csv`` (one best-dev run per group and seed).

    Rebuilds a leaderboard where the MLflow store is gone: selection over the grid is already done, so
    the per-seed numbers are those of the original runs; what the CSV does not hold (diagnostic metrics,
    the runs that were not selected) is absent. Raises `LeaderboardError` for a missing or foreign file.
    """
    path = Path(path)
    if not path.is_file():
        raise LeaderboardError(f"selections file '{path}' does not exist")
    frame = pd.read_csv(path, dtype={"config_hash": str, "run_id": str})
    needed = {"backbone", "k", "template", "task", "method", "seed", "dev_metric", "dev", "test_metric", "test"}
    if not needed <= set(frame.columns):
        raise LeaderboardError(f"'{path}' is not a leaderboard selections.csv (missing "
                               f"{', '.join(sorted(needed - set(frame.columns)))})")
    rows = frame.drop(columns=["dev", "test", "dev_metric", "test_metric", "n_trials"], errors="ignore")
    for metric in ("dev", "test"):  # back to the metric columns the runs had (dev_acc, test_f1, ...)
        for name, part in frame.groupby(f"{metric}_metric"):
            rows.loc[part.index, str(name)] = part[metric]
    rows["status"] = "FINISHED"
    rows["end_time"] = range(len(rows))
    for column in ("opt.steps", "opt.lr", "opt.eval_every"):
        if column in rows.columns:
            rows[column] = rows[column].map(lambda v: None if pd.isna(v) else f"{v:g}" if isinstance(v, float) else v)
    return rows
