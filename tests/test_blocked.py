"""Blocked TL/AD: every shipped model's linearisation on a matrix of ``k`` directions.

For each model, the blocked ``tl`` and ``ad`` of one step and of a window must
equal the one-vector calls column by column (to round-off) and pass the
dot-product test on the whole block; :func:`fourdvar.window.tl_block` and
:func:`~fourdvar.window.ad_block` must fall back to columns for a model without
blocks; and the Hessian matrix assembled from blocks must equal the one built
one direction at a time.  The negative controls show a wrong blocked adjoint and
a wrong column are caught.
"""

from __future__ import annotations

import numpy as np
import pytest

from fourdvar.cost import FourDVarCost, IncrementalCost
from fourdvar.covariances import Diagonal
from fourdvar.interfaces import ObservationSlot
from fourdvar.window import WindowLinearization, ad_block, forecast, linearize_window, tl_block
from models import MLP, Hybrid, LocalMLP, Lorenz96, Lorenz96TwoScale
from models.local_mlp import LocalNetworkTendencyLinearization
from models.lorenz96 import Lorenz96TendencyLinearization
from observations import Identity, Square

K_DIRECTIONS = 7
N_STEPS = 6


def make_model(name):
    """``(model, x, p)`` at a point where the dynamics are not trivial."""
    rng = np.random.default_rng(11)
    if name.startswith("lorenz96 "):
        model = Lorenz96(n_state=13, estimate_forcing="F" in name, extra_amplitude=0.7 if "extra" in name else 0.0)
        return model, 8.0 + 3.0 * rng.standard_normal(13), model.init_params(rng)
    if name.startswith("two-scale"):
        model = Lorenz96TwoScale(n_slow=5, n_fast_per_slow=3, estimate_forcing="F" in name)
        x = np.concatenate([8.0 + 3.0 * rng.standard_normal(5), 0.5 * rng.standard_normal(15)])
        return model, x, model.init_params(rng)
    if name.startswith("local_mlp"):
        integrator = name.split()[1]
        model = LocalMLP(n_state=11, hidden=[6, 5], half_width=2, integrator=integrator, init_output_scale=1.0, state_offset=1.0, state_scale=3.0)
        return model, 3.0 * rng.standard_normal(11), model.init_params(rng)
    if name.startswith("mlp"):
        model = MLP([9, 8, 9], ["tanh", "identity"], residual="residual" in name)
        return model, rng.standard_normal(9), 0.5 * rng.standard_normal(model.n_params)
    if name == "hybrid":
        model = Hybrid(physics={"type": "lorenz96", "n_state": 12, "estimate_forcing": True},
                       correction={"type": "local_mlp", "n_state": 12, "hidden": [5], "init_output_scale": 1.0})
        return model, 8.0 + 3.0 * rng.standard_normal(12), model.init_params(rng)
    raise KeyError(name)


MODELS = ["lorenz96 ", "lorenz96 F", "lorenz96 F extra", "two-scale", "two-scale F", "local_mlp euler", "local_mlp rk4",
          "local_mlp rk4 layered", "mlp residual", "mlp plain", "hybrid"]


@pytest.fixture
def layered(request, monkeypatch):
    """The LocalMLP's layer-by-layer derivatives (its path for large grids) for the ``layered`` cases."""
    if "layered" in request.node.name:
        monkeypatch.setattr(LocalNetworkTendencyLinearization, "EXPLICIT_JACOBIAN_SIZE", 0)


def relative(a, b):
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


def directions(model, rng, k=K_DIRECTIONS):
    return rng.standard_normal((model.n_state, k)), rng.standard_normal((model.n_params, k)), rng.standard_normal((model.n_state, k))


def dot_product_error(left, right):
    return abs(left - right) / max(abs(left), abs(right))


