"""The split cache: k-shot splits as JSON files keyed by their data and settings, each with a checksum."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchmark.data.sources import _Source
from benchmark.examples import Example, Splits
from registry import TaskSpec

logger = logging.getLogger(__name__)

CACHE_VERSION = 2


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
