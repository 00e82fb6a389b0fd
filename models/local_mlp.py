"""A local network on a periodic 1-D grid: the same small MLP at every point.

Tendency at point ``i``, from the stencil ``s_i = x[i-h .. i+h]``::

    f_i(x, p) = c NN((s_i - m) / c; p)      (one network, weights shared by all points)

with fixed ``m = state_offset`` and ``c = state_scale``: the network works in
units of a typical state magnitude, where its tanh units are not saturated
(for Lorenz-96, ``c = 4`` lowers the offline one-step error 500-fold).  All ``n``
stencils are the columns of one matrix ``S = gather(x)`` of shape ``(2h+1, n)``
and go through the network of :mod:`models.network` as one matrix product per
layer.  TL and AD::

    TL   dS = gather(dx) / c                 df = c NN'(S) (dS, dp)
    AD   (aS, ap) = NN'(S)^T (c af)          ax = scatter_add(aS) / c

Blocked TL/AD: ``dx`` (or ``af``) ``(n, k)`` and ``dp`` ``(n_params, k)`` carry ``k``
directions through the same statements (:mod:`models.network`, :mod:`models.stencil`).

The step integrates the tendency over ``dt`` with the chosen explicit scheme
(:mod:`models.integrators`): ``integrator="euler"`` is ``x + dt * NN(S)``; ``"rk2"``
and ``"rk4"`` learn far better-behaved dynamics for the same network.

Parameters: those of the network ``[2h+1, *hidden, 1]``, layout as in
:mod:`models.network` (each ``W_i`` row-major, bias last column).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .integrators import IntegratedModel, RungeKutta
from .network import Network
from .stencil import PeriodicStencil


class LocalNetworkTendency:
    """``f(x, p) = c NN((gather(x) - m) / c; p)`` on the periodic grid."""

    def __init__(self, stencil: PeriodicStencil, network: Network, state_offset: float = 0.0, state_scale: float = 1.0):
        self.stencil = stencil
        self.network = network
        self.offset = state_offset
        self.scale = state_scale

    def inputs(self, x: np.ndarray) -> np.ndarray:
        """``S = (gather(x) - m) / c``."""
        return (self.stencil.gather(x) - self.offset) / self.scale

    def evaluate(self, x: np.ndarray, p: np.ndarray) -> np.ndarray:
        return self.scale * self.network.forward(self.inputs(x), p)[0]

    def linearize(self, x: np.ndarray, p: np.ndarray) -> "LocalNetworkTendencyLinearization":
        return LocalNetworkTendencyLinearization(self, x, p)


class LocalNetworkTendencyLinearization:
    """TL and AD of the tendency at one state.

    On a small grid with a small network (``n * n_params <= EXPLICIT_JACOBIAN_SIZE``)
    the derivatives are stored explicitly, ``Jx`` (the ``2h+1`` stencil weights of
    each point) and ``Jp`` (``n x n_params``), from one reverse pass
    (:meth:`models.network.NetworkLinearization.column_jacobians`)::

        TL   df = sum_rows(Jx * gather(dx)) + c Jp dp
        AD   ax = scatter_add(Jx * af)       ap = c Jp^T af

    The TL and AD are then a handful of numpy calls instead of the layer-by-layer
    products, which matters where the calls' overhead, not their arithmetic,
    dominates (Lorenz-96 size, ``n = 40``).  The two forms are the same derivative.
    The Jacobians are built on the first blocked call or the ``EXPLICIT_AFTER_CALLS``-th
    one-vector TL or AD call, not when linearising: a linearisation costs the
    forward pass, and one used once or twice (a window whose steps are then stored
    as Jacobians, :mod:`fourdvar.window`) never pays for them.
    """

    EXPLICIT_JACOBIAN_SIZE = 1 << 16
    EXPLICIT_AFTER_CALLS = 3

    def __init__(self, tendency: LocalNetworkTendency, x: np.ndarray, p: np.ndarray):
        self.stencil = tendency.stencil
        self.scale = tendency.scale
        self.net = tendency.network.linearize(tendency.inputs(x), p)
        self.output = self.scale * self.net.output[0]
        self.explicit = x.size * tendency.network.n_params <= self.EXPLICIT_JACOBIAN_SIZE
        self.one_vector_calls = 0
        self.Jx = self.cJp = None

    def _explicit_ready(self, v: np.ndarray) -> bool:
        """Whether the stored Jacobians apply (building them on the first blocked or the
        ``EXPLICIT_AFTER_CALLS``-th one-vector call)."""
        if self.explicit and self.Jx is None:
            self.one_vector_calls += v.ndim == 1
            if v.ndim > 1 or self.one_vector_calls >= self.EXPLICIT_AFTER_CALLS:
                self.Jx, Jp = self.net.column_jacobians()  # d/dS of NN((S - m)/c) is Jx / c, times the outer c
                self.cJp = self.scale * Jp
        return self.Jx is not None

    def tl(self, dx: np.ndarray, dp: np.ndarray) -> np.ndarray:
        if self._explicit_ready(dx):
            return np.einsum("ij,ij...->j...", self.Jx, self.stencil.gather(dx)) + self.cJp @ dp
        dS = self.stencil.gather(dx) / self.scale
        return self.scale * self.net.tl(dS, dp)[0]

    def ad(self, af: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._explicit_ready(af):
            Jx = self.Jx if af.ndim == 1 else self.Jx[:, :, None]
            return self.stencil.scatter_add(Jx * af), self.cJp.T @ af
        aS, ap = self.net.ad(self.scale * af[None, :])
        return self.stencil.scatter_add(aS) / self.scale, ap


class LocalMLP(IntegratedModel):
    """``LocalMLP(n_state=40, half_width=2, hidden=[32], activation="tanh", dt=0.05, integrator="euler")``.

    One small network on every stencil ``x[i-h .. i+h]`` of a periodic grid gives the
    tendency at point ``i``, integrated over ``dt`` (the module docstring has the equations).

    Parameters
    ----------
    n_state : int, default 40
        Grid points.
    half_width : int, default 2
        ``h``: the network sees ``2h + 1`` points.
    hidden : sequence of int, default (32,)
        Hidden layer sizes.
    activation : str, default "tanh"
        The hidden layers' activation.
    dt : float, default 0.05
        The time step.
    integrator : {"euler", "rk2", "rk4"}, default "euler"
        The Runge-Kutta scheme (:class:`models.integrators.RungeKutta`).
    init_output_scale : float, default 0.0
        Scales the last layer of :meth:`init_params`; 0 starts the network at zero
        tendency (the step is then the identity).
    state_offset, state_scale : float, default 0.0 and 1.0
        The fixed ``m`` and ``c`` of the module docstring: the network sees ``(x - m) / c``.

    Examples
    --------
    >>> model = LocalMLP(n_state=10, half_width=1, hidden=[4])
    >>> model.n_params                                # 4 x (3 + 1) + 1 x (4 + 1)
    21
    >>> x = np.arange(10.0)
    >>> np.array_equal(model.step(x, model.init_params(np.random.default_rng(0))), x)
    True
    """

    blocked_linearization = True  # TL/AD take (n, k) blocks of directions

    def __init__(
        self,
        n_state: int = 40,
        half_width: int = 2,
        hidden: Sequence[int] = (32,),
        activation: str = "tanh",
        dt: float = 0.05,
        integrator: str = "euler",
        init_output_scale: float = 0.0,
        state_offset: float = 0.0,
        state_scale: float = 1.0,
    ):
        if int(n_state) != n_state or n_state < 1:
            raise ValueError(f"n_state must be a positive integer, got {n_state}")
        hidden = [int(h) for h in hidden]
        self.n_state = int(n_state)
        self.half_width = int(half_width)
        self.hidden = hidden
        self.activation = activation
        self.dt = float(dt)
        self.init_output_scale = float(init_output_scale)
        self.stencil = PeriodicStencil(self.n_state, self.half_width)
        self.network = Network([self.stencil.width, *hidden, 1], [activation] * len(hidden) + ["identity"])
        self.n_params = self.network.n_params
        if not state_scale > 0:
            raise ValueError(f"state_scale must be positive, got {state_scale}")
        self.state_offset = float(state_offset)
        self.state_scale = float(state_scale)
        self.tendency = LocalNetworkTendency(self.stencil, self.network, self.state_offset, self.state_scale)
        self.integrator = RungeKutta(integrator, self.dt)

    def init_params(self, rng: np.random.Generator) -> np.ndarray:
        """Glorot-uniform weights, zero biases, the last layer scaled by ``init_output_scale``."""
        return self.network.init_params(rng, output_scale=self.init_output_scale)

    def __repr__(self) -> str:
        return (
            f"LocalMLP(n_state={self.n_state}, half_width={self.half_width}, hidden={self.hidden}, "
            f"activation={self.activation!r}, dt={self.dt}, integrator={self.integrator.scheme!r}"
            + (f", state_offset={self.state_offset}, state_scale={self.state_scale})" if (self.state_offset, self.state_scale) != (0.0, 1.0) else ")")
        )
