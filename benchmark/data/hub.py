"""Reading a task's data from the Hugging Face Hub (``datasets.load_dataset``), offline-aware."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

from benchmark.data.labels import _accepted, _resolver, _value_key
from benchmark.data.sources import _layout_hint
from benchmark.examples import Example
from registry import BenchError, HubSource, TaskSpec

if TYPE_CHECKING:
    import datasets


def examples_from_hub_rows(task: TaskSpec, dataset: datasets.Dataset, *, split: str = "hub") -> list[Example]:
    """Convert one split of the task's Hub dataset (in the Hub's own column format) to `Example`s.

    Text comes from `HubSource.text_columns`, the label from `HubSource.label_column` mapped by
    `HubSource.label_map` (or used as the class index when there is none); rows whose label is in
    `HubSource.drop_labels` (SNLI's -1) are skipped. ``split`` only names the rows (``guid``).
    """
    hub = task.hub
    if hub is None:
        raise BenchError(f"task '{task.name}' has no Hub source; pass --data-dir with its files")
    columns = list(dataset.column_names)
    missing = [c for c in (*hub.text_columns, hub.label_column) if c not in columns]
    if missing:
        raise BenchError(
            f"Hub dataset '{hub.path}' ({split}) has no column {', '.join(map(repr, missing))} "
            f"(it has {', '.join(columns)}); fix hub.text_columns / hub.label_column of task '{task.name}'"
        )
    texts = [list(dataset[c]) for c in hub.text_columns]
    labels = list(dataset[hub.label_column])
    table = _resolver(task, hub.label_map, names=False)
    drop = set(hub.drop_labels)
    examples = []
    for i, raw in enumerate(labels):
        key = _value_key(raw)
        if key in drop:
            continue
        if key not in table:
            raise BenchError(
                f"Hub dataset '{hub.path}' ({split}) row {i} has label {key!r}, which task '{task.name}' does not "
                f"map (known: {_accepted(table)}); fix hub.label_map or hub.drop_labels"
            )
        sentences = tuple("" if col[i] is None else str(col[i]) for col in texts)
        examples.append(Example(guid=f"{split}-{i}", texts=sentences, label=table[key]))
    return examples


@contextlib.contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """Switch `datasets` / `huggingface_hub` to offline mode (cache only, no retries) for a block."""
    if not offline:
        yield
        return
    import datasets.config
    import huggingface_hub.constants

    saved = datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = True
    huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = saved


def _load_hub_split(task: TaskSpec, hub: HubSource, split: str) -> datasets.Dataset:
    """``load_dataset(hub.path, hub.config, split=split)``, failing fast with a `BenchError` offline."""
    import datasets

    from benchmark.hub import hub_reachable

    online = hub_reachable()
    name = hub.path + (f"/{hub.config}" if hub.config else "")
    try:
        with _hub_offline(not online), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return datasets.load_dataset(hub.path, hub.config, split=split)
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if not online:
            raise BenchError(
                f"could not reach the Hugging Face Hub to load '{name}' for task '{task.name}' and it is not in "
                f"the local datasets cache; pass --data-dir DIR with {_layout_hint(task)}{_bundled_hint(task)}"
            ) from exc
        raise BenchError(
            f"could not load '{name}' split '{split}' from the Hub for task '{task.name}' ({reason}); "
            f"pass --data-dir DIR with {_layout_hint(task)}"
        ) from exc


def _bundled_hint(task: TaskSpec) -> str:
    from benchmark.bundled import bundled_tasks

    bundled = task.local is not None and task.local.dir in bundled_tasks()
    return f", or --data-dir bundled (the copy of {task.name} shipped with the suite)" if bundled else ""
