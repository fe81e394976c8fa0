"""What a run records and what reads it back: tag names, LM-BFF's seeds, the default store and its URI helpers.

The engine's tracker writes these tags, sweeps search by them and the leaderboard reads them; this module is
the one place that names them. It lives in `registry` (the lowest layer) so that every room can import it, and
it never imports MLflow.

Method metadata (`MethodInfo`): a run records its method's ``family``, ``analog_of`` (the fine-tuning method
a kernel method is the analog of) and ``display_order`` as tags (`method_tags`); runs logged before those
tags existed, and rows of a leaderboard's ``selections.csv``, get them from the registered method
(`registered_method_info`).
"""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry.errors import BenchError

LMBFF_SEEDS: tuple[int, ...] = (13, 21, 42, 87, 100)
"""The five data seeds of LM-BFF's k-shot protocol (and the seeds a leaderboard expects by default)."""

# ----------------------------------------------------------------------------------------- run tags

TASK_TAG = "task"
METHOD_TAG = "method"
METHOD_FAMILY_TAG = "method_family"
METHOD_ANALOG_TAG = "method_analog_of"
"""The fine-tuning method this run's method is the kernel analog of; empty when it is none's."""
METHOD_ORDER_TAG = "method_display_order"
"""The method's place in tables (an integer, lower first)."""
BACKBONE_TAG = "backbone"
BACKBONE_NAME_TAG = "backbone_name"
K_TAG = "k"
SEED_TAG = "seed"
TEMPLATE_TAG = "template"
CONFIG_HASH_TAG = "config_hash"
CODE_VERSION_TAG = "code_version"
ERROR_TAG = "error"
PARENT_RUN_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"

CELL_TAGS: tuple[str, ...] = (TASK_TAG, METHOD_TAG, METHOD_FAMILY_TAG, BACKBONE_TAG, K_TAG, SEED_TAG, TEMPLATE_TAG,
                              CONFIG_HASH_TAG)
"""Tags that identify a run's cell (the leaderboard keeps the runs that carry task, method, k and seed)."""
METHOD_TAGS: tuple[str, ...] = (METHOD_FAMILY_TAG, METHOD_ANALOG_TAG, METHOD_ORDER_TAG)
"""Tags that carry the run's method metadata (`method_tags`)."""

RUN_KIND_TAG = "run_kind"
SWEEP_RUN_KIND = "sweep"
"""``run_kind`` of a sweep's parent run."""
SWEEP_HASH_TAG = "sweep_hash"
SWEEP_SEEDS_TAG = "sweep_seeds"
"""Tag on a sweep's parent run: the comma-separated seeds the sweep asked for."""

NO_TEMPLATE = "none"
"""``template`` tag of a run with standard [CLS]-head inputs."""
DEFAULT_TEMPLATE = "default"
"""``template`` tag of a run with its task's default template."""

# ------------------------------------------------------------------------------------ method metadata

DEFAULT_DISPLAY_ORDER = 1000
"""Where a method without a display order sits (after every built-in one; ties go by name)."""


@dataclass(frozen=True)
class MethodInfo:
    """What readers of runs need to know about a method: its family, its fine-tuning analog, its table order."""

    name: str
    family: str = ""
    analog_of: str | None = None
    display_order: int = DEFAULT_DISPLAY_ORDER


def method_tags(method: Any) -> dict[str, str]:
    """The method-metadata tags of a run of ``method`` (a `benchmark.method.Method` class or instance)."""
    return {
        METHOD_FAMILY_TAG: str(getattr(method, "family", "") or ""),
        METHOD_ANALOG_TAG: str(getattr(method, "analog_of", None) or ""),
        METHOD_ORDER_TAG: str(int(getattr(method, "display_order", DEFAULT_DISPLAY_ORDER))),
    }


