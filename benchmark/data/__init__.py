"""Data loading and the LM-BFF k-shot protocol.

Where a task's data comes from (first match wins):

- ``data_dir`` is None: the Hugging Face Hub (`TaskSpec.hub`), via ``datasets.load_dataset``.
- ``<data_dir>/k-shot*/<local.dir>/<K>-<seed>/``: an existing LM-BFF / LM-Kernel-FT k-shot folder
  (``train``, ``dev`` and ``test`` files as ``tools/generate_k_shot_data.py`` writes them), used as is
  (``load_splits`` only; ``k-shot-1k-test`` is preferred, then ``k-shot``, then any other ``k-shot*``).
- ``<data_dir>/original/<local.dir>/``: LM-BFF's original files (`TaskSpec.local`: headerless
  ``label,sentence`` CSVs for the single-sentence tasks, GLUE TSVs with a header for the GLUE tasks).
- ``<data_dir>/<task.name>/{train,test}.{csv,jsonl}``: plain per-split files. A CSV has a header
  row; a JSONL file has one object per line. Text columns: the Hub's names (`HubSource.text_columns`)
  or ``sentence`` / ``text`` (one sentence), ``sentence1,sentence2`` / ``premise,hypothesis`` /
  ``question1,question2`` / ``question,sentence`` (pairs). Label column: the Hub's
  (`HubSource.label_column`) or ``label``; a label is a label name of the task (``"entailment"``) or
  a value in the Hub's encoding (a `HubSource.label_map` key, else the class index).

The k-shot protocol is LM-BFF's ``tools/generate_k_shot_data.py``: ``np.random.seed(seed)`` then
``np.random.shuffle`` of the whole train pool, group by label in order of first appearance, the first
K of each label are train and the next K are dev. The test set is the task's test pool, capped as
LM-Kernel-FT's ``--mode k-shot-1k-test`` does: when it has more than ``test_cap`` examples, the
first ``test_cap`` of a permutation drawn with the fixed seed 42 (``np.random.seed(42);
np.random.shuffle`` for the GLUE TSVs, ``DataFrame.sample(n, random_state=42)`` for the CSVs; both
are ``RandomState(42).permutation(n)[:cap]``), kept in that order. Every k-shot seed shares it.
Rows a reader drops (QQP's short rows, SNLI's Hub label -1) are not in the pool; LM-BFF shuffles raw
lines, so where such rows exist in a train file the k-shot draw can differ from LM-BFF's.

Split caches (``load_splits(cache_dir=...)``) are keyed by the task's data spec, ``k``, ``seed``,
``test_cap`` and, for local files, the SHA-256 of their contents (not their paths); a Hub source is
keyed by its id and splits only, so a cached Hub split also serves offline runs. Each cache file
stores its full key and a checksum of its splits; a file that does not match is recomputed with
one warning.

Modules: `benchmark.data.hub` (the Hub), `benchmark.data.files` (local file readers),
`benchmark.data.sources` (which source a task reads), `benchmark.data.kshot` (the k-shot sampler and
test cap), `benchmark.data.cache` (the split cache), `benchmark.data.labels` (label values); this
module holds the entry points.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmark.bundled import resolve_data_dir
from benchmark.data.cache import _cache_identity, _cache_key, _read_cache, _write_cache
from benchmark.data.files import _examples_from_local, _examples_from_plain
from benchmark.data.hub import _load_hub_split, examples_from_hub_rows
from benchmark.data.kshot import TEST_SEED, _cap_test, kshot_splits
from benchmark.data.sources import _find_pool_source, _hub_source, _locate_source, _Source
from benchmark.examples import Example, Splits
from registry import BenchError, TaskSpec

# `_pools_from_source` and `load_splits` live here and look `_load_hub_split` / `_pools_from_source` up in this
# module, so that patching ``benchmark.data.<name>`` (as the tests do) reaches them.


def _pools_from_source(task: TaskSpec, source: _Source) -> tuple[list[Example], list[Example]]:
    if source.kind == "hub":
        assert task.hub is not None
        train = examples_from_hub_rows(task, _load_hub_split(task, task.hub, task.hub.train_split), split="train")
        test = examples_from_hub_rows(task, _load_hub_split(task, task.hub, task.hub.test_split), split="test")
        return train, test
    if source.kind == "original":
        assert source.local is not None
        return (
            _examples_from_local(task, source.local, source.files["train"], "train"),
            _examples_from_local(task, source.local, source.files["test"], "test"),
        )
    return (
        _examples_from_plain(task, source.files["train"], "train"),
        _examples_from_plain(task, source.files["test"], "test"),
    )


def load_task_pools(task: TaskSpec, data_dir: Path | None) -> tuple[list[Example], list[Example]]:
    """The task's full train pool and full test pool (GLUE-style tasks: the original dev set).

    ``data_dir`` None reads the Hub; otherwise ``<data_dir>/original/<local.dir>/`` (LM-BFF's layout)
    or ``<data_dir>/<task.name>/{train,test}.{csv,jsonl}``. Raises `BenchError` for a missing folder,
    file or column, a label the task does not know, or an unreachable Hub.
    """
    source = _hub_source(task) if data_dir is None else _find_pool_source(task, resolve_data_dir(data_dir))
    return _pools_from_source(task, source)


def load_splits(
    task: TaskSpec,
    *,
    k: int,
    seed: int,
    data_dir: Path | None,
    test_cap: int = 1000,
    cache_dir: Path | None = None,
) -> Splits:
    """The k-shot train / dev sets and the capped test set of ``task`` for (``k``, ``seed``).

    Uses an existing ``<data_dir>/k-shot*/<local.dir>/<K>-<seed>/`` folder as is when there is one
    (its test set still capped); otherwise loads the pools (`load_task_pools`) and samples them with
    `kshot_splits`. With ``cache_dir``, the result is cached as JSON in ``cache_dir``,
    keyed by the task's data spec, the source files' sizes and mtimes, ``k``, ``seed`` and
    ``test_cap``; a corrupt or stale cache file is ignored and rewritten.
    """
    if k < 1:
        raise BenchError(f"k must be at least 1, got {k}")
    if test_cap < 0:
        raise BenchError(f"test_cap must be >= 0 (0 keeps the whole test set), got {test_cap}")
    source = _locate_source(task, data_dir, k, seed)
    cache_file = None
    if cache_dir is not None:
        identity = _cache_identity(task, source, k=k, seed=seed, test_cap=test_cap, digest_dir=Path(cache_dir).parent)
        key = _cache_key(identity)
        cache_file = Path(cache_dir).expanduser() / f"{task.name}-{k}-{seed}-{test_cap}-{key[:16]}.json"
        cached = _read_cache(cache_file, identity, task.num_labels)
        if cached is not None:
            return cached

    if source.kind == "kshot":
        assert source.local is not None
        parts = {split: _examples_from_local(task, source.local, path, split) for split, path in source.files.items()}
        splits = Splits(train=parts["train"], dev=parts["dev"], test=_cap_test(parts["test"], test_cap))
    else:
        train_pool, test_pool = _pools_from_source(task, source)
        splits = kshot_splits(
            train_pool,
            test_pool,
            num_labels=task.num_labels,
            k=k,
            seed=seed,
            test_cap=test_cap,
            label_names=task.labels,
        )
    if cache_file is not None:
        _write_cache(cache_file, identity, task, splits)
    return splits


def data_identity(
    task: TaskSpec, *, k: int, seed: int, data_dir: Path | None, digest_dir: Path | None = None
) -> dict[str, Any]:
    """What identifies the data a run of ``task`` reads: the Hub dataset, or the SHA-256 of each local file.

    The same files under another path give the same identity; an edited file gives another.
    Raises `BenchError` (before any run exists) when the data cannot be found.
    """
    source = _locate_source(task, data_dir, k, seed)
    if source.kind == "hub":
        assert task.hub is not None
        return {"kind": "hub", **task.hub.model_dump(mode="json")}
    return source.fingerprint(digest_dir)


__all__ = ["TEST_SEED", "data_identity", "examples_from_hub_rows", "kshot_splits", "load_splits", "load_task_pools"]
