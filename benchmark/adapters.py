"""LoRA adapters: their options and the function that injects them into a masked LM (``peft``).

Shared by the LoRA fine-tuning methods (``lora-sgd``, ``lora-adam``) and the LoRA kernel methods
(``lora-ntk-sgd``, ``lora-ntk-adam``), which differentiate the adapters at their initialisation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from pydantic import Field
from torch import nn

from benchmark.method import MethodOptions
from registry import BenchError


class LoraOptions(MethodOptions):
    """The LoRA adapters of a method: rank, scaling, dropout and the modules that get them."""

    lora_r: int = Field(default=8, ge=1, description="LoRA rank")
    lora_alpha: float = Field(default=16.0, gt=0, description="LoRA scaling numerator (scale = alpha / r)")
    lora_dropout: float = Field(default=0.0, ge=0, lt=1, description="dropout on the LoRA input")
    lora_targets: list[str] = Field(
        default_factory=lambda: ["query", "value"], description="module names that get adapters (attention projections)"
    )


#: The option names that describe the adapters (they change the model, not the training).
LORA_FIELDS = frozenset(LoraOptions.model_fields)


def lora_adapter(options: LoraOptions, seed: int) -> Callable[[nn.Module], nn.Module]:
    """A function that injects LoRA layers (initialised from ``seed``) into a masked LM, in place."""

    def adapt(mlm: nn.Module) -> nn.Module:
        from peft import LoraConfig, inject_adapter_in_model

        targets = list(options.lora_targets)
        linear = sorted({name.rsplit(".", 1)[-1] for name, m in mlm.named_modules() if isinstance(m, nn.Linear)})
        if not any(name == t or name.endswith("." + t) for name, _ in mlm.named_modules() for t in targets):
            raise BenchError(
                f"LoRA targets {targets} match no module of {type(mlm).__name__}; its linear layers are named "
                f"{linear}: pass --opt 'lora_targets=[\"...\"]' with the attention projections"
            )
        config = LoraConfig(
            r=options.lora_r,
            lora_alpha=options.lora_alpha,
            lora_dropout=options.lora_dropout,
            target_modules=targets,
            bias="none",
        )
        torch.manual_seed(seed)
        try:
            return inject_adapter_in_model(config, mlm)
        except ValueError as exc:
            raise BenchError(f"cannot add LoRA to {type(mlm).__name__}: {str(exc).splitlines()[0]}") from exc

    return adapt
