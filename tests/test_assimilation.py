"""Incremental 4D-Var minimisation: exactness on a linear problem, agreement with a direct
minimisation of the nonlinear cost, joint state-parameter estimation, and failure modes."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize

from fourdvar import FourDVar
from fourdvar.covariances import Diagonal, PeriodicCorrelation
from fourdvar.minimize import minimize_inner
from fourdvar.window import DivergenceError
from models import MLP, Lorenz96
from observations import Identity, Linear, synthetic_observations


def spun_up_state(n=40, seed=0, steps=1000):
    model = Lorenz96(n_state=n)
    x = 8.0 + np.random.default_rng(seed).standard_normal(n)
    return model.forecast(x, np.empty(0), steps)[-1]


def lorenz96_twin(seed, n_steps, estimate_forcing=False, forcing_guess=7.0):
    """Truth F = 8; observations of every variable at every step with std 1; B = I."""
    rng = np.random.default_rng(seed)
    truth = Lorenz96(40)
    x_true = spun_up_state(seed=seed)
    trajectory = truth.forecast(x_true, np.empty(0), n_steps)
    obs = synthetic_observations(trajectory, list(range(n_steps + 1)), Identity(n_state=40), 1.0, rng)
    xb = x_true + rng.standard_normal(40)
    model = Lorenz96(40, forcing=8.0, estimate_forcing=estimate_forcing)
    if estimate_forcing:
        problem = FourDVar(model, obs, xb=xb, B=Diagonal(1.0, size=40), pb=np.array([forcing_guess]), P=Diagonal(1.0, size=1), control="both")
    else:
        problem = FourDVar(model, obs, xb=xb, B=Diagonal(1.0, size=40), control="state")
    return problem, x_true


# --- a linear problem: one outer loop is exact ---------------------------------------------------


@pytest.mark.parametrize("method", ["lbfgs", "cg"])
@pytest.mark.parametrize("transform", [True, False])
def test_linear_model_and_operator_one_outer_loop_gives_closed_form_minimiser(method, transform):
    rng = np.random.default_rng(1)
    n, m, L = 20, 12, 6
    model = MLP([n, n], ["identity"])  # x_{k+1} = W x_k + b: an affine model
    p = np.zeros(model.n_params)
    (W,) = model.network.weights(p)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    W[:, :-1] = 0.97 * Q + 0.05 * rng.standard_normal((n, n))
    W[:, -1] = 0.1 * rng.standard_normal(n)
    H = rng.standard_normal((m, n))
    operator = Linear(matrix=H)
    x_true = rng.standard_normal(n)
    steps = [0, 2, 3, 6]
    obs = synthetic_observations(model.forecast(x_true, p, L), steps, operator, 0.5, rng)
    B = PeriodicCorrelation(n, 2.0, std=1.0 + 0.5 * rng.uniform(size=n), shape="soar")
    xb = x_true + B.sample(rng)

    # closed form: x_k = A_k x0 + c_k;  xa = (B^-1 + sum A_k^T H^T R^-1 H A_k)^-1 (B^-1 xb + sum A_k^T H^T R^-1 (y_k - H c_k))
    A_power, c = np.eye(n), np.zeros(n)
    B_dense = np.column_stack([B.apply(e) for e in np.eye(n)])
    hessian = np.linalg.inv(B_dense)
    rhs = hessian @ xb
    for k in range(L + 1):
        if k in steps:
            y = obs.values_at(k)
            hessian = hessian + A_power.T @ H.T @ H @ A_power / 0.25
            rhs = rhs + A_power.T @ H.T @ (y - H @ c) / 0.25
        A_power, c = W[:, :-1] @ A_power, W[:, :-1] @ c + W[:, -1]
    x_closed = np.linalg.solve(hessian, rhs)

    problem = FourDVar(model, obs, xb=xb, B=B, pb=p, control="state", n_steps=L)
    result = problem.solve(outer_loops=1, method=method, max_iterations=500, gradient_reduction=1e-13, transform=transform, tolerance=0.0)
    assert np.linalg.norm(result.x0 - x_closed) / np.linalg.norm(x_closed) < 1e-8
    assert np.all(result.p == p)


# --- Lorenz-96: the incremental analysis is the minimum of the nonlinear cost ----------------------


def lorenz96_cost_written_here(problem, n_steps, estimate_forcing):
    """The nonlinear J of a :func:`lorenz96_twin` problem, written here (RK4 of the L96 tendency,
    dt = 0.05, every variable observed at every step, R = I, B = I, P = I) for a batch of
    controls ``(x0, F)`` as columns, so a central-difference gradient is one batched forecast."""
    xb = problem.cost.xb
    y = np.array([slot.values for slot in problem.cost.slots])  # (n_steps + 1, 40)
    Fb = problem.cost.pb[0] if estimate_forcing else 8.0

    def J(U):
        x, F = U[:40], (U[40] if estimate_forcing else np.full(U.shape[1], 8.0))
        tendency = lambda x: (np.roll(x, -1, 0) - np.roll(x, 2, 0)) * np.roll(x, 1, 0) - x + F
        Jo = 0.5 * np.sum((x - y[0][:, None]) ** 2, axis=0)
        for k in range(1, n_steps + 1):
            k1 = tendency(x)
            k2 = tendency(x + 0.025 * k1)
            k3 = tendency(x + 0.025 * k2)
            k4 = tendency(x + 0.05 * k3)
            x = x + 0.05 / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            Jo += 0.5 * np.sum((x - y[k][:, None]) ** 2, axis=0)
        Jb = 0.5 * np.sum((U[:40] - xb[:, None]) ** 2, axis=0)
        return Jb + Jo + (0.5 * (F - Fb) ** 2 if estimate_forcing else 0.0)

    return J


def exact_minimum(problem, n_steps, estimate_forcing):
    """``(J_min, control at the minimum)`` by scipy's L-BFGS-B on :func:`lorenz96_cost_written_here`
    with a central-difference gradient: independent of the project's model, adjoint and minimiser."""
    J = lorenz96_cost_written_here(problem, n_steps, estimate_forcing)
    u0 = np.concatenate([problem.cost.xb, problem.cost.pb]) if estimate_forcing else problem.cost.xb.copy()
    h = 1e-6

    def fun(u):
        steps = h * np.eye(u.size)
        values = J(np.column_stack([u, u[:, None] + steps, u[:, None] - steps]))
        return values[0], (values[1 : u.size + 1] - values[u.size + 1 :]) / (2 * h)

    result = scipy.optimize.minimize(fun, u0, jac=True, method="L-BFGS-B", options={"maxiter": 5000, "ftol": 1e-15, "gtol": 1e-7, "maxcor": 30})
    return result.fun, result.x


