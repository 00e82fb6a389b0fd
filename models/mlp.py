"""A general multi-layer perceptron as the forecast step (the ECMWF derivation).

    x_{k+1} = a_L            with  a_0 = [x_k; 1],  z_i = W_i a_{i-1},  a_i = f_i(z_i)
    x_{k+1} = x_k + a_L      when ``residual=True``

TL and AD are those of :mod:`models.network` applied to the single column ``x_k``;
the residual connection adds ``dx`` in the TL and ``ax`` in the AD.

Over a whole window, :meth:`MLP.linearize_window` (the engine's optional hook,
see :mod:`fourdvar.window`) does the same TL and AD with the weight terms of all
steps batched into one matrix product per layer: :class:`MLPWindowLinearization`.

Parameter layout: ``p = [vec(W_1); vec(W_2); ...; vec(W_L)]``, each ``W_i`` of
shape ``(n_i, n_{i-1} + 1)`` flattened row-major with the bias ``b_i`` as its last
column, so ``W_i[r, :-1]`` are the input weights of unit ``r`` and ``W_i[r, -1]``
its bias.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from fourdvar.model import ModelBase, as_vector
from fourdvar.window import Window

from .network import Network


class MLP(ModelBase):
    """``MLP(layer_sizes=[n, h1, ..., n], activations=["tanh", ..., "identity"], residual=False)``.

    One step is the network (the module docstring has its NL, TL and AD)::

        a_0 = [x; 1],   z_i = W_i a_{i-1},   a_i = f_i(z_i),   x_next = a_L  (or x + a_L)

    with ``p = [vec(W_1); ...; vec(W_L)]``, each ``W_i`` of shape ``(n_i, n_{i-1} + 1)``
    flattened row-major with the bias as its last column.

    Parameters
    ----------
    layer_sizes : sequence of int
        ``[n, h_1, ..., n]``: the state size first and last.
    activations : sequence of str
        One per layer (:func:`models.activations.get_activation`).
    residual : bool, default False
        ``x_next = x + a_L`` instead of ``a_L``; :meth:`init_params` then starts at zero output.

    Raises
    ------
    ValueError
        Layer sizes that do not start and end with the same size, or an unknown activation.

    Examples
    --------
    >>> model = MLP([3, 8, 3], ["tanh", "identity"], residual=True)
    >>> model.n_state, model.n_params                 # 8 x (3 + 1) + 3 x (8 + 1)
    (3, 59)
    >>> p = model.init_params(np.random.default_rng(0))
    >>> model.step(np.array([1.0, 2.0, 3.0]), p)      # a residual network starts as the identity
    array([1., 2., 3.])
    """

    blocked_linearization = True  # TL/AD take (n, k) blocks of directions
    window_forcing = True  # linearize_window takes the forcing of weak constraint

    def __init__(self, layer_sizes: Sequence[int], activations: Sequence[str], residual: bool = False):
        self.network = Network(layer_sizes, activations)
        if self.network.layer_sizes[0] != self.network.layer_sizes[-1]:
            raise ValueError(
                f"layer_sizes must start and end with the state size, got {list(layer_sizes)} "
                f"({layer_sizes[0]} in, {layer_sizes[-1]} out)"
            )
        self.residual = bool(residual)
        self.n_state = self.network.layer_sizes[0]
        self.n_params = self.network.n_params

    def step(self, x: np.ndarray, p: np.ndarray) -> np.ndarray:
        x = as_vector(x, self.n_state, "state x")
        a_L = self.network.forward(x[:, None], as_vector(p, self.n_params, "parameters p"))[:, 0]
        return x + a_L if self.residual else a_L

    def linearize(self, x: np.ndarray, p: np.ndarray) -> "MLPLinearization":
        x = as_vector(x, self.n_state, "state x")
        return MLPLinearization(self, x, as_vector(p, self.n_params, "parameters p"))

    def linearize_window(self, x0: np.ndarray, p: np.ndarray, n_steps: int, forcing: np.ndarray | None = None) -> "MLPWindowLinearization":
        """The window ``x_0 .. x_K`` linearised, weight terms batched over the steps (see the class)."""
        x0 = as_vector(x0, self.n_state, "state x0")
        return MLPWindowLinearization(self, x0, as_vector(p, self.n_params, "parameters p"), int(n_steps), forcing)

    def init_params(self, rng: np.random.Generator) -> np.ndarray:
        """Glorot-uniform weights and zero biases; a residual network starts at zero output."""
        return self.network.init_params(rng, output_scale=0.0 if self.residual else 1.0)

    def __repr__(self) -> str:
        names = [f.name for f in self.network.activations]
        return f"MLP(layer_sizes={self.network.layer_sizes}, activations={names}, residual={self.residual})"


class MLPLinearization:
    """One MLP step linearised at ``(x, p)``: the network's activations kept for ``tl`` and ``ad``.

    ``output`` is the step's value, ``tl(dx, dp)`` its TL and ``ad(ax) -> (ax_prev, ap)`` its AD
    (with the residual's identity added when ``residual``).
    """

    def __init__(self, model: MLP, x: np.ndarray, p: np.ndarray):
        self.residual = model.residual
        self.net = model.network.linearize(x[:, None], p)
        a_L = self.net.output[:, 0]
        self.output = x + a_L if self.residual else a_L

    def tl(self, dx: np.ndarray, dp: np.ndarray) -> np.ndarray:
        da_L = self.net.tl(dx[:, None], dp)[:, 0]
        return dx + da_L if self.residual else da_L

    def ad(self, ax: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        aa_0, ap = self.net.ad(ax[:, None])
        ax_prev = aa_0[:, 0]
        return (ax_prev + ax if self.residual else ax_prev), ap


class MLPWindowLinearization(Window):
    """The MLP over a window of ``K`` steps, linearised, with the weight terms batched over steps.

    Step ``k`` (``k = 0 .. K-1``) is the network on the column ``x_k``; stacking
    the columns of all steps side by side gives matrices with one column per step::

        A_{i-1} = [a_{i-1}^0 ... a_{i-1}^{K-1}]      (n_{i-1} + 1, K), bias row included
        F_i     = [f_i'(z_i^0) ... f_i'(z_i^{K-1})]  (n_i, K)

    The TL and AD of step ``k`` are those of :mod:`models.network`, except that the
    terms that do not depend on the propagated increment are taken out of the
    sequential sweep and done for all steps in one matrix product per layer::

        NL   for k = 0 .. K-1:  a_0^k = [x_k; 1]
                                z_i^k = W_i a_{i-1}^k ;  a_i^k = f_i(z_i^k)      i = 1 .. L
                                x_{k+1} = x_k + a_L^k   (residual; a_L^k otherwise)

        TL   dWA_i = dW_i A_{i-1}                      one GEMM per layer, all steps (weights_tl)
             for k = 0 .. K-1:  da_0 = dx_k
                                dz_i = W_i[:, :-1] da_{i-1} + dWA_i[:, k]
                                da_i = F_i[:, k] * dz_i                          i = 1 .. L
                                dx_{k+1} = dx_k + da_L  (residual; da_L otherwise)

        AD   ax = f_K
             for k = K .. 1:    aa_L = ax
                                AZ_i[:, k-1] = F_i[:, k-1] * aa_i
                                aa_{i-1} = W_i[:, :-1]^T AZ_i[:, k-1]            i = L .. 1
                                ax = aa_0 + ax          (residual; aa_0 otherwise)
                                ax += f_{k-1}
             aW_i = AZ_i A_{i-1}^T                     one GEMM per layer, all steps (weights_ad)

    ``aW_i = AZ_i A_{i-1}^T = sum_k az_i^k (a_{i-1}^k)^T`` is the per-step weight
    adjoint summed over the window, which is what the window's ``ap`` is.  A
    layer with the identity activation has no ``F_i`` (``None``).  The bias row
    of ``W_i`` multiplies the constant 1 of ``a_{i-1}``: it is in ``dWA_i`` and
    ``aW_i``, never in ``W_i[:, :-1]`` (``W_in`` in the code).  The arrays are
    Fortran-ordered so that each step's column is contiguous.

    This is :class:`fourdvar.window.WindowLinearization` for the MLP, made fast:
    same ``states``, ``tl`` and ``ad`` (see :mod:`fourdvar.window` for the contract),
    blocked as well: with ``k`` directions (``dx0`` ``(n, k)``, ``dp`` ``(n_params, k)``,
    forcings ``(n, k)``) ``dWA_i`` and ``AZ_i`` gain a last axis of ``k`` and the
    sweeps above run on ``(n_i, k)`` columns.  With the forcing of weak constraint ``e_k``
    is added to ``x_k`` after step ``k``, ``de_k`` to ``dx_k``, and ``ae_k`` is ``ax`` there.
    """

    blocked = True

    def __init__(self, model: MLP, x0: np.ndarray, p: np.ndarray, n_steps: int, forcing: np.ndarray | None = None):
        if n_steps < 0:
            raise ValueError(f"the window must have at least 0 steps, got {n_steps}")
        network = model.network
        self.network = network
        self.residual = model.residual
        self.n_state, self.n_params = model.n_state, model.n_params
        self.n_steps = K = n_steps
        self.W = network.weights(p)
        self.W_in = [W[:, :-1] for W in self.W]  # the input weights, without the bias column
        self.A_prev = []  # A_{i-1}, (n_{i-1} + 1, K)
        self.F = []  # F_i = f_i'(Z_i), (n_i, K), or None for the identity
        for n_in, n_out, f in zip(network.layer_sizes[:-1], network.layer_sizes[1:], network.activations):
            A = np.empty((n_in + 1, K), order="F")
            A[-1] = 1.0
            self.A_prev.append(A)
            self.F.append(None if f.derivative is None else np.empty((n_out, K), order="F"))

        self.states = np.empty((K + 1, self.n_state))
        self.states[0] = x0
        for k in range(K):
            x = self.states[k]
            self.A_prev[0][:-1, k] = x
            for i, (W, f) in enumerate(zip(self.W, network.activations)):
                z = W @ self.A_prev[i][:, k]
                a = f.f(z)
                if self.F[i] is not None:
                    self.F[i][:, k] = f.derivative(a)
                if i + 1 < network.n_layers:
                    self.A_prev[i + 1][:-1, k] = a
            self.states[k + 1] = x + a if self.residual else a
            if forcing is not None:
                self.states[k + 1] += forcing[k]

    def tl(self, dx0: np.ndarray, dp: np.ndarray, last_step: int | None = None, de: np.ndarray | None = None) -> list[np.ndarray]:
        """``[dx_0, dx_1, ..., dx_K]`` with ``K = last_step`` (default: the whole window); ``de_k`` added after step ``k``."""
        K = self.n_steps if last_step is None else min(last_step, self.n_steps)
        dWA = self.weights_tl(dp, K)
        dx = [dx0]
        for k in range(K):
            da = dx[k]
            for W_in, dWA_i, F in zip(self.W_in, dWA, self.F):
                dz = W_in @ da
                dz += dWA_i[:, k]
                da = dz if F is None else np.multiply(_columns(F, k, dz), dz, out=dz)
            dx.append(dx[k] + da if self.residual else da)
            if de is not None:
                dx[-1] += de[k]
        return dx

    def ad(self, forcings: Mapping[int, np.ndarray], ae: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(ax_0, ap)`` for adjoint forcings ``{k: f_k}`` injected at steps ``k``; ``ap`` summed over the window;
        ``ae_k`` (the adjoint of the forcing after step ``k``) into ``ae``."""
        K = max(forcings, default=0)
        block = next(iter(forcings.values())).shape[1:] if forcings else ()
        AZ = [np.empty((W_in.shape[0], K) + block, order="F") for W_in in self.W_in]
        ax = np.zeros((self.n_state,) + block)
        if ae is not None:
            ae[...] = 0.0
        for k in range(K, 0, -1):
            if k in forcings:
                ax = ax + forcings[k]
            if ae is not None:
                ae[k - 1] = ax
            aa = ax
            for W_in, AZ_i, F in zip(self.W_in[::-1], AZ[::-1], self.F[::-1]):
                az = AZ_i[:, k - 1]
                if F is None:
                    az[:] = aa
                else:
                    np.multiply(_columns(F, k - 1, aa), aa, out=az)
                aa = W_in.T @ az
            ax = aa + ax if self.residual else aa
        if 0 in forcings:
            ax = ax + forcings[0]
        ap = self.weights_ad(AZ, K)
        return ax, ap

    def weights_tl(self, dp: np.ndarray, K: int) -> list[np.ndarray]:
        """``dWA_i = dW_i A_{i-1}`` over steps ``0 .. K-1``: one matrix product per layer.

        Blocked (``dp`` of shape ``(n_params, k)``): ``dWA_i[:, :, d] = dW_i[:, :, d] A_{i-1}``, shape ``(n_i, K, k)``."""
        dWA = []
        for dW_i, A in zip(self.network.weights(dp), self.A_prev):
            if dp.ndim == 2:
                dWA.append(np.einsum("rcd,cs->rsd", dW_i, A[:, :K], optimize=True))
            else:
                dWA.append(np.matmul(dW_i, A[:, :K], out=np.empty((dW_i.shape[0], K), order="F")))
        return dWA

    def weights_ad(self, AZ: list[np.ndarray], K: int) -> np.ndarray:
        """``ap`` holding ``aW_i = AZ_i A_{i-1}^T`` over steps ``0 .. K-1``: one matrix product per layer.

        Blocked (``AZ_i`` of shape ``(n_i, K, k)``): ``aW_i[:, :, d] = AZ_i[:, :, d] A_{i-1}^T``, ``ap`` ``(n_params, k)``."""
        ap = np.empty((self.n_params,) + AZ[0].shape[2:])
        for aW_i, AZ_i, A in zip(self.network.weights(ap), AZ, self.A_prev):
            if ap.ndim == 2:
                np.einsum("rsd,cs->rcd", AZ_i, A[:, :K], out=aW_i, optimize=True)
            else:
                np.matmul(AZ_i, A[:, :K].T, out=aW_i)
        return ap


def _columns(F: np.ndarray, k: int, like: np.ndarray) -> np.ndarray:
    """Step ``k``'s ``f_i'(z_i)``, a column of ``F``, shaped to multiply ``like`` (``(n_i,)`` or a block ``(n_i, k)``)."""
    return F[:, k] if like.ndim == 1 else F[:, k, None]
