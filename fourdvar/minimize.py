"""Inner-loop minimisers of the quadratic cost ``Jq`` and the outer loop around them.

Inner loop: ``scipy.optimize.minimize(method="L-BFGS-B")`` (the default), or
conjugate gradients, the natural solver for a quadratic (``A u = -grad Jq(0)``,
one Hessian-vector product, i.e. one TL and one AD sweep, per iteration).
Both stop after ``max_iterations`` or when ``|grad Jq(u)| <= gradient_reduction * |grad Jq(0)|``.

Outer loop: linearise at the current guess, minimise ``Jq``, add the increment,
repeat.  With ``backtracking`` (the default) the increment is halved, up to
``MAX_HALVINGS`` times, while it would raise the nonlinear cost, and dropped if
no fraction lowers it: Gauss-Newton safeguarded so that the nonlinear ``J`` never
increases from one outer loop to the next (it can when the increment is large,
e.g. network weights early in online learning).  :func:`minimize_4dvar` returns
an :class:`AssimilationResult`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.optimize

from .cost import CostTerms, FourDVarCost, IncrementalCost
from .window import DivergenceError

__all__ = ["InnerLoopResult", "AssimilationResult", "minimize_inner", "minimize_4dvar", "INNER_METHODS"]


@dataclass
class InnerLoopResult:
    """One inner minimisation: the minimiser ``u`` and the cost at every iteration (0 = start)."""

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

    def record(self, terms: CostTerms, gradient_norm: float) -> None:
        self.J.append(terms.J)
        self.Jb.append(terms.Jb)
        self.Jp.append(terms.Jp)
        self.Jo.append(terms.Jo)
        self.gradient_norm.append(gradient_norm)

    @property
    def gradient_reduction(self) -> float:
        return self.gradient_norm[-1] / self.gradient_norm[0] if self.gradient_norm and self.gradient_norm[0] else 0.0


def _lbfgs(jq: IncrementalCost, max_iterations: int, gradient_reduction: float, memory: int = 20) -> InnerLoopResult:
    """scipy's L-BFGS-B on ``Jq``, restarted from where it stalls.

    ``Jq`` is exactly quadratic, so the change of cost from a reference point is
    ``Jq(u) - Jq(u_ref) = 1/2 (g(u) + g(u_ref)) . (u - u_ref)``; this is what scipy
    sees.  Its round-off shrinks with ``|g|`` and ``|u - u_ref|``, whereas ``Jq(u)``
    itself carries the round-off of the large observation term, on which the line
    search would stall long before a small gradient reduction is reached.  When
    scipy stops short of the gradient criterion, it is restarted from its last
    point (fresh memory, new reference) while iterations remain.
    """
    result = InnerLoopResult(u=np.zeros(jq.size))
    terms0, gradient0 = jq.value_and_gradient(result.u)
    result.nfev += 1
    g0 = float(np.linalg.norm(gradient0))
    result.record(terms0, g0)
    if g0 == 0.0:
        result.message, result.converged = "gradient is zero at the start", True
        return result
    target = gradient_reduction * g0
    evaluated = {}
    message = ""

    while result.nit < max_iterations and result.gradient_norm[-1] > target:
        u_ref, g_ref = result.u.copy(), evaluated.get("gradient", gradient0)

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
        outcome = scipy.optimize.minimize(
            fun, u_ref, jac=True, method="L-BFGS-B", callback=callback,
            options={"maxiter": max_iterations - result.nit, "maxcor": memory, "ftol": 0.0, "gtol": 0.0, "maxls": 40},
        )
        message = str(outcome.message)
        if result.nit == nit_before:  # no progress from this point: round-off has won
            break
        fun(result.u)  # the reference gradient of the next restart

    result.converged = result.gradient_norm[-1] <= target
    result.message = (
        f"gradient norm reduced by {result.gradient_reduction:.1e}" if result.converged
        else f"stopped after {result.nit} iterations (gradient reduced by {result.gradient_reduction:.1e}; {message})"
    )
    return result


def _conjugate_gradient(jq: IncrementalCost, max_iterations: int, gradient_reduction: float) -> InnerLoopResult:
    """CG on ``A u = -g0``, ``A`` the Hessian of ``Jq``; ``Jq(u) = Jq(0) + 1/2 (g0 + g(u)) . u``."""
    result = InnerLoopResult(u=np.zeros(jq.size))
    terms0, g0 = jq.value_and_gradient(result.u)
    result.nfev += 1
    g0_norm = float(np.linalg.norm(g0))
    result.record(terms0, g0_norm)
    u = result.u
    r = -g0  # residual -g(u)
    d = r.copy()
    rr = float(r @ r)
    while result.nit < max_iterations and np.sqrt(rr) > gradient_reduction * g0_norm:
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
        J = terms0.J + 0.5 * float((g0 - r) @ u)
        Jb, Jp, _ = jq.background(u)
        Jm = jq.model_error_term(u)
        result.record(CostTerms(Jb, Jp, J - Jb - Jp - Jm, Jm), np.sqrt(rr))
    result.u = u
    result.converged = np.sqrt(rr) <= gradient_reduction * g0_norm
    result.message = (
        f"gradient norm reduced by {result.gradient_reduction:.1e}" if result.converged
        else f"stopped after {result.nit} iterations (maximum)"
    )
    return result


INNER_METHODS = {"lbfgs": _lbfgs, "cg": _conjugate_gradient}
MAX_HALVINGS = 5


def minimize_inner(jq: IncrementalCost, method: str = "lbfgs", max_iterations: int = 50, gradient_reduction: float = 1e-6) -> InnerLoopResult:
    """Minimise ``Jq`` from ``u = 0``."""
    if method not in INNER_METHODS:
        raise ValueError(f"unknown inner method {method!r}; choose one of {', '.join(INNER_METHODS)}")
    if max_iterations < 1:
        raise ValueError(f"max_iterations must be at least 1, got {max_iterations}")
    if not 0 < gradient_reduction < 1:
        raise ValueError(f"gradient_reduction must be in (0, 1), got {gradient_reduction}")
    return INNER_METHODS[method](jq, int(max_iterations), float(gradient_reduction))


def _step_length(cost: FourDVarCost, jq: IncrementalCost, u: np.ndarray, J_current: float) -> float:
    """The largest ``2^-j`` (``j <= MAX_HALVINGS``) with ``J(analysis(2^-j u)) < J_current``, else 0."""
    step = 1.0
    for _ in range(MAX_HALVINGS + 1):
        try:
            J_trial = cost.evaluate(*jq.analysis(step * u)).J
        except DivergenceError:
            J_trial = np.inf
        if J_trial < J_current:
            return step
        step *= 0.5
    return 0.0


class AssimilationResult(scipy.optimize.OptimizeResult):
    """The outcome of :func:`minimize_4dvar`, in the manner of ``scipy.optimize.OptimizeResult``.

    Attributes: ``x0``, ``p`` (the analysis), ``model_error`` (the analysed forcing
    ``eta``, ``(n_sub, n_state)``; ``n_sub = 0`` in strong constraint), ``success``, ``message``, ``nit``
    and ``nfev`` (inner iterations and cost evaluations, all outer loops),
    ``outer`` (one dict per outer loop: the nonlinear ``J``, ``Jb``, ``Jp``,
    ``Jo`` and gradient norm at its linearisation point, and its ``inner``
    :class:`InnerLoopResult`), and ``final`` (the nonlinear cost terms at the
    analysis) with ``final_gradient_norm``.
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


