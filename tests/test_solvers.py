"""Kernel solvers against closed forms and scikit-learn, on small synthetic kernels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmark.kernels import (
    SOLVERS,
    KernelSplit,
    default_grid,
    get_solver,
    one_standard_error,
    score_accuracy,
    select_hyperparameters,
)
from benchmark.kernels.solvers import flatten, target_matrix
from benchmark.metrics import predict_labels
from registry import BenchError

pytestmark = pytest.mark.usefixtures("one_thread")


def gradients(labels: torch.Tensor, num_outputs: int, dim: int, noise: float, seed: int) -> torch.Tensor:
    """Toy per-logit 'gradients' ``[N, C, C * dim]``: logit c lives in block c, classes are separable."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(max(2, num_outputs), dim, generator=torch.Generator().manual_seed(99), dtype=torch.float64)
    z = means[labels] + noise * torch.randn(len(labels), dim, generator=g, dtype=torch.float64)
    out = torch.zeros(len(labels), num_outputs, num_outputs * dim, dtype=torch.float64)
    for c in range(num_outputs):
        out[:, c, c * dim : (c + 1) * dim] = z if num_outputs > 1 else z * (1.0 if c == 0 else -1.0)
    return (out + 0.01 * torch.randn(out.shape, generator=g, dtype=torch.float64)) / math.sqrt(dim)


def kernel(ga: torch.Tensor, gb: torch.Tensor, sign_a: bool = False, sign_b: bool = False) -> torch.Tensor:
    """``[N_a, C, N_b, C]`` from toy gradients."""
    a = ga.sign() if sign_a else ga
    b = gb.sign() if sign_b else gb
    return torch.einsum("ncp,mdp->ncmd", a, b)


def labels_for(n: int, classes: int, seed: int) -> torch.Tensor:
    return torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(seed)).roll(0)


def splits(
    num_outputs: int,
    n_train: int = 12,
    n_eval: int = 30,
    noise: float = 0.3,
    asym: bool = False,
    seed: int = 0,
    logits: bool = False,
):
    classes = 2 if num_outputs == 1 else num_outputs
    y_tr = torch.arange(n_train) % classes
    y_ev = labels_for(n_eval, classes, seed + 1)
    g_tr = gradients(y_tr, num_outputs, 8, noise, seed + 2)
    g_ev = gradients(y_ev, num_outputs, 8, noise, seed + 3)
    if num_outputs == 1:  # the binary logit's gradient points along +mean for class 1
        g_tr = g_tr * (2.0 * y_tr - 1.0)[:, None, None]
        g_ev = g_ev * (2.0 * y_ev - 1.0)[:, None, None]
    f0_tr = torch.randn(n_train, num_outputs, dtype=torch.float64) if logits else None
    f0_ev = torch.randn(n_eval, num_outputs, dtype=torch.float64) if logits else None
    if asym:
        train = KernelSplit(kernel(g_tr, g_tr, sign_a=True), kernel(g_tr, g_tr, sign_b=True), f0_tr)
        ev = KernelSplit(kernel(g_tr, g_ev, sign_a=True), kernel(g_tr, g_ev, sign_b=True), f0_ev)
    else:
        train, ev = KernelSplit(kernel(g_tr, g_tr), None, f0_tr), KernelSplit(kernel(g_tr, g_ev), None, f0_ev)
    return train, y_tr, ev, y_ev


# ---------------------------------------------------------------- closed forms
@pytest.mark.parametrize("num_outputs", [1, 3])
def test_lstsq_closed_form_with_regularization_and_f0(num_outputs) -> None:
    train, y, ev, _ = splits(num_outputs, logits=True)
    k = flatten(train.kernel)
    t = target_matrix(y, num_outputs).reshape(-1)
    f0_tr, f0_ev = train.logits.reshape(-1), ev.logits.reshape(-1)
    k_ev = flatten(ev.kernel)
    sigma = torch.linalg.svdvals(k).max()
    for reg, s in ((0.0, None), (0.1, None), (1e-3, 10.0)):
        solver = get_solver("lstsq", regularization=reg, f0_scaling=s).fit(train, y)
        system = k + reg * sigma * torch.eye(k.shape[0], dtype=torch.float64)
        rhs = t - (f0_tr / s if s else 0.0)
        alpha = torch.linalg.pinv(system) @ rhs
        expected = (k_ev.t() @ alpha + (f0_ev / s if s else 0.0)).reshape(-1, num_outputs)
        got = solver.decision(ev)
        assert torch.allclose(got, expected, rtol=1e-6, atol=1e-6 * float(expected.abs().max()))


