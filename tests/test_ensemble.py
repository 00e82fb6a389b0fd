"""The hybrid ensemble covariance: its extended square root against a dense matrix
built here from the formula, the adjoint identity, the inverse, and 4D-Var with it
reaching the minimum of the nonlinear cost; negative controls show the checks can fail."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize

from fourdvar import FourDVar, checks
from fourdvar.covariances import Diagonal, PeriodicCorrelation
from fourdvar.ensemble import HybridEnsembleCovariance, ensemble_perturbations
from models import Lorenz96
from observations import Identity, synthetic_observations

FLOOR = 1e-10  # PeriodicCorrelation's relative eigenvalue floor


def gaussian_correlation(n: int, L: float) -> np.ndarray:
    """``C[i, j] = exp(-d^2 / (2 L^2))``, ``d`` the periodic distance; eigenvalues (from eigh) clipped at ``FLOOR max``."""
    i = np.arange(n)
    gap = np.abs(i[:, None] - i[None, :])
    d = np.minimum(gap, n - gap).astype(float)
    w, Q = np.linalg.eigh(np.exp(-(d**2) / (2 * L**2)))
    return (Q * np.maximum(w, FLOOR * w.max())) @ Q.T


def small_hybrid(n=12, members=5, weight=0.6, length=2.0, seed=0):
    rng = np.random.default_rng(seed)
    static = PeriodicCorrelation(n, 1.5, std=0.5 + rng.random(n), shape="soar")
    states = rng.standard_normal((members, n)) * (1.0 + np.arange(n) / n)
    return HybridEnsembleCovariance(static, ensemble_perturbations(states), weight, length), static, states


def dense_formula(static, states, weight, length) -> np.ndarray:
    """``(1 - beta) B_s + beta (X^T X / (N - 1)) o C`` written out."""
    X = states - states.mean(axis=0)
    B_s = np.column_stack([static.apply(e) for e in np.eye(static.size)])
    return (1 - weight) * B_s + weight * (X.T @ X / (len(X) - 1)) * gaussian_correlation(static.size, length)


def test_hybrid_sqrt_t_is_the_adjoint_of_sqrt():
    B, _, _ = small_hybrid()
    rng = np.random.default_rng(1)
    u, w = rng.standard_normal(B.control_size), rng.standard_normal(B.size)
    result = checks.dot_product_test(B.sqrt, lambda v: [B.sqrt_t(v)], [u], w, name="hybrid B^1/2")
    assert result.passed and result.value < 1e-12


def test_hybrid_adjoint_test_fails_for_a_wrong_transpose():
    B, _, _ = small_hybrid()
    rng = np.random.default_rng(1)
    u, w = rng.standard_normal(B.control_size), rng.standard_normal(B.size)
    members = B.sqrt_t(w)[B.static.size :].reshape(B.n_members, B.size)
    wrong = lambda v: [np.concatenate([B.sqrt_t(v)[: B.static.size], np.roll(members, 1, axis=1).reshape(-1)])]  # noqa: E731
    assert not checks.dot_product_test(B.sqrt, wrong, [u], w, name="negative control").passed


def test_hybrid_sqrt_sqrt_t_apply_and_std_equal_the_dense_formula():
    n, members, weight, length = 12, 5, 0.6, 2.0
    B, static, states = small_hybrid(n, members, weight, length)
    expected = dense_formula(static, states, weight, length)
    S = np.column_stack([B.sqrt(e) for e in np.eye(B.control_size)])
    assert S.shape == (n, n + members * n)
    scale = np.abs(expected).max()
    assert np.abs(S @ S.T - expected).max() < 1e-12 * scale
    assert np.abs(np.column_stack([B.apply(e) for e in np.eye(n)]) - expected).max() < 1e-12 * scale
    assert np.abs(np.column_stack([B.sqrt_t(e) for e in np.eye(n)]) - S.T).max() < 1e-13 * scale
    # std is nominal, as for every covariance: the static part's nominal std, the ensemble part's exact diagonal
    ensemble_diagonal = np.diag(dense_formula(static, states, 1.0, length))
    assert np.allclose(B.std, np.sqrt((1 - weight) * static.std**2 + weight * ensemble_diagonal), rtol=1e-13, atol=0)
    # negative control: without the localisation the dense formula differs at O(1)
    unlocalised = (1 - weight) * np.column_stack([static.apply(e) for e in np.eye(n)]) + weight * np.cov(states.T)
    assert np.abs(S @ S.T - unlocalised).max() > 0.1 * scale


@pytest.mark.parametrize("dense_limit", [HybridEnsembleCovariance.DENSE_SOLVE_LIMIT, 0])  # Cholesky, then CG
def test_hybrid_solve_inverts_apply(dense_limit, monkeypatch):
    monkeypatch.setattr(HybridEnsembleCovariance, "DENSE_SOLVE_LIMIT", dense_limit)
    B, static, states = small_hybrid(weight=0.9)
    v = np.random.default_rng(2).standard_normal(B.size)
    dense = dense_formula(static, states, 0.9, 2.0)
    assert np.linalg.norm(B.solve(dense @ v) - v) < 1e-10 * np.linalg.norm(v)
    assert np.linalg.norm(B.solve(v) - np.linalg.solve(dense, v)) < 1e-10 * np.linalg.norm(np.linalg.solve(dense, v))


def test_hybrid_with_std_is_the_rescaled_dense_matrix():
    B, static, states = small_hybrid()
    new_std = np.linspace(0.5, 2.0, B.size)
    D = np.diag(new_std / B.std)
    rescaled = B.with_std(new_std)
    assert np.allclose(rescaled.std, new_std, rtol=1e-13)
    expected = D @ dense_formula(static, states, 0.6, 2.0) @ D
    got = np.column_stack([rescaled.apply(e) for e in np.eye(B.size)])
    assert np.abs(got - expected).max() < 1e-12 * np.abs(expected).max()


def test_hybrid_sample_has_the_hybrid_covariance():
    B, static, states = small_hybrid(n=6, members=3)
    rng = np.random.default_rng(3)
    draws = np.array([B.sample(rng) for _ in range(20000)])
    expected = dense_formula(static, states, 0.6, 2.0)
    # sampling error of a covariance entry ~ sqrt((C_ii C_jj + C_ij^2) / n_draws) <= 0.015 * max C here
    assert np.abs(np.cov(draws.T) - expected).max() < 0.05 * np.abs(expected).max()


@pytest.mark.parametrize("bad", [dict(weight=1.0), dict(weight=-0.1), dict(perturbations=np.zeros((1, 12))), dict(perturbations=np.zeros((3, 11)))])
def test_hybrid_rejects_bad_settings(bad):
    B, static, _ = small_hybrid()
    options = dict(static=static, perturbations=B.perturbations, weight=0.5, localization=2.0) | bad
    with pytest.raises(ValueError):
        HybridEnsembleCovariance(**options)


# --- 4D-Var with the hybrid B ----------------------------------------------------------------------


def l96_window_with_hybrid_b(seed=0, n_steps=8, members=10):
    """L96 n=40, all variables observed every 2 steps with std 1; an ensemble of perturbed
    states around the truth gives the hybrid B (beta 0.5, localisation 3)."""
    rng = np.random.default_rng(seed)
    model = Lorenz96(40)
    x_true = model.forecast(8.0 + rng.standard_normal(40), np.empty(0), 1000)[-1]
    obs = synthetic_observations(model.forecast(x_true, np.empty(0), n_steps), list(range(0, n_steps + 1, 2)), Identity(n_state=40), 1.0, rng)
    states = x_true + 0.5 * rng.standard_normal((members, 40))
    B = HybridEnsembleCovariance(Diagonal(0.5, size=40), ensemble_perturbations(states), 0.5, 3.0)
    xb = x_true + B.sample(rng)
    return FourDVar(model, obs, xb=xb, B=B, control="state", n_steps=n_steps), x_true


def test_incremental_cost_with_the_hybrid_b_passes_the_gradient_checks():
    problem, _ = l96_window_with_hybrid_b()
    jq = problem.incremental_cost()
    assert jq.size == problem.cost.B.control_size == 40 + 10 * 40
    results = checks.check_cost(problem.cost, problem.cost.xb, np.empty(0), problem.control, np.random.default_rng(4))
    assert all(result.passed for result in results), checks.format_table(results)


def test_incremental_cost_refuses_the_hybrid_b_without_the_transform():
    problem, _ = l96_window_with_hybrid_b()
    with pytest.raises(ValueError, match="control-variable transform"):
        problem.incremental_cost(transform=False)


def test_4dvar_with_the_hybrid_b_reaches_the_minimum_of_the_nonlinear_cost():
    problem, x_true = l96_window_with_hybrid_b()
    result = problem.solve(outer_loops=6, max_iterations=200, gradient_reduction=1e-7)

    def J_and_gradient(x):
        terms, gx, _ = problem.cost.gradient(x, np.empty(0))
        return terms.J, gx

    direct = scipy.optimize.minimize(J_and_gradient, problem.cost.xb, jac=True, method="L-BFGS-B",
                                     options={"maxiter": 5000, "ftol": 1e-16, "gtol": 1e-9, "maxcor": 30})
    assert abs(result.final.J - direct.fun) <= 1e-6 * direct.fun
    assert np.linalg.norm(result.x0 - direct.x) < 1e-3 * np.linalg.norm(direct.x)
    assert np.sqrt(np.mean((result.x0 - x_true) ** 2)) < np.sqrt(np.mean((problem.cost.xb - x_true) ** 2))
