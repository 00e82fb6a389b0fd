"""The 4D-Var cost function, nonlinear and incremental, with their adjoint gradients.

Nonlinear cost over a window of ``L`` steps::

    J(p, x0) = 1/2 |x0 - xb|^2_{B^-1} + 1/2 |p - pb|^2_{P^-1}
             + 1/2 sum_k |H_k(x_k) - y_k|^2_{R_k^-1},        x_k = M_{k:0}(p, x0)
             = Jb + Jp + Jo

Incremental (quadratic) cost around an outer-loop guess ``(p^i, x0^i)``, with
innovations ``d_k = y_k - H_k(x_k^i)``::

    Jq(dp, dx0) = 1/2 |x0^i - xb + dx0|^2_{B^-1} + 1/2 |p^i - pb + dp|^2_{P^-1}
                + 1/2 sum_k |H_k dx_k - d_k|^2_{R_k^-1}

and its gradient, the ECMWF algorithm::

    z_k = R_k^-1 (H_k dx_k - d_k)                     dx_k from the TL, forward
    (ax, ap) = sum_k M_{k:0}^T H_k^T z_k              the AD, backward, ap accumulated
    grad_dx0 = B^-1 (x0^i - xb + dx0) + ax
    grad_dp  = P^-1 (p^i - pb + dp) + ap

The nonlinear gradient is the same sweep with ``H_k(x_k) - y_k`` in place of
``H_k dx_k - d_k``, so ``grad Jq(0) == grad J(p^i, x0^i)`` by construction.

The control vector ``u`` of the inner loop is a :class:`~fourdvar.control.ControlSpace`
of named blocks (``x0`` with ``B``, ``p`` with ``P``, ``eta`` with ``Q``), with the
control-variable transform (on by default: ``dx0 = B^1/2 v``, ... and ``Jb = 1/2 |v_b + v|^2``,
a Hessian ``I + (B^T/2 ... B^1/2)`` well conditioned when observations are few) or without.

Weak constraint (with a model-error covariance ``Q``): sub-window ``j`` of ``every`` steps
carries a forcing ``eta_j`` added after each of its steps, ``J += Jm = 1/2 sum_j |eta_j|^2_{Q^-1}``
(background 0).  The window (:mod:`fourdvar.window`) adds ``e_k = eta_{j(k)}`` after step ``k``
and returns its adjoint ``ae_k``; ``aeta_j = sum_{k in j} ae_k``, ``grad_eta_j J = Q^-1 eta_j + aeta_j``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .control import Block, ControlSpace, apply_rows, each_column
from .model import as_vector
from .window import DivergenceError, Window, ad_block, forecast, linearize_window, n_sub_windows, sub_window_forcing, sub_window_sums, tl_block

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


@dataclass(frozen=True)
class Control:
    """Which parts of ``(x0, p, eta)`` the minimisation changes."""

    state: bool = True
    params: bool = False
    model_error: bool = False

    @classmethod
    def parse(cls, control) -> "Control":
        """``"state"``, ``"params"``, ``"model_error"``, ``"both"`` (state and params) or a list such as ``["state", "model_error"]``."""
        if isinstance(control, Control):
            return control
        names = {"state", "params"} if control == "both" else ({control} if isinstance(control, str) else set(control))
        unknown = names - {"state", "params", "model_error"}
        if unknown or not names:
            raise ValueError(f"control must name 'state' and/or 'params' (or 'both'), and optionally 'model_error', got {control!r}")
        return cls(state="state" in names, params="params" in names, model_error="model_error" in names)

    def names(self) -> list[str]:
        return [name for name, on in (("state", self.state), ("params", self.params), ("model_error", self.model_error)) if on]


#: the control's names (``Control``) and the blocks they put in the control space
_BLOCKS = (("state", "x0"), ("params", "p"), ("model_error", "eta"))


def _quadratic_term(covariance, departure: np.ndarray) -> tuple[float, np.ndarray]:
    """``(1/2 e^T C^-1 e, C^-1 e)``."""
    weighted = covariance.solve(departure)
    return 0.5 * float(departure @ weighted), weighted


class FourDVarCost:
    """``J(p, x0)`` for a model, the observations of one window and a background.

    ``observations`` is a sequence of slots with ``step``, ``values``, ``operator``
    and ``covariance`` (see :class:`fourdvar.interfaces.ObservationSlot`); steps
    count from 0 at the window start.  ``B``/``xb`` give ``Jb`` and ``P``/``pb``
    give ``Jp``; a term whose covariance is ``None`` is left out (its part of the
    control is then fixed).  ``Q`` (a covariance of the state's size) makes the
    cost weak-constraint, with a forcing ``eta_j`` per sub-window of
    ``model_error_every`` steps (default: the whole window, one forcing); the
    ``eta`` arguments, shape ``(n_sub, n_state)``, default to zero.
    """

    def __init__(self, model, observations: Sequence, xb: np.ndarray, B=None, pb: np.ndarray | None = None, P=None, n_steps: int | None = None,
                 Q=None, model_error_every: int | None = None):
        self.model = model
        self.slots = sorted(observations, key=lambda slot: slot.step)
        last = max((slot.step for slot in self.slots), default=0)
        self.n_steps = last if n_steps is None else int(n_steps)
        if self.n_steps < 0:
            raise ValueError(f"the window must have at least 0 steps, got {self.n_steps}")
        for slot in self.slots:
            if not 0 <= slot.step <= self.n_steps:
                raise ValueError(f"an observation at step {slot.step} lies outside the window of {self.n_steps} steps")
            if np.shape(slot.values) != (slot.operator.n_obs,):
                raise ValueError(f"observations at step {slot.step}: {np.shape(slot.values)} values for an operator with n_obs={slot.operator.n_obs}")
        self.xb = self._checked(xb, model.n_state, "background state xb")
        self.B = self._checked_covariance(B, model.n_state, "B")
        self.pb = self._checked(np.zeros(0) if pb is None else pb, model.n_params, "background parameters pb")
        self.P = self._checked_covariance(P, model.n_params, "P")
        self.Q = self._checked_covariance(Q, model.n_state, "Q")
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
            raise ValueError(f"the model-error forcing eta must have shape ({self.n_sub}, {self.model.n_state}), got {eta.shape}")
        if not np.all(np.isfinite(eta)):
            raise ValueError("the model-error forcing eta contains NaN or infinite values")
        return eta

    @staticmethod
    def _checked(vector, size: int, name: str) -> np.ndarray:
        array = as_vector(vector, size, name)
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{name} contains NaN or infinite values")
        return array

    @staticmethod
    def _checked_covariance(covariance, size: int, name: str):
        if covariance is not None and covariance.size != size:
            raise ValueError(f"{name} has size {covariance.size}, expected {size}")
        return covariance

    @property
    def last_observed_step(self) -> int:
        return max((slot.step for slot in self.slots), default=0)

    def forcing(self, eta: np.ndarray | None, n_steps: int | None = None) -> np.ndarray | None:
        """The per-step forcing ``e_k = eta_{j(k)}`` of the window's first ``n_steps`` steps (the last
        observed step by default), ``(n_steps, n_state)``; ``None`` in strong constraint."""
        eta = self.checked_model_error(eta)
        return None if eta is None else sub_window_forcing(eta, self.every, self.last_observed_step if n_steps is None else n_steps)

    def window(self, x0: np.ndarray, p: np.ndarray, context: str = "", eta: np.ndarray | None = None) -> Window:
        """The nonlinear run over the window (to the last observation), with the forcing ``eta``
        in weak constraint, linearised: :func:`fourdvar.window.linearize_window`."""
        return linearize_window(self.model, x0, p, self.last_observed_step, context=context, forcing=self.forcing(eta))

    def trajectory(self, x0: np.ndarray, p: np.ndarray, eta: np.ndarray | None = None, n_steps: int | None = None, context: str = "") -> np.ndarray:
        """The nonlinear (forced, with model error) trajectory ``x_0 .. x_n``, ``n`` the window length by default."""
        n_steps = self.n_steps if n_steps is None else n_steps
        return forecast(self.model, x0, p, n_steps, context=context, forcing=self.forcing(eta, n_steps))

    def blocks(self, x0: np.ndarray, p: np.ndarray, eta: np.ndarray | None = None) -> list[Block]:
        """The control blocks of the terms this cost has: ``x0`` (with ``B``), ``p`` (with ``P``) and
        ``eta`` (with ``Q``, one row per sub-window), each with its departure from the background at ``(x0, p, eta)``."""
        eta = self.checked_model_error(eta)
        terms = (("x0", self.B, x0 - self.xb), ("p", self.P, p - self.pb), ("eta", self.Q, eta))
        return [Block(name, C, np.reshape(departure, (-1, np.shape(departure)[-1]))) for name, C, departure in terms if C is not None]

    def control_blocks(self, control, x0: np.ndarray | None = None, p: np.ndarray | None = None, eta: np.ndarray | None = None) -> list[Block]:
        """The non-empty :meth:`blocks` that ``control`` (a :class:`Control` or its names) puts in the control
        vector, in its order, at ``(x0, p, eta)`` (the background by default)."""
        names = {block for flag, block in _BLOCKS if flag in Control.parse(control).names()}
        blocks = self.blocks(self.xb if x0 is None else x0, self.pb if p is None else p, eta)
        return [block for block in blocks if block.name in names and block.size]

    def model_error_terms(self, eta: np.ndarray | None) -> tuple[float, np.ndarray]:
        """``(Jm, Q^-1 eta)``, ``Q^-1`` applied to each sub-window's ``eta_j``; ``(0, (0, n_state) array)`` without ``Q``."""
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
        """``J(p, x0, eta)`` and its terms, by one nonlinear (forced) forecast."""
        trajectory = self.trajectory(x0, p, eta, n_steps=self.last_observed_step, context="cost evaluation")
        Jo = sum(_quadratic_term(slot.covariance, slot.operator.apply(trajectory[slot.step]) - slot.values)[0] for slot in self.slots)
        Jb, Jp, _, _ = self.background_terms(x0, p)
        Jm, _ = self.model_error_terms(eta)
        return CostTerms(Jb, Jp, float(Jo), Jm)

    def gradient(self, x0: np.ndarray, p: np.ndarray, eta: np.ndarray | None = None) -> tuple[CostTerms, np.ndarray, np.ndarray]:
        """``(terms, grad_x0 J, grad_p J)`` at ``(x0, p, eta)``: :meth:`full_gradient` without ``grad_eta J``.

        Every gradient is returned whatever the control; ``grad_p`` has no ``Jp`` part when ``P`` is ``None``.
        """
        return self.full_gradient(x0, p, eta)[:3]

    def linearise(self, x0: np.ndarray, p: np.ndarray, eta: np.ndarray | None = None, **options) -> tuple["IncrementalCost", tuple]:
        """``(Jq, (terms, gradient) of Jq at 0)``: the :class:`IncrementalCost` linearised at ``(x0, p, eta)``
        (``options``: its ``control``, ``transform``, ``outer_loop``)."""
        jq = IncrementalCost(self, x0, p, eta=eta, **options)
        return jq, jq.value_and_gradient(np.zeros(jq.size))

    def full_gradient(self, x0: np.ndarray, p: np.ndarray, eta: np.ndarray | None = None) -> tuple[CostTerms, np.ndarray, np.ndarray, np.ndarray]:
        """``(terms, grad_x0 J, grad_p J, grad_eta J)`` by one forward and one adjoint sweep;
        ``grad_eta J = Q^-1 eta_j + aeta_j`` is ``(n_sub, n_state)`` (``(0, n_state)`` in strong constraint)."""
        eta = self.checked_model_error(eta)
        window = self.window(x0, p, "cost gradient", eta)
        Jo, forcings = 0.0, {}
        for slot in self.slots:
            H = slot.operator.linearize(window.states[slot.step])
            J_k, z = _quadratic_term(slot.covariance, H.output - slot.values)
            Jo += J_k
            _add_forcing(forcings, slot.step, H.ad(z))
        ae = None if eta is None else np.empty((window.n_steps, self.model.n_state))
        ax, ap = window.ad(forcings) if ae is None else window.ad(forcings, ae=ae)
        Jb, Jp, gb, gp = self.background_terms(x0, p)
        # the adjoints added in place to the fresh background gradients: for a large network the
        # parameter-sized arrays are then p - pb, P^-1 (p - pb) (returned) and ap, no more
        gb += ax
        gp += ap
        Jm, geta = self.model_error_terms(eta)  # Q^-1 eta_j, then + aeta_j
        if ae is not None:
            geta += sub_window_sums(ae, self.every, self.n_sub)
        return CostTerms(Jb, Jp, Jo, Jm), gb, gp, geta


