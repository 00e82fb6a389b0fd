"""The layered network of the ECMWF derivation, with its TL and AD, on a batch of columns.

For layer sizes ``n_0, n_1, ..., n_L`` and activations ``f_1 .. f_L``::

    NL    a_0 = [x; 1]
          z_i = W_i a_{i-1}                       i = 1 .. L
          a_i = [f_i(z_i); 1]   (the 1 only for i < L)
          output a_L

    TL    da_0 = [dx; 0]
          dz_i = W_i da_{i-1} + dW_i a_{i-1}
          da_i = f_i'(z_i) * dz_i
          output da_L

    AD    aa_L = (input adjoint)
          az_i  = f_i'(z_i) * aa_i                i = L .. 1
          aW_i  = az_i a_{i-1}^T
          aa_{i-1} = W_i^T az_i
          ax = aa_0  (the bias row of a_0 is a constant and gets no adjoint)

Each ``W_i`` has shape ``(n_i, n_{i-1} + 1)``, its last column the bias ``b_i``.
The parameter vector ``p`` holds ``W_1, W_2, ..., W_L`` one after the other, each
flattened row-major; :meth:`Network.weights` returns views into ``p``, no copies.

``x`` is a matrix of shape ``(n_0, m)``: ``m`` columns (samples, grid points or
a single state) go through every layer as one matrix product, and the weight
adjoint ``aW_i = az_i a_{i-1}^T`` sums over the columns in the same product.
This is backpropagation: ``aW_i`` is the gradient of ``<aa_L, a_L>`` w.r.t. ``W_i``.

Blocked TL and AD: ``k`` directions at once.  ``dp`` of shape ``(n_params, k)`` is
``k`` weight increments, ``dW_i`` then ``(n_i, n_{i-1} + 1, k)``, and ``dx`` (or
``aa_L``) carries the directions as a last axis, ``(n_0, m, k)``.  The statements
are those above, for every direction::

    TL    dz_i[:, :, d] = W_i da_{i-1}[:, :, d] + dW_i[:, :, d] a_{i-1}
    AD    aW_i[:, :, d] = az_i[:, :, d] a_{i-1}^T

with ``W_i`` applied to all ``m k`` columns as one matrix product.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.linalg import blas

from .activations import get_activation


def with_bias_row(a: np.ndarray) -> np.ndarray:
    """``[a; 1]``: ``a`` of shape ``(n, m)`` with a row of ones appended."""
    a_bias = np.empty((a.shape[0] + 1, a.shape[1]))
    a_bias[:-1] = a
    a_bias[-1] = 1.0
    return a_bias


def matmul(A: np.ndarray, B: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``A @ B`` for matrices, into ``out`` if given.

    When the inner dimension is 1 the product is an outer product (the weight
    adjoint ``az a^T`` of a single column, or ``W^T az`` of a one-unit layer).
    numpy's ``matmul`` does not call BLAS for it and is then 3-6x slower than
    BLAS ``dgemm`` (measured, 400 x 401 and 32 x 4000), so we call ``dgemm``.
    ``dgemm`` is column-major: it forms ``(A B)^T = B^T A^T``, which is ``A B``
    in row-major order.
    """
    if A.shape[1] != 1:
        return np.matmul(A, B, out=out)
    if out is None:
        return blas.dgemm(1.0, B.T, A.T).T
    if not (out.flags.c_contiguous and out.dtype == np.float64):
        raise ValueError("matmul writes an outer product into a C-contiguous float64 array only")
    return blas.dgemm(1.0, B.T, A.T, beta=0.0, c=out.T, overwrite_c=True).T


