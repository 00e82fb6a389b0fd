"""``result.posterior`` is the Gauss-Newton inverse Hessian at the analysis: from the dense
Hessian for a small control, from a Lanczos of its own otherwise, whose error estimate is
honest; and the default outer loops stop at the minimum, saying why."""

from __future__ import annotations

import numpy as np
import pytest

from fourdvar import FourDVar
from fourdvar.covariances import Diagonal
from models import Lorenz96
from observations import Identity, synthetic_observations
from tests.test_lanczos import joint_l96_problem, small_joint_problem


def small_state_problem(seed=0, n=12, n_steps=6):
    """L96 with 12 variables, every one observed at every other step: state control only."""
    rng = np.random.default_rng(seed)
    truth = Lorenz96(n).forecast(Lorenz96(n).forecast(8.0 + rng.standard_normal(n), np.empty(0), 500)[-1], np.empty(0), n_steps)
    obs = synthetic_observations(truth, list(range(0, n_steps + 1, 2)), Identity(n_state=n), 1.0, rng)
    return FourDVar(Lorenz96(n), obs, xb=truth[0] + rng.standard_normal(n), B=Diagonal(1.2, size=n), n_steps=n_steps)


PROBLEMS = {"state": small_state_problem, "joint": small_joint_problem}


def dense_std(problem, result) -> np.ndarray:
    """``sqrt(diag(B^1/2 A^-1 B^T/2))`` at the analysis, from the Hessian in physical variables."""
    return np.sqrt(np.diag(np.linalg.inv(problem.incremental_cost(result.x0, result.p, transform=False).hessian_matrix())))


def std_error(problem, result) -> float:
    posterior = result.posterior
    std = np.concatenate([posterior.std_x0] + ([posterior.std_p] if posterior.std_p is not None else []))
    return float(np.max(np.abs(std / dense_std(problem, result) - 1.0)))


@pytest.mark.parametrize("kind", ["state", "joint"])
@pytest.mark.parametrize("preconditioner", ["none", "spectral"])
@pytest.mark.parametrize("settings", [{}, {"gradient_reduction": 1e-12}])
def test_default_posterior_is_the_dense_inverse_hessian_at_the_analysis(kind, preconditioner, settings):
    problem = PROBLEMS[kind]()
    result = problem.solve(preconditioner=preconditioner, **settings)
    assert result.success and result.posterior.method == "dense"
    assert std_error(problem, result) <= 1e-10
    assert result.posterior.pairs == result.posterior.converged == problem.incremental_cost().size
    # negative control: the inverse Hessian at the background is not it
    background = np.sqrt(np.diag(np.linalg.inv(problem.incremental_cost(transform=False).hessian_matrix())))
    assert np.max(np.abs(result.posterior.std_x0 / background[:12] - 1.0)) > 1e-3


@pytest.mark.parametrize("kind", ["state", "joint"])
@pytest.mark.parametrize("preconditioner", ["none", "spectral"])
def test_posterior_lanczos_is_exact_when_asked_and_its_error_estimate_bounds_a_short_one(kind, preconditioner):
    problem = PROBLEMS[kind]()
    exact = problem.solve(preconditioner=preconditioner, posterior_method="lanczos", posterior_accuracy=1e-12)
    assert exact.posterior.method == "lanczos" and std_error(problem, exact) <= 1e-8
    short = problem.solve(preconditioner=preconditioner, posterior_method="lanczos", posterior_iterations=3)
    assert short.posterior.pairs == 3
    error = std_error(problem, short)
    assert error > 1e-6  # three pairs are not the whole posterior
    assert short.posterior.std_error >= 0.5 * error  # the estimate is not blind to the error


def test_posterior_lanczos_on_a_larger_window_reaches_the_requested_accuracy_with_few_pairs():
    problem = joint_l96_problem(seed=11, n_steps=10)
    result = problem.solve(posterior_method="lanczos", posterior_accuracy=0.01)
    assert std_error(problem, result) <= 0.02
    assert result.posterior.pairs < problem.incremental_cost().size  # less than the dense Hessian's 41 columns


def test_default_outer_loops_converge_a_window_that_needs_more_than_ten():
    problem = joint_l96_problem(seed=11, n_steps=30)
    result = problem.solve(posterior_method="none")
    assert result.success and len(result.outer) > 10
    assert result.message.startswith("converged after")
    J_min = problem.solve(tolerance=1e-15, outer_loops=100, posterior_method="none").final.J
    assert abs(result.final.J - J_min) <= 1e-6 * J_min
    # negative control: ten outer loops stop short, and say so
    short = problem.solve(outer_loops=10, posterior_method="none")
    assert not short.success and short.status == 1 and "maximum of 10" in short.message
    assert short.final.J - J_min > 1e-6 * J_min


def test_a_run_with_posterior_accuracy_writes_the_analysis_std_of_each_window():
    from fourdvar.app.plan import Plan
    from fourdvar.app.run import execute
    from tests.test_experiments import tiny

    assimilation = {"control": ["state"], "posterior_accuracy": 0.01, "inner": {"method": "lanczos", "max_iterations": 30}}
    dataset = execute(Plan.from_config(tiny(assimilation=assimilation)))
    std = dataset["analysis_std"].values
    assert std.shape == (dataset.sizes["cycle"], dataset.sizes["x"])
    assert np.all(std > 0) and np.all(std < dataset["background_std"].values[:, None])  # the observations taught something
    assert "analysis_std" not in execute(Plan.from_config(tiny(assimilation={"control": ["state"]})))
