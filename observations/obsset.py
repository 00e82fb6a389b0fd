"""The observations of a window (or of a long record), and their NetCDF form.

An :class:`ObservationSet` is a sorted list of
:class:`fourdvar.interfaces.ObservationSlot` ``(step, values, operator, covariance)``:
``y_k``, ``H_k`` and ``R_k`` at model step ``k``.  Steps are unique and may be
irregular; each slot may use its own operator and number of observations.  The cost
functions take the slots directly.

File format (one flat dimension ``obs``, one row per observation; specified in
``docs/observation_files.md``)::

    value(obs)      float64  observed value y
    step(obs)       int64    model step of the observation (>= 0, from the start of cycle 0)
      or time(obs)  float64  model time t = step * dt of the observation (mapped to the step)
    index(obs)      int64    observed grid point, 0-based, in [0, n_state)
    error_std(obs)  float64  observation error standard deviation (R = diag(error_std**2))
    operator(obs)   str      registry name of the slot's operator: identity | subset | square | tanh
    scale(obs)      float64  tanh scale s (NaN for other operators); only present if some slot uses tanh
    x(obs), y(obs)  float64  station position of a gridded 2-D point operator (NaN for others); only
                             present if some slot uses one, whose ``index`` is then the nearest grid point
    global attribute n_state (optional: one integer)

Every observation of one step shares that step's operator; within a step the rows
are in the operator's index order.  Only pointwise operators with diagonal ``R``
can be written: a ``Linear`` operator or a non-diagonal ``R`` raises ``ValueError``.
The point operators of :mod:`observations.grid2d` are written (with their
positions) but not read back: they need the model's grid.
The same table can be a CSV file (:meth:`ObservationSet.from_csv`): a header line
naming the columns ``time`` or ``step``, ``location`` or ``index``, ``value``,
``error`` or ``error_std``, ``operator`` (optional, default ``subset``) and ``scale``.
"""

from __future__ import annotations

import csv
import dataclasses
import numbers
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import xarray as xr

from fourdvar.covariances import Diagonal
from fourdvar.interfaces import ObservationSlot

from .climatology import with_climatology as _with_climatology
from .grid2d import PointOperator
from .operators import Identity, Square, Subset, Tanh, operator_from_spec

__all__ = ["ObservationSet", "synthetic_observations", "file_format", "FILE_OPERATORS"]

#: Operators that can be stored in an observation file, by exact class.
FILE_OPERATORS: dict[type, str] = {Identity: "identity", Subset: "subset", Square: "square", Tanh: "tanh"}
_REQUIRED_VARIABLES = ("value", "step", "index", "error_std", "operator")
#: CSV column names read as the file variables they stand for.
_CSV_ALIASES = {"location": "index", "error": "error_std"}
#: A time whose step ``t / dt`` is farther than this (relative) from an integer is off the model's grid.
TIME_TOLERANCE = 1e-6


def _step_int(step: Any, what: str = "step") -> int:
    if isinstance(step, bool) or not isinstance(step, numbers.Integral):
        raise ValueError(f"{what} must be an integer, got {step!r}")
    if step < 0:
        raise ValueError(f"{what} must be >= 0, got {step}")
    return int(step)


def _check_slot(slot: Any) -> ObservationSlot:
    for attribute in ("step", "values", "operator", "covariance"):
        if not hasattr(slot, attribute):
            raise TypeError(f"an observation slot needs step, values, operator and covariance; {slot!r} has no {attribute!r}")
    step = _step_int(slot.step, "observation slot step")
    n_obs = slot.operator.n_obs
    values = np.array(slot.values, dtype=float)
    if values.shape != (n_obs,):
        raise ValueError(f"observation slot at step {step}: values must have shape ({n_obs},) (the operator's n_obs), got {values.shape}")
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise ValueError(f"observation slot at step {step}: value {values[bad[0]]} at position {bad[0]} is not finite")
    if slot.covariance.size != n_obs:
        raise ValueError(f"observation slot at step {step}: R has size {slot.covariance.size} but the operator has n_obs={n_obs}")
    values.setflags(write=False)
    return ObservationSlot(step=step, values=values, operator=slot.operator, covariance=slot.covariance)


