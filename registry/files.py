"""Reading the suite's YAML/TOML files (task files, sweep files): one loader, one-line errors."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import yaml

from registry.errors import BenchError


def read_text_file(path: str | Path, what: str) -> str:
    """The UTF-8 text of ``path``; a missing, unreadable or non-UTF-8 file raises a one-line `BenchError`.

    ``what`` names the file in the message (e.g. "task file").
    """
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"{what} '{path}' does not exist")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        bad = exc.object[exc.start:exc.start + 1]
        raise BenchError(f"{what} '{path}' is not UTF-8 text (byte {bad!r} at offset {exc.start}); save it as UTF-8") \
            from None
    except OSError as exc:
        raise BenchError(f"cannot read {what} '{path}': {exc.strerror or exc}") from None


def load_mapping_file(path: str | Path, what: str, holds: str) -> dict[str, Any]:
    """The top-level mapping of a YAML (``.yaml``/``.yml``) or TOML (``.toml``) file.

    Every problem is a one-line `BenchError` naming the file as ``what``: missing or unreadable, another
    suffix, a parse error (its first line), or a document that is not a mapping (``holds`` says of what).
    """
    path = Path(path)
    text = read_text_file(path, what)
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        else:
            raise BenchError(f"{what} '{path}' must end in .yaml, .yml or .toml")
    except (tomllib.TOMLDecodeError, yaml.YAMLError, ValueError) as exc:
        lines = str(exc).strip().splitlines()
        raise BenchError(f"{what} '{path}' does not parse: {lines[0] if lines else type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise BenchError(f"{what} '{path}' must hold a mapping of {holds}")
    return data
