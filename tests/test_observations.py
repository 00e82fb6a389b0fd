"""Observation operators (TL/AD consistency, registry, errors) and observation sets (files, synthesis)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

from fourdvar import checks
from fourdvar.covariances import Dense, Diagonal
from fourdvar.interfaces import ObservationOperator, ObservationSlot, OperatorLinearization
from fourdvar.registry import build_operator
from observations import (
    Identity,
    Linear,
    ObservationSet,
    PointwiseLinearization,
    Square,
    Subset,
    Tanh,
    operator_from_spec,
    synthetic_observations,
)

SIZES = [1, 7, 40, 257]
SEEDS = [0, 1, 2]


def make_operators(n_state: int, rng: np.random.Generator) -> dict:
    """One operator of each kind for a state of ``n_state`` points; irregular index sets."""
    n_obs = max(1, n_state // 3)
    scattered = rng.choice(n_state, size=n_obs, replace=False)  # unsorted, irregular
    return {
        "identity": Identity(n_state),
        "subset": Subset(n_state, scattered),
        "linear": Linear(rng.standard_normal((n_obs + 2, n_state))),
        "square": Square(n_state, scattered),
        "tanh": Tanh(n_state, scattered, scale=1.5),
    }


NONLINEAR = ["square", "tanh"]
ALL_KINDS = ["identity", "subset", "linear", "square", "tanh"]


# --- adjoint, tangent-linear, linearize consistency ---------------------------------


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("n_state", SIZES)
@pytest.mark.parametrize("seed", SEEDS)
def test_operator_adjoint_passes_dot_product_test(kind, n_state, seed):
    rng = np.random.default_rng(seed)
    operator = make_operators(n_state, rng)[kind]
    x = 2.0 * rng.standard_normal(n_state)
    result = checks.operator_adjoint_test(operator, x, rng)
    assert result.passed, str(result)
    assert result.value < 1e-12


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("n_state", [7, 40, 257])
@pytest.mark.parametrize("seed", SEEDS)
def test_operator_tangent_linear_passes_taylor_test(kind, n_state, seed):
    rng = np.random.default_rng(seed)
    operator = make_operators(n_state, rng)[kind]
    x = 2.0 * rng.standard_normal(n_state)
    result = checks.operator_taylor_test(operator, x, rng)
    assert result.passed, str(result) + "\n" + checks.format_table([result])
    if kind in NONLINEAR:
        assert result.order >= checks.MIN_ORDER  # the remainder falls as a^2
    else:
        assert "exact to round-off" in result.details  # a linear H has no second-order term


@pytest.mark.parametrize("kind", ["identity", "subset", "linear"])
@pytest.mark.parametrize("seed", SEEDS)
def test_linear_operator_tangent_linear_equals_finite_difference_exactly(kind, seed):
    # For a linear H, H(x + dx) - H(x) == H dx up to round-off: the Taylor slope is
    # meaningless (there is no second-order term), so compare directly.
    rng = np.random.default_rng(seed)
    operator = make_operators(40, rng)[kind]
    x, dx = rng.standard_normal(40), rng.standard_normal(40)
    dy = operator.linearize(x).tl(dx)
    difference = operator.apply(x + dx) - operator.apply(x)
    assert np.linalg.norm(difference - dy) <= 1e-13 * np.linalg.norm(dy) * np.sqrt(40)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_linearize_output_and_apply_tl_ad_match_the_linearization(kind):
    rng = np.random.default_rng(3)
    operator = make_operators(40, rng)[kind]
    x, dx = rng.standard_normal(40), rng.standard_normal(40)
    ay = rng.standard_normal(operator.n_obs)
    lin = operator.linearize(x)
    assert isinstance(operator, ObservationOperator)
    assert isinstance(lin, OperatorLinearization)
    np.testing.assert_array_equal(lin.output, operator.apply(x))
    np.testing.assert_array_equal(operator.apply_tl(x, dx), lin.tl(dx))
    np.testing.assert_array_equal(operator.apply_ad(x, ay), lin.ad(ay))
    assert lin.output.shape == (operator.n_obs,)
    assert lin.ad(ay).shape == (40,)


def test_operators_compute_the_documented_functions():
    x = np.array([-2.0, -0.5, 0.0, 0.5, 3.0])
    np.testing.assert_array_equal(Identity(5).apply(x), x)
    np.testing.assert_array_equal(Subset(5, [4, 0]).apply(x), [3.0, -2.0])
    np.testing.assert_array_equal(Subset(5, {"start": 1, "step": 2}).apply(x), [-0.5, 0.5])
    np.testing.assert_array_equal(Square(5, [1, 4]).apply(x), [0.25, 9.0])
    np.testing.assert_allclose(Tanh(5, scale=2.0).apply(x), 2.0 * np.tanh(x / 2.0), rtol=0, atol=1e-15)
    assert np.all(np.abs(Tanh(5, scale=2.0).apply(100 * x)) <= 2.0)  # saturates at +- scale
    np.testing.assert_array_equal(Linear([[1.0, 0, 0, 0, 2.0]]).apply(x), [4.0])
    np.testing.assert_array_equal(Identity(5).indices, np.arange(5))
    assert Linear(np.eye(5)).indices is None


def test_subset_adjoint_scatters_into_the_observed_points_only():
    ax = Subset(6, [4, 1]).apply_ad(np.zeros(6), np.array([10.0, 20.0]))
    np.testing.assert_array_equal(ax, [0.0, 20.0, 0.0, 0.0, 10.0, 0.0])


def test_identity_linearization_does_not_alias_its_inputs():
    lin = Identity(4).linearize(np.zeros(4))
    dx = np.ones(4)
    lin.tl(dx)[:] = 5.0
    lin.ad(dx)[:] = 5.0
    np.testing.assert_array_equal(dx, np.ones(4))


# --- negative controls: the checks can fail ------------------------------------------


class SquareWithoutFactorTwoInAdjoint(Square):
    """Square whose adjoint forgets the 2 of ``d(v^2) = 2 v dv``: ``av = v * ay``."""

    def linearize(self, x):
        v = x[self.indices]
        wrong = PointwiseLinearization(self, v * v, 2.0 * v)
        wrong.ad = lambda ay: np.bincount(self.indices, weights=v * ay, minlength=self.n_state)
        return wrong


class TanhWithWrongDerivative(Tanh):
    """Tanh with ``f' = 1 - t`` instead of ``1 - t^2`` in both TL and AD (consistent but wrong)."""

    def function_and_slope(self, v):
        t = np.tanh(v / self.scale)
        return self.scale * t, 1.0 - t


