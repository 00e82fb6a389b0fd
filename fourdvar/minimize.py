"""Inner-loop minimisers of the quadratic cost ``Jq`` and the outer loop around them.

Inner loop, from ``u = 0``: scipy's L-BFGS-B (``lbfgs``), conjugate gradients on
``A u = -grad Jq(0)`` (``cg``, one Hessian product, a TL and an AD sweep, per iteration), or
the same in Lanczos form (``lanczos``, :mod:`fourdvar.lanczos`), whose Ritz pairs of ``A``
precondition the next outer loop (``preconditioner="spectral"``, from the second outer loop's
pairs on: the first loop's increment is the largest, its Hessian the furthest from the next).
Each stops at the first of:

* ``|grad Jq(u)| <= gradient_reduction * |grad Jq(0)|``;
* ``|grad Jq(u)| <= OUTER_SAFETY`` times what the outer loop needs;
* ``|grad Jq(u)| <= ROUNDOFF * eps * sqrt(n) * (|grad Jb+Jp (0)| + |grad Jo (0)|)``, the
  round-off of the terms that cancel in it (or an L-BFGS line search without progress);
* ``max_iterations``.

Outer loop: linearise at the guess, minimise ``Jq``, add the increment, until ``J`` is within
``tolerance`` (relative) of its minimum by either estimate (status 0):

* ``1/2 |grad_u J|^2 <= tolerance * J``, ``grad_u J = [B^T/2 grad_x0 J; P^T/2 grad_p J; ...]``:
  the Gauss-Newton Hessian ``A = I + L^T R^-1 L >= I`` in those variables, so
  ``J - J_min <~ 1/2 grad_u J . A^-1 grad_u J <= 1/2 |grad_u J|^2``;
* ``Jq(0) - Jq(u) <= tolerance * J`` after a converged inner loop whose full increment was
  kept (``1/2 g A^-1 g``, the decrease the Gauss-Newton model predicts).

With ``backtracking`` an increment that would raise ``J`` is halved, up to ``MAX_HALVINGS``
times, so ``J`` never increases between outer loops; when no fraction lowers it the outer
loop stops (status 3 when the promised decrease was at ``J``'s round-off, else 2).
:func:`minimize_4dvar` returns an :class:`AssimilationResult`, ``status`` a key of
:data:`STATUS_MESSAGES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.optimize

from .cost import CostTerms, FourDVarCost, IncrementalCost
from .lanczos import STALE, LanczosRun, SpectralPreconditioner, lanczos
from .options import PRECONDITIONERS, SolverOptions
from .posterior import Posterior
from .qc import HuberNorm
from .window import DivergenceError

__all__ = ["InnerLoopResult", "AssimilationResult", "minimize_inner", "minimize_4dvar", "INNER_METHODS",
           "PRECONDITIONERS", "STATUS_MESSAGES"]

ROUNDOFF = 10.0  # the round-off floor of |grad Jq|, in units of eps * sqrt(n) * (size of its terms)
ROUNDOFF_DECREASE = 1e3  # a predicted decrease of J below this * eps * J is lost in J's round-off
OUTER_SAFETY = 0.1  # an inner loop need not reduce |grad Jq| below this fraction of the outer target
STATUS_MESSAGES = {
    0: "converged: J is within the tolerance of its minimum (1/2 |grad J|^2 <= tolerance * J)",
    1: "not converged: the maximum number of outer loops was reached",
    2: "not converged: no fraction of the last increment lowered J",
    3: "converged to round-off: no fraction of the last increment lowered J, whose predicted decrease was at round-off",
}


@dataclass
class InnerLoopResult:
    """One inner minimisation: the minimiser ``u`` and the cost at every iteration (0 = start).

    ``reason`` says what stopped it: ``"reduced"`` (the requested gradient reduction),
    ``"enough"`` (below what the outer loop needs), ``"roundoff"`` (the gradient can fall
    no further), ``"maximum"`` (``max_iterations``).  ``converged`` is true for the first three.
    ``lanczos`` holds the Lanczos run (and its Ritz pairs) of the ``lanczos`` method.
    """

    u: np.ndarray
    J: list[float] = field(default_factory=list)
    Jb: list[float] = field(default_factory=list)
    Jp: list[float] = field(default_factory=list)
    Jo: list[float] = field(default_factory=list)
    gradient_norm: list[float] = field(default_factory=list)
    nit: int = 0
    nfev: int = 0
    message: str = ""
    converged: bool = False
    reason: str = ""
    lanczos: LanczosRun | None = None

    def record(self, terms: CostTerms, gradient_norm: float) -> None:
        for name in ("J", "Jb", "Jp", "Jo"):
            getattr(self, name).append(getattr(terms, name))
        self.gradient_norm.append(gradient_norm)

    def record_quadratic(self, jq: IncrementalCost, J0: float, g0: np.ndarray, u: np.ndarray, gradient_norm: float,
                         gradient: np.ndarray | None = None) -> None:
        """Record ``Jq(u) = Jq(0) + 1/2 (g0 + g(u)) . u`` (exact for a quadratic); ``g(u) . u = 0``
        when ``gradient`` is not given (the Lanczos iterate: its residual is orthogonal to the
        Krylov space that holds it).  ``Jb``, ``Jp`` directly, ``Jo`` the rest."""
        J = J0 + 0.5 * float((g0 if gradient is None else g0 + gradient) @ u)
        Jb, Jp, Jm, _ = jq.background(u)
        self.record(CostTerms(Jb, Jp, J - Jb - Jp - Jm, Jm), gradient_norm)

    @property
    def gradient_reduction(self) -> float:
        return self.gradient_norm[-1] / self.gradient_norm[0] if self.gradient_norm and self.gradient_norm[0] else 0.0


@dataclass(frozen=True)
class _Targets:
    """When an inner loop may stop: the gradient norms of each criterion, and the first to bind."""

    requested: float
    enough: float
    roundoff: float

    @property
    def gradient(self) -> float:
        return max(self.requested, self.enough, self.roundoff)

    @property
    def reason(self) -> str:
        return max((self.requested, "reduced"), (self.enough, "enough"), (self.roundoff, "roundoff"))[1]


def _finish(result: InnerLoopResult, targets: _Targets, stalled: bool = False) -> InnerLoopResult:
    """Set ``converged``, ``reason`` and a plain ``message`` from the last gradient norm."""
    reached = result.gradient_norm[-1] <= targets.gradient
    result.reason = targets.reason if reached else ("roundoff" if stalled else "maximum")
    result.converged = result.reason != "maximum"
    reduction = f"gradient reduced by {result.gradient_reduction:.1e}"
    result.message = {
        "reduced": f"{reduction} in {result.nit} iterations (the requested reduction)",
        "enough": f"{reduction} in {result.nit} iterations (enough for the outer loop's tolerance)",
        "roundoff": f"{reduction} in {result.nit} iterations, where round-off stops it falling further",
        "maximum": f"stopped at the maximum of {result.nit} iterations ({reduction})",
    }[result.reason]
    return result


def _lbfgs(jq: IncrementalCost, result: InnerLoopResult, g0: np.ndarray, targets: _Targets, max_iterations: int,
           preconditioner=None, memory: int = 20) -> InnerLoopResult:
    """scipy's L-BFGS-B on ``Jq``, restarted from where it stalls.

    ``Jq`` is exactly quadratic, so the change of cost from a reference point is
    ``Jq(u) - Jq(u_ref) = 1/2 (g(u) + g(u_ref)) . (u - u_ref)``; this is what scipy
    sees.  Its round-off shrinks with ``|g|`` and ``|u - u_ref|``, whereas ``Jq(u)``
    itself carries the round-off of the large observation term, on which the line
    search would stall long before a small gradient reduction is reached.  When
    scipy stops short of the target, it is restarted from its last point (fresh
    memory, new reference) while iterations remain; a restart that makes no
    progress means round-off has won.
    """
    target = targets.gradient
    evaluated = {}
    stalled = False

    while result.nit < max_iterations and result.gradient_norm[-1] > target:
        u_ref, g_ref = result.u.copy(), evaluated.get("gradient", g0)

        def fun(u):
            terms, gradient = jq.value_and_gradient(u)
            result.nfev += 1
            evaluated.update(u=u.copy(), terms=terms, gradient=gradient)
            return 0.5 * float((gradient + g_ref) @ (u - u_ref)), gradient

        def callback(intermediate_result):
            u = intermediate_result.x
            if not np.array_equal(evaluated.get("u"), u):  # not the last point evaluated (rare)
                fun(u)
            result.u = u.copy()
            result.nit += 1
            norm = float(np.linalg.norm(evaluated["gradient"]))
            result.record(evaluated["terms"], norm)
            if norm <= target or result.nit >= max_iterations:
                raise StopIteration

        nit_before = result.nit
        scipy.optimize.minimize(
            fun, u_ref, jac=True, method="L-BFGS-B", callback=callback,
            options={"maxiter": max_iterations - result.nit, "maxcor": memory, "ftol": 0.0, "gtol": 0.0, "maxls": 40},
        )
        if result.nit == nit_before:  # no progress from this point: round-off has won
            stalled = True
            break
        fun(result.u)  # the reference gradient of the next restart
    return _finish(result, targets, stalled)


def _conjugate_gradient(jq: IncrementalCost, result: InnerLoopResult, g0: np.ndarray, targets: _Targets, max_iterations: int,
                        preconditioner=None) -> InnerLoopResult:
    """CG on ``A u = -g0``, ``A`` the Hessian of ``Jq``; ``Jq(u) = Jq(0) + 1/2 g0 . u``."""
    J0 = result.J[0]
    u = result.u
    r = -g0  # residual -g(u)
    d = r.copy()
    rr = float(r @ r)
    while result.nit < max_iterations and np.sqrt(rr) > targets.gradient:
        Ad = jq.hessian_vector(d)
        result.nfev += 1
        curvature = float(d @ Ad)
        if not curvature > 0:
            raise DivergenceError(f"{jq.context}: the Hessian of Jq is not positive along a CG direction ({curvature:.3e})")
        alpha = rr / curvature
        u = u + alpha * d
        r = r - alpha * Ad
        rr_new = float(r @ r)
        d = r + (rr_new / rr) * d
        rr = rr_new
        result.nit += 1
        result.record_quadratic(jq, J0, g0, u, np.sqrt(rr), gradient=-r)
    result.u = u
    return _finish(result, targets)


def _lanczos(jq: IncrementalCost, result: InnerLoopResult, g0: np.ndarray, targets: _Targets, max_iterations: int,
             preconditioner: SpectralPreconditioner | None = None) -> InnerLoopResult:
    """CG in Lanczos form (:func:`fourdvar.lanczos.lanczos`), preconditioned by ``S`` when given."""
    J0 = result.J[0]

    def hessian_vector(v):
        result.nfev += 1
        return jq.hessian_vector(v)

    def stop(j, u, gradient_norm):
        result.nit = j
        result.record_quadratic(jq, J0, g0, u, gradient_norm)
        return gradient_norm <= targets.gradient

    try:
        run = lanczos(hessian_vector, g0, max_iterations, stop, preconditioner, stale=STALE)
    except np.linalg.LinAlgError:
        raise DivergenceError(f"{jq.context}: the Hessian of Jq is not positive-definite on the Lanczos space") from None
    result.u, result.lanczos = run.u, run
    _finish(result, targets)
    if run.stale:
        result.message += "; the spectral preconditioner was stale (the Hessian moved) and was dropped after one product"
    return result


INNER_METHODS = {"lbfgs": _lbfgs, "cg": _conjugate_gradient, "lanczos": _lanczos}
MAX_HALVINGS = 5


def _roundoff_floor(jq: IncrementalCost, g0: np.ndarray) -> float:
    """``ROUNDOFF * eps * sqrt(n) * (|grad (Jb + Jp)(0)| + |grad Jo(0)|)``: below this the
    gradient of ``Jq`` is the round-off of the terms that cancel in it."""
    g_background = jq.background(np.zeros(jq.size))[3]
    scale = float(np.linalg.norm(g_background) + np.linalg.norm(g0 - g_background))
    return ROUNDOFF * np.finfo(float).eps * np.sqrt(jq.size) * scale


def minimize_inner(jq: IncrementalCost, method: str = "lbfgs", max_iterations: int = 50, gradient_reduction: float = 1e-6,
                   preconditioner: SpectralPreconditioner | None = None, start: tuple | None = None,
                   gradient_target: float = 0.0) -> InnerLoopResult:
    """Minimise ``Jq`` from ``u = 0`` (see the module docstring for when it stops).

    ``start``: ``(terms, gradient)`` of ``Jq`` at 0 when already known; ``gradient_target``:
    a gradient norm that is enough (the outer loop's need); ``preconditioner``: a
    :class:`~fourdvar.lanczos.SpectralPreconditioner`, for the ``lanczos`` method (dropped after
    one Hessian product when that shows its newest factor stale: :data:`~fourdvar.lanczos.STALE`).
    """
    if method not in INNER_METHODS:
        raise ValueError(f"unknown inner method {method!r}; choose one of {', '.join(INNER_METHODS)}")
    if max_iterations < 1:
        raise ValueError(f"max_iterations must be at least 1, got {max_iterations}")
    if not 0 < gradient_reduction < 1:
        raise ValueError(f"gradient_reduction must be in (0, 1), got {gradient_reduction}")
    if preconditioner is not None and preconditioner.factors and method != "lanczos":
        raise ValueError(f"a spectral preconditioner needs the lanczos method, not {method!r}")
    result = InnerLoopResult(u=np.zeros(jq.size))
    if start is None:
        start = jq.value_and_gradient(result.u)
        result.nfev += 1
    terms0, g0 = start
    g0_norm = float(np.linalg.norm(g0))
    result.record(terms0, g0_norm)
    if g0_norm == 0.0:
        result.message, result.converged, result.reason = "the gradient is zero at the start", True, "reduced"
        return result
    targets = _Targets(requested=gradient_reduction * g0_norm, enough=OUTER_SAFETY * gradient_target, roundoff=_roundoff_floor(jq, g0))
    return INNER_METHODS[method](jq, result, g0, targets, int(max_iterations), preconditioner=preconditioner)


def _next_linearisation(objective, jq: IncrementalCost, u: np.ndarray, J_current: float, backtracking: bool, linearise):
    """``(step, jq_next, start)``: the outer loop's step length, ``Jq`` linearised there and its ``(terms, gradient)`` at 0.

    The full increment is tried by linearising at it (needed anyway when it is kept);
    with ``backtracking``, while it would not lower ``J`` it is halved (each fraction tried
    by one nonlinear forecast), up to ``MAX_HALVINGS`` times; ``(0, None, None)`` when
    no fraction lowers ``J``.
    """
    step = 1.0
    for halving in range(MAX_HALVINGS + 1 if backtracking else 1):
        try:
            if halving == 0:
                jq_next, start = linearise(*jq.analysis(u))
                J_trial = start[0].J
            else:
                J_trial = objective.evaluate(*jq.analysis(step * u)).J
        except DivergenceError:
            if not backtracking:
                raise
            J_trial = np.inf
        if not backtracking or J_trial < J_current:
            if halving:
                jq_next, start = linearise(*jq.analysis(step * u))
            return step, jq_next, start
        step *= 0.5
    return 0.0, None, None


class AssimilationResult(scipy.optimize.OptimizeResult):
    """The outcome of :func:`minimize_4dvar`, in the manner of ``scipy.optimize.OptimizeResult``.

    Attributes: ``x0``, ``p`` (the analysis), ``model_error`` (the analysed forcing ``eta``,
    ``(n_sub, n_state)``; ``n_sub = 0`` in strong constraint); ``success`` (the nonlinear problem is solved
    to the tolerance, or as far as round-off allows), ``status`` (a key of :data:`STATUS_MESSAGES`) and ``message`` (what
    stopped the outer loops, in words); ``nit`` and ``nfev`` (inner iterations and cost
    evaluations, all outer loops); ``outer`` (one dict per outer loop that ran an inner
    loop: the nonlinear ``J``, ``Jb``, ``Jp``, ``Jo`` and control-space gradient norm at its
    linearisation point, its ``inner`` :class:`InnerLoopResult` and ``step_length``);
    ``final`` (the nonlinear cost terms at the analysis) with ``final_gradient_norm``
    (control space); ``posterior`` (with the ``lanczos`` method, a :class:`fourdvar.posterior.Posterior`:
    the Gauss-Newton inverse Hessian at the analysis, saying how many pairs it has, how many
    converged and its estimated std error; else ``None``); ``varqc_weights`` (with VarQC, the
    Huber weights of each slot's observations at the analysis).
    """

    def __repr__(self) -> str:
        """A few lines: success, message, the final cost terms, the counts and the shapes (not the arrays)."""
        final = self.get("final")
        cost = f"J={final.J:.6g} (Jb={final.Jb:.4g}, Jp={final.Jp:.4g}, Jo={final.Jo:.4g}, Jm={final.Jm:.4g})" if final is not None else "J=n/a"
        shapes = ", ".join(f"{key} {np.shape(self[key])}" for key in ("x0", "p", "model_error") if key in self)
        return (f"AssimilationResult(success={self.get('success')}, message={self.get('message')!r},\n"
                f"  {cost}, final gradient norm {self.get('final_gradient_norm', float('nan')):.3g},\n"
                f"  {len(self.get('outer', []))} outer loop(s), nit={self.get('nit')}, nfev={self.get('nfev')}, shapes: {shapes})")

    __str__ = __repr__


def minimize_4dvar(cost: FourDVarCost, x0: np.ndarray, p: np.ndarray, control="state",
                   options: SolverOptions | None = None, *, eta: np.ndarray | None = None, huber: float | None = None,
                   **changes) -> AssimilationResult:
    """Incremental 4D-Var from ``(x0, p, eta)`` (``eta`` default 0): at most ``outer_loops`` outer loops,
    until ``1/2 |grad_u J|^2 <= tolerance * J`` (module docstring).

    ``options``: a :class:`fourdvar.options.SolverOptions` (default: its defaults) with the keyword
    ``changes`` applied.  ``gradient_reduction`` (inexact Gauss-Newton): each inner loop's target.
    ``preconditioner="spectral"`` (``lanczos`` only, its default): the Ritz pairs of the previous
    inner loops, at most ``posterior_rank`` per loop (the largest; default all).  With ``lanczos``,
    ``result.posterior`` is the Gauss-Newton posterior at the analysis
    (:meth:`fourdvar.posterior.Posterior.at_analysis`; ``posterior_method`` ``"auto"``, ``"dense"``,
    ``"lanczos"`` or ``"none"``; its std to ``posterior_accuracy`` in at most ``posterior_iterations``
    Hessian products).  ``huber``: VarQC, ``Jo`` the Huber norm with that threshold
    (:class:`fourdvar.qc.HuberNorm`), its weights at the analysis in ``result.varqc_weights``.
    ``callback(outer_loop, record)`` is called after each outer loop.
    """
    options = SolverOptions.of(options, **changes)
    method, transform, tolerance = options.method, options.transform, options.tolerance
    preconditioner = options.preconditioner or ("spectral" if method == "lanczos" else "none")
    objective = cost if huber is None else HuberNorm(cost, huber)  # the nonlinear J: evaluate and linearise

    def linearise(x, q, e, outer_loop=0):
        return objective.linearise(x, q, e, control=control, transform=transform, outer_loop=outer_loop)

    jq, start = linearise(np.asarray(x0, dtype=float).copy(), np.asarray(p, dtype=float).copy(), cost.checked_model_error(eta))
    S = SpectralPreconditioner(jq.size)
    outer, status, criterion = [], 1, ""
    for i in range(options.outer_loops + 1):
        terms, gradient = start
        gradient_norm = jq.space.transformed_norm(gradient)  # |grad_u J| in the transformed variables, whatever transform
        gradient_target = np.sqrt(2.0 * tolerance * max(terms.J, 0.0))
        if gradient_norm <= gradient_target:
            status, criterion = 0, "gradient"
            break
        if i == options.outer_loops:
            break
        inner = minimize_inner(jq, method, options.max_iterations, options.gradient_reduction, preconditioner=S,
                               start=start, gradient_target=gradient_target if transform else 0.0)
        record = {"J": terms.J, "Jb": terms.Jb, "Jp": terms.Jp, "Jo": terms.Jo, "gradient_norm": gradient_norm, "inner": inner}
        outer.append(record)
        if inner.lanczos is not None and preconditioner == "spectral" and i > 0:  # not the background's pairs
            used = inner.lanczos.preconditioner or SpectralPreconditioner(jq.size)
            S = used.extended(inner.lanczos.preconditioner_factor(options.posterior_rank))
        step, jq_next, start_next = _next_linearisation(
            objective, jq, inner.u, terms.J, options.backtracking, lambda x, q, e: linearise(x, q, e, outer_loop=i + 1))
        record["step_length"] = step
        if options.callback is not None:
            options.callback(i, record)
        if jq_next is None:
            status = 3 if inner.J[0] - inner.J[-1] <= ROUNDOFF_DECREASE * np.finfo(float).eps * abs(terms.J) else 2
            break
        jq, start = jq_next, start_next
        if (step == 1.0 and inner.converged and inner.J[0] - inner.J[-1] <= tolerance * terms.J
                and inner.gradient_norm[-1] <= gradient_target):
            status, criterion = 0, "decrease"
            break

    final, gradient = start
    final_gradient_norm = jq.space.transformed_norm(gradient)
    posterior = None
    if method == "lanczos" and options.posterior_method != "none" and outer:
        posterior = Posterior.at_analysis(jq, S, accuracy=options.posterior_accuracy, method=options.posterior_method,
                                          max_iterations=options.posterior_iterations)
    loops = f"{len(outer)} outer loop(s)"
    message = {
        (0, "gradient"): f"converged after {loops}: 1/2 |grad J|^2 <= {tolerance:.0e} J, so J is within that (relative) of its minimum",
        (0, "decrease"): f"converged after {loops}: the last Gauss-Newton increment lowered J by less than {tolerance:.0e} J",
        (1, ""): f"not converged after the maximum of {loops}: 1/2 |grad J|^2 = {0.5 * final_gradient_norm**2 / max(final.J, 1e-300):.1e} J > {tolerance:.0e} J",
        (2, ""): f"stopped after {loops}: no fraction of the last increment lowered J (the Gauss-Newton step failed)",
        (3, ""): f"converged to round-off after {loops}: the last increment could lower J only within round-off (the tolerance {tolerance:.0e} asks for more)",
    }[status, criterion]
    return AssimilationResult(
        x0=jq.x0, p=jq.p, success=status in (0, 3), status=status, message=message,
        nit=sum(r["inner"].nit for r in outer), nfev=sum(r["inner"].nfev for r in outer) + len(outer) + 1,
        outer=outer, final=final, final_gradient_norm=final_gradient_norm, control=jq.control.names(), posterior=posterior,
        model_error=np.zeros((0, cost.model.n_state)) if jq.eta is None else jq.eta,
        varqc_weights=[] if huber is None else objective.weights(jq.x0, jq.p, jq.eta)[0],
    )
