"""The two-scale Lorenz-96 model: consistency suite, an independent RK4, the one-scale limit,
the unresolved tendency, negative controls and the registry."""

from __future__ import annotations

import numpy as np
import pytest

from fourdvar import checks
from fourdvar.registry import build_model
from models import Lorenz96, Lorenz96TwoScale
from models import lorenz96_two_scale as l96ts

SEEDS = [0, 1, 2]
SIZES = [(8, 4), (40, 10)]  # (K, J)


def two_scale_state(model, rng, p=None, spinup=300):
    """A state near the attractor: X ~ F + noise, Y ~ 0.1 noise, then ``spinup`` steps."""
    p = np.full(model.n_params, model.forcing) if p is None else p
    x = np.concatenate([model.forcing + rng.standard_normal(model.n_slow), 0.1 * rng.standard_normal(model.n_fast)])
    for _ in range(spinup):
        x = model.step(x, p)
    return x


def assert_all_pass(results):
    failed = [str(r) for r in results if not r.passed]
    assert not failed, "\n".join(failed)


def independent_tendency(x, K, J, F, h, c, b):
    """dX_k/dt and dY_j/dt written with np.roll, a strided block sum and an index map."""
    X, Y = x[:K], x[K:]
    Ysum = sum(Y[j::J] for j in range(J))  # Y[k J + j] summed over j
    dX = np.roll(X, 1) * (np.roll(X, -1) - np.roll(X, 2)) - X + F - (h * c / b) * Ysum
    dY = -c * b * np.roll(Y, -1) * (np.roll(Y, -2) - np.roll(Y, 1)) - c * Y + (h * c / b) * X[np.arange(J * K) // J]
    return np.concatenate([dX, dY])


def independent_rk4(x, dt, **kwargs):
    def f(x):
        return independent_tendency(x, **kwargs)

    k1 = f(x)
    k2 = f(x + 0.5 * dt * k1)
    k3 = f(x + 0.5 * dt * k2)
    k4 = f(x + dt * k3)
    return x + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)


# --- consistency suite ---------------------------------------------------------------------


@pytest.mark.parametrize("K, J", SIZES)
@pytest.mark.parametrize("estimate_forcing", [False, True])
@pytest.mark.parametrize("seed", SEEDS)
def test_lorenz96_two_scale_passes_adjoint_taylor_and_linearize_checks(K, J, estimate_forcing, seed):
    rng = np.random.default_rng(seed)
    model = Lorenz96TwoScale(n_slow=K, n_fast_per_slow=J, estimate_forcing=estimate_forcing)
    assert model.n_state == K + J * K
    p = model.init_params(rng)
    assert p.shape == ((1,) if estimate_forcing else (0,))
    x = two_scale_state(model, rng, p)
    assert np.all(np.isfinite(x)) and np.std(x[K:]) > 1e-3  # the fast variables are alive
    results = checks.check_model(model, x, p, rng, n_steps=10)
    assert_all_pass(results)
    one_step, chain, taylor, _, window_taylor = results[:5]  # then the compiled window's checks, when present
    assert one_step.error < 1e-12 and chain.error < 1e-12
    assert taylor.order >= checks.MIN_ORDER and window_taylor.order >= checks.MIN_ORDER


# --- the nonlinear step ----------------------------------------------------------------------


@pytest.mark.parametrize("K, J", SIZES)
def test_lorenz96_two_scale_step_matches_independent_rk4(K, J):
    rng = np.random.default_rng(3)
    constants = dict(coupling=0.7, time_scale=8.0, space_scale=12.0, dt=0.004)
    for estimate_forcing, forcing, p in [(False, 10.0, np.empty(0)), (True, 6.0, np.array([9.5]))]:
        model = Lorenz96TwoScale(n_slow=K, n_fast_per_slow=J, forcing=forcing, estimate_forcing=estimate_forcing, **constants)
        x = two_scale_state(model, rng, p, spinup=100)
        F = p[0] if estimate_forcing else forcing
        reference = independent_rk4(x, 0.004, K=K, J=J, F=F, h=0.7, c=8.0, b=12.0)
        assert np.max(np.abs(model.step(x, p) - reference)) / np.max(np.abs(reference)) < 1e-13
        assert np.max(np.abs(x - reference)) > 1e-3  # the step moves the state


