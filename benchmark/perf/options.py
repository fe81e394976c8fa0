"""What `bench perf kernel` and `bench perf train` are asked to measure, validated once at the edge.

These models import neither torch nor the engine, so building them (and refusing bad input with
one line) costs nothing; the measurements live in `benchmark.perf.kernel` and `benchmark.perf.train`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from registry import BenchError, first_error

PRESETS = ("small", "roberta-base")


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KernelBenchOptions(_Options):
    """`bench perf kernel`: the fast eNTK strategy against the reference one, its floor and its error."""

    model: str | None = Field(default=None, description="registered backbone (e.g. bert-tiny) or model directory")
    preset: Literal["small", "roberta-base"] = "small"
    n_train: int = Field(default=32, ge=1)
    n_eval: int = Field(default=1000, ge=1)
    seq_len: int = Field(default=64, ge=4)
    num_labels: int = Field(default=2, ge=1)
    threads: int = Field(default=1, ge=1)
    formulas: tuple[str, ...] = ("sgd",)
    params: str = "all"
    memory_budget: str | None = None
    batch_size: int = Field(default=16, ge=1)
    ref_eval: int = Field(default=64, ge=1)
    ref_train_batch: int = Field(default=1, ge=1)
    ref_full: bool = False
    reference: bool = True
    floor: bool = True
    plan_only: bool = False
    error_sub: int = Field(default=4, ge=0)
    device: str = "cpu"
    dtype: Literal["float32", "float64"] = "float32"
    seed: int = 0
    progress: bool = False

    @field_validator("formulas", mode="before")
    @classmethod
    def _split_formulas(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list | tuple) and not value:
            raise ValueError("give at least one formula (sgd, signgd, asym)")
        return value


class TrainBenchOptions(_Options):
    """`bench perf train`: the suite's fine-tuning step against a plain loop that scores the mask only."""

    model: str = Field(default="bert-tiny", description="registered backbone or model directory")
    batch_size: int = Field(default=8, ge=1)
    examples: int = Field(default=64, ge=1)
    words: int = Field(default=40, ge=2)
    steps: int = Field(default=60, ge=1)
    rounds: int = Field(default=3, ge=1)
    check_steps: int = Field(default=2, ge=0)
    full_vocab: bool = False
    threads: int | None = Field(default=None, ge=1)
    seed: int = 13


def validated(schema: type[BaseModel], /, **values: object) -> BaseModel:
    """``schema(**values)``; a validation error becomes one `BenchError` line naming the command-line option."""
    try:
        return schema(**values)
    except ValidationError as exc:
        where, message = first_error(exc, "option")
        option = "--" + str(where).split(".")[0].replace("_", "-")
        raise BenchError(f"{option}: {message}") from None
