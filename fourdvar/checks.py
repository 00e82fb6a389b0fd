"""Reusable consistency checks for tangent-linear and adjoint code.

Each check takes any object with the interface (a model, an observation
operator, a covariance, a cost) and returns a :class:`CheckResult` with the
numbers it measured and a verdict.  The three kinds:

* **Adjoint (dot-product) test**:  ``<L u, w> == <u, L^T w>`` for random ``u, w``;
  the relative error ``|<L u, w> - <u, L^T w>| / max(|<L u, w>|, tiny)`` must be
  below ``1e-12`` in float64.  For a model, ``u = (dx, dp)`` and
  ``<u, L^T w> = <dx, ax> + <dp, ap>``.
* **Tangent-linear (Taylor) test**: ``r(a) = |F(u + a h) - F(u) - a F'h| / |a F'h|``
  for ``a = 1e-1 .. 1e-8``.  A correct TL makes ``r`` fall like ``a`` (slope 1 in
  log-log) until round-off takes over; we report the slope fitted over the best
  five consecutive decades and require it to be ``1 +- 0.1``, and the ratio
  itself to fall below ``1e-5`` somewhere (else the direction is too curved for
  the test to say anything, and it fails).
* **Gradient test**: ``(J(u + a h) - J(u)) / (a <grad J, h>) -> 1`` with error
  ``O(a)``; the same slope criterion applies to ``|ratio - 1|``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

__all__ = [
    "CheckResult",
    "ADJOINT_TOLERANCE",
    "DEFAULT_AMPLITUDES",
    "dot_product_test",
    "taylor_test",
    "gradient_test",
    "model_adjoint_test",
    "model_chain_adjoint_test",
    "model_taylor_test",
    "model_linearization_test",
    "operator_adjoint_test",
    "operator_taylor_test",
    "covariance_sqrt_adjoint_test",
    "covariance_inverse_test",
    "check_model",
    "check_cost",
    "format_table",
    "forced_window_adjoint_test",
    "check_weak_cost",
]

ADJOINT_TOLERANCE = 1e-12
SLOPE_TOLERANCE = 0.1
MIN_DECADES = 5
CONVERGED_ERROR = 1e-5  # the Taylor remainder (or |ratio - 1|) must get at least this small
DEFAULT_AMPLITUDES = 10.0 ** -np.arange(1, 9)
_TINY = np.finfo(float).tiny
_ROUNDOFF = 64 * np.finfo(float).eps  # cancellation error allowed for an exactly linear map


@dataclass
class CheckResult:
    """What one check measured.

    ``value`` is the headline number (relative error, or fitted slope) and
    ``tolerance`` what it was compared with; ``amplitudes``/``ratios`` hold the
    Taylor or gradient sequence when there is one.
    """

    name: str
    passed: bool
    value: float
    tolerance: float
    amplitudes: np.ndarray | None = None
    ratios: np.ndarray | None = None
    details: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"

    def __str__(self) -> str:
        return f"{self.name}: {self.verdict} (value {self.value:.3e}, tolerance {self.tolerance:.1e}) {self.details}".rstrip()


def _dot(parts_a: Sequence[np.ndarray], parts_b: Sequence[np.ndarray]) -> float:
    return float(sum(np.vdot(a, b) for a, b in zip(parts_a, parts_b)))


def dot_product_test(
    tl: Callable[..., np.ndarray],
    ad: Callable[[np.ndarray], Sequence[np.ndarray]],
    inputs: Sequence[np.ndarray],
    output_adjoint: np.ndarray,
    name: str = "adjoint",
    tolerance: float = ADJOINT_TOLERANCE,
) -> CheckResult:
    """``|<tl(*inputs), w> - sum_i <inputs_i, ad(w)_i>| / |<tl(*inputs), w>| < tolerance``."""
    lhs = float(np.vdot(tl(*inputs), output_adjoint))
    rhs = _dot(inputs, ad(output_adjoint))
    error = abs(lhs - rhs) / max(abs(lhs), _TINY)
    return CheckResult(
        name, bool(error < tolerance), error, tolerance,
        details=f"<Lu,w>={lhs:.15e} <u,L*w>={rhs:.15e}", extra={"lhs": lhs, "rhs": rhs},
    )


def _fit_slope(amplitudes: np.ndarray, errors: np.ndarray) -> tuple[float, int]:
    """Slope of ``log10(errors)`` against ``log10(amplitudes)`` over the window of
    ``MIN_DECADES + 1`` consecutive amplitudes whose slope is closest to 1.

    Returns ``(slope, start index)``; ``nan`` when there are too few usable points.
    """
    window = MIN_DECADES + 1
    log_a = np.log10(amplitudes)
    with np.errstate(divide="ignore"):
        log_e = np.log10(errors)
    best = (np.nan, 0)
    for start in range(len(amplitudes) - window + 1):
        la, le = log_a[start : start + window], log_e[start : start + window]
        if not np.all(np.isfinite(le)):
            continue
        slope = float(np.polyfit(la, le, 1)[0])
        if np.isnan(best[0]) or abs(slope - 1) < abs(best[0] - 1):
            best = (slope, start)
    return best


def _slope_verdict(name, amplitudes, ratios, errors, roundoff, label) -> CheckResult:
    """``errors`` must fall like ``a`` and become small.

    ``roundoff`` is the size of ``errors`` that floating-point cancellation alone
    would produce at each amplitude.  Two conditions make a pass: the slope fitted
    over five decades is ``1 +- 0.1``, and the smallest error reached is below
    ``CONVERGED_ERROR``.  The second matters along strongly curved directions,
    where the curvature alone gives slope 1 at every amplitude tried even when the
    derivative is wrong; such a test is inconclusive and reported as a failure.
    """
    amplitudes = np.asarray(amplitudes, dtype=float)
    if np.all(errors <= roundoff):
        # The map is linear (or the cost quadratic) along this direction: the
        # first-order expansion is exact to round-off at every amplitude, a pass.
        return CheckResult(
            name, True, 1.0, SLOPE_TOLERANCE, amplitudes, ratios,
            details=f"{label} exact to round-off at every amplitude (linear along this direction)",
        )
    slope, start = _fit_slope(amplitudes, errors)
    stop = start + MIN_DECADES
    smallest = float(np.nanmin(errors))
    slope_ok = bool(np.isfinite(slope) and abs(slope - 1.0) <= SLOPE_TOLERANCE)
    passed = slope_ok and smallest <= CONVERGED_ERROR
    details = f"fitted slope {slope:.3f} over a = {amplitudes[start]:.0e} .. {amplitudes[stop]:.0e} (want 1 +- {SLOPE_TOLERANCE})"
    if slope_ok and not passed:
        details += f"; but the error never fell below {smallest:.1e} (want <= {CONVERGED_ERROR:.0e}): inconclusive, too curved along this direction"
    return CheckResult(
        name, passed, slope, SLOPE_TOLERANCE, amplitudes, ratios,
        details=details, extra={"slope": slope, "window": (start, stop), "smallest_error": smallest},
    )


def taylor_test(
    f: Callable[[np.ndarray], np.ndarray],
    tl: Callable[[np.ndarray], np.ndarray],
    u: np.ndarray,
    h: np.ndarray,
    name: str = "tangent-linear",
    amplitudes: Sequence[float] = DEFAULT_AMPLITUDES,
) -> CheckResult:
    """``r(a) = |f(u + a h) - f(u) - a tl(h)| / |a tl(h)|`` must fall like ``a``.

    ``u`` and ``h`` are flat vectors; ``f`` and ``tl`` take flat vectors.
    """
    f0 = f(u)
    df = tl(h)
    norm_df = np.linalg.norm(df)
    if norm_df == 0:
        return CheckResult(name, False, np.nan, SLOPE_TOLERANCE, details="the TL output is zero along this direction")
    perturbed = [f(u + a * h) for a in amplitudes]
    ratios = np.array([np.linalg.norm(fa - f0 - a * df) / (a * norm_df) for a, fa in zip(amplitudes, perturbed)])
    roundoff = np.array([_ROUNDOFF * (np.linalg.norm(f0) + np.linalg.norm(fa)) / (a * norm_df) for a, fa in zip(amplitudes, perturbed)])
    return _slope_verdict(name, amplitudes, ratios, ratios, roundoff, "TL")


def gradient_test(
    J: Callable[[np.ndarray], float],
    gradient: np.ndarray,
    u: np.ndarray,
    h: np.ndarray,
    name: str = "gradient",
    amplitudes: Sequence[float] = DEFAULT_AMPLITUDES,
) -> CheckResult:
    """``ratio(a) = (J(u + a h) - J(u)) / (a <grad J(u), h>)`` must tend to 1 with ``|ratio - 1| = O(a)``."""
    amplitudes = np.asarray(amplitudes, dtype=float)
    J0 = J(u)
    slope_along_h = float(np.vdot(gradient, h))
    if slope_along_h == 0:
        return CheckResult(name, False, np.nan, SLOPE_TOLERANCE, details="<grad J, h> is zero")
    perturbed = np.array([J(u + a * h) for a in amplitudes])
    ratios = (perturbed - J0) / (amplitudes * slope_along_h)
    roundoff = _ROUNDOFF * (abs(J0) + np.abs(perturbed)) / np.abs(amplitudes * slope_along_h)
    return _slope_verdict(name, amplitudes, ratios, np.abs(ratios - 1.0), roundoff, "first-order expansion")


# --- models -----------------------------------------------------------------


def _random_increments(model, rng):
    return rng.standard_normal(model.n_state), rng.standard_normal(model.n_params)


def model_adjoint_test(model, x, p, rng: np.random.Generator) -> CheckResult:
    """Dot-product test of one step, parameter adjoint included."""
    lin = model.linearize(x, p)
    dx, dp = _random_increments(model, rng)
    ax = rng.standard_normal(model.n_state)
    return dot_product_test(lin.tl, lin.ad, [dx, dp], ax, name="adjoint, one step")


def model_chain_adjoint_test(model, x, p, n_steps: int, rng: np.random.Generator) -> CheckResult:
    """Dot-product test of ``M_{L:0}``, the parameter adjoint accumulated over the chain."""
    linearizations = []
    state = np.asarray(x, dtype=float)
    for _ in range(n_steps):
        lin = model.linearize(state, p)
        linearizations.append(lin)
        state = lin.output

    def tl(dx, dp):
        for lin in linearizations:
            dx = lin.tl(dx, dp)
        return dx

    def ad(ax):
        ap = np.zeros(model.n_params)
        for lin in reversed(linearizations):
            ax, ap_step = lin.ad(ax)
            ap += ap_step
        return ax, ap

    dx, dp = _random_increments(model, rng)
    return dot_product_test(tl, ad, [dx, dp], rng.standard_normal(model.n_state), name=f"adjoint, {n_steps} steps")


def model_taylor_test(model, x, p, rng: np.random.Generator, amplitudes=DEFAULT_AMPLITUDES, scale=None) -> CheckResult:
    """Taylor test of one step in a random direction ``(dx, dp)`` of state and parameters.

    ``scale`` (default: the rms of ``x`` and ``p``, or 1) sets the direction's size,
    so that ``a = 0.1`` is a 10 % perturbation.
    """
    x = np.asarray(x, dtype=float)
    p = np.asarray(p, dtype=float)
    n = model.n_state
    dx, dp = _random_increments(model, rng)
    dx *= scale if scale is not None else (np.sqrt(np.mean(x**2)) or 1.0)
    if p.size:
        dp *= scale if scale is not None else (np.sqrt(np.mean(p**2)) or 1.0)
    lin = model.linearize(x, p)
    u = np.concatenate([x, p])
    h = np.concatenate([dx, dp])
    return taylor_test(
        lambda v: model.step(v[:n], v[n:]), lambda dv: lin.tl(dv[:n], dv[n:]), u, h,
        name="tangent-linear, one step", amplitudes=amplitudes,
    )


def window_adjoint_test(window, dx0: np.ndarray, dp: np.ndarray, forcings: dict, tolerance: float = ADJOINT_TOLERANCE) -> CheckResult:
    """Dot-product test of a linearised window (see :mod:`fourdvar.window`) with adjoint
    forcings ``{k: f_k}`` at several steps: ``sum_k <dx_k, f_k> == <dx0, ax_0> + <dp, ap>``."""
    steps = sorted(forcings)

    def tl(dx0, dp):
        dx = window.tl(dx0, dp)
        return np.stack([dx[k] for k in steps])

    def ad(f):
        return window.ad(dict(zip(steps, f)))

    return dot_product_test(tl, ad, [dx0, dp], np.stack([forcings[k] for k in steps]),
                            name=f"window adjoint, forcings at steps {steps}", tolerance=tolerance)


def model_linearization_test(model, x, p, rng: np.random.Generator, tolerance: float = 1e-14) -> CheckResult:
    """``linearize(x, p)`` agrees with ``step``, ``step_tl`` and ``step_ad``."""
    lin = model.linearize(x, p)
    dx, dp = _random_increments(model, rng)
    ax = rng.standard_normal(model.n_state)
    ax_step, ap_step = model.step_ad(x, p, ax)
    ax_lin, ap_lin = lin.ad(ax)
    pairs = [
        (model.step(x, p), lin.output),
        (model.step_tl(x, p, dx, dp), lin.tl(dx, dp)),
        (ax_step, ax_lin),
        (ap_step, ap_lin),
    ]
    error = max(np.linalg.norm(a - b) / max(np.linalg.norm(a), _TINY) if np.size(a) else 0.0 for a, b in pairs)
    return CheckResult(
        "linearize == step/step_tl/step_ad", bool(error <= tolerance), error, tolerance,
        details="max relative difference of output, TL, state and parameter adjoints",
    )


def check_model(model, x, p, rng: np.random.Generator, n_steps: int = 10) -> list[CheckResult]:
    """All model checks at ``(x, p)``: one-step and chain adjoint, Taylor, linearize consistency."""
    return [
        model_adjoint_test(model, x, p, rng),
        model_chain_adjoint_test(model, x, p, n_steps, rng),
        model_taylor_test(model, x, p, rng),
        model_linearization_test(model, x, p, rng),
    ]


# --- observation operators and covariances ------------------------------------


def operator_adjoint_test(operator, x, rng: np.random.Generator) -> CheckResult:
    lin = operator.linearize(x)
    dx = rng.standard_normal(np.size(x))
    ay = rng.standard_normal(operator.n_obs)
    return dot_product_test(lin.tl, lambda w: [lin.ad(w)], [dx], ay, name="adjoint, observation operator")


def operator_taylor_test(operator, x, rng: np.random.Generator, amplitudes=DEFAULT_AMPLITUDES) -> CheckResult:
    x = np.asarray(x, dtype=float)
    dx = rng.standard_normal(x.size) * (np.sqrt(np.mean(x**2)) or 1.0)
    lin = operator.linearize(x)
    return taylor_test(operator.apply, lin.tl, x, dx, name="tangent-linear, observation operator", amplitudes=amplitudes)


def covariance_sqrt_adjoint_test(covariance, rng: np.random.Generator) -> CheckResult:
    """``<C^1/2 u, w> == <u, C^T/2 w>``."""
    u = rng.standard_normal(covariance.size)
    w = rng.standard_normal(covariance.size)
    return dot_product_test(covariance.sqrt, lambda v: [covariance.sqrt_t(v)], [u], w, name="adjoint, C^1/2 vs C^T/2")


def covariance_inverse_test(covariance, rng: np.random.Generator, tolerance: float = 1e-10) -> CheckResult:
    """``C^-1 C v == v`` and ``C^1/2 C^T/2 v == C v``.

    No implementation inverts an ill-conditioned ``C`` to better than about
    ``cond(C) eps``; when the covariance reports its correlation's
    ``condition_number`` the tolerance is widened to ``100 cond(C) eps`` (a wrong
    ``solve`` still misses by O(1)).
    """
    v = rng.standard_normal(covariance.size)
    Cv = covariance.apply(v)
    error_inverse = np.linalg.norm(covariance.solve(Cv) - v) / np.linalg.norm(v)
    error_sqrt = np.linalg.norm(covariance.sqrt(covariance.sqrt_t(v)) - Cv) / np.linalg.norm(Cv)
    error = max(error_inverse, error_sqrt)
    details = f"inverse {error_inverse:.1e}, square root {error_sqrt:.1e}"
    condition = getattr(covariance, "condition_number", None)
    if condition is not None:
        std = np.asarray(covariance.std)
        condition *= float(std.max() / std.min()) ** 2 if std.size else 1.0
        tolerance = max(tolerance, 100 * condition * np.finfo(float).eps)
        details += f"; cond(C) ~ {condition:.1e}"
    return CheckResult("C^-1 C v == v, C^1/2 C^T/2 v == C v", bool(error < tolerance), error, tolerance, details=details)


# --- reporting ----------------------------------------------------------------


def format_table(results: Sequence[CheckResult], show_ratios: bool = True) -> str:
    """A plain-text table: test, value, tolerance, verdict; then each Taylor sequence."""
    width = max([len(r.name) for r in results] + [4])
    lines = [f"{'test':<{width}}  {'value':>10}  {'tolerance':>9}  verdict", "-" * (width + 33)]
    for r in results:
        lines.append(f"{r.name:<{width}}  {r.value:>10.3e}  {r.tolerance:>9.1e}  {r.verdict}")
    if show_ratios:
        for r in results:
            if r.amplitudes is None or r.ratios is None:
                continue
            lines.append("")
            lines.append(f"{r.name}: {r.details}")
            lines.append(f"  {'amplitude':>10}  {'ratio':>12}")
            for a, q in zip(r.amplitudes, r.ratios):
                lines.append(f"  {a:>10.0e}  {q:>12.5e}")
    return "\n".join(lines)


# --- the cost function --------------------------------------------------------------------


def check_cost(cost, x0, p, control, rng: np.random.Generator, transform: bool = True) -> list[CheckResult]:
    """Gradient tests of ``J`` and ``Jq``, symmetry of the Hessian of ``Jq`` and
    ``grad Jq(0) == grad J`` at the linearisation point, for the given control."""
    from .cost import IncrementalCost  # late import: checks stays usable without the cost machinery

    jq = IncrementalCost(cost, x0, p, control=control, transform=transform)
    n = cost.model.n_state
    _, gx, gp = cost.gradient(x0, p)
    results = []

    dx0, dp = jq.increments(rng.standard_normal(jq.size))  # a direction inside the control
    h = np.concatenate([dx0, dp])
    u0 = np.concatenate([x0, p])
    results.append(gradient_test(lambda u: cost.evaluate(u[:n], u[n:]).J, np.concatenate([gx, gp]), u0, h, name="gradient of J (Taylor)"))

    u = 0.1 * rng.standard_normal(jq.size)
    g = jq.value_and_gradient(u)[1]
    results.append(gradient_test(lambda v: jq.value_and_gradient(v)[0].J, g, u, rng.standard_normal(jq.size), name="gradient of Jq (Taylor)"))

    a, b = rng.standard_normal(jq.size), rng.standard_normal(jq.size)
    results.append(dot_product_test(jq.hessian_vector, lambda w: [jq.hessian_vector(w)], [a], b, name="Hessian of Jq symmetric"))

    g0 = jq.value_and_gradient(np.zeros(jq.size))[1]
    expected = jq.control_gradient(gx, gp)
    error = float(np.linalg.norm(g0 - expected) / max(np.linalg.norm(expected), _TINY))
    results.append(CheckResult("grad Jq(0) == grad J", error < 1e-10, error, 1e-10, details="relative difference at the linearisation point"))
    return results


# --- weak constraint: the model-error forcing ---------------------------------------------


def forced_window_adjoint_test(window, dx0: np.ndarray, dp: np.ndarray, deta: np.ndarray, forcings: dict,
                               tolerance: float = ADJOINT_TOLERANCE) -> CheckResult:
    """Dot-product test of a forced window (:class:`fourdvar.window.ForcedWindowLinearization`)
    with adjoint forcings ``{k: f_k}``: ``sum_k <dx_k, f_k> == <dx0, ax_0> + <dp, ap> + sum_j <deta_j, aeta_j>``."""
    steps = sorted(forcings)

    def tl(dx0, dp, deta):
        dx = window.tl(dx0, dp, deta=deta)
        return np.stack([dx[k] for k in steps])

    def ad(f):
        return window.ad_eta(dict(zip(steps, f)))

    return dot_product_test(tl, ad, [dx0, dp, deta], np.stack([forcings[k] for k in steps]),
                            name=f"forced window adjoint, forcings at steps {steps}", tolerance=tolerance)


def check_weak_cost(cost, x0, p, eta, control, rng: np.random.Generator, transform: bool = True) -> list[CheckResult]:
    """The weak-constraint checks of a cost with a model-error covariance ``Q``, at ``(x0, p, eta)``:
    the forced window's dot-product test, gradient tests of ``J`` (w.r.t. ``x0``, ``p`` and every
    ``eta_j``) and of ``Jq`` (``d eta`` in the control), symmetry of the Hessian of ``Jq`` and
    ``grad Jq(0) == grad J``."""
    from .cost import IncrementalCost  # late import: checks stays usable without the cost machinery

    n, n_p = cost.model.n_state, cost.model.n_params
    eta = cost.checked_model_error(eta)
    jq = IncrementalCost(cost, x0, p, control=control, transform=transform, eta=eta)
    window = cost.window(x0, p, eta=eta)
    steps = sorted({0, window.n_steps // 2, window.n_steps})
    results = [forced_window_adjoint_test(
        window, rng.standard_normal(n), rng.standard_normal(n_p), rng.standard_normal(eta.shape),
        {k: rng.standard_normal(n) for k in steps},
    )]

    def J(u):
        return cost.evaluate(u[:n], u[n : n + n_p], u[n + n_p :].reshape(eta.shape)).J

    _, gx, gp, geta = cost.full_gradient(x0, p, eta)
    # a direction inside the control, each part a draw from its prior (B, P, Q), whatever the transform
    dx0 = cost.B.sample(rng) if jq.n_x else np.zeros(n)
    dp = cost.P.sample(rng) if jq.n_p else np.zeros(n_p)
    deta = np.array([cost.Q.sample(rng) for _ in eta]).reshape(eta.shape) if jq.n_e else np.zeros(eta.shape)
    h = np.concatenate([dx0, dp, deta.ravel()])
    results.append(gradient_test(J, np.concatenate([gx, gp, geta.ravel()]), np.concatenate([x0, p, eta.ravel()]), h,
                                 name="gradient of weak-constraint J (Taylor)"))

    u = 0.1 * rng.standard_normal(jq.size)
    g = jq.value_and_gradient(u)[1]
    results.append(gradient_test(lambda v: jq.value_and_gradient(v)[0].J, g, u, rng.standard_normal(jq.size),
                                 name="gradient of weak-constraint Jq (Taylor)"))

    a, b = rng.standard_normal(jq.size), rng.standard_normal(jq.size)
    results.append(dot_product_test(jq.hessian_vector, lambda w: [jq.hessian_vector(w)], [a], b,
                                    name="Hessian of weak-constraint Jq symmetric"))

    g0 = jq.value_and_gradient(np.zeros(jq.size))[1]
    expected = jq.control_gradient(gx, gp, geta) if transform else np.concatenate(
        [part for part, on in ((gx, jq.n_x), (gp, jq.n_p), (geta.ravel(), jq.n_e)) if on])
    error = float(np.linalg.norm(g0 - expected) / max(np.linalg.norm(expected), _TINY))
    results.append(CheckResult("weak-constraint grad Jq(0) == grad J", error < 1e-10, error, 1e-10,
                               details="relative difference at the linearisation point"))
    return results
