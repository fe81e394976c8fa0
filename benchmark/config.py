"""The configuration of one run as a user gives it (CLI or file), validated field by field.

A `RunConfig` is what was *asked for*: names as spelled, paths as given. `benchmark.resolve.resolve_run`
turns it into the `ResolvedRun` the engine takes; a run's identity (its config hash) is that object's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from registry.schema import LMBFF_SEEDS, NO_TEMPLATE

__all__ = ["LMBFF_SEEDS", "NO_TEMPLATE", "RunConfig"]


class RunConfig(BaseModel):
    """Everything that identifies one run: one (task, method, backbone, k, seed, options) cell."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: str = Field(description="registered task name (or the name inside --task-file)")
    task_file: Path | None = Field(default=None, description="YAML/TOML TaskSpec file")
    method: str
    backbone: str = "roberta-base"
    k: int = Field(default=16, ge=1, description="examples per label in train (and in dev)")
    seed: int = 13
    data_dir: Path | None = Field(default=None, description="local data root (LM-BFF layout); None = the Hub")
    template: str | None = Field(default=None, description="template name, LM-BFF template string, or 'none'")
    label_words: tuple[str, ...] | dict[str, str] | None = None
    test_cap: int = Field(default=1000, ge=0, description="test examples kept (0 = all)")
    binary: bool | None = Field(default=None, description="one logit-difference output on 2-class tasks")
    batch_size: int = Field(default=32, ge=1, description="evaluation batch size")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    tracking_uri: str | None = None
    experiment: str = "kernel-bench"
    cache_dir: Path | None = Field(
        default=None, description="split / kernel cache; None = $KERNEL_BENCH_CACHE or ~/.cache/kernel-bench"
    )
    options: dict[str, Any] = Field(default_factory=dict, description="method-specific options")

    @field_validator("template")
    @classmethod
    def _template_not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("template must not be empty (use 'none' for standard [CLS] inputs)")
        return value

    @property
    def prompt_based(self) -> bool:
        """False when the run uses standard [CLS]-head inputs (``--template none``)."""
        return self.template is None or self.template.strip().lower() != NO_TEMPLATE

    def resolved_cache_dir(self) -> Path:
        """The cache directory: ``cache_dir``, else ``$KERNEL_BENCH_CACHE``, else ``~/.cache/kernel-bench``."""
        from benchmark.tracking import default_cache_dir

        return self.cache_dir or default_cache_dir()
