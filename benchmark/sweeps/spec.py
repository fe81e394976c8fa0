"""What a sweep is, as a YAML/TOML file or the command line describes it: `SweepSpec`, validated once."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from registry import BenchError, first_error
from registry.files import load_mapping_file
from registry.schema import LMBFF_SEEDS


def as_list(value: Any) -> Any:
    """``"a, b"`` -> ``["a", "b"]``, a number -> ``[number]``; anything else as it is (pydantic judges it)."""
    if value is None:
        return value
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, (int, float)):
        return [value]
    return value


def _grid_lists(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: v if isinstance(v, list) else [v] for key, v in value.items()}
    return value


class MethodGrid(BaseModel):
    """One method of a sweep: fixed options and a sweep grid (each point of the grid its own cell).

    ``options`` are the method's own options, passed as they are (dict- and list-valued ones included,
    e.g. a method's in-run grid); ``grid`` is the sweep's: option -> values, one run per point.
    """

    model_config = ConfigDict(extra="forbid")

    options: dict[str, Any] = Field(default_factory=dict, description="fixed method options")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="option -> values; the product is swept")

    _grid = field_validator("grid", mode="before")(classmethod(lambda cls, v: _grid_lists(v)))


def normalize_methods(value: Any) -> Any:
    """``methods`` as a mapping name -> entry: a list (or comma-separated string) of names, or a mapping
    whose empty entries (``zero-shot:``) become ``{}``; anything else as it is."""
    value = as_list(value)
    if isinstance(value, list):
        return {str(name): {} for name in value}
    if isinstance(value, dict):
        return {name: ({} if entry is None else entry) for name, entry in value.items()}
    return value


class SweepSpec(BaseModel):
    """A sweep as a YAML/TOML file or CLI lists describe it; `benchmark.sweeps.expand_cells` turns it into cells.

    ``methods`` is a list of names or a mapping ``name -> {options, grid}``; top-level ``options``
    and ``grid`` apply to every method (a method's own entries win).
    """

    model_config = ConfigDict(extra="forbid", validate_by_name=True, validate_by_alias=True)

    tasks: list[str] = Field(min_length=1)
    task_files: list[Path] = Field(default_factory=list, description="TaskSpec files; their names are in tasks")
    methods: dict[str, MethodGrid] = Field(min_length=1)
    k: list[int] = Field(default=[16], min_length=1)
    seeds: list[int] = Field(default=list(LMBFF_SEEDS), min_length=1)
    backbones: list[str] = Field(default=["roberta-base"], min_length=1, alias="backbone")
    templates: list[str | None] = Field(default=[None], min_length=1, alias="template")
    options: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    data_dir: Path | None = None
    test_cap: int = Field(default=1000, ge=0)
    binary: bool | None = None
    batch_size: int = Field(default=32, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    tracking_uri: str | None = None
    experiment: str = "kernel-bench"
    cache_dir: Path | None = None

    _grid = field_validator("grid", mode="before")(classmethod(lambda cls, v: _grid_lists(v)))
    _methods = field_validator("methods", mode="before")(classmethod(lambda cls, v: normalize_methods(v)))

    @field_validator("tasks", "backbones", "k", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return as_list(value)

    @field_validator("templates", mode="before")
    @classmethod
    def _templates(cls, value: Any) -> Any:
        return [value] if value is None or isinstance(value, str) else value

    @field_validator("seeds", mode="before")
    @classmethod
    def _seeds(cls, value: Any) -> Any:
        value = as_list(value)
        if isinstance(value, list):
            out: list[Any] = []
            for item in value:
                if isinstance(item, str) and item.strip().lower() == "all":
                    out.extend(LMBFF_SEEDS)
                else:
                    out.append(int(item) if isinstance(item, str) and item.strip().lstrip("-").isdigit() else item)
            return list(dict.fromkeys(out))
        return value

    @model_validator(mode="after")
    def _grids_not_empty(self) -> SweepSpec:
        grids = [("", self.grid), *((f" of method '{m}'", e.grid) for m, e in self.methods.items())]
        for where, grid in grids:
            for key, values in grid.items():
                if not values:
                    raise ValueError(f"grid '{key}'{where} is empty; give at least one value")
        return self


def load_spec_file(path: Path) -> dict[str, Any]:
    """The raw mapping of a YAML (``.yaml``/``.yml``) or TOML (``.toml``) sweep file."""
    return load_mapping_file(path, "sweep file", "sweep fields (tasks, methods, k, seeds, ...)")


def validate_spec(data: dict[str, Any], source: str = "sweep") -> SweepSpec:
    """Validate a raw sweep mapping; errors become one-line `BenchError`s naming ``source``."""
    try:
        return SweepSpec.model_validate(data)
    except ValidationError as exc:
        where, message = first_error(exc, "sweep")
        raise BenchError(f"{source}: invalid {where}: {message}") from None
