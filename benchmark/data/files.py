"""Reading local data files: LM-BFF's original / k-shot files and plain per-split CSV / JSONL files."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmark.data.labels import _accepted, _resolver, _value_key
from benchmark.examples import Example
from registry import BenchError, LocalSource, TaskSpec

_PLAIN_TEXT_COLUMNS: dict[int, tuple[tuple[str, ...], ...]] = {
    1: (("sentence",), ("text",)),
    2: (("sentence1", "sentence2"), ("premise", "hypothesis"), ("question1", "question2"), ("question", "sentence")),
}


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
    """Which text and label columns of a plain file to use (see `benchmark.data`'s docstring)."""
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
