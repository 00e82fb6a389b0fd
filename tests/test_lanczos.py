"""The Lanczos inner solver: its Ritz pairs are the Hessian's eigenpairs, its iterates are CG's,
and the spectral preconditioner built from them changes the path, not the minimum."""

from __future__ import annotations

import numpy as np
import pytest

from fourdvar import FourDVar
from fourdvar.covariances import Diagonal, PeriodicCorrelation
from fourdvar.lanczos import STALE, SpectralFactor, SpectralPreconditioner, lanczos
from fourdvar.minimize import minimize_inner
from models import Lorenz96
from observations import Identity, synthetic_observations


def small_joint_problem(seed=0, n=12, n_steps=6):
    """L96 with 12 variables and its forcing, every variable observed at every other step:
    a 13-element control whose dense Hessian is cheap."""
    rng = np.random.default_rng(seed)
    x = 8.0 + rng.standard_normal(n)
    truth = Lorenz96(n).forecast(Lorenz96(n).forecast(x, np.empty(0), 500)[-1], np.empty(0), n_steps)
    obs = synthetic_observations(truth, list(range(0, n_steps + 1, 2)), Identity(n_state=n), 1.0, rng)
    model = Lorenz96(n, forcing=8.0, estimate_forcing=True)
    return FourDVar(model, obs, xb=truth[0] + rng.standard_normal(n), B=PeriodicCorrelation(n, 1.0, std=1.2, shape="soar"),
                    pb=np.array([7.5]), P=Diagonal(0.5, size=1), control="both", n_steps=n_steps)


def joint_l96_problem(seed=0, n_steps=20):
    rng = np.random.default_rng(seed)
    x = Lorenz96(40).forecast(8.0 + rng.standard_normal(40), np.empty(0), 1000)[-1]
    truth = Lorenz96(40).forecast(x, np.empty(0), n_steps)
    obs = synthetic_observations(truth, list(range(n_steps + 1)), Identity(n_state=40), 1.0, rng)
    return FourDVar(Lorenz96(40, forcing=7.0, estimate_forcing=True), obs, xb=truth[0] + rng.standard_normal(40),
                    B=Diagonal(1.0, size=40), pb=np.array([7.0]), P=Diagonal(1.0, size=1), control="both")


def test_ritz_values_of_a_full_lanczos_run_are_the_eigenvalues_of_the_dense_hessian():
    jq = small_joint_problem().incremental_cost()
    eigenvalues = np.linalg.eigvalsh(jq.hessian_matrix())
    _, g0 = jq.value_and_gradient(np.zeros(jq.size))
    run = lanczos(jq.hessian_vector, g0, jq.size, lambda j, u, norm: False)
    np.testing.assert_allclose(np.sort(run.ritz_values), eigenvalues, rtol=1e-10)
    assert np.all(run.ritz_residuals <= 1e-8 * run.ritz_values)
    # the Ritz vectors are eigenvectors
    V = run.ritz_vectors
    AV = np.column_stack([jq.hessian_vector(v) for v in V.T])
    assert np.max(np.abs(AV - V * run.ritz_values)) <= 1e-8 * eigenvalues.max()
    # negative control: a Hessian-vector product off by a rank-one term of size 1e-6 is detected
    e = np.ones(jq.size) / np.sqrt(jq.size)
    perturbed = lanczos(lambda v: jq.hessian_vector(v) + 1e-6 * e * (e @ v), g0, jq.size, lambda j, u, norm: False)
    assert np.max(np.abs(np.sort(perturbed.ritz_values) - eigenvalues) / eigenvalues) > 1e-10


def test_leading_ritz_values_of_a_partial_run_converge_first():
    problem = joint_l96_problem(n_steps=10)
    jq = problem.incremental_cost()
    eigenvalues = np.linalg.eigvalsh(jq.hessian_matrix())
    inner = minimize_inner(jq, "lanczos", max_iterations=15, gradient_reduction=1e-14)
    assert inner.nit == 15
    run = inner.lanczos
    converged = run.ritz_residuals <= 1e-8 * run.ritz_values
    assert converged.sum() >= 3
    for theta in run.ritz_values[converged]:  # each converged Ritz value is an eigenvalue
        assert np.min(np.abs(eigenvalues - theta)) <= 1e-7 * theta
    np.testing.assert_allclose(run.ritz_values.max(), eigenvalues.max(), rtol=1e-10)


