"""The compiled Lorenz-96 kernels (one and two scales) against the numpy reference path.

``Lorenz96(compiled=False)`` is the numpy path (the tendency of
:mod:`models.lorenz96` composed with :mod:`models.integrators`), checked on its
own in ``test_models.py``.  The compiled step and window must equal it to
round-off (the trajectory bit for bit): the step, the trajectory, the window TL and AD (one vector and
blocks), and pass the window dot-product test.  Without numba the compiled path
does not exist and these tests check that the model falls back to numpy.
"""

from __future__ import annotations

import numpy as np
import pytest

from fourdvar import checks
from fourdvar.window import DivergenceError, WindowLinearization, linearize_window
from models import Lorenz96, Lorenz96TwoScale
from models.lorenz96 import KERNELS_AVAILABLE, CompiledWindow

CASES = [(4, False, 0.0), (5, True, 0.0), (40, True, 0.0), (40, False, 0.6), (1000, True, 0.3)]
IDS = [f"n{n}-{'F' if estimate else 'fixed'}{'-extra' if amplitude else ''}" for n, estimate, amplitude in CASES]
K = 12

compiled_only = pytest.mark.skipif(not KERNELS_AVAILABLE, reason="numba is not installed: the numpy path is the model")


def relative(a, b):
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


def pair(n, estimate_forcing, amplitude, seed=0):
    """The compiled model, the numpy one, and a point on the attractor."""
    kwargs = dict(n_state=n, forcing=8.0, estimate_forcing=estimate_forcing, extra_amplitude=amplitude)
    fast, reference = Lorenz96(**kwargs), Lorenz96(**kwargs, compiled=False)
    rng = np.random.default_rng(seed)
    p = np.array([7.5]) if estimate_forcing else np.empty(0)
    x = reference.forecast(8.0 + rng.standard_normal(n), p, 50)[-1]
    return fast, reference, x, p, rng


def test_without_numba_the_model_is_the_numpy_path():
    model = Lorenz96(n_state=10, compiled=False)
    assert not model.compiled and model.linearize_window is None
    assert type(linearize_window(model, np.ones(10), np.empty(0), 3)) is WindowLinearization
    assert Lorenz96(n_state=10).compiled == KERNELS_AVAILABLE


@compiled_only
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_compiled_step_and_trajectory_equal_the_numpy_path(case):
    fast, reference, x, p, _ = pair(*case)
    # the same operations in the same order: the same trajectory bit for bit (not only to round-off)
    assert np.array_equal(fast.step(x, p), reference.step(x, p))
    window = linearize_window(fast, x, p, K)
    assert isinstance(window, CompiledWindow)
    assert np.array_equal(window.states, reference.forecast(x, p, K))
    assert np.array_equal(fast.forecast(x, p, 300), reference.forecast(x, p, 300))


@compiled_only
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_compiled_window_tl_and_ad_equal_the_numpy_chain(case):
    fast, reference, x, p, rng = pair(*case)
    window, chain = linearize_window(fast, x, p, K), WindowLinearization(reference, x, p, K)
    chain.DENSE_STEP_SIZE = 0  # the per-step numpy chain itself
    dx0, dp = rng.standard_normal(fast.n_state), rng.standard_normal(fast.n_params)
    for last_step in (None, 5, 0):
        dx, dx_ref = window.tl(dx0, dp, last_step), chain.tl(dx0, dp, last_step)
        assert len(dx) == len(dx_ref)
        assert max(relative(a, b) for a, b in zip(dx, dx_ref)) < 1e-12
    for steps in ((0, 4, K), (K,), (3,), (0,), tuple(range(K + 1))):
        forcings = {k: rng.standard_normal(fast.n_state) for k in steps}
        (ax, ap), (ax_ref, ap_ref) = window.ad(forcings), chain.ad(forcings)
        assert ax.shape == (fast.n_state,) and ap.shape == (fast.n_params,)
        assert relative(ax, ax_ref) < 1e-12
        if fast.n_params and steps != (0,):
            assert relative(ap, ap_ref) < 1e-12
    ax, ap = window.ad({})
    assert ax.shape == (fast.n_state,) and not np.any(ax) and not np.any(ap)


@compiled_only
@pytest.mark.parametrize("case", CASES[1:4], ids=IDS[1:4])
def test_compiled_window_on_blocks_equals_the_numpy_chain_and_passes_the_dot_product_test(case):
    fast, reference, x, p, rng = pair(*case)
    window, chain = linearize_window(fast, x, p, K), WindowLinearization(reference, x, p, K)
    DX0, DP = rng.standard_normal((fast.n_state, 5)), rng.standard_normal((fast.n_params, 5))
    forcings = {k: rng.standard_normal((fast.n_state, 5)) for k in (1, 6, K)}
    for a, b in zip(window.tl(DX0, DP)[1:], chain.tl(DX0, DP)[1:]):
        assert a.shape == (fast.n_state, 5) and relative(a, b) < 1e-12
    (AX, AP), (AX_ref, AP_ref) = window.ad(forcings), chain.ad(forcings)
    assert AX.shape == (fast.n_state, 5) and AP.shape == (fast.n_params, 5)
    assert relative(AX, AX_ref) < 1e-12 and (not fast.n_params or relative(AP, AP_ref) < 1e-12)
    dx0, dp = DX0[:, 0], DP[:, 0]
    assert checks.window_adjoint_test(window, dx0, dp, {k: f[:, 0] for k, f in forcings.items()}).value < 1e-13


