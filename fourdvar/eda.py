"""An ensemble of data assimilations (EDA) cycled alongside a control 4D-Var.

The one cycling loop, :func:`fourdvar.cycling.cycle_windows`, with the member strategy
:class:`fourdvar.ensemble.Ensemble` (its docstring gives the members' perturbations, inflation
and random streams): ``N`` member 4D-Vars and the unperturbed control run in each window
``c`` with the same background covariance::

    B_c = (1 - beta) B_s + beta (X^T X / (N - 1)) o C,     x_m = xb_c^m - mean_m(xb_c^m)

(:class:`~fourdvar.ensemble.HybridEnsembleCovariance`; ``B_s`` alone while the members have no
spread), and each member carries its own analysis to step ``shift`` (and, with the parameters in
the control, its own parameters) into the next window, as the control does.  Every control block,
policy and option of :func:`fourdvar.cycling.cycle` applies to the control and the members alike.
A member's window is a pure function of its :class:`~fourdvar.cycling.MemberTask`, so the members
can run anywhere, in any order: ``map_members(function, tasks)`` (the builtin ``map`` by default)
returns the outcomes in the order of the tasks.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from .cycling import CycledWindow, CycleState, MemberTask, assimilate_member, cycle_windows, cycling_method
from .ensemble import PERTURBATIONS, Ensemble, ensemble_covariance, inflate, perturb_observations

__all__ = ["MemberTask", "EnsembleWindow", "perturb_observations", "assimilate_member", "eda_cycle", "inflate",
           "ensemble_covariance", "PERTURBATIONS"]

#: One EDA window: the control's outcome, the members' outcomes, the ``B`` they used and the next state.
EnsembleWindow = CycledWindow


def eda_cycle(
    model, windows: Iterable[Sequence], xb: np.ndarray, B_static, pb: np.ndarray, P, *, n_members: int, weight: float,
    localization: float, perturb: Sequence[str] = PERTURBATIONS, seed: int = 0, control="state", n_steps: int = 1,
    start_cycle: int = 0, inflation: float = 1.0, member_backgrounds: np.ndarray | None = None,
    map_members: Callable[[Callable, list], Iterable] = map, **keywords,
) -> Iterator[CycledWindow]:
    """Yield one :class:`EnsembleWindow` per window of ``windows`` (the control and ``n_members >= 2`` members).

    ``member_backgrounds`` ``(N, n)`` continues a cycle (default: drawn by
    :meth:`fourdvar.ensemble.Ensemble.initial`), before their ``inflation``; the other
    ``keywords`` are those of :func:`fourdvar.cycling.cycle`.
    """
    if n_members < 2:
        raise ValueError(f"an ensemble needs at least 2 members, got {n_members}")
    ensemble = Ensemble(n_members, weight, localization, perturb, seed, inflation)
    xb, pb = np.asarray(xb, dtype=float), np.asarray(pb, dtype=float)
    if member_backgrounds is not None:
        member_backgrounds = np.asarray(member_backgrounds, dtype=float)
        if member_backgrounds.shape != (n_members, xb.size):
            raise ValueError(f"member_backgrounds must have shape ({n_members}, {xb.size}), got {member_backgrounds.shape}")
    solver, rule = cycling_method(model, control, n_steps, **keywords)
    state = CycleState(start_cycle, xb, pb, B_static, P, member_backgrounds)
    yield from cycle_windows(solver, windows, state, rule, ensemble, map_members)
