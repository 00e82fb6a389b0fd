"""An ensemble of data assimilations (EDA) cycled alongside a control 4D-Var.

In each window ``c``, ``N`` member 4D-Vars and the unperturbed control run with
the same background covariance ``B_c``::

    member m:  y_k^m = y_k + R_k^1/2 eps_k^{c,m}      (observations perturbed, with "observations")
               (x0^m, p^m) = 4D-Var from its own background xb_c^m
               xb_{c+1}^m  = M_{S:0}(p^m, x0^m)        each member cycles its own background
    control:   the same 4D-Var from xb_c with the unperturbed y_k, xb_{c+1} = M_{S:0}(p, x0)

    B_{c+1} = (1 - beta) B_s + beta (X^T X / (N - 1)) o C,     x_m = xb_{c+1}^m - mean_m(xb_{c+1}^m)

(:class:`~fourdvar.ensemble.HybridEnsembleCovariance`).  ``S`` is the ``shift``
between window starts, as in :func:`fourdvar.cycling.cycle`: the window length
``L`` by default (windows end to end); with overlapping windows (``S < L``) the
control and every member start from their own previous analysis at step ``S``,
and the caller gives each window only the observations after the previous
window's end, so each member perturbs and assimilates every observation once.
With "background" among
the perturbations the members start from ``xb_0^m = xb_0 + B_s^1/2 w^m``;
otherwise they start from ``xb_0`` and the first window uses ``B_s`` alone (an
ensemble without spread has no covariance to give).

With ``inflation = rho`` the members' backgrounds are first spread about their mean,
``xb_c^m <- mean_m(xb_c^m) + rho (xb_c^m - mean_m(xb_c^m))`` (multiplicative inflation,
as in an ensemble Kalman filter): members analysed with perturbed observations keep
too little spread, and the inflated backgrounds give both ``B_c`` and the members'
own 4D-Vars the larger spread.

Every draw comes from a generator seeded by ``(seed, purpose, cycle, member)``,
and a member's window is a pure function of its :class:`MemberTask`, so the
members can run anywhere, in any order: ``map_members(function, tasks)`` (the
builtin ``map`` by default; a distributed map from the application) returns the
outcomes in the order of the tasks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from .cost import Control
from .cycling import WindowOutcome, assimilate_window, window_shift
from .ensemble import HybridEnsembleCovariance, ensemble_perturbations
from .interfaces import ObservationSlot

__all__ = ["MemberTask", "EnsembleWindow", "perturb_observations", "assimilate_member", "eda_cycle", "inflate", "next_member_backgrounds", "PERTURBATIONS"]

#: What the members' perturbations may apply to.
PERTURBATIONS = ("observations", "background")

_INITIAL_BACKGROUND, _OBSERVATIONS = 1, 2  # purposes of the random streams


def _rng(seed: int, purpose: int, cycle: int, member: int) -> np.random.Generator:
    return np.random.default_rng([seed, purpose, cycle, member])


def perturb_observations(slots: Sequence, rng: np.random.Generator) -> list[ObservationSlot]:
    """``y_k + R_k^1/2 eps_k``, ``eps_k ~ N(0, I)``, slot by slot in step order.

    Examples
    --------
    >>> from fourdvar.covariances import Diagonal
    >>> from observations import Identity
    >>> slots = [ObservationSlot(4, np.zeros(3), Identity(3), Diagonal(1e-6, size=3))]
    >>> [(slot.step, bool(np.all(np.abs(slot.values) < 1e-4))) for slot in perturb_observations(slots, np.random.default_rng(0))]
    [(4, True)]
    """
    return [ObservationSlot(slot.step, np.asarray(slot.values, dtype=float) + slot.covariance.sample(rng), slot.operator, slot.covariance)
            for slot in sorted(slots, key=lambda slot: slot.step)]


@dataclass(frozen=True)
class MemberTask:
    """Everything one member's (or the control's, ``member == 0``) window needs."""

    member: int
    cycle: int
    model: object
    slots: Sequence
    xb: np.ndarray
    pb: np.ndarray
    B: object
    P: object
    control: object
    n_steps: int
    seed: int
    perturb_observations: bool
    solve_options: dict = field(default_factory=dict)


def assimilate_member(task: MemberTask) -> WindowOutcome:
    """One member's window: its observations perturbed (members ``>= 1``, when asked), then 4D-Var."""
    slots = task.slots
    if task.member and task.perturb_observations:
        slots = perturb_observations(slots, _rng(task.seed, _OBSERVATIONS, task.cycle, task.member))
    return assimilate_window(task.model, slots, task.xb, task.B, task.pb, task.P, task.control, task.n_steps,
                             cycle=task.cycle, **task.solve_options)


@dataclass
class EnsembleWindow:
    """One EDA window: the control's outcome, the members' outcomes and the ``B`` they used."""

    cycle: int
    control: WindowOutcome
    members: list[WindowOutcome]
    B: object

    def _spread(self, states: np.ndarray) -> np.ndarray:
        return np.sqrt(np.mean(np.var(states, axis=0, ddof=1), axis=-1))

    @property
    def background_spread(self) -> np.ndarray:
        """``sqrt(mean_i var_m xb_i^m)`` at each step of the window (members' background forecasts)."""
        return self._spread(np.stack([m.background_trajectory for m in self.members]))

    @property
    def analysis_spread(self) -> np.ndarray:
        """The same for the members' analysis trajectories."""
        return self._spread(np.stack([m.analysis_trajectory for m in self.members]))


