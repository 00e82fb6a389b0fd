"""Cycled 4D-Var: window after window, the state and the parameters carried forward.

For cycle ``c`` with background ``(xb_c, pb_c)``::

    (x0_c, p_c)   = 4D-Var analysis of window c          (FourDVar.solve)
    xb_{c+1}      = M_{S:0}(p_c, x0_c)                    the analysis forecast to the next window's start,
                                                          S = shift (default L: the window end;
                                                          weak constraint: the forced one, with eta_c)
    pb_{c+1}      = p_c                                   the analysed parameters
    B_{c+1}, P_{c+1} from the caller's policies (fixed by default)

Overlapping windows (``shift`` S < L) start every S steps, each from the previous
analysis at its step S: a smoothed estimate, which already used the observations
up to the previous window's end.  The caller then gives each window only the
observations after that end (its newest S steps), so that every observation is
assimilated once, as in DAPPER's ``Var4D`` and the iEnKS of Bocquet and Sakov
(2014) with single data assimilation; the window's first L - S steps carry the
background forward through the dynamics, which shape the background covariance
that the newest observations see, ``M_{L:0} B M_{L:0}^T``.

In weak constraint (``Q`` given, ``"model_error"`` in the control) each window
estimates its own forcing ``eta_c`` (background 0 in every window), recorded in
its outcome's ``model_error``.

A window whose analysis does not fit its observations can be kept from teaching
the parameters: with ``max_cost_per_obs`` set, a joint analysis whose nonlinear
cost exceeds ``max_cost_per_obs * n_obs`` (at the minimum ``J`` is about
``n_obs / 2``) is redone with the parameters fixed at ``pb``, and ``pb`` carries
over unchanged.  Such a window has usually stopped in a secondary minimum where
the parameters absorbed an error of the initial state.  With ``cost_spike`` set, from the
fourth window on the limit is also ``cost_spike`` times the median ``J / n_obs`` of the
earlier windows kept: a window far worse than the run so far is kept from the parameters
even when the run as a whole fits poorly (a network still learning).

With ``params_noise_std = q`` set, ``P`` is propagated instead of prescribed, as
a Kalman filter would for parameters that follow a random walk::

    P_{c+1} = P^a_c + q^2 I        P^a_c: the Gauss-Newton posterior covariance of the
                                   parameters after window c, marginal over the state

so what each window taught the parameters, and how well, accumulates over the
cycles (``q`` keeps them learning).  With the ``lanczos`` inner method ``P^a`` comes from
the Lanczos runs of all the window's outer loops, combined by block BFGS
(:meth:`fourdvar.posterior.Posterior.from_lanczos_runs`: no Hessian products of its own),
and ``P`` stays limited-memory, a diagonal updated in low rank
(:class:`fourdvar.posterior.LowRankCovariance`, its rank capped by ``posterior_rank``); the
last outer loop's Ritz pairs alone hold too few directions to keep learning at the dense
posterior's pace.  Otherwise it is the dense :meth:`FourDVar.params_posterior_covariance`,
``n_x + n_p`` Hessian products per window.
A window rejected by the ``max_cost_per_obs`` check leaves ``P`` as it was.

With parameters in the control this is online learning: a network's weights are
re-estimated in every window, their previous analysis acting as the background.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from .assimilation import FourDVar
from .cost import Control
from .covariances import Dense, Diagonal
from .minimize import AssimilationResult
from .departures import WindowDepartures, window_departures
from .posterior import LowRankCovariance, Posterior
from .quasistatic import solve_quasi_static
from .window import forecast

__all__ = ["WindowOutcome", "assimilate_window", "cycle", "window_shift"]


@dataclass
class WindowOutcome:
    """One assimilation window: its background, analysis and both forecasts over the window."""

    cycle: int
    xb: np.ndarray
    pb: np.ndarray
    B: object
    P: object
    result: AssimilationResult
    background_trajectory: np.ndarray  # (L + 1, n_state), from (xb, pb)
    analysis_trajectory: np.ndarray  # (L + 1, n_state), from (x0, p)
    rejected_cost: float | None = None  # J of a rejected joint analysis (then p = pb)
    params_posterior: object = None  # P^a, when asked for and not rejected: a LowRankCovariance (lanczos) or a dense array
    P_next: object = None  # the parameter covariance the next window starts from (set by cycle)
    departures: WindowDepartures | None = None  # 2 J / m, O-B, O-A, Desroziers estimates

    @property
    def x0(self) -> np.ndarray:
        return self.result.x0

    @property
    def p(self) -> np.ndarray:
        return self.result.p

    @property
    def model_error(self) -> np.ndarray:
        """The analysed forcing ``eta``, ``(n_sub, n_state)`` (``n_sub = 0`` in strong constraint)."""
        return self.result.model_error


def assimilate_window(
    model, observations: Sequence, xb, B, pb, P, control, n_steps: int, cycle: int = 0,
    max_cost_per_obs: float | None = None, params_posterior: bool = False, Q=None, model_error_every: int | None = None,
    quasi_static_steps: int | None = None, **solve_options,
) -> WindowOutcome:
    """4D-Var over one window from the background, and the two forecasts over it
    (and, with ``params_posterior``, the parameters' posterior covariance).  ``Q`` and
    ``model_error_every``: weak constraint, see :class:`FourDVar`; the analysis forecast
    is then the forced trajectory.  With ``quasi_static_steps`` (strong constraint) the
    window grows by that many steps per stage (:func:`fourdvar.quasistatic.solve_quasi_static`)."""
    control = Control.parse(control)
    weak = dict(Q=Q, model_error_every=model_error_every)
    problem = FourDVar(model, observations, xb=xb, B=B, pb=pb, P=P, control=control, n_steps=n_steps, **weak)
    if quasi_static_steps is not None and quasi_static_steps < n_steps:
        if Q is not None:
            raise ValueError("quasi-static stages are for strong-constraint 4D-Var: give quasi_static_steps or Q, not both")
        result = solve_quasi_static(model, observations, xb, B, pb, P, control, n_steps, quasi_static_steps, **solve_options)
    else:
        result = problem.solve(**solve_options)
    rejected_cost, posterior = None, None
    if max_cost_per_obs is not None and control.params and control.state:
        n_obs = sum(np.size(slot.values) for slot in observations)
        if result.final.J > max_cost_per_obs * n_obs:
            rejected_cost = float(result.final.J)
            fixed_params = Control(state=True, model_error=control.model_error)
            result = FourDVar(model, observations, xb=xb, B=B, pb=pb, control=fixed_params, n_steps=n_steps, **weak).solve(**solve_options)
    if params_posterior and control.params and rejected_cost is None:
        runs = [record["inner"].lanczos for record in result.outer if record["inner"].lanczos is not None]
        if runs:  # low rank, from every outer loop's Lanczos run
            rank = solve_options.get("posterior_rank")
            posterior = Posterior.from_lanczos_runs(problem.cost, problem.control, runs, max_rank=rank).params_covariance(max_rank=rank)
        else:
            posterior = problem.params_posterior_covariance(result.x0, result.p, _model_error_or_none(result))
    context = f"cycle {cycle}"
    background_trajectory = forecast(model, xb, pb, n_steps, context=f"{context}, background forecast")
    analysis_trajectory = problem.cost.trajectory(result.x0, result.p, _model_error_or_none(result), context=f"{context}, analysis forecast")
    return WindowOutcome(
        cycle=cycle, xb=np.asarray(xb, dtype=float), pb=np.asarray(pb, dtype=float), B=B, P=P, result=result,
        background_trajectory=background_trajectory, analysis_trajectory=analysis_trajectory,
        rejected_cost=rejected_cost, params_posterior=posterior,
        departures=window_departures(problem.cost, background_trajectory, analysis_trajectory, result.final.J),
    )


def _model_error_or_none(result: AssimilationResult) -> np.ndarray | None:
    """The analysed forcing of a weak-constraint result, ``None`` in strong constraint."""
    return result.model_error if result.model_error.shape[0] else None


def _with_noise(posterior, noise_std: float, max_rank: int | None):
    """``P^a + q^2 I``: limited-memory when ``P^a`` is a :class:`LowRankCovariance` on a diagonal base, else dense."""
    if isinstance(posterior, LowRankCovariance):
        if isinstance(posterior.base, Diagonal):
            return posterior.with_noise(noise_std, max_rank=max_rank)
        posterior = np.column_stack([posterior.apply(unit) for unit in np.eye(posterior.size)])
    return Dense(posterior + noise_std**2 * np.eye(len(posterior)))


def _cost_limit(max_cost_per_obs: float | None, cost_spike: float | None, history: list) -> float | None:
    """The ``J / n_obs`` above which a joint analysis is redone with the parameters fixed (module docstring)."""
    if cost_spike is None or len(history) < 3:
        return max_cost_per_obs
    spike = cost_spike * float(np.median(history))
    return spike if max_cost_per_obs is None else min(max_cost_per_obs, spike)


def window_shift(shift: int | None, n_steps: int) -> int:
    """Steps from one window's start to the next: ``shift``, ``1 <= shift <= n_steps``
    (``None``: ``n_steps``, windows end to end)."""
    shift = n_steps if shift is None else shift
    if not 1 <= shift <= n_steps:
        raise ValueError(f"shift must be between 1 and n_steps = {n_steps}, got {shift}")
    return shift


def cycle(
    model,
    windows: Iterable[Sequence],
    xb: np.ndarray,
    B,
    pb: np.ndarray,
    P,
    control="state",
    n_steps: int = 1,
    start_cycle: int = 0,
    background_policy: Callable[[int, np.ndarray, np.ndarray, Sequence, object], object] | None = None,
    params_policy: Callable[[int, object], object] | None = None,
    max_cost_per_obs: float | None = None,
    params_noise_std: float | None = None,
    Q=None,
    model_error_every: int | None = None,
    quasi_static_steps: int | None = None,
    shift: int | None = None,
    cost_spike: float | None = None,
    cost_history: Sequence[float] = (),
    **solve_options,
) -> Iterator[WindowOutcome]:
    """Yield one :class:`WindowOutcome` per window of ``windows``.

    ``windows`` gives each cycle's observation slots, steps relative to the window
    start.  ``background_policy(cycle, xb, pb, slots, B) -> B`` may adapt the state
    background covariance before each window (e.g. its variance from the
    innovations); ``params_policy(cycle, P) -> P`` the parameter covariance (e.g.
    shrinking it over the cycles).  Both default to keeping the covariance fixed.
    ``max_cost_per_obs`` and ``params_noise_std``: see the module docstring (defaults:
    no check; ``P`` from ``params_policy``).  Each outcome's ``P_next`` is the parameter
    covariance the next window starts from (before ``params_policy``).  ``Q``,
    ``model_error_every``: weak constraint (see :class:`FourDVar`); the next background
    is then the end of the analysed forced trajectory.
    ``quasi_static_steps``: grow each window by that many steps per stage (see
    :mod:`fourdvar.quasistatic`; default: the whole window at once).
    ``shift``: steps from one window's start to the next, ``1 <= shift <= n_steps``
    (default ``n_steps``: windows end to end); the next background is the analysis
    trajectory at step ``shift``.
    ``cost_spike``: see the module docstring; ``cost_history``: ``J / n_obs`` of the windows
    kept before ``start_cycle`` (a resumed run).
    """
    control = Control.parse(control)
    shift = window_shift(shift, n_steps)
    xb = np.asarray(xb, dtype=float)
    pb = np.asarray(pb, dtype=float)
    history = list(cost_history)
    for c, slots in enumerate(windows, start=start_cycle):
        if background_policy is not None:
            B = background_policy(c, xb, pb, slots, B)
        if params_policy is not None and P is not None:
            P = params_policy(c, P)
        outcome = assimilate_window(
            model, slots, xb, B, pb, P, control, n_steps, cycle=c, max_cost_per_obs=_cost_limit(max_cost_per_obs, cost_spike, history),
            params_posterior=params_noise_std is not None, Q=Q, model_error_every=model_error_every,
            quasi_static_steps=quasi_static_steps, **solve_options,
        )
        if outcome.params_posterior is not None:
            P = _with_noise(outcome.params_posterior, params_noise_std, solve_options.get("posterior_rank"))
        outcome.P_next = P
        if outcome.rejected_cost is None:
            history.append(0.5 * outcome.departures.chi2)
        yield outcome
        xb = outcome.analysis_trajectory[shift].copy()
        pb = outcome.p.copy() if control.params else pb
        del outcome  # not held while the next window runs: its Lanczos runs and covariances can be large
