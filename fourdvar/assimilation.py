"""The public entry point for one assimilation window: :class:`FourDVar`.

::

    from fourdvar import FourDVar
    from fourdvar.covariances import Diagonal, PeriodicCorrelation

    problem = FourDVar(model, observations, xb=xb, B=PeriodicCorrelation(40, 2.0, std=1.0),
                       pb=pb, P=Diagonal(0.5, size=model.n_params), control="both")
    result = problem.solve(outer_loops=3, max_iterations=50, gradient_reduction=1e-6)
    result.x0, result.p, result.final.J, result.qc.summary(), result.posterior.std_x0

Quality control (:mod:`fourdvar.qc`) leaves the observations it rejects out of ``problem.cost``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np
import scipy.linalg

from .cost import Control, FourDVarCost, IncrementalCost
from .qc import QualityControl, analysis_check, screen, with_slots
from .minimize import AssimilationResult, minimize_4dvar
from .options import AS_BUILT, SolverOptions

__all__ = ["FourDVar"]

class FourDVar:
    """Incremental 4D-Var over one window: the cost of :class:`fourdvar.cost.FourDVarCost`.

    ``model`` has the model interface; ``observations`` are slots (``step`` from the window start,
    ``values``, ``operator``, ``covariance``); ``pb`` is needed whenever the model has parameters,
    ``P`` when they are in the ``control`` (:meth:`fourdvar.cost.Control.parse`), ``Q`` (with its
    sub-windows of ``model_error_every`` steps) when the model error is, ``result.model_error``
    being then the analysed forcing ``(n_sub, n_state)``.  ``qc``: a
    :class:`fourdvar.qc.QualityControl` (``None``: none; non-finite values are always left out);
    ``problem.qc_record`` and each result's ``qc`` say which observations it rejected.
    """

    def __init__(self, model, observations: Sequence, xb, B=None, pb=None, P=None, control="state", n_steps: int | None = None,
                 Q=None, model_error_every: int | None = None, qc: QualityControl | None = QualityControl()):
        self.control = Control.parse(control)
        if model.n_params and pb is None:
            raise ValueError(f"the model has {model.n_params} parameters: give their background/fixed values pb")
        if self.control.model_error and Q is None:
            raise ValueError("the model error is in the control: give its covariance Q")
        weak = self.control.model_error
        cost = FourDVarCost(model, observations, xb, B=B, pb=pb, P=P if self.control.params else None, n_steps=n_steps,
                            Q=Q if weak else None, model_error_every=model_error_every if weak else None)
        self.model, self._unscreened = model, cost
        self._screen(qc)

    def _screen(self, qc: QualityControl | None) -> None:
        """``self.cost``: the observations less those ``qc`` rejects before any solve."""
        self.cost, self.qc = self._unscreened, qc
        kept, self.qc_record = screen(self.cost, qc)
        if self.qc_record.n_rejected:
            self._rebuild(kept)

    def incremental_cost(self, x0=None, p=None, transform: bool = True, eta=None) -> IncrementalCost:
        """``Jq`` linearised at ``(x0, p)`` (default: the background) and, in weak constraint, ``eta`` (default 0)."""
        x0, p = self._first_guess(x0, p)
        return IncrementalCost(self.cost, x0, p, control=self.control, transform=transform, eta=eta)

    def trajectory(self, x0, p, eta=None) -> np.ndarray:
        """The nonlinear trajectory over the window from ``(x0, p)``, forced by ``eta`` in weak constraint
        (e.g. ``problem.trajectory(result.x0, result.p, result.model_error)``)."""
        eta = None if self.cost.Q is None else eta
        return self.cost.trajectory(np.asarray(x0, dtype=float), np.asarray(p, dtype=float), eta)

    def params_posterior_covariance(self, x0=None, p=None, eta=None) -> np.ndarray:
        """The parameters' Gauss-Newton posterior error covariance at ``(x0, p, eta)``, marginal over the
        state (and the forcing)::

            P^a = P^1/2 (A^-1)_ww P^T/2,     A = I + L^T R^-1 L   in the control variables u = [v; w; ...]

        ``A`` the dense Hessian of ``Jq`` (:meth:`IncrementalCost.hessian_matrix`).  Needs the
        parameters in the control.
        """
        if not self.control.params:
            raise ValueError("params_posterior_covariance needs the parameters in the control")
        incremental = self.incremental_cost(x0, p, transform=True, eta=eta)
        A = incremental.hessian_matrix()
        n_x, n_p = incremental.n_x, incremental.n_p
        C_w = scipy.linalg.cho_solve(scipy.linalg.cho_factor(A), np.eye(incremental.size)[:, n_x : n_x + n_p])[n_x : n_x + n_p]
        P_sqrt = np.column_stack([self.cost.P.sqrt(unit) for unit in np.eye(n_p)])
        Pa = P_sqrt @ C_w @ P_sqrt.T
        return 0.5 * (Pa + Pa.T)

    def _first_guess(self, x0, p):
        x0 = self.cost.xb if x0 is None else np.asarray(x0, dtype=float)
        p = self.cost.pb if p is None else np.asarray(p, dtype=float)
        return x0, p

    def solve(self, x0=None, p=None, options: SolverOptions | None = None, *, eta=None, **changes) -> AssimilationResult:
        """Run at most ``options.outer_loops`` outer loops from the first guess ``(x0, p)`` and, in
        weak constraint, ``eta`` (default: the background, zero forcing), until
        ``1/2 |grad_u J|^2 <= tolerance * J``.

        ``options``: a :class:`fourdvar.options.SolverOptions` (default: its defaults), with the
        keyword ``changes`` applied (``solve(outer_loops=3)``); see
        :func:`fourdvar.minimize.minimize_4dvar` for each option.  ``options.qc``: quality control
        other than the problem was built with (the observations screened again, from all of them).
        """
        options = SolverOptions.of(options, **changes)
        if options.qc is not AS_BUILT and options.qc != self.qc:
            self._screen(options.qc)
        x0, p = self._first_guess(x0, p)
        keywords = dict(control=self.control, options=options, huber=None if self.qc is None else self.qc.huber)
        result = self._analysis_checked(minimize_4dvar(self.cost, x0, p, eta=eta, **keywords), keywords)
        result["qc"] = replace(self.qc_record, weights=result["varqc_weights"])
        return result

    def _analysis_checked(self, result: AssimilationResult, options: dict) -> AssimilationResult:
        """The solve continued without the observations the analysis check rejects, until it
        rejects none (:func:`fourdvar.qc.analysis_check`); only after a solve that converged,
        the departures of an unconverged analysis saying little."""
        k = None if self.qc is None else self.qc.analysis_check
        while k is not None and result.success and self.cost.slots:
            eta = result.model_error if result.model_error.shape[0] else None
            kept, record = analysis_check(self.cost, result.x0, result.p, eta, k)
            if not record.n_rejected:
                break
            self._rebuild(kept)
            self.qc_record = self.qc_record.merged(record)
            earlier = result
            result = minimize_4dvar(self.cost, result.x0, result.p, eta=eta, **options)
            result.update(outer=earlier.outer + result.outer, nit=earlier.nit + result.nit, nfev=earlier.nfev + result.nfev,
                          message=f"{result.message} (after the analysis check rejected {record.n_rejected} observation(s))")
        return result

    def _rebuild(self, slots) -> None:
        """``self.cost`` with these observation slots, all else the same."""
        self.cost = with_slots(self.cost, slots)
