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
need not gather all ``k^2`` offsets before the product: gathering only the first ``g``
kernel axes and summing the products of the others shifted,
``K P(a) = sum_{summed offsets} shift(K_g G_g(a))``, keeps ``c k^g + r k^(2-g)`` values per
point for a kernel of ``c`` inputs and ``r`` outputs; the code takes the split that keeps
fewest (the patches, ``g = 2``, when the kernel has few inputs; the shifted sum of the
per-offset products, ``g = 0``, when it has few outputs; the rows of the kernel, ``g = 1``,
in between).  With the bias in the product, ``[W_l b_l] [P(a_{l-1}); 1]``, the weight
adjoint ``[aW_l ab_l] = az_l [P(a_{l-1}); 1]^T`` is one matrix product per layer, the
correlation of the layer's input with its output adjoint.  The linearisation keeps
``[P(a_{l-1}); 1]`` and ``a_l`` (``f_l'`` is formed from ``a_l``, :mod:`models.activations`).

Blocked TL/AD: ``dx`` (or ``ay``) of shape ``(n, m)`` and ``dp`` ``(n_params, m)``
carry ``m`` directions, laid out ``(c, m, ...)`` inside on periodically padded grids
(:class:`PeriodicPatches`): the weight terms ``dW_l P(a_{l-1}) + db_l`` and
``az_l [P(a_{l-1}); 1]^T`` are one matrix product per layer for all directions (``c_l m``
rows against the kept patches), the propagated correlations one product per chunk of
directions.  A layer with few inputs, whose correlation gathers the increment's patches
whole, takes both in one product per direction instead:
``dz_l = [W_l dW_l db_l] [P(da_{l-1}); P(a_{l-1}); 1]``.

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
from numpy.lib.stride_tricks import as_strided

from .activations import get_activation
from .integrators import IntegratedModel, RungeKutta


class PeriodicPatches:
    """The ``k x k`` neighbourhoods of every point of a periodic ``ny x nx`` grid (an im2col), read from padded buffers.

    A block of ``c`` fields in ``m`` directions is kept in a *padded buffer* ``(c, m, size)``: each
    field on the grid widened by ``h`` periodic points on every side, ``(ny + 2h) x w`` with
    ``w = nx + 2h``, flattened in C order, then ``2h`` spare zeros.  Point ``(i, j)`` sits at
    ``start + i w + j`` (``start = h w + h``) and its neighbour ``(i + a - h, j + b - h)`` at
    ``i w + j + a w + b``: the window of offset ``(a, b)`` over all points is one contiguous run
    of ``ny w`` values from ``a w + b``.  That is the *wide* layout: ``ny`` rows of ``w``, of which
    the last ``2h`` are spare (not grid points).  A wide result written at ``start`` of a padded
    buffer puts every point in its place and every spare value on a ghost cell, which
    :meth:`wrap` then overwrites with the periodic copy.

    ``windows(buffer)`` is ``P`` as a view ``(c, k, k, m, ny w)`` (no copy):
    ``[c, a, b, d, i w + j] = a[c, d, (i+a-h) mod ny, (j+b-h) mod nx]``; ``windows(buffer, 1)``
    gathers the rows ``a`` alone, ``(c, k, m, ny w + 2h)``, for the offsets ``b`` to be
    summed after a product by :meth:`shifted_sum`, and ``windows(buffer, 0)`` is the buffer.
    ``columns(a)`` copies ``P`` out as the matrix ``(c k^2, m ny nx)`` on the grid points alone,
    ``augmented_columns`` as ``[P(a); 1]`` in the wide layout.
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
        self.half = h = self.kernel // 2
        self.width = self.nx + 2 * h
        self.start = h * self.width + h
        self.n_wide = self.ny * self.width
        self.size = (self.ny + 2 * h) * self.width + 2 * h
        steps = (self.width, 1)
        self._offsets = [[sum(i * step for i, step in zip(index, steps[g:])) for index in np.ndindex(*(self.kernel,) * (2 - g))] for g in range(3)]

    def buffer(self, c: int, m: int) -> np.ndarray:
        """An empty padded buffer ``(c, m, size)``, its spare tail zero."""
        buffer = np.empty((c, m, self.size))
        buffer[:, :, self.size - 2 * self.half :] = 0.0
        return buffer

    def pad(self, a: np.ndarray) -> np.ndarray:
        """The padded buffer of ``a`` ``(c, m, ny nx)`` (or ``(c, m, ny, nx)``), ghost cells wrapped."""
        c, m = a.shape[:2]
        buffer = self.buffer(c, m)
        self.interior(buffer)[...] = a.reshape(c, m, self.ny, self.nx)
        self.wrap(buffer)
        return buffer

    def grid(self, buffer: np.ndarray) -> np.ndarray:
        """The buffer as the widened grids ``(c, m, ny + 2h, w)`` (a view)."""
        h = self.half
        return buffer[:, :, : self.size - 2 * h].reshape(buffer.shape[:2] + (self.ny + 2 * h, self.width))

    def interior(self, buffer: np.ndarray) -> np.ndarray:
        """The grid points of a buffer, ``(c, m, ny, nx)`` (a view)."""
        h = self.half
        return self.grid(buffer)[:, :, h : h + self.ny, h : h + self.nx]

    def wide(self, buffer: np.ndarray) -> np.ndarray:
        """The wide layout inside a buffer, ``(c, m, ny w)`` from ``start`` (a view)."""
        return buffer[:, :, self.start : self.start + self.n_wide]

    def wide_rows(self, buffer: np.ndarray) -> np.ndarray:
        """:meth:`wide` as a matrix ``(c m, ny w)`` (a view, rows ``(c, d)``) for a product to write into."""
        return buffer.reshape(-1, self.size)[:, self.start : self.start + self.n_wide]

    def wrap(self, buffer: np.ndarray) -> None:
        """Fill the ghost cells with the periodic copies of the grid points, in place."""
        G, ny, nx, h = self.grid(buffer), self.ny, self.nx, self.half
        G[:, :, h : h + ny, :h] = G[:, :, h : h + ny, nx : nx + h]
        G[:, :, h : h + ny, h + nx :] = G[:, :, h : h + ny, h : 2 * h]
        G[:, :, :h] = G[:, :, ny : ny + h]
        G[:, :, h + ny :] = G[:, :, h : 2 * h]

    def windows(self, buffer: np.ndarray, gathered: int = 2) -> np.ndarray:
        """The windows of a buffer ``(c, m, size)`` over the first ``gathered`` kernel axes, a read-only view:
        ``P`` ``(c, k, k, m, ny w)`` (window ``(a, b)`` from ``a w + b``) for 2; ``(c, k, m, ny w + 2h)``
        (window ``a`` from ``a w``) for 1; the whole buffer ``(c, m, size)`` for 0."""
        (c, m, _), (sc, sm, s), k = buffer.shape, buffer.strides, self.kernel
        steps = (self.width * s, s)[:gathered]
        length = self.n_wide + max(self.offsets(gathered))
        return as_strided(buffer, shape=(c,) + (k,) * gathered + (m, length), strides=(sc,) + steps + (sm, s), writeable=False)

    def offsets(self, gathered: int) -> list[int]:
        """Where the windows of the kernel axes not gathered start: ``a w + b`` over ``(a, b)`` for 0, ``b`` for 1, ``[0]`` for 2."""
        return self._offsets[gathered]

    def shifted_sum(self, U: np.ndarray, gathered: int, out: np.ndarray, add: bool = False) -> None:
        """``out`` (``+``)``= sum_j U[:, j, :, o_j : o_j + ny w]`` over the :meth:`offsets` ``o_j`` of the kernel axes
        not gathered, for ``U`` ``(r, len(offsets), m, length)`` and ``out`` wide ``(r, m, ny w)``."""
        for j, offset in enumerate(self._offsets[gathered]):
            term = U[:, j, :, offset : offset + self.n_wide]
            if add or j:
                out += term
            else:
                out[...] = term

    def columns(self, a: np.ndarray) -> np.ndarray:
        """``P(a)`` ``(c k^2, m ny nx)`` for ``a`` ``(c, m, ny nx)``: row ``(c, a, b)``, column ``(d, i, j)``."""
        c, m = a.shape[:2]
        k = self.kernel
        windows = self.windows(self.pad(a))
        patches = np.empty((c, k, k, m, self.ny, self.nx))
        patches[...] = windows.reshape(windows.shape[:4] + (self.ny, self.width))[..., : self.nx]
        return patches.reshape(c * k * k, m * self.ny * self.nx)

    def augmented_columns(self, buffer: np.ndarray) -> np.ndarray:
        """``[P(a); 1]`` ``(c k^2 + 1, ny w)`` of a one-direction buffer ``(c, 1, size)``, zero on the spare columns:
        ``[W b] [P(a); 1] = W P(a) + b``, and a product ``z [P(a); 1]^T`` sums over the grid points alone."""
        c, k = buffer.shape[0], self.kernel
        P = np.empty((c * k * k + 1, self.n_wide))
        P[:-1].reshape(c, k, k, 1, self.n_wide)[...] = self.windows(buffer)
        P[-1] = 1.0
        P.reshape(-1, self.ny, self.width)[:, :, self.nx :] = 0.0
        return P


def _padded_directions(patches: PeriodicPatches, v: np.ndarray, channels: int, name: str) -> tuple[np.ndarray, bool]:
    """A field vector ``(channels ny nx,)`` or block ``(channels ny nx, m)`` as a padded buffer ``(channels, m, size)``,
    and whether it was one vector."""
    points = patches.ny * patches.nx
    if v.shape[:1] != (channels * points,) or v.ndim > 2:
        raise ValueError(f"{name} must have shape ({channels * points},) or ({channels * points}, m), got {v.shape}")
    if v.ndim == 1:
        return patches.pad(v.reshape(channels, 1, points)), True
    return patches.pad(v.reshape(channels, patches.ny, patches.nx, -1).transpose(0, 3, 1, 2)), False


def _directions_last(patches: PeriodicPatches, buffer: np.ndarray, single: bool) -> np.ndarray:
    """The inverse of :func:`_padded_directions`: the grid points of a buffer as ``(channels ny nx,)`` or ``(channels ny nx, m)``."""
    fields = patches.interior(buffer)
    if single:
        return fields.reshape(-1)
    c, m, ny, nx = fields.shape
    return fields.transpose(0, 2, 3, 1).reshape(c * ny * nx, m)


def _kept(r: int, c: int, k: int, gathered: int) -> int:
    """Values per point and direction of a correlation ``(r, c, k, k)`` split at ``gathered``: ``c k^g`` columns, ``r k^(2-g)`` products."""
    return c * k**gathered + r * k ** (2 - gathered)


def _weight_rows(W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[W_l b_l]`` as rows to meet ``[P(a); 1]``: ``(c_l, Q + 1)`` for one direction, ``(c_l m, Q + 1)``
    (rows ``(o, d)``, direction-minor) for a block ``W`` ``(c_l, Q, m)``, ``b`` ``(c_l, 1, m)``."""
    if W.ndim == 2:
        return np.concatenate([W, b], axis=1)
    rows = np.empty((W.shape[0], W.shape[2], W.shape[1] + 1))
    rows[:, :, :-1] = W.transpose(0, 2, 1)
    rows[:, :, -1] = b[:, 0]
    return rows.reshape(-1, rows.shape[2])


def _set_weight_adjoint(rows: np.ndarray, aW: np.ndarray, ab: np.ndarray) -> None:
    """The inverse of :func:`_weight_rows`: rows ``[aW_l ab_l]`` into the views ``aW``, ``ab`` of ``ap``."""
    if aW.ndim == 2:
        aW[...], ab[...] = rows[:, :-1], rows[:, -1:]
        return
    rows = rows.reshape(aW.shape[0], aW.shape[2], aW.shape[1] + 1)
    aW[...] = rows[:, :, :-1].transpose(0, 2, 1)
    ab[...] = rows[:, None, :, -1]


class ConvNet:
    """``ConvNet(channels=[2, 16, 16, 2], kernel=3, activations=["tanh", "tanh", "identity"], ny=64, nx=64)``.

    ``residual=True`` adds the input to the output (``channels[0] == channels[-1]``);
    ``input_scale`` ``s`` and ``output_scale`` ``g`` give ``y = g NN(x / s)``; ``s`` is one number or one per
    input channel (``x_c / s_c``: fields of different magnitude brought to a common one).
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
        input_scale: float | Sequence[float] = 1.0,
        output_scale: float = 1.0,
    ):
        channels = list(channels)
        if len(channels) < 2 or any(int(c) != c or c < 1 for c in channels):
            raise ValueError(f"channels must list at least two positive integers, got {channels}")
        if isinstance(activations, str) or len(activations) != len(channels) - 1:
            raise ValueError(f"activations must list one name per layer ({len(channels) - 1} for channels {channels}), got {activations!r}")
        if residual and channels[0] != channels[-1]:
            raise ValueError(f"a residual ConvNet needs as many output channels as input channels, got channels {channels}")
        scales = np.atleast_1d(np.asarray(input_scale, dtype=float))
        if scales.ndim != 1 or len(scales) not in (1, channels[0]):
            raise ValueError(f"input_scale must be one number or one per input channel ({channels[0]}), got {input_scale!r}")
        for name, value in (("input_scale", scales.min()), ("output_scale", output_scale)):
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {input_scale if name == 'input_scale' else value}")
        self.patches = PeriodicPatches(ny, nx, kernel)
        self.channels = [int(c) for c in channels]
        self.kernel, self.ny, self.nx = int(kernel), int(ny), int(nx)
        self.activations = [get_activation(name) for name in activations]
        self.residual = bool(residual)
        self.input_scale = float(scales[0]) if np.ndim(input_scale) == 0 else [float(v) for v in scales]
        self.output_scale = float(output_scale)
        self.channel_scale = np.broadcast_to(scales, (self.channels[0],)).reshape(-1, 1, 1)  # s_c against (c, m, size) buffers
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
        a = self._input(x)
        for (W, b), f in zip(self.layers(p), self.activations):
            a = self._layer(W, b, f, self.patches.augmented_columns(a))
        return self._output(a, x)

    evaluate = apply

    def _input(self, x: np.ndarray) -> np.ndarray:
        """The padded buffer of ``a_0 = x / s``, ``(c_0, 1, size)``."""
        return self.patches.pad(x.reshape(self.channels[0], 1, -1) / self.channel_scale)

    def _layer(self, W: np.ndarray, b: np.ndarray, f, P: np.ndarray) -> np.ndarray:
        """The padded buffer of ``a_l`` ``(c_l, 1, size)`` from the patches ``P = [P(a_{l-1}); 1]``
        (:meth:`PeriodicPatches.augmented_columns`)."""
        a = self.patches.buffer(W.shape[0], 1)
        z = self.patches.wide(a)
        np.matmul(_weight_rows(W, b), P, out=z[:, 0])  # z_l = W_l P(a_{l-1}) + b_l
        z[...] = f.f(z)                                # a_l = f_l(z_l)
        self.patches.wrap(a)
        return a

    def _output(self, a: np.ndarray, x: np.ndarray) -> np.ndarray:
        """``y = g a_L`` (``+ x``) from the padded buffer of ``a_L``."""
        y = self.output_scale * self.patches.interior(a).reshape(-1)
        return y + x if self.residual else y

    def linearize(self, x: np.ndarray, p: np.ndarray) -> "ConvNetLinearization":
        return ConvNetLinearization(self, *self._check(x, p))

    def __repr__(self) -> str:
        options = "".join(f", {name}={getattr(self, name)}" for name, default in
                          (("residual", False), ("input_scale", 1.0), ("output_scale", 1.0)) if getattr(self, name) != default)
        return (f"ConvNet(channels={self.channels}, kernel={self.kernel}, activations={[f.name for f in self.activations]}, "
                f"ny={self.ny}, nx={self.nx}{options})")


class ConvNetLinearization:
    """The nonlinear pass with the patches ``[P(a_{l-1}); 1]`` and the activations ``a_l`` kept; TL and AD of the module docstring.

    Inside, a block of ``m`` directions lives in padded buffers ``(c, m, size)``
    (:class:`PeriodicPatches`), each layer's result written in the wide layout and its ghost
    cells wrapped.  The terms that do not depend on the propagated increment,
    ``dW_l P(a_{l-1}) + db_l`` and ``[aW_l ab_l] = az_l [P(a_{l-1}); 1]^T``, are one matrix product
    per layer for all directions, ``(c_l m, c_{l-1} k^2 + 1)`` against the kept patches.  The
    propagated terms ``W_l P(da_{l-1})`` and ``W~_l P(az_l)`` are correlations of every direction
    (:meth:`correlate_into`), each split where it keeps fewest values per point and direction
    (:func:`_kept`), taken ``chunk`` directions at a time so that they stay within ``PATCH_BYTES``
    (a cache's worth: once they spill to memory, one product of ``m`` directions is slower than
    ``m`` products of one).  A TL layer whose increment patches are gathered whole (few input
    channels) folds its weight term into that product instead (:meth:`joint_tl`): one longer
    product per direction beats a short one per direction plus a short blocked one.
    ``f_l'(z_l)`` is formed from ``a_l`` on the first TL or AD and kept.
    """

    PATCH_BYTES = 4 << 20

    def __init__(self, net: ConvNet, x: np.ndarray, p: np.ndarray):
        self.net = net
        self.layers = net.layers(p)
        k = net.kernel
        self.kernels = [W.reshape(c_out, c_in, k, k) for (W, _), c_in, c_out in zip(self.layers, net.channels[:-1], net.channels[1:])]
        # W~_l[c, o, a, b] = W_l[o, c, k-1-a, k-1-b]: the kernel of the input adjoint
        self.flipped = [W[:, :, ::-1, ::-1].transpose(1, 0, 2, 3) for W in self.kernels]
        kept = max(min(_kept(c_out, c_in, k, g) for g in range(3)) for c_in, c_out in zip(net.channels[:-1], net.channels[1:]))
        self.chunk = max(1, self.PATCH_BYTES // (8 * net.patches.n_wide * kept))
        self.fprimes: list[np.ndarray | None] | None = None
        self.P, self.a = [], []  # [P(a_{l-1}); 1] (c_{l-1} k^2 + 1, ny w); a_l (c_l, 1, size)
        a = net._input(x)
        for (W, b), f in zip(self.layers, net.activations):
            self.P.append(net.patches.augmented_columns(a))
            a = net._layer(W, b, f, self.P[-1])
            self.a.append(a)
        self.output = net._output(a, x)

    def fprime(self, l: int) -> np.ndarray | None:
        """``f_l'(z_l)`` from ``a_l``, wide ``(c_l, 1, ny w)`` (to meet ``(c_l, m, ny w)``); ``None`` for the identity."""
        if self.fprimes is None:
            wide = self.net.patches.wide
            self.fprimes = [None if f.derivative is None else f.derivative(wide(a)) for f, a in zip(self.net.activations, self.a)]
        return self.fprimes[l]

    def split(self, K: np.ndarray) -> int:
        """How many kernel axes the correlation with ``K`` ``(r, c, k, k)`` gathers: the split keeping fewest values per point (:func:`_kept`)."""
        r, c = K.shape[:2]
        return min(range(2, -1, -1), key=lambda g: _kept(r, c, self.net.kernel, g))

    def joint_tl(self, l: int, dW: np.ndarray, db: np.ndarray, da: np.ndarray, dz: np.ndarray) -> None:
        """``dz_l = [W_l dW_l db_l] [P(da_{l-1}); P(a_{l-1}); 1]`` written into the wide layout of the buffer ``dz``, one
        product per direction, for a layer whose increment patches are gathered whole (few input channels): the
        weight term then rides in the product of the propagated one.  ``da`` is the buffer of ``da_{l-1}``, ``dW``
        ``(c_l, Q)`` and ``db`` ``(c_l, 1)`` (each with a last axis of ``m`` for a block)."""
        patches, W = self.net.patches, self.layers[l][0]
        (r, Q), m = W.shape, da.shape[1]
        rows = np.empty((m, r, 2 * Q + 1))  # [W_l dW_l db_l] of each direction
        rows[:, :, :Q] = W
        rows[:, :, Q:] = np.concatenate([dW.reshape(r, Q, m), db.reshape(r, 1, m)], axis=1).transpose(2, 0, 1)
        columns = np.empty((2 * Q + 1, patches.n_wide))  # [P(da_{l-1}); P(a_{l-1}); 1]
        columns[Q:] = self.P[l]
        windows, wide = patches.windows(da), patches.wide(dz)
        for d in range(m):
            columns[:Q].reshape(windows.shape[:3] + (-1,))[...] = windows[:, :, :, d]
            np.matmul(rows[d], columns, out=wide[:, d])

    def correlate(self, K: np.ndarray, a: np.ndarray, gathered: int | None = None) -> np.ndarray:
        """``K P(a)`` ``(r, m, ny nx)`` for a kernel ``K`` ``(r, c, k, k)`` and ``a`` ``(c, m, ny nx)`` (:meth:`correlate_into`)."""
        patches = self.net.patches
        out = patches.buffer(K.shape[0], a.shape[1])
        self.correlate_into(K, patches.pad(a), out, gathered=gathered)
        return patches.interior(out).reshape(out.shape[:2] + (-1,))

    def correlate_into(self, K: np.ndarray, a: np.ndarray, out: np.ndarray, add: bool = False, gathered: int | None = None) -> None:
        """``K P(a)`` written (or with ``add``, added) into the wide layout of the buffer ``out`` ``(r, m, size)``, for a
        kernel ``K`` ``(r, c, k, k)`` and a buffer ``a`` ``(c, m, size)``, ``chunk`` directions per product.

        The first ``gathered`` axes of the kernel are gathered into the columns before the product, the
        others summed shifted after it: ``K P(a) = sum_j shift_j(K_g G_g(a))``, ``G_g`` the windows
        (:meth:`PeriodicPatches.windows`) and ``K_g`` the kernel with rows ``(o, summed axes)`` and
        columns ``(c, gathered axes)``.  By default the split that keeps the fewest values per point
        (:func:`_kept`)."""
        r, c = K.shape[:2]
        k, patches = self.net.kernel, self.net.patches
        g = self.split(K) if gathered is None else gathered
        order = (0,) + tuple(range(2 + g, 4)) + (1,) + tuple(range(2, 2 + g))  # (o, summed axes, c, gathered axes)
        K_matrix = K.transpose(order).reshape(r * k ** (2 - g), c * k**g)
        chunk = max(1, min(self.chunk, a.shape[1]))
        windows, wide, (rows, cols) = patches.windows(a, g), patches.wide(out), K_matrix.shape
        length = windows.shape[-1]
        columns, products = np.empty(cols * chunk * length), np.empty(rows * chunk * length)
        for d in range(0, a.shape[1], chunk):
            part = windows[..., d : d + chunk, :]
            n = part.shape[-2]
            if g == 0:
                G = part.reshape(c, -1)  # the fields themselves (a view for one direction)
            else:
                G = columns[: part.size].reshape(part.shape)
                G[...] = part
            if g == 2 and n == 1 and not add:  # no offsets left to sum: the product is the correlation
                np.matmul(K_matrix, G.reshape(cols, -1), out=wide[:, d])
                continue
            U = np.matmul(K_matrix, G.reshape(cols, -1), out=products[: rows * n * length].reshape(rows, -1))
            patches.shifted_sum(U.reshape(r, -1, n, length), g, wide[:, d : d + chunk], add)

    def tl(self, dx: np.ndarray, dp: np.ndarray) -> np.ndarray:
        """``dy`` for ``dx`` ``(n_in,)`` and ``dp`` ``(n_params,)``, or blocks ``(n_in, m)``, ``(n_params, m)`` giving ``(n_out, m)``."""
        net, patches = self.net, self.net.patches
        da, single = _padded_directions(patches, dx, net.channels[0], "dx")
        if dp.ndim != dx.ndim or dp.shape[1:] != dx.shape[1:]:
            raise ValueError(f"dx and dp must carry as many directions, got shapes {dx.shape} and {dp.shape}")
        m = da.shape[1]
        da /= net.channel_scale
        for l, ((dW, db), P) in enumerate(zip(net.layers(dp), self.P)):
            dz = patches.buffer(dW.shape[0], m)
            if self.split(self.kernels[l]) == 2:
                self.joint_tl(l, dW, db, da, dz)                                # [W_l dW_l db_l] [P(da_{l-1}); P(a_{l-1}); 1]
            else:
                np.matmul(_weight_rows(dW, db), P, out=patches.wide_rows(dz))  # dW_l P(a_{l-1}) + db_l, all directions in one product
                self.correlate_into(self.kernels[l], da, dz, add=True)          # + W_l P(da_{l-1})
            fprime = self.fprime(l)
            if fprime is not None:
                np.multiply(fprime, patches.wide(dz), out=patches.wide(dz))  # da_l = f_l' dz_l
            patches.wrap(dz)
            da = dz
        dy = net.output_scale * _directions_last(patches, da, single)
        if net.residual:
            dy += dx
        return dy

    def ad(self, ay: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(ax, ap)`` for ``ay`` ``(n_out,)``, or for a block ``(n_out, m)`` giving ``(n_in, m)`` and ``(n_params, m)``."""
        net, patches = self.net, self.net.patches
        aa, single = _padded_directions(patches, ay, net.channels[-1], "ay")
        m = aa.shape[1]
        ap = np.empty((net.n_params,) + ay.shape[1:])
        aa *= net.output_scale
        for l, (aW, ab) in reversed(list(enumerate(net.layers(ap)))):
            az, fprime = aa, self.fprime(l)
            if fprime is not None:
                np.multiply(fprime, patches.wide(az), out=patches.wide(az))                 # az_l = f_l' aa_l
            patches.wrap(az)
            # [aW_l ab_l] = az_l [P(a_{l-1}); 1]^T, all directions, formed as its transpose (the faster order for OpenBLAS here)
            _set_weight_adjoint(np.matmul(self.P[l], patches.wide_rows(az).T).T, aW, ab)
            aa = patches.buffer(net.channels[l], m)
            self.correlate_into(self.flipped[l], az, aa)                                   # aa_{l-1} = W~_l P(az_l)
        aa /= net.channel_scale
        ax = _directions_last(patches, aa, single)
        if net.residual:
            ax += ay
        return ax, ap


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
