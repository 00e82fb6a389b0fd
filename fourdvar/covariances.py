"""Covariance matrices ``B``, ``P`` and ``R``, applied matrix-free.

Every class here satisfies :class:`fourdvar.interfaces.Covariance` (``apply``, ``solve``,
``sqrt``, ``sqrt_t``, ``sample``; the optional capabilities' defaults in :class:`CovarianceBase`)
and also has ``std`` (the nominal standard deviations ``sqrt(diag C)``, a 1-D array) and
``with_std(new_std)``, which keeps the correlation structure and replaces the
standard-deviation profile (a scalar or one value per element).

Vectors are 1-D float64 arrays of shape ``(size,)``.  Anything else raises
``ValueError`` naming the expected and the received shape; nothing broadcasts.

Classes:

``Diagonal``             ``C = diag(std^2)``
``Dense``                a given SPD matrix, through its Cholesky factor ``C = L L^T``
``PeriodicCorrelation``  ``C = S Cor S`` on a periodic 1-D grid, applied by FFT
``BlockDiagonal``        ``C = diag(C_1, ..., C_m)``, e.g. the joint ``[state; params]``
"""

from __future__ import annotations

import functools
import operator
from typing import Sequence

import numpy as np
import scipy.linalg

from .interfaces import declared, declares

__all__ = ["CovarianceBase", "Diagonal", "Dense", "PeriodicCorrelation", "BlockDiagonal", "CORRELATION_SHAPES",
           "nested", "part", "dense_matrix"]

#: Correlation functions ``rho(d)`` of the distance ``d`` (grid points) and length scale ``L``.
CORRELATION_SHAPES = {
    "gaussian": lambda d, L: np.exp(-0.5 * (d / L) ** 2),
    "soar": lambda d, L: (1.0 + d / L) * np.exp(-d / L),
}


def _check_size(size, name: str = "size", minimum: int = 0) -> int:
    if isinstance(size, bool) or not hasattr(size, "__index__"):
        raise ValueError(f"{name} must be an integer, got {size!r}")
    size = operator.index(size)
    if size < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {size}")
    return size


def _check_std(std, size: int, name: str = "std") -> np.ndarray:
    """A positive, finite scalar (repeated ``size`` times) or an array of shape ``(size,)``."""
    std = np.asarray(std, dtype=float)
    if std.ndim == 0:
        std = np.full(size, float(std))
    elif std.shape != (size,):
        raise ValueError(f"{name}: expected a scalar or shape ({size},), got shape {std.shape}")
    if not np.all(np.isfinite(std)):
        raise ValueError(f"{name} must be finite (found NaN or inf)")
    if np.any(std <= 0):
        raise ValueError(f"{name} must be positive everywhere (smallest value {std.min():g})")
    std = std.copy()
    std.flags.writeable = False
    return std


def _check_correlation(who: str, length_scale, shape, min_eigenvalue) -> tuple[float, str, float]:
    """``(length_scale, shape, min_eigenvalue)`` of a correlation model, checked."""
    if not (np.ndim(length_scale) == 0 and np.isfinite(length_scale) and length_scale > 0):
        raise ValueError(f"{who}: length_scale must be a positive finite number, got {length_scale!r}")
    if not isinstance(shape, str) or shape.lower() not in CORRELATION_SHAPES:
        raise ValueError(f"{who}: unknown correlation shape {shape!r}; expected one of {sorted(CORRELATION_SHAPES)}")
    if not (np.ndim(min_eigenvalue) == 0 and 0 < min_eigenvalue < 1):
        raise ValueError(f"{who}: min_eigenvalue must be in (0, 1), got {min_eigenvalue!r}")
    return float(length_scale), shape.lower(), float(min_eigenvalue)


def dense_matrix(covariance) -> np.ndarray:
    """``C`` as an ``(n, n)`` array, column by column: ``C e_i``."""
    return np.column_stack([covariance.apply(unit) for unit in np.eye(covariance.size)])


def nested(prefix: str, record: dict) -> dict:
    """A part's :meth:`~CovarianceBase.record` inside its whole's: each key as ``prefix.key``."""
    return {f"{prefix}.{key}": value for key, value in record.items()}