def method_info_from_tags(name: str, tags: dict[str, Any]) -> MethodInfo | None:
    """The `MethodInfo` recorded in ``tags`` (`method_tags`), or None when the run predates those tags."""
    order = tags.get(METHOD_ORDER_TAG)
    if order is None or not str(order).strip().lstrip("-").isdigit():
        return None
    analog = tags.get(METHOD_ANALOG_TAG)
    return MethodInfo(name=name, family=str(tags.get(METHOD_FAMILY_TAG) or ""),
                      analog_of=str(analog) if analog else None, display_order=int(order))


def registered_method_info(name: str) -> MethodInfo | None:
    """The metadata of the registered method ``name`` (aliases resolved), or None when no method has that name.

    Looking a method up loads the built-in methods and the method plugins (`registry.METHODS`).
    """
    from registry import METHODS

    try:
        method = METHODS.get(name)
    except BenchError:  # not registered (a plugin since uninstalled, a foreign run) or a broken plugin
        return None
    return MethodInfo(name=METHODS.resolve_name(name), family=str(getattr(method, "family", "") or ""),
                      analog_of=getattr(method, "analog_of", None) or None,
                      display_order=int(getattr(method, "display_order", DEFAULT_DISPLAY_ORDER)))


def canonical_method(name: str) -> str:
    """``name`` with aliases resolved and case folded (``FT`` -> ``ft-adam``); an unknown name only folded."""
    from registry import METHODS

    folded = name.strip().lower()
    try:
        return METHODS.resolve_name(folded)
    except BenchError:
        return folded


def task_order(tasks: Any) -> list[str]:
    """Distinct ``tasks`` in registration order of `registry.TASKS` (the built-ins in LM-BFF's table order),
    then unregistered ones alphabetically."""
    from registry import TASKS

    rank = {name: i for i, name in enumerate(TASKS.names(in_order=True))}
    return sorted(set(tasks), key=lambda t: (rank.get(t, len(rank)), t))


# ------------------------------------------------------------------------------------------ stores

DEFAULT_STORE = Path("mlruns") / "mlflow.db"
"""The store when none is given: a SQLite file under the current directory (no server needed)."""
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"


def resolve_uri(tracking_uri: str | None) -> str:
    """``tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else the SQLite file ``./mlruns/mlflow.db`` (not created)."""
    if tracking_uri:
        return tracking_uri
    return os.environ.get(TRACKING_URI_ENV) or f"sqlite:///{DEFAULT_STORE.resolve()}"


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else a SQLite file ``./mlruns/mlflow.db`` whose folder is created."""
    env = os.environ.get(TRACKING_URI_ENV)
    if env:
        return env
    DEFAULT_STORE.parent.mkdir(parents=True, exist_ok=True)
    return resolve_uri(None)


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:`` URI (absolute), or None (not SQLite, or in memory)."""
    if not uri.startswith("sqlite:"):
        return None
    path = urllib.parse.urlparse(uri).path
    if uri.startswith("sqlite:////"):
        return Path(path[1:])
    if not path or path == "/:memory:":
        return None
    return Path(path.lstrip("/")).expanduser().resolve()


def http_unreachable(uri: str, timeout: float, *, health: bool = False) -> str | None:
    """Why the HTTP(S) tracking server ``uri`` cannot be reached within ``timeout`` seconds, or None if it can.

    The TCP port must accept a connection; with ``health`` its ``/health`` must also answer (any HTTP status
    counts: some proxies have no ``/health``).
    """
    parsed = urllib.parse.urlparse(uri)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "localhost", port), timeout=timeout):
            pass
    except OSError as exc:
        return str(exc.strerror or exc)
    if health:
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
        except urllib.error.HTTPError:
            pass
        except (urllib.error.URLError, OSError) as exc:
            return str(exc)
    return None


__all__ = [
    "CELL_TAGS",
    "DEFAULT_STORE",
    "LMBFF_SEEDS",
    "METHOD_TAGS",
    "SWEEP_SEEDS_TAG",
    "MethodInfo",
    "canonical_method",
    "default_tracking_uri",
    "http_unreachable",
    "method_info_from_tags",
    "method_tags",
    "registered_method_info",
    "resolve_uri",
    "sqlite_path",
    "task_order",
]
