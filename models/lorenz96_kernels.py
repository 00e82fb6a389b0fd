"""Compiled Lorenz-96 kernels: the RK4 step, and a whole window's NL, TL and AD sweeps.

The numpy path of :mod:`models.lorenz96` (the tendency composed with
:mod:`models.integrators`) makes ~50 numpy calls per RK4 step; at ``n = 40``
their overhead, not the arithmetic, is the cost.  These kernels do the same
arithmetic in loops compiled by numba (the nonlinear step in the numpy path's
order of operations, so the trajectory is the same bit for bit) (``@njit(cache=True)``: compiled on the
first call, then loaded from ``__pycache__``), statement by statement as in
:mod:`models.lorenz96` and :mod:`models.integrators`, the TL beside the NL, the
AD in reverse order with the same names.  Tendency with ghost cells (a padded
buffer ``xp`` with ``xp[i + 2] = x_i``, its ghost cells written in place)::

    NL   f_i  = (x_{i+1} - x_{i-2}) x_{i-1} - x_i + F + A sin(w x_i)
    TL   df_i = (dx_{i+1} - dx_{i-2}) x_{i-1} + (x_{i+1} - x_{i-2}) dx_{i-1} - dx_i + A w cos(w x_i) dx_i + dF
    AD   ax_{i+1} += x_{i-1} af_i ;  ax_{i-2} -= x_{i-1} af_i ;  ax_{i-1} += (x_{i+1} - x_{i-2}) af_i
         ax_i -= af_i ;  ax_i += A w cos(w x_i) af_i ;  aF += af_i

RK4 (``X_s = x + dt c_s k_{s-1}`` with ``c = (0, 1/2, 1/2, 1)``, ``k_s = f(X_s)``,
``x_next = x + dt sum_s b_s k_s`` with ``b = (1/6, 1/3, 1/3, 1/6)``), its TL and AD as in
:mod:`models.integrators`.  The NL sweep keeps the stage states ``X_i`` of every
step; TL and AD recompute ``x_{i-1}`` and ``x_{i+1} - x_{i-2}`` from them.

Blocks of directions are rows: ``dx`` of shape ``(m, n)``, one direction per row.
This module needs numba; :mod:`models.lorenz96` imports it on first use only
(importing numba costs ~0.4 s), and not at all when numba is missing.
"""

from __future__ import annotations

import numpy as np
from .compiled import compiled


_compile = compiled


@_compile
def _pad(x, xp):
    """Ghost cells in place: ``xp = [x_{n-2}, x_{n-1}, x_0 .. x_{n-1}, x_0]``."""
    n = x.size
    for i in range(n):
        xp[i + 2] = x[i]
    xp[0] = x[n - 2]
    xp[1] = x[n - 1]
    xp[n + 2] = x[0]


@_compile
def _tendency(xp, F, amplitude, wavenumber, f):
    """``f_i = (x_{i+1} - x_{i-2}) x_{i-1} - x_i + F (+ A sin(w x_i))`` from the padded ``xp``."""
    n = f.size
    for i in range(n):
        f[i] = (xp[i + 3] - xp[i]) * xp[i + 1] - xp[i + 2] + F
    if amplitude != 0.0:
        for i in range(n):
            f[i] += amplitude * np.sin(wavenumber * xp[i + 2])


@_compile
def _tendency_tl(xp, dxp, dF, amplitude, wavenumber, df):
    """``df_i``, the TL of :func:`_tendency` at ``xp``, from the padded ``dxp``."""
    n = df.size
    for i in range(n):
        df[i] = (dxp[i + 3] - dxp[i]) * xp[i + 1] + (xp[i + 3] - xp[i]) * dxp[i + 1] - dxp[i + 2] + dF
    if amplitude != 0.0:
        for i in range(n):
            df[i] += amplitude * wavenumber * np.cos(wavenumber * xp[i + 2]) * dxp[i + 2]


@_compile
def _tendency_ad(xp, af, amplitude, wavenumber, axp):
    """Adjoint of :func:`_tendency_tl`: ``axp`` (padded, zeroed here) from ``af``; returns ``aF``."""
    n = af.size
    axp[:] = 0.0
    aF = 0.0
    if amplitude != 0.0:
        for i in range(n):
            axp[i + 2] += amplitude * wavenumber * np.cos(wavenumber * xp[i + 2]) * af[i]
    for i in range(n):
        g = xp[i + 1] * af[i]
        axp[i + 3] += g  # ax_{i+1}
        axp[i] -= g  # ax_{i-2}
        axp[i + 1] += (xp[i + 3] - xp[i]) * af[i]  # ax_{i-1}
        axp[i + 2] -= af[i]  # ax_i
        aF += af[i]
    return aF


