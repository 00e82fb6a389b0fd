"""Observation operators ``y = H(x)`` with hand-coded tangent-linear and adjoint.

Every operator has ``n_state``, ``n_obs``, ``apply(x)``, ``linearize(x)`` (an object
with ``output == apply(x)``, ``tl(dx)`` and ``ad(ay)``) and the convenience forms
``apply_tl(x, dx)`` / ``apply_ad(x, ay)``, which go through ``linearize`` so each
derivative is written once.

Pointwise operators observe a function ``f`` of the state at the grid points
``i = indices`` (``P`` is the gather ``v = x[i]``, its transpose the scatter-add)::

    NL   v  = P x                  y  = f(v)
    TL   dv = P dx                 dy = f'(v) * dv
    AD   av = f'(v) * ay           ax = P^T av      (ax = 0;  ax[i] += av)

=========  ==========================  ==============================
operator   ``f(v)``                    ``f'(v)``
=========  ==========================  ==============================
identity   ``v`` (``i = 0 .. n-1``)    ``1``
subset     ``v``                       ``1``
square     ``v**2``                    ``2 v``
tanh       ``s tanh(v / s)``           ``1 - tanh(v / s)**2``
=========  ==========================  ==============================

``Linear`` applies a given matrix: ``y = H x``, ``dy = H dx``, ``ax = H^T ay``.

Constructors take keyword arguments, so a YAML mapping such as
``{type: subset, indices: {start: 0, stop: 40, step: 2}}`` is the constructor call;
the engine builds them through the ``fourdvar.operators`` entry points
(:func:`operator_from_spec`).
"""

from __future__ import annotations

import numbers
from typing import Any, Mapping

import numpy as np

from fourdvar.interfaces import ObservationOperatorBase
from fourdvar.registry import build_operator

__all__ = [
    "OperatorBase",
    "PointwiseOperator",
    "PointwiseLinearization",
    "LinearLinearization",
    "Identity",
    "Subset",
    "Linear",
    "Square",
    "Tanh",
    "resolve_indices",
    "operator_from_spec",
]


# --- validation helpers ---------------------------------------------------------


def _check_n_state(n_state: Any, who: str) -> int:
    if isinstance(n_state, bool) or not isinstance(n_state, numbers.Integral) or n_state < 1:
        raise ValueError(f"{who}: n_state must be a positive integer, got {n_state!r}")
    return int(n_state)


def _vector(value: Any, size: int, what: str) -> np.ndarray:
    """``value`` as a float64 array of shape ``(size,)``, or a ``ValueError`` naming it."""
    array = np.asarray(value, dtype=float)
    if array.shape != (size,):
        raise ValueError(f"{what} must have shape ({size},), got {array.shape}")
    return array


def _integral_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    return int(value)


