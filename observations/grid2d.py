"""Observation operators for gridded 2-D states: fields on a doubly periodic grid.

The state is ``n_fields`` fields (layers) on an ``ny x nx`` grid, the flat C-order
vector of ``(n_fields, ny, nx)``; grid point ``(j, i)`` sits at
``(x0 + i dx, y0 + j dy)``, ``dx = L / nx``, ``dy = W / ny``, in a domain of
``L x W`` that wraps around.  The grid comes from the model (its ``nx``, ``ny``,
``L``, ``W`` and coordinate arrays ``x``, ``y``), which the application hands to
any operator whose constructor takes ``model``; without a model give
``grid={nx, ny, L, W}`` (grid points at the cell centres, ``x0 = dx / 2``, as pyqg).

Bilinear interpolation on the periodic grid: for a point ``(px, py)``,
``s = (px - x0) / dx``, ``i = floor(s) mod nx``, ``a = s - floor(s)`` (and ``j``,
``b`` alike), ``P`` has the four weights of the corners around it::

    v = (1-a)(1-b) f[j, i] + a (1-b) f[j, i+1] + (1-a) b f[j+1, i] + a b f[j+1, i+1]
    TL  dv = P df              (the same weights: P does not depend on the state)
    AD  af = P^T av            (af = 0;  af[corner] += weight * av, a scattered sum)

``points``: ``y = P x`` on the observed layer(s).  ``grid_subset``: grid points
themselves (weight 1 at one corner), every ``every`` points from ``offset``.
``streamfunction_points``: ``y = P psi(x)`` with the model's linear diagnostic
``psi = model.streamfunction(x)`` (TL the same; AD ``ax =
model.streamfunction_ad(P^T ay)``); the model must offer both.

Stations (``points``, ``streamfunction_points``): given as ``x``/``y`` lists (in
the units of ``L``), or ``stations: n`` positions drawn uniformly over the domain
from ``seed``.  ``move_every: k`` draws new positions every ``k`` model steps
(``k`` = the window length: a new network each window; 1: at every observation
time): the positions used at step ``t`` come from the stream ``(seed, t // k)``,
so the same seed gives the same networks.  :meth:`PointOperator.at_step` gives the
operator of step ``t``.  ``layer``: the observed layer (``0`` the upper one) or
``"all"`` (each station in every layer, layer by layer).
"""

from __future__ import annotations

import numbers
from typing import Any, Mapping

import numpy as np

from fourdvar.interfaces import declared

from .operators import OperatorBase, _check_n_state

__all__ = ["Grid", "PointOperator", "Points", "GridSubset", "StreamfunctionPoints", "bilinear_weights"]


# --- the grid ------------------------------------------------------------------------------------


