"""The result-file figures: written, non-trivial PNGs, and missing data skipped."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from fourdvar.app.plotting import plot_cost, plot_hovmoller, plot_params, plot_results, plot_rmse

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ALL = {"cost.png", "rmse.png", "hovmoller.png", "timeseries.png", "params.png"}


def synthetic_result(n_cycles=6, L=4, n=10, n_params=1, truth=True, params=True, outer=2, max_it=8, n_obs=40, seed=0):
    """A small, well-formed result dataset like the experiment runner writes."""
    rng = np.random.default_rng(seed)
    t = (np.arange(n_cycles)[:, None] * L + np.arange(L + 1)[None, :]) * 0.05  # (cycle, step)
    xs = np.arange(n)
    true = 8 + 3 * np.sin(2 * np.pi * (xs[None, None, :] / n - 0.3 * t[:, :, None]))
    decay = np.exp(-0.4 * np.arange(n_cycles))[:, None, None]
    background = true + (0.5 + 2 * decay) * rng.standard_normal(true.shape)
    analysis = true + (0.2 + 1 * decay) * rng.standard_normal(true.shape)

    J = np.full((n_cycles, outer, max_it + 1), np.nan)
    grad = np.full_like(J, np.nan)
    inner = np.zeros((n_cycles, outer), dtype=int)
    J_outer = np.zeros((n_cycles, outer))
    start = 200.0 * (1 + 5 * decay[:, 0, 0])
    for c in range(n_cycles):
        level = start[c]
        for o in range(outer):
            k = int(rng.integers(3, max_it + 1))
            inner[c, o] = k
            J_outer[c, o] = level
            J[c, o, : k + 1] = level * (0.3 + 0.7 * np.exp(-np.arange(k + 1)))
            grad[c, o, : k + 1] = 50 * np.exp(-1.5 * np.arange(k + 1))
            level = J[c, o, k] * 1.05
    Jb, Jo = 0.3 * J, 0.6 * J
    Jp = 0.1 * J

    dims3, dimsJ = ("cycle", "step", "x"), ("cycle", "outer", "iteration")
    data = {
        "background": (dims3, background),
        "analysis": (dims3, analysis),
        "J": (dimsJ, J), "Jb": (dimsJ, Jb), "Jp": (dimsJ, Jp), "Jo": (dimsJ, Jo),
        "gradient_norm": (dimsJ, grad),
        "J_outer": (("cycle", "outer"), J_outer),
        "J_final": ("cycle", 0.9 * np.nanmin(J, axis=(1, 2))),
        "inner_iterations": (("cycle", "outer"), inner),
        "obs_value": ("obs", rng.normal(8, 3, n_obs)),
        "obs_step": ("obs", rng.integers(1, n_cycles * L + 1, n_obs)),
        "obs_index": ("obs", rng.integers(0, n, n_obs)),
        "obs_error_std": ("obs", np.full(n_obs, 0.5)),
    }
    if truth:
        err = lambda f: np.sqrt(np.mean((f - true) ** 2, axis=-1))  # noqa: E731
        data["truth"] = (dims3, true)
        data["rmse_background"] = ("cycle", err(background)[:, 0])
        data["rmse_analysis"] = ("cycle", err(analysis)[:, 0])
        data["rmse_background_window"] = ("cycle", err(background)[:, :L].mean(axis=1))
        data["rmse_analysis_window"] = ("cycle", err(analysis)[:, :L].mean(axis=1))
    if params:
        p_true = rng.normal(1.0, 0.5, n_params)
        pa = p_true + (0.1 + decay[:, 0]) * rng.standard_normal((n_cycles, n_params))
        pb = np.vstack([p_true + 1.5, pa[:-1]])
        data["params_analysis"] = (("cycle", "param"), pa)
        data["params_background"] = (("cycle", "param"), pb)
        if truth:
            data["params_truth"] = ("param", p_true)
    attrs = {"window_steps": L, "dt": 0.05, "model": "lorenz96", "title": "synthetic test", "completed_cycles": n_cycles}
    return xr.Dataset(data, attrs=attrs)


def assert_png(path):
    assert path.exists(), path
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert path.stat().st_size > 5_000


def written(tmp_path, ds):
    file = tmp_path / "result.nc"
    ds.to_netcdf(file)
    paths = plot_results(file, tmp_path / "figs")
    for path in paths:
        assert_png(path)
    names = {p.name for p in paths}
    assert names == {p.name for p in (tmp_path / "figs").iterdir()}
    return names


def test_full_result_writes_all_figures(tmp_path):
    assert written(tmp_path, synthetic_result()) == ALL


def test_network_params_without_truth(tmp_path):
    ds = synthetic_result(n_params=30, truth=False)
    assert written(tmp_path, ds) == ALL - {"rmse.png"}


def test_no_param_dimension(tmp_path):
    ds = synthetic_result(params=False)
    assert "param" not in ds.dims
    assert written(tmp_path, ds) == ALL - {"params.png"}


@pytest.mark.parametrize("n_params", [3, 30])
def test_single_cycle_and_several_params(n_params):
    ds = synthetic_result(n_cycles=1, n_params=n_params)
    for make in (plot_cost, plot_rmse, plot_hovmoller):
        assert make(ds).axes
    fig = plot_params(ds)
    assert len(fig.axes) == (n_params if n_params <= 4 else 4)
    if n_params <= 4:
        fig.canvas.draw()  # lays out and renders without writing a file


def test_minimal_dataset_and_empty_param_dim():
    """No dt, no title, zero-length param dim, NaN cycles, no optional cost terms: no crash."""
    ds = synthetic_result(params=False).drop_vars(["gradient_norm", "J_final", "inner_iterations"])
    ds = ds.assign(params_analysis=(("cycle", "param"), np.empty((ds.sizes["cycle"], 0))))
    ds.attrs = {"window_steps": 4}
    ds["analysis"][-1] = np.nan  # an unfinished last cycle
    ds["J"][-1] = np.nan
    assert plot_params(ds) is None
    cost = plot_cost(ds)
    assert len(cost.axes) == 1 + 1  # J, and cost per cycle from J_outer; no gradient panel
    assert plot_rmse(ds) is not None
    hovmoller = plot_hovmoller(ds)
    assert hovmoller.axes[2].get_xlabel() == "time (model steps)"
    cost.canvas.draw()


def test_long_run_is_subsampled_in_time():
    fig = plot_hovmoller(synthetic_result(n_cycles=1100, L=4, n=6, params=False))
    image = fig.axes[0].images[0]
    assert image.get_array().shape[1] <= 4000
    assert "1 step in 2 shown" in fig._suptitle.get_text()


@pytest.mark.parametrize("make", [plot_cost, plot_rmse, plot_hovmoller, plot_params])
def test_figure_functions_skip_missing_data(make):
    empty = xr.Dataset(attrs={"window_steps": 4})
    assert make(empty) is None


def test_rmse_figure_draws_the_declared_comparison_runs_only():
    """Runs declared under ``compare:``: one line each; rmse_analysis_end, ..._end_strong and
    ..._window_strong are variables of runs, not runs (no "end run", "end_strong run")."""
    ds = synthetic_result()
    base = plot_rmse(ds)
    n_lines = len(base.axes[0].get_lines())
    ds.attrs["config"] = "compare:\n- {name: physics}\n- {name: strong}\n"
    for name in ("physics", "strong", "end", "end_strong", "window_strong"):
        ds[f"rmse_analysis_{name}"] = ds["rmse_analysis"] * 2
    fig = plot_rmse(ds)
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert len(labels) == n_lines + 2
    runs = sorted(label.split(", ")[1].split(" (")[0] for label in labels if " run (" in label)
    assert runs == ["physics run", "strong run"]
    del ds.attrs["config"]  # without the configuration: the runs the file names in model_<name> attributes
    ds.attrs["model_physics"] = "Lorenz96(...)"
    labels = [line.get_label() for line in plot_rmse(ds).axes[0].get_lines()]
    assert [label for label in labels if " run (" in label] == [next(label for label in labels if "physics run" in label)]


def test_overlapping_windows_are_joined_at_their_shift():
    """window_shift 2 < L = 4: time series take steps 0, 1 of each window (the next one starts at 2)."""
    from fourdvar.app.plotting import _continuous

    ds = synthetic_result(n_cycles=5, L=4, n=40)
    cycles = np.arange(5)
    assert _continuous(ds, "analysis", cycles).shape == (20, 40)  # end to end: steps 0..3 of each
    ds.attrs["window_shift"] = 2
    joined = _continuous(ds, "analysis", cycles)
    np.testing.assert_array_equal(joined, ds["analysis"].values[:, :2].reshape(10, 40))
    image = plot_hovmoller(ds).axes[0].images[0]
    assert image.get_extent()[:2] == pytest.approx([-0.025, 9.5 * 0.05])  # 10 steps of dt = 0.05
