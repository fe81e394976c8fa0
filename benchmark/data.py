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
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from benchmark.bundled import resolve_data_dir
from benchmark.examples import Example, Splits
from registry import BenchError, HubSource, LocalSource, TaskSpec

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger(__name__)

TEST_SEED = 42
"""Seed of the test-set cap, independent of the k-shot seed (LM-Kernel-FT ``k-shot-1k-test``)."""

CACHE_VERSION = 2
KSHOT_MODE_PREFERENCE = ("k-shot-1k-test", "k-shot")
PLAIN_EXTENSIONS = ("csv", "jsonl")
_PLAIN_TEXT_COLUMNS: dict[int, tuple[tuple[str, ...], ...]] = {
    1: (("sentence",), ("text",)),
    2: (("sentence1", "sentence2"), ("premise", "hypothesis"), ("question1", "question2"), ("question", "sentence")),
}


# --------------------------------------------------------------------------------------------- labels


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


# ------------------------------------------------------------------------------------------------ Hub


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


def _layout_hint(task: TaskSpec) -> str:
    original = f"DIR/original/{task.local.dir}/" if task.local else None
    plain = f"DIR/{task.name}/{{train,test}}.{{csv,jsonl}}"
    return f"{original} (LM-BFF's layout) or {plain}" if original else plain


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


# ---------------------------------------------------------------------------------------- local files


@dataclass(frozen=True)
class _Source:
    """Where a task's data is read from: kind 'hub', 'kshot', 'original' or 'plain', and its files."""

    kind: str
    files: dict[str, Path] = field(default_factory=dict)
    local: LocalSource | None = None

    def fingerprint(self, cache_dir: Path | None = None) -> dict[str, Any]:
        """What identifies this source's content: its kind and the SHA-256 of each file (not their paths)."""
        from benchmark.identity import file_digest

        files = {split: file_digest(path, cache_dir=cache_dir) for split, path in sorted(self.files.items())}
        return {"kind": self.kind, "files": files}