def resolve_indices(indices: Any, n_state: int) -> np.ndarray:
    """The observed grid points as a read-only 1-D int array.

    Parameters
    ----------
    indices : "all", sequence of int or mapping
        ``"all"`` (every grid point), a list/array of integers, or a mapping
        ``{start: 0, stop: n_state, step: 1}`` (any key may be left out) meaning
        ``range(start, stop, step)``.
    n_state : int
        The size of the state the indices refer to.

    Returns
    -------
    numpy.ndarray
        The indices, ``int64``, read-only, in the order given.

    Raises
    ------
    ValueError
        An index outside ``[0, n_state)`` (no negative wrap-around), a repeated index,
        a non-integer or an empty selection, naming the bad index.

    Examples
    --------
    >>> resolve_indices({"start": 1, "step": 2}, 8)
    array([1, 3, 5, 7])
    >>> resolve_indices([3, 0], 4)
    array([3, 0])
    >>> resolve_indices([0, 4], 4)
    Traceback (most recent call last):
    ...
    ValueError: index 4 (position 1) is outside the state [0, n_state=4)
    """
    n_state = _check_n_state(n_state, "indices")
    if isinstance(indices, str):
        if indices != "all":
            raise ValueError(f"indices must be 'all', a list of integers or a mapping with start/stop/step, got {indices!r}")
        array = np.arange(n_state)
    elif isinstance(indices, Mapping):
        unknown = set(indices) - {"start", "stop", "step"}
        if unknown:
            raise ValueError(f"indices mapping has unknown key(s) {sorted(map(str, unknown))}; allowed: start, stop, step")
        start = _integral_int(indices.get("start", 0), "indices start")
        stop = _integral_int(indices.get("stop", n_state), "indices stop")
        step = _integral_int(indices.get("step", 1), "indices step")
        if step == 0:
            raise ValueError("indices step must not be zero")
        array = np.arange(start, stop, step)
    else:
        raw = np.asarray(indices)
        if raw.ndim != 1:
            raise ValueError(f"indices must be a 1-D list of integers, got an array of shape {raw.shape}")
        if raw.dtype == bool or not (np.issubdtype(raw.dtype, np.integer) or np.issubdtype(raw.dtype, np.floating)):
            raise ValueError(f"indices must be integers, got dtype {raw.dtype}")
        if np.issubdtype(raw.dtype, np.floating):
            bad = np.flatnonzero(~np.isfinite(raw) | (raw != np.round(raw)))
            if bad.size:
                raise ValueError(f"indices must be integers, got {raw[bad[0]]} at position {bad[0]}")
        array = raw.astype(np.int64)
    if array.size == 0:
        raise ValueError(f"indices select no grid point (n_state={n_state})")
    outside = np.flatnonzero((array < 0) | (array >= n_state))
    if outside.size:
        raise ValueError(
            f"index {array[outside[0]]} (position {outside[0]}) is outside the state [0, n_state={n_state})"
        )
    sorted_indices = np.sort(array)
    repeated = sorted_indices[1:][sorted_indices[1:] == sorted_indices[:-1]]
    if repeated.size:
        raise ValueError(f"index {repeated[0]} appears more than once (n_state={n_state}); indices must be distinct")
    array = array.astype(np.int64, copy=True)
    array.setflags(write=False)
    return array


# --- base classes -------------------------------------------------------------------


