"""Linear damping of each field of a gridded state, a parameter-free tendency::

    dq_l/dt = -r_l q_l          (field / layer l, every grid point)

    TL   df = -r dq             AD   aq = -r af          (no parameters: ap is empty)

A physical process (Rayleigh friction, a relaxation of potential vorticity) that a
forecast model may lack: as the ``correction`` of a
:class:`models.hybrid.TendencyHybrid` it is added inside the physics model's time step,
which makes a truth whose missing term is known (``TendencyHybrid.unresolved_tendency``).
"""

from __future__ import annotations

import numbers
from typing import Sequence

import numpy as np

from .integrators import IntegratedModel, RungeKutta
from .qg import QG, apply_layers


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


class BottomDragTendency:
    """``f(q) = irfft2(S rfft2(q))`` per wavenumber, ``S_1m = 0``, ``S_2m = r kappa^2 A_2m`` (``psi^ = A q^``).

    The map is real and even in wavenumber, so its adjoint is ``irfft2(S^T rfft2(a))``
    (the half-spectrum weights cancel, :mod:`models.qg`).
    """

    def __init__(self, operator: np.ndarray, spectrum, shape: tuple[int, int, int]):
        self.operator, self.spectrum, self.shape = operator, spectrum, shape

    def fields(self, x: np.ndarray) -> np.ndarray:
        """A flat state ``(n,)`` as ``(2, ny, nx)``, a block ``(n, k)`` as ``(k, 2, ny, nx)``."""
        return x.reshape(self.shape) if x.ndim == 1 else x.T.reshape((-1,) + self.shape)

    def flat(self, f: np.ndarray, like: np.ndarray) -> np.ndarray:
        return f.reshape(-1) if like.ndim == 1 else f.reshape(f.shape[0], -1).T

    def apply(self, S: np.ndarray, x: np.ndarray) -> np.ndarray:
        """``irfft2(S rfft2(x))`` with ``S`` ``(2, 2, ny, nk)`` mixing the layers."""
        fft = self.spectrum
        return self.flat(fft.irfft2(apply_layers(S, fft.rfft2(self.fields(x)))), x)

    def evaluate(self, x: np.ndarray, p: np.ndarray) -> np.ndarray:
        return self.apply(self.operator, x)

    def linearize(self, x: np.ndarray, p: np.ndarray) -> "BottomDragLinearization":
        return BottomDragLinearization(self, x)


class BottomDragLinearization:
    """The drag is linear: TL ``df = f(dq)``; AD ``aq = irfft2(S^T rfft2(af))`` (no parameter adjoint)."""

    def __init__(self, tendency: BottomDragTendency, x: np.ndarray):
        self.tendency = tendency
        self.output = tendency.evaluate(x, np.empty(0))

    def tl(self, dx: np.ndarray, dp: np.ndarray) -> np.ndarray:
        return self.tendency.apply(self.tendency.operator, dx)

    def ad(self, af: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.tendency.apply(self.tendency.operator.swapaxes(0, 1), af), np.zeros((0,) + af.shape[1:])


class BottomDrag(IntegratedModel):
    """``BottomDrag(rate=1e-6, nx=32, ny=None, L=5e5, W=None, rd=15000.0, delta=0.25, dt=7200.0, integrator="euler")``:
    a linear drag on the lower layer's relative vorticity, the QG model's ``rek`` term
    (:mod:`models.qg`, same grid and layer constants)::

        dq2/dt = -r lap psi2,    dq2^/dt = r kappa^2 psi2^ = r kappa^2 (A_21 q1^ + A_22 q2^),    dq1/dt = 0

    As the correction of a :class:`models.hybrid.TendencyHybrid` on ``QG(rek=r0)`` it
    makes the truth ``QG(rek=r0 + r)`` with its missing term known (``r < 0``: a model
    whose drag is too strong).
    """

    blocked_linearization = True
    n_params = 0

    def __init__(self, rate: float = 1e-6, nx: int = 32, ny: int | None = None, L: float = 5e5, W: float | None = None,
                 rd: float = 15000.0, delta: float = 0.25, dt: float = 7200.0, integrator: str = "euler"):
        grid = QG(nx=nx, ny=ny, L=L, W=W, rd=rd, delta=delta, dt=dt, compiled=False)
        if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not np.isfinite(rate):
            raise ValueError(f"rate must be a finite drag rate (s^-1; negative: less drag), got {rate}")
        self.rate, self.nx, self.ny, self.L, self.W = float(rate), grid.nx, grid.ny, grid.L, grid.W
        self.n_state = grid.n_state
        lower = self.rate * grid.kappa2 * grid.physics(None).inversion[1]  # r kappa^2 A_2m, (2, ny, nk)
        operator = np.stack([np.zeros_like(lower), lower])
        self.tendency = BottomDragTendency(operator, grid.spectrum, (2, grid.ny, grid.nx))
        self.integrator = RungeKutta(integrator, dt)
        self.dt = self.integrator.dt

    def __repr__(self) -> str:
        return f"BottomDrag(rate={self.rate}, nx={self.nx}, ny={self.ny}, L={self.L}, W={self.W}, dt={self.dt}, integrator={self.integrator.scheme!r})"
