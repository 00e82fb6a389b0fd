"""The 4D-Var cost function, nonlinear and incremental, with their adjoint gradients.

Nonlinear cost over a window of ``L`` steps, weak constraint adding the forcing ``eta_j``
of sub-window ``j`` (``every`` steps) after each of its steps (background 0)::

    J(x0, p, eta) = 1/2 |x0 - xb|^2_{B^-1} + 1/2 |p - pb|^2_{P^-1} + 1/2 sum_j |eta_j|^2_{Q^-1}
                  + 1/2 sum_k |H_k(x_k) - y_k|^2_{R_k^-1},    x_k = M(x_{k-1}, p) + eta_{j(k)}
                  = Jb + Jp + Jm + Jo

Incremental (quadratic) cost around an outer-loop guess ``(x0^i, p^i, eta^i)``, with
innovations ``d_k = y_k - H_k(x_k^i)``, its background terms at ``guess - background + increment``::

    Jq(dx0, dp, deta) = Jb + Jp + Jm + 1/2 sum_k |H_k dx_k - d_k|^2_{R_k^-1}

and its gradient, the ECMWF algorithm::

    z_k = R_k^-1 (H_k dx_k - d_k)                     dx_k from the TL, forward
    (ax, ap, ae) = sum_k M_{k:0}^T H_k^T z_k          the AD, backward; aeta_j = sum_{k in j} ae_k
    grad_dx0 = B^-1 (x0^i - xb + dx0) + ax,  grad_dp = P^-1 (p^i - pb + dp) + ap,
    grad_deta_j = Q^-1 (eta^i_j + deta_j) + aeta_j

The nonlinear gradient is the same sweep with ``H_k(x_k) - y_k`` in place of
``H_k dx_k - d_k``, so ``grad Jq(0) == grad J(x0^i, p^i, eta^i)`` by construction.  The
inner loop's control vector ``u`` is a :class:`~fourdvar.control.ControlSpace` of the blocks
``x0`` (with ``B``), ``p`` (``P``) and ``eta`` (``Q``), with the control-variable transform or without.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .control import Block, ControlSpace, apply_rows, each_column
from .model import as_vector
from .window import (DivergenceError, Window, ad_block, forecast, linearize_window, n_sub_windows, sub_window_forcing,
                     sub_window_sums, tl_block)

__all__ = ["CostTerms", "Control", "FourDVarCost", "IncrementalCost"]


@dataclass(frozen=True)
class CostTerms:
    """``J = Jb + Jp + Jo + Jm``, ``Jm`` the model-error term (0 in strong constraint)."""

    Jb: float
    Jp: float
    Jo: float
    Jm: float = 0.0

    @property
    def J(self) -> float:
        return self.Jb + self.Jp + self.Jo + self.Jm


#: the parts a control may hold and the block each puts in the control space
_BLOCKS = {"state": "x0", "params": "p", "model_error": "eta"}


@dataclass(frozen=True)
class Control:
    """Which parts of ``(x0, p, eta)`` the minimisation changes."""

    state: bool = True
    params: bool = False
    model_error: bool = False

    @classmethod
    def parse(cls, control) -> "Control":
        """``"state"``, ``"params"``, ``"model_error"``, ``"both"`` (state and params) or a list of those names."""
        if isinstance(control, Control):
            return control
        names = {"state", "params"} if control == "both" else ({control} if isinstance(control, str) else set(control))
        if names - set(_BLOCKS) or not names:
            raise ValueError("control must name 'state' and/or 'params' (or 'both'), and optionally 'model_error', "
                             f"got {control!r}")
        return cls(**{name: name in names for name in _BLOCKS})

    def names(self) -> list[str]:
        return [name for name in _BLOCKS if getattr(self, name)]


def _quadratic_term(covariance, departure: np.ndarray) -> tuple[float, np.ndarray]:
    """``(1/2 e^T C^-1 e, C^-1 e)``."""
    weighted = covariance.solve(departure)
    return 0.5 * float(departure @ weighted), weighted


def _finite(vector, size: int, name: str) -> np.ndarray:
    array = as_vector(vector, size, name)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def _sized(covariance, size: int, name: str):
    if covariance is not None and covariance.size != size:
        raise ValueError(f"{name} has size {covariance.size}, expected {size}")
    return covariance


class FourDVarCost:
    """``J(x0, p, eta)`` for a model, the observations of one window and a background.

    ``observations``: slots with ``step`` (from 0 at the window start), ``values``, ``operator``
    and ``covariance`` (:class:`fourdvar.interfaces.ObservationSlot`).  A term whose covariance
    (``B``, ``P``, ``Q``) is ``None`` is left out, its part of the control fixed.  ``Q`` makes the
    cost weak-constraint, one forcing per sub-window of ``model_error_every`` steps (default: the
    whole window); ``eta``, ``(n_sub, n_state)``, defaults to zero.
    """

    def __init__(self, model, observations: Sequence, xb: np.ndarray, B=None, pb: np.ndarray | None = None, P=None,
                 n_steps: int | None = None, Q=None, model_error_every: int | None = None):
        self.model = model
        self.slots = sorted(observations, key=lambda slot: slot.step)
        self.n_steps = self.last_observed_step if n_steps is None else int(n_steps)
        if self.n_steps < 0:
            raise ValueError(f"the window must have at least 0 steps, got {self.n_steps}")
        for slot in self.slots:
            if not 0 <= slot.step <= self.n_steps:
                raise ValueError(f"an observation at step {slot.step} lies outside the window of {self.n_steps} steps")
            if np.shape(slot.values) != (slot.operator.n_obs,):
                raise ValueError(f"observations at step {slot.step}: {np.shape(slot.values)} values for an operator "
                                 f"with n_obs={slot.operator.n_obs}")
        self.xb = _finite(xb, model.n_state, "background state xb")
        self.B = _sized(B, model.n_state, "B")
        self.pb = _finite(np.zeros(0) if pb is None else pb, model.n_params, "background parameters pb")
        self.P = _sized(P, model.n_params, "P")
        self.Q = _sized(Q, model.n_state, "Q")
        self.every, self.n_sub = self._model_error_layout(model_error_every)

    def _model_error_layout(self, every) -> tuple[int | None, int]:
        """``(every, n_sub)``: ``(None, 0)`` in strong constraint."""
        if self.Q is None:
            if every is not None:
                raise ValueError("model_error_every was given without a model-error covariance Q")
            return None, 0
        if self.n_steps < 1:
            raise ValueError("a weak-constraint window needs at least 1 step")
        every = self.n_steps if every is None else every
        if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
            raise ValueError(f"model_error_every must be a positive integer, got {every!r}")
        return int(every), n_sub_windows(self.n_steps, every)

    def checked_model_error(self, eta) -> np.ndarray | None:
        """``eta`` as an ``(n_sub, n_state)`` array (zeros when ``None``); ``None`` in strong constraint."""
        if self.Q is None:
            if eta is not None:
                raise ValueError("a model-error forcing eta was given to a strong-constraint cost (no Q)")
            return None
        if eta is None:
            return np.zeros((self.n_sub, self.model.n_state))
        eta = np.asarray(eta, dtype=float)
        if eta.shape != (self.n_sub, self.model.n_state):
            raise ValueError(f"the model-error forcing eta must have shape ({self.n_sub}, {self.model.n_state}), "
                             f"got {eta.shape}")
        if not np.all(np.isfinite(eta)):
            raise ValueError("the model-error forcing eta contains NaN or infinite values")
        return eta

    @property
    def last_observed_step(self) -> int:
        return max((slot.step for slot in self.slots), default=0)

    def forcing(self, eta: np.ndarray | None, n_steps: int | None = None) -> np.ndarray | None:
        """``e_k = eta_{j(k)}``, ``(n_steps, n_state)`` (default: to the last observed step); ``None`` in strong
        constraint."""
        eta = self.checked_model_error(eta)
        n_steps = self.last_observed_step if n_steps is None else n_steps
        return None if eta is None else sub_window_forcing(eta, self.every, n_steps)

    def window(self, x0: np.ndarray, p: np.ndarray, context: str = "", eta: np.ndarray | None = None) -> Window:
        """The (forced) nonlinear run to the last observation, linearised: :func:`fourdvar.window.linearize_window`."""
        return linearize_window(self.model, x0, p, self.last_observed_step, context=context, forcing=self.forcing(eta))

    def trajectory(self, x0: np.ndarray, p: np.ndarray, eta: np.ndarray | None = None, n_steps: int | None = None,
                   context: str = "") -> np.ndarray:
        """The nonlinear (forced) trajectory ``x_0 .. x_n``, ``n`` the window length by default."""
        n_steps = self.n_steps if n_steps is None else n_steps
        return forecast(self.model, x0, p, n_steps, context=context, forcing=self.forcing(eta, n_steps))

    def control_blocks(self, control, x0: np.ndarray | None = None, p: np.ndarray | None = None,
                       eta: np.ndarray | None = None) -> list[Block]:
        """The non-empty blocks ``control`` (a :class:`Control` or its names) puts in the control vector:
        ``x0`` (with ``B``), ``p`` (``P``), ``eta`` (``Q``, a row per sub-window), in that order, each with
        its departure from the background at ``(x0, p, eta)`` (default: the background)."""
        names = [_BLOCKS[name] for name in Control.parse(control).names()]
        x0, p, eta = self.xb if x0 is None else x0, self.pb if p is None else p, self.checked_model_error(eta)
        terms = (("x0", self.B, x0 - self.xb), ("p", self.P, p - self.pb), ("eta", self.Q, eta))
        blocks = [Block(name, C, np.reshape(e, (-1, np.shape(e)[-1])))
                  for name, C, e in terms if name in names and C is not None]
        return [block for block in blocks if block.size]

    def model_error_terms(self, eta: np.ndarray | None) -> tuple[float, np.ndarray]:
        """``(Jm, Q^-1 eta_j per row)``; ``(0, (0, n_state) array)`` without ``Q``."""
        eta = self.checked_model_error(eta)
        if eta is None:
            return 0.0, np.zeros((0, self.model.n_state))
        weighted = apply_rows(self.Q.solve, eta)
        return 0.5 * float(np.vdot(eta, weighted)), weighted

    def background_terms(self, x0: np.ndarray, p: np.ndarray) -> tuple[float, float, np.ndarray, np.ndarray]:
        """``(Jb, Jp, B^-1 (x0 - xb), P^-1 (p - pb))``; zero for a term left out."""
        Jb, gb = _quadratic_term(self.B, x0 - self.xb) if self.B is not None else (0.0, np.zeros_like(x0))
        Jp, gp = _quadratic_term(self.P, p - self.pb) if self.P is not None else (0.0, np.zeros_like(p))
        return Jb, Jp, gb, gp

    def evaluate(self, x0: np.ndarray, p: np.ndarray, eta: np.ndarray | None = None) -> CostTerms:
        """``J(x0, p, eta)`` and its terms, by one nonlinear (forced) forecast."""
        trajectory = self.trajectory(x0, p, eta, n_steps=self.last_observed_step, context="cost evaluation")
        Jo = sum(_quadratic_term(slot.covariance, slot.operator.apply(trajectory[slot.step]) - slot.values)[0]
                 for slot in self.slots)
        Jb, Jp, _, _ = self.background_terms(x0, p)
        Jm, _ = self.model_error_terms(eta)
        return CostTerms(Jb, Jp, float(Jo), Jm)

    def gradient(self, x0: np.ndarray, p: np.ndarray, eta: np.ndarray | None = None) -> tuple[CostTerms, np.ndarray, np.ndarray]:
        """``(terms, grad_x0 J, grad_p J)``: :meth:`full_gradient` without ``grad_eta J`` (``grad_p`` has no
        ``Jp`` part when ``P`` is ``None``)."""
        return self.full_gradient(x0, p, eta)[:3]

    def linearise(self, x0: np.ndarray, p: np.ndarray, eta: np.ndarray | None = None, **options) -> tuple["IncrementalCost", tuple]:
        """``(Jq, (terms, gradient) of Jq at 0)``, ``Jq`` the :class:`IncrementalCost` at ``(x0, p, eta)``."""
        jq = IncrementalCost(self, x0, p, eta=eta, **options)
        return jq, jq.value_and_gradient(np.zeros(jq.size))

    def full_gradient(self, x0: np.ndarray, p: np.ndarray, eta: np.ndarray | None = None):
        """``(terms, grad_x0 J, grad_p J, grad_eta J)`` by one forward and one adjoint sweep, ``grad_eta J``
        ``(n_sub, n_state)`` (``(0, n_state)`` in strong constraint)."""
        eta = self.checked_model_error(eta)
        window = self.window(x0, p, "cost gradient", eta)
        linearised = ((slot, slot.operator.linearize(window.states[slot.step])) for slot in self.slots)
        Jo, forcings = _observation_term((slot, H, H.output - slot.values) for slot, H in linearised)
        ax, ap, aeta = self.window_adjoint(window.ad, forcings, window.n_steps, model_error=eta is not None)
        Jb, Jp, gb, gp = self.background_terms(x0, p)
        gb += ax  # in place: no further parameter-sized temporary
        gp += ap
        Jm, geta = self.model_error_terms(eta)
        if aeta is not None:
            geta += aeta
        return CostTerms(Jb, Jp, Jo, Jm), gb, gp, geta

    def window_adjoint(self, ad, forcings: dict, n_steps: int, model_error: bool, block: tuple = ()) -> tuple:
        """``(ax, ap, aeta)`` of a window's AD ``ad`` over ``n_steps`` steps, ``aeta_j = sum_{k in j} ae_k``
        (``None`` without ``model_error``); ``block``: the columns' shape, ``(k,)`` for ``k`` at once."""
        if not model_error:
            return (*ad(forcings), None)
        ae = np.empty((n_steps, self.model.n_state) + block)
        ax, ap = ad(forcings, ae=ae)
        return ax, ap, sub_window_sums(ae, self.every, self.n_sub)


