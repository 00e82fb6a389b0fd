"""What the figures a paper would use draw: legends off the data, titles inside the figure,
per-parameter std bands, time ranges, window starts and burn-in, observation space, sweeps."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from matplotlib.collections import PolyCollection
from test_figures import band, line
from test_plotting import synthetic_result

from fourdvar.app import cli
from fourdvar.app.plotting import (
    FIGURES, POSTERIOR_BAND, TimeRange, TimeRangeError, plot_observations, plot_params, plot_rmse, plot_sweep, plot_timeseries,
    select_time_range,
)

LONG_TITLE = "Lorenz-96 sakov2008 (DAPPER): hybrid EDA-4D-Var, 20 members, 4-interval windows shifted by 2, against static B"


def drawn(fig):
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def inside(extent, fig) -> bool:
    width, height = fig.bbox.width, fig.bbox.height
    return extent.x0 >= -0.5 and extent.y0 >= -0.5 and extent.x1 <= width + 0.5 and extent.y1 <= height + 0.5


def paper_result(n_cycles=8, n_params=2) -> xr.Dataset:
    """The synthetic result with everything the paper figures read: departures, an ensemble,
    per-parameter stds and names, a burn-in and a long title."""
    ds = synthetic_result(n_cycles=n_cycles, n_params=n_params, n=12)
    rng = np.random.default_rng(3)
    for kind in ("omb", "oma"):
        ds[f"{kind}_mean"] = ("cycle", rng.normal(0, 0.2, n_cycles))
        ds[f"{kind}_rms"] = ("cycle", np.abs(ds[f"{kind}_mean"].values) + rng.uniform(0.5, 1.5, n_cycles))
    ds["chi2"] = ("cycle", rng.uniform(0.7, 1.3, n_cycles))
    ds["spread_background"] = ("cycle", rng.uniform(0.2, 0.4, n_cycles))
    ds["rmse_ensemble_mean_background"] = ("cycle", rng.uniform(0.2, 0.4, n_cycles))
    ds["params_background_std"] = (("cycle", "param"), rng.uniform(0.2, 0.5, (n_cycles, n_params)))
    ds["params_analysis_std"] = (("cycle", "param"), rng.uniform(0.05, 0.15, (n_cycles, n_params)))
    if n_params <= 2:
        ds["param_name"] = ("param", np.array(["F", "alpha"][:n_params]))
    ds.attrs.update(title=LONG_TITLE, config="diagnostics: {burn_in_cycles: 2}\n")
    return ds


def test_legends_beside_the_data_and_titles_and_labels_inside_the_figure():
    ds = paper_result()
    figures = {name: fig for name, make in FIGURES.items() if (fig := make(ds)) is not None}
    assert set(figures) == {"cost", "rmse", "obs", "hovmoller", "timeseries", "params", "spread"}
    for name, fig in figures.items():
        renderer = drawn(fig)
        labels = [text for ax in fig.axes for text in (ax.title, ax.xaxis.label, ax.yaxis.label) if text.get_text()]
        for text in [fig._suptitle, *labels]:
            assert inside(text.get_window_extent(renderer), fig), (name, text.get_text())
        if name in ("cost", "hovmoller"):
            continue  # their legends sit in empty corners of inner-loop curves, or above an image
        legends = [ax.get_legend() for ax in fig.axes if ax.get_legend()] + fig.legends
        assert legends, name
        for legend in legends:
            box = legend.get_window_extent(renderer)
            assert inside(box, fig), name
            assert not any(box.overlaps(ax.get_window_extent(renderer)) for ax in fig.axes), name
    assert "\n" in figures["rmse"]._suptitle.get_text()  # the long title wrapped
    # negative control: the same title unwrapped runs off the figure
    fig = figures["rmse"]
    fig.suptitle(LONG_TITLE + ": RMSE against the truth")
    assert not inside(fig._suptitle.get_window_extent(drawn(fig)), fig)


def test_params_draw_each_parameters_prior_and_posterior_band_under_its_name():
    ds = paper_result(n_params=2)
    fig = plot_params(ds)
    assert [ax.get_title() for ax in fig.axes] == ["Estimate of F (truth " + f"{ds['params_truth'].values[0]:.3g})",
                                                   "Estimate of alpha (truth " + f"{ds['params_truth'].values[1]:.3g})"]
    for i, ax in enumerate(fig.axes):
        bands = [c for c in ax.collections if isinstance(c, PolyCollection) and not c.get_label().startswith("burn-in")]
        assert len(bands) == 2
        pb, pa = ds["params_background"].values[:, i], ds["params_analysis"].values[:, i]
        prior, posterior = ds["params_background_std"].values[:, i], ds["params_analysis_std"].values[:, i]
        _, lower, upper = band(ax, "background \u00b1 1 std of P (prior)")
        np.testing.assert_allclose([lower, upper], [pb - prior, pb + prior])
        _, lower, upper = band(ax, POSTERIOR_BAND)
        np.testing.assert_allclose([lower, upper], [pa - posterior, pa + posterior])
    assert [text.get_text() for text in fig.legends[0].get_texts()].count(POSTERIOR_BAND) == 1  # one legend for the panels


def test_time_range_in_cycles_and_in_model_time_sets_every_time_axis():
    ds = paper_result(n_cycles=8)  # L = 4 steps of dt = 0.05: window c spans [0.2 c, 0.2 c + 0.2]
    picked = select_time_range(ds, TimeRange.parse("2:4"))
    fig = plot_rmse(picked)
    x, _ = line(fig.axes[0], next(ln.get_label() for ln in fig.axes[0].get_lines() if ln.get_label().startswith("analysis, window start")))
    np.testing.assert_array_equal(x, [2, 3, 4])
    assert fig.axes[0].get_xlim() == (1.5, 4.5)
    for name in ("params", "obs", "spread"):
        assert all(ax.get_xlim() == (1.5, 4.5) for ax in FIGURES[name](picked).axes[:1]), name

    picked = select_time_range(ds, TimeRange.parse("time=0.3:0.7"))
    np.testing.assert_array_equal(picked["cycle"].values, [1, 2, 3])
    assert all(ax.get_xlim() == (0.3, 0.7) for ax in plot_timeseries(picked).axes)
    assert plot_rmse(picked).axes[0].get_xlim() == (0.5, 3.5)
    with pytest.raises(TimeRangeError, match="--time-range: no window in cycles 9-12 .the result has cycles 0-7."):
        select_time_range(ds, TimeRange.parse("cycles=9:12"))
    for text in ("3-4", "days=1:2", "4:2", "time=nan:1", "1.5:3"):
        with pytest.raises(TimeRangeError, match="^--time-range: expected"):
            TimeRange.parse(text)


def burn_in_span(ax) -> tuple[float, float]:
    (span,) = [patch for patch in ax.patches if patch.get_label() == "burn-in (2 cycles)"]
    return span.get_x(), span.get_x() + span.get_width()


def test_window_starts_and_the_burn_in_are_marked():
    ds = paper_result(n_cycles=6)  # burn-in 2 cycles, windows of 4 steps, dt 0.05
    ax = plot_timeseries(ds).axes[0]
    starts = [ln.get_xdata()[0] for ln in ax.get_lines() if ln.get_linestyle() == "-" and len(set(ln.get_xdata())) == 1]
    np.testing.assert_allclose(starts, 0.2 * np.arange(1, 6))
    assert [ln.get_label() for ln in ax.get_lines()].count("window start") == 1
    assert burn_in_span(ax) == pytest.approx((0.0, 0.4))  # cycles 0 and 1, in model time
    assert burn_in_span(plot_rmse(ds).axes[0]) == (-0.5, 1.5)  # cycles 0 and 1 on a per-cycle axis
    assert not [p for p in plot_rmse(select_time_range(ds, TimeRange.parse("2:5"))).axes[0].patches if p.get_label().startswith("burn-in")]


def test_observation_space_draws_departures_with_their_std_and_chi2_against_one():
    ds = paper_result()
    left, right = plot_observations(ds).axes[:2]
    for kind, what in (("omb", "O\u2212B"), ("oma", "O\u2212A")):
        mean, rms = ds[f"{kind}_mean"].values, ds[f"{kind}_rms"].values
        std = np.sqrt(rms**2 - mean**2)
        _, lower, upper = band(left, f"{what} mean \u00b1 1 std")
        np.testing.assert_allclose([lower, upper], [mean - std, mean + std])
        (label,) = [ln.get_label() for ln in left.get_lines() if ln.get_label().startswith(f"{what} mean (std")]
        np.testing.assert_array_equal(line(left, label)[1], mean)
    (chi2,) = [ln for ln in right.get_lines() if ln.get_label().startswith("2 J_min / m")]
    np.testing.assert_array_equal(chi2.get_ydata(), ds["chi2"].values)
    assert list(line(right, "expected: 1")[1]) == [1.0, 1.0]
    assert plot_observations(ds.drop_vars(["omb_mean"])) is None


def sweep_summary(with_other_key: bool = False) -> xr.Dataset:
    """A summary.nc as ``fourdvar sweep`` writes it: headlines over (setting[, inflation], seed)."""
    keys = ["background.state.error_std", *(["ensemble.inflation"] if with_other_key else []), "seed"]
    coords = {"background.state.error_std": [0.1, 0.2, 0.4], "ensemble.inflation": [1.0, 1.1], "seed": [1, 2, 3]}
    coords = {key: coords[key] for key in keys}
    shape = tuple(len(v) for v in coords.values())
    rng = np.random.default_rng(5)
    data = {name: (keys, rng.uniform(0.2, 0.5, shape)) for name in ("rmse_analysis_last_half", "chi2_mean")}
    data["member_file"] = (keys, np.full(shape, "m.nc"))
    return xr.Dataset(data, coords=coords, attrs={"title": "sweep test", "sweep_keys": " ".join(keys), "members": int(np.prod(shape))})


def test_a_sweep_summary_draws_each_metric_against_the_setting_with_error_bars_over_seeds(tmp_path):
    ds = sweep_summary()
    fig = plot_sweep(ds)
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == ["rmse analysis last half", "chi2 mean"]
    for ax, name in zip(fig.axes, ("rmse_analysis_last_half", "chi2_mean")):
        (container,) = ax.containers
        values = ds[name].values
        np.testing.assert_array_equal(container.lines[0].get_xdata(), [0.1, 0.2, 0.4])
        np.testing.assert_allclose(container.lines[0].get_ydata(), values.mean(axis=1))
        segments = np.array(container.lines[2][0].get_segments())  # one vertical bar per setting
        np.testing.assert_allclose(segments[:, 0, 1], values.mean(axis=1) - values.std(axis=1, ddof=1))
        np.testing.assert_allclose(segments[:, 1, 1], values.mean(axis=1) + values.std(axis=1, ddof=1))
    two = plot_sweep(sweep_summary(with_other_key=True))
    assert len(two.axes[0].containers) == 2
    assert [t.get_text() for t in two.legends[0].get_texts()] == ["ensemble.inflation = 1.0", "ensemble.inflation = 1.1"]
    ds.to_netcdf(tmp_path / "summary.nc")
    assert cli.main(["plot", str(tmp_path / "summary.nc"), "--output", str(tmp_path / "figs")]) == 0
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["sweep.png"]
    with pytest.raises(TimeRangeError, match="^--time-range: the file has no cycles"):
        select_time_range(ds, TimeRange.parse("1:2"))
    assert plot_sweep(paper_result()) is None


def test_plot_command_time_range_and_its_one_line_errors(tmp_path, capsys):
    result = tmp_path / "result.nc"
    synthetic_result(n=3, params=False).drop_vars(["J", "gradient_norm"]).to_netcdf(result)
    assert cli.main(["plot", str(result), "--output", str(tmp_path / "figs"), "--time-range", "time=0.2:0.6"]) == 0
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["rmse.png", "timeseries.png"]
    capsys.readouterr()
    for value, message in (("20:30", "--time-range: no window in cycles 20-30"), ("x", "--time-range: expected START:END")):
        assert cli.main(["plot", str(result), "--output", str(tmp_path / value), "--time-range", value]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err
        assert not (tmp_path / value).exists()  # nothing written, no directory left


def test_a_network_gets_the_median_and_quartiles_of_its_prior_and_posterior_std():
    ds = paper_result(n_params=30)
    ax = plot_params(ds).axes[-1]
    assert ax.get_title() == "Uncertainty of the parameters"
    for name, what in (("params_background_std", "P (prior)"), ("params_analysis_std", "P^a (posterior)")):
        std = ds[name].values
        np.testing.assert_allclose(line(ax, f"std of {what}, median")[1], np.median(std, axis=1))
        _, low, high = band(ax, f"std of {what}, 25\u201375 %")
        np.testing.assert_allclose([low, high], np.percentile(std, [25, 75], axis=1))
    assert len(plot_params(ds.drop_vars(["params_background_std", "params_analysis_std"])).axes) == 4  # without them: no such panel
