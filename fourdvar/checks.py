"""Reusable consistency checks for tangent-linear and adjoint code.

Each check takes any object with the interface (a model, an observation operator, a
covariance, a cost) and returns a :class:`CheckResult`: the numbers it measured, each next to
its tolerance, a verdict (``PASS``, ``FAIL`` or ``INCONCLUSIVE``) and, for a failure, the method
to inspect.

* **Adjoint (dot-product) test**: ``|<L u, w> - <u, L^T w>| / max(|<L u, w>|, tiny) < 1e-12`` for
  random ``u, w``.  For a model, ``u = (dx, dp)`` and ``<u, L^T w> = <dx, ax> + <dp, ap>``; the
  state part (``dp = 0``) and the parameter part (``dx = 0``) are tested apart, so a failure
  says which adjoint is wrong.
* **Tangent-linear (Taylor) test**: the remainder ``r(a) = |F(u + a h) - F(u) - a F'h|`` falls
  like ``a^2`` when ``F'`` is the derivative of ``F``, and only like ``a`` when it is not
  (``r(a) ~ a |F'h - T h|`` for a wrong TL ``T``).
* **Gradient test**: the same with ``r(a) = |J(u + a h) - J(u) - a <grad J, h>|``.

A Taylor or gradient verdict: ``r(a)`` is computed for ``a = 1, 10^-0.5, .., 1e-12`` (``h``
scaled like ``u``); curvature dominates at large ``a``, round-off at small ``a``, and the order
of ``r`` over the asymptotic range between them tells a right derivative (2) from a wrong one (1):

1. the round-off level is the larger of ``4 eps (|F(u)| + |F(u + a h)|)`` and the largest
   remainder at ``a <= 1e-11`` (where a true second-order term is ``1e-22``-small);
2. the points whose remainder exceeds ``100`` times that level are clean; the asymptotic range
   is the lowest run of at least three consecutive clean amplitudes (a decade or more);
3. the local orders ``log(r_i / r_{i+1}) / log(a_i / a_{i+1})`` over the lowest decade of that
   run decide: all ``>= 1.8``: PASS; all within ``1 +- 0.2``, the order-1 remainder continuing
   down into round-off, and so along ``-h`` too (a wrong first-order term is odd in ``a``; order
   1 on one side only is a kink): FAIL, reporting the relative size ``r(a) / |a F'h|`` of the
   wrong term; anything else: INCONCLUSIVE.  A remainder at round-off at every amplitude: ``F`` is
   linear along ``h``, PASS.

An inconclusive direction is retried with other random directions; a check that stays
inconclusive is ``INCONCLUSIVE``, never ``FAIL``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np

from .interfaces import declared
from .window import PerStepModel, WindowLinearization, warn_deprecated, forecast, linearize_window, sub_window_forcing

__all__ = [
    "CheckResult", "TaylorSweep", "PASS", "FAIL", "INCONCLUSIVE", "ADJOINT_TOLERANCE", "WINDOW_TOLERANCE", "MIN_ORDER", "DEFAULT_AMPLITUDES",
    "dot_product_test", "taylor_test", "gradient_test", "model_adjoint_test", "model_chain_adjoint_test", "model_taylor_test",
    "model_window_taylor_test", "model_linearization_test", "window_adjoint_test", "batched_window_test", "operator_adjoint_test",
    "operator_taylor_test", "covariance_sqrt_adjoint_test", "covariance_inverse_test", "check_model", "check_cost", "format_table",
    "summarize", "LEGEND", "forced_window_adjoint_test", "check_weak_cost",
]

PASS, FAIL, INCONCLUSIVE = "PASS", "FAIL", "INCONCLUSIVE"

ADJOINT_TOLERANCE = 1e-12
WINDOW_TOLERANCE = 1e-10  # batched vs per-step window: the same sums in another order, over many steps
MIN_ORDER = 1.8  # the Taylor remainder must fall at least like a^MIN_ORDER
FIRST_ORDER_BAND = 0.2  # a remainder of order 1 +- this, down into round-off, is a wrong derivative
NOISE_MARGIN = 100.0  # a remainder is clean above this many times the round-off level
NOISE_PROBE = 1e-11  # amplitudes at or below this measure the round-off level
MIN_CLEAN_POINTS = 3  # a decade at half-decade steps
RETRIES = 4  # more random directions tried for an inconclusive one
DEFAULT_AMPLITUDES = 10.0 ** -np.arange(0.0, 12.5, 0.5)
_TINY = np.finfo(float).tiny
_EPS = np.finfo(float).eps


# --- results ------------------------------------------------------------------------------


@dataclass
class TaylorSweep:
    """The Taylor remainder along one direction and what it says.

    ``remainders[i] = |F(u + a_i h) - F(u) - a_i F'h|`` (for a cost, ``F = J`` and
    ``F'h = <grad J, h>``); ``roundoff[i]`` its floating-point level;
    ``first_order = |F'h|``.  ``window = (i, j)`` indexes the asymptotic range
    (``i <= j``, amplitudes falling), ``order`` the order fitted over it.
    """

    amplitudes: np.ndarray
    remainders: np.ndarray
    roundoff: np.ndarray
    first_order: float
    ratios: np.ndarray
    status: str = INCONCLUSIVE
    order: float = np.nan
    window: tuple[int, int] | None = None
    reason: str = ""

    @property
    def clean(self) -> np.ndarray:
        return np.isfinite(self.remainders) & (self.remainders > NOISE_MARGIN * self.roundoff)

    @property
    def local_orders(self) -> np.ndarray:
        """``log(r_i / r_{i+1}) / log(a_i / a_{i+1})``, one per pair of neighbouring amplitudes."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.diff(np.log(self.remainders)) / np.diff(np.log(self.amplitudes))

    @property
    def relative_error(self) -> float:
        """``r(a) / |a F'h|`` at the smallest clean amplitude: the relative error of the
        first-order term (for a wrong derivative) or a bound on it (for a right one)."""
        if self.window is not None:
            i = self.window[1]
        elif self.clean.any():
            i = int(np.flatnonzero(self.clean)[-1])
        else:  # exact to round-off: bound by the largest amplitude
            i = int(np.argmax(np.where(np.isfinite(self.remainders), self.amplitudes, -np.inf)))
        return float(self.remainders[i] / (self.amplitudes[i] * self.first_order)) if self.first_order > 0 else np.nan


