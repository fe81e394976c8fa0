"""Kernel solvers (lstsq, logistic, svr, svc, asym) and hyper-parameter selection on the dev split.

Conventions (those of princeton-nlp/LM-Kernel-FT, so that numbers match):

* A kernel ``[N_train, C, N_x, C]`` is flattened to one ``[N_train * C, N_x * C]`` matrix: every
  (example, logit) pair is a sample of one vector-valued kernel problem.
* Targets: with C = 1 (the binary logit-difference model) ``y = 2 * label - 1`` in {-1, +1}; with
  C > 1 the one-hot vector of the label, flattened with the kernel.
* Regularization ``r`` adds ``r * sigma_max(K) * I`` to the flattened train kernel.
* Initial-logit correction (``f0_scaling = s``, off when None): fit ``y - f0 / s`` and add
  ``f0 / s`` to the prediction, where ``f0`` are the model's logits before training
  (`KernelSplit.logits`). Supported by lstsq, svr and asym, as in the reference.
* Predictions are scores ``[N_x, C]``: the class is the argmax (C > 1) or the sign (C = 1).
* Hyper-parameter selection on dev (`select_hyperparameters`): each default grid lists a solver's
  settings in order of preference, the plain solver first (no f0 correction; for ``asym`` the
  strongest ridge ``1 / gamma`` first). ``rule="best"`` keeps the best dev score (first on ties),
  as the reference's result gathering does; ``rule="one-se"`` (the default) keeps the first
  setting whose dev score is within one standard error of the best, ``sqrt(p (1 - p) / n_dev)``
  for a best score p on n_dev examples (the "one-standard-error rule", Hastie, Tibshirani and
  Friedman, ESL 7.10). With a few dozen dev examples and a grid of hundreds of settings (asym: 7
  gammas x 5 lambdas x 6 f0 scalings), the plain maximum mostly picks dev noise.

``asym`` is the least-squares SVM for asymmetric kernels (He et al.), used with the A-SignGD
kernel K(x_i, x) = <sign g(x_i), g(x)> and its flipped kernel: with ``H_ij = y_i K(x_i, x_j) y_j``
it solves ``[[I / gamma, H], [H^T, I / gamma]] [alpha; beta] = 1`` and predicts
``lambda * sum_i alpha_i y_i K(x_i, x) + (1 - lambda) * sum_i beta_i y_i K_flipped(x_i, x)``.

Multi-class ``asym`` (the reference only allows C = 1, and its solver reads an undeclared
``kernel_lambda`` argument): one-vs-rest over the C logits in the flattened problem. Each
(example i, logit c) pair is one LS-SVM sample with label ``+1`` if c is the class of i and ``-1``
otherwise, the kernel between pairs is the flattened A-SignGD kernel (all logit blocks), and the
predicted class is the logit with the largest score. With C = 1 this is exactly the reference
binary solver. ``svc`` and ``logistic`` likewise treat C > 1 as one binary problem over the
flattened (example, logit) pairs ("is c the class of i"), which is what the reference's
flattening does; they rank the logits by the decision function rather than by hard labels, so
ties cannot occur.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from registry import BenchError


@dataclass(frozen=True)
class KernelSplit:
    """Kernel of the training set against one split, with what the solvers may need.

    ``kernel``: float64 ``[N_train, C, N_x, C]``; ``flipped``: the A-SignGD flipped kernel (same
    shape, ``asym`` only); ``logits``: the model's initial logits ``[N_x, C]`` (f0 correction).
    """

    kernel: torch.Tensor
    flipped: torch.Tensor | None = None
    logits: torch.Tensor | None = None

    def __post_init__(self) -> None:
        k = self.kernel
        if k.dim() != 4 or k.shape[1] != k.shape[3]:
            raise BenchError(f"a kernel must have shape [N_train, C, N_x, C], got {tuple(k.shape)}")
        if self.flipped is not None and self.flipped.shape != k.shape:
            raise BenchError(f"the flipped kernel has shape {tuple(self.flipped.shape)}, the kernel {tuple(k.shape)}")
        if self.logits is not None and tuple(self.logits.shape) != (k.shape[2], k.shape[1]):
            raise BenchError(f"logits must have shape [{k.shape[2]}, {k.shape[1]}], got {tuple(self.logits.shape)}")

    @classmethod
    def of(cls, value: Any, logits: torch.Tensor | None = None) -> KernelSplit:
        """From a kernel tensor or an ``(kernel, flipped)`` pair (`AsymKernel`)."""
        if isinstance(value, tuple):
            return cls(value[0], value[1], logits)
        return cls(value, None, logits)

    @property
    def num_outputs(self) -> int:
        """C."""
        return int(self.kernel.shape[1])

    @property
    def n_train(self) -> int:
        """Training examples (rows)."""
        return int(self.kernel.shape[0])

    @property
    def n(self) -> int:
        """Examples of this split (columns)."""
        return int(self.kernel.shape[2])


def flatten(kernel: torch.Tensor) -> torch.Tensor:
    """``[N, C, M, C] -> [N * C, M * C]`` in float64 on the CPU."""
    n, c, m, d = kernel.shape
    return kernel.detach().to("cpu", torch.float64).reshape(n * c, m * d)


def target_matrix(labels: torch.Tensor, num_outputs: int) -> torch.Tensor:
    """``[N, C]`` float64 targets: ``2 * label - 1`` (C = 1) or one-hot (C > 1)."""
    labels = torch.as_tensor(labels).detach().cpu().long().reshape(-1)
    classes = 2 if num_outputs == 1 else num_outputs
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise BenchError(f"labels must lie in 0..{classes - 1} for a kernel with C = {num_outputs}")
    if num_outputs == 1:
        return (2.0 * labels - 1.0).to(torch.float64).unsqueeze(1)
    return torch.nn.functional.one_hot(labels, num_outputs).to(torch.float64)


def predict_labels(scores: torch.Tensor) -> torch.Tensor:
    """Class indices from scores ``[N, C]``: argmax, or ``score > 0`` for C = 1."""
    if scores.shape[1] == 1:
        return (scores[:, 0] > 0).long()
    return scores.argmax(dim=1)


def accuracy(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of correct predictions."""
    labels = torch.as_tensor(labels).reshape(-1).long().cpu()
    return float((predict_labels(scores.cpu()) == labels).double().mean()) if labels.numel() else 0.0


