"""Quasi-static 4D-Var for long windows (Pires, Vautard and Talagrand 1996).

On a long window the nonlinear ``J`` has secondary minima and Gauss-Newton from the
background can fall into one.  Quasi-static minimisation grows the window instead: stage
``s`` minimises ``J`` with the observations up to step ``L_s`` (``L_1 < L_2 < ... = L``,
``L_s = min(s * stage_steps, L)``), from the analysis of stage ``s - 1``; the background
term is the same in every stage.  Each stage starts close to its minimum, which the previous
stage has tracked as it moved.  A stage before the last only has to bring the guess into
the basin of the next one, so it is solved to ``STAGE_TOLERANCE`` (or the caller's
``tolerance``, if looser); the last stage to the caller's ``tolerance``.
"""

from __future__ import annotations

from typing import Sequence


from .assimilation import FourDVar
from .minimize import DEFAULT_TOLERANCE, AssimilationResult

__all__ = ["stage_lengths", "solve_quasi_static", "STAGE_TOLERANCE"]

STAGE_TOLERANCE = 1e-5


def stage_lengths(n_steps: int, stage_steps: int) -> list[int]:
    """``[stage_steps, 2 stage_steps, ..., n_steps]``: the window length of each stage.

    Raises
    ------
    ValueError
        When ``stage_steps < 1``.

    Examples
    --------
    >>> stage_lengths(20, 8)
    [8, 16, 20]
    """
    if stage_steps < 1:
        raise ValueError(f"stage_steps must be at least 1, got {stage_steps}")
    return sorted({min(s, n_steps) for s in range(stage_steps, n_steps + stage_steps, stage_steps)} | {n_steps})


def solve_quasi_static(model, observations: Sequence, xb, B, pb, P, control, n_steps: int, stage_steps: int,
                       **solve_options) -> AssimilationResult:
    """Minimise ``J`` over ``n_steps`` in quasi-static stages; the last stage's result, with
    ``stages``: one ``(stage length, J, outer loops, success)`` per stage."""
    x0, p = None, None
    stages = []
    lengths = stage_lengths(n_steps, stage_steps)
    tolerance = solve_options.pop("tolerance", DEFAULT_TOLERANCE)
    for length in lengths:
        slots = [slot for slot in observations if slot.step <= length]
        problem = FourDVar(model, slots, xb=xb, B=B, pb=pb, P=P, control=control, n_steps=length)
        stage_tolerance = tolerance if length == n_steps else max(tolerance, STAGE_TOLERANCE)
        result = problem.solve(x0=x0, p=p, tolerance=stage_tolerance, **solve_options)
        x0, p = result.x0, result.p
        stages.append((length, float(result.final.J), len(result.outer), bool(result.success)))
    result.stages = stages
    return result
