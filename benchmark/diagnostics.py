"""Kernel-regime diagnostics of a fine-tuning run: is fine-tuning described by its kernel?

With theta_0 the weights fine-tuning starts from (pre-trained, after any head initialisation) and
theta_FT the reported (best-dev) checkpoint, over the trained parameters only:

1. **Linearization** on test: f_lin(x) = f(x; theta_0) + J(x; theta_0) (theta_FT - theta_0), one
   forward-mode `torch.func.jvp` along the weight difference per batch. Reported: its accuracy
   (``diag_lin_test_acc``), its agreement with the fine-tuned model's predictions
   (``diag_lin_agreement``) and the relative logit error ``||f_FT - f_lin|| / ||f_FT - f_0||``
   (``diag_lin_rel_error``; 0 when fine-tuning is exactly linear in the weights).
2. **Kernel drift** ("fixed features") on train: the eNTK of the matching formula (``sgd`` for SGD
   runs, ``asym`` -- A-SignGD, sign on the train side -- for Adam runs) at theta_0 and at theta_FT:
   relative Frobenius distance ``||K_FT - K_0|| / ||K_0||`` (``diag_kernel_drift``) and alignment
   ``<K_0, K_FT> / (||K_0|| ||K_FT||)`` (``diag_kernel_alignment``, 1 = same kernel up to scale).
3. **Movement** ``||theta_FT - theta_0|| / ||theta_0||`` overall (``diag_movement``), per coarse
   group (``diag_movement_embeddings`` / ``_encoder`` / ``_head`` / ``_lora``) and per fine group
   (``movement/<group>``: ``embeddings``, ``layer_<i>``, ``head``, ``lora``, ``other``).

The ``diag_*`` metrics are what the leaderboard shows as diagnostics columns; everything, with the
norms behind each ratio, also goes to the run's ``diagnostics.json`` artifact. The fourth number of
the paper's comparison, the share of fine-tuning's gain the kernel analog recovers, needs two runs
and is computed by the leaderboard's paired view (``leaderboard.aggregate.recovered_share``).

This module is the math only: it takes a model, a theta_0 snapshot and batches, and imports no
method, run or MLflow code. `compute_diagnostics` is its entry point; the fine-tuning methods call it
at the end of a run (``--opt diagnostics=true``, `benchmark.methods.finetune.finetune_diagnostics`,
which also picks the formula from the method metadata), and ``bench diagnose --run-id``
(`benchmark.finetuned.diagnose_run`) on a saved run rebuilt at theta_0 and theta_FT.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from tqdm.auto import tqdm

from benchmark.metrics import predict_labels
from registry import BenchError

if TYPE_CHECKING:
    from benchmark.prompts import EncodedSplit
    from benchmark.tracking import Tracker

ARTIFACT = "diagnostics.json"
COARSE_GROUPS = ("embeddings", "encoder", "head", "lora")

Batch = Mapping[str, torch.Tensor]


@dataclass
class Diagnostics:
    """The diagnostics of one run: headline ``diag_*`` metrics, other metrics, and the JSON details."""

    metrics: dict[str, float]
    extra: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def all_metrics(self) -> dict[str, float]:
        """Headline and extra metrics together (what is logged to MLflow)."""
        return {**self.metrics, **self.extra}


# -------------------------------------------------------------------------------------------- movement


_LAYER = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\.")


def parameter_group(name: str) -> str:
    """The fine group of a parameter name: ``lora``, ``head``, ``embeddings``, ``layer_<i>`` or ``other``."""
    if "lora_" in name:
        return "lora"
    first = name.split(".", 1)[0]
    if first in ("head", "classifier", "cls", "lm_head") or ".cls." in name or ".lm_head." in name:
        return "head"
    if "embeddings" in name:
        return "embeddings"
    match = _LAYER.search(name)
    if match:
        return f"layer_{int(match.group(1))}"
    return "other"


def coarse_group(group: str) -> str:
    """``embeddings``, ``head`` and ``lora`` stay; encoder layers (and anything else) are ``encoder``."""
    return group if group in ("embeddings", "head", "lora") else "encoder"


def _ratio(numerator: float, denominator: float) -> float:
    if denominator > 0:
        return numerator / denominator
    return 0.0 if numerator == 0 else math.inf


def movement(theta_0: Mapping[str, torch.Tensor], theta_ft: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """``||theta_FT - theta_0|| / ||theta_0||`` overall, per fine group and per coarse group.

    Returns ``{"overall": entry, "groups": {group: entry}, "coarse": {group: entry}}`` with each entry
    ``{"delta_norm", "theta0_norm", "relative", "numel"}`` (norms in float64).
    """
    missing = sorted(set(theta_0) ^ set(theta_ft))
    if missing:
        raise BenchError(f"theta_0 and theta_FT hold different parameters: {missing[:5]}")
    sums: dict[tuple[str, str], list[float]] = {}

    def add(kind: str, key: str, delta: float, base: float, numel: int) -> None:
        entry = sums.setdefault((kind, key), [0.0, 0.0, 0])
        entry[0] += delta
        entry[1] += base
        entry[2] += numel

    for name, start in theta_0.items():
        end = theta_ft[name].detach().to("cpu", torch.float64)
        start64 = start.detach().to("cpu", torch.float64)
        delta, base = float((end - start64).pow(2).sum()), float(start64.pow(2).sum())
        group = parameter_group(name)
        add("overall", "all", delta, base, start.numel())
        add("groups", group, delta, base, start.numel())
        add("coarse", coarse_group(group), delta, base, start.numel())

    def entry(values: list[float]) -> dict[str, float]:
        delta, base = math.sqrt(values[0]), math.sqrt(values[1])
        return {"delta_norm": delta, "theta0_norm": base, "relative": _ratio(delta, base), "numel": int(values[2])}

    out: dict[str, Any] = {"overall": entry(sums[("overall", "all")]), "groups": {}, "coarse": {}}
    for (kind, key), values in sums.items():
        if kind != "overall":
            out[kind][key] = entry(values)
    out["groups"] = dict(sorted(out["groups"].items(), key=lambda kv: _group_rank(kv[0])))
    return out


def _group_rank(group: str) -> tuple[int, int]:
    if group == "embeddings":
        return (0, 0)
    if group.startswith("layer_"):
        return (1, int(group[6:]))
    return ({"other": 2, "lora": 3, "head": 4}.get(group, 5), 0)


# ---------------------------------------------------------------------------------------- linearization


def _trained(model: nn.Module, theta_0: Mapping[str, torch.Tensor]) -> dict[str, nn.Parameter]:
    params = dict(model.named_parameters())
    missing = [name for name in theta_0 if name not in params]
    if missing:
        raise BenchError(f"theta_0 names parameters the model does not have: {missing[:5]}")
    return {name: params[name] for name in theta_0}


def linearized_logits(
    model: nn.Module,
    theta_0: Mapping[str, torch.Tensor],
    batches: Iterable[Batch],
    *,
    progress: bool = False,
    total: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(f_0, f_lin, f_FT)`` logits ``[N, C]`` (float64, CPU) of ``model`` on ``batches``.

    ``model`` holds theta_FT; ``theta_0`` maps the names of the trained parameters to their
    starting values (other parameters are the same at both points). f_0 and the Jacobian-vector
    product J(x; theta_0) (theta_FT - theta_0) come from one `torch.func.jvp` per batch, so the
    model must run under forward-mode AD (eager attention, no dropout: it is put in eval mode).
    """
    from torch.func import functional_call, jvp

    from benchmark.kernels.params import select_parameters

    trained = _trained(model, theta_0)
    name_of = {id(p): name for name, p in trained.items()}
    # Every registration of each trained tensor (tied decoder, encoder reachable under two paths), passed
    # with tie_weights=False: functional_call's own tie handling leaves plain tensors in place of the
    # parameters of a module reachable under two paths (PromptLogitModel.encoder / .mlm.<base>).
    selection = select_parameters(model, trained_params_predicate(model, trained))
    names = [name_of[id(sel.tensor)] for sel in selection]
    registrations = [[reg.name for reg in sel.registrations] for sel in selection]
    was_training = model.training
    model.eval()
    f0_rows, lin_rows, ft_rows = [], [], []
    try:
        primals = tuple(theta_0[n].detach().to(trained[n].device, trained[n].dtype) for n in names)
        tangents = tuple(trained[n].detach() - p for n, p in zip(names, primals, strict=True))
        for batch in tqdm(batches, desc="linearize", total=total, leave=False, disable=None if progress else True):

            def apply(*values: torch.Tensor, batch: Batch = batch) -> torch.Tensor:
                mapping = {reg: v for v, regs in zip(values, registrations, strict=True) for reg in regs}
                return functional_call(model, mapping, args=(), kwargs=dict(batch), tie_weights=False, strict=False)

            f0, direction = jvp(apply, primals, tangents)
            with torch.no_grad():
                f_ft = model(**batch)
            f0_rows.append(f0.detach().to("cpu", torch.float64))
            lin_rows.append((f0.detach().double() + direction.detach().double()).cpu())
            ft_rows.append(f_ft.detach().to("cpu", torch.float64))
    finally:
        model.train(was_training)
    if not f0_rows:
        raise BenchError("no examples to linearize the model on")
    return torch.cat(f0_rows), torch.cat(lin_rows), torch.cat(ft_rows)