class Grid:
    """``n_fields`` fields on an ``ny x nx`` periodic grid of ``L x W``, first point at ``(x0, y0)``."""

    def __init__(self, n_state: int, nx: int, ny: int, L: float, W: float, x0: float | None = None, y0: float | None = None):
        for name, value in (("nx", nx), ("ny", ny)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 2:
                raise ValueError(f"grid: {name} must be an integer >= 2, got {value!r}")
        for name, value in (("L", L), ("W", W)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value) or value <= 0:
                raise ValueError(f"grid: {name} must be a positive length, got {value!r}")
        self.nx, self.ny, self.L, self.W = int(nx), int(ny), float(L), float(W)
        if n_state % (self.nx * self.ny):
            raise ValueError(f"grid: n_state = {n_state} is not a whole number of {self.ny} x {self.nx} fields")
        self.n_fields = n_state // (self.nx * self.ny)
        self.dx, self.dy = self.L / self.nx, self.W / self.ny
        self.x0 = 0.5 * self.dx if x0 is None else float(x0)
        self.y0 = 0.5 * self.dy if y0 is None else float(y0)

    @classmethod
    def of(cls, n_state: int, model=None, grid: Mapping | None = None) -> "Grid":
        """The grid of the mapping ``grid`` if given, else of ``model`` (its ``nx, ny, L, W, x, y``)."""
        if model is None and grid is None:
            raise ValueError("no grid: give grid: {nx, ny, L, W}, or a model on a 2-D grid")
        if grid is not None:
            if not isinstance(grid, Mapping) or set(grid) - {"nx", "ny", "L", "W"} or not {"nx", "ny"} <= set(grid):
                raise ValueError(f"grid: expected a mapping with nx, ny and optionally L, W, got {grid!r}")
            nx, ny = grid["nx"], grid["ny"]
            return cls(n_state, nx, ny, grid.get("L", float(nx)), grid.get("W", grid.get("L", float(nx)) * ny / nx))
        missing = [name for name in ("nx", "ny", "L", "W") if declared(model, name) is None]
        if missing:
            raise ValueError(f"the model {model!r} has no 2-D grid (no attribute {', '.join(missing)})")
        x0 = np.ravel(model.x)[0] if hasattr(model, "x") else None
        y0 = np.ravel(model.y)[0] if hasattr(model, "y") else None
        return cls(n_state, model.nx, model.ny, model.L, model.W, x0, y0)

    def random_positions(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` positions drawn uniformly over the domain."""
        return rng.uniform(0.0, self.L, n), rng.uniform(0.0, self.W, n)

    def spec(self) -> dict:
        return {"nx": self.nx, "ny": self.ny, "L": self.L, "W": self.W}


def bilinear_weights(grid: Grid, px: np.ndarray, py: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(corners, weights)``, both ``(m, 4)``: the flat indices in one field of the four grid
    points around each position (periodic) and their bilinear weights (module docstring)."""
    s, t = (px - grid.x0) / grid.dx, (py - grid.y0) / grid.dy
    fs, ft = np.floor(s), np.floor(t)
    a, b = s - fs, t - ft
    i0, j0 = fs.astype(np.int64) % grid.nx, ft.astype(np.int64) % grid.ny
    i1, j1 = (i0 + 1) % grid.nx, (j0 + 1) % grid.ny
    corners = np.stack([j0 * grid.nx + i0, j0 * grid.nx + i1, j1 * grid.nx + i0, j1 * grid.nx + i1], axis=1)
    weights = np.stack([(1 - a) * (1 - b), a * (1 - b), (1 - a) * b, a * b], axis=1)
    return corners, weights


# --- operators -----------------------------------------------------------------------------------


class InterpolationLinearization:
    """``y = P f(x)`` linearised at ``x``: ``P`` and the linear ``f`` do not depend on ``x``.

    ::

        TL   df = f(dx)            dy = P df
        AD   af = P^T ay           ax = f^T af
    """

    def __init__(self, operator: "PointOperator", output: np.ndarray):
        self.operator = operator
        self.output = output

    def tl(self, dx: np.ndarray) -> np.ndarray:
        df = self.operator.field(self.operator._state(dx, "increment dx"))
        dy = self.operator.interpolate(df)
        return dy

    def ad(self, ay: np.ndarray) -> np.ndarray:
        af = self.operator.interpolate_ad(self.operator._observation(ay))
        ax = self.operator.field_ad(af)
        return ax


class PointOperator(OperatorBase):
    """``y = P f(x)``: ``P`` a sparse interpolation (``corners``, ``weights``, ``(n_obs, 4)``
    each, flat indices into the state), ``f`` the identity (a subclass may change it)."""

    name = "points"

    def _set_weights(self, corners: np.ndarray, weights: np.ndarray) -> None:
        self.corners, self.weights = corners, weights
        for array in (self.corners, self.weights):
            array.setflags(write=False)
        self.n_obs = int(corners.shape[0])
        self.indices = corners[np.arange(self.n_obs), np.argmax(weights, axis=1)]  # the nearest grid point (for files)

    def field(self, x: np.ndarray) -> np.ndarray:
        """``f(x)``: the field interpolated (the state itself)."""
        return x

    def field_ad(self, af: np.ndarray) -> np.ndarray:
        """``f^T af``."""
        return af

    def interpolate(self, f: np.ndarray) -> np.ndarray:
        """``P f``: the weighted sum of each observation's four corners."""
        return np.sum(self.weights * f[self.corners], axis=1)

    def interpolate_ad(self, av: np.ndarray) -> np.ndarray:
        """``P^T av``: each observation's weighted value scattered back onto its corners."""
        return np.bincount(self.corners.ravel(), weights=(self.weights * av[:, None]).ravel(), minlength=self.n_state)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """``y = P f(x)``."""
        return self.interpolate(self.field(self._state(x)))

    def linearize(self, x: np.ndarray) -> InterpolationLinearization:
        return InterpolationLinearization(self, self.apply(x))

    def at_step(self, step: int) -> "PointOperator":
        """The operator observing at model step ``step`` (itself: the network stays)."""
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.n_obs} observations on a {self.grid.ny} x {self.grid.nx} grid)"


def _layers(layer: Any, grid: Grid) -> np.ndarray:
    if layer == "all":
        return np.arange(grid.n_fields)
    if isinstance(layer, bool) or not isinstance(layer, numbers.Integral) or not 0 <= layer < grid.n_fields:
        raise ValueError(f"layer must be 'all' or an integer in [0, {grid.n_fields}), got {layer!r}")
    return np.array([int(layer)])


def _in_layers(corners: np.ndarray, weights: np.ndarray, layers: np.ndarray, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """The one-field ``corners`` repeated in each observed layer, layer by layer."""
    offsets = layers[:, None, None] * (grid.nx * grid.ny)
    return (corners[None] + offsets).reshape(-1, 4), np.broadcast_to(weights, (layers.size, *weights.shape)).reshape(-1, 4)


def _integer(value: Any, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class Points(PointOperator):
    """``Points(n_state, model=None, grid=None, layer=0, x=None, y=None, stations=None, seed=0,
    move_every=None)``: the state at stations, by bilinear interpolation (module docstring).

    ::

        NL   y  = P x        TL   dy = P dx        AD   ax = P^T ay
    """

    name = "points"

    def __init__(self, n_state: int, model=None, grid: Mapping | None = None, layer: Any = 0, x=None, y=None,
                 stations: int | None = None, seed: int = 0, move_every: int | None = None):
        self.n_state = _check_n_state(n_state, f"{self.name} operator")
        self.grid = Grid.of(self.n_state, model, grid)
        self.model = model
        self.layer = layer
        self.layers = _layers(layer, self.grid)
        self.seed = _integer(seed, f"{self.name} operator: seed", 0)
        self.move_every = None if move_every is None else _integer(move_every, f"{self.name} operator: move_every", 1)
        if stations is not None:
            if x is not None or y is not None:
                raise ValueError(f"{self.name} operator: give the stations as x and y, or their number as stations, not both")
            self.stations = _integer(stations, f"{self.name} operator: stations", 1)
            px, py = self.grid.random_positions(self.stations, np.random.default_rng([self.seed, 0]))
        else:
            if self.move_every is not None:
                raise ValueError(f"{self.name} operator: move_every needs randomly drawn stations (stations: n)")
            px, py = self._positions(x, y)
            self.stations = px.size
        self._place(px, py)

    def _positions(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        if x is None or y is None:
            raise ValueError(f"{self.name} operator: give the stations as x and y (lists of positions) or stations: n")
        px, py = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        if px.ndim != 1 or px.shape != py.shape or px.size == 0:
            raise ValueError(f"{self.name} operator: x and y must be non-empty lists of the same length, got shapes {px.shape} and {py.shape}")
        if not (np.all(np.isfinite(px)) and np.all(np.isfinite(py))):
            raise ValueError(f"{self.name} operator: station positions must be finite")
        return px, py

    def _place(self, px: np.ndarray, py: np.ndarray) -> None:
        self.x, self.y = px, py
        corners, weights = bilinear_weights(self.grid, px, py)
        self._set_weights(*_in_layers(corners, weights, self.layers, self.grid))
        self.positions = (np.tile(px, self.layers.size), np.tile(py, self.layers.size))

    def at_step(self, step: int) -> "Points":
        """The operator of model step ``step``: stations drawn from ``(seed, step // move_every)``."""
        if self.move_every is None or step // self.move_every == 0:
            return self
        moved = object.__new__(type(self))
        moved.__dict__.update(self.__dict__)
        moved._place(*self.grid.random_positions(self.stations, np.random.default_rng([self.seed, step // self.move_every])))
        return moved

    def to_spec(self) -> dict:
        return {"type": self.name, "n_state": self.n_state, "grid": self.grid.spec(), "layer": self.layer,
                "x": self.x.tolist(), "y": self.y.tolist()}


class StreamfunctionPoints(Points):
    """``StreamfunctionPoints(n_state, model, layer=0, ...)``: the model's streamfunction at stations.

    ``model.streamfunction(x)`` (linear in ``x``) and its adjoint ``model.streamfunction_ad``::

        NL   psi  = S x            y  = P psi
        TL   dpsi = S dx           dy = P dpsi
        AD   apsi = P^T ay         ax = S^T apsi
    """

    name = "streamfunction_points"

    def __init__(self, n_state: int, model=None, layer: Any = 0, x=None, y=None,
                 stations: int | None = None, seed: int = 0, move_every: int | None = None):
        missing = [name for name in ("streamfunction", "streamfunction_ad") if not callable(getattr(model, name, None))]
        if missing:
            raise ValueError(f"{self.name} operator: the model {model!r} has no {' and no '.join(missing)}")
        super().__init__(n_state, model=model, layer=layer, x=x, y=y, stations=stations, seed=seed, move_every=move_every)

    def field(self, x: np.ndarray) -> np.ndarray:
        """``psi = S x``."""
        return np.asarray(self.model.streamfunction(x), dtype=float).reshape(self.n_state)

    def field_ad(self, apsi: np.ndarray) -> np.ndarray:
        """``ax = S^T apsi``."""
        return np.asarray(self.model.streamfunction_ad(apsi), dtype=float).reshape(self.n_state)

    def to_spec(self) -> dict:
        spec = super().to_spec()
        del spec["grid"]
        return spec


class GridSubset(PointOperator):
    """``GridSubset(n_state, model=None, grid=None, layer=0, every=1, offset=0)``: the state at
    grid points ``(j, i) = (offset + m every, offset + n every)`` of the observed layer(s).

    ::

        NL   y  = x[i]        TL   dy = dx[i]        AD   ax = 0;  ax[i] += ay

    (the interpolation of a point on a grid node: weight 1 at that corner).
    ``every`` and ``offset``: an integer, or ``[y, x]`` for each direction.
    """

    name = "grid_subset"

    def __init__(self, n_state: int, model=None, grid: Mapping | None = None, layer: Any = 0, every: Any = 1, offset: Any = 0):
        self.n_state = _check_n_state(n_state, f"{self.name} operator")
        self.grid = Grid.of(self.n_state, model, grid)
        self.layer, self.every, self.offset = layer, every, offset
        self.layers = _layers(layer, self.grid)
        (sy, sx), (oy, ox) = self._pair(every, "every", 1), self._pair(offset, "offset", 0)
        j, i = np.meshgrid(np.arange(oy, self.grid.ny, sy), np.arange(ox, self.grid.nx, sx), indexing="ij")
        if j.size == 0:
            raise ValueError(f"{self.name} operator: offset {offset!r} lies outside the {self.grid.ny} x {self.grid.nx} grid")
        corners = np.zeros((j.size, 4), dtype=np.int64)
        corners[:, 0] = (j * self.grid.nx + i).ravel()
        weights = np.zeros((j.size, 4))
        weights[:, 0] = 1.0
        self._set_weights(*_in_layers(corners, weights, self.layers, self.grid))
        px, py = self.grid.x0 + i.ravel() * self.grid.dx, self.grid.y0 + j.ravel() * self.grid.dy
        self.positions = (np.tile(px, self.layers.size), np.tile(py, self.layers.size))

    def _pair(self, value: Any, name: str, minimum: int) -> tuple[int, int]:
        pair = value if isinstance(value, (list, tuple)) else [value, value]
        if len(pair) != 2:
            raise ValueError(f"{self.name} operator: {name} must be an integer or [y, x], got {value!r}")
        return tuple(_integer(v, f"{self.name} operator: {name}", minimum) for v in pair)

    def to_spec(self) -> dict:
        return {"type": self.name, "n_state": self.n_state, "grid": self.grid.spec(), "layer": self.layer,
                "every": self.every, "offset": self.offset}
