"""Run lifecycle: who owns a RUNNING run, whether that process still lives, and closing runs it left behind.

Every run records its owner as tags when it starts (`owner_tags`): the host, the process id and the
process's start time (so that a reused pid is not mistaken for the owner). `owner_state` reads them
back: ``alive`` / ``dead`` can only be told on the owner's host; a run from another host is
``elsewhere`` and a run without the tags (made before they existed, or by plain MLflow) ``unknown``.
`bench doctor` and the sweep's stale-run check use it; `sigterm_as_interrupt` turns SIGTERM into the
same clean stop as Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

OwnerState = Literal["alive", "dead", "elsewhere", "unknown"]
HOST_TAG, PID_TAG, START_TAG = "owner_host", "owner_pid", "owner_start"
REASON_TAG = "stale_reason"


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be, so every ``except KeyboardInterrupt`` cleanup runs for it too."""


@cache
def host_id() -> str:
    """This host's name, plus its boot id where Linux has one (pids restart at every boot)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            boot = handle.read().strip()[:8]
    except OSError:
        boot = ""
    return f"{socket.gethostname()}/{boot}" if boot else socket.gethostname()


def process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot, from /proc), '' off Linux, None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
    except FileNotFoundError:
        return None
    except OSError:
        return ""
    fields = stat.rsplit(")", 1)[-1].split()  # the command name in parentheses may hold spaces
    if fields and fields[0] == "Z":  # a zombie has finished; only its exit status is left
        return None
    return fields[19] if len(fields) > 19 else ""


def owner_tags() -> dict[str, str]:
    """The tags that name this process as a run's owner."""
    pid = os.getpid()
    return {HOST_TAG: host_id(), PID_TAG: str(pid), START_TAG: process_start(pid) or ""}


def pid_alive(pid: int) -> bool:
    """True when process ``pid`` exists on this host (a zombie counts as gone)."""
    if process_start(pid) is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def owner_state(tags: dict[str, str]) -> OwnerState:
    """Whether the process that started a run (by its owner tags) still runs."""
    host, pid = tags.get(HOST_TAG), tags.get(PID_TAG, "")
    if not host or not pid.isdigit():
        return "unknown"
    if host != host_id():
        return "elsewhere"
    start = process_start(int(pid))
    if start is None or not pid_alive(int(pid)):
        return "dead"
    recorded = tags.get(START_TAG, "")
    if recorded and start and recorded != start:
        return "dead"  # the pid was reused by a later process
    return "alive"


@dataclass
class OpenRun:
    """A RUNNING run of the store, with its owner's state."""

    run_id: str
    experiment: str
    name: str
    start_ms: int
    owner: str
    state: OwnerState

    def age_hours(self, now: float | None = None) -> float:
        """Hours since the run started."""
        return ((now or time.time()) * 1000 - self.start_ms) / 3.6e6


def open_runs(client: Any, experiment_ids: list[str], names: dict[str, str] | None = None) -> list[OpenRun]:
    """Every RUNNING run of ``experiment_ids`` with its owner's state (oldest first)."""
    found: list[OpenRun] = []
    token = None
    while True:
        page = client.search_runs(experiment_ids, filter_string="attributes.status = 'RUNNING'", max_results=1000,
                                  page_token=token)
        for run in page:
            tags = run.data.tags
            owner = f"pid {tags[PID_TAG]} on {tags[HOST_TAG]}" if tags.get(PID_TAG) else "unknown"
            found.append(OpenRun(run_id=run.info.run_id, experiment=(names or {}).get(run.info.experiment_id, ""),
                                 name=tags.get("mlflow.runName", ""), start_ms=run.info.start_time or 0,
                                 owner=owner, state=owner_state(tags)))
        token = page.token
        if not token:
            return sorted(found, key=lambda r: r.start_ms)


def close_stale(client: Any, run_id: str, reason: str, status: str = "FAILED") -> None:
    """Close a run whose owner is gone: tag why, then set ``status`` (FAILED by default)."""
    with contextlib.suppress(Exception):  # the status matters more than the note
        client.set_tag(run_id, REASON_TAG, reason)
    client.set_terminated(run_id, status=status)