def test_negative_control_square_adjoint_without_factor_two_fails_dot_product_test():
    rng = np.random.default_rng(0)
    operator = SquareWithoutFactorTwoInAdjoint(40, np.arange(0, 40, 3))
    result = checks.operator_adjoint_test(operator, rng.standard_normal(40), rng)
    assert not result.passed
    assert result.value > 1e-3


def test_negative_control_transposed_matrix_missing_fails_dot_product_test():
    rng = np.random.default_rng(1)
    operator = Linear(rng.standard_normal((8, 8)))
    lin = operator.linearize(rng.standard_normal(8))
    lin.ad = lambda ay: operator.matrix @ ay  # H instead of H^T
    result = checks.dot_product_test(lin.tl, lambda w: [lin.ad(w)], [rng.standard_normal(8)], rng.standard_normal(8))
    assert not result.passed


def test_negative_control_wrong_tanh_derivative_fails_taylor_test():
    rng = np.random.default_rng(2)
    operator = TanhWithWrongDerivative(40, "all", scale=1.5)
    x = 2.0 * rng.standard_normal(40)
    assert checks.operator_adjoint_test(operator, x, rng).passed  # TL and AD agree with each other...
    assert not checks.operator_taylor_test(operator, x, rng).passed  # ...but are not the derivative


# --- registry ---------------------------------------------------------------------------