def regularized(kernel: torch.Tensor, regularization: float) -> torch.Tensor:
    """``K + r * sigma_max(K) * I`` for a square flattened kernel (unchanged when r = 0)."""
    if not regularization:
        return kernel
    sigma = torch.linalg.matrix_norm(kernel, ord=2)
    return kernel + regularization * sigma * torch.eye(kernel.shape[0], dtype=kernel.dtype)


class KernelSolver:
    """Base class: ``fit(train_split, labels)`` then ``decision(split)`` -> scores ``[N_x, C]``."""

    name: ClassVar[str]
    supports_f0: ClassVar[bool] = True
    needs_flipped: ClassVar[bool] = False
    #: Hyper-parameters used only at prediction: grid points differing only in them share one fit.
    prediction_only: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *, regularization: float = 0.0, f0_scaling: float | None = None) -> None:
        if regularization < 0:
            raise BenchError(f"regularization must be >= 0, got {regularization}")
        if f0_scaling is not None and f0_scaling <= 0:
            f0_scaling = None
        if f0_scaling is not None and not self.supports_f0:
            raise BenchError(f"solver '{self.name}' does not support the initial-logit (f0) correction")
        self.regularization = float(regularization)
        self.f0_scaling = f0_scaling
        self.num_outputs = 0
        self.n_train = 0

    @property
    def hyperparameters(self) -> dict[str, Any]:
        """The solver's hyper-parameters."""
        return {"regularization": self.regularization, "f0_scaling": self.f0_scaling}

    def _f0(self, split: KernelSplit) -> torch.Tensor | None:
        if self.f0_scaling is None:
            return None
        if split.logits is None:
            raise BenchError(f"f0_scaling={self.f0_scaling} needs the model's initial logits for every split")
        return split.logits.detach().to("cpu", torch.float64) / self.f0_scaling

    def _check_fit(self, train: KernelSplit, labels: torch.Tensor) -> torch.Tensor:
        if train.n_train != train.n:
            raise BenchError(f"the training kernel must be square in examples, got {tuple(train.kernel.shape)}")
        targets = target_matrix(labels, train.num_outputs)
        if targets.shape[0] != train.n_train:
            raise BenchError(f"{targets.shape[0]} labels for a kernel over {train.n_train} training examples")
        if self.needs_flipped and train.flipped is None:
            raise BenchError(f"solver '{self.name}' needs the flipped kernel (formula 'asym')")
        self.num_outputs, self.n_train = train.num_outputs, train.n_train
        return targets

    def _check_predict(self, split: KernelSplit) -> None:
        if not self.num_outputs:
            raise BenchError(f"solver '{self.name}' must be fitted before predicting")
        if split.n_train != self.n_train or split.num_outputs != self.num_outputs:
            raise BenchError(
                f"kernel {tuple(split.kernel.shape)} does not match the fitted training kernel "
                f"({self.n_train} examples, C = {self.num_outputs})"
            )
        if self.needs_flipped and split.flipped is None:
            raise BenchError(f"solver '{self.name}' needs the flipped kernel (formula 'asym')")

    def fit(self, train: KernelSplit, labels: torch.Tensor) -> KernelSolver:
        """Fit on the train x train kernel and the training labels."""
        raise NotImplementedError

    def decision(self, split: KernelSplit) -> torch.Tensor:
        """Scores ``[N_x, C]`` for the examples of ``split`` (kernel train x split)."""
        raise NotImplementedError

    def predict(self, split: KernelSplit) -> torch.Tensor:
        """Predicted class indices ``[N_x]``."""
        return predict_labels(self.decision(split))