def minimize_4dvar(
    cost: FourDVarCost,
    x0: np.ndarray,
    p: np.ndarray,
    control="state",
    outer_loops: int = 3,
    method: str = "lbfgs",
    max_iterations: int = 50,
    gradient_reduction: float = 1e-6,
    transform: bool = True,
    callback=None,
    backtracking: bool = True,
    eta: np.ndarray | None = None,
) -> AssimilationResult:
    """Incremental 4D-Var: ``outer_loops`` relinearisations, each with an inner minimisation.

    ``eta`` is the first guess of the model-error forcing of a weak-constraint
    cost (default 0).

    ``callback(outer_loop, record)`` is called after each outer loop (for progress).
    Each outer record holds ``step_length``: the fraction of the increment kept.
    """
    if outer_loops < 1:
        raise ValueError(f"outer_loops must be at least 1, got {outer_loops}")
    x0 = np.asarray(x0, dtype=float).copy()
    p = np.asarray(p, dtype=float).copy()
    eta = cost.checked_model_error(eta)
    outer = []
    for i in range(outer_loops):
        jq = IncrementalCost(cost, x0, p, control=control, transform=transform, outer_loop=i, eta=eta)
        inner = minimize_inner(jq, method, max_iterations, gradient_reduction)
        record = {
            "J": inner.J[0], "Jb": inner.Jb[0], "Jp": inner.Jp[0], "Jo": inner.Jo[0],
            "gradient_norm": inner.gradient_norm[0], "inner": inner,
        }
        outer.append(record)
        step_length = _step_length(cost, jq, inner.u, inner.J[0]) if backtracking else 1.0
        record["step_length"] = step_length
        x0, p, eta = jq.analysis(step_length * inner.u)
        if callback is not None:
            callback(i, record)
    final, gx, gp, geta = cost.full_gradient(x0, p, eta)
    final_gradient_norm = float(np.linalg.norm(jq.control_gradient(gx, gp, geta)))  # same space as the inner loops
    converged = outer[-1]["inner"].converged
    return AssimilationResult(
        x0=x0, p=p, success=bool(converged),
        message=f"{outer_loops} outer loop(s); last inner loop: {outer[-1]['inner'].message}",
        nit=sum(r["inner"].nit for r in outer), nfev=sum(r["inner"].nfev for r in outer),
        outer=outer, final=final, final_gradient_norm=final_gradient_norm, control=jq.control.names(),
        model_error=np.zeros((0, cost.model.n_state)) if eta is None else eta,
    )