def test_registry_builds_operators_through_entry_points():
    operator = build_operator({"type": "subset", "n_state": 10, "indices": [1, 3]})
    assert type(operator) is Subset
    np.testing.assert_array_equal(operator.indices, [1, 3])
    assert operator.n_obs == 2 and operator.n_state == 10
    for name, cls in [("identity", Identity), ("square", Square), ("tanh", Tanh)]:
        assert type(build_operator({"type": name, "n_state": 5})) is cls
    assert type(build_operator({"type": "linear", "matrix": [[1.0, 2.0]]})) is Linear


def test_operator_from_spec_accepts_names_mappings_and_operators():
    assert type(operator_from_spec("identity", 6)) is Identity
    tanh = operator_from_spec({"type": "tanh", "indices": {"start": 0, "stop": 6, "step": 2}, "scale": 2.0}, 6)
    assert type(tanh) is Tanh and tanh.scale == 2.0 and tanh.indices.tolist() == [0, 2, 4]
    square = Square(6)
    assert operator_from_spec(square, 6) is square
    with pytest.raises(ValueError, match=r"n_state=5.*6 points"):
        operator_from_spec({"type": "subset", "n_state": 5, "indices": [0]}, 6)
    with pytest.raises(ValueError, match="n_state=6.*7 points"):
        operator_from_spec(square, 7)


def test_to_spec_rebuilds_an_equal_operator():
    rng = np.random.default_rng(4)
    for operator in make_operators(12, rng).values():
        rebuilt = build_operator(operator.to_spec())
        x = rng.standard_normal(12)
        np.testing.assert_array_equal(rebuilt.apply(x), operator.apply(x))


# --- bad input --------------------------------------------------------------------------


def test_out_of_range_index_raises_naming_the_index_and_n_state():
    with pytest.raises(ValueError, match=r"index 12 .*n_state=10"):
        Subset(10, [0, 12, 3])
    with pytest.raises(ValueError, match=r"index -1 .*n_state=10"):
        Square(10, [-1, 2])
    with pytest.raises(ValueError, match=r"index 10 .*n_state=10"):
        Subset(10, {"start": 0, "stop": 12, "step": 5})


def test_duplicate_index_raises_naming_the_index():
    with pytest.raises(ValueError, match=r"index 3 appears more than once .*n_state=10"):
        Subset(10, [1, 3, 5, 3])


def test_malformed_indices_raise():
    with pytest.raises(ValueError, match="'every'"):
        Subset(10, {"every": 2})
    with pytest.raises(ValueError, match="integers"):
        Subset(10, [0.5, 1])
    with pytest.raises(ValueError, match="select no grid point"):
        Subset(10, [])
    with pytest.raises(ValueError, match="'some'"):
        Subset(10, "some")
    with pytest.raises(ValueError, match="scale"):
        Tanh(10, scale=0.0)
    with pytest.raises(ValueError, match=r"3 columns but n_state=4"):
        Linear(np.ones((2, 3)), n_state=4)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_wrong_shapes_raise_naming_expected_and_received_shape(kind):
    rng = np.random.default_rng(5)
    operator = make_operators(10, rng)[kind]
    x = rng.standard_normal(10)
    with pytest.raises(ValueError, match=r"state x must have shape \(10,\), got \(9,\)"):
        operator.apply(x[:9])
    with pytest.raises(ValueError, match=r"\(10,\), got \(10, 1\)"):
        operator.linearize(x[:, None])
    with pytest.raises(ValueError, match=r"increment dx must have shape \(10,\), got \(11,\)"):
        operator.apply_tl(x, np.zeros(11))
    expected = rf"ay must have shape \({operator.n_obs},\), got \({operator.n_obs + 1},\)"
    with pytest.raises(ValueError, match=expected):
        operator.apply_ad(x, np.zeros(operator.n_obs + 1))


# --- observation sets -----------------------------------------------------------------------