class LstsqSolver(KernelSolver):
    """Kernel regression: ``(K + r sigma_max I) alpha = y - f0 / s``, solved by least squares."""

    name = "lstsq"

    def fit(self, train: KernelSplit, labels: torch.Tensor) -> LstsqSolver:
        """Solve for the dual coefficients."""
        targets = self._check_fit(train, labels)
        f0 = self._f0(train)
        if f0 is not None:
            targets = targets - f0
        kernel = regularized(flatten(train.kernel), self.regularization)
        self.alpha = torch.linalg.lstsq(kernel, targets.reshape(-1, 1)).solution.squeeze(1)
        return self

    def decision(self, split: KernelSplit) -> torch.Tensor:
        """``K_x^T alpha (+ f0 / s)``."""
        self._check_predict(split)
        scores = (flatten(split.kernel).t() @ self.alpha).reshape(split.n, self.num_outputs)
        f0 = self._f0(split)
        return scores + f0 if f0 is not None else scores


class SVRSolver(KernelSolver):
    """Support vector regression on the flattened targets (scikit-learn ``SVR(kernel='precomputed')``)."""

    name = "svr"

    def fit(self, train: KernelSplit, labels: torch.Tensor) -> SVRSolver:
        """Fit one SVR on all (example, logit) pairs."""
        from sklearn.svm import SVR

        targets = self._check_fit(train, labels)
        f0 = self._f0(train)
        if f0 is not None:
            targets = targets - f0
        kernel = regularized(flatten(train.kernel), self.regularization)
        self.model = SVR(kernel="precomputed").fit(kernel.numpy(), targets.reshape(-1).numpy())
        return self

    def decision(self, split: KernelSplit) -> torch.Tensor:
        """SVR predictions (+ f0 / s)."""
        self._check_predict(split)
        pred = torch.from_numpy(self.model.predict(flatten(split.kernel).t().numpy())).to(torch.float64)
        scores = pred.reshape(split.n, self.num_outputs)
        f0 = self._f0(split)
        return scores + f0 if f0 is not None else scores


