"""Observation operators on a periodic 2-D grid: adjoints, exact bilinear interpolation with its
periodic wrap, on-grid subsets, the streamfunction at stations, and networks drawn from a seed.

A small linear stand-in plays the model: its ``streamfunction`` is a fixed random matrix,
so the operators are tested against an exact ``S`` and ``S^T``."""

from __future__ import annotations

import numpy as np
import pytest

from fourdvar import checks
from fourdvar.registry import build_operator
from observations.grid2d import Grid, GridSubset, Points, StreamfunctionPoints

NX, NY, LAYERS = 6, 5, 2
N = LAYERS * NY * NX


class StandIn:
    """The grid and the linear diagnostic ``psi = S q`` of a two-layer model on a 6 x 5 grid."""

    nx, ny, L, W = NX, NY, 6.0e5, 5.0e5
    dx, dy = L / NX, W / NY
    x = (np.arange(NX) + 0.5) * dx
    y = (np.arange(NY) + 0.5) * dy
    n_state = N

    def __init__(self, seed=0):
        self.S = np.random.default_rng(seed).standard_normal((N, N))

    def streamfunction(self, q):
        return self.S @ q

    def streamfunction_ad(self, apsi):
        return self.S.T @ apsi


def operators(model):
    return {
        "points, upper layer": Points(N, model=model, stations=9, seed=3),
        "points, all layers": Points(N, model=model, stations=7, seed=4, layer="all"),
        "grid subset": GridSubset(N, model=model, layer=1, every=[2, 3], offset=1),
        "streamfunction": StreamfunctionPoints(N, model=model, stations=11, seed=5, layer="all"),
    }


@pytest.mark.parametrize("name", ["points, upper layer", "points, all layers", "grid subset", "streamfunction"])
def test_operator_adjoint_matches_tangent_linear(name):
    rng = np.random.default_rng(1)
    operator = operators(StandIn())[name]
    result = checks.operator_adjoint_test(operator, rng.standard_normal(N), rng)
    assert result.passed and result.value < 1e-12, result
    taylor = checks.operator_taylor_test(operator, rng.standard_normal(N), rng)
    assert taylor.status != checks.FAIL


def test_a_wrong_streamfunction_adjoint_fails_the_adjoint_test():
    model = StandIn()
    model.streamfunction_ad = lambda apsi: model.S @ apsi  # planted error: S instead of S^T
    operator = StreamfunctionPoints(N, model=model, stations=11, seed=5)
    rng = np.random.default_rng(1)
    assert checks.operator_adjoint_test(operator, rng.standard_normal(N), rng).value > 1e-3


def bilinear_field(grid, a=1.0, b=2e-5, c=-3e-5, d=4e-10):
    """``f = a + b x + c y + d x y`` at the grid points of both layers (the second one doubled)."""
    X, Y = np.meshgrid(grid.x0 + np.arange(NX) * grid.dx, grid.y0 + np.arange(NY) * grid.dy)
    f = a + b * X + c * Y + d * X * Y
    return np.stack([f, 2 * f]).ravel(), lambda x, y: a + b * x + c * y + d * x * y


def test_interpolation_is_exact_on_bilinear_fields():
    grid = Grid.of(N, StandIn())
    q, exact = bilinear_field(grid)
    rng = np.random.default_rng(2)
    # inside the grid's span (no wrap): x in [x0, x0 + (nx-1) dx], y likewise
    px = grid.x0 + rng.uniform(0, (NX - 1) * grid.dx, 50)
    py = grid.y0 + rng.uniform(0, (NY - 1) * grid.dy, 50)
    upper = Points(N, model=StandIn(), x=px, y=py).apply(q)
    both = Points(N, model=StandIn(), x=px, y=py, layer="all").apply(q)
    np.testing.assert_allclose(upper, exact(px, py), rtol=1e-13)
    np.testing.assert_allclose(both, np.concatenate([exact(px, py), 2 * exact(px, py)]), rtol=1e-13)


def test_interpolation_wraps_around_the_periodic_domain():
    model = StandIn()
    grid = Grid.of(N, model)
    q = np.random.default_rng(3).standard_normal(N)
    f = q[: NY * NX].reshape(NY, NX)
    # halfway between the last column and the first one (across the seam), on the first row
    seam = Points(N, model=model, x=[grid.x0 + (NX - 0.5) * grid.dx], y=[grid.y0]).apply(q)
    assert seam[0] == pytest.approx(0.5 * (f[0, -1] + f[0, 0]), rel=1e-14)
    # a corner cell across both seams: the four corners (ny-1, nx-1), (ny-1, 0), (0, nx-1), (0, 0)
    corner = Points(N, model=model, x=[grid.x0 - 0.25 * grid.dx], y=[grid.y0 - 0.75 * grid.dy]).apply(q)
    # x: a quarter cell left of column 0 (weight 3/4 on it, 1/4 on column nx-1); y: 3/4 cell below row 0 (1/4, 3/4)
    expected = (0.25 * 0.75 * f[-1, -1] + 0.75 * 0.75 * f[-1, 0] + 0.25 * 0.25 * f[0, -1] + 0.75 * 0.25 * f[0, 0])
    assert corner[0] == pytest.approx(expected, rel=1e-13)
    # positions one domain length apart observe the same value
    px, py = np.random.default_rng(4).uniform(0, grid.L, 20), np.random.default_rng(5).uniform(0, grid.W, 20)
    shifted = Points(N, model=model, x=px + 3 * grid.L, y=py - 2 * grid.W).apply(q)
    np.testing.assert_allclose(shifted, Points(N, model=model, x=px, y=py).apply(q), rtol=1e-12)