@_compile
def _fold(axp, ax):
    """Adjoint of :func:`_pad`: ``ax += axp`` with the ghost cells added back to their sources."""
    n = ax.size
    for i in range(n):
        ax[i] += axp[i + 2]
    ax[n - 2] += axp[0]
    ax[n - 1] += axp[1]
    ax[0] += axp[n + 2]


@_compile
def _rk4_step(x, F, dt, amplitude, wavenumber, stages, x_next, xp, k):
    """One RK4 step: ``x_next``, and the stage states ``X_s`` in ``stages`` (4, n).

    ``xp`` (n + 3) and ``k`` (4, n) are work buffers."""
    n = x.size
    c = (0.0, 0.5, 0.5, 1.0)
    b = (1.0 / 6.0, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 6.0)
    for s in range(4):
        for i in range(n):
            stages[s, i] = x[i] if s == 0 else x[i] + (dt * c[s]) * k[s - 1, i]  # X_s
        _pad(stages[s], xp)
        _tendency(xp, F, amplitude, wavenumber, k[s])  # k_s = f(X_s)
    for i in range(n):  # summed in the numpy path's order: the same trajectory, bit for bit
        x_next[i] = x[i] + (dt * b[0]) * k[0, i]
        for s in range(1, 4):
            x_next[i] += (dt * b[s]) * k[s, i]


@_compile
def forecast_window(x0, F, dt, amplitude, wavenumber, forcing, states, stages):
    """The NL sweep: ``states`` (K + 1, n) with ``states[0] = x0``, ``stages`` (K, 4, n); ``forcing``
    (K, n) or (0, n) (none): ``e_k`` added after step ``k``."""
    n = x0.size
    xp = np.empty(n + 3)
    k = np.empty((4, n))
    states[0] = x0
    for step in range(stages.shape[0]):
        _rk4_step(states[step], F, dt, amplitude, wavenumber, stages[step], states[step + 1], xp, k)
        if forcing.shape[0]:
            for i in range(n):
                states[step + 1, i] += forcing[step, i]


@_compile
def step(x, F, dt, amplitude, wavenumber):
    """``x_next`` of one RK4 step."""
    n = x.size
    x_next = np.empty(n)
    _rk4_step(x, F, dt, amplitude, wavenumber, np.empty((4, n)), x_next, np.empty(n + 3), np.empty((4, n)))
    return x_next


@_compile
def tl_window(stages, dt, amplitude, wavenumber, dx0, dF, n_steps, de, dx):
    """The TL sweep for ``m`` directions: ``dx`` (n_steps + 1, m, n) from ``dx0`` (m, n), ``dF`` (m,) and
    the forcing's increments ``de`` (K, m, n) added after each step (or (0, m, n): none).

    Per step, per direction::

        dX_s = dx + dt c_s dk_{s-1}      dk_s = f'(X_s) (dX_s, dF)      dx_next = dx + dt sum_s b_s dk_s
    """
    n = dx0.shape[1]
    c = (0.0, 0.5, 0.5, 1.0)
    b = (1.0 / 6.0, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 6.0)
    xp = np.empty(n + 3)
    dX = np.empty(n)
    dxp = np.empty(n + 3)
    dk = np.empty((4, n))
    dx[0] = dx0
    for step in range(n_steps):
        for d in range(dx0.shape[0]):
            dx_prev = dx[step, d]
            for s in range(4):
                for i in range(n):
                    dX[i] = dx_prev[i] if s == 0 else dx_prev[i] + dt * c[s] * dk[s - 1, i]  # dX_s
                _pad(stages[step, s], xp)
                _pad(dX, dxp)
                _tendency_tl(xp, dxp, dF[d], amplitude, wavenumber, dk[s])  # dk_s
            for i in range(n):
                dx[step + 1, d, i] = dx_prev[i] + dt * (b[0] * dk[0, i] + b[1] * dk[1, i] + b[2] * dk[2, i] + b[3] * dk[3, i])
            if de.shape[0]:
                for i in range(n):
                    dx[step + 1, d, i] += de[step, d, i]


