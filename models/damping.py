"""Linear damping of each field of a gridded state, a parameter-free tendency::

    dq_l/dt = -r_l q_l          (field / layer l, every grid point)

    TL   df = -r dq             AD   aq = -r af          (no parameters: ap is empty)

A physical process (Rayleigh friction, a relaxation of potential vorticity) that a
forecast model may lack: as the ``correction`` of a
:class:`models.hybrid.TendencyHybrid` it is added inside the physics model's time step,
which makes a truth whose missing term is known (``TendencyHybrid.unresolved_tendency``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .integrators import IntegratedModel, RungeKutta


class DampingTendency:
    """``f(q) = -r q`` with ``r`` of shape ``(n_state,)``, the rate of each value's field."""

    def __init__(self, rate: np.ndarray):
        self.rate = rate

    def evaluate(self, x: np.ndarray, p: np.ndarray) -> np.ndarray:
        return -self.rate * x

    def linearize(self, x: np.ndarray, p: np.ndarray) -> "DampingLinearization":
        return DampingLinearization(self, x)


class DampingLinearization:
    """``f = -r q`` at ``q``: ``output`` is ``f(q)``; TL ``df = -r dq``, AD ``aq = -r af`` (no parameter adjoint)."""

    def __init__(self, tendency: DampingTendency, x: np.ndarray):
        self.rate = tendency.rate
        self.output = -self.rate * x

    def _rate(self, v: np.ndarray) -> np.ndarray:
        return self.rate if v.ndim == 1 else self.rate[:, None]

    def tl(self, dx: np.ndarray, dp: np.ndarray) -> np.ndarray:
        return -self._rate(dx) * dx

    def ad(self, af: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return -self._rate(af) * af, np.zeros((0,) + af.shape[1:])


class LinearDamping(IntegratedModel):
    """``LinearDamping(rates=[1e-7, 0.0], ny=64, nx=64, dt=7200.0, integrator="euler")``: one rate per field (s^-1
    for the QG model), the fields ``(len(rates), ny, nx)`` flattened in C order."""

    blocked_linearization = True
    n_params = 0

    def __init__(self, rates: Sequence[float] = (1e-7, 0.0), ny: int = 64, nx: int = 64, dt: float = 7200.0, integrator: str = "euler"):
        rates = np.atleast_1d(np.asarray(rates, dtype=float))
        if rates.ndim != 1 or not np.all(np.isfinite(rates)) or np.any(rates < 0):
            raise ValueError(f"rates must list one non-negative damping rate per field, got {rates.tolist()}")
        for name, value in (("ny", ny), ("nx", nx)):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        self.rates, self.ny, self.nx = rates, int(ny), int(nx)
        self.n_state = rates.size * self.ny * self.nx
        self.tendency = DampingTendency(np.repeat(rates, self.ny * self.nx))
        self.integrator = RungeKutta(integrator, dt)
        self.dt = self.integrator.dt

    def __repr__(self) -> str:
        return f"LinearDamping(rates={self.rates.tolist()}, ny={self.ny}, nx={self.nx}, dt={self.dt}, integrator={self.integrator.scheme!r})"
