"""Quasi-static 4D-Var for long windows (Pires, Vautard and Talagrand 1996).

On a long window the nonlinear ``J`` has secondary minima and Gauss-Newton from the
background can fall into one.  Quasi-static minimisation grows the window instead: stage
``s`` minimises ``J`` with the observations up to step ``L_s`` (``L_1 < L_2 < ... = L``,
``L_s = min(s * stage_steps, L)``), from the analysis of stage ``s - 1``; the background
term is the same in every stage.  Each stage starts close to its minimum, which the previous
stage has tracked as it moved.  A stage before the last only has to bring the guess into
the basin of the next one, so it is solved to ``STAGE_TOLERANCE`` (or the caller's
``tolerance``, if looser); the last stage to the caller's ``tolerance``.

In weak constraint the sub-windows of the forcing keep their place in the window: ``eta_j``
is added after steps ``j * every + 1 .. (j + 1) * every`` in every stage, so stage ``s``
estimates the ``ceil(L_s / every)`` forcings whose sub-windows it reaches, the last one over
the part of its sub-window inside the stage (with the default ``every = L``, one forcing
added after each of the stage's steps).  ``Jm = 1/2 sum_j |eta_j|^2_{Q^-1}`` counts each
forcing once whatever its length, so a stage is the full window's cost with the later
observations and the later forcings left out; each stage starts from the previous one's
forcings, zero for the sub-windows it adds.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .assimilation import FourDVar
from .minimize import AssimilationResult
from .options import SolverOptions

__all__ = ["stage_lengths", "solve_quasi_static", "STAGE_TOLERANCE"]

STAGE_TOLERANCE = 1e-5


def stage_lengths(n_steps: int, stage_steps: int) -> list[int]:
    """``[stage_steps, 2 stage_steps, ..., n_steps]``: the window length of each stage (``stage_steps >= 1``).

    Examples
    --------
    >>> stage_lengths(20, 8)
    [8, 16, 20]
    """
    if stage_steps < 1:
        raise ValueError(f"stage_steps must be at least 1, got {stage_steps}")
    return sorted({min(s, n_steps) for s in range(stage_steps, n_steps + stage_steps, stage_steps)} | {n_steps})


def solve_quasi_static(model, observations: Sequence, xb, B, pb, P, control, n_steps: int, stage_steps: int,
                       options: SolverOptions | None = None, *, Q=None, model_error_every: int | None = None,
                       **changes) -> AssimilationResult:
    """Minimise ``J`` over ``n_steps`` in quasi-static stages; the last stage's result, with
    ``stages``: one ``(stage length, J, outer loops, success)`` per stage.  ``options`` (with the
    keyword ``changes``): the solver options of every stage; ``Q``, ``model_error_every``: weak
    constraint, as for :class:`fourdvar.FourDVar` (the sub-windows of the whole window)."""
    options = SolverOptions.of(options, **changes)
    every = (model_error_every or n_steps) if Q is not None else None
    x0, p, eta = None, None, None
    stages = []
    for length in stage_lengths(n_steps, stage_steps):
        slots = [slot for slot in observations if slot.step <= length]
        problem = FourDVar(model, slots, xb=xb, B=B, pb=pb, P=P, control=control, n_steps=length, Q=Q, model_error_every=every,
                           **options.problem_qc())
        tolerance = options.tolerance if length == n_steps else max(options.tolerance, STAGE_TOLERANCE)
        result = problem.solve(x0, p, options.replace(tolerance=tolerance), eta=_extended(eta, problem.cost.n_sub))
        x0, p, eta = result.x0, result.p, result.model_error
        stages.append((length, float(result.final.J), len(result.outer), bool(result.success)))
    result.stages = stages
    return result


def _extended(eta: np.ndarray | None, n_sub: int) -> np.ndarray | None:
    """The previous stage's forcings, zero for the sub-windows this stage adds (``None``: none yet, or strong constraint)."""
    if eta is None or not n_sub:
        return None
    return np.concatenate([eta, np.zeros((n_sub - len(eta), eta.shape[1]))])
