"""Per-layer per-example gradient rules, registered per module type (as Opacus' ``grad_sample`` rules).

A rule turns one recorded call of a module (its input, and the gradient of the logits with respect
to its output) into every example's gradient of the module's parameters:

* ``nn.Linear``: ``dW_b = sum_t go[b, t]^T a[b, t]`` (one batched matrix product), ``db_b = sum_t go[b, t]``;
* ``nn.LayerNorm``: ``dw_b = sum_t go[b, t] * xhat[b, t]`` (``xhat``: the normalized input), ``db_b = sum_t go[b, t]``;
* ``nn.Embedding``: row ``ids[b, t]`` of ``dE_b`` gets ``go[b, t]`` (padding_idx rows get nothing).

``@register_grad_rule(ModuleType, kind=..., roles=...)`` adds a rule for another module type (one
rule per type); a module gets the rule of its class or of its nearest registered base class,
provided it keeps that class's ``forward``. `require_grad_rule` fails with a `BenchError` naming a
module type without a rule; the engine computes such parameters by a per-example autograd loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from registry import BenchError

LINEAR, EMBEDDING, LAYER_NORM = "linear", "embedding", "layer_norm"

#: (example index, table row id, row gradient ``[n, width]``) of a row-sparse use.
Entries = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
#: (left ``[B, T, m]``, right ``[B, T, n]``): per-token factors of a ``[m, n]`` per-example gradient.
Factors = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class GradRule:
    """How the per-example gradients of one module type's parameters come from a recorded call.

    ``dense(module, role, call, grad_out, target, first)`` writes (``first``) or adds every example's
    gradient of parameter ``role`` (``"weight"``, ``"bias"``) into ``target`` ``[B, numel]``;
    ``sparse(module, role, call, grad_out, batch)`` gives row-sparse entries, for the roles
    ``row_sparse(module, role, shape)`` allows (large tables touched in a few rows per example);
    ``accepts(module)`` turns configurations the rule does not cover away (they fall back);
    ``factors(module, role, call, grad_out, batch)``, for the roles in ``factor_roles``, gives the
    gradient as a product of two per-token factors, ``(left [B, T, m], right [B, T, n])`` with
    ``dW_b = left_b^T @ right_b`` (``[m, n]``, the parameter's shape): the engine can keep these
    (a layer's inputs and output gradients) instead of the ``m * n`` entries per example.
    """

    kind: str
    roles: frozenset[str]
    dense: Callable[[nn.Module, str, Call, torch.Tensor, torch.Tensor, bool], None]
    sparse: Callable[[nn.Module, str, Call, torch.Tensor, int], Entries] | None = None
    row_sparse: Callable[[nn.Module, str, tuple[int, ...]], bool] = lambda _m, _r, _s: False
    accepts: Callable[[nn.Module], bool] = lambda _m: True
    factors: Callable[[nn.Module, str, Call, torch.Tensor, int], Factors] | None = None
    factor_roles: frozenset[str] = frozenset()


#: Module class -> its rule.
GRAD_RULES: dict[type[nn.Module], GradRule] = {}


def register_grad_rule(
    module_type: type[nn.Module],
    *,
    kind: str,
    roles: tuple[str, ...] = ("weight", "bias"),
    sparse: Callable[[nn.Module, str, Call, torch.Tensor, int], Entries] | None = None,
    row_sparse: Callable[[nn.Module, str, tuple[int, ...]], bool] | None = None,
    accepts: Callable[[nn.Module], bool] | None = None,
    factors: Callable[[nn.Module, str, Call, torch.Tensor, int], Factors] | None = None,
    factor_roles: tuple[str, ...] = (),
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Decorator registering ``dense`` (see `GradRule`) as the rule of ``module_type``; a type has one rule."""
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise BenchError(f"a per-example gradient rule is registered for an nn.Module subclass, not {module_type!r}")

    def decorate(dense: Callable[..., None]) -> Callable[..., None]:
        if module_type in GRAD_RULES:
            raise BenchError(f"module type {module_type.__name__} already has a per-example gradient rule "
                             f"({GRAD_RULES[module_type].kind})")
        GRAD_RULES[module_type] = GradRule(
            kind, frozenset(roles), dense, sparse,
            row_sparse if row_sparse is not None else (lambda _m, _r, _s: False),
            accepts if accepts is not None else (lambda _m: True),
            factors, frozenset(factor_roles) if factors is not None else frozenset(),
        )
        return dense

    return decorate


def grad_rule(module: nn.Module) -> GradRule | None:
    """The rule for ``module``: of its class or nearest registered base whose ``forward`` it keeps; else None."""
    cls = type(module)
    for base in cls.__mro__:
        rule = GRAD_RULES.get(base)
        if rule is not None:
            return rule if cls.forward is base.forward and rule.accepts(module) else None
    return None


def supported_types() -> str:
    """The module types with a rule, for messages."""
    return ", ".join(sorted(t.__name__ for t in GRAD_RULES))


def require_grad_rule(module: nn.Module) -> GradRule:
    """The rule for ``module``; `BenchError` naming its type when there is none."""
    rule = grad_rule(module)
    if rule is None:
        raise BenchError(
            f"no per-example gradient rule for module type {type(module).__name__} (or this configuration of it); "
            f"rules exist for {supported_types()}. Register one with "
            "benchmark.kernels.per_example.register_grad_rule, or select none of its parameters"
        )
    return rule


def module_kind(module: nn.Module) -> str | None:
    """The kind (``linear``, ``embedding``, ``layer_norm``, a plugin rule's) of the rule for ``module``, if any."""
    rule = grad_rule(module)
    return rule.kind if rule is not None else None


@dataclass(frozen=True)
class Use:
    """A selected registration in a module with a rule: which module, its rule, weight or bias."""

    module: nn.Module
    rule: GradRule
    role: str

    @property
    def kind(self) -> str:
        """The rule's kind."""
        return self.rule.kind


@dataclass
class Call:
    """One recorded call of a module: its (detached) input and its output.

    ``key`` (the call's position in its forward pass) keys the output gradients, so that the output
    itself can be let go once they are computed (`Recorder.release_outputs`).
    """

    input: torch.Tensor
    output: torch.Tensor | None
    cache: dict[str, torch.Tensor] = field(default_factory=dict)
    key: int = 0


def _normalized(call: Call, module: nn.LayerNorm) -> torch.Tensor:
    if "xhat" not in call.cache:
        call.cache["xhat"] = F.layer_norm(call.input, module.normalized_shape, None, None, module.eps)
    return call.cache["xhat"]

def factors_of(use: Use, call: Call, grad_out: torch.Tensor, batch: int) -> Factors:
    """(left ``[B, T, m]``, right ``[B, T, n]``) of one call: ``dW_b = left_b^T @ right_b``."""
    if use.rule.factors is None or use.role not in use.rule.factor_roles:
        raise BenchError(f"the per-example gradient rule {use.rule.kind} has no factored form for '{use.role}'")
    return use.rule.factors(use.module, use.role, call, grad_out, batch)


def form_rows(
    target: torch.Tensor, left: torch.Tensor, right: torch.Tensor, rows: tuple[int, int], first: bool
) -> None:
    """Write (``first``) or add rows ``[r0, r1)`` of factored per-example gradients, ``left_b[:, r0:r1]^T @
    right_b`` (``left`` ``[B, T, m]``, ``right`` ``[B, T, n]``), into ``target`` ``[B, (r1 - r0) * n]``
    (its rows of any stride)."""
    r0, r1 = rows
    view = target.view(target.shape[0], r1 - r0, right.shape[-1])
    view.baddbmm_(left[..., r0:r1].transpose(1, 2), right, beta=0.0 if first else 1.0)


def write_dense(use: Use, call: Call, grad_out: torch.Tensor, target: torch.Tensor, first: bool) -> None:
    """Write (``first``) or add this call's per-example gradient into ``target`` ``[B, numel]``."""
    use.rule.dense(use.module, use.role, call, grad_out, target, first)


def sparse_entries(use: Use, call: Call, grad_out: torch.Tensor, batch: int) -> Entries:
    """(example index, row id, row gradient ``[n, width]``) of one use of a row-sparse tensor."""
    if use.rule.sparse is None:
        raise BenchError(f"the per-example gradient rule {use.rule.kind} has no row-sparse form")
    return use.rule.sparse(use.module, use.role, call, grad_out, batch)


#: Products go example by example over the live tokens only when that drops at least this share of them.
MIN_TRIMMED = 1 / 8


def live_tokens(grads: Sequence[torch.Tensor]) -> list[tuple[int, int]] | None:
    """Per example, the span ``[lo, hi)`` of token positions where any of ``grads`` (each ``[B, T, m]``)
    is non-zero; ``None`` to keep the batch whole.

    A token whose output gradient is zero adds exactly nothing to ``go^T a`` (padding, which the
    attention mask cuts off from the logits), so an example's product may run over its live span
    alone. ``None`` when that would drop less than `MIN_TRIMMED` of the batch's positions, and off
    the CPU (there one product per example costs more in launches than the padding does).
    """
    first = grads[0]
    if first.device.type != "cpu" or first.dim() != 3 or first.shape[1] < 2:
        return None
    live = first.ne(0).any(dim=2)
    for go in grads[1:]:
        live |= go.ne(0).any(dim=2)
    positions = live.shape[1]
    found = live.any(dim=1)
    lo = torch.where(found, live.to(torch.int8).argmax(dim=1), 0)
    hi = torch.where(found, positions - live.flip(1).to(torch.int8).argmax(dim=1), 0)
    spans = list(zip(lo.tolist(), hi.tolist(), strict=True))
    if sum(h - lo_ for lo_, h in spans) > (1 - MIN_TRIMMED) * positions * len(spans):
        return None
    return spans


def _put(target: torch.Tensor, value: torch.Tensor, first: bool) -> None:
    target.copy_(value) if first else target.add_(value)


def _linear_sparse(module: nn.Module, role: str, call: Call, grad_out: torch.Tensor, batch: int) -> Entries:
    out_features = module.out_features  # type: ignore[union-attr]
    go = grad_out.reshape(batch, -1, out_features)
    cols = go.ne(0).any(dim=1).any(dim=0).nonzero().squeeze(1)
    go = go.index_select(2, cols)
    k = cols.numel()
    rows = torch.arange(batch, device=go.device).repeat_interleave(k)
    ids = cols.repeat(batch)
    if role == "bias":
        return rows, ids, go.sum(1).reshape(batch * k, 1)
    act = call.input.reshape(batch, -1, module.in_features)  # type: ignore[union-attr]
    values = torch.bmm(go.transpose(1, 2), act)  # [B, k, in]
    return rows, ids, values.reshape(batch * k, -1)


def _linear_factors(module: nn.Module, _role: str, call: Call, grad_out: torch.Tensor, batch: int) -> Factors:
    """``dW_b = go_b^T a_b``: the output gradients and the inputs, token by token."""
    go = grad_out.reshape(batch, -1, module.out_features)  # type: ignore[union-attr]
    return go, call.input.reshape(batch, -1, module.in_features)  # type: ignore[union-attr]


@register_grad_rule(
    nn.Linear, kind=LINEAR, sparse=_linear_sparse,
    row_sparse=lambda module, _role, shape: module.out_features == shape[0],  # type: ignore[union-attr]
    factors=_linear_factors, factor_roles=("weight",),
)
def _linear(
    module: nn.Module, role: str, call: Call, grad_out: torch.Tensor, target: torch.Tensor, first: bool
) -> None:
    """``dW_b = sum_t go[b, t]^T a[b, t]`` (one batched product, or one per example over its live
    tokens: `live_tokens`), ``db_b = sum_t go[b, t]``."""
    batch = target.shape[0]
    out_features = module.out_features  # type: ignore[union-attr]
    go = grad_out.reshape(batch, -1, out_features)
    if role == "bias":
        _put(target, go.sum(1), first)
        return
    in_features = module.in_features  # type: ignore[union-attr]
    act = call.input.reshape(batch, -1, in_features)
    view = target.view(batch, out_features, in_features)
    spans = live_tokens([go])
    if spans is None:
        view.baddbmm_(go.transpose(1, 2), act, beta=0.0 if first else 1.0)
        return
    for b, (lo, hi) in enumerate(spans):  # over each example's live tokens only
        if hi > lo:
            view[b].addmm_(go[b, lo:hi].t(), act[b, lo:hi], beta=0.0 if first else 1.0)
        elif first:
            view[b].zero_()


@register_grad_rule(nn.LayerNorm, kind=LAYER_NORM)
def _layer_norm(
    module: nn.Module, role: str, call: Call, grad_out: torch.Tensor, target: torch.Tensor, first: bool
) -> None:
    """``dw_b = sum_t go[b, t] * xhat[b, t]``, ``db_b = sum_t go[b, t]``."""
    batch = target.shape[0]
    size = math.prod(module.normalized_shape)  # type: ignore[union-attr]
    go = grad_out.reshape(batch, -1, size)
    if role == "bias":
        _put(target, go.sum(1), first)
        return
    _put(target, (go * _normalized(call, module).reshape(batch, -1, size)).sum(1), first)  # type: ignore[arg-type]


def _embedding_sparse(module: nn.Module, _role: str, call: Call, grad_out: torch.Tensor, batch: int) -> Entries:
    return embedding_entries(module, call, grad_out, batch)  # type: ignore[arg-type]


@register_grad_rule(
    nn.Embedding, kind=EMBEDDING, roles=("weight",), sparse=_embedding_sparse,
    row_sparse=lambda _module, role, shape: role == "weight" and len(shape) == 2,
    accepts=lambda module: module.max_norm is None and not module.scale_grad_by_freq,  # type: ignore[union-attr]
)
def _embedding(
    module: nn.Module, _role: str, call: Call, grad_out: torch.Tensor, target: torch.Tensor, first: bool
) -> None:
    """Row ``ids[b, t]`` of ``dE_b`` gets ``go[b, t]`` (padding_idx rows get nothing)."""
    batch = target.shape[0]
    if first:
        target.zero_()
    rows, ids, values = embedding_entries(module, call, grad_out, batch)  # type: ignore[arg-type]
    num, dim = module.weight.shape  # type: ignore[union-attr]
    target.view(batch, num, dim).index_put_((rows, ids), values, accumulate=True)


def embedding_entries(
    module: nn.Embedding, call: Call, grad_out: torch.Tensor, batch: int
) -> Entries:
    """(example index, row id, row gradient) for every looked-up position except padding_idx."""
    dim = module.embedding_dim
    ids = call.input.reshape(batch, -1)
    values = grad_out.reshape(batch, -1, dim)
    rows = torch.arange(batch, device=ids.device).unsqueeze(1).expand_as(ids)
    if module.padding_idx is not None:
        keep = ids != module.padding_idx
        return rows[keep], ids[keep], values[keep]
    return rows.reshape(-1), ids.reshape(-1), values.reshape(-1, dim)
