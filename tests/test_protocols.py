"""The protocols' optional capabilities are declared, their defaults in one base class each, and
read through ``fourdvar.interfaces.declared``: a model or a covariance written against the
documented minimal interface, without the base class, runs the whole engine and gives what its
base-class twin gives, bit for bit.

(That the weak and strong paths give the same gradient when the forcing is zero and ``Q`` is
given is ``tests/test_one_window.py::test_weak_gradients_at_zero_forcing_equal_the_strong_ones``.)
"""

from __future__ import annotations

import numpy as np
import pytest

from fourdvar import checks
from fourdvar.control import Block
from fourdvar.cost import FourDVarCost, IncrementalCost
from fourdvar.covariances import CovarianceBase, Diagonal
from fourdvar.interfaces import ObservationSlot, declared
from fourdvar.model import ModelBase
from fourdvar.posterior import variance
from fourdvar.window import WindowLinearization, linearize_window
from observations import Identity

N, STEPS = 5, 6


class _Linear:
    """``x_next = x + dt (p0 - x) x_{i-1}``, linearised at ``(x, p)``."""

    def __init__(self, x, p, dt=0.1):
        self.x, self.left, self.p, self.dt = x, np.roll(x, 1), p, dt
        self.output = x + dt * (p[0] - x) * self.left

    def tl(self, dx, dp):  # dx_next = dx + dt ((dp0 - dx) x_{i-1} + (p0 - x) dx_{i-1})
        return dx + self.dt * ((dp[0] - dx) * self.left + (self.p[0] - self.x) * np.roll(dx, 1))

    def ad(self, ax):  # the TL's statements transposed
        a = self.dt * ax
        return ax - a * self.left + np.roll((self.p[0] - self.x) * a, -1), np.array([np.sum(a * self.left)])


class Plain:
    """A user's model with the documented interface only: no base class, no capability declared."""

    n_state, n_params = N, 1

    def step(self, x, p):
        return _Linear(x, p).output

    def linearize(self, x, p):
        return _Linear(x, p)

    def init_params(self, rng):
        return np.array([2.0])


class Based(Plain, ModelBase):
    """The same model on the base class."""


class PlainDiagonal:
    """A user's covariance with the protocol's five methods only."""

    def __init__(self, std):
        self.std, self.size = np.asarray(std, dtype=float), len(std)

    def apply(self, v):
        return self.std**2 * v

    def solve(self, v):
        return v / self.std**2

    def sqrt(self, v):
        return self.std * v

    def sqrt_t(self, v):
        return self.std * v

    def sample(self, rng):
        return self.std * rng.standard_normal(self.size)


def _cost(model, B, Q=None):
    rng = np.random.default_rng(0)
    x = 1.0 + 0.5 * rng.standard_normal(N)
    R = Diagonal(0.3, size=N)
    slots = [ObservationSlot(k, x + R.sample(rng), Identity(n_state=N), R) for k in (2, 4, STEPS)]
    return FourDVarCost(model, slots, xb=x, B=B, pb=np.array([2.0]), P=Diagonal(0.2, size=1), n_steps=STEPS, Q=Q,
                        model_error_every=None if Q is None else 3)


def test_declared_reads_a_declaration_and_gives_the_base_default_to_an_object_without_it():
    assert declared(Plain(), "blocked_linearization") is False and declared(Plain(), "linearize_window") is None
    assert declared(PlainDiagonal([1.0, 2.0]), "control_size") == 2  # a property of the base, evaluated for it
    assert np.array_equal(declared(PlainDiagonal([1.0, 2.0]), "variance")(), [1.0, 4.0])  # a method of the base, bound to it
    from models import Lorenz96
    assert declared(Lorenz96(8), "blocked_linearization") is True
    with pytest.raises(KeyError):  # negative control: a capability no base class declares is refused
        declared(Plain(), "no_such_capability")


@pytest.mark.parametrize("weak", [False, True])
def test_a_model_without_the_base_class_gives_what_its_base_class_twin_gives_bit_for_bit(weak):
    results = []
    for model, B in ((Plain(), PlainDiagonal(np.full(N, 0.5))), (Based(), Diagonal(0.5, size=N))):
        cost = _cost(model, B, Q=Diagonal(0.1, size=N) if weak else None)
        assert type(linearize_window(model, cost.xb, cost.pb, STEPS)) is WindowLinearization
        jq = IncrementalCost(cost, cost.xb, cost.pb, control=["state", "params"] + (["model_error"] if weak else []))
        u = 0.1 * np.random.default_rng(1).standard_normal(jq.size)
        full = cost.full_gradient(cost.xb, cost.pb)
        assert len(cost.gradient(cost.xb, cost.pb)) == 3 and full[3].shape == ((2 if weak else 0), N)  # the documented returns
        results.append((full[1:], jq.value_and_gradient(u)[1], jq.hessian_matrix()))
    (g_plain, jg_plain, A_plain), (g_based, jg_based, A_based) = results
    assert all(np.array_equal(a, b) for a, b in zip(g_plain, g_based))
    assert np.array_equal(jg_plain, jg_based) and np.array_equal(A_plain, A_based)
    assert np.linalg.norm(jg_plain) > 0 and A_plain.shape == (N + 1 + (2 * N if weak else 0),) * 2


def test_a_model_without_the_base_class_passes_the_checks():
    cost = _cost(Plain(), PlainDiagonal(np.full(N, 0.5)), Q=Diagonal(0.1, size=N))
    results = checks.check_cost(cost, cost.xb, cost.pb, ["state", "params", "model_error"], np.random.default_rng(2))
    assert [r.status for r in results] == ["PASS"] * len(results)
    model_checks = checks.check_model(Plain(), cost.xb, cost.pb, np.random.default_rng(3), n_steps=STEPS)
    assert [r.status for r in model_checks] == ["PASS"] * len(model_checks)  # step_tl and step_ad: ModelBase's defaults


def test_the_registry_builds_a_model_without_the_base_class(tmp_path, monkeypatch):
    from fourdvar.registry import build_model

    (tmp_path / "plain_user_model.py").write_text(
        "import numpy as np\n"
        "class Scale:\n"
        "    n_state, n_params = 2, 1\n"
        "    def step(self, x, p):\n"
        "        return p[0] * x\n"
        "    def linearize(self, x, p):\n"
        "        raise NotImplementedError\n"
        "    def init_params(self, rng):\n"
        "        return np.ones(1)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = build_model({"type": "plain_user_model:Scale"})
    assert type(model).__name__ == "Scale" and declared(model, "linearize_window") is None


def test_a_covariance_without_the_base_class_has_the_defaults_of_one_with_it():
    std = np.array([0.5, 1.0, 2.0])
    plain, based = PlainDiagonal(std), Diagonal(std)
    W = np.random.default_rng(3).standard_normal((3, 4))
    assert np.array_equal(variance(plain), variance(based)) and np.array_equal(variance(plain), std**2)
    assert np.array_equal(declared(plain, "sqrt_columns")(W), declared(based, "sqrt_columns")(W))
    assert Block("x0", plain, np.zeros((1, 3))).width == 3 and declared(plain, "condition_number") is None
    assert isinstance(based, CovarianceBase)
