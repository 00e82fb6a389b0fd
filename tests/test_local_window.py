"""The LocalMLP's own window (weight terms batched over steps, stages and points) against the per-step chain.

:class:`models.local_mlp.LocalMLPWindowLinearization` must give what the engine's
per-step :class:`fourdvar.window.WindowLinearization` gives: the trajectory, the
window TL and AD (one direction and blocks, before and after it stores the step
Jacobians), and through them the 4D-Var gradient.  The negative controls show
that these comparisons catch a batched weight adjoint or TL that drops one step.
"""

from __future__ import annotations

import numpy as np
import pytest

from fourdvar import checks
from fourdvar.cost import FourDVarCost, IncrementalCost
from fourdvar.covariances import Diagonal
from fourdvar.interfaces import ObservationSlot
from fourdvar.window import PerStepModel, WindowLinearization, forecast
from models import LocalMLP
from models.local_mlp import LocalMLPWindowLinearization
from observations import Identity

N, K = 11, 6
CASES = [("euler", [6], "tanh"), ("rk2", [7], "relu"), ("rk4", [6, 5], "tanh"), ("rk4", [5, 4], "softplus")]
IDS = ["-".join([scheme, *map(str, hidden), activation]) for scheme, hidden, activation in CASES]


def make(scheme, hidden, activation, seed=0):
    model = LocalMLP(n_state=N, half_width=2, hidden=hidden, activation=activation, integrator=scheme, init_output_scale=1.0,
                     state_offset=1.0, state_scale=3.0)
    rng = np.random.default_rng(seed)
    return model, 2.0 * rng.standard_normal(N) + 1.0, model.init_params(rng), rng


def relative(a, b):
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "numpy"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_window_equals_the_per_step_chain_before_and_after_storing_step_jacobians(case, compiled):
    model, x0, p, rng = make(*case)
    window, per_step = LocalMLPWindowLinearization(model, x0, p, K, compiled=compiled), WindowLinearization(model, x0, p, K)
    assert isinstance(model.linearize_window(x0, p, K), LocalMLPWindowLinearization)
    assert relative(window.states, forecast(model, x0, p, K)) < 1e-14
    dx0, dp = rng.standard_normal(N), rng.standard_normal(model.n_params)
    forcings = {k: rng.standard_normal(N) for k in range(0, K + 1, 2)}
    for _ in range(2):  # the second round runs on the stored step Jacobians (from the third sweep)
        for dx_k, ref in zip(window.tl(dx0, dp), per_step.tl(dx0, dp)):
            assert np.max(np.abs(dx_k - ref)) <= 1e-13 * np.max(np.abs(ref))
        (ax, ap), (ax_ref, ap_ref) = window.ad(forcings), per_step.ad(forcings)
        assert relative(ax, ax_ref) < 1e-13 and relative(ap, ap_ref) < 1e-13
    assert window.dense_steps is not None


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_blocked_window_equals_its_columns(case):
    model, x0, p, rng = make(*case)
    window, per_step = model.linearize_window(x0, p, K), WindowLinearization(model, x0, p, K)
    dX0, dP = rng.standard_normal((N, 3)), rng.standard_normal((model.n_params, 3))
    forcings = {k: rng.standard_normal((N, 3)) for k in (1, 3, K)}
    dx = window.tl(dX0, dP)
    ax, ap = window.ad(forcings)
    for d in range(3):
        assert relative(dx[-1][:, d], per_step.tl(dX0[:, d], dP[:, d])[-1]) < 1e-13
        ax_d, ap_d = per_step.ad({k: f[:, d] for k, f in forcings.items()})
        assert relative(ax[:, d], ax_d) < 1e-13 and relative(ap[:, d], ap_d) < 1e-13


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "numpy"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_window_passes_the_dot_product_test(case, compiled):
    model, x0, p, rng = make(*case)
    window = LocalMLPWindowLinearization(model, x0, p, K, compiled=compiled)
    dx0, dp = rng.standard_normal(N), rng.standard_normal(model.n_params)
    forcings = {k: rng.standard_normal(N) for k in range(K + 1)}
    assert checks.window_adjoint_test(window, dx0, dp, forcings).value < 1e-12
    assert window.dense_steps is None  # the test's two sweeps ran on the window's own TL and AD


def test_compiled_and_numpy_windows_agree():
    model, x0, p, rng = make(*CASES[2])
    compiled, plain = (LocalMLPWindowLinearization(model, x0, p, K, compiled=flag) for flag in (True, False))
    assert relative(compiled.states, plain.states) < 1e-14
    for F, F_ref in zip(compiled.F, plain.F):
        assert (F is None and F_ref is None) or relative(F, F_ref) < 1e-13
    dx0, dp, f = rng.standard_normal(N), rng.standard_normal(model.n_params), {K: rng.standard_normal(N)}
    assert relative(compiled.tl(dx0, dp)[-1], plain.tl(dx0, dp)[-1]) < 1e-13
    (ax, ap), (ax_ref, ap_ref) = compiled.ad(f), plain.ad(f)
    assert relative(ax, ax_ref) < 1e-13 and relative(ap, ap_ref) < 1e-13


