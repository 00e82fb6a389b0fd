"""The Gauss-Newton posterior covariance of the control in low-rank form, and a limited-memory covariance.

In the control variables ``u`` (``dx0 = B^1/2 v``, ``dp = P^1/2 w``, ``deta_j = Q^1/2 z_j``) the
posterior covariance is the inverse Hessian ``A^-1``.  The Lanczos inner loops leave it as
``A^-1 ~ S S^T``, ``S = T_1 ... T_m``, ``T_k = I + V_k (Theta_k^-1/2 - I) V_k^T``
(:mod:`fourdvar.lanczos`).  With ``W`` an orthonormal basis of all the ``V_k``::

    T_k = I + W E_k W^T,   E_k = W^T V_k (Theta_k^-1/2 - I) V_k^T W
    S   = I + W F W^T,     I + F = (I + E_1) ... (I + E_m)
    S S^T = I + W K W^T,   K = (I + F)(I + F)^T - I

and in physical variables, with ``G = diag(B^1/2, P^1/2, Q^1/2, ...)`` on the parts in the control::

    P^a = G (I + W K W^T) G^T,   diag(P^a) = diag(G G^T) + rowsum((G W) K * (G W))

never formed: :class:`Posterior` applies it, samples it (``G S xi``) and gives its standard
deviations; its rank is that of ``W``.  The parameters' marginal ``P^1/2 (I + W_p K W_p^T) P^T/2``
(``W_p``: the parameter rows of ``W``) is a :class:`LowRankCovariance`, a covariance like any other.

The same ``I + W K W^T`` comes from every outer loop's Lanczos run by block BFGS
(:meth:`Posterior.from_lanczos_runs`), or, at the analysis, from the dense Hessian
(:meth:`Posterior.from_hessian`: a control of at most :data:`DENSE_POSTERIOR_SIZE` values) or a
Lanczos run of its own (:meth:`Posterior.at_analysis`).
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.linalg

from .covariances import CovarianceBase, Diagonal, nested, part
from .interfaces import declared
from .lanczos import RITZ_TOLERANCE, SpectralFactor, SpectralPreconditioner, largest_first, lanczos

__all__ = ["Posterior", "LowRankCovariance", "variance", "DENSE_POSTERIOR_SIZE", "POSTERIOR_METHODS"]

DENSE_POSTERIOR_SIZE = 200  # at most this many control values: the posterior from the dense Hessian
POSTERIOR_METHODS = ("auto", "dense", "lanczos")
FIRST_POSTERIOR_ITERATIONS = 10  # the posterior Lanczos starts with this many, doubled until accurate


def _sqrt_columns(covariance, W: np.ndarray) -> np.ndarray:
    """``C^1/2 W``: the covariance's declared ``sqrt_columns``."""
    return declared(covariance, "sqrt_columns")(W)


def variance(covariance) -> np.ndarray:
    """``diag(C)``: the covariance's declared ``variance``."""
    return declared(covariance, "variance")()


def _layout(blocks, sizes) -> dict[str, slice]:
    """``{name: slice}`` of the blocks laid one after the other, of ``sizes`` values each."""
    ends = np.cumsum([0, *sizes])
    return {b.name: slice(int(a), int(e)) for b, a, e in zip(blocks, ends[:-1], ends[1:])}