def test_lorenz96_state_analysis_with_default_settings_reaches_the_exact_minimum():
    problem, x_true = lorenz96_twin(seed=0, n_steps=10)
    result = problem.solve()
    assert result.success and result.status == 0 and result.message.startswith("converged after")
    J_exact, x_exact = exact_minimum(problem, 10, estimate_forcing=False)
    assert abs(result.final.J - J_exact) <= 1e-6 * J_exact
    assert np.linalg.norm(result.x0 - x_exact) <= 1e-3 * np.linalg.norm(x_exact)
    analysis_error = np.sqrt(np.mean((result.x0 - x_true) ** 2))
    background_error = np.sqrt(np.mean((problem.cost.xb - x_true) ** 2))
    assert analysis_error < background_error
    assert [record["J"] for record in result.outer] == sorted((record["J"] for record in result.outer), reverse=True)
    # negative control: one outer loop stops short of the minimum, and says so
    short = problem.solve(outer_loops=1)
    assert not short.success and short.status == 1 and "maximum of 1 outer loop" in short.message
    assert short.final.J - J_exact > 1e-6 * J_exact


def test_lorenz96_joint_state_and_forcing_with_default_settings_reaches_the_exact_minimum():
    problem, _ = lorenz96_twin(seed=0, n_steps=20, estimate_forcing=True)
    result = problem.solve()
    assert result.success and result.status == 0
    J_exact, u_exact = exact_minimum(problem, 20, estimate_forcing=True)
    assert abs(result.final.J - J_exact) <= 1e-6 * J_exact
    assert abs(result.p[0] - u_exact[40]) < 1e-4
    # the case: a fixed count of 3 outer loops is not enough here, and is reported as such
    short = problem.solve(outer_loops=3)
    assert not short.success and short.final.J - J_exact > 1e-6 * J_exact