def part(record: dict, prefix: str) -> dict:
    """The record :func:`nested` under ``prefix``."""
    return {key[len(prefix) + 1 :]: value for key, value in record.items() if key.startswith(prefix + ".")}


@declares("control_size", "sqrt_columns", "variance", "condition_number", "std", "record")
class CovarianceBase:
    """Shape checking and sampling shared by the covariances below, and the defaults of the
    optional capabilities of :class:`fourdvar.interfaces.Covariance`.

    ``record()`` gives the numbers that rebuild a covariance, a flat dict of numpy arrays and
    scalars (a part's under ``part.key``, see :func:`nested`), always with ``std``; the
    classmethod ``from_record(record)`` of a class rebuilds an equal covariance from it.
    """

    size: int
    #: the condition number of the correlation, when the covariance knows it
    condition_number = None
    #: the attributes its ``repr`` shows
    _shown = ("size",)

    @functools.cached_property
    def control_size(self) -> int:
        """The length of the vectors ``sqrt`` takes: ``size``."""
        return self.size

    def sqrt_columns(self, W: np.ndarray) -> np.ndarray:
        """``C^1/2 W`` for the columns of ``W`` ``(control_size, k)``, one at a time."""
        return np.column_stack([self.sqrt(column) for column in W.T]) if W.shape[1] else np.zeros((self.size, 0))

    def variance(self) -> np.ndarray:
        """``diag(C)``: ``|C^T/2 e_i|^2``."""
        return np.array([np.sum(self.sqrt_t(unit) ** 2) for unit in np.eye(self.size)])

    @functools.cached_property
    def std(self) -> np.ndarray:
        """``sqrt(diag C)``."""
        return np.sqrt(np.maximum(declared(self, "variance")(), 0.0))

    def record(self) -> dict:
        """``{"std": sqrt(diag C)}``: what rebuilds ``C`` on a correlation given elsewhere (``with_std``)."""
        return {"std": np.broadcast_to(declared(self, "std"), (self.size,)).copy()}

    def _vector(self, v) -> np.ndarray:
        v = np.asarray(v, dtype=float)
        if v.shape != (self.size,):
            raise ValueError(f"{type(self).__name__}: expected a vector of shape ({self.size},), "
                             f"got shape {v.shape}")
        return v

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """A draw from ``N(0, C)``: ``C^1/2 w`` with ``w ~ N(0, I)`` of ``control_size`` values."""
        return self.sqrt(rng.standard_normal(self.control_size))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{name}={getattr(self, name)!r}' for name in self._shown)})"


class Diagonal(CovarianceBase):
    """``C = diag(std^2)``; ``C^1/2 = C^T/2 = diag(std)``.

    ``std``: positive and finite, one value per element, or a scalar together with ``size``
    (which may be 0: ``P`` for a model without parameters).

    Examples
    --------
    >>> B = Diagonal([1.0, 2.0])
    >>> B.apply(np.array([1.0, 1.0])), B.solve(np.array([1.0, 4.0])), B.sqrt(np.array([1.0, 1.0]))
    (array([1., 4.]), array([1., 1.]), array([1., 2.]))
    >>> Diagonal(0.5, size=3).std
    array([0.5, 0.5, 0.5])
    """

    def __init__(self, std, size: int | None = None):
        if size is None and np.ndim(std) == 0:
            raise ValueError("Diagonal: size is required when std is a scalar")
        self.size = np.shape(std)[0] if size is None else _check_size(size)
        self.std = _check_std(std, self.size)
        self._var = self.std**2

    @classmethod
    def from_record(cls, record: dict) -> "Diagonal":
        """The diagonal of ``record["std"]`` (:meth:`record`)."""
        return cls(record["std"])

    @classmethod
    def identity(cls, size: int) -> "Diagonal":
        """``C = I`` of the given size."""
        return cls(1.0, size=size)

    def apply(self, v):
        """``C v = std^2 * v``."""
        return self._var * self._vector(v)

    def solve(self, v):
        """``C^-1 v = v / std^2``."""
        return self._vector(v) / self._var

    def sqrt(self, v):
        """``C^1/2 v = C^T/2 v = std * v``."""
        return self.std * self._vector(v)

    sqrt_t = sqrt

    def sqrt_columns(self, W: np.ndarray) -> np.ndarray:
        """``C^1/2 W = std * W``, one product."""
        return self.std[:, None] * W

    def variance(self) -> np.ndarray:
        """``diag(C) = std^2``."""
        return self.std**2

    def with_std(self, std) -> "Diagonal":
        """``diag(new_std^2)``."""
        return Diagonal(std, size=self.size)


