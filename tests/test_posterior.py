"""The low-rank Gauss-Newton posterior from the Ritz pairs equals the dense inverse Hessian
when Lanczos has converged, with and without preconditioning, and the limited-memory
parameter covariance behaves as a covariance."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fourdvar.covariances import Dense, Diagonal
from fourdvar.lanczos import SpectralPreconditioner, lanczos
from fourdvar.posterior import LowRankCovariance, Posterior
from tests.test_lanczos import small_joint_problem


def dense_posterior(problem, x0, p):
    """``(B^-1 + ... ; P^-1 + ...)^-1``: the inverse of the Hessian in physical variables."""
    return np.linalg.inv(problem.incremental_cost(x0, p, transform=False).hessian_matrix())


def as_matrix(apply, size):
    return np.column_stack([apply(e) for e in np.eye(size)])


def full_lanczos(**options):
    return dict(method="lanczos", max_iterations=13, gradient_reduction=1e-15, tolerance=0.0, **options)


def test_posterior_of_a_solve_is_the_dense_inverse_hessian_at_its_analysis():
    """``result.posterior`` is ``A^-1`` at the last linearisation (the analysis), not at the
    points where the inner loops ran."""
    problem = small_joint_problem()
    result = problem.solve(outer_loops=1, **full_lanczos(preconditioner="none"))
    exact = dense_posterior(problem, result.x0, result.p)
    posterior = result.posterior
    Pa = as_matrix(posterior.apply, posterior.size)
    assert np.max(np.abs(Pa - exact)) <= 1e-8 * np.max(np.abs(exact))
    np.testing.assert_allclose(posterior.std_x0, np.sqrt(np.diag(exact))[:12], rtol=1e-8)
    np.testing.assert_allclose(posterior.std_p, np.sqrt(np.diag(exact))[12:], rtol=1e-8)
    assert np.all(posterior.std_x0 < problem.cost.B.std)  # the observations reduced the uncertainty
    assert posterior.method == "dense" and posterior.pairs == posterior.converged == 13 and posterior.std_error < 1e-12
    # negative control: the inverse Hessian where the inner loop ran (the background) is another matrix
    first = dense_posterior(problem, problem.cost.xb, problem.cost.pb)
    assert np.max(np.abs(Pa - first)) > 1e-2 * np.max(np.abs(exact))


def test_posterior_from_two_preconditioned_lanczos_runs_is_the_dense_inverse_hessian_at_the_second_point():
    """``A_2^-1 = S (S^T A_2 S)^-1 S^T`` whatever ``S``: the first outer loop's pairs precondition
    the second, whose own pairs complete the posterior at the second linearisation point."""
    problem = small_joint_problem()
    never = lambda j, u, norm: False
    jq1 = problem.incremental_cost()
    run1 = lanczos(jq1.hessian_vector, jq1.value_and_gradient(np.zeros(13))[1], 13, never)
    S = SpectralPreconditioner(13).extended(run1.factor())
    x1, p1, _ = jq1.analysis(run1.u)
    jq2 = problem.incremental_cost(x1, p1)
    run2 = lanczos(jq2.hessian_vector, jq2.value_and_gradient(np.zeros(13))[1], 13, never, preconditioner=S)
    posterior = Posterior(problem.cost, problem.control, S.extended(run2.factor()))
    exact = dense_posterior(problem, x1, p1)
    Pa = as_matrix(posterior.apply, 13)
    assert np.max(np.abs(Pa - exact)) <= 1e-8 * np.max(np.abs(exact))
    # negative control: the first point's inverse Hessian is a different matrix
    first_exact = dense_posterior(problem, problem.cost.xb, problem.cost.pb)
    assert np.max(np.abs(Pa - first_exact)) > 1e-6 * np.max(np.abs(exact))


def test_posterior_samples_have_the_posterior_covariance():
    problem = small_joint_problem()
    posterior = problem.solve(outer_loops=1, **full_lanczos(preconditioner="none")).posterior
    samples = posterior.sample(np.random.default_rng(0), 40000)
    assert samples.shape == (40000, 13)
    exact = as_matrix(posterior.apply, 13)
    empirical = samples.T @ samples / samples.shape[0]
    assert np.linalg.norm(empirical - exact) <= 0.03 * np.linalg.norm(exact)
    # negative control: samples of the prior do not have it
    prior = np.column_stack([np.column_stack([problem.cost.B.sample(np.random.default_rng(i)) for i in range(4000)]).T,
                             0.5 * np.random.default_rng(9).standard_normal((4000, 1))])
    assert np.linalg.norm(prior.T @ prior / 4000 - exact) > 0.1 * np.linalg.norm(exact)


def test_params_covariance_is_the_marginal_block_and_a_consistent_covariance():
    problem = small_joint_problem()
    result = problem.solve(outer_loops=1, **full_lanczos(preconditioner="none"))
    posterior = result.posterior
    exact = dense_posterior(problem, result.x0, result.p)[12:, 12:]
    P_next = posterior.params_covariance()
    assert isinstance(P_next, LowRankCovariance) and P_next.size == 1
    np.testing.assert_allclose(as_matrix(P_next.apply, 1), exact, rtol=1e-8)
    np.testing.assert_allclose(P_next.std**2, np.diag(exact), rtol=1e-8)


@pytest.mark.parametrize("base", ["diagonal", "dense", "low_rank"])
def test_low_rank_covariance_square_roots_inverse_and_noise_agree_with_dense_algebra(base):
    rng = np.random.default_rng(4)
    n, r = 25, 4
    if base == "diagonal":
        C0 = Diagonal(0.5 + rng.uniform(size=n))
    elif base == "dense":
        M = rng.standard_normal((n, n))
        C0 = Dense(0.1 * M @ M.T + np.eye(n))
    else:
        C0 = LowRankCovariance(Diagonal(0.5 + rng.uniform(size=n)), np.linalg.qr(rng.standard_normal((n, 2)))[0], np.array([-0.6, 2.0]))
    X = rng.standard_normal((n, r)) / np.sqrt(n)
    K = -0.5 * np.eye(r) + 0.2 * np.ones((r, r))
    C = LowRankCovariance.update(C0, X, K)
    C0_matrix = as_matrix(C0.apply, n)
    C0_sqrt = as_matrix(C0.sqrt, n)
    expected = C0_sqrt @ (np.eye(n) + X @ K @ X.T) @ C0_sqrt.T
    assert np.allclose(C0_sqrt @ C0_sqrt.T, C0_matrix, atol=1e-12)
    matrix = as_matrix(C.apply, n)
    np.testing.assert_allclose(matrix, expected, atol=1e-12)
    np.testing.assert_allclose(as_matrix(C.sqrt, n) @ as_matrix(C.sqrt_t, n), matrix, atol=1e-12)
    np.testing.assert_allclose(as_matrix(C.solve, n) @ matrix, np.eye(n), atol=1e-9)
    np.testing.assert_allclose(C.variance(), np.diag(matrix), rtol=1e-12)
    sqrt_t = as_matrix(C.sqrt_t, n)
    np.testing.assert_allclose(sqrt_t, as_matrix(C.sqrt, n).T, atol=1e-13)
    if base != "dense":
        noisy = C.with_noise(0.3)
        np.testing.assert_allclose(as_matrix(noisy.apply, n), matrix + 0.09 * np.eye(n), atol=1e-12)
        assert isinstance(noisy.base, Diagonal) and noisy.rank <= C.rank
    else:
        with pytest.raises(ValueError, match="needs a diagonal base"):
            C.with_noise(0.3)
    # truncation keeps the largest updates and is then no longer exact
    truncated = LowRankCovariance.update(C0, X, K, max_rank=1)
    assert truncated.rank <= (3 if base == "low_rank" else 1)
    assert np.max(np.abs(as_matrix(truncated.apply, n) - expected)) > 1e-6


def test_posterior_from_every_lanczos_run_is_exact_after_a_full_run_and_holds_the_last_runs_curvature():
    """Block BFGS over the outer loops' Lanczos runs (:meth:`Posterior.from_lanczos_runs`):
    ``A^-1`` itself after one run over the whole space; after a converged first run and a
    short, preconditioned second one at another point, ``H^-1 A_2 s = s`` on the second run's
    Krylov space, ``A_2 s`` from Hessian products of its own."""
    problem = small_joint_problem()
    never = lambda j, u, norm: False
    result = problem.solve(outer_loops=1, **full_lanczos(preconditioner="none"))
    posterior = Posterior.from_lanczos_runs(problem.cost, problem.control, [result.outer[0]["inner"].lanczos])
    exact = dense_posterior(problem, problem.cost.xb, problem.cost.pb)
    assert np.max(np.abs(as_matrix(posterior.apply, 13) - exact)) <= 1e-8 * np.max(np.abs(exact))

    jq1 = problem.incremental_cost()
    run1 = lanczos(jq1.hessian_vector, jq1.value_and_gradient(np.zeros(13))[1], 13, never)
    x1, p1, _ = jq1.analysis(run1.u)
    jq2 = problem.incremental_cost(x1, p1)
    S = SpectralPreconditioner(13).extended(run1.factor(rank=3))
    run2 = lanczos(jq2.hessian_vector, jq2.value_and_gradient(np.zeros(13))[1], 4, never, preconditioner=S)
    posterior = Posterior.from_lanczos_runs(problem.cost, problem.control, [run1, run2])
    s = np.column_stack([S.apply(v) for v in run2.ritz_vectors.T])
    A2s = np.column_stack([jq2.hessian_vector(column) for column in s.T])
    secant = np.column_stack([posterior.control_apply(column) for column in A2s.T])
    assert np.max(np.abs(secant - s)) <= 1e-10 * np.max(np.abs(s))
    assert np.min(np.linalg.eigvalsh(as_matrix(posterior.control_apply, 13))) > 0.0
    # negative control: without the Lanczos residual term the four pairs are not A_2's curvature
    residual_free = dataclasses.replace(run2, ritz_couplings=np.zeros_like(run2.ritz_couplings))
    wrong = Posterior.from_lanczos_runs(problem.cost, problem.control, [run1, residual_free])
    assert np.max(np.abs(np.column_stack([wrong.control_apply(c) for c in A2s.T]) - s)) > 1e-4 * np.max(np.abs(s))
