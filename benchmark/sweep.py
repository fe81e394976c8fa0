"""Sweeps: expand a grid of cells, run each through a runner, and resume where an interrupted sweep stopped.

A **cell** is one `RunConfig` (task, method, backbone, k, seed, template, options with one grid
point), identified by `ResolvedRun.config_hash` (MLflow tag ``config_hash``). A method's
hyper-parameter grid is expanded into separate cells, each its own run, so that the leaderboard's
best-dev-per-seed selection chooses among them, as the reference's result gathering does.

Command line and sweep files
----------------------------
::

    bench sweep --tasks sst2,mr --methods ft-adam,ntk-adam --k 16,64 --seeds all \\
        --grid ft-adam:lr=1e-5,2e-5,5e-5 --opt ft-adam:steps=1000
    bench sweep sweep.yaml [--dry-run] [--fail-fast] [--no-wait]

A sweep file (YAML or TOML, validated by `SweepSpec`; command-line values override its fields)::

    tasks: [sst2, mr]
    methods:                       # a list of names, or name -> {options, grid}
      ft-adam: {options: {steps: 1000}, grid: {lr: [1.0e-5, 2.0e-5, 5.0e-5]}}
      ntk-adam: {}
      zero-shot: {}
    k: [16]
    seeds: all                     # LM-BFF's 13, 21, 42, 87, 100
    backbone: roberta-base         # or a list
    experiment: kernel-bench

Resume and concurrency
----------------------
* A cell whose FINISHED run exists in the experiment is skipped; nothing finished is ever rerun.
* Every cell has a lock file (``fcntl.flock``), keyed by tracking store, experiment and config
  hash: next to a SQLite store (``<store>.locks/<experiment id>/<hash>.lock``), else under the
  cache directory (``<cache>/locks/<store digest>/<experiment id>/``). A process runs a cell only
  while holding its lock, and checks the store *after* taking it (check-and-claim), so two sweeps on
  one store never both run a cell. The kernel drops a lock when its process dies (also on ``kill
  -9``), so a RUNNING run whose lock is free belongs to a dead process: it is marked KILLED and the
  cell runs again. A cell whose lock another live sweep holds is deferred; at the end the sweep
  waits for it (``wait=True``) and skips it if it finished meanwhile, or reports it otherwise.
* One MLflow parent run per sweep (tag ``run_kind=sweep``, ``sweep_hash`` = digest of its cells);
  re-running the same sweep reopens that parent unless another live process holds it.
* A failing cell is marked FAILED in MLflow, reported at the end, and the sweep goes on (unless
  ``fail_fast``). Ctrl-C (or SIGTERM) marks the running cell and the parent KILLED.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import os
import signal
import socket
import time
import tomllib
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from benchmark.bundled import resolve_data_dir
from benchmark.config import LMBFF_SEEDS, RunConfig
from registry import BenchError, first_error
from registry.specs import read_text_file

CellStatus = Literal["pending", "done", "skipped", "running", "failed", "elsewhere", "waiting", "not run"]


# ------------------------------------------------------------------------------------------ spec


def _as_list(value: Any) -> Any:
    if value is None:
        return value
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, (int, float)):
        return [value]
    return value


class MethodGrid(BaseModel):
    """One method of a sweep: fixed options and a hyper-parameter grid (each point its own cell)."""

    model_config = ConfigDict(extra="forbid")

    options: dict[str, Any] = Field(default_factory=dict, description="fixed method options")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="option -> values; the product is swept")

    @field_validator("grid", mode="before")
    @classmethod
    def _grid_lists(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {key: v if isinstance(v, list) else [v] for key, v in value.items()}
        return value


class SweepSpec(BaseModel):
    """A sweep as a YAML/TOML file or CLI lists describe it; `expand_cells` turns it into cells.

    ``methods`` is a list of names or a mapping ``name -> {options, grid}``; top-level ``options``
    and ``grid`` apply to every method (a method's own entries win).
    """

    model_config = ConfigDict(extra="forbid", validate_by_name=True, validate_by_alias=True)

    tasks: list[str] = Field(min_length=1)
    task_files: list[Path] = Field(default_factory=list, description="TaskSpec files; their names are in tasks")
    methods: dict[str, MethodGrid] = Field(min_length=1)
    k: list[int] = Field(default=[16], min_length=1)
    seeds: list[int] = Field(default=list(LMBFF_SEEDS), min_length=1)
    backbones: list[str] = Field(default=["roberta-base"], min_length=1, alias="backbone")
    templates: list[str | None] = Field(default=[None], min_length=1, alias="template")
    options: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    data_dir: Path | None = None
    test_cap: int = Field(default=1000, ge=0)
    binary: bool | None = None
    batch_size: int = Field(default=32, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    tracking_uri: str | None = None
    experiment: str = "kernel-bench"
    cache_dir: Path | None = None

    @field_validator("tasks", "backbones", "k", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _as_list(value)

    @field_validator("templates", mode="before")
    @classmethod
    def _templates(cls, value: Any) -> Any:
        return [value] if value is None or isinstance(value, str) else value

    @field_validator("seeds", mode="before")
    @classmethod
    def _seeds(cls, value: Any) -> Any:
        value = _as_list(value)
        if isinstance(value, list):
            out: list[Any] = []
            for item in value:
                if isinstance(item, str) and item.strip().lower() == "all":
                    out.extend(LMBFF_SEEDS)
                else:
                    out.append(int(item) if isinstance(item, str) and item.strip().lstrip("-").isdigit() else item)
            return list(dict.fromkeys(out))
        return value

    @field_validator("methods", mode="before")
    @classmethod
    def _methods(cls, value: Any) -> Any:
        value = _as_list(value)
        if isinstance(value, list):
            return {str(name): {} for name in value}
        if isinstance(value, dict):
            return {name: ({} if entry is None else entry) for name, entry in value.items()}
        return value

    @field_validator("grid", mode="before")
    @classmethod
    def _grid_lists(cls, value: Any) -> Any:
        return MethodGrid._grid_lists(value)

    @model_validator(mode="after")
    def _grids_not_empty(self) -> SweepSpec:
        grids = [("", self.grid), *((f" of method '{m}'", e.grid) for m, e in self.methods.items())]
        for where, grid in grids:
            for key, values in grid.items():
                if not values:
                    raise ValueError(f"grid '{key}'{where} is empty; give at least one value")
        return self


def load_sweep_file(path: Path) -> dict[str, Any]:
    """The raw mapping of a YAML (``.yaml``/``.yml``) or TOML (``.toml``) sweep file."""
    path = Path(path)
    text = read_text_file(path, "sweep file")
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        elif path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            raise BenchError(f"sweep file '{path}' must end in .yaml, .yml or .toml")
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise BenchError(f"sweep file '{path}' does not parse: {str(exc).splitlines()[0]}") from None
    except Exception as exc:  # yaml.YAMLError
        raise BenchError(f"sweep file '{path}' does not parse: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise BenchError(f"sweep file '{path}' must hold a mapping (tasks, methods, k, seeds, ...)")
    return data


def validate_spec(data: dict[str, Any], source: str = "sweep") -> SweepSpec:
    """Validate a raw sweep mapping; errors become one-line `BenchError`s naming ``source``."""
    try:
        return SweepSpec.model_validate(data)
    except ValidationError as exc:
        where, message = first_error(exc, "sweep")
        raise BenchError(f"{source}: invalid {where}: {message}") from None


# ------------------------------------------------------------------------------------------ cells


@dataclass
class Cell:
    """One run of a sweep: its config, hash, and what happened to it."""

    index: int
    config: RunConfig
    hash: str
    status: CellStatus = "pending"
    run_id: str = ""
    seconds: float = 0.0
    error: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    identity: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def label(self) -> str:
        """``task method k=16 seed=13 [template] {options}`` for display."""
        c = self.config
        text = f"{c.task} {c.method} k={c.k} seed={c.seed}"
        if c.template is not None:
            text += f" [{c.template}]"
        if c.options:
            text += " " + ",".join(f"{k}={v}" for k, v in sorted(c.options.items()))
        return text


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The Cartesian product of a grid as a list of option dicts (one empty dict for no grid)."""
    keys = sorted(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(grid[k] for k in keys))]