class _BinaryPairs(KernelSolver):
    """Shared by svc and logistic: one binary problem over the flattened (example, logit) pairs."""

    supports_f0 = False

    def _binary_targets(self, train: KernelSplit, labels: torch.Tensor) -> np.ndarray:
        targets = self._check_fit(train, labels).reshape(-1)
        binary = (targets > 0).long().numpy()
        if len(np.unique(binary)) < 2:
            raise BenchError(f"solver '{self.name}' needs training examples of both classes")
        return binary

    def _scores(self, model: Any, split: KernelSplit) -> torch.Tensor:
        self._check_predict(split)
        values = model.decision_function(flatten(split.kernel).t().numpy())
        return torch.from_numpy(np.asarray(values, dtype=np.float64)).reshape(split.n, self.num_outputs)


class SVCSolver(_BinaryPairs):
    """Support vector classification (scikit-learn ``SVC(kernel='precomputed')``); scores = decision function."""

    name = "svc"

    def fit(self, train: KernelSplit, labels: torch.Tensor) -> SVCSolver:
        """Fit the SVC."""
        from sklearn.svm import SVC

        binary = self._binary_targets(train, labels)
        kernel = regularized(flatten(train.kernel), self.regularization)
        self.model = SVC(kernel="precomputed").fit(kernel.numpy(), binary)
        return self

    def decision(self, split: KernelSplit) -> torch.Tensor:
        """Decision function per (example, logit)."""
        return self._scores(self.model, split)


class LogisticSolver(_BinaryPairs):
    """Logistic regression with kernel rows as features (scikit-learn ``LogisticRegressionCV``).

    Scores are ``log p(1) - log p(0)``, the reference's binary logit. The inner cross-validation
    uses ``min(5, smallest class count)`` folds (scikit-learn's default is 5).
    """

    name = "logistic"

    def fit(self, train: KernelSplit, labels: torch.Tensor) -> LogisticSolver:
        """Fit the cross-validated logistic regression."""
        from sklearn.linear_model import LogisticRegressionCV

        binary = self._binary_targets(train, labels)
        kernel = regularized(flatten(train.kernel), self.regularization)
        folds = max(2, min(5, int(np.bincount(binary).min())))
        if np.bincount(binary).min() < 2:
            raise BenchError("solver 'logistic' needs at least two training examples of each class")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model = LogisticRegressionCV(max_iter=10000, random_state=0, cv=folds, scoring="accuracy").fit(
                kernel.numpy(), binary
            )
        return self

    def decision(self, split: KernelSplit) -> torch.Tensor:
        """``log p(1) - log p(0)`` per (example, logit)."""
        return self._scores(self.model, split)


