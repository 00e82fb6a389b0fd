"""Cycled 4D-Var: window after window, the state and the parameters carried forward.

For cycle ``c`` with background ``(xb_c, pb_c)``::

    (x0_c, p_c, eta_c) = 4D-Var analysis of window c     (FourDVar.solve)
    xb_{c+1}  = M_{S:0}(p_c, x0_c; eta_c)                the analysis forecast, forced in weak
                                                         constraint, to step S = shift (default L)
    pb_{c+1}  = p_c                                      the analysed parameters
    B_{c+1}, P_{c+1} from the caller's policies (fixed by default)

This rule is written once, in :func:`cycle_windows`; an ensemble of data assimilations
(:class:`fourdvar.ensemble.Ensemble`) is its member strategy: each member cycles by the same
rule from its own background, with its observations perturbed, and the members' inflated
backgrounds give the window's hybrid ``B``, used by the control and every member alike.
No members is one run.

Overlapping windows (``S < L``) start from the previous analysis at its step ``S``, which
already used the observations up to the previous window's end; the caller gives each window
only the observations after that end, so that each is assimilated once (as DAPPER's ``Var4D``
and the iEnKS of Bocquet and Sakov (2014) with single data assimilation do).  In weak
constraint each window estimates its own forcing ``eta_c`` from a background of 0.

Cost check: with ``max_cost_per_obs`` set, a joint analysis with ``J > max_cost_per_obs n_obs``
(at the minimum ``J ~ n_obs / 2``) is redone with the parameters fixed at ``pb``, and ``pb``
carries over (a secondary minimum where the parameters absorbed an error of the initial
state); with ``cost_spike``, from the fourth window on the limit is also ``cost_spike`` times
the median ``J / n_obs`` of the earlier windows kept.  Members are checked against the
control's limit.

With ``params_noise_std = q``, ``P`` is propagated as a Kalman filter would for parameters
that follow a random walk::

    P_{c+1} = P^a_c + q_c^2 I,   q_c = max(q d^c, q_min)

``P^a_c`` the Gauss-Newton posterior of the parameters after window ``c`` (marginal over the
state), ``d`` = ``params_noise_decay``, ``q_min`` = ``params_noise_floor``.  With the Lanczos
inner loops ``P^a`` comes from every outer loop's run by block BFGS
(:meth:`fourdvar.posterior.Posterior.from_lanczos_runs`) and ``P`` stays a diagonal updated in
low rank (:class:`fourdvar.posterior.LowRankCovariance`, rank ``posterior_rank``); otherwise it
is the dense :meth:`FourDVar.params_posterior_covariance`.  A rejected window leaves ``P``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from .assimilation import FourDVar
from .cost import Control
from .covariances import Dense, Diagonal, dense_matrix
from .departures import WindowDepartures, window_departures
from .ensemble import Ensemble
from .minimize import AssimilationResult
from .options import SolverOptions
from .posterior import LowRankCovariance, Posterior
from .quasistatic import solve_quasi_static
from .window import forecast

__all__ = [
    "WindowOutcome", "WindowSolver", "CyclingRule", "CycleState", "CycledWindow", "MemberTask",
    "assimilate_member", "assimilate_window", "cycle", "cycle_windows", "cycling_method",
]


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


@dataclass(frozen=True)
class WindowSolver:
    """How every window is solved: the model, the control, the window length, the solver
    options, and optionally weak constraint (``Q``, ``model_error_every``: see :class:`FourDVar`)
    and quasi-static stages of ``quasi_static_steps`` (:mod:`fourdvar.quasistatic`)."""

    model: object
    control: Control
    n_steps: int
    options: SolverOptions = SolverOptions()
    Q: object = None
    model_error_every: int | None = None
    quasi_static_steps: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "control", Control.parse(self.control))

    def solve(self, slots: Sequence, xb, B, pb, P, control: Control) -> tuple[FourDVar, AssimilationResult]:
        """The window's problem over all ``n_steps`` and its analysis, in stages when asked."""
        weak = dict(Q=self.Q, model_error_every=self.model_error_every)
        problem = FourDVar(self.model, slots, xb=xb, B=B, pb=pb, P=P, control=control, n_steps=self.n_steps, **weak,
                           **self.options.problem_qc())
        if self.quasi_static_steps is None or self.quasi_static_steps >= self.n_steps:
            return problem, problem.solve(options=self.options)
        return problem, solve_quasi_static(self.model, slots, xb, B, pb, P, control, self.n_steps, self.quasi_static_steps, self.options, **weak)

    def assimilate(self, slots: Sequence, xb, B, pb, P, cycle: int = 0, cost_limit: float | None = None,
                   params_posterior: bool = False) -> WindowOutcome:
        """4D-Var over one window from the background, the joint analysis redone with the
        parameters fixed when ``J > cost_limit * n_obs``, the two forecasts over the window
        and, with ``params_posterior``, the parameters' posterior covariance."""
        problem, result = self.solve(slots, xb, B, pb, P, self.control)
        rejected_cost, posterior = None, None
        if cost_limit is not None and self.control.params and self.control.state:
            if result.final.J > cost_limit * sum(np.size(slot.values) for slot in slots):
                rejected_cost = float(result.final.J)
                result = self.solve(slots, xb, B, pb, P, Control(state=True, model_error=self.control.model_error))[1]
        if params_posterior and self.control.params and rejected_cost is None:
            posterior = self._params_posterior(problem, result)
        context = f"cycle {cycle}"
        background_trajectory = forecast(self.model, xb, pb, self.n_steps, context=f"{context}, background forecast")
        analysis_trajectory = problem.cost.trajectory(result.x0, result.p, _model_error_or_none(result), context=f"{context}, analysis forecast")
        return WindowOutcome(
            cycle=cycle, xb=np.asarray(xb, dtype=float), pb=np.asarray(pb, dtype=float), B=B, P=P, result=result,
            background_trajectory=background_trajectory, analysis_trajectory=analysis_trajectory,
            rejected_cost=rejected_cost, params_posterior=posterior,
            departures=window_departures(problem.cost, background_trajectory, analysis_trajectory, result.final.J),
        )

    def _params_posterior(self, problem: FourDVar, result: AssimilationResult):
        """``P^a``: low rank from every outer loop's Lanczos run, else the dense Gauss-Newton one."""
        runs = [record["inner"].lanczos for record in result.outer if record["inner"].lanczos is not None]
        if not runs:
            return problem.params_posterior_covariance(result.x0, result.p, _model_error_or_none(result))
        rank = self.options.posterior_rank
        return Posterior.from_lanczos_runs(problem.cost, problem.control, runs, max_rank=rank).params_covariance(max_rank=rank)