# --- the forcing of weak constraint -------------------------------------------------------


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "numpy"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forced_window_passes_the_dot_product_test_in_state_parameters_and_forcing(case, compiled):
    model, x0, p, rng = make(*case)
    window = LocalMLPWindowLinearization(model, x0, p, K, compiled=compiled, forcing=0.3 * rng.standard_normal((K, N)))
    dx0, dp, de = rng.standard_normal(N), rng.standard_normal(model.n_params), rng.standard_normal((K, N))
    forcings = {k: rng.standard_normal(N) for k in range(K + 1)}
    assert checks.window_adjoint_test(window, dx0, dp, forcings, de=de).value < 1e-12
    assert window.dense_steps is None  # the window's own TL and AD were tested


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "numpy"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forced_window_equals_the_per_step_chain_before_and_after_storing_step_jacobians(case, compiled):
    """Trajectory, TL with ``de`` (one vector and a block), AD with ``ae`` (up to a last forcing before the
    window's end, so that the rows of ``ae`` past it are zero) against the engine's per-step window."""
    model, x0, p, rng = make(*case)
    forcing = 0.3 * rng.standard_normal((K, N))
    window = model.linearize_window(x0, p, K, forcing=forcing) if compiled else \
        LocalMLPWindowLinearization(model, x0, p, K, compiled=False, forcing=forcing)
    per_step = WindowLinearization(model, x0, p, K, forcing=forcing)
    assert relative(window.states, forecast(model, x0, p, K, forcing=forcing)) < 1e-14
    dx0, dp, de = rng.standard_normal((N, 2)), rng.standard_normal((model.n_params, 2)), rng.standard_normal((K, N, 2))
    forcings = {k: rng.standard_normal((N, 2)) for k in (1, 2, K - 1)}
    for _ in range(2):  # the second round runs on the stored step Jacobians
        for d in (0, slice(None)):
            ref = per_step.tl(dx0[:, d], dp[:, d], de=de[..., d])
            assert relative(np.stack(window.tl(dx0[:, d], dp[:, d], de=de[..., d])), np.stack(ref)) < 1e-13
            f = {k: f_k[:, d] for k, f_k in forcings.items()}
            ae, ae_ref = np.full(de[..., d].shape, np.nan), np.empty(de[..., d].shape)
            (ax, ap), (ax_ref, ap_ref) = window.ad(f, ae=ae), per_step.ad(f, ae=ae_ref)
            assert relative(ax, ax_ref) < 1e-13 and relative(ap, ap_ref) < 1e-13 and relative(ae, ae_ref) < 1e-13
            assert np.all(ae[K - 1] == 0.0)
    assert window.dense_steps is not None


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "numpy"])
def test_window_with_zero_forcing_is_the_unforced_window_bit_for_bit(compiled):
    model, x0, p, rng = make(*CASES[2])
    forced, strong = (LocalMLPWindowLinearization(model, x0, p, K, compiled=compiled, forcing=forcing) for forcing in (np.zeros((K, N)), None))
    assert np.array_equal(forced.states, strong.states)
    dx0, dp, forcings = rng.standard_normal(N), rng.standard_normal(model.n_params), {k: rng.standard_normal(N) for k in range(K + 1)}
    assert np.array_equal(np.stack(forced.tl(dx0, dp, de=np.zeros((K, N)))), np.stack(strong.tl(dx0, dp)))
    ae = np.empty((K, N))
    (ax, ap), (ax_ref, ap_ref) = forced.ad(forcings, ae=ae), strong.ad(forcings)
    assert np.array_equal(ax, ax_ref) and np.array_equal(ap, ap_ref)


