"""The 4D-Var cost functions: window TL/AD, gradients, Hessian, and the incremental/nonlinear link."""

from __future__ import annotations

import numpy as np
import pytest

from fourdvar import checks
from fourdvar.cost import Control, FourDVarCost, IncrementalCost
from fourdvar.covariances import Diagonal, PeriodicCorrelation
from fourdvar.window import WindowLinearization
from models import MLP, Hybrid, LocalMLP, Lorenz96
from observations import Identity, ObservationSet, Square, Subset, synthetic_observations

N = 40


def spun_up_state(n=N, seed=0, steps=500):
    model = Lorenz96(n_state=n)
    x = 8.0 + np.random.default_rng(seed).standard_normal(n)
    return model.forecast(x, np.empty(0), steps)[-1]


def model_cases():
    """(name, model, x0, p) for each model: a representative point to linearise at."""
    rng = np.random.default_rng(1)
    x = spun_up_state()
    mlp = MLP([N, 30, N], ["tanh", "identity"], residual=True)
    local = LocalMLP(n_state=N, hidden=[16], integrator="rk4", init_output_scale=0.3)
    hybrid = Hybrid({"type": "lorenz96", "n_state": N, "estimate_forcing": True}, {"type": "local_mlp", "n_state": N, "hidden": [8], "init_output_scale": 0.3})
    return [
        ("lorenz96", Lorenz96(N), x, np.empty(0)),
        ("lorenz96_forcing", Lorenz96(N, estimate_forcing=True), x, np.array([8.0])),
        ("mlp", mlp, x / 8.0, 0.1 * rng.standard_normal(mlp.n_params)),
        ("local_mlp", local, x, local.init_params(rng)),
        ("hybrid", hybrid, x, hybrid.init_params(rng)),
    ]


CASES = {name: (model, x, p) for name, model, x, p in model_cases()}


def twin_cost(model, x0_truth, p, n_steps=10, every=1, operator=None, error_std=1.0, seed=0, B=None, P=None, xb_error=1.0):
    """A cost with synthetic observations of the truth run from (x0_truth, p)."""
    rng = np.random.default_rng(seed)
    trajectory = model.forecast(x0_truth, p, n_steps)
    operator = operator or Identity(n_state=model.n_state)
    obs = synthetic_observations(trajectory, list(range(0, n_steps + 1, every)), operator, error_std, rng)
    B = B or Diagonal(1.0, size=model.n_state)
    xb = x0_truth + xb_error * B.sample(rng)
    if model.n_params:
        P = P or Diagonal(0.1 * (np.abs(p) + 0.1))
        pb = p + P.sample(rng)
    else:
        pb = np.empty(0)
    return FourDVarCost(model, obs, xb, B=B, pb=pb, P=P if model.n_params else None, n_steps=n_steps)


# --- the window's TL and AD ----------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_whole_window_adjoint_passes_dot_product_test(name):
    model, x, p = CASES[name]
    rng = np.random.default_rng(2)
    window = WindowLinearization(model, x, p, 12)
    dx0, dp = rng.standard_normal(model.n_state), rng.standard_normal(model.n_params)
    forcings = {k: rng.standard_normal(model.n_state) for k in (0, 3, 7, 12)}
    assert checks.window_adjoint_test(window, dx0, dp, forcings).value < 1e-12


def test_window_tl_matches_the_nonlinear_forecast_to_first_order():
    model, x, p = CASES["hybrid"]
    window = WindowLinearization(model, x, p, 10)
    rng = np.random.default_rng(3)
    n = model.n_state
    h = np.concatenate([rng.standard_normal(n), 0.1 * rng.standard_normal(model.n_params)])
    result = checks.taylor_test(
        lambda u: model.forecast(u[:n], u[n:], 10)[-1],
        lambda dh: window.tl(dh[:n], dh[n:])[-1],
        np.concatenate([x, p]), h, name="window TL",
    )
    assert result.passed, checks.format_table([result])