def _add_forcing(forcings: dict, step: int, forcing: np.ndarray) -> None:
    forcings[step] = forcings[step] + forcing if step in forcings else forcing


def _observation_term(residuals) -> tuple[float, dict]:
    """``(Jo, {k: f_k})`` of ``(slot, H_k, r_k)``: ``Jo = 1/2 sum_k r_k^T R_k^-1 r_k``, ``f_k = H_k^T R_k^-1 r_k``."""
    Jo, forcings = 0.0, {}
    for slot, H, r in residuals:
        J_k, z = _quadratic_term(slot.covariance, r)
        Jo += J_k
        _add_forcing(forcings, slot.step, H.ad(z))
    return Jo, forcings


#: the covariance a part of the control needs, in the words of the message when it is missing
_NEEDS = {"state": ("B", "the state is", "background covariance B"),
          "params": ("P", "the parameters are", "parameter covariance P"),
          "model_error": ("Q", "the model error is", "model-error covariance Q")}


class IncrementalCost:
    """``Jq`` around ``(x0^i, p^i, eta^i)`` as a function of the control vector ``u``.

    ``u`` holds the blocks in the control (:meth:`FourDVarCost.control_blocks`): with
    ``transform=True`` each block is ``C^-1/2`` times its increment (``v = B^-1/2 dx0``,
    ``w = P^-1/2 dp``, ``w_eta_j = Q^-1/2 deta_j``), otherwise the increment.  A part not in the
    control keeps its guess and its constant background term, so ``Jq(0) == J``.  The trajectory,
    innovations and linearisations are computed here once.  Results are assembled in place in
    the one array returned (the parameter block can hold millions of values), and the control
    space has work arrays: one instance is not for concurrent calls.
    """

    def __init__(self, cost: FourDVarCost, x0: np.ndarray, p: np.ndarray, control="state", transform: bool = True,
                 outer_loop: int = 0, eta: np.ndarray | None = None):
        self.cost = cost
        self.control = Control.parse(control)
        self.transform = bool(transform)
        self.x0 = np.asarray(x0, dtype=float)
        self.p = np.asarray(p, dtype=float)
        self.context = f"outer loop {outer_loop}"
        for name in self.control.names():
            covariance, subject, needed = _NEEDS[name]
            if getattr(cost, covariance) is None and (name != "params" or cost.model.n_params):
                raise ValueError(f"{subject} in the control but no {needed} was given")
        self.eta = cost.checked_model_error(eta)
        self.window = cost.window(self.x0, self.p, context=self.context, eta=self.eta)
        self.observations = []  # (slot, H linearised at x_k^i, innovation d_k)
        for slot in cost.slots:
            H = slot.operator.linearize(self.window.states[slot.step])
            d = slot.values - H.output
            if not np.all(np.isfinite(d)):
                raise DivergenceError(f"{self.context}: innovations at step {slot.step} are not finite")
            self.observations.append((slot, H, d))
        Jb, Jp, _, _ = cost.background_terms(self.x0, self.p)
        Jm, _ = cost.model_error_terms(self.eta)
        self.space = ControlSpace(cost.control_blocks(self.control, self.x0, self.p, self.eta), self.transform)
        # a part not in the control keeps its (constant) background term, so Jq(0) == J(x0^i, p^i, eta^i)
        self.fixed = {name: (0.0 if name in self.space else J) for name, J in (("x0", Jb), ("p", Jp), ("eta", Jm))}
        self.size = self.space.size
        self.n_x, self.n_p = (len(range(self.size)[self.space.slice(name)]) for name in ("x0", "p"))
        self._zero = [np.zeros(cost.model.n_state), np.zeros(cost.model.n_params)]

    # --- control vector <-> increments ---------------------------------------------------

    def _increments(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``(dx0, dp, deta)`` of ``u`` for the TL, which only reads them: work arrays, views of ``u``
        or zeros for a part not in the control (``deta`` ``None``)."""
        d = dict(zip(self.space.index, self.space.increments(u)))
        return d["x0"][0] if "x0" in d else self._zero[0], d["p"][0] if "p" in d else self._zero[1], d.get("eta")

    def increments(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(dx0, dp)`` for the control vector ``u`` (zero for a part not in the control), fresh arrays."""
        dx0, dp, _ = self._increments(u)
        return dx0.copy(), dp.copy()

    def model_error_increment(self, u: np.ndarray) -> np.ndarray | None:
        """``deta`` ``(n_sub, n_state)`` for ``u``, a fresh array; ``None`` when not in the control."""
        deta = self._increments(u)[2]
        return None if deta is None else deta.copy()

    def _adjoints(self, ax: np.ndarray, ap: np.ndarray, aeta) -> list[np.ndarray]:
        """The adjoints of the blocks in the control, in their order, each ``(rows, n)`` (``(rows, n, k)``)."""
        named = {"x0": ax[None], "p": ap[None], "eta": aeta}
        return [named[name] for name in self.space.index]

    def control_gradient(self, ax: np.ndarray, ap: np.ndarray, aeta: np.ndarray | None = None) -> np.ndarray:
        """``[B^T/2 ax; P^T/2 ap; Q^T/2 aeta_j]`` (``[ax; ap; aeta]`` without the transform): the adjoint of
        :meth:`increments`, which takes ``(grad_x0 J, grad_p J, grad_eta J)`` to the gradient w.r.t. ``u``."""
        aeta = np.zeros((self.cost.n_sub, self.cost.model.n_state)) if aeta is None else aeta
        adjoints = [np.array(a, dtype=float) for a in self._adjoints(np.asarray(ax), np.asarray(ap), aeta)]
        return self.space.add_adjoint(adjoints, out=np.zeros(self.size))

    # --- the background terms ------------------------------------------------------------

    def background(self, u: np.ndarray, out: np.ndarray | None = None) -> tuple[float, float, float, np.ndarray]:
        """``(Jb, Jp, Jm, gradient of Jb + Jp + Jm w.r.t. u)`` at ``u``, the gradient written into ``out``."""
        gradient = np.empty(self.size) if out is None else out
        J = dict(self.fixed)
        for name, J_b in zip(self.space.index, self.space.background(u, gradient)):
            J[name] += J_b
        return J["x0"], J["p"], J["eta"], gradient

    def model_error_term(self, u: np.ndarray) -> float:
        """``Jm = 1/2 sum_j |eta^i_j + deta_j|^2_{Q^-1}`` at ``u``."""
        return self.background(u)[2]

    def _prior(self, name: str) -> np.ndarray:
        return self.space.prior[self.space.index[name]][0] if name in self.space else np.zeros(0)

    @property
    def v_b(self) -> np.ndarray:
        """``B^T/2 B^-1 (x0^i - xb)``: the background's state part in the control variables (with the transform)."""
        return self._prior("x0")

    @property
    def w_b(self) -> np.ndarray:
        """``P^T/2 P^-1 (p^i - pb)``, as :attr:`v_b` for the parameters."""
        return self._prior("p")

    # --- Jq and its gradient -----------------------------------------------------------

    def _observation_sweep(self, u: np.ndarray, innovations: bool) -> tuple[float, list[np.ndarray]]:
        """``(Jo, adjoints)``: TL forward, ``z_k = R_k^-1 (H_k dx_k - d_k)``, AD backward.

        ``adjoints``, fresh, are the gradients of ``Jo`` w.r.t. the increments of the blocks in the
        control.  With ``innovations=False`` the ``d_k`` are left out (the Hessian's sweep).
        """
        dx0, dp, deta = self._increments(u)
        de = None if deta is None else sub_window_forcing(deta, self.cost.every, self.window.n_steps)
        dx = self.window.tl(dx0, dp) if de is None else self.window.tl(dx0, dp, de=de)
        residuals = ((slot, H, H.tl(dx[slot.step]) - d if innovations else H.tl(dx[slot.step]))
                     for slot, H, d in self.observations)
        Jo, forcings = _observation_term(residuals)
        adjoints = self.cost.window_adjoint(self.window.ad, forcings, self.window.n_steps, deta is not None)
        return Jo, self._adjoints(*adjoints)

    def value_and_gradient(self, u: np.ndarray) -> tuple[CostTerms, np.ndarray]:
        """``(Jq(u) and its terms, grad_u Jq)``, the gradient a fresh array; with the transform::

            grad_u = [v_b + v; w_b + w; w_eta_b + w_eta] + [B^T/2 ax; P^T/2 ap; Q^T/2 aeta_j]

        and without it ``[B^-1 (x0^i - xb + dx0) + ax; P^-1 (p^i - pb + dp) + ap; Q^-1 (eta^i + deta) + aeta]``.
        """
        u = np.asarray(u, dtype=float)
        Jo, adjoints = self._observation_sweep(u, innovations=True)
        Jb, Jp, Jm, gradient = self.background(u)
        self.space.add_adjoint(adjoints, out=gradient)
        terms = CostTerms(Jb, Jp, Jo, Jm)
        if not np.isfinite(terms.J):
            raise DivergenceError(f"{self.context}: the incremental cost is not finite")
        return terms, gradient

    def hessian_vector(self, u: np.ndarray) -> np.ndarray:
        """``A u``, ``A`` the (constant) Hessian of ``Jq``, a fresh array: ``u + [B^T/2 ax; P^T/2 ap; Q^T/2 aeta_j]``
        with the transform, ``[B^-1 dx0 + ax; P^-1 dp + ap; Q^-1 deta_j + aeta_j]`` without, the adjoints from
        the sweep without innovations."""
        u = np.asarray(u, dtype=float)
        _, adjoints = self._observation_sweep(u, innovations=False)
        return self.space.add_adjoint(adjoints, out=self.space.prior_hessian(u))

    def hessian_matrix(self, block_size: int = 512) -> np.ndarray:
        """The Hessian ``A`` of ``Jq`` as a dense ``(size, size)`` matrix, symmetrised (it is, to round-off).

        Column blocks ``A U``, ``U = [e_i .. e_{i+k-1}]``, ``k <= block_size``, each by one blocked TL and
        AD sweep (:func:`fourdvar.window.tl_block`), the algebra of :meth:`hessian_vector` on ``k`` columns::

            A U = U + [B^T/2 AX; P^T/2 AP; Q^T/2 AE],    (AX, AP, AE) = AD of F_k = H_k^T R_k^-1 H_k dX_k
        """
        A = np.empty((self.size, self.size))
        for start in range(0, self.size, block_size):
            k = min(block_size, self.size - start)
            U = np.zeros((self.size, k))
            U[start + np.arange(k), np.arange(k)] = 1.0
            A[:, start : start + k] = self._hessian_columns(U)
        return 0.5 * (A + A.T)

    def _hessian_columns(self, U: np.ndarray) -> np.ndarray:
        """``A U`` for a block ``U`` of shape ``(size, k)``."""
        model, k = self.cost.model, U.shape[1]
        d = dict(zip(self.space.index, self.space.column_increments(U)))
        dX0 = d["x0"][0] if "x0" in d else np.zeros((model.n_state, k))
        dP = d["p"][0] if "p" in d else np.zeros((model.n_params, k))
        dE = None if "eta" not in d else sub_window_forcing(d["eta"], self.cost.every, self.window.n_steps)
        dX = tl_block(self.window, dX0, dP, de=dE)
        forcings = {}
        for slot, H, _ in self.observations:
            def gauss_newton(dx, H=H, R=slot.covariance):
                return H.ad(R.solve(H.tl(dx)))  # H^T R^-1 H dx

            # one column at a time; on the n_state unit vectors once (then a product) when fewer than k
            if model.n_state < k:
                F = each_column(gauss_newton, np.eye(model.n_state)) @ dX[slot.step]
            else:
                F = each_column(gauss_newton, dX[slot.step])
            _add_forcing(forcings, slot.step, F)
        if not forcings:
            forcings = {0: np.zeros((model.n_state, k))}
        ad = functools.partial(ad_block, self.window)
        aX, aP, aE = self.cost.window_adjoint(ad, forcings, self.window.n_steps, "eta" in d, block=(k,))
        return self.space.add_adjoint(self._adjoints(aX, aP, aE), out=self.space.prior_hessian(U))

    def analysis(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``(x0^i + dx0, p^i + dp, eta^i + deta)``, the next outer loop's guess (``eta``: ``None`` if strong)."""
        dx0, dp, deta = self._increments(u)
        eta = self.eta if deta is None else self.eta + deta
        return self.x0 + dx0, self.p + dp, (None if eta is None else eta.copy())