def _add_forcing(forcings: dict, step: int, forcing: np.ndarray) -> None:
    forcings[step] = forcings[step] + forcing if step in forcings else forcing


class IncrementalCost:
    """``Jq`` around ``(p^i, x0^i)`` (and ``eta^i``, with model error) as a function of the control vector ``u``.

    ``u`` is a :class:`~fourdvar.control.ControlSpace` over the blocks in the control:
    ``x0`` (``n_state`` values, or the ensemble's larger control), ``p`` (``n_params``)
    and ``eta`` (``n_sub`` rows of ``n_state``), in that order.  With ``transform=True``
    a block holds ``C^-1/2`` times its increment (``v = B^-1/2 dx0``, ``w = P^-1/2 dp``,
    ``w_eta_j = Q^-1/2 d eta_j``), otherwise the increment itself.  A part not in the
    control keeps its guess and its (constant) background term, so ``Jq(0) == J``.
    The trajectory, the innovations and every linearisation are computed here, once,
    and reused by each call.

    The parameter block can be large (8 million values for a 2000-wide dense network),
    so :meth:`value_and_gradient` and :meth:`hessian_vector` assemble their result in
    place in the one array they return; the control space's work arrays hold the
    increments, so one ``IncrementalCost`` is not for concurrent calls from several threads.
    """

    def __init__(self, cost: FourDVarCost, x0: np.ndarray, p: np.ndarray, control="state", transform: bool = True, outer_loop: int = 0,
                 eta: np.ndarray | None = None):
        self.cost = cost
        self.control = Control.parse(control)
        self.transform = bool(transform)
        self.x0 = np.asarray(x0, dtype=float)
        self.p = np.asarray(p, dtype=float)
        self.context = f"outer loop {outer_loop}"
        for flag, C, needed, name in ((self.control.state, cost.B, True, "the state is in the control but no background covariance B"),
                                      (self.control.params, cost.P, cost.model.n_params, "the parameters are in the control but no parameter covariance P"),
                                      (self.control.model_error, cost.Q, True, "the model error is in the control but no model-error covariance Q")):
            if flag and C is None and needed:
                raise ValueError(f"{name} was given")
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
        # a part not in the control keeps its (constant) background term, so Jq(0) == J(p^i, x0^i)
        self.fixed = {name: (0.0 if name in self.space else J) for name, J in (("x0", Jb), ("p", Jp), ("eta", Jm))}
        self.size = self.space.size
        self.n_x, self.n_p, self.n_e = (len(range(self.size)[self.space.slice(name)]) for name in ("x0", "p", "eta"))
        self._zero = [np.zeros(cost.model.n_state), np.zeros(cost.model.n_params)]

    # --- control vector <-> increments ---------------------------------------------------

    def split(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(v, w)``: views of the state and the parameter part of ``u``."""
        self.space.parts(u)  # checks the shape
        return u[self.space.slice("x0")], u[self.space.slice("p")]

    def split_model_error(self, u: np.ndarray) -> np.ndarray:
        """``w_eta``: a view of the model-error part of ``u``, shape ``(n_sub, n_state)`` (``(0, n_state)`` when not in the control)."""
        self.space.parts(u)
        return u[self.space.slice("eta")].reshape(-1, self.cost.model.n_state)

    def _increments(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``(dx0, dp, d eta)`` of ``u`` for the TL, which only reads them: work arrays, views of ``u``
        or zeros for a part not in the control (``d eta`` ``None``)."""
        d = dict(zip(self.space.index, self.space.increments(u)))
        return d["x0"][0] if "x0" in d else self._zero[0], d["p"][0] if "p" in d else self._zero[1], d.get("eta")

    def increments(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(dx0, dp)`` for the control vector ``u`` (zero for a part not in the control), fresh arrays."""
        dx0, dp, _ = self._increments(u)
        return dx0.copy(), dp.copy()

    def model_error_increment(self, u: np.ndarray) -> np.ndarray | None:
        """``d eta``, ``(n_sub, n_state)``: ``Q^1/2 w_eta_j`` for each sub-window (``w_eta`` without the transform), a fresh array; ``None`` when not in the control."""
        deta = self._increments(u)[2]
        return None if deta is None else deta.copy()

    def _adjoints(self, ax: np.ndarray, ap: np.ndarray, aeta) -> list[np.ndarray]:
        """The adjoints of the blocks in the control, in their order, each ``(rows, n)`` (``(rows, n, k)``)."""
        named = {"x0": ax[None], "p": ap[None], "eta": aeta}
        return [named[name] for name in self.space.index]

    def control_gradient(self, ax: np.ndarray, ap: np.ndarray, aeta: np.ndarray | None = None) -> np.ndarray:
        """Adjoint of :meth:`increments` (and :meth:`model_error_increment`): ``(ax, ap, aeta) -> [B^T/2 ax; P^T/2 ap; Q^T/2 aeta_j]``.

        Applied to ``(grad_x0 J, grad_p J, grad_eta J)`` it gives the gradient w.r.t. the control vector.
        """
        aeta = np.zeros((self.n_e // max(self.cost.model.n_state, 1), self.cost.model.n_state)) if aeta is None else aeta
        adjoints = [np.array(a, dtype=float) for a in self._adjoints(np.asarray(ax), np.asarray(ap), aeta)]
        return self.space.add_adjoint(adjoints, out=np.zeros(self.size))

    # --- the background terms ------------------------------------------------------------

    def _background_into(self, u: np.ndarray, out: np.ndarray) -> tuple[float, float, float]:
        """``(Jb, Jp, Jm)`` at ``u``, the gradient of their sum w.r.t. ``u`` written into ``out``."""
        J = dict(self.fixed)
        for name, J_b in zip(self.space.index, self.space.background(u, out)):
            J[name] += J_b
        return J["x0"], J["p"], J["eta"]

    def background(self, u: np.ndarray) -> tuple[float, float, np.ndarray]:
        """``(Jb, Jp, gradient of Jb + Jp + Jm w.r.t. u)``; ``Jm`` from :meth:`model_error_term`."""
        gradient = np.empty(self.size)
        Jb, Jp, _ = self._background_into(u, out=gradient)
        return Jb, Jp, gradient

    def background_and_model_error(self, u: np.ndarray) -> tuple[float, float, float]:
        """``(Jb, Jp, Jm)`` at ``u``."""
        return self._background_into(u, out=np.empty(self.size))

    def model_error_term(self, u: np.ndarray) -> float:
        """``Jm = 1/2 sum_j |eta^i_j + d eta_j|^2_{Q^-1}`` at ``u``."""
        return self._background_into(u, out=np.empty(self.size))[2]

    @property
    def v_b(self) -> np.ndarray:
        """``B^T/2 B^-1 (x0^i - xb)``: the background's state part in the control variables (with the transform)."""
        return self.space.prior[self.space.index["x0"]][0] if "x0" in self.space else np.zeros(0)

    @property
    def w_b(self) -> np.ndarray:
        """``P^T/2 P^-1 (p^i - pb)``, as :attr:`v_b` for the parameters."""
        return self.space.prior[self.space.index["p"]][0] if "p" in self.space else np.zeros(0)

    # --- Jq and its gradient -----------------------------------------------------------

    def _observation_sweep(self, u: np.ndarray, innovations: bool) -> tuple[float, list[np.ndarray]]:
        """``(Jo, adjoints)``: TL forward, ``z_k = R_k^-1 (H_k dx_k - d_k)``, AD backward.

        ``adjoints`` are the gradients of ``Jo`` w.r.t. the increments of the blocks in
        the control (``sum_k M_{k:0}^T H_k^T z_k`` for ``dx0`` and ``dp``, each
        sub-window's sum for ``d eta``), fresh arrays; :meth:`ControlSpace.add_adjoint`
        takes them to ``u``.  With ``innovations=False`` the ``d_k`` are left out (the Hessian's sweep).
        """
        dx0, dp, deta = self._increments(u)
        dx = self.window.tl(dx0, dp) if deta is None else self.window.tl(dx0, dp, de=sub_window_forcing(deta, self.cost.every, self.window.n_steps))
        Jo, forcings = 0.0, {}
        for slot, H, d in self.observations:
            r = H.tl(dx[slot.step])
            if innovations:
                r = r - d
            J_k, z = _quadratic_term(slot.covariance, r)
            Jo += J_k
            _add_forcing(forcings, slot.step, H.ad(z))
        return Jo, self._adjoints(*self._ad(self.window.ad, forcings, deta is not None, ()))

    def _ad(self, ad, forcings: dict, model_error: bool, block: tuple) -> tuple:
        """``(ax, ap, aeta)`` of the window's AD ``ad`` (``aeta``, each sub-window's sum of ``ae_k``, ``None``
        without the model error in the control)."""
        if not model_error:
            return (*ad(forcings), None)
        ae = np.empty((self.window.n_steps, self.cost.model.n_state) + block)
        ax, ap = ad(forcings, ae=ae)
        return ax, ap, sub_window_sums(ae, self.cost.every, self.cost.n_sub)

    def value_and_gradient(self, u: np.ndarray) -> tuple[CostTerms, np.ndarray]:
        """``(Jq(u) and its terms, grad_u Jq)``, the gradient a fresh array.

        Assembled in that array: the background part first, then the observations' added to it.
        With the transform::

            grad_v = (v_b + v) + B^T/2 ax
            grad_w = (w_b + w) + P^T/2 ap
            grad_w_eta_j = (w_eta_b_j + w_eta_j) + Q^T/2 aeta_j

        and without it ``[B^-1 (x0^i - xb + dx0) + ax; P^-1 (p^i - pb + dp) + ap; Q^-1 (eta^i_j + d eta_j) + aeta_j]``.
        """
        u = np.asarray(u, dtype=float)
        Jo, adjoints = self._observation_sweep(u, innovations=True)
        gradient = np.empty(self.size)
        Jb, Jp, Jm = self._background_into(u, out=gradient)
        self.space.add_adjoint(adjoints, out=gradient)
        terms = CostTerms(Jb, Jp, Jo, Jm)
        if not np.isfinite(terms.J):
            raise DivergenceError(f"{self.context}: the incremental cost is not finite")
        return terms, gradient

    def hessian_vector(self, u: np.ndarray) -> np.ndarray:
        """``A u``, the Hessian of ``Jq`` (constant: ``Jq`` is quadratic) applied to ``u``; a fresh array.

        ``A u = u + [B^T/2 ax; P^T/2 ap; Q^T/2 aeta_j]`` with the transform,
        ``[B^-1 dx0 + ax; P^-1 dp + ap; Q^-1 d eta_j + aeta_j]`` without, ``(ax, ap, aeta)``
        from the sweep without innovations.
        """
        u = np.asarray(u, dtype=float)
        _, adjoints = self._observation_sweep(u, innovations=False)
        return self.space.add_adjoint(adjoints, out=self.space.prior_hessian(u))

    def hessian_matrix(self, block_size: int = 512) -> np.ndarray:
        """The Hessian ``A`` of ``Jq`` as a dense ``(size, size)`` matrix, column ``i`` = ``A e_i``.

        The columns come in blocks ``A U`` with ``U = [e_i .. e_{i+k-1}]``, ``k <= block_size``:
        one blocked TL and one blocked AD sweep per block (:func:`fourdvar.window.tl_block`,
        column by column for a model without blocks), the same algebra as
        :meth:`hessian_vector` on ``k`` columns::

            (dX0, dP, dE) = (B^1/2 V, P^1/2 W, Q^1/2 W_eta)        F_k = H_k^T R_k^-1 H_k dX_k
            A U = U + [B^T/2 AX; P^T/2 AP; Q^T/2 AE]               (AX, AP, AE) = the blocked AD of the F_k

        ``H_k^T R_k^-1 H_k`` goes through the operator and covariance one column at a
        time: applied to the ``n_state`` unit vectors once (then one matrix product)
        when the state is smaller than the block.  Symmetrised, which it is up to round-off.
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
        dX = tl_block(self.window, dX0, dP, de=None if "eta" not in d else sub_window_forcing(d["eta"], self.cost.every, self.window.n_steps))
        forcings = {}
        for slot, H, _ in self.observations:
            def gauss_newton(dx, H=H, R=slot.covariance):
                return H.ad(R.solve(H.tl(dx)))  # H^T R^-1 H dx

            if model.n_state < k:
                F = each_column(gauss_newton, np.eye(model.n_state)) @ dX[slot.step]
            else:
                F = each_column(gauss_newton, dX[slot.step])
            _add_forcing(forcings, slot.step, F)
        if not forcings:
            forcings = {0: np.zeros((model.n_state, k))}
        aX, aP, aE = self._ad(lambda f, **ae: ad_block(self.window, f, **ae), forcings, "eta" in d, (k,))
        return self.space.add_adjoint(self._adjoints(aX, aP, aE), out=self.space.prior_hessian(U))

    def analysis(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``(x0^i + dx0, p^i + dp, eta^i + d eta)``: the next outer loop's guess (``eta`` is ``None`` in strong constraint)."""
        dx0, dp, deta = self._increments(u)
        eta = self.eta if deta is None else self.eta + deta
        return self.x0 + dx0, self.p + dp, (None if eta is None else eta.copy())
