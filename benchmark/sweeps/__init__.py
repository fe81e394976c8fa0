"""Sweeps: expand a grid of cells, run each through a runner, and resume where an interrupted sweep stopped.

A **cell** is one resolved run (task, method, backbone, k, seed, template, options with one grid point),
identified by `ResolvedRun.config_hash` (MLflow tag ``config_hash``). The sweep's grid (``--grid``,
``grid:`` in a sweep file) is expanded into separate cells, each its own run, so that the leaderboard's
best-dev-per-seed selection chooses among them, as the reference's result gathering does. Method options
pass as they are (a method's own in-run grid is one of them); a method's ``sweep_defaults`` (fine-tuning:
diagnostics on) are its options in a sweep unless the sweep sets them.

A sweep file (YAML or TOML, validated by `SweepSpec`; the CLI's values override its fields)::

    tasks: [sst2, mr]
    methods:                       # a list of names, or name -> {options, grid}
      ft-adam: {options: {steps: 1000}, grid: {lr: [1.0e-5, 2.0e-5, 5.0e-5]}}
      ntk-adam: {}
      zero-shot: {}
    k: [16]
    seeds: all                     # LM-BFF's 13, 21, 42, 87, 100
    backbone: roberta-base         # or a list
    experiment: kernel-bench

The rooms: `spec` (what a sweep is), `cells` (its runs and their hashes), `store` (the tracking store and
the cell locks), `parent` (the sweep's parent run), `orchestrate` (running, resuming, dry runs). Sweeps sit
above the runners (a cell goes to a non-local runner through `runners.sweep_runner`); nothing in the
engine imports this package.
"""

from __future__ import annotations

from benchmark.sweeps.cells import Cell, CellStatus, cell_options, expand_cells, grid_points, sweep_hash
from benchmark.sweeps.orchestrate import (
    CellRunner,
    Sweep,
    SweepObserver,
    SweepReport,
    cell_runner,
    dry_run,
    local_runner,
    prepare,
    run_sweep,
)
from benchmark.sweeps.parent import ParentRun
from benchmark.sweeps.spec import MethodGrid, SweepSpec, as_list, load_spec_file, normalize_methods, validate_spec
from benchmark.sweeps.store import CellLock, Store, open_store

__all__ = [
    "Cell", "CellLock", "CellRunner", "CellStatus", "MethodGrid", "ParentRun", "Store", "Sweep", "SweepObserver",
    "SweepReport", "SweepSpec", "as_list", "cell_options", "cell_runner", "dry_run", "expand_cells", "grid_points",
    "load_spec_file", "local_runner", "normalize_methods", "open_store", "prepare", "run_sweep", "sweep_hash",
    "validate_spec",
]