def linearization_metrics(
    f0: torch.Tensor, f_lin: torch.Tensor, f_ft: torch.Tensor, labels: torch.Tensor
) -> dict[str, float]:
    """Accuracy of f_lin, f_FT and f_0, agreement of f_lin with f_FT, and the relative logit error.

    ``rel_error = ||f_FT - f_lin|| / ||f_FT - f_0||`` (Frobenius over all examples and logits; 0 when
    both are 0, inf when only the model did not move).
    """
    lin_pred, ft_pred, f0_pred = predict_labels(f_lin), predict_labels(f_ft), predict_labels(f0)
    labels = labels.reshape(-1)
    error, change = float((f_ft - f_lin).norm()), float((f_ft - f0).norm())
    return {
        "rel_error": _ratio(error, change),
        "error_norm": error,
        "change_norm": change,
        "lin_acc": float((lin_pred == labels).double().mean()),
        "ft_acc": float((ft_pred == labels).double().mean()),
        "f0_acc": float((f0_pred == labels).double().mean()),
        "agreement": float((lin_pred == ft_pred).double().mean()),
        "n": int(labels.numel()),
    }


# ------------------------------------------------------------------------------------------ kernel drift


def kernel_drift(k0: torch.Tensor, k_ft: torch.Tensor) -> dict[str, float]:
    """Relative Frobenius distance ``||K_FT - K_0|| / ||K_0||`` and alignment ``<K_0, K_FT> / (||K_0|| ||K_FT||)``."""
    a, b = k0.double().reshape(-1), k_ft.double().reshape(-1)
    norm_a, norm_b = float(a.norm()), float(b.norm())
    return {
        "rel_distance": _ratio(float((b - a).norm()), norm_a),
        "alignment": float(a @ b) / (norm_a * norm_b) if norm_a > 0 and norm_b > 0 else math.nan,
        "norm_0": norm_a,
        "norm_ft": norm_b,
    }