def expand_cells(spec: SweepSpec, *, tracking_uri: str | None = None) -> list[Cell]:
    """Every cell of ``spec`` in run order (backbone, task, method, k, template, grid point, seed).

    Task and method names are resolved to their canonical names (aliases give the same hash);
    unknown names, bad options and missing data directories raise `BenchError` before anything runs.
    """
    from benchmark.backbones import resolve_backbone
    from benchmark.resolve import resolve_run
    from registry import METHODS, TASKS, load_builtins, load_task_file

    load_builtins()
    file_tasks = {load_task_file(path).name: Path(path) for path in spec.task_files}
    tasks = list(dict.fromkeys(t if t in file_tasks else TASKS.resolve_name(t) for t in spec.tasks))
    methods: dict[str, MethodGrid] = {}
    for name, entry in spec.methods.items():
        canonical = METHODS.resolve_name(name)
        if canonical in methods:
            raise BenchError(f"method '{name}' is listed twice in the sweep (as '{canonical}')")
        methods[canonical] = entry
    for backbone in spec.backbones:
        resolve_backbone(backbone)
    if spec.data_dir is not None and not resolve_data_dir(spec.data_dir).is_dir():
        raise BenchError(f"--data-dir '{spec.data_dir}' does not exist")
    cells: list[Cell] = []
    for backbone, task, (method, entry), k, template in itertools.product(
        spec.backbones, tasks, methods.items(), spec.k, spec.templates
    ):
        options = {**spec.options, **entry.options}
        if "diagnostics" in METHODS.get(method).Options.model_fields:  # ft-*/lora-*: on by default in sweeps
            options.setdefault("diagnostics", True)
        inner = options.pop("grid", {})
        if not isinstance(inner, dict):
            raise BenchError("give grids with --grid [METHOD:]key=v1,v2 (or a 'grid' mapping in the sweep file)")
        grid = {**spec.grid, **inner, **entry.grid}
        for point in grid_points(grid):
            for seed in spec.seeds:
                config = RunConfig(
                    task=task, task_file=file_tasks.get(task), method=method, backbone=backbone, k=k, seed=seed,
                    data_dir=spec.data_dir,
                    template=template, test_cap=spec.test_cap, binary=spec.binary, batch_size=spec.batch_size,
                    device=spec.device, tracking_uri=tracking_uri or spec.tracking_uri,
                    experiment=spec.experiment, cache_dir=spec.cache_dir, options={**options, **point},
                )
                run = resolve_run(config)  # everything checked (incl. label words) before any cell runs
                cells.append(Cell(index=len(cells), config=run.config, hash=run.config_hash(),
                                  identity=run.identity()))
    seen: dict[str, Cell] = {}
    for cell in cells:
        if cell.hash in seen:
            raise BenchError(f"the sweep lists one cell twice: {cell.label}")
        seen[cell.hash] = cell
    return cells