@pytest.mark.parametrize("method", ["lbfgs", "cg"])
def test_other_inner_methods_converge_to_the_same_minimum(method):
    problem, _ = lorenz96_twin(seed=0, n_steps=10)
    reference = problem.solve()
    result = problem.solve(method=method, max_iterations=200)
    assert result.success
    assert abs(result.final.J - reference.final.J) <= 1e-7 * reference.final.J


def test_converged_outer_loops_stop_instead_of_burning_iterations_at_round_off():
    problem, _ = lorenz96_twin(seed=0, n_steps=10)
    result = problem.solve(outer_loops=30, method="lbfgs", max_iterations=200)
    assert result.success and len(result.outer) < 10
    # asking for more than round-off allows stops on round-off, with a plain message, not at max_iterations
    tight = problem.solve(outer_loops=30, tolerance=1e-20)
    assert len(tight.outer) < 30
    assert all(record["inner"].reason != "maximum" for record in tight.outer)
    assert tight.status == 3 and tight.success and "round-off" in tight.message
    assert abs(tight.final.J - result.final.J) <= 1e-7 * result.final.J
    assert "StopIteration" not in tight.message and "callback" not in tight.message


@pytest.mark.parametrize("seed", range(5))
def test_lorenz96_joint_analysis_recovers_forcing_within_a_few_tenths(seed):
    problem, _ = lorenz96_twin(seed=seed, n_steps=20, estimate_forcing=True)
    result = problem.solve(outer_loops=12, method="cg", max_iterations=100, gradient_reduction=1e-6)
    assert abs(result.p[0] - 8.0) < 0.3, result.p


# --- inner solvers ------------------------------------------------------------------------------------


def test_conjugate_gradient_and_lbfgs_find_the_same_inner_minimum():
    problem, _ = lorenz96_twin(seed=2, n_steps=10, estimate_forcing=True)
    jq = problem.incremental_cost()
    cg = minimize_inner(jq, "cg", max_iterations=300, gradient_reduction=1e-10)
    lbfgs = minimize_inner(jq, "lbfgs", max_iterations=1000, gradient_reduction=1e-10)
    assert cg.converged and lbfgs.converged
    assert np.linalg.norm(cg.u - lbfgs.u) <= 1e-8 * np.linalg.norm(cg.u)
    assert abs(cg.J[-1] - lbfgs.J[-1]) <= 1e-12 * abs(cg.J[0])
    # on a quadratic, CG needs no more iterations than L-BFGS
    assert cg.nit <= lbfgs.nit
    # the recorded CG cost (from the quadratic identity) equals a direct evaluation
    terms, _ = jq.value_and_gradient(cg.u)
    assert abs(terms.J - cg.J[-1]) <= 1e-10 * abs(cg.J[0])
    assert abs(terms.Jb - cg.Jb[-1]) <= 1e-10 * abs(cg.J[0])


def test_result_records_every_outer_and_inner_iteration():
    problem, _ = lorenz96_twin(seed=3, n_steps=5)
    result = problem.solve(outer_loops=2, max_iterations=7, gradient_reduction=1e-12, method="lbfgs")
    assert len(result.outer) == 2
    for record in result.outer:
        inner = record["inner"]
        assert inner.nit == 7 and not inner.converged and "7 iterations" in inner.message
        assert len(inner.J) == inner.nit + 1 == len(inner.gradient_norm) == len(inner.Jo)
        assert np.allclose(np.array(inner.J), np.array(inner.Jb) + np.array(inner.Jp) + np.array(inner.Jo), rtol=1e-14)
        assert inner.J[-1] < inner.J[0]
        assert inner.nfev >= inner.nit
    assert result.nit == 14 and not result.success
    assert result.final.J < result.outer[0]["J"]


