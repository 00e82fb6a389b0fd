"""The ensemble: block of a cycled run: the EDA on the embedded cluster equals the same
run made serially, bit for bit; a run resumed from a checkpoint equals an uninterrupted
one; the result file has the member dimension and spread diagnostics; the plot shows
spread against error; bad settings are refused in one line."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import xarray as xr

from fourdvar.app.cluster import PROVENANCE_ATTRIBUTES, distributed_map, embedded_cluster
from fourdvar.app.config import ConfigError, resolve_config
from fourdvar.app.plan import Plan
from fourdvar.app.results import window_dataset, window_row, write_atomic
from fourdvar.app.run import CyclingState, execute
from fourdvar.app.plotting import plot_results

EDA = {  # the sakov2008 layout: observations at each window's end, quasi-static stages, a filter score after burn-in
    "title": "small EDA", "seed": 3, "model": {"type": "lorenz96", "n_state": 40}, "truth": {"spinup_steps": 500},
    "observations": {"every": 4, "offset": 4, "operator": {"type": "subset", "indices": "all"}, "error_std": 1.0},
    "background": {"state": {"error_std": 0.5}}, "window": {"steps": 8, "cycles": 4, "observations_at_end": True},
    "assimilation": {"control": ["state"], "outer_loops": 2, "quasi_static_steps": 4, "inner": {"method": "lanczos", "max_iterations": 30}},
    "ensemble": {"members": 3, "hybrid_weight": 0.5, "localization": 4.0, "inflation": 1.2},
    "diagnostics": {"burn_in_cycles": 1}, "compare": [{"name": "static"}], "output": {"checkpoint": False},
}


def assert_identical_results(a: xr.Dataset, b: xr.Dataset) -> None:
    """Every variable bit for bit, every attribute but the provenance (creation time, run time)."""
    assert set(a.variables) == set(b.variables)
    for name in a.variables:
        x, y = a[name].values, b[name].values
        assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name
    strip = lambda attrs: {k: v for k, v in attrs.items() if k not in PROVENANCE_ATTRIBUTES}  # noqa: E731
    assert strip(a.attrs) == strip(b.attrs)


def plan() -> Plan:
    return Plan.from_config(resolve_config(copy.deepcopy(EDA), name="eda"))


@pytest.fixture(scope="module")
def serial_result():
    return execute(plan())


def test_the_result_file_has_the_members_and_spread_diagnostics(serial_result):
    ds = serial_result
    assert ds["member_analysis"].dims == ("cycle", "member", "x") and ds.sizes["member"] == 3
    spread = np.sqrt(np.mean(np.var(ds["member_background"].values, axis=1, ddof=1), axis=1))
    assert np.array_equal(ds["spread_background"].values, spread) and np.all(spread > 0)
    # each window's members start from the previous window's member forecasts, inflated about their mean
    forecasts = ds["member_forecast_end"].values[:-1]
    mean = forecasts.mean(axis=1, keepdims=True)
    np.testing.assert_allclose(ds["member_background"].values[1:], mean + 1.2 * (forecasts - mean), rtol=0, atol=1e-12)
    assert ds.attrs["headline_spread_skill"] == pytest.approx(
        ds.attrs["headline_spread_background_last_half"] / ds.attrs["headline_rmse_ensemble_mean_background_last_half"], rel=1e-5)


def test_the_eda_scores_the_filter_analysis_after_burn_in_beside_its_static_comparison(serial_result):
    ds = serial_result
    filter_rmse = np.sqrt(np.mean((ds["analysis"].values[:, -1] - ds["truth"].values[:, -1]) ** 2, axis=1))
    np.testing.assert_allclose(ds["rmse_filter"].values, filter_rmse, rtol=1e-12)
    for suffix in ("", "_static"):
        assert ds.attrs[f"headline_rmse_filter_after_burn_in{suffix}"] == pytest.approx(ds[f"rmse_filter{suffix}"].values[1:].mean(), abs=1e-6)
    assert not np.array_equal(ds["rmse_filter"].values, ds["rmse_filter_static"].values)  # two different runs


def test_an_eda_on_the_embedded_cluster_equals_the_serial_run_bit_for_bit(serial_result):
    with embedded_cluster(2) as client:
        distributed = execute(plan(), map_members=distributed_map(client))
    assert_identical_results(serial_result, distributed)


def test_a_resumed_eda_equals_the_uninterrupted_run(serial_result, tmp_path):
    """The checkpoint files of the first two windows (rows and cycling state, written and
    read back as `fourdvar run` does) restart the members where they were."""
    saved = []
    first = plan()
    execute(first, on_window=lambda row, state: saved.append(window_dataset(row, state.cycle - 1, state.variables(), "")))
    for c, ds in enumerate(saved[:2]):
        write_atomic(ds, tmp_path / f"cycle_{c}.nc")
    halfway = [xr.load_dataset(tmp_path / f"cycle_{c}.nc") for c in range(2)]
    assert "state_members" in halfway[-1] and "member_forecast_end" in halfway[-1]
    rows = [window_row(ds) for ds in halfway]
    again = plan()
    resumed = execute(again, resume=(rows, CyclingState.from_dataset(halfway[-1], again)))
    assert_identical_results(serial_result, resumed)


def shifted_plan(**ensemble) -> Plan:
    """The small EDA with windows of 8 steps starting every 4 (overlapping)."""
    config = copy.deepcopy(EDA)
    config["window"] = {"steps": 8, "shift": 4, "cycles": 5, "observations_at_end": True}
    config["ensemble"].update(ensemble)
    return Plan.from_config(resolve_config(config, name="eda_shifted"))


def recording_map(tasks_seen):
    def map_members(function, tasks):
        tasks = list(tasks)
        tasks_seen.extend(tasks)
        return map(function, tasks)
    return map_members


def test_a_shifted_eda_assimilates_each_observation_once_per_member_from_the_analyses_at_step_shift():
    plan, tasks = shifted_plan(), []
    ds = execute(plan, map_members=recording_map(tasks))
    for member in range(plan.config["ensemble"]["members"] + 1):
        mine = [task for task in tasks if task.member == member]
        assimilated = sorted(plan.window_start(task.cycle) + slot.step for task in mine for slot in task.slots)
        assert assimilated == list(plan.observations.steps)  # every observation, each once
    # each member's next background: its analysis forecast to step 4 (then inflated), not to the window end
    members = ds["member_analysis"].values
    at_shift = np.stack([[plan.model.forecast(x, np.empty(0), 4)[-1] for x in window] for window in members[:-1]])
    mean = at_shift.mean(axis=1, keepdims=True)
    np.testing.assert_allclose(ds["member_background"].values[1:], mean + 1.2 * (at_shift - mean), rtol=0, atol=1e-10)
    assert np.abs(ds["member_forecast_end"].values[:-1] - at_shift).max() > 1e-2
    np.testing.assert_array_equal(ds["background"].values[1:, 0], ds["analysis"].values[:-1, 4])  # the control's, likewise


def test_a_shifted_eda_is_the_same_serially_on_the_cluster_and_resumed():
    serial = execute(shifted_plan())
    with embedded_cluster(2) as client:
        assert_identical_results(serial, execute(shifted_plan(), map_members=distributed_map(client)))
    saved = []
    execute(shifted_plan(), on_window=lambda row, state: saved.append(window_dataset(row, state.cycle - 1, state.variables(), "")))
    rows = [window_row(ds) for ds in saved[:2]]
    again = shifted_plan()
    assert_identical_results(serial, execute(again, resume=(rows, CyclingState.from_dataset(saved[1], again))))


def test_a_shifted_eda_with_hybrid_weight_0_has_the_control_of_its_static_comparison():
    """beta = 0: the members spread (perturbed observations) but B is the static B, so the
    control is the shifted static 4D-Var run beside it (to round-off: the extended control
    variable's zero-weighted ensemble directions change the order of the Lanczos sums)."""
    ds = execute(shifted_plan(perturb=["observations"], hybrid_weight=0.0))
    assert np.all(ds["spread_background"].values[1:] > 0.05)
    np.testing.assert_allclose(ds["rmse_filter"].values, ds["rmse_filter_static"].values, rtol=1e-12, atol=0)
    assert ds["rmse_filter"].values.min() > 0.05


def test_the_plot_shows_spread_against_error(serial_result, tmp_path):
    written = plot_results(serial_result, tmp_path)
    assert tmp_path / "spread.png" in written and (tmp_path / "spread.png").stat().st_size > 10_000
    assert tmp_path / "spread.png" not in plot_results(serial_result.drop_vars("spread_background"), tmp_path / "plain")


@pytest.mark.parametrize("change, message", [
    ({"members": 1}, "ensemble.members: must be 0 or >= 2"),
    ({"hybrid_weight": 1.0}, "ensemble.hybrid_weight: must be in [0, 1)"),
    ({"perturb": ["winds"]}, "ensemble.perturb: expected one of observations, background"),
    ({"localization": 0.0}, "ensemble.localization: must be positive"),
    ({"inflation": 0.95}, "ensemble.inflation: must be >= 1"),
])
def test_bad_ensemble_settings_are_refused_naming_the_key(change, message):
    config = copy.deepcopy(EDA)
    config["ensemble"].update(change)
    with pytest.raises(ConfigError) as error:
        resolve_config(config)
    assert str(error.value).startswith(message)