def initial_member_backgrounds(xb: np.ndarray, B_static, n_members: int, seed: int, perturb_background: bool) -> np.ndarray:
    """``(N, n)``: ``xb + B_s^1/2 w^m`` with ``perturb_background``, else ``N`` copies of ``xb``."""
    if not perturb_background:
        return np.tile(np.asarray(xb, dtype=float), (n_members, 1))
    return np.stack([xb + B_static.sample(_rng(seed, _INITIAL_BACKGROUND, 0, m)) for m in range(1, n_members + 1)])


def inflate(states: np.ndarray, factor: float) -> np.ndarray:
    """``mean_m(x^m) + rho (x^m - mean_m(x^m))`` for the rows ``x^m`` of ``states`` (unchanged for ``rho = 1``).

    Examples
    --------
    >>> inflate(np.array([[0.0, 1.0], [2.0, 3.0]]), 1.5)
    array([[-0.5,  0.5],
           [ 2.5,  3.5]])
    """
    if factor == 1.0:
        return states
    mean = states.mean(axis=0)
    return mean + factor * (states - mean)


def ensemble_covariance(B_static, member_backgrounds: np.ndarray, weight: float, localization: float):
    """``B_c``: the hybrid of ``B_s`` and the members' backgrounds, or ``B_s`` when they have no spread."""
    X = ensemble_perturbations(member_backgrounds)
    if not np.any(X):
        return B_static
    return HybridEnsembleCovariance(B_static, X, weight, localization)


def next_member_backgrounds(window: EnsembleWindow, shift: int) -> np.ndarray:
    """``(N, n)``: each member's analysis trajectory at step ``shift``, its background for the next window."""
    return np.stack([member.analysis_trajectory[shift] for member in window.members])


def eda_cycle(
    model, windows: Iterable[Sequence], xb: np.ndarray, B_static, pb: np.ndarray, P, *,
    n_members: int, weight: float, localization: float, perturb: Sequence[str] = PERTURBATIONS,
    seed: int = 0, control="state", n_steps: int = 1, start_cycle: int = 0, inflation: float = 1.0,
    member_backgrounds: np.ndarray | None = None, shift: int | None = None,
    map_members: Callable[[Callable, list], Iterable] = map, **solve_options,
) -> Iterator[EnsembleWindow]:
    """Yield one :class:`EnsembleWindow` per window of ``windows`` (the control and ``n_members`` members).

    ``member_backgrounds`` ``(N, n)`` continues a cycle (default: the initial ones,
    see :func:`initial_member_backgrounds`), before their ``inflation`` (``rho >= 1``,
    applied at the start of every window, see :func:`inflate`).  The parameters are not cycled by the
    members: each uses ``pb`` (the control's analysed ``p`` when it estimates them).
    ``shift``: steps from one window's start to the next, ``1 <= shift <= n_steps`` (default
    ``n_steps``); the next backgrounds are the analysis trajectories at step ``shift``.
    """
    perturb = tuple(perturb)
    unknown = set(perturb) - set(PERTURBATIONS)
    if unknown:
        raise ValueError(f"ensemble perturbations must be among {list(PERTURBATIONS)}, got {sorted(unknown)}")
    if n_members < 2:
        raise ValueError(f"an ensemble needs at least 2 members, got {n_members}")
    if not (np.ndim(inflation) == 0 and inflation >= 1.0):
        raise ValueError(f"the ensemble's inflation must be a number >= 1, got {inflation!r}")
    shift = window_shift(shift, n_steps)
    xb = np.asarray(xb, dtype=float)
    pb = np.asarray(pb, dtype=float)
    if member_backgrounds is None:
        member_backgrounds = initial_member_backgrounds(xb, B_static, n_members, seed, "background" in perturb)
    member_backgrounds = np.asarray(member_backgrounds, dtype=float)
    if member_backgrounds.shape != (n_members, xb.size):
        raise ValueError(f"member_backgrounds must have shape ({n_members}, {xb.size}), got {member_backgrounds.shape}")
    for c, slots in enumerate(windows, start=start_cycle):
        member_backgrounds = inflate(member_backgrounds, inflation)
        B = ensemble_covariance(B_static, member_backgrounds, weight, localization)
        slots = list(slots)
        tasks = [
            MemberTask(m, c, model, slots, xb if m == 0 else member_backgrounds[m - 1], pb, B, P, control, n_steps,
                       seed, "observations" in perturb, solve_options)
            for m in range(n_members + 1)
        ]
        outcomes = list(map_members(assimilate_member, tasks))
        window = EnsembleWindow(c, outcomes[0], outcomes[1:], B)
        yield window
        xb = window.control.analysis_trajectory[shift].copy()
        member_backgrounds = next_member_backgrounds(window, shift)
        pb = window.control.p.copy() if Control.parse(control).params else pb
