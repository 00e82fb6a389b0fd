"""An ensemble of data assimilations: its members and its hybrid background covariance.

The members (:class:`Ensemble`, the member strategy of :func:`fourdvar.cycling.cycle_windows`)
run beside the unperturbed control, each from its own background and, with "observations"
among the perturbations, with the observations perturbed::

    y_k^m   = y_k + R_k^1/2 eps_k^{c,m}                  member m of window c
    xb_0^m  = xb_0 + B_s^1/2 w^m,  pb_0^m = pb_0 + P^1/2 w'^m     with "background" (pb: with the parameters in the control)
    xb_c^m <- mean_m(xb_c^m) + rho (xb_c^m - mean_m(xb_c^m))      inflation, before each window

Every draw comes from a generator seeded by ``(seed, purpose, cycle, member)``, so a member's
window is a pure function of what it is given and the members can run anywhere, in any order.
The perturbations ``x_m = xb_m - mean_m(xb_m)`` of their backgrounds (the rows of ``X``,
``(N, n)``) give the window's ``B``: their covariance, localised by a Schur product with a
correlation ``C`` on the periodic grid and blended with a static ``B_s``::

    B = (1 - beta) B_s + beta (X^T X / (N - 1)) o C

applied through a square root from the extended control ``u = [v; a_1; ...; a_N]`` (the alpha
control variable of hybrid ensemble-variational methods: ``v`` of ``B_s.size`` values, one
field ``a_m`` of ``n`` values per member)::

    B^1/2 u   = sqrt(1 - beta) B_s^1/2 v + sqrt(beta / (N - 1)) sum_m x_m o (C^1/2 a_m)
    B^T/2 w   = [sqrt(1 - beta) B_s^T/2 w;  sqrt(beta / (N - 1)) C^T/2 (x_m o w), m = 1..N]

so ``B^1/2 B^T/2 = B``, ``C^1/2`` the symmetric FFT square root of
:class:`~fourdvar.covariances.PeriodicCorrelation`, never an ``n x n`` matrix.  ``B^-1`` (for
``Jb``) is by conjugate gradients preconditioned with ``B_s^-1 / (1 - beta)`` (so ``beta < 1``),
or for ``n <= DENSE_SOLVE_LIMIT`` by the Cholesky factor of ``B``, assembled once from ``n``
products ``B e_i``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.linalg

from .covariances import CovarianceBase, PeriodicCorrelation, _check_std, dense_matrix, nested, part
from .interfaces import ObservationSlot

__all__ = ["Ensemble", "HybridEnsembleCovariance", "ensemble_covariance", "ensemble_perturbations", "inflate",
           "perturb_observations", "PERTURBATIONS"]

#: What the members' perturbations may apply to.
PERTURBATIONS = ("observations", "background")

_INITIAL_BACKGROUND, _OBSERVATIONS, _INITIAL_PARAMS = 1, 2, 3  # purposes of the random streams


def _rng(seed: int, purpose: int, cycle: int, member: int) -> np.random.Generator:
    return np.random.default_rng([seed, purpose, cycle, member])


def perturb_observations(slots: Sequence, rng: np.random.Generator) -> list[ObservationSlot]:
    """``y_k + R_k^1/2 eps_k``, ``eps_k ~ N(0, I)``, slot by slot in step order.

    Examples
    --------
    >>> from fourdvar.covariances import Diagonal
    >>> from observations import Identity
    >>> slots = [ObservationSlot(4, np.zeros(3), Identity(3), Diagonal(1e-6, size=3))]
    >>> [(slot.step, bool(np.all(np.abs(slot.values) < 1e-4))) for slot in perturb_observations(slots, np.random.default_rng(0))]
    [(4, True)]
    """
    return [ObservationSlot(slot.step, np.asarray(slot.values, dtype=float) + slot.covariance.sample(rng), slot.operator, slot.covariance)
            for slot in sorted(slots, key=lambda slot: slot.step)]


def inflate(states: np.ndarray, factor: float) -> np.ndarray:
    """``mean_m(x^m) + rho (x^m - mean_m(x^m))`` for the rows ``x^m`` of ``states`` (unchanged for ``rho = 1``).

    Examples
    --------
    >>> inflate(np.array([[0.0, 1.0], [2.0, 3.0]]), 1.5)
    array([[-0.5,  0.5],
           [ 2.5,  3.5]])
    """
    if factor == 1.0:
        return states
    mean = states.mean(axis=0)
    return mean + factor * (states - mean)


def ensemble_covariance(B_static, member_backgrounds: np.ndarray, weight: float, localization: float):
    """``B_c``: the hybrid of ``B_s`` and the members' backgrounds, or ``B_s`` when they have no spread."""
    X = ensemble_perturbations(member_backgrounds)
    return HybridEnsembleCovariance(B_static, X, weight, localization) if np.any(X) else B_static


