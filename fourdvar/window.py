"""The nonlinear run over an assimilation window and its tangent-linear and adjoint.

One window serves strong and weak constraint: a forcing ``e_k`` (weak constraint's model
error, zero in strong) is added after each step::

    NL   x_k = M(x_{k-1}, p) + e_k                                  k = 1 .. K
    TL   dx_0 given;  dx_k = M_{k:k-1}(dp, dx_{k-1}) + de_k
    AD   ax = f_K, ap = 0
         for k = K .. 1:  ae_k = ax ;  (ax, ap_k) = M_{k:k-1}^T ax ;  ap += ap_k ;  ax += f_{k-1}

``f_k`` an adjoint forcing injected at step ``k`` (``H_k^T R_k^-1 (H_k dx_k - d_k)`` for the
gradient).  The window contract (:class:`Window`, what :func:`linearize_window` returns):
``states`` ``(K + 1, n_state)``, :func:`forecast`'s to rounding; ``n_steps`` ``K``;
``tl(dx0, dp, last_step=None, de=None) -> [dx_0 .. dx_k]``, ``de`` ``(K, n_state)`` (row ``k - 1``
added after step ``k``); ``ad(forcings, ae=None) -> (ax_0, ap)``, fresh, for ``forcings``
``{k: f_k}``, ``ae`` ``(K, n_state)`` receiving ``ae_k`` in row ``k - 1``, so that
``sum_k <dx_k, f_k> == <dx0, ax_0> + <dp, ap> + sum_k <de_k, ae_k>``; ``blocked``: ``tl`` and
``ad`` also take ``k`` directions as columns (``(n_state, k)``, ``(n_params, k)``,
``(K, n_state, k)``), what :func:`tl_block` and :func:`ad_block` give any window.

A model may have its own window, ``model.linearize_window(x0, p, n_steps)`` (a dense
network's weight adjoint as one product over the steps, a compiled sweep), which takes
``forcing=`` when the model declares ``window_forcing``; else :class:`WindowLinearization`
chains the steps (:class:`PerStepModel` forces this: the reference).  Where a step's TL or
AD is mostly numpy call overhead (a small grid), a blocked model's window stores the step
Jacobians ``[M_x^T; M_p^T] = AD(I_n)`` on its third sweep (:class:`DenseStepLinearization`).
"""

from __future__ import annotations

import functools
import warnings
from typing import Mapping

import numpy as np

from . import interfaces
from .interfaces import declared, declares

__all__ = ["DivergenceError", "ForcedWindowLinearization", "declared", "PerStepModel", "Window", "WindowLinearization",
           "ad_block", "forced_forecast", "forecast", "linearize_window", "n_sub_windows", "sub_window_forcing",
           "sub_window_sums", "tl_block"]


class DivergenceError(FloatingPointError):
    """The nonlinear trajectory or the cost stopped being finite."""


def _require_finite(x: np.ndarray, step: int, context: str) -> None:
    if not np.all(np.isfinite(x)):
        where = f"{context}: " if context else ""
        raise DivergenceError(f"{where}the model state is not finite at step {step} (the forecast diverged)")


def _chain(advance, x0: np.ndarray, n_steps: int, n_state: int, context: str, forcing) -> np.ndarray:
    """``x_0 .. x_n``, ``x_k = advance(x_{k-1}) + e_k`` (``e_k``: row ``k - 1`` of ``forcing``), checked finite."""
    states = np.empty((n_steps + 1, n_state))
    states[0] = x0
    _require_finite(states[0], 0, context)
    with np.errstate(over="ignore", invalid="ignore"):  # divergence is reported by _require_finite
        for k in range(n_steps):
            states[k + 1] = advance(states[k])
            if forcing is not None:
                states[k + 1] += forcing[k]
            _require_finite(states[k + 1], k + 1, context)
    return states