class OperatorBase(ObservationOperatorBase):
    """Shared plumbing: shape checks and ``apply_tl``/``apply_ad`` through ``linearize``."""

    name: str = "operator"
    n_state: int
    n_obs: int
    indices: np.ndarray | None = None

    def _state(self, x: Any, what: str = "state x") -> np.ndarray:
        return _vector(x, self.n_state, f"{self.name} operator: {what}")

    def _observation(self, y: Any, what: str = "observation adjoint ay") -> np.ndarray:
        return _vector(y, self.n_obs, f"{self.name} operator: {what}")

    def apply(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def linearize(self, x: np.ndarray):  # pragma: no cover
        raise NotImplementedError

    def apply_tl(self, x: np.ndarray, dx: np.ndarray) -> np.ndarray:
        """``dy = H'(x) dx``."""
        return self.linearize(x).tl(dx)

    def apply_ad(self, x: np.ndarray, ay: np.ndarray) -> np.ndarray:
        """``ax = H'(x)^T ay``."""
        return self.linearize(x).ad(ay)

    def to_spec(self) -> dict:
        """The mapping that rebuilds this operator (``type`` plus constructor keywords)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        options = ", ".join(f"{key}={value!r}" for key, value in self.to_spec().items() if key != "type")
        return f"{type(self).__name__}({options})"


class PointwiseLinearization:
    """A pointwise operator linearised at ``x``: keeps the gather indices and ``f'(v)``.

    ``slope`` is ``f'(v)`` (``None`` when ``f`` is the identity).  ``all_points`` marks
    ``indices == 0 .. n_state-1`` in order, where ``P`` is the identity matrix::

        TL   dv = P dx                 dy = f'(v) * dv
        AD   av = f'(v) * ay           ax = P^T av
    """

    def __init__(self, operator: "PointwiseOperator", output: np.ndarray, slope: np.ndarray | None):
        self.operator = operator
        self.indices = operator.indices
        self.n_state = operator.n_state
        self.all_points = operator.all_points
        self.output = output
        self.slope = slope

    def tl(self, dx: np.ndarray) -> np.ndarray:
        dx = self.operator._state(dx, "increment dx")
        dv = dx.copy() if self.all_points else dx[self.indices]  # dv = P dx
        dy = dv if self.slope is None else self.slope * dv  # dy = f'(v) * dv
        return dy

    def ad(self, ay: np.ndarray) -> np.ndarray:
        ay = self.operator._observation(ay)
        av = ay.copy() if self.slope is None else self.slope * ay  # av = f'(v) * ay
        if self.all_points:
            ax = av  # ax = P^T av, P = I
        else:
            ax = np.bincount(self.indices, weights=av, minlength=self.n_state)  # ax = P^T av (scatter-add)
        return ax


class PointwiseOperator(OperatorBase):
    """``y_j = f(x[indices_j])``; a subclass defines ``f`` (:meth:`function`) and
    ``(f, f')`` (:meth:`function_and_slope`)."""

    def __init__(self, n_state: int, indices: Any = "all"):
        self.n_state = _check_n_state(n_state, f"{self.name} operator")
        self.indices = resolve_indices(indices, self.n_state)
        self.n_obs = int(self.indices.size)
        self.all_points = bool(self.n_obs == self.n_state and np.array_equal(self.indices, np.arange(self.n_state)))

    def _gather(self, x: np.ndarray) -> np.ndarray:
        return x.copy() if self.all_points else x[self.indices]

    def function(self, v: np.ndarray) -> np.ndarray:
        """``f(v)``."""
        raise NotImplementedError

    def function_and_slope(self, v: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``(f(v), f'(v))``; ``f'`` is ``None`` for the identity function."""
        raise NotImplementedError

    def apply(self, x: np.ndarray) -> np.ndarray:
        """``y = f(P x)``."""
        v = self._gather(self._state(x))
        return self.function(v)

    def linearize(self, x: np.ndarray) -> PointwiseLinearization:
        v = self._gather(self._state(x))
        y, slope = self.function_and_slope(v)
        return PointwiseLinearization(self, y, slope)

    def _indices_spec(self) -> Any:
        return "all" if self.all_points else self.indices.tolist()

    def to_spec(self) -> dict:
        return {"type": self.name, "n_state": self.n_state, "indices": self._indices_spec()}


# --- the operators ------------------------------------------------------------------


class Subset(PointwiseOperator):
    """``Subset(n_state, indices)``: observe the state at some grid points.

    ::

        NL   y  = x[i]
        TL   dy = dx[i]
        AD   ax = 0;  ax[i] += ay        (the transpose of the gather)

    Parameters
    ----------
    n_state : int
        The size of the state.
    indices : "all", sequence of int or mapping
        The observed grid points: ``"all"``, a list of distinct integers in
        ``[0, n_state)`` or ``{start, stop, step}`` (:func:`resolve_indices`).

    Examples
    --------
    >>> H = Subset(5, [0, 3])
    >>> H.apply(np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    array([1., 4.])
    >>> H.apply_ad(np.zeros(5), np.array([10.0, 20.0]))
    array([10.,  0.,  0., 20.,  0.])
    """

    name = "subset"

    def __init__(self, n_state: int, indices: Any):
        super().__init__(n_state, indices)

    def function(self, v: np.ndarray) -> np.ndarray:
        return v

    def function_and_slope(self, v: np.ndarray) -> tuple[np.ndarray, None]:
        return v, None


class Identity(Subset):
    """``Identity(n_state)``: ``H = I``, every grid point observed; ``indices = 0 .. n_state-1``.

    ::

        NL   y = x        TL   dy = dx        AD   ax = ay

    Parameters
    ----------
    n_state : int
        The size of the state, and the number of observations.

    Examples
    --------
    >>> H = Identity(3)
    >>> H.n_obs, H.apply(np.array([1.0, -2.0, 3.0]))
    (3, array([ 1., -2.,  3.]))
    """

    name = "identity"

    def __init__(self, n_state: int):
        super().__init__(n_state, "all")

    def to_spec(self) -> dict:
        return {"type": self.name, "n_state": self.n_state}


class Square(PointwiseOperator):
    """``Square(n_state, indices="all")``: observe the square of the state.

    ::

        NL   v  = x[i]            y  = v**2
        TL   dv = dx[i]           dy = 2 v * dv
        AD   av = 2 v * ay        ax = 0;  ax[i] += av

    Parameters
    ----------
    n_state : int
        The size of the state.
    indices : "all", sequence of int or mapping, default "all"
        The observed grid points (:func:`resolve_indices`).

    Examples
    --------
    >>> H = Square(3, indices=[0, 2])
    >>> x = np.array([1.0, 2.0, 3.0])
    >>> H.apply(x), H.apply_tl(x, np.array([1.0, 1.0, 1.0]))
    (array([1., 9.]), array([2., 6.]))
    """

    name = "square"

    def function(self, v: np.ndarray) -> np.ndarray:
        return v * v

    def function_and_slope(self, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return v * v, 2.0 * v


class Tanh(PointwiseOperator):
    """``Tanh(n_state, indices="all", scale=1.0)``: a smooth saturating observation.

    Close to the identity for ``|x| << scale``, bounded by ``+-scale``::

        NL   v  = x[i]            t = tanh(v / s)        y  = s t
        TL   dv = dx[i]           dy = (1 - t**2) * dv
        AD   av = (1 - t**2) * ay                        ax = 0;  ax[i] += av

    Parameters
    ----------
    n_state : int
        The size of the state.
    indices : "all", sequence of int or mapping, default "all"
        The observed grid points (:func:`resolve_indices`).
    scale : float, default 1.0
        ``s``, the bound of the observed values.

    Raises
    ------
    ValueError
        When ``scale`` is not a positive finite number.

    Examples
    --------
    >>> H = Tanh(2, scale=4.0)
    >>> H.apply(np.array([0.0, 100.0]))
    array([0., 4.])
    """

    name = "tanh"

    def __init__(self, n_state: int, indices: Any = "all", scale: float = 1.0):
        super().__init__(n_state, indices)
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not np.isfinite(scale) or scale <= 0:
            raise ValueError(f"tanh operator: scale must be a positive finite number, got {scale!r}")
        self.scale = float(scale)

    def function(self, v: np.ndarray) -> np.ndarray:
        return self.scale * np.tanh(v / self.scale)

    def function_and_slope(self, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = np.tanh(v / self.scale)
        return self.scale * t, 1.0 - t * t

    def to_spec(self) -> dict:
        return {**super().to_spec(), "scale": self.scale}


class LinearLinearization:
    """``H`` does not depend on ``x``::

    TL   dy = H dx
    AD   ax = H^T ay
    """

    def __init__(self, operator: "Linear", output: np.ndarray):
        self.operator = operator
        self.output = output

    def tl(self, dx: np.ndarray) -> np.ndarray:
        dx = self.operator._state(dx, "increment dx")
        return self.operator.matrix @ dx  # dy = H dx

    def ad(self, ay: np.ndarray) -> np.ndarray:
        ay = self.operator._observation(ay)
        return self.operator.matrix.T @ ay  # ax = H^T ay


class Linear(OperatorBase):
    """``Linear(matrix, n_state=None)``: ``y = H x`` for a given ``(n_obs, n_state)`` matrix.

    ::

        NL   y = H x        TL   dy = H dx        AD   ax = H^T ay

    Not pointwise (``indices is None``), so it cannot be written to an observation file.

    Parameters
    ----------
    matrix : array_like, shape (n_obs, n_state)
        ``H``, finite.
    n_state : int, optional
        When given, it must equal the number of columns.

    Raises
    ------
    ValueError
        A matrix that is not 2-D, is empty, has a non-finite entry or the wrong number of
        columns.

    Examples
    --------
    >>> H = Linear([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]])     # averages of neighbours
    >>> H.apply(np.array([1.0, 3.0, 5.0]))
    array([2., 4.])
    >>> H.apply_ad(np.zeros(3), np.array([1.0, 1.0]))
    array([0.5, 1. , 0.5])
    """

    name = "linear"

    def __init__(self, matrix: Any, n_state: int | None = None):
        H = np.array(matrix, dtype=float)
        if H.ndim != 2 or 0 in H.shape:
            raise ValueError(f"linear operator: matrix must be 2-D (n_obs, n_state) and non-empty, got shape {H.shape}")
        if not np.all(np.isfinite(H)):
            row, col = np.argwhere(~np.isfinite(H))[0]
            raise ValueError(f"linear operator: matrix has a non-finite entry {H[row, col]} at ({row}, {col})")
        if n_state is not None and _check_n_state(n_state, "linear operator") != H.shape[1]:
            raise ValueError(f"linear operator: matrix has {H.shape[1]} columns but n_state={n_state}")
        H.setflags(write=False)
        self.matrix = H
        self.n_obs, self.n_state = H.shape
        self.indices = None

    def apply(self, x: np.ndarray) -> np.ndarray:
        return self.matrix @ self._state(x)

    def linearize(self, x: np.ndarray) -> LinearLinearization:
        return LinearLinearization(self, self.apply(x))

    def to_spec(self) -> dict:
        return {"type": self.name, "matrix": self.matrix.tolist(), "n_state": self.n_state}

    def __repr__(self) -> str:
        return f"Linear(matrix of shape {self.matrix.shape})"


# --- construction through the registry ----------------------------------------------


def operator_from_spec(spec: Any, n_state: int):
    """Build an observation operator for a state of ``n_state`` points.

    Names resolve only through :func:`fourdvar.registry.build_operator` (entry points,
    registered names or ``"package.module:Class"``), so a user's operator plugs in the
    same way.

    Parameters
    ----------
    spec : str, mapping or operator
        A registry type name (``"identity"``), a mapping with ``type`` and the
        constructor's keywords (``{"type": "subset", "indices": [0, 2]}``), or an
        operator object, returned as it is after checking its ``n_state``.
    n_state : int
        The size of the state.

    Returns
    -------
    operator
        An object with the observation-operator interface.

    Raises
    ------
    ValueError
        When the spec's or the operator's ``n_state`` differs from ``n_state``.
    TypeError
        When ``spec`` is none of the above.

    Examples
    --------
    >>> operator_from_spec({"type": "subset", "indices": [0, 2]}, 4)
    Subset(n_state=4, indices=[0, 2])
    """
    n_state = _check_n_state(n_state, "operator_from_spec")
    if isinstance(spec, str):
        spec = {"type": spec}
    if isinstance(spec, Mapping):
        if "n_state" in spec and spec["n_state"] != n_state:
            raise ValueError(
                f"operator {spec.get('type')!r}: spec says n_state={spec['n_state']!r} but the state has {n_state} points"
            )
        return build_operator({**spec, "n_state": n_state})
    if hasattr(spec, "linearize") and hasattr(spec, "apply"):
        if getattr(spec, "n_state", n_state) != n_state:
            raise ValueError(f"operator {spec!r} has n_state={spec.n_state} but the state has {n_state} points")
        return spec
    raise TypeError(f"an observation operator is a type name, a mapping with 'type', or an operator; got {type(spec).__name__}")
