"""The base class of a model: the optional capabilities of :class:`fourdvar.interfaces.Model` with
their defaults, and ``step_tl``/``step_ad`` through ``linearize``, so each derivative has one
implementation.  Subclassing is optional (:func:`fourdvar.interfaces.declared`)."""

from __future__ import annotations

import numpy as np

from .interfaces import declares

__all__ = ["ModelBase", "as_vector"]


def as_vector(value, size: int, name: str) -> np.ndarray:
    """``value`` as a float64 array of shape ``(size,)``, or a ``ValueError`` naming it."""
    array = np.asarray(value, dtype=float)
    if array.shape != (size,):
        raise ValueError(f"{name} must have shape ({size},), got {array.shape}")
    return array


@declares("step_tl", "step_ad", "blocked_linearization", "linearize_window", "window_forcing",
          "dt", "param_names", "nx", "ny", "L", "W", "tendency", "physics", "correction", "unresolved_tendency",
          "unresolved_dt", "resolved_state")
class ModelBase:
    """Base class of a model: a subclass sets ``n_state`` and ``n_params`` and writes ``step(x, p)``,
    ``linearize(x, p)`` (``output``, ``tl(dx, dp)``, ``ad(ax) -> (ax_prev, ap)``) and ``init_params(rng)``.

    Examples
    --------
    The scalar model ``x_next = p x`` (one parameter):

    >>> class Scale(ModelBase):
    ...     n_state, n_params = 1, 1
    ...     def step(self, x, p):
    ...         return p * x
    ...     def linearize(self, x, p):
    ...         x, p = self._inputs(x, p)
    ...         class Linear:
    ...             output = p * x
    ...             def tl(self, dx, dp):                # dx_next = p dx + x dp
    ...                 return p * dx + x * dp
    ...             def ad(self, ax):                    # (ax_prev, ap) = (p ax, x ax)
    ...                 return p * ax, x * ax
    ...         return Linear()
    >>> model = Scale()
    >>> model.forecast(np.array([1.0]), np.array([2.0]), 3)[:, 0]
    array([1., 2., 4., 8.])
    >>> model.step_ad(np.array([3.0]), np.array([2.0]), np.array([1.0]))
    (array([2.]), array([3.]))
    """

    n_state: int
    n_params: int
    #: True when ``linearize(x, p).tl`` and ``.ad`` also take blocks of directions (see :mod:`fourdvar.window`)
    blocked_linearization: bool = False
    #: the model's own window, ``linearize_window(x0, p, n_steps) -> Window`` (see :mod:`fourdvar.window`); ``None``: the per-step chain
    linearize_window = None
    #: True when ``linearize_window`` also takes ``forcing=`` (weak constraint) and its window ``de``/``ae``
    window_forcing: bool = False
    #: the model time unit per step (``None``: the model has no physical time step)
    dt: float | None = None
    #: the parameters' names, one per entry of ``p`` (``None``: unnamed)
    param_names: list[str] | None = None
    #: a model on a 2-D grid: ``nx``, ``ny`` points over a domain ``L`` by ``W`` (``None``: no such grid)
    nx: int | None = None
    ny: int | None = None
    L: float | None = None
    W: float | None = None
    #: the right-hand side ``f`` of ``dx/dt = f(x, p)``, an object with ``evaluate(x, p)`` (``None``: a map, not an ODE)
    tendency = None
    #: a hybrid's two parts, ``h = f_physics + g_correction`` (``None``: not a hybrid)
    physics = None
    correction = None
    #: ``x -> g(x)``, the term the model's physics lacks, when it is known (``None``: unknown)
    unresolved_tendency = None
    #: the time step ``unresolved_tendency`` is measured over, when it is one model's step (``None``: a tendency in time)
    unresolved_dt = None
    #: ``x -> C x``, the part of this (truth) model's state another model represents, e.g. a coarse-graining
    #: (``None``: the columns a configuration names)
    resolved_state = None

    def _inputs(self, x, p) -> tuple[np.ndarray, np.ndarray]:
        """``(x, p)`` as float64 vectors of the model's sizes, or a ``ValueError`` naming the wrong one."""
        return as_vector(x, self.n_state, "state x"), as_vector(p, self.n_params, "parameters p")

    def step_tl(self, x: np.ndarray, p: np.ndarray, dx: np.ndarray, dp: np.ndarray) -> np.ndarray:
        """``dx_next = M_x dx + M_p dp`` at ``(x, p)``."""
        return self.linearize(x, p).tl(dx, dp)

    def step_ad(self, x: np.ndarray, p: np.ndarray, ax: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(ax_prev, ap) = (M_x^T ax, M_p^T ax)`` at ``(x, p)``."""
        return self.linearize(x, p).ad(ax)

    def init_params(self, rng: np.random.Generator) -> np.ndarray:
        """A sensible starting parameter vector (empty for a model without parameters)."""
        return np.zeros(self.n_params)

    def forecast(self, x0: np.ndarray, p: np.ndarray, n_steps: int) -> np.ndarray:
        """The trajectory ``x_0 .. x_n``, shape ``(n_steps + 1, n_state)``."""
        trajectory = np.empty((n_steps + 1, self.n_state))
        trajectory[0] = x0
        for k in range(n_steps):
            trajectory[k + 1] = self.step(trajectory[k], p)
        return trajectory

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_state={self.n_state}, n_params={self.n_params})"