def mixed_set(n_state: int = 12, seed: int = 0) -> ObservationSet:
    """Irregular steps, one of each pointwise operator, different sizes and error stds."""
    rng = np.random.default_rng(seed)
    operators = {
        0: Identity(n_state),
        3: Subset(n_state, [7, 2, 9]),
        4: Square(n_state, {"start": 1, "step": 4}),
        11: Tanh(n_state, [0, 5], scale=2.5),
    }
    slots = []
    for step, operator in operators.items():
        std = rng.uniform(0.1, 1.0, operator.n_obs)
        slots.append(ObservationSlot(step, rng.standard_normal(operator.n_obs), operator, Diagonal(std)))
    return ObservationSet(reversed(slots))  # given out of order on purpose


def test_observation_set_sorts_slots_and_counts_observations():
    obs = mixed_set()
    assert obs.steps.tolist() == [0, 3, 4, 11]
    assert len(obs) == 4 and [slot.step for slot in obs] == [0, 3, 4, 11]
    assert obs.n_obs == 12 + 3 + 3 + 2
    assert obs.n_state == 12
    assert obs.slot_at(4).operator.name == "square"
    np.testing.assert_array_equal(obs.values_at(3), obs.slots[1].values)
    with pytest.raises(KeyError, match="no observations at step 5"):
        obs.slot_at(5)
    with pytest.raises(ValueError):
        obs.slots[0].values[0] = 1.0  # values are read-only


def test_observation_set_rejects_duplicate_steps_and_inconsistent_slots():
    op = Subset(5, [1, 2])
    slot = ObservationSlot(2, np.zeros(2), op, Diagonal(1.0, size=2))
    with pytest.raises(ValueError, match="two observation slots at step 2"):
        ObservationSet([slot, slot])
    with pytest.raises(ValueError, match=r"values must have shape \(2,\).*got \(3,\)"):
        ObservationSet([ObservationSlot(0, np.zeros(3), op, Diagonal(1.0, size=2))])
    with pytest.raises(ValueError, match="R has size 3"):
        ObservationSet([ObservationSlot(0, np.zeros(2), op, Diagonal(1.0, size=3))])
    with pytest.raises(ValueError, match="step must be >= 0"):
        ObservationSet([ObservationSlot(-1, np.zeros(2), op, Diagonal(1.0, size=2))])
    with pytest.raises(ValueError, match="not finite"):
        ObservationSet([ObservationSlot(0, np.array([0.0, np.nan]), op, Diagonal(1.0, size=2))])
    with pytest.raises(ValueError, match="disagree about the state size"):
        ObservationSet([slot, ObservationSlot(3, np.zeros(1), Identity(1), Diagonal(1.0, size=1))])


def test_window_selects_inclusive_range_and_makes_steps_relative():
    obs = mixed_set()
    window = obs.window(3, 8)  # steps 3 .. 11
    assert window.steps.tolist() == [0, 1, 8]
    np.testing.assert_array_equal(window.values_at(8), obs.values_at(11))
    assert window.slot_at(1).operator is obs.slot_at(4).operator
    assert obs.window(3, 8, include_end=False).steps.tolist() == [0, 1]
    assert len(obs.window(5, 5)) == 0
    assert obs.shifted(10).steps.tolist() == [10, 13, 14, 21]
    with pytest.raises(ValueError, match="below 0"):
        obs.shifted(-1)


def assert_same_observations(a: ObservationSet, b: ObservationSet):
    assert a.steps.tolist() == b.steps.tolist()
    for slot_a, slot_b in zip(a, b):
        assert type(slot_a.operator) is type(slot_b.operator)
        assert slot_a.operator.n_state == slot_b.operator.n_state
        np.testing.assert_array_equal(slot_a.values, slot_b.values)
        np.testing.assert_array_equal(slot_a.operator.indices, slot_b.operator.indices)
        np.testing.assert_array_equal(slot_a.covariance.std, slot_b.covariance.std)
        assert isinstance(slot_b.covariance, Diagonal)
        assert getattr(slot_a.operator, "scale", None) == getattr(slot_b.operator, "scale", None)