@dataclass
class CheckResult:
    """What one check measured.

    ``error`` is a relative error (the dot-product mismatch, or for a Taylor or
    gradient test the relative error of the first-order term, see
    :attr:`TaylorSweep.relative_error`) with its ``error_tolerance`` (``nan``
    where the error is reported but not judged); ``order`` is the fitted order of
    the Taylor remainder (``nan`` for tests without one), to be at least
    ``min_order``.  ``inspect`` names the method to look at when the check fails.
    """

    name: str
    status: str
    error: float = np.nan
    error_tolerance: float = np.nan
    order: float = np.nan
    min_order: float = np.nan
    inspect: str = ""
    details: str = ""
    sweeps: list[TaylorSweep] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status == PASS

    @property
    def failed(self) -> bool:
        return self.status == FAIL

    @property
    def value(self) -> float:
        """The judged number: the fitted order for a Taylor or gradient test, else the error."""
        return self.order if self.sweeps else self.error

    @property
    def sweep(self) -> TaylorSweep | None:
        """The sweep behind the verdict: the failing or the first inconclusive one; for a
        pass, the passing one with the largest relative error."""
        deciding = [s for s in self.sweeps if s.status == self.status]
        if self.status == PASS and deciding:
            return max(deciding, key=lambda s: np.nan_to_num(s.relative_error, nan=-1.0))
        return deciding[0] if deciding else None

    @property
    def amplitudes(self) -> np.ndarray | None:
        return None if self.sweep is None else self.sweep.amplitudes

    @property
    def ratios(self) -> np.ndarray | None:
        """The classical Taylor ratios of :attr:`sweep` (see :func:`taylor_test` and :func:`gradient_test`)."""
        return None if self.sweep is None else self.sweep.ratios

    def __str__(self) -> str:
        parts = []
        if np.isfinite(self.error):
            tolerance = f" (tolerance {self.error_tolerance:.0e})" if np.isfinite(self.error_tolerance) else ""
            parts.append(f"relative error {self.error:.2e}{tolerance}")
        if np.isfinite(self.order):
            parts.append(f"order {self.order:.2f} (want >= {self.min_order})")
        line = f"{self.name}: {self.status} {', '.join(parts)}".rstrip()
        if self.details:
            line += f"; {self.details}"
        if self.failed and self.inspect:
            line += f"; inspect {self.inspect}"
        return line


def _judged(name, error, tolerance, inspect, details="", extra=None) -> CheckResult:
    return CheckResult(name, PASS if error < tolerance else FAIL, error=float(error), error_tolerance=tolerance,
                       inspect=inspect, details=details, extra=extra or {})


def summarize(results: Iterable[CheckResult]) -> dict[str, int]:
    """``{"PASS": n, "FAIL": n, "INCONCLUSIVE": n}`` over ``results``."""
    statuses = [result.status for result in results]
    return {status: statuses.count(status) for status in (PASS, FAIL, INCONCLUSIVE)}


# --- the dot-product test -----------------------------------------------------------------


def dot_product_test(tl: Callable[..., np.ndarray], ad: Callable[[np.ndarray], Sequence[np.ndarray]], inputs: Sequence[np.ndarray],
                     output_adjoint: np.ndarray, name: str = "adjoint", tolerance: float = ADJOINT_TOLERANCE,
                     inspect: str = "the adjoint") -> CheckResult:
    """``|<tl(*inputs), w> - sum_i <inputs_i, ad(w)_i>| / |<tl(*inputs), w>| < tolerance``."""
    lhs = float(np.vdot(tl(*inputs), output_adjoint))
    rhs = float(sum(np.vdot(u, a) for u, a in zip(inputs, ad(output_adjoint))))
    error = abs(lhs - rhs) / max(abs(lhs), _TINY)
    return _judged(name, error, tolerance, inspect, details=f"<Lu,w> = {lhs:.15e}, <u,L*w> = {rhs:.15e}",
                   extra={"lhs": lhs, "rhs": rhs})


# --- Taylor remainders ----------------------------------------------------------------------


