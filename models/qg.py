"""pyqg's two-layer quasi-geostrophic model, stepped by RK4, with exact TL and AD.

The equations and notation of ``pyqg.QGModel`` (``pyqg_jax.qg_model.QGModel``).
On a doubly periodic ``L x W`` domain, layers 1 (upper, thickness ``H1``) and 2
(``H2 = H1 / delta``), the potential vorticity anomalies and streamfunctions obey::

    q1 = lap psi1 + F1 (psi2 - psi1)          F1 = 1 / (rd^2 (1 + delta))
    q2 = lap psi2 + F2 (psi1 - psi2)          F2 = delta F1

    dq1/dt + J(psi1, q1) + U1 dq1/dx + Qy1 dpsi1/dx = 0              Qy1 = beta + F1 (U1 - U2)
    dq2/dt + J(psi2, q2) + U2 dq2/dx + Qy2 dpsi2/dx = -rek lap psi2  Qy2 = beta - F2 (U1 - U2)

with ``u = -dpsi/dy``, ``v = dpsi/dx`` and the advection in flux form,
``J(psi, q) + U dq/dx = d/dx((u + U) q) + d/dy(v q)``; the bottom drag ``rek``
acts on the lower layer only.  pyqg evaluates it pseudo-spectrally (``^`` is
``rfft2``, ``k, l`` the wavenumbers, ``kappa^2 = k^2 + l^2``)::

    inversion   [ -(kappa^2 + F1)   F1             ] [psi1^]   [q1^]
                [  F2              -(kappa^2 + F2) ] [psi2^] = [q2^]        psi^ = 0 at kappa = 0
    velocities  u_n = irfft2(-i l psi_n^)       v_n = irfft2(i k psi_n^)
    tendency    dq_n^/dt = -(i k ((u_n + U_n) q_n)^ + i l (v_n q_n)^) - i k Qy_n psi_n^
                dq_2^/dt += rek kappa^2 psi_2^

The 2x2 solve is written in closed form, ``A = M^-1`` per wavenumber::

    D = kappa^2 (kappa^2 + F1 + F2)
    A = -1/D [ kappa^2 + F2   F1 ; F2   kappa^2 + F1 ]       (A = 0 at kappa = 0)

The state is ``q`` in grid space, ``(2, ny, nx)`` (layer, y, x; upper layer first)
flattened in C order.  :meth:`QG.tendency` is ``irfft2(dq^/dt)``, a real field.
:meth:`QG.step` is one classical RK4 step of that grid-space tendency over
``dt`` (:mod:`models.integrators`), then pyqg's exponential spectral filter once::

    q_next = irfft2(filtr * rfft2(RK4(q)))
    filtr = exp(-filterfac (kh - 0.65 pi)^4) where kh = sqrt((k dx)^2 + (l dy)^2) > 0.65 pi, else 1

Adjoints of the real FFTs
-------------------------

With numpy's normalisation (``rfft2`` unscaled, ``irfft2`` scaled by ``1/N``,
``N = nx ny``) and the real inner product ``<X, Y> = Re sum conj(X) Y`` on the
half spectrum ``(ny, nx // 2 + 1)``: along x, ``irfft`` reads each interior
column ``m`` for itself and its conjugate mirror ``nx - m``, the columns ``0``
and ``nx / 2`` (``nx`` even) once, their imaginary parts dropped::

    x_j = 1/nx Re sum_m w_m Z_m e^{2 pi i m j / nx}      w_m = 1 (m = 0, nx/2),  2 otherwise

so ``<x, irfft(Z)> = <(w / nx) rfft(x), Z>``, and likewise ``rfft^T(Z) = nx irfft(Z / w)``.
The ``y`` transform is a full complex FFT whose adjoint is its scaled inverse.  Hence::

    irfft2^T(a) = (w / N) rfft2(a)          rfft2^T(A) = irfft2((N / w) A)

A map diagonal in wavenumber between the two, ``irfft2(c rfft2(x))``, therefore
has the adjoint ``irfft2(conj(c) rfft2(a))``: the weights cancel (the filter is
self-adjoint), but they stay in every parameter adjoint ``<d phi^ / d p, a^>``.

TL and AD
---------

At a stored ``(q, psi^, u + U, v)`` and with ``dF1 = -2 F1 / rd drd``::

    TL  dq^ = rfft2(dq)
        dpsi^ = A dq^ + (psi1^ - psi2^) A [1, -delta]^T dF1
        du, dv = irfft2(-i l dpsi^), irfft2(i k dpsi^)
        dflux_u = du q + (u + U) dq + dU q            dflux_v = dv q + v dq
        ddq^/dt = -(i k dflux_u^ + i l dflux_v^) - i k (Qy dpsi^ + dQy psi^)
        ddq_2^/dt += rek kappa^2 dpsi_2^ + drek kappa^2 psi_2^
        df = irfft2(ddq^/dt)

    AD  adq^/dt = irfft2^T(af)
        arek = <kappa^2 psi_2^, adq_2^/dt>        apsi_2^ = rek kappa^2 adq_2^/dt
        aQy_n = <-i k psi_n^, adq_n^/dt>          apsi^ += i k Qy adq^/dt
        aflux_u^, aflux_v^ = i k adq^/dt, i l adq^/dt
        aflux_u, aflux_v = rfft2^T(aflux_u^), rfft2^T(aflux_v^)
        adv = q aflux_v ;  adq = v aflux_v
        adu = q aflux_u ;  adq += (u + U) aflux_u ;  aU_n = sum q_n aflux_u,n
        apsi^ += i l irfft2^T(adu) - i k irfft2^T(adv)
        aF1 = <(psi1^ - psi2^) A [1, -delta]^T, apsi^>
        adq += rfft2^T(A^T apsi^)

and the constants' chain ``Qy1 = beta + F1 (U1 - U2)``, ``Qy2 = beta - delta F1 (U1 - U2)``,
``F1 = rd^-2 / (1 + delta)`` (:meth:`QGPhysics.increments` and its adjoint).

Parameters: ``estimate`` is any subset of ``rek, beta, U1, U2, rd``; ``p`` holds
them in the order of that list (``param_names``), the others are the constructor's values.  TL and AD are
blocked: ``dx`` ``(n_state, k)`` and ``dp`` ``(n_params, k)`` run as ``k`` fields at once.

The FFTs are scipy's real transforms on all layers (and directions) in one call;
the pointwise work between them (:class:`SpectralOps`, the terms linear in
``psi^`` gathered as ``C_n = -i k Qy_n + rek kappa^2 [n = 2]``) runs as compiled
loops (:mod:`models.qg_kernels`) when numba is installed.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from collections.abc import Sequence

import numpy as np
import scipy.fft

from fourdvar.model import ModelBase, as_vector

from .integrators import RungeKutta

#: the physical parameters that may be estimated, in the order of the full increment vectors
PARAMETERS = ("rek", "beta", "U1", "U2", "rd")

#: whether the compiled kernels can be used (numba installed); they are imported on first use
KERNELS_AVAILABLE = importlib.util.find_spec("numba") is not None


@functools.cache
def qg_kernels():
    """:mod:`models.qg_kernels` (imported, and numba with it, on the first call)."""
    return importlib.import_module(".qg_kernels", __package__)


class PeriodicSpectrum:
    """Real FFTs of fields ``(..., ny, nx)`` on the last two axes, and their adjoints.

    ``rfft2`` / ``irfft2`` are scipy's (one worker) with numpy's normalisation;
    ``rfft2_ad`` / ``irfft2_ad`` are their adjoints with the weights ``w`` of the
    half spectrum (module docstring).
    """

    def __init__(self, ny: int, nx: int):
        self.shape = (ny, nx)
        size = ny * nx
        w = np.full(nx // 2 + 1, 2.0)
        w[0] = 1.0
        if nx % 2 == 0:
            w[-1] = 1.0
        self.weights = w
        self.adjoint_weights = w / size  # irfft2^T(a) = (w / N) rfft2(a)
        self.inverse_weights = size / w  # rfft2^T(A) = irfft2((N / w) A)

    def rfft2(self, a: np.ndarray) -> np.ndarray:
        return scipy.fft.rfft2(a, workers=1)

    def irfft2(self, A: np.ndarray) -> np.ndarray:
        return scipy.fft.irfft2(A, s=self.shape, workers=1)

    def rfft2_ad(self, A: np.ndarray) -> np.ndarray:
        """``rfft2^T(A) = irfft2((N / w) A)``."""
        return self.irfft2(A * self.inverse_weights)

    def irfft2_ad(self, a: np.ndarray) -> np.ndarray:
        """``irfft2^T(a) = (w / N) rfft2(a)``."""
        A = self.rfft2(a)
        A *= self.adjoint_weights
        return A


def real_inner(X: np.ndarray, Y: np.ndarray, axes=(-2, -1)) -> np.ndarray:
    """``<X, Y> = Re sum conj(X) Y`` over ``axes`` (the inner product of C^m as R^2m)."""
    return np.sum(X.real * Y.real + X.imag * Y.imag, axis=axes)


def apply_layers(A: np.ndarray, X: np.ndarray) -> np.ndarray:
    """``Y_n = sum_m A[n, m] X_m`` per wavenumber: ``A`` ``(2, 2, ny, nk)``, ``X`` ``(..., 2, ny, nk)``."""
    return A[:, 0] * X[..., 0:1, :, :] + A[:, 1] * X[..., 1:2, :, :]


def apply_layers_t(A: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """``X_m = sum_n A[n, m] Y_n``, the transpose of :func:`apply_layers`."""
    return A[0] * Y[..., 0:1, :, :] + A[1] * Y[..., 1:2, :, :]


class QGPhysics:
    """The constants of the tendency at one parameter set: ``rek``, ``beta``, ``U = (U1, U2)``,
    ``rd``, ``F1``, ``F2``, ``Qy = (Qy1, Qy2)``, the inversion ``A`` ``(2, 2, ny, nk)`` and the
    terms linear in ``psi^``, ``C = -i k Qy`` (``+ rek kappa^2`` on layer 2), ``(2, ny, nk)``."""

    def __init__(self, values: dict[str, float], delta: float, k: np.ndarray, kappa2: np.ndarray):
        self.values = values
        self.rek, self.beta, self.rd = values["rek"], values["beta"], values["rd"]
        self.U = np.array([values["U1"], values["U2"]])
        self.delta = delta
        self.shear = values["U1"] - values["U2"]
        self.F1 = self.rd**-2 / (1.0 + delta)
        self.F2 = delta * self.F1
        self.Qy = np.array([self.beta + self.F1 * self.shear, self.beta - self.F2 * self.shear])
        self.inversion = inversion_matrix(kappa2, self.F1, self.F2)
        # the terms linear in psi^: C_n = -i k Qy_n, plus rek kappa^2 on layer 2
        self.linear = -1j * k * self.Qy[:, None, None] + np.stack([0 * kappa2, self.rek * kappa2])
        # dA/dF1 acting on psi: dpsi^ = (psi1^ - psi2^) A [1, -delta]^T dF1
        self.inversion_slope = self.inversion[:, 0] - delta * self.inversion[:, 1]

    def increments(self, d: dict[str, np.ndarray]):
        """``(dF1, dU, dQy)`` from the increments ``d`` of the five parameters (arrays of one shape ``s``):
        ``dF1`` ``s``, ``dU`` and ``dQy`` ``s + (2,)``."""
        dF1 = -2.0 * self.F1 / self.rd * d["rd"]
        dshear = d["U1"] - d["U2"]
        dQy1 = d["beta"] + self.shear * dF1 + self.F1 * dshear
        dQy2 = d["beta"] - self.delta * self.shear * dF1 - self.F2 * dshear
        return dF1, np.stack([d["U1"], d["U2"]], axis=-1), np.stack([dQy1, dQy2], axis=-1)

    def increments_ad(self, aF1: np.ndarray, aU: np.ndarray, aQy: np.ndarray, arek: np.ndarray) -> dict[str, np.ndarray]:
        """Adjoint of :meth:`increments` (plus ``drek``, which enters directly): the five parameter adjoints."""
        aQy1, aQy2 = aQy[..., 0], aQy[..., 1]
        ashear = self.F1 * aQy1 - self.F2 * aQy2
        aF1 = aF1 + self.shear * (aQy1 - self.delta * aQy2)
        return {"rek": arek, "beta": aQy1 + aQy2, "U1": aU[..., 0] + ashear, "U2": aU[..., 1] - ashear,
                "rd": -2.0 * self.F1 / self.rd * aF1}


def inversion_matrix(kappa2: np.ndarray, F1: float, F2: float) -> np.ndarray:
    """``A = M^-1`` per wavenumber, ``(2, 2, ny, nk)``, zero at ``kappa = 0`` (module docstring)."""
    D = kappa2 * (kappa2 + F1 + F2)
    minus_inverse_D = np.zeros_like(kappa2)
    np.divide(-1.0, D, out=minus_inverse_D, where=D != 0)
    A = np.empty((2, 2) + kappa2.shape)
    A[0, 0] = (kappa2 + F2) * minus_inverse_D
    A[0, 1] = F1 * minus_inverse_D
    A[1, 0] = F2 * minus_inverse_D
    A[1, 1] = (kappa2 + F1) * minus_inverse_D
    return A


def _expand(value: np.ndarray, trailing: int) -> np.ndarray:
    """``value`` (a scalar or one value per direction) with ``trailing`` axes appended for broadcasting."""
    return np.asarray(value)[(...,) + (None,) * trailing]


class SpectralOps:
    """The pointwise pieces of the tendency, its TL and its AD between the FFTs, in numpy.

    Spectral arrays are ``(..., 2, ny, nk)``, stacked pairs ``(2, ..., 2, ny, nk)``
    (``u`` then ``v``, or the two fluxes); grid arrays likewise.  ``C`` is
    :attr:`QGPhysics.linear`.  The reference for :class:`CompiledSpectralOps`,
    which fuses each method into one loop.
    """

    def __init__(self, model: "QG"):
        self.ik, self.il, self.kappa2 = model.ik, model.il, model.kappa2
        ones = np.ones_like(self.kappa2)
        self.velocity_factors = np.stack([-self.il * ones, self.ik * ones])[:, None]  # (2, 1, ny, nk)

    def velocities(self, ph: np.ndarray) -> np.ndarray:
        """``(u^, v^) = (-i l psi^, i k psi^)``."""
        return self.velocity_factors.reshape((2,) + (1,) * (ph.ndim - 2) + self.kappa2.shape) * ph

    def invert_velocities(self, A: np.ndarray, qh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``psi^ = A q^`` and its velocities."""
        ph = apply_layers(A, qh)
        return ph, self.velocities(ph)

    def fluxes(self, uv: np.ndarray, q: np.ndarray, U: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(flux, ubar)``: ``ubar = u + U``, ``flux = ((u + U) q, v q)``."""
        ubar = uv[0] + U[:, None, None]
        return np.stack([ubar * q, uv[1] * q]), ubar

    def divergence(self, fluxh: np.ndarray, ph: np.ndarray, C: np.ndarray) -> np.ndarray:
        """``dq^/dt = -(i k flux_u^ + i l flux_v^) + C psi^``."""
        return C * ph - (self.ik * fluxh[0] + self.il * fluxh[1])

    def fluxes_tl(self, duv: np.ndarray, dq: np.ndarray, q: np.ndarray, ubar: np.ndarray, v: np.ndarray) -> np.ndarray:
        """``(du q + ubar dq, dv q + v dq)``."""
        return np.stack([duv[0] * q + ubar * dq, duv[1] * q + v * dq])

    def divergence_ad(self, adq: np.ndarray, C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``apsi^ = conj(C) a^`` and ``(aflux_u^, aflux_v^) = (i k a^, i l a^)``."""
        return C.conj() * adq, np.stack([self.ik * adq, self.il * adq])

    def fluxes_ad(self, aflux: np.ndarray, q: np.ndarray, ubar: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``adq = ubar aflux_u + v aflux_v`` and ``(adu, adv) = (q aflux_u, q aflux_v)``."""
        return ubar * aflux[0] + v * aflux[1], aflux * q

    def velocities_ad_invert_t(self, auvh: np.ndarray, aph: np.ndarray, A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``apsi^ += i l au^ - i k av^`` (in place), then ``aq^ = A^T apsi^``."""
        aph += self.il * auvh[0] - self.ik * auvh[1]
        return aph, apply_layers_t(A, aph)


class CompiledSpectralOps(SpectralOps):
    """:class:`SpectralOps` with each method one compiled loop (:mod:`models.qg_kernels`).

    The kernels see flat arrays: ``(B, 2 ny nk)`` (or ``(B, 2, ny nk)`` where the
    layers mix), the wavenumbers broadcast to the same layout.
    """

    def __init__(self, model: "QG"):
        super().__init__(model)
        qg_kernels()  # import numba now, not in the first step
        ones = np.ones((2,) + self.kappa2.shape)
        self.k_flat, self.l_flat = (ones * model.k).reshape(-1), (ones * model.l).reshape(-1)  # 2 ny nk
        half = self.k_flat.size // 2
        self.k_layer, self.l_layer = self.k_flat[:half], self.l_flat[:half]  # ny nk

    @property
    def kernels(self):
        """:mod:`models.qg_kernels` (looked up, not kept, so that the model pickles for Dask workers)."""
        return qg_kernels()

    @staticmethod
    def _flat(a: np.ndarray, pair: bool = False, layers: bool = False) -> np.ndarray:
        """``a`` as ``(B, 2 n)`` or ``(B, 2, n)`` (with ``pair``, ``(2, B, ...)``), a view."""
        lead = (2, -1) if pair else (-1,)
        per_layer = a.shape[-2] * a.shape[-1]
        return a.reshape(lead + ((2, per_layer) if layers else (2 * per_layer,)))

    def invert_velocities(self, A, qh):
        ph, uvh = np.empty_like(qh), np.empty((2,) + qh.shape, dtype=complex)
        flat = self._flat
        self.kernels.invert_velocities(flat(qh, layers=True), flat(A, layers=True), self.k_layer, self.l_layer,
                                       flat(ph, layers=True), flat(uvh, True, layers=True))
        return ph, uvh

    def fluxes(self, uv, q, U):
        flux, ubar = np.empty_like(uv), np.empty_like(q)
        flat = self._flat
        self.kernels.fluxes(flat(uv, True, layers=True), flat(q, layers=True), U, flat(flux, True, layers=True), flat(ubar, layers=True))
        return flux, ubar

    def divergence(self, fluxh, ph, C):
        out = np.empty_like(ph)
        self.kernels.divergence(self._flat(fluxh, True), self._flat(ph), self.k_flat, self.l_flat, C.reshape(-1), self._flat(out))
        return out

    def fluxes_tl(self, duv, dq, q, ubar, v):
        dflux = np.empty_like(duv)
        self.kernels.fluxes_tl(self._flat(duv, True), self._flat(dq), q.reshape(-1), ubar.reshape(-1), v.reshape(-1), self._flat(dflux, True))
        return dflux

    def divergence_ad(self, adq, C):
        aph, afluxh = np.empty_like(adq), np.empty((2,) + adq.shape, dtype=complex)
        self.kernels.divergence_ad(self._flat(adq), self.k_flat, self.l_flat, C.reshape(-1), self._flat(aph), self._flat(afluxh, True))
        return aph, afluxh

    def fluxes_ad(self, aflux, q, ubar, v):
        adq, auv = np.empty(aflux.shape[1:]), np.empty_like(aflux)
        self.kernels.fluxes_ad(self._flat(aflux, True), q.reshape(-1), ubar.reshape(-1), v.reshape(-1), self._flat(adq), self._flat(auv, True))
        return adq, auv

    def velocities_ad_invert_t(self, auvh, aph, A):
        aqh = np.empty_like(aph)
        flat = self._flat
        self.kernels.velocities_ad_invert_t(flat(auvh, True, layers=True), flat(aph, layers=True), flat(A, layers=True),
                                            self.k_layer, self.l_layer, flat(aqh, layers=True))
        return aph, aqh


class QGTendency:
    """``f(q, p) = dq/dt`` in grid space and its linearisation (:mod:`models.integrators`' tendency contract).

    ``evaluate(x, p)`` and ``linearize(x, p)`` take the flat state; the linearisation's
    ``tl`` and ``ad`` take flat vectors or blocks ``(n_state, k)``.
    """

    def __init__(self, model: "QG"):
        self.model = model
        self.spectrum = model.spectrum

    def forward(self, q: np.ndarray, physics: QGPhysics):
        """``(dq/dt, psi^, u + U, v)`` for fields ``q`` ``(..., 2, ny, nx)``."""
        fft, ops = self.spectrum, self.model.ops
        ph, uvh = ops.invert_velocities(physics.inversion, fft.rfft2(q))
        uv = fft.irfft2(uvh)
        flux, ubar = ops.fluxes(uv, q, physics.U)
        dqhdt = ops.divergence(fft.rfft2(flux), ph, physics.linear)
        return fft.irfft2(dqhdt), ph, ubar, uv[1]

    def evaluate(self, x: np.ndarray, p: np.ndarray) -> np.ndarray:
        return self.forward(self.model.fields(x), self.model.physics(p))[0].reshape(-1)

    def linearize(self, x: np.ndarray, p: np.ndarray) -> "QGTendencyLinearization":
        return QGTendencyLinearization(self, x, p)


class QGTendencyLinearization:
    """The tendency at ``(q, p)`` with ``q``, ``psi^``, ``u + U`` and ``v`` kept for the TL and AD."""

    def __init__(self, tendency: QGTendency, x: np.ndarray, p: np.ndarray):
        self.model = model = tendency.model
        self.spectrum = tendency.spectrum
        self.physics = model.physics(p)
        self.q = model.fields(x)
        f, self.ph, self.ubar, self.v = tendency.forward(self.q, self.physics)
        self.output = f.reshape(-1)

    def tl(self, dx: np.ndarray, dp: np.ndarray) -> np.ndarray:
        model, fft, ops, phys = self.model, self.spectrum, self.model.ops, self.physics
        q, ph = self.q, self.ph
        dq = model.fields(dx)
        d = model.parameter_increments(dp)
        dF1, dU, dQy = phys.increments(d)
        dqh = fft.rfft2(dq)
        if model.estimated("rd"):
            dph = apply_layers(phys.inversion, dqh) + (ph[..., 0:1, :, :] - ph[..., 1:2, :, :]) * phys.inversion_slope * _expand(dF1, 3)
            duvh = ops.velocities(dph)
        else:
            dph, duvh = ops.invert_velocities(phys.inversion, dqh)
        dflux = ops.fluxes_tl(fft.irfft2(duvh), dq, q, self.ubar, self.v)
        if model.estimated("U1") or model.estimated("U2"):
            dflux[0] += _expand(dU, 2) * q
        ddqhdt = ops.divergence(fft.rfft2(dflux), dph, phys.linear)
        if model.n_params:
            ddqhdt -= model.ik * _expand(dQy, 2) * ph
            ddqhdt[..., 1, :, :] += _expand(d["rek"], 2) * model.kappa2 * ph[..., 1, :, :]
        return model.flat(fft.irfft2(ddqhdt), dx)

    def ad(self, af: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        model, fft, ops, phys = self.model, self.spectrum, self.model.ops, self.physics
        q, ph = self.q, self.ph
        adqhdt = fft.irfft2_ad(model.fields(af))
        if model.n_params:
            arek = real_inner(model.kappa2 * ph[..., 1, :, :], adqhdt[..., 1, :, :])
            aQy = real_inner(-model.ik * ph, adqhdt)
        aph, afluxh = ops.divergence_ad(adqhdt, phys.linear)
        aflux = fft.rfft2_ad(afluxh)
        adq, auv = ops.fluxes_ad(aflux, q, self.ubar, self.v)
        aph, aqh = ops.velocities_ad_invert_t(fft.irfft2_ad(auv), aph, phys.inversion)
        adq += fft.rfft2_ad(aqh)
        if not model.n_params:
            return model.flat(adq, af), np.zeros((0,) + af.shape[1:])
        aU = np.sum(q * aflux[0], axis=(-2, -1))
        aF1 = real_inner((ph[..., 0:1, :, :] - ph[..., 1:2, :, :]) * phys.inversion_slope, aph, axes=(-3, -2, -1))
        ap = model.parameter_adjoints(phys.increments_ad(aF1, aU, aQy, arek), af)
        return model.flat(adq, af), ap


class QGStepLinearization:
    """One step linearised: RK4 of the tendency (:class:`models.integrators.RungeKuttaLinearization`), then the filter."""

    def __init__(self, model: "QG", x: np.ndarray, p: np.ndarray):
        self.model = model
        self.rk = model.integrator.linearize(model.physics_tendency, x, p)
        self.output = model.spectral_filter(self.rk.output)

    def tl(self, dx: np.ndarray, dp: np.ndarray) -> np.ndarray:
        return self.model.spectral_filter(self.rk.tl(dx, dp))

    def ad(self, ax: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.rk.ad(self.model.spectral_filter_ad(ax))


def _number(name: str, value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"QG: {name} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not np.isfinite(number):
        raise ValueError(f"QG: {name} must be a finite number, got {value!r}")
    return number


def _positive(name: str, value) -> float:
    value = _number(name, value)
    if not value > 0:
        raise ValueError(f"QG: {name} must be positive, got {value}")
    return value


def _grid_size(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 4:
        raise ValueError(f"QG: {name} must be an integer >= 4, got {value!r}")
    return int(value)


def _estimate(estimate) -> tuple[str, ...]:
    if isinstance(estimate, str) or not isinstance(estimate, Sequence):
        raise ValueError(f"QG: estimate must be a list of parameter names (any of {', '.join(PARAMETERS)}), got {estimate!r}")
    for name in estimate:
        if name not in PARAMETERS:
            raise ValueError(f"QG: unknown parameter {name!r} in estimate; choose from {', '.join(PARAMETERS)}")
    if len(set(estimate)) != len(estimate):
        raise ValueError(f"QG: estimate names a parameter twice: {list(estimate)}")
    return tuple(estimate)


class QG(ModelBase):
    """``QG(nx=64, ny=None, L=1e6, W=None, rek=5.787e-7, filterfac=23.6, beta=1.5e-11, rd=15000.0,
    delta=0.25, H1=500, U1=0.025, U2=0.0, dt=7200.0, estimate=(), compiled=True)``: pyqg's two-layer model,
    one RK4 step of ``dt`` seconds then the spectral filter (module docstring).

    ``ny`` defaults to ``nx`` and ``W`` to ``L``; units are pyqg's (m, s).  The pointwise
    work between the FFTs runs in compiled loops (:mod:`models.qg_kernels`) when numba
    is installed; ``compiled=False`` keeps the numpy reference (:class:`SpectralOps`).  Grid-point
    coordinates ``x`` (``nx``) and ``y`` (``ny``) are pyqg's cell centres ``(i + 1/2) dx``.
    """

    blocked_linearization = True  # TL/AD take (n, k) blocks of directions

    def __init__(self, nx=64, ny=None, L=1e6, W=None, rek=5.787e-7, filterfac=23.6, beta=1.5e-11, rd=15000.0,
                 delta=0.25, H1=500, U1=0.025, U2=0.0, dt=7200.0, estimate=(), compiled=True):
        self.nx = _grid_size("nx", nx)
        self.ny = _grid_size("ny", nx if ny is None else ny)
        self.L = _positive("L", L)
        self.W = _positive("W", L if W is None else W)
        self.rd, self.delta, self.H1, self.dt = (_positive(n, v) for n, v in (("rd", rd), ("delta", delta), ("H1", H1), ("dt", dt)))
        self.filterfac = _number("filterfac", filterfac)
        if not self.filterfac >= 0:
            raise ValueError(f"QG: filterfac must be >= 0, got {filterfac}")
        self.rek, self.beta, self.U1, self.U2 = (_number(n, v) for n, v in (("rek", rek), ("beta", beta), ("U1", U1), ("U2", U2)))
        self.estimate = _estimate(estimate)
        self.param_names = list(self.estimate)
        self.n_params = len(self.estimate)
        self.n_state = 2 * self.ny * self.nx
        self._setup_grid()
        self.compiled = bool(compiled) and KERNELS_AVAILABLE
        self.ops = CompiledSpectralOps(self) if self.compiled else SpectralOps(self)
        self._physics_cache: tuple[tuple, QGPhysics] | None = None
        self.physics_tendency = QGTendency(self)
        self.integrator = RungeKutta("rk4", self.dt)

    def _setup_grid(self) -> None:
        nx, ny = self.nx, self.ny
        self.dx, self.dy = self.L / nx, self.W / ny
        self.x = (np.arange(0.5, nx, 1.0) / nx) * self.L
        self.y = (np.arange(0.5, ny, 1.0) / ny) * self.W
        self.k = np.fft.rfftfreq(nx, d=self.L / (2 * np.pi * nx))[None, :]
        self.l = np.fft.fftfreq(ny, d=self.W / (2 * np.pi * ny))[:, None]
        self.ik, self.il = 1j * self.k, 1j * self.l
        self.kappa2 = self.k**2 + self.l**2
        self.spectrum = PeriodicSpectrum(ny, nx)
        cphi = 0.65 * np.pi
        kh = np.sqrt((self.k * self.dx) ** 2 + (self.l * self.dy) ** 2)
        self.filtr = np.where(kh <= cphi, 1.0, np.exp(-self.filterfac * (kh - cphi) ** 4))

    # --- parameters ---------------------------------------------------------------------------

    def constructor_values(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in PARAMETERS}

    def estimated(self, name: str) -> bool:
        return name in self.estimate

    def physics(self, p: np.ndarray | None) -> QGPhysics:
        """The tendency's constants with the estimated parameters read from ``p`` (the constructor's without ``p``)."""
        values = self.constructor_values()
        if p is not None:
            values.update(zip(self.estimate, (float(v) for v in np.asarray(p).reshape(-1))))
        key = tuple(values.values())
        if self._physics_cache is None or self._physics_cache[0] != key:
            self._physics_cache = (key, QGPhysics(values, self.delta, self.k, self.kappa2))
        return self._physics_cache[1]

    def parameter_increments(self, dp: np.ndarray) -> dict[str, np.ndarray]:
        """The five parameter increments from ``dp`` ``(n_params,)`` or ``(n_params, k)``, zero where not estimated."""
        dp = np.asarray(dp, dtype=float)
        zero = np.zeros(dp.shape[1:])
        d = {name: zero for name in PARAMETERS}
        d.update(zip(self.estimate, dp))
        return d

    def parameter_adjoints(self, a: dict[str, np.ndarray], like: np.ndarray) -> np.ndarray:
        """``ap`` in the order of ``estimate``: ``(n_params,)``, or ``(n_params, k)`` for a block ``like``."""
        return np.array([a[name] for name in self.estimate]).reshape((self.n_params,) + like.shape[1:])

    def init_params(self, rng: np.random.Generator | None = None) -> np.ndarray:
        """The constructor's values of the estimated parameters, in the order of ``estimate``."""
        values = self.constructor_values()
        return np.array([values[name] for name in self.estimate], dtype=float)

    # --- fields and spectral pieces -----------------------------------------------------------

    def fields(self, x: np.ndarray) -> np.ndarray:
        """A flat state ``(n_state,)`` as ``(2, ny, nx)``, a block ``(n_state, k)`` as ``(k, 2, ny, nx)``."""
        if x.ndim == 1:
            return x.reshape(2, self.ny, self.nx)
        return x.T.reshape(-1, 2, self.ny, self.nx)

    def flat(self, f: np.ndarray, like: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`fields`: ``(n_state,)`` or ``(n_state, k)`` as ``like`` is."""
        if like.ndim == 1:
            return f.reshape(-1)
        return f.reshape(-1, self.n_state).T

    # --- the model ----------------------------------------------------------------------------

    def tendency(self, x: np.ndarray, p: np.ndarray) -> np.ndarray:
        """``dq/dt`` in grid space, flat: ``irfft2`` of pyqg's ``get_updates(state).qh``."""
        x, p = self._inputs(x, p)
        return self.physics_tendency.evaluate(x, p)

    def spectral_filter(self, x: np.ndarray) -> np.ndarray:
        """``irfft2(filtr * rfft2(q))`` of a flat state or a block ``(n_state, k)``."""
        fft = self.spectrum
        return self.flat(fft.irfft2(self.filtr * fft.rfft2(self.fields(x))), x)

    def spectral_filter_ad(self, ax: np.ndarray) -> np.ndarray:
        """``rfft2^T(filtr * irfft2^T(a))`` (equal to the filter itself: the weights cancel)."""
        fft = self.spectrum
        return self.flat(fft.rfft2_ad(self.filtr * fft.irfft2_ad(self.fields(ax))), ax)

    def step(self, x: np.ndarray, p: np.ndarray) -> np.ndarray:
        x, p = self._inputs(x, p)
        return self.spectral_filter(self.integrator.step(self.physics_tendency, x, p))

    def linearize(self, x: np.ndarray, p: np.ndarray) -> QGStepLinearization:
        return QGStepLinearization(self, *self._inputs(x, p))

    # --- streamfunction -----------------------------------------------------------------------

    def streamfunction(self, x: np.ndarray, p: np.ndarray | None = None) -> np.ndarray:
        """``psi = irfft2(A rfft2(q))``, ``(2, ny, nx)``; with ``p``, at its estimated ``rd``."""
        fft = self.spectrum
        q = self._state_fields(x, "state x")
        return fft.irfft2(apply_layers(self.physics(p).inversion, fft.rfft2(q)))

    def streamfunction_ad(self, apsi: np.ndarray) -> np.ndarray:
        """``aq = rfft2^T(A^T irfft2^T(apsi))`` at the constructor's parameters, flat ``(n_state,)``."""
        fft = self.spectrum
        a = self._state_fields(apsi, "streamfunction adjoint apsi")
        return fft.rfft2_ad(apply_layers_t(self.physics(None).inversion, fft.irfft2_ad(a))).reshape(-1)

    def _state_fields(self, x, name: str) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        if x.shape == (2, self.ny, self.nx):
            return x
        return as_vector(x, self.n_state, name).reshape(2, self.ny, self.nx)

    def __repr__(self) -> str:
        return (f"QG(nx={self.nx}, ny={self.ny}, L={self.L}, W={self.W}, rek={self.rek}, filterfac={self.filterfac}, "
                f"beta={self.beta}, rd={self.rd}, delta={self.delta}, H1={self.H1}, U1={self.U1}, U2={self.U2}, "
                f"dt={self.dt}, estimate={list(self.estimate)}, compiled={self.compiled})")