@compiled_only
def test_a_divergent_compiled_window_is_reported_as_the_numpy_one():
    fast, reference, x, p, _ = pair(40, True, 0.0)
    p = np.array([1e6])
    messages = []
    for model in (fast, reference):
        with pytest.raises(DivergenceError) as error:
            linearize_window(model, x, p, 400, context="outer loop 2")
        messages.append(str(error.value))
    assert messages[0] == messages[1] and "outer loop 2" in messages[0]


class AdjointWithWrongStep(CompiledWindow):
    """The AD sweep run with a time step 1e-4 too long: right code, wrong derivative."""

    def ad(self, forcings, ae=None):
        dt, amplitude, wavenumber = self.lin_args
        self.lin_args = (dt * 1.0001, amplitude, wavenumber)
        try:
            return super().ad(forcings, ae)
        finally:
            self.lin_args = (dt, amplitude, wavenumber)


@compiled_only
def test_negative_control_a_wrong_compiled_adjoint_is_caught():
    fast, reference, x, p, rng = pair(40, True, 0.0)
    right = linearize_window(fast, x, p, K)
    wrong = AdjointWithWrongStep((right.forecast_kernel, right.tl_kernel, right.ad_kernel), (p[0],) + right.lin_args, right.lin_args, x, 1, K)
    chain = WindowLinearization(reference, x, p, K)
    dx0, dp = rng.standard_normal(40), rng.standard_normal(1)
    forcings = {k: rng.standard_normal(40) for k in (2, K)}
    assert checks.window_adjoint_test(wrong, dx0, dp, forcings).value > 1e-8
    assert relative(wrong.ad(forcings)[0], chain.ad(forcings)[0]) > 1e-8


# --- the two-scale system ----------------------------------------------------------------------

TWO_SCALE_CASES = [(4, 1, False), (5, 3, True), (8, 10, True), (6, 20, False)]
TWO_SCALE_IDS = [f"K{K}-J{J}-{'F' if estimate else 'fixed'}" for K, J, estimate in TWO_SCALE_CASES]


def two_scale_pair(K, J, estimate_forcing, seed=0):
    kwargs = dict(n_slow=K, n_fast_per_slow=J, estimate_forcing=estimate_forcing)
    fast, reference = Lorenz96TwoScale(**kwargs), Lorenz96TwoScale(**kwargs, compiled=False)
    rng = np.random.default_rng(seed)
    p = fast.init_params(rng)
    x = np.concatenate([8.0 + 3.0 * rng.standard_normal(K), 0.5 * rng.standard_normal(K * J)])
    return fast, reference, reference.forecast(x, p, 100)[-1], p, rng


def test_without_numba_the_two_scale_model_is_the_numpy_path():
    model = Lorenz96TwoScale(n_slow=4, n_fast_per_slow=2, compiled=False)
    assert not model.compiled and model.linearize_window is None
    assert Lorenz96TwoScale(n_slow=4, n_fast_per_slow=2).compiled == KERNELS_AVAILABLE


@compiled_only
@pytest.mark.parametrize("case", TWO_SCALE_CASES, ids=TWO_SCALE_IDS)
def test_compiled_two_scale_step_and_window_equal_the_numpy_path(case):
    fast, reference, x, p, rng = two_scale_pair(*case)
    assert np.array_equal(fast.step(x, p), reference.step(x, p))  # block sums in numpy's pairwise order
    assert np.array_equal(fast.forecast(x, p, 200), reference.forecast(x, p, 200))
    window, chain = linearize_window(fast, x, p, K), WindowLinearization(reference, x, p, K)
    chain.DENSE_STEP_SIZE = 0
    assert isinstance(window, CompiledWindow) and np.array_equal(window.states, chain.states)
    dx0, dp = rng.standard_normal(fast.n_state), rng.standard_normal(fast.n_params)
    assert max(relative(a, b) for a, b in zip(window.tl(dx0, dp)[1:], chain.tl(dx0, dp)[1:])) < 1e-12
    forcings = {k: rng.standard_normal(fast.n_state) for k in (0, 5, K)}
    (ax, ap), (ax_ref, ap_ref) = window.ad(forcings), chain.ad(forcings)
    assert relative(ax, ax_ref) < 1e-12 and (not fast.n_params or relative(ap, ap_ref) < 1e-12)
    assert checks.window_adjoint_test(window, dx0, dp, forcings).value < 1e-13
    DX0, DP = rng.standard_normal((fast.n_state, 3)), rng.standard_normal((fast.n_params, 3))
    block_forcings = {k: rng.standard_normal((fast.n_state, 3)) for k in (2, K)}
    for a, b in zip(window.tl(DX0, DP)[1:], chain.tl(DX0, DP)[1:]):
        assert relative(a, b) < 1e-12
    for a, b in zip(window.ad(block_forcings), chain.ad(block_forcings)):
        assert a.shape == b.shape and (not a.size or relative(a, b) < 1e-12)
