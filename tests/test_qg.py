"""The two-layer QG model: pyqg's tendency, its step, and the exactness of its TL and AD.

Mostly on a 16 x 16 grid (one odd, non-square grid for the FFT weights).  The
tendency is compared with pyqg-jax's, stored in ``tests/data/qg_reference.npz`` by
``benchmarks/qg_reference.py`` (no JAX here).  The negative controls plant the
classic mistakes (the inverse FFT taken as the adjoint of the forward one, a
dropped term) and show the same checks fail.
"""

from __future__ import annotations

import pickle
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

from fourdvar import checks
from fourdvar.registry import build_model
from fourdvar.window import WindowLinearization
from models import QG
from models.qg import PARAMETERS, PeriodicSpectrum

REFERENCE = Path(__file__).parent / "data" / "qg_reference.npz"
#: a typical size of each parameter (U2 defaults to 0): the scale of parameter directions
TYPICAL = {"rek": 5.787e-7, "beta": 1.5e-11, "U1": 0.025, "U2": 0.025, "rd": 15000.0}
GRIDS = [dict(nx=16), dict(nx=15, ny=12, W=8e5)]


def smooth_state(model, rng, amplitude=1e-5):
    """A random PV field with a red spectrum (amplitude ~ ``amplitude``), flat."""
    white = model.spectrum.rfft2(rng.standard_normal((2, model.ny, model.nx)))
    q = model.spectrum.irfft2(white / (1.0 + model.kappa2 * (4 * model.dx) ** 2))
    return amplitude * q.reshape(-1) / np.std(q)


def parameter_direction(model, rng):
    """A parameter direction with each component of its parameter's typical size."""
    return np.array([TYPICAL[name] for name in model.param_names]) * rng.standard_normal(model.n_params)


def assert_passes(result):
    assert result.passed, str(result)


# --- the nonlinear model against pyqg ---------------------------------------------------------


def test_registry_builds_qg_with_pyqg_defaults():
    model = build_model({"type": "qg", "nx": 16})
    assert type(model) is QG
    assert (model.ny, model.L, model.W, model.rek, model.filterfac, model.beta, model.rd, model.delta, model.H1,
            model.U1, model.U2, model.dt) == (16, 1e6, 1e6, 5.787e-7, 23.6, 1.5e-11, 15000.0, 0.25, 500, 0.025, 0.0, 7200.0)
    assert model.n_state == 2 * 16 * 16 and model.n_params == 0 and model.param_names == []
    assert QG().nx == 64


def test_grid_coordinates_are_pyqgs_cell_centres():
    model = QG(nx=8, ny=5, L=4e5, W=1e5)
    assert model.dx == 5e4 and model.dy == 2e4
    np.testing.assert_allclose(model.x, 5e4 * (np.arange(8) + 0.5), rtol=0, atol=1e-9)
    np.testing.assert_allclose(model.y, 2e4 * (np.arange(5) + 0.5), rtol=0, atol=1e-9)


def test_tendency_and_streamfunction_equal_pyqg_jax_on_the_stored_reference():
    """Each case of the file: the constructor's arguments, states ``q`` and pyqg-jax's ``dq/dt`` and ``psi``."""
    data = np.load(REFERENCE)
    cases = sorted({key.split("/")[0] for key in data.files})
    assert len(cases) >= 3 and any(data[f"{case}/q"].shape[-1] == 64 for case in cases)
    for case in cases:
        kwargs = {str(name): value.item() for name, value in zip(data[f"{case}/names"], data[f"{case}/values"])}
        model = QG(**{key: int(value) if key in ("nx", "ny") else value for key, value in kwargs.items()})
        for q, dqdt, psi in zip(data[f"{case}/q"], data[f"{case}/dqdt"], data[f"{case}/psi"]):
            mine = model.tendency(q.reshape(-1), np.empty(0))
            assert np.max(np.abs(mine - dqdt.reshape(-1))) < 1e-11 * np.max(np.abs(dqdt)), case
            assert np.max(np.abs(model.streamfunction(q) - psi)) < 1e-11 * np.max(np.abs(psi)), case
    q, dqdt = data["nx16_defaults/q"][1], data["nx16_defaults/dqdt"][1]
    for wrong in (dict(beta=1.5e-11 * 1.001), dict(rek=5.787e-7 * 1.01), dict(rd=15000.0 * 1.001)):  # the test can tell
        mine = QG(nx=16, **wrong).tendency(q.reshape(-1), np.empty(0))
        assert np.max(np.abs(mine - dqdt.reshape(-1))) > 1e-6 * np.max(np.abs(dqdt)), wrong