def sweep_hash(cells: list[Cell], experiment: str) -> str:
    """A digest of the sweep's cells (order-independent): the same sweep resumes under the same parent."""
    blob = json.dumps([experiment, sorted(c.hash for c in cells)])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------ store


def _sqlite_file(uri: str) -> Path | None:
    if not uri.startswith("sqlite:"):
        return None
    path = urllib.parse.urlparse(uri).path
    if uri.startswith("sqlite:////"):
        return Path(path[1:])
    return Path(path.lstrip("/")) if path and path != "/:memory:" else None


def _probe_http(uri: str, timeout: float = 5.0) -> None:
    parsed = urllib.parse.urlparse(uri)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "localhost", port), timeout=timeout):
            pass
    except OSError as exc:
        raise BenchError(f"cannot reach the MLflow tracking server at {uri}: {exc.strerror or exc}") from None


@dataclass
class Store:
    """The tracking store of a sweep: client, experiment id, and where its cell locks live."""

    uri: str
    client: Any
    experiment_id: str
    lock_dir: Path

    def runs_by_hash(self, config_hash: str | None = None) -> dict[str, list[Any]]:
        """Runs of the experiment with a ``config_hash`` tag (one hash, or all), grouped by hash."""
        filter_string = f"tags.config_hash = '{config_hash}'" if config_hash else "tags.config_hash != ''"
        found: dict[str, list[Any]] = {}
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string=filter_string, max_results=1000,
                                           page_token=token)
            for run in page:
                found.setdefault(run.data.tags.get("config_hash", ""), []).append(run)
            token = page.token
            if not token:
                return found

    def lock(self, name: str) -> FileLock:
        """The lock file ``<lock_dir>/<name>.lock``."""
        return FileLock(self.lock_dir / f"{name}.lock")


