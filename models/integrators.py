"""Explicit Runge-Kutta steps of ``dx/dt = f(x, p)``, with exact TL and AD.

For a Butcher tableau ``(A, b)`` with ``s`` stages::

    NL    X_i = x + dt * sum_{j<i} A_ij k_j          k_i = f(X_i, p)
          x_next = x + dt * sum_i b_i k_i

    TL    dX_i = dx + dt * sum_{j<i} A_ij dk_j       dk_i = f'(X_i) (dX_i, dp)
          dx_next = dx + dt * sum_i b_i dk_i

    AD    ak_i = dt * b_i * ax_next                  (all i)
          ax = ax_next, ap = 0
          for i = s .. 1:
              (aX_i, ap_i) = f'(X_i)^T ak_i
              ax += aX_i ; ap += ap_i
              ak_j += dt * A_ij * aX_i               (j < i)

The tendency is any object with ``linearize(x, p)`` returning an object with
``output`` (``f(x, p)``), ``tl(dx, dp)`` and ``ad(af) -> (ax, ap)``, and
``evaluate(x, p)`` for the nonlinear value alone.  This is the exact derivative of
the discrete step, not of the continuous equations.
"""

from __future__ import annotations

import numpy as np

from fourdvar.model import ModelBase

TABLEAUX: dict[str, tuple[tuple[tuple[float, ...], ...], tuple[float, ...]]] = {
    "euler": (((),), (1.0,)),
    "rk2": (((), (1.0,)), (0.5, 0.5)),  # Heun's method
    "rk4": (((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)), (1 / 6, 1 / 3, 1 / 3, 1 / 6)),
}


def _check_scheme(name: str) -> str:
    if name not in TABLEAUX:
        raise ValueError(f"unknown integrator {name!r}; choose one of {', '.join(TABLEAUX)}")
    return name


class RungeKutta:
    """One explicit Runge-Kutta step of length ``dt`` for a given tendency.

    Parameters
    ----------
    scheme : {"euler", "rk2", "rk4"}
        The Butcher tableau.
    dt : float
        The step length, positive.

    Raises
    ------
    ValueError
        An unknown scheme or a step that is not positive.

    Examples
    --------
    Exponential decay ``dx/dt = -x``, whose RK4 step multiplies by
    ``1 - dt + dt^2/2 - dt^3/6 + dt^4/24``:

    >>> class Decay:
    ...     def evaluate(self, x, p):
    ...         return -x
    >>> RungeKutta("rk4", 0.1).step(Decay(), np.array([1.0]), np.empty(0))
    array([0.9048375])
    """

    def __init__(self, scheme: str, dt: float):
        self.scheme = _check_scheme(scheme)
        self.dt = float(dt)
        if not self.dt > 0:
            raise ValueError(f"time step dt must be positive, got {dt}")
        self.A, self.b = TABLEAUX[scheme]
        # the nonzero dt * A_ij of each stage, and the dt * b_i, as (j, coefficient) pairs
        self.stage_terms = [tuple((j, self.dt * A_ij) for j, A_ij in enumerate(A_i) if A_ij) for A_i in self.A]
        self.output_terms = tuple((i, self.dt * b_i) for i, b_i in enumerate(self.b) if b_i)

    @staticmethod
    def _combine(x: np.ndarray, terms, k: list[np.ndarray]) -> np.ndarray:
        """``x + sum_j c_j k_j`` over the ``(j, c_j)`` of ``terms``, a new array."""
        X = x.copy()
        for j, c in terms:
            X += c * k[j]
        return X

    def step(self, tendency, x: np.ndarray, p: np.ndarray) -> np.ndarray:
        k: list[np.ndarray] = []
        for terms in self.stage_terms:
            k.append(tendency.evaluate(self._combine(x, terms, k), p))
        return self._combine(x, self.output_terms, k)

    def linearize(self, tendency, x: np.ndarray, p: np.ndarray) -> "RungeKuttaLinearization":
        return RungeKuttaLinearization(self, tendency, x, p)


class RungeKuttaLinearization:
    """One Runge-Kutta step linearised at ``(x, p)``: the stages' tendencies linearised at their inputs.

    ``output`` is the step's value; ``tl(dx, dp)`` and ``ad(ax_next) -> (ax, ap)`` are the
    exact TL and AD of the discrete step (the module docstring has the statements).
    """

    def __init__(self, rk: RungeKutta, tendency, x: np.ndarray, p: np.ndarray):
        self.rk = rk
        self.stages = []
        k: list[np.ndarray] = []
        for terms in rk.stage_terms:
            stage = tendency.linearize(rk._combine(x, terms, k), p)
            self.stages.append(stage)
            k.append(stage.output)
        self.output = rk._combine(x, rk.output_terms, k)

    def tl(self, dx: np.ndarray, dp: np.ndarray) -> np.ndarray:
        dk: list[np.ndarray] = []
        for terms, stage in zip(self.rk.stage_terms, self.stages):
            dk.append(stage.tl(self.rk._combine(dx, terms, dk), dp))
        return self.rk._combine(dx, self.rk.output_terms, dk)

    def ad(self, ax_next: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rk = self.rk
        ak = [(rk.dt * b_i) * ax_next for b_i in rk.b]
        ax = ax_next.copy()
        ap = None
        for i in reversed(range(len(self.stages))):
            aX_i, ap_i = self.stages[i].ad(ak[i])
            ax += aX_i
            ap = ap_i if ap is None else ap + ap_i
            for j, c in rk.stage_terms[i]:
                ak[j] += c * aX_i
        return ax, ap


class IntegratedModel(ModelBase):
    """A model whose step integrates ``self.tendency`` over one ``self.integrator`` step.

    Subclasses set ``tendency`` (with ``evaluate`` and ``linearize``) and
    ``integrator`` (a :class:`RungeKutta`); TL and AD come from composing the two.
    """

    tendency: object
    integrator: RungeKutta

    def step(self, x: np.ndarray, p: np.ndarray) -> np.ndarray:
        return self.integrator.step(self.tendency, *self._inputs(x, p))

    def linearize(self, x: np.ndarray, p: np.ndarray) -> RungeKuttaLinearization:
        return self.integrator.linearize(self.tendency, *self._inputs(x, p))
