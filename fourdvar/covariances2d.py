"""Covariances of fields on a doubly periodic 2-D grid, applied by 2-D real FFT.

A state of ``n_fields`` fields (the layers of a layered model) on an ``ny x nx``
periodic grid is the flat C-order vector of the array ``(n_fields, ny, nx)``.
:class:`PeriodicCorrelation2D` is

    C = S (V (x) Cor) S

* ``Cor`` the homogeneous, isotropic horizontal correlation of one field: the
  block-circulant matrix whose first row is ``rho(d)``, ``d`` the periodic
  distance in grid points, ``d^2 = min(i, ny - i)^2 + min(j, nx - j)^2``;
  ``rho`` is one of :data:`fourdvar.covariances.CORRELATION_SHAPES` (Gaussian,
  SOAR).  It is diagonal in Fourier space: ``Cor = F^-1 diag(lambda) F`` with
  ``lambda = real(rfft2(first row))``, clipped below at ``min_eigenvalue *
  max(lambda)`` exactly as the 1-D :class:`~fourdvar.covariances.PeriodicCorrelation`
  does (and with its ``n_clipped``, ``clipping`` and ``condition_number``).
* ``V`` the vertical correlation between the fields, a small symmetric
  positive-definite matrix with unit diagonal (the identity by default), with
  Cholesky factor ``V = L_V L_V^T``.
* ``S = diag(std)``: one std per field, or a full profile of one value per element.

With the symmetric horizontal root ``G = F^-1 diag(sqrt(lambda)) F``::

    C^1/2 = S (L_V (x) G)          C^T/2 = (L_V^T (x) G) S
    C^-1  = S^-1 (V^-1 (x) Cor^-1) S^-1
    diag(C) = std^2 * diag(Cor)    (diag(Cor) = the clipped kernel at d = 0, 1 up to ``clipping``)

each costs two FFTs of the ``(n_fields, ny, nx)`` array and an ``n_fields x
n_fields`` product; the ``n x n`` matrix is never formed.  ``*_columns`` apply
the same to the ``k`` columns of an ``(n, k)`` matrix in one batch of FFTs.

``B`` is the covariance of the model's own state (the potential vorticity ``q`` of a
layered QG model, not its streamfunction: the inversion from one to the other is the
model's, which the engine does not know).
"""

from __future__ import annotations

import operator

import numpy as np

from .covariances import CORRELATION_SHAPES, PeriodicCorrelation, _check_correlation, _check_size, _check_std

__all__ = ["PeriodicCorrelation2D"]


def _one_column(columns: str, doc: str):
    """The operation ``columns`` on one vector ``v``, as an ``(n, 1)`` matrix."""
    name = columns.removesuffix("_columns")

    def operation(self, v) -> np.ndarray:
        return getattr(self, columns)(self._vector(v)[:, None])[:, 0]

    operation.__name__, operation.__qualname__, operation.__doc__ = name, f"PeriodicCorrelation2D.{name}", doc
    return operation