# --- gradient tests ------------------------------------------------------------------------


CONTROLS = ["state", "params", "both"]


def with_controls(names):
    """(model name, control) pairs; a model without parameters has no parameter-only control."""
    return [(name, control) for name in names for control in CONTROLS if CASES[name][0].n_params or control == "state" or control == "both"]


def control_direction(model, p, control, rng):
    """A random direction in the control, each part scaled like the variable it perturbs."""
    c = Control.parse(control)
    return (rng.standard_normal(model.n_state) if c.state else np.zeros(model.n_state),
            0.1 * (np.abs(p) + 1e-3) * rng.standard_normal(model.n_params) if c.params else np.zeros(model.n_params))


@pytest.mark.parametrize("name", ["lorenz96_forcing", "mlp", "local_mlp", "hybrid"])
@pytest.mark.parametrize("control", CONTROLS)
def test_nonlinear_cost_gradient_passes_taylor_test(name, control):
    model, x, p = CASES[name]
    cost = twin_cost(model, x, p, operator=Square(n_state=model.n_state, indices=list(range(0, model.n_state, 2))))
    rng = np.random.default_rng(4)
    dx, dp = control_direction(model, p, control, rng)
    x0, p0 = cost.xb, cost.pb
    _, gx, gp = cost.gradient(x0, p0)
    n = model.n_state
    result = checks.gradient_test(
        lambda u: cost.evaluate(u[:n], u[n:]).J, np.concatenate([gx, gp]), np.concatenate([x0, p0]), np.concatenate([dx, dp]),
        name=f"nonlinear J gradient ({control})",
    )
    assert result.passed, checks.format_table([result])


@pytest.mark.parametrize("name, control", with_controls(["lorenz96", "lorenz96_forcing", "local_mlp", "hybrid"]))
@pytest.mark.parametrize("transform", [True, False])
def test_incremental_cost_gradient_is_exact(name, control, transform):
    """Jq is quadratic: J(u + a h) - J(u) - a <g, h> = a^2/2 <h, A h> exactly, at every amplitude."""
    model, x, p = CASES[name]
    cost = twin_cost(model, x, p, operator=Square(n_state=model.n_state))
    jq = IncrementalCost(cost, cost.xb, cost.pb, control=control, transform=transform)
    rng = np.random.default_rng(5)
    u = 0.3 * rng.standard_normal(jq.size)
    h = rng.standard_normal(jq.size)
    terms, g = jq.value_and_gradient(u)
    Ah = jq.hessian_vector(h)
    for a in [1.0, 1e-2, 1e-4]:
        exact_change = a * (g @ h) + 0.5 * a * a * (h @ Ah)
        change = jq.value_and_gradient(u + a * h)[0].J - terms.J
        assert abs(change - exact_change) <= 1e-9 * abs(exact_change) + 1e-12 * abs(terms.J)
    result = checks.gradient_test(lambda v: jq.value_and_gradient(v)[0].J, g, u, h, name="Jq gradient")
    assert result.passed, checks.format_table([result])


