"""The nonlinear run over an assimilation window and its tangent-linear and adjoint.

``WindowLinearization(model, x0, p, n_steps)`` runs ``x_{k+1} = M(x_k, p)`` once,
keeping each step's linearisation (so the inner loop never reruns the nonlinear
model), and gives the window's TL and AD::

    TL   dx_0 given;  dx_k = M_{k:k-1}(dp, dx_{k-1})             k = 1 .. K
    AD   ax = f_K, ap = 0
         for k = K .. 1:  (ax, ap_k) = M_{k:k-1}^T ax ;  ap += ap_k ;  ax += f_{k-1}

where ``f_k`` is an adjoint forcing injected at step ``k`` (for the 4D-Var
gradient, ``H_k^T R_k^-1 (H_k dx_k - d_k)``).  The parameter adjoint of every
step is accumulated over the window here, not in the model.

Small models: the step Jacobians, stored
----------------------------------------

On a small grid (Lorenz-96 or a local network at ``n = 40``) a step's TL or AD
is some tens of numpy calls on short vectors: their overhead, not arithmetic,
is the cost.  There the step's Jacobian ``[M_x | M_p]`` (``n x (n + n_params)``)
is cheaper to apply, two matrix-vector products.  A :class:`WindowLinearization`
of a model with blocked TL/AD (see below) whose step Jacobian has at most
``DENSE_STEP_SIZE`` elements (``DENSE_WINDOW_SIZE`` over the window) builds them
on its third sweep (an inner loop makes tens; a single gradient makes one, and
pays nothing), from one blocked AD per step::

    [M_x^T; M_p^T] = AD(I_n)        then   TL  dx_next = M_x dx + M_p dp
                                           AD  (ax_prev, ap) = (M_x^T ax, M_p^T ax)

(:class:`DenseStepLinearization`), the same derivative to round-off.

A model may do the whole window at once
---------------------------------------

The per-step chain above is the default.  Some models can do better over a whole
window than step by step: a dense network's parameter adjoint is a sum over
the steps of rank-1 weight updates ``az_k a_k^T``, which is one matrix product
over all steps once the sweep has stored the ``az_k`` (and likewise the TL's
``dW a_k`` terms).  A model offers this through an optional method::

    model.linearize_window(x0, p, n_steps) -> window

:func:`linearize_window` (what :meth:`fourdvar.cost.FourDVarCost.window` calls)
uses it when the model has it and :class:`WindowLinearization` otherwise.  The
returned ``window`` must provide, with exactly the meaning they have in
:class:`WindowLinearization`:

``states``
    array ``(n_steps + 1, n_state)``: ``x_0 = x0, x_1 .. x_K``, the nonlinear
    trajectory, equal to :func:`forecast` (to rounding).
``n_steps``
    ``K``, the number of steps linearised.
``tl(dx0, dp, last_step=None) -> [dx_0, dx_1, ..., dx_k]``
    a list of ``k + 1`` arrays ``(n_state,)`` with ``k = last_step`` (default
    ``K``), ``dx_0`` being ``dx0`` itself.
``ad(forcings) -> (ax_0, ap)``
    ``forcings`` maps steps ``0 .. K`` to arrays ``(n_state,)`` (steps absent
    from it have no forcing; it may be empty); ``ax_0`` has shape ``(n_state,)``
    and ``ap``, shape ``(n_params,)``, is the parameter adjoint summed over the
    steps ``1 .. K``, exactly the ``ap`` of the AD sweep above: ``ad`` is the
    adjoint of ``tl``, ``sum_k <dx_k, f_k> == <dx0, ax_0> + <dp, ap>``.  Both
    arrays are fresh (the caller may modify them).

``steps`` (the per-step linearisations) may be absent.  The hook need not check
that the trajectory stays finite: :func:`linearize_window` runs it with
overflow/invalid warnings silenced, then checks ``states`` and raises
:class:`DivergenceError` naming the first step that is not finite, as
:class:`WindowLinearization` does (which stops at that step), with the same
message.  It also checks the shape of ``states``, so a plug-in's mistake is
reported there.  ``tests/test_window_batching.py`` holds the checks a hook
should pass against the per-step chain; :class:`PerStepModel` gives that chain
for the same model.

Many directions at once (blocked TL/AD)
---------------------------------------

A Hessian matrix, a block Lanczos or an ensemble of increments applies the
window's TL and AD to many directions.  Done one by one that is one sweep per
direction; blocked it is one sweep for all ``k`` of them, each statement acting
on ``k`` columns.  The blocked contract, for a step linearisation (``tl``, ``ad``
of :class:`fourdvar.interfaces.StepLinearization`) and for a window alike:

* ``dx`` of shape ``(n_state, k)`` and ``dp`` of shape ``(n_params, k)`` (column
  ``d`` is direction ``d``) give ``dx_next`` (each ``dx_k``) of shape ``(n_state, k)``;
* ``ax`` (each forcing ``f_k``) of shape ``(n_state, k)`` gives ``ax_prev`` (``ax_0``)
  of shape ``(n_state, k)`` and ``ap`` of shape ``(n_params, k)``;
* column ``d`` of every result is exactly what the one-vector call gives for
  column ``d`` of the inputs.

A model says its step linearisations follow it with a true attribute
``blocked_linearization`` (every shipped model does); :class:`WindowLinearization`
is then blocked too (its ``blocked`` attribute).  A window returned by a
``linearize_window`` hook says so with its own ``blocked`` attribute.
:func:`tl_block` and :func:`ad_block` apply a window to a block, in one sweep
when the window is blocked and column by column otherwise, so a user's model
without blocks still works wherever blocks are used.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

__all__ = [
    "DivergenceError", "PerStepModel", "WindowLinearization", "ad_block", "forecast", "linearize_window", "tl_block",
]


class DivergenceError(FloatingPointError):
    """The nonlinear trajectory or the cost stopped being finite."""


def _require_finite(x: np.ndarray, step: int, context: str) -> None:
    if not np.all(np.isfinite(x)):
        where = f"{context}: " if context else ""
        raise DivergenceError(f"{where}the model state is not finite at step {step} (the forecast diverged)")


def forecast(model, x0: np.ndarray, p: np.ndarray, n_steps: int, context: str = "") -> np.ndarray:
    """The nonlinear trajectory ``x_0 .. x_n``, shape ``(n_steps + 1, n_state)``."""
    trajectory = np.empty((n_steps + 1, model.n_state))
    trajectory[0] = x0
    _require_finite(trajectory[0], 0, context)
    with np.errstate(over="ignore", invalid="ignore"):  # divergence is reported by _require_finite
        for k in range(n_steps):
            trajectory[k + 1] = model.step(trajectory[k], p)
            _require_finite(trajectory[k + 1], k + 1, context)
    return trajectory


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


class WindowLinearization:
    """``x_0 .. x_K`` and the linearisations of ``M_{k:k-1}``, ``k = 1 .. K``."""

    #: the largest step Jacobian ``n_state * (n_state + n_params)`` stored (module docstring)
    DENSE_STEP_SIZE = 1 << 15
    #: the most Jacobian values stored over a whole window (64 MB)
    DENSE_WINDOW_SIZE = 1 << 23
    #: the sweep (TL or AD call) on which the step Jacobians are built
    DENSE_AFTER_SWEEPS = 3

    def __init__(self, model, x0: np.ndarray, p: np.ndarray, n_steps: int, context: str = ""):
        self.n_state = model.n_state
        self.n_params = model.n_params
        self.blocked = bool(getattr(model, "blocked_linearization", False))
        self.sweeps = 0
        self.states = np.empty((n_steps + 1, model.n_state))
        self.states[0] = x0
        _require_finite(self.states[0], 0, context)
        self.steps = []
        with np.errstate(over="ignore", invalid="ignore"):  # divergence is reported by _require_finite
            for k in range(n_steps):
                lin = model.linearize(self.states[k], p)
                self.steps.append(lin)
                self.states[k + 1] = lin.output
                _require_finite(self.states[k + 1], k + 1, context)

    @property
    def n_steps(self) -> int:
        return len(self.steps)

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

    def tl(self, dx0: np.ndarray, dp: np.ndarray, last_step: int | None = None) -> list[np.ndarray]:
        """``[dx_0, dx_1, ..., dx_K]`` with ``K = last_step`` (default: the whole window)."""
        self._count_sweep()
        last_step = self.n_steps if last_step is None else last_step
        dx = [dx0]
        for lin in self.steps[:last_step]:
            dx.append(lin.tl(dx[-1], dp))
        return dx

    def ad(self, forcings: Mapping[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """``(ax_0, ap)`` for adjoint forcings ``{k: f_k}`` injected at steps ``k``."""
        self._count_sweep()
        block = np.shape(next(iter(forcings.values())))[1:] if forcings else ()
        ap = np.zeros((self.n_params,) + block)
        last_step = max(forcings, default=0)
        ax = np.zeros((self.n_state,) + block)
        for k in range(last_step, 0, -1):
            if k in forcings:
                ax = ax + forcings[k]
            ax, ap_k = self.steps[k - 1].ad(ax)
            ap += ap_k
        if 0 in forcings:
            ax = ax + forcings[0]
        return ax, ap


def tl_block(window, dx0: np.ndarray, dp: np.ndarray, last_step: int | None = None) -> list[np.ndarray]:
    """``window.tl`` for ``k`` directions, ``dx0`` ``(n_state, k)`` and ``dp`` ``(n_params, k)``.

    One blocked sweep when ``window.blocked``, else one sweep per column, stacked.
    """
    if getattr(window, "blocked", False):
        return window.tl(dx0, dp, last_step)
    columns = [window.tl(dx0[:, d], dp[:, d], last_step) for d in range(dx0.shape[1])]
    return [np.stack(dx_k, axis=1) for dx_k in zip(*columns)] if columns else [dx0]


def ad_block(window, forcings: Mapping[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``window.ad`` for forcings of ``k`` columns each, ``(n_state, k)``: ``(ax_0, ap)``, ``(., k)`` each.

    One blocked sweep when ``window.blocked``, else one sweep per column, stacked.
    """
    if getattr(window, "blocked", False) or not forcings:
        return window.ad(forcings)
    k = next(iter(forcings.values())).shape[1]
    columns = [window.ad({step: f[:, d] for step, f in forcings.items()}) for d in range(k)]
    return np.stack([ax for ax, _ in columns], axis=1), np.stack([ap for _, ap in columns], axis=1)


