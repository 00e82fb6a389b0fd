"""The control space of incremental 4D-Var: named blocks, one vector.

A block is one part of what the inner loop changes: the initial state ``x0``,
the parameters ``p``, the model-error forcing ``eta`` (one row per sub-window),
or whatever else a window carries.  Each block has its covariance ``C``, its
departure ``e = g - b`` of the outer-loop guess from the background (``rows x n``
values) and ``m`` control values per row (``m = n``, except for a covariance
whose square root starts from a larger space, as an ensemble's does).  The
control vector ``u`` holds the blocks one after the other, each row after row.

With the control-variable transform the increment of a block is
``d = C^1/2 u`` (per row) and, ``a`` the adjoint of ``d`` from the window's AD::

    J_b = 1/2 |v_b + u|^2,     v_b = C^T/2 C^-1 e         grad_u = (v_b + u) + C^T/2 a
    Hessian of J_b: I

and without it ``d = u``, ``J_b = 1/2 |e + u|^2_{C^-1}``, ``grad_u = C^-1 (e + u) + a``,
Hessian ``C^-1``.  :class:`ControlSpace` writes each of these once, as a loop over
the blocks and their rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .covariances import Diagonal
from .interfaces import declared

__all__ = ["Block", "ControlSpace", "apply_rows", "each_column"]


@dataclass(frozen=True)
class Block:
    """One named part of the control (module docstring): ``departure`` ``(rows, n)``, guess minus background;
    ``width`` the control values per row, the covariance's ``control_size``."""

    name: str
    covariance: object
    departure: np.ndarray

    @property
    def rows(self) -> int:
        return self.departure.shape[0]

    @property
    def n(self) -> int:
        return self.departure.shape[1]

    @property
    def width(self) -> int:
        return declared(self.covariance, "control_size")

    @property
    def size(self) -> int:
        return self.rows * self.width


