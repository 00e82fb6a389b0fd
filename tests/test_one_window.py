"""One window for strong and weak constraint: with the forcing at zero and ``Q`` given, the weak
path gives the strong path's gradients (to round-off) through every kind of window (the compiled
Lorenz-96 window, the per-step chain with its stored step Jacobians, a model's own window that
takes no forcing); the compiled window's forcing adjoint passes the dot-product test, blocked and
one vector alike; the blocked Hessian of a weak-constraint Jq equals its Hessian-vector products."""

from __future__ import annotations

import numpy as np
import pytest

from fourdvar import checks
from fourdvar.cost import FourDVarCost, IncrementalCost
from fourdvar.covariances import Diagonal, PeriodicCorrelation
from fourdvar.interfaces import ObservationSlot
from fourdvar.window import (
    ForcedWindowLinearization, WindowLinearization, ad_block, forced_forecast, forecast, linearize_window, sub_window_forcing, sub_window_sums,
    tl_block,
)
from models import MLP, Lorenz96, Lorenz96TwoScale
from models.mlp import MLPWindowLinearization
from models.lorenz96 import KERNELS_AVAILABLE, CompiledWindow
from observations import Identity

N_STEPS, EVERY = 8, 3


class OwnWindowWithoutForcing(MLP):
    """A model whose own window takes no forcing, as a user's may: weak constraint chains its steps."""

    window_forcing = False

    def linearize_window(self, x0, p, n_steps):
        return super().linearize_window(x0, p, n_steps)


def models():
    rng = np.random.default_rng(0)
    mlp, own = MLP([10, 12, 10], ["tanh", "identity"], residual=True), OwnWindowWithoutForcing([10, 12, 10], ["tanh", "identity"], residual=True)
    p = 0.3 * rng.standard_normal(mlp.n_params) / np.sqrt(10)
    return {
        "lorenz96 compiled": (Lorenz96(10), np.empty(0)),
        "lorenz96 numpy": (Lorenz96(10, compiled=False), np.empty(0)),
        "two-scale compiled": (Lorenz96TwoScale(n_slow=5, n_fast_per_slow=1), np.empty(0)),
        "mlp (own window with forcing)": (mlp, p),
        "mlp (own window, no forcing)": (own, p),
    }


def pair(model, p, control_params=False):
    """Strong and weak costs on the same observations, ``Q`` given, and the background."""
    rng = np.random.default_rng(1)
    n = model.n_state
    x = 2.0 + rng.standard_normal(n)
    R = Diagonal(0.5, size=n)
    slots = [ObservationSlot(k, x + R.sample(rng), Identity(n_state=n), R) for k in range(0, N_STEPS + 1, 2)]
    B, P = PeriodicCorrelation(n, 2.0, std=0.7), (Diagonal(0.05, size=model.n_params) if control_params else None)
    common = dict(xb=x + 0.1 * rng.standard_normal(n), B=B, pb=p, P=P, n_steps=N_STEPS)
    return FourDVarCost(model, slots, **common), FourDVarCost(model, slots, Q=Diagonal(0.2, size=n), model_error_every=EVERY, **common)