def test_svr_and_svc_match_scikit_learn() -> None:
    from sklearn.svm import SVC, SVR

    for num_outputs in (1, 3):
        train, y, ev, _ = splits(num_outputs, logits=True)
        k, k_ev = flatten(train.kernel).numpy(), flatten(ev.kernel).numpy().T
        t = target_matrix(y, num_outputs).reshape(-1).numpy()
        svr = SVR(kernel="precomputed").fit(k, t - train.logits.reshape(-1).numpy() / 10.0)
        got = get_solver("svr", f0_scaling=10.0).fit(train, y).decision(ev)
        expected = svr.predict(k_ev) + ev.logits.reshape(-1).numpy() / 10.0
        assert np.allclose(got.reshape(-1).numpy(), expected, atol=1e-8)
        svc = SVC(kernel="precomputed").fit(k, (t > 0).astype(int))
        got = get_solver("svc").fit(train, y).decision(ev)
        assert np.allclose(got.reshape(-1).numpy(), svc.decision_function(k_ev), atol=1e-8)
        if num_outputs == 1:
            assert predict_labels(got).tolist() == svc.predict(k_ev).tolist()


def test_logistic_matches_logistic_regression_cv() -> None:
    from sklearn.linear_model import LogisticRegressionCV

    train, y, ev, _ = splits(1, n_train=16)
    k, k_ev = flatten(train.kernel).numpy(), flatten(ev.kernel).numpy().T
    reference = LogisticRegressionCV(max_iter=10000, random_state=0, cv=5).fit(k, y.numpy())
    got = get_solver("logistic").fit(train, y).decision(ev)
    log_p = reference.predict_log_proba(k_ev)
    assert np.allclose(got[:, 0].numpy(), log_p[:, 1] - log_p[:, 0], atol=1e-6)


