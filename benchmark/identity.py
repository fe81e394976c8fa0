"""Content identity: digests of files and folders, and the stable hash of an identity mapping.

A run's identity (`benchmark.resolve.ResolvedRun.identity`) and every cache key are built from
*content* (a file's bytes, a spec's fields), never from how a path or name was spelled. Hashing a
500 MB weight file takes seconds, so file digests are remembered per (absolute path, size, mtime):
in this process, and in ``<cache dir>/digests.json`` across processes. A file whose size or mtime
changed is hashed again.
"""

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

logger = logging.getLogger(__name__)

#: Bump when the identity schema changes (every config hash and cache key changes with it).
IDENTITY_SCHEMA = 2

_memo: dict[tuple[str, int, int], str] = {}


def canonical_json(obj: Any) -> str:
    """``obj`` as compact JSON with sorted keys: the one serialisation every hash is taken of."""
    return json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"), ensure_ascii=False)


def identity_hash(identity: Mapping[str, Any], length: int = 16) -> str:
    """A short SHA-256 hex digest of ``identity`` (canonical JSON)."""
    return hashlib.sha256(canonical_json(identity).encode()).hexdigest()[:length]


def _stat_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def _disk_memo_path(cache_dir: Path | None) -> Path | None:
    return Path(cache_dir) / "digests.json" if cache_dir is not None else None


def _memo_checksum(entries: Mapping[str, str]) -> str:
    return hashlib.sha256(canonical_json(entries).encode()).hexdigest()


def _read_disk_memo(path: Path | None) -> dict[str, str]:
    """The memo's entries; a damaged or edited memo is ignored (with one warning) and rebuilt."""
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        entries = data["entries"]
        if isinstance(entries, dict) and data.get("checksum") == _memo_checksum(entries):
            return entries
    except (OSError, ValueError, KeyError, TypeError):
        pass
    logger.warning("digest memo %s is damaged or was edited; hashing the files again", path)
    return {}


def _write_disk_memo(path: Path | None, entries: dict[str, str]) -> None:
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        merged = {**_read_disk_memo(path), **entries}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump({"entries": merged, "checksum": _memo_checksum(merged)}, handle)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:  # a digest memo is only a speed-up
        logger.debug("could not write the digest memo %s: %s", path, exc)


def file_digest(path: Path | str, *, cache_dir: Path | None = None) -> str:
    """SHA-256 of a file's bytes (remembered per absolute path, size and mtime)."""
    path = Path(path)
    key = _stat_key(path)
    if key in _memo:
        return _memo[key]
    memo_file = _disk_memo_path(cache_dir)
    disk_key = "|".join(map(str, key))
    digest = _read_disk_memo(memo_file).get(disk_key)
    if digest is None:
        sha = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                sha.update(block)
        digest = sha.hexdigest()
        _write_disk_memo(memo_file, {disk_key: digest})
    _memo[key] = digest
    return digest


def folder_digest(folder: Path | str, *, cache_dir: Path | None = None) -> dict[str, str]:
    """``{relative file name: SHA-256}`` of every regular file below ``folder`` (hidden files skipped)."""
    root = Path(folder)
    digests = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            digests[relative.as_posix()] = file_digest(path, cache_dir=cache_dir)
    return digests