def apply_rows(method, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """A covariance's ``sqrt``, ``sqrt_t`` or ``solve`` applied to each row of ``rows`` ``(r, n)``: ``(r, m)``,
    written into ``out`` when given (it may be ``rows`` itself) and its shape is the result's.

    For a :class:`~fourdvar.covariances.Diagonal` one broadcast product over all rows (the
    parameter block can hold millions of values: no temporaries); otherwise row by row.
    """
    C, f = method.__self__, method.__func__
    if isinstance(C, Diagonal) and f in (Diagonal.sqrt, Diagonal.sqrt_t, Diagonal.solve):
        return np.divide(rows, C.std**2, out=out) if f is Diagonal.solve else np.multiply(rows, C.std, out=out)
    result = np.array([method(row) for row in rows]).reshape(len(rows), -1)
    if out is None or out.shape != result.shape:
        return result
    out[...] = result
    return out


def each_column(function, M: np.ndarray) -> np.ndarray:
    """``[function(M[:, 0]), function(M[:, 1]), ...]`` as the columns of a matrix."""
    return np.stack([function(M[:, j]) for j in range(M.shape[1])], axis=1)


class ControlSpace:
    """The control vector ``u`` over ``blocks`` (a list of :class:`Block`), with or without the transform.

    Increments and adjoints are lists of arrays, one per block, each ``(rows, n)`` (``(rows, n, k)``
    for ``k`` columns).  The single-vector methods write into work arrays and into the output they
    are given, not temporaries: the parameter block can hold millions of values.
    """

    def __init__(self, blocks, transform: bool = True):
        self.blocks = [block for block in blocks if block.size]
        self.transform = bool(transform)
        for block in self.blocks:
            if block.width != block.n and not self.transform:
                raise ValueError(f"{block.covariance!r} is applied through its square root only: it needs the control-variable transform")
        offsets = np.cumsum([0] + [block.size for block in self.blocks])
        self.slices = [slice(int(a), int(b)) for a, b in zip(offsets[:-1], offsets[1:])]
        self.size = int(offsets[-1])
        self.index = {block.name: i for i, block in enumerate(self.blocks)}
        # v_b = C^T/2 C^-1 e, the background's position in the control variables
        self.prior = [apply_rows(b.covariance.sqrt_t, apply_rows(b.covariance.solve, b.departure)) for b in self.blocks] if self.transform else None
        self._work = [np.zeros((b.rows, b.n)) for b in self.blocks]

    def __contains__(self, name: str) -> bool:
        return name in self.index

    def slice(self, name: str) -> slice:
        """Where block ``name`` lies in ``u`` (an empty slice at the end when it is not in the control)."""
        return self.slices[self.index[name]] if name in self.index else slice(self.size, self.size)

    def parts(self, u: np.ndarray) -> list[np.ndarray]:
        """Views of ``u``, one ``(rows, width)`` (``(rows, width, k)`` for columns) per block."""
        if u.shape[0] != self.size:
            raise ValueError(f"control vector must have shape ({self.size},), got {u.shape}")
        return [u[s].reshape((b.rows, b.width) + u.shape[1:]) for b, s in zip(self.blocks, self.slices)]

    def increments(self, u: np.ndarray) -> list[np.ndarray]:
        """``d = C^1/2 u`` per row (``d = u`` without the transform): work arrays or views of ``u``, overwritten by the next call."""
        if not self.transform:
            return self.parts(u)
        for block, part, work in zip(self.blocks, self.parts(u), self._work):
            apply_rows(block.covariance.sqrt, part, out=work)
        return self._work

    def column_increments(self, U: np.ndarray) -> list[np.ndarray]:
        """:meth:`increments` of the ``k`` columns of ``U`` ``(size, k)``: ``(rows, n, k)`` per block, fresh."""
        if not self.transform:
            return [part.copy() for part in self.parts(U)]
        return [np.stack([each_column(b.covariance.sqrt, row) for row in part]) for b, part in zip(self.blocks, self.parts(U))]

    def add_adjoint(self, adjoints: list, out: np.ndarray) -> np.ndarray:
        """``out += C^T/2 a`` per block and row (``out += a`` without the transform); returns ``out``.

        ``adjoints`` has one ``(rows, n)`` array (or ``(rows, n, k)``) per block; with the
        transform a single vector's are overwritten.
        """
        for block, part, a in zip(self.blocks, self.parts(out), adjoints):
            if not self.transform:
                part += a
            elif a.ndim == 3:
                part += np.stack([each_column(block.covariance.sqrt_t, row) for row in a])
            else:
                part += apply_rows(block.covariance.sqrt_t, a, out=a)
        return out

    def background(self, u: np.ndarray, out: np.ndarray) -> list[float]:
        """``J_b`` of each block at ``u``; the gradient of their sum w.r.t. ``u`` written into ``out``.

        With the transform ``out_b = v_b + u_b`` (squared norm ``2 J_b``); without it
        ``out_b = C^-1 (e + u_b)`` and ``J_b = 1/2 (e + u_b) . out_b``.
        """
        J = []
        for i, (block, part, out_b) in enumerate(zip(self.blocks, self.parts(u), self.parts(out))):
            if self.transform:
                ev = np.add(self.prior[i], part, out=out_b)
                J.append(0.5 * float(np.vdot(ev, ev)))
            else:
                e = block.departure + part
                J.append(0.5 * float(np.vdot(e, apply_rows(block.covariance.solve, e, out=out_b))))
        return J

    def prior_hessian(self, u: np.ndarray) -> np.ndarray:
        """The Hessian of the background terms applied to ``u`` (``(size,)`` or ``(size, k)``): ``u`` itself
        with the transform, ``C^-1 u_b`` per row without; a fresh array."""
        if self.transform:
            return u.copy()
        out = np.empty_like(u)
        for block, part, out_b in zip(self.blocks, self.parts(u), self.parts(out)):
            for row, o in zip(part, out_b):
                o[...] = block.covariance.solve(row) if row.ndim == 1 else each_column(block.covariance.solve, row)
        return out

    def transformed_norm(self, gradient: np.ndarray) -> float:
        """``|g|`` in the transformed variables, whatever :attr:`transform`: ``|[C^T/2 g_b]|`` without it."""
        if self.transform:
            return float(np.linalg.norm(gradient))
        return float(np.linalg.norm([np.linalg.norm(apply_rows(b.covariance.sqrt_t, part)) for b, part in zip(self.blocks, self.parts(gradient))]))
