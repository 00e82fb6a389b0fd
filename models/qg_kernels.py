"""Compiled pointwise pieces of the QG tendency, its TL and its AD (between the FFTs).

:mod:`models.qg` spends a tendency on four real FFTs and, between them, a dozen
pointwise numpy operations on small arrays whose call overhead is as large as
the transforms.  Each kernel here fuses one group of those operations into one
loop (``@njit(cache=True)``: compiled on the first call, then loaded from
``__pycache__``), with the statements of :class:`models.qg.SpectralOps`, the
numpy reference they are tested against.  Spectral arrays are ``(B, 2, ny, nk)``
(``B`` directions, layer, l, k), stacked pairs ``(2, B, 2, ny, nk)``; grid arrays
likewise with ``nx``; the linearisation point's fields (``q``, ``ubar``, ``v``) are one
``(2, ny, nx)`` for all directions.  ``k`` ``(nk,)`` and ``l`` ``(ny,)`` are the wavenumbers::

    invert_velocities   psi^ = A q^ ;  u^ = -i l psi^ ;  v^ = i k psi^
    fluxes              ubar = u + U ;  flux_u = ubar q ;  flux_v = v q
    divergence          dq^/dt = -(i k flux_u^ + i l flux_v^) - i k Qy psi^ (+ rek kappa^2 psi_2^ on layer 2)
    fluxes_tl           dflux_u = du q + ubar dq ;  dflux_v = dv q + v dq
    divergence_ad       apsi^ = i k Qy a^ (+ rek kappa^2 a_2^) ;  aflux_u^ = i k a^ ;  aflux_v^ = i l a^
    fluxes_ad           adu = q aflux_u ;  adv = q aflux_v ;  adq = ubar aflux_u + v aflux_v
    velocities_ad_invert_t   apsi^ += i l au^ - i k av^ ;  aq^ = A^T apsi^

This module needs numba; :mod:`models.qg` imports it on first use only.
"""

from __future__ import annotations

from numba import njit


def _compile(function):
    return njit(cache=True)(function)


@_compile
def invert_velocities(qh, A, k, l, ph, uvh):
    """``psi^ = A q^``, ``u^ = -i l psi^``, ``v^ = i k psi^`` into ``ph`` and ``uvh``."""
    B, _, ny, nk = qh.shape
    for b in range(B):
        for j in range(ny):
            for i in range(nk):
                q0, q1 = qh[b, 0, j, i], qh[b, 1, j, i]
                for n in range(2):
                    p = A[n, 0, j, i] * q0 + A[n, 1, j, i] * q1
                    ph[b, n, j, i] = p
                    uvh[0, b, n, j, i] = complex(l[j] * p.imag, -l[j] * p.real)
                    uvh[1, b, n, j, i] = complex(-k[i] * p.imag, k[i] * p.real)


@_compile
def fluxes(uv, q, U, flux, ubar):
    """``ubar = u + U_n``, ``flux_u = ubar q``, ``flux_v = v q``."""
    B, _, ny, nx = q.shape
    for b in range(B):
        for n in range(2):
            for j in range(ny):
                for i in range(nx):
                    qq = q[b, n, j, i]
                    ub = uv[0, b, n, j, i] + U[n]
                    ubar[b, n, j, i] = ub
                    flux[0, b, n, j, i] = ub * qq
                    flux[1, b, n, j, i] = uv[1, b, n, j, i] * qq


@_compile
def divergence(fluxh, ph, k, l, Qy, rek, kappa2, out):
    """``dq^/dt = -(i k flux_u^ + i l flux_v^) - i k Qy psi^``, plus ``rek kappa^2 psi_2^`` on layer 2."""
    B, _, ny, nk = ph.shape
    for b in range(B):
        for n in range(2):
            for j in range(ny):
                for i in range(nk):
                    p = ph[b, n, j, i]
                    s = k[i] * fluxh[0, b, n, j, i] + l[j] * fluxh[1, b, n, j, i] + k[i] * Qy[n] * p
                    value = complex(s.imag, -s.real)  # -i s
                    if n == 1:
                        value += rek * kappa2[j, i] * p
                    out[b, n, j, i] = value


@_compile
def fluxes_tl(duv, dq, q, ubar, v, dflux):
    """``dflux_u = du q + ubar dq``, ``dflux_v = dv q + v dq``; ``q, ubar, v`` ``(2, ny, nx)`` for every direction."""
    B, _, ny, nx = dq.shape
    for b in range(B):
        for n in range(2):
            for j in range(ny):
                for i in range(nx):
                    dqq = dq[b, n, j, i]
                    qq = q[n, j, i]
                    dflux[0, b, n, j, i] = duv[0, b, n, j, i] * qq + ubar[n, j, i] * dqq
                    dflux[1, b, n, j, i] = duv[1, b, n, j, i] * qq + v[n, j, i] * dqq


@_compile
def divergence_ad(adq, k, l, Qy, rek, kappa2, aph, afluxh):
    """``apsi^ = i k Qy a^`` (``+ rek kappa^2 a_2^``), ``aflux_u^ = i k a^``, ``aflux_v^ = i l a^``."""
    B, _, ny, nk = adq.shape
    for b in range(B):
        for n in range(2):
            for j in range(ny):
                for i in range(nk):
                    a = adq[b, n, j, i]
                    ia = complex(-a.imag, a.real)  # i a
                    value = k[i] * Qy[n] * ia
                    if n == 1:
                        value += rek * kappa2[j, i] * a
                    aph[b, n, j, i] = value
                    afluxh[0, b, n, j, i] = k[i] * ia
                    afluxh[1, b, n, j, i] = l[j] * ia


@_compile
def fluxes_ad(aflux, q, ubar, v, adq, auv):
    """``adu = q aflux_u``, ``adv = q aflux_v``, ``adq = ubar aflux_u + v aflux_v``; ``q, ubar, v`` ``(2, ny, nx)``."""
    B, _, ny, nx = adq.shape
    for b in range(B):
        for n in range(2):
            for j in range(ny):
                for i in range(nx):
                    au, av, qq = aflux[0, b, n, j, i], aflux[1, b, n, j, i], q[n, j, i]
                    auv[0, b, n, j, i] = qq * au
                    auv[1, b, n, j, i] = qq * av
                    adq[b, n, j, i] = ubar[n, j, i] * au + v[n, j, i] * av


@_compile
def velocities_ad_invert_t(auvh, aph, A, k, l, aqh):
    """``apsi^ += i l au^ - i k av^`` (in place), then ``aq^ = A^T apsi^``."""
    B, _, ny, nk = aph.shape
    for b in range(B):
        for j in range(ny):
            for i in range(nk):
                for n in range(2):
                    s = l[j] * auvh[0, b, n, j, i] - k[i] * auvh[1, b, n, j, i]
                    aph[b, n, j, i] += complex(-s.imag, s.real)  # i s
                a0, a1 = aph[b, 0, j, i], aph[b, 1, j, i]
                aqh[b, 0, j, i] = A[0, 0, j, i] * a0 + A[1, 0, j, i] * a1
                aqh[b, 1, j, i] = A[0, 1, j, i] * a0 + A[1, 1, j, i] * a1
