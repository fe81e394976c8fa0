"""Label values of data files and Hub rows as the task's label indices."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from registry import TaskSpec


def _value_key(value: object) -> str:
    """A label value as the string used in label maps (1, 1.0, np.int64(1) and "1" all give "1")."""
    if isinstance(value, bool | np.bool_):
        return str(int(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


def _resolver(task: TaskSpec, label_map: Mapping[str, str] | None, *, names: bool) -> dict[str, int]:
    """Label value -> label index: through ``label_map`` if given, else the class index as a string.

    With ``names``, the task's label names are accepted as well (they take precedence).
    """
    index = {name: i for i, name in enumerate(task.labels)}
    if label_map is not None:
        table = {key: index[name] for key, name in label_map.items()}
    else:
        table = {str(i): i for i in range(task.num_labels)}
    if names:
        table = {**table, **index}
    return table


def _accepted(table: Mapping[str, int]) -> str:
    shown = sorted(table)
    return ", ".join(repr(v) for v in shown[:12]) + (", ..." if len(shown) > 12 else "")