def independent_step(model, q, dt):
    """RK4 of ``irfft2(dq^/dt)`` then the filter, written out with numpy's FFTs and explicit loops over layers."""
    F1 = model.rd**-2 / (1 + model.delta)
    F2 = model.delta * F1
    k, l = model.k, model.l
    kappa2 = k**2 + l**2
    Qy = [model.beta + F1 * (model.U1 - model.U2), model.beta - F2 * (model.U1 - model.U2)]

    def f(q):
        qh = np.fft.rfft2(q)
        M = np.zeros(kappa2.shape + (2, 2))
        M[..., 0, 0], M[..., 0, 1], M[..., 1, 0], M[..., 1, 1] = -(kappa2 + F1), F1, F2, -(kappa2 + F2)
        M[0, 0] = np.eye(2)  # psi^ = 0 at kappa = 0 (q^ there is set aside below)
        rhs = np.moveaxis(qh, 0, -1).copy()
        rhs[0, 0] = 0
        ph = np.moveaxis(np.linalg.solve(M, rhs[..., None])[..., 0], -1, 0)
        out = np.empty_like(q)
        for n, U in enumerate([model.U1, model.U2]):
            u = np.fft.irfft2(-1j * l * ph[n], s=q.shape[1:])
            v = np.fft.irfft2(1j * k * ph[n], s=q.shape[1:])
            dqh = -1j * k * np.fft.rfft2((u + U) * q[n]) - 1j * l * np.fft.rfft2(v * q[n]) - 1j * k * Qy[n] * ph[n]
            if n == 1:
                dqh += model.rek * kappa2 * ph[n]
            out[n] = np.fft.irfft2(dqh, s=q.shape[1:])
        return out

    k1 = f(q)
    k2 = f(q + dt / 2 * k1)
    k3 = f(q + dt / 2 * k2)
    k4 = f(q + dt * k3)
    q_next = q + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return np.fft.irfft2(model.filtr * np.fft.rfft2(q_next), s=q.shape[1:])


@pytest.mark.parametrize("grid", GRIDS)
def test_step_is_rk4_of_the_tendency_then_the_spectral_filter(grid):
    model = QG(**grid, rek=1e-6, U2=-0.01)
    x = smooth_state(model, np.random.default_rng(0))
    reference = independent_step(model, x.reshape(2, model.ny, model.nx), model.dt)
    assert np.max(np.abs(model.step(x, np.empty(0)) - reference.reshape(-1))) < 1e-13 * np.max(np.abs(reference))
    assert np.max(np.abs(reference - x.reshape(reference.shape))) > 1e-3 * np.max(np.abs(x))  # the step moves the state


def test_streamfunction_inverts_the_pv_definition():
    """``q = lap psi + F1 (psi2 - psi1)``, ``q2 = lap psi2 + F2 (psi1 - psi2)`` (the layer means aside), also at an estimated rd."""
    model = QG(nx=15, ny=12, W=8e5, estimate=["rd"])
    q = smooth_state(model, np.random.default_rng(1)).reshape(2, 12, 15)
    q -= q.mean(axis=(1, 2), keepdims=True)
    for rd in (15000.0, 21000.0):
        psi = model.streamfunction(q.reshape(-1), np.array([rd]))
        F1 = rd**-2 / 1.25
        lap = np.fft.irfft2(-model.kappa2 * np.fft.rfft2(psi), s=(12, 15))
        q_back = lap + np.array([F1, 0.25 * F1])[:, None, None] * (psi[::-1] - psi)
        assert np.max(np.abs(q_back - q)) < 1e-12 * np.max(np.abs(q))
    np.testing.assert_array_equal(model.streamfunction(q), model.streamfunction(q.reshape(-1), model.init_params(None)))