@pytest.mark.parametrize("name, control", with_controls(list(CASES)))
def test_incremental_gradient_at_zero_equals_nonlinear_gradient_at_linearisation_point(name, control):
    model, x, p = CASES[name]
    cost = twin_cost(model, x, p, every=2, operator=Square(n_state=model.n_state))
    rng = np.random.default_rng(6)
    x0 = cost.xb + 0.5 * rng.standard_normal(model.n_state)  # a guess that is not the background
    p0 = cost.pb * (1 + 0.01 * rng.standard_normal(model.n_params))
    terms, gx, gp = cost.gradient(x0, p0)
    c = Control.parse(control)
    for transform in (False, True):
        jq = IncrementalCost(cost, x0, p0, control=control, transform=transform)
        q_terms, g = jq.value_and_gradient(np.zeros(jq.size))
        expected = jq.control_gradient(gx, gp) if transform else np.concatenate([gx] * c.state + [gp] * c.params)
        assert np.linalg.norm(g - expected) <= 1e-10 * np.linalg.norm(expected)
        assert abs(q_terms.J - terms.J) <= 1e-12 * terms.J
        assert abs(q_terms.Jo - terms.Jo) <= 1e-12 * terms.Jo


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("transform", [True, False])
def test_hessian_of_incremental_cost_is_symmetric(name, transform):
    model, x, p = CASES[name]
    cost = twin_cost(model, x, p, operator=Square(n_state=model.n_state), B=PeriodicCorrelation(model.n_state, 2.0, std=0.8))
    jq = IncrementalCost(cost, cost.xb, cost.pb, control="both", transform=transform)
    rng = np.random.default_rng(7)
    u, v = rng.standard_normal(jq.size), rng.standard_normal(jq.size)
    uAv, vAu = u @ jq.hessian_vector(v), v @ jq.hessian_vector(u)
    assert abs(uAv - vAu) / abs(uAv) < 1e-12
    assert u @ jq.hessian_vector(u) > 0


def test_gradient_of_lorenz96_plus_local_mlp_cost_matches_central_finite_difference():
    model, x, p = CASES["hybrid"]
    cost = twin_cost(model, x, p, n_steps=10, every=2)
    rng = np.random.default_rng(8)
    h_x, h_p = rng.standard_normal(model.n_state), rng.standard_normal(model.n_params)
    _, gx, gp = cost.gradient(cost.xb, cost.pb)
    eps = 1e-5
    fd = (cost.evaluate(cost.xb + eps * h_x, cost.pb + eps * h_p).J - cost.evaluate(cost.xb - eps * h_x, cost.pb - eps * h_p).J) / (2 * eps)
    assert abs(gx @ h_x + gp @ h_p - fd) / abs(fd) < 1e-6


# --- the cost's bookkeeping ------------------------------------------------------------------------


def test_cost_terms_add_up_and_match_direct_sums():
    model, x, p = CASES["lorenz96_forcing"]
    cost = twin_cost(model, x, p, n_steps=6, every=3)
    terms = cost.evaluate(cost.xb, cost.pb)
    trajectory = model.forecast(cost.xb, cost.pb, 6)
    Jo = sum(0.5 * np.sum((slot.operator.apply(trajectory[slot.step]) - slot.values) ** 2) for slot in cost.slots)
    assert terms.J == terms.Jb + terms.Jp + terms.Jo
    assert abs(terms.Jo - Jo) <= 1e-12 * Jo
    assert abs(terms.Jb - 0.5 * np.sum((cost.xb - cost.xb) ** 2)) == 0.0
    x_other = cost.xb + 1.0
    assert abs(cost.evaluate(x_other, cost.pb).Jb - 0.5 * N) < 1e-12


def test_observations_outside_the_window_are_rejected():
    model = Lorenz96(N)
    obs = ObservationSet([])
    trajectory = model.forecast(spun_up_state(), np.empty(0), 5)
    obs = synthetic_observations(trajectory, [0, 5], Subset(n_state=N, indices=[1, 2]), 1.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="step 5 lies outside the window of 3 steps"):
        FourDVarCost(model, obs, trajectory[0], B=Diagonal(1.0, size=N), n_steps=3)
    with pytest.raises(ValueError, match=r"background state xb must have shape \(40,\)"):
        FourDVarCost(model, obs, np.zeros(39), B=Diagonal(1.0, size=N))
    with pytest.raises(ValueError, match="B has size 20, expected 40"):
        FourDVarCost(model, obs, trajectory[0], B=Diagonal(1.0, size=20))
    with pytest.raises(ValueError, match="control must name 'state' and/or 'params'"):
        Control.parse(["state", "weights"])