@dataclass(frozen=True)
class Ensemble:
    """The members of an ensemble of data assimilations (``n_members = 0``: none, one run).

    ``weight`` ``beta`` and ``localization`` (grid points) make the hybrid ``B`` of each
    window from ``B_s`` and the members' inflated backgrounds (:func:`ensemble_covariance`);
    ``perturb`` is among :data:`PERTURBATIONS`; ``inflation`` ``rho >= 1``.
    """

    n_members: int = 0
    weight: float = 0.0
    localization: float = 1.0
    perturb: tuple = PERTURBATIONS
    seed: int = 0
    inflation: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "perturb", tuple(self.perturb))
        unknown = set(self.perturb) - set(PERTURBATIONS)
        if unknown:
            raise ValueError(f"ensemble perturbations must be among {list(PERTURBATIONS)}, got {sorted(unknown)}")
        if self.n_members == 1 or self.n_members < 0:
            raise ValueError(f"an ensemble needs at least 2 members (0: none), got {self.n_members}")
        if not (np.ndim(self.inflation) == 0 and self.inflation >= 1.0):
            raise ValueError(f"the ensemble's inflation must be a number >= 1, got {self.inflation!r}")

    def initial(self, xb: np.ndarray, pb: np.ndarray, B_static, P) -> tuple[np.ndarray, np.ndarray]:
        """The members' first backgrounds ``(N, n)`` and parameters ``(N, n_p)``: ``xb + B_s^1/2 w^m``
        and ``pb + P^1/2 w'^m`` with "background" among the perturbations (the parameters only
        when ``P`` is given: in the control), else copies of ``xb`` and ``pb``."""
        members = range(1, self.n_members + 1)
        states = np.tile(np.asarray(xb, dtype=float), (self.n_members, 1))
        params = np.tile(np.asarray(pb, dtype=float), (self.n_members, 1))
        if "background" in self.perturb:
            states = np.stack([xb + B_static.sample(_rng(self.seed, _INITIAL_BACKGROUND, 0, m)) for m in members])
            if P is not None:
                params = np.stack([pb + P.sample(_rng(self.seed, _INITIAL_PARAMS, 0, m)) for m in members])
        return states, params

    def covariance(self, B_static, backgrounds: np.ndarray | None):
        """The window's ``B``: ``B_s`` without members, else the hybrid with their (inflated) backgrounds."""
        return B_static if backgrounds is None else ensemble_covariance(B_static, backgrounds, self.weight, self.localization)

    def inflated(self, backgrounds: np.ndarray | None) -> np.ndarray | None:
        return None if backgrounds is None else inflate(backgrounds, self.inflation)

    def observations(self, slots: Sequence, cycle: int, member: int) -> Sequence:
        """Member ``member``'s observations of window ``cycle``: perturbed with "observations" (the control, 0: as given)."""
        if member and "observations" in self.perturb:
            return perturb_observations(slots, _rng(self.seed, _OBSERVATIONS, cycle, member))
        return slots


def ensemble_perturbations(states) -> np.ndarray:
    """``X``: the rows ``x_m = x^f_m - mean_m(x^f_m)`` of the member states, a finite ``(N >= 2, n)`` array.

    Examples
    --------
    >>> ensemble_perturbations([[1.0, 2.0], [3.0, 6.0]])
    array([[-1., -2.],
           [ 1.,  2.]])
    """
    states = _member_rows(states, "ensemble: the member states")
    return states - states.mean(axis=0)


