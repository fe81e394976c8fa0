"""Hyper-parameter selection of a kernel solver on the dev split (one-standard-error rule or best).

Each solver's default grid lists its settings in order of preference (`KernelSolver.default_grid`).
``rule="best"`` keeps the best dev score (first on ties), as the reference's result gathering does;
``rule="one-se"`` (the default) keeps the first setting whose dev score is within one standard error
of the best, ``sqrt(p (1 - p) / n_dev)`` (Hastie, Tibshirani and Friedman, ESL 7.10).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from benchmark.kernels.solvers import KernelSolver, KernelSplit, default_grid, get_solver
from benchmark.metrics import accuracy, predict_labels
from registry import BenchError


def score_accuracy(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Accuracy of solver scores ``[N, C]`` (`benchmark.metrics.predict_labels` then `accuracy`)."""
    return accuracy(predict_labels(scores.cpu()), torch.as_tensor(labels).cpu())


@dataclass
class Selection:
    """The outcome of a dev-set search: best hyper-parameters, their fitted solver, all scores."""

    solver: KernelSolver
    hyperparameters: dict[str, Any]
    dev_score: float
    scores: list[tuple[dict[str, Any], float]] = field(default_factory=list)


SELECTION_RULES = ("one-se", "best")


def one_standard_error(score: float, n: int) -> float:
    """The binomial standard error ``sqrt(p (1 - p) / n)`` of a dev score p on n examples (0 if p is not in [0, 1])."""
    if n <= 0 or not 0.0 <= score <= 1.0:
        return 0.0
    return math.sqrt(score * (1.0 - score) / n)


def select_hyperparameters(
    name: str,
    train: KernelSplit,
    train_labels: torch.Tensor,
    dev: KernelSplit,
    dev_labels: torch.Tensor,
    *,
    grid: Sequence[Mapping[str, Any]] | None = None,
    metric: Callable[[torch.Tensor, torch.Tensor], float] = score_accuracy,
    rule: str = "one-se",
) -> Selection:
    """Fit ``name`` for every grid point on train, score it on dev, keep one by ``rule``.

    ``rule``: ``"best"`` (the best dev score, first on ties) or ``"one-se"`` (the first grid point
    within one standard error of the best; see the module docstring). The kernels are reused across
    the grid, and points that differ only in prediction-time settings (asym's lambda) share one
    fit; a point whose fit fails numerically scores -inf.
    """
    if rule not in SELECTION_RULES:
        raise BenchError(f"unknown selection rule '{rule}'; choose from {', '.join(SELECTION_RULES)}")
    with_f0 = train.logits is not None and dev.logits is not None
    points = list(grid) if grid is not None else default_grid(name, with_f0=with_f0)
    if not points:
        raise BenchError("the hyper-parameter grid is empty")
    candidates: list[Selection] = []
    fitted: dict[tuple[tuple[str, Any], ...], KernelSolver | None] = {}
    for point in points:
        solver = get_solver(name, **point)
        key = tuple(sorted((k, v) for k, v in point.items() if k not in solver.prediction_only))
        try:
            if key in fitted:  # same fit, other prediction-only settings (asym's lambda)
                done = fitted[key]
                if done is None:
                    raise RuntimeError("fit failed")
                solver.__dict__.update({k: v for k, v in done.__dict__.items() if k not in solver.prediction_only})
            else:
                fitted[key] = None
                solver.fit(train, train_labels)
                fitted[key] = solver
            score = metric(solver.decision(dev), dev_labels)
        except (RuntimeError, ValueError, np.linalg.LinAlgError):
            score = -math.inf
        if not math.isfinite(score):
            score = -math.inf
        candidates.append(Selection(solver, dict(point), score))
    top = max(c.dev_score for c in candidates)
    if top == -math.inf:
        raise BenchError(f"solver '{name}' failed on every grid point; check the kernels for NaN or Inf")
    threshold = top - one_standard_error(top, len(dev_labels)) if rule == "one-se" else top
    chosen = next(c for c in candidates if c.dev_score >= threshold - 1e-12)
    chosen.scores = [(c.hyperparameters, c.dev_score) for c in candidates]
    return chosen

