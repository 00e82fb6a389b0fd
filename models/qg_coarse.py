"""A fine two-layer QG model as the truth of a coarse one: its coarse-grained state and eddy forcing.

The truth runs :class:`models.qg.QG` on a fine grid ``(nyf, nxf)``; the forecast model is
the same QG model (same domain, layers, mean flow ``U1, U2``, ``beta``, ``rd``, drag) on a
coarse grid ``(nyc, nxc)``.  The coarse-graining ``C`` is the spectral one of the pyqg
parameterisation benchmarks (Ross et al. 2023, ``SpectralCoarsener``): keep the fine
spectrum's coarse wavenumbers, multiply by a filter ``G`` on the coarse wavenumbers, and
rescale for numpy's unnormalised ``rfft2``::

    (C q)^[l, m] = G[l, m] (nyc nxc) / (nyf nxf) q^_f[row(l), m]       l < nyc, m <= nxc / 2
    row(l) = l for l < nyc / 2,  nyf - nyc + l otherwise            (the same wavenumber k, l)
    C q = irfft2_c((C q)^)

with ``G`` either ``"sharp"``, the coarse model's own exponential filter ``filtr`` (their
Operator 1), or ``"gaussian"``, ``exp(-kappa^2 (2 dxc)^2 / 24)`` (their Operator 2).  ``C``
acts on each layer's PV anomaly, in s^-1, upper layer first, as the models' state; the mean
flow is the models' shared parameters, not part of the state, so ``C q`` is a state of the
coarse model in its own units.  A field of the coarse wavenumbers (none at the coarse Nyquist
wavenumbers) refined to the fine grid comes back as ``G`` times itself.

The missing tendency of the coarse model along the coarse-grained truth is the eddy forcing
of the unresolved scales (their ``q_forcing_total``)::

    S(q) = C f_f(q) - f_c(C q)

``f_f`` and ``f_c`` the two grids' tendencies (advection, beta, mean flow and drag, no filter,
:meth:`models.qg.QG.tendency`), so that ``d(C q)/dt = f_c(C q) + S(q)`` along the truth.

The coarse model steps that tendency and then applies its spectral filter, which damps the
coarse-grained truth's smallest resolved scales at every step; ``S`` leaves that out.  With
``missing="step"`` the unresolved tendency is instead what one step of the coarse model
misses, per unit time::

    S_step(q) = (C Phi_f^n(q) - M_c(C q)) / dt_c        n = dt_c / dt_f

``Phi_f`` the fine step, ``M_c`` the coarse step (RK4 of ``f_c`` over ``dt_c``, then the
filter), so that ``C q(t + dt_c) = M_c(C q(t)) + dt_c S_step(q(t))`` along the truth.
"""

from __future__ import annotations

import numpy as np

from fourdvar.model import as_vector

from .qg import QG

#: the filters ``G`` of the coarse-graining on the coarse wavenumbers, by name
COARSENINGS = ("sharp", "gaussian")
#: the unresolved tendencies: the eddy forcing ``S`` or the coarse step's missing tendency ``S_step``
MISSING = ("eddy_forcing", "step")


