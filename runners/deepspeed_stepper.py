"""The training steps of a DeepSpeed rank: a `benchmark.distribution.Stepper` over ``deepspeed.initialize``.

The DeepSpeed worker (`runners.worker`) hands the engine a `Distribution` whose ``make_stepper``
is `deepspeed_distribution`'s: the fine-tuning loop then trains through a DeepSpeed engine (ZeRO
stage 0-2) with exactly the global batch, schedule and clipping of the local run.
"""

from __future__ import annotations

import copy
from functools import partial
from typing import Any

import torch
from torch import nn

from benchmark.distribution import Distribution, Schedule, TrainingOptions
from benchmark.training import check_global_batch
from registry import BenchError


def deepspeed_train_config(base: dict[str, Any], options: TrainingOptions, world_size: int) -> dict[str, Any]:
    """The DeepSpeed config of a training run: ``base`` (ZeRO stage, precision) + the run's batch and clipping.

    The global batch is ``options.batch_size`` whatever the number of ranks (one micro-batch of
    ``batch_size / world_size`` per rank, no gradient accumulation).
    """
    for key in ("optimizer", "scheduler"):
        if key in base:
            raise BenchError(
                f"the DeepSpeed config sets '{key}', but the method's options choose the optimizer and the "
                f"learning-rate schedule; remove '{key}' from the config"
            )
    stage = int(base.get("zero_optimization", {}).get("stage", 0))
    if stage not in (0, 1, 2):
        raise BenchError(f"ZeRO stage {stage} is not supported by the fine-tuning loop; use a stage 0, 1 or 2 config")
    check_global_batch(options.batch_size, world_size)
    config = copy.deepcopy(base)
    config.update(
        train_batch_size=options.batch_size,
        train_micro_batch_size_per_gpu=options.batch_size // world_size,
        gradient_accumulation_steps=1,
        gradient_clipping=options.max_grad_norm,
    )
    config.setdefault("zero_allow_untested_optimizer", True)
    config.setdefault("steps_per_print", 10**9)
    return config


class DeepSpeedStepper:
    """Forward / backward / step through a DeepSpeed engine (ZeRO stage 0-2); clipping is the engine's."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, schedule: Schedule,
                 options: TrainingOptions, *, config: dict[str, Any], world_size: int) -> None:
        import deepspeed

        self.engine, _, _, _ = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule),
            config=deepspeed_train_config(config, options, world_size),
            dist_init_required=False,
        )
        self.module = self.engine.module

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits of this rank's micro-batch."""
        return self.engine(**inputs)

    def backward(self, loss: torch.Tensor) -> None:
        """The engine's backward (gradients averaged over the ranks)."""
        self.engine.backward(loss)

    def step(self) -> float | None:
        """The engine's step; returns the global gradient norm it measured."""
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return None if norm is None else float(norm)

    def lr(self) -> float:
        """The learning rate of the first parameter group."""
        return float(self.engine.get_lr()[0])


def _deepspeed_stepper(model: nn.Module, optimizer: torch.optim.Optimizer, schedule: Schedule, options: TrainingOptions,
                       distribution: Distribution, *, config: dict[str, Any]) -> DeepSpeedStepper:
    return DeepSpeedStepper(model, optimizer, schedule, options, config=config, world_size=distribution.world_size)


def deepspeed_distribution(config: dict[str, Any], *, rank: int, world_size: int) -> Distribution:
    """The `Distribution` of a DeepSpeed rank: its place, and steppers built on ``config`` (a DeepSpeed config)."""
    return Distribution(rank=rank, world_size=world_size, make_stepper=partial(_deepspeed_stepper, config=config))