def close_dead_runs(client: Any, experiment_id: str) -> list[str]:
    """Mark FAILED the RUNNING runs of ``experiment_id`` whose owner died on this host; returns their ids."""
    closed = []
    for run in open_runs(client, [experiment_id]):
        if run.state == "dead":
            close_stale(client, run.run_id, f"its process ({run.owner}) is gone")
            closed.append(run.run_id)
    return closed


_SIGTERM = {"fired": False, "caught": False, "depth": 0}
REDELIVER_S = 1.0


def acknowledge_interrupt() -> None:
    """Say that a Ctrl-C / SIGTERM interrupt reached a handler that cleans up (``except KeyboardInterrupt``):
    from now on further SIGTERMs are ignored, so that they cannot cut that cleanup short."""
    if _SIGTERM["fired"]:
        _SIGTERM["caught"] = True


def sigterm_received() -> bool:
    """True once SIGTERM arrived inside `sigterm_as_interrupt`."""
    return _SIGTERM["fired"]


def _redeliver() -> None:
    # Python ignores an exception raised in a __del__ or weakref callback ("Exception ignored in ..."):
    # a signal that lands there would be lost. Until a cleanup handler has seen it, raise it again.
    import _thread

    while _SIGTERM["fired"] and not _SIGTERM["caught"]:
        time.sleep(REDELIVER_S)
        if _SIGTERM["fired"] and not _SIGTERM["caught"]:
            _thread.interrupt_main(signal.SIGTERM)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises `Terminated` (a KeyboardInterrupt) until a cleanup handler calls
    `acknowledge_interrupt`; later SIGTERMs are ignored. Outside the main thread nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if _SIGTERM["caught"]:
            return
        if not _SIGTERM["fired"]:
            _SIGTERM["fired"] = True
            threading.Thread(target=_redeliver, name="sigterm-redeliver", daemon=True).start()
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    _SIGTERM["depth"] += 1
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _SIGTERM["depth"] -= 1
        if not _SIGTERM["depth"]:  # nested blocks (the CLI's, the DeepSpeed parent's) share one state
            _SIGTERM["fired"] = _SIGTERM["caught"] = False


@dataclass
class DoctorFinding:
    """One RUNNING run that `doctor` looked at, and what it did (or would do) about it."""

    run: OpenRun
    action: str
    fixed: bool = False


def doctor(client: Any, experiment_ids: dict[str, str], *, older_than_hours: float | None = None,
           fix: bool = True) -> list[DoctorFinding]:
    """Look at every RUNNING run of ``experiment_ids`` (id -> name) and close the stale ones as FAILED.

    Stale: the owner process is gone (checked on its host only), or -- with ``older_than_hours`` -- a
    run from another host, or without owner tags, that started more than that many hours ago. A run
    whose owner is alive is never touched. With ``fix=False`` nothing is changed (a dry run).
    """
    findings = []
    now = time.time()
    for run in open_runs(client, list(experiment_ids), experiment_ids):
        reason = None
        if run.state == "alive":
            action = "left: its process is alive"
        elif run.state == "dead":
            reason = f"its process ({run.owner}) is gone"
        elif older_than_hours is not None and run.age_hours(now) >= older_than_hours:
            where = "owner on another host" if run.state == "elsewhere" else "owner unknown"
            reason = f"{where}, started {run.age_hours(now):.1f} h ago (--older-than {older_than_hours:g})"
        else:
            where = "on another host: check there" if run.state == "elsewhere" else "unknown (no owner tags)"
            action = f"left: owner {where}, or pass --older-than HOURS"
        if reason is not None:
            if fix:
                close_stale(client, run.run_id, f"bench doctor: {reason}")
            action = ("marked FAILED: " if fix else "would mark FAILED: ") + reason
        findings.append(DoctorFinding(run=run, action=action, fixed=fix and reason is not None))
    return findings