def open_store(tracking_uri: str | None, experiment: str, cache_dir: Path | None = None, *,
               create: bool = True) -> Store | None:
    """Connect to the store (created if it is a new SQLite file), get or create ``experiment``.

    With ``create=False`` nothing is created: None when the SQLite file or the experiment does not
    exist yet (a dry run). An unreachable server or unusable store raises `BenchError` at once.
    """
    import logging

    from benchmark.tracking import default_cache_dir, default_tracking_uri

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    uri = tracking_uri or default_tracking_uri()
    sqlite = _sqlite_file(uri)
    if uri.startswith(("http://", "https://")):
        _probe_http(uri)
    if sqlite is not None:
        sqlite = sqlite.expanduser().resolve()
        if not create and not sqlite.is_file():
            return None
        try:
            sqlite.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BenchError(f"cannot create the MLflow store directory {sqlite.parent}: {exc.strerror}") from None
        root = sqlite.parent / f"{sqlite.name}.locks"
    else:
        digest = hashlib.sha256(uri.encode()).hexdigest()[:12]
        root = (cache_dir or default_cache_dir()) / "locks" / digest
    root.mkdir(parents=True, exist_ok=True)
    # Creating a new store (schema migrations) and the experiment is serialized across processes, and a new
    # experiment keeps its artifacts next to a SQLite store, exactly as for `bench run`.
    from benchmark.tracking import get_or_create_experiment, open_client, store_error

    client, uri = open_client(uri)
    if create:
        experiment_id = get_or_create_experiment(client, uri, experiment)
    else:
        try:
            found = client.get_experiment_by_name(experiment)
        except Exception as exc:  # MLflow raises many types for a bad store
            raise store_error(uri, exc) from None
        if found is None:
            return None
        experiment_id = found.experiment_id
    lock_dir = root / str(experiment_id)
    lock_dir.mkdir(parents=True, exist_ok=True)
    return Store(uri=uri, client=client, experiment_id=str(experiment_id), lock_dir=lock_dir)


# ------------------------------------------------------------------------------------------ locks


class FileLock:
    """An exclusive ``fcntl.flock`` on a file: released by `release`, or by the kernel when the process dies."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._handle: Any = None

    def acquire(self, blocking: bool = False) -> bool:
        """Take the lock; without ``blocking`` return False at once if another process holds it."""
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.close()
            return False
        except BaseException:
            handle.close()
            raise
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()} {socket.gethostname()} {time.time():.0f}\n")
        handle.flush()
        self._handle = handle
        return True

    def release(self) -> None:
        """Drop the lock (the file stays; removing it would race with a waiting process)."""
        if self._handle is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def holder(self) -> str:
        """``pid host`` of the last process that took the lock (for messages)."""
        try:
            parts = self.path.read_text().split()
        except OSError:
            return "?"
        return f"pid {parts[0]} on {parts[1]}" if len(parts) >= 2 else "?"

    @contextlib.contextmanager
    def held(self, blocking: bool = True) -> Iterator[bool]:
        """Context manager: yields whether the lock was taken, releases it on exit."""
        taken = self.acquire(blocking=blocking)
        try:
            yield taken
        finally:
            if taken:
                self.release()


# ------------------------------------------------------------------------------------------ runner


@dataclass
class SweepReport:
    """The outcome of a sweep (or of a dry run)."""

    cells: list[Cell]
    parent_run_id: str = ""
    sweep_hash: str = ""

    def count(self, *statuses: str) -> int:
        """Cells in any of ``statuses``."""
        return sum(c.status in statuses for c in self.cells)

    @property
    def failed(self) -> list[Cell]:
        """The cells that failed."""
        return [c for c in self.cells if c.status == "failed"]

    @property
    def ok(self) -> bool:
        """True when every cell is finished (now or before)."""
        return all(c.status in ("done", "skipped") for c in self.cells)


Runner = Callable[[RunConfig, str], tuple[str, dict[str, float]]]
"""``runner(config, parent_run_id) -> (run_id, metrics)``; raises when the run fails."""


def local_runner(config: RunConfig, parent_run_id: str) -> tuple[str, dict[str, float]]:
    """Run a cell in this process as a nested run of the sweep's parent (FAILED / KILLED on errors)."""
    from benchmark.run import execute, start_tracker
    from benchmark.tracking import tracked

    tracker = start_tracker(config, parent_run_id=parent_run_id)
    with tracked(tracker):
        outcome = execute(config, tracker=tracker, finish=False)
    return tracker.run_id, dict(outcome.result.metrics)


def launcher_runner(launch_options: Any) -> Runner:
    """A runner that hands each cell to `runners.launch` (e.g. the DeepSpeed launcher).

    The launcher creates the run itself; it is attached to the sweep's parent afterwards (or at
    creation, if `runners.launch` takes ``parent_run_id``).
    """

    def run(config: RunConfig, parent_run_id: str) -> tuple[str, dict[str, float]]:
        import inspect

        try:
            from runners import launch
        except ImportError as exc:
            raise BenchError(f"the runners package is not available: {exc}") from exc
        started = int(time.time() * 1000) - 1
        kwargs = {"parent_run_id": parent_run_id} if "parent_run_id" in inspect.signature(launch).parameters else {}
        try:
            outcome = launch(config, launch_options, **kwargs)
        finally:
            if not kwargs:
                _adopt_runs(config, parent_run_id, started)
        return outcome.run_id, dict(outcome.result.metrics)

    return run