class Dense(CovarianceBase):
    """A given symmetric positive-definite ``C = L L^T`` (``L`` lower Cholesky factor).

    ``C^1/2 = L``, ``C^T/2 = L^T``; ``C^-1 v`` by two triangular solves.  The matrix must be square,
    finite, symmetric to ``SYMMETRY_TOLERANCE`` relative (it is then symmetrised) and positive-definite.

    Examples
    --------
    >>> C = Dense([[4.0, 2.0], [2.0, 2.0]])
    >>> C.sqrt(np.array([1.0, 0.0]))             # the first column of L
    array([2., 1.])
    >>> C.solve(C.apply(np.array([1.0, -1.0])))
    array([ 1., -1.])
    """

    SYMMETRY_TOLERANCE = 1e-10

    def __init__(self, matrix):
        A = np.asarray(matrix, dtype=float)
        if A.ndim != 2 or A.shape[0] != A.shape[1]:
            raise ValueError(f"Dense: matrix must be square, got shape {A.shape}")
        if not np.all(np.isfinite(A)):
            raise ValueError("Dense: matrix must be finite (found NaN or inf)")
        scale = np.max(np.abs(A)) if A.size else 0.0
        asymmetry = np.max(np.abs(A - A.T)) if A.size else 0.0
        if asymmetry > self.SYMMETRY_TOLERANCE * scale:
            raise ValueError(f"Dense: matrix is not symmetric (max |A - A^T| = {asymmetry:.3e}, "
                             f"{asymmetry / scale:.1e} relative to max |A|)")
        A = 0.5 * (A + A.T)
        try:
            L = np.linalg.cholesky(A)
        except np.linalg.LinAlgError:
            raise ValueError("Dense: matrix is not positive-definite (Cholesky factorisation failed)") from None
        self._set(A, L)

    @classmethod
    def _from_factor(cls, L: np.ndarray) -> "Dense":
        self = cls.__new__(cls)
        self._set(L @ L.T, L)
        return self

    def _set(self, A: np.ndarray, L: np.ndarray) -> None:
        self.size = A.shape[0]
        self.matrix, self.cholesky, self.std = A, L, np.sqrt(np.diag(A))
        for array in (self.matrix, self.cholesky, self.std):
            array.flags.writeable = False

    def apply(self, v):
        """``C v``."""
        return self.matrix @ self._vector(v)

    def solve(self, v):
        """``C^-1 v = L^-T (L^-1 v)``."""
        return scipy.linalg.cho_solve((self.cholesky, True), self._vector(v))

    def sqrt(self, v):
        """``C^1/2 v = L v``."""
        return self.cholesky @ self._vector(v)

    def sqrt_t(self, v):
        """``C^T/2 v = L^T v``."""
        return self.cholesky.T @ self._vector(v)

    def variance(self) -> np.ndarray:
        """``diag(C)``, from the matrix."""
        return np.diag(self.matrix).copy()

    def record(self) -> dict:
        """``{"std", "matrix"}``: ``C`` itself (read-only arrays)."""
        return {"std": self.std, "matrix": self.matrix}

    @classmethod
    def from_record(cls, record: dict) -> "Dense":
        """``C = record["matrix"]``."""
        return cls(record["matrix"])

    def with_std(self, std) -> "Dense":
        """``S' D^-1 C D^-1 S'`` with ``D = diag(self.std)``, ``S' = diag(std)``.

        Its Cholesky factor is ``S' D^-1 L`` (row scaling keeps it lower-triangular).
        """
        std = _check_std(std, self.size)
        return Dense._from_factor((std / self.std)[:, None] * self.cholesky)