def assimilate_window(
    model, observations: Sequence, xb, B, pb, P, control, n_steps: int, cycle: int = 0,
    max_cost_per_obs: float | None = None, params_posterior: bool = False, Q=None, model_error_every: int | None = None,
    quasi_static_steps: int | None = None, options: SolverOptions | None = None, **changes,
) -> WindowOutcome:
    """One window of :class:`WindowSolver` (``options`` with the keyword ``changes``: the solver options)."""
    solver = WindowSolver(model, control, n_steps, SolverOptions.of(options, **changes), Q, model_error_every, quasi_static_steps)
    return solver.assimilate(observations, xb, B, pb, P, cycle, max_cost_per_obs, params_posterior)


def _model_error_or_none(result: AssimilationResult) -> np.ndarray | None:
    """The analysed forcing of a weak-constraint result, ``None`` in strong constraint."""
    return result.model_error if result.model_error.shape[0] else None


def _with_noise(posterior, noise_std: float, max_rank: int | None):
    """``P^a + q^2 I``: limited-memory when ``P^a`` is a :class:`LowRankCovariance` on a diagonal base, else dense."""
    if isinstance(posterior, LowRankCovariance):
        if isinstance(posterior.base, Diagonal):
            return posterior.with_noise(noise_std, max_rank=max_rank)
        posterior = dense_matrix(posterior)
    return Dense(posterior + noise_std**2 * np.eye(len(posterior)))


