"""A model's own window linearisation (the ``linearize_window`` hook) against the per-step chain.

The MLP batches the weight terms of all steps of a window into one matrix
product per layer.  Everything it returns must equal what the engine's
per-step :class:`fourdvar.window.WindowLinearization` gives: the trajectory, the
window TL, the window AD (with the parameter adjoint summed over the window),
and through them the 4D-Var gradients.  The negative controls check that these
comparisons would catch a batched adjoint that drops one step.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from fourdvar import checks
from fourdvar.cost import FourDVarCost, IncrementalCost
from fourdvar.covariances import Diagonal
from fourdvar.interfaces import ObservationSlot
from fourdvar.window import DivergenceError, PerStepModel, WindowLinearization, forecast, linearize_window
from models import MLP, Lorenz96
from models.mlp import MLPWindowLinearization
from observations import Identity, Square

N = 12
K = 9  # window length

# (hidden layer sizes, activations of all layers, residual)
MLP_CASES = [
    ([17], ["tanh", "identity"], True),
    ([17], ["tanh", "identity"], False),
    ([15, 11], ["sigmoid", "softplus", "identity"], True),
    ([15, 11], ["relu", "tanh", "tanh"], False),
    ([9, 14, 10], ["tanh", "relu", "softplus", "identity"], True),
    ([9, 14, 10], ["softplus", "sigmoid", "tanh", "sigmoid"], False),
    ([], ["tanh"], True),  # a single layer
]
IDS = [f"{'res' if residual else 'plain'}-{'-'.join(acts)}" for _, acts, residual in MLP_CASES]


def make_mlp(hidden, activations, residual, seed=0):
    """An MLP and a point ``(x0, p)`` whose window is neither trivial nor divergent."""
    model = MLP([N, *hidden, N], activations, residual=residual)
    rng = np.random.default_rng(seed)
    p = 0.7 * rng.standard_normal(model.n_params) / np.sqrt(N)
    x0 = rng.standard_normal(N)
    return model, x0, p


def relative(a, b):
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


def windows(case, n_steps=K):
    model, x0, p = make_mlp(*case)
    return model, x0, p, model.linearize_window(x0, p, n_steps), WindowLinearization(model, x0, p, n_steps)


# --- the window linearisation itself ----------------------------------------------------------


@pytest.mark.parametrize("case", MLP_CASES, ids=IDS)
def test_batched_states_equal_the_forecast(case):
    model, x0, p, batched, _ = windows(case)
    trajectory = forecast(model, x0, p, K)
    assert batched.states.shape == (K + 1, N)
    assert batched.n_steps == K
    assert relative(batched.states, trajectory) < 1e-13
    assert np.std(trajectory[-1]) > 1e-3  # the window does something


@pytest.mark.parametrize("case", MLP_CASES, ids=IDS)
def test_batched_tl_equals_the_per_step_tl(case):
    model, x0, p, batched, per_step = windows(case)
    rng = np.random.default_rng(1)
    dx0, dp = rng.standard_normal(N), rng.standard_normal(model.n_params)
    for last_step in (None, K, 4, 1, 0):
        dx_batched, dx_per_step = batched.tl(dx0, dp, last_step), per_step.tl(dx0, dp, last_step)
        assert len(dx_batched) == len(dx_per_step) == (K if last_step is None else last_step) + 1
        for k, (a, b) in enumerate(zip(dx_batched, dx_per_step)):
            assert relative(a, b) < 1e-12, (last_step, k)


@pytest.mark.parametrize("case", MLP_CASES, ids=IDS)
def test_batched_ad_equals_the_per_step_ad(case):
    model, x0, p, batched, per_step = windows(case)
    rng = np.random.default_rng(2)
    for steps in ((0, 3, 7, K), tuple(range(K + 1)), (5,), (2, 6), (0,)):
        forcings = {k: rng.standard_normal(N) for k in steps}
        ax_b, ap_b = batched.ad(forcings)
        ax_s, ap_s = per_step.ad(forcings)
        assert ax_b.shape == (N,) and ap_b.shape == (model.n_params,)
        assert relative(ax_b, ax_s) < 1e-12, steps
        if steps == (0,):
            assert np.array_equal(ax_b, forcings[0]) and not np.any(ap_b)
        else:
            assert relative(ap_b, ap_s) < 1e-12, steps
    ax, ap = batched.ad({})
    assert not np.any(ax) and not np.any(ap) and ap.shape == (model.n_params,)


@pytest.mark.parametrize("case", MLP_CASES, ids=IDS)
def test_batched_window_passes_dot_product_test(case):
    model, x0, p, batched, _ = windows(case)
    rng = np.random.default_rng(3)
    dx0, dp = rng.standard_normal(N), rng.standard_normal(model.n_params)
    forcings = {k: rng.standard_normal(N) for k in (0, 2, 3, 8, K)}
    assert checks.window_adjoint_test(batched, dx0, dp, forcings).value < 1e-12


def test_a_window_of_no_steps():
    model, x0, p = make_mlp(*MLP_CASES[0])
    window = model.linearize_window(x0, p, 0)
    assert window.states.shape == (1, N) and np.array_equal(window.states[0], x0)
    dx0 = np.ones(N)
    assert len(window.tl(dx0, np.ones(model.n_params))) == 1
    f0 = np.arange(N, dtype=float)
    ax, ap = window.ad({0: f0})
    assert np.array_equal(ax, f0) and ap.shape == (model.n_params,) and not np.any(ap)


def test_ad_returns_fresh_arrays():
    model, x0, p = make_mlp(*MLP_CASES[0])
    window = model.linearize_window(x0, p, 3)
    forcings = {0: np.ones(N), 3: np.ones(N)}
    ax, _ = window.ad(forcings)
    ax += 1.0
    assert np.array_equal(forcings[0], np.ones(N)) and np.array_equal(forcings[3], np.ones(N))


# --- the engine picks the hook --------------------------------------------------------------


def test_linearize_window_uses_the_hook_when_the_model_has_one():
    model, x0, p = make_mlp(*MLP_CASES[0])
    assert isinstance(linearize_window(model, x0, p, 4), MLPWindowLinearization)
    assert type(linearize_window(PerStepModel(model), x0, p, 4)) is WindowLinearization
    assert type(linearize_window(Lorenz96(8, compiled=False), np.ones(8), np.empty(0), 4)) is WindowLinearization


def test_a_divergent_window_raises_the_same_error_with_and_without_the_hook():
    model = MLP([N, 20, N], ["relu", "identity"], residual=True)
    p = np.abs(np.random.default_rng(4).standard_normal(model.n_params)) * 1e3  # grows ~1e4 per step
    x0 = np.ones(N)
    with pytest.raises(DivergenceError) as per_step:
        linearize_window(PerStepModel(model), x0, p, 200, context="outer loop 3")
    with pytest.raises(DivergenceError) as batched:
        linearize_window(model, x0, p, 200, context="outer loop 3")
    assert str(batched.value) == str(per_step.value)
    assert "outer loop 3" in str(batched.value) and "step" in str(batched.value)


def test_a_hook_returning_the_wrong_shape_is_reported():
    class Broken:
        n_state, n_params = 3, 0

        def linearize_window(self, x0, p, n_steps):
            window = WindowLinearization(Lorenz96(4), np.ones(4), np.empty(0), n_steps)
            return window  # states of 4 values, the model says 3

    with pytest.raises(ValueError, match="Broken.linearize_window returned states of shape"):
        linearize_window(Broken(), np.ones(3), np.empty(0), 2)


# --- the 4D-Var gradients with and without the hook --------------------------------------------


def twin_costs(case, seed=5, n_steps=K):
    """The same cost for the model with its hook and for the model without it."""
    model, x0, p = make_mlp(*case)
    rng = np.random.default_rng(seed)
    truth = forecast(model, x0, p, n_steps)
    slots = []
    for k in range(n_steps + 1):
        operator = Identity(n_state=N) if k % 3 else Square(n_state=N, indices=list(range(0, N, 2)))
        R = Diagonal(0.3, size=operator.n_obs)
        slots.append(ObservationSlot(k, operator.apply(truth[k]) + R.sample(rng), operator, R))
    B = Diagonal(0.5 + rng.random(N))
    P = Diagonal(0.1 * (np.abs(p) + 0.05))
    xb, pb = x0 + 0.2 * B.sample(rng), p + 0.2 * P.sample(rng)
    costs = [FourDVarCost(m, slots, xb, B=B, pb=pb, P=P, n_steps=n_steps) for m in (model, PerStepModel(model))]
    return costs, xb, pb, rng


@pytest.mark.parametrize("case", MLP_CASES[:4], ids=IDS[:4])
@pytest.mark.parametrize("control", ["state", "params", "both"])
@pytest.mark.parametrize("transform", [True, False])
def test_incremental_gradient_is_the_same_with_and_without_the_hook(case, control, transform):
    (with_hook, without), xb, pb, rng = twin_costs(case)
    jq_hook = IncrementalCost(with_hook, xb, pb, control=control, transform=transform)
    jq_plain = IncrementalCost(without, xb, pb, control=control, transform=transform)
    assert isinstance(jq_hook.window, MLPWindowLinearization) and isinstance(jq_plain.window, WindowLinearization)
    for scale in (0.0, 0.1, 1.0):
        u = scale * rng.standard_normal(jq_hook.size)
        terms_hook, g_hook = jq_hook.value_and_gradient(u)
        terms_plain, g_plain = jq_plain.value_and_gradient(u)
        assert abs(terms_hook.J - terms_plain.J) <= 1e-12 * abs(terms_plain.J)
        assert relative(g_hook, g_plain) < 1e-12
    u = rng.standard_normal(jq_hook.size)
    assert relative(jq_hook.hessian_vector(u), jq_plain.hessian_vector(u)) < 1e-12


@pytest.mark.parametrize("case", MLP_CASES[:4], ids=IDS[:4])
def test_nonlinear_gradient_is_the_same_with_and_without_the_hook(case):
    (with_hook, without), xb, pb, _ = twin_costs(case)
    terms_hook, gx_hook, gp_hook = with_hook.gradient(xb, pb)
    terms_plain, gx_plain, gp_plain = without.gradient(xb, pb)
    assert abs(terms_hook.J - terms_plain.J) <= 1e-13 * abs(terms_plain.J)
    assert relative(gx_hook, gx_plain) < 1e-12 and relative(gp_hook, gp_plain) < 1e-12


# --- negative controls: the comparisons above catch a batched derivative that drops a step ------


class ForgetsOneStepInAD(MLPWindowLinearization):
    """The batched AD with step ``k = 4``'s weight adjoint left out of ``aW_i = AZ_i A_{i-1}^T``."""

    def weights_ad(self, AZ, K):
        for AZ_i in AZ:
            AZ_i[:, 4] = 0.0
        return super().weights_ad(AZ, K)