def _clean_runs(clean: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs ``(first, last)`` of consecutive True entries."""
    edges = np.diff(np.concatenate([[0], clean.astype(int), [0]]))
    return [(int(a), int(b) - 1) for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1))]


def _classify(sweep: TaylorSweep) -> TaylorSweep:
    """Find the asymptotic range of ``sweep`` and set its status, order, window and reason."""
    a, r = sweep.amplitudes, sweep.remainders
    clean = sweep.clean
    if not clean.any():
        sweep.status, sweep.reason = PASS, "the first-order expansion is exact to round-off at every amplitude (linear along this direction)"
        return sweep
    runs = [run for run in _clean_runs(clean) if run[1] - run[0] + 1 >= MIN_CLEAN_POINTS]
    if not runs:
        sweep.status = INCONCLUSIVE
        sweep.reason = "the remainder is above round-off over less than a decade of amplitudes (too curved along this direction)"
        return sweep
    first, last = runs[-1]
    orders = sweep.local_orders
    start = last - MIN_CLEAN_POINTS + 1
    kinds = {PASS: lambda q: q >= MIN_ORDER, FAIL: lambda q: abs(q - 1.0) <= FIRST_ORDER_BAND}
    verdict = next((v for v, kind in kinds.items() if np.all(kind(orders[start:last]))), INCONCLUSIVE)
    if verdict == INCONCLUSIVE:
        sweep.status, sweep.window = INCONCLUSIVE, (start, last)
        sweep.order = _fitted_order(a, r, sweep.window)
        sweep.reason = (f"local orders {', '.join(f'{q:.2f}' for q in orders[start:last])} at a = "
                        f"{a[last - 1]:.0e} .. {a[last]:.0e}, the smallest amplitudes above round-off: "
                        "neither 2 (a right derivative) nor 1 (a wrong one)")
        return sweep
    while start > first and kinds[verdict](orders[start - 1]):
        start -= 1
    sweep.window = (start, last)
    sweep.order = _fitted_order(a, r, sweep.window)
    span = f"a = {a[start]:.0e} .. {a[last]:.0e}"
    if verdict == PASS:
        sweep.status, sweep.reason = PASS, f"the remainder falls as a^{sweep.order:.2f} over {span}"
        return sweep
    below = last + 1
    if below < len(a) and not r[below] >= r[last] * (a[below] / a[last]) ** 2:
        # A wrong first-order term stays in the remainder at every smaller amplitude;
        # a remainder that drops faster than a^2 below the range is a kink (a
        # non-differentiable point) crossed by the larger amplitudes.
        sweep.status = INCONCLUSIVE
        sweep.reason = f"the order-1 remainder over {span} stops abruptly below it: a kink along this direction"
        return sweep
    sweep.status = FAIL
    sweep.reason = (f"the remainder falls only as a^{sweep.order:.2f} over {span}, down to round-off: the first-order "
                    f"term is wrong by {sweep.relative_error:.1e} of its size")
    return sweep


def _fitted_order(a, r, window) -> float:
    i, j = window
    return float(np.polyfit(np.log10(a[i : j + 1]), np.log10(r[i : j + 1]), 1)[0])


def _evaluate_along(f, u, h, amplitudes):
    """``f(u + a h)`` for each amplitude; ``None`` where the evaluation diverged."""
    values = []
    with np.errstate(over="ignore", invalid="ignore"):
        for amplitude in amplitudes:
            try:
                values.append(f(u + amplitude * h))
            except FloatingPointError:  # a divergent forecast at a large amplitude: no information there
                values.append(None)
    return values


def _swept(amplitudes, remainders, analytic, first_order, ratios) -> TaylorSweep:
    """The sweep classified, its round-off level the larger of ``analytic`` and the largest remainder
    at the amplitudes ``<= NOISE_PROBE``."""
    probes = remainders[(amplitudes <= NOISE_PROBE) & np.isfinite(remainders)]
    roundoff = np.maximum(analytic, probes.max() if probes.size else 0.0)
    return _classify(TaylorSweep(amplitudes, remainders, roundoff, first_order, ratios))


def _sweep_of_map(f, tl, u, h, amplitudes) -> TaylorSweep:
    """``r(a) = |f(u + a h) - f(u) - a tl(h)|``; ratios ``r(a) / |a tl(h)|``."""
    amplitudes = np.asarray(amplitudes, dtype=float)
    f0 = np.asarray(f(u), dtype=float)
    df = np.asarray(tl(h), dtype=float)
    first_order = float(np.linalg.norm(df))
    remainders, analytic = np.full(amplitudes.size, np.nan), np.full(amplitudes.size, np.inf)
    with np.errstate(over="ignore", invalid="ignore"):
        for i, (amplitude, fa) in enumerate(zip(amplitudes, _evaluate_along(f, u, h, amplitudes))):
            if fa is not None:
                remainders[i] = np.linalg.norm(fa - f0 - amplitude * df)
                analytic[i] = 4 * _EPS * (np.linalg.norm(f0) + np.linalg.norm(fa) + amplitude * first_order)
    ratios = remainders / np.maximum(amplitudes * first_order, _TINY)
    return _swept(amplitudes, remainders, analytic, first_order, ratios)


def _sweep_of_functional(J, gradient, u, h, amplitudes) -> TaylorSweep:
    """``r(a) = |J(u + a h) - J(u) - a <g, h>|``; ratios ``(J(u + a h) - J(u)) / (a <g, h>)``."""
    amplitudes = np.asarray(amplitudes, dtype=float)
    J0 = float(J(u))
    slope = float(np.vdot(gradient, h))
    values = np.array([np.nan if v is None else float(v) for v in _evaluate_along(J, u, h, amplitudes)])
    with np.errstate(over="ignore", invalid="ignore"):
        remainders = np.abs(values - J0 - amplitudes * slope)
        analytic = 4 * _EPS * (abs(J0) + np.abs(values) + amplitudes * abs(slope))
        ratios = (values - J0) / (amplitudes * slope if slope else np.nan)
    analytic = np.where(np.isfinite(analytic), analytic, np.inf)
    return _swept(amplitudes, remainders, analytic, abs(slope), ratios)


def _confirm_both_ways(sweep: TaylorSweep, opposite: TaylorSweep) -> None:
    """A wrong first-order term ``a (F'h - Th)`` is odd in ``a``: it shows along ``-h``
    as along ``h``.  A remainder of order 1 on one side only is a kink of ``F`` (a
    point where it is not differentiable), not a wrong derivative."""
    if opposite.status != FAIL:
        sweep.status = INCONCLUSIVE
        sweep.reason += f"; but along -h: {opposite.reason}: a kink (F not differentiable here along h)"


def _directional_check(name, sweep_along, directions: Callable[[], np.ndarray], n_directions, retries, inspect) -> CheckResult:
    """Run ``sweep_along(h)`` on ``n_directions`` random directions, each inconclusive
    one replaced by up to ``retries`` fresh ones; any FAIL fails the check, a direction
    still inconclusive makes it INCONCLUSIVE, otherwise it passes."""
    sweeps, unresolved = [], 0
    for _ in range(n_directions):
        for _ in range(retries + 1):
            h = directions()
            sweeps.append(sweep_along(h))
            if sweeps[-1].status == FAIL:
                _confirm_both_ways(sweeps[-1], sweep_along(-h))
            if sweeps[-1].status != INCONCLUSIVE:
                break
        if sweeps[-1].status == FAIL:
            break
        unresolved += sweeps[-1].status == INCONCLUSIVE
    status = FAIL if sweeps[-1].status == FAIL else INCONCLUSIVE if unresolved else PASS
    result = CheckResult(name, status, min_order=MIN_ORDER, inspect=inspect, sweeps=sweeps)
    headline = result.sweep
    result.error, result.order = headline.relative_error, headline.order
    tried = f" ({len(sweeps)} directions tried)" if len(sweeps) > 1 else ""
    result.details = headline.reason + tried
    return result


def _direction_source(h, rng):
    """The first direction is ``h``; later ones random, of the same rms as ``h``."""
    h = np.asarray(h, dtype=float)
    pending = [h]
    scale = np.sqrt(np.mean(h**2)) if h.size else 1.0
    rng = rng if rng is not None else np.random.default_rng(0)

    def draw():
        return pending.pop() if pending else scale * rng.standard_normal(h.shape)

    return draw


def taylor_test(f: Callable[[np.ndarray], np.ndarray], tl: Callable[[np.ndarray], np.ndarray], u: np.ndarray, h: np.ndarray,
                name: str = "tangent-linear", amplitudes: Sequence[float] = DEFAULT_AMPLITUDES, rng: np.random.Generator | None = None,
                retries: int = RETRIES, inspect: str = "the tangent-linear") -> CheckResult:
    """``r(a) = |f(u + a h) - f(u) - a tl(h)|`` must fall like ``a^2`` (see the module docstring).

    ``u`` and ``h`` are flat vectors; ``f`` and ``tl`` take flat vectors.  An
    inconclusive ``h`` is followed by up to ``retries`` random directions of the
    same rms (from ``rng``).  The sweep's ``ratios`` are the classical
    ``r(a) / |a tl(h)|``, which fall like ``a``.
    """
    return _directional_check(name, lambda d: _sweep_of_map(f, tl, u, d, amplitudes), _direction_source(h, rng), 1, retries, inspect)


def gradient_test(J: Callable[[np.ndarray], float], gradient: np.ndarray, u: np.ndarray, h: np.ndarray, name: str = "gradient",
                  amplitudes: Sequence[float] = DEFAULT_AMPLITUDES, rng: np.random.Generator | None = None, retries: int = RETRIES,
                  inspect: str = "the gradient") -> CheckResult:
    """``r(a) = |J(u + a h) - J(u) - a <grad J(u), h>|`` must fall like ``a^2``.

    The sweep's ``ratios`` are the classical ``(J(u + a h) - J(u)) / (a <grad J, h>)``,
    which tend to 1.  Retries as in :func:`taylor_test`.
    """
    return _directional_check(name, lambda d: _sweep_of_functional(J, gradient, u, d, amplitudes), _direction_source(h, rng), 1, retries, inspect)


# --- models -----------------------------------------------------------------


def _random_increments(model, rng):
    return rng.standard_normal(model.n_state), rng.standard_normal(model.n_params)


def _worst(name, results: Sequence[CheckResult], directions: int | None = None) -> CheckResult:
    """One result for several runs of a check: the first failure, else the largest error."""
    failed = [r for r in results if r.failed]
    worst = failed[0] if failed else max(results, key=lambda r: r.error)
    directions = len(results) if directions is None else directions
    if directions > 1:
        worst.details += f" (worst of {directions} directions)"
    worst.name = name
    return worst


def model_adjoint_test(model, x, p, rng: np.random.Generator, directions: int = 1) -> CheckResult:
    """Dot-product test of one step: the state adjoint (``dp = 0``), the parameter
    adjoint (``dx = 0``) and both together, each on ``directions`` random vectors."""
    lin = model.linearize(x, p)
    runs = []
    for _ in range(directions):
        dx, dp = _random_increments(model, rng)
        ax = rng.standard_normal(model.n_state)
        parts = [("state", [dx, np.zeros_like(dp)], "the state adjoint (ax of .ad of linearize(x, p))")]
        if model.n_params:
            parts += [("parameters", [np.zeros_like(dx), dp], "the parameter adjoint (ap of .ad of linearize(x, p))"),
                      ("both", [dx, dp], ".ad of linearize(x, p)")]
        for part, inputs, inspect in parts:
            run = dot_product_test(lin.tl, lin.ad, inputs, ax, inspect=inspect)
            run.details = f"{part}: {run.details}"
            runs.append(run)
    return _worst("adjoint, one step", runs, directions)


def model_chain_adjoint_test(model, x, p, n_steps: int, rng: np.random.Generator, directions: int = 1) -> CheckResult:
    """Dot-product test of ``M_{L:0}`` step by step, the parameter adjoint accumulated over the chain."""
    return _window_adjoint(WindowLinearization(model, np.asarray(x, dtype=float), p, n_steps), model, rng, [n_steps], directions,
                           f"adjoint, {n_steps} steps", ".ad of linearize at later states, or the parameter adjoint summed over steps")


def _window_adjoint(window, model, rng, steps, directions: int, name: str, inspect: str) -> CheckResult:
    """The worst of ``directions`` dot-product tests of ``window`` with random increments and forcings at ``steps``."""
    runs = [window_adjoint_test(window, *_random_increments(model, rng), {k: rng.standard_normal(model.n_state) for k in steps}, inspect=inspect)
            for _ in range(directions)]
    return _worst(name, runs)


def _scaled_direction(model, x, p, rng, scale=None):
    """A random ``(dx, dp)`` with ``dx`` of the rms of ``x`` and ``dp`` of the rms of ``p``
    (or ``scale``), so that ``a = 0.1`` is a 10 % perturbation."""
    dx, dp = _random_increments(model, rng)
    dx *= scale if scale is not None else (np.sqrt(np.mean(x**2)) or 1.0)
    if p.size:
        dp *= scale if scale is not None else (np.sqrt(np.mean(p**2)) or 1.0)
    return np.concatenate([dx, dp])


def _model_taylor_test(name, f, tl, model, x, p, rng, amplitudes, directions, scale, inspect: tuple[str, str]) -> CheckResult:
    """The Taylor test of ``f(x, p)`` against ``tl(dx, dp)`` along random joint ``(dx, dp)``; on a failure,
    again along ``dx`` alone and ``dp`` alone, so that the result names the part that is wrong
    (``inspect``: the state part and the parameter part)."""
    n = model.n_state
    u = np.concatenate([x, p])
    inspect_state, inspect_params = inspect

    def check(draw):
        return _directional_check(name, lambda h: _sweep_of_map(lambda v: f(v[:n], v[n:]), lambda dv: tl(dv[:n], dv[n:]), u, h, amplitudes),
                                  draw, directions, RETRIES, "")

    def draw():
        return _scaled_direction(model, x, p, rng, scale)

    result = check(draw)
    result.inspect = f"{inspect_state} or {inspect_params}" if model.n_params else inspect_state
    if result.failed and model.n_params:
        # A wrong state part also spoils parameter-only directions (through the stages of
        # a step, or the later steps of a window), so the state part is tried first.
        state = np.arange(u.size) < n
        if check(lambda: np.where(state, draw(), 0.0)).failed:
            result.inspect = inspect_state
        elif check(lambda: np.where(state, 0.0, draw())).failed:
            result.inspect = inspect_params
        else:
            result.inspect = f"{inspect_state} together with {inspect_params}"
    return result


def model_taylor_test(model, x, p, rng: np.random.Generator, amplitudes=DEFAULT_AMPLITUDES, scale=None, directions: int = 1) -> CheckResult:
    """Taylor test of one step in random directions ``(dx, dp)`` of state and parameters."""
    x, p = np.asarray(x, dtype=float), np.asarray(p, dtype=float)
    lin = model.linearize(x, p)
    return _model_taylor_test("tangent-linear, one step", model.step, lin.tl, model, x, p, rng, amplitudes, directions, scale,
                              ("the state part of .tl of linearize(x, p) (M_x dx)", "the parameter part of .tl of linearize(x, p) (M_p dp)"))


def model_window_taylor_test(model, x, p, n_steps: int, rng: np.random.Generator, amplitudes=DEFAULT_AMPLITUDES, directions: int = 1) -> CheckResult:
    """Taylor test of the whole window: the final state ``x_K(x_0, p)`` against the
    window TL's ``dx_K`` from :func:`fourdvar.window.linearize_window` (the model's
    batched ``linearize_window`` when it has one)."""
    x, p = np.asarray(x, dtype=float), np.asarray(p, dtype=float)
    window = linearize_window(model, x, p, n_steps)
    where = "linearize_window (the batched window tl)" if declared(model, "linearize_window") is not None else ".tl of linearize over the window"
    return _model_taylor_test(f"tangent-linear, {n_steps} steps", lambda x0, q: forecast(model, x0, q, n_steps)[-1],
                              lambda dx, dp: window.tl(dx, dp)[-1], model, x, p, rng, amplitudes, directions, None,
                              (f"the state part of {where}", f"the parameter part of {where}"))


def window_adjoint_test(window, dx0: np.ndarray, dp: np.ndarray, forcings: dict, tolerance: float = ADJOINT_TOLERANCE,
                        inspect: str = "the window's ad", de: np.ndarray | None = None) -> CheckResult:
    """Dot-product test of a linearised window (see :mod:`fourdvar.window`) with adjoint forcings
    ``{k: f_k}`` at several steps and, with ``de`` ``(K, n_state)``, the forcing's increments:
    ``sum_k <dx_k, f_k> == <dx0, ax_0> + <dp, ap> + sum_k <de_k, ae_k>``."""
    steps = sorted(forcings)

    def tl(dx0, dp, de=None):
        dx = window.tl(dx0, dp, de=de)
        return np.stack([dx[k] for k in steps])

    def ad(f):
        ae = None if de is None else np.empty_like(de)
        ax, ap = window.ad(dict(zip(steps, f)), ae=ae)
        return [ax, ap] if de is None else [ax, ap, ae]

    inputs = [dx0, dp] if de is None else [dx0, dp, de]
    return dot_product_test(tl, ad, inputs, np.stack([forcings[k] for k in steps]),
                            name=f"window adjoint, forcings at steps {steps}", tolerance=tolerance, inspect=inspect)


def _relative(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), _TINY)) if b.size else 0.0


def _largest_difference(name, pairs: dict, tolerance, inspect: dict, details: str = "") -> CheckResult:
    """The largest ``|a - b| / |b|`` over the named pairs ``(a, b)`` against ``tolerance``; ``inspect``
    maps a pair's name to the method to look at (default: the name)."""
    differences = {key: _relative(a, b) for key, (a, b) in pairs.items()}
    culprit = max(differences, key=differences.get)
    listed = ", ".join(f"{key} {value:.1e}" for key, value in differences.items())
    return _judged(name, differences[culprit], tolerance, inspect.get(culprit, culprit),
                   details=details or f"relative differences: {listed}", extra=differences)


def batched_window_test(model, x, p, n_steps: int, rng: np.random.Generator, tolerance: float = WINDOW_TOLERANCE) -> CheckResult:
    """A model's own ``linearize_window`` against the per-step chain of the same model
    (:class:`fourdvar.window.PerStepModel`): states, the TL at every step and the
    AD (``ax_0`` and the summed ``ap``) for forcings at every step, as relative
    differences ``|batched - per step| / |per step|``; the largest must be below
    ``tolerance`` (the same sums taken in another order, over ``n_steps`` steps)."""
    x, p = np.asarray(x, dtype=float), np.asarray(p, dtype=float)
    batched = linearize_window(model, x, p, n_steps)
    per_step = linearize_window(PerStepModel(model), x, p, n_steps)
    dx0, dp = _random_increments(model, rng)
    forcings = {k: rng.standard_normal(model.n_state) for k in range(n_steps + 1)}
    (ax_b, ap_b), (ax_s, ap_s) = batched.ad(forcings), per_step.ad(forcings)
    pairs = {"states": (batched.states, per_step.states),
             "tl": (np.stack(batched.tl(dx0, dp)), np.stack(per_step.tl(dx0, dp))),
             "ad state": (ax_b, ax_s), "ad parameters": (ap_b, ap_s)}
    inspect = {"states": "linearize_window's nonlinear states", "tl": "linearize_window's tl",
               "ad state": "linearize_window's ad (ax_0)",
               "ad parameters": "linearize_window's ad (the summed parameter adjoint ap)"}
    return _largest_difference(f"batched window == per step, {n_steps} steps", pairs, tolerance, inspect)


def model_linearization_test(model, x, p, rng: np.random.Generator, tolerance: float = 1e-14) -> CheckResult:
    """``linearize(x, p)`` agrees with ``step``, ``step_tl`` and ``step_ad``."""
    lin = model.linearize(x, p)
    dx, dp = _random_increments(model, rng)
    ax = rng.standard_normal(model.n_state)
    ax_step, ap_step = declared(model, "step_ad")(x, p, ax)
    ax_lin, ap_lin = lin.ad(ax)
    pairs = {"step vs linearize(x, p).output": (lin.output, model.step(x, p)),
             "step_tl vs linearize(x, p).tl": (lin.tl(dx, dp), declared(model, "step_tl")(x, p, dx, dp)),
             "step_ad vs linearize(x, p).ad (state)": (ax_lin, ax_step),
             "step_ad vs linearize(x, p).ad (parameters)": (ap_lin, ap_step)}
    return _largest_difference("linearize == step/step_tl/step_ad", pairs, tolerance, {},
                               "max relative difference of output, TL, state and parameter adjoints")


def check_model(model, x, p, rng: np.random.Generator, n_steps: int = 10, directions: int = 1, window: bool = True) -> list[CheckResult]:
    """All model checks at ``(x, p)``: one-step and chain adjoint, one-step Taylor,
    linearize consistency; with ``window``, the Taylor test of the whole window's
    TL and, for a model with its own ``linearize_window``, that window against the
    per-step chain and its dot-product test."""
    x, p = np.asarray(x, dtype=float), np.asarray(p, dtype=float)
    results = [
        model_adjoint_test(model, x, p, rng, directions),
        model_chain_adjoint_test(model, x, p, n_steps, rng, directions),
        model_taylor_test(model, x, p, rng, directions=directions),
        model_linearization_test(model, x, p, rng),
    ]
    if window:
        results.append(model_window_taylor_test(model, x, p, n_steps, rng, directions=directions))
    if window and declared(model, "linearize_window") is not None:
        results.append(batched_window_test(model, x, p, n_steps, rng))
        results.append(_window_adjoint(linearize_window(model, x, p, n_steps), model, rng, range(0, n_steps + 1, max(1, n_steps // 4)),
                                       directions, f"adjoint, batched window of {n_steps} steps", "linearize_window's ad against its tl"))
    return results


# --- observation operators and covariances ------------------------------------


def operator_adjoint_test(operator, x, rng: np.random.Generator, directions: int = 1) -> CheckResult:
    """Dot-product test of an observation operator linearised at ``x``, ``<H' dx, w> = <dx, H'^T w>``,
    on ``directions`` random pairs ``(dx, w)``: the worst decides, against ``ADJOINT_TOLERANCE``.

    Examples
    --------
    >>> from observations import Square
    >>> result = operator_adjoint_test(Square(4), np.arange(4.0), np.random.default_rng(0))
    >>> result.status, bool(result.error < ADJOINT_TOLERANCE)
    ('PASS', True)
    """
    lin = operator.linearize(x)
    runs = [dot_product_test(lin.tl, lambda w: [lin.ad(w)], [rng.standard_normal(np.size(x))], rng.standard_normal(operator.n_obs),
                             inspect=".ad of operator.linearize(x)") for _ in range(directions)]
    return _worst("adjoint, observation operator", runs)


def operator_taylor_test(operator, x, rng: np.random.Generator, amplitudes=DEFAULT_AMPLITUDES, directions: int = 1) -> CheckResult:
    """Taylor test of an observation operator's TL at ``x``: ``|H(x + a h) - H(x) - a H' h|`` falls as
    ``a^2`` (or is at round-off: a linear operator), on ``directions`` random ``h`` scaled like ``x``.

    Examples
    --------
    >>> from observations import Tanh
    >>> operator_taylor_test(Tanh(4, scale=2.0), np.arange(4.0), np.random.default_rng(0)).status
    'PASS'
    """
    x = np.asarray(x, dtype=float)
    lin = operator.linearize(x)
    scale = np.sqrt(np.mean(x**2)) or 1.0
    return _directional_check("tangent-linear, observation operator", lambda h: _sweep_of_map(operator.apply, lin.tl, x, h, amplitudes),
                              lambda: scale * rng.standard_normal(x.size), directions, RETRIES, ".tl of operator.linearize(x)")


def covariance_sqrt_adjoint_test(covariance, rng: np.random.Generator) -> CheckResult:
    """``<C^1/2 u, w> == <u, C^T/2 w>``."""
    u = rng.standard_normal(covariance.size)
    w = rng.standard_normal(covariance.size)
    return dot_product_test(covariance.sqrt, lambda v: [covariance.sqrt_t(v)], [u], w, name="adjoint, C^1/2 vs C^T/2",
                            inspect="sqrt_t (the transpose of sqrt)")


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
    condition = declared(covariance, "condition_number")
    if condition is not None:
        std = np.asarray(covariance.std)
        condition *= float(std.max() / std.min()) ** 2 if std.size else 1.0
        tolerance = max(tolerance, 100 * condition * np.finfo(float).eps)
        details += f"; cond(C) ~ {condition:.1e}"
    inspect = "solve (C^-1) against apply" if error_inverse >= error_sqrt else "sqrt/sqrt_t against apply (C = C^1/2 C^T/2)"
    return _judged("C^-1 C v == v, C^1/2 C^T/2 v == C v", error, tolerance, inspect, details=details)


# --- the cost function --------------------------------------------------------------------


def check_cost(cost, x0, p, control, rng: np.random.Generator, transform: bool = True, directions: int = 1,
               eta: np.ndarray | None = None) -> list[CheckResult]:
    """Gradient tests of ``J`` and ``Jq``, symmetry of the Hessian of ``Jq`` and
    ``grad Jq(0) == grad J`` at the linearisation point, for the given control; in weak
    constraint (a cost with ``Q``) at the forcing ``eta`` (default 0), with the window's
    dot-product test first (the forcing increments ``de`` included)."""
    from .cost import IncrementalCost  # late import: checks stays usable without the cost machinery

    eta = cost.checked_model_error(eta)
    jq = IncrementalCost(cost, x0, p, control=control, transform=transform, eta=eta)
    n, n_p = cost.model.n_state, cost.model.n_params
    weak = eta is not None
    results = []
    if weak:
        window = cost.window(x0, p, eta=eta)
        steps = sorted({0, window.n_steps // 2, window.n_steps})
        results.append(window_adjoint_test(
            window, rng.standard_normal(n), rng.standard_normal(n_p), {k: rng.standard_normal(n) for k in steps},
            de=rng.standard_normal((window.n_steps, n)), inspect="the window's ad: its ae (the forcing adjoint) against tl's de"))
    gradients = cost.full_gradient(x0, p, eta)
    shape = (0, n) if eta is None else eta.shape

    def in_control():  # a direction inside the control
        u = rng.standard_normal(jq.size)
        deta = jq.model_error_increment(u)
        return np.concatenate(jq.increments(u) + (np.zeros(shape) if deta is None else deta,), axis=None)

    def J(u):
        return cost.evaluate(u[:n], u[n : n + n_p], u[n + n_p :].reshape(shape) if weak else None).J

    u0 = np.concatenate([x0, p, np.zeros(0) if eta is None else eta.ravel()])
    results.append(_directional_check(
        "gradient of J (Taylor)", lambda h: _sweep_of_functional(J, np.concatenate(gradients[1:], axis=None), u0, h, DEFAULT_AMPLITUDES),
        in_control, directions, RETRIES, "FourDVarCost.gradient: the window's ad (its parameter and forcing adjoints), the operators' .ad"))

    u = 0.1 * rng.standard_normal(jq.size)
    g = jq.value_and_gradient(u)[1]
    results.append(_directional_check(
        "gradient of Jq (Taylor)", lambda h: _sweep_of_functional(lambda v: jq.value_and_gradient(v)[0].J, g, u, h, DEFAULT_AMPLITUDES),
        lambda: rng.standard_normal(jq.size), directions, RETRIES, "IncrementalCost.value_and_gradient: the window's tl against its ad"))

    runs = [dot_product_test(jq.hessian_vector, lambda w: [jq.hessian_vector(w)], [rng.standard_normal(jq.size)], rng.standard_normal(jq.size),
                             inspect="IncrementalCost.hessian_vector: the window's ad is not the transpose of its tl")
            for _ in range(directions)]
    results.append(_worst("Hessian of Jq symmetric", runs))

    g0 = jq.value_and_gradient(np.zeros(jq.size))[1]
    expected = jq.control_gradient(*gradients[1:])
    error = float(np.linalg.norm(g0 - expected) / max(np.linalg.norm(expected), _TINY))
    results.append(_judged("grad Jq(0) == grad J", error, 1e-10, "IncrementalCost (its linearisation point) against FourDVarCost.gradient",
                           details="relative difference at the linearisation point"))
    return results


def forced_window_adjoint_test(window, dx0, dp, deta, forcings: dict, tolerance: float = ADJOINT_TOLERANCE) -> CheckResult:
    """Deprecated: :func:`window_adjoint_test` with ``de`` the sub-windows' ``deta`` on each step."""
    warn_deprecated("forced_window_adjoint_test", "window_adjoint_test(..., de=)")
    return window_adjoint_test(window, dx0, dp, forcings, tolerance, de=sub_window_forcing(deta, window.every, window.n_steps))


def check_weak_cost(cost, x0, p, eta, control, rng: np.random.Generator, transform: bool = True) -> list[CheckResult]:
    """Deprecated: :func:`check_cost` with ``eta``."""
    warn_deprecated("check_weak_cost", "check_cost(..., eta=eta)")
    return check_cost(cost, x0, p, control, rng, transform=transform, eta=eta)


# --- reporting ----------------------------------------------------------------


LEGEND = """\
rel. error: adjoint tests |<Lu,w> - <u,L*w>| / |<Lu,w>|; comparisons |a - b| / |b|; Taylor and gradient
  tests r(a) / |a F'h| at the smallest amplitude above round-off (for a failure, the relative size of
  the wrong first-order term; otherwise a bound on it; not judged).
order: how fast the Taylor remainder r(a) = |F(u + a h) - F(u) - a F'h| falls with the amplitude a over
  its asymptotic range (2: the derivative is right; 1: it is wrong). Inconclusive: no direction tried
  showed either (too curved above round-off, or a kink); never counted as a failure."""


def _number(value: float, spec: str) -> str:
    return format(value, spec) if np.isfinite(value) else "-"


def format_table(results: Sequence[CheckResult], show_ratios: bool = True, legend: bool = False) -> str:
    """A plain-text table, one row per check: relative error and its tolerance, fitted
    order and its minimum, verdict; under a failed row the method to inspect and the
    size of the discrepancy.  With ``show_ratios``, the sweep behind each Taylor or
    gradient verdict follows (``*`` marks its asymptotic range, ``~`` round-off)."""
    width = max([len(r.name) for r in results] + [4])
    header = f"{'test':<{width}}  {'rel. error':>10}  {'tolerance':>9}  {'order':>6}  {'minimum':>7}  verdict"
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(f"{r.name:<{width}}  {_number(r.error, '10.2e'):>10}  {_number(r.error_tolerance, '9.0e'):>9}  "
                     f"{_number(r.order, '6.2f'):>6}  {_number(r.min_order, '7.1f'):>7}  {r.status}")
        if r.failed:
            lines.append(f"    -> inspect {r.inspect}: {r.details}")
        elif r.status == INCONCLUSIVE:
            lines.append(f"    -> {r.details}")
    if show_ratios:
        for r in results:
            if r.sweep is None:
                continue
            s = r.sweep
            shown = "the one with the largest relative error" if r.passed else "the one that decided"
            tried = f" ({len(r.sweeps)} directions tried; shown: {shown})" if len(r.sweeps) > 1 else ""
            lines += ["", f"{r.name}: {s.reason}{tried}", f"  {'amplitude':>9}  {'remainder':>10}  {'order':>6}  {'ratio':>12}"]
            inside = np.zeros(s.amplitudes.size, bool)
            if s.window is not None:
                inside[s.window[0] : s.window[1] + 1] = True
            # the local order between amplitude i and i + 1, shown on row i inside the range
            orders = np.where(inside[:-1] & inside[1:], s.local_orders, np.nan)
            for i, (a, rem, q, ratio) in enumerate(zip(s.amplitudes, s.remainders, np.append(orders, np.nan), s.ratios)):
                mark = "*" if inside[i] else " " if s.clean[i] else "~"
                lines.append(f"  {a:>9.1e}  {_number(rem, '10.3e'):>10}  {_number(q, '6.2f'):>6}  {_number(ratio, '12.5e'):>12} {mark}")
    if legend:
        lines += ["", LEGEND]
    return "\n".join(lines)
