"""Compiled sweeps of a local network over a whole window: NL, TL and AD, one vector.

:class:`models.local_mlp.LocalMLPWindowLinearization` in loops compiled by numba
(``@njit(cache=True)``), for the calls on one vector: at ``n = 40`` the numpy
statements of a stage cost their call overhead, not their arithmetic.  The same
statements, point by point (``col`` the column of step ``k``, stage ``i``, point
``j``; ``s_j`` the stencil of ``j``; ``W_l`` the rows of layer ``l`` in ``p``, bias
last)::

    NL   X_i = x + sum_{j<i} (dt A_ij) k_j
         a_0 = (X_i[s_j] - m) / c ;  a_l = f_l(W_l [a_{l-1}; 1]) ;  k_i[j] = c a_L
         x_next = x + sum_i (dt b_i) k_i

    TL   da_0 = dX_i[s_j] / c ;  dz_l = W_l[:, :-1] da_{l-1} + dWA_l[col] ;  da_l = F_l[col] dz_l ;  dk_i[j] = c da_L

    AD   aa_L = c ak_i[j] ;  AZ_l[col] = F_l[col] aa_l ;  aa_{l-1} = W_l[:, :-1]^T AZ_l[col]
         aX_i[s_j] += aa_0 / c

with the Runge-Kutta statements of :mod:`models.integrators` around them, and the
forcing of weak constraint after each step (``e_k``, its TL ``de_k`` and AD ``ae_k``;
arrays of ``K`` rows, or of none when there is no forcing)::

    NL   x_{k+1} = x_k + sum_i (dt b_i) k_i + e_k        TL   dx_{k+1} = ... + de_k        AD   ae_k = ax_{k+1}

The
layer arrays are the window's, one column per tendency evaluation (``A_l``
``(n_{l-1} + 1, K s n)`` with its bias row, ``F_l`` and ``AZ_l`` ``(n_l, K s n)``), the
layers stacked in one array each; the loops over the ``n`` points of a stage are
innermost, over contiguous memory; ``layout`` gives each layer's unit count and where its
weights, inputs and units start.  The weight terms ``dWA_l`` and ``aW_l`` stay one
matrix product per layer, outside these loops.  Activation codes: :data:`CODES`.
"""

from __future__ import annotations

import numpy as np
from .compiled import compiled

#: activation name -> the code the kernels take
CODES = {"identity": 0, "tanh": 1, "relu": 2, "sigmoid": 3, "softplus": 4}


_compile = compiled


@_compile
def _activate(code, z, a, fprime):
    """``a = f(z)`` and ``fprime = f'(z)`` (from ``a``) along a row, as in :mod:`models.activations`;
    ``tanh z = 1 - 2 / (e^{2z} + 1)`` (cheaper than libm's ``tanh``, accurate to a few 1e-16 in absolute value)."""
    if code == 1:
        for j in range(z.size):
            a[j] = 1.0 - 2.0 / (np.exp(2.0 * z[j]) + 1.0)
            fprime[j] = 1.0 - a[j] * a[j]
    elif code == 2:
        for j in range(z.size):
            a[j] = max(z[j], 0.0)
            fprime[j] = 1.0 if a[j] > 0.0 else 0.0
    elif code == 3:
        for j in range(z.size):
            e = np.exp(-abs(z[j]))
            a[j] = 1.0 / (1.0 + e) if z[j] >= 0 else e / (1.0 + e)
            fprime[j] = a[j] * (1.0 - a[j])
    elif code == 4:
        for j in range(z.size):
            a[j] = max(z[j], 0.0) + np.log1p(np.exp(-abs(z[j])))
            fprime[j] = -np.expm1(-a[j])
    else:
        a[:] = z
        fprime[:] = 1.0