def _adopt_runs(config: RunConfig, parent_run_id: str, since_ms: int) -> None:
    """Set the parent of the runs of ``config`` created since ``since_ms`` (launchers that cannot)."""
    from mlflow.tracking import MlflowClient

    from benchmark.resolve import resolve_run
    from benchmark.tracking import default_tracking_uri

    client = MlflowClient(tracking_uri=config.tracking_uri or default_tracking_uri())
    found = client.get_experiment_by_name(config.experiment)
    if found is None:
        return
    runs = client.search_runs([found.experiment_id],
                              filter_string=f"tags.config_hash = '{resolve_run(config).config_hash()}' and "
                                            f"attributes.start_time >= {since_ms}")
    for run in runs:
        if "mlflow.parentRunId" not in run.data.tags:
            client.set_tag(run.info.run_id, "mlflow.parentRunId", parent_run_id)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises KeyboardInterrupt, so that runs are closed as KILLED."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Sweep:
    """Runs the cells of a sweep against one store, with resume, locking and a progress display."""

    def __init__(self, cells: list[Cell], store: Store, *, runner: Runner | None = None, fail_fast: bool = False,
                 wait: bool = True, display: SweepDisplay | None = None, spec: SweepSpec | None = None) -> None:
        self.cells = cells
        self.store = store
        self.runner = runner or local_runner
        self.fail_fast = fail_fast
        self.wait = wait
        self.display = display or SweepDisplay(None)
        self.spec = spec
        self.hash = sweep_hash(cells, cells[0].config.experiment if cells else "")
        self.parent_run_id = ""
        self._parent_lock: FileLock | None = None

    # -------------------------------------------------------------------------------- parent run

    def _open_parent(self) -> None:
        from benchmark.tracking import Tracker, code_version

        client = self.store.client
        lock = self.store.lock(f"sweep-{self.hash}")
        if lock.acquire(blocking=False):
            self._parent_lock = lock
            previous = client.search_runs([self.store.experiment_id],
                                          filter_string=f"tags.sweep_hash = '{self.hash}'",
                                          order_by=["attributes.start_time DESC"], max_results=1)
            if previous:
                self.parent_run_id = previous[0].info.run_id
                client.update_run(self.parent_run_id, status="RUNNING")
                client.set_tag(self.parent_run_id, "resumed", str(int(time.time())))
                return
        seeds = sorted({c.config.seed for c in self.cells})
        tasks = sorted({c.config.task for c in self.cells})
        methods = sorted({c.config.method for c in self.cells})
        tags = {"run_kind": "sweep", "sweep_hash": self.hash, "sweep_seeds": ",".join(map(str, seeds)),
                "sweep_tasks": ",".join(tasks), "sweep_methods": ",".join(methods), "n_cells": str(len(self.cells)),
                "code_version": code_version(), "mlflow.runName": f"sweep-{self.hash[:8]}"}
        run = client.create_run(self.store.experiment_id, tags=tags, run_name=f"sweep-{self.hash[:8]}")
        self.parent_run_id = run.info.run_id
        tracker = Tracker(client, self.parent_run_id, self.store.experiment_id)
        if self.spec is not None:
            tracker.log_json(self.spec.model_dump(mode="json", by_alias=False), "sweep.json")
        tracker.log_json([{"hash": c.hash, **c.identity} for c in self.cells], "cells.json")

    def _close_parent(self, status: str) -> None:
        if not self.parent_run_id:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        counts = {f"cells_{name.replace(' ', '_')}": float(sum(c.status == name for c in self.cells))
                  for name in ("done", "skipped", "failed", "elsewhere", "not run")}
        with contextlib.suppress(Exception):
            self.store.client.log_batch(self.parent_run_id, metrics=[Metric(k, v, now, 0) for k, v in counts.items()])
        with contextlib.suppress(Exception):
            self.store.client.set_terminated(self.parent_run_id, status=status)
        if self._parent_lock is not None:
            self._parent_lock.release()

    # ------------------------------------------------------------------------------------- cells

    def _claim_and_run(self, cell: Cell, lock: FileLock) -> None:
        """With ``lock`` held: skip if finished, close stale RUNNING runs, run the cell."""
        runs = self.store.runs_by_hash(cell.hash).get(cell.hash, [])
        finished = [r for r in runs if r.info.status == "FINISHED"]
        if finished:
            cell.status, cell.run_id = "skipped", finished[0].info.run_id
            cell.metrics = dict(finished[0].data.metrics)
            self.display.cell_done(cell, note="finished meanwhile by another process")
            return
        from benchmark.lifecycle import close_stale, owner_state

        for run in runs:
            # We hold the cell's lock, so no sweep runs this cell; a run whose owner is alive on this host
            # (e.g. a plain `bench run` of the same config) is left alone, any other is stale.
            if run.info.status in ("RUNNING", "SCHEDULED") and owner_state(run.data.tags) != "alive":
                close_stale(self.store.client, run.info.run_id, "stale: its process died (lock free)", "KILLED")
        cell.status = "running"
        self.display.cell_started(cell)
        start = time.perf_counter()
        try:
            cell.run_id, cell.metrics = self.runner(cell.config, self.parent_run_id)
        except KeyboardInterrupt:
            cell.status, cell.seconds = "not run", time.perf_counter() - start
            raise
        except Exception as exc:
            cell.status, cell.seconds = "failed", time.perf_counter() - start
            cell.error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, BenchError) else str(exc)
            failed = [r for r in self.store.runs_by_hash(cell.hash).get(cell.hash, []) if r.info.status == "FAILED"]
            cell.run_id = max(failed, key=lambda r: r.info.start_time or 0).info.run_id if failed else ""
            self.display.cell_done(cell)
            return
        cell.status, cell.seconds = "done", time.perf_counter() - start
        self.display.cell_done(cell)

    def _try_cell(self, cell: Cell, blocking: bool) -> bool:
        """Run ``cell`` if its lock can be taken; False when another process holds it (non-blocking)."""
        lock = self.store.lock(cell.hash)
        if not lock.acquire(blocking=False):
            if not blocking:
                return False
            cell.status = "waiting"
            self.display.cell_waiting(cell, lock.holder())
            lock.acquire(blocking=True)
        try:
            self._claim_and_run(cell, lock)
        finally:
            lock.release()
        return True

    def run(self) -> SweepReport:
        """Run every cell not finished yet; returns the report (the parent run is closed either way)."""
        report = SweepReport(cells=self.cells, sweep_hash=self.hash)
        existing = self.store.runs_by_hash()
        for cell in self.cells:
            finished = [r for r in existing.get(cell.hash, []) if r.info.status == "FINISHED"]
            if finished:
                cell.status, cell.run_id = "skipped", finished[0].info.run_id
                cell.metrics = dict(finished[0].data.metrics)
        self._open_parent()
        report.parent_run_id = self.parent_run_id
        status = "FINISHED"
        self.display.start(self.cells)
        try:
            with _sigterm_as_interrupt():
                deferred: list[Cell] = []
                stop = False
                for cell in self.cells:
                    if cell.status == "skipped":
                        continue
                    if not self._try_cell(cell, blocking=False):
                        cell.status = "elsewhere"
                        deferred.append(cell)
                        self.display.refresh()
                        continue
                    if cell.status == "failed" and self.fail_fast:
                        stop = True
                        break
                if not stop:
                    for cell in deferred:
                        if self.wait:
                            self._try_cell(cell, blocking=True)
                            if cell.status == "failed" and self.fail_fast:
                                stop = True
                                break
                if stop:
                    for cell in self.cells:
                        if cell.status == "pending":
                            cell.status = "not run"
        except KeyboardInterrupt:
            status = "KILLED"
            for cell in self.cells:
                if cell.status in ("pending", "running", "waiting"):
                    cell.status = "not run"
            raise
        finally:
            self.display.stop()
            if status != "KILLED":
                status = "FAILED" if report.count("failed", "not run") else "FINISHED"
            self._close_parent(status)
        return report