@pytest.mark.parametrize("name", MODELS)
def test_blocked_step_equals_the_columns_and_passes_the_dot_product_test(name, layered):
    model, x, p = make_model(name)
    assert model.blocked_linearization
    lin = model.linearize(x, p)
    if "layered" in name:
        assert not lin.stages[0].explicit
    rng = np.random.default_rng(1)
    DX, DP, AX = directions(model, rng)
    DX_next = lin.tl(DX, DP)
    AX_prev, AP = lin.ad(AX)
    assert DX_next.shape == AX_prev.shape == (model.n_state, K_DIRECTIONS) and AP.shape == (model.n_params, K_DIRECTIONS)
    for d in range(K_DIRECTIONS):
        assert relative(DX_next[:, d], lin.tl(DX[:, d], DP[:, d])) < 1e-13
        ax_d, ap_d = lin.ad(AX[:, d])
        assert relative(AX_prev[:, d], ax_d) < 1e-13
        if model.n_params:
            assert relative(AP[:, d], ap_d) < 1e-13
    assert dot_product_error(np.sum(DX_next * AX), np.sum(DX * AX_prev) + np.sum(DP * AP)) < 1e-13
    if name.startswith("local_mlp") and "layered" not in name:  # the one-vector calls built the explicit Jacobians
        assert lin.stages[0].Jx is not None
        assert relative(lin.tl(DX, DP), DX_next) < 1e-13
        assert all(relative(a, b) < 1e-13 for a, b in zip(lin.ad(AX), (AX_prev, AP)))


@pytest.mark.parametrize("name", MODELS)
def test_blocked_window_equals_the_columns_and_passes_the_dot_product_test(name, layered):
    model, x, p = make_model(name)
    window = linearize_window(model, x, p, N_STEPS)
    assert window.blocked
    rng = np.random.default_rng(2)
    DX0, DP, _ = directions(model, rng)
    forcings = {k: rng.standard_normal((model.n_state, K_DIRECTIONS)) for k in (0, 2, 3, N_STEPS)}
    DX = tl_block(window, DX0, DP)
    AX0, AP = ad_block(window, forcings)
    assert len(DX) == N_STEPS + 1 and AP.shape == (model.n_params, K_DIRECTIONS)
    for d in range(K_DIRECTIONS):
        dx = window.tl(DX0[:, d], DP[:, d])
        assert max(relative(DX[k][:, d], dx[k]) for k in range(1, N_STEPS + 1)) < 1e-12
        ax0, ap = window.ad({k: f[:, d] for k, f in forcings.items()})
        assert relative(AX0[:, d], ax0) < 1e-12
        if model.n_params:
            assert relative(AP[:, d], ap) < 1e-12
    left = sum(np.sum(DX[k] * f) for k, f in forcings.items())
    assert dot_product_error(left, np.sum(DX0 * AX0) + np.sum(DP * AP)) < 1e-12


class WithoutBlocks:
    """A model whose linearisation takes one vector only, as a user's model may."""

    blocked_linearization = False

    def __init__(self, model):
        self.model, self.n_state, self.n_params = model, model.n_state, model.n_params

    def linearize(self, x, p):
        lin = self.model.linearize(x, p)
        return OneVectorOnly(lin)


class OneVectorOnly:
    def __init__(self, lin):
        self.lin, self.output = lin, lin.output

    def tl(self, dx, dp):
        assert dx.ndim == 1
        return self.lin.tl(dx, dp)

    def ad(self, ax):
        assert ax.ndim == 1
        return self.lin.ad(ax)


def test_a_model_without_blocks_is_applied_column_by_column():
    model, x, p = make_model("lorenz96 F")
    plain = linearize_window(WithoutBlocks(model), x, p, N_STEPS)
    assert type(plain) is WindowLinearization and not plain.blocked
    blocked = linearize_window(model, x, p, N_STEPS)
    rng = np.random.default_rng(3)
    DX0, DP, _ = directions(model, rng)
    forcings = {k: rng.standard_normal((model.n_state, K_DIRECTIONS)) for k in (1, N_STEPS)}
    for a, b in zip(tl_block(plain, DX0, DP), tl_block(blocked, DX0, DP)):
        assert relative(a, b) < 1e-13
    for a, b in zip(ad_block(plain, forcings), ad_block(blocked, forcings)):
        assert relative(a, b) < 1e-13


