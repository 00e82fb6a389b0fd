"""The interfaces the engine is written against.

Arrays are 1-D float64: a state ``(n_state,)``, parameters ``(n_params,)`` (empty when
``n_params == 0``).  These are :class:`typing.Protocol` classes: an implementation only has
the methods (:mod:`fourdvar.checks` verifies they are each other's TL and AD).  Optional
capabilities are attributes with their defaults in one base class each
(:class:`fourdvar.model.ModelBase`, :class:`fourdvar.window.Window`,
:class:`ObservationOperatorBase`, :class:`fourdvar.covariances.CovarianceBase`), read through
:func:`declared`, which gives an object without the base class the base's default: the engine
never guesses a capability.
"""

from __future__ import annotations

import functools
import types
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

#: each optional capability and the base class that holds its default
_DEFAULTS: dict[str, type] = {}


def declares(*capabilities: str):
    """Class decorator: the class holds the defaults of the optional ``capabilities`` (see :func:`declared`)."""
    def register(cls: type) -> type:
        _DEFAULTS.update(dict.fromkeys(capabilities, cls))
        return cls
    return register


def declared(obj, capability: str):
    """``obj``'s optional ``capability``, or, for an object that does not declare it, the default of the
    base class that holds it (a method or a property of that class evaluated for ``obj``).

    >>> from fourdvar.covariances import Diagonal
    >>> class Plain:                                 # a model without fourdvar.ModelBase
    ...     n_state, n_params = 2, 0
    >>> declared(Plain(), "blocked_linearization"), declared(Plain(), "linearize_window")
    (False, None)
    >>> declared(Diagonal([1.0, 2.0]), "variance")()
    array([1., 4.])
    """
    value = getattr(obj, capability, _ABSENT)
    if value is not _ABSENT:
        return value
    default = vars(_DEFAULTS[capability])[capability]
    if isinstance(default, (property, functools.cached_property)):
        return (default.fget if isinstance(default, property) else default.func)(obj)
    return types.MethodType(default, obj) if isinstance(default, types.FunctionType) else default


_ABSENT = object()


@runtime_checkable
class StepLinearization(Protocol):
    """One model step ``M_{k+1:k}`` linearised at ``(x, p)``, ``output`` the nonlinear ``M(x, p)``.

    With the model's ``blocked_linearization``, ``tl`` and ``ad`` also take ``k`` directions as
    the columns of ``(n_state, k)`` and ``(n_params, k)`` matrices.
    """

    output: np.ndarray

    def tl(self, dx: np.ndarray, dp: np.ndarray) -> np.ndarray:
        """``dx_next = M_x dx + M_p dp``."""

    def ad(self, ax: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(ax_prev, ap) = (M_x^T ax, M_p^T ax)``."""


@runtime_checkable
class Window(Protocol):
    """The run ``x_k = M(x_{k-1}, p) + e_k`` over a window with its TL and AD (contract: :mod:`fourdvar.window`).

    Optional: ``blocked`` (default ``False``), ``tl`` and ``ad`` take ``k`` directions as columns.
    """

    states: np.ndarray
    n_steps: int

    def tl(self, dx0: np.ndarray, dp: np.ndarray, last_step: int | None = None, de: np.ndarray | None = None) -> list[np.ndarray]:
        """``[dx_0, .., dx_K]``: ``dx_k = M_{k:k-1}(dp, dx_{k-1}) + de_k``."""

    def ad(self, forcings, ae: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(ax_0, ap)`` for adjoint forcings ``{k: f_k}``; ``ae_k``, the adjoint of ``e_k``, into ``ae``."""


@runtime_checkable
class Model(Protocol):
    """One forecast step ``x_{k+1} = M_{k+1:k}(p, x_k)``.

    Optional capabilities, each documented with its default in :class:`fourdvar.model.ModelBase`:
    ``step_tl``, ``step_ad``, ``blocked_linearization``, ``linearize_window``, ``window_forcing``
    and what the application reads about a model (``dt``, ``param_names``, ``nx``, ``ny``, ``L``,
    ``W``, ``tendency``, ``physics``, ``correction``, ``unresolved_tendency``).
    """

    n_state: int
    n_params: int

    def step(self, x: np.ndarray, p: np.ndarray) -> np.ndarray: ...

    def linearize(self, x: np.ndarray, p: np.ndarray) -> StepLinearization: ...

    def init_params(self, rng: np.random.Generator) -> np.ndarray: ...


@runtime_checkable
class OperatorLinearization(Protocol):
    """An observation operator ``H`` linearised at ``x``; ``output`` is ``H(x)``."""

    output: np.ndarray

    def tl(self, dx: np.ndarray) -> np.ndarray: ...

    def ad(self, ay: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class ObservationOperator(Protocol):
    """``y = H(x)`` at one observation time; optional: ``at_step`` (:class:`ObservationOperatorBase`)."""

    n_obs: int

    def apply(self, x: np.ndarray) -> np.ndarray: ...

    def apply_tl(self, x: np.ndarray, dx: np.ndarray) -> np.ndarray: ...

    def apply_ad(self, x: np.ndarray, ay: np.ndarray) -> np.ndarray: ...

    def linearize(self, x: np.ndarray) -> OperatorLinearization: ...


@declares("at_step")
class ObservationOperatorBase:
    """The defaults of the optional capabilities of :class:`ObservationOperator`."""

    def at_step(self, step: int):
        """The operator observing at model step ``step``: this one, at every step."""
        return self


@runtime_checkable
class Covariance(Protocol):
    """A symmetric positive-definite covariance matrix ``C = C^1/2 C^T/2``, applied matrix-free.

    Optional capabilities, each documented with its default in
    :class:`fourdvar.covariances.CovarianceBase`: ``control_size``, ``sqrt_columns``, ``variance``,
    ``std``, ``condition_number``, ``record``.
    """

    size: int

    def apply(self, v: np.ndarray) -> np.ndarray:
        """``C v``."""

    def solve(self, v: np.ndarray) -> np.ndarray:
        """``C^-1 v``."""

    def sqrt(self, v: np.ndarray) -> np.ndarray:
        """``C^1/2 v``, with ``C = C^1/2 C^T/2``."""

    def sqrt_t(self, v: np.ndarray) -> np.ndarray:
        """``C^T/2 v``."""

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """A draw from ``N(0, C)``: ``C^1/2 w`` with ``w ~ N(0, I)``."""


@dataclass(frozen=True)
class ObservationSlot:
    """The observations ``y_k``, ``H_k``, ``R_k`` at model step ``step`` of a window (``0 .. L``); the cost
    functions take any objects with these four attributes."""

    step: int
    values: np.ndarray
    operator: ObservationOperator
    covariance: Covariance