# ------------------------------------------------------------------------------------------ display


class SweepDisplay:
    """Rich progress for a sweep: counts of done / running / failed / skipped, elapsed and ETA.

    With ``console=None`` nothing is shown (library use and tests).
    """

    def __init__(self, console: Any) -> None:
        self.console = console
        self.cells: list[Cell] = []
        self.progress: Any = None
        self.task: Any = None
        self.started = time.perf_counter()

    def _counts(self) -> str:
        def n(*statuses: str) -> int:
            return sum(c.status in statuses for c in self.cells)

        parts = [f"[green]done {n('done')}[/]", f"[cyan]running {n('running', 'waiting')}[/]",
                 f"[red]failed {n('failed')}[/]", f"[dim]skipped {n('skipped')}[/]"]
        if n("elsewhere"):
            parts.append(f"[yellow]elsewhere {n('elsewhere')}[/]")
        return " · ".join(parts)

    def _eta(self) -> str:
        ran = [c.seconds for c in self.cells if c.status in ("done", "failed") and c.seconds > 0]
        left = sum(c.status in ("pending", "running", "elsewhere", "waiting") for c in self.cells)
        if not left:
            return "0:00:00"
        if not ran:
            return "-:--:--"
        seconds = int(sum(ran) / len(ran) * left)
        return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"

    def start(self, cells: list[Cell]) -> None:
        """Show the display for ``cells`` (already-finished ones count as skipped)."""
        self.cells = cells
        self.started = time.perf_counter()
        if self.console is None:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        skipped = sum(c.status == "skipped" for c in cells)
        if skipped:
            self.console.print(f"{skipped} of {len(cells)} cells already have a finished run: skipped")
        self.progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"), TimeElapsedColumn(), TextColumn("ETA {task.fields[eta]}"),
            console=self.console, transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task("sweep", total=len(cells), completed=skipped, counts=self._counts(),
                                           eta=self._eta())

    def refresh(self, description: str | None = None) -> None:
        """Update counts, completion and ETA."""
        if self.progress is None:
            return
        finished = sum(c.status in ("done", "failed", "skipped") for c in self.cells)
        fields: dict[str, Any] = {"completed": finished, "counts": self._counts(), "eta": self._eta()}
        if description is not None:
            fields["description"] = description
        self.progress.update(self.task, **fields)

    def cell_started(self, cell: Cell) -> None:
        """A cell began running."""
        self.refresh(f"[{cell.index + 1}/{len(self.cells)}] {cell.label}")

    def cell_waiting(self, cell: Cell, holder: str) -> None:
        """Waiting for a cell another process is running."""
        self.refresh(f"waiting for {cell.label} ({holder})")

    def cell_done(self, cell: Cell, note: str = "") -> None:
        """A cell ended (done, failed, or found finished)."""
        if self.progress is not None:
            from rich.text import Text

            line = Text()
            if cell.status == "done":
                shown = {k: v for k, v in sorted(cell.metrics.items()) if k in ("dev_acc", "test_acc", "test_f1")}
                metrics = " ".join(f"{k}={v:.4f}" for k, v in shown.items())
                line.append("✓ ", style="green").append(f"{cell.label}: {metrics} ({cell.seconds:.1f}s)")
            elif cell.status == "failed":
                error = cell.error.splitlines()[0] if cell.error else ""
                line.append("✗ ", style="red").append(f"{cell.label}: {error}")
            elif note:
                line.append(f"- {cell.label}: {note}", style="dim")
            if line:
                self.progress.console.print(line, soft_wrap=True)
        self.refresh()

    def stop(self) -> None:
        """Remove the live display (the last state stays printed)."""
        if self.progress is not None:
            self.refresh("sweep")
            self.progress.stop()
            self.progress = None


