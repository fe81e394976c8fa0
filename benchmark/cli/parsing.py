"""Parsing command-line values: JSON-or-string values, ``key=value`` options, label words, seeds."""

from __future__ import annotations

import json
from typing import Any

from benchmark.grids import GRID_FLAGS
from registry import BenchError


def parse_value(text: str) -> Any:
    """A CLI value as JSON when it parses (numbers, booleans, lists), else the plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_key_values(items: list[str], flag: str) -> dict[str, Any]:
    """``key=value`` items (of ``flag``) as a dict: dashes in keys become underscores, values `parse_value`d."""
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BenchError(f"{flag} expects key=value, got '{item}'")
        parsed[key.strip().replace("-", "_")] = parse_value(value.strip())
    return parsed


def parse_launch_opts(items: list[str]) -> dict[str, Any]:
    """``--launch-opt key=value`` items as a dict, validated later by the launcher's own options."""
    return parse_key_values(items, "--launch-opt")


def parse_options(
    opts: list[str], train_grid: list[str] = [], solver_grid: list[str] = []  # noqa: B006
) -> dict[str, Any]:
    """``--opt key=value``, ``--train-grid key=v1,v2`` and ``--solver-grid key=v1,v2`` as a method-options dict."""
    options = parse_key_values(opts, "--opt")
    for name, items in (("train_grid", train_grid), ("solver_grid", solver_grid)):
        if items:
            options[name] = parse_grid(items, GRID_FLAGS[name])
    return options


def parse_grid(items: list[str], flag: str) -> dict[str, list[Any]]:
    """``key=v1,v2`` items (of ``flag``) as ``{key: [v1, v2]}``, in the order given."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise BenchError(f"{flag} expects key=v1,v2,..., got '{item}'")
        grid[key.strip().replace("-", "_")] = [parse_value(v.strip()) for v in values.split(",")]
    return grid


def parse_label_words(text: str | None) -> tuple[str, ...] | dict[str, str] | None:
    """``w1,w2`` (label order) or ``label=word,label=word`` pairs."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    if any(not p for p in parts):
        raise BenchError(f"--label-words has an empty word: '{text}'")
    if all("=" in p for p in parts):
        return {k.strip(): v.strip() for k, v in (p.split("=", 1) for p in parts)}
    if any("=" in p for p in parts):
        raise BenchError("--label-words takes either words in label order or label=word pairs, not both")
    return tuple(parts)


def parse_seeds(values: list[str]) -> list[int]:
    """Seeds from repeated or comma-separated ``--seed`` values; 'all' = LM-BFF's five seeds."""
    from benchmark.config import LMBFF_SEEDS

    seeds: list[int] = []
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if part == "all":
                seeds.extend(LMBFF_SEEDS)
            elif part.lstrip("-").isdigit():
                seeds.append(int(part))
            else:
                raise BenchError(f"--seed expects integers (or 'all'), got '{part}'")
    return list(dict.fromkeys(seeds))


def parse_scoped(items: list[str], *, flag: str, multi: bool) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """``[METHOD:]key=value`` (``multi``: ``key=v1,v2``) items as (for all methods, per method) dicts."""
    common: dict[str, Any] = {}
    scoped: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        method, colon, name = key.rpartition(":")
        name = name.strip().replace("-", "_")
        if not sep or not name or not value.strip() or (colon and not method.strip()):
            form = "key=v1,v2,..." if multi else "key=value"
            raise BenchError(f"{flag} expects [METHOD:]{form}, got '{item}'")
        parsed = [parse_value(v.strip()) for v in value.split(",")] if multi else parse_value(value.strip())
        target = scoped.setdefault(method.strip(), {}) if colon else common
        target[name] = parsed
    return common, scoped