def file_format(path: str | os.PathLike) -> str:
    """``"netcdf"`` (NetCDF-3 or HDF5 signature), ``"csv"`` (text whose first line has a comma) or ``"unknown"``."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return "unknown"
    if head.startswith((b"CDF\x01", b"CDF\x02", b"CDF\x05", b"\x89HDF\r\n\x1a\n")):
        return "netcdf"
    first = head.split(b"\n", 1)[0]
    return "csv" if b"\0" not in head and b"," in first else "unknown"


class ObservationSet:
    """``ObservationSet(slots)``: the observation slots of a window, sorted by step.

    ``slots`` is any iterable of objects with ``step``, ``values``, ``operator`` and
    ``covariance``; they are stored as :class:`~fourdvar.interfaces.ObservationSlot`
    with read-only ``values``.  Steps must be distinct integers ``>= 0``.
    """

    def __init__(self, slots: Iterable[Any] = ()):
        checked = sorted((_check_slot(slot) for slot in slots), key=lambda slot: slot.step)
        steps = [slot.step for slot in checked]
        for previous, current in zip(steps, steps[1:]):
            if previous == current:
                raise ValueError(f"two observation slots at step {current}; steps must be distinct")
        sizes = {getattr(slot.operator, "n_state", None) for slot in checked} - {None}
        if len(sizes) > 1:
            raise ValueError(f"observation operators disagree about the state size: n_state in {sorted(sizes)}")
        self._slots: tuple[ObservationSlot, ...] = tuple(checked)
        self._n_state: int | None = sizes.pop() if sizes else None

    # --- container ----------------------------------------------------------------

    @property
    def slots(self) -> tuple[ObservationSlot, ...]:
        return self._slots

    @property
    def steps(self) -> np.ndarray:
        """The observed steps, increasing."""
        return np.array([slot.step for slot in self._slots], dtype=np.int64)

    @property
    def n_obs(self) -> int:
        """Total number of observations over all slots."""
        return int(sum(slot.operator.n_obs for slot in self._slots))

    @property
    def n_state(self) -> int | None:
        """The operators' state size (``None`` for an empty set or operators without ``n_state``)."""
        return self._n_state

    def __len__(self) -> int:
        return len(self._slots)

    def __iter__(self) -> Iterator[ObservationSlot]:
        return iter(self._slots)

    def __getitem__(self, position: int) -> ObservationSlot:
        return self._slots[position]

    def __repr__(self) -> str:
        if not self._slots:
            return "ObservationSet(empty)"
        kinds = sorted({getattr(slot.operator, "name", type(slot.operator).__name__) for slot in self._slots})
        return (
            f"ObservationSet({len(self)} slots, steps {self._slots[0].step}..{self._slots[-1].step}, "
            f"{self.n_obs} observations, operators {', '.join(kinds)})"
        )

    def slot_at(self, step: int) -> ObservationSlot:
        """The slot at ``step``; ``KeyError`` if there is none."""
        for slot in self._slots:
            if slot.step == step:
                return slot
        raise KeyError(f"no observations at step {step} (observed steps: {self.steps.tolist()})")

    def values_at(self, step: int) -> np.ndarray:
        """``y_k`` at ``step``; ``KeyError`` if there is none."""
        return self.slot_at(step).values

    @classmethod
    def synthetic(cls, trajectory, steps, operator, error_std, rng) -> "ObservationSet":
        """Observations of a known truth; see :func:`synthetic_observations`."""
        return synthetic_observations(trajectory, steps, operator, error_std, rng)

    def with_climatology(self, every: int) -> "ObservationSet":
        """The set with climatological pseudo-observations of the unobserved points every
        ``every`` steps (:func:`observations.climatology.with_climatology`)."""
        return _with_climatology(self, every)

    # --- cutting a record into windows ------------------------------------------------

    def window(self, start: int, length: int, include_end: bool = True) -> "ObservationSet":
        """The slots with ``start <= step <= start + length``, steps made relative to ``start``.

        A window of ``length`` model steps has states ``x_0 .. x_L``, so both ends
        are included by default.  When cycling windows that share their boundary
        state, pass ``include_end=False`` (``start <= step < start + length``) so no
        observation is assimilated twice.
        """
        start = _step_int(start, "window start")
        length = _step_int(length, "window length")
        stop = start + length
        return ObservationSet(
            dataclasses.replace(slot, step=slot.step - start)
            for slot in self._slots
            if start <= slot.step and (slot.step <= stop if include_end else slot.step < stop)
        )

    def shifted(self, offset: int) -> "ObservationSet":
        """The same observations with every step moved by ``offset``."""
        if isinstance(offset, bool) or not isinstance(offset, numbers.Integral):
            raise ValueError(f"offset must be an integer, got {offset!r}")
        if self._slots and self._slots[0].step + offset < 0:
            raise ValueError(f"shifting by {offset} moves step {self._slots[0].step} below 0")
        return ObservationSet(dataclasses.replace(slot, step=slot.step + int(offset)) for slot in self._slots)

    # --- files ---------------------------------------------------------------------------

    def to_dataset(self, units: str = "1") -> xr.Dataset:
        """The observations as a flat :class:`xarray.Dataset` along ``obs`` (format in the module docstring).

        ``units`` are those of the observed values (and of ``error_std``).
        """
        kinds, error_stds, scales, positions = [], [], [], []
        for slot in self._slots:
            kind = FILE_OPERATORS.get(type(slot.operator))
            if isinstance(slot.operator, PointOperator):
                kind = slot.operator.name
            if kind is None:
                raise ValueError(
                    f"the slot at step {slot.step} uses a {type(slot.operator).__name__} operator, which cannot be "
                    f"written to an observation file (only the pointwise operators {', '.join(FILE_OPERATORS.values())})"
                )
            if not isinstance(slot.covariance, Diagonal):
                raise ValueError(
                    f"the slot at step {slot.step} has a {type(slot.covariance).__name__} R; only a diagonal R "
                    "(fourdvar.covariances.Diagonal) can be written to an observation file"
                )
            n = slot.operator.n_obs
            kinds.append(np.full(n, kind, dtype=object))
            error_stds.append(np.broadcast_to(np.asarray(slot.covariance.std, dtype=float), (n,)))
            scales.append(np.full(n, slot.operator.scale if kind == "tanh" else np.nan))
            positions.append(np.stack(slot.operator.positions, axis=1) if isinstance(slot.operator, PointOperator) else np.full((n, 2), np.nan))

        def joined(parts: list, dtype) -> np.ndarray:
            return np.concatenate(parts).astype(dtype) if parts else np.empty(0, dtype=dtype)

        counts = [slot.operator.n_obs for slot in self._slots]
        operator_kinds = joined(kinds, object)
        variables = {
            "value": (
                ("obs",), joined([slot.values for slot in self._slots], float),
                {"long_name": "observed value y = H(x) + e", "units": units},
            ),
            "step": (
                ("obs",), np.repeat(self.steps, counts).astype(np.int64),
                {"long_name": "model step of the observation", "units": "1", "valid_min": 0},
            ),
            "index": (
                ("obs",), joined([slot.operator.indices for slot in self._slots], np.int64),
                {"long_name": "observed grid point (0-based index into the state vector)", "units": "1", "valid_min": 0},
            ),
            "error_std": (
                ("obs",), joined(error_stds, float),
                {"long_name": "observation error standard deviation; R = diag(error_std**2)", "units": units},
            ),
            "operator": (
                ("obs",), operator_kinds,
                {"long_name": "observation operator of the observation's step (registry type name)",
                 "flag_meanings": " ".join(FILE_OPERATORS.values())},
            ),
        }
        if np.any(operator_kinds == "tanh"):
            variables["scale"] = (
                ("obs",), joined(scales, float),
                {"long_name": "scale s of the tanh operator y = s tanh(x / s); NaN for other operators", "units": units},
            )
        if any(isinstance(slot.operator, PointOperator) for slot in self._slots):
            xy = joined(positions, float).reshape(-1, 2)
            for column, name in enumerate(("x", "y")):
                variables[name] = (("obs",), xy[:, column], {"long_name": f"{name} position of the station (gridded 2-D point operators; NaN for others)", "units": "m"})
        attrs = {
            "title": "fourdvar observations",
            "description": "one row per observation; rows of one step share that step's operator and are in its index order",
        }
        if self._n_state is not None:
            attrs["n_state"] = int(self._n_state)
        return xr.Dataset(variables, attrs=attrs)

    @classmethod
    def from_dataset(cls, ds: xr.Dataset, n_state: int | None = None, dt: float | None = None,
                     nearest_step: bool = False) -> "ObservationSet":
        """Rebuild a set from :meth:`to_dataset`'s layout, validating every field.

        ``n_state`` defaults to the ``n_state`` attribute; when both are given they must agree.
        Each slot's ``R`` is ``Diagonal(error_std)``.  A ``time`` variable instead of
        ``step`` is mapped to the steps ``k = t / dt`` of the model's time step ``dt``; a
        time off that grid is refused unless ``nearest_step`` (then ``k = round(t / dt)``).
        """
        n_state = _resolve_n_state(ds, n_state)
        if "step" not in ds.variables and "time" in ds.variables:
            ds = ds.assign(step=("obs", _steps_of_times(ds["time"], dt, nearest_step)))
        for name in (*_REQUIRED_VARIABLES, "scale"):
            if name not in ds.variables:
                if name == "scale":
                    continue
                also = " (or 'time')" if name == "step" else ""
                raise ValueError(f"observation data set has no variable {name!r}{also} (required: {', '.join(_REQUIRED_VARIABLES)})")
            if ds[name].dims != ("obs",):
                raise ValueError(f"variable {name!r} must have the single dimension ('obs',), got {ds[name].dims}")
        value = _finite(ds, "value")
        error_std = _finite(ds, "error_std")
        nonpositive = np.flatnonzero(error_std <= 0)
        if nonpositive.size:
            position = nonpositive[0]
            raise ValueError(f"variable 'error_std' must be > 0; obs position {position} has {error_std[position]}")
        step = _integers(ds, "step")
        negative = np.flatnonzero(step < 0)
        if negative.size:
            raise ValueError(f"variable 'step' must be >= 0; obs position {negative[0]} has {step[negative[0]]}")
        index = _integers(ds, "index")
        outside = np.flatnonzero((index < 0) | (index >= n_state))
        if outside.size:
            position = outside[0]
            raise ValueError(f"variable 'index': index {index[position]} at obs position {position} is outside [0, n_state={n_state})")
        kind = np.asarray(ds["operator"].values).astype(str)
        unknown = np.flatnonzero(~np.isin(kind, list(FILE_OPERATORS.values())))
        if unknown.size:
            position = unknown[0]
            raise ValueError(
                f"variable 'operator': unknown operator {str(kind[position])!r} at obs position {position} "
                f"(a file can hold {', '.join(FILE_OPERATORS.values())})"
            )
        scale = None
        if np.any(kind == "tanh"):
            if "scale" not in ds.variables:
                raise ValueError("observation data set uses the tanh operator but has no variable 'scale'")
            scale = np.asarray(ds["scale"].values, dtype=float)

        # Group the rows by step (stable, so each step keeps its index order); loop over slots only.
        order = np.argsort(step, kind="stable")
        unique_steps, starts = np.unique(step[order], return_index=True)
        stops = np.append(starts[1:], order.size)
        slots = []
        for k, begin, end in zip(unique_steps, starts, stops):
            rows = order[begin:end]
            kinds = np.unique(kind[rows])
            if kinds.size != 1:
                raise ValueError(f"the observations at step {k} use more than one operator ({', '.join(kinds)}); an operator is per step")
            spec: dict[str, Any] = {"type": str(kinds[0])}
            if spec["type"] == "identity":
                if not np.array_equal(index[rows], np.arange(n_state)):
                    raise ValueError(f"the identity observations at step {k} must list every grid point 0 .. {n_state - 1} in order")
            else:
                spec["indices"] = index[rows]
            if spec["type"] == "tanh":
                slot_scale = scale[rows]
                if not (np.all(np.isfinite(slot_scale)) and np.all(slot_scale > 0) and np.all(slot_scale == slot_scale[0])):
                    raise ValueError(f"variable 'scale' at step {k} must be one positive finite number for the whole step")
                spec["scale"] = float(slot_scale[0])
            try:
                operator = operator_from_spec(spec, n_state)
            except ValueError as error:
                raise ValueError(f"the observations at step {k}: {error}") from None
            slots.append(ObservationSlot(int(k), value[rows], operator, Diagonal(error_std[rows])))
        return cls(slots)

    def to_netcdf(self, path: str | os.PathLike, units: str = "1") -> None:
        """Write :meth:`to_dataset` to ``path`` (NetCDF-4)."""
        self.to_dataset(units=units).to_netcdf(path, engine="netcdf4")

    @classmethod
    def from_netcdf(cls, path: str | os.PathLike, n_state: int | None = None, dt: float | None = None,
                    nearest_step: bool = False) -> "ObservationSet":
        """Read a file written by :meth:`to_netcdf`; a ``ValueError`` names the file and the problem."""
        if file_format(path) == "csv":
            raise ValueError(f"observation file {os.fspath(path)!r}: a CSV (text) file, read by from_csv, not NetCDF")
        with xr.open_dataset(path, engine="netcdf4") as ds:
            ds = ds.load()
        try:
            return cls.from_dataset(ds, n_state, dt, nearest_step)
        except ValueError as error:
            raise ValueError(f"observation file {os.fspath(path)!r}: {error}") from None

    @classmethod
    def from_csv(cls, path: str | os.PathLike, n_state: int, dt: float | None = None, nearest_step: bool = False) -> "ObservationSet":
        """Read a CSV table of the file format's columns (one observation a line, a header
        line first; ``location`` and ``error`` may stand for ``index`` and ``error_std``,
        ``operator`` defaults to ``subset``); a ``ValueError`` names the file, line and column."""
        try:
            return cls.from_dataset(_csv_dataset(Path(path)), n_state, dt, nearest_step)
        except ValueError as error:
            raise ValueError(f"observation file {os.fspath(path)!r}: {error}") from None

    @classmethod
    def from_file(cls, path: str | os.PathLike, n_state: int, dt: float | None = None, nearest_step: bool = False) -> "ObservationSet":
        """:meth:`from_csv` or :meth:`from_netcdf`, by the file's contents (:func:`file_format`)."""
        if file_format(path) == "csv":
            return cls.from_csv(path, n_state=n_state, dt=dt, nearest_step=nearest_step)
        try:
            return cls.from_netcdf(path, n_state=n_state, dt=dt, nearest_step=nearest_step)
        except FileNotFoundError:
            raise
        except OSError as error:
            raise ValueError(f"observation file {os.fspath(path)!r}: neither NetCDF nor CSV (a first line of comma-separated "
                             f"column names): {' '.join(str(error).split())[:100]}") from None

    file_format = staticmethod(file_format)