def test_lanczos_iterates_are_the_conjugate_gradient_iterates():
    jq = joint_l96_problem(n_steps=10).incremental_cost()
    for iterations in (1, 4, 9):
        cg = minimize_inner(jq, "cg", max_iterations=iterations, gradient_reduction=1e-14)
        lz = minimize_inner(jq, "lanczos", max_iterations=iterations, gradient_reduction=1e-14)
        assert np.linalg.norm(lz.u - cg.u) <= 1e-9 * np.linalg.norm(cg.u)
        np.testing.assert_allclose(lz.gradient_norm, cg.gradient_norm, rtol=1e-6)
        np.testing.assert_allclose(lz.J, cg.J, rtol=1e-12)


def test_spectral_factors_give_the_inverse_of_the_hessian_in_the_ritz_space():
    rng = np.random.default_rng(3)
    n, r = 30, 5
    V = np.linalg.qr(rng.standard_normal((n, r)))[0]
    theta = 1.0 + 10.0 * rng.uniform(size=r)
    A = np.eye(n) + V @ np.diag(theta - 1.0) @ V.T  # identity outside span(V)
    S = SpectralPreconditioner(n).extended(SpectralFactor(V, theta))
    S_matrix = np.column_stack([S.apply(e) for e in np.eye(n)])
    np.testing.assert_allclose(S_matrix @ S_matrix.T, np.linalg.inv(A), atol=1e-13)
    np.testing.assert_allclose(S_matrix.T @ A @ S_matrix, np.eye(n), atol=1e-12)  # perfectly preconditioned
    x = rng.standard_normal(n)
    np.testing.assert_allclose(S.inverse_t(S.apply_t(x)), x, atol=1e-13)
    np.testing.assert_allclose(np.column_stack([S.apply_t(e) for e in np.eye(n)]), S_matrix.T, atol=1e-14)


def test_preconditioned_and_unpreconditioned_solves_reach_the_same_minimum():
    problem = joint_l96_problem()
    plain = problem.solve(method="lanczos", preconditioner="none")
    spectral = problem.solve(method="lanczos", preconditioner="spectral")
    assert plain.success and spectral.success
    assert abs(plain.final.J - spectral.final.J) <= 1e-9 * plain.final.J
    assert abs(plain.p[0] - spectral.p[0]) <= 1e-5
    assert np.linalg.norm(plain.x0 - spectral.x0) <= 1e-4 * np.linalg.norm(plain.x0)
    # the preconditioner was used: the inner loops after the first ran on S^T A S
    later = lambda result: sum(record["inner"].nit for record in result.outer[1:])
    assert later(spectral) < later(plain)


def test_spectral_preconditioner_is_refused_by_the_other_inner_methods():
    problem = small_joint_problem()
    with pytest.raises(ValueError, match="needs method 'lanczos'"):
        problem.solve(method="cg", preconditioner="spectral")
    with pytest.raises(ValueError, match="unknown preconditioner 'ilu'"):
        problem.solve(preconditioner="ilu")
    with pytest.raises(ValueError, match="needs transform=True"):
        problem.solve(method="lanczos", transform=False)


def spd_matrix(rng, n, spread=1e4):
    """``I + V diag(lambda) V^T``: an SPD matrix with distinct eigenvalues from 1 to ``spread``."""
    V = np.linalg.qr(rng.standard_normal((n, n)))[0]
    return V @ np.diag(np.geomspace(1.0, spread, n)) @ V.T


def as_matrix(apply, n):
    return np.column_stack([apply(e) for e in np.eye(n)])


def never(j, u, norm):
    return False


def test_limited_memory_factor_makes_the_hessian_the_identity_on_the_whole_krylov_space():
    """``H A V = V`` for all ``k`` Ritz vectors of a ``k``-step Lanczos, converged or not; ``H``
    is SPD and is ``T T``, ``T`` symmetric."""
    rng = np.random.default_rng(5)
    n, k = 30, 10
    A = spd_matrix(rng, n)
    run = lanczos(lambda v: A @ v, rng.standard_normal(n), k, never)
    assert np.sum(run.ritz_residuals > 1e-3 * run.ritz_values) >= 5  # most pairs have not converged
    T = as_matrix(SpectralPreconditioner(n).extended(run.preconditioner_factor()).apply, n)
    np.testing.assert_allclose(T, T.T, atol=1e-13)
    H = T @ T
    assert np.linalg.eigvalsh(H).min() > 0
    V = run.ritz_vectors
    assert np.max(np.abs(H @ A @ V - V)) <= 1e-9
    # any subset of the pairs: the r largest (posterior_rank = r)
    largest = np.argsort(run.ritz_values)[::-1][:4]
    T4 = as_matrix(SpectralPreconditioner(n).extended(run.preconditioner_factor(rank=4)).apply, n)
    V4 = run.ritz_vectors[:, largest]
    assert np.max(np.abs(T4 @ T4 @ A @ V4 - V4)) <= 1e-9
    # negative control: the spectral factor of the same pairs without the q_{k+1} correction does not
    spectral = as_matrix(SpectralPreconditioner(n).extended(run.factor(tolerance=np.inf)).apply, n)
    assert np.max(np.abs(spectral @ spectral @ A @ V - V)) > 1e-3


