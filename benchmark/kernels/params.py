"""Which parameters count in a kernel: presets, custom predicates, and tied-parameter bookkeeping.

A *registration* is one place where a parameter tensor is registered: a (module, attribute) pair,
named by the module's first path in ``model.named_modules()`` plus the attribute. A tied tensor
(the MLM decoder weight and the word embeddings) has several registrations; a module reachable
under two paths (``PromptLogitModel.encoder`` and ``PromptLogitModel.mlm.roberta``) is one
registration, named by its first path.

Selection is made per registration, as in the reference code (which turns the rejected
registrations into buffers): with ``"no-embeddings"`` the word-embedding registration of the tied
matrix is dropped while its decoder registration stays, so the kernel sees the gradient of the
decoder use only. When every registration of a tensor is selected, the kernel sees the tensor's
full gradient (the sum over all its uses).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from registry import BenchError

ParamsSpec = str | Sequence[str] | Callable[[str], bool] | None

PRESETS: dict[str, str] = {
    "all": "every parameter",
    "no-embeddings": "drop registrations whose name contains 'embed' (word/position/type embeddings, their LayerNorm)",
    "no-head": "drop the MLM head / classifier ('head' in the name, or under 'cls.' / 'classifier.')",
    "biases": "only biases (BitFit-style kernel)",
    "lora": "only LoRA adapter weights (peft 'lora_' parameters); the model must carry adapters",
    "lora+head": "LoRA adapters plus the head, what the reference's --apply_lora kernel differentiates",
}


def _is_head(name: str) -> bool:
    first = name.split(".", 1)[0]
    return "head" in name or first in {"cls", "classifier"}


def _is_lora(name: str) -> bool:
    return "lora_" in name


_PREDICATES: dict[str, Callable[[str], bool]] = {
    "all": lambda name: True,
    "no-embeddings": lambda name: "embed" not in name,
    "no-head": lambda name: not _is_head(name),
    "biases": lambda name: "bias" in name.rsplit(".", 1)[-1],
    "lora": _is_lora,
    "lora+head": lambda name: _is_lora(name) or _is_head(name),
}


def _normalize(preset: str) -> str:
    key = preset.strip().lower().replace("_", "-")
    aliases = {"no-embedding": "no-embeddings", "bias": "biases", "only-biases": "biases", "peft": "lora"}
    return aliases.get(key, key)


def params_predicate(params: ParamsSpec) -> Callable[[str], bool]:
    """A predicate on registration names for ``params``.

    ``params`` is None (all), a preset name from `PRESETS`, a sequence of presets (all must
    accept, e.g. ``("no-embeddings", "no-head")``), or a callable on the qualified name.
    """
    if params is None:
        return _PREDICATES["all"]
    if callable(params):
        return params
    presets = [params] if isinstance(params, str) else list(params)
    if not presets:
        raise BenchError(f"params must name at least one preset; choose from {', '.join(PRESETS)}")
    predicates = []
    for preset in presets:
        if not isinstance(preset, str) or _normalize(preset) not in _PREDICATES:
            raise BenchError(f"unknown params choice '{preset}'; choose from {', '.join(PRESETS)} or pass a callable")
        predicates.append(_PREDICATES[_normalize(preset)])
    if len(predicates) == 1:
        return predicates[0]
    return lambda name: all(predicate(name) for predicate in predicates)


def params_tag(params: ParamsSpec) -> str:
    """A stable string naming ``params`` (for cache keys); callables use their qualified name."""
    if params is None:
        return "all"
    if callable(params):
        return f"callable:{getattr(params, '__module__', '?')}.{getattr(params, '__qualname__', repr(params))}"
    presets = [params] if isinstance(params, str) else list(params)
    return "+".join(_normalize(p) for p in presets)


@dataclass(frozen=True)
class Registration:
    """One (module, attribute) place where a parameter tensor is registered."""

    name: str
    module: nn.Module
    attr: str


@dataclass
class SelectedTensor:
    """A parameter tensor with at least one selected registration."""

    tensor: torch.Tensor
    registrations: list[Registration]
    selected: list[Registration] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The first selected registration's name (how the tensor is reported)."""
        return self.selected[0].name

    @property
    def full(self) -> bool:
        """True when every registration is selected: the kernel uses the tensor's total gradient."""
        return len(self.selected) == len(self.registrations)

    @property
    def numel(self) -> int:
        """Number of entries."""
        return self.tensor.numel()


def registrations(model: nn.Module) -> list[tuple[torch.Tensor, list[Registration]]]:
    """Every parameter tensor of ``model`` with all its registrations, in registration order."""
    by_tensor: dict[int, tuple[torch.Tensor, list[Registration]]] = {}
    for module_name, module in model.named_modules():
        for attr, tensor in module._parameters.items():
            if tensor is None:
                continue
            name = f"{module_name}.{attr}" if module_name else attr
            entry = by_tensor.setdefault(id(tensor), (tensor, []))
            entry[1].append(Registration(name, module, attr))
    return list(by_tensor.values())


def select_parameters(model: nn.Module, params: ParamsSpec = None) -> list[SelectedTensor]:
    """The tensors (and registrations) that ``params`` selects; raises `BenchError` if none.

    ``params="lora"`` (or ``"lora+head"``) on a model without LoRA adapters is an error rather
    than an empty or silently different selection.
    """
    predicate = params_predicate(params)
    tag = params_tag(params)
    all_regs = registrations(model)
    if "lora" in tag.split("+") and not any(_is_lora(r.name) for _, regs in all_regs for r in regs):
        raise BenchError(
            f"params='{tag}' asks for LoRA adapters but the model has none; wrap the masked LM with "
            "peft (get_peft_model with a LoraConfig) first, or choose params='all'"
        )
    selected: list[SelectedTensor] = []
    for tensor, regs in all_regs:
        chosen = [r for r in regs if predicate(r.name)]
        if chosen:
            selected.append(SelectedTensor(tensor, regs, chosen))
    if not selected:
        raise BenchError(f"params='{tag}' selects no parameter of {type(model).__name__}; check the choice")
    return selected