@_compile
def _combine(x, coefficients, k, X):
    """``X = x + sum_j c_j k_j`` over the nonzero ``c_j``, in :func:`models.integrators.RungeKutta._combine`'s order."""
    X[:] = x
    for j in range(coefficients.size):
        if coefficients[j] != 0.0:
            for m in range(x.size):
                X[m] += coefficients[j] * k[j, m]


@_compile
def forward(x0, p, layout, codes, indices, offset, scale, stage_coefficients, output_coefficients, forcing, states, A, F):
    """The NL sweep: ``states`` (K + 1, n) from ``x0``, every column's layer inputs into ``A`` and ``f_l'(z_l)`` into ``F``;
    ``forcing`` (K, n), or (0, n) for none, added after each step.

    ``layout[l] = (n_l, start of W_l in p, first row of A_{l-1} in A, first row of layer l in F/AZ)``."""
    n, width = x0.size, indices.shape[0]
    n_stages, n_layers = output_coefficients.size, layout.shape[0]
    k = np.empty((n_stages, n))
    X = np.empty(n)
    z, a_L = np.empty(n), np.empty(n)
    states[0] = x0
    for step in range(states.shape[0] - 1):
        for i in range(n_stages):
            _combine(states[step], stage_coefficients[i], k, X)
            c0 = (step * n_stages + i) * n
            a0 = layout[0, 2]
            for q in range(width):  # a_0 = (X[s_j] - m) / c ; its bias row
                a_q = A[a0 + q, c0 : c0 + n]
                for j in range(n):
                    a_q[j] = (X[indices[q, j]] - offset) / scale
            A[a0 + width, c0 : c0 + n] = 1.0
            n_in = width
            for l in range(n_layers):
                n_out, w0, a0 = layout[l, 0], layout[l, 1], layout[l, 2]
                for r in range(n_out):  # z_l = W_l [a_{l-1}; 1] ;  a_l = f_l(z_l)
                    row = w0 + r * (n_in + 1)
                    z[:] = p[row + n_in]
                    for q in range(n_in):
                        W_rq, a_q = p[row + q], A[a0 + q, c0 : c0 + n]
                        for j in range(n):
                            z[j] += W_rq * a_q[j]
                    fprime = F[layout[l, 3] + r, c0 : c0 + n]
                    if l + 1 < n_layers:
                        _activate(codes[l], z, A[layout[l + 1, 2] + r, c0 : c0 + n], fprime)
                    else:
                        _activate(codes[l], z, a_L, fprime)
                        for j in range(n):
                            k[i, j] = scale * a_L[j]  # k_i = c a_L (one output)
                if l + 1 < n_layers:
                    A[layout[l + 1, 2] + n_out, c0 : c0 + n] = 1.0
                n_in = n_out
        _combine(states[step], output_coefficients, k, states[step + 1])
        if forcing.shape[0]:
            for j in range(n):
                states[step + 1, j] += forcing[step, j]  # + e_k