class Network:
    """Shapes, parameter layout and the nonlinear pass of an L-layer network.

    Parameters
    ----------
    layer_sizes : sequence of int
        ``n_0, n_1, ..., n_L``.
    activations : sequence of str
        ``f_1 .. f_L``, one per layer (:func:`models.activations.get_activation`).

    Examples
    --------
    >>> net = Network([2, 3, 1], ["relu", "identity"])
    >>> net.n_params                                  # 3 x (2 + 1) + 1 x (3 + 1)
    13
    >>> p = np.arange(13.0)
    >>> W1, W2 = net.weights(p)                       # views into p, bias last column
    >>> W1
    array([[0., 1., 2.],
           [3., 4., 5.],
           [6., 7., 8.]])
    >>> net.forward(np.array([[1.0], [1.0]]), p)      # W_2 [relu(W_1 [1; 1; 1]); 1] = W_2 [3; 12; 21; 1]
    array([[390.]])
    """

    def __init__(self, layer_sizes: Sequence[int], activations: Sequence[str]):
        sizes = [int(n) for n in layer_sizes]
        if len(sizes) < 2 or any(n < 1 for n in sizes):
            raise ValueError(f"layer_sizes must list at least two positive sizes, got {list(layer_sizes)}")
        if isinstance(activations, str) or len(activations) != len(sizes) - 1:
            raise ValueError(
                f"activations must list one name per layer ({len(sizes) - 1} for layer_sizes "
                f"{sizes}), got {activations!r}"
            )
        self.layer_sizes = sizes
        self.activations = [get_activation(name) for name in activations]
        self.shapes = [(n_out, n_in + 1) for n_in, n_out in zip(sizes[:-1], sizes[1:])]
        self.offsets = np.cumsum([0] + [rows * cols for rows, cols in self.shapes])
        self.n_params = int(self.offsets[-1])

    @property
    def n_layers(self) -> int:
        return len(self.shapes)

    def weights(self, p: np.ndarray) -> list[np.ndarray]:
        """Views ``W_1 .. W_L`` of the flat parameter vector ``p`` (row-major, bias last column).

        For a block ``p`` of shape ``(n_params, k)`` the views have a last axis of ``k``."""
        if p.shape[:1] != (self.n_params,) or p.ndim > 2:
            raise ValueError(f"network parameters must have shape ({self.n_params},), got {p.shape}")
        return [p[start:stop].reshape(shape + p.shape[1:]) for start, stop, shape in zip(self.offsets[:-1], self.offsets[1:], self.shapes)]

    def init_params(self, rng: np.random.Generator, output_scale: float = 1.0) -> np.ndarray:
        """Glorot-uniform weights, zero biases; the last layer scaled by ``output_scale``.

        ``output_scale=0`` starts the network at zero output (useful for a
        correction term that should begin by changing nothing).
        """
        p = np.zeros(self.n_params)
        for i, W in enumerate(self.weights(p)):
            n_out, n_in = W.shape[0], W.shape[1] - 1
            limit = np.sqrt(6.0 / (n_in + n_out))
            W[:, :-1] = rng.uniform(-limit, limit, size=(n_out, n_in))
            if i == self.n_layers - 1:
                W *= output_scale
        return p

    def forward(self, x: np.ndarray, p: np.ndarray) -> np.ndarray:
        """``a_L`` for a batch ``x`` of shape ``(n_0, m)``; stores nothing."""
        a = x
        for W, f in zip(self.weights(p), self.activations):
            a = f.f(W @ with_bias_row(a))
        return a

    def linearize(self, x: np.ndarray, p: np.ndarray) -> "NetworkLinearization":
        return NetworkLinearization(self, x, p)