@pytest.mark.parametrize("name", list(models()))
def test_weak_gradients_at_zero_forcing_equal_the_strong_ones(name):
    model, p = models()[name]
    strong, weak = pair(model, p)
    eta = np.zeros((weak.n_sub, model.n_state))
    terms_s, gx_s, gp_s = strong.gradient(strong.xb, p)
    terms_w, gx_w, gp_w, geta = weak.full_gradient(weak.xb, p, eta)
    assert terms_w.Jm == 0.0 and terms_w.J == terms_s.J
    assert np.linalg.norm(gx_w - gx_s) <= 1e-13 * np.linalg.norm(gx_s)
    assert geta.shape == (3, model.n_state) and np.linalg.norm(geta) > 0
    rng = np.random.default_rng(6)
    window = weak.window(weak.xb, p, eta=0.1 * rng.standard_normal(eta.shape))
    dx0, dp, de = rng.standard_normal(10), rng.standard_normal(model.n_params), rng.standard_normal((N_STEPS, 10))
    assert checks.window_adjoint_test(window, dx0, dp, {k: rng.standard_normal(10) for k in (0, 5, N_STEPS)}, de=de).value < 1e-12

    jq_s = IncrementalCost(strong, strong.xb, p, control=["state"])
    jq_w = IncrementalCost(weak, weak.xb, p, control=["state", "model_error"], eta=eta)
    v = 0.3 * np.random.default_rng(2).standard_normal(jq_s.size)
    for _ in range(4):  # past the sweep on which the per-step chain stores its step Jacobians
        (ts, g_s), (tw, g_w) = jq_s.value_and_gradient(v), jq_w.value_and_gradient(np.concatenate([v, np.zeros(jq_w.size - v.size)]))
        assert np.linalg.norm(g_w[: v.size] - g_s) <= 1e-13 * np.linalg.norm(g_s)
        assert abs(tw.J - ts.J) <= 1e-14 * ts.J
    # grad Jq(0) == grad J, the forcing's part included (B^T/2, Q^T/2 of the nonlinear gradients)
    g0 = jq_w.value_and_gradient(np.zeros(jq_w.size))[1]
    assert np.linalg.norm(g0 - jq_w.control_gradient(gx_w, gp_w, geta)) <= 1e-12 * np.linalg.norm(g0)


def test_a_window_that_takes_no_forcing_falls_back_to_the_per_step_chain():
    x, forcing = np.ones(10), 0.1 * np.ones((4, 10))
    own, p = models()["mlp (own window, no forcing)"]
    assert type(linearize_window(own, x, p, 4)) is MLPWindowLinearization
    assert type(linearize_window(own, x, p, 4, forcing=forcing)) is WindowLinearization
    mlp, _ = models()["mlp (own window with forcing)"]
    window, chain = linearize_window(mlp, x, p, 4, forcing=forcing), WindowLinearization(mlp, x, p, 4, forcing=forcing)
    assert type(window) is MLPWindowLinearization and np.allclose(window.states, chain.states, rtol=1e-14, atol=1e-14)
    rng = np.random.default_rng(5)
    dx0, dp, de = rng.standard_normal(10), rng.standard_normal(mlp.n_params), rng.standard_normal((4, 10))
    forcings = {k: rng.standard_normal(10) for k in (1, 4)}
    assert checks.window_adjoint_test(window, dx0, dp, forcings, de=de).value < 1e-12
    ae, ae_chain = np.empty((4, 10)), np.empty((4, 10))
    window.ad(forcings, ae=ae), chain.ad(forcings, ae=ae_chain)
    assert np.allclose(ae, ae_chain, rtol=1e-13, atol=1e-13)
    assert np.allclose(window.tl(dx0, dp, de=de)[-1], chain.tl(dx0, dp, de=de)[-1], rtol=1e-13, atol=1e-13)