def _csv_dataset(path: Path) -> xr.Dataset:
    """The CSV table at ``path`` as the file format's variables along ``obs``."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        lines = [(number, row) for number, row in enumerate(csv.reader(handle), start=1) if any(cell.strip() for cell in row)]
    if not lines:
        raise ValueError("the file is empty (expected a header line: time, location, value, error, operator)")
    header = [_CSV_ALIASES.get(name.strip().lower(), name.strip().lower()) for name in lines[0][1]]
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise ValueError(f"the header names the column {repeated[0]!r} twice (location and index, error and error_std, time and step are one column each)")
    known = {*_REQUIRED_VARIABLES, "time", "scale"}
    unknown = [name for name in header if name not in known]
    if unknown:
        raise ValueError(f"unknown column {unknown[0][:40]!r} in the header (columns: time or step, location or index, value, error, operator, scale)")
    for number, row in lines[1:]:
        if len(row) != len(header):
            raise ValueError(f"line {number} has {len(row)} fields, the header {len(header)}")
    table = np.array([row for _, row in lines[1:]], dtype=str).reshape(-1, len(header))
    columns = {name: np.char.strip(table[:, i]) for i, name in enumerate(header)}
    columns.setdefault("operator", np.full(table.shape[0], "subset"))
    numbers_at = {name: _numbers(values, name, [number for number, _ in lines[1:]]) for name, values in columns.items() if name != "operator"}
    return xr.Dataset({name: ("obs", values) for name, values in {**numbers_at, "operator": columns["operator"].astype(object)}.items()})


def _numbers(cells: np.ndarray, name: str, line_numbers: list[int]) -> np.ndarray:
    """The column ``name`` as float64; a cell that is no number is named with its line."""
    try:
        return cells.astype(float)
    except ValueError:
        for cell, number in zip(cells, line_numbers):
            try:
                float(cell)
            except ValueError:
                raise ValueError(f"line {number}, column {name!r}: {cell[:40]!r} is not a number") from None
        raise


def _steps_of_times(time: xr.DataArray, dt: float | None, nearest_step: bool) -> np.ndarray:
    """The model steps ``k = t / dt`` of the times ``t`` (from the start of cycle 0)."""
    if dt is None:
        raise ValueError("the observations are given by 'time' but the model has no time step 'dt'; give 'step' instead")
    if time.dims != ("obs",):
        raise ValueError(f"variable 'time' must have the single dimension ('obs',), got {time.dims}")
    t = np.asarray(time.values, dtype=float)
    bad = np.flatnonzero(~np.isfinite(t) | (t < 0))
    if bad.size:
        raise ValueError(f"variable 'time': {t[bad[0]]} at obs position {bad[0]} is not a time >= 0 (the start of cycle 0)")
    steps = t / dt
    nearest = np.round(steps)
    off = np.flatnonzero(np.abs(steps - nearest) > TIME_TOLERANCE * np.maximum(1.0, np.abs(steps)))
    if off.size and not nearest_step:
        i = off[0]
        raise ValueError(f"variable 'time': {t[i]:.6g} at obs position {i} is not a multiple of the model time step dt = {dt:g} "
                         f"(step {steps[i]:.4g}); set observations.nearest_step: true to use the nearest step")
    return nearest.astype(np.int64)


def _resolve_n_state(ds: xr.Dataset, n_state: int | None) -> int:
    stored = ds.attrs.get("n_state")
    if stored is not None:
        if np.ndim(stored) != 0 or isinstance(stored, (bool, np.bool_, str)) or not float(stored).is_integer() or stored < 1:
            raise ValueError(f"attribute 'n_state' must be one positive integer, got {np.array2string(np.asarray(stored), threshold=5)}")
        stored = int(stored)
    if n_state is None:
        if stored is None:
            raise ValueError("observation data set has no 'n_state' attribute; pass n_state")
        return stored
    if isinstance(n_state, bool) or not isinstance(n_state, numbers.Integral) or n_state < 1:
        raise ValueError(f"n_state must be a positive integer, got {n_state!r}")
    if stored is not None and stored != n_state:
        raise ValueError(f"observation data set was written for n_state={stored}, but n_state={n_state} was asked for")
    return int(n_state)


def _finite(ds: xr.Dataset, name: str) -> np.ndarray:
    values = np.asarray(ds[name].values, dtype=float)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise ValueError(f"variable {name!r} has a non-finite entry ({values[bad[0]]}) at obs position {bad[0]}")
    return values


def _integers(ds: xr.Dataset, name: str) -> np.ndarray:
    raw = np.asarray(ds[name].values)
    if np.issubdtype(raw.dtype, np.integer):
        return raw.astype(np.int64)
    values = np.asarray(raw, dtype=float)
    bad = np.flatnonzero(~np.isfinite(values) | (values != np.round(values)))
    if bad.size:
        raise ValueError(f"variable {name!r} must hold integers; obs position {bad[0]} has {values[bad[0]]}")
    return values.astype(np.int64)


# --- synthetic observations -----------------------------------------------------------------


def synthetic_observations(
    trajectory: np.ndarray,
    steps: Sequence[int],
    operator: Any,
    error_std: float | np.ndarray,
    rng: np.random.Generator,
) -> ObservationSet:
    """Observations of a known truth: ``y_k = H_k(x_k) + e_k``, ``e_k ~ N(0, R_k)``.

    ``trajectory``  the truth, shape ``(n_steps + 1, n_state)``; row ``k`` is ``x_k``.
    ``steps``       the observed rows (distinct integers in ``[0, n_steps]``, any spacing).
    ``operator``    ``H_k``: an operator, a registry spec (``"identity"``,
                    ``{"type": "subset", "indices": {"step": 2}}``; ``n_state`` is
                    taken from the trajectory), or a callable ``step -> operator or
                    spec`` for a network that changes with time (e.g. alternating halves).
    ``error_std``   ``> 0``: a scalar, or an array of one std per observation of
                    each slot (shape ``(n_obs,)``).  ``R_k = Diagonal(error_std)``.
    ``rng``         a :class:`numpy.random.Generator`; the noise is ``R_k.sample(rng)``
                    drawn slot by slot in increasing step order, so the same seed gives
                    the same observations.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
    trajectory = np.asarray(trajectory, dtype=float)
    if trajectory.ndim != 2:
        raise ValueError(f"trajectory must have shape (n_steps + 1, n_state), got {trajectory.shape}")
    n_rows, n_state = trajectory.shape
    steps_array = np.asarray(steps)
    if steps_array.ndim != 1 or not np.issubdtype(steps_array.dtype, np.integer):
        raise ValueError(f"steps must be a 1-D sequence of integers, got shape {steps_array.shape} and dtype {steps_array.dtype}")
    outside = np.flatnonzero((steps_array < 0) | (steps_array >= n_rows))
    if outside.size:
        raise ValueError(f"step {steps_array[outside[0]]} is outside the trajectory's steps [0, {n_rows - 1}]")
    steps_array = np.sort(steps_array)
    repeated = steps_array[1:][steps_array[1:] == steps_array[:-1]]
    if repeated.size:
        raise ValueError(f"step {repeated[0]} is listed more than once")

    if isinstance(operator, (str, Mapping)) or (hasattr(operator, "apply") and hasattr(operator, "linearize")):
        fixed = operator_from_spec(operator, n_state)
        operator_at: Callable[[int], Any] = lambda k: fixed
    elif callable(operator):
        operator_at = lambda k: operator_from_spec(operator(k), n_state)
    else:
        raise TypeError(f"operator must be an operator, a spec or a callable step -> operator, got {type(operator).__name__}")

    std = np.asarray(error_std, dtype=float)
    if std.ndim > 1:
        raise ValueError(f"error_std must be a scalar or a 1-D array, got shape {std.shape}")
    if not (np.all(np.isfinite(std)) and np.all(std > 0)):
        raise ValueError(f"error_std must be positive and finite, got {error_std!r}")

    slots = []
    for k in steps_array.tolist():
        H = operator_at(k)
        if std.ndim == 0:
            slot_std = np.full(H.n_obs, float(std))
        elif std.shape == (H.n_obs,):
            slot_std = std.copy()
        else:
            raise ValueError(f"error_std has shape {std.shape} but the operator at step {k} has n_obs={H.n_obs}")
        R = Diagonal(slot_std)
        y = H.apply(trajectory[k]) + R.sample(rng)
        slots.append(ObservationSlot(k, y, H, R))
    return ObservationSet(slots)