def _read_tsv(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, fields) of each non-empty line, split on tabs without any quoting.

    This is what LM-BFF's GLUE readers see: ``f.readlines()`` and ``line.split('\\t')``
    (``generate_k_shot_data.py``), ``csv.reader(delimiter='\\t', quotechar=None)`` (the processors).
    """
    rows = []
    with path.open(encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.rstrip("\n")
            if line:
                rows.append((number, line.split("\t")))
    return rows


def _read_delimited(path: Path, delimiter: str, header: bool) -> tuple[list[str] | None, list[tuple[int, list[Any]]]]:
    """Header names (or None) and numbered rows of a delimited file.

    Tab-separated files are split plainly (GLUE); other delimiters are parsed as CSV with pandas,
    as LM-BFF does (``pd.read_csv(header=None)``), keeping every value a string.
    """
    if delimiter == "\t":
        rows = _read_tsv(path)
        if not header:
            return None, rows
        if not rows:
            raise BenchError(f"'{path}' is empty; it should start with a header line")
        return [name.strip() for name in rows[0][1]], rows[1:]
    import pandas as pd

    try:
        frame = pd.read_csv(
            path, sep=delimiter, header=0 if header else None, dtype=str, keep_default_na=False, encoding="utf-8-sig"
        )
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BenchError(f"cannot parse '{path}' as a '{delimiter}'-separated file: {reason}") from exc
    names = [str(c).strip() for c in frame.columns] if header else None
    first = 2 if header else 1
    return names, [(first + i, row) for i, row in enumerate(frame.values.tolist())]


def _column_index(column: str | int, names: list[str] | None, path: Path) -> int:
    if isinstance(column, int):
        return column
    if names is None:
        raise BenchError(f"column '{column}' is named, but '{path}' is read without a header; use a column index")
    if column not in names:
        raise BenchError(
            f"'{path}' has no column '{column}' (its header: {', '.join(names)}); check the task's local spec"
        )
    return names.index(column)


def _examples_from_local(task: TaskSpec, source: LocalSource, path: Path, split: str) -> list[Example]:
    """Read one LM-BFF-format file (original or k-shot) of ``task`` into `Example`s."""
    if not path.is_file():
        raise BenchError(f"missing file '{path}' for task '{task.name}'")
    names, rows = _read_delimited(path, source.delimiter, source.header)
    text_idx = [_column_index(c, names, path) for c in source.text_columns]
    label_idx = _column_index(source.label_column, names, path)
    table = _resolver(task, source.label_map, names=source.label_map is None)
    examples = []
    for i, (number, row) in enumerate(rows):
        try:
            texts = tuple(row[j] for j in text_idx)
            raw = row[label_idx]
        except IndexError:
            if source.skip_bad_rows:
                continue
            raise BenchError(
                f"'{path}' line {number} has {len(row)} fields, too few for the task's columns; fix the file"
            ) from None
        if not all(isinstance(t, str) for t in texts) or not isinstance(raw, str):
            if source.skip_bad_rows:
                continue
            raise BenchError(f"'{path}' line {number} has a missing field; fix the file")
        key = _value_key(raw)
        if key not in table:
            raise BenchError(
                f"'{path}' line {number} has label {key!r}, not one the task '{task.name}' knows "
                f"({_accepted(table)}); check the file or the task's local.label_map"
            )
        examples.append(Example(guid=f"{split}-{i}", texts=texts, label=table[key]))
    return examples


def _read_plain(path: Path) -> list[dict[str, Any]]:
    """Records of a plain per-split file: a CSV with a header row, or JSONL (one object per line)."""
    if path.suffix == ".jsonl":
        records = []
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise BenchError(f"'{path}' line {number} is not valid JSON: {exc.msg}") from exc
                if not isinstance(record, dict):
                    raise BenchError(f"'{path}' line {number} must be a JSON object with text and label fields")
                records.append(record)
        return records
    names, rows = _read_delimited(path, ",", header=True)
    assert names is not None
    return [dict(zip(names, row, strict=False)) for _, row in rows]


def _plain_columns(task: TaskSpec, path: Path, columns: Sequence[str]) -> tuple[tuple[str, ...], str]:
    """Which text and label columns of a plain file to use (see the module docstring)."""
    candidates = ([task.hub.text_columns] if task.hub else []) + list(_PLAIN_TEXT_COLUMNS[task.num_sentences])
    labels = ([task.hub.label_column] if task.hub else []) + ["label"]
    text = next((c for c in candidates if all(name in columns for name in c)), None)
    label = next((c for c in labels if c in columns), None)
    if text is None or label is None:
        hint = ""
        if path.parent.parent.name.startswith(("original", "k-shot")):
            hint = f" ('{path.parent.parent}' looks like an LM-BFF folder: pass the folder above it as --data-dir)"
        wanted = " or ".join("+".join(c) for c in dict.fromkeys(candidates)) if text is None else " or ".join(labels)
        raise BenchError(
            f"'{path}' has no {'text' if text is None else 'label'} column {wanted} "
            f"(it has: {', '.join(map(str, columns)) or 'nothing'}){hint}"
        )
    return text, label


def _examples_from_plain(task: TaskSpec, path: Path, split: str) -> list[Example]:
    """Read a plain per-split file of ``task`` into `Example`s."""
    records = _read_plain(path)
    columns = list(dict.fromkeys(name for record in records[:1] for name in record))
    text_cols, label_col = _plain_columns(task, path, columns)
    hub_map = task.hub.label_map if task.hub else None
    table = _resolver(task, hub_map, names=True)
    examples = []
    for i, record in enumerate(records):
        if any(c not in record for c in (*text_cols, label_col)):
            raise BenchError(f"'{path}' record {i + 1} lacks one of the columns {', '.join((*text_cols, label_col))}")
        key = _value_key(record[label_col])
        if key not in table:
            raise BenchError(
                f"'{path}' record {i + 1} has label {key!r}, not a label of task '{task.name}' "
                f"({', '.join(task.labels)}) nor its Hub encoding ({_accepted(table)})"
            )
        texts = tuple("" if record[c] is None else str(record[c]) for c in text_cols)
        examples.append(Example(guid=f"{split}-{i}", texts=texts, label=table[key]))
    return examples


# ------------------------------------------------------------------------------------ finding sources


def _kshot_names(local: LocalSource) -> dict[str, str]:
    """File names in an LM-BFF k-shot folder: the original dev file becomes test (MNLI: dev_matched)."""
    ext = Path(local.train_file).suffix
    if local.test_file.startswith("dev"):
        return {"train": local.train_file, "dev": local.test_file, "test": local.test_file.replace("dev", "test", 1)}
    return {"train": local.train_file, "dev": f"dev{ext}", "test": local.test_file}


def _find_kshot_source(task: TaskSpec, data_dir: Path, k: int, seed: int) -> _Source | None:
    """An existing ``<data_dir>/k-shot*/<local.dir>/<K>-<seed>/`` folder, if there is one."""
    if task.local is None:
        return None
    modes = sorted(
        (p for p in data_dir.glob("k-shot*") if p.is_dir()),
        key=lambda p: (KSHOT_MODE_PREFERENCE.index(p.name) if p.name in KSHOT_MODE_PREFERENCE else 99, p.name),
    )
    for mode in modes:
        folder = mode / task.local.dir / f"{k}-{seed}"
        if folder.is_dir():
            files = {split: folder / name for split, name in _kshot_names(task.local).items()}
            for path in files.values():
                if not path.is_file():
                    raise BenchError(
                        f"k-shot folder '{folder}' has no '{path.name}'; regenerate it or remove the folder"
                    )
            return _Source("kshot", files, task.local)
    return None


def _find_pool_source(task: TaskSpec, data_dir: Path) -> _Source:
    """LM-BFF's ``original/<dir>/`` files, else plain ``<task>/{train,test}.{csv,jsonl}`` files."""
    if not data_dir.is_dir():
        raise BenchError(f"data dir '{data_dir}' does not exist; pass a folder with {_layout_hint(task)}")
    if task.local is not None:
        folder = data_dir / "original" / task.local.dir
        if folder.is_dir():
            files = {"train": folder / task.local.train_file, "test": folder / task.local.test_file}
            for path in files.values():
                if not path.is_file():
                    raise BenchError(
                        f"'{folder}' has no '{path.name}' (LM-BFF's layout for task '{task.name}' has "
                        f"{task.local.train_file} and {task.local.test_file})"
                    )
            return _Source("original", files, task.local)
    folder = data_dir / task.name
    if folder.is_dir():
        files = {}
        for split in ("train", "test"):
            found = [folder / f"{split}.{ext}" for ext in PLAIN_EXTENSIONS if (folder / f"{split}.{ext}").is_file()]
            if not found:
                raise BenchError(f"'{folder}' has no {split}.csv or {split}.jsonl for task '{task.name}'")
            files[split] = found[0]
        return _Source("plain", files)
    expected = _layout_hint(task).replace("DIR", str(data_dir))
    raise BenchError(f"no data for task '{task.name}' in '{data_dir}': expected {expected}")


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