@pytest.mark.skipif(not KERNELS_AVAILABLE, reason="numba is a dependency; the compiled path needs it")
@pytest.mark.parametrize("estimate_forcing", [False, True])
def test_compiled_window_forcing_adjoint_blocked_and_single(estimate_forcing):
    model = Lorenz96(12, estimate_forcing=estimate_forcing)
    rng = np.random.default_rng(3)
    p = np.full(model.n_params, 8.0)
    forcing = 0.1 * rng.standard_normal((N_STEPS, 12))
    window = linearize_window(model, 8.0 + rng.standard_normal(12), p, N_STEPS, forcing=forcing)
    chain = WindowLinearization(Lorenz96(12, estimate_forcing=estimate_forcing, compiled=False), window.states[0], p, N_STEPS, forcing=forcing)
    assert isinstance(window, CompiledWindow) and np.array_equal(window.states, chain.states)
    dx0, dp, de = rng.standard_normal(12), rng.standard_normal(model.n_params), rng.standard_normal((N_STEPS, 12))
    forcings = {k: rng.standard_normal(12) for k in (0, 3, N_STEPS)}
    assert checks.window_adjoint_test(window, dx0, dp, forcings, de=de).value < 1e-12
    # a wrong forcing adjoint fails it (negative control)
    wrong = lambda f, ae: (window.ad(f, ae=ae), ae.__setitem__(2, 0.0))[0]  # noqa: E731
    shim = type("Wrong", (), {"tl": window.tl, "ad": staticmethod(wrong), "n_steps": N_STEPS})()
    assert checks.window_adjoint_test(shim, dx0, dp, forcings, de=de).value > 1e-6
    # blocked: column d of the block is the one-vector result of column d
    k = 3
    DX0, DP, DE = rng.standard_normal((12, k)), rng.standard_normal((model.n_params, k)), rng.standard_normal((N_STEPS, 12, k))
    F = {s: rng.standard_normal((12, k)) for s in forcings}
    AE = np.empty((N_STEPS, 12, k))
    DX, (AX, AP) = tl_block(window, DX0, DP, de=DE), ad_block(window, F, ae=AE)
    for d in range(k):
        ae = np.empty((N_STEPS, 12))
        ax, ap = chain.ad({s: f[:, d] for s, f in F.items()}, ae=ae)
        assert np.allclose(AX[:, d], ax, rtol=1e-13, atol=1e-13) and np.allclose(AP[:, d], ap, rtol=1e-13, atol=1e-12)
        assert np.allclose(AE[..., d], ae, rtol=1e-13, atol=1e-13)
        assert np.allclose(DX[-1][:, d], chain.tl(DX0[:, d], DP[:, d], de=DE[..., d])[-1], rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("transform", [True, False])
def test_blocked_weak_hessian_matrix_equals_hessian_vector_products(transform):
    model, p = models()["lorenz96 compiled"]
    _, weak = pair(model, p)
    jq = IncrementalCost(weak, weak.xb, p, control=["state", "model_error"], transform=transform, eta=0.05 * np.ones((weak.n_sub, 10)))
    A = jq.hessian_matrix(block_size=7)
    columns = np.column_stack([jq.hessian_vector(e) for e in np.eye(jq.size)])
    assert np.linalg.norm(A - 0.5 * (columns + columns.T)) <= 1e-13 * np.linalg.norm(A)


def test_the_weak_constraint_twins_are_deprecated_aliases_of_the_one_forms():
    model, p = models()["lorenz96 numpy"]
    _, weak = pair(model, p)
    rng = np.random.default_rng(7)
    eta = 0.1 * rng.standard_normal((weak.n_sub, 10))
    forcing = sub_window_forcing(eta, EVERY, N_STEPS)
    with pytest.warns(DeprecationWarning, match="forced_forecast"):
        assert np.array_equal(forced_forecast(model, weak.xb, p, N_STEPS, eta, EVERY), forecast(model, weak.xb, p, N_STEPS, forcing=forcing))
    with pytest.warns(DeprecationWarning, match="ForcedWindowLinearization"):
        old = ForcedWindowLinearization(model, weak.xb, p, N_STEPS, eta, EVERY)
    forcings = {k: rng.standard_normal(10) for k in (2, N_STEPS)}
    ae = np.empty((N_STEPS, 10))
    ax, ap = WindowLinearization(model, weak.xb, p, N_STEPS, forcing=forcing).ad(forcings, ae=ae)
    ax_old, ap_old, aeta = old.ad_eta(forcings)
    assert np.array_equal(ax_old, ax) and np.allclose(aeta, sub_window_sums(ae, EVERY, weak.n_sub), rtol=1e-15, atol=0)
    full = weak.full_gradient(weak.xb, p, eta)
    assert len(weak.gradient(weak.xb, p, eta)) == 3  # the documented (terms, grad_x0, grad_p)
    assert all(np.array_equal(a, b) for a, b in zip(full[1:3], weak.gradient(weak.xb, p, eta)[1:]))
    with pytest.warns(DeprecationWarning, match="check_weak_cost"):
        assert all(r.passed for r in checks.check_weak_cost(weak, weak.xb, p, eta, ["state", "model_error"], np.random.default_rng(8)))