class PeriodicCorrelation(CovarianceBase):
    """``C = S Cor S`` on a periodic 1-D grid of ``size`` points, applied by FFT.

    ``S = diag(std)``; ``Cor`` is the circulant matrix whose first row is ``rho(d)``,
    ``d = min(i, size - i)`` the periodic distance in grid points, ``rho`` the ``shape`` of
    :data:`CORRELATION_SHAPES`: ``exp(-d^2 / (2 L^2))`` (gaussian) or ``(1 + d/L) exp(-d/L)`` (soar).

    ``Cor = F^-1 diag(lambda) F`` with ``lambda = real(fft(first row))``, clipped below at
    ``min_eigenvalue * max(lambda)`` (round-off makes a long Gaussian's smallest eigenvalues
    negative, and the wrapped ``rho`` is not positive-definite when ``L`` is a sizeable fraction
    of ``size``): the nearest symmetric circulant with condition number at most
    ``1 / min_eigenvalue``.  ``clipping = max(lambda_clipped - lambda)``, its 2-norm distance
    from the exact circulant, bounds ``|diag(Cor) - 1|``; ``n_clipped`` counts the clipped
    eigenvalues among the ``size // 2 + 1`` distinct ones.  ``solve(apply(v))`` returns ``v`` to
    about ``eps cond(C)``, ``cond(C) <= cond(S)^2 / min_eigenvalue``.

    With the symmetric square root ``G = F^-1 diag(sqrt(lambda)) F``:

        C^1/2 = S G,   C^T/2 = G S,   C^-1 = S^-1 F^-1 diag(1/lambda) F S^-1.

    Each costs ``O(n log n)``; the ``n x n`` matrix is never formed.
    """

    _shown = ("size", "length_scale", "shape")

    def __init__(self, size: int, length_scale: float, std=1.0, shape: str = "gaussian",
                 *, min_eigenvalue: float = 1e-10):
        self.size = _check_size(size, minimum=1)
        self.length_scale, self.shape, self.min_eigenvalue = _check_correlation(
            "PeriodicCorrelation", length_scale, shape, min_eigenvalue)
        self.std = _check_std(std, self.size)

        i = np.arange(self.size)
        self.first_row = CORRELATION_SHAPES[self.shape](np.minimum(i, self.size - i), self.length_scale)
        self._set_spectrum(np.fft.rfft(self.first_row).real)

    def _set_spectrum(self, lam: np.ndarray) -> None:
        """Keep the spectrum ``lam`` of ``Cor`` clipped below at ``min_eigenvalue * max(lam)``,
        with ``n_clipped``, ``clipping`` and the spectra of ``Cor^1/2`` and ``Cor^-1``."""
        floor = self.min_eigenvalue * lam.max()
        self.n_clipped = int(np.count_nonzero(lam < floor))
        self.eigenvalues = np.maximum(lam, floor)  # of Cor, the rfft half-spectrum
        self.clipping = float(np.max(self.eigenvalues - lam))
        self._sqrt_lam = np.sqrt(self.eigenvalues)
        self._inv_lam = 1.0 / self.eigenvalues

    @property
    def condition_number(self) -> float:
        """``max(lambda) / min(lambda)`` of the (clipped) correlation matrix."""
        return float(self.eigenvalues.max() / self.eigenvalues.min())

    def _circulant(self, spectrum: np.ndarray, v: np.ndarray) -> np.ndarray:
        """``F^-1 diag(spectrum) F v`` for a real symmetric circulant."""
        return np.fft.irfft(spectrum * np.fft.rfft(v), n=self.size)

    def apply(self, v):
        """``C v = S F^-1 diag(lambda) F S v``."""
        return self.std * self._circulant(self.eigenvalues, self.std * self._vector(v))

    def solve(self, v):
        """``C^-1 v = S^-1 F^-1 diag(1/lambda) F S^-1 v``."""
        return self._circulant(self._inv_lam, self._vector(v) / self.std) / self.std

    def sqrt(self, v):
        """``C^1/2 v = S F^-1 diag(sqrt(lambda)) F v``."""
        return self.std * self._circulant(self._sqrt_lam, self._vector(v))

    def sqrt_t(self, v):
        """``C^T/2 v = F^-1 diag(sqrt(lambda)) F S v``."""
        return self._circulant(self._sqrt_lam, self.std * self._vector(v))

    def record(self) -> dict:
        """``{"std", "length_scale", "shape", "min_eigenvalue"}``."""
        return {"std": self.std.copy(), "length_scale": self.length_scale, "shape": self.shape, "min_eigenvalue": self.min_eigenvalue}

    @classmethod
    def from_record(cls, record: dict) -> "PeriodicCorrelation":
        """The correlation of :meth:`record` with its std."""
        return cls(np.size(record["std"]), record["length_scale"], record["std"], record["shape"], min_eigenvalue=record["min_eigenvalue"])

    def with_std(self, std) -> "PeriodicCorrelation":
        """The same correlation ``Cor`` with ``S = diag(std)``."""
        return PeriodicCorrelation(self.size, self.length_scale, std, self.shape,
                                   min_eigenvalue=self.min_eigenvalue)


