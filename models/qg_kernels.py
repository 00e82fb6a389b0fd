"""Compiled pointwise pieces of the QG tendency, its TL and its AD (between the FFTs).

:mod:`models.qg` spends a tendency on four real FFTs and, between them, a dozen
pointwise numpy operations on small arrays whose call overhead is as large as
the transforms.  Each kernel here fuses one group of those operations into one
loop (``@njit(cache=True)``: compiled on the first call, then loaded from
``__pycache__``), with the statements of :class:`models.qg.SpectralOps`, the
numpy reference they are tested against.

Arrays come flattened over the grid: ``B`` directions by ``2 ny nk`` spectral
values (or ``2 ny nx`` grid values, layer first), stacked pairs ``(2, B, ...)``;
the inversion and velocities, which mix the two layers, see ``(B, 2, ny nk)``.
``k``, ``l`` are the wavenumbers and ``C = -i k Qy (+ rek kappa^2 on layer 2)``
the linear terms, broadcast to the flat spectral layout; the linearisation
point's fields (``q``, ``ubar``, ``v``) are one flat field for all directions::

    invert_velocities       psi^ = A q^ ;  u^ = -i l psi^ ;  v^ = i k psi^
    fluxes                  flux_u = ubar q ;  flux_v = v q                 (ubar = u + U)
    divergence              dq^/dt = -i (k flux_u^ + l flux_v^) + C psi^
    fluxes_tl               dflux_u = du q + ubar dq ;  dflux_v = dv q + v dq
    divergence_ad           apsi^ = conj(C) a^ ;  aflux_u^ = i k a^ ;  aflux_v^ = i l a^
    fluxes_ad               adu = q aflux_u ;  adv = q aflux_v ;  adq = ubar aflux_u + v aflux_v
    velocities_ad_invert_t  apsi^ += i (l au^ - k av^) ;  aq^ = A^T apsi^

This module needs numba; :mod:`models.qg` imports it on first use only.
"""

from __future__ import annotations

from .compiled import compiled


_compile = compiled


@_compile
def invert_velocities(qh, A, k, l, ph, uvh):
    """``psi^ = A q^``, ``u^ = -i l psi^``, ``v^ = i k psi^``; ``qh`` ``(B, 2, P)``, ``A`` ``(2, 2, P)``."""
    for b in range(qh.shape[0]):
        for m in range(qh.shape[2]):
            q0, q1 = qh[b, 0, m], qh[b, 1, m]
            for n in range(2):
                p = A[n, 0, m] * q0 + A[n, 1, m] * q1
                ph[b, n, m] = p
                uvh[0, b, n, m] = complex(l[m] * p.imag, -l[m] * p.real)
                uvh[1, b, n, m] = complex(-k[m] * p.imag, k[m] * p.real)


@_compile
def fluxes(uv, q, U, flux, ubar):
    """``ubar = u + U_n``, ``flux_u = ubar q``, ``flux_v = v q``; grid arrays ``(B, 2, G)``."""
    for b in range(q.shape[0]):
        for n in range(2):
            for m in range(q.shape[2]):
                ubar[b, n, m] = uv[0, b, n, m] + U[n]
                flux[0, b, n, m] = ubar[b, n, m] * q[b, n, m]
                flux[1, b, n, m] = uv[1, b, n, m] * q[b, n, m]


@_compile
def divergence(fluxh, ph, k, l, C, out):
    """``dq^/dt = -i (k flux_u^ + l flux_v^) + C psi^``."""
    for b in range(ph.shape[0]):
        for m in range(ph.shape[1]):
            s = k[m] * fluxh[0, b, m] + l[m] * fluxh[1, b, m]
            out[b, m] = complex(s.imag, -s.real) + C[m] * ph[b, m]


@_compile
def fluxes_tl(duv, dq, q, ubar, v, dflux):
    """``dflux_u = du q + ubar dq``, ``dflux_v = dv q + v dq``."""
    for b in range(dq.shape[0]):
        for m in range(dq.shape[1]):
            dflux[0, b, m] = duv[0, b, m] * q[m] + ubar[m] * dq[b, m]
            dflux[1, b, m] = duv[1, b, m] * q[m] + v[m] * dq[b, m]


@_compile
def divergence_ad(adq, k, l, C, aph, afluxh):
    """``apsi^ = conj(C) a^``, ``aflux_u^ = i k a^``, ``aflux_v^ = i l a^``."""
    for b in range(adq.shape[0]):
        for m in range(adq.shape[1]):
            a = adq[b, m]
            ia = complex(-a.imag, a.real)
            aph[b, m] = C[m].conjugate() * a
            afluxh[0, b, m] = k[m] * ia
            afluxh[1, b, m] = l[m] * ia


@_compile
def fluxes_ad(aflux, q, ubar, v, adq, auv):
    """``adu = q aflux_u``, ``adv = q aflux_v``, ``adq = ubar aflux_u + v aflux_v``."""
    for b in range(adq.shape[0]):
        for m in range(adq.shape[1]):
            auv[0, b, m] = q[m] * aflux[0, b, m]
            auv[1, b, m] = q[m] * aflux[1, b, m]
            adq[b, m] = ubar[m] * aflux[0, b, m] + v[m] * aflux[1, b, m]


@_compile
def velocities_ad_invert_t(auvh, aph, A, k, l, aqh):
    """``apsi^ += i (l au^ - k av^)`` (in place), then ``aq^ = A^T apsi^``; ``(B, 2, P)`` as in :func:`invert_velocities`."""
    for b in range(aph.shape[0]):
        for m in range(aph.shape[2]):
            for n in range(2):
                s = l[m] * auvh[0, b, n, m] - k[m] * auvh[1, b, n, m]
                aph[b, n, m] += complex(-s.imag, s.real)
            a0, a1 = aph[b, 0, m], aph[b, 1, m]
            aqh[b, 0, m] = A[0, 0, m] * a0 + A[1, 0, m] * a1
            aqh[b, 1, m] = A[0, 1, m] * a0 + A[1, 1, m] * a1