# ------------------------------------------------------------------------------------------ entry points


def dry_run(cells: list[Cell], store: Store | None) -> list[tuple[Cell, str]]:
    """(cell, state) for every cell without running anything: ``done``, ``running elsewhere`` (lock
    held by a live process), ``stale`` (RUNNING but its process is gone), ``failed before``, ``to run``.
    ``store`` None (no store or experiment yet): every cell is to run."""
    if store is None:
        return [(cell, "to run") for cell in cells]
    existing = store.runs_by_hash()
    out = []
    for cell in cells:
        statuses = {r.info.status for r in existing.get(cell.hash, [])}
        if "FINISHED" in statuses:
            state = "done"
        else:
            lock = store.lock(cell.hash)
            with lock.held(blocking=False) as free:
                pass
            if not free:
                state = "running elsewhere"
            elif "RUNNING" in statuses:
                state = "stale (will rerun)"
            elif statuses & {"FAILED", "KILLED"}:
                state = "failed before (will rerun)"
            else:
                state = "to run"
        out.append((cell, state))
    return out


def run_sweep(spec: SweepSpec, *, launch_options: Any = None, fail_fast: bool = False, wait: bool = True,
              console: Any = None, runner: Runner | None = None) -> SweepReport:
    """Expand ``spec`` and run it (see the module docstring for resume and locking)."""
    from benchmark.tracking import default_tracking_uri

    cells = expand_cells(spec, tracking_uri=spec.tracking_uri or default_tracking_uri())
    store = open_store(cells[0].config.tracking_uri, spec.experiment, spec.cache_dir)
    assert store is not None
    if runner is None and launch_options is not None and getattr(launch_options, "launcher", "local") != "local":
        runner = launcher_runner(launch_options)
    sweep = Sweep(cells, store, runner=runner, fail_fast=fail_fast, wait=wait, display=SweepDisplay(console),
                  spec=spec)
    return sweep.run()


