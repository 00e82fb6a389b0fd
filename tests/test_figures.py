"""What the result figures draw: the lines, bands and values, not only that a file exists."""

from __future__ import annotations

import numpy as np
from matplotlib.collections import PolyCollection
from matplotlib.patches import Rectangle
from test_plotting import synthetic_result

from fourdvar.app.plotting import MAX_LINE_STATE, plot_hovmoller, plot_params, plot_results, plot_rmse, plot_timeseries


def band(ax, label):
    """(x, lower, upper) of the fill_between band labelled ``label``."""
    (poly,) = [c for c in ax.collections if isinstance(c, PolyCollection) and c.get_label() == label]
    vertices = poly.get_paths()[0].vertices
    n = (len(vertices) - 3) // 2  # fill_between: a start point, the lower edge, back along the upper one, closed
    lower, upper = vertices[1 : n + 1], vertices[n + 2 : 2 * n + 2][::-1]
    return lower[:, 0], lower[:, 1], upper[:, 1]


def line(ax, label):
    (found,) = [ln for ln in ax.get_lines() if ln.get_label() == label]
    return found.get_xdata(), found.get_ydata()


def test_few_parameters_are_drawn_with_truth_and_the_std_band_of_the_background():
    ds = synthetic_result(n_params=2)
    ds["params_std"] = ("cycle", np.linspace(0.5, 0.1, ds.sizes["cycle"]))
    fig = plot_params(ds)
    for i, ax in enumerate(fig.axes):
        x, y = line(ax, "analysis")
        np.testing.assert_array_equal(y, ds["params_analysis"].values[:, i])
        cycles, lower, upper = band(ax, "background \u00b1 mean std of P")
        pb = ds["params_background"].values[:, i]
        np.testing.assert_allclose(lower, pb - ds["params_std"].values)
        np.testing.assert_allclose(upper, pb + ds["params_std"].values)
        truth = [ln for ln in ax.get_lines() if ln.get_label().startswith("truth")]
        assert truth and np.all(truth[0].get_ydata() == ds["params_truth"].values[i])
        ticks = [t for t in ax.get_xticks() if cycles[0] <= t <= cycles[-1]]
        assert np.all(np.equal(ticks, np.round(ticks)))  # whole cycles only


def test_a_network_gets_a_weights_summary_not_only_a_norm():
    ds = synthetic_result(n_params=113, truth=False)
    fig = plot_params(ds)
    spread, histogram = fig.axes[0], fig.axes[1]
    pa = ds["params_analysis"].values
    np.testing.assert_allclose(line(spread, "median")[1], np.median(pa, axis=1))
    _, p5, p95 = band(spread, "5\u201395 %")
    np.testing.assert_allclose(p5, np.percentile(pa, 5, axis=1))
    np.testing.assert_allclose(p95, np.percentile(pa, 95, axis=1))
    bars = [patch for patch in histogram.patches if isinstance(patch, Rectangle)]
    assert sum(bar.get_height() for bar in bars) == 113  # the first background's histogram counts every weight
    assert "113" in spread.get_title()


def test_a_small_state_is_drawn_as_lines_with_its_observations():
    ds = synthetic_result(n=3, params=False)
    ds["obs_operator"] = ("obs", np.array(["identity"] * ds.sizes["obs"]))
    ds["obs_index"] = ("obs", ds["obs_index"].values % 3)
    assert plot_hovmoller(ds) is None  # no Hovmoeller image for 3 variables
    fig = plot_timeseries(ds)
    assert len(fig.axes) == 3 and not any(ax.images for ax in fig.axes)
    L = int(ds.attrs["window_steps"])
    for i, ax in enumerate(fig.axes):
        t, y = line(ax, "truth")
        np.testing.assert_allclose(t, np.arange(ds.sizes["cycle"] * L) * ds.attrs["dt"])
        np.testing.assert_array_equal(y, ds["truth"].values[:, :L, i].reshape(-1))
        steps, values = line(ax, "observations")
        mine = (ds["obs_index"].values == i) & (ds["obs_step"].values < ds.sizes["cycle"] * L)
        np.testing.assert_allclose(np.sort(values), np.sort(ds["obs_value"].values[mine]))
        assert ax.get_ylabel() == f"x[{i}]"


def test_a_large_state_shows_three_variables_and_keeps_its_hovmoller():
    ds = synthetic_result(n=MAX_LINE_STATE + 5, params=False)
    assert plot_hovmoller(ds) is not None
    fig = plot_timeseries(ds)
    assert [ax.get_ylabel() for ax in fig.axes] == ["x[0]", "x[4]", "x[9]"]
    assert "3 of 10 state variables" in fig._suptitle.get_text()


def test_observations_of_a_nonlinear_operator_are_not_drawn_as_state_values():
    ds = synthetic_result(n=3, params=False)
    ds["obs_operator"] = ("obs", np.array(["square"] * ds.sizes["obs"]))
    fig = plot_timeseries(ds)
    assert not any(ln.get_label() == "observations" for ax in fig.axes for ln in ax.get_lines())


def test_log_axes_spanning_less_than_two_decades_label_their_ticks():
    from fourdvar.app.plotting import _new_figure, _plain_log_labels

    fig = _new_figure(4, 3)
    ax = fig.subplots()
    ax.semilogy([0, 1, 2], [1200.0, 3000.0, 9000.0])
    _plain_log_labels(ax)
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    lo, hi = ax.get_ylim()
    shown = [float(text) for text in labels if lo <= float(text) <= hi]
    assert len(shown) >= 2 and set(shown) <= {1000.0, 2000.0, 5000.0, 10000.0}


def test_plot_results_writes_the_time_series(tmp_path):
    paths = plot_results(synthetic_result(n=3), tmp_path)
    assert [p.name for p in paths] == ["cost.png", "rmse.png", "timeseries.png", "params.png"]


def test_the_gallery_shows_figures_plot_writes_and_only_existing_files():
    import re
    import sys
    from pathlib import Path

    from fourdvar.app.plotting import FIGURES, SWEEP_FIGURES

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docs"))
    from make_gallery import CASES

    docs = Path(__file__).resolve().parents[1] / "docs"
    images = re.findall(r"!\[[^\]]*\]\((gallery/[^)]+)\)", (docs / "gallery.md").read_text())
    assert images and sorted(images) == sorted(f"gallery/{p.name}" for p in (docs / "gallery").glob("*.png"))
    assert sorted(images) == sorted(f"gallery/{name}_{stem}.png" for name, case in CASES.items() for stem in case.figures)
    assert all(stem in {**FIGURES, **SWEEP_FIGURES} for case in CASES.values() for stem in case.figures)
    assert "gallery/small_state_timeseries.png" in images and "gallery/forcing_params.png" in images
    assert "gallery/sweep_sweep.png" in images and "gallery/forcing_obs.png" in images
    assert sum((docs / image).stat().st_size for image in images) < 2_000_000  # few images, small in bytes


def test_an_analysis_alone_gets_no_time_series():
    ds = synthetic_result(n=3, params=False, truth=False).drop_vars("background")
    assert plot_timeseries(ds) is None