def test_asym_solves_the_block_system() -> None:
    train, y, ev, _ = splits(1, asym=True, logits=True)
    gamma, lam, s = 0.5, 0.3, 100.0
    solver = get_solver("asym", gamma=gamma, lam=lam, f0_scaling=s).fit(train, y)
    k = flatten(train.kernel).numpy()
    yy = (2.0 * y.numpy() - 1.0) - train.logits.reshape(-1).numpy() / s
    n = len(yy)
    h = yy[:, None] * k * yy[None, :]
    a = np.block([[np.eye(n) / gamma, h], [h.T, np.eye(n) / gamma]])
    sol = np.linalg.lstsq(a, np.ones(2 * n), rcond=None)[0]
    alpha, beta = sol[:n], sol[n:]
    expected = (
        lam * flatten(ev.kernel).numpy().T @ (alpha * yy)
        + (1 - lam) * flatten(ev.flipped).numpy().T @ (beta * yy)
        + ev.logits.reshape(-1).numpy() / s
    )
    assert np.allclose(solver.decision(ev).reshape(-1).numpy(), expected, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("num_outputs", [1, 3, 4])
def test_asym_recovers_labels_on_a_separable_problem(num_outputs) -> None:
    train, y, ev, y_ev = splits(num_outputs, n_train=16, n_eval=40, noise=0.2, asym=True)
    dev = KernelSplit(train.kernel, train.flipped)  # any split works for selection; use train here
    best = select_hyperparameters("asym", train, y, dev, y)
    assert best.dev_score == 1.0
    assert score_accuracy(best.solver.decision(ev), y_ev) >= 0.95
    # lambda only enters the prediction: the shared fit gives what a fresh fit gives
    point = best.hyperparameters
    fresh = get_solver("asym", **point).fit(train, y)
    assert torch.allclose(fresh.decision(ev), best.solver.decision(ev), rtol=1e-12, atol=1e-12)
    other = {**point, "lam": 1.0 - point["lam"]}
    shared = select_hyperparameters("asym", train, y, dev, y, grid=[point, other]).scores
    assert shared[1][1] == score_accuracy(get_solver("asym", **other).fit(train, y).decision(dev), y)


@pytest.mark.parametrize("name", SOLVERS.names())
@pytest.mark.parametrize("num_outputs", [1, 3])
def test_every_solver_handles_binary_and_multiclass(name, num_outputs) -> None:
    asym = name == "asym"
    train, y, ev, y_ev = splits(num_outputs, n_train=15, n_eval=30, noise=0.2, asym=asym)
    hyper = {"gamma": 1.0, "lam": 0.5} if asym else default_grid(name)[0]
    solver = get_solver(name, **hyper).fit(train, y)
    scores = solver.decision(ev)
    assert scores.shape == (30, num_outputs) and scores.dtype == torch.float64
    assert score_accuracy(scores, y_ev) >= 0.9
    assert solver.predict(ev).shape == (30,)


# ---------------------------------------------------------------- selection on dev
def test_selection_picks_the_best_dev_point_and_reuses_kernels() -> None:
    train, y, ev, y_ev = splits(3, n_train=12, n_eval=30, noise=0.8, logits=True)
    grid = [{"regularization": r} for r in (0.0, 1e-2, 1e3)]
    seen = []

    def metric(scores: torch.Tensor, labels: torch.Tensor) -> float:
        seen.append(scores.shape)
        return score_accuracy(scores, labels)

    best = select_hyperparameters("lstsq", train, y, ev, y_ev, grid=grid, metric=metric, rule="best")
    assert len(best.scores) == 3 and len(seen) == 3
    assert best.dev_score == max(score for _, score in best.scores)
    first_best = next(point for point, score in best.scores if score == best.dev_score)
    assert best.hyperparameters == first_best  # ties keep the earlier (simpler) point
    assert best.solver.hyperparameters["regularization"] == first_best["regularization"]
    # default grids: f0 scalings only when initial logits exist, asym over gamma x lambda
    assert any(p.get("f0_scaling") for p in default_grid("lstsq", with_f0=True))
    assert not any(p.get("f0_scaling") for p in default_grid("lstsq"))
    assert not any(p.get("f0_scaling") for p in default_grid("svc", with_f0=True))
    assert {(p["gamma"], p["lam"]) for p in default_grid("asym")} >= {(1.0, 0.5), (0.1, 1.0)}
    with_f0 = select_hyperparameters("lstsq", train, y, ev, y_ev)
    assert len(with_f0.scores) == len(default_grid("lstsq", with_f0=True))


def test_one_standard_error_rule_keeps_the_first_point_close_to_the_best() -> None:
    train, y, ev, y_ev = splits(1, n_train=12, n_eval=30, noise=0.5)
    grid = [{"regularization": r} for r in (0.0, 1e-3, 1e-2, 1e-1)]
    planned = iter([0.60, 0.70, 0.75, 0.50])  # dev scores by grid point, in order
    metric = lambda scores, labels: next(planned)  # noqa: E731
    chosen = select_hyperparameters("lstsq", train, y, ev, y_ev, grid=grid, metric=metric)
    se = (0.75 * 0.25 / 30) ** 0.5  # 0.079: the threshold is 0.671, so 0.70 (the second point) is kept
    assert one_standard_error(0.75, 30) == pytest.approx(se)
    assert chosen.hyperparameters == {"regularization": 1e-3} and chosen.dev_score == 0.70
    assert chosen.solver.hyperparameters["regularization"] == 1e-3
    assert [score for _, score in chosen.scores] == [0.60, 0.70, 0.75, 0.50]
    planned = iter([0.60, 0.70, 0.75, 0.50])
    best = select_hyperparameters("lstsq", train, y, ev, y_ev, grid=grid, metric=metric, rule="best")
    assert best.hyperparameters == {"regularization": 1e-2}
    assert one_standard_error(1.0, 30) == 0.0 and one_standard_error(0.5, 0) == 0.0
    with pytest.raises(BenchError, match="unknown selection rule 'median'"):
        select_hyperparameters("lstsq", train, y, ev, y_ev, grid=grid, rule="median")


# ---------------------------------------------------------------- bad input
def test_bad_input_raises_bench_error() -> None:
    train, y, ev, _ = splits(3)
    with pytest.raises(BenchError, match="unknown kernel solver"):
        get_solver("ridge")
    with pytest.raises(BenchError, match="unknown kernel solver"):
        default_grid("ridge")
    with pytest.raises(BenchError, match="does not support"):
        get_solver("svc", f0_scaling=10.0)
    with pytest.raises(BenchError, match="bad hyper-parameters"):
        get_solver("lstsq", gamma=1.0)
    with pytest.raises(BenchError, match="lambda"):
        get_solver("asym", lam=2.0)
    with pytest.raises(BenchError, match="fitted"):
        get_solver("lstsq").decision(ev)
    with pytest.raises(BenchError, match="flipped"):
        get_solver("asym").fit(train, y)
    with pytest.raises(BenchError, match="labels must lie"):
        get_solver("lstsq").fit(train, y + 5)
    with pytest.raises(BenchError, match="labels for a kernel"):
        get_solver("lstsq").fit(train, y[:-1])
    with pytest.raises(BenchError, match="initial logits"):
        get_solver("lstsq", f0_scaling=1.0).fit(train, y)
    with pytest.raises(BenchError, match="shape"):
        KernelSplit(torch.zeros(3, 2, 4, 3))
    fitted = get_solver("lstsq").fit(train, y)
    other, _, _, _ = splits(3, n_train=5)
    with pytest.raises(BenchError, match="does not match"):
        fitted.decision(other)
    bad = KernelSplit(train.kernel * math.nan)
    with pytest.raises(BenchError, match="every grid point"):
        select_hyperparameters("svr", bad, y, bad, y, grid=[{"regularization": 0.0}])


def _dirty_the_allocator(seed: int) -> None:
    """Allocate and free integer tensors of random bits, so the next small allocations hold garbage."""
    g = torch.Generator().manual_seed(seed)
    garbage = [torch.randint(-(2**62), 2**62, (n,), generator=g, dtype=torch.int64) for n in (6, 8, 12, 16, 24, 36)]
    del garbage


@pytest.mark.parametrize("name", ["lstsq", "asym"])
def test_rank_deficient_kernels_solve_the_same_way_every_time(name) -> None:
    """A train kernel of rank 3 over 6 examples (duplicates and collinear gradients, as k-shot data
    can give): every fit after dirtying memory gives bitwise the same coefficients (torch's default
    CPU ``gelsy`` driver did not: its pivot array is uninitialized), and lstsq's are the
    pseudo-inverse's minimum-norm solution."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(3, 1, 8, dtype=torch.float64, generator=g)
    grads = torch.cat([base, base[:1], base[1:2] * 2.0, base[2:] - base[:1]])  # 6 gradients spanning 3 dims
    k = kernel(grads, grads)
    train = KernelSplit(k, k if name == "asym" else None)
    labels = torch.tensor([1, 0, 1, 1, 0, 0])
    params = {"regularization": 0.0} if name == "lstsq" else {"regularization": 0.0, "gamma": 1e6}
    fits = []
    for seed in range(20):
        _dirty_the_allocator(seed)
        solver = get_solver(name, **params).fit(train, labels)
        fits.append(solver.alpha.clone() if name == "lstsq" else torch.cat([solver.alpha, solver.beta]))
    assert all(torch.equal(f, fits[0]) for f in fits)
    if name == "lstsq":
        want = torch.linalg.pinv(flatten(k), hermitian=True) @ target_matrix(labels, 1).reshape(-1)
        torch.testing.assert_close(fits[0], want, rtol=1e-9, atol=1e-9)
