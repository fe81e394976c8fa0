"""Experiment tracking on MLflow: one run per config, embedded SQLite store by default."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

from registry import BenchError
from registry.schema import CODE_VERSION_TAG, ERROR_TAG, PARENT_RUN_TAG, RUN_NAME_TAG, http_unreachable

# The default store and the URI helpers live in `registry.schema` (shared with the sweeps and the leaderboard);
# they stay importable from here.
from registry.schema import DEFAULT_STORE as DEFAULT_STORE
from registry.schema import default_tracking_uri as default_tracking_uri
from registry.schema import sqlite_path as sqlite_path

CACHE_ENV = "KERNEL_BENCH_CACHE"
STORE_LOCK_TIMEOUT_S = 300.0
HTTP_PROBE_TIMEOUT_S = 3.0
SQLITE_HEADER = b"SQLite format 3\x00"
# The store schemes MLflow knows (``postgresql+psycopg2`` etc. count by their part before the '+').
STORE_SCHEMES = ("", "file", "sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks",
                 "databricks-uc", "uc")
DOCTOR_HINT = "`bench doctor` marks it FAILED once its process is gone"


def default_cache_dir() -> Path:
    """The cache root when none is given: ``$KERNEL_BENCH_CACHE`` if set, else ``~/.cache/kernel-bench``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "kernel-bench"
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


def store_lock_path(db: Path) -> Path:
    """The lock that serialises creating and upgrading the SQLite store ``db`` (the sweep's store lock too)."""
    return db.parent / f"{db.name}.locks" / "store.lock"


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold the cross-process lock of a SQLite store (nothing for other stores)."""
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    from filelock import FileLock, Timeout

    lock_path = store_lock_path(db)
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BenchError(f"cannot create the MLflow store directory {lock_path.parent}: {exc.strerror}") from None
    try:
        with FileLock(str(lock_path), timeout=STORE_LOCK_TIMEOUT_S):
            yield
    except Timeout:
        raise BenchError(f"the MLflow store {db} stayed locked for {STORE_LOCK_TIMEOUT_S:.0f} s by another "
                         f"process; remove {lock_path} if no bench process is running") from None


def check_store(uri: str) -> None:
    """Refuse, in one line and at once, a store that cannot work: a SQLite path that is not an SQLite file,
    or an HTTP server that does not answer (MLflow would retry for minutes)."""
    scheme = urllib.parse.urlparse(uri).scheme
    if scheme.split("+")[0] not in STORE_SCHEMES and len(scheme) > 1:  # one letter: a Windows drive
        raise BenchError(f"--tracking-uri {uri}: unsupported scheme '{scheme}'; use sqlite:///PATH/mlflow.db, "
                         "http(s)://HOST:PORT or a database URI MLflow supports")
    db = sqlite_path(uri)
    if db is not None and db.is_file() and db.stat().st_size > 0:
        with db.open("rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
        if header != SQLITE_HEADER:
            raise BenchError(f"--tracking-uri {uri}: {db} is not an SQLite database; give a new file name "
                             "or an existing MLflow store")
    elif db is not None and db.is_dir():
        raise BenchError(f"--tracking-uri {uri}: {db} is a directory; name the database file (…/mlflow.db)")
    if scheme in ("http", "https"):
        reason = http_unreachable(uri, HTTP_PROBE_TIMEOUT_S)
        if reason is not None:
            raise BenchError(f"cannot reach the MLflow tracking server at {uri} ({reason}); "
                             "start it or pass another --tracking-uri")


def store_error(uri: str, exc: BaseException) -> BenchError:
    """A one-line `BenchError` for an exception MLflow raised on the store ``uri``."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return BenchError(f"cannot use MLflow tracking store '{uri}': {first}")


def open_client(tracking_uri: str | None) -> tuple[Any, str]:
    """An `MlflowClient` on ``tracking_uri`` (default store if None) and the URI; a new SQLite store is
    created (schema migrations) under the store lock, so processes starting at once do not race."""
    import logging

    import mlflow
    from mlflow.tracking import MlflowClient

    for name in ("mlflow", "alembic"):  # store migrations log at INFO on every new store
        logging.getLogger(name).setLevel(logging.WARNING)
    uri = tracking_uri or default_tracking_uri()
    check_store(uri)
    with store_lock(uri):
        try:
            client = MlflowClient(tracking_uri=uri)  # builds (and upgrades) a SQLite store's schema
            if sqlite_path(uri) is not None:
                client.search_experiments(max_results=1)  # any schema problem shows here, inside the lock
        except BenchError:
            raise
        except Exception as exc:  # MLflow raises many types for a bad store
            raise store_error(uri, exc) from None
    mlflow.set_tracking_uri(uri)
    return client, uri


def artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: ``<db dir>/artifacts`` for a SQLite store (not the current
    directory's ./mlruns); None (MLflow's default) for servers and other stores."""
    db = sqlite_path(uri)
    return (db.parent / "artifacts").as_uri() if db is not None else None


def get_or_create_experiment(client: Any, uri: str, name: str) -> str:
    """The id of experiment ``name``, created if missing (serialised for SQLite, race-tolerant for servers)."""
    from mlflow.exceptions import MlflowException

    with store_lock(uri):
        try:
            found = client.get_experiment_by_name(name)
            if found is not None:
                return str(found.experiment_id)
            try:
                return str(client.create_experiment(name, artifact_location=artifact_location(uri),
                                                    tags=EXPERIMENT_TAGS))
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                found = client.get_experiment_by_name(name)  # another process created it meanwhile
                if found is None:
                    raise
                return str(found.experiment_id)
        except BenchError:
            raise
        except Exception as exc:
            raise store_error(uri, exc) from None


@cache
def code_version() -> str:
    """The git commit of the suite's checkout (with ``-dirty``), or the package version, or ``unknown``
    (a copy of the checkout without ``.git`` run from ``PYTHONPATH``, as on the GPU machine)."""
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
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("kernel-bench")
        except PackageNotFoundError:
            return "unknown"


class Tracker:
    """Logs one run to MLflow. Create with `Tracker.start`, or `Tracker.attach` to an existing run."""

    def __init__(self, client: Any, run_id: str, experiment_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self.experiment_id = experiment_id

    @staticmethod
    def _client(tracking_uri: str | None) -> Any:
        return open_client(tracking_uri)[0]

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
        """Create a new RUNNING run in ``experiment`` (created if missing), its owner (host, pid) as tags.

        A top-level run first closes, as FAILED, the runs of the experiment left RUNNING by processes of
        this host that are gone (a sweep's cells are left to the sweep's own stale-run check).
        """
        from benchmark.lifecycle import close_dead_runs, owner_tags

        client, uri = open_client(tracking_uri)
        exp_id = get_or_create_experiment(client, uri, experiment)
        if not parent_run_id:
            _close_dead_runs(client, exp_id, close_dead_runs)
        all_tags = {RUN_NAME_TAG: run_name, CODE_VERSION_TAG: code_version(), **owner_tags(), **tags}
        if parent_run_id:
            all_tags[PARENT_RUN_TAG] = parent_run_id
        try:
            run = client.create_run(exp_id, tags=all_tags, run_name=run_name)
        except Exception as exc:
            raise store_error(uri, exc) from None
        return cls(client, run.info.run_id, exp_id)

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


def _close_dead_runs(client: Any, exp_id: str, close: Any) -> None:
    try:
        closed = close(client, exp_id)
    except Exception:  # housekeeping must never stop a run from starting
        return
    if closed:
        print(f"marked {len(closed)} run(s) FAILED that were left RUNNING by processes that are gone "
              f"({', '.join(closed)})", file=sys.stderr, flush=True)


def close_run(tracker: Tracker, status: str, error: str | None = None) -> bool:
    """Set the error tag (if any), then the final ``status``, each tried even if the other fails (a full
    disk fails the tag write first). Returns False, after one line on stderr, when the run stays RUNNING."""
    if error is not None:
        with contextlib.suppress(Exception):
            tracker.set_tags({ERROR_TAG: error[:5000]})
    try:
        tracker.finish(status)
    except Exception as exc:
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        print(f"warning: could not mark run {tracker.run_id} {status} ({first}); it stays RUNNING until "
              f"{DOCTOR_HINT}", file=sys.stderr, flush=True)
        return False
    return True


@contextmanager
def tracked(tracker: Tracker) -> Iterator[Tracker]:
    """Finish the run as FINISHED on success, KILLED on Ctrl-C or SIGTERM, FAILED on any other exception.

    A store that fails while the run is closed does not hide the run's own exception; a run that could
    not be closed after success raises `BenchError` (its numbers were not all recorded).
    """
    try:
        yield tracker
    except KeyboardInterrupt:
        from benchmark.lifecycle import acknowledge_interrupt

        acknowledge_interrupt()
        close_run(tracker, "KILLED")
        raise
    except BaseException as exc:
        close_run(tracker, "FAILED", f"{type(exc).__name__}: {exc}")
        raise
    else:
        if not close_run(tracker, "FINISHED"):
            raise BenchError(f"the MLflow store failed while closing run {tracker.run_id}; {DOCTOR_HINT}")