# --- the Hessian matrix from blocks ------------------------------------------------------------


def incremental_cost(name, control, transform, layered=None):
    model, x, p = make_model(name)
    rng = np.random.default_rng(5)
    truth = forecast(model, x, p, N_STEPS)
    slots = []
    for k in range(1, N_STEPS + 1):
        operator = Identity(n_state=model.n_state) if k % 2 else Square(n_state=model.n_state, indices=list(range(0, model.n_state, 3)))
        R = Diagonal(0.5 + rng.random(operator.n_obs))
        slots.append(ObservationSlot(k, operator.apply(truth[k]) + R.sample(rng), operator, R))
    B = Diagonal(0.5 + rng.random(model.n_state))
    P = Diagonal(0.1 * (np.abs(p) + 0.05)) if model.n_params else None
    cost = FourDVarCost(model, slots, x + 0.1 * B.sample(rng), B=B, pb=p, P=P, n_steps=N_STEPS)
    return IncrementalCost(cost, x, p, control=control, transform=transform)


def hessian_one_by_one(jq):
    return np.column_stack([jq.hessian_vector(e) for e in np.eye(jq.size)])


@pytest.mark.parametrize("name", ["lorenz96 F", "local_mlp rk4", "local_mlp rk4 layered", "mlp residual", "hybrid"])
@pytest.mark.parametrize("control", ["state", "params", "both"])
@pytest.mark.parametrize("transform", [True, False])
def test_blocked_hessian_matrix_equals_the_one_by_one_hessian(name, control, transform, layered):
    jq = incremental_cost(name, control, transform)
    A = jq.hessian_matrix()
    reference = hessian_one_by_one(jq)
    assert A.shape == (jq.size, jq.size)
    assert relative(A, 0.5 * (reference + reference.T)) < 1e-12
    assert relative(A, A.T) == 0.0


def test_blocked_hessian_matrix_in_several_blocks_and_without_model_blocks():
    jq = incremental_cost("local_mlp rk4", "both", True)
    reference = jq.hessian_matrix()
    assert relative(jq.hessian_matrix(block_size=4), reference) < 1e-13
    jq_plain = incremental_cost("local_mlp rk4", "both", True)
    jq_plain.window.blocked = False  # column by column through ad_block / tl_block
    assert relative(jq_plain.hessian_matrix(), reference) < 1e-13


# --- negative controls -----------------------------------------------------------------------


class WrongBlockedAdjoint(Lorenz96TendencyLinearization):
    """The adjoint right for one vector, wrong for a block: ``ax_{i-1}`` takes the wrong column's weight."""

    def ad(self, af):
        ax, ap = super().ad(af)
        if af.ndim == 2:
            ax[:, 1:] += 1e-3 * self.gradient[:, None] * (af[:, :-1] - af[:, 1:])
        return ax, ap


def test_negative_control_a_wrong_blocked_adjoint_fails_the_blocked_checks(monkeypatch):
    model, x, p = make_model("lorenz96 F")
    rng = np.random.default_rng(7)
    DX, DP, AX = directions(model, rng)
    right = model.linearize(x, p)
    monkeypatch.setattr(model.tendency, "linearize", lambda x, p: WrongBlockedAdjoint(model.tendency, x, p))
    wrong = model.linearize(x, p)
    ax_right, ax_wrong = right.ad(AX[:, 2])[0], wrong.ad(AX[:, 2])[0]
    assert relative(ax_wrong, ax_right) < 1e-15  # one vector: right
    AX_prev, AP = wrong.ad(AX)
    assert relative(AX_prev[:, 2], ax_right) > 1e-6
    assert dot_product_error(np.sum(wrong.tl(DX, DP) * AX), np.sum(DX * AX_prev) + np.sum(DP * AP)) > 1e-8


# --- small models: the window stores the step Jacobians -----------------------------------------


