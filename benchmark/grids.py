"""In-run grids: the settings one run tries and selects on dev (not a sweep's one run per point).

Two methods' options are in-run grids, each named for what it varies: ``train_grid`` of the
fine-tuning methods (training options, one training per point, the best dev checkpoint kept) and
``solver_grid`` of the kernel methods (solver settings, one solve per point on the same kernels).
Both accept a mapping ``option -> [values]`` whose cartesian product is taken in the mapping's
order (the first key varies slowest); ``solver_grid`` also takes an explicit list of settings.
Before the rename both were called ``grid``; that name is refused with the new one.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from registry import METHODS, BenchError, load_builtins

#: The in-run grid options and the `bench run` flag that sets each.
GRID_FLAGS = {"train_grid": "--train-grid", "solver_grid": "--solver-grid"}


def product(grid: Mapping[str, Any], name: str = "grid") -> list[dict[str, Any]]:
    """The cartesian product of ``{key: [values]}`` as settings dicts, in key order (first key slowest).

    Raises ``ValueError`` (for a pydantic validator) when a key has no list of values.
    """
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"{name} key '{key}' needs a non-empty list of values")
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(grid[key] for key in keys))]


def settings_list(value: Any) -> Any:
    """A solver grid as a list of settings: a mapping ``key -> [values]`` becomes its `product`.

    Anything else is returned as given, for the field's own type check.
    """
    if isinstance(value, Mapping):
        if not value:
            raise ValueError("the solver grid is empty; give at least one key=v1,v2 (or leave it unset)")
        return product(value, "solver_grid")
    return value


def refuse_old_grid(method: str, options: Mapping[str, Any], new: str) -> None:
    """`BenchError` naming ``new`` when ``options`` still use the option name ``grid`` (renamed)."""
    if "grid" in options:
        raise BenchError(
            f"method '{method}' has no option 'grid' any more: it is '{new}' (bench run {GRID_FLAGS[new]} key=v1,v2, "
            f"or --opt '{new}={{...}}'); one run per value is `bench sweep --grid`"
        )


def refuse_missing_grid(method: str, options: Mapping[str, Any]) -> None:
    """`BenchError` for an in-run grid ``method`` lacks (``train_grid`` of a kernel method), naming its flag."""
    load_builtins()
    cls = METHODS.get(method)
    fields = cls.Options.model_fields
    for name, flag in GRID_FLAGS.items():
        if name in options and name not in fields:
            others = [f"{other} key=v1,v2" for key, other in GRID_FLAGS.items() if key in fields]
            hint = f"use {others[0]}" if others else "make one run per value with bench sweep --grid key=v1,v2"
            raise BenchError(f"method '{cls.name}' has no {flag} (no option '{name}'); {hint}")
