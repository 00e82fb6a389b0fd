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
    """One explicit Runge-Kutta step of length ``dt`` for a given tendency."""

    def __init__(self, scheme: str, dt: float):
        self.scheme = _check_scheme(scheme)
        self.dt = float(dt)
        if not self.dt > 0:
            raise ValueError(f"time step dt must be positive, got {dt}")
        self.A, self.b = TABLEAUX[scheme]

    def _stage_input(self, x: np.ndarray, A_i, k: list[np.ndarray]) -> np.ndarray:
        X = x.copy()
        for A_ij, k_j in zip(A_i, k):
            if A_ij:
                X += (self.dt * A_ij) * k_j
        return X

    def step(self, tendency, x: np.ndarray, p: np.ndarray) -> np.ndarray:
        k: list[np.ndarray] = []
        for A_i in self.A:
            k.append(tendency.evaluate(self._stage_input(x, A_i, k), p))
        return self._stage_input(x, self.b, k)

    def linearize(self, tendency, x: np.ndarray, p: np.ndarray) -> "RungeKuttaLinearization":
        return RungeKuttaLinearization(self, tendency, x, p)


class RungeKuttaLinearization:
    def __init__(self, rk: RungeKutta, tendency, x: np.ndarray, p: np.ndarray):
        self.rk = rk
        self.stages = []
        k: list[np.ndarray] = []
        for A_i in rk.A:
            stage = tendency.linearize(rk._stage_input(x, A_i, k), p)
            self.stages.append(stage)
            k.append(stage.output)
        self.output = rk._stage_input(x, rk.b, k)

    def tl(self, dx: np.ndarray, dp: np.ndarray) -> np.ndarray:
        dk: list[np.ndarray] = []
        for A_i, stage in zip(self.rk.A, self.stages):
            dk.append(stage.tl(self.rk._stage_input(dx, A_i, dk), dp))
        return self.rk._stage_input(dx, self.rk.b, dk)

    def ad(self, ax_next: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dt = self.rk.dt
        ak = [(dt * b_i) * ax_next for b_i in self.rk.b]
        ax = ax_next.copy()
        ap = None
        for i in reversed(range(len(self.stages))):
            aX_i, ap_i = self.stages[i].ad(ak[i])
            ax += aX_i
            ap = ap_i if ap is None else ap + ap_i
            for j, A_ij in enumerate(self.rk.A[i]):
                if A_ij:
                    ak[j] += (dt * A_ij) * aX_i
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
