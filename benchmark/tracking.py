"""Experiment tracking on MLflow: one run per config, embedded SQLite store by default."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

from registry import BenchError

DEFAULT_STORE = Path("mlruns") / "mlflow.db"
HEADLINE_VIEW = "headline"
"""Share key of the runs-table view with the headline columns: ``#/experiments/ID/runs?viewStateShareKey=headline``."""
HEADLINE_COLUMNS = ("metrics.`dev_acc`", "metrics.`test_acc`", "metrics.`wall_seconds`", "tags.`task`",
                    "tags.`method`", "tags.`backbone`", "tags.`k`", "tags.`seed`", "tags.`template`")
# MLflow 3 opens an experiment without the kind tag as a GenAI one (on its Traces page), not on the runs table;
# a "shared view" tag holds a runs-table state (the UI's JSON) that a link can open.
EXPERIMENT_TAGS = {
    "mlflow.experimentKind": "custom_model_development",
    f"mlflow.sharedViewState.{HEADLINE_VIEW}": json.dumps({"selectedColumns": list(HEADLINE_COLUMNS)}),
}


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else a SQLite file ``./mlruns/mlflow.db`` (no server needed)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    DEFAULT_STORE.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{DEFAULT_STORE.resolve()}"


@cache
def code_version() -> str:
    """The git commit of the suite's checkout (with ``-dirty``), or the package version."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        from importlib.metadata import version

        return version("kernel-bench")


class Tracker:
    """Logs one run to MLflow. Create with `Tracker.start`, or `Tracker.attach` to an existing run."""

    def __init__(self, client: Any, run_id: str, experiment_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self.experiment_id = experiment_id

    @staticmethod
    def _client(tracking_uri: str | None) -> Any:
        import logging

        import mlflow
        from mlflow.tracking import MlflowClient

        for name in ("mlflow", "alembic"):  # store migrations log at INFO on every new store
            logging.getLogger(name).setLevel(logging.WARNING)
        uri = tracking_uri or default_tracking_uri()
        mlflow.set_tracking_uri(uri)
        return MlflowClient(tracking_uri=uri)

    @classmethod
    def start(
        cls,
        *,
        tracking_uri: str | None,
        experiment: str,
        run_name: str,
        tags: dict[str, str],
        parent_run_id: str | None = None,
    ) -> Tracker:
        """Create a new RUNNING run in ``experiment`` (created if missing)."""
        client = cls._client(tracking_uri)
        try:
            found = client.get_experiment_by_name(experiment)
            experiment_id = (found.experiment_id if found
                             else client.create_experiment(experiment, tags=EXPERIMENT_TAGS))
        except Exception as exc:  # MLflow raises many types for a bad store
            raise BenchError(f"cannot use MLflow tracking store '{tracking_uri}': {str(exc).splitlines()[0]}") from exc
        all_tags = {"mlflow.runName": run_name, "code_version": code_version(), **tags}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = client.create_run(experiment_id, tags=all_tags, run_name=run_name)
        return cls(client, run.info.run_id, experiment_id)

    @classmethod
    def attach(cls, *, tracking_uri: str | None, run_id: str) -> Tracker:
        """Log into an existing run (the DeepSpeed worker of rank 0 does this)."""
        client = cls._client(tracking_uri)
        run = client.get_run(run_id)
        return cls(client, run_id, run.info.experiment_id)

    def log_params(self, params: dict[str, Any]) -> None:
        """Log parameters (values stringified; MLflow limits each to 6,000 characters)."""
        from mlflow.entities import Param

        items = [Param(str(k), str(v)[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Log numeric metrics, optionally at a step."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        for start in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[start : start + 500])

    def set_tags(self, tags: dict[str, Any]) -> None:
        """Set run tags."""
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def log_artifact(self, path: Path, artifact_dir: str | None = None) -> None:
        """Upload a file or directory as an artifact."""
        if Path(path).is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_dir)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_dir)

    def log_json(self, obj: Any, filename: str) -> None:
        """Upload ``obj`` as a JSON artifact named ``filename``."""
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / filename
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
            self.log_artifact(target, str(Path(filename).parent) if "/" in filename else None)

    def finish(self, status: str = "FINISHED") -> None:
        """Close the run as FINISHED, FAILED or KILLED."""
        self.client.set_terminated(self.run_id, status=status)


class NullTracker(Tracker):
    """Accepts every call and logs nothing: for DeepSpeed ranks other than 0."""

    def __init__(self) -> None:
        super().__init__(client=None, run_id="", experiment_id="")

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def set_tags(self, tags: dict[str, Any]) -> None:
        pass

    def log_artifact(self, path: Path, artifact_dir: str | None = None) -> None:
        pass

    def log_json(self, obj: Any, filename: str) -> None:
        pass

    def finish(self, status: str = "FINISHED") -> None:
        pass


@contextmanager
def tracked(tracker: Tracker) -> Iterator[Tracker]:
    """Finish the run as FINISHED on success, KILLED on Ctrl-C, FAILED on any other exception."""
    try:
        yield tracker
    except KeyboardInterrupt:
        tracker.finish("KILLED")
        raise
    except BaseException as exc:
        tracker.set_tags({"error": f"{type(exc).__name__}: {exc}"[:5000]})
        tracker.finish("FAILED")
        raise
    else:
        tracker.finish("FINISHED")