def test_estimated_parameters_act_like_the_constructor_values():
    x = smooth_state(QG(nx=16), np.random.default_rng(2))
    values = dict(rek=2e-6, beta=1e-11, U1=0.04, U2=-0.005, rd=20000.0)
    estimating = QG(nx=16, estimate=["rd", "U1", "rek", "U2", "beta"])
    assert estimating.param_names == ["rd", "U1", "rek", "U2", "beta"]
    np.testing.assert_array_equal(estimating.init_params(np.random.default_rng(0)), [15000.0, 0.025, 5.787e-7, 0.0, 1.5e-11])
    p = np.array([values[name] for name in estimating.param_names])
    np.testing.assert_array_equal(estimating.step(x, p), QG(nx=16, **values).step(x, np.empty(0)))


# --- adjoints ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(16, 16), (12, 15), (5, 4)])
def test_real_fft_adjoints_pass_the_dot_product_test_and_the_plain_inverse_does_not(shape):
    rng = np.random.default_rng(3)
    spectrum = PeriodicSpectrum(*shape)
    a = rng.standard_normal((2,) + shape)
    A = rng.standard_normal((2, shape[0], shape[1] // 2 + 1)) + 1j * rng.standard_normal((2, shape[0], shape[1] // 2 + 1))

    def inner(X, Y):
        return float(np.sum(X.real * Y.real + X.imag * Y.imag))

    for forward, adjoint, u, w in [(spectrum.rfft2, spectrum.rfft2_ad, a, A), (spectrum.irfft2, spectrum.irfft2_ad, A, a)]:
        lhs, rhs = inner(forward(u), w), inner(u, adjoint(w))
        assert abs(lhs - rhs) < 1e-12 * abs(lhs)
    naive = np.fft.irfft2(A, s=shape) * a.size / 2  # the inverse, scaled, without the half spectrum's weights
    assert abs(inner(spectrum.rfft2(a), A) - inner(a, naive)) > 1e-3 * abs(inner(spectrum.rfft2(a), A))


@pytest.mark.parametrize("grid", GRIDS)
def test_streamfunction_and_filter_adjoints_pass_the_dot_product_test(grid):
    rng = np.random.default_rng(4)
    model = QG(**grid)
    for forward, adjoint in [(model.streamfunction, model.streamfunction_ad), (model.spectral_filter, model.spectral_filter_ad)]:
        result = checks.dot_product_test(lambda dq: forward(dq).reshape(-1), lambda a: [adjoint(a)],
                                         [rng.standard_normal(model.n_state)], rng.standard_normal(model.n_state))
        assert_passes(result)
    apsi = rng.standard_normal((2, model.ny, model.nx))
    np.testing.assert_array_equal(model.streamfunction_ad(apsi), model.streamfunction_ad(apsi.reshape(-1)))


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("estimate", [(), ("rek",), ("beta",), ("U1",), ("U2",), ("rd",)])
def test_step_and_window_adjoints_pass_the_dot_product_test(grid, estimate):
    """The step w.r.t. the state and (one at a time, so none hides behind a larger one) each parameter; a 4-step window."""
    rng = np.random.default_rng(5)
    model = QG(**grid, estimate=list(estimate), U2=0.005)
    x, p = smooth_state(model, rng), model.init_params(rng)
    lin = model.linearize(x, p)
    directions = [(rng.standard_normal(model.n_state), np.zeros(model.n_params))]
    if estimate:
        directions.append((np.zeros(model.n_state), parameter_direction(model, rng)))
    for dx, dp in directions:
        assert_passes(checks.dot_product_test(lin.tl, lin.ad, [dx, dp], rng.standard_normal(model.n_state)))
    window = WindowLinearization(model, x, p, 4)
    forcings = {2: rng.standard_normal(model.n_state), 4: rng.standard_normal(model.n_state)}
    for dx, dp in directions:
        assert_passes(checks.window_adjoint_test(window, dx, dp, forcings))


def test_the_tendency_alone_passes_the_dot_product_test_with_every_parameter():
    """``physics_tendency``, the object a hybrid model integrates, on its own."""
    rng = np.random.default_rng(6)
    model = QG(nx=16, estimate=list(PARAMETERS), U2=0.005)
    x, p = smooth_state(model, rng), model.init_params(rng)
    lin = model.physics_tendency.linearize(x, p)
    np.testing.assert_array_equal(lin.output, model.tendency(x, p))
    for index in range(model.n_params):
        dp = np.zeros(model.n_params)
        dp[index] = TYPICAL[model.param_names[index]]
        assert_passes(checks.dot_product_test(lin.tl, lin.ad, [np.zeros(model.n_state), dp], rng.standard_normal(model.n_state)))


# --- tangent linear ---------------------------------------------------------------------------


@pytest.mark.parametrize("grid", GRIDS)
def test_state_tangent_linear_passes_the_taylor_test_for_a_step_and_a_window(grid):
    rng = np.random.default_rng(7)
    model = QG(**grid)
    x, p = smooth_state(model, rng), model.init_params(rng)
    results = checks.check_model(model, x, p, rng, n_steps=4)
    assert [r.name for r in results if r.name.startswith("tangent")] == ["tangent-linear, one step", "tangent-linear, 4 steps"]
    for result in results:
        assert_passes(result)


@pytest.mark.parametrize("name", PARAMETERS)
def test_parameter_tangent_linear_passes_the_taylor_test(name):
    rng = np.random.default_rng(8)
    model = QG(nx=16, estimate=[name], U2=0.005)
    x, p = smooth_state(model, rng), model.init_params(rng)
    lin = model.linearize(x, p)
    n = model.n_state
    u = np.concatenate([x, p])
    h = np.concatenate([np.zeros(n), [TYPICAL[name]]])
    result = checks.taylor_test(lambda v: model.step(v[:n], v[n:]), lambda dv: lin.tl(dv[:n], dv[n:]), u, h, rng=rng)
    assert_passes(result)


# --- blocks -----------------------------------------------------------------------------------


def test_blocked_tl_and_ad_equal_the_single_directions():
    rng = np.random.default_rng(9)
    model = QG(nx=15, ny=12, W=8e5, estimate=["U1", "rd"])
    x, p = smooth_state(model, rng), model.init_params(rng)
    lin = model.linearize(x, p)
    dX = rng.standard_normal((model.n_state, 3))
    dP = rng.standard_normal((2, 3)) * np.array([[0.025], [15000.0]])
    aX = rng.standard_normal((model.n_state, 3))
    tl_block, (ax_block, ap_block) = lin.tl(dX, dP), lin.ad(aX)
    assert tl_block.shape == aX.shape and ax_block.shape == aX.shape and ap_block.shape == (2, 3)
    for j in range(3):
        ax, ap = lin.ad(aX[:, j])
        np.testing.assert_allclose(tl_block[:, j], lin.tl(dX[:, j], dP[:, j]), rtol=0, atol=1e-14 * np.abs(tl_block).max())
        np.testing.assert_allclose(ax_block[:, j], ax, rtol=0, atol=1e-14 * np.abs(ax_block).max())
        np.testing.assert_allclose(ap_block[:, j], ap, rtol=1e-13)
    np.testing.assert_allclose(model.spectral_filter(aX)[:, 1], model.spectral_filter(aX[:, 1]), rtol=0, atol=1e-15)


@pytest.mark.parametrize("estimate", [(), ("rek", "beta", "U1", "U2", "rd")])
def test_compiled_kernels_equal_the_numpy_reference(estimate):
    """The fused loops of ``models.qg_kernels`` against :class:`models.qg.SpectralOps`: output, TL and AD, one direction and a block."""
    rng = np.random.default_rng(13)
    compiled = QG(nx=15, ny=12, W=8e5, estimate=list(estimate), U2=0.005)
    reference = QG(nx=15, ny=12, W=8e5, estimate=list(estimate), U2=0.005, compiled=False)
    assert compiled.compiled and not reference.compiled
    x, p = smooth_state(compiled, rng), compiled.init_params(rng)
    lin_c, lin_r = compiled.linearize(x, p), reference.linearize(x, p)
    dX, aX = rng.standard_normal((compiled.n_state, 2)), rng.standard_normal((compiled.n_state, 2))
    dP = np.array([TYPICAL[name] for name in compiled.param_names])[:, None] * rng.standard_normal((compiled.n_params, 2))
    pairs = [(lin_c.output, lin_r.output), (lin_c.tl(dX, dP), lin_r.tl(dX, dP)), (lin_c.tl(dX[:, 0], dP[:, 0]), lin_r.tl(dX[:, 0], dP[:, 0]))]
    pairs += list(zip(lin_c.ad(aX), lin_r.ad(aX))) + list(zip(lin_c.ad(aX[:, 1]), lin_r.ad(aX[:, 1])))
    for ours, theirs in pairs:
        assert ours.shape == theirs.shape
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-13 * np.max(np.abs(theirs), initial=0.0))
    assert_passes(checks.model_adjoint_test(reference, x, p, rng))


def test_blocked_window_equals_its_columns():
    rng = np.random.default_rng(14)
    model = QG(nx=8, estimate=["beta"])
    x, p = smooth_state(model, rng), model.init_params(rng)
    window = WindowLinearization(model, x, p, 3)
    assert window.blocked
    dX, dP = rng.standard_normal((model.n_state, 2)), 1.5e-11 * rng.standard_normal((1, 2))
    forcings = {k: rng.standard_normal((model.n_state, 2)) for k in (1, 3)}
    dx_block, (ax_block, ap_block) = window.tl(dX, dP)[-1], window.ad(forcings)
    for j in range(2):
        ax, ap = window.ad({k: f[:, j] for k, f in forcings.items()})
        np.testing.assert_allclose(dx_block[:, j], window.tl(dX[:, j], dP[:, j])[-1], rtol=0, atol=1e-14 * np.abs(dx_block).max())
        np.testing.assert_allclose(ax_block[:, j], ax, rtol=0, atol=1e-14 * np.abs(ax_block).max())
        np.testing.assert_allclose(ap_block[:, j], ap, rtol=1e-13)


def test_the_benchmark_cost_gradient_passes_the_gradient_test():
    """``benchmarks/qg.py``'s 4D-Var cost (streamfunction at points), small: loads without JAX, and its gradient is right."""
    modules, path = set(sys.modules), list(sys.path)
    try:  # run as a module, not as the script: nothing is timed
        benchmark = runpy.run_path(str(Path(__file__).resolve().parents[1] / "benchmarks" / "qg.py"), run_name="benchmark_qg")
    finally:
        sys.path[:] = path
        added = set(sys.modules) - modules
        if "results" in added:  # benchmarks/results.py, imported by the benchmark
            del sys.modules["results"]
    assert not any(name.split(".")[0] == "jax" for name in added)
    rng = np.random.default_rng(15)
    model = QG(nx=16)
    cost, xb, *_ = benchmark["build_cost"](model, rng, window=4, every=2, n_points=30)
    assert_passes(checks.operator_adjoint_test(cost.slots[0].operator, xb, rng))
    gradient = cost.gradient(xb, np.empty(0))[1]
    assert_passes(checks.gradient_test(lambda x0: cost.evaluate(x0, np.empty(0)).J, gradient, xb,
                                       np.std(xb) * rng.standard_normal(model.n_state), rng=rng))


def test_the_model_pickles_and_steps_alike_after():
    """Dask ships models to its workers by pickling them."""
    model = QG(nx=8, estimate=["rek"])
    x, p = smooth_state(model, np.random.default_rng(16)), model.init_params(None)
    copy = pickle.loads(pickle.dumps(model))
    assert copy.compiled == model.compiled
    np.testing.assert_array_equal(copy.step(x, p), model.step(x, p))


# --- refusals and negative controls -----------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    (dict(estimate=["rek", "F1"]), "unknown parameter 'F1' in estimate; choose from rek, beta, U1, U2, rd"),
    (dict(estimate="rek"), "estimate must be a list of parameter names"),
    (dict(estimate=["rd", "rd"]), "estimate names a parameter twice"),
    (dict(nx=3), "nx must be an integer >= 4, got 3"),
    (dict(nx=16.0), "nx must be an integer >= 4, got 16.0"),
    (dict(ny=2), "ny must be an integer >= 4, got 2"),
    (dict(dt=0.0), "dt must be positive, got 0.0"),
    (dict(dt=-3600), "dt must be positive, got -3600"),
    (dict(rd=-1.0), "rd must be positive"),
    (dict(L="big"), "L must be a number, got 'big'"),
    (dict(filterfac=-1), "filterfac must be >= 0"),
    (dict(beta="1.5e-11x"), "beta must be a number, got '1.5e-11x'"),
    (dict(U1=float("nan")), "U1 must be a finite number, got nan"),
    (dict(rek=True), "rek must be a finite number, got True"),
])
def test_bad_arguments_are_refused_with_one_line_naming_them(kwargs, message):
    with pytest.raises(ValueError) as error:
        QG(**kwargs)
    assert str(error.value).startswith("QG: ") and message in str(error.value) and "\n" not in str(error.value)


