"""A physical model plus a learned correction, composed from the parts' TL and AD.

:class:`Hybrid`, the correction after the step (the resolvent form)::

    x_{k+1} = M_phys(x_k, p_phys) + c(x_k, p_corr),    c(x, p_corr) = M_corr(x, p_corr) - x

The correction ``c`` is the increment the correction model's own step would add
(for a ``LocalMLP`` or ``ConvSurrogate`` with Euler, ``dt * NN(x)``).  ``p = [p_phys; p_corr]``.

    TL   dx_{k+1} = M_phys'(dx, dp_phys) + M_corr'(dx, dp_corr) - dx
    AD   (ax_phys, ap_phys) = M_phys'^T ax ;  (ax_corr, ap_corr) = M_corr'^T ax
         ax_prev = ax_phys + ax_corr - ax ;   ap = [ap_phys; ap_corr]

:class:`TendencyHybrid`, the correction inside the step (the tendency form): the
correction model's tendency ``g`` (for a ``ConvSurrogate``, ``c NN(x / s)``) is added to
the physics model's ``f``, and the sum goes through the physics model's integrator
and, when it has one, its linear post-step filter ``F`` (the QG model's spectral filter)::

    dx/dt = h(x, p) = f(x, p_phys) + g(x, p_corr)          x_{k+1} = F(RK(h, x_k, p))

    TL   dh = f'(dx, dp_phys) + g'(dx, dp_corr)            dx_{k+1} = F(RK'(dh; dx, dp))
    AD   ax_rk = F^T ax_{k+1} ;  (ax, ap) = RK'^T ax_rk with, inside each stage,
         (ax_f, ap_phys) = f'^T ah ;  (ax_g, ap_corr) = g'^T ah ;  ax = ax_f + ax_g ;  ap = [ap_phys; ap_corr]
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from fourdvar.interfaces import declared
from fourdvar.model import ModelBase, as_vector
from fourdvar.registry import build_model


#: what a hybrid takes over from its physics model when it has them: the 2-D grid and its
#: linear diagnostic, for the observation operators on gridded states (:mod:`observations.grid2d`)
PHYSICS_GRID = ("nx", "ny", "L", "W", "x", "y", "streamfunction", "streamfunction_ad")


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
        for name in PHYSICS_GRID:
            if hasattr(self.physics, name):
                setattr(self, name, getattr(self.physics, name))
        self.n_params_physics = self.physics.n_params
        self.n_params = self.physics.n_params + self.correction.n_params

    @property
    def blocked_linearization(self) -> bool:
        """Blocked TL/AD when both parts have them (the composition is shape-agnostic)."""
        return bool(declared(self.physics, "blocked_linearization") and declared(self.correction, "blocked_linearization"))

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


class SumTendency:
    """``h(x, p) = f(x, p[:n_f]) + g(x, p[n_f:])`` for two tendencies (``evaluate``, ``linearize``)."""

    def __init__(self, f, g, n_params_f: int):
        self.f, self.g, self.n_params_f = f, g, n_params_f

    def evaluate(self, x: np.ndarray, p: np.ndarray) -> np.ndarray:
        return self.f.evaluate(x, p[: self.n_params_f]) + self.g.evaluate(x, p[self.n_params_f :])

    def linearize(self, x: np.ndarray, p: np.ndarray) -> "SumTendencyLinearization":
        return SumTendencyLinearization(self, x, p)


class SumTendencyLinearization:
    """``h = f + g`` linearised at ``(x, p)``: TL ``dh = f'(dx, dp_f) + g'(dx, dp_g)``;
    AD ``ax = f_x^T ah + g_x^T ah``, ``ap = [f_p^T ah; g_p^T ah]``."""

    def __init__(self, h: SumTendency, x: np.ndarray, p: np.ndarray):
        self.n_params_f = h.n_params_f
        self.f = h.f.linearize(x, p[: h.n_params_f])
        self.g = h.g.linearize(x, p[h.n_params_f :])
        self.output = self.f.output + self.g.output

    def tl(self, dx: np.ndarray, dp: np.ndarray) -> np.ndarray:
        return self.f.tl(dx, dp[: self.n_params_f]) + self.g.tl(dx, dp[self.n_params_f :])

    def ad(self, ah: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ax_f, ap_f = self.f.ad(ah)
        ax_g, ap_g = self.g.ad(ah)
        return ax_f + ax_g, np.concatenate([ap_f, ap_g])


def _tendency_of(model, role: str):
    """The tendency a model integrates: ``physics_tendency`` (a model whose ``tendency`` is a method) or ``tendency``."""
    tendency = getattr(model, "physics_tendency", None) or getattr(model, "tendency", None)
    if not (hasattr(tendency, "evaluate") and hasattr(tendency, "linearize")):
        raise TypeError(f"tendency hybrid {role} {type(model).__name__} has no tendency object (physics_tendency or tendency "
                        "with evaluate and linearize)")
    return tendency


class TendencyHybrid(Hybrid):
    """``TendencyHybrid(physics={"type": "qg", ...}, correction={"type": "conv_surrogate", ...})``: the tendency form.

    The physics model supplies its tendency, its ``integrator`` (the time step) and,
    if it has them, ``spectral_filter`` / ``spectral_filter_ad`` applied after the
    step; the correction model supplies only its tendency (its own ``dt`` and
    integrator are not used).  Parameters as :class:`Hybrid`'s, ``[p_phys; p_corr]``.
    """

    def __init__(self, physics: Mapping[str, Any] | Any, correction: Mapping[str, Any] | Any):
        super().__init__(physics, correction)
        if not hasattr(self.physics, "integrator"):
            raise TypeError(f"tendency hybrid physics {type(self.physics).__name__} has no integrator to step the summed tendency")
        self.tendency = SumTendency(_tendency_of(self.physics, "physics"), _tendency_of(self.correction, "correction"), self.n_params_physics)
        self.integrator = self.physics.integrator
        self.filter = getattr(self.physics, "spectral_filter", None)
        self.filter_ad = getattr(self.physics, "spectral_filter_ad", None)

    @property
    def unresolved_tendency(self):
        """``x -> g(x)``: the correction's tendency, the term the physics model alone lacks.  Present
        only when the correction has no parameters (a fixed physical process, such as
        :class:`models.damping.LinearDamping`): a truth whose missing term is known."""
        if self.correction.n_params:
            raise AttributeError("unresolved_tendency: the correction has parameters")
        return lambda x: self.tendency.g.evaluate(as_vector(x, self.n_state, "state x"), np.empty(0))

    def step(self, x: np.ndarray, p: np.ndarray) -> np.ndarray:
        x_next = self.integrator.step(self.tendency, *self._inputs(x, p))
        return x_next if self.filter is None else self.filter(x_next)

    def linearize(self, x: np.ndarray, p: np.ndarray) -> "TendencyHybridLinearization":
        return TendencyHybridLinearization(self, *self._inputs(x, p))

    def __repr__(self) -> str:
        return f"TendencyHybrid(physics={self.physics!r}, correction={self.correction!r})"


class TendencyHybridLinearization:
    """One tendency-hybrid step linearised at ``(x, p)``: the RK step of ``f + g``, then the
    filter ``F`` when the physics has one.  TL ``dx_next = F RK'(dx, dp)``; AD ``(ax, ap) = RK'^T F^T ax``."""

    def __init__(self, model: TendencyHybrid, x: np.ndarray, p: np.ndarray):
        self.filter, self.filter_ad = model.filter, model.filter_ad
        self.rk = model.integrator.linearize(model.tendency, x, p)
        self.output = self.rk.output if self.filter is None else self.filter(self.rk.output)

    def tl(self, dx: np.ndarray, dp: np.ndarray) -> np.ndarray:
        dx_rk = self.rk.tl(dx, dp)
        return dx_rk if self.filter is None else self.filter(dx_rk)

    def ad(self, ax: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ax_rk = ax if self.filter_ad is None else self.filter_ad(ax)
        return self.rk.ad(ax_rk)
