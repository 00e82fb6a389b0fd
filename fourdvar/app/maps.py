"""Maps of a result on a 2-D grid (``fourdvar plot`` draws ``maps.png`` when the result
file has the grid attributes ``grid_nx``, ``grid_ny``, ``grid_L``, ``grid_W``).

For each layer three rows, truth, analysis and analysis error, at the start of the
chosen cycles (one column each; by default the first, the middle and the last
analysed cycle).  Truth and analysis of a layer share one colour scale, symmetric
about 0, and the error row its own, so a row compares cycles at a glance and the
two first rows of a layer compare with each other.  The stations observed during
each window (``obs_x``, ``obs_y``; their layer from ``obs_index``) are marked on
that window's analysis map.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["plot_maps", "grid_of", "ROWS"]

#: The rows drawn for each layer, top to bottom.
ROWS = ("truth", "analysis", "analysis error")
STATION_MARKER = dict(marker="o", s=6, facecolors="none", edgecolors="k", linewidths=0.6)


def grid_of(ds: xr.Dataset) -> tuple[int, int, int, float, float] | None:
    """``(n_layers, ny, nx, L, W)`` of a result on a 2-D grid, ``None`` otherwise."""
    names = ("grid_nx", "grid_ny", "grid_L", "grid_W")
    if not all(name in ds.attrs for name in names) or "x" not in ds.sizes:
        return None
    nx, ny = int(ds.attrs["grid_nx"]), int(ds.attrs["grid_ny"])
    if nx * ny == 0 or ds.sizes["x"] % (nx * ny):
        return None
    return ds.sizes["x"] // (nx * ny), ny, nx, float(ds.attrs["grid_L"]), float(ds.attrs["grid_W"])


def _chosen_cycles(ds: xr.Dataset, cycles) -> list[int]:
    analysed = np.flatnonzero(np.all(np.isfinite(ds["analysis"].values[:, 0]), axis=1))
    if cycles is not None:
        return [int(c) for c in cycles if c in analysed]
    if analysed.size == 0:
        return []
    return sorted({int(analysed[0]), int(analysed[analysed.size // 2]), int(analysed[-1])})


def _stations(ds: xr.Dataset, cycle: int, layer: int, n_grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions observed in ``layer`` during window ``cycle``."""
    if not all(name in ds.variables for name in ("obs_x", "obs_y", "obs_step", "obs_index")):
        return np.empty(0), np.empty(0)
    start = cycle * int(ds.attrs.get("window_shift", ds.attrs.get("window_steps", 1)))
    steps = ds["obs_step"].values
    mine = (steps >= start) & (steps < start + int(ds.attrs.get("window_steps", 1)))
    mine &= ds["obs_index"].values // n_grid == layer
    mine &= np.isfinite(ds["obs_x"].values)
    return ds["obs_x"].values[mine], ds["obs_y"].values[mine]


def plot_maps(ds: xr.Dataset, cycles=None) -> Figure | None:
    """Truth, analysis and analysis error per layer at the start of ``cycles`` (module
    docstring); ``None`` without a 2-D grid, a truth or an analysed cycle."""
    grid = grid_of(ds)
    if grid is None or not all(name in ds.variables for name in ("truth", "analysis")):
        return None
    n_layers, ny, nx, L, W = grid
    shown = _chosen_cycles(ds, cycles)
    if not shown:
        return None
    truth = ds["truth"].values[shown, 0].reshape(len(shown), n_layers, ny, nx)
    analysis = ds["analysis"].values[shown, 0].reshape(len(shown), n_layers, ny, nx)
    fields = {"truth": truth, "analysis": analysis, "analysis error": analysis - truth}

    fig = Figure(figsize=(2.2 * len(shown) + 1.2, 2.0 * len(ROWS) * n_layers), layout="constrained")
    FigureCanvasAgg(fig)  # an Agg canvas of its own: pyplot and the global backend untouched
    axes = fig.subplots(len(ROWS) * n_layers, len(shown), squeeze=False, sharex=True, sharey=True)
    extent = (0.0, L, 0.0, W)
    for layer in range(n_layers):
        field_limit = max(np.abs(truth[:, layer]).max(), np.abs(analysis[:, layer]).max()) or 1.0
        error_limit = np.abs(fields["analysis error"][:, layer]).max() or 1.0
        for r, row in enumerate(ROWS):
            limit = error_limit if row == "analysis error" else field_limit
            cmap = "PuOr_r" if row == "analysis error" else "RdBu_r"
            row_axes = axes[layer * len(ROWS) + r]
            for column, (ax, cycle) in enumerate(zip(row_axes, shown)):
                image = ax.imshow(fields[row][column, layer], origin="lower", extent=extent, cmap=cmap,
                                  vmin=-limit, vmax=limit, interpolation="nearest", aspect="equal")
                if row == "analysis":
                    x, y = _stations(ds, cycle, layer, nx * ny)
                    if x.size:
                        ax.scatter(np.mod(x, L), np.mod(y, W), **STATION_MARKER)
                if layer == 0 and r == 0:
                    ax.set_title(f"cycle {cycle}")
                if column == 0:
                    ax.set_ylabel(f"layer {layer + 1}\n{row}")
                ax.set_xticks([])
                ax.set_yticks([])
            fig.colorbar(image, ax=list(row_axes), shrink=0.9)
    label = ds.attrs.get("title") or ds.attrs.get("model") or "maps"
    fig.suptitle(f"{label}: at the window start (circles: stations observed in the window)")
    return fig