def _blockwise(method: str, doc: str):
    """The operation ``method`` of :class:`BlockDiagonal`, each block's on its slice of ``v``."""

    def operation(self, v) -> np.ndarray:
        v = self._vector(v)
        parts = [getattr(b, method)(v[s]) for b, s in zip(self.blocks, self.slices) if b.size]
        return np.concatenate([np.empty(0)] + parts)

    operation.__name__, operation.__qualname__, operation.__doc__ = method, f"BlockDiagonal.{method}", doc
    return operation


class BlockDiagonal(CovarianceBase):
    """``C = diag(C_1, ..., C_m)``: each operation acts on the slice of ``v`` of its block.

    At least one block, each of any size (0: a model without parameters); ``v[slices[j]]`` is
    the part of ``v`` block ``j`` acts on.  ``std`` and ``with_std`` need them on every block.

    Examples
    --------
    >>> C = BlockDiagonal([Diagonal(1.0, size=2), Diagonal(3.0, size=1)])
    >>> C.size, C.apply(np.ones(3)), C.std
    (3, array([1., 1., 9.]), array([1., 1., 3.]))
    """

    def __init__(self, blocks: Sequence):
        self.blocks = tuple(blocks)
        if not self.blocks:
            raise ValueError("BlockDiagonal: blocks must contain at least one covariance")
        sizes = [_check_size(b.size, name=f"blocks[{j}].size") for j, b in enumerate(self.blocks)]
        ends = np.cumsum(sizes)
        self.slices = tuple(slice(int(e - n), int(e)) for e, n in zip(ends, sizes))
        self.size = int(ends[-1])

    @property
    def std(self) -> np.ndarray:
        """The blocks' ``std`` concatenated."""
        return np.concatenate([np.asarray(b.std, dtype=float).reshape(-1) for b in self.blocks])

    apply = _blockwise("apply", "``C v = [C_1 v_1; ...; C_m v_m]``.")
    solve = _blockwise("solve", "``C^-1 v = [C_1^-1 v_1; ...]``.")
    sqrt = _blockwise("sqrt", "``C^1/2 v = [C_1^1/2 v_1; ...]``.")
    sqrt_t = _blockwise("sqrt_t", "``C^T/2 v = [C_1^T/2 v_1; ...]``.")

    def record(self) -> dict:
        """``std`` and each block's record under ``block<j>.``."""
        return {"std": self.std, **{key: value for j, b in enumerate(self.blocks) for key, value in nested(f"block{j}", b.record()).items()}}

    @classmethod
    def from_record(cls, record: dict, kinds: Sequence[type]) -> "BlockDiagonal":
        """The blocks of :meth:`record`, block ``j`` rebuilt by ``kinds[j].from_record``."""
        return cls([kind.from_record(part(record, f"block{j}")) for j, kind in enumerate(kinds)])

    def with_std(self, std) -> "BlockDiagonal":
        """Each block's ``with_std`` with its slice of ``std`` (or the scalar)."""
        std = _check_std(std, self.size)
        return BlockDiagonal([b.with_std(std[s]) for b, s in zip(self.blocks, self.slices)])

    def __repr__(self) -> str:
        return f"BlockDiagonal([{', '.join(map(repr, self.blocks))}])"
