"""What a run stores and draws for forecast error against lead time and for a learned
correction against the missing tendency, the comparison runs' progress lines and the
short repr of an assimilation result: values checked against an independent computation."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
import xarray as xr
import yaml
from test_plotting import synthetic_result

from fourdvar.app.cli import Progress
from fourdvar.app.config import resolve_config
from fourdvar.app.diagnostics import CORRECTION_SPACING, independent_truth
from fourdvar.app.plan import Plan
from fourdvar.app.plotting import plot_correction, plot_forecast, plot_results
from fourdvar.app.run import execute
from fourdvar.cost import CostTerms
from fourdvar.minimize import AssimilationResult
from fourdvar.window import forecast

L96 = {"type": "lorenz96", "n_state": 8, "forcing": 8.0, "dt": 0.05}
MISSING = {"extra_amplitude": 2.0, "extra_wavelength": 10.0}  # the truth's term the physics lacks: 2 sin(2 pi x / 10)
CONFIG = {
    "title": "tiny hybrid",
    "seed": 1,
    "model": {"type": "hybrid", "physics": L96, "correction": {"type": "local_mlp", "n_state": 8, "half_width": 2, "hidden": [4], "dt": 0.05}},
    "truth": {"model": {**L96, **MISSING}, "spinup_steps": 100},
    "observations": {"every": 1, "operator": {"type": "identity"}, "error_std": 1.0},
    "background": {"state": {"error_std": 0.5}, "params": {"error_std": 0.5, "update": "posterior", "noise_std": 0.01}},
    "window": {"steps": 5, "cycles": 4},
    "assimilation": {"control": ["state", "params"], "outer_loops": 2, "inner": {"method": "cg", "max_iterations": 10}},
    "diagnostics": {"forecast_skill": True, "forecast_starts": 3, "forecast_lyapunov_times": 1.0},
    "compare": [{"name": "physics", "model": L96, "assimilation": {"control": ["state"]}},
                {"name": "perfect", "model": {**L96, **MISSING}, "assimilation": {"control": ["state"]}}],
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    plan = Plan.from_config(resolve_config(yaml.safe_load(yaml.safe_dump(CONFIG))))
    lines, stream = [], io.StringIO()
    dataset = execute(plan, message=lines.append,
                      comparison_progress=lambda name, n_cycles: Progress(n_cycles, stream=stream, label=f"'{name}'"))
    lines += stream.getvalue().splitlines()
    path = tmp_path_factory.mktemp("result") / "hybrid.nc"
    dataset.to_netcdf(path)
    with xr.open_dataset(path) as stored:  # what plot reads: the file alone
        return plan, stored.load(), lines


def test_forecast_rmse_per_lead_is_stored_for_every_run_and_matches_the_forecasts(run):
    plan, ds, _ = run
    for suffix in ("", "_physics", "_perfect"):
        for source in ("truth", "analyses"):
            variable = ds[f"forecast_rmse_from_{source}{suffix}"]
            assert variable.dims == ("lead",) and variable.sizes["lead"] == plan.forecast_steps + 1
            assert variable.attrs["units"] and "lead" in variable.attrs["long_name"]
    np.testing.assert_array_equal(ds["lead"].values, np.arange(plan.forecast_steps + 1))
    assert ds["lead"].attrs["units"] == "model steps"
    # recomputed here: the learned model from the independent truth states, final parameters
    options = plan.config["diagnostics"]
    starts = range(0, options["forecast_starts"] * options["forecast_spacing"], options["forecast_spacing"])
    truth = independent_truth(plan)
    n = plan.forecast_steps
    errors = [np.sqrt(np.mean((forecast(plan.model, truth[s], ds["params_analysis"].values[-1], n) - truth[s : s + n + 1]) ** 2, axis=1))
              for s in starts]
    np.testing.assert_allclose(ds["forecast_rmse_from_truth"].values, np.mean(errors, axis=0), rtol=1e-10, atol=1e-12)
    assert ds["forecast_rmse_from_truth"].values[-1] > 0.1  # the physics alone drifts off the truth
    np.testing.assert_allclose(ds["forecast_rmse_from_truth_perfect"].values, 0.0, atol=1e-10)  # the truth's own model


def test_the_forecast_figure_draws_the_stored_curves_against_lead_time(run):
    _, ds, _ = run
    fig = plot_forecast(ds)
    from_truth, from_analyses = fig.axes[:2]
    for ax, source in ((from_truth, "truth"), (from_analyses, "analyses")):
        lines = {ln.get_label(): ln for ln in ax.get_lines()}
        assert set(lines) == {"this run's model", "physics run", "perfect run"}
        for label, suffix in (("this run's model", ""), ("physics run", "_physics"), ("perfect run", "_perfect")):
            expected = ds[f"forecast_rmse_from_{source}{suffix}"].values
            np.testing.assert_array_equal(lines[label].get_ydata(), expected)
            np.testing.assert_allclose(lines[label].get_xdata(), np.arange(expected.size) * 0.05)
    assert plot_forecast(synthetic_result()) is None  # no skill diagnostics: no figure


def test_the_correction_is_stored_against_the_missing_term_on_unseen_truth_states(run):
    plan, ds, _ = run
    x = ds["correction_state"].values
    assert x.shape == (50, 8) and ds["correction_state"].dims == ("correction_sample", "x")
    np.testing.assert_allclose(ds["correction_truth"].values, 2.0 * np.sin(2 * np.pi * x / 10.0), atol=1e-12)
    _, weights = plan.model.split(ds["params_analysis"].values[-1])
    learned = np.array([plan.model.correction.tendency.evaluate(state, weights) for state in x])
    np.testing.assert_allclose(ds["correction_learned"].values, learned, rtol=1e-12)
    assert np.abs(learned).max() > 0.01  # the weights moved: not the first guess
    np.testing.assert_array_equal(ds["correction_initial"].values, 0.0)  # the network starts at zero output
    gap = CORRECTION_SPACING * plan.config["truth"]["substeps"]
    np.testing.assert_allclose(forecast(plan.truth["model"], x[0], plan.truth["model_params"], gap)[-1], x[1], rtol=1e-10)  # truth, gap steps on


def test_the_correction_figure_draws_learned_against_missing(run):
    _, ds, _ = run
    fig = plot_correction(ds)
    left, right = fig.axes[:2]
    missing, learned = ds["correction_truth"].values.ravel(), ds["correction_learned"].values.ravel()
    (points,) = [ln for ln in right.get_lines() if ln.get_label() == "every point, last analysis"]
    np.testing.assert_array_equal(points.get_xdata(), missing)
    np.testing.assert_array_equal(points.get_ydata(), learned)
    assert f"{np.corrcoef(missing, learned)[0, 1]:.3g}" in right.get_title()
    (curve,) = [ln for ln in left.get_lines() if ln.get_label() == "missing term (truth)"]
    order = np.argsort(ds["correction_state"].values.ravel(), kind="stable")
    np.testing.assert_array_equal(curve.get_ydata(), missing[order])
    assert plot_correction(synthetic_result()) is None


def test_plot_writes_both_figures_from_the_file(run, tmp_path):
    _, ds, _ = run
    names = {path.name for path in plot_results(ds, tmp_path)}
    assert {"forecast.png", "correction.png"} <= names


def test_comparison_runs_say_their_cycles_and_time(run):
    _, ds, lines = run
    assert lines[0] == "comparison run 'physics': 4 cycles of 5 steps, control state, Lorenz96"
    assert lines[1].startswith("comparison run 'physics' done: 4 cycles in ")
    rmse = float(ds["rmse_analysis_physics"].values[2:].mean())
    assert lines[1].endswith(f" s, analysis RMSE (last half) {rmse:.4g}")
    assert lines[2].startswith("comparison run 'perfect': ") and len(lines) == 4 + 2 * 4
    per_cycle = [line for line in lines[4:] if line.startswith("'physics' cycle ")]
    assert [line.split()[2] for line in per_cycle] == ["1/4", "2/4", "3/4", "4/4"]
    final = re.search(r"rmse_a=(\S+)", per_cycle[-1]).group(1)
    assert final == f"{ds['rmse_analysis_physics'].values[-1]:.3f}" and re.search(r"\(\d+s, eta 0s\)$", per_cycle[-1])
    assert sum(line.startswith("'perfect' cycle ") for line in lines) == 4


def test_an_assimilation_result_prints_in_a_few_lines():
    result = AssimilationResult(
        x0=np.arange(1000.0), p=np.ones(113), model_error=np.zeros((0, 1000)), success=True, message="3 outer loop(s); converged",
        nit=42, nfev=50, outer=[{}, {}, {}], final=CostTerms(1.5, 0.25, 10.0), final_gradient_norm=1e-4,
    )
    text = str(result)
    assert text == repr(result) and len(text.splitlines()) == 3 and len(text) < 400
    assert "J=11.75" in text and "nit=42" in text and "nfev=50" in text and "3 outer loop(s)," in text
    assert "x0 (1000,)" in text and "p (113,)" in text and "success=True" in text
    assert "999" not in text  # no array values


def test_a_two_scale_truth_provides_the_missing_term_as_its_unresolved_tendency():
    config = {
        **{key: CONFIG[key] for key in ("seed", "observations", "background", "assimilation")},
        "model": {"type": "hybrid", "physics": {**L96, "forcing": 10.0}, "correction": CONFIG["model"]["correction"]},
        "truth": {"model": {"type": "lorenz96_two_scale", "n_slow": 8, "n_fast_per_slow": 4, "forcing": 10.0, "dt": 0.005},
                  "substeps": 10, "state_slice": [0, 8], "spinup_steps": 50},
        "window": {"steps": 3, "cycles": 2},
    }
    plan = Plan.from_config(resolve_config(yaml.safe_load(yaml.safe_dump(config))))
    ds = execute(plan)
    truth_model = plan.truth["model"]
    gap = CORRECTION_SPACING * plan.config["truth"]["substeps"]
    full = forecast(truth_model, plan.truth["last_full_state"], plan.truth["model_params"], gap)[-1]  # the first sample
    np.testing.assert_allclose(ds["correction_state"].values[0], full[:8], rtol=1e-12)
    # dX/dt of the two-scale model minus the one-scale Lorenz-96 tendency of X (F = 10)
    X = full[:8]
    one_scale = (np.roll(X, -1) - np.roll(X, 2)) * np.roll(X, 1) - X + 10.0
    missing = truth_model.tendency.evaluate(full, plan.truth["model_params"])[:8] - one_scale
    np.testing.assert_allclose(ds["correction_truth"].values[0], missing, rtol=1e-10, atol=1e-12)
    assert np.abs(missing).max() > 0.1
