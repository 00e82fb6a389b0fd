"""Figures for a cycled-experiment result file (``fourdvar plot RESULT.nc``).

::

    from fourdvar.app.plotting import TimeRange, plot_results
    paths = plot_results("result.nc", "figs")   # -> [figs/cost.png, figs/rmse.png, ...]
    paths = plot_results("result.nc", "figs", TimeRange.parse("time=5:10"))   # model times 5 to 10 only

Each ``plot_*`` function takes the result :class:`xarray.Dataset` and returns a
:class:`matplotlib.figure.Figure`, or ``None`` when the dataset lacks what that
figure needs (no truth, no parameters, ...). :func:`plot_results` saves the
figures that exist as PNG files and returns their paths.  A state of
``MAX_LINE_STATE`` variables or fewer is drawn as lines (``timeseries.png``), not as
a Hovmöller image.  Per-cycle axes shade the burn-in (``diagnostics.burn_in_cycles``);
model-time axes mark the window starts too.  A sweep's ``summary.nc`` gets ``sweep.png``
(:func:`plot_sweep`).

The figures are built on :class:`matplotlib.figure.Figure` with an Agg canvas, so
importing this module never touches pyplot or the global backend.
"""

from __future__ import annotations

import functools
import math
import os
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import xarray as xr
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator

from .atomic import write_file_atomic
from .maps import plot_maps

__all__ = [
    "FIGURES",
    "load_results",
    "plot_correction",
    "plot_cost",
    "plot_forecast",
    "plot_hovmoller",
    "plot_model_error",
    "plot_observations",
    "plot_params",
    "plot_results",
    "plot_rmse",
    "plot_spread",
    "plot_sweep",
    "plot_timeseries",
    "select_time_range",
    "TimeRange",
    "TimeRangeError",
]

DPI = 110
MAX_TIME_POINTS = 4000  # Hovmöller: subsample in time beyond this many columns
MAX_INDIVIDUAL_PARAMS = 4  # up to this many parameters are plotted one by one, beyond it as a weights summary
MAX_LINE_STATE = 5  # states of up to this many variables are drawn as lines, not as a Hovmöller image
TIMESERIES_VARIABLES = 3  # variables shown as time series for a larger state
MAX_WINDOW_LINES = 60  # window starts are drawn on time axes showing up to this many windows

_CYCLE_COLOURS = ["tab:blue", "tab:orange", "tab:green"]
_BACKGROUND_COLOUR = "tab:orange"
_ANALYSIS_COLOUR = "tab:blue"
_RUN_COLOURS = ["tab:red", "tab:green", "tab:purple", "tab:brown"]


# --------------------------------------------------------------------------- helpers


def load_results(dataset_or_path) -> xr.Dataset:
    """The result dataset, loaded into memory (a path is opened and closed again)."""
    if isinstance(dataset_or_path, xr.Dataset):
        return dataset_or_path
    with xr.open_dataset(os.fspath(dataset_or_path)) as ds:
        return ds.load()


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _has(ds: xr.Dataset, *names: str) -> bool:
    return all(name in ds.variables for name in names)


def _values(ds: xr.Dataset, name: str) -> np.ndarray:
    return np.asarray(ds[name].values, dtype=float)


def _heading(ds: xr.Dataset, what: str) -> str:
    """``"<title or model>: <what>"``."""
    label = ds.attrs.get("title") or ds.attrs.get("model")
    return f"{label}: {what}" if label else what[:1].upper() + what[1:]


#: width of an average character in ems, for wrapping titles to the space they have
_CHARACTER_EMS = 0.6


def _wrapped(text: str, width_inches: float, fontsize: float) -> str:
    """``text`` broken into lines of at most the characters ``width_inches`` holds at ``fontsize`` points."""
    return textwrap.fill(text, max(16, int(width_inches * 72 / (_CHARACTER_EMS * fontsize))))


def _suptitle(fig: Figure, ds: xr.Dataset, what: str, fontsize: float = 12.0) -> None:
    """The figure's heading (:func:`_heading`), wrapped to the figure's width."""
    fig.suptitle(_wrapped(_heading(ds, what), 0.95 * fig.get_figwidth(), fontsize), fontsize=fontsize)


def _title(ax, text: str, fontsize: float = 10.0) -> None:
    """An axes title wrapped to the axes' width."""
    ax.set_title(_wrapped(text, ax.get_position().width * ax.figure.get_figwidth(), fontsize), fontsize=fontsize)


def _legend_outside(ax, **options) -> None:
    """The axes' legend to the right of its frame, off the data."""
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, **options)


def _n_cycles(ds: xr.Dataset) -> int:
    return int(ds.sizes.get("cycle", 0))


def _cycle_axis(ds: xr.Dataset) -> np.ndarray:
    """The cycle numbers (the ``cycle`` coordinate: a time range keeps its cycles' numbers)."""
    if "cycle" in ds.coords:
        return np.asarray(ds["cycle"].values)
    return np.arange(_n_cycles(ds))


def _config(ds: xr.Dataset) -> dict:
    """The resolved configuration stored in the result (empty when absent or unreadable)."""
    try:
        config = yaml.safe_load(str(ds.attrs.get("config", "")))
    except yaml.YAMLError:
        return {}
    return config if isinstance(config, dict) else {}


@functools.lru_cache(maxsize=8)
def _typed(text: str):
    """The :class:`~fourdvar.app.experiment.Experiment` of a stored configuration, or ``None``
    when it is not a whole valid one (a file of another version, a hand-made dataset)."""
    from .config import ConfigError, resolve_config
    from .experiment import experiment_of

    try:
        config = yaml.safe_load(text)
        return experiment_of(resolve_config(config)) if isinstance(config, dict) else None
    except (yaml.YAMLError, ConfigError):
        return None


def _experiment(ds: xr.Dataset):
    return _typed(str(ds.attrs.get("config", "")))


def _burn_in(ds: xr.Dataset) -> int:
    """``diagnostics.burn_in_cycles`` of the run (0 without)."""
    experiment = _experiment(ds)
    if experiment is not None:
        return experiment.diagnostics.burn_in_cycles
    value = (_config(ds).get("diagnostics") or {}).get("burn_in_cycles", 0)  # a partial configuration
    return int(value) if isinstance(value, int) and value > 0 else 0


def _finish_cycle_axis(ax, ds: xr.Dataset) -> None:
    """A per-cycle x axis: its label, whole-cycle ticks, the burn-in shaded, the time range's limits."""
    ax.set_xlabel("cycle (assimilation window)")
    _cycle_ticks(ax)
    cycles = _cycle_axis(ds)
    burn_in = _burn_in(ds)
    if cycles.size and burn_in > cycles[0]:
        ax.axvspan(cycles[0] - 0.5, min(burn_in, cycles[-1] + 1) - 0.5, color="grey", alpha=0.15, lw=0, label=f"burn-in ({burn_in} cycles)")
    if "plot_cycles" in ds.attrs:
        first, last = ds.attrs["plot_cycles"]
        ax.set_xlim(first - 0.5, last + 0.5)


def _finish_time_axis(ax, ds: xr.Dataset, cycles: np.ndarray, boundaries: bool = True) -> None:
    """A model-time x axis over the windows ``cycles``: window starts as thin lines (up to
    ``MAX_WINDOW_LINES`` of them), the burn-in shaded, the time range's limits."""
    dt, _ = _time_unit(ds)
    S = _window_shift(ds)
    if boundaries and 1 < cycles.size <= MAX_WINDOW_LINES:
        for k, c in enumerate(cycles[1:]):
            ax.axvline(c * S * dt, color="black", lw=0.5, alpha=0.35, label="window start" if k == 0 else None)
    burn_in = _burn_in(ds)
    if cycles.size and burn_in > cycles[0]:
        ax.axvspan(cycles[0] * S * dt, min(burn_in, cycles[-1] + 1) * S * dt, color="grey", alpha=0.15, lw=0,
                   label=f"burn-in ({burn_in} cycles)")
    if "plot_time" in ds.attrs:
        ax.set_xlim(*ds.attrs["plot_time"])


