"""A physical model plus a learned correction, composed from the parts' TL and AD.

    x_{k+1} = M_phys(x_k, p_phys) + c(x_k, p_corr),    c(x, p_corr) = M_corr(x, p_corr) - x

The correction ``c`` is the increment the correction model's own step would add
(for a ``LocalMLP`` with Euler, ``dt * NN(stencils)``).  ``p = [p_phys; p_corr]``.

    TL   dx_{k+1} = M_phys'(dx, dp_phys) + M_corr'(dx, dp_corr) - dx
    AD   (ax_phys, ap_phys) = M_phys'^T ax ;  (ax_corr, ap_corr) = M_corr'^T ax
         ax_prev = ax_phys + ax_corr - ax ;   ap = [ap_phys; ap_corr]
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from fourdvar.model import ModelBase
from fourdvar.registry import build_model


def _as_model(spec: Any, role: str):
    if isinstance(spec, Mapping):
        return build_model(spec)
    if hasattr(spec, "linearize") and hasattr(spec, "n_state"):
        return spec
    raise TypeError(f"hybrid {role} must be a model or a mapping with a 'type' key, got {type(spec).__name__}")


class Hybrid(ModelBase):
    """``Hybrid(physics={"type": "lorenz96", ...}, correction={"type": "local_mlp", ...})``."""

    def __init__(self, physics: Mapping[str, Any] | Any, correction: Mapping[str, Any] | Any):
        self.physics = _as_model(physics, "physics")
        self.correction = _as_model(correction, "correction")
        if self.physics.n_state != self.correction.n_state:
            raise ValueError(
                f"hybrid physics and correction must share n_state, got {self.physics.n_state} "
                f"and {self.correction.n_state}"
            )
        self.n_state = self.physics.n_state
        self.n_params_physics = self.physics.n_params
        self.n_params = self.physics.n_params + self.correction.n_params

    @property
    def blocked_linearization(self) -> bool:
        """Blocked TL/AD when both parts have them (the composition is shape-agnostic)."""
        return bool(getattr(self.physics, "blocked_linearization", False) and getattr(self.correction, "blocked_linearization", False))

    @property
    def dt(self) -> float:
        """The physics model's time step (the correction steps in step with it)."""
        return self.physics.dt

    def split(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(p_phys, p_corr)`` as views of ``p``."""
        return p[: self.n_params_physics], p[self.n_params_physics :]

    def step(self, x: np.ndarray, p: np.ndarray) -> np.ndarray:
        x, p = self._inputs(x, p)
        p_phys, p_corr = self.split(p)
        return self.physics.step(x, p_phys) + self.correction.step(x, p_corr) - x

    def linearize(self, x: np.ndarray, p: np.ndarray) -> "HybridLinearization":
        x, p = self._inputs(x, p)
        return HybridLinearization(self, x, p)

    def init_params(self, rng: np.random.Generator) -> np.ndarray:
        return np.concatenate([self.physics.init_params(rng), self.correction.init_params(rng)])

    def __repr__(self) -> str:
        return f"Hybrid(physics={self.physics!r}, correction={self.correction!r})"


class HybridLinearization:
    """The hybrid step linearised: the physics' and the correction's linearisations, their sum's TL and AD."""

    def __init__(self, model: Hybrid, x: np.ndarray, p: np.ndarray):
        self.split = model.split
        p_phys, p_corr = model.split(p)
        self.physics = model.physics.linearize(x, p_phys)
        self.correction = model.correction.linearize(x, p_corr)
        self.output = self.physics.output + self.correction.output - x

    def tl(self, dx: np.ndarray, dp: np.ndarray) -> np.ndarray:
        dp_phys, dp_corr = self.split(dp)
        return self.physics.tl(dx, dp_phys) + self.correction.tl(dx, dp_corr) - dx

    def ad(self, ax: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ax_phys, ap_phys = self.physics.ad(ax)
        ax_corr, ap_corr = self.correction.ad(ax)
        return ax_phys + ax_corr - ax, np.concatenate([ap_phys, ap_corr])
