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

Control-variable transform (on by default): the inner loop minimises over
``v, w`` with ``dx0 = B^1/2 v``, ``dp = P^1/2 w``; then
``Jb = 1/2 |v_b + v|^2`` with ``v_b = B^T/2 B^-1 (x0^i - xb)`` (which equals
``B^-1/2 (x0^i - xb)``), and ``grad_v = v_b + v + B^T/2 ax``.  The Hessian becomes
``I + (B^T/2 ... B^1/2)``, well conditioned when observations are few.

Weak constraint (with a model-error covariance ``Q``): the window's ``L`` steps
are split into sub-windows of ``every`` steps, sub-window ``j`` carrying a
forcing ``eta_j`` added after each of its steps::

    x_k = M(x_{k-1}, p) + eta_{j(k)},   j(k) = (k - 1) // every
    J  += Jm = 1/2 sum_j |eta_j|^2_{Q^-1}

(``eta``'s background is 0).  Incrementally ``d eta`` joins the control,
``u = [v; w; w_eta]`` with ``d eta_j = Q^1/2 w_eta_j``; the TL adds ``d eta_{j(k)}``
after step ``k`` and the AD accumulates each sub-window's adjoint ``aeta_j``
(:class:`fourdvar.window.ForcedWindowLinearization`), so::

    grad_eta_j J  = Q^-1 eta_j + aeta_j
    grad_w_eta_j  = (w_eta_b_j + w_eta_j) + Q^T/2 aeta_j,    w_eta_b_j = Q^T/2 Q^-1 eta^i_j
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .covariances import Diagonal
from .window import (
    DivergenceError, ForcedWindowLinearization, WindowLinearization, ad_block, forced_forecast, forecast, linearize_window,
    n_sub_windows, tl_block,
)

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


def _quadratic_term(covariance, departure: np.ndarray) -> tuple[float, np.ndarray]:
    """``(1/2 e^T C^-1 e, C^-1 e)``."""
    weighted = covariance.solve(departure)
    return 0.5 * float(departure @ weighted), weighted


def _rows(method, vectors: np.ndarray) -> np.ndarray:
    """``method`` (a covariance's ``solve``, ``sqrt``, ``sqrt_t`` ...) applied to each row: one per sub-window."""
    return np.array([method(row) for row in vectors]).reshape(vectors.shape)


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
        array = np.asarray(vector, dtype=float)
        if array.shape != (size,):
            raise ValueError(f"{name} must have shape ({size},), got {array.shape}")
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

    def window(self, x0: np.ndarray, p: np.ndarray, context: str = "", eta: np.ndarray | None = None) -> WindowLinearization:
        """The nonlinear run over the window (to the last observation), linearised.

        A :class:`WindowLinearization`, or what the model's optional
        ``linearize_window`` hook returns (see :func:`fourdvar.window.linearize_window`);
        with model error, the forced :class:`~fourdvar.window.ForcedWindowLinearization`.
        """
        eta = self.checked_model_error(eta)
        if eta is not None:
            return ForcedWindowLinearization(self.model, x0, p, self.last_observed_step, eta, self.every, context=context)
        return linearize_window(self.model, x0, p, self.last_observed_step, context=context)

    def trajectory(self, x0: np.ndarray, p: np.ndarray, eta: np.ndarray | None = None, n_steps: int | None = None, context: str = "") -> np.ndarray:
        """The nonlinear (forced, with model error) trajectory ``x_0 .. x_n``, ``n`` the window length by default."""
        n_steps = self.n_steps if n_steps is None else n_steps
        eta = self.checked_model_error(eta)
        if eta is None:
            return forecast(self.model, x0, p, n_steps, context=context)
        return forced_forecast(self.model, x0, p, n_steps, eta, self.every, context=context)

    def model_error_terms(self, eta: np.ndarray | None) -> tuple[float, np.ndarray]:
        """``(Jm, Q^-1 eta)``, ``Q^-1`` applied to each sub-window's ``eta_j``; ``(0, (0, n_state) array)`` without ``Q``."""
        eta = self.checked_model_error(eta)
        if eta is None:
            return 0.0, np.zeros((0, self.model.n_state))
        weighted = _rows(self.Q.solve, eta)
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
        """``(terms, grad_x0 J, grad_p J)`` by one forward and one adjoint sweep.

        Both gradients are returned whatever the control; ``grad_p`` has no
        ``Jp`` part when ``P`` is ``None``.  With model error,
        :meth:`full_gradient` gives ``grad_eta J`` as well.
        """
        terms, gx, gp, _ = self.full_gradient(x0, p, eta)
        return terms, gx, gp

    def full_gradient(self, x0: np.ndarray, p: np.ndarray, eta: np.ndarray | None = None) -> tuple[CostTerms, np.ndarray, np.ndarray, np.ndarray]:
        """``(terms, grad_x0 J, grad_p J, grad_eta J)``, the last ``(n_sub, n_state)``: ``Q^-1 eta_j + aeta_j``."""
        eta = self.checked_model_error(eta)
        window = self.window(x0, p, context="cost gradient", eta=eta)
        Jo, forcings = 0.0, {}
        for slot in self.slots:
            H = slot.operator.linearize(window.states[slot.step])
            J_k, z = _quadratic_term(slot.covariance, H.output - slot.values)
            Jo += J_k
            _add_forcing(forcings, slot.step, H.ad(z))
        if eta is None:
            (ax, ap), aeta = window.ad(forcings), 0.0
        else:
            ax, ap, aeta = window.ad_eta(forcings)
        Jb, Jp, gb, gp = self.background_terms(x0, p)
        # the adjoints added in place to the fresh background gradients: for a large network the
        # parameter-sized arrays are then p - pb, P^-1 (p - pb) (returned) and ap, no more
        gb += ax
        gp += ap
        Jm, geta = self.model_error_terms(eta)
        return CostTerms(Jb, Jp, Jo, Jm), gb, gp, geta + aeta


def _each_column(function, M: np.ndarray) -> np.ndarray:
    """``[function(M[:, 0]), function(M[:, 1]), ...]`` as the columns of a matrix."""
    return np.stack([function(M[:, j]) for j in range(M.shape[1])], axis=1)


def _add_forcing(forcings: dict, step: int, forcing: np.ndarray) -> None:
    forcings[step] = forcings[step] + forcing if step in forcings else forcing


def _into(method, v: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out[:] = method(v)`` for a covariance's ``sqrt``, ``sqrt_t``, ``solve`` ...; returns ``out``.

    A :class:`~fourdvar.covariances.Diagonal` writes the result straight into
    ``out`` (its methods take ``out=``, which may be ``v`` itself); any other
    covariance returns a fresh array, which is copied in.
    """
    if isinstance(getattr(method, "__self__", None), Diagonal):
        return method(v, out=out)
    result = method(v)
    if result.shape != out.shape:  # B^T/2 into an extended control space: larger than the state
        return result
    out[...] = result
    return out


class IncrementalCost:
    """``Jq`` around ``(p^i, x0^i)`` (and ``eta^i``, with model error) as a function of the control vector ``u``.

    ``u = [v; w]`` holds the state part (``n_state`` values, when the state is in
    the control) then the parameter part (``n_params``).  With ``transform=True``
    these are ``v = B^-1/2 dx0`` and ``w = P^-1/2 dp``; otherwise ``dx0`` and ``dp``.
    With the model error in the control, ``u = [v; w; w_eta]``, ``w_eta`` the
    ``n_sub`` sub-windows' ``Q^-1/2 d eta_j`` one after the other (``d eta_j``
    without the transform); see :meth:`split_model_error`.
    The trajectory, the innovations and every linearisation are computed here,
    once, and reused by each call.

    The parameter part can be large (8 million values for a 2000-wide dense
    network), and then a fresh temporary per operation on it costs as much as
    the arithmetic or more.  So :meth:`value_and_gradient` and
    :meth:`hessian_vector` write ``dx0`` and ``dp`` for the TL into work arrays
    kept here (:meth:`_tl_increments`), then assemble their result part by part,
    in place, in the one array they allocate and return
    (:meth:`_background_into`, :meth:`_add_control_gradient`); the window's AD
    gives the only other parameter-sized array, ``ap``.  Because of the work
    arrays, one ``IncrementalCost`` is not for concurrent calls from several threads.
    """

    def __init__(self, cost: FourDVarCost, x0: np.ndarray, p: np.ndarray, control="state", transform: bool = True, outer_loop: int = 0,
                 eta: np.ndarray | None = None):
        self.cost = cost
        self.control = Control.parse(control)
        self.transform = bool(transform)
        self.x0 = np.asarray(x0, dtype=float)
        self.p = np.asarray(p, dtype=float)
        self.context = f"outer loop {outer_loop}"
        if self.control.state and cost.B is None:
            raise ValueError("the state is in the control but no background covariance B was given")
        if self.control.params and cost.P is None and cost.model.n_params:
            raise ValueError("the parameters are in the control but no parameter covariance P was given")
        if self.control.model_error and cost.Q is None:
            raise ValueError("the model error is in the control but no model-error covariance Q was given")
        self.eta = cost.checked_model_error(eta)
        # a B whose square root maps from a larger control space (an ensemble's alpha control) says so
        self.n_x = getattr(cost.B, "control_size", cost.model.n_state) if self.control.state else 0
        if self.n_x not in (0, cost.model.n_state) and not self.transform:
            raise ValueError(f"{cost.B!r} is applied through its square root only: it needs the control-variable transform")
        self.n_p = cost.model.n_params if self.control.params else 0
        self.n_e = cost.n_sub * cost.model.n_state if self.control.model_error else 0
        self.size = self.n_x + self.n_p + self.n_e

        self.window = cost.window(self.x0, self.p, context=self.context, eta=self.eta)
        self.observations = []  # (slot, H linearised at x_k^i, innovation d_k)
        for slot in cost.slots:
            H = slot.operator.linearize(self.window.states[slot.step])
            d = slot.values - H.output
            if not np.all(np.isfinite(d)):
                raise DivergenceError(f"{self.context}: innovations at step {slot.step} are not finite")
            self.observations.append((slot, H, d))

        Jb, Jp, self.Binv_dep, self.Pinv_dep = cost.background_terms(self.x0, self.p)
        # a part not in the control keeps its (constant) background term, so Jq(0) == J(p^i, x0^i)
        self.Jb_fixed = 0.0 if self.n_x else Jb
        self.Jp_fixed = 0.0 if self.n_p else Jp
        self.departure_x = self.x0 - cost.xb
        self.departure_p = self.p - cost.pb
        if self.transform:
            self.v_b = cost.B.sqrt_t(self.Binv_dep) if self.control.state else np.zeros(0)
            self.w_b = cost.P.sqrt_t(self.Pinv_dep) if self.n_p else np.zeros(0)
        Jm, self.Qinv_eta = cost.model_error_terms(self.eta)
        self.Jm_fixed = 0.0 if self.n_e else Jm
        if self.n_e and self.transform:
            self.w_eta_b = _rows(cost.Q.sqrt_t, self.Qinv_eta)
        # the TL's (dx0, dp), rewritten by each call (see _tl_increments); a part not in the control stays 0
        self._dx0 = np.zeros(cost.model.n_state)
        self._dp = np.zeros(cost.model.n_params)
        self._dx0.flags.writeable = bool(self.n_x and self.transform)
        self._dp.flags.writeable = bool(self.n_p and self.transform)

    # --- control vector <-> increments ---------------------------------------------------

    def split(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(v, w)``: views of the state and the parameter part of ``u``."""
        if u.shape != (self.size,):
            raise ValueError(f"control vector must have shape ({self.size},), got {u.shape}")
        return u[: self.n_x], u[self.n_x : self.n_x + self.n_p]

    def split_model_error(self, u: np.ndarray) -> np.ndarray:
        """``w_eta``: a view of the model-error part of ``u``, shape ``(n_sub, n_state)`` (``(0, n_state)`` when not in the control)."""
        if u.shape != (self.size,):
            raise ValueError(f"control vector must have shape ({self.size},), got {u.shape}")
        return u[self.n_x + self.n_p :].reshape(-1, self.cost.model.n_state)

    def model_error_increment(self, u: np.ndarray) -> np.ndarray | None:
        """``d eta``, ``(n_sub, n_state)``: ``Q^1/2 w_eta_j`` for each sub-window (``w_eta`` without the transform), a fresh array; ``None`` when not in the control."""
        if not self.n_e:
            return None
        w_eta = self.split_model_error(u)
        return _rows(self.cost.Q.sqrt, w_eta) if self.transform else w_eta.copy()

    def increments(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(dx0, dp)`` for the control vector ``u`` (zero for a part not in the control), fresh arrays."""
        v, w = self.split(u)
        dx0 = (self.cost.B.sqrt(v) if self.transform else v.copy()) if self.n_x else np.zeros(self.cost.model.n_state)
        dp = (self.cost.P.sqrt(w) if self.transform else w.copy()) if self.n_p else np.zeros(self.cost.model.n_params)
        return dx0, dp

    def _tl_increments(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`increments` for the TL, which only reads them: no fresh arrays.

        ``dx0 = B^1/2 v`` and ``dp = P^1/2 w`` are written into the work arrays
        ``_dx0``, ``_dp`` (overwritten by the next call); without the transform
        ``dx0 = v`` and ``dp = w`` are the views of ``u``.  A part not in the
        control is the work array's zeros.
        """
        v, w = self.split(u)
        dx0, dp = self._dx0, self._dp
        if self.n_x:
            dx0 = _into(self.cost.B.sqrt, v, out=dx0) if self.transform else v
        if self.n_p:
            dp = _into(self.cost.P.sqrt, w, out=dp) if self.transform else w
        return dx0, dp

    def control_gradient(self, ax: np.ndarray, ap: np.ndarray, aeta: np.ndarray | None = None) -> np.ndarray:
        """Adjoint of :meth:`increments` (and :meth:`model_error_increment`): ``(ax, ap, aeta) -> [B^T/2 ax; P^T/2 ap; Q^T/2 aeta_j]``.

        Applied to ``(grad_x0 J, grad_p J)`` it gives the gradient w.r.t. the control vector.
        """
        # copies: _add_control_gradient overwrites the vectors it is given
        return self._add_control_gradient(np.array(ax, dtype=float), np.array(ap, dtype=float), out=np.zeros(self.size), aeta=aeta)

    def _add_control_gradient(self, ax: np.ndarray, ap: np.ndarray, out: np.ndarray, aeta: np.ndarray | None = None) -> np.ndarray:
        """``out += [B^T/2 ax; P^T/2 ap; Q^T/2 aeta_j]`` (``out += [ax; ap; aeta]`` without the transform); returns ``out``.

        With the transform, ``ax`` and ``ap`` are overwritten by ``B^T/2 ax`` and ``P^T/2 ap``.
        """
        out_x, out_p = self.split(out)
        if self.n_x:
            out_x += _into(self.cost.B.sqrt_t, ax, out=ax) if self.transform else ax
        if self.n_p:
            out_p += _into(self.cost.P.sqrt_t, ap, out=ap) if self.transform else ap
        if self.n_e and aeta is not None:
            self.split_model_error(out)[...] += _rows(self.cost.Q.sqrt_t, aeta) if self.transform else aeta
        return out

    # --- the background terms ------------------------------------------------------------

    def background(self, u: np.ndarray) -> tuple[float, float, np.ndarray]:
        """``(Jb, Jp, gradient of Jb + Jp + Jm w.r.t. u)``; ``Jm`` from :meth:`model_error_term`."""
        gradient = np.empty(self.size)
        Jb, Jp = self._background_into(u, out=gradient)
        self._model_error_into(u, out=gradient)
        return Jb, Jp, gradient

    def background_and_model_error(self, u: np.ndarray) -> tuple[float, float, float]:
        """``(Jb, Jp, Jm)`` at ``u``, with one work array for their gradients."""
        gradient = np.empty(self.size)
        Jb, Jp = self._background_into(u, out=gradient)
        return Jb, Jp, self._model_error_into(u, out=gradient)

    def model_error_term(self, u: np.ndarray) -> float:
        """``Jm = 1/2 sum_j |eta^i_j + d eta_j|^2_{Q^-1}`` at ``u``."""
        return self._model_error_into(u, out=np.empty(self.size))

    def _model_error_into(self, u: np.ndarray, out: np.ndarray) -> float:
        """``Jm``, its gradient w.r.t. ``w_eta`` written into the model-error part of ``out``.

        With the transform ``out_eta = w_eta_b + w_eta`` (squared norm ``2 Jm``); without it
        ``out_eta_j = Q^-1 (eta^i_j + d eta_j)``.
        """
        if not self.n_e:
            return self.Jm_fixed
        w_eta, out_eta = self.split_model_error(u), self.split_model_error(out)
        if self.transform:
            np.add(self.w_eta_b, w_eta, out=out_eta)
            return 0.5 * float(np.vdot(out_eta, out_eta))
        e = self.eta + w_eta
        out_eta[...] = _rows(self.cost.Q.solve, e)
        return 0.5 * float(np.vdot(e, out_eta))

    def _background_into(self, u: np.ndarray, out: np.ndarray) -> tuple[float, float]:
        """``(Jb, Jp)``, their gradient w.r.t. ``u`` written into ``out``.

        With the transform, ``out = [v_b + v; w_b + w]``, whose two parts have the
        squared norms ``2 Jb`` and ``2 Jp``.  Without it::

            out = [B^-1 (x0^i - xb + dx0); P^-1 (p^i - pb + dp)],   Jb = 1/2 (x0^i - xb + dx0) . out_x, ...
        """
        v, w = self.split(u)
        out_x, out_p = self.split(out)
        Jb = Jp = 0.0
        if self.transform:
            if self.n_x:
                ev = np.add(self.v_b, v, out=out_x)
                Jb = 0.5 * float(ev @ ev)
            if self.n_p:
                ew = np.add(self.w_b, w, out=out_p)
                Jp = 0.5 * float(ew @ ew)
        else:  # dx0 = v, dp = w
            if self.n_x:
                ex = self.departure_x + v
                Jb = 0.5 * float(ex @ _into(self.cost.B.solve, ex, out=out_x))
            if self.n_p:
                ep = self.departure_p + w
                Jp = 0.5 * float(ep @ _into(self.cost.P.solve, ep, out=out_p))
        return Jb + self.Jb_fixed, Jp + self.Jp_fixed

    # --- Jq and its gradient -----------------------------------------------------------

    def _observation_sweep(self, u: np.ndarray, innovations: bool) -> tuple[float, np.ndarray, np.ndarray, np.ndarray | None]:
        """``(Jo, ax, ap, aeta)``: TL forward, ``z_k = R_k^-1 (H_k dx_k - d_k)``, AD backward.

        ``(ax, ap) = sum_k M_{k:0}^T H_k^T z_k`` is the gradient of ``Jo`` w.r.t.
        ``(dx0, dp)``, fresh arrays, and ``aeta`` (``None`` when the model error is
        not in the control) the gradient w.r.t. ``d eta``; :meth:`_add_control_gradient`
        takes them to ``u``.  With ``innovations=False`` the ``d_k`` are left out (the Hessian's sweep).
        """
        dx0, dp = self._tl_increments(u)
        deta = self.model_error_increment(u)
        dx = self.window.tl(dx0, dp) if deta is None else self.window.tl(dx0, dp, deta=deta)
        Jo, forcings = 0.0, {}
        for slot, H, d in self.observations:
            r = H.tl(dx[slot.step])
            if innovations:
                r = r - d
            J_k, z = _quadratic_term(slot.covariance, r)
            Jo += J_k
            _add_forcing(forcings, slot.step, H.ad(z))
        if deta is None:
            ax, ap = self.window.ad(forcings)
            return Jo, ax, ap, None
        ax, ap, aeta = self.window.ad_eta(forcings)
        return Jo, ax, ap, aeta

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
        Jo, ax, ap, aeta = self._observation_sweep(u, innovations=True)
        gradient = np.empty(self.size)
        Jb, Jp = self._background_into(u, out=gradient)
        Jm = self._model_error_into(u, out=gradient)
        self._add_control_gradient(ax, ap, out=gradient, aeta=aeta)
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
        _, ax, ap, aeta = self._observation_sweep(u, innovations=False)
        if self.transform:
            Au = u.copy()
        else:  # dx0 = v, dp = w
            Au = np.empty(self.size)
            (v, w), (Au_x, Au_p) = self.split(u), self.split(Au)
            if self.n_x:
                _into(self.cost.B.solve, v, out=Au_x)
            if self.n_p:
                _into(self.cost.P.solve, w, out=Au_p)
            if self.n_e:
                self.split_model_error(Au)[...] = _rows(self.cost.Q.solve, self.split_model_error(u))
        return self._add_control_gradient(ax, ap, out=Au, aeta=aeta)

    def hessian_matrix(self, block_size: int = 512) -> np.ndarray:
        """The Hessian ``A`` of ``Jq`` as a dense ``(size, size)`` matrix, column ``i`` = ``A e_i``.

        The columns come in blocks ``A U`` with ``U = [e_i .. e_{i+k-1}]``, ``k <= block_size``:
        one blocked TL and one blocked AD sweep per block (:func:`fourdvar.window.tl_block`,
        column by column for a model without blocks), the same algebra as
        :meth:`hessian_vector` on ``k`` columns::

            (dX0, dP) = (B^1/2 V, P^1/2 W)        F_k = H_k^T R_k^-1 H_k dX_k
            A U = U + [B^T/2 AX; P^T/2 AP]        (AX, AP) = sum_k M_{k:0}^T F_k

        ``H_k^T R_k^-1 H_k`` goes through the operator and covariance one column at a
        time: applied to the ``n_state`` unit vectors once (then one matrix product)
        when the state is smaller than the block.  Symmetrised, which it is up to round-off.
        """
        if self.n_e:  # the blocked sweeps carry no forcing: one Hessian-vector product per column
            return self._hessian_matrix_by_columns()
        A = np.empty((self.size, self.size))
        for start in range(0, self.size, block_size):
            k = min(block_size, self.size - start)
            U = np.zeros((self.size, k))
            U[start + np.arange(k), np.arange(k)] = 1.0
            A[:, start : start + k] = self._hessian_columns(U)
        return 0.5 * (A + A.T)

    def _hessian_matrix_by_columns(self) -> np.ndarray:
        """:meth:`hessian_matrix` one column ``A e_i`` at a time (:meth:`hessian_vector`), for a
        control that holds the model-error forcing."""
        A = np.empty((self.size, self.size))
        unit = np.zeros(self.size)
        for i in range(self.size):
            unit[i] = 1.0
            A[:, i] = self.hessian_vector(unit)
            unit[i] = 0.0
        return 0.5 * (A + A.T)

    def _hessian_columns(self, U: np.ndarray) -> np.ndarray:
        """``A U`` for a block ``U`` of shape ``(size, k)``."""
        model, k = self.cost.model, U.shape[1]
        (V, W), transform = (U[: self.n_x], U[self.n_x :]), self.transform
        dX0, dP = np.zeros((model.n_state, k)), np.zeros((model.n_params, k))
        if self.n_x:
            dX0[:] = _each_column(self.cost.B.sqrt, V) if transform else V
        if self.n_p:
            dP[:] = _each_column(self.cost.P.sqrt, W) if transform else W
        dX = tl_block(self.window, dX0, dP)
        forcings = {}
        for slot, H, _ in self.observations:
            def gauss_newton(dx, H=H, R=slot.covariance):
                return H.ad(R.solve(H.tl(dx)))  # H^T R^-1 H dx

            if model.n_state < k:
                F = _each_column(gauss_newton, np.eye(model.n_state)) @ dX[slot.step]
            else:
                F = _each_column(gauss_newton, dX[slot.step])
            _add_forcing(forcings, slot.step, F)
        aX, aP = ad_block(self.window, forcings) if forcings else (np.zeros((model.n_state, k)), np.zeros((model.n_params, k)))
        AU = U.copy() if transform else np.zeros_like(U)
        AU_x, AU_p = AU[: self.n_x], AU[self.n_x :]
        if self.n_x:
            AU_x += _each_column(self.cost.B.sqrt_t, aX) if transform else aX
            if not transform:
                AU_x += _each_column(self.cost.B.solve, V)
        if self.n_p:
            AU_p += _each_column(self.cost.P.sqrt_t, aP) if transform else aP
            if not transform:
                AU_p += _each_column(self.cost.P.solve, W)
        return AU

    def analysis(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``(x0^i + dx0, p^i + dp, eta^i + d eta)``: the next outer loop's guess (``eta`` is ``None`` in strong constraint)."""
        dx0, dp = self.increments(u)
        deta = self.model_error_increment(u)
        eta = self.eta if deta is None else self.eta + deta
        return self.x0 + dx0, self.p + dp, (None if eta is None else eta.copy())
