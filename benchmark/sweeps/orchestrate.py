"""Running a sweep's cells against one store: resume, check-and-claim under each cell's lock, failures, Ctrl-C.

* A cell whose FINISHED run exists in the experiment is skipped; nothing finished is ever rerun.
* A process runs a cell only while holding its lock (`benchmark.sweeps.store`), and checks the store
  *after* taking it (check-and-claim), so two sweeps on one store never both run a cell. A RUNNING run
  whose lock is free belongs to a dead process: it is marked KILLED and the cell runs again. A cell whose
  lock another live sweep holds is deferred; at the end the sweep waits for it (``wait=True``) and skips
  it if it finished meanwhile, or reports it otherwise.
* A failing cell is marked FAILED in MLflow, reported at the end, and the sweep goes on (unless
  ``fail_fast``). Ctrl-C (or SIGTERM) marks the running cell and the parent KILLED.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from benchmark.lifecycle import acknowledge_interrupt, sigterm_as_interrupt
from benchmark.sweeps.cells import Cell, expand_cells, sweep_hash
from benchmark.sweeps.parent import ParentRun
from benchmark.sweeps.spec import SweepSpec
from benchmark.sweeps.store import CellLock, Store, open_store
from registry import BenchError

if TYPE_CHECKING:
    from benchmark.resolve import ResolvedRun

CellRunner = Callable[[Any, str], tuple[str, dict[str, float]]]
"""``runner(run, parent_run_id) -> (run_id, metrics)``, ``run`` the cell's `ResolvedRun` (its `RunConfig`
for a cell built without one); raises when the run fails."""


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


class SweepObserver:
    """What a sweep tells whoever shows its progress (the CLI's display); this base shows nothing."""

    def start(self, cells: list[Cell]) -> None:
        """The sweep begins with ``cells`` (those already finished have status ``skipped``)."""

    def refresh(self, description: str | None = None) -> None:
        """Cell statuses changed (``description``: what happens now)."""

    def cell_started(self, cell: Cell) -> None:
        """A cell began running."""

    def cell_waiting(self, cell: Cell, holder: str) -> None:
        """Waiting for a cell another process (``holder``) is running."""

    def cell_done(self, cell: Cell, note: str = "") -> None:
        """A cell ended (done, failed, or found finished: ``note`` says why)."""

    def stop(self) -> None:
        """The sweep ended (or was interrupted)."""


def cell_runner(runner: Any = None) -> CellRunner:
    """How cells run with the `runners.Runner` ``runner`` (None: ``local``, in this process): through
    `runners.sweep_runner`, each cell launched by the runner as a nested run of the parent."""
    from runners import make_runner, sweep_runner

    return sweep_runner(runner if runner is not None else make_runner("local"))


def local_runner(run: ResolvedRun | Any, parent_run_id: str) -> tuple[str, dict[str, float]]:
    """Run a cell in this process as a nested run of the sweep's parent (FAILED / KILLED on errors)."""
    return cell_runner()(run, parent_run_id)


class Sweep:
    """Runs the cells of a sweep against one store, with resume, locking and progress reports to ``display``."""

    def __init__(self, cells: list[Cell], store: Store, *, runner: CellRunner | None = None, fail_fast: bool = False,
                 wait: bool = True, display: SweepObserver | None = None, spec: SweepSpec | None = None) -> None:
        self.cells = cells
        self.store = store
        self.runner = runner or local_runner
        self.fail_fast = fail_fast
        self.wait = wait
        self.display = display or SweepObserver()
        self.spec = spec
        self.hash = sweep_hash(cells, cells[0].config.experiment if cells else "")
        self.parent = ParentRun(store, self.hash, cells, spec)

    @property
    def parent_run_id(self) -> str:
        """The parent run's id ('' until it is found or opened)."""
        return self.parent.run_id

    def report(self) -> SweepReport:
        """Where the cells stand now."""
        return SweepReport(cells=self.cells, parent_run_id=self.parent.run_id, sweep_hash=self.hash)

    def skip_finished(self) -> None:
        """Mark the cells that have a FINISHED run in the store ``skipped`` (with that run's id and metrics)."""
        existing = self.store.runs_by_hash()
        for cell in self.cells:
            finished = [r for r in existing.get(cell.hash, []) if r.info.status == "FINISHED"]
            if finished:
                cell.status, cell.run_id = "skipped", finished[0].info.run_id
                cell.metrics = dict(finished[0].data.metrics)

    # ------------------------------------------------------------------------------------- cells

    def _claim_and_run(self, cell: Cell) -> None:
        """With the cell's lock held: skip if finished, close stale RUNNING runs, run the cell."""
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
            cell.run_id, cell.metrics = self.runner(cell.run if cell.run is not None else cell.config,
                                                    self.parent.run_id)
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
        lock: CellLock = self.store.lock(cell.hash)
        if not lock.acquire(blocking=False):
            if not blocking:
                return False
            cell.status = "waiting"
            self.display.cell_waiting(cell, lock.holder())
            lock.acquire(blocking=True)
        try:
            self._claim_and_run(cell)
        finally:
            lock.release()
        return True

    def run(self) -> SweepReport:
        """Run every cell not finished yet; returns the report (the parent run is closed either way)."""
        self.skip_finished()
        self.parent.open()
        report = self.report()
        status = "FINISHED"
        self.display.start(self.cells)
        try:
            with sigterm_as_interrupt():
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
                if not stop and self.wait:
                    for cell in deferred:
                        self._try_cell(cell, blocking=True)
                        if cell.status == "failed" and self.fail_fast:
                            stop = True
                            break
                if stop:
                    for cell in self.cells:
                        if cell.status == "pending":
                            cell.status = "not run"
        except KeyboardInterrupt:
            acknowledge_interrupt()  # a second SIGTERM must not cut the closing of the parent short
            status = "KILLED"
            for cell in self.cells:
                if cell.status in ("pending", "running", "waiting"):
                    cell.status = "not run"
            raise
        finally:
            self.display.stop()
            if status != "KILLED":
                status = "FAILED" if report.count("failed", "not run") else "FINISHED"
            self.parent.close(status)
        return report


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
            with store.lock(cell.hash).hold(blocking=False) as free:
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


def prepare(spec: SweepSpec, *, runner: Any = None, fail_fast: bool = False, wait: bool = True,
            display: SweepObserver | None = None) -> Sweep:
    """``spec``'s cells expanded (all checked) against its store (opened, the experiment created): a `Sweep`
    ready to `Sweep.run` here with the `runners.Runner` ``runner`` (None: local), or to hand to a runner that
    submits whole sweeps (``runner.sweep(prepared, ...)``, e.g. SLURM's)."""
    from registry.schema import default_tracking_uri

    cells = expand_cells(spec, tracking_uri=spec.tracking_uri or default_tracking_uri())
    store = open_store(cells[0].config.tracking_uri, spec.experiment, spec.cache_dir)
    assert store is not None  # create=True: made if missing
    return Sweep(cells, store, runner=cell_runner(runner), fail_fast=fail_fast, wait=wait, display=display, spec=spec)


def run_sweep(spec: SweepSpec, *, runner: Any = None, fail_fast: bool = False, wait: bool = True,
              display: SweepObserver | None = None) -> SweepReport:
    """Expand ``spec`` and run it, each cell through the `runners.Runner` ``runner`` (None: in this process)."""
    return prepare(spec, runner=runner, fail_fast=fail_fast, wait=wait, display=display).run()
