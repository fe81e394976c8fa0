"""A sweep's tracking store: the MLflow client, the experiment, and the cell locks next to the store.

Every cell has a lock file keyed by tracking store, experiment and config hash: next to a SQLite
store (``<store>.locks/<experiment id>/<hash>.lock``), else under the cache directory
(``<cache>/locks/<store digest>/<experiment id>/``). The locks are `filelock.FileLock`\\ s (``flock``
on POSIX): the kernel drops one when its process dies, also on ``kill -9``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from registry import BenchError
from registry.schema import CONFIG_HASH_TAG


class CellLock:
    """An exclusive cross-process lock on ``path`` (a `filelock.FileLock`), with who took it last.

    Each instance is its own owner (its own open file), also within one process; it may be released
    from another thread than the one that took it. The holder's ``pid host time`` is written next to
    the lock (``<path>.holder``) for messages only.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = FileLock(str(self.path), thread_local=False)

    @property
    def holder_path(self) -> Path:
        """Where the last holder wrote who it is."""
        return self.path.with_name(self.path.name + ".holder")

    def acquire(self, blocking: bool = False) -> bool:
        """Take the lock; without ``blocking`` return False at once if another owner holds it."""
        try:
            self._lock.acquire(timeout=-1 if blocking else 0)
        except Timeout:
            return False
        with contextlib.suppress(OSError):  # the note is for messages; the lock is what counts
            self.holder_path.write_text(f"{os.getpid()} {socket.gethostname()} {time.time():.0f}\n")
        return True

    def release(self) -> None:
        """Drop the lock if held (the file stays: removing it would race with a waiting process)."""
        if self._lock.is_locked:
            self._lock.release(force=True)

    @property
    def held(self) -> bool:
        """Whether this instance holds the lock."""
        return self._lock.is_locked

    def holder(self) -> str:
        """``pid N on HOST`` of the last process that took the lock (for messages)."""
        try:
            parts = self.holder_path.read_text().split()
        except OSError:
            return "?"
        return f"pid {parts[0]} on {parts[1]}" if len(parts) >= 2 else "?"

    @contextlib.contextmanager
    def hold(self, blocking: bool = True) -> Iterator[bool]:
        """Context manager: yields whether the lock was taken, releases it on exit."""
        taken = self.acquire(blocking=blocking)
        try:
            yield taken
        finally:
            if taken:
                self.release()


@dataclass
class Store:
    """The tracking store of a sweep: client, experiment id, and where its cell locks live."""

    uri: str
    client: Any
    experiment_id: str
    lock_dir: Path

    def runs_by_hash(self, config_hash: str | None = None) -> dict[str, list[Any]]:
        """Runs of the experiment with a ``config_hash`` tag (one hash, or all), grouped by hash."""
        tag = CONFIG_HASH_TAG
        filter_string = f"tags.{tag} = '{config_hash}'" if config_hash else f"tags.{tag} != ''"
        found: dict[str, list[Any]] = {}
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string=filter_string, max_results=1000,
                                           page_token=token)
            for run in page:
                found.setdefault(run.data.tags.get(tag, ""), []).append(run)
            token = page.token
            if not token:
                return found

    def lock(self, name: str) -> CellLock:
        """The lock ``<lock_dir>/<name>.lock`` (a new owner each call)."""
        return CellLock(self.lock_dir / f"{name}.lock")


def open_store(tracking_uri: str | None, experiment: str, cache_dir: Path | None = None, *,
               create: bool = True) -> Store | None:
    """Connect to the store (created if it is a new SQLite file), get or create ``experiment``.

    With ``create=False`` nothing is created: None when the SQLite file or the experiment does not
    exist yet (a dry run). An unreachable server or unusable store raises `BenchError` at once.
    """
    from benchmark.tracking import default_cache_dir, get_or_create_experiment, open_client, store_error
    from registry.schema import default_tracking_uri, sqlite_path

    uri = tracking_uri or default_tracking_uri()
    sqlite = sqlite_path(uri)
    if sqlite is not None:
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
    # `open_client` refuses an unreachable server or a file that is not SQLite in one line; creating a new store
    # (schema migrations) and the experiment is serialized across processes, and a new experiment keeps its
    # artifacts next to a SQLite store, exactly as for `bench run`.
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