@_compile
def tangent_linear(dx0, layout, p, F, has_F, dWA, indices, scale, stage_coefficients, output_coefficients, de, dx):
    """The TL sweep: ``dx`` (K + 1, n) from ``dx0``, ``dWA`` (sum n_l, K s n) the weight terms of every column,
    ``de`` (K, n), or (0, n) for none, added after each step."""
    n, width = dx0.size, indices.shape[0]
    n_stages, n_layers = output_coefficients.size, layout.shape[0]
    widest = max(layout[:, 0].max(), width)
    dk = np.empty((n_stages, n))
    dX = np.empty(n)
    da, dz = np.empty((widest, n)), np.empty((widest, n))
    dx[0] = dx0
    for step in range(dx.shape[0] - 1):
        for i in range(n_stages):
            _combine(dx[step], stage_coefficients[i], dk, dX)
            c0 = (step * n_stages + i) * n
            for q in range(width):  # da_0 = dX[s_j] / c
                for j in range(n):
                    da[q, j] = dX[indices[q, j]] / scale
            n_in = width
            for l in range(n_layers):
                n_out, w0, u0 = layout[l, 0], layout[l, 1], layout[l, 3]
                for r in range(n_out):  # dz_l = W_l[:, :-1] da_{l-1} + dWA_l ;  da_l = F_l dz_l
                    row, dz_r = w0 + r * (n_in + 1), dz[r]
                    dz_r[:] = 0.0
                    for q in range(n_in):
                        W_rq, da_q = p[row + q], da[q]
                        for j in range(n):
                            dz_r[j] += W_rq * da_q[j]
                    dWA_r = dWA[u0 + r, c0 : c0 + n]
                    for j in range(n):
                        dz_r[j] += dWA_r[j]
                    if has_F[l]:
                        F_r = F[u0 + r, c0 : c0 + n]
                        for j in range(n):
                            dz_r[j] *= F_r[j]
                da[:n_out] = dz[:n_out]
                n_in = n_out
            for j in range(n):
                dk[i, j] = scale * da[0, j]  # dk_i = c da_L
        _combine(dx[step], output_coefficients, dk, dx[step + 1])
        if de.shape[0]:
            for j in range(n):
                dx[step + 1, j] += de[step, j]  # + de_k


@_compile
def adjoint(forcings, has_forcing, layout, p, F, has_F, indices, scale, stage_coefficients, output_coefficients, ae, AZ):
    """The AD sweep: ``ax_0`` from the forcings (K + 1, n) (rows with ``has_forcing``), every column's ``az_l`` into ``AZ``;
    ``ae`` (K, n), unless (0, n), receives ``ae_k = ax_{k+1}`` in row ``k``."""
    n, width = forcings.shape[1], indices.shape[0]
    n_stages, n_layers = output_coefficients.size, layout.shape[0]
    widest = max(layout[:, 0].max(), width)
    ak = np.empty((n_stages, n))
    aX = np.empty(n)
    aa = np.empty((widest, n))
    ax = np.zeros(n)
    for step in range(forcings.shape[0] - 2, -1, -1):
        if has_forcing[step + 1]:
            ax += forcings[step + 1]
        if ae.shape[0]:
            ae[step] = ax  # ae_k
        for i in range(n_stages):
            ak[i] = output_coefficients[i] * ax  # ak_i = dt b_i ax_next
        for i in range(n_stages - 1, -1, -1):
            c0 = (step * n_stages + i) * n
            for j in range(n):
                aa[0, j] = scale * ak[i, j]  # aa_L = c ak_i (one output)
            for l in range(n_layers - 1, -1, -1):
                n_out, w0, u0 = layout[l, 0], layout[l, 1], layout[l, 3]
                n_in = layout[l - 1, 0] if l > 0 else width
                for r in range(n_out):  # az_l = F_l aa_l
                    az, aa_r = AZ[u0 + r, c0 : c0 + n], aa[r]
                    if has_F[l]:
                        F_r = F[u0 + r, c0 : c0 + n]
                        for j in range(n):
                            az[j] = F_r[j] * aa_r[j]
                    else:
                        az[:] = aa_r
                aa[:n_in] = 0.0
                for r in range(n_out):  # aa_{l-1} = W_l[:, :-1]^T az_l
                    row, az = w0 + r * (n_in + 1), AZ[u0 + r, c0 : c0 + n]
                    for q in range(n_in):
                        W_rq, aa_q = p[row + q], aa[q]
                        for j in range(n):
                            aa_q[j] += W_rq * az[j]
            aX[:] = 0.0
            for q in range(width):  # aX = scatter_add(aa_0) / c
                for j in range(n):
                    aX[indices[q, j]] += aa[q, j]
            for m in range(n):
                aX[m] /= scale
                ax[m] += aX[m]
            for j in range(i):
                if stage_coefficients[i, j] != 0.0:
                    for m in range(n):
                        ak[j, m] += stage_coefficients[i, j] * aX[m]
    if has_forcing[0]:
        ax += forcings[0]
    return ax
