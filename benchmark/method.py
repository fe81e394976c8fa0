"""The method interface: a registered class with an options model and ``run(ctx) -> RunResult``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from benchmark.distribution import LOCAL, Distribution
from registry import BenchError, TaskSpec, first_error

if TYPE_CHECKING:
    import torch

    from benchmark.config import RunConfig
    from benchmark.examples import Splits
    from benchmark.resolve import ResolvedRun
    from benchmark.tracking import Tracker


#: Option roles, set on a field with ``Field(..., json_schema_extra=role(...))``. Every option is
#: part of a run's identity (its config hash) unless it is a ``MEASUREMENT``: one that adds
#: measurements or records to a run without changing its numbers. ``SOLVER`` options of kernel
#: methods change the run's numbers but not its kernels (they are left out of the kernel cache key).
IDENTITY = "identity"
MEASUREMENT = "measurement"
SOLVER = "solver"


def role(name: str) -> dict[str, str]:
    """The ``json_schema_extra`` marking an option's role (`MEASUREMENT`, `SOLVER`)."""
    if name not in (IDENTITY, MEASUREMENT, SOLVER):
        raise ValueError(f"unknown option role '{name}'")
    return {"role": name}


class MethodOptions(BaseModel):
    """Base for a method's own options (``--opt name=value``); unknown options are an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @classmethod
    def field_role(cls, name: str) -> str:
        """The role of option ``name`` (`IDENTITY` unless its field says otherwise)."""
        extra = cls.model_fields[name].json_schema_extra
        return extra.get("role", IDENTITY) if isinstance(extra, dict) else IDENTITY  # type: ignore[return-value]

    @classmethod
    def fields_with_role(cls, *roles: str) -> list[str]:
        """The option names whose role is one of ``roles``."""
        return [name for name in cls.model_fields if cls.field_role(name) in roles]

    def identity(self, *, exclude_roles: tuple[str, ...] = (MEASUREMENT,)) -> dict[str, Any]:
        """Every option (defaults included, as JSON) except those of ``exclude_roles``."""
        return self.model_dump(mode="json", exclude=set(self.fields_with_role(*exclude_roles)))


@dataclass
class RunContext:
    """What a method receives: the resolved run, its splits, where to log, the device, its place among the ranks."""

    run: ResolvedRun
    splits: Splits
    tracker: Tracker
    device: torch.device
    work_dir: Path
    distribution: Distribution = LOCAL

    @property
    def config(self) -> RunConfig:
        """The run's canonical config (names folded, paths absolute)."""
        return self.run.config

    @property
    def task(self) -> TaskSpec:
        """The run's task spec."""
        return self.run.task


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
    #: Whether a 2-class task uses one logit-difference output when ``--binary`` is not given.
    binary_default: ClassVar[bool] = False
    #: Whether the method reads the backbone (then its tokenizer is loaded up front to check the prompt).
    uses_backbone: ClassVar[bool] = True
    #: The method this one is the kernel analog of (``ntk-sgd`` -> ``ft-sgd``): the leaderboard pairs them.
    analog_of: ClassVar[str | None] = None
    #: Where the method sits in tables (lower first); ties go by name.
    display_order: ClassVar[int] = 1000
    #: Options a sweep sets for this method unless the sweep gives them (e.g. diagnostics for fine-tuning).
    sweep_defaults: ClassVar[dict[str, Any]] = {}
    #: Whether ``run`` shares its work across the ranks of ``ctx.distribution`` (data-parallel training,
    #: kernel rows); a method without it runs whole on every rank of a multi-rank launch (rank 0 logs).
    distributed: ClassVar[bool] = False

    def __init__(self, options: MethodOptions) -> None:
        self.options = options

    @classmethod
    def from_config(cls, config: RunConfig) -> Method:
        """Build the method with its options validated from ``config.options``."""
        try:
            options = cls.Options.model_validate(config.options)
        except ValidationError as exc:
            where, message = first_error(exc, "options")
            known = ", ".join(cls.Options.model_fields) or "none"
            raise BenchError(
                f"bad option '{where}' for method '{cls.name}': {message} (options: {known})"
            ) from exc
        return cls(options)

    def check(self, run: ResolvedRun) -> None:
        """Validate what can be checked before a run exists (files, budgets); raise `BenchError`."""

    def check_inputs(self, run: ResolvedRun, splits: Splits) -> None:
        """Validate the run against its loaded splits, still before a run exists; raise `BenchError`."""

    def check_world_size(self, world_size: int) -> None:
        """Check, before a multi-rank launch starts, that the options suit ``world_size`` ranks; raise `BenchError`."""

    def identity_extra(self, run: ResolvedRun) -> dict[str, Any]:
        """Content that changes this method's numbers beyond its options (e.g. a digest of input files)."""
        return {}

    def run(self, ctx: RunContext) -> RunResult:
        """Run the method on ``ctx`` and return its metrics and predictions."""
        raise NotImplementedError
