"""Weak-constraint 4D-Var: the forced window's TL/AD, the gradients of J and Jq with the
model-error forcing eta, agreement with a direct minimisation of the nonlinear weak J, the
strong-constraint limit Q -> 0, and a negative control."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize

from fourdvar import FourDVar, checks
from fourdvar.cost import Control, FourDVarCost, IncrementalCost
from fourdvar.covariances import Diagonal, PeriodicCorrelation
from fourdvar.lanczos import SpectralPreconditioner, lanczos
from fourdvar.posterior import Posterior
from fourdvar.window import ForcedWindowLinearization, WindowLinearization, forced_forecast, n_sub_windows
from models import Hybrid, Lorenz96
from observations import Identity, Square, Subset, synthetic_observations

N = 40
NO_PARAMS = np.empty(0)


def spun_up_state(seed=0, steps=500):
    x = 8.0 + np.random.default_rng(seed).standard_normal(N)
    return Lorenz96(N).forecast(x, NO_PARAMS, steps)[-1]


def truth_with_model_error(model, x0, p, n_steps, every, error_std, rng):
    """A truth run that carries its own forcing: ``x_k = M(x_{k-1}) + eta_j``, ``eta_j ~ N(0, error_std^2 I)``."""
    eta = error_std * rng.standard_normal((n_sub_windows(n_steps, every), model.n_state))
    trajectory = [np.asarray(x0, dtype=float)]
    for k in range(1, n_steps + 1):
        trajectory.append(model.step(trajectory[-1], p) + eta[(k - 1) // every])
    return np.array(trajectory), eta


def weak_twin(n_steps=10, every=5, seed=0, operator=None, Q=None, B=None, model=None, p=NO_PARAMS, P=None, pb=None):
    """A weak-constraint cost on observations of a truth with model error (std 0.3)."""
    rng = np.random.default_rng(seed)
    model = model or Lorenz96(N)
    trajectory, _ = truth_with_model_error(model, spun_up_state(seed), p, n_steps, every, 0.3, rng)
    operator = operator or Subset(n_state=N, indices=list(range(0, N, 2)))
    obs = synthetic_observations(trajectory, list(range(0, n_steps + 1, 2)), operator, 0.5, rng)
    B = B or Diagonal(0.5, size=N)
    xb = trajectory[0] + B.sample(rng)
    Q = Q or Diagonal(0.3, size=N)
    return FourDVarCost(model, obs, xb, B=B, pb=p if pb is None else pb, P=P, n_steps=n_steps, Q=Q, model_error_every=every)


def hybrid_case(seed=1):
    hybrid = Hybrid({"type": "lorenz96", "n_state": N, "estimate_forcing": True}, {"type": "local_mlp", "n_state": N, "hidden": [8], "init_output_scale": 0.3})
    p = hybrid.init_params(np.random.default_rng(seed))
    return hybrid, p


# --- the forced window -----------------------------------------------------------------------


def test_forced_trajectory_adds_each_sub_windows_forcing_after_every_step():
    model = Lorenz96(N)
    x0 = spun_up_state()
    eta = 0.1 * np.random.default_rng(0).standard_normal((3, N))
    trajectory = forced_forecast(model, x0, NO_PARAMS, 10, eta, every=4)
    assert n_sub_windows(10, 4) == 3  # steps 1-4, 5-8, 9-10
    x = x0
    for k in range(1, 11):
        x = model.step(x, NO_PARAMS) + eta[(k - 1) // 4]
        assert np.array_equal(trajectory[k], x)
    window = ForcedWindowLinearization(model, x0, NO_PARAMS, 10, eta, every=4)
    assert np.array_equal(window.states, trajectory)
    free = forced_forecast(model, x0, NO_PARAMS, 10, np.zeros((3, N)), every=4)
    assert np.array_equal(free, model.forecast(x0, NO_PARAMS, 10))


@pytest.mark.parametrize("every", [1, 3, 12])
@pytest.mark.parametrize("case", ["lorenz96", "hybrid"])
def test_forced_window_adjoint_passes_dot_product_test(case, every):
    model, p = (Lorenz96(N), NO_PARAMS) if case == "lorenz96" else hybrid_case()
    rng = np.random.default_rng(2)
    eta = 0.1 * rng.standard_normal((n_sub_windows(12, every), N))
    window = ForcedWindowLinearization(model, spun_up_state(), p, 12, eta, every)
    forcings = {k: rng.standard_normal(N) for k in (0, 3, 7, 12)}
    result = checks.forced_window_adjoint_test(window, rng.standard_normal(N), rng.standard_normal(model.n_params),
                                               rng.standard_normal(eta.shape), forcings)
    assert result.value < 1e-12, str(result)
    # without deta it is the strong-constraint window's TL/AD, at the forced trajectory
    assert checks.window_adjoint_test(window, rng.standard_normal(N), rng.standard_normal(model.n_params), forcings).value < 1e-12


def test_forced_window_tl_matches_the_forced_forecast_to_first_order():
    model, p = hybrid_case()
    rng = np.random.default_rng(3)
    eta = 0.1 * rng.standard_normal((2, N))
    window = ForcedWindowLinearization(model, spun_up_state(), p, 10, eta, every=5)
    n, n_p = N, model.n_params
    u = np.concatenate([window.states[0], p, eta.ravel()])
    h = np.concatenate([rng.standard_normal(n), 0.1 * rng.standard_normal(n_p), 0.1 * rng.standard_normal(eta.size)])
    result = checks.taylor_test(
        lambda v: forced_forecast(model, v[:n], v[n : n + n_p], 10, v[n + n_p :].reshape(eta.shape), 5)[-1],
        lambda dv: window.tl(dv[:n], dv[n : n + n_p], deta=dv[n + n_p :].reshape(eta.shape))[-1],
        u, h, name="forced window TL",
    )
    assert result.passed, checks.format_table([result])


# --- gradients of J and Jq, Hessian symmetry ------------------------------------------------------


WEAK_CASES = [
    ("lorenz96", ["state", "model_error"], 5),
    ("lorenz96", ["state", "model_error"], 1),
    ("lorenz96", ["model_error"], 4),
    ("hybrid", ["state", "params", "model_error"], 5),
    ("hybrid", ["state", "params"], 5),  # eta fixed (not in the control) but nonzero
]


def weak_case(case, every, operator=None):
    if case == "lorenz96":
        return weak_twin(n_steps=10, every=every, operator=operator, Q=PeriodicCorrelation(N, 2.0, std=0.3)), NO_PARAMS
    model, p = hybrid_case()
    P = Diagonal(0.1 * (np.abs(p) + 0.1))
    return weak_twin(n_steps=10, every=every, operator=operator, Q=PeriodicCorrelation(N, 2.0, std=0.3), model=model, p=p, P=P), p


@pytest.mark.parametrize("case, control, every", WEAK_CASES)
@pytest.mark.parametrize("transform", [True, False])
def test_weak_constraint_checks_pass(case, control, every, transform):
    """Forced-window adjoint < 1e-12, Taylor slopes 1 +- 0.1 for J and Jq, Hessian symmetric, grad Jq(0) == grad J."""
    cost, p = weak_case(case, every, operator=Square(n_state=N, indices=list(range(0, N, 2))))
    rng = np.random.default_rng(4)
    eta = np.array([cost.Q.sample(rng) for _ in range(cost.n_sub)])  # a plausible forcing: |eta_j|_{Q^-1} ~ sqrt(n)
    results = checks.check_weak_cost(cost, cost.xb, p, eta, control, rng, transform=transform)
    assert all(r.passed for r in results), checks.format_table(results)
    assert results[0].value < 1e-12 and results[3].value < 1e-12


@pytest.mark.parametrize("control", [["state", "model_error"], ["state", "params", "model_error"]])
@pytest.mark.parametrize("transform", [True, False])
def test_weak_incremental_cost_is_exactly_quadratic(control, transform):
    """Jq(u + a h) - Jq(u) = a <g, h> + a^2/2 <h, A h> exactly: the gradient and the Hessian agree."""
    cost, p = weak_case("hybrid", 3, operator=Square(n_state=N))
    jq = IncrementalCost(cost, cost.xb, p, control=control, transform=transform, eta=0.05 * np.ones((cost.n_sub, N)))
    rng = np.random.default_rng(5)
    u, h = 0.3 * rng.standard_normal(jq.size), rng.standard_normal(jq.size)
    terms, g = jq.value_and_gradient(u)
    Ah = jq.hessian_vector(h)
    assert h @ Ah > 0
    for a in [1.0, 1e-2, 1e-4]:
        exact_change = a * (g @ h) + 0.5 * a * a * (h @ Ah)
        change = jq.value_and_gradient(u + a * h)[0].J - terms.J
        assert abs(change - exact_change) <= 1e-9 * abs(exact_change) + 1e-12 * abs(terms.J)
    assert terms.Jm == pytest.approx(jq.model_error_term(u), rel=1e-14)


def test_weak_incremental_cost_at_zero_equals_the_nonlinear_cost():
    cost, p = weak_case("lorenz96", 5)
    rng = np.random.default_rng(6)
    eta = np.array([cost.Q.sample(rng) for _ in range(cost.n_sub)])
    terms = cost.evaluate(cost.xb, p, eta)
    expected_Jm = 0.5 * sum(e @ cost.Q.solve(e) for e in eta)
    assert terms.Jm == pytest.approx(expected_Jm, rel=1e-12) and terms.J == terms.Jb + terms.Jp + terms.Jo + terms.Jm
    for transform in (True, False):
        jq = IncrementalCost(cost, cost.xb, p, control=["state", "model_error"], transform=transform, eta=eta)
        q_terms = jq.value_and_gradient(np.zeros(jq.size))[0]
        assert abs(q_terms.J - terms.J) <= 1e-11 * terms.J
        assert abs(q_terms.Jm - terms.Jm) <= 1e-10 * terms.Jm


# --- the minimum ---------------------------------------------------------------------------------


def own_weak_cost(model, cost: FourDVarCost, b_std, q_std, r_std, indices):
    """The nonlinear weak-constraint J and its gradient, written out here independently of the
    package's cost and window: the test's own forced model loop and its adjoint (the model's
    ``step_ad``), for B = b^2 I, Q = q^2 I, R = r^2 I and subset observations.  The control is
    ``z = [x0; eta / q]`` (eta scaled by its std, so that L-BFGS-B sees a well-scaled problem)."""
    L, every, n_sub = cost.n_steps, cost.every, cost.n_sub
    observed = {slot.step: slot.values for slot in cost.slots}

    def J_and_gradient(z):
        x0, eta = z[:N], q_std * z[N:].reshape(n_sub, N)
        states = [x0]
        for k in range(1, L + 1):
            states.append(model.step(states[-1], NO_PARAMS) + eta[(k - 1) // every])
        misfits = {k: (states[k][indices] - y) / r_std**2 for k, y in observed.items()}
        J = 0.5 * np.sum((x0 - cost.xb) ** 2) / b_std**2 + 0.5 * np.sum(eta**2) / q_std**2
        J += sum(0.5 * r_std**2 * np.sum(m**2) for m in misfits.values())
        ax, a_eta = np.zeros(N), np.zeros((n_sub, N))
        for k in range(L, 0, -1):
            if k in misfits:
                ax[indices] += misfits[k]
            a_eta[(k - 1) // every] += ax
            ax, _ = model.step_ad(states[k - 1], NO_PARAMS, ax)
        if 0 in misfits:
            ax[indices] += misfits[0]
        grad_x0 = (x0 - cost.xb) / b_std**2 + ax
        grad_z_eta = z[N:] + q_std * a_eta.ravel()
        return J, np.concatenate([grad_x0, grad_z_eta])

    return J_and_gradient


@pytest.mark.parametrize("n_steps, every, method, transform", [(10, 5, "lbfgs", True), (8, 1, "cg", True), (10, 5, "cg", False)])
def test_weak_constraint_minimum_equals_a_direct_minimisation_of_the_nonlinear_weak_cost(n_steps, every, method, transform):
    b_std, q_std, r_std = 0.5, 0.3, 0.5
    indices = np.arange(0, N, 2)
    cost = weak_twin(n_steps=n_steps, every=every, seed=7, operator=Subset(n_state=N, indices=indices),
                     Q=Diagonal(q_std, size=N), B=Diagonal(b_std, size=N))
    own = own_weak_cost(Lorenz96(N), cost, b_std, q_std, r_std, indices)

    z0 = np.concatenate([cost.xb, np.zeros(cost.n_sub * N)])
    eps, h = 1e-6, np.random.default_rng(8).standard_normal(z0.size)
    fd = (own(z0 + eps * h)[0] - own(z0 - eps * h)[0]) / (2 * eps)
    assert abs(own(z0)[1] @ h - fd) < 1e-6 * abs(fd)  # the reference's own gradient is right
    direct = scipy.optimize.minimize(own, z0, jac=True, method="L-BFGS-B",
                                     options={"maxiter": 20000, "ftol": 1e-16, "gtol": 1e-9, "maxcor": 30})
    assert np.linalg.norm(direct.jac) < 1e-6 * np.linalg.norm(own(z0)[1])

    problem = FourDVar(Lorenz96(N), cost.slots, xb=cost.xb, B=cost.B, control=["state", "model_error"],
                       n_steps=n_steps, Q=cost.Q, model_error_every=every)
    result = problem.solve(outer_loops=8, method=method, max_iterations=400, gradient_reduction=1e-9, transform=transform)
    assert result.model_error.shape == (n_sub_windows(n_steps, every), N)
    J_incremental = own(np.concatenate([result.x0, result.model_error.ravel() / q_std]))[0]
    assert abs(J_incremental - direct.fun) <= 1e-6 * direct.fun
    assert abs(result.final.J - J_incremental) <= 1e-10 * J_incremental  # the package's J is the test's J
    assert result.final.Jm > 0


@pytest.mark.parametrize("method", ["lbfgs", "cg"])
def test_one_forcing_with_vanishing_Q_reproduces_strong_constraint(method):
    n_steps = 10
    cost = weak_twin(n_steps=n_steps, every=n_steps, seed=9)
    # both solved to the same minimum: Gauss-Newton converges only linearly on this window
    settings = dict(outer_loops=30, method=method, max_iterations=300, gradient_reduction=1e-10, tolerance=1e-14)
    strong = FourDVar(Lorenz96(N), cost.slots, xb=cost.xb, B=cost.B, n_steps=n_steps).solve(**settings)
    weak = FourDVar(Lorenz96(N), cost.slots, xb=cost.xb, B=cost.B, control=["state", "model_error"], n_steps=n_steps,
                    Q=Diagonal(1e-7, size=N), model_error_every=n_steps).solve(**settings)
    assert weak.model_error.shape == (1, N)
    assert np.linalg.norm(weak.x0 - strong.x0) <= 1e-8 * np.linalg.norm(strong.x0)
    assert abs(weak.final.J - strong.final.J) <= 1e-8 * strong.final.J
    assert np.max(np.abs(weak.model_error)) < 1e-8


# --- negative control ---------------------------------------------------------------------------


class DropsOneStepsForcingAdjoint(WindowLinearization):
    """A wrong adjoint: the forcing adjoint ae_k of step 7 (in sub-window 1) is lost."""

    def ad(self, forcings, ae=None):
        ax, ap = super().ad(forcings, ae=ae)
        if ae is not None:
            ae[6] = 0.0
        return ax, ap


def test_negative_control_dropping_one_steps_forcing_adjoint_is_caught(monkeypatch):
    monkeypatch.setattr("fourdvar.cost.linearize_window", DropsOneStepsForcingAdjoint)
    cost, p = weak_case("lorenz96", 5)
    rng = np.random.default_rng(10)
    eta = np.array([cost.Q.sample(rng) for _ in range(cost.n_sub)])
    results = {r.name: r for r in checks.check_cost(cost, cost.xb, p, ["state", "model_error"], np.random.default_rng(11), eta=eta)}
    assert results["window adjoint, forcings at steps [0, 5, 10]"].value > 1e-3
    assert results["gradient of J (Taylor)"].failed
    assert results["gradient of Jq (Taylor)"].failed
    assert results["Hessian of Jq symmetric"].failed


# --- bad input -----------------------------------------------------------------------------------


def test_weak_constraint_inputs_are_checked():
    cost = weak_twin(n_steps=10, every=4)
    assert (cost.every, cost.n_sub) == (4, 3)
    with pytest.raises(ValueError, match=r"eta must have shape \(3, 40\), got \(2, 40\)"):
        cost.evaluate(cost.xb, NO_PARAMS, np.zeros((2, N)))
    with pytest.raises(ValueError, match="model_error_every must be a positive integer, got 0"):
        FourDVarCost(Lorenz96(N), cost.slots, cost.xb, B=cost.B, n_steps=10, Q=cost.Q, model_error_every=0)
    with pytest.raises(ValueError, match="model_error_every was given without a model-error covariance Q"):
        FourDVarCost(Lorenz96(N), cost.slots, cost.xb, B=cost.B, n_steps=10, model_error_every=2)
    with pytest.raises(ValueError, match="Q has size 20, expected 40"):
        FourDVarCost(Lorenz96(N), cost.slots, cost.xb, B=cost.B, n_steps=10, Q=Diagonal(1.0, size=20))
    with pytest.raises(ValueError, match="the model error is in the control: give its covariance Q"):
        FourDVar(Lorenz96(N), cost.slots, xb=cost.xb, B=cost.B, control=["state", "model_error"])
    strong = FourDVarCost(Lorenz96(N), cost.slots, cost.xb, B=cost.B, n_steps=10)
    with pytest.raises(ValueError, match="the model error is in the control but no model-error covariance Q was given"):
        IncrementalCost(strong, cost.xb, NO_PARAMS, control=["state", "model_error"])
    with pytest.raises(ValueError, match="given to a strong-constraint cost"):
        strong.evaluate(cost.xb, NO_PARAMS, np.zeros((3, N)))
    assert FourDVarCost(Lorenz96(N), cost.slots, cost.xb, B=cost.B, n_steps=10, Q=cost.Q).n_sub == 1  # default: one forcing


# --- cycling ---------------------------------------------------------------------------------------


def test_cycled_weak_constraint_starts_each_window_from_the_end_of_the_forced_analysis():
    from fourdvar.cycling import cycle

    n_steps, every = 6, 3
    rng = np.random.default_rng(12)
    model = Lorenz96(N)
    truth, _ = truth_with_model_error(model, spun_up_state(12), NO_PARAMS, 3 * n_steps, every, 0.3, rng)
    windows = [synthetic_observations(truth[c * n_steps : (c + 1) * n_steps + 1], [0, 2, 4, 6], Identity(n_state=N), 0.5, rng)
               for c in range(3)]
    outcomes = list(cycle(model, windows, truth[0] + 0.5 * rng.standard_normal(N), Diagonal(0.5, size=N), NO_PARAMS, None,
                          control=["state", "model_error"], n_steps=n_steps, Q=Diagonal(0.3, size=N), model_error_every=every,
                          outer_loops=2, max_iterations=100))
    for previous, outcome in zip(outcomes, outcomes[1:]):
        assert outcome.model_error.shape == (2, N) and np.any(outcome.model_error != 0)
        forced = forced_forecast(model, previous.x0, NO_PARAMS, n_steps, previous.model_error, every)
        assert np.array_equal(outcome.xb, forced[-1])
        assert np.array_equal(previous.analysis_trajectory, forced)
        assert not np.allclose(forced[-1], model.forecast(previous.x0, NO_PARAMS, n_steps)[-1], atol=1e-3)


def test_dense_hessian_with_the_forcing_in_the_control_matches_its_products_and_gives_the_params_posterior():
    cost, p = weak_case("hybrid", 5)
    eta = np.array([cost.Q.sample(np.random.default_rng(13)) for _ in range(cost.n_sub)])
    jq = IncrementalCost(cost, cost.xb, p, control=["state", "params", "model_error"], eta=eta)
    A = jq.hessian_matrix()
    v = np.random.default_rng(14).standard_normal(jq.size)
    assert np.linalg.norm(A @ v - jq.hessian_vector(v)) <= 1e-12 * np.linalg.norm(A @ v)
    problem = FourDVar(cost.model, cost.slots, xb=cost.xb, B=cost.B, pb=p, P=cost.P, control=["state", "params", "model_error"],
                       n_steps=10, Q=cost.Q, model_error_every=5)
    Pa = problem.params_posterior_covariance(cost.xb, p, eta)
    n_x, n_p = jq.n_x, jq.n_p
    C = np.linalg.inv(A)[n_x : n_x + n_p, n_x : n_x + n_p]  # the weights' block of A^-1, marginal over state and forcing
    P_sqrt = np.diag(cost.P.std)
    np.testing.assert_allclose(Pa, P_sqrt @ C @ P_sqrt, rtol=1e-8, atol=1e-14)


# --- the posterior of the forcing ------------------------------------------------------------------


def test_posterior_of_state_and_forcing_is_the_dense_inverse_hessian_when_lanczos_has_converged():
    """With Lanczos run through the whole control space, the posterior ``G (I + W K W^T) G^T``
    (``G = diag(B^1/2, Q^1/2, Q^1/2)``) equals the inverse of the Hessian of ``Jq`` in physical
    variables ``[dx0; d eta_1; d eta_2]``, and its standard deviations are that matrix's."""
    n_steps, every = 4, 2
    cost = weak_twin(n_steps=n_steps, every=every, seed=3, operator=Identity(n_state=N), Q=PeriodicCorrelation(N, 2.0, std=0.3))
    control = Control.parse(["state", "model_error"])
    size = N + 2 * N
    jq = IncrementalCost(cost, cost.xb, NO_PARAMS, control=control)
    run = lanczos(jq.hessian_vector, jq.value_and_gradient(np.zeros(size))[1], size, lambda j, u, norm: False)
    posterior = Posterior(cost, control, SpectralPreconditioner(size).extended(run.factor()))
    exact = np.linalg.inv(IncrementalCost(cost, cost.xb, NO_PARAMS, control=control, transform=False).hessian_matrix())
    assert posterior.size == size and posterior.rank == size
    Pa = np.column_stack([posterior.apply(unit) for unit in np.eye(size)])
    assert np.max(np.abs(Pa - exact)) <= 1e-8 * np.max(np.abs(exact))
    std = np.sqrt(np.diag(exact))
    np.testing.assert_allclose(posterior.std_x0, std[:N], rtol=1e-8)
    np.testing.assert_allclose(posterior.std_model_error, std[N:].reshape(2, N), rtol=1e-8)
    assert np.all(posterior.std_model_error < 0.3)  # the observations taught the forcing something
    assert posterior.sample(np.random.default_rng(0), 3).shape == (3, size)
    # negative control: half the Ritz pairs are not the whole posterior
    half = Posterior(cost, control, SpectralPreconditioner(size).extended(run.factor(size // 2)))
    assert np.max(np.abs(half.std_model_error - std[N:].reshape(2, N))) > 1e-3