def _hub_source(task: TaskSpec) -> _Source:
    if task.hub is None:
        raise BenchError(f"task '{task.name}' has no Hub source; pass --data-dir DIR with {_layout_hint(task)}")
    return _Source("hub")


def load_task_pools(task: TaskSpec, data_dir: Path | None) -> tuple[list[Example], list[Example]]:
    """The task's full train pool and full test pool (GLUE-style tasks: the original dev set).

    ``data_dir`` None reads the Hub; otherwise ``<data_dir>/original/<local.dir>/`` (LM-BFF's layout)
    or ``<data_dir>/<task.name>/{train,test}.{csv,jsonl}``. Raises `BenchError` for a missing folder,
    file or column, a label the task does not know, or an unreachable Hub.
    """
    source = _hub_source(task) if data_dir is None else _find_pool_source(task, resolve_data_dir(data_dir))
    return _pools_from_source(task, source)


# ---------------------------------------------------------------------------------------- k-shot sampling


def _cap_test(pool: Sequence[Example], test_cap: int) -> list[Example]:
    """At most ``test_cap`` examples (0 = all): ``RandomState(42).permutation(n)[:test_cap]``, in that order."""
    if test_cap < 0:
        raise BenchError(f"test_cap must be >= 0 (0 keeps the whole test set), got {test_cap}")
    if test_cap == 0 or len(pool) <= test_cap:
        return list(pool)
    order = np.random.RandomState(TEST_SEED).permutation(len(pool))[:test_cap]
    return [pool[i] for i in order]


def kshot_splits(
    train_pool: Sequence[Example],
    test_pool: Sequence[Example],
    *,
    num_labels: int,
    k: int,
    seed: int,
    test_cap: int = 1000,
    label_names: Sequence[str] | None = None,
) -> Splits:
    """LM-BFF's k-shot split: K examples per label for train and the next K per label for dev.

    The train pool is shuffled with ``np.random.seed(seed); np.random.shuffle`` (legacy seeding, as
    ``tools/generate_k_shot_data.py``); labels are taken in order of first appearance in the shuffled
    pool. The test set is the test pool capped at ``test_cap`` examples (0 = all) with the fixed seed
    42, so every ``seed`` shares it. ``label_names`` only improve error messages. Raises `BenchError`
    if a label has fewer than 2K examples.
    """
    if k < 1:
        raise BenchError(f"k must be at least 1, got {k}")
    if not 0 <= seed < 2**32:
        raise BenchError(f"seed must be in [0, 2**32), got {seed}")

    def name(label: int) -> str:
        return f"'{label_names[label]}'" if label_names is not None else str(label)

    counts = Counter(ex.label for ex in train_pool)
    unknown = sorted(label for label in counts if not 0 <= label < num_labels)
    if unknown:
        raise BenchError(f"train pool has label indices {unknown} outside 0..{num_labels - 1}")
    short = [label for label in range(num_labels) if counts[label] < 2 * k]
    if short:
        largest = min(counts[label] for label in range(num_labels)) // 2
        detail = ", ".join(f"label {name(label)} has {counts[label]}" for label in short)
        advice = f"use k <= {largest}" if largest >= 1 else "this train pool cannot give a k-shot split"
        raise BenchError(
            f"k={k} needs {2 * k} training examples per label ({k} train + {k} dev), but {detail}; "
            f"the largest k possible is {largest}: {advice}"
        )
    order = list(range(len(train_pool)))
    np.random.RandomState(seed).shuffle(order)  # a list, like LM-BFF's list of lines
    groups: dict[int, list[Example]] = {}
    for i in order:
        example = train_pool[i]
        groups.setdefault(example.label, []).append(example)
    train = [ex for group in groups.values() for ex in group[:k]]
    dev = [ex for group in groups.values() for ex in group[k : 2 * k]]
    return Splits(train=train, dev=dev, test=_cap_test(test_pool, test_cap))