def forecast(model, x0: np.ndarray, p: np.ndarray, n_steps: int, context: str = "", forcing: np.ndarray | None = None) -> np.ndarray:
    """The nonlinear trajectory ``x_0 .. x_n``, shape ``(n_steps + 1, n_state)``; ``forcing`` ``(n_steps, n_state)``
    adds ``e_k`` (row ``k - 1``) after step ``k``."""
    return _chain(lambda x: model.step(x, p), x0, n_steps, model.n_state, context, forcing)


# --- weak constraint's sub-windows: one forcing eta_j for the steps k with (k - 1) // every == j ---


def n_sub_windows(n_steps: int, every: int) -> int:
    """The number of sub-windows of ``every`` steps (the last one possibly shorter) in ``n_steps``."""
    return -(-int(n_steps) // int(every))


def sub_window_forcing(eta: np.ndarray, every: int, n_steps: int) -> np.ndarray:
    """``e_k = eta_{j(k)}``, ``j(k) = (k - 1) // every``, ``k = 1 .. n_steps``: ``(n_steps, ...)`` from ``eta`` ``(n_sub, ...)``."""
    return np.repeat(eta[: -(-n_steps // every)], every, axis=0)[:n_steps]


def sub_window_sums(ae: np.ndarray, every: int, n_sub: int) -> np.ndarray:
    """The adjoint of :func:`sub_window_forcing`: ``aeta_j = sum_{k in j} ae_k``, ``(n_sub, ...)`` (zero for a
    sub-window past ``ae``'s steps), as one matrix product with the 0/1 matrix of the sub-windows."""
    S = _sub_window_matrix(n_sub, int(every), ae.shape[0])
    return (S @ ae.reshape(ae.shape[0], -1)).reshape((n_sub,) + ae.shape[1:])


@functools.lru_cache(maxsize=64)
def _sub_window_matrix(n_sub: int, every: int, n_steps: int) -> np.ndarray:
    """``S[j, k - 1] = 1`` where ``j(k) = j``, ``(n_sub, n_steps)``."""
    S = np.zeros((n_sub, n_steps))
    steps = np.arange(n_steps)
    S[steps // every, steps] = 1.0
    S.flags.writeable = False
    return S


# --- windows ------------------------------------------------------------------------------


@declares("blocked")
class Window(interfaces.Window):
    """The window contract (:class:`fourdvar.interfaces.Window`, the module docstring) with the defaults of its optional capabilities."""

    #: ``tl`` and ``ad`` take blocks of directions
    blocked: bool = False


class DenseStepLinearization:
    """One step's linearisation replaced by its stored Jacobian ``[M_x | M_p]``.

    Built from one blocked AD on the ``n`` unit vectors: ``(M_x^T, M_p^T) = lin.ad(I_n)``::

        TL   dx_next = M_x dx + M_p dp            AD   (ax_prev, ap) = (M_x^T ax, M_p^T ax)
    """

    def __init__(self, lin, n_state: int):
        self.output = lin.output
        self.MxT, self.MpT = lin.ad(np.eye(n_state))  # M_x^T (n, n), M_p^T (n_params, n)

    def tl(self, dx: np.ndarray, dp: np.ndarray) -> np.ndarray:
        dx_next = self.MxT.T @ dx
        if self.MpT.size:
            dx_next += self.MpT.T @ dp
        return dx_next

    def ad(self, ax: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.MxT @ ax, self.MpT @ ax


class WindowLinearization(Window):
    """``x_0 .. x_K`` and the linearisations of ``M_{k:k-1}``, ``k = 1 .. K``, with the forcing ``e_k``
    (``forcing`` ``(K, n_state)``) added after each step when given."""

    #: the largest step Jacobian ``n_state * (n_state + n_params)`` stored (module docstring)
    DENSE_STEP_SIZE = 1 << 15
    #: the most Jacobian values stored over a whole window (64 MB)
    DENSE_WINDOW_SIZE = 1 << 23
    #: the sweep (TL or AD call) on which the step Jacobians are built
    DENSE_AFTER_SWEEPS = 3

    def __init__(self, model, x0: np.ndarray, p: np.ndarray, n_steps: int, context: str = "", forcing: np.ndarray | None = None):
        self.n_state = model.n_state
        self.n_params = model.n_params
        self.blocked = bool(declared(model, "blocked_linearization"))
        self.n_steps = n_steps
        self.sweeps = 0
        self.steps = []

        def advance(x):
            self.steps.append(model.linearize(x, p))
            return self.steps[-1].output

        self.states = _chain(advance, x0, n_steps, model.n_state, context, forcing)

    @property
    def dense(self) -> bool:
        """Whether the steps are stored as Jacobians (:class:`DenseStepLinearization`)."""
        return any(isinstance(step, DenseStepLinearization) for step in self.steps)

    def _count_sweep(self) -> None:
        """Count a TL or AD sweep; on the ``DENSE_AFTER_SWEEPS``-th, store the step Jacobians if that pays."""
        self.sweeps += 1
        step_size = self.n_state * (self.n_state + self.n_params)
        small = step_size <= self.DENSE_STEP_SIZE and step_size * self.n_steps <= self.DENSE_WINDOW_SIZE
        if self.sweeps == self.DENSE_AFTER_SWEEPS and self.blocked and small:
            self.steps = [DenseStepLinearization(lin, self.n_state) for lin in self.steps]

    def tl(self, dx0: np.ndarray, dp: np.ndarray, last_step: int | None = None, de: np.ndarray | None = None) -> list[np.ndarray]:
        """``[dx_0, dx_1, ..., dx_K]`` with ``K = last_step`` (default: the whole window)."""
        self._count_sweep()
        last_step = self.n_steps if last_step is None else last_step
        dx = [dx0]
        for k, lin in enumerate(self.steps[:last_step]):
            dx.append(lin.tl(dx[-1], dp) if de is None else lin.tl(dx[-1], dp) + de[k])
        return dx

    def ad(self, forcings: Mapping[int, np.ndarray], ae: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(ax_0, ap)`` for adjoint forcings ``{k: f_k}`` injected at steps ``k``; ``ae_k`` into ``ae``."""
        self._count_sweep()
        block = np.shape(next(iter(forcings.values())))[1:] if forcings else ()
        ap = np.zeros((self.n_params,) + block)
        ax = np.zeros((self.n_state,) + block)
        if ae is not None:
            ae[...] = 0.0
        for k in range(max(forcings, default=0), 0, -1):
            if k in forcings:
                ax = ax + forcings[k]
            if ae is not None:
                ae[k - 1] = ax
            ax, ap_k = self.steps[k - 1].ad(ax)
            ap += ap_k
        if 0 in forcings:
            ax = ax + forcings[0]
        return ax, ap


def tl_block(window, dx0: np.ndarray, dp: np.ndarray, last_step: int | None = None, de: np.ndarray | None = None) -> list[np.ndarray]:
    """``window.tl`` for ``k`` directions, ``dx0`` ``(n_state, k)``, ``dp`` ``(n_params, k)``, ``de`` ``(K, n_state, k)``.

    One blocked sweep when ``window.blocked``, else one sweep per column, stacked.
    """
    if declared(window, "blocked"):
        return window.tl(dx0, dp, last_step) if de is None else window.tl(dx0, dp, last_step, de=de)
    columns = [window.tl(dx0[:, d], dp[:, d], last_step) if de is None else window.tl(dx0[:, d], dp[:, d], last_step, de=de[..., d])
               for d in range(dx0.shape[1])]
    return [np.stack(dx_k, axis=1) for dx_k in zip(*columns)] if columns else [dx0]


def ad_block(window, forcings: Mapping[int, np.ndarray], ae: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``window.ad`` for forcings of ``k`` columns each, ``(n_state, k)``: ``(ax_0, ap)``, ``(., k)`` each
    (``ae`` ``(K, n_state, k)``).  One blocked sweep when ``window.blocked``, else one sweep per column, stacked."""
    if declared(window, "blocked") or not forcings:
        return window.ad(forcings) if ae is None else window.ad(forcings, ae=ae)
    k = next(iter(forcings.values())).shape[1]
    columns = [window.ad({step: f[:, d] for step, f in forcings.items()}, *(() if ae is None else (ae[..., d],))) for d in range(k)]
    return np.stack([ax for ax, _ in columns], axis=1), np.stack([ap for _, ap in columns], axis=1)


def linearize_window(model, x0: np.ndarray, p: np.ndarray, n_steps: int, context: str = "", forcing: np.ndarray | None = None):
    """The window ``x_0 .. x_K`` linearised (with the forcing ``e_k`` after each step when given):
    the model's own ``linearize_window`` when it has one (and takes the forcing, if one is given),
    else :class:`WindowLinearization`.  A model's window has its ``states`` checked here."""
    hook = declared(model, "linearize_window")
    if hook is None or (forcing is not None and not declared(model, "window_forcing")):
        return WindowLinearization(model, x0, p, n_steps, context=context, forcing=forcing)
    _require_finite(np.asarray(x0), 0, context)
    with np.errstate(over="ignore", invalid="ignore"):  # divergence is reported by _require_finite
        window = hook(x0, p, n_steps) if forcing is None else hook(x0, p, n_steps, forcing=forcing)
    states = window.states
    if states.shape != (n_steps + 1, model.n_state):
        raise ValueError(f"{type(model).__name__}.linearize_window returned states of shape {states.shape}, "
                         f"expected ({n_steps + 1}, {model.n_state})")
    if not np.all(np.isfinite(states)):
        first = int(np.argmin(np.all(np.isfinite(states), axis=1)))
        _require_finite(states[first], first, context)
    return window


class PerStepModel:
    """``model`` without its own window (``linearize_window = None``), everything else passed through:
    the per-step chain a model's window is checked against and timed against."""

    linearize_window = None
    window_forcing = False

    def __init__(self, model):
        self._model = model

    def __getattr__(self, name):
        return getattr(self._model, name)


# --- deprecated forms of the forced window ------------------------------------------------------


def warn_deprecated(old: str, new: str) -> None:
    warnings.warn(f"{old} is deprecated; use {new}", DeprecationWarning, stacklevel=3)


def forced_forecast(model, x0: np.ndarray, p: np.ndarray, n_steps: int, eta: np.ndarray, every: int, context: str = "") -> np.ndarray:
    """Deprecated: ``forecast(model, x0, p, n_steps, context, forcing=sub_window_forcing(eta, every, n_steps))``."""
    warn_deprecated("forced_forecast", "forecast(..., forcing=sub_window_forcing(eta, every, n_steps))")
    return forecast(model, x0, p, n_steps, context, forcing=sub_window_forcing(np.asarray(eta, dtype=float), every, n_steps))


class ForcedWindowLinearization(WindowLinearization):
    """Deprecated: :class:`WindowLinearization` with ``forcing=sub_window_forcing(eta, every, n_steps)``;
    ``tl(..., deta=)`` and ``ad_eta`` take and give the sub-windows' ``(n_sub, n_state)`` forcing."""

    def __init__(self, model, x0: np.ndarray, p: np.ndarray, n_steps: int, eta: np.ndarray, every: int, context: str = ""):
        warn_deprecated("ForcedWindowLinearization", "WindowLinearization(..., forcing=sub_window_forcing(eta, every, n_steps))")
        self.every, self.eta = int(every), np.asarray(eta, dtype=float)
        super().__init__(model, x0, p, n_steps, context, forcing=sub_window_forcing(self.eta, self.every, n_steps))

    def tl(self, dx0, dp, last_step=None, de=None, deta=None):
        return super().tl(dx0, dp, last_step, de if deta is None else sub_window_forcing(deta, self.every, self.n_steps))

    def ad_eta(self, forcings):
        ae = np.empty((self.n_steps, self.n_state))
        ax, ap = self.ad(forcings, ae=ae)
        return ax, ap, sub_window_sums(ae, self.every, len(self.eta))
