"""Kernel solvers (lstsq, logistic, svr, svc, asym) in the registry `SOLVERS`, plugins can extend.

A solver is a `KernelSolver` subclass registered with ``@register_solver(name)`` (or through the
entry-point group ``kernel_bench.solvers``); it declares the kernel outputs it reads (``needs``: the
asymmetric LS-SVM also needs the ``flipped`` kernel of formula ``asym``) and its default grid.
Hyper-parameter selection on dev is `benchmark.kernels.selection`.

Conventions (those of princeton-nlp/LM-Kernel-FT, so that numbers match):

* A kernel ``[N_train, C, N_x, C]`` is flattened to one ``[N_train * C, N_x * C]`` matrix: every
  (example, logit) pair is a sample of one vector-valued kernel problem.
* Targets: with C = 1 (the binary logit-difference model) ``y = 2 * label - 1`` in {-1, +1}; with
  C > 1 the one-hot vector of the label, flattened with the kernel.
* Regularization ``r`` adds ``r * sigma_max(K) * I`` to the flattened train kernel.
* lstsq and asym take the minimum-norm least-squares solution, as the reference's
  ``torch.linalg.lstsq``, but by SVD (`least_squares`): torch's default CPU driver answers a
  rank-deficient system differently from call to call.
* Initial-logit correction (``f0_scaling = s``, off when None): fit ``y - f0 / s`` and add
  ``f0 / s`` to the prediction, where ``f0`` are the model's logits before training
  (`KernelSplit.logits`). Supported by lstsq, svr and asym, as in the reference.
* Predictions are scores ``[N_x, C]``: the class is the argmax (C > 1) or the sign (C = 1).
* Hyper-parameter selection on dev (`benchmark.kernels.selection.select_hyperparameters`): each
  default grid lists a solver's settings in order of preference, the plain solver first (no f0
  correction; for ``asym`` the strongest ridge ``1 / gamma`` first), and the first setting within
  one standard error of the best dev score is kept (``rule="best"``: the reference's maximum).
  With a few dozen dev examples and a grid of hundreds of settings (asym: 7 gammas x 5 lambdas x
  6 f0 scalings), the plain maximum mostly picks dev noise.

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
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch

from benchmark.metrics import predict_labels
from registry import BenchError
from registry.registry import Registry

S = TypeVar("S", bound=type)


@dataclass(frozen=True)
class KernelSplit:
    """Kernel of the training set against one split, with what the solvers may need.

    ``kernel``: float64 ``[N_train, C, N_x, C]``; ``flipped``: the A-SignGD flipped kernel (same
    shape, ``asym`` only); ``logits``: the model's initial logits ``[N_x, C]`` (f0 correction);
    ``extra``: other outputs of the formula by name (a plugin formula's), same shape.
    """

    kernel: torch.Tensor
    flipped: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    extra: Mapping[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        k = self.kernel
        if k.dim() != 4 or k.shape[1] != k.shape[3]:
            raise BenchError(f"a kernel must have shape [N_train, C, N_x, C], got {tuple(k.shape)}")
        for name, other in self.outputs.items():
            if other.shape != k.shape:
                raise BenchError(f"the {name} kernel has shape {tuple(other.shape)}, the kernel {tuple(k.shape)}")
        if self.logits is not None and tuple(self.logits.shape) != (k.shape[2], k.shape[1]):
            raise BenchError(f"logits must have shape [{k.shape[2]}, {k.shape[1]}], got {tuple(self.logits.shape)}")

    @classmethod
    def of(cls, value: Any, logits: torch.Tensor | None = None) -> KernelSplit:
        """From a kernel tensor, a formula's `KernelOutputs`, or a ``(kernel, flipped)`` pair."""
        if hasattr(value, "as_dict"):
            return cls.of_outputs(value.as_dict(), logits)
        if isinstance(value, tuple):
            return cls(value[0], value[1], logits)
        return cls(value, None, logits)

    @classmethod
    def of_outputs(cls, outputs: Mapping[str, torch.Tensor], logits: torch.Tensor | None = None) -> KernelSplit:
        """From ``{output name: kernel}`` (``kernel`` required)."""
        if "kernel" not in outputs:
            raise BenchError(f"a kernel split needs the output 'kernel', got {sorted(outputs)}")
        extra = {k: v for k, v in outputs.items() if k not in ("kernel", "flipped")}
        return cls(outputs["kernel"], outputs.get("flipped"), logits, extra)

    @property
    def outputs(self) -> dict[str, torch.Tensor]:
        """Every kernel output present, by name."""
        found = {"kernel": self.kernel, **({"flipped": self.flipped} if self.flipped is not None else {})}
        return {**found, **self.extra}

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


def regularized(kernel: torch.Tensor, regularization: float) -> torch.Tensor:
    """``K + r * sigma_max(K) * I`` for a square flattened kernel (unchanged when r = 0)."""
    if not regularization:
        return kernel
    sigma = torch.linalg.matrix_norm(kernel, ord=2)
    return kernel + regularization * sigma * torch.eye(kernel.shape[0], dtype=kernel.dtype)


#: Default grids (chosen on dev). f0 scalings are added only when initial logits are available.
REGULARIZATION_GRID = (0.0, 1e-4, 1e-3, 1e-2, 1e-1)
F0_SCALING_GRID = (1.0, 10.0, 100.0, 1000.0, 10000.0)
GAMMA_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
LAMBDA_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)