def test_a_wrong_state_or_parameter_size_is_refused():
    model = QG(nx=8, estimate=["rek"])
    with pytest.raises(ValueError, match=r"state x must have shape \(128,\)"):
        model.step(np.zeros(127), np.zeros(1))
    with pytest.raises(ValueError, match=r"parameters p must have shape \(1,\)"):
        model.linearize(np.zeros(128), np.zeros(0))


def test_negative_control_the_plain_inverse_fft_as_adjoint_fails_the_step_adjoint_test(monkeypatch):
    rng = np.random.default_rng(10)
    model = QG(nx=16)
    x = smooth_state(model, rng)
    spectrum = model.spectrum
    monkeypatch.setattr(spectrum, "inverse_weights", np.full_like(spectrum.inverse_weights, spectrum.inverse_weights[0]))
    result = checks.model_adjoint_test(model, x, np.empty(0), rng)
    assert result.failed and result.error > 1e-3


@pytest.mark.parametrize("name, planted", [("rek", lambda a: {**a, "rek": 0.0 * a["rek"]}),  # the drag's adjoint dropped
                                           ("rd", lambda a: {**a, "rd": -a["rd"]})])      # the rd adjoint's sign flipped
def test_negative_control_a_wrong_parameter_adjoint_fails_the_adjoint_test(name, planted, monkeypatch):
    rng = np.random.default_rng(11)
    model = QG(nx=16, estimate=[name])
    x, p = smooth_state(model, rng), model.init_params(rng)
    lin = model.linearize(x, p)
    physics = model.physics(p)
    original = physics.increments_ad
    monkeypatch.setattr(physics, "increments_ad", lambda *args: planted(original(*args)))
    result = checks.dot_product_test(lin.tl, lin.ad, [np.zeros(model.n_state), parameter_direction(model, rng)], rng.standard_normal(model.n_state))
    assert result.failed and result.error > 1e-3


def test_negative_control_a_tangent_linear_without_the_mean_flow_fails_the_taylor_test():
    """The TL advecting ``dq`` by ``u`` instead of ``u + U`` (a classic slip): the remainder falls only like ``a``."""
    rng = np.random.default_rng(12)
    model = QG(nx=16)
    x = smooth_state(model, rng)
    lin = model.linearize(x, np.empty(0))
    for stage in lin.rk.stages:
        stage.ubar = stage.ubar - stage.physics.U[:, None, None]
    result = checks.taylor_test(lambda v: model.step(v, np.empty(0)), lambda dv: lin.tl(dv, np.empty(0)), x,
                                np.std(x) * rng.standard_normal(model.n_state), rng=rng)
    assert result.failed