def test_netcdf_round_trip_preserves_values_steps_indices_stds_and_operators(tmp_path):
    obs = mixed_set()
    path = tmp_path / "obs.nc"
    obs.to_netcdf(path)
    back = ObservationSet.from_netcdf(path, n_state=12)
    assert_same_observations(obs, back)
    assert_same_observations(obs, ObservationSet.from_netcdf(path))  # n_state from the attribute
    with xr.open_dataset(path, engine="netcdf4") as ds:
        assert ds.attrs["n_state"] == 12
        assert ds.sizes["obs"] == obs.n_obs
        assert set(ds.data_vars) == {"value", "step", "index", "error_std", "operator", "scale"}
        for name in ds.data_vars:
            assert "long_name" in ds[name].attrs
        assert ds["index"].dtype.kind == "i" and ds["step"].dtype.kind == "i"
        assert ds["operator"].values[0] == "identity"


def test_dataset_has_no_scale_variable_without_tanh_and_is_flat():
    obs = ObservationSet([ObservationSlot(2, np.array([1.0, 2.0]), Subset(4, [3, 0]), Diagonal(0.5, size=2))])
    ds = obs.to_dataset(units="m s-1")
    assert "scale" not in ds
    assert ds["value"].attrs["units"] == "m s-1"
    assert ds["index"].values.tolist() == [3, 0] and ds["step"].values.tolist() == [2, 2]
    assert ds["error_std"].values.tolist() == [0.5, 0.5]


def test_linear_operator_cannot_be_written():
    obs = ObservationSet([ObservationSlot(0, np.zeros(2), Linear(np.ones((2, 3))), Diagonal(1.0, size=2))])
    with pytest.raises(ValueError, match=r"step 0 uses a Linear operator, which cannot be written"):
        obs.to_dataset()


def test_non_diagonal_R_cannot_be_written():
    obs = ObservationSet([ObservationSlot(0, np.zeros(2), Subset(3, [0, 1]), Dense(np.eye(2)))])
    with pytest.raises(ValueError, match="only a diagonal R"):
        obs.to_dataset()


def write_edited(tmp_path, edit) -> str:
    ds = mixed_set().to_dataset()
    ds = edit(ds.copy(deep=True))
    path = tmp_path / "edited.nc"
    ds.to_netcdf(path, engine="netcdf4")
    return str(path)


def _set(name, position, value):
    def edit(ds):
        ds[name].values[position] = value
        return ds

    return edit


@pytest.mark.parametrize(
    "edit, message",
    [
        (_set("value", 5, np.nan), r"variable 'value' has a non-finite entry \(nan\) at obs position 5"),
        (_set("error_std", 7, np.inf), r"variable 'error_std' has a non-finite entry \(inf\) at obs position 7"),
        (_set("error_std", 3, -0.2), r"'error_std' must be > 0; obs position 3 has -0.2"),
        (_set("index", 13, 12), r"index 12 at obs position 13 is outside \[0, n_state=12\)"),
        (_set("step", 0, -4), r"'step' must be >= 0; obs position 0 has -4"),
        (_set("operator", 14, "cube"), r"unknown operator 'cube' at obs position 14"),
        (_set("operator", 13, "square"), r"step 3 use more than one operator"),
        (_set("index", 13, 9), r"step 3: index 9 appears more than once"),
        (lambda ds: ds.drop_vars("index"), r"no variable 'index'"),
        (lambda ds: ds.drop_vars("scale"), r"tanh operator but has no variable 'scale'"),
    ],
    ids=["nan-value", "inf-std", "negative-std", "index-out-of-range", "negative-step",
         "unknown-operator", "mixed-operators", "duplicate-index", "missing-index", "missing-scale"],
)
def test_bad_observation_file_raises_naming_file_and_problem(tmp_path, edit, message):
    path = write_edited(tmp_path, edit)
    with pytest.raises(ValueError, match=message) as info:
        ObservationSet.from_netcdf(path, n_state=12)
    assert "edited.nc" in str(info.value)


def test_reading_with_a_different_n_state_than_the_file_raises(tmp_path):
    path = tmp_path / "obs.nc"
    mixed_set().to_netcdf(path)
    with pytest.raises(ValueError, match=r"obs.nc.*written for n_state=12, but n_state=40"):
        ObservationSet.from_netcdf(path, n_state=40)


