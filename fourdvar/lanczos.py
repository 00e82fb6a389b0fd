"""Conjugate gradients in their Lanczos form, and the spectral preconditioner built from them.

The inner loop solves ``A u = -g0``, ``A = I + L^T R^-1 L`` the Hessian of ``Jq`` in control
variables (SPD, eigenvalues >= 1).  With a preconditioner ``S`` (``S S^T ~ A^-1``) it solves
``(S^T A S) z = -S^T g0``, ``u = S z``, by Lanczos on ``Â = S^T A S`` from ``q_1 = b / beta_0``,
``b = -S^T g0``::

    w = Â q_j - beta_{j-1} q_{j-1};  alpha_j = q_j . w;  w -= alpha_j q_j
    w -= Q_j (Q_j^T w)   (twice: full reorthogonalisation)
    beta_j = |w|;  q_{j+1} = w / beta_j

so ``Â Q_j = Q_j T_j + beta_j q_{j+1} e_j^T``, ``T_j`` tridiagonal.  The CG iterate is
``z_j = Q_j y_j``, ``T_j y_j = beta_0 e_1``; its residual ``beta_j (e_j^T y_j) q_{j+1}`` gives the
gradient norm without a further product, and ``Jq(u_j) = Jq(0) + 1/2 g0 . u_j``.  Ritz pairs:
``T_j = Y Theta Y^T`` gives ``(theta_i, Q_j y_i)``, with residual ``beta_j |e_j^T y_i|``.

The spectral factor of orthonormal Ritz vectors ``V`` and values ``Theta`` of ``Â`` is
``T = I + V (Theta^-1/2 - I) V^T`` (``T T ~ Â^-1``, ``T^-1 = I + V (Theta^1/2 - I) V^T``).  The
factors multiply across outer loops, ``S = T_1 T_2 ... T_m``, and ``S S^T`` is the low-rank
posterior covariance of the control (:mod:`fourdvar.posterior`), ``A^-1`` once Lanczos converged.

The next outer loop is preconditioned by the limited-memory preconditioner (LMP, Gratton,
Sartenaer and Tshimanga 2011) of Ritz pairs ``V_r``, converged or not (``V_r^T Â V_r = Theta_r``)::

    H = (I - V_r Theta_r^-1 V_r^T Â)(I - Â V_r Theta_r^-1 V_r^T) + V_r Theta_r^-1 V_r^T,    H Â V_r = V_r

With ``Â V_r = V_r Theta_r + q_{k+1} c_r^T`` (``c_i = beta_k e_k^T y_i``) and ``sigma = Theta_r^-1 c_r``,
``H = I + Z (H_Z - I) Z^T``, ``Z = [V_r, q_{k+1}]``, ``H_Z = [[Theta_r^-1 + sigma sigma^T, -sigma],
[-sigma^T, 1]]`` (SPD), and ``H_Z = E diag(mu) E^T`` makes ``H^1/2`` the spectral factor of the pairs
``(Z E, 1 / mu)``.  If ``A`` has not moved, the next ``S^T A S`` is the identity on ``span(Z)`` less
``m = Z H_Z^1/2 e_{r+1}``.  The first product says whether it moved: with ``P`` the projection on that
space, ``q_1`` the start vector and ``w = Â q_1``, ``|P (w - q_1)| > STALE * |P q_1|`` (0 for an
unchanged Hessian) drops ``S`` and restarts the solve, one product lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.linalg

__all__ = ["SpectralFactor", "SpectralPreconditioner", "LanczosRun", "lanczos", "largest_first"]

RITZ_TOLERANCE = 1e-3  # a Ritz pair is kept when |Â v - theta v| <= this * theta
# the newest factor of S is stale when, along the start vector and on the space it deflates,
# S^T A S differs from the identity by more than this times the start vector's part there
# (0 for an unchanged Hessian, whatever the Lanczos that gave the factor)
STALE = 30.0


@dataclass(frozen=True)
class SpectralFactor:
    """``T = I + V (theta^-1/2 - 1) V^T``: ``V`` orthonormal columns ``(n, r)``, ``theta > 0``.

    ``coupled``: for a limited-memory factor, the unit vector of ``span(V)`` along which the
    rest of the space couples into it (``T Â T`` is the identity on the rest of ``span(V)``
    when ``Â`` has not changed); ``None`` when it is the identity on all of it.
    """

    vectors: np.ndarray
    values: np.ndarray
    coupled: np.ndarray | None = None

    def apply(self, x: np.ndarray, power: float = -0.5) -> np.ndarray:
        """``(I + V (theta^power - 1) V^T) x`` for a vector or the columns of a matrix ``x``;
        ``power=-0.5`` is ``T``, ``+0.5`` is ``T^-1``."""
        V = self.vectors
        scale = self.values**power - 1.0
        return x + V @ ((scale if x.ndim == 1 else scale[:, None]) * (V.T @ x))

    @property
    def rank(self) -> int:
        return int(self.values.size)


@dataclass(frozen=True)
class SpectralPreconditioner:
    """``S = T_1 T_2 ... T_m`` (symmetric factors), ``C = S S^T``; no factor is the identity."""

    size: int
    factors: tuple = ()

    def apply(self, z: np.ndarray) -> np.ndarray:
        """``S z = T_1 (T_2 (... T_m z))``."""
        for factor in reversed(self.factors):
            z = factor.apply(z)
        return z

    def apply_t(self, x: np.ndarray) -> np.ndarray:
        """``S^T x = T_m (... T_2 (T_1 x))``."""
        for factor in self.factors:
            x = factor.apply(x)
        return x

    def inverse_t(self, r: np.ndarray) -> np.ndarray:
        """``S^-T r = T_1^-1 (T_2^-1 (... T_m^-1 r))``."""
        for factor in reversed(self.factors):
            r = factor.apply(r, power=0.5)
        return r

    def extended(self, factor: SpectralFactor | None) -> "SpectralPreconditioner":
        """``S T``: this preconditioner improved by the Ritz pairs of ``S^T A S``."""
        if factor is None or factor.rank == 0:
            return self
        return SpectralPreconditioner(self.size, self.factors + (factor,))

    @property
    def rank(self) -> int:
        return sum(factor.rank for factor in self.factors)


@dataclass
class LanczosRun:
    """What one Lanczos solve leaves: the solution, per-iteration norms, and the Ritz pairs."""

    z: np.ndarray
    u: np.ndarray
    gradient_norm: list[float] = field(default_factory=list)  # |grad Jq(u_j)|, j = 0..nit
    nit: int = 0
    breakdown: bool = False  # beta_j == 0: the Krylov space is invariant, z_j is exact
    ritz_values: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ritz_vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # columns, of S^T A S
    ritz_residuals: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ritz_couplings: np.ndarray = field(default_factory=lambda: np.zeros(0))  # c_i: Â v_i - theta_i v_i = c_i q_{k+1}
    next_vector: np.ndarray = field(default_factory=lambda: np.zeros(0))  # q_{k+1} (zeros after a breakdown)
    preconditioner: SpectralPreconditioner | None = None  # the S the run used (None: none, or dropped as stale)
    stale: bool = False  # the S given was found stale at the first product and dropped

    def factor(self, rank: int | None = None, tolerance: float = RITZ_TOLERANCE) -> SpectralFactor | None:
        """The spectral factor of the converged Ritz pairs (``|residual| <= tolerance * theta``),
        at most ``rank`` of them, the largest first; ``None`` when none has converged."""
        keep = np.flatnonzero(self.ritz_residuals <= tolerance * self.ritz_values)
        keep = keep[largest_first(self.ritz_values[keep], rank)]
        if keep.size == 0:
            return None
        return SpectralFactor(vectors=self.ritz_vectors[:, keep], values=self.ritz_values[keep])

    def preconditioner_factor(self, rank: int | None = None) -> SpectralFactor | None:
        """``H^1/2``, the limited-memory preconditioner of the ``rank`` largest Ritz pairs (default
        all, converged or not) with its correction along ``q_{k+1}`` (see the module docstring)."""
        keep = largest_first(self.ritz_values, rank)
        if keep.size == 0:
            return None
        theta = self.ritz_values[keep]
        sigma = self.ritz_couplings[keep] / theta
        r = keep.size
        H_Z = np.empty((r + 1, r + 1))
        H_Z[:r, :r] = np.diag(1.0 / theta) + np.outer(sigma, sigma)
        H_Z[:r, r] = H_Z[r, :r] = -sigma
        H_Z[r, r] = 1.0
        mu, E = np.linalg.eigh(H_Z)
        Z = np.column_stack([self.ritz_vectors[:, keep], self.next_vector])
        moved = np.abs(mu - 1.0) > 1e-12  # mu = 1: the identity there, nothing to store
        coupled = E @ (np.sqrt(mu) * E[-1])  # H_Z^1/2 e_{r+1}, orthogonal to H_Z^-1/2 [I_r; 0] = T^-1 V_r
        return SpectralFactor(vectors=Z @ E[:, moved], values=1.0 / mu[moved], coupled=Z @ (coupled / np.linalg.norm(coupled)))


def largest_first(values: np.ndarray, rank: int | None = None) -> np.ndarray:
    """Indices of the ``rank`` largest ``values`` (all of them when ``rank`` is None), largest first.

    Examples
    --------
    >>> largest_first(np.array([2.0, 5.0, 1.0, 4.0]), rank=2)
    array([1, 3])
    """
    return np.argsort(values)[::-1][: (None if rank is None else int(rank))]


def _tridiagonal(alphas: list[float], betas: list[float]) -> np.ndarray:
    j = len(alphas)
    T = np.diag(alphas)
    if j > 1:
        off = np.asarray(betas[: j - 1])
        T += np.diag(off, 1) + np.diag(off, -1)
    return T


def _is_stale(S: SpectralPreconditioner, q1: np.ndarray, w: np.ndarray, stale: float) -> bool:
    """``|P (w - q1)| > stale * |P q1|``, ``P`` the projection on the space where the newest factor
    of ``S`` makes ``Â`` the identity (its vectors, less the ``coupled`` direction), ``w = Â q1``."""
    factor = S.factors[-1]
    deviation, part = factor.vectors.T @ (w - q1), factor.vectors.T @ q1
    if factor.coupled is not None:
        m = factor.vectors.T @ factor.coupled
        m /= max(float(np.linalg.norm(m)), 1e-300)
        deviation, part = deviation - m * (m @ deviation), part - m * (m @ part)
    return float(np.linalg.norm(deviation)) > stale * float(np.linalg.norm(part))


def _solve_tridiagonal(alphas: list[float], betas: list[float], rhs: np.ndarray) -> np.ndarray:
    """``T_j y = rhs`` by the banded Cholesky factor of ``T_j`` (O(j)); :class:`numpy.linalg.LinAlgError`
    when ``T_j`` is not positive-definite."""
    j = len(alphas)
    if j == 1:
        if not alphas[0] > 0.0:
            raise np.linalg.LinAlgError("T_1 is not positive-definite")
        return rhs / alphas[0]
    band = np.zeros((2, j))
    band[0, 1:] = betas[: j - 1]
    band[1] = alphas
    return scipy.linalg.solveh_banded(band, rhs, check_finite=False)


def lanczos(hessian_vector, g0: np.ndarray, max_iterations: int, stop, preconditioner: SpectralPreconditioner | None = None,
            stale: float | None = None) -> LanczosRun:
    """Solve ``A u = -g0`` by preconditioned Lanczos (module docstring), ``hessian_vector(u) = A u``, ``A`` SPD.

    At most ``max_iterations`` products; ``stop(j, u_j, gradient_norm) -> bool`` is asked after each
    iteration.  ``preconditioner``: ``S``, from earlier runs; one whose newest factor is stale by the
    measure ``stale`` is dropped after the first product and the solve restarts without it
    (``run.stale``).  A :class:`numpy.linalg.LinAlgError` when ``T_j`` is not positive-definite.

    Examples
    --------
    ``A = diag(1, 2, 3)``: three iterations solve it exactly and give its eigenvalues.

    >>> A = np.diag([1.0, 2.0, 3.0])
    >>> run = lanczos(lambda u: A @ u, g0=np.array([-1.0, -2.0, -3.0]), max_iterations=3, stop=lambda j, u, g: g < 1e-12)
    >>> run.u, run.nit
    (array([1., 1., 1.]), 3)
    >>> np.sort(run.ritz_values)
    array([1., 2., 3.])
    """
    n = g0.size
    S = preconditioner if preconditioner is not None else SpectralPreconditioner(n)
    b = -S.apply_t(g0)
    beta0 = float(np.linalg.norm(b))
    run = LanczosRun(z=np.zeros(n), u=np.zeros(n), gradient_norm=[float(np.linalg.norm(g0))],
                     preconditioner=S if S.factors else None)
    if beta0 == 0.0:
        return run
    Q = np.empty((max_iterations + 1, n))
    Q[0] = b / beta0
    alphas, betas = [], []
    for j in range(max_iterations):
        w = S.apply_t(hessian_vector(S.apply(Q[j])))
        if j == 0 and stale is not None and S.factors and _is_stale(S, Q[0], w, stale):
            if max_iterations > 1:
                run = lanczos(hessian_vector, g0, max_iterations - 1, stop)
            run.stale, run.preconditioner = True, None
            return run
        alpha = float(Q[j] @ w)
        w -= alpha * Q[j]
        if j:
            w -= betas[-1] * Q[j - 1]
        for _ in range(2):
            w -= Q[: j + 1].T @ (Q[: j + 1] @ w)
        beta = float(np.linalg.norm(w))
        alphas.append(alpha)
        betas.append(beta)
        rhs = np.zeros(j + 1)
        rhs[0] = beta0
        y = _solve_tridiagonal(alphas, betas, rhs)
        run.nit = j + 1
        z = Q[: j + 1].T @ y
        u = S.apply(z)
        run.z, run.u = z, u
        run.breakdown = beta <= 1e-14 * max(abs(alpha), 1.0)
        if run.breakdown:
            norm = 0.0
        else:
            Q[j + 1] = w / beta
            norm = abs(beta * y[-1]) * float(np.linalg.norm(S.inverse_t(Q[j + 1]))) if S.factors else abs(beta * y[-1])
        run.gradient_norm.append(norm)
        if stop(run.nit, u, norm) or run.breakdown:
            break
    k = run.nit
    theta, Y = np.linalg.eigh(_tridiagonal(alphas, betas))
    run.ritz_values = theta
    run.ritz_vectors = Q[:k].T @ Y
    run.ritz_couplings = (0.0 if run.breakdown else betas[-1]) * Y[-1]
    run.ritz_residuals = np.abs(run.ritz_couplings)
    run.next_vector = np.zeros(n) if run.breakdown else Q[k].copy()
    return run
