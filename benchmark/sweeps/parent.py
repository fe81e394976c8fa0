"""A sweep's MLflow parent run: found, created or reopened, and closed; the cells' runs nest under it.

One parent per sweep (tag ``run_kind=sweep``, ``sweep_hash`` = digest of its cells); running the same
sweep again reopens the latest parent of that hash unless another live process holds it (its lock
``sweep-<hash>.lock``). The parent records its owner as every run does (`benchmark.lifecycle.owner_tags`),
so a parent left RUNNING by a process that died is seen as stale by `bench doctor`; a sweep whose
cells go on without it (SLURM jobs, ``--no-wait``) `detach`\\ es: the parent stays RUNNING, without an owner.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

from benchmark.lifecycle import HOST_TAG, PID_TAG, START_TAG, owner_tags
from registry.schema import (
    CODE_VERSION_TAG,
    RUN_KIND_TAG,
    RUN_NAME_TAG,
    SWEEP_HASH_TAG,
    SWEEP_RUN_KIND,
    SWEEP_SEEDS_TAG,
)

if TYPE_CHECKING:
    from benchmark.sweeps.cells import Cell
    from benchmark.sweeps.spec import SweepSpec
    from benchmark.sweeps.store import CellLock, Store

#: Cell statuses counted as metrics ``cells_<status>`` of the parent when it is closed.
COUNTED = ("done", "skipped", "failed", "elsewhere", "not run")


class ParentRun:
    """The parent run of the sweep ``sweep_hash`` over ``cells`` in ``store`` (``run_id`` '' until found or opened)."""

    def __init__(self, store: Store, sweep_hash: str, cells: list[Cell], spec: SweepSpec | None = None) -> None:
        self.store = store
        self.hash = sweep_hash
        self.cells = cells
        self.spec = spec
        self.run_id = ""
        self._lock: CellLock | None = None

    def find(self) -> str:
        """The id of the latest parent run of this sweep in the store ('' if none); changes nothing."""
        found = self.store.client.search_runs([self.store.experiment_id],
                                              filter_string=f"tags.{SWEEP_HASH_TAG} = '{self.hash}'",
                                              order_by=["attributes.start_time DESC"], max_results=1)
        return found[0].info.run_id if found else ""

    def open(self) -> str:
        """Reopen this sweep's latest parent (RUNNING again, owned by this process) if no live process holds it,
        else create a new one with the sweep's tags, ``sweep.json`` and ``cells.json``. Returns its id."""
        client = self.store.client
        lock = self.store.lock(f"sweep-{self.hash}")
        if lock.acquire(blocking=False):
            self._lock = lock
            previous = self.find()
            if previous:
                self.run_id = previous
                for key, value in owner_tags().items():  # the owner first: a RUNNING parent is never ownerless
                    client.set_tag(previous, key, value)
                client.update_run(previous, status="RUNNING")
                client.set_tag(previous, "resumed", str(int(time.time())))
                return previous
        self.run_id = self._create()
        return self.run_id

    def _create(self) -> str:
        from benchmark.tracking import Tracker, code_version

        cells = self.cells
        name = f"sweep-{self.hash[:8]}"
        tags = {RUN_KIND_TAG: SWEEP_RUN_KIND, SWEEP_HASH_TAG: self.hash,
                SWEEP_SEEDS_TAG: ",".join(map(str, sorted({c.config.seed for c in cells}))),
                "sweep_tasks": ",".join(sorted({c.config.task for c in cells})),
                "sweep_methods": ",".join(sorted({c.config.method for c in cells})), "n_cells": str(len(cells)),
                CODE_VERSION_TAG: code_version(), RUN_NAME_TAG: name, **owner_tags()}
        run = self.store.client.create_run(self.store.experiment_id, tags=tags, run_name=name)
        tracker = Tracker(self.store.client, run.info.run_id, self.store.experiment_id)
        if self.spec is not None:
            tracker.log_json(self.spec.model_dump(mode="json", by_alias=False), "sweep.json")
        tracker.log_json([{"hash": c.hash, **c.identity} for c in cells], "cells.json")
        return run.info.run_id

    def close(self, status: str) -> None:
        """Log the cell counts (``cells_done``, ...), end the run as ``status`` and drop its lock (best effort:
        a store that fails here cannot undo the cells' runs)."""
        if self.run_id:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            counts = {f"cells_{name.replace(' ', '_')}": float(sum(c.status == name for c in self.cells))
                      for name in COUNTED}
            with contextlib.suppress(Exception):
                self.store.client.log_batch(self.run_id, metrics=[Metric(k, v, now, 0) for k, v in counts.items()])
            with contextlib.suppress(Exception):
                self.store.client.set_terminated(self.run_id, status=status)
        self._release()

    def detach(self) -> None:
        """Leave the run RUNNING for the work that goes on without this process (submitted jobs): drop its owner
        tags (so it is not taken for the run of a dead process) and its lock; a later sweep reopens it."""
        if self.run_id:
            for key in (HOST_TAG, PID_TAG, START_TAG):
                with contextlib.suppress(Exception):
                    self.store.client.delete_tag(self.run_id, key)
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None
