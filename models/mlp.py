"""A general multi-layer perceptron as the forecast step (the ECMWF derivation).

    x_{k+1} = a_L            with  a_0 = [x_k; 1],  z_i = W_i a_{i-1},  a_i = f_i(z_i)
    x_{k+1} = x_k + a_L      when ``residual=True``

TL and AD are those of :mod:`models.network` applied to the single column ``x_k``;
the residual connection adds ``dx`` in the TL and ``ax`` in the AD.

Parameter layout: ``p = [vec(W_1); vec(W_2); ...; vec(W_L)]``, each ``W_i`` of
shape ``(n_i, n_{i-1} + 1)`` flattened row-major with the bias ``b_i`` as its last
column, so ``W_i[r, :-1]`` are the input weights of unit ``r`` and ``W_i[r, -1]``
its bias.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from fourdvar.model import ModelBase, as_vector

from .network import Network


class MLP(ModelBase):
    """``MLP(layer_sizes=[n, h1, ..., n], activations=["tanh", ..., "identity"], residual=False)``."""

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

    def init_params(self, rng: np.random.Generator) -> np.ndarray:
        """Glorot-uniform weights and zero biases; a residual network starts at zero output."""
        return self.network.init_params(rng, output_scale=0.0 if self.residual else 1.0)

    def __repr__(self) -> str:
        names = [f.name for f in self.network.activations]
        return f"MLP(layer_sizes={self.network.layer_sizes}, activations={names}, residual={self.residual})"


class MLPLinearization:
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
