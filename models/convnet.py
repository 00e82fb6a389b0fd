"""A 2-D convolutional network on a periodic grid, with its TL and AD, and a surrogate model built on it.

Layer ``l`` (``l = 1 .. L``) maps ``c_{l-1}`` fields of ``ny x nx`` points to ``c_l``
fields by a periodic cross-correlation with a ``k x k`` kernel (``k`` odd, ``h = k // 2``)
and an activation ``f_l``::

    NL    a_0 = x / s
          z_l[o, i, j] = b_l[o] + sum_{c, a, b} W_l[o, c, a, b] a_{l-1}[c, (i+a-h) mod ny, (j+b-h) mod nx]
          a_l = f_l(z_l)
          y = g a_L                       (+ x with ``residual=True``)

with the fixed input scale ``s`` and output scale ``g`` (both 1 by default).  Written
with the patches ``P(a)``, the matrix of shape ``(c k^2, ny nx)`` whose column
``(i, j)`` holds the ``k x k`` neighbourhood of point ``(i, j)`` in every channel
(row ``(c, a, b)`` in C order, an im2col on the periodic grid), each layer is one
matrix product: ``z_l = W_l P(a_{l-1}) + b_l``, ``W_l`` reshaped to ``(c_l, c_{l-1} k^2)``.
Then::

    TL    da_0 = dx / s
          dz_l = W_l P(da_{l-1}) + dW_l P(a_{l-1}) + db_l
          da_l = f_l'(z_l) * dz_l
          dy = g da_L                     (+ dx)

    AD    aa_L = g ay
          az_l = f_l'(z_l) * aa_l                                  l = L .. 1
          ab_l = sum_{i, j} az_l
          aW_l = az_l P(a_{l-1})^T
          aa_{l-1} = P^T(W_l^T az_l) = W~_l P(az_l)
          ax = aa_0 / s                   (+ ay)

``P^T`` sums each patch back onto the points it came from; for a periodic
correlation that is the correlation with the flipped kernel,
``W~_l[c, o, a, b] = W_l[o, c, k-1-a, k-1-b]``, which is how the code forms it: the
input adjoint is the same correlation as the forward pass.  A correlation ``K P(a)``
of a kernel with fewer outputs than inputs is formed as the shifted sum
``S(K' a) = sum_{a, b} shift_{a, b}(K'_{ab} a)`` instead (the ``k^2`` per-offset products
of the fields, summed shifted), which keeps ``c_out k^2`` values per point instead of
``c_in k^2``.  The weight adjoint is one matrix product per layer, the correlation of
the layer's input with its output adjoint.  The linearisation keeps ``P(a_{l-1})`` and
``a_l`` (``f_l'`` is formed from ``a_l``, :mod:`models.activations`).

Blocked TL/AD: ``dx`` (or ``ay``) of shape ``(n, m)`` and ``dp`` ``(n_params, m)``
carry ``m`` directions, laid out ``(c, m, ny nx)`` inside: the weight terms
``dW_l P(a_{l-1})`` and ``az_l P(a_{l-1})^T`` are one matrix product per layer for all
directions (``c_l m`` rows against the kept patches), the propagated correlations one
product per chunk of directions.

Parameters: flat, layer by layer, each ``W_l`` ``(c_l, c_{l-1}, k, k)`` in C order
then ``b_l`` ``(c_l,)``.  A state or field vector is ``(c, ny, nx)`` flattened in C order.

:class:`ConvSurrogate` steps ``dx/dt = NN(x)`` with an explicit Runge-Kutta scheme
(:mod:`models.integrators`): with ``integrator="euler"`` it is ``x + dt NN(x)``, and as
the ``correction`` of :class:`models.hybrid.Hybrid` it adds ``dt NN(x_k)`` after the
physics step.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .activations import get_activation
from .integrators import IntegratedModel, RungeKutta


class PeriodicPatches:
    """The ``k x k`` neighbourhoods of every point of a periodic ``ny x nx`` grid (an im2col).

    ``columns(a)`` for ``a`` of shape ``(c, m, ny, nx)`` (``m`` directions) is ``P(a)`` of
    shape ``(c k^2, m ny nx)``: row ``(c, a, b)``, column ``(d, i, j)`` holds
    ``a[c, d, (i+a-h) mod ny, (j+b-h) mod nx]``.  The fields are wrapped into a padded
    array by slices, and the ``k^2`` shifted windows copied out in one call.

    ``shifted_sum(U)`` for ``U`` of shape ``(r k^2, m ny nx)`` (row ``(o, a, b)``) sums the same
    windows instead of stacking them: ``S(U)[o, (d, i, j)] = sum_{a, b} U[(o, a, b), (d, (i+a-h) mod ny, (j+b-h) mod nx)]``,
    so that ``W P(a) = S(W' a)`` with ``W'[(o, a, b), c] = W[o, c, a, b]``: the correlation with
    ``r k^2`` values per point kept instead of ``c k^2``.
    """

    def __init__(self, ny: int, nx: int, kernel: int):
        for name, value in (("ny", ny), ("nx", nx), ("kernel", kernel)):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if kernel % 2 == 0:
            raise ValueError(f"kernel must be odd (a centred k x k stencil), got {kernel}")
        if kernel > min(ny, nx):
            raise ValueError(f"kernel {kernel} is wider than the {ny} x {nx} grid: it must be at most {min(ny, nx)}")
        self.ny, self.nx, self.kernel = int(ny), int(nx), int(kernel)
        self.half = self.kernel // 2

    def columns(self, a: np.ndarray) -> np.ndarray:
        c, m = a.shape[:2]
        ny, nx, k = self.ny, self.nx, self.kernel
        patches = np.empty((c, k, k, m, ny, nx))
        patches[...] = sliding_window_view(self.padded(a), (ny, nx), axis=(2, 3)).transpose(0, 2, 3, 1, 4, 5)
        return patches.reshape(c * k * k, m * ny * nx)

    def shifted_sum(self, U: np.ndarray) -> np.ndarray:
        k, ny, nx = self.kernel, self.ny, self.nx
        r = U.shape[0] // (k * k)
        padded = self.padded(U.reshape(r * k * k, -1, ny * nx)).reshape(r, k, k, -1, ny + 2 * self.half, nx + 2 * self.half)
        total = padded[:, 0, 0, :, :ny, :nx].copy()
        for a, b in np.ndindex(k, k):
            if a or b:
                total += padded[:, a, b, :, a : a + ny, b : b + nx]
        return total.reshape(r, -1)

    def padded(self, a: np.ndarray) -> np.ndarray:
        """``a`` ``(c, m, ny nx)`` on the grid widened by ``h`` periodic points each side, ``(c, m, ny + 2h, nx + 2h)``."""
        c, m = a.shape[:2]
        ny, nx, h = self.ny, self.nx, self.half
        a = a.reshape(c, m, ny, nx)
        padded = np.empty((c, m, ny + 2 * h, nx + 2 * h))
        padded[:, :, h : h + ny, h : h + nx] = a
        padded[:, :, :h, h : h + nx] = a[:, :, ny - h :]
        padded[:, :, h + ny :, h : h + nx] = a[:, :, :h]
        padded[:, :, :, :h] = padded[:, :, :, nx : nx + h]
        padded[:, :, :, h + nx :] = padded[:, :, :, h : 2 * h]
        return padded


def _directions_inside(v: np.ndarray, channels: int, points: int, name: str) -> tuple[np.ndarray, bool]:
    """A field vector ``(channels points,)`` or block ``(channels points, m)`` as ``(channels, m, points)``,
    and whether it was one vector."""
    if v.shape[:1] != (channels * points,) or v.ndim > 2:
        raise ValueError(f"{name} must have shape ({channels * points},) or ({channels * points}, m), got {v.shape}")
    if v.ndim == 1:
        return v.reshape(channels, 1, points), True
    return v.reshape(channels, points, -1).transpose(0, 2, 1), False


def _directions_last(v: np.ndarray, single: bool) -> np.ndarray:
    """The inverse of :func:`_directions_inside`: ``(channels, m, points)`` as ``(channels points,)`` or ``(channels points, m)``."""
    if single:
        return v.reshape(-1)
    return np.ascontiguousarray(v.transpose(0, 2, 1)).reshape(-1, v.shape[1])


class ConvNet:
    """``ConvNet(channels=[2, 16, 16, 2], kernel=3, activations=["tanh", "tanh", "identity"], ny=64, nx=64)``.

    ``residual=True`` adds the input to the output (``channels[0] == channels[-1]``);
    ``input_scale`` ``s`` and ``output_scale`` ``g`` give ``y = g NN(x / s)``.
    ``apply`` (also ``evaluate``, so that the network is a tendency for
    :mod:`models.integrators`) and ``linearize`` follow the module docstring.
    """

    def __init__(
        self,
        channels: Sequence[int] = (2, 16, 16, 2),
        kernel: int = 3,
        activations: Sequence[str] = ("tanh", "tanh", "identity"),
        ny: int = 64,
        nx: int = 64,
        residual: bool = False,
        input_scale: float = 1.0,
        output_scale: float = 1.0,
    ):
        channels = list(channels)
        if len(channels) < 2 or any(int(c) != c or c < 1 for c in channels):
            raise ValueError(f"channels must list at least two positive integers, got {channels}")
        if isinstance(activations, str) or len(activations) != len(channels) - 1:
            raise ValueError(f"activations must list one name per layer ({len(channels) - 1} for channels {channels}), got {activations!r}")
        if residual and channels[0] != channels[-1]:
            raise ValueError(f"a residual ConvNet needs as many output channels as input channels, got channels {channels}")
        for name, value in (("input_scale", input_scale), ("output_scale", output_scale)):
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")
        self.patches = PeriodicPatches(ny, nx, kernel)
        self.channels = [int(c) for c in channels]
        self.kernel, self.ny, self.nx = int(kernel), int(ny), int(nx)
        self.activations = [get_activation(name) for name in activations]
        self.residual = bool(residual)
        self.input_scale, self.output_scale = float(input_scale), float(output_scale)
        k2 = self.kernel**2
        self.shapes = [(c_out, c_in * k2) for c_in, c_out in zip(self.channels[:-1], self.channels[1:])]
        sizes = [rows * cols + rows for rows, cols in self.shapes]  # W_l then b_l
        self.offsets = np.cumsum([0] + sizes)
        self.n_params = int(self.offsets[-1])
        self.n_points = self.ny * self.nx
        self.n_in, self.n_out = self.channels[0] * self.n_points, self.channels[-1] * self.n_points

    @property
    def n_layers(self) -> int:
        return len(self.shapes)

    def layers(self, p: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(W_l, b_l)`` of every layer as views of ``p``: ``W_l`` ``(c_l, c_{l-1} k^2)`` and ``b_l`` ``(c_l, 1)``.

        For a block ``p`` of shape ``(n_params, m)`` the views have a last axis of ``m``."""
        if p.shape[:1] != (self.n_params,) or p.ndim > 2:
            raise ValueError(f"ConvNet parameters must have shape ({self.n_params},) or ({self.n_params}, m), got {p.shape}")
        views = []
        for start, (rows, cols) in zip(self.offsets[:-1], self.shapes):
            middle = start + rows * cols
            views.append((p[start:middle].reshape((rows, cols) + p.shape[1:]), p[middle : middle + rows].reshape((rows, 1) + p.shape[1:])))
        return views

    def init_params(self, rng: np.random.Generator, output_scale: float = 1.0) -> np.ndarray:
        """Glorot-uniform kernels (fan-in ``c_{l-1} k^2``, fan-out ``c_l k^2``), zero biases; the last layer times ``output_scale``."""
        p = np.zeros(self.n_params)
        for l, (W, _) in enumerate(self.layers(p)):
            limit = np.sqrt(6.0 / (W.shape[1] + W.shape[0] * self.kernel**2))
            W[...] = rng.uniform(-limit, limit, size=W.shape) * (output_scale if l == self.n_layers - 1 else 1.0)
        return p

    def _check(self, x: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x, p = np.asarray(x, dtype=float), np.asarray(p, dtype=float)
        if x.shape != (self.n_in,):
            raise ValueError(f"ConvNet input must have shape ({self.n_in},) = channels[0] x ny x nx, got {x.shape}")
        if p.shape != (self.n_params,):
            raise ValueError(f"ConvNet parameters must have shape ({self.n_params},), got {p.shape}")
        return x, p

    def apply(self, x: np.ndarray, p: np.ndarray) -> np.ndarray:
        """``y = g NN(x / s)`` (``+ x`` when residual) for a flat ``(c_0, ny, nx)`` input; stores nothing."""
        x, p = self._check(x, p)
        a = x / self.input_scale
        for (W, b), f, c_in in zip(self.layers(p), self.activations, self.channels[:-1]):
            a = f.f(W @ self.patches.columns(a.reshape(c_in, 1, -1)) + b)
        y = self.output_scale * a.reshape(-1)
        return y + x if self.residual else y

    evaluate = apply

    def linearize(self, x: np.ndarray, p: np.ndarray) -> "ConvNetLinearization":
        return ConvNetLinearization(self, *self._check(x, p))

    def __repr__(self) -> str:
        options = "".join(f", {name}={getattr(self, name)}" for name, default in
                          (("residual", False), ("input_scale", 1.0), ("output_scale", 1.0)) if getattr(self, name) != default)
        return (f"ConvNet(channels={self.channels}, kernel={self.kernel}, activations={[f.name for f in self.activations]}, "
                f"ny={self.ny}, nx={self.nx}{options})")


class ConvNetLinearization:
    """The nonlinear pass with the patches ``P(a_{l-1})`` and the activations ``a_l`` kept; TL and AD of the module docstring.

    Inside, a block of ``m`` directions is laid out ``(c, m, ny nx)``.  The terms that do not
    depend on the propagated increment, ``dW_l P(a_{l-1})`` and ``aW_l = az_l P(a_{l-1})^T``,
    are one matrix product per layer for all directions, ``(c_l m, c_{l-1} k^2)`` against the
    kept patches.  The propagated terms ``W_l P(da_{l-1})`` and ``W~_l P(az_l)`` are correlations
    of every direction (:meth:`correlate`): each keeps ``min(c_{l-1}, c_l) k^2`` values per point
    and direction (the patches of the input, or the shifted sum when the kernel has fewer
    outputs than inputs), taken ``chunk`` directions at a time so that they stay within
    ``PATCH_BYTES`` (a cache's worth: once they spill to memory, one product of ``m`` directions
    is slower than ``m`` products of one).  ``f_l'(z_l)`` is formed from ``a_l`` on the first
    TL or AD and kept.
    """

    PATCH_BYTES = 4 << 20

    def __init__(self, net: ConvNet, x: np.ndarray, p: np.ndarray):
        self.net = net
        self.layers = net.layers(p)
        k = net.kernel
        self.kernels = [W.reshape(c_out, c_in, k, k) for (W, _), c_in, c_out in zip(self.layers, net.channels[:-1], net.channels[1:])]
        # W~_l[c, o, a, b] = W_l[o, c, k-1-a, k-1-b]: the kernel of the input adjoint
        self.flipped = [W[:, :, ::-1, ::-1].transpose(1, 0, 2, 3) for W in self.kernels]
        kept = max(min(c_in, c_out) for c_in, c_out in zip(net.channels[:-1], net.channels[1:])) * k * k
        self.chunk = max(1, self.PATCH_BYTES // (8 * net.n_points * kept))
        self.fprimes: list[np.ndarray | None] | None = None
        self.P = []  # P(a_{l-1}), (c_{l-1} k^2, ny nx)
        self.a = []  # a_l, (c_l, ny nx)
        a = x / net.input_scale
        for (W, b), f, c_in in zip(self.layers, net.activations, net.channels[:-1]):
            P = net.patches.columns(a.reshape(c_in, 1, -1))
            a = f.f(W @ P + b)
            self.P.append(P)
            self.a.append(a)
        y = net.output_scale * a.reshape(-1)
        self.output = y + x if net.residual else y

    def fprime(self, l: int) -> np.ndarray | None:
        """``f_l'(z_l)`` from ``a_l``, shape ``(c_l, 1, ny nx)`` (to meet ``(c_l, m, ny nx)``); ``None`` for the identity."""
        if self.fprimes is None:
            self.fprimes = [None if f.derivative is None else f.derivative(a)[:, None, :] for f, a in zip(self.net.activations, self.a)]
        return self.fprimes[l]

    def correlate(self, K: np.ndarray, a: np.ndarray) -> np.ndarray:
        """``K P(a)`` for a kernel ``K`` ``(r, c, k, k)`` and ``a`` ``(c, m, ny nx)``: shape ``(r, m, ny nx)``,
        ``chunk`` directions per product.  With fewer outputs than inputs (``r < c``) as the shifted sum
        ``S(K' a)``, ``K'[(o, a, b), c] = K[o, c, a, b]`` (:class:`PeriodicPatches`), else as ``K P(a)``."""
        r, c = K.shape[:2]
        patches = self.net.patches
        by_shifts = r < c
        K_matrix = K.transpose(0, 2, 3, 1).reshape(-1, c) if by_shifts else K.reshape(r, -1)
        out = np.empty((r,) + a.shape[1:])
        for d in range(0, a.shape[1], self.chunk):
            part, a_part = out[:, d : d + self.chunk].reshape(r, -1), a[:, d : d + self.chunk]
            if by_shifts:
                part[...] = patches.shifted_sum(K_matrix @ a_part.reshape(c, -1))
            else:
                np.matmul(K_matrix, patches.columns(a_part), out=part)
        return out

    def tl(self, dx: np.ndarray, dp: np.ndarray) -> np.ndarray:
        """``dy`` for ``dx`` ``(n_in,)`` and ``dp`` ``(n_params,)``, or blocks ``(n_in, m)``, ``(n_params, m)`` giving ``(n_out, m)``."""
        net = self.net
        da, single = _directions_inside(dx, net.channels[0], net.n_points, "dx")
        if dp.ndim != dx.ndim or dp.shape[1:] != dx.shape[1:]:
            raise ValueError(f"dx and dp must carry as many directions, got shapes {dx.shape} and {dp.shape}")
        m = da.shape[1]
        da = da / net.input_scale
        for l, ((W, _), (dW, db), P) in enumerate(zip(self.layers, net.layers(dp), self.P)):
            dz = self.correlate(self.kernels[l], da)                   # W_l P(da_{l-1})
            dz += (_directions_second(dW) @ P).reshape(dz.shape)         # + dW_l P(a_{l-1}), all directions in one product
            dz += db.reshape(W.shape[0], m, 1)                           # + db_l
            fprime = self.fprime(l)
            da = dz if fprime is None else np.multiply(fprime, dz, out=dz)
        dy = net.output_scale * _directions_last(da, single)
        if net.residual:
            dy += dx
        return dy

    def ad(self, ay: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(ax, ap)`` for ``ay`` ``(n_out,)``, or for a block ``(n_out, m)`` giving ``(n_in, m)`` and ``(n_params, m)``."""
        net = self.net
        aa, single = _directions_inside(ay, net.channels[-1], net.n_points, "ay")
        m = aa.shape[1]
        ap = np.empty((net.n_params,) + ay.shape[1:])
        aa = net.output_scale * aa
        for l, (aW, ab) in reversed(list(enumerate(net.layers(ap)))):
            fprime = self.fprime(l)
            az = aa if fprime is None else fprime * aa
            ab[...] = az.sum(axis=2).reshape(ab.shape)                                                # ab_l = sum_ij az_l
            aW[...] = _directions_last_of_weights((az.reshape(-1, az.shape[2]) @ self.P[l].T).reshape(aW.shape[0], m, -1), single)  # aW_l = az_l P(a_{l-1})^T, all directions
            aa = self.correlate(self.flipped[l], az)                                                  # aa_{l-1} = W~_l P(az_l)
        ax = _directions_last(aa, single) / net.input_scale
        if net.residual:
            ax += ay
        return ax, ap


def _directions_second(dW: np.ndarray) -> np.ndarray:
    """A weight increment ``(c_l, Q)`` or block ``(c_l, Q, m)`` as rows ``(c_l m, Q)``, direction-minor, to meet ``P``."""
    return dW if dW.ndim == 2 else dW.transpose(0, 2, 1).reshape(-1, dW.shape[1])


def _directions_last_of_weights(aW: np.ndarray, single: bool) -> np.ndarray:
    """The weight adjoint ``(c_l, m, Q)`` in the layout of ``p``: ``(c_l, Q)``, or ``(c_l, Q, m)`` for a block."""
    return aW[:, 0] if single else aW.transpose(0, 2, 1)


class ConvSurrogate(IntegratedModel):
    """``ConvSurrogate(dt=1.0, integrator="euler", init_output_scale=0.0, **network)``, ``network`` the
    arguments of :class:`ConvNet` (``channels``, ``kernel``, ``activations``, ``ny``, ``nx``,
    ``input_scale``, ``output_scale``).

    The model ``dx/dt = NN(x)`` on ``channels[0]`` fields, one explicit step of
    ``integrator`` per time step; ``init_output_scale`` (default 0: the step starts
    as the identity) scales the last layer of :meth:`init_params`.
    """

    blocked_linearization = True  # TL/AD take (n, m) blocks of directions

    def __init__(self, dt: float = 1.0, integrator: str = "euler", init_output_scale: float = 0.0, **network):
        self.network = ConvNet(**network)
        if self.network.channels[0] != self.network.channels[-1]:
            raise ValueError(f"a ConvSurrogate maps the state to its tendency: channels must start and end alike, got {self.network.channels}")
        self.tendency = self.network
        self.integrator = RungeKutta(integrator, dt)
        self.dt = self.integrator.dt
        self.init_output_scale = float(init_output_scale)
        self.n_state, self.n_params = self.network.n_in, self.network.n_params

    def init_params(self, rng: np.random.Generator) -> np.ndarray:
        return self.network.init_params(rng, output_scale=self.init_output_scale)

    def __repr__(self) -> str:
        return f"ConvSurrogate({self.network!r}, dt={self.dt}, integrator={self.integrator.scheme!r})"