@pytest.mark.parametrize("name", ["lorenz96 ", "lorenz96 F extra", "two-scale F", "local_mlp rk4", "local_mlp rk4 layered", "hybrid"])
def test_a_small_window_stores_its_step_jacobians_from_the_third_sweep_on(name, layered):
    model, x, p = make_model(name)
    window = WindowLinearization(model, x, p, N_STEPS)
    per_step = WindowLinearization(model, x, p, N_STEPS)
    per_step.DENSE_STEP_SIZE = 0
    rng = np.random.default_rng(8)
    dx0, dp = rng.standard_normal(model.n_state), rng.standard_normal(model.n_params)
    forcings = {k: rng.standard_normal(model.n_state) for k in (1, 4, N_STEPS)}
    for sweep in range(3):  # TL and AD on each: the third sweep (the second TL) stores the Jacobians
        dx, dx_ref = window.tl(dx0, dp), per_step.tl(dx0, dp)
        assert window.dense == (sweep >= 1) and not per_step.dense
        assert max(relative(a, b) for a, b in zip(dx[1:], dx_ref[1:])) < 1e-12
        (ax0, ap), (ax0_ref, ap_ref) = window.ad(forcings), per_step.ad(forcings)
        assert relative(ax0, ax0_ref) < 1e-12 and (not model.n_params or relative(ap, ap_ref) < 1e-12)
    left = sum(np.dot(dx[k], f) for k, f in forcings.items())
    assert dot_product_error(left, np.dot(dx0, ax0) + np.dot(dp, ap)) < 1e-12
    DX0, DP, _ = directions(model, rng)
    for a, b in zip(window.tl(DX0, DP)[1:], per_step.tl(DX0, DP)[1:]):
        assert relative(a, b) < 1e-12


def test_a_large_window_or_one_without_blocks_keeps_its_steps():
    model, x, p = make_model("lorenz96 F")
    large = WindowLinearization(Lorenz96(n_state=200, estimate_forcing=True), 8.0 + np.sin(np.arange(200)), np.array([8.0]), 3)
    long = WindowLinearization(model, x, p, 30)
    long.DENSE_WINDOW_SIZE = 29 * model.n_state * (model.n_state + 1)  # one step too many
    plain = WindowLinearization(WithoutBlocks(model), x, p, 3)
    for window in (large, long, plain):
        for _ in range(4):
            window.tl(np.ones(window.n_state), np.ones(window.n_params))
        assert window.sweeps == 4 and not window.dense


class WrongJacobianColumn(Lorenz96TendencyLinearization):
    """A blocked adjoint that drops the last column: the stored Jacobian then misses ``M_x^T e_{n-1}``."""

    def ad(self, af):
        ax, ap = super().ad(af)
        if af.ndim == 2:
            ax[:, -1] = 0.0
        return ax, ap


def test_negative_control_a_wrong_stored_jacobian_is_caught(monkeypatch):
    model, x, p = make_model("lorenz96 F")
    monkeypatch.setattr(model.tendency, "linearize", lambda x, p: WrongJacobianColumn(model.tendency, x, p))
    window = WindowLinearization(model, x, p, N_STEPS)
    rng = np.random.default_rng(9)
    dx0, dp = rng.standard_normal(model.n_state), rng.standard_normal(model.n_params)
    before = window.tl(dx0, dp)[-1]
    window.ad({N_STEPS: dx0})
    after = window.tl(dx0, dp)[-1]
    assert window.dense and relative(after, before) > 1e-3


def test_the_machine_benchmark_imports_without_running_and_builds_the_surrogate_window():
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "machine.py"
    spec = importlib.util.spec_from_file_location("benchmark_machine", path)
    module = importlib.util.module_from_spec(spec)
    saved_path, saved_modules = list(sys.path), set(sys.modules)
    try:
        spec.loader.exec_module(module)  # the main guard: nothing is timed
        jq = module.surrogate_window_cost()
        assert jq.size == 40 + 225 and jq.window.blocked
        assert {label.split()[0] for label, *_ in module.gradient_cases()} == {"lorenz96", "local_mlp", "mlp"}
    finally:
        sys.path[:] = saved_path
        for name in set(sys.modules) - saved_modules:
            if name.startswith("benchmark_"):
                del sys.modules[name]