# --- synthetic observations ------------------------------------------------------------------


def truth(n_steps: int = 200, n_state: int = 40, seed: int = 10) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.standard_normal((n_steps + 1, n_state)), axis=0)


def test_synthetic_observations_are_reproducible_from_the_seed():
    x = truth()
    steps = np.arange(0, 201, 5)
    a = synthetic_observations(x, steps, {"type": "subset", "indices": {"step": 2}}, 0.3, np.random.default_rng(7))
    b = synthetic_observations(x, steps, {"type": "subset", "indices": {"step": 2}}, 0.3, np.random.default_rng(7))
    c = synthetic_observations(x, steps, {"type": "subset", "indices": {"step": 2}}, 0.3, np.random.default_rng(8))
    for slot_a, slot_b in zip(a, b):
        np.testing.assert_array_equal(slot_a.values, slot_b.values)
    assert not np.array_equal(a.slots[0].values, c.slots[0].values)


def test_synthetic_observation_errors_are_standard_normal_after_scaling():
    # Errors with a different std per observed point; N = 100 slots x 20 obs = 2000.
    # Standardised residuals r = (y - H(x)) / std must be i.i.d. N(0, 1):
    # mean has sd 1/sqrt(N), sample std has sd ~ 1/sqrt(2N); a 4-sigma band
    # (two-sided false-alarm probability 6e-5) rejects e.g. std off by 10 %.
    x = truth()
    steps = np.arange(0, 200, 2)
    std = np.linspace(0.1, 2.0, 20)
    obs = synthetic_observations(x, steps, Square(40, {"step": 2}), std, np.random.default_rng(11))
    residuals = np.array([(slot.values - slot.operator.apply(x[slot.step])) / std for slot in obs])
    n = residuals.size
    assert n == 2000
    assert abs(residuals.mean()) < 4 / np.sqrt(n)
    assert abs(residuals.std(ddof=1) - 1.0) < 4 / np.sqrt(2 * n)
    # Independent between slots: lag-one correlation within 4 sigma of 0.
    lag = np.mean(residuals[1:] * residuals[:-1])
    assert abs(lag) < 4 / np.sqrt(residuals[1:].size)
    # And R is the diagonal covariance the noise was drawn from.
    for slot in obs:
        np.testing.assert_array_equal(slot.covariance.std, std)


def test_synthetic_observations_with_an_alternating_network():
    x = truth(n_steps=10, n_state=8)
    even, odd = Subset(8, [0, 2, 4, 6]), Tanh(8, [1, 3], scale=3.0)
    obs = synthetic_observations(x, [1, 2, 3, 4, 9], lambda k: even if k % 2 == 0 else odd, 0.5,
                                 np.random.default_rng(0))
    assert [slot.operator for slot in obs] == [odd, even, odd, even, odd]
    assert obs.n_obs == 3 * 2 + 2 * 4


def test_synthetic_observations_reject_bad_arguments():
    x = truth(n_steps=10, n_state=8)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"step 11 is outside the trajectory's steps \[0, 10\]"):
        synthetic_observations(x, [0, 11], "identity", 1.0, rng)
    with pytest.raises(ValueError, match="step 3 is listed more than once"):
        synthetic_observations(x, [3, 3], "identity", 1.0, rng)
    with pytest.raises(ValueError, match=r"error_std has shape \(3,\).*n_obs=8"):
        synthetic_observations(x, [0], "identity", np.ones(3), rng)
    with pytest.raises(ValueError, match="error_std must be positive"):
        synthetic_observations(x, [0], "identity", -1.0, rng)
    with pytest.raises(TypeError, match="Generator"):
        synthetic_observations(x, [0], "identity", 1.0, 42)


def test_observations_package_does_not_import_models():
    code = (
        "import sys, observations, observations.obsset, observations.operators; "
        "bad = [m for m in sys.modules if m == 'models' or m.startswith('models.')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