class NetworkLinearization:
    """The nonlinear pass with the layer inputs ``a_{i-1}`` (bias row included) kept for TL/AD.

    Nothing else is stored: ``f_i'(z_i)`` is formed from the activation ``a_i`` (the
    next layer's input, or the output) when the TL or AD needs it
    (:mod:`models.activations`), so the linearisation costs the forward pass and
    holds the activations, no more.
    """

    def __init__(self, network: Network, x: np.ndarray, p: np.ndarray):
        self.network = network
        self.W = network.weights(p)
        self.a_prev = []  # a_{i-1} = [a; 1], shape (n_{i-1} + 1, m)
        a = x
        for W, f in zip(self.W, network.activations):
            a_bias = with_bias_row(a)
            a = f.f(W @ a_bias)
            self.a_prev.append(a_bias)
        self.output = a

    def fprime(self, i: int) -> np.ndarray | None:
        """``f_i'(z_i)`` (layer ``i`` counted from 0), from its activation; ``None`` for the identity."""
        f = self.network.activations[i]
        if f.derivative is None:
            return None
        a = self.a_prev[i + 1][:-1] if i + 1 < self.network.n_layers else self.output
        return f.derivative(a)

    def tl(self, dx: np.ndarray, dp: np.ndarray) -> np.ndarray:
        """``da_L`` from ``dx`` (shape ``(n_0, m)``) and the weight increment ``dp``.

        Blocked: ``dx`` of shape ``(n_0, m, k)`` and ``dp`` ``(n_params, k)`` give ``(n_L, m, k)``."""
        if dp.ndim == 2:
            return self._tl_block(dx, dp)
        dW = self.network.weights(dp)
        da = dx
        for i, (W, dW_i, a_prev) in enumerate(zip(self.W, dW, self.a_prev)):
            dz = W[:, :-1] @ da
            dz += dW_i @ a_prev
            fprime = self.fprime(i)
            da = dz if fprime is None else np.multiply(fprime, dz, out=dz)
        return da

    def _tl_block(self, dx: np.ndarray, dp: np.ndarray) -> np.ndarray:
        m, k = dx.shape[1], dp.shape[1]
        dW = self.network.weights(dp)
        da = dx
        for i, (W, dW_i, a_prev) in enumerate(zip(self.W, dW, self.a_prev)):
            dz = (W[:, :-1] @ da.reshape(da.shape[0], m * k)).reshape(W.shape[0], m, k)
            dz += np.matmul(a_prev.T, dW_i)  # dW_i[r] a_{i-1} for each unit r: (m, c) @ (c, k)
            fprime = self.fprime(i)
            da = dz if fprime is None else np.multiply(fprime[:, :, None], dz, out=dz)
        return da

    def column_jacobians(self) -> tuple[np.ndarray, np.ndarray]:
        """``(Jx, Jp)`` of a one-output network: the derivatives of each column's output.

        ``Jx[:, j] = d a_L[0, j] / d x[:, j]`` (shape ``(n_0, m)``) and
        ``Jp[j] = d a_L[0, j] / d p`` (shape ``(m, n_params)``, layout of ``p``).  This
        is the AD above with the seed ``aa_L = 1`` and the weight adjoint kept per
        column instead of summed over the columns::

            u_L = f_L'(z_L)
            Jp[j] block i = u_i[:, j] a_{i-1}[:, j]^T      (row-major, as W_i)     i = L .. 1
            u_{i-1} = f_{i-1}'(z_{i-1}) * (W_i^T u_i)     (bias column dropped)
            Jx = W_1^T u_1

        so that ``tl(dx, dp)[0] = sum_rows(Jx * dx) + Jp dp`` and
        ``ad(aa) = (Jx * aa, Jp^T aa)``.  Worth storing when ``m * n_params`` is small.
        """
        if self.network.layer_sizes[-1] != 1:
            raise ValueError(f"column_jacobians needs a network with one output, got {self.network.layer_sizes[-1]}")
        m = self.output.shape[1]
        Jp = np.empty((m, self.network.n_params))
        offsets = self.network.offsets
        u = np.ones((1, m))
        for i in reversed(range(self.network.n_layers)):
            fprime = self.fprime(i)
            u = u if fprime is None else fprime * u
            Jp[:, offsets[i] : offsets[i + 1]] = np.einsum("rj,cj->jrc", u, self.a_prev[i]).reshape(m, -1)
            u = self.W[i][:, :-1].T @ u
        return u, Jp

    def ad(self, aa: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(aa_0, ap)`` from the output adjoint ``aa_L`` (shape ``(n_L, m)``).

        Blocked: ``aa_L`` of shape ``(n_L, m, k)`` gives ``aa_0`` ``(n_0, m, k)`` and ``ap`` ``(n_params, k)``."""
        if aa.ndim == 3:
            return self._ad_block(aa)
        ap = np.empty(self.network.n_params)
        aW = self.network.weights(ap)
        for i in reversed(range(self.network.n_layers)):
            fprime = self.fprime(i)
            az = aa if fprime is None else fprime * aa
            matmul(az, self.a_prev[i].T, out=aW[i])
            aa = matmul(self.W[i][:, :-1].T, az)
        return aa, ap

    def _ad_block(self, aa: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        m, k = aa.shape[1], aa.shape[2]
        ap = np.empty((self.network.n_params, k))
        aW = self.network.weights(ap)
        for i in reversed(range(self.network.n_layers)):
            W, fprime = self.W[i], self.fprime(i)
            az = aa if fprime is None else fprime[:, :, None] * aa
            np.matmul(self.a_prev[i], az, out=aW[i])  # aW_i[r] = a_{i-1} az_i[r]: (c, m) @ (m, k) per unit r
            aa = (W[:, :-1].T @ az.reshape(W.shape[0], m * k)).reshape(W.shape[1] - 1, m, k)
        return aa, ap