# ------------------------------------------------------------------------------------------ CLI support


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_scoped(items: list[str], *, flag: str, multi: bool) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """``[METHOD:]key=value`` (``multi``: ``key=v1,v2``) items as (for all methods, per method) dicts."""
    common: dict[str, Any] = {}
    scoped: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        method, colon, name = key.rpartition(":")
        name = name.strip().replace("-", "_")
        if not sep or not name or not value.strip() or (colon and not method.strip()):
            form = "key=v1,v2,..." if multi else "key=value"
            raise BenchError(f"{flag} expects [METHOD:]{form}, got '{item}'")
        parsed = [_parse_value(v.strip()) for v in value.split(",")] if multi else _parse_value(value.strip())
        target = scoped.setdefault(method.strip(), {}) if colon else common
        target[name] = parsed
    return common, scoped


def spec_from_cli(file: Path | None, overrides: dict[str, Any], opts: list[str], grids: list[str]) -> SweepSpec:
    """A `SweepSpec` from a sweep file (if any) with CLI values (those not None) on top."""
    data: dict[str, Any] = load_sweep_file(file) if file is not None else {}
    source = str(file) if file is not None else "sweep"
    overrides = dict(overrides)
    task_files = [Path(f) for f in overrides.pop("task_files", None) or []]
    for key, value in overrides.items():
        if value is not None:
            data.pop({"backbones": "backbone", "templates": "template"}.get(key, ""), None)
            data[key] = value
    if task_files:  # --task-file adds its tasks to those of the file or --tasks
        from registry import load_task_file

        names = [load_task_file(path).name for path in task_files]
        data["tasks"] = list(dict.fromkeys([*(_as_list(data.get("tasks")) or []), *names]))
        data["task_files"] = [*data.get("task_files", []), *map(str, task_files)]
    if not file and not data.get("tasks"):
        raise BenchError("give a sweep file, or --tasks and --methods")
    if "methods" not in data or not data["methods"]:
        raise BenchError(f"{source}: no methods; give --methods or a 'methods' entry")
    methods = SweepSpec._methods(data["methods"])
    if not isinstance(methods, dict):
        raise BenchError(f"{source}: 'methods' must be a list of names or a mapping name -> {{options, grid}}")
    methods = {name: dict(entry) if isinstance(entry, dict) else entry for name, entry in methods.items()}
    for items, flag, field_name in ((opts, "--opt", "options"), (grids, "--grid", "grid")):
        common, scoped = parse_scoped(items, flag=flag, multi=field_name == "grid")
        if common:
            data[field_name] = {**data.get(field_name, {}), **common}
        for method, values in scoped.items():
            match = next((m for m in methods if m.lower() == method.lower()), None)
            if match is None:
                raise BenchError(f"{flag} {method}:... names a method that is not in the sweep "
                                 f"({', '.join(methods)})")
            entry = methods[match]
            if isinstance(entry, dict):
                entry[field_name] = {**entry.get(field_name, {}), **values}
    data["methods"] = methods
    return validate_spec(data, source)


def dry_run_table(states: list[tuple[Cell, str]]) -> Any:
    """A rich table of the cells and whether each is done, running elsewhere, or to run."""
    from rich.table import Table

    table = Table(title=f"sweep: {len(states)} cells")
    for column in ("#", "task", "method", "k", "seed", "template", "options", "config hash", "state"):
        table.add_column(column)
    styles = {"done": "green", "running elsewhere": "yellow", "to run": "bold"}
    for cell, state in states:
        c = cell.config
        options = ",".join(f"{k}={v}" for k, v in sorted(c.options.items()))
        table.add_row(str(cell.index + 1), c.task, c.method, str(c.k), str(c.seed), c.template or "default",
                      options, cell.hash, f"[{styles.get(state, 'red')}]{state}[/]")
    return table


def summary_lines(report: SweepReport) -> list[str]:
    """The end-of-sweep report: counts, the parent run, and each failed or unfinished cell."""
    lines = [f"sweep {report.sweep_hash[:8]}: {len(report.cells)} cells — done {report.count('done')}, "
             f"skipped (already finished) {report.count('skipped')}, failed {report.count('failed')}"
             + (f", running elsewhere {report.count('elsewhere')}" if report.count("elsewhere") else "")
             + (f", not run {report.count('not run')}" if report.count("not run") else "")
             + (f"; parent run {report.parent_run_id}" if report.parent_run_id else "")]
    for cell in report.failed:
        run = f" (run {cell.run_id})" if cell.run_id else ""
        lines.append(f"FAILED {cell.label}{run}: {cell.error.splitlines()[0] if cell.error else ''}")
    return lines