def test_weak_constraint_gradient_takes_the_window_and_equals_the_per_step_chain():
    """The weak-constraint cost linearises through the LocalMLP's own window and gives, with a nonzero
    forcing, the gradient (state, parameters, forcing) and the incremental gradient of the per-step chain."""
    model, x0, p, rng = make(*CASES[2])
    truth = forecast(model, x0, p, K)
    R = Diagonal(0.3, size=N)
    slots = [ObservationSlot(k, truth[k] + R.sample(rng), Identity(n_state=N), R) for k in range(1, K + 1)]
    costs = [FourDVarCost(m, slots, x0, B=Diagonal(0.5, size=N), pb=p, P=Diagonal(0.1, size=p.size), n_steps=K, Q=Diagonal(0.1, size=N), model_error_every=2)
             for m in (model, PerStepModel(model))]
    eta = 0.1 * rng.standard_normal((costs[0].n_sub, N))
    assert isinstance(costs[0].window(x0, p, eta=eta), LocalMLPWindowLinearization)
    (terms, *g), (terms_ref, *g_ref) = (cost.full_gradient(x0, p, eta) for cost in costs)
    assert abs(terms.J - terms_ref.J) <= 1e-13 * abs(terms_ref.J)
    assert all(relative(a, b) < 1e-12 for a, b in zip(g, g_ref)) and len(g) == 3
    jq, jq_ref = (IncrementalCost(cost, x0, p, control=["state", "params", "model_error"], eta=eta) for cost in costs)
    for _ in range(4):  # past the third sweep both run on stored step Jacobians
        u = 0.1 * rng.standard_normal(jq.size)
        assert relative(jq.value_and_gradient(u)[1], jq_ref.value_and_gradient(u)[1]) < 1e-12


def twin_costs(case, n_steps=K):
    model, x0, p, rng = make(*case)
    truth = forecast(model, x0, p, n_steps)
    R = Diagonal(0.3, size=N)
    slots = [ObservationSlot(k, truth[k] + R.sample(rng), Identity(n_state=N), R) for k in range(1, n_steps + 1)]
    B, P = Diagonal(0.5, size=N), Diagonal(0.1 * (np.abs(p) + 0.05))
    xb, pb = x0 + 0.2 * B.sample(rng), p + 0.2 * P.sample(rng)
    return [FourDVarCost(m, slots, xb, B=B, pb=pb, P=P, n_steps=n_steps) for m in (model, PerStepModel(model))], xb, pb, rng


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradients_are_the_same_with_and_without_the_window(case):
    (with_window, without), xb, pb, rng = twin_costs(case)
    terms, gx, gp = with_window.gradient(xb, pb)
    terms_ref, gx_ref, gp_ref = without.gradient(xb, pb)
    assert abs(terms.J - terms_ref.J) <= 1e-13 * abs(terms_ref.J)
    assert relative(gx, gx_ref) < 1e-12 and relative(gp, gp_ref) < 1e-12
    jq, jq_ref = (IncrementalCost(cost, xb, pb, control="both") for cost in (with_window, without))
    for _ in range(4):  # past the third sweep both run on stored step Jacobians
        u = 0.1 * rng.standard_normal(jq.size)
        assert relative(jq.value_and_gradient(u)[1], jq_ref.value_and_gradient(u)[1]) < 1e-12


# --- negative controls --------------------------------------------------------------------


class ForgetsOneStepInAD(LocalMLPWindowLinearization):
    """The batched weight adjoint without the columns of step 2."""

    def weights_ad(self, AZ, start, end):
        AZ[:, self.columns(2, 0).start - start : self.columns(2, self.n_stages - 1).stop - start] = 0.0
        return super().weights_ad(AZ, start, end)


class ForgetsOneStepInTL(LocalMLPWindowLinearization):
    """The batched TL without step 2's ``dW_l a_{l-1}`` terms."""

    def weights_tl(self, dp, K):
        dWA = super().weights_tl(dp, K)
        dWA[:, self.columns(2, 0).start : self.columns(2, self.n_stages - 1).stop] = 0.0
        return dWA


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "numpy"])
@pytest.mark.parametrize("wrong", [ForgetsOneStepInAD, ForgetsOneStepInTL])
def test_negative_control_a_dropped_step_fails_the_checks(wrong, compiled):
    model, x0, p, rng = make(*CASES[2])
    window, per_step = wrong(model, x0, p, K, compiled=compiled), WindowLinearization(model, x0, p, K)
    dx0, dp = rng.standard_normal(N), rng.standard_normal(model.n_params)
    forcings = {k: rng.standard_normal(N) for k in range(K + 1)}
    if wrong is ForgetsOneStepInAD:
        assert relative(window.ad(forcings)[1], per_step.ad(forcings)[1]) > 1e-6
    else:
        assert relative(window.tl(dx0, dp)[-1], per_step.tl(dx0, dp)[-1]) > 1e-6
    assert checks.window_adjoint_test(wrong(model, x0, p, K, compiled=compiled), dx0, dp, forcings).value > 1e-6


def test_a_large_grid_has_no_window_hook_and_runs_the_per_step_chain():
    model = LocalMLP(n_state=LocalMLP.WINDOW_MAX_POINTS + 1, hidden=[3])
    assert not hasattr(model, "linearize_window")
    x0, p = np.ones(model.n_state), model.init_params(np.random.default_rng(0))
    cost = FourDVarCost(model, [], x0, B=Diagonal(1.0, size=model.n_state), pb=p, n_steps=2)
    assert isinstance(cost.window(x0, p), WindowLinearization)