class PeriodicCorrelation2D(PeriodicCorrelation):
    """``C = S (V (x) Cor) S`` for ``n_fields`` fields on an ``ny x nx`` periodic grid (module docstring).

    ``length_scale`` in grid points; ``std`` a scalar, one value per field or a profile
    ``(n_fields * ny * nx,)``; ``vertical`` the ``(n_fields, n_fields)`` correlation ``V`` (default ``I``).
    """

    _shown = ("nx", "ny", "n_fields", "length_scale", "shape")

    def __init__(self, nx: int, ny: int, length_scale: float, std=1.0, shape: str = "gaussian",
                 n_fields: int = 1, vertical=None, *, min_eigenvalue: float = 1e-10):
        who = "PeriodicCorrelation2D"
        self.nx = _check_size(nx, "nx", minimum=1)
        self.ny = _check_size(ny, "ny", minimum=1)
        self.n_fields = _check_size(n_fields, "n_fields", minimum=1)
        self.size = self.n_fields * self.ny * self.nx
        self.length_scale, self.shape, self.min_eigenvalue = _check_correlation(who, length_scale, shape, min_eigenvalue)
        self.std = self._profile(std)
        self.vertical = self._vertical(vertical)
        self._vertical_factor = np.linalg.cholesky(self.vertical)
        self._vertical_inverse = np.linalg.inv(self.vertical)

        i, j = np.arange(self.ny), np.arange(self.nx)
        di, dj = np.minimum(i, self.ny - i), np.minimum(j, self.nx - j)
        distance = np.hypot(di[:, None], dj[None, :])
        self.first_row = CORRELATION_SHAPES[self.shape](distance, self.length_scale)
        self._set_spectrum(np.fft.rfft2(self.first_row).real)
        self.correlation_diagonal = float(np.fft.irfft2(self.eigenvalues, s=(self.ny, self.nx))[0, 0])

    # --- construction ----------------------------------------------------------------------

    def _profile(self, std) -> np.ndarray:
        """``std`` as one value per element: a scalar, one per field, or the full profile."""
        if np.ndim(std) == 1 and np.shape(std)[0] == self.n_fields and self.n_fields != self.size:
            std = np.repeat(_check_std(std, self.n_fields), self.ny * self.nx)
        try:
            return _check_std(std, self.size)
        except ValueError as error:
            raise ValueError(f"PeriodicCorrelation2D: {error} (or shape ({self.n_fields},), one per field)") from None

    def _vertical(self, vertical) -> np.ndarray:
        """``V``: ``None`` (the identity) or a symmetric positive-definite matrix with unit diagonal."""
        n = self.n_fields
        if vertical is None:
            return np.eye(n)
        V = np.array(vertical, dtype=float)
        if V.shape != (n, n) or not np.all(np.isfinite(V)):
            raise ValueError(f"PeriodicCorrelation2D: vertical must be a finite ({n}, {n}) matrix (one row per field), got shape {V.shape}")
        if not np.allclose(V, V.T, rtol=0, atol=1e-12) or not np.allclose(np.diag(V), 1.0, rtol=0, atol=1e-12):
            raise ValueError("PeriodicCorrelation2D: vertical must be a symmetric correlation matrix with ones on its diagonal")
        if np.linalg.eigvalsh(V).min() <= 0:
            raise ValueError("PeriodicCorrelation2D: vertical must be positive-definite (an eigenvalue is <= 0)")
        return 0.5 * (V + V.T)

    # --- the operations on k columns at once: arrays (k, n_fields, ny, nx) -----------------------

    def _fields(self, V: np.ndarray) -> np.ndarray:
        """The ``(n, k)`` columns as ``(k, n_fields, ny, nx)`` fields."""
        return V.T.reshape(-1, self.n_fields, self.ny, self.nx)

    def _columns(self, U: np.ndarray) -> np.ndarray:
        """``(k, n_fields, ny, nx)`` fields back as ``(n, k)`` columns."""
        return U.reshape(U.shape[0], self.size).T

    def _horizontal(self, spectrum: np.ndarray, U: np.ndarray) -> np.ndarray:
        """``F^-1 diag(spectrum) F`` on every field: a block-circulant product by 2-D real FFT."""
        return np.fft.irfft2(spectrum * np.fft.rfft2(U), s=(self.ny, self.nx))

    @staticmethod
    def _across_fields(matrix: np.ndarray, U: np.ndarray) -> np.ndarray:
        """``(matrix (x) I) U``: mixes the fields of each column at every grid point."""
        return np.einsum("ij,kjyx->kiyx", matrix, U)

    def _matrix(self, W, method: str) -> np.ndarray:
        W = np.asarray(W, dtype=float)
        if W.ndim != 2 or W.shape[0] != self.size:
            raise ValueError(f"PeriodicCorrelation2D.{method}: expected a matrix of shape ({self.size}, k), got shape {W.shape}")
        return W

    def apply_columns(self, W) -> np.ndarray:
        """``C W = S (V (x) Cor) S W``."""
        U = self._fields(self.std[:, None] * self._matrix(W, "apply_columns"))
        U = self._across_fields(self.vertical, self._horizontal(self.eigenvalues, U))
        return self.std[:, None] * self._columns(U)

    def solve_columns(self, W) -> np.ndarray:
        """``C^-1 W = S^-1 (V^-1 (x) Cor^-1) S^-1 W``."""
        U = self._fields(self._matrix(W, "solve_columns") / self.std[:, None])
        U = self._across_fields(self._vertical_inverse, self._horizontal(self._inv_lam, U))
        return self._columns(U) / self.std[:, None]

    def sqrt_columns(self, W) -> np.ndarray:
        """``C^1/2 W = S (L_V (x) G) W``."""
        U = self._fields(self._matrix(W, "sqrt_columns"))
        U = self._across_fields(self._vertical_factor, self._horizontal(self._sqrt_lam, U))
        return self.std[:, None] * self._columns(U)

    def sqrt_t_columns(self, W) -> np.ndarray:
        """``C^T/2 W = (L_V^T (x) G) S W``."""
        U = self._fields(self.std[:, None] * self._matrix(W, "sqrt_t_columns"))
        U = self._horizontal(self._sqrt_lam, self._across_fields(self._vertical_factor.T, U))
        return self._columns(U)

    # --- the covariance protocol: one vector, as one column -----------------------------------------

    apply = _one_column("apply_columns", "``C v``.")
    solve = _one_column("solve_columns", "``C^-1 v``.")
    sqrt = _one_column("sqrt_columns", "``C^1/2 v``.")
    sqrt_t = _one_column("sqrt_t_columns", "``C^T/2 v``.")

    def sample(self, rng: np.random.Generator, n: int | None = None) -> np.ndarray:
        """A draw from ``N(0, C)`` (``n`` draws as the columns of an ``(size, n)`` matrix)."""
        if n is None:
            return super().sample(rng)
        n = operator.index(n)
        return self.sqrt_columns(rng.standard_normal((self.size, n)))

    def variance(self) -> np.ndarray:
        """``diag(C) = std^2 diag(Cor)`` (``V`` has a unit diagonal)."""
        return self.std**2 * self.correlation_diagonal

    def record(self) -> dict:
        """The 1-D record with ``nx``, ``ny``, ``n_fields`` and the vertical correlation ``vertical``."""
        return {**super().record(), "nx": self.nx, "ny": self.ny, "n_fields": self.n_fields, "vertical": self.vertical.copy()}

    @classmethod
    def from_record(cls, record: dict) -> "PeriodicCorrelation2D":
        """The correlation of :meth:`record` with its std."""
        return cls(record["nx"], record["ny"], record["length_scale"], record["std"], record["shape"], record["n_fields"],
                   record["vertical"], min_eigenvalue=record["min_eigenvalue"])

    def with_std(self, std) -> "PeriodicCorrelation2D":
        """The same correlation ``V (x) Cor`` with ``S = diag(std)``."""
        return PeriodicCorrelation2D(self.nx, self.ny, self.length_scale, std, self.shape, self.n_fields,
                                     self.vertical, min_eigenvalue=self.min_eigenvalue)