class AsymSolver(KernelSolver):
    """LS-SVM for asymmetric kernels (A-SignGD); see the module docstring for the formulation."""

    name = "asym"
    needs_flipped = True
    prediction_only = ("lam",)

    def __init__(
        self,
        *,
        regularization: float = 0.0,
        f0_scaling: float | None = None,
        gamma: float = 1.0,
        lam: float = 0.5,
    ) -> None:
        super().__init__(regularization=regularization, f0_scaling=f0_scaling)
        if gamma <= 0:
            raise BenchError(f"gamma must be > 0, got {gamma}")
        if not 0.0 <= lam <= 1.0:
            raise BenchError(f"lambda must lie in [0, 1], got {lam}")
        self.gamma, self.lam = float(gamma), float(lam)

    @property
    def hyperparameters(self) -> dict[str, Any]:
        """Regularization, f0 scaling, gamma and lambda."""
        return {**super().hyperparameters, "gamma": self.gamma, "lam": self.lam}

    def fit(self, train: KernelSplit, labels: torch.Tensor) -> AsymSolver:
        """Solve the 2n x 2n LS-SVM system (n = N_train * C pairs)."""
        targets = self._check_fit(train, labels)
        signed = targets.reshape(-1) if self.num_outputs == 1 else 2.0 * targets.reshape(-1) - 1.0
        f0 = self._f0(train)
        if f0 is not None:
            signed = signed - f0.reshape(-1)
        kernel = regularized(flatten(train.kernel), self.regularization)
        n = kernel.shape[0]
        h = signed[:, None] * kernel * signed[None, :]
        eye = torch.eye(n, dtype=torch.float64) / self.gamma
        system = torch.cat([torch.cat([eye, h], 1), torch.cat([h.t(), eye], 1)], 0)
        solution = torch.linalg.lstsq(system, torch.ones(2 * n, 1, dtype=torch.float64)).solution.squeeze(1)
        self.alpha, self.beta, self.signed = solution[:n], solution[n:], signed
        return self

    def decision(self, split: KernelSplit) -> torch.Tensor:
        """``lambda * K^T (alpha y) + (1 - lambda) * K_flipped^T (beta y)`` (+ f0 / s)."""
        self._check_predict(split)
        omega = flatten(split.kernel).t() @ (self.alpha * self.signed)
        nu = flatten(split.flipped).t() @ (self.beta * self.signed)  # type: ignore[arg-type]
        scores = (self.lam * omega + (1.0 - self.lam) * nu).reshape(split.n, self.num_outputs)
        f0 = self._f0(split)
        return scores + f0 if f0 is not None else scores


SOLVERS: dict[str, type[KernelSolver]] = {
    cls.name: cls for cls in (LstsqSolver, LogisticSolver, SVRSolver, SVCSolver, AsymSolver)
}


def get_solver(name: str, **hyperparameters: Any) -> KernelSolver:
    """A solver by name with the given hyper-parameters; unknown names raise `BenchError`."""
    key = str(name).strip().lower()
    if key not in SOLVERS:
        raise BenchError(f"unknown kernel solver '{name}'; choose from {', '.join(SOLVERS)}")
    try:
        return SOLVERS[key](**hyperparameters)
    except TypeError as exc:
        raise BenchError(f"bad hyper-parameters for solver '{key}': {exc}") from None


#: Default grids (chosen on dev). f0 scalings are added only when initial logits are available.
REGULARIZATION_GRID = (0.0, 1e-4, 1e-3, 1e-2, 1e-1)
F0_SCALING_GRID = (1.0, 10.0, 100.0, 1000.0, 10000.0)
GAMMA_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
LAMBDA_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)


def default_grid(name: str, *, with_f0: bool = False) -> list[dict[str, Any]]:
    """The default hyper-parameter grid of solver ``name`` (simplest settings first)."""
    key = str(name).strip().lower()
    if key not in SOLVERS:
        raise BenchError(f"unknown kernel solver '{name}'; choose from {', '.join(SOLVERS)}")
    f0s: tuple[float | None, ...] = (None, *F0_SCALING_GRID) if with_f0 and SOLVERS[key].supports_f0 else (None,)
    if key == "asym":
        return [
            {"gamma": g, "lam": lam, "f0_scaling": s} for s, g, lam in itertools.product(f0s, GAMMA_GRID, LAMBDA_GRID)
        ]
    if key == "logistic":
        return [{"regularization": 0.0}]
    if key == "svc":
        return [{"regularization": r} for r in (0.0, 1e-3, 1e-2)]
    return [{"regularization": r, "f0_scaling": s} for s, r in itertools.product(f0s, REGULARIZATION_GRID)]


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
    metric: Callable[[torch.Tensor, torch.Tensor], float] = accuracy,
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