@_compile
def ad_window(stages, dt, amplitude, wavenumber, forcings, forced, ae, ax, aF):
    """The AD sweep for ``m`` directions, the TL's statements in reverse order.

    ``forcings`` (K + 1, m, n) holds ``f_k`` where ``forced[k]``; on return ``ax``
    (m, n) is ``ax_0``, ``aF`` (m,) the forcing adjoint summed over the steps and,
    unless ``ae`` is (0, m, n), ``ae[k - 1]`` the adjoint ``ae_k`` of ``x_k``.
    Per step, from ``ax = ax_next``::

        ak_s = dt b_s ax_next  (all s) ;  ax = ax_next
        for s = 4 .. 1:  (aX_s, aF_s) = f'(X_s)^T ak_s ;  ax += aX_s ;  aF += aF_s ;  ak_{s-1} += dt c_s aX_s
    """
    n = ax.shape[1]
    K = forcings.shape[0] - 1
    c = (0.0, 0.5, 0.5, 1.0)
    b = (1.0 / 6.0, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 6.0)
    xp = np.empty(n + 3)
    axp = np.empty(n + 3)
    aX = np.empty(n)
    ak = np.empty((4, n))
    for d in range(ax.shape[0]):
        a = ax[d]
        a[:] = 0.0
        aF[d] = 0.0
        for step in range(K, 0, -1):
            if forced[step]:
                for i in range(n):
                    a[i] += forcings[step, d, i]
            if ae.shape[0]:
                for i in range(n):
                    ae[step - 1, d, i] = a[i]  # ae_k
            for s in range(4):
                for i in range(n):
                    ak[s, i] = dt * b[s] * a[i]  # ak_s
            for s in range(3, -1, -1):
                _pad(stages[step - 1, s], xp)
                aF[d] += _tendency_ad(xp, ak[s], amplitude, wavenumber, axp)  # (aX_s, aF_s)
                aX[:] = 0.0
                _fold(axp, aX)
                for i in range(n):
                    a[i] += aX[i]  # ax += aX_s
                if s > 0:
                    for i in range(n):
                        ak[s - 1, i] += dt * c[s] * aX[i]  # ak_{s-1} += dt c_s aX_s
        if forced[0]:
            for i in range(n):
                a[i] += forcings[0, d, i]


# --- the two-scale system --------------------------------------------------------------------------
#
# State x = [X_0 .. X_{K-1}, Y_0 .. Y_{JK-1}]; slow ring padded Xp[k + 2] = X_k (ghost cells
# k-2, k-1 | k+1), fast ring padded Yp[j + 1] = Y_j (ghost cells j-1 | j+1, j+2); k(j) = j // J.
#
#   NL   fX_k = (X_{k+1} - X_{k-2}) X_{k-1} - X_k + F - s Ysum_k
#        fY_j = -c b Y_{j+1} (Y_{j+2} - Y_{j-1}) - c Y_j + s X_{k(j)}
#   TL   dfX_k = (dX_{k+1} - dX_{k-2}) X_{k-1} + (X_{k+1} - X_{k-2}) dX_{k-1} - dX_k + dF - s dYsum_k
#        dfY_j = -c b [dY_{j+1} (Y_{j+2} - Y_{j-1}) + Y_{j+1} (dY_{j+2} - dY_{j-1})] - c dY_j + s dX_{k(j)}
#   AD   the TL statements in reverse (fY first, then fX), as in models.lorenz96_two_scale.
#
# ``coefficients = (F, s, c, c b)``.


@_compile
def _pad_ring(v, vp, left, right):
    """Ghost cells in place: ``vp[left + i] = v_i``, ``left`` cells before and ``right`` after, periodic."""
    n = v.size
    for i in range(n):
        vp[left + i] = v[i]
    for i in range(left):
        vp[i] = v[n - left + i]
    for i in range(right):
        vp[left + n + i] = v[i]


@_compile
def _fold_ring(vp, av, left, right):
    """Adjoint of :func:`_pad_ring`: ``av += vp`` with the ghost cells added back to their sources."""
    n = av.size
    for i in range(n):
        av[i] += vp[left + i]
    for i in range(left):
        av[n - left + i] += vp[i]
    for i in range(right):
        av[i] += vp[left + n + i]