def linearize_window(model, x0: np.ndarray, p: np.ndarray, n_steps: int, context: str = ""):
    """The window ``x_0 .. x_K`` linearised: the model's own ``linearize_window`` if it has one.

    Without the hook this is ``WindowLinearization(model, x0, p, n_steps, context)``.
    With it, the returned object's ``states`` are checked here: their shape, and
    that every state is finite (a :class:`DivergenceError` naming the first step
    that is not, with ``context``).  See the module docstring for the contract.
    """
    hook = getattr(model, "linearize_window", None)
    if hook is None:
        return WindowLinearization(model, x0, p, n_steps, context=context)
    _require_finite(np.asarray(x0), 0, context)
    with np.errstate(over="ignore", invalid="ignore"):  # divergence is reported by _require_finite
        window = hook(x0, p, n_steps)
    states = window.states
    if states.shape != (n_steps + 1, model.n_state):
        raise ValueError(
            f"{type(model).__name__}.linearize_window returned states of shape {states.shape}, "
            f"expected ({n_steps + 1}, {model.n_state})"
        )
    if not np.all(np.isfinite(states)):
        first = int(np.argmin(np.all(np.isfinite(states), axis=1)))
        _require_finite(states[first], first, context)
    return window


class PerStepModel:
    """``model`` with its ``linearize_window`` hook hidden, everything else passed through.

    :func:`linearize_window` (and so the cost functions) then linearise it step by
    step with :class:`WindowLinearization`: the reference a batched window is checked
    against, and the baseline it is timed against.
    """

    def __init__(self, model):
        self._model = model

    def __getattr__(self, name):
        if name == "linearize_window":
            raise AttributeError(name)
        return getattr(self._model, name)