def least_squares(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The minimum-norm least-squares solution of ``a x = b`` (float64, on the CPU), by SVD.

    Not torch's default CPU driver (``gelsy``): it hands LAPACK an uninitialized pivot array, so on
    a rank-deficient kernel (duplicate or near-collinear examples, common at k = 16) its answer
    depends on what the memory held before (pytorch/pytorch#71222, #187411). Measured here: 13
    different solutions in 100 calls on one 6 x 6 kernel, which changed a run's dev selection
    between two runs with bitwise-equal kernels. ``gelsd`` gives the same minimum-norm solution
    (in exact arithmetic) every time.
    """
    return torch.linalg.lstsq(a, b, driver="gelsd").solution


def _f0_values(cls: type[KernelSolver], with_f0: bool) -> tuple[float | None, ...]:
    return (None, *F0_SCALING_GRID) if with_f0 and cls.supports_f0 else (None,)


def _check_solver(_name: str, obj: object) -> str | None:
    if isinstance(obj, type) and issubclass(obj, KernelSolver):
        return None
    return f"it is a {type(obj).__name__}, not a benchmark.kernels.solvers.KernelSolver subclass"


SOLVERS: Registry[type[KernelSolver]] = Registry("kernel solver", "kernel_bench.solvers", check=_check_solver)


def register_solver(name: str, *, aliases: tuple[str, ...] = ()) -> Callable[[S], S]:
    """Class decorator adding a `KernelSolver` subclass to `SOLVERS` under ``name``."""
    return SOLVERS.register(name, aliases=aliases)


def missing_outputs_message(solver: str, missing: list[str], formula: str | None = None) -> str:
    """Why solver ``solver`` cannot run without the kernel outputs ``missing``, and which formulas have them."""
    from registry.formulas import FORMULAS

    having = [name for name, f in FORMULAS.items() if set(missing) <= set(f.output_names)]
    where = f" (formulas with it: {', '.join(having)})" if having else ""
    which = f"formula '{formula}'" if formula else "this formula"
    return (f"solver '{solver}' needs the kernel output(s) {', '.join(repr(m) for m in missing)}, which {which} "
            f"does not produce{where}; choose another solver or formula")


class KernelSolver:
    """Base class: ``fit(train_split, labels)`` then ``decision(split)`` -> scores ``[N_x, C]``."""

    name: ClassVar[str]
    supports_f0: ClassVar[bool] = True
    #: The kernel outputs (of the run's formula) the solver reads.
    needs: ClassVar[tuple[str, ...]] = ("kernel",)
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
        self._check_outputs(train)
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
        self._check_outputs(split)

    def _check_outputs(self, split: KernelSplit) -> None:
        missing = [name for name in self.needs if name not in split.outputs]
        if missing:
            raise BenchError(missing_outputs_message(self.name, missing))

    @classmethod
    def default_grid(cls, *, with_f0: bool = False) -> list[dict[str, Any]]:
        """Hyper-parameter settings tried on dev, simplest first (f0 scalings only ``with_f0``)."""
        f0s = _f0_values(cls, with_f0)
        return [{"regularization": r, "f0_scaling": s} for s, r in itertools.product(f0s, REGULARIZATION_GRID)]

    def fit(self, train: KernelSplit, labels: torch.Tensor) -> KernelSolver:
        """Fit on the train x train kernel and the training labels."""
        raise NotImplementedError

    def decision(self, split: KernelSplit) -> torch.Tensor:
        """Scores ``[N_x, C]`` for the examples of ``split`` (kernel train x split)."""
        raise NotImplementedError

    def predict(self, split: KernelSplit) -> torch.Tensor:
        """Predicted class indices ``[N_x]``."""
        return predict_labels(self.decision(split))


@register_solver("lstsq")
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
        self.alpha = least_squares(kernel, targets.reshape(-1, 1)).squeeze(1)
        return self

    def decision(self, split: KernelSplit) -> torch.Tensor:
        """``K_x^T alpha (+ f0 / s)``."""
        self._check_predict(split)
        scores = (flatten(split.kernel).t() @ self.alpha).reshape(split.n, self.num_outputs)
        f0 = self._f0(split)
        return scores + f0 if f0 is not None else scores


@register_solver("svr")
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


@register_solver("svc")
class SVCSolver(_BinaryPairs):
    """Support vector classification (scikit-learn ``SVC(kernel='precomputed')``); scores = decision function."""

    name = "svc"

    @classmethod
    def default_grid(cls, *, with_f0: bool = False) -> list[dict[str, Any]]:
        """A few ridge settings (no f0 correction)."""
        return [{"regularization": r} for r in (0.0, 1e-3, 1e-2)]

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


@register_solver("logistic")
class LogisticSolver(_BinaryPairs):
    """Logistic regression with kernel rows as features (scikit-learn ``LogisticRegressionCV``).

    Scores are ``log p(1) - log p(0)``, the reference's binary logit. The inner cross-validation
    uses ``min(5, smallest class count)`` folds (scikit-learn's default is 5).
    """

    name = "logistic"

    @classmethod
    def default_grid(cls, *, with_f0: bool = False) -> list[dict[str, Any]]:
        """One point: the cross-validation inside the fit chooses the strength."""
        return [{"regularization": 0.0}]

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


@register_solver("asym")
class AsymSolver(KernelSolver):
    """LS-SVM for asymmetric kernels (A-SignGD); see the module docstring for the formulation."""

    name = "asym"
    needs = ("kernel", "flipped")
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

    @classmethod
    def default_grid(cls, *, with_f0: bool = False) -> list[dict[str, Any]]:
        """gamma x lambda (x f0 scalings), the strongest ridge 1 / gamma first."""
        f0s = _f0_values(cls, with_f0)
        return [{"gamma": g, "lam": lam, "f0_scaling": s} for s, g, lam in itertools.product(f0s, GAMMA_GRID,
                                                                                              LAMBDA_GRID)]

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
        solution = least_squares(system, torch.ones(2 * n, 1, dtype=torch.float64)).squeeze(1)
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


def get_solver(name: str, **hyperparameters: Any) -> KernelSolver:
    """A solver by name with the given hyper-parameters; unknown names raise `BenchError`."""
    cls = SOLVERS.get(str(name))
    try:
        return cls(**hyperparameters)
    except TypeError as exc:
        raise BenchError(f"bad hyper-parameters for solver '{SOLVERS.resolve_name(str(name))}': {exc}") from None


def default_grid(name: str, *, with_f0: bool = False) -> list[dict[str, Any]]:
    """The default hyper-parameter grid of solver ``name`` (simplest settings first)."""
    return SOLVERS.get(str(name)).default_grid(with_f0=with_f0)