# --------------------------------------------------------------------------- time range


class TimeRangeError(ValueError):
    """A time range that is malformed or holds no window; ``str()`` is one line naming ``--time-range``."""


@dataclass(frozen=True)
class TimeRange:
    """The cycles (``unit = "cycles"``, both ends included) or the model time (``"time"``)
    the time-axis figures show: ``START:END``, ``cycles=START:END`` or ``time=START:END``."""

    unit: str
    start: float
    end: float

    @classmethod
    def parse(cls, text: str) -> "TimeRange":
        """The range ``text`` names; a :class:`TimeRangeError` saying what was expected otherwise."""
        unit, _, span = text.rpartition("=")
        unit = unit.strip() or "cycles"
        expected = f"--time-range: expected START:END (cycles), cycles=START:END or time=START:END, got {text[:40]!r}"
        parts = span.split(":")
        if unit not in ("cycles", "time") or len(parts) != 2:
            raise TimeRangeError(expected)
        try:
            start, end = (int(v) if unit == "cycles" else float(v) for v in parts)
        except ValueError:
            raise TimeRangeError(expected) from None
        if not (math.isfinite(start) and math.isfinite(end) and start <= end):
            raise TimeRangeError(f"--time-range: expected START <= END, both finite, got {text[:40]!r}")
        return cls(unit, start, end)


def select_time_range(ds: xr.Dataset, time_range: TimeRange | None) -> xr.Dataset:
    """The cycles of ``ds`` whose windows meet ``time_range`` (``ds`` itself for ``None``), with the
    limits the figures' time axes take (attributes ``plot_cycles``, and ``plot_time`` for model time);
    a :class:`TimeRangeError` when none does or ``ds`` has no cycles."""
    if time_range is None:
        return ds
    if "sweep_keys" in ds.attrs or "cycle" not in ds.dims:
        raise TimeRangeError("--time-range: the file has no cycles (a sweep summary has no time axis)")
    cycles = _cycle_axis(ds)
    if time_range.unit == "cycles":
        keep = (cycles >= time_range.start) & (cycles <= time_range.end)
    else:
        dt, _ = _time_unit(ds)
        start = cycles * _window_shift(ds) * dt
        keep = (start <= time_range.end) & (start + _window_steps(ds) * dt >= time_range.start)
    if not keep.any():
        where = f"cycles {time_range.start}-{time_range.end}" if time_range.unit == "cycles" else f"model time {time_range.start:g}-{time_range.end:g}"
        raise TimeRangeError(f"--time-range: no window in {where} (the result has cycles {cycles[0]}-{cycles[-1]})")
    selected = ds.assign_coords(cycle=cycles).isel(cycle=np.flatnonzero(keep))
    selected.attrs["plot_cycles"] = (int(cycles[keep][0]), int(cycles[keep][-1]))
    if time_range.unit == "time":
        selected.attrs["plot_time"] = (time_range.start, time_range.end)
    return selected


def _window_steps(ds: xr.Dataset) -> int:
    """L: the attribute if present, else the ``step`` dimension minus one."""
    n_step = int(ds.sizes.get("step", 0))
    L = ds.attrs.get("window_steps")
    if L is None or int(L) <= 0:
        L = n_step - 1
    return max(1, min(int(L), max(n_step, 1)))


def _window_shift(ds: xr.Dataset) -> int:
    """Steps from one window's start to the next: the ``window_shift`` attribute (overlapping
    windows), else L."""
    L = _window_steps(ds)
    shift = ds.attrs.get("window_shift")
    return L if shift is None or not 0 < int(shift) <= L else int(shift)


def _time_unit(ds: xr.Dataset) -> tuple[float, str]:
    """(time per step, axis label): model time units when ``dt`` is known, else steps."""
    dt = ds.attrs.get("dt")
    try:
        dt = float(dt)
    except (TypeError, ValueError):
        dt = None
    if dt is None or not math.isfinite(dt) or dt <= 0:
        return 1.0, "time (model steps)"
    return dt, "time (model time units)"


def _positive(a: np.ndarray) -> np.ndarray:
    """``a`` with non-positive values masked (for log axes)."""
    a = np.array(a, dtype=float)
    a[~(a > 0)] = np.nan
    return a


def _finite(a: np.ndarray) -> bool:
    return bool(np.isfinite(a).any())