@pytest.mark.parametrize("estimate_forcing", [False, True])
def test_lorenz96_two_scale_without_coupling_evolves_x_like_one_scale_lorenz96(estimate_forcing):
    K, J, F, dt = 40, 10, 10.0, 0.005
    rng = np.random.default_rng(4)
    p = np.array([F]) if estimate_forcing else np.empty(0)
    uncoupled = Lorenz96TwoScale(n_slow=K, n_fast_per_slow=J, forcing=F, coupling=0.0, dt=dt, estimate_forcing=estimate_forcing)
    one_scale = Lorenz96(n_state=K, forcing=F, dt=dt, estimate_forcing=estimate_forcing)
    x = two_scale_state(Lorenz96TwoScale(n_slow=K, n_fast_per_slow=J, forcing=F, dt=dt), rng)
    X = x[:K].copy()
    for _ in range(100):
        x = uncoupled.step(x, p)
        X = one_scale.step(X, p)
        assert np.max(np.abs(x[:K] - X)) / np.max(np.abs(X)) < 1e-13
    # control: with the default coupling the slow variables do feel the fast ones
    coupled = Lorenz96TwoScale(n_slow=K, n_fast_per_slow=J, forcing=F, dt=dt, estimate_forcing=estimate_forcing)
    assert np.max(np.abs(coupled.step(x, p)[:K] - one_scale.step(x[:K], p))) > 1e-4


@pytest.mark.parametrize("estimate_forcing", [False, True])
def test_unresolved_tendency_is_full_slow_tendency_minus_one_scale_tendency(estimate_forcing):
    K, J = 40, 10
    rng = np.random.default_rng(5)
    model = Lorenz96TwoScale(n_slow=K, n_fast_per_slow=J, estimate_forcing=estimate_forcing)
    p = np.array([8.5]) if estimate_forcing else np.empty(0)
    F = 8.5 if estimate_forcing else model.forcing
    one_scale = Lorenz96(n_state=K, forcing=F)
    for _ in range(3):
        x = two_scale_state(model, rng, p, spinup=100)
        full = model.tendency.evaluate(x, p)[:K]
        resolved = one_scale.tendency.evaluate(x[:K], np.empty(0))
        unresolved = model.unresolved_tendency(x)
        assert unresolved.shape == (K,)
        scale = np.max(np.abs(full))
        assert np.max(np.abs(unresolved - (full - resolved))) < 1e-13 * scale
        independent = independent_tendency(x, K, J, F, h=1.0, c=10.0, b=10.0)[:K] - resolved
        assert np.max(np.abs(unresolved - independent)) < 1e-13 * scale
        assert np.max(np.abs(unresolved)) > 1e-2  # not trivially zero
    with pytest.raises(ValueError, match=r"state x must have shape \(440,\)"):
        model.unresolved_tendency(np.zeros(K))


# --- negative controls: the suite catches wrong coupling adjoints -----------------------------------


def flip_block_sum_adjoint(self, af, original):
    """aY_{j,k} += +s afX_k instead of -s afX_k."""
    ax, ap = original(self, af)
    ax = ax.copy()
    ax[self.n_slow :] += 2 * self.coupling_coefficient * np.repeat(af[: self.n_slow], self.n_fast_per_slow)
    return ax, ap


def flip_repeat_adjoint(self, af, original):
    """aX_k -= s sum_j afY_{j,k} instead of +=."""
    ax, ap = original(self, af)
    ax = ax.copy()
    ax[: self.n_slow] -= 2 * self.coupling_coefficient * af[self.n_slow :].reshape(self.n_slow, -1).sum(axis=1)
    return ax, ap


