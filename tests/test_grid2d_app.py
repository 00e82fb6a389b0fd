"""The command line on a model on a 2-D grid: the 2-D B and the station networks from YAML,
``fourdvar check`` on them, one-line refusals, and the maps of ``fourdvar plot``.

The model is a small linear stand-in registered here (two layers drifting and mixing on
an 8 x 6 periodic grid, with a linear ``streamfunction``); the QG model's own config is
checked in ``test_qg_configs``."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import xarray as xr
import yaml

from fourdvar.app import cli
from fourdvar.app.maps import ROWS, plot_maps
from fourdvar.app.plotting import FIGURES
from fourdvar.app.results import recompute_cost
from fourdvar.app.plan import Plan
from fourdvar.app.config import resolve_config
from fourdvar.covariances2d import PeriodicCorrelation2D
from fourdvar.model import ModelBase
from fourdvar.registry import register_model


@register_model("grid2d_stand_in")
class DriftingLayers(ModelBase):
    """``q_next[l] = a shift_x(q[l]) + c (q[other] - q[l])``: linear, so its own TL;
    ``psi = -q`` smoothed along x (a linear diagnostic with its adjoint)."""

    def __init__(self, nx: int = 8, ny: int = 6, L: float = 8.0e5, W: float = 6.0e5, dt: float = 3600.0):
        self.nx, self.ny, self.L, self.W, self.dt = nx, ny, L, W, dt
        self.dx, self.dy = L / nx, W / ny
        self.x, self.y = (np.arange(nx) + 0.5) * self.dx, (np.arange(ny) + 0.5) * self.dy
        self.n_state, self.n_params = 2 * nx * ny, 0

    def _apply(self, q, shift):
        q = q.reshape(2, self.ny, self.nx)
        return (0.97 * np.roll(q, shift, axis=2) + 0.02 * (q[::-1] - q)).ravel()

    def step(self, x, p):
        return self._apply(self._inputs(x, p)[0], 1)

    def linearize(self, x, p):
        model, output = self, self.step(x, p)

        class Linearization:
            def tl(self, dx, dp):
                return model._apply(dx, 1)

            def ad(self, ax):
                q = ax.reshape(2, model.ny, model.nx)
                shifted = 0.97 * np.roll(q, -1, axis=2)
                return (shifted + 0.02 * (q[::-1] - q)).ravel(), np.zeros(0)

        linearization = Linearization()
        linearization.output = output
        return linearization

    def streamfunction(self, q):
        q = q.reshape(2, self.ny, self.nx)
        return -(q + 0.5 * np.roll(q, 1, axis=2)).ravel()

    def streamfunction_ad(self, apsi):
        a = apsi.reshape(2, self.ny, self.nx)
        return -(a + 0.5 * np.roll(a, -1, axis=2)).ravel()


CONFIG = {
    "title": "stand-in on a 2-D grid",
    "seed": 1,
    "model": {"type": "grid2d_stand_in"},
    "truth": {"spinup_steps": 5},
    "observations": {"every": 2, "error_std": 0.1, "operator": [
        {"type": "streamfunction_points", "stations": 12, "seed": 3, "layer": "all", "move_every": 4},
        {"type": "points", "stations": 5, "seed": 4, "layer": 1},
    ]},
    "background": {"state": {"error_std": 0.5, "layer_scale": [1.0, 0.5],
                             "correlation": {"type": "gaussian", "length_scale": 1.5, "vertical": [[1.0, 0.4], [0.4, 1.0]]}}},
    "window": {"steps": 4, "cycles": 3},
    "assimilation": {"outer_loops": 1},
    "output": {"file": "result.nc", "checkpoint": False},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("grid2d")
    (directory / "experiment.yaml").write_text(yaml.safe_dump(CONFIG))
    status = cli.main(["run", str(directory / "experiment.yaml"), "--output", str(directory / "result.nc")])
    assert status == 0
    with xr.open_dataset(directory / "result.nc") as ds:
        return directory, ds.load()


def test_the_plan_builds_the_2d_b_and_hands_the_model_to_the_operators():
    plan = Plan.from_config(resolve_config(copy.deepcopy(CONFIG)))
    assert isinstance(plan.B0, PeriodicCorrelation2D) and plan.B0.n_fields == 2
    np.testing.assert_allclose(plan.B0.std.reshape(2, -1)[:, 0], [0.5, 0.25])
    np.testing.assert_allclose(plan.B0.vertical, [[1.0, 0.4], [0.4, 1.0]])
    first, second = plan.observations[0], plan.observations[2]  # steps 0 and 4: the moving network, two draws
    assert first.operator.model is plan.model and first.operator.n_obs == 24
    assert not np.allclose(first.operator.x, second.operator.x)
    np.testing.assert_array_equal(plan.observations[1].operator.x, plan.observations[3].operator.x)  # the fixed one
    again = Plan.from_config(resolve_config(copy.deepcopy(CONFIG)))
    np.testing.assert_array_equal(again.observations[2].operator.x, second.operator.x)
    np.testing.assert_array_equal(again.observations[2].values, second.values)


def test_the_result_file_keeps_the_grid_and_the_station_positions(run):
    _, ds = run
    assert (ds.attrs["grid_nx"], ds.attrs["grid_ny"]) == (8, 6)
    assert {"obs_x", "obs_y"} <= set(ds.variables) and np.all(np.isfinite(ds["obs_x"].values))
    assert set(np.unique(ds["obs_operator"].values)) == {"streamfunction_points", "points"}
    assert ds["rmse_analysis"].values[0] < 0.5 * ds["rmse_background"].values[0]  # the first window, from B's draw


def test_the_result_file_recomputes_its_cost_with_the_layered_b(run):
    _, ds = run
    for cycle in range(ds.sizes["cycle"]):
        assert recompute_cost(ds, cycle).J == pytest.approx(float(ds["J_final"].values[cycle]), rel=1e-12)


def test_maps_show_each_layer_with_a_shared_scale_per_row_and_the_stations(run):
    _, ds = run
    fig = plot_maps(ds, cycles=[0, 2])
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 2 * len(ROWS) * 2  # layers x rows x cycles
    for row in range(2 * len(ROWS)):
        limits = {panels[2 * row + c].images[0].get_clim() for c in range(2)}
        assert len(limits) == 1, row  # one colour scale across the row
        low, high = limits.pop()
        assert low == -high > -np.inf
    layer0_truth, layer0_analysis = panels[0].images[0].get_clim(), panels[2].images[0].get_clim()
    assert layer0_truth == layer0_analysis  # truth and analysis of a layer compare directly
    n_grid = 8 * 6
    for cycle, column in ((0, 0), (2, 1)):
        for layer in range(2):
            ax = panels[(layer * len(ROWS) + 1) * 2 + column]  # the analysis row
            drawn = np.concatenate([c.get_offsets() for c in ax.collections])
            steps, index = ds["obs_step"].values, ds["obs_index"].values
            mine = (steps >= 4 * cycle) & (steps < 4 * cycle + 4) & (index // n_grid == layer)
            expected = np.column_stack([ds["obs_x"].values[mine], ds["obs_y"].values[mine]])
            np.testing.assert_allclose(np.sort(drawn, axis=0), np.sort(expected, axis=0))
    assert not any(ax.collections for ax in panels[: 2])  # no stations on the truth row


def test_plot_draws_the_maps_of_a_2d_result_only(run, tmp_path):
    _, ds = run
    assert FIGURES["maps"] is plot_maps
    plot_maps(ds).savefig(tmp_path / "maps.png")  # first, middle and last cycle by default
    assert (tmp_path / "maps.png").stat().st_size > 0
    flat = ds.copy()
    flat.attrs = {key: value for key, value in ds.attrs.items() if not key.startswith("grid_")}
    assert plot_maps(flat) is None


def test_check_passes_on_the_2d_b_and_operators(tmp_path, capsys):
    config = copy.deepcopy(CONFIG)
    config["window"]["cycles"] = 1
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(config))
    status = cli.main(["check", str(tmp_path / "experiment.yaml")])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "StreamfunctionPoints(24 observations on a 6 x 8 grid)" in out and "covariance B" in out
    assert out.strip().splitlines()[-1].endswith("0 failed, 0 inconclusive")


@pytest.mark.parametrize("change, message", [
    (lambda c: c["background"]["state"].update(layer_scale=[1.0, 0.5, 2.0]), "background.state.layer_scale: the model has 2 layers, got 3 values"),
    (lambda c: c["background"]["state"]["correlation"].update(vertical=[[1.0, 0.4]]), "background.state.correlation: PeriodicCorrelation2D: vertical must be a finite (2, 2) matrix"),
    (lambda c: c["background"]["state"]["correlation"].update(vertcal=1), "background.state.correlation.vertcal: unknown key; did you mean 'vertical'?"),
    (lambda c: c["observations"]["operator"][0].update(stations=-3), "observations.operator[0]: streamfunction_points operator: stations must be an integer >= 1"),
    (lambda c: c["observations"]["operator"][1].update(layer=2), "observations.operator[1]: layer must be 'all' or an integer in [0, 2)"),
])
def test_bad_input_is_one_line_and_exit_2(change, message, tmp_path, capsys):
    config = copy.deepcopy(CONFIG)
    change(config)
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(config))
    status = cli.main(["run", str(tmp_path / "experiment.yaml"), "--output", str(tmp_path / "result.nc")])
    err = capsys.readouterr().err
    assert status == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "result.nc").exists()


def test_initial_std_keeps_the_first_background_whatever_the_std_of_b():
    def first_background(error_std, initial_std):
        config = copy.deepcopy(CONFIG)
        config["background"]["state"].update(error_std=error_std, initial_std=initial_std)
        return Plan.from_config(resolve_config(config))

    a, b = first_background(0.5, 0.3), first_background(0.9, 0.3)
    np.testing.assert_array_equal(a.xb0, b.xb0)
    default = first_background(0.3, None)
    np.testing.assert_array_equal(default.xb0, a.xb0)  # the draw from B with std 0.3, as without the key
    assert not np.array_equal(first_background(0.5, None).xb0, a.xb0)


def test_check_passes_on_a_tiny_qg_experiment(tmp_path, capsys):
    config = {
        "seed": 3,
        "model": {"type": "qg", "nx": 16, "L": 2.5e5, "estimate": ["rek"]},
        "truth": {"spinup_steps": 300, "initial_std": 2.0e-5},
        "observations": {"every": 2, "error_std": 50.0, "operator": [
            {"type": "streamfunction_points", "stations": 40, "seed": 5, "move_every": 2},
            {"type": "grid_subset", "every": 4, "layer": "all"},
        ]},
        "background": {"state": {"error_std": 1.0e-6, "layer_scale": [1.0, 0.15],
                                 "correlation": {"type": "soar", "length_scale": 2.0, "vertical": [[1.0, 0.5], [0.5, 1.0]]}},
                       "params": {"error_std": 1.0e-7}},
        "window": {"steps": 4, "cycles": 1},
        "assimilation": {"control": ["state", "params"]},
    }
    (tmp_path / "qg.yaml").write_text(yaml.safe_dump(config))
    status = cli.main(["check", str(tmp_path / "qg.yaml")])
    out = capsys.readouterr().out
    assert status == 0, out[-3000:]
    assert "StreamfunctionPoints(40 observations on a 16 x 16 grid)" in out and "GridSubset(32 observations" in out
    assert out.strip().splitlines()[-1].endswith("0 failed, 0 inconclusive")