def test_with_an_unchanged_hessian_the_next_solve_takes_at_most_n_minus_k_plus_one_iterations():
    """``H A`` is the identity on the ``k``-dimensional Krylov space of the first solve, so the
    preconditioned matrix has at most ``n - k + 1`` distinct eigenvalues: CG ends in as many steps."""
    rng = np.random.default_rng(6)
    n, k = 30, 12
    A = spd_matrix(rng, n)
    first = lanczos(lambda v: A @ v, rng.standard_normal(n), k, never)
    S = SpectralPreconditioner(n).extended(first.preconditioner_factor())
    g = rng.standard_normal(n)
    reduced = lambda j, u, norm: norm <= 1e-9 * np.linalg.norm(g)
    second = lanczos(lambda v: A @ v, g, n, reduced, preconditioner=S)
    assert second.nit <= n - k + 1
    np.testing.assert_allclose(A @ second.u, -g, atol=1e-8 * np.linalg.norm(g))
    # negative control: without it, the same solve needs (nearly) all n steps
    assert lanczos(lambda v: A @ v, g, n, reduced).nit > n - k + 1


def test_a_stale_preconditioner_is_dropped_after_one_product_and_a_fresh_one_is_kept():
    rng = np.random.default_rng(7)
    n = 100
    A = spd_matrix(rng, n)
    g = rng.standard_normal(n)
    reduced = lambda j, u, norm: norm <= 1e-6 * np.linalg.norm(g)
    products = []

    def hessian_vector(v):
        products.append(1)
        return A @ v

    plain = lanczos(hessian_vector, g, 2 * n, reduced)
    plain_products = len(products)
    other = spd_matrix(np.random.default_rng(8), n)  # another Hessian: its pairs are stale for A
    stale_S = SpectralPreconditioner(n).extended(lanczos(lambda v: other @ v, rng.standard_normal(n), 20, never).preconditioner_factor())
    products.clear()
    dropped = lanczos(hessian_vector, g, 2 * n, reduced, preconditioner=stale_S, stale=STALE)
    assert dropped.stale and dropped.preconditioner is None
    assert len(products) == plain_products + 1  # the probe, then the unpreconditioned solve
    np.testing.assert_allclose(dropped.u, plain.u, rtol=1e-12, atol=1e-14)
    assert dropped.nit == plain.nit
    # negative control: pairs of A itself are kept, at no extra product
    fresh_S = SpectralPreconditioner(n).extended(lanczos(lambda v: A @ v, rng.standard_normal(n), 20, never).preconditioner_factor())
    products.clear()
    kept = lanczos(hessian_vector, g, 2 * n, reduced, preconditioner=fresh_S, stale=STALE)
    assert not kept.stale and kept.preconditioner is fresh_S
    assert len(products) == kept.nit < plain.nit
    # without the test the stale pairs are used, and cost iterations
    assert lanczos(lambda v: A @ v, g, 2 * n, reduced, preconditioner=stale_S).nit > plain.nit


def test_outer_loops_carry_the_pairs_from_the_second_on_and_drop_them_when_stale():
    """Loop 1 (the background's pairs) is never preconditioned; from loop 2 on each inner loop
    runs on ``S`` or says it dropped it, at one product; near the minimum, where the Hessian no
    longer changes, the preconditioned inner loops need less than half the iterations."""
    problem = joint_l96_problem()
    options = dict(method="lanczos", outer_loops=6, max_iterations=200, gradient_reduction=1e-6, tolerance=0.0)
    spectral = problem.solve(preconditioner="spectral", **options)
    plain = problem.solve(preconditioner="none", **options)
    inner = [record["inner"] for record in spectral.outer]
    assert inner[0].lanczos.preconditioner is None and inner[1].lanczos.preconditioner is None
    assert not inner[1].lanczos.stale
    for loop in inner[2:]:
        assert (loop.lanczos.preconditioner is None) == loop.lanczos.stale
        assert loop.nfev == loop.nit + loop.lanczos.stale
        assert ("stale" in loop.message) == loop.lanczos.stale
    assert any(loop.lanczos.stale for loop in inner) and not all(loop.lanczos.stale for loop in inner[2:])
    for late, reference in zip(inner[-2:], [record["inner"] for record in plain.outer[-2:]]):
        assert late.lanczos.preconditioner is not None and late.nit < 0.5 * reference.nit
    assert abs(spectral.final.J - plain.final.J) <= 1e-9 * plain.final.J
