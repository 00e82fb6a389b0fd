"""Gather of local stencils on a periodic 1-D grid, and its adjoint (a scatter-add).

    S[j, i] = x[(i + j - h) mod n]          j = 0 .. 2h,  i = 0 .. n-1     (gather)
    ax[m]   = sum_{(j, i): (i + j - h) mod n = m} aS[j, i]                   (scatter-add)

Both are one vectorised call: fancy indexing for the gather, ``np.bincount`` with
weights for the scatter-add.  For a block of ``k`` columns (``x`` of shape
``(n, k)``, ``aS`` of shape ``(2h+1, n, k)``) the scatter-add is one shifted add
per stencil offset: row ``j`` of ``aS`` lands ``j - h`` points along.
"""

from __future__ import annotations

import numpy as np


class PeriodicStencil:
    """The stencils of half-width ``h`` around every point of a periodic grid of ``n`` points.

    Parameters
    ----------
    n : int
        Grid points.
    half_width : int
        ``h``, in ``[0, (n - 1) // 2]``.

    Raises
    ------
    ValueError
        When the stencil does not fit the grid.

    Examples
    --------
    >>> stencil = PeriodicStencil(5, 1)
    >>> stencil.gather(np.arange(5.0))
    array([[4., 0., 1., 2., 3.],
           [0., 1., 2., 3., 4.],
           [1., 2., 3., 4., 0.]])
    >>> stencil.scatter_add(np.ones((3, 5)))      # each point is in three stencils
    array([3., 3., 3., 3., 3.])
    """

    def __init__(self, n: int, half_width: int):
        if half_width < 0 or 2 * half_width + 1 > n:
            raise ValueError(f"half_width must be in [0, {(n - 1) // 2}] for {n} grid points, got {half_width}")
        self.n = n
        self.half_width = half_width
        self.width = 2 * half_width + 1
        offsets = np.arange(-half_width, half_width + 1)
        self.indices = (offsets[:, None] + np.arange(n)[None, :]) % n  # shape (width, n)
        self._flat = self.indices.ravel()

    def gather(self, x: np.ndarray) -> np.ndarray:
        """``S``, shape ``(2h + 1, n)``: column ``i`` is the stencil around point ``i``."""
        return x[self.indices]

    def scatter_add(self, a_stencils: np.ndarray) -> np.ndarray:
        """Adjoint of :meth:`gather`."""
        if a_stencils.ndim == 2:
            return np.bincount(self._flat, weights=a_stencils.ravel(), minlength=self.n)
        ax = np.zeros(a_stencils.shape[1:])
        n = self.n
        for j, offset in enumerate(range(-self.half_width, self.half_width + 1)):
            shift = offset % n  # ax[m] += aS[j, m - shift], the index taken mod n: two slices
            ax[shift:] += a_stencils[j, : n - shift]
            ax[:shift] += a_stencils[j, n - shift :]
        return ax