def _member_rows(rows, who: str, n: int | None = None) -> np.ndarray:
    """``rows`` as a finite ``(N >= 2, n)`` float array."""
    rows = np.asarray(rows, dtype=float)
    if rows.ndim != 2 or rows.shape[0] < 2 or (n is not None and rows.shape[1] != n):
        raise ValueError(f"{who} must be an (N >= 2, {n or 'n'}) array, got shape {rows.shape}")
    if not np.all(np.isfinite(rows)):
        raise ValueError(f"{who} contain NaN or infinite values")
    return rows


class HybridEnsembleCovariance(CovarianceBase):
    """``B = (1 - beta) B_s + beta (X^T X / (N - 1)) o C``, applied through its extended square root.

    ``static`` ``B_s`` (any covariance of size ``n``), ``perturbations`` ``X`` ``(N >= 2, n)`` (see
    :func:`ensemble_perturbations`), ``weight`` ``beta`` in ``[0, 1)``, ``localization`` the length
    scale (grid points) of the Gaussian ``C`` (a unit-std
    :class:`~fourdvar.covariances.PeriodicCorrelation`).  ``sqrt`` maps from, and ``sqrt_t`` to,
    ``control_size = B_s.size + N n`` values.

    Examples
    --------
    >>> from fourdvar.covariances import Diagonal
    >>> X = ensemble_perturbations(np.random.default_rng(0).standard_normal((5, 8)))
    >>> B = HybridEnsembleCovariance(Diagonal(1.0, size=8), X, weight=0.5, localization=2.0)
    >>> B.size, B.control_size
    (8, 48)
    >>> u = np.random.default_rng(1).standard_normal(B.control_size)
    >>> w = np.random.default_rng(2).standard_normal(B.size)
    >>> bool(np.isclose(B.sqrt(u) @ w, u @ B.sqrt_t(w), rtol=1e-12))      # C^T/2 is the transpose of C^1/2
    True
    """

    #: relative residual at which the conjugate-gradient solve stops
    SOLVE_TOLERANCE = 1e-13
    #: states up to this size solve with the Cholesky factor of the dense B (n^2 floats), larger ones by CG
    DENSE_SOLVE_LIMIT = 1000

    def __init__(self, static, perturbations, weight: float, localization: float):
        X = _member_rows(perturbations, "HybridEnsembleCovariance: the perturbations", static.size)
        if not (np.ndim(weight) == 0 and 0.0 <= weight < 1.0):
            raise ValueError(f"HybridEnsembleCovariance: weight must be in [0, 1), got {weight!r}")
        self.static = static
        self.perturbations = X
        self.perturbations.flags.writeable = False
        self.weight = float(weight)
        self.localization = PeriodicCorrelation(static.size, localization, std=1.0)
        self.n_members, self.size = X.shape
        self.control_size = static.size + self.n_members * self.size
        self._static_scale = np.sqrt(1.0 - self.weight)
        self._ensemble_scale = np.sqrt(self.weight / (self.n_members - 1))
        self._cholesky = None  # of the dense B, made by the first solve (n <= DENSE_SOLVE_LIMIT)

    def _control(self, u) -> tuple[np.ndarray, np.ndarray]:
        """``(v, a)``: the static part and the ``(N, n)`` member fields of a control vector."""
        u = np.asarray(u, dtype=float)
        if u.shape != (self.control_size,):
            raise ValueError(f"HybridEnsembleCovariance: expected a control vector of shape ({self.control_size},), got shape {u.shape}")
        return u[: self.static.size], u[self.static.size :].reshape(self.n_members, self.size)

    # --- the covariance interface --------------------------------------------------------

    def sqrt(self, u):
        """``B^1/2 u = sqrt(1 - beta) B_s^1/2 v + sqrt(beta / (N - 1)) sum_m x_m o (C^1/2 a_m)``."""
        v, a = self._control(u)
        static_part = self._static_scale * self.static.sqrt(v)
        localized = self.localization._circulant(self.localization._sqrt_lam, a)
        ensemble_part = self._ensemble_scale * np.einsum("mi,mi->i", self.perturbations, localized)
        return static_part + ensemble_part

    def sqrt_t(self, w):
        """``B^T/2 w = [sqrt(1 - beta) B_s^T/2 w;  sqrt(beta / (N - 1)) C^T/2 (x_m o w)]``."""
        w = self._vector(w)
        v = self._static_scale * self.static.sqrt_t(w)
        localized = self.localization._circulant(self.localization._sqrt_lam, self.perturbations * w)
        a = self._ensemble_scale * localized
        return np.concatenate([v, a.reshape(-1)])

    def apply(self, w):
        """``B w = (1 - beta) B_s w + beta / (N - 1) sum_m x_m o C (x_m o w)``."""
        w = self._vector(w)
        localized = self.localization._circulant(self.localization.eigenvalues, self.perturbations * w)
        ensemble = np.einsum("mi,mi->i", self.perturbations, localized)
        return (1.0 - self.weight) * self.static.apply(w) + self.weight / (self.n_members - 1) * ensemble

    def solve(self, w):
        """``B^-1 w``: by the Cholesky factor of ``B`` up to ``DENSE_SOLVE_LIMIT``, else :meth:`solve_cg`."""
        w = self._vector(w)
        if self.size > self.DENSE_SOLVE_LIMIT:
            return self.solve_cg(w)
        if self._cholesky is None:
            B = dense_matrix(self)
            self._cholesky = scipy.linalg.cho_factor(0.5 * (B + B.T))
        return scipy.linalg.cho_solve(self._cholesky, w)

    def solve_cg(self, w):
        """``B^-1 w`` by conjugate gradients on ``B z = w``, preconditioned by ``B_s^-1 / (1 - beta)``.

        Stops at ``|w - B z| <= SOLVE_TOLERANCE |w|``; raises ``ArithmeticError`` if
        ``10 n`` iterations do not get there.
        """
        w = self._vector(w)
        z = np.zeros(self.size)
        residual = w.copy()
        preconditioned = self.static.solve(residual) / (1.0 - self.weight)
        direction = preconditioned.copy()
        rho = float(residual @ preconditioned)
        target = self.SOLVE_TOLERANCE * float(np.linalg.norm(w))
        for _ in range(10 * self.size):
            if float(np.linalg.norm(residual)) <= target:
                return z
            Bd = self.apply(direction)
            step = rho / float(direction @ Bd)
            z += step * direction
            residual -= step * Bd
            preconditioned = self.static.solve(residual) / (1.0 - self.weight)
            rho, rho_previous = float(residual @ preconditioned), rho
            direction = preconditioned + (rho / rho_previous) * direction
        if float(np.linalg.norm(residual)) <= target:
            return z
        raise ArithmeticError(f"HybridEnsembleCovariance.solve: no convergence in {10 * self.size} iterations")

    @property
    def std(self) -> np.ndarray:
        """``sqrt((1 - beta) std_s^2 + beta / (N - 1) sum_m x_m^2 diag(C))``: ``sqrt(diag B)`` with ``B_s``'s nominal ``std``."""
        diag_C = np.fft.irfft(self.localization.eigenvalues, n=self.size)[0]
        ensemble_variance = np.sum(self.perturbations**2, axis=0) / (self.n_members - 1) * diag_C
        return np.sqrt((1.0 - self.weight) * np.asarray(self.static.std) ** 2 + self.weight * ensemble_variance)

    def with_std(self, std) -> "HybridEnsembleCovariance":
        """``D B D`` with ``D = diag(std / self.std)``: the static std and the perturbations scaled by ``D``.

        Exact, since ``D ((X^T X) o C) D = ((X D)^T (X D)) o C``.
        """
        ratio = _check_std(std, self.size) / self.std
        return HybridEnsembleCovariance(
            self.static.with_std(np.asarray(self.static.std) * ratio), self.perturbations * ratio,
            self.weight, self.localization.length_scale,
        )

    def record(self) -> dict:
        """``std``, the static part's record under ``static.``, the ``perturbations`` ``X``, ``weight`` and ``localization``."""
        return {"std": self.std, **nested("static", self.static.record()), "perturbations": self.perturbations,
                "weight": self.weight, "localization": self.localization.length_scale}

    @classmethod
    def from_record(cls, record: dict, static: type) -> "HybridEnsembleCovariance":
        """The hybrid of :meth:`record`, its static part rebuilt by ``static.from_record``."""
        return cls(static.from_record(part(record, "static")), record["perturbations"], record["weight"], record["localization"])

    def __repr__(self) -> str:
        return (f"HybridEnsembleCovariance(size={self.size}, members={self.n_members}, weight={self.weight}, "
                f"localization={self.localization.length_scale})")
