"""An ensemble of data assimilations (EDA) cycled alongside a control 4D-Var.

In each window ``c``, ``N`` member 4D-Vars and the unperturbed control run with
the same background covariance ``B_c``::

    member m:  y_k^m = y_k + R_k^1/2 eps_k^{c,m}      (observations perturbed, with "observations")
               (x0^m, p^m) = 4D-Var from its own background (xb_c^m, pb_c^m)
               xb_{c+1}^m  = M_{S:0}(p^m, x0^m)        each member cycles its own background
               pb_{c+1}^m  = p^m                       and, with the parameters in the control, its parameters
    control:   the same 4D-Var from xb_c with the unperturbed y_k, xb_{c+1} = M_{S:0}(p, x0)

    B_{c+1} = (1 - beta) B_s + beta (X^T X / (N - 1)) o C,     x_m = xb_{c+1}^m - mean_m(xb_{c+1}^m)

(:class:`~fourdvar.ensemble.HybridEnsembleCovariance`).  This is the member strategy of the
one cycling loop, :func:`fourdvar.cycling.cycle_windows`, with an
:class:`~fourdvar.ensemble.Ensemble`: every control block, policy and option of a single run
applies to the control and the members alike (``B_s`` is what the background policy adapts;
``P`` is the control's, propagated or prescribed).  ``S`` is the ``shift`` between window
starts: the window length ``L`` by default (windows end to end); with overlapping windows
(``S < L``) the control and every member start from their own previous analysis at step
``S``, and the caller gives each window only the observations after the previous window's
end, so each member perturbs and assimilates every observation once.  With "background"
among the perturbations the members start from ``xb_0^m = xb_0 + B_s^1/2 w^m`` (and
``pb_0 + P^1/2 w'^m`` with the parameters in the control); otherwise they start from
``xb_0`` and the first window uses ``B_s`` alone (an ensemble without spread has no
covariance to give).

With ``inflation = rho`` the members' backgrounds are first spread about their mean,
``xb_c^m <- mean_m(xb_c^m) + rho (xb_c^m - mean_m(xb_c^m))`` (multiplicative inflation,
as in an ensemble Kalman filter): members analysed with perturbed observations keep
too little spread, and the inflated backgrounds give both ``B_c`` and the members'
own 4D-Vars the larger spread.

Every draw comes from a generator seeded by ``(seed, purpose, cycle, member)``,
and a member's window is a pure function of its :class:`~fourdvar.cycling.MemberTask`, so the
members can run anywhere, in any order: ``map_members(function, tasks)`` (the
builtin ``map`` by default; an executor's map from the application) returns the
outcomes in the order of the tasks.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from .cycling import CycledWindow, CycleState, CyclingRule, MemberTask, WindowSolver, assimilate_member, cycle_windows
from .ensemble import PERTURBATIONS, Ensemble, ensemble_covariance, inflate, perturb_observations
from .options import SolverOptions

__all__ = ["MemberTask", "EnsembleWindow", "perturb_observations", "assimilate_member", "eda_cycle", "inflate",
           "ensemble_covariance", "next_member_backgrounds", "PERTURBATIONS"]

#: One EDA window: the control's outcome, the members' outcomes, the ``B`` they used and the next state.
EnsembleWindow = CycledWindow


def next_member_backgrounds(window: CycledWindow, shift: int) -> np.ndarray:
    """``(N, n)``: each member's analysis trajectory at step ``shift``, its background for the next window."""
    return np.stack([member.analysis_trajectory[shift] for member in window.members])


def eda_cycle(
    model, windows: Iterable[Sequence], xb: np.ndarray, B_static, pb: np.ndarray, P, *,
    n_members: int, weight: float, localization: float, perturb: Sequence[str] = PERTURBATIONS,
    seed: int = 0, control="state", n_steps: int = 1, start_cycle: int = 0, inflation: float = 1.0,
    member_backgrounds: np.ndarray | None = None, shift: int | None = None,
    map_members: Callable[[Callable, list], Iterable] = map, options: SolverOptions | None = None,
    Q=None, model_error_every: int | None = None, quasi_static_steps: int | None = None,
    background_policy: Callable | None = None, params_policy: Callable | None = None,
    max_cost_per_obs: float | None = None, cost_spike: float | None = None, params_noise_std: float | None = None,
    **changes,
) -> Iterator[CycledWindow]:
    """Yield one :class:`EnsembleWindow` per window of ``windows`` (the control and ``n_members`` members).

    ``member_backgrounds`` ``(N, n)`` continues a cycle (default: drawn by
    :meth:`fourdvar.ensemble.Ensemble.initial`), before their ``inflation`` (``rho >= 1``,
    applied at the start of every window, see :func:`inflate`).  The other keywords are
    those of :func:`fourdvar.cycling.cycle`, for the control and every member.
    """
    ensemble = Ensemble(n_members, weight, localization, perturb, seed, inflation)
    if n_members < 2:
        raise ValueError(f"an ensemble needs at least 2 members, got {n_members}")
    solver = WindowSolver(model, control, n_steps, SolverOptions.of(options, **changes), Q, model_error_every, quasi_static_steps)
    rule = CyclingRule(shift, background_policy, params_policy, max_cost_per_obs, cost_spike, params_noise_std)
    xb, pb = np.asarray(xb, dtype=float), np.asarray(pb, dtype=float)
    state = CycleState(start_cycle, xb, pb, B_static, P)
    if member_backgrounds is not None:
        member_backgrounds = np.asarray(member_backgrounds, dtype=float)
        if member_backgrounds.shape != (n_members, xb.size):
            raise ValueError(f"member_backgrounds must have shape ({n_members}, {xb.size}), got {member_backgrounds.shape}")
        state = CycleState(start_cycle, xb, pb, B_static, P, member_backgrounds, np.tile(pb, (n_members, 1)))
    yield from cycle_windows(solver, windows, state, rule, ensemble, map_members)