@dataclass(frozen=True)
class CyclingRule:
    """How one window leads to the next besides ``xb_{c+1} = M_{S:0}(p_c, x0_c)``, ``pb_{c+1} = p_c``
    (module docstring): ``shift`` ``S`` (default ``L``), the policies ``background_policy(cycle,
    xb, pb, slots, B) -> B`` and ``params_policy(cycle, P) -> P`` (default: fixed), the cost
    check (``max_cost_per_obs``, ``cost_spike``) and the propagated ``P`` (``params_noise_std``
    ``q``, ``params_noise_decay`` ``d``, ``params_noise_floor`` ``q_min``)."""

    shift: int | None = None
    background_policy: Callable | None = None
    params_policy: Callable | None = None
    max_cost_per_obs: float | None = None
    cost_spike: float | None = None
    params_noise_std: float | None = None
    params_noise_decay: float = 1.0
    params_noise_floor: float = 0.0

    def noise_std(self, cycle: int) -> float:
        """``q_c = max(q d^c, q_min)``: the random walk's std added to ``P`` after window ``cycle``."""
        return max(self.params_noise_std * self.params_noise_decay**cycle, self.params_noise_floor)

    def cost_limit(self, history: Sequence[float]) -> float | None:
        """The ``J / n_obs`` above which a joint analysis is redone with the parameters fixed."""
        if self.cost_spike is None or len(history) < 3:
            return self.max_cost_per_obs
        spike = self.cost_spike * float(np.median(history))
        return spike if self.max_cost_per_obs is None else min(self.max_cost_per_obs, spike)


@dataclass(frozen=True)
class CycleState:
    """What window ``cycle`` starts from: the control's background ``(xb, pb)``, the covariances
    ``B`` and ``P`` the policies build on (an ensemble's static ``B``), ``J / n_obs`` of the
    windows kept (``cost_history``), and the members' backgrounds ``(N, n)`` and parameters
    ``(N, n_p)`` (``None``: no members yet, the ensemble draws them)."""

    cycle: int
    xb: np.ndarray
    pb: np.ndarray
    B: object
    P: object
    members: np.ndarray | None = None
    member_params: np.ndarray | None = None
    cost_history: tuple = ()


@dataclass
class CycledWindow:
    """One window of the loop: the control's outcome, the members' (none without an ensemble),
    the ``B`` they used and the state the next window starts from."""

    cycle: int
    control: WindowOutcome
    members: list[WindowOutcome]
    B: object
    next: CycleState

    @staticmethod
    def _spread(states: np.ndarray) -> np.ndarray:
        return np.sqrt(np.mean(np.var(states, axis=0, ddof=1), axis=-1))

    @property
    def background_spread(self) -> np.ndarray:
        """``sqrt(mean_i var_m xb_i^m)`` at each step of the window (members' background forecasts)."""
        return self._spread(np.stack([m.background_trajectory for m in self.members]))

    @property
    def analysis_spread(self) -> np.ndarray:
        """The same for the members' analysis trajectories."""
        return self._spread(np.stack([m.analysis_trajectory for m in self.members]))


@dataclass(frozen=True)
class MemberTask:
    """Everything one member's (or the control's, ``member == 0``) window needs: a pure function
    of it (:func:`assimilate_member`), so it runs on any worker."""

    member: int
    cycle: int
    solver: WindowSolver
    slots: Sequence
    xb: np.ndarray
    pb: np.ndarray
    B: object
    P: object
    cost_limit: float | None = None
    params_posterior: bool = False


def assimilate_member(task: MemberTask) -> WindowOutcome:
    """The window of one member (or of the control): :meth:`WindowSolver.assimilate` on its task."""
    return task.solver.assimilate(task.slots, task.xb, task.B, task.pb, task.P, task.cycle, task.cost_limit, task.params_posterior)