def _fmt(value: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    return f"{value:.3g}"


def _second_half_mean(values: np.ndarray) -> tuple[float, str]:
    """Mean over the second half of the cycles (NaNs ignored) and a label like ``"cycles 3-5"``."""
    n = len(values)
    start = n // 2
    tail = values[start:]
    tail = tail[np.isfinite(tail)]
    mean = float(tail.mean()) if tail.size else float("nan")
    return mean, f"cycles {start}\u2013{n - 1}" if n - 1 > start else f"cycle {start}"


def _plain_log_labels(ax) -> None:
    """On a log y axis spanning less than two decades (so one or no power of ten is
    labelled), label the ticks at 1, 2 and 5 times each power of ten as plain numbers."""
    if ax.get_yscale() != "log":
        return
    lo, hi = ax.get_ylim()
    if lo > 0 and hi / lo < 100:
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def _cycle_ticks(ax) -> None:
    """Ticks on whole cycles only."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _per_cycle_marker(n: int) -> dict:
    return {"marker": "o", "markersize": 3.5} if n <= 40 else {}


# --------------------------------------------------------------------------- cost


def _active_cycles(ds: xr.Dataset) -> list[int]:
    """Cycles with at least one finite inner-loop cost."""
    J = _values(ds, "J")
    J = J.reshape(J.shape[0], -1) if J.ndim > 1 else J[:, None]
    return [c for c in range(J.shape[0]) if np.isfinite(J[c]).any()]


def _shown_cycles(active: list[int]) -> list[int]:
    """First, middle and last of the active cycles (without repeats)."""
    if not active:
        return []
    picks = [active[0], active[len(active) // 2], active[-1]]
    return sorted(set(picks))


def _outer_segments(ds: xr.Dataset, name: str, cycle: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per outer loop: (cumulative inner iteration, values) of ``name`` for one cycle.

    Outer loop ``o`` starts where ``o-1`` ended, so the x axis counts inner iterations
    over the whole cycle. The number of iterations comes from ``inner_iterations`` when
    present, else from the non-NaN entries.
    """
    values = _values(ds, name)[cycle]
    if values.ndim == 1:
        values = values[None, :]
    counts = None
    if _has(ds, "inner_iterations"):
        counts = np.asarray(ds["inner_iterations"].values)[cycle]
        counts = np.atleast_1d(counts)
    segments = []
    offset = 0
    for o in range(values.shape[0]):
        row = values[o]
        valid = np.flatnonzero(np.isfinite(row))
        if valid.size == 0:
            continue
        n_it = int(valid[-1])
        if counts is not None and o < len(counts) and np.isfinite(counts[o]):
            n_it = max(0, min(int(counts[o]), row.size - 1))
        its = np.arange(n_it + 1)
        segments.append((offset + its, row[: n_it + 1]))
        offset += n_it
    return segments


def plot_cost(ds: xr.Dataset) -> Figure | None:
    """Inner-loop cost and gradient-norm reduction for the first, middle and last cycle.

    Left: quadratic cost J (log) against cumulative inner iteration; outer-loop starts
    are marked by dotted lines and the nonlinear cost ``J_outer`` by circles (and
    ``J_final`` by a star). Middle: gradient norm relative to the start of each outer
    loop. Right (with three or more cycles): nonlinear cost at the background and at
    the analysis per cycle.
    """
    if not _has(ds, "J") or "cycle" not in ds["J"].dims:
        return None
    active = _active_cycles(ds)
    if not active:
        return None
    shown = _shown_cycles(active)
    has_grad = _has(ds, "gradient_norm")
    per_cycle = _has(ds, "J_final") or _has(ds, "J_outer")
    per_cycle = per_cycle and len(active) >= 3
    n_panels = 1 + has_grad + per_cycle
    fig = _new_figure(5.0 * n_panels, 4.4)
    axes = list(np.atleast_1d(fig.subplots(1, n_panels)))
    ax_j = axes.pop(0)
    ax_g = axes.pop(0) if has_grad else None
    ax_c = axes.pop(0) if per_cycle else None

    J_outer = _values(ds, "J_outer") if _has(ds, "J_outer") else None
    J_final = _values(ds, "J_final") if _has(ds, "J_final") else None
    for k, c in enumerate(shown):
        colour = _CYCLE_COLOURS[k % len(_CYCLE_COLOURS)]
        segments = _outer_segments(ds, "J", c)
        for o, (its, vals) in enumerate(segments):
            ax_j.plot(its, _positive(vals), color=colour, lw=1.6, label=f"cycle {c}" if o == 0 else None)
            if o > 0:
                ax_j.axvline(its[0], color=colour, ls=":", lw=1.0, alpha=0.8)
            if J_outer is not None and o < J_outer.shape[1] and np.isfinite(J_outer[c, o]) and J_outer[c, o] > 0:
                ax_j.plot(its[0], J_outer[c, o], "o", mfc="white", mec=colour, mew=1.5, ms=7, zorder=3)
        if J_final is not None and segments and np.isfinite(J_final[c]) and J_final[c] > 0:
            ax_j.plot(segments[-1][0][-1], J_final[c], "*", color=colour, ms=11, mec="black", mew=0.5, zorder=3)
        if ax_g is not None:
            for o, (its, vals) in enumerate(_outer_segments(ds, "gradient_norm", c)):
                rel = vals / vals[0] if vals[0] > 0 else np.full_like(vals, np.nan)
                ax_g.plot(its, _positive(rel), color=colour, lw=1.6, label=f"cycle {c}" if o == 0 else None)
                if o > 0:
                    ax_g.axvline(its[0], color=colour, ls=":", lw=1.0, alpha=0.8)

    ax_j.set_yscale("log")
    ax_j.set_xlabel("inner iteration (cumulative over outer loops)")
    ax_j.set_ylabel("cost J")
    ax_j.set_title("Quadratic cost per inner iteration")
    handles, labels = ax_j.get_legend_handles_labels()
    if J_outer is not None:
        handles.append(Line2D([], [], ls="none", marker="o", mfc="white", mec="grey", mew=1.5, ms=7))
        labels.append("nonlinear J at outer-loop start")
    if J_final is not None:
        handles.append(Line2D([], [], ls="none", marker="*", color="grey", mec="black", mew=0.5, ms=11))
        labels.append("nonlinear J at analysis")
    handles.append(Line2D([], [], color="grey", ls=":", lw=1.0))
    labels.append("new outer loop")
    ax_j.legend(handles, labels, fontsize=8, loc="best")
    ax_j.grid(True, which="major", alpha=0.3)

    if ax_g is not None:
        ax_g.set_yscale("log")
        target = ds.attrs.get("gradient_reduction")
        if isinstance(target, (int, float, np.floating)) and 0 < float(target) < 1:
            ax_g.axhline(float(target), color="black", ls="--", lw=1.0, label=f"stopping threshold {float(target):.0e}")
        ax_g.set_xlabel("inner iteration (cumulative over outer loops)")
        ax_g.set_ylabel("|grad J| / |grad J| at outer-loop start")
        ax_g.set_title("Relative gradient norm")
        ax_g.legend(fontsize=8, loc="best")
        ax_g.grid(True, which="major", alpha=0.3)

    if ax_c is not None:
        cycles = _cycle_axis(ds)
        mk = _per_cycle_marker(len(cycles))
        if J_outer is not None:
            ax_c.plot(cycles, _positive(J_outer[:, 0]), color=_BACKGROUND_COLOUR, label="at background (1st outer loop)", **mk)
        if J_final is not None:
            ax_c.plot(cycles, _positive(J_final), color=_ANALYSIS_COLOUR, label="at analysis", **mk)
        ax_c.set_yscale("log")
        _finish_cycle_axis(ax_c, ds)
        ax_c.set_ylabel("nonlinear cost J")
        ax_c.set_title("Cost per cycle")
        ax_c.legend(fontsize=8, loc="best")
        ax_c.grid(True, which="major", alpha=0.3)

    for ax in fig.axes:
        _plain_log_labels(ax)
    _suptitle(fig, ds, "cost reduction")
    return fig


# --------------------------------------------------------------------------- rmse


def _rmse_from_fields(ds: xr.Dataset, name: str, window: bool) -> np.ndarray | None:
    """RMSE of ``name`` against ``truth`` per cycle (window start, or mean over steps 0..L-1)."""
    if not _has(ds, name, "truth"):
        return None
    err = _values(ds, name) - _values(ds, "truth")  # (cycle, step, x)
    per_step = np.sqrt(np.nanmean(err**2, axis=-1))  # (cycle, step)
    if not window:
        return per_step[:, 0]
    L = _window_steps(ds)
    return np.nanmean(per_step[:, :L], axis=1)


def _rmse(ds: xr.Dataset, kind: str, window: bool) -> np.ndarray | None:
    name = f"rmse_{kind}" + ("_window" if window else "")
    if _has(ds, name):
        values = _values(ds, name)
        return values if _finite(values) else None
    values = _rmse_from_fields(ds, kind, window)
    return values if values is not None and _finite(values) else None


def _comparison_names(ds: xr.Dataset) -> list[str]:
    """Names of the comparison runs the configuration declares (``compare:``), else those the
    result names in ``model_<name>`` attributes; only those with ``rmse_analysis_<name>``."""
    experiment = _experiment(ds)
    if experiment is not None:
        declared = [run.name for run in experiment.compare]
    else:  # a partial configuration
        declared = [entry.get("name") for entry in _config(ds).get("compare") or [] if isinstance(entry, dict)]
    if not declared:
        declared = [key.removeprefix("model_") for key in ds.attrs if key.startswith("model_")]
    return [name for name in declared if isinstance(name, str) and _has(ds, f"rmse_analysis_{name}")]


def plot_rmse(ds: xr.Dataset) -> Figure | None:
    """Background and analysis RMSE against the truth per cycle (``None`` without truth).

    Solid lines: at the window start; dashed: averaged over the window. Legend entries
    (beside the axes) give the mean over the second half of the cycles; the mean
    observation-error standard deviation is drawn as a grey reference line, the burn-in
    shaded.  The comparison runs the configuration declares are drawn as thin lines of
    their own.
    """
    curves = []
    for window in (False, True):
        for kind in ("background", "analysis"):
            values = _rmse(ds, kind, window)
            if values is not None:
                curves.append((kind, window, values))
    if not curves:
        return None

    fig = _new_figure(10.0, 4.6)
    ax = fig.subplots()
    cycles = _cycle_axis(ds)
    mk = _per_cycle_marker(len(cycles))
    for kind, window, values in curves:
        mean, span = _second_half_mean(values)
        where = "window mean" if window else "window start"
        ax.plot(
            cycles[: len(values)], values,
            color=_BACKGROUND_COLOUR if kind == "background" else _ANALYSIS_COLOUR,
            ls="--" if window else "-", lw=1.6 if not window else 1.3,
            label=f"{kind}, {where} (mean {span}: {_fmt(mean)})", **mk,
        )
    for colour, name in zip(_RUN_COLOURS, _comparison_names(ds)):
        values = _values(ds, f"rmse_analysis_{name}")
        mean, span = _second_half_mean(values)
        ax.plot(cycles[: len(values)], values, color=colour, lw=1.1, label=f"analysis, {name} run (mean {span}: {_fmt(mean)})")
        curves.append(("analysis", False, values))
    if _has(ds, "obs_error_std"):
        sigma = _values(ds, "obs_error_std")
        if _finite(sigma):
            sigma_mean = float(np.nanmean(sigma))
            ax.axhline(sigma_mean, color="grey", ls=":", lw=1.5, label=f"observation error std (mean {_fmt(sigma_mean)})")

    positive = np.concatenate([v[np.isfinite(v) & (v > 0)] for _, _, v in curves])
    if positive.size and positive.max() / positive.min() > 30:
        ax.set_yscale("log")
    else:
        ax.set_ylim(bottom=0)
    _plain_log_labels(ax)
    _finish_cycle_axis(ax, ds)
    ax.set_ylabel("RMSE against truth (state units)")
    _suptitle(fig, ds, "RMSE against the truth")
    _legend_outside(ax)
    ax.grid(True, alpha=0.3)
    return fig


# --------------------------------------------------------------------------- observation space


def _departure_std(ds: xr.Dataset, kind: str) -> np.ndarray:
    """Std over a window's observations of its departures: ``sqrt(rms^2 - mean^2)`` (``kind``: ``omb`` or ``oma``)."""
    return np.sqrt(np.maximum(_values(ds, f"{kind}_rms") ** 2 - _values(ds, f"{kind}_mean") ** 2, 0.0))


def plot_observations(ds: xr.Dataset) -> Figure | None:
    """Observation space per cycle (``None`` without the departures).

    Left: the mean over each window's observations of O-B (observation minus background
    forecast) and O-A (minus analysis forecast), each with its +-1 std band,
    ``std = sqrt(rms^2 - mean^2)``.  Right: ``chi2 = 2 J_min / m`` per window with its
    expected value 1 (B, R and the model consistent).
    """
    if not _has(ds, "omb_mean", "omb_rms", "oma_mean", "oma_rms") or not _finite(_values(ds, "omb_rms")):
        return None
    cycles = _cycle_axis(ds)
    mk = _per_cycle_marker(len(cycles))
    fig = _new_figure(14.0, 4.4)
    left, right = fig.subplots(1, 2)
    for kind, colour, what in (("omb", _BACKGROUND_COLOUR, "O\u2212B"), ("oma", _ANALYSIS_COLOUR, "O\u2212A")):
        mean, std = _values(ds, f"{kind}_mean"), _departure_std(ds, kind)
        left.fill_between(cycles, mean - std, mean + std, color=colour, alpha=0.2, lw=0, label=f"{what} mean \u00b1 1 std")
        average, span = _second_half_mean(std)
        left.plot(cycles, mean, color=colour, lw=1.5, label=f"{what} mean (std, {span}: {_fmt(average)})", **mk)
    left.axhline(0.0, color="black", lw=0.8)
    left.set_ylabel("departure (observation units)")
    _title(left, "Departures per window: mean and std over its observations")
    if _has(ds, "chi2"):
        chi2 = _values(ds, "chi2")
        average, span = _second_half_mean(chi2)
        right.plot(cycles, chi2, color="tab:purple", lw=1.5, label=f"2 J_min / m (mean {span}: {_fmt(average)})", **mk)
        right.axhline(1.0, color="black", ls="--", lw=1.2, label="expected: 1")
        right.set_ylim(bottom=0)
    right.set_ylabel("chi2 = 2 J_min / m")
    _title(right, "chi2 per window")
    for ax in (left, right):
        _finish_cycle_axis(ax, ds)
        if ax.get_legend_handles_labels()[0]:
            _legend_outside(ax)
        ax.grid(True, alpha=0.3)
    _suptitle(fig, ds, "observation space")
    return fig


# --------------------------------------------------------------------------- hovmoller


def _continuous(ds: xr.Dataset, name: str, cycles: np.ndarray) -> np.ndarray:
    """``name(cycle, step, x)`` as (time, x): steps 0..S-1 of each cycle (positions along the
    ``cycle`` dimension), concatenated (S = the shift between window starts, L for windows end to end)."""
    S = _window_shift(ds)
    values = _values(ds, name)[cycles][:, :S, :]
    return values.reshape(-1, values.shape[-1])


def _analysed_cycles(ds: xr.Dataset) -> np.ndarray:
    """The positions of the cycles whose analysis holds a finite value (a run stopped early has NaN rows)."""
    analysis = _values(ds, "analysis")
    return np.flatnonzero(np.isfinite(analysis.reshape(analysis.shape[0], -1)).any(axis=1))


def _joined_steps(ds: xr.Dataset, positions: np.ndarray) -> np.ndarray:
    """The model steps (from cycle 0's start) of :func:`_continuous` over the cycles at ``positions``."""
    S = _window_shift(ds)
    return (_cycle_axis(ds)[positions][:, None] * S + np.arange(S)[None, :]).reshape(-1)


def plot_hovmoller(ds: xr.Dataset) -> Figure | None:
    """Space-time images: truth / analysis / analysis - truth (``None`` for a state of
    ``MAX_LINE_STATE`` variables or fewer, which :func:`plot_timeseries` draws as lines).

    Without truth: background / analysis / analysis - background. Windows are joined
    using steps 0..S-1 of each (S = L, or the shift of overlapping windows), so time is continuous; beyond ``MAX_TIME_POINTS`` time
    points the images are subsampled in time.
    """
    if not _has(ds, "analysis") or int(ds.sizes.get("x", 0)) <= MAX_LINE_STATE:
        return None  # a small state is drawn as lines by plot_timeseries
    has_truth = _has(ds, "truth") and _finite(_values(ds, "truth"))
    reference = "truth" if has_truth else "background" if _has(ds, "background") else None
    if reference is None or ds["analysis"].ndim != 3:
        return None
    cycles = _analysed_cycles(ds)
    if cycles.size == 0:
        return None

    dt, time_label = _time_unit(ds)
    ref = _continuous(ds, reference, cycles)
    ana = _continuous(ds, "analysis", cycles)
    steps = _joined_steps(ds, cycles)
    stride = max(1, math.ceil(len(steps) / MAX_TIME_POINTS))
    ref, ana, steps = ref[::stride], ana[::stride], steps[::stride]
    err = ana - ref
    time = steps * dt
    n_x = ana.shape[1]

    # imshow needs a regular grid: with missing cycles fall back to pcolormesh.
    regular = np.all(np.diff(steps) == stride) if len(steps) > 1 else True
    half = 0.5 * stride * dt
    extent = (time[0] - half, time[-1] + half, -0.5, n_x - 0.5)

    both = np.concatenate([ref[np.isfinite(ref)], ana[np.isfinite(ana)]])
    vmin, vmax = (np.percentile(both, [0.5, 99.5]) if both.size else (0.0, 1.0))
    finite_err = np.abs(err[np.isfinite(err)])
    emax = float(np.percentile(finite_err, 99.5)) if finite_err.size else 1.0
    emax = emax if emax > 0 else 1.0

    fig = _new_figure(10.5, 8.2)
    axes = fig.subplots(3, 1, sharex=True, sharey=True)
    panels = [
        (ref, reference, "viridis", vmin, vmax, "state"),
        (ana, "analysis", "viridis", vmin, vmax, "state"),
        (err, f"analysis \u2212 {reference}", "RdBu_r", -emax, emax, "difference"),
    ]
    for ax, (field, name, cmap, lo, hi, unit) in zip(axes, panels):
        if regular:
            image = ax.imshow(field.T, origin="lower", aspect="auto", extent=extent, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
        else:
            image = ax.pcolormesh(time, np.arange(n_x), field.T, cmap=cmap, vmin=lo, vmax=hi, shading="nearest")
        extend = "both" if name.startswith("analysis \u2212") else "neither"
        fig.colorbar(image, ax=ax, label=f"{unit} (state units)", extend=extend, pad=0.01, fraction=0.04)
        ax.set_title(name[:1].upper() + name[1:], loc="left", fontsize=10)
        ax.set_ylabel("grid index x")
    labels = _cycle_axis(ds)[cycles]
    _finish_time_axis(axes[2], ds, labels)
    if axes[2].get_legend_handles_labels()[0]:
        axes[2].legend(fontsize=8, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=2, frameon=False, borderaxespad=0.2)
    for ax in axes[:2]:
        _finish_time_axis(ax, ds, labels, boundaries=False)
    axes[-1].set_xlabel(time_label)
    what = "space\u2013time evolution"
    if stride > 1:
        what += f" (1 step in {stride} shown)"
    _suptitle(fig, ds, what)
    return fig


# --------------------------------------------------------------------------- time series


def _shown_variables(n_x: int) -> np.ndarray:
    """Every variable of a small state; else ``TIMESERIES_VARIABLES`` spread over the grid."""
    if n_x <= MAX_LINE_STATE:
        return np.arange(n_x)
    return np.unique(np.linspace(0, n_x - 1, TIMESERIES_VARIABLES).round().astype(int))


def _direct_observations(ds: xr.Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(step, index, value)`` of the observations that are a state variable itself
    (identity or subset operators), or ``None``."""
    if not _has(ds, "obs_value", "obs_step", "obs_index"):
        return None
    direct = np.ones(ds.sizes["obs"], bool)
    if _has(ds, "obs_operator"):
        direct = np.isin(np.asarray(ds["obs_operator"].values).astype(str), ["identity", "subset"])
    return (np.asarray(ds["obs_step"].values)[direct], np.asarray(ds["obs_index"].values)[direct],
            _values(ds, "obs_value")[direct])


def plot_timeseries(ds: xr.Dataset) -> Figure | None:
    """Truth, background and analysis of a few state variables against time (``None``
    without truth or background to compare the analysis with), with the observations
    of those variables as dots (every variable of a state of
    ``MAX_LINE_STATE`` or fewer, instead of a Hovmöller image).  Windows are joined
    using steps 0..S-1 of each, as in :func:`plot_hovmoller`."""
    if not _has(ds, "analysis") or ds["analysis"].ndim != 3:
        return None
    cycles = _analysed_cycles(ds)
    if cycles.size == 0:
        return None
    dt, time_label = _time_unit(ds)
    steps = _joined_steps(ds, cycles)
    stride = max(1, math.ceil(len(steps) / MAX_TIME_POINTS))
    fields = {name: _continuous(ds, name, cycles)[::stride] for name in ("truth", "background", "analysis")
              if _has(ds, name) and _finite(_values(ds, name))}
    if len(fields) < 2:  # the analysis alone: nothing to compare it with
        return None
    time = steps[::stride] * dt
    n_x = int(ds.sizes["x"])
    shown = _shown_variables(n_x)
    observations = _direct_observations(ds)
    styles = {"truth": dict(color="black", lw=1.4), "background": dict(color=_BACKGROUND_COLOUR, lw=1.0, ls="--"),
              "analysis": dict(color=_ANALYSIS_COLOUR, lw=1.3)}

    fig = _new_figure(10.0, 1.2 + 2.0 * len(shown))
    axes = np.atleast_1d(fig.subplots(len(shown), 1, sharex=True, squeeze=False)[:, 0])
    for ax, i in zip(axes, shown):
        for name, field in fields.items():
            ax.plot(time, field[:, i], label=name, **styles[name])
        if observations is not None:
            step, index, value = observations
            mine = (index == i) & np.isin(step, steps)
            if mine.any():
                ax.plot(step[mine] * dt, value[mine], "o", ls="none", ms=3.5, mfc="white", mec="tab:red", label="observations")
        ax.set_ylabel(f"x[{i}]")
        _finish_time_axis(ax, ds, _cycle_axis(ds)[cycles])
        ax.grid(True, alpha=0.3)
    _legend_outside(axes[0])
    axes[-1].set_xlabel(time_label)
    what = "state variables against time" if len(shown) == n_x else f"{len(shown)} of {n_x} state variables against time"
    _suptitle(fig, ds, what)
    return fig


# --------------------------------------------------------------------------- params


def _param_labels(ds: xr.Dataset, n: int) -> list[str]:
    """The parameters' names (``param_name``, from the model or ``background.params.names``), else ``p[i]``."""
    for name in ("param_name", "param"):
        if name in ds.variables and ds[name].dims == ("param",) and ds[name].values.dtype.kind in "OUS":
            return [str(v) for v in ds[name].values]
    return [f"p[{i}]" for i in range(n)]


POSTERIOR_BAND = "analysis \u00b1 1 std of P^a (posterior)"


def _prior_std(ds: xr.Dataset, n_params: int) -> tuple[np.ndarray | None, str]:
    """``(cycle, param)`` std of ``P`` each window used, and its band's label: per parameter
    (``params_background_std``), else the mean std of ``P`` (``params_std``) on every parameter."""
    if _has(ds, "params_background_std"):
        return _values(ds, "params_background_std"), "background \u00b1 1 std of P (prior)"
    if _has(ds, "params_std"):
        std = _values(ds, "params_std")[:, None] * np.ones(n_params)
        return std, "background \u00b1 1 std of P" if n_params == 1 else "background \u00b1 mean std of P"
    return None, ""


def _std_percentiles(ax, cycles: np.ndarray, stds: list) -> None:
    """Per cycle, the median over the parameters of each ``(cycle, param)`` std in ``stds``
    (``(std or None, colour, what)``) with its 25-75 % band."""
    for std, colour, what in stds:
        if std is None or not _finite(std):
            continue
        low, median, high = np.nanpercentile(std, [25, 50, 75], axis=1)
        ax.fill_between(cycles, low, high, color=colour, alpha=0.25, lw=0, label=f"std of {what}, 25\u201375 %")
        ax.plot(cycles, median, color=colour, label=f"std of {what}, median", **_per_cycle_marker(len(cycles)))
    ax.set_yscale("log")
    ax.set_ylabel("std over the parameters")
    ax.set_title("Uncertainty of the parameters", fontsize=10)


def plot_params(ds: xr.Dataset) -> Figure | None:
    """Parameter estimates per cycle (``None`` when the model has no parameters).

    Up to ``MAX_INDIVIDUAL_PARAMS`` parameters: one panel each, named by ``param_name``,
    analysis and background value per cycle, the background's +-1 std band of the ``P``
    the window used (``params_background_std``; older files: the mean std ``params_std``),
    the analysis's +-1 std band of the posterior ``P^a`` (``params_analysis_std``), the
    truth dashed and the burn-in shaded; one legend beside the panels. More (a network): a summary of the weights (their 5/25/50/75/95 %
    percentiles per cycle; their distribution at the first background and the last
    analysis), the norm of their change (cycle to cycle and analysis increment), with a
    truth the distance to it, and with the recorded stds the median and 25-75 % band over
    the parameters of the prior and posterior std.
    """
    if not _has(ds, "params_analysis") or int(ds.sizes.get("param", 0)) == 0:
        return None
    pa = _values(ds, "params_analysis")
    if pa.ndim != 2 or not _finite(pa):
        return None
    pb = _values(ds, "params_background") if _has(ds, "params_background") else None
    pt = _values(ds, "params_truth") if _has(ds, "params_truth") else None
    if pt is not None and pt.shape != pa.shape[1:]:
        pt = None
    cycles = _cycle_axis(ds)[: pa.shape[0]]
    mk = _per_cycle_marker(len(cycles))
    n_params = pa.shape[1]
    # In a cycled run each background is the previous analysis: its curve would only
    # repeat (and hide under) the analysis one, so just the first background is marked.
    cycled = pb is not None and len(cycles) > 1 and np.allclose(pb[1:], pa[:-1], equal_nan=True)

    def background(ax, values):
        if pb is None:
            return
        if cycled:
            ax.plot(cycles[:1], values[:1], "s", color=_BACKGROUND_COLOUR, ms=7, label=f"background of cycle {cycles[0]} (later: the previous analysis)")
        else:
            ax.plot(cycles, values, color=_BACKGROUND_COLOUR, label="background", **mk)

    if n_params <= MAX_INDIVIDUAL_PARAMS:
        labels = _param_labels(ds, n_params)
        fig = _new_figure(max(min(4.6 * n_params, 14.0), 7.0), 5.0)
        axes = np.atleast_1d(fig.subplots(1, n_params, squeeze=False)[0])
        prior, prior_label = _prior_std(ds, n_params)
        posterior = _values(ds, "params_analysis_std") if _has(ds, "params_analysis_std") else None
        for i, ax in enumerate(axes):
            if pb is not None:
                background(ax, pb[:, i])
                if prior is not None and _finite(prior[:, i]):
                    ax.fill_between(cycles, pb[:, i] - prior[:, i], pb[:, i] + prior[:, i], color=_BACKGROUND_COLOUR, alpha=0.2, lw=0, label=prior_label)
            ax.plot(cycles, pa[:, i], color=_ANALYSIS_COLOUR, label="analysis", **mk)
            if posterior is not None and _finite(posterior[:, i]):
                ax.fill_between(cycles, pa[:, i] - posterior[:, i], pa[:, i] + posterior[:, i], color=_ANALYSIS_COLOUR, alpha=0.3, lw=0,
                                label=POSTERIOR_BAND)
            title = f"Estimate of {labels[i]}"
            if pt is not None and np.isfinite(pt[i]):
                ax.axhline(pt[i], color="black", ls="--", lw=1.2, label="truth")
                title += f" (truth {_fmt(pt[i])})"
            _finish_cycle_axis(ax, ds)
            ax.set_ylabel(f"parameter {labels[i]}")
            _title(ax, title)
            ax.grid(True, alpha=0.3)
        handles = {label: handle for ax in axes for handle, label in zip(*ax.get_legend_handles_labels())}
        fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncol=min(len(handles), 3), fontsize=8)
        _suptitle(fig, ds, "parameter estimates")
        return fig

    prior, _ = _prior_std(ds, n_params)
    posterior = _values(ds, "params_analysis_std") if _has(ds, "params_analysis_std") else None
    uncertain = prior is not None and _has(ds, "params_background_std") or posterior is not None
    n_panels = 3 + (pt is not None) + uncertain
    fig = _new_figure(4.6 * n_panels, 4.4)
    axes = fig.subplots(1, n_panels)
    ax = axes[0]
    percentiles = np.nanpercentile(pa, [5, 25, 50, 75, 95], axis=1)
    ax.fill_between(cycles, percentiles[0], percentiles[4], color=_ANALYSIS_COLOUR, alpha=0.2, lw=0, label="5\u201395 %")
    ax.fill_between(cycles, percentiles[1], percentiles[3], color=_ANALYSIS_COLOUR, alpha=0.4, lw=0, label="25\u201375 %")
    ax.plot(cycles, percentiles[2], color=_ANALYSIS_COLOUR, label="median", **mk)
    ax.set_ylabel("parameter value")
    ax.set_title(f"Spread of the {n_params} analysed parameters", fontsize=10)

    ax = axes[1]
    first = pb[0] if pb is not None else pa[0]
    edges = np.histogram_bin_edges(np.concatenate([first, pa[-1]])[np.isfinite(np.concatenate([first, pa[-1]]))], bins=30)
    ax.hist(first, bins=edges, color=_BACKGROUND_COLOUR, alpha=0.6, label="first background" if pb is not None else "first analysis")
    ax.hist(pa[-1], bins=edges, histtype="step", color=_ANALYSIS_COLOUR, lw=1.6, label=f"analysis, cycle {cycles[-1]}")
    ax.set_xlabel("parameter value")
    ax.set_ylabel("number of parameters")
    ax.set_title("Distribution of the parameters", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    ax.grid(True, alpha=0.3)

    ax = axes[2]
    if len(cycles) > 1 and not cycled:
        ax.plot(cycles[1:], _positive(np.linalg.norm(np.diff(pa, axis=0), axis=1)), color=_ANALYSIS_COLOUR, label="|p_a(c) \u2212 p_a(c\u22121)|", **mk)
    if pb is not None:
        label = "|p_a \u2212 p_b| (analysis increment" + (" = change from previous cycle)" if cycled else ")")
        ax.plot(cycles, _positive(np.linalg.norm(pa - pb, axis=1)), color="tab:purple", label=label, **mk)
    ax.set_yscale("log")
    ax.set_ylabel("norm of the change")
    ax.set_title("Change of the parameters", fontsize=10)

    if pt is not None:
        ax = axes[3]
        if pb is not None:
            background(ax, _positive(np.linalg.norm(pb - pt, axis=1)))
        ax.plot(cycles, _positive(np.linalg.norm(pa - pt, axis=1)), color=_ANALYSIS_COLOUR, label="analysis", **mk)
        ax.set_yscale("log")
        ax.set_ylabel("|p \u2212 p_true|")
        ax.set_title("Distance to the true parameters", fontsize=10)

    if uncertain:
        _std_percentiles(axes[-1], cycles, [(prior, _BACKGROUND_COLOUR, "P (prior)"), (posterior, _ANALYSIS_COLOUR, "P^a (posterior)")])

    for ax in (axes[0], *axes[2:]):
        _plain_log_labels(ax)
        _finish_cycle_axis(ax, ds)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
        ax.grid(True, alpha=0.3)
    _suptitle(fig, ds, "parameter estimates")
    return fig


# --------------------------------------------------------------------------- model error


def _forcing_per_step(ds: xr.Dataset) -> np.ndarray | None:
    """The analysed forcing added after each step ``1 .. L`` of each window, ``(cycle, L, x)``."""
    eta = _values(ds, "model_error")
    every = ds.attrs.get("model_error_every")
    if eta.ndim != 3 or eta.shape[1] == 0 or every is None or not _finite(eta):
        return None
    L = _window_steps(ds)
    sub_window = np.minimum((np.arange(1, L + 1) - 1) // int(every), eta.shape[1] - 1)
    return eta[:, sub_window]


def plot_model_error(ds: xr.Dataset) -> Figure | None:
    """Weak constraint: the analysed model-error forcing (``None`` without one).

    Left: the forcing added after each step at one grid point over the whole run,
    analysed and (when the truth had model error) true. Right: analysed against true
    forcing at every step and grid point, with their correlation; without a true
    forcing, the RMS of the analysed forcing per window.
    """
    if not _has(ds, "model_error"):
        return None
    analysed = _forcing_per_step(ds)
    if analysed is None:
        return None
    n_cycles, L, n_x = analysed.shape
    true = _values(ds, "model_error_truth")[:, 1:] if _has(ds, "model_error_truth") else None
    if true is not None and true.shape != analysed.shape:
        true = None
    dt, time_label = _time_unit(ds)
    cycles = _cycle_axis(ds)
    time = (cycles[:, None] * L + np.arange(1, L + 1)[None, :]).ravel() * dt
    point = 0
    fig = _new_figure(14.0, 4.4)
    left, right = fig.subplots(1, 2)
    if true is not None:
        left.step(time, true[:, :, point].ravel(), where="pre", color="black", lw=1.0, label="truth")
    left.step(time, analysed[:, :, point].ravel(), where="pre", color=_ANALYSIS_COLOUR, lw=1.4, label="analysis")
    left.set_xlabel(time_label)
    _finish_time_axis(left, ds, cycles)
    left.set_ylabel(f"forcing added after each step, x[{point}]")
    left.set_title(f"Model-error forcing at grid point {point}", fontsize=10)
    if true is not None:
        r = float(np.corrcoef(true.ravel(), analysed.ravel())[0, 1])
        right.plot(true.ravel(), analysed.ravel(), ".", ms=2, alpha=0.3, color=_ANALYSIS_COLOUR)
        limit = float(np.nanmax(np.abs(true)))
        right.plot([-limit, limit], [-limit, limit], color="black", lw=0.8, label="analysis = truth")
        right.set_xlabel("true forcing")
        right.set_ylabel("analysed forcing")
        right.set_title(f"Every step and grid point (correlation {_fmt(r)})", fontsize=10)
    else:
        right.plot(cycles, np.sqrt(np.mean(analysed**2, axis=(1, 2))), color=_ANALYSIS_COLOUR,
                   label="RMS of the analysed forcing", **_per_cycle_marker(n_cycles))
        _finish_cycle_axis(right, ds)
        right.set_ylabel("RMS forcing")
        right.set_title("Size of the analysed forcing", fontsize=10)
    for ax in (left, right):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
        ax.grid(True, alpha=0.3)
    fig.suptitle(_heading(ds, "model-error forcing (weak constraint)"))
    return fig


# --------------------------------------------------------------------------- ensemble


def plot_spread(ds: xr.Dataset) -> Figure | None:
    """An ensemble of data assimilations: spread against error (``None`` without an ensemble).

    Left: per cycle, the members' background spread and the RMSE of their mean
    background at the window start (a well-dispersed ensemble has the two equal), and
    the control's background and analysis RMSE.  Right: spread against that error,
    one point per cycle, with the diagonal where they would be equal.
    """
    if not _has(ds, "spread_background"):
        return None
    spread = _values(ds, "spread_background")
    error = _values(ds, "rmse_ensemble_mean_background") if _has(ds, "rmse_ensemble_mean_background") else None
    cycles = _cycle_axis(ds)
    mk = _per_cycle_marker(len(cycles))
    fig = _new_figure(13.0, 4.6)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    mean, span = _second_half_mean(spread)
    left.plot(cycles, spread, color="tab:purple", lw=1.6, label=f"ensemble spread, backgrounds (mean {span}: {_fmt(mean)})", **mk)
    if error is not None:
        mean, span = _second_half_mean(error)
        left.plot(cycles, error, color="tab:red", lw=1.3, label=f"RMSE of the ensemble-mean background (mean {span}: {_fmt(mean)})", **mk)
    for kind, colour in (("background", _BACKGROUND_COLOUR), ("analysis", _ANALYSIS_COLOUR)):
        if _has(ds, f"rmse_{kind}"):
            left.plot(cycles, _values(ds, f"rmse_{kind}"), color=colour, lw=1.0, ls="--", label=f"control {kind} RMSE")
    left.set_ylim(bottom=0)
    _finish_cycle_axis(left, ds)
    left.set_ylabel("state units, window start")
    _title(left, "Spread and error per cycle")
    fig.legend(*left.get_legend_handles_labels(), loc="outside lower center", ncol=2, fontsize=8)
    left.grid(True, alpha=0.3)
    if error is not None:
        right.scatter(error, spread, s=12, color="tab:purple")
        top = float(np.nanmax(np.concatenate([error, spread]))) * 1.05
        right.plot([0, top], [0, top], color="grey", ls=":", lw=1.2, label="spread = error")
        right.set_xlim(0, top)
        right.set_ylim(0, top)
    right.set_xlabel("RMSE of the ensemble-mean background")
    right.set_ylabel("ensemble spread")
    _title(right, "Spread against error, per cycle (dotted: equal)")
    right.grid(True, alpha=0.3)
    _suptitle(fig, ds, "ensemble spread and error")
    return fig


# --------------------------------------------------------------------------- forecast error against lead time


def _forecast_runs(ds: xr.Dataset, source: str) -> list[tuple[str, np.ndarray]]:
    """(label, RMSE per lead) of this run's model, then of each comparison run, forecasting from ``source``."""
    prefix = f"forecast_rmse_from_{source}"
    runs = [("this run's model", _values(ds, prefix))] if _has(ds, prefix) else []
    runs += [(f"{name} run", _values(ds, f"{prefix}_{name}")) for name in _comparison_names(ds) if _has(ds, f"{prefix}_{name}")]
    return runs


def plot_forecast(ds: xr.Dataset) -> Figure | None:
    """Forecast RMSE against lead time (``None`` without the skill diagnostics' curves).

    Left: forecasts from truth states the experiment never saw, with each run's final
    parameters (the model error alone). Right: forecasts from the analyses of the last
    half of the cycles (model and analysis error).  One line per model: this run's and
    each comparison run's (a perfect-model run among them); the top axis counts
    Lyapunov times.
    """
    panels = [(source, runs) for source in ("truth", "analyses") if (runs := _forecast_runs(ds, source))]
    if not panels:
        return None
    dt, time_label = _time_unit(ds)
    fig = _new_figure(5.4 * len(panels), 4.4)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (source, runs) in zip(axes, panels):
        for k, (label, rmse) in enumerate(runs):
            colour = _ANALYSIS_COLOUR if k == 0 else _RUN_COLOURS[(k - 1) % len(_RUN_COLOURS)]
            ax.plot(np.arange(len(rmse)) * dt, rmse, color=colour, lw=1.8 if k == 0 else 1.3, label=label)
        first = ds[f"forecast_rmse_from_{source}"] if _has(ds, f"forecast_rmse_from_{source}") else None
        n_forecasts = first.attrs.get("forecasts") if first is not None else None
        where = "truth states after the experiment" if source == "truth" else "analyses, last half of the cycles"
        ax.set_title(f"From {where}" + (f" ({int(n_forecasts)} forecasts)" if n_forecasts else ""), fontsize=10)
        ax.set_xlabel(f"lead {time_label}")
        ax.set_ylabel("forecast RMSE against truth (state units)")
        ax.set_ylim(bottom=0)
        lyapunov = first.attrs.get("lyapunov_time") if first is not None else None
        if lyapunov and dt != 1.0:
            top = ax.secondary_xaxis("top", functions=(lambda t, L=float(lyapunov): t / L, lambda n, L=float(lyapunov): n * L))
            top.set_xlabel("lead (Lyapunov times)")
        ax.legend(fontsize=8, loc="best")
        ax.grid(True, alpha=0.3)
    _suptitle(fig, ds, "forecast error against lead time")
    return fig


# --------------------------------------------------------------------------- learned correction


def plot_correction(ds: xr.Dataset) -> Figure | None:
    """The learned correction against the tendency the model misses (``None`` unless the
    result stores ``correction_*``: a hybrid model against a truth that provides the term).

    Left: both against the local state ``x_i`` on truth states the experiment never saw
    (the correction sees neighbours too: a cloud around the missing term, not a curve),
    with the correction at the first background. Right: learned against missing at every
    point, the diagonal where they would be equal, their correlation and RMS difference.
    """
    if not _has(ds, "correction_state", "correction_truth", "correction_learned"):
        return None
    x, missing, learned = (_values(ds, name).ravel() for name in ("correction_state", "correction_truth", "correction_learned"))
    initial = _values(ds, "correction_initial").ravel() if _has(ds, "correction_initial") else None
    order = np.argsort(x, kind="stable")
    fig = _new_figure(11.0, 4.4)
    left, right = fig.subplots(1, 2)
    left.plot(x[order], missing[order], ".", ms=3, color="black", label="missing term (truth)")
    if initial is not None:
        left.plot(x[order], initial[order], ".", ms=2, color=_BACKGROUND_COLOUR, alpha=0.6, label="correction, first background")
    left.plot(x[order], learned[order], ".", ms=2, color=_ANALYSIS_COLOUR, alpha=0.6, label="correction, last analysis")
    left.set_xlabel("local state x_i (truth states after the experiment)")
    left.set_ylabel("tendency")
    left.set_title("Tendency against the local state", fontsize=10)
    correlation = float(np.corrcoef(missing, learned)[0, 1]) if np.std(learned) > 0 and np.std(missing) > 0 else float("nan")
    rms_difference = float(np.sqrt(np.mean((learned - missing) ** 2)))
    right.plot(missing, learned, ".", ms=2, alpha=0.5, color=_ANALYSIS_COLOUR, label="every point, last analysis")
    limit = 1.05 * float(np.nanmax(np.abs(np.concatenate([missing, learned]))))
    right.plot([-limit, limit], [-limit, limit], color="black", ls="--", lw=1.0, label="learned = missing")
    right.axhline(0.0, color="tab:red", lw=1.0, label=f"no correction (RMS {_fmt(float(np.sqrt(np.mean(missing**2))))})")
    right.set_xlabel("missing tendency")
    right.set_ylabel("learned correction")
    right.set_title(f"Correlation {_fmt(correlation)}, RMS difference {_fmt(rms_difference)}", fontsize=10)
    for ax in (left, right):
        ax.legend(fontsize=8, loc="best", markerscale=3)
        ax.grid(True, alpha=0.3)
    _suptitle(fig, ds, "learned correction against the missing tendency")
    return fig


# --------------------------------------------------------------------------- sweep summary


def _sweep_metrics(ds: xr.Dataset) -> list[str]:
    return [name for name in ds.data_vars if ds[name].dtype.kind in "iuf" and _finite(_values(ds, name))]


def plot_sweep(ds: xr.Dataset) -> Figure | None:
    """A sweep's ``summary.nc`` (``None`` for anything else): each headline number against
    the first swept setting other than ``seed``, one line per combination of the other
    settings; with several seeds, the mean over them with +-1 std (sample) error bars.
    """
    keys = str(ds.attrs.get("sweep_keys", "")).split()
    metrics = _sweep_metrics(ds)
    if not keys or not metrics or not all(key in ds.dims for key in keys):
        return None
    seeds = "seed" in keys and len(keys) > 1
    x_key = next(key for key in keys if key != "seed") if seeds else keys[0]
    others = [key for key in keys if key not in (x_key, "seed")] if seeds else [key for key in keys if key != x_key]
    settings = ds[x_key].values
    x = settings.astype(float) if settings.dtype.kind in "iuf" else np.arange(settings.size, dtype=float)
    n_cols = min(3, len(metrics))
    n_rows = math.ceil(len(metrics) / n_cols)
    fig = _new_figure(4.4 * n_cols, 1.2 + 3.2 * n_rows)
    axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
    combinations = list(np.ndindex(*(ds.sizes[key] for key in others)))
    for ax, name in zip(axes, metrics):
        values = ds[name].transpose(x_key, *others, *(["seed"] if seeds else [])).values.reshape(x.size, len(combinations), -1)
        for k, position in enumerate(combinations):
            label = ", ".join(f"{key} = {ds[key].values[i]}" for key, i in zip(others, position)) or name
            mean = np.nanmean(values[:, k], axis=1)
            error = np.nanstd(values[:, k], axis=1, ddof=1) if seeds and values.shape[2] > 1 else None
            ax.errorbar(x, mean, yerr=error, marker="o", ms=4, capsize=3, lw=1.3, color=_RUN_COLOURS[k % len(_RUN_COLOURS)] if k else _ANALYSIS_COLOUR, label=label)
        if settings.dtype.kind not in "iuf":
            ax.set_xticks(x, [str(v) for v in settings])
        ax.set_xlabel(x_key)
        _title(ax, name.replace("_", " "))
        ax.grid(True, alpha=0.3)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    if others:
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 3), fontsize=8)
    what = f"mean \u00b1 std over {ds.sizes['seed']} seeds" if seeds else "one run each"
    _suptitle(fig, ds, f"headline numbers against {x_key} ({what})")
    return fig


# --------------------------------------------------------------------------- all

#: file stem -> figure function, in the order :func:`plot_results` writes them
FIGURES: dict[str, Callable[[xr.Dataset], Figure | None]] = {
    "cost": plot_cost,
    "rmse": plot_rmse,
    "obs": plot_observations,
    "hovmoller": plot_hovmoller,
    "timeseries": plot_timeseries,
    "params": plot_params,
    "model_error": plot_model_error,
    "spread": plot_spread,
    "forecast": plot_forecast,
    "correction": plot_correction,
    "maps": plot_maps,  # a model on a 2-D grid
}
#: the figures of a sweep's ``summary.nc``
SWEEP_FIGURES: dict[str, Callable[[xr.Dataset], Figure | None]] = {"sweep": plot_sweep}


def plot_results(dataset_or_path, output_dir, time_range: TimeRange | None = None) -> list[Path]:
    """Write ``cost.png``, ``rmse.png``, ``obs.png``, ``hovmoller.png``, ``timeseries.png``,
    ``params.png``, ``model_error.png``, ``spread.png``, ``forecast.png`` and ``correction.png``
    to ``output_dir``; for a sweep's ``summary.nc``, ``sweep.png``.

    ``dataset_or_path`` is a result :class:`xarray.Dataset` or the path of its NetCDF
    file. Figures whose data are missing (no truth: no ``rmse.png``; no departures: no
    ``obs.png``; no parameters: no ``params.png``; a small state: no ``hovmoller.png``;
    strong constraint: no ``model_error.png``; no ensemble: no ``spread.png``; no skill
    diagnostics: no ``forecast.png``; no learned correction against a known missing term:
    no ``correction.png``) are skipped silently.  ``time_range``: the cycles or model time
    every time-axis figure shows (:func:`select_time_range`; a :class:`TimeRangeError` when it
    holds no window or the file is a sweep summary).  The directory is created only if a
    figure is written. Returns the paths written, in that order.
    """
    ds = select_time_range(load_results(dataset_or_path), time_range)
    output_dir = Path(output_dir)
    makers = SWEEP_FIGURES if "sweep_keys" in ds.attrs else FIGURES
    figures = {stem: fig for stem, make in makers.items() if (fig := make(ds)) is not None}  # all drawn before any is written
    if figures:
        output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, fig in figures.items():
        path = output_dir / f"{stem}.png"
        write_file_atomic(path, lambda temporary: fig.savefig(temporary, dpi=DPI, format="png"))  # never half a figure
        fig.clear()
        written.append(path)
    return written
