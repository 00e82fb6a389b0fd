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

Over a whole window on a small grid, :class:`LocalMLPWindowLinearization` (the
engine's ``linearize_window`` hook) does the same TL and AD with every tendency
evaluation of the window one column of the network's batch, the weight terms one
matrix product per layer, and the sweeps compiled (:mod:`models.local_mlp_kernels`).

Parameters: those of the network ``[2h+1, *hidden, 1]``, layout as in
:mod:`models.network` (each ``W_i`` row-major, bias last column).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Mapping, Sequence

import numpy as np

from fourdvar.window import DenseStepLinearization, WindowLinearization

from .integrators import IntegratedModel, RungeKutta
from .network import Network
from .stencil import PeriodicStencil

#: whether the compiled window sweeps can be used (numba installed); imported on first use
KERNELS_AVAILABLE = importlib.util.find_spec("numba") is not None


def kernels():
    """:mod:`models.local_mlp_kernels` (imported, and numba with it, on the first call)."""
    return importlib.import_module(".local_mlp_kernels", __package__)


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
    window_forcing = True  # the window hook takes the forcing of weak constraint
    #: the largest grid given the batched window hook (:attr:`linearize_window`)
    WINDOW_MAX_POINTS = 128

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

    @property
    def linearize_window(self):
        """The engine's window hook, present only on a small grid (``n_state <= WINDOW_MAX_POINTS``):
        ``linearize_window(x0, p, n_steps, forcing=None)`` gives the window linearised with the weight terms batched
        over steps, stages and points (:class:`LocalMLPWindowLinearization`).  On a larger grid the
        per-stage statements are no longer dominated by call overhead and the engine's per-step
        chain (:class:`fourdvar.window.WindowLinearization`) is faster (``benchmarks/machine.py``)."""
        if self.n_state > self.WINDOW_MAX_POINTS:
            raise AttributeError("linearize_window")
        return self._batched_window

    def _batched_window(self, x0: np.ndarray, p: np.ndarray, n_steps: int, forcing: np.ndarray | None = None) -> "LocalMLPWindowLinearization":
        x0, p = self._inputs(x0, p)
        return LocalMLPWindowLinearization(self, x0, p, int(n_steps), forcing=forcing)

    def init_params(self, rng: np.random.Generator) -> np.ndarray:
        """Glorot-uniform weights, zero biases, the last layer scaled by ``init_output_scale``."""
        return self.network.init_params(rng, output_scale=self.init_output_scale)

    def __repr__(self) -> str:
        return (
            f"LocalMLP(n_state={self.n_state}, half_width={self.half_width}, hidden={self.hidden}, "
            f"activation={self.activation!r}, dt={self.dt}, integrator={self.integrator.scheme!r}"
            + (f", state_offset={self.state_offset}, state_scale={self.state_scale})" if (self.state_offset, self.state_scale) != (0.0, 1.0) else ")")
        )


class LocalMLPWindowLinearization:
    """The LocalMLP over a window of ``K`` steps, linearised, with the weight terms batched.

    Every tendency evaluation of the window (step ``k``, Runge-Kutta stage ``i``,
    grid point ``j``) is one column of the network's batch, column
    ``col = (k s + i) n + j`` for ``s`` stages on ``n`` points.  The NL sweep writes each
    column's layer inputs into window-wide matrices::

        A_{l-1} = [a_{l-1} of every column]      (n_{l-1} + 1, K s n), bias row included
        F_l     = f_l'(Z_l) of every column        (n_l, K s n), from the activations

    so that the terms of the TL and AD that do not depend on the propagated
    increment leave the sequential sweep and become one matrix product per layer::

        TL   dWA_l = dW_l A_{l-1}                         all columns (weights_tl)
             for k, i:  dX_i = dx_k + dt sum_{j<i} A_ij dk_j ;   da_0 = gather(dX_i) / c
                        dz_l = W_l[:, :-1] da_{l-1} + dWA_l[:, cols] ;  da_l = F_l[:, cols] * dz_l
                        dk_i = c da_L ;   dx_{k+1} = dx_k + dt sum_i b_i dk_i

        AD   for k = K .. 1, i = s .. 1 (ak_i = dt b_i ax, as in :mod:`models.integrators`):
                        aa_L = c ak_i ;  AZ_l[:, cols] = F_l[:, cols] * aa_l ;  aa_{l-1} = W_l[:, :-1]^T AZ_l[:, cols]
                        aX_i = scatter_add(aa_0) / c ;  ax += aX_i ;  ak_j += dt A_ij aX_i
             aW_l = AZ_l A_{l-1}^T                        all columns (weights_ad)

    the statements of :class:`LocalNetworkTendencyLinearization` and
    :class:`models.integrators.RungeKuttaLinearization`, with ``ap`` summed over the
    window as one product instead of one per stage.  The forcing of weak constraint
    (``forcing`` ``(K, n)``, absent = 0) is added after each step, as in
    :mod:`fourdvar.window`::

        NL   x_{k+1} = M(x_k) + e_k          TL   dx_{k+1} = M'(dx_k, dp) + de_k          AD   ae_k = ax_{k+1}

    The layer matrices of all layers are stacked in one array each (``A`` ``(sum (n_{l-1} + 1), K s n)``, ``F``,
    ``dWA`` and ``AZ`` ``(sum n_l, K s n)``); ``A_prev[l]`` and ``F[l]`` are their row
    blocks.  With numba the NL sweep, and the TL and AD of one vector, run compiled (:mod:`models.local_mlp_kernels`), the same
    statements point by point; blocks of directions (``(n, k)``, ``dWA`` and ``AZ``
    with a last axis of ``k``) go through the numpy statements stage by stage.

    On a small grid the inner loop is faster on stored step Jacobians, as for the
    per-step chain (:class:`fourdvar.window.WindowLinearization`, same thresholds):
    on its third sweep the window builds ``[M_x | M_p]`` of each step from one
    blocked step AD (:meth:`step_ad`) and sweeps over them from then on.
    """

    blocked = True

    def __init__(self, model: LocalMLP, x0: np.ndarray, p: np.ndarray, n_steps: int, compiled: bool = KERNELS_AVAILABLE,
                 forcing: np.ndarray | None = None):
        if n_steps < 0:
            raise ValueError(f"the window must have at least 0 steps, got {n_steps}")
        if forcing is not None and np.shape(forcing) != (n_steps, model.n_state):
            raise ValueError(f"the forcing must have shape ({n_steps}, {model.n_state}) (one row per step), got {np.shape(forcing)}")
        self.rk, self.stencil, self.network, self.p = model.integrator, model.stencil, model.network, p
        self.offset, self.scale = model.state_offset, model.state_scale
        self.n_state, self.n_params, self.n_steps = model.n_state, model.n_params, n_steps
        self.n_stages, self.compiled = len(self.rk.b), bool(compiled)
        self.sweeps, self.dense_steps = 0, None
        self.W = self.network.weights(p)
        self.W_in = [W[:, :-1] for W in self.W]
        sizes = self.network.layer_sizes
        self.input_starts = np.cumsum([0] + [n_in + 1 for n_in in sizes[:-1]])  # A_{l-1}'s rows in A
        self.unit_starts = np.cumsum([0] + sizes[1:])  # layer l's rows in F, dWA, AZ
        self.A = np.empty((self.input_starts[-1], n_steps * self.n_stages * self.n_state))
        self.A_prev = self.layers(self.A, self.input_starts)
        self.states = np.empty((n_steps + 1, self.n_state))
        self.F_all = np.empty((self.unit_starts[-1], self.A.shape[1]))
        self.F = [None if f.derivative is None else F for f, F in zip(self.network.activations, self.layers(self.F_all, self.unit_starts))]
        if self.compiled:
            kernels().forward(x0, p, self.layout(), self.codes(), self.stencil.indices, self.offset, self.scale,
                              *self.coefficients(), _rows(forcing, self.n_state), self.states, self.A, self.F_all)
        else:
            self._forward(x0, forcing)
            for l, (f, F) in enumerate(zip(self.network.activations, self.F)):
                if F is not None:  # f_l' from a_l, the next layer's input (the output layer is the identity)
                    F[...] = f.derivative(self.A_prev[l + 1][:-1])

    def columns(self, k: int, i: int) -> slice:
        """The columns of step ``k``, stage ``i``."""
        start = (k * self.n_stages + i) * self.n_state
        return slice(start, start + self.n_state)

    def layers(self, M: np.ndarray, starts: np.ndarray) -> list[np.ndarray]:
        """The row blocks of ``M`` of each layer, ``M[starts[l]:starts[l + 1]]``."""
        return [M[start:stop] for start, stop in zip(starts[:-1], starts[1:])]

    def layout(self) -> np.ndarray:
        """``(n_l, start of W_l in p, start of A_{l-1} in A, start of layer l in F/AZ)`` per layer, for the kernels."""
        sizes = self.network.layer_sizes
        return np.array([(sizes[l + 1], self.network.offsets[l], self.input_starts[l], self.unit_starts[l])
                         for l in range(self.network.n_layers)], dtype=np.int64)

    def codes(self) -> np.ndarray:
        """Each layer's activation code (:data:`models.local_mlp_kernels.CODES`)."""
        return np.array([kernels().CODES[f.name] for f in self.network.activations], dtype=np.int64)

    def coefficients(self) -> tuple[np.ndarray, np.ndarray]:
        """``(dt A_ij`` as an ``(s, s)`` matrix, ``dt b_i)``, for the kernels."""
        stage = np.zeros((self.n_stages, self.n_stages))
        for i, terms in enumerate(self.rk.stage_terms):
            for j, c in terms:
                stage[i, j] = c
        return stage, np.array([self.rk.dt * b_i for b_i in self.rk.b])

    def _forward(self, x0: np.ndarray, forcing: np.ndarray | None) -> None:
        """The NL sweep in numpy, stage by stage, ``e_k`` (row ``k`` of ``forcing``) added after step ``k``."""
        for A in self.A_prev:
            A[-1] = 1.0
        self.states[0] = x0
        for k in range(self.n_steps):
            k_stages: list[np.ndarray] = []
            for i, terms in enumerate(self.rk.stage_terms):
                k_stages.append(self.scale * self._network_forward(self.rk._combine(self.states[k], terms, k_stages), self.columns(k, i))[0])
            self.states[k + 1] = self.rk._combine(self.states[k], self.rk.output_terms, k_stages)
            if forcing is not None:
                self.states[k + 1] += forcing[k]

    def _network_forward(self, X: np.ndarray, cols: slice) -> np.ndarray:
        """NL of one stage: ``a_0 = (gather(X) - m) / c``, ``a_l = f_l(W_l [a_{l-1}; 1])`` into the columns ``cols``."""
        a0 = self.A_prev[0][:-1, cols]
        np.subtract(self.stencil.gather(X), self.offset, out=a0)
        np.divide(a0, self.scale, out=a0)
        for l, (W, f) in enumerate(zip(self.W, self.network.activations)):
            a = f.f(W @ self.A_prev[l][:, cols])
            if l + 1 < len(self.A_prev):
                self.A_prev[l + 1][:-1, cols] = a
        return a

    def _kernel_arguments(self) -> tuple:
        has_F = np.array([F is not None for F in self.F])
        return (self.layout(), self.p, self.F_all, has_F, self.stencil.indices, self.scale, *self.coefficients())

    # --- TL --------------------------------------------------------------------------------

    def tl(self, dx0: np.ndarray, dp: np.ndarray, last_step: int | None = None, de: np.ndarray | None = None) -> list[np.ndarray]:
        """``[dx_0, dx_1, ..., dx_K]`` with ``K = last_step`` (default: the whole window); ``de`` ``(n_steps, n[, m])``
        the forcing's increments, row ``k`` added after step ``k`` (absent = 0)."""
        self._count_sweep()
        K = self.n_steps if last_step is None else min(last_step, self.n_steps)
        dx = [dx0]
        if self.dense_steps is not None:
            for k, step in enumerate(self.dense_steps[:K]):
                dx.append(step.tl(dx[-1], dp) if de is None else step.tl(dx[-1], dp) + de[k])
            return dx
        dWA = self.weights_tl(dp, K)
        if self.compiled and dx0.ndim == 1:
            sweep, arguments = np.empty((K + 1, self.n_state)), self._kernel_arguments()
            kernels().tangent_linear(np.ascontiguousarray(dx0, dtype=float), *arguments[:4], dWA, *arguments[4:], _rows(de, self.n_state), sweep)
            return [dx0] + list(sweep[1:])
        dWA_layers = self.layers(dWA, self.unit_starts)
        for k in range(K):
            dk: list[np.ndarray] = []
            for i, terms in enumerate(self.rk.stage_terms):
                dk.append(self.scale * self._network_tl(self.rk._combine(dx[k], terms, dk), dWA_layers, self.columns(k, i))[0])
            dx.append(self.rk._combine(dx[k], self.rk.output_terms, dk))
            if de is not None:
                dx[-1] += de[k]
        return dx

    def _network_tl(self, dX: np.ndarray, dWA: list[np.ndarray], cols: slice) -> np.ndarray:
        """``da_L`` of one stage: ``da_0 = gather(dX) / c``, ``dz_l = W_l[:, :-1] da_{l-1} + dWA_l``, ``da_l = F_l dz_l``."""
        da = self.stencil.gather(dX) / self.scale
        for W_in, dWA_l, F in zip(self.W_in, dWA, self.F):
            dz = (W_in @ da.reshape(da.shape[0], -1)).reshape((W_in.shape[0],) + da.shape[1:])
            dz += dWA_l[:, cols]
            da = dz if F is None else np.multiply(_columns(F, cols, dz), dz, out=dz)
        return da

    def weights_tl(self, dp: np.ndarray, K: int) -> np.ndarray:
        """``dWA_l = dW_l A_{l-1}`` over the columns of steps ``0 .. K-1``: one matrix product per layer,
        all layers in one array ``(sum n_l, K s n)``.

        Blocked (``dp`` ``(n_params, k)``): ``dWA_l[r] = A_{l-1}^T dW_l[r]`` for each unit ``r``, ``(sum n_l, K s n, k)``."""
        end = K * self.n_stages * self.n_state
        dWA = np.empty((self.unit_starts[-1], end) + dp.shape[1:])
        for dW_l, A, dWA_l in zip(self.network.weights(dp), self.A_prev, self.layers(dWA, self.unit_starts)):
            if dp.ndim == 2:
                np.matmul(A[:, :end].T, dW_l, out=dWA_l)
            else:
                np.matmul(dW_l, A[:, :end], out=dWA_l)
        return dWA

    # --- AD --------------------------------------------------------------------------------

    def ad(self, forcings: Mapping[int, np.ndarray], ae: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(ax_0, ap)`` for adjoint forcings ``{k: f_k}`` injected at steps ``k``; ``ap`` summed over the window;
        ``ae`` ``(n_steps, n[, m])``, when given, receives ``ae_k`` (the adjoint of ``x_k``) in row ``k - 1``."""
        self._count_sweep()
        K = max(forcings, default=0)
        block = np.shape(next(iter(forcings.values())))[1:] if forcings else ()
        end = K * self.n_stages * self.n_state
        AZ = np.empty((self.unit_starts[-1], end if self.dense_steps is None else 0) + block)
        if ae is not None:
            ae[...] = 0.0
        if self.compiled and not block and self.dense_steps is None:
            rows, forced = np.zeros((K + 1, self.n_state)), np.zeros(K + 1, dtype=np.bool_)
            for k, f in forcings.items():
                rows[k], forced[k] = f, True
            ae_rows = _rows(ae, self.n_state)  # the kernel writes rows 0 .. K-1
            ax = kernels().adjoint(rows, forced, *self._kernel_arguments(), ae_rows, AZ)
            if ae is not None and ae_rows is not ae:
                ae[...] = ae_rows
            return ax, self.weights_ad(AZ, 0, end)
        ax, ap = np.zeros((self.n_state,) + block), np.zeros((self.n_params,) + block)
        for k in range(K, 0, -1):
            if k in forcings:
                ax = ax + forcings[k]
            if ae is not None:
                ae[k - 1] = ax
            if self.dense_steps is None:  # the weight adjoint after the sweep, below
                ax = self.step_ad(k - 1, ax, AZ, (k - 1) * self.n_stages * self.n_state)
            else:  # over the stored step Jacobians
                ax, ap_k = self.dense_steps[k - 1].ad(ax)
                ap += ap_k
        if 0 in forcings:
            ax = ax + forcings[0]
        return ax, (ap if self.dense_steps is not None else self.weights_ad(AZ, 0, end))

    def step_ad(self, k: int, ax_next: np.ndarray, AZ: np.ndarray, start: int) -> np.ndarray:
        """``ax`` from ``ax_next`` through step ``k``, its stages' ``az_l`` written to the columns of ``AZ`` from ``start``."""
        rk, n = self.rk, self.n_state
        ak = [(rk.dt * b_i) * ax_next for b_i in rk.b]
        ax = ax_next.copy()
        AZ_layers = self.layers(AZ, self.unit_starts)
        for i in reversed(range(self.n_stages)):
            aX_i = self._network_ad(ak[i], AZ_layers, self.columns(k, i), slice(start + i * n, start + (i + 1) * n))
            ax += aX_i
            for j, c in rk.stage_terms[i]:
                ak[j] += c * aX_i
        return ax

    def _network_ad(self, ak: np.ndarray, AZ: list[np.ndarray], cols: slice, out: slice) -> np.ndarray:
        """``aX`` of one stage: ``aa_L = c ak``, ``AZ_l = F_l aa_l``, ``aa_{l-1} = W_l[:, :-1]^T AZ_l``, ``aX = scatter_add(aa_0) / c``."""
        aa = self.scale * ak[None]
        for W_in, AZ_l, F in zip(self.W_in[::-1], AZ[::-1], self.F[::-1]):
            az = AZ_l[:, out]
            if F is None:
                az[...] = aa
            else:
                np.multiply(_columns(F, cols, aa), aa, out=az)
            aa = (W_in.T @ az.reshape(az.shape[0], -1)).reshape((W_in.shape[1],) + az.shape[1:])
        return self.stencil.scatter_add(aa) / self.scale

    def weights_ad(self, AZ: np.ndarray, start: int, end: int) -> np.ndarray:
        """``ap`` holding ``aW_l = AZ_l A_{l-1}^T`` over the columns ``start .. end`` of ``A``: one product per layer
        (``AZ`` those columns, all layers stacked).

        Blocked (``AZ`` ``(sum n_l, columns, k)``): ``aW_l[r] = A_{l-1} AZ_l[r]`` for each unit ``r``, ``ap`` ``(n_params, k)``."""
        ap = np.empty((self.n_params,) + AZ.shape[2:])
        for aW_l, AZ_l, A in zip(self.network.weights(ap), self.layers(AZ, self.unit_starts), self.A_prev):
            if ap.ndim == 2:
                np.matmul(A[:, start:end], AZ_l, out=aW_l)
            else:
                np.matmul(AZ_l, A[:, start:end].T, out=aW_l)
        return ap

    # --- stored step Jacobians -------------------------------------------------------------

    @property
    def dense(self) -> bool:
        """Whether the steps are stored as Jacobians (as :attr:`fourdvar.window.WindowLinearization.dense`)."""
        return self.dense_steps is not None

    def _count_sweep(self) -> None:
        """Count a TL or AD sweep; on the ``DENSE_AFTER_SWEEPS``-th, store the step Jacobians if that pays."""
        self.sweeps += 1
        step_size = self.n_state * (self.n_state + self.n_params)
        small = step_size <= WindowLinearization.DENSE_STEP_SIZE and step_size * self.n_steps <= WindowLinearization.DENSE_WINDOW_SIZE
        if self.sweeps == WindowLinearization.DENSE_AFTER_SWEEPS and small:
            self.dense_steps = [DenseStepLinearization(_WindowStep(self, k), self.n_state) for k in range(self.n_steps)]


class _WindowStep:
    """Step ``k`` of a :class:`LocalMLPWindowLinearization` as a step linearisation (``output`` and a blocked ``ad``)."""

    def __init__(self, window: LocalMLPWindowLinearization, k: int):
        self.window, self.k = window, k
        self.output = window.states[k + 1]

    def ad(self, ax: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        window, width = self.window, self.window.n_stages * self.window.n_state
        AZ = np.empty((window.unit_starts[-1], width) + ax.shape[1:])
        ax_prev = window.step_ad(self.k, ax, AZ, 0)
        start = self.k * width
        return ax_prev, window.weights_ad(AZ, start, start + width)


def _rows(e: np.ndarray | None, n: int) -> np.ndarray:
    """A forcing, its increments or its adjoint ``e`` ``(n_steps, n)`` as the kernels take it (C-contiguous
    float, ``e`` itself when it is), or ``(0, n)`` for none."""
    return np.zeros((0, n)) if e is None else np.ascontiguousarray(e, dtype=float)


def _columns(F: np.ndarray, cols: slice, like: np.ndarray) -> np.ndarray:
    """``F[:, cols]`` shaped to multiply ``like`` (``(n_l, n)`` or a block ``(n_l, n, k)``)."""
    return F[:, cols] if like.ndim == 2 else F[:, cols, None]