def _coarse_size(name: str, value, fine: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 4 or value % 2 or value >= fine:
        raise ValueError(f"CoarseGrainedQG: {name} must be an even integer >= 4 below the fine grid's {fine}, got {value!r}")
    return int(value)


def _substeps(coarse_dt, dt: float) -> int:
    """The fine steps in one coarse step of ``coarse_dt`` (default ``dt``): a whole number, at least 1."""
    if coarse_dt is None:
        return 1
    n = coarse_dt / dt if isinstance(coarse_dt, (int, float, np.number)) and not isinstance(coarse_dt, bool) else 0.0
    if not (n >= 1 and abs(n - round(n)) < 1e-9):
        raise ValueError(f"CoarseGrainedQG: coarse_dt must be a whole number of fine steps dt = {dt:g} s, got {coarse_dt!r}")
    return int(round(n))


class CoarseGrainedQG(QG):
    """``CoarseGrainedQG(coarse_nx=32, coarse_ny=None, coarsening="sharp", missing="eddy_forcing", coarse_dt=None,
    nx=128, **qg)``: the fine QG model (``qg``: :class:`models.qg.QG`'s options but ``estimate``) whose resolved
    state is its coarse-graining to ``coarse_ny x coarse_nx`` and whose unresolved tendency is the eddy forcing
    ``S`` or, with ``missing="step"``, the coarse step's missing tendency ``S_step`` (module docstring).

    ``coarse`` is the QG model on the coarse grid with the same options and the time step ``coarse_dt``
    (default: the fine ``dt``; a whole number of fine steps); ``coarse_ny`` defaults to ``coarse_nx``.  ``resolved_state`` maps fine states ``(..., n_state)`` to coarse ones
    ``(..., coarse.n_state)``.
    """

    def __init__(self, coarse_nx=32, coarse_ny=None, coarsening="sharp", missing="eddy_forcing", coarse_dt=None, nx=128, **qg):
        if "estimate" in qg:
            raise ValueError("CoarseGrainedQG: a coarse-grained truth estimates no parameters; leave out estimate")
        super().__init__(nx=nx, **qg)
        nxc = _coarse_size("coarse_nx", coarse_nx, self.nx)
        nyc = _coarse_size("coarse_ny", nxc if coarse_ny is None else coarse_ny, self.ny)
        if coarsening not in COARSENINGS:
            raise ValueError(f"CoarseGrainedQG: coarsening must be one of {', '.join(COARSENINGS)}, got {coarsening!r}")
        if missing not in MISSING:
            raise ValueError(f"CoarseGrainedQG: missing must be one of {', '.join(MISSING)}, got {missing!r}")
        self.coarsening, self.missing = coarsening, missing
        self.substeps = _substeps(coarse_dt, self.dt)
        options = {name: getattr(self, name) for name in ("L", "W", "rek", "filterfac", "beta", "rd", "delta", "H1", "U1", "U2")}
        self.coarse = QG(nx=nxc, ny=nyc, compiled=self.compiled, dt=self.substeps * self.dt, **options)
        self.rows = np.r_[0 : nyc // 2, self.ny - nyc // 2 : self.ny]  # the fine rows of the coarse wavenumbers l
        self.columns = nxc // 2 + 1
        G = self.coarse.filtr if coarsening == "sharp" else np.exp(-self.coarse.kappa2 * (2 * self.coarse.dx) ** 2 / 24)
        self.spectral_weights = G * (nyc * nxc) / (self.ny * self.nx)

    def coarse_grain(self, q: np.ndarray) -> np.ndarray:
        """``C q`` of fine fields ``(..., 2, nyf, nxf)``: fields ``(..., 2, nyc, nxc)``."""
        qh = self.spectrum.rfft2(q)[..., self.rows, : self.columns]
        return self.coarse.spectrum.irfft2(self.spectral_weights * qh)

    def resolved_state(self, x: np.ndarray) -> np.ndarray:
        """``C x`` of fine states ``(..., n_state)``, coarse states ``(..., coarse.n_state)``."""
        x = np.asarray(x, dtype=float)
        if x.shape[-1:] != (self.n_state,):
            raise ValueError(f"resolved_state: states must end in ({self.n_state},), got {x.shape}")
        lead = x.shape[:-1]
        return self.coarse_grain(x.reshape(lead + (2, self.ny, self.nx))).reshape(lead + (self.coarse.n_state,))

    def unresolved_tendency(self, x: np.ndarray) -> np.ndarray:
        """The eddy forcing ``S = C f_f(q) - f_c(C q)`` at a fine state, or with ``missing="step"``
        ``S_step = (C Phi_f^n(q) - M_c(C q)) / dt_c``; flat ``(coarse.n_state,)``."""
        x = as_vector(x, self.n_state, "state x")
        none = np.empty(0)
        q_coarse = self.resolved_state(x)
        if self.missing == "eddy_forcing":
            return self.resolved_state(self.tendency(x, none)) - self.coarse.tendency(q_coarse, none)
        for _ in range(self.substeps):
            x = self.step(x, none)
        return (self.resolved_state(x) - self.coarse.step(q_coarse, none)) / self.coarse.dt

    @property
    def unresolved_dt(self) -> float | None:
        """The forecast model's time step ``dt_c`` that ``S_step`` is per (``missing="step"``); None for the eddy forcing ``S``."""
        return self.coarse.dt if self.missing == "step" else None

    def __repr__(self) -> str:
        return (f"CoarseGrainedQG(coarse_nx={self.coarse.nx}, coarse_ny={self.coarse.ny}, coarsening={self.coarsening!r}, "
                f"missing={self.missing!r}, coarse_dt={self.coarse.dt:g}, "
                f"fine={super().__repr__()})")