@_compile
def _pairwise_sum(a, start, n):
    """``sum(a[start:start + n])`` added in numpy's pairwise order, so block sums match numpy bit for bit."""
    if n < 8:
        total = 0.0
        for i in range(n):
            total += a[start + i]
        return total
    if n <= 128:
        r0, r1, r2, r3 = a[start], a[start + 1], a[start + 2], a[start + 3]
        r4, r5, r6, r7 = a[start + 4], a[start + 5], a[start + 6], a[start + 7]
        i = 8
        while i < n - n % 8:
            r0 += a[start + i]
            r1 += a[start + i + 1]
            r2 += a[start + i + 2]
            r3 += a[start + i + 3]
            r4 += a[start + i + 4]
            r5 += a[start + i + 5]
            r6 += a[start + i + 6]
            r7 += a[start + i + 7]
            i += 8
        total = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
        while i < n:
            total += a[start + i]
            i += 1
        return total
    half = n // 2
    half -= half % 8
    return _pairwise_sum(a, start, half) + _pairwise_sum(a, start + half, n - half)


@_compile
def _two_scale_tendency(x, K, J, coefficients, Xp, Yp, f):
    """``f = [fX; fY]`` at ``x``, in the numpy path's order of operations."""
    F, s, c, cb = coefficients[0], coefficients[1], coefficients[2], coefficients[3]
    _pad_ring(x[:K], Xp, 2, 1)
    _pad_ring(x[K:], Yp, 1, 2)
    for k in range(K):
        f[k] = (Xp[k + 3] - Xp[k]) * Xp[k + 1] - x[k] + F - s * _pairwise_sum(x, K + k * J, J)
    for j in range(J * K):
        f[K + j] = -cb * Yp[j + 2] * (Yp[j + 3] - Yp[j]) - c * x[K + j] + s * x[j // J]


@_compile
def _two_scale_tendency_tl(x, K, J, coefficients, Xp, Yp, dx, dF, dXp, dYp, df):
    """``df``, the TL of :func:`_two_scale_tendency` at ``x`` (``Xp``, ``Yp`` padded from it), from ``dx``."""
    s, c, cb = coefficients[1], coefficients[2], coefficients[3]
    _pad_ring(dx[:K], dXp, 2, 1)
    _pad_ring(dx[K:], dYp, 1, 2)
    for k in range(K):
        dYsum = 0.0
        for j in range(k * J, (k + 1) * J):
            dYsum += dx[K + j]
        df[k] = (dXp[k + 3] - dXp[k]) * Xp[k + 1] + (Xp[k + 3] - Xp[k]) * dXp[k + 1] - dx[k] - s * dYsum + dF
    for j in range(J * K):
        df[K + j] = (-cb * (dYp[j + 2] * (Yp[j + 3] - Yp[j]) + Yp[j + 2] * (dYp[j + 3] - dYp[j]))
                     - c * dx[K + j] + s * dx[j // J])


@_compile
def _two_scale_tendency_ad(x, K, J, coefficients, Xp, Yp, af, aXp, aYp, ax):
    """Adjoint of :func:`_two_scale_tendency_tl`: ``ax`` (overwritten) from ``af``; returns ``aF``."""
    s, c, cb = coefficients[1], coefficients[2], coefficients[3]
    ax[:] = 0.0
    aYp[:] = 0.0
    aXp[:] = 0.0
    # fY_j = -c b Y_{j+1} (Y_{j+2} - Y_{j-1}) - c Y_j + s X_{k(j)}
    for j in range(J * K):
        afY = af[K + j]
        ax[j // J] += s * afY  # aX_{k(j)}
        g = -cb * Yp[j + 2] * afY
        aYp[j + 3] += g  # aY_{j+2}
        aYp[j] -= g  # aY_{j-1}
        aYp[j + 2] -= cb * (Yp[j + 3] - Yp[j]) * afY  # aY_{j+1}
    _fold_ring(aYp, ax[K:], 1, 2)
    for j in range(J * K):
        ax[K + j] -= c * af[K + j]  # aY_j
    # fX_k = (X_{k+1} - X_{k-2}) X_{k-1} - X_k + F - s Ysum_k
    aF = 0.0
    for k in range(K):
        afX = af[k]
        for j in range(k * J, (k + 1) * J):
            ax[K + j] -= s * afX  # aY_{j,k} += aYsum_k = -s afX_k
        aF += afX
        aXp[k + 3] += Xp[k + 1] * afX  # aX_{k+1}
        aXp[k] -= Xp[k + 1] * afX  # aX_{k-2}
        aXp[k + 1] += (Xp[k + 3] - Xp[k]) * afX  # aX_{k-1}
        ax[k] -= afX  # aX_k
    _fold_ring(aXp, ax[:K], 2, 1)
    return aF


@_compile
def two_scale_forecast_window(x0, K, J, coefficients, dt, forcing, states, stages):
    """The NL sweep of RK4 (as :func:`forecast_window`): ``states`` (S + 1, n), stage states ``stages`` (S, 4, n),
    ``forcing`` (S, n) or (0, n) added after each step."""
    n = x0.size
    c = (0.0, 0.5, 0.5, 1.0)
    b = (1.0 / 6.0, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 6.0)
    Xp, Yp = np.empty(K + 3), np.empty(n - K + 3)
    k = np.empty((4, n))
    states[0] = x0
    for step in range(stages.shape[0]):
        x, X = states[step], stages[step]
        for s in range(4):
            for i in range(n):
                X[s, i] = x[i] if s == 0 else x[i] + (dt * c[s]) * k[s - 1, i]  # X_s
            _two_scale_tendency(X[s], K, J, coefficients, Xp, Yp, k[s])  # k_s = f(X_s)
        for i in range(n):  # in the numpy path's order
            states[step + 1, i] = x[i] + (dt * b[0]) * k[0, i]
            for s in range(1, 4):
                states[step + 1, i] += (dt * b[s]) * k[s, i]
        if forcing.shape[0]:
            for i in range(n):
                states[step + 1, i] += forcing[step, i]


@_compile
def two_scale_tl_window(stages, K, J, coefficients, dt, dx0, dF, n_steps, de, dx):
    """The TL sweep (as :func:`tl_window`): ``dx`` (n_steps + 1, m, n) from ``dx0`` (m, n), ``dF`` (m,), ``de`` (K or 0, m, n)."""
    n = dx0.shape[1]
    c = (0.0, 0.5, 0.5, 1.0)
    b = (1.0 / 6.0, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 6.0)
    Xp, Yp, dXp, dYp = np.empty(K + 3), np.empty(n - K + 3), np.empty(K + 3), np.empty(n - K + 3)
    dX = np.empty(n)
    dk = np.empty((4, n))
    dx[0] = dx0
    for step in range(n_steps):
        for d in range(dx0.shape[0]):
            dx_prev = dx[step, d]
            for s in range(4):
                for i in range(n):
                    dX[i] = dx_prev[i] if s == 0 else dx_prev[i] + dt * c[s] * dk[s - 1, i]  # dX_s
                X = stages[step, s]
                _pad_ring(X[:K], Xp, 2, 1)
                _pad_ring(X[K:], Yp, 1, 2)
                _two_scale_tendency_tl(X, K, J, coefficients, Xp, Yp, dX, dF[d], dXp, dYp, dk[s])  # dk_s
            for i in range(n):
                dx[step + 1, d, i] = dx_prev[i] + dt * (b[0] * dk[0, i] + b[1] * dk[1, i] + b[2] * dk[2, i] + b[3] * dk[3, i])
            if de.shape[0]:
                for i in range(n):
                    dx[step + 1, d, i] += de[step, d, i]


@_compile
def two_scale_ad_window(stages, K, J, coefficients, dt, forcings, forced, ae, ax, aF):
    """The AD sweep (as :func:`ad_window`, ``ae`` included), the TL's statements in reverse order."""
    n = ax.shape[1]
    S = forcings.shape[0] - 1
    c = (0.0, 0.5, 0.5, 1.0)
    b = (1.0 / 6.0, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 6.0)
    Xp, Yp, aXp, aYp = np.empty(K + 3), np.empty(n - K + 3), np.empty(K + 3), np.empty(n - K + 3)
    aX = np.empty(n)
    ak = np.empty((4, n))
    for d in range(ax.shape[0]):
        a = ax[d]
        a[:] = 0.0
        aF[d] = 0.0
        for step in range(S, 0, -1):
            if forced[step]:
                for i in range(n):
                    a[i] += forcings[step, d, i]
            if ae.shape[0]:
                for i in range(n):
                    ae[step - 1, d, i] = a[i]  # ae_k
            for s in range(4):
                for i in range(n):
                    ak[s, i] = dt * b[s] * a[i]  # ak_s
            for s in range(3, -1, -1):
                X = stages[step - 1, s]
                _pad_ring(X[:K], Xp, 2, 1)
                _pad_ring(X[K:], Yp, 1, 2)
                aF[d] += _two_scale_tendency_ad(X, K, J, coefficients, Xp, Yp, ak[s], aXp, aYp, aX)  # (aX_s, aF_s)
                for i in range(n):
                    a[i] += aX[i]  # ax += aX_s
                if s > 0:
                    for i in range(n):
                        ak[s - 1, i] += dt * c[s] * aX[i]  # ak_{s-1} += dt c_s aX_s
        if forced[0]:
            for i in range(n):
                a[i] += forcings[0, d, i]