# ------------------------------------------------------------------------------------------------ cache


def _cache_identity(
    task: TaskSpec, source: _Source, *, k: int, seed: int, test_cap: int, digest_dir: Path | None = None
) -> dict[str, Any]:
    return {
        "version": CACHE_VERSION,
        "task": task.model_dump(mode="json", include={"name", "labels", "num_sentences", "hub", "local"}),
        "source": source.fingerprint(digest_dir),
        "k": k,
        "seed": seed,
        "test_cap": test_cap,
    }


def _cache_key(identity: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _splits_checksum(splits_json: Mapping[str, Any]) -> str:
    blob = json.dumps(splits_json, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _splits_to_json(splits: Splits) -> dict[str, list[dict[str, Any]]]:
    return {
        split: [{"guid": ex.guid, "texts": list(ex.texts), "label": ex.label} for ex in examples]
        for split, examples in (("train", splits.train), ("dev", splits.dev), ("test", splits.test))
    }


def _read_cache(path: Path, identity: Mapping[str, Any], num_labels: int) -> Splits | None:
    """The cached splits at ``path``, or None if absent; a stale or corrupt file warns and is None.

    The file holds its full key (``identity``) and a SHA-256 of its splits: a file written for other
    data, or edited or damaged since (one flipped label), is never used.
    """
    if not path.is_file():
        return None
    problem = None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
            problem = "written by another version of the suite"
        elif data.get("identity") != json.loads(json.dumps(identity)) or data.get("key") != _cache_key(identity):
            problem = "written for other data or settings"
        elif data.get("checksum") != _splits_checksum(data["splits"]):
            problem = "its checksum does not match its contents (edited or damaged)"
        else:
            parts: dict[str, list[Example]] = {}
            for split in ("train", "dev", "test"):
                examples = []
                for row in data["splits"][split]:
                    texts = tuple(row["texts"])
                    label = row["label"]
                    valid = isinstance(row["guid"], str) and all(isinstance(t, str) for t in texts)
                    if not valid or type(label) is not int or not 0 <= label < num_labels:
                        raise ValueError(f"bad row {row!r}")
                    examples.append(Example(guid=row["guid"], texts=texts, label=label))
                parts[split] = examples
            return Splits(**parts)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        problem = f"unreadable ({type(exc).__name__}: {str(exc)[:120]})"
    logger.warning("split cache %s is not usable: %s; recomputing it", path, problem)
    return None


def _write_cache(path: Path, identity: Mapping[str, Any], task: TaskSpec, splits: Splits) -> None:
    """Write the splits atomically (temporary file + rename); a failure only costs the cache."""
    splits_json = _splits_to_json(splits)
    payload = {"version": CACHE_VERSION, "key": _cache_key(identity), "identity": identity, "task": task.name,
               "checksum": _splits_checksum(splits_json), "splits": splits_json}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(payload, handle, ensure_ascii=False)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        logger.warning("could not write the split cache %s (%s); the run goes on without it", path, exc)


# ----------------------------------------------------------------------------------------- entry point


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


def _locate_source(task: TaskSpec, data_dir: Path | None, k: int, seed: int) -> _Source:
    if data_dir is None:
        return _hub_source(task)
    root = resolve_data_dir(data_dir)
    if not root.is_dir():
        raise BenchError(f"data dir '{root}' does not exist; pass a folder with {_layout_hint(task)}")
    return _find_kshot_source(task, root, k, seed) or _find_pool_source(task, root)


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
