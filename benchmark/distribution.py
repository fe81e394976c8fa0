"""What a method needs from distribution: its rank, the world size, and a way to build the optimizer stepper.

A method never learns which launcher started it. It receives one `Distribution` in its
`RunContext`: ``rank`` and ``world_size`` (to split evaluation or kernel rows, and to let only
rank 0 write files), and ``make_stepper``, which wraps a model and its optimizer into a `Stepper`
(forward, backward, optimizer step, learning rate). The default, `torch_stepper`, is the engine's
own: one process, or plain ``torch.distributed`` ranks whose gradients are all-reduced. A runner
that trains through another engine injects its own factory (the DeepSpeed worker injects one built
on ``deepspeed.initialize``, `runners.deepspeed_stepper`); the engine never imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch
    from torch import nn

Schedule = Callable[[int], float]
"""The learning-rate multiplier at an optimizer step."""


class TrainingOptions(Protocol):
    """What a stepper reads of a run's options (`benchmark.training.TrainingOptions`; not imported: no cycle)."""

    @property
    def batch_size(self) -> int:
        """The global batch size (all ranks together)."""
        ...

    @property
    def max_grad_norm(self) -> float:
        """The gradient-norm clip (0 = off)."""
        ...


class Stepper(Protocol):
    """Forward / backward / optimizer step of one training run; ``module`` is the model being trained."""

    module: nn.Module

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits of this rank's micro-batch."""
        ...

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate ``loss``; afterwards the gradients are the average over the ranks."""
        ...

    def step(self) -> float | torch.Tensor | None:
        """Clip, step the optimizer and the schedule, zero the gradients; returns the gradient norm (if known)."""
        ...

    def lr(self) -> float:
        """The learning rate the next step uses."""
        ...


class StepperFactory(Protocol):
    """Builds the `Stepper` of a training run (``Distribution.make_stepper``)."""

    def __call__(self, model: nn.Module, optimizer: torch.optim.Optimizer, schedule: Schedule,
                 options: TrainingOptions, distribution: Distribution) -> Stepper:
        """Wrap ``model`` and ``optimizer`` (stepped by ``schedule``) for the ranks of ``distribution``."""
        ...


class TorchStepper:
    """The engine's stepper: one process, or ``torch.distributed`` ranks with all-reduced gradients."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, schedule: Schedule,
                 options: TrainingOptions, world_size: int) -> None:
        import torch

        self.module = model
        self.optimizer = optimizer
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        self.max_grad_norm = options.max_grad_norm
        self.world_size = world_size
        self.params = [p for group in optimizer.param_groups for p in group["params"]]

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits of this rank's micro-batch."""
        return self.module(**inputs)

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate, then average the gradients over the ranks (one flat all-reduce)."""
        import torch

        loss.backward()
        if self.world_size > 1:
            for p in self.params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            grads = [p.grad for p in self.params]
            flat = torch.cat([g.reshape(-1) for g in grads])
            torch.distributed.all_reduce(flat)
            flat /= self.world_size
            offset = 0
            for g in grads:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()

    def step(self) -> torch.Tensor | None:
        """Clip the global gradient norm (unless 0), step, zero the gradients; returns the norm before clipping."""
        import torch

        norm = None
        if self.max_grad_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def lr(self) -> float:
        """The learning rate of the first parameter group."""
        return float(self.scheduler.get_last_lr()[0])


def torch_stepper(model: nn.Module, optimizer: torch.optim.Optimizer, schedule: Schedule, options: TrainingOptions,
                  distribution: Distribution) -> Stepper:
    """The default `StepperFactory`: a `TorchStepper` over ``distribution.world_size`` ranks."""
    return TorchStepper(model, optimizer, schedule, options, distribution.world_size)


@dataclass(frozen=True)
class Distribution:
    """Where this process sits among the ranks of a run, and how its training steps are taken."""

    rank: int = 0
    world_size: int = 1
    make_stepper: StepperFactory = torch_stepper

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside a world of {self.world_size} process(es)")

    @property
    def distributed(self) -> bool:
        """True when several ranks run the method together."""
        return self.world_size > 1

    def stepper(self, model: nn.Module, optimizer: torch.optim.Optimizer, schedule: Schedule,
                options: TrainingOptions) -> Stepper:
        """The `Stepper` of a training run on this process's rank."""
        return self.make_stepper(model, optimizer, schedule, options, self)


#: One process, the engine's own stepper.
LOCAL = Distribution()