def cycle_windows(solver: WindowSolver, windows: Iterable[Sequence], state: CycleState, rule: CyclingRule = CyclingRule(),
                  ensemble: Ensemble = Ensemble(), map_members: Callable[[Callable, list], Iterable] = map) -> Iterator[CycledWindow]:
    """Yield one :class:`CycledWindow` per window of ``windows`` (each its observation slots,
    steps from the window start), from ``state``; the rule of the module docstring.

    ``map_members(function, tasks)`` runs the control and the members of each window (the
    builtin ``map`` by default, an executor's map from the application) and returns their
    outcomes in the order of the tasks; the next state is the same whatever order they ran in.
    """
    shift = solver.n_steps if rule.shift is None else rule.shift
    if not 1 <= shift <= solver.n_steps:
        raise ValueError(f"shift must be between 1 and n_steps = {solver.n_steps}, got {shift}")
    params = solver.control.params
    if ensemble.n_members and state.members is None:
        members, member_params = ensemble.initial(state.xb, state.pb, state.B, state.P if params else None)
        state = dataclasses.replace(state, members=members, member_params=member_params)
    if state.members is not None and state.member_params is None:  # members' parameters not given: pb
        state = dataclasses.replace(state, member_params=np.tile(state.pb, (len(state.members), 1)))
    for c, slots in enumerate(windows, start=state.cycle):
        slots = list(slots)
        B = state.B if rule.background_policy is None else rule.background_policy(c, state.xb, state.pb, slots, state.B)
        P = state.P if rule.params_policy is None or state.P is None else rule.params_policy(c, state.P)
        members = ensemble.inflated(state.members)
        B_window = ensemble.covariance(B, members)
        limit = rule.cost_limit(state.cost_history)
        backgrounds = [(state.xb, state.pb)] + ([] if members is None else list(zip(members, state.member_params)))
        tasks = [MemberTask(m, c, solver, ensemble.observations(slots, c, m), xb, pb, B_window, P, limit,
                            params_posterior=m == 0 and rule.params_noise_std is not None)
                 for m, (xb, pb) in enumerate(backgrounds)]
        control, *member_outcomes = map_members(assimilate_member, tasks)
        if control.params_posterior is not None:
            P = _with_noise(control.params_posterior, rule.noise_std(c), solver.options.posterior_rank)
        control.P_next = P
        kept = () if control.rejected_cost is not None else (0.5 * control.departures.chi2,)
        state = dataclasses.replace(
            state, cycle=c + 1, xb=control.analysis_trajectory[shift].copy(), pb=control.p.copy() if params else state.pb,
            B=B, P=P, cost_history=state.cost_history + kept,
            members=None if members is None else np.stack([m.analysis_trajectory[shift] for m in member_outcomes]),
            member_params=state.member_params if members is None or not params else np.stack([m.p for m in member_outcomes]),
        )
        yield CycledWindow(c, control, member_outcomes, B_window, state)
        del control, member_outcomes  # not held while the next window runs: Lanczos runs and covariances can be large


def cycling_method(model, control="state", n_steps: int = 1, *, shift: int | None = None, background_policy: Callable | None = None,
                   params_policy: Callable | None = None, max_cost_per_obs: float | None = None, cost_spike: float | None = None,
                   params_noise_std: float | None = None, params_noise_decay: float = 1.0, params_noise_floor: float = 0.0,
                   Q=None, model_error_every: int | None = None,
                   quasi_static_steps: int | None = None, options: SolverOptions | None = None, **changes) -> tuple[WindowSolver, CyclingRule]:
    """The :class:`WindowSolver` and :class:`CyclingRule` of :func:`cycle`'s keywords (``options``
    with the keyword ``changes``: the solver options of every window)."""
    solver = WindowSolver(model, control, n_steps, SolverOptions.of(options, **changes), Q, model_error_every, quasi_static_steps)
    return solver, CyclingRule(shift, background_policy, params_policy, max_cost_per_obs, cost_spike, params_noise_std,
                               params_noise_decay, params_noise_floor)


def cycle(model, windows: Iterable[Sequence], xb: np.ndarray, B, pb: np.ndarray, P, control="state", n_steps: int = 1,
          start_cycle: int = 0, cost_history: Sequence[float] = (), **keywords) -> Iterator[WindowOutcome]:
    """Yield one :class:`WindowOutcome` per window of ``windows`` (each window's observation slots,
    steps from its start): :func:`cycle_windows` without members.

    The ``keywords`` are the fields of :class:`CyclingRule` and of :class:`WindowSolver`, and the
    solver ``options`` with any of their fields (:func:`cycling_method`); ``cost_history``: ``J / n_obs``
    of the windows kept before ``start_cycle``.  Each outcome's ``P_next`` is the ``P`` the next
    window starts from, before ``params_policy``.
    """
    solver, rule = cycling_method(model, control, n_steps, **keywords)
    state = CycleState(start_cycle, np.asarray(xb, dtype=float), np.asarray(pb, dtype=float), B, P, cost_history=tuple(cost_history))
    for window in cycle_windows(solver, windows, state, rule):
        yield window.control
        del window
