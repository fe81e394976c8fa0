"""A sweep's cells: one resolved run each, identified by its config hash, in run order."""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from benchmark.bundled import resolve_data_dir
from benchmark.config import RunConfig
from benchmark.sweeps.spec import MethodGrid, SweepSpec
from registry import BenchError

if TYPE_CHECKING:
    from benchmark.resolve import ResolvedRun

CellStatus = Literal["pending", "done", "skipped", "running", "failed", "elsewhere", "waiting", "not run"]


@dataclass
class Cell:
    """One run of a sweep: its resolved run, hash, and what happened to it."""

    index: int
    config: RunConfig
    hash: str
    status: CellStatus = "pending"
    run_id: str = ""
    seconds: float = 0.0
    error: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    identity: dict[str, Any] = field(default_factory=dict, repr=False)
    run: ResolvedRun | None = field(default=None, repr=False, compare=False)

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


def cell_options(method: Any, spec: SweepSpec, entry: MethodGrid) -> dict[str, Any]:
    """A method's fixed options in a sweep: its ``sweep_defaults`` under the sweep's options, under its own.

    Method options pass as they are (none is taken out or reinterpreted): the sweep's own grid is only
    ``grid`` of the spec and of the method's entry.
    """
    return {**dict(getattr(method, "sweep_defaults", {})), **spec.options, **entry.options}


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
        options = cell_options(METHODS.get(method), spec, entry)
        for point in grid_points({**spec.grid, **entry.grid}):
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
                                  identity=run.identity(), run=run))
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
