"""Weak constraint from YAML: the model_error block, the truth's stochastic model error,
cycling from the end of the forced analysis, the result file, resume, plots and bad input."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from fourdvar.app.checkpoint import Checkpoint
from fourdvar.app.config import ConfigError, resolve_config
from fourdvar.app.plan import Plan
from fourdvar.app.plotting import plot_results
from fourdvar.app.results import recompute_cost
from fourdvar.app.run import CyclingState, execute
from fourdvar.window import forced_forecast
from models import Lorenz96

N = 12
WEAK = {
    "seed": 4,
    "model": {"type": "lorenz96", "n_state": N, "dt": 0.05},
    "truth": {"spinup_steps": 100, "model_error_std": 0.2, "model_error_every": 3},
    "observations": {"every": 2, "error_std": 0.5},
    "background": {"state": {"error_std": 0.5}},
    "model_error": {"every": 3, "error_std": 0.2},
    "window": {"steps": 6, "cycles": 3},
    "assimilation": {"control": ["state", "model_error"], "outer_loops": 2, "inner": {"method": "cg", "max_iterations": 30}},
}


def weak(**changes):
    config = copy.deepcopy(WEAK)
    for section, value in changes.items():
        config[section] = {**config[section], **value} if isinstance(value, dict) and section in config else value
    return resolve_config(config, name="weak")


@pytest.fixture(scope="module")
def run():
    plan = Plan.from_config(weak(compare=[{"name": "strong", "assimilation": {"control": ["state"]}}]))
    return plan, execute(plan)


def test_the_truth_carries_one_forcing_per_sub_window(run):
    plan, _ = run
    truth = plan.truth
    forcing = truth["model_error"]  # the forcing added after each step, row k
    assert np.all(np.isnan(forcing[0]))
    assert np.array_equal(forcing[1], forcing[3]) and not np.array_equal(forcing[3], forcing[4])
    assert 0.1 < np.nanstd(forcing) < 0.3
    model = Lorenz96(N)
    for k in (1, 5, 17):
        assert np.allclose(truth["trajectory"][k], model.step(truth["trajectory"][k - 1], np.empty(0)) + forcing[k], atol=1e-12)


def test_each_window_starts_from_the_end_of_the_previous_forced_analysis(run):
    plan, ds = run
    eta = ds["model_error"].values
    assert ds["model_error"].dims == ("cycle", "sub_window", "x") and eta.shape == (3, 2, N) and np.any(eta != 0)
    assert ds.attrs["model_error_every"] == 3
    for c in range(2):
        forced = forced_forecast(plan.model, ds["analysis"].values[c, 0], np.empty(0), 6, eta[c], 3)
        np.testing.assert_allclose(ds["analysis"].values[c], forced, rtol=0, atol=1e-12)
        assert np.array_equal(ds["background"].values[c + 1, 0], ds["analysis"].values[c, -1])
    assert np.all(ds["Jm_final"].values > 0)
    np.testing.assert_allclose(ds["J_final"].values, ds[["Jb_final", "Jp_final", "Jo_final", "Jm_final"]].to_array().sum("variable").values, rtol=1e-12)
    assert np.all(np.isnan(ds["model_error_truth"].values[:, 0]))


def test_the_stored_analysis_recomputes_to_its_weak_cost(run):
    _, ds = run
    for c in (0, 2):
        terms = recompute_cost(ds, c)
        assert terms.J == pytest.approx(float(ds["J_final"].values[c]), rel=1e-10)
        assert terms.Jm == pytest.approx(float(ds["Jm_final"].values[c]), rel=1e-10)


def test_headlines_compare_weak_and_strong_at_the_window_end_and_over_the_window(run):
    _, ds = run
    for key in ("rmse_analysis_end_last_half", "rmse_analysis_window_last_half",
                "rmse_analysis_end_last_half_strong", "rmse_analysis_window_last_half_strong"):
        assert np.isfinite(ds.attrs[f"headline_{key}"])
    assert ds.attrs["headline_rmse_analysis_end_last_half"] == pytest.approx(float(ds["rmse_analysis_end"].values[1:].mean()), abs=1e-6)
    assert "model_error_strong" not in ds


class Stop(Exception):
    pass


def test_a_resumed_weak_run_equals_an_uninterrupted_one(tmp_path):
    """Killed after 2 windows with a real checkpoint, resumed: the same forcings and costs."""
    config = weak()
    checkpoint = Checkpoint(tmp_path / "result.nc")
    checkpoint.acquire()

    def save(row, state):
        checkpoint.save(row, state.variables(), state.cycle - 1, "config")
        if state.cycle == 2:
            raise Stop

    with pytest.raises(Stop):
        execute(Plan.from_config(config), on_window=save)
    windows = checkpoint.load("config")
    checkpoint.release()
    plan = Plan.from_config(config)
    resumed = execute(plan, resume=([row for row, _ in windows], CyclingState.from_dataset(windows[-1][1], plan)))
    full = execute(Plan.from_config(config))
    assert resumed["model_error"].shape == (3, 2, N)
    for name in ("model_error", "Jm_final", "J_final", "analysis"):
        np.testing.assert_array_equal(resumed[name].values, full[name].values)


def test_the_forcing_is_plotted(run, tmp_path):
    _, ds = run
    names = {path.name for path in plot_results(ds, tmp_path)}
    assert "model_error.png" in names and (tmp_path / "model_error.png").stat().st_size > 10_000


def test_weak_constraint_configuration_errors_name_the_key():
    with pytest.raises(ConfigError, match="assimilation.control: expected one of state, params, model_error, got 'model_errors'"):
        weak(assimilation={"control": ["state", "model_errors"]})
    with pytest.raises(ConfigError, match="model_error.every: must be >= 1"):
        weak(model_error={"every": 0})
    with pytest.raises(ConfigError, match="model_error.error_std: must be positive"):
        weak(model_error={"error_std": -0.1})
    with pytest.raises(ConfigError, match="truth.model_error_std: must be >= 0"):
        weak(truth={"model_error_std": -1.0})
    with pytest.raises(ConfigError, match="truth.model_error_std: .* needs truth.substeps: 1"):
        weak(truth={"substeps": 2})
    with pytest.raises(ConfigError, match="model_erorr: unknown key; did you mean 'model_error'"):
        resolve_config({**copy.deepcopy(WEAK), "model_erorr": {}})
    config = weak(model_error={"correlation": {"type": "gaussian", "length_scale": 1.5}})
    assert type(Plan.from_config(config).Q0).__name__ == "PeriodicCorrelation"