def _orthonormal_update(Z: np.ndarray, N: np.ndarray, max_rank: int | None = None,
                        orthonormal_columns: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(U, lam)`` with ``U`` orthonormal and ``U diag(lam) U^T = Z N Z^T``, the ``max_rank``
    largest ``|lam|`` kept (the rest dropped: for a posterior, a smaller reduction of the prior).
    ``orthonormal_columns``: how many leading columns of ``Z`` are orthonormal already (then
    only the others are orthogonalised, :func:`_extend_basis`)."""
    if Z.shape[1] == 0:
        return Z, np.zeros(0)
    if orthonormal_columns:
        Q = _extend_basis(Z[:, :orthonormal_columns], Z[:, orthonormal_columns:])
        R = Q.T @ Z
    else:
        Q, R = np.linalg.qr(Z)
    lam, E = np.linalg.eigh(R @ (0.5 * (N + N.T)) @ R.T)
    keep = _largest(lam, max_rank)
    return Q @ E[:, keep], lam[keep]


def _largest(lam: np.ndarray, max_rank: int | None) -> np.ndarray:
    """Indices of the ``max_rank`` largest ``|lam|``, those negligible (``<= 1e-14`` of the largest or of 1) left out."""
    order = np.argsort(-np.abs(lam))[: (None if max_rank is None else int(max_rank))]
    return order[np.abs(lam[order]) > 1e-14 * max(1.0, np.abs(lam).max(initial=0.0))]


def _secant_pair(run, max_rank: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(s, y, Theta)`` of one Lanczos run in control variables (see :meth:`Posterior.from_lanczos_runs`)."""
    keep = largest_first(run.ritz_values, max_rank)
    V, theta, c = run.ritz_vectors[:, keep], run.ritz_values[keep], run.ritz_couplings[keep]
    s, y = V, V * theta + np.outer(run.next_vector, c)  # y = S^T A S V = V Theta + q c^T, then S^-T y
    for factor in reversed(run.preconditioner.factors if run.preconditioner is not None else ()):
        s = factor.apply(s, -0.5)  # S = T_1 ... T_m
        y = factor.apply(y, 0.5)  # S^-T = T_1^-1 ... T_m^-1
    return s, y, theta


def _extend_basis(W: np.ndarray, X: np.ndarray, tolerance: float = 1e-10) -> np.ndarray:
    """``[W, Q]``, orthonormal, spanning the columns of ``W`` and ``X`` (Gram-Schmidt twice, then an SVD)."""
    X = X / np.maximum(np.linalg.norm(X, axis=0), np.finfo(float).tiny)
    for _ in range(2):
        X -= W @ (W.T @ X)
    Q, sigma, _ = np.linalg.svd(X, full_matrices=False)
    return np.hstack([W, Q[:, sigma > tolerance]])


def _bfgs_inverse_update(W, K, s, y, theta, max_rank: int | None = None):
    """``I + Z K+ Z^T = (I - s rho y^T)(I + W K W^T)(I - y rho s^T) + s rho s^T``, ``rho = Theta^-1``.

    In an orthonormal basis ``Z`` of ``[W, s, y]`` (``[W, Q]``; the identity once that would
    fill the space), with ``M = Z^T W K W^T Z``, ``a = C_s rho``, ``b = C_y``
    (``C_s = Z^T s``, ``C_y = Z^T y``)::

        K+ = (I - a b^T) M (I - b a^T) - a b^T - b a^T + a (b^T b) a^T + a C_s^T

    ``O(n r k + r^2 k)`` for ``r`` columns of ``Z`` and ``k`` of ``s``.
    """
    n, m = W.shape
    if m + 2 * s.shape[1] >= n:  # dense: Z = I
        identity = m == n and np.array_equal(W, np.eye(n))
        Z, M, C_s, b = (W if identity else np.eye(n)), (K if identity else W @ K @ W.T), s, y
    else:
        Z = _extend_basis(W, np.hstack([s, y]))
        M = np.zeros((Z.shape[1], Z.shape[1]))
        M[:m, :m] = K
        C_s, b = Z.T @ s, Z.T @ y
    a = C_s / theta
    Mb = M @ b
    ab = a @ b.T
    K_next = M - (ab + ab.T + a @ Mb.T + Mb @ a.T) + a @ (b.T @ (Mb + b)) @ a.T + a @ C_s.T
    K_next = 0.5 * (K_next + K_next.T)
    if max_rank is not None and Z.shape[1] > max_rank:
        lam, E = np.linalg.eigh(K_next)
        keep = np.argsort(-np.abs(lam))[: int(max_rank)]
        return Z @ E[:, keep], np.diag(lam[keep])
    return Z, K_next


class Posterior:
    """``P^a = G (I + W K W^T) G^T``, the Gauss-Newton posterior covariance of the control parts of ``(x0, p, eta)``.

    Built from the outer loop's spectral factors (module docstring).  Vectors are ``[x0; p; eta_1; ...]``
    restricted to the parts in the control (``size`` values); ``G`` maps the control variables to them
    (``control_size`` values: more than ``size`` when ``B``'s square root starts from a larger space).
    """

    method = "ritz"  # how it was built: "ritz" (the factors given), "dense", "lanczos", "bfgs"
    pairs = 0  # Hessian pairs behind it (columns of the dense Hessian, or Ritz pairs)
    converged = 0  # of which converged (all, for the dense Hessian)
    std_error = float("nan")  # estimated largest relative error of the standard deviations

    def __init__(self, cost, control, factors: SpectralPreconditioner):
        self._set_parts(cost, control)
        blocks = [factor.vectors for factor in factors.factors]
        basis = np.linalg.qr(np.column_stack(blocks))[0] if blocks else np.zeros((self.control_size, 0))
        I = np.eye(basis.shape[1])
        product = I.copy()
        for factor in factors.factors:
            C = basis.T @ factor.vectors
            product = product @ (I + (C * (factor.values**-0.5 - 1.0)) @ C.T)
        self.W = basis
        self.F = product - I
        self.K = product @ product.T - I

    def _set_parts(self, cost, control) -> None:
        """The blocks of the control space and where each lies in a physical (``rows x n``) and a control
        (``rows x width``) vector."""
        blocks = cost.control_blocks(control)
        self.blocks = {b.name: b for b in blocks}
        self._physical = _layout(blocks, [b.rows * b.n for b in blocks])
        self._control = _layout(blocks, [b.size for b in blocks])
        self.size, self.control_size = sum(b.rows * b.n for b in blocks), sum(b.size for b in blocks)

    @classmethod
    def from_lanczos_runs(cls, cost, control, runs, max_rank: int | None = None) -> "Posterior":
        """``A^-1 ~ H^-1 = I + W K W^T`` from every Lanczos run of the window, by block BFGS.

        Run ``i`` (its Hessian ``A_i``, preconditioner ``S_i``) knows ``A_i`` exactly on its
        Krylov space: with its Ritz pairs ``(Theta, V)`` of ``S_i^T A_i S_i``, its next Lanczos
        vector ``q`` and the couplings ``c`` (:class:`~fourdvar.lanczos.LanczosRun`)::

            s = S_i V,   y = A_i s = S_i^-T (V Theta + q c^T),   s^T y = Theta

        From the prior ``H^-1 = I``, oldest run first::

            H^-1 <- (I - s rho y^T) H^-1 (I - y rho s^T) + s rho s^T,   rho = Theta^-1

        so ``H^-1 y = s`` holds for the last run (its Krylov space exactly) while the earlier
        runs' curvature stays in the directions it did not explore.  A single run over the
        whole space gives ``A^-1`` exactly.  ``max_rank``: the Ritz pairs kept per run (the
        largest ``Theta``), and the rank ``W`` is truncated to after each update.
        """
        self = cls.__new__(cls)
        self._set_parts(cost, control)
        runs = [run for run in runs if run is not None and run.ritz_values.size]
        n = self.control_size
        if sum(2 * min(run.ritz_values.size, max_rank or n) for run in runs) >= n:  # the updates fill the space: dense from the start
            W, K = np.eye(n), np.zeros((n, n))
        else:
            W, K = np.zeros((n, 0)), np.zeros((0, 0))
        for run in runs:  # one run's (s, y) in memory at a time
            W, K = _bfgs_inverse_update(W, K, *_secant_pair(run, max_rank), max_rank)
        self.W, self.K = W, K
        self.method, self.pairs = "bfgs", sum(run.ritz_values.size for run in runs)
        return self

    @classmethod
    def from_hessian(cls, cost, control, A: np.ndarray) -> "Posterior":
        """``A^-1 = I + K`` (``W = I``) from the dense Hessian ``A`` in control variables; its
        ``std_error`` is ``eps cond(A)``, the round-off of the inverse."""
        self = cls.__new__(cls)
        self._set_parts(cost, control)
        lam, E = np.linalg.eigh(0.5 * (A + A.T))
        if not lam.min(initial=1.0) > 0.0:
            raise np.linalg.LinAlgError(f"the Hessian at the analysis is not positive-definite (smallest eigenvalue {lam.min():.3e})")
        self.W, self.K = np.eye(A.shape[0]), (E / lam) @ E.T - np.eye(A.shape[0])
        self.method, self.pairs, self.converged = "dense", A.shape[0], A.shape[0]
        self.std_error = float(np.finfo(float).eps * lam.max(initial=1.0) / lam.min(initial=1.0))
        return self

    @classmethod
    def at_analysis(cls, jq, preconditioner: SpectralPreconditioner | None = None, accuracy: float = 0.01,
                    method: str = "auto", max_iterations: int | None = None, seed: int = 0) -> "Posterior":
        """``A^-1`` of the Hessian at ``jq``'s linearisation point: ``method`` ``"dense"``, ``"lanczos"`` or
        ``"auto"`` (dense up to :data:`DENSE_POSTERIOR_SIZE` control values).

        The Lanczos runs on ``S^T A S`` (``A^-1 = S (S^T A S)^-1 S^T`` for any ``S``, here the outer
        loops' ``preconditioner``, so that ``S^T A S`` is near ``I`` where they explored ``A``) from a
        random start, its iterations doubled until ``std_error <= accuracy`` or ``max_iterations``
        (default: the control size) Hessian products (:meth:`_from_run`)."""
        if method not in POSTERIOR_METHODS:
            raise ValueError(f"unknown posterior method {method!r}; choose one of {', '.join(POSTERIOR_METHODS)}")
        if not accuracy > 0:
            raise ValueError(f"posterior accuracy must be > 0, got {accuracy}")
        if method == "dense" or (method == "auto" and jq.size <= DENSE_POSTERIOR_SIZE):
            return cls.from_hessian(jq.cost, jq.control, jq.hessian_matrix())
        S = preconditioner if preconditioner is not None else SpectralPreconditioner(jq.size)
        limit = jq.size if max_iterations is None else min(int(max_iterations), jq.size)
        start = np.random.default_rng(seed).standard_normal(jq.size)
        iterations, previous = min(FIRST_POSTERIOR_ITERATIONS, limit), None
        while True:
            run = lanczos(jq.hessian_vector, start, iterations, lambda j, u, norm: False, S)
            posterior = cls._from_run(jq, S, run, previous)
            if posterior.std_error <= accuracy or iterations >= limit:
                return posterior
            iterations, previous = min(2 * iterations, limit), posterior

    @classmethod
    def _from_run(cls, jq, S: SpectralPreconditioner, run, previous: "Posterior | None" = None) -> "Posterior":
        """``S (I + V (Theta^-1 - I) V^T) S^T`` from every Ritz pair of ``run`` (of ``S^T A S``).

        ``std_error``, relative to each variance and halved for the std, is the larger of the part
        resting on the pairs not converged (``|A v - theta v| > RITZ_TOLERANCE theta``),
        ``sum_j (1/theta_j - 1) (G S v_j)_i^2``, and the change since ``previous``, the run half as
        long (infinite without one); ``eps cond`` for a run that fills the space or whose Krylov
        space is invariant (then exact)."""
        self = cls(jq.cost, jq.control, S.extended(SpectralFactor(run.ritz_vectors, run.ritz_values)))
        unconverged = run.ritz_residuals > RITZ_TOLERANCE * run.ritz_values
        self.method, self.pairs, self.converged = "lanczos", run.ritz_values.size, int(np.sum(~unconverged))
        if run.breakdown or run.nit == jq.size:  # the Krylov space is invariant: A^-1 exactly
            self.std_error = float(np.finfo(float).eps * run.ritz_values.max() / run.ritz_values.min())
            return self
        GSV = self._G_columns(S.apply(run.ritz_vectors[:, unconverged]))
        uncertain = np.abs((GSV**2) @ (1.0 / run.ritz_values[unconverged] - 1.0))
        if previous is None:
            self.std_error = float("inf")
        else:
            uncertain = np.maximum(uncertain, np.abs(self._variance - previous._variance))
            self.std_error = 0.5 * float(np.max(uncertain / np.maximum(self._variance, np.finfo(float).tiny), initial=0.0))
        return self

    @property
    def rank(self) -> int:
        return int(self.W.shape[1])

    def summary(self) -> str:
        """One line: how it was built, from how many pairs, and how accurate its std is."""
        return (f"posterior ({self.method}): {self.pairs} Hessian pairs, {self.converged} converged, "
                f"std within ~{self.std_error:.1e} (relative, estimated)")

    @functools.cached_property
    def F(self) -> np.ndarray:
        """A square root's core: ``S = I + W F W^T`` with ``S S^T = I + W K W^T`` (the symmetric one)."""
        lam, E = np.linalg.eigh(self.K)
        return (E * (np.sqrt(np.maximum(1.0 + lam, 0.0)) - 1.0)) @ E.T

    # --- G = diag(B^1/2, P^1/2, Q^1/2 ...) and its transpose ----------------------------

    def _pieces(self, rows, control: bool):
        """``(covariance, piece)`` for each row of each block of ``rows`` (control or physical layout)."""
        for name, where in (self._control if control else self._physical).items():
            block = self.blocks[name]
            yield from ((block.covariance, piece) for piece in np.split(rows[where], block.rows))

    def _G(self, u: np.ndarray) -> np.ndarray:
        return np.concatenate([C.sqrt(piece) for C, piece in self._pieces(u, control=True)] or [np.zeros(0)])

    def _G_t(self, x: np.ndarray) -> np.ndarray:
        return np.concatenate([C.sqrt_t(piece) for C, piece in self._pieces(x, control=False)] or [np.zeros(0)])

    def _G_columns(self, U: np.ndarray) -> np.ndarray:
        return np.vstack([_sqrt_columns(C, piece) for C, piece in self._pieces(U, control=True)] or [U[:0]])

    # --- the covariance ----------------------------------------------------------------

    def control_apply(self, u: np.ndarray) -> np.ndarray:
        """``A^-1 u ~ (I + W K W^T) u`` in control variables."""
        return u + self.W @ (self.K @ (self.W.T @ u))

    def apply(self, v) -> np.ndarray:
        """``P^a v = G (I + W K W^T) G^T v``."""
        v = np.asarray(v, dtype=float)
        if v.shape != (self.size,):
            raise ValueError(f"Posterior.apply: expected a vector of shape ({self.size},), got {v.shape}")
        return self._G(self.control_apply(self._G_t(v)))

    def sample(self, rng: np.random.Generator, n: int = 1) -> np.ndarray:
        """``n`` draws of ``N(0, P^a)``, rows of an ``(n, size)`` array: ``G S xi``, ``S = I + W F W^T``."""
        xi = rng.standard_normal((self.control_size, int(n)))
        return self._G_columns(xi + self.W @ (self.F @ (self.W.T @ xi))).T

    def variance(self) -> np.ndarray:
        """``diag(P^a) = diag(G G^T) + rowsum((G W) K * (G W))``, a fresh array."""
        return self._variance.copy()

    @functools.cached_property
    def _variance(self) -> np.ndarray:
        """:meth:`variance`, computed once (the posterior does not change)."""
        prior = np.concatenate([np.tile(variance(b.covariance), b.rows) for b in self.blocks.values()] or [np.zeros(0)])
        GW = self._G_columns(self.W)
        return prior + np.einsum("ij,jk,ik->i", GW, self.K, GW)

    def _std(self, name: str) -> np.ndarray | None:
        """The std of block ``name``, ``(rows, n)``; ``None`` when it is not in the control."""
        if name not in self.blocks:
            return None
        return np.sqrt(np.maximum(self._variance[self._physical[name]], 0.0)).reshape(self.blocks[name].rows, -1)

    @property
    def std_x0(self) -> np.ndarray | None:
        """Analysis-error standard deviation of the initial state (``None`` when it is not in the control)."""
        return None if "x0" not in self.blocks else self._std("x0")[0]

    @property
    def std_p(self) -> np.ndarray | None:
        """Analysis-error standard deviation of the parameters (``None`` when they are not in the control)."""
        return None if "p" not in self.blocks else self._std("p")[0]

    @property
    def std_model_error(self) -> np.ndarray | None:
        """Analysis-error standard deviation of the model-error forcing, ``(n_sub, n_state)``
        (``None`` when it is not in the control)."""
        return self._std("eta")

    def params_covariance(self, max_rank: int | None = None) -> "LowRankCovariance":
        """The parameters' marginal ``P^1/2 (I + W_p K W_p^T) P^T/2`` as a limited-memory covariance."""
        if "p" not in self.blocks:
            raise ValueError("params_covariance needs the parameters in the control")
        return LowRankCovariance.update(self.blocks["p"].covariance, self.W[self._control["p"]], self.K, max_rank=max_rank)


class LowRankCovariance(CovarianceBase):
    """``C = C0^1/2 (I + U diag(lam) U^T) C0^T/2``: a base covariance ``C0`` updated in rank ``r``.

    ``U`` has orthonormal columns ``(size, r)``, ``lam > -1``.  Memory ``O(size r)``;
    never a dense ``size x size`` matrix.  With ``M = I + U diag(lam) U^T``::

        C^1/2 = C0^1/2 M^1/2,      M^1/2 = I + U (sqrt(1 + lam) - 1) U^T
        C^-1  = C0^-T/2 M^-1 C0^-1/2,  M^-1 = I + U (1 / (1 + lam) - 1) U^T,
        C0^-1/2 = C0^T/2 C0^-1,    C0^-T/2 = C0^-1 C0^1/2
    """

    _shown = ("size", "rank", "base")

    def __init__(self, base, U: np.ndarray, lam: np.ndarray):
        U, lam = np.asarray(U, dtype=float), np.asarray(lam, dtype=float)
        if U.shape != (base.size, lam.size):
            raise ValueError(f"LowRankCovariance: U must have shape ({base.size}, {lam.size}), got {U.shape}")
        if lam.size and not np.all(lam > -1.0):
            raise ValueError(f"LowRankCovariance: the update is not positive-definite (min lam = {lam.min():.3e} <= -1)")
        self.base, self.U, self.lam = base, U, lam
        self.size = base.size

    @classmethod
    def update(cls, P, X: np.ndarray, K: np.ndarray, max_rank: int | None = None) -> "LowRankCovariance":
        """``P^1/2 (I + X K X^T) P^T/2`` for any covariance ``P``.

        For ``P = C0^1/2 M C0^T/2`` itself low-rank, ``M^1/2 (I + X K X^T) M^1/2 =
        I + U lam U^T + Y K Y^T`` with ``Y = M^1/2 X``, recompressed in the base ``C0``.
        """
        if isinstance(P, LowRankCovariance):
            Y = P._M_power(X, 0.5)
            Z = np.hstack([P.U, Y])
            N = np.zeros((Z.shape[1], Z.shape[1]))
            N[: P.lam.size, : P.lam.size] = np.diag(P.lam)
            N[P.lam.size :, P.lam.size :] = K
            return cls(P.base, *_orthonormal_update(Z, N, max_rank, orthonormal_columns=P.lam.size))
        return cls(P, *_orthonormal_update(X, K, max_rank))

    @property
    def rank(self) -> int:
        return int(self.lam.size)

    def _M_power(self, x: np.ndarray, power: float) -> np.ndarray:
        """``M^power x = x + U ((1 + lam)^power - 1) U^T x`` (``x`` a vector or columns): the spectral factor of ``(U, 1 + lam)``."""
        return SpectralFactor(self.U, 1.0 + self.lam).apply(x, power)

    def apply(self, v) -> np.ndarray:
        return self.base.sqrt(self._M_power(self.base.sqrt_t(self._vector(v)), 1.0))

    def solve(self, v) -> np.ndarray:
        v = self._vector(v)
        y = self.base.sqrt_t(self.base.solve(v))  # C0^-1/2 v
        return self.base.solve(self.base.sqrt(self._M_power(y, -1.0)))

    def sqrt(self, v) -> np.ndarray:
        return self.base.sqrt(self._M_power(self._vector(v), 0.5))

    def sqrt_t(self, v) -> np.ndarray:
        return self._M_power(self.base.sqrt_t(self._vector(v)), 0.5)

    def sqrt_columns(self, X: np.ndarray) -> np.ndarray:
        return _sqrt_columns(self.base, self._M_power(X, 0.5))

    def variance(self) -> np.ndarray:
        """``diag(C) = diag(C0) + rowsum((C0^1/2 U) lam * (C0^1/2 U))``."""
        C0U = _sqrt_columns(self.base, self.U)
        return variance(self.base) + (C0U**2) @ self.lam

    def record(self) -> dict:
        """``std``, the base's record under ``base.``, ``vectors`` ``U`` and ``values`` ``lam``."""
        return {"std": self.std, **nested("base", self.base.record()), "vectors": self.U.copy(), "values": self.lam.copy()}

    @classmethod
    def from_record(cls, record: dict, base: type = Diagonal) -> "LowRankCovariance":
        """``C0^1/2 (I + U diag(lam) U^T) C0^T/2`` of :meth:`record`, ``C0`` rebuilt by ``base.from_record``."""
        return cls(base.from_record(part(record, "base")), record["vectors"], record["values"])

    def with_noise(self, noise_std: float, max_rank: int | None = None) -> "LowRankCovariance":
        """``C + q^2 I`` for a diagonal base ``C0 = D``: ``D'^1/2 (I + U' lam' U'^T) D'^1/2`` with
        ``D' = D + q^2 I`` and ``U' lam U'^T = (D / D')^1/2 U lam U^T (D / D')^1/2``."""
        if not isinstance(self.base, Diagonal):
            raise ValueError("LowRankCovariance.with_noise needs a diagonal base covariance")
        std = np.sqrt(self.base.std**2 + float(noise_std) ** 2)
        shrink = (self.base.std / std)[:, None]
        Z = shrink * self.U
        if Z.shape[1] and shrink.max() <= 1e3 * shrink.min():
            # singular values of Z between min and max shrink: Cholesky QR is accurate, and
            # U' = Z R^-1 E without the QR's copies of an (n, r) block
            R = np.linalg.cholesky(Z.T @ Z).T
            lam, E = np.linalg.eigh((R * self.lam) @ R.T)
            keep = _largest(lam, max_rank)
            return LowRankCovariance(Diagonal(std), Z @ scipy.linalg.solve_triangular(R, E[:, keep]), lam[keep])
        return LowRankCovariance(Diagonal(std), *_orthonormal_update(Z, np.diag(self.lam), max_rank))
