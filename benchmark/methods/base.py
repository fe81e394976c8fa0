"""The method interface: a registered class with an options model and ``run(ctx) -> RunResult``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from registry import BenchError, TaskSpec

if TYPE_CHECKING:
    import torch

    from benchmark.config import RunConfig
    from benchmark.examples import Splits
    from benchmark.tracking import Tracker


class MethodOptions(BaseModel):
    """Base for a method's own options (``--opt name=value``); unknown options are an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass
class RunContext:
    """What a method receives: validated config, the task, its splits, where to log, the device."""

    config: RunConfig
    task: TaskSpec
    splits: Splits
    tracker: Tracker
    device: torch.device
    work_dir: Path
    launcher: str = "local"
    deepspeed_config: dict[str, Any] | None = None
    rank: int = 0
    world_size: int = 1


@dataclass
class RunResult:
    """What a method returns: final metrics, predictions per split, and extra artifact files."""

    metrics: dict[str, float]
    predictions: dict[str, list[int]] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    artifacts: list[Path] = field(default_factory=list)


class Method:
    """A benchmark method. Subclasses set ``name``, ``summary``, ``family`` and ``Options``."""

    name: ClassVar[str]
    summary: ClassVar[str]
    family: ClassVar[Literal["baseline", "kernel", "finetune"]]
    Options: ClassVar[type[MethodOptions]] = MethodOptions

    def __init__(self, options: MethodOptions) -> None:
        self.options = options

    @classmethod
    def from_config(cls, config: RunConfig) -> Method:
        """Build the method with its options validated from ``config.options``."""
        try:
            options = cls.Options.model_validate(config.options)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "options"
            known = ", ".join(cls.Options.model_fields) or "none"
            raise BenchError(
                f"bad option '{where}' for method '{cls.name}': {first['msg']} (options: {known})"
            ) from exc
        return cls(options)

    def run(self, ctx: RunContext) -> RunResult:
        """Run the method on ``ctx`` and return its metrics and predictions."""
        raise NotImplementedError