def test_parameter_only_control_leaves_the_state_unchanged_and_minimises_over_the_parameters():
    problem, _ = lorenz96_twin(seed=4, n_steps=10, estimate_forcing=True)
    problem = FourDVar(problem.model, problem.cost.slots, xb=problem.cost.xb, B=problem.cost.B, pb=np.array([7.0]), P=Diagonal(1.0, size=1), control="params")
    result = problem.solve(outer_loops=8, method="cg", gradient_reduction=1e-8, tolerance=1e-16)
    assert np.all(result.x0 == problem.cost.xb)
    _, _, gp_start = problem.cost.gradient(problem.cost.xb, np.array([7.0]))
    _, _, gp = problem.cost.gradient(result.x0, result.p)
    assert abs(gp[0]) < 1e-6 * abs(gp_start[0])  # stationary in F with x0 held at xb
    assert result.final.J < result.outer[0]["J"]


# --- failure modes ---------------------------------------------------------------------------------------


def test_divergent_forecast_raises_error_naming_outer_loop_and_step():
    problem, _ = lorenz96_twin(seed=0, n_steps=10)
    unstable = Lorenz96(40, dt=2.0)  # RK4 with a far too long step blows up
    bad = FourDVar(unstable, problem.cost.slots, xb=problem.cost.xb, B=Diagonal(1.0, size=40))
    with pytest.raises(DivergenceError, match=r"outer loop 0: the model state is not finite at step \d+"):
        bad.solve(outer_loops=2)


def test_inner_loop_options_are_validated():
    problem, _ = lorenz96_twin(seed=0, n_steps=3)
    jq = problem.incremental_cost()
    with pytest.raises(ValueError, match="unknown inner method 'newton'"):
        minimize_inner(jq, "newton")
    with pytest.raises(ValueError, match="max_iterations must be at least 1"):
        minimize_inner(jq, "cg", max_iterations=0)
    with pytest.raises(ValueError, match="gradient_reduction must be in"):
        minimize_inner(jq, "cg", gradient_reduction=2.0)
    with pytest.raises(ValueError, match="no parameter covariance P"):
        FourDVar(Lorenz96(40, estimate_forcing=True), problem.cost.slots, xb=problem.cost.xb, B=Diagonal(1.0, size=40), pb=[8.0], control="both").solve()
    with pytest.raises(ValueError, match="give their background/fixed values pb"):
        FourDVar(Lorenz96(40, estimate_forcing=True), problem.cost.slots, xb=problem.cost.xb, B=Diagonal(1.0, size=40))


def test_params_posterior_covariance_is_the_inverse_hessian_block_in_physical_variables():
    """P^a from the preconditioned Hessian, P^1/2 (A^-1)_ww P^T/2, equals the pp block of the
    inverse of the unpreconditioned Hessian [B^-1 + ..., ...; ..., P^-1 + ...] (an independent path)."""
    from fourdvar.covariances import Dense
    from models import LocalMLP

    rng = np.random.default_rng(5)
    model = LocalMLP(n_state=8, hidden=[3], integrator="rk4", state_scale=4.0, init_output_scale=1.0)
    p_true = model.init_params(rng)
    x_true = spun_up_state(seed=5, n=8)
    trajectory = model.forecast(x_true, p_true, 5)
    obs = synthetic_observations(trajectory, list(range(6)), Identity(n_state=8), 1.0, rng)
    M = rng.standard_normal((model.n_params, model.n_params))
    P = Dense(0.01 * M @ M.T + 0.05 * np.eye(model.n_params))  # correlated, so P^1/2 is not diagonal
    problem = FourDVar(model, obs, xb=x_true + 0.3, B=Diagonal(0.5, size=8), pb=p_true + 0.1, P=P, control="both", n_steps=5)
    x0, p = x_true + 0.1, p_true + 0.05
    Pa = problem.params_posterior_covariance(x0, p)
    A_physical = problem.incremental_cost(x0, p, transform=False).hessian_matrix()
    np.testing.assert_allclose(Pa, np.linalg.inv(A_physical)[8:, 8:], rtol=1e-8, atol=1e-12)
    assert np.trace(Pa) < np.trace(P.matrix)  # the observations told us something about the weights
    with pytest.raises(ValueError, match="needs the parameters in the control"):
        FourDVar(model, obs, xb=x_true, B=Diagonal(0.5, size=8), pb=p_true, control="state").params_posterior_covariance()