@pytest.mark.parametrize("bug", [flip_block_sum_adjoint, flip_repeat_adjoint])
def test_negative_control_wrong_sign_in_coupling_adjoint_is_caught(bug, monkeypatch):
    rng = np.random.default_rng(6)
    model = Lorenz96TwoScale(n_slow=8, n_fast_per_slow=4)
    x = two_scale_state(model, rng)
    p = np.empty(0)
    original = l96ts.Lorenz96TwoScaleTendencyLinearization.ad
    with monkeypatch.context() as patch:
        patch.setattr(l96ts.Lorenz96TwoScaleTendencyLinearization, "ad", lambda self, af: bug(self, af, original))
        one_step = checks.model_adjoint_test(model, x, p, rng)
        chain = checks.model_chain_adjoint_test(model, x, p, 5, rng)
        assert not one_step.passed and one_step.value > 1e-6
        assert not chain.passed
    assert checks.model_adjoint_test(model, x, p, rng).passed  # and the unpatched one passes


def test_negative_control_wrong_coupling_tangent_linear_is_caught_by_taylor_test(monkeypatch):
    """A TL that drops the X -> Y coupling term s dX_{k(j)}."""
    rng = np.random.default_rng(7)
    model = Lorenz96TwoScale(n_slow=8, n_fast_per_slow=4)
    x = two_scale_state(model, rng)
    original = l96ts.Lorenz96TwoScaleTendencyLinearization.tl

    def tl(self, dx, dp):
        df = original(self, dx, dp)
        df[self.n_slow :] -= self.coupling_coefficient * np.repeat(dx[: self.n_slow], self.n_fast_per_slow)
        return df

    with monkeypatch.context() as patch:
        patch.setattr(l96ts.Lorenz96TwoScaleTendencyLinearization, "tl", tl)
        taylor = checks.model_taylor_test(model, x, np.empty(0), rng)
        assert taylor.failed and abs(taylor.order - 1) < 0.2  # the remainder falls only as a
        assert "the state part of .tl" in taylor.inspect
    assert checks.model_taylor_test(model, x, np.empty(0), rng).passed


# --- construction ---------------------------------------------------------------------------------


def test_registry_builds_lorenz96_two_scale():
    model = build_model({"type": "lorenz96_two_scale", "n_slow": 8, "n_fast_per_slow": 4})
    assert type(model) is Lorenz96TwoScale
    assert (model.n_state, model.n_params, model.n_slow, model.n_fast) == (40, 0, 8, 32)
    forcing = build_model({"type": "lorenz96_two_scale", "n_slow": 8, "n_fast_per_slow": 4, "estimate_forcing": True, "forcing": 12.0})
    assert forcing.n_params == 1 and forcing.init_params(np.random.default_rng(0)).tolist() == [12.0]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_slow": 3}, "n_slow >= 4"),
        ({"n_slow": 8.5}, "n_slow >= 4"),
        ({"n_fast_per_slow": 0}, "n_fast_per_slow >= 1"),
        ({"dt": 0.0}, "dt > 0"),
        ({"dt": -0.01}, "dt > 0"),
        ({"space_scale": 0.0}, "space_scale > 0"),
        ({"time_scale": -1.0}, "time_scale > 0"),
    ],
)
def test_lorenz96_two_scale_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Lorenz96TwoScale(**kwargs)


def test_lorenz96_two_scale_rejects_wrong_shapes():
    model = Lorenz96TwoScale(n_slow=8, n_fast_per_slow=4)
    with pytest.raises(ValueError, match=r"state x must have shape \(40,\)"):
        model.step(np.zeros(8), np.empty(0))
    with pytest.raises(ValueError, match=r"parameters p must have shape \(0,\)"):
        model.step(np.zeros(40), np.array([10.0]))