class ForgetsOneStepInTL(MLPWindowLinearization):
    """The batched TL with step ``k = 4``'s ``dW_i a_{i-1}`` term left out."""

    def weights_tl(self, dp, K):
        dWA = super().weights_tl(dp, K)
        for dWA_i in dWA:
            dWA_i[:, 4] = 0.0
        return dWA


@pytest.mark.parametrize("wrong", [ForgetsOneStepInAD, ForgetsOneStepInTL])
def test_negative_control_a_dropped_step_fails_the_checks(wrong):
    model, x0, p = make_mlp(*MLP_CASES[0])
    batched, per_step = wrong(model, x0, p, K), WindowLinearization(model, x0, p, K)
    rng = np.random.default_rng(6)
    dx0, dp = rng.standard_normal(N), rng.standard_normal(model.n_params)
    forcings = {k: rng.standard_normal(N) for k in range(K + 1)}
    assert checks.window_adjoint_test(batched, dx0, dp, forcings).value > 1e-6
    if wrong is ForgetsOneStepInAD:
        assert relative(batched.ad(forcings)[1], per_step.ad(forcings)[1]) > 1e-6
    else:
        assert relative(batched.tl(dx0, dp)[-1], per_step.tl(dx0, dp)[-1]) > 1e-6


def test_negative_control_a_dropped_step_changes_the_cost_gradient(monkeypatch):
    (with_hook, without), xb, pb, rng = twin_costs(MLP_CASES[0])
    monkeypatch.setattr(MLP, "linearize_window", lambda self, x0, p, n: ForgetsOneStepInAD(self, x0, p, n))
    jq_wrong = IncrementalCost(with_hook, xb, pb, control="both")
    jq_plain = IncrementalCost(without, xb, pb, control="both")
    assert isinstance(jq_wrong.window, ForgetsOneStepInAD)
    u = 0.1 * rng.standard_normal(jq_plain.size)
    assert relative(jq_wrong.value_and_gradient(u)[1], jq_plain.value_and_gradient(u)[1]) > 1e-6


# --- the benchmark script -------------------------------------------------------------------


def test_the_gradient_benchmark_imports_without_running_and_builds_its_problem():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gradient.py"
    spec = importlib.util.spec_from_file_location("benchmark_gradient", path)
    module = importlib.util.module_from_spec(spec)
    saved_path = list(sys.path)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)  # the main guard: nothing is timed
    finally:
        sys.path[:] = saved_path
        del sys.modules[spec.name]
    assert {case.hook for case in module.cases()} == {True, False}
    problem = module.build_problem(MLP([N, 10, N], ["tanh", "identity"], residual=True), 4, hook=False)
    assert isinstance(problem.jq.window, WindowLinearization)
    _, g = problem.jq.value_and_gradient(problem.u)
    assert g.shape == (problem.jq.size,) and np.all(np.isfinite(g))
    if module.import_jax() is None:
        assert importlib.util.find_spec("jax") is None