@torch.no_grad()
def _set_values(trained: Mapping[str, nn.Parameter], values: Mapping[str, torch.Tensor]) -> None:
    """Copy ``values`` (theta_0 or theta_FT of the trained parameters) into the model's parameters."""
    for name, param in trained.items():
        param.copy_(values[name].to(param.device, param.dtype))


def _kernel_matrix(value: Any) -> torch.Tensor:
    return value.kernel if hasattr(value, "flipped") else value


def trained_params_predicate(model: nn.Module, names: Iterable[str]) -> Any:
    """A kernel ``params`` predicate selecting every registration of the named (trained) parameters."""
    from benchmark.kernels.params import registrations

    params = dict(model.named_parameters())
    ids = {id(params[name]) for name in names}
    chosen = {r.name for tensor, regs in registrations(model) if id(tensor) in ids for r in regs}

    def trained(name: str) -> bool:
        return name in chosen

    return trained


# ---------------------------------------------------------------------------------------------- driver


def compute_diagnostics(
    model: nn.Module,
    theta_0: Mapping[str, torch.Tensor],
    train_batches: Sequence[Batch],
    test_batches: Sequence[Batch],
    test_labels: torch.Tensor,
    *,
    formula: str = "sgd",
    kernel: bool = True,
    progress: bool = False,
    kernel_options: Mapping[str, Any] | None = None,
) -> Diagnostics:
    """All diagnostics of ``model`` (holding theta_FT) against ``theta_0`` (the trained parameters' start).

    Linearization on ``test_batches`` (labels ``test_labels``), kernel drift of ``formula`` on
    ``train_batches`` over the parameters in ``theta_0`` (skipped with ``kernel=False``), movement.
    The model's weights are theta_FT again on return (also when something raises).
    """
    from benchmark.kernels import empirical_ntk, normalize_formula

    start = time.perf_counter()
    formula = normalize_formula(formula)
    trained = _trained(model, theta_0)
    theta_ft = {name: p.detach().to("cpu", copy=True) for name, p in trained.items()}
    moved = movement(theta_0, theta_ft)

    f0, f_lin, f_ft = linearized_logits(model, theta_0, test_batches, progress=progress, total=len(test_batches))
    lin = linearization_metrics(f0, f_lin, f_ft, test_labels)
    details: dict[str, Any] = {"linearization": {"split": "test", **lin}, "movement": moved}
    metrics = {
        "diag_lin_rel_error": lin["rel_error"],
        "diag_lin_test_acc": lin["lin_acc"],
        "diag_lin_agreement": lin["agreement"],
        "diag_movement": moved["overall"]["relative"],
    }
    for group in COARSE_GROUPS:
        if group in moved["coarse"]:
            metrics[f"diag_movement_{group}"] = moved["coarse"][group]["relative"]
    extra = {f"movement/{group}": entry["relative"] for group, entry in moved["groups"].items()}

    if kernel:
        params = trained_params_predicate(model, theta_0)
        options = {"progress": progress, **(kernel_options or {})}
        try:  # only the trained parameters differ between theta_0 and theta_FT
            _set_values(trained, theta_0)
            k0 = _kernel_matrix(empirical_ntk(model, train_batches, formula=formula, params=params, **options))
        finally:
            _set_values(trained, theta_ft)
        k_ft = _kernel_matrix(empirical_ntk(model, train_batches, formula=formula, params=params, **options))
        drift = kernel_drift(k0, k_ft)
        details["kernel"] = {
            "split": "train",
            "formula": formula,
            "n": int(k0.shape[0]),
            "parameters": int(sum(p.numel() for p in trained.values())),
            **drift,
        }
        metrics["diag_kernel_drift"] = drift["rel_distance"]
        metrics["diag_kernel_alignment"] = drift["alignment"]
    extra["diagnostics_seconds"] = time.perf_counter() - start
    details["metrics"] = dict(metrics)
    return Diagnostics(metrics=metrics, extra=extra, details=details)


def split_batches(split: EncodedSplit, batch_size: int, device: torch.device) -> list[dict[str, torch.Tensor]]:
    """The model-input batches of an encoded split, on ``device``."""
    return [{key: value.to(device) for key, value in inputs.items()} for inputs, _ in split.batches(batch_size)]


def log_diagnostics(tracker: Tracker, diag: Diagnostics, *, headline: bool = True) -> None:
    """Log the metrics (``headline=False``: only the extra ones) and ``diagnostics.json`` to ``tracker``'s run."""
    tracker.log_metrics(diag.all_metrics() if headline else diag.extra)
    tracker.log_json(diag.details, ARTIFACT)


def format_diagnostics(diag: Diagnostics) -> list[str]:
    """Human-readable lines: the headline metrics and the per-group movement."""
    lines = [f"{name} = {value:.6g}" for name, value in sorted(diag.metrics.items())]
    groups = diag.details.get("movement", {}).get("groups", {})
    if groups:
        lines.append("movement per group: " + ", ".join(f"{g}={e['relative']:.4g}" for g, e in groups.items()))
    return lines