def test_grid_subset_observes_the_grid_points_themselves():
    q = np.random.default_rng(6).standard_normal(N)
    y = GridSubset(N, model=StandIn(), layer=1, every=[2, 3], offset=1).apply(q)
    np.testing.assert_array_equal(y, q.reshape(LAYERS, NY, NX)[1, 1::2, 1::3].ravel())


def test_streamfunction_points_interpolate_the_model_diagnostic():
    model = StandIn()
    q = np.random.default_rng(7).standard_normal(N)
    stations = dict(x=[1.0e5, 4.4e5], y=[2.2e5, 0.3e5])
    psi = StreamfunctionPoints(N, model=model, layer=1, **stations).apply(q)
    np.testing.assert_allclose(psi, Points(N, model=model, layer=1, **stations).apply(model.S @ q), rtol=1e-14)


def test_networks_are_reproduced_by_their_seed_and_move_only_when_asked():
    model = StandIn()
    a, b = (Points(N, model=model, stations=30, seed=8, move_every=4) for _ in range(2))
    c = Points(N, model=model, stations=30, seed=9, move_every=4)
    np.testing.assert_array_equal(a.x, b.x)
    assert not np.allclose(a.x, c.x)
    assert a.at_step(3) is a  # the same draw within the first 4 steps
    np.testing.assert_array_equal(a.at_step(5).x, b.at_step(7).x)  # the same draw for steps 4..7, from the seed
    assert not np.allclose(a.at_step(5).x, a.x) and not np.allclose(a.at_step(9).x, a.at_step(5).x)
    fixed = Points(N, model=model, stations=30, seed=8)
    assert fixed.at_step(100) is fixed
    inside = (0 <= a.at_step(9).x) & (a.at_step(9).x < model.L) & (0 <= a.at_step(9).y) & (a.at_step(9).y < model.W)
    assert inside.all()


def test_operators_build_through_the_registry_with_a_grid_or_a_model():
    by_grid = build_operator({"type": "points", "n_state": N, "grid": {"nx": NX, "ny": NY, "L": 6.0e5, "W": 5.0e5},
                              "stations": 5, "seed": 1})
    by_model = build_operator({"type": "points", "n_state": N, "model": StandIn(), "stations": 5, "seed": 1})
    np.testing.assert_array_equal(by_grid.corners, by_model.corners)
    np.testing.assert_array_equal(by_grid.weights, by_model.weights)


@pytest.mark.parametrize("options, message", [
    ({"stations": 5, "layer": 2}, "layer must be 'all' or an integer in [0, 2)"),
    ({"stations": 0}, "stations must be an integer >= 1"),
    ({"x": [1.0, 2.0], "y": [1.0]}, "same length"),
    ({"x": [1.0], "y": [1.0], "move_every": 3}, "move_every needs randomly drawn stations"),
    ({"stations": 5, "x": [1.0], "y": [1.0]}, "not both"),
])
def test_bad_options_are_refused_in_one_line(options, message):
    with pytest.raises(ValueError) as error:
        Points(N, model=StandIn(), **options)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_streamfunction_points_need_a_model_with_the_diagnostic_and_its_adjoint():
    with pytest.raises(ValueError, match="has no streamfunction_ad"):
        StreamfunctionPoints(N, model=type("Half", (StandIn,), {"streamfunction_ad": None})(), stations=3)
    with pytest.raises(ValueError, match="not a whole number of 5 x 6 fields"):
        Points(N + 1, model=StandIn(), stations=3)


def test_streamfunction_points_on_the_qg_model_pass_the_adjoint_test():
    from models.qg import QG

    model = QG(nx=16, L=2.5e5)
    operator = StreamfunctionPoints(model.n_state, model=model, stations=30, seed=2, layer="all", move_every=3)
    rng = np.random.default_rng(8)
    for step in (0, 3):
        result = checks.operator_adjoint_test(operator.at_step(step), 1e-5 * rng.standard_normal(model.n_state), rng)
        assert result.passed and result.value < 1e-12, result
    q = 1e-5 * rng.standard_normal(model.n_state)
    psi = np.asarray(model.streamfunction(q)).reshape(model.n_state)
    np.testing.assert_allclose(operator.apply(q), Points(model.n_state, model=model, x=operator.x, y=operator.y, layer="all").apply(psi), rtol=1e-13)
