"""Quality control of observations: screening, the background check and variational QC.

Screening and the background check run once per window, before the minimisation, on the
background trajectory ``x^b_k = M_{k:0}(pb, xb)``.  Observation ``i`` of slot ``k`` is rejected

* ``"non-finite"``: when its value is NaN or infinite;
* ``"background"``: when its innovation ``d_i = y_i - H_k(x^b_k)_i`` exceeds ``k_b`` times its
  expected std, ``|d_i| > k_b sqrt((H_k B_k H_k^T)_ii + (R_k)_ii)``, ``B_k = M_k B M_k^T`` the
  background error covariance carried to step ``k`` by the TL model (``M_0 = I``; with the
  parameters in the control, ``+ M_k^p P M_k^p^T`` for their error)::

      (H_k B_k H_k^T)_ii = sum_j (H_k M_k B^1/2 e_j)_i^2

  one blocked TL sweep of the columns of ``B^1/2`` (of ``B^1/2 xi_j`` for
  :data:`BACKGROUND_SAMPLES` random ``xi_j``, an unbiased estimate, when the control is larger
  than that), ``H`` and ``M`` linearised on the background trajectory.  The linear growth falls
  short of the real one late in a long nonlinear window, so the default ``k_b`` is large: the
  check is for values no model state explains.  (A background forecast that diverges leaves
  the check out: the solve reports the divergence.)

After a solve that converged, the analysis check rejects (``"analysis"``) an observation whose
normalised analysis departure ``|R^-1/2 (y - H(x^a))|`` exceeds ``k_a``, and the solve continues
from the analysis without it, until none is rejected: for an observation of the error ``R``
assumes that departure has a variance below 1, so ``k_a = 5`` rejects none by chance.

The slots that remain hold the observations kept (:class:`Selected` operators, ``R``
restricted to them); a slot left empty is dropped.

Variational QC (:class:`HuberNorm`) replaces ``Jo`` by the Huber norm of the normalised
departures ``t = R^-1/2 (H(x) - y)``::

    Jo = sum_i rho(t_i),   rho(t) = t^2 / 2 (|t| <= c),   c |t| - c^2 / 2 (|t| > c)

quadratic inside ``+-c``, linear outside, so a gross error pulls with a bounded force.  Its
gradient ``H^T R^-T/2 psi(t)``, ``psi(t) = w(t) t`` with ``w(t) = min(1, c / |t|)``, is that of the
quadratic ``Jo`` with the reweighted ``R_w^-1 = R^-T/2 W R^-1/2``; each outer loop linearises
with the weights of its trajectory (the Gauss-Newton Hessian of the Huber norm as in ECMWF's
VarQC), the constant ``sum rho(t) - sum w t^2 / 2`` added so that ``Jq(0)`` is the Huber ``J``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from .cost import CostTerms, FourDVarCost, IncrementalCost
from .covariances import CovarianceBase, Dense, Diagonal, dense_matrix
from .interfaces import ObservationSlot, declared
from .posterior import variance
from .window import DivergenceError, tl_block

__all__ = ["QualityControl", "QCRecord", "Selected", "HuberNorm", "screen", "analysis_check", "with_slots", "DEFAULT_BACKGROUND_CHECK",
           "DEFAULT_ANALYSIS_CHECK", "REASONS"]

REASONS = ("non-finite", "background", "analysis")

DEFAULT_BACKGROUND_CHECK = 20.0  # k_b: reject an innovation beyond this many expected std
DEFAULT_ANALYSIS_CHECK = 5.0  # k_a: reject an analysis departure beyond this many observation-error std
BACKGROUND_SAMPLES = 64  # random columns of the background error's square root, for a control larger than this


@dataclass(frozen=True)
class QualityControl:
    """What quality control a window gets: ``background_check`` ``k_b`` (``None``: off),
    ``huber`` the VarQC threshold ``c`` on normalised departures (``None``: quadratic ``Jo``) and
    ``analysis_check`` ``k_a``: after the solve, observations whose normalised analysis departure
    exceeds it are rejected and the solve continues without them (``None``: off).
    Non-finite values are always rejected."""

    background_check: float | None = DEFAULT_BACKGROUND_CHECK
    huber: float | None = None
    analysis_check: float | None = DEFAULT_ANALYSIS_CHECK

    def __post_init__(self):
        for name, value in dataclasses.asdict(self).items():
            if value is not None and not (np.isfinite(value) and value > 0):
                raise ValueError(f"quality control: {name} must be a positive number or None, got {value!r}")


@dataclass
class QCRecord:
    """The observations quality control took out of one window, and what VarQC down-weighted.

    Rejections, one entry each: ``step``, ``index`` (within its slot), ``value``, ``departure``
    (the innovation over its expected std, or the analysis departure over the observation's
    std; NaN for a non-finite value) and ``reason`` (one of :data:`REASONS`).  ``weights``: with VarQC, ``w = min(1, c / |t|)`` of
    each kept observation at the analysis, slot by slot.
    """

    n_obs: int = 0
    step: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    index: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    value: np.ndarray = field(default_factory=lambda: np.zeros(0))
    departure: np.ndarray = field(default_factory=lambda: np.zeros(0))
    reason: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype="<U10"))
    weights: list = field(default_factory=list)

    @property
    def n_rejected(self) -> int:
        return int(self.reason.size)

    @property
    def n_used(self) -> int:
        return self.n_obs - self.n_rejected

    @property
    def n_downweighted(self) -> int:
        """Observations VarQC gave a weight below 1 at the analysis (in the linear part of the norm)."""
        return int(sum(np.sum(w < 1.0) for w in self.weights))

    def counts(self) -> dict:
        """``{reason: number rejected}``, plus ``"varqc"``: the number down-weighted."""
        counts = {reason: int(np.sum(self.reason == reason)) for reason in REASONS}
        counts["varqc"] = self.n_downweighted
        return counts

    def summary(self) -> str:
        counts = self.counts()
        return (f"QC: {self.n_rejected} of {self.n_obs} observations rejected ({counts['non-finite']} non-finite, "
                f"{counts['background']} by the background check, {counts['analysis']} by the analysis check), "
                f"{counts['varqc']} down-weighted by VarQC")

    def merged(self, later: "QCRecord") -> "QCRecord":
        """This record followed by the rejections of a later check of the observations it kept."""
        return QCRecord(self.n_obs, *map(np.concatenate, zip(self._rejections(), later._rejections())), weights=later.weights)

    def _rejections(self) -> tuple[np.ndarray, ...]:
        return self.step, self.index, self.value, self.departure, self.reason


class _SelectedLinearization:
    """A linearised operator's rows ``keep``: ``dy = (H dx)[keep]``, ``ax = H^T (scatter of ay)``."""

    def __init__(self, linearization, keep: np.ndarray, n_full: int):
        self.linearization, self.keep, self.n_full = linearization, keep, n_full
        self.output = linearization.output[keep]

    def tl(self, dx: np.ndarray) -> np.ndarray:
        return self.linearization.tl(dx)[self.keep]

    def ad(self, ay: np.ndarray) -> np.ndarray:
        full = np.zeros(self.n_full)
        full[self.keep] = ay
        return self.linearization.ad(full)


class Selected:
    """The observations ``keep`` (indices) of an operator: ``y = H(x)[keep]``, with its TL and AD."""

    def __init__(self, operator, keep: np.ndarray):
        self.operator, self.keep = operator, np.asarray(keep, dtype=int)
        self.n_state, self.n_obs = getattr(operator, "n_state", None), int(self.keep.size)

    def apply(self, x: np.ndarray) -> np.ndarray:
        return self.operator.apply(x)[self.keep]

    def linearize(self, x: np.ndarray) -> _SelectedLinearization:
        return _SelectedLinearization(self.operator.linearize(x), self.keep, self.operator.n_obs)

    def apply_tl(self, x: np.ndarray, dx: np.ndarray) -> np.ndarray:
        return self.linearize(x).tl(dx)

    def apply_ad(self, x: np.ndarray, ay: np.ndarray) -> np.ndarray:
        return self.linearize(x).ad(ay)

    def __repr__(self) -> str:
        return f"Selected({self.operator!r}, {self.n_obs} of {self.operator.n_obs})"


def _restricted(covariance, keep: np.ndarray):
    """``R`` restricted to the observations ``keep``."""
    if isinstance(covariance, Diagonal):
        return Diagonal(covariance.std[keep])
    return Dense(dense_matrix(covariance)[np.ix_(keep, keep)])


def _background_columns(cost: FourDVarCost, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(dX0, dP)``: the columns of ``diag(B, P)^1/2`` (random draws of it when the control is
    larger than :data:`BACKGROUND_SAMPLES`, scaled so that ``dX dX^T`` estimates ``B``)."""
    n_x = declared(cost.B, "control_size")
    n_p = cost.model.n_params if cost.P is not None else 0
    n = n_x + n_p
    xi = np.eye(n) if n <= BACKGROUND_SAMPLES else rng.standard_normal((n, BACKGROUND_SAMPLES)) / np.sqrt(BACKGROUND_SAMPLES)
    dX0 = np.column_stack([cost.B.sqrt(column) for column in xi[:n_x].T])
    dP = np.column_stack([cost.P.sqrt(column) for column in xi[n_x:].T]) if n_p else np.zeros((cost.model.n_params, xi.shape[1]))
    return dX0, dP


def background_departures(cost: FourDVarCost, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(y_k - H_k(x^b_k), diag(H_k M_k B M_k^T H_k^T))`` for each slot (module docstring), the
    parameters' part added when they are in the control."""
    window = cost.window(cost.xb, cost.pb, context="background check")
    dX = tl_block(window, *_background_columns(cost, np.random.default_rng(seed)))
    departures = []
    for slot in cost.slots:
        H = slot.operator.linearize(window.states[slot.step])
        HdX = np.column_stack([H.tl(column) for column in dX[slot.step].T])
        departures.append((np.asarray(slot.values, dtype=float) - H.output, np.sum(HdX**2, axis=1)))
    return departures


def screen(cost: FourDVarCost, qc: QualityControl | None) -> tuple[list, QCRecord]:
    """``(slots kept, record)``: the window's observations less the non-finite ones and those
    the background check rejects (module docstring)."""
    qc = QualityControl(background_check=None) if qc is None else qc
    check = qc.background_check is not None and cost.B is not None and len(cost.slots) > 0
    try:
        innovations = background_departures(cost) if check else None
    except DivergenceError:  # no background to check against: the solve will say where it diverges
        check = False
    verdicts = []
    for position, slot in enumerate(cost.slots):
        values = np.asarray(slot.values, dtype=float)
        finite = np.isfinite(values)
        reason = np.where(finite, "", "non-finite").astype("<U10")
        departure = np.full(values.size, np.nan)
        if check:
            d, sigma_b2 = innovations[position]
            departure[finite] = d[finite] / np.sqrt(sigma_b2 + variance(slot.covariance))[finite]
            reason[finite & ~(np.abs(np.where(finite, departure, 0.0)) <= qc.background_check)] = "background"
        verdicts.append((reason, departure))
    return _select(cost.slots, verdicts)


def analysis_check(cost: FourDVarCost, x0, p, eta, k: float) -> tuple[list, QCRecord]:
    """``(slots kept, record)``: the observations whose analysis departure ``|R^-1/2 (y - H(x^a))|``
    exceeds ``k`` rejected (reason ``"analysis"``).  For an observation of the assumed error
    that departure has a variance below 1 (``R - H A H^T``), so ``k`` of 5 rejects none by chance."""
    departures = normalised_departures(cost, x0, p, eta)
    verdicts = [(np.where(np.abs(t) > k, "analysis", "").astype("<U10"), -t) for t in departures]
    return _select(cost.slots, verdicts)


def _select(slots, verdicts) -> tuple[list, QCRecord]:
    """The slots less the observations whose verdict names a reason, and the record of those."""
    kept, rejected, n_obs = [], [], 0
    for slot, (reason, departure) in zip(slots, verdicts):
        values = np.asarray(slot.values, dtype=float)
        n_obs += values.size
        operator, covariance = slot.operator, slot.covariance
        origin, base = (operator.keep, operator.operator) if isinstance(operator, Selected) else (np.arange(values.size), operator)
        index = np.flatnonzero(reason != "")
        rejected.append((np.full(index.size, slot.step), origin[index], values[index], departure[index], reason[index]))
        keep = np.flatnonzero(reason == "")
        if keep.size == values.size:
            kept.append(slot)
        elif keep.size:
            kept.append(ObservationSlot(slot.step, values[keep], Selected(base, origin[keep]), _restricted(covariance, keep)))
    columns = [np.concatenate(parts) for parts in zip(*rejected)] if rejected else [np.zeros(0)] * 5
    return kept, QCRecord(n_obs=n_obs, step=columns[0].astype(int), index=columns[1].astype(int), value=columns[2].astype(float),
                          departure=columns[3].astype(float), reason=columns[4].astype("<U10"))


def normalised_departures(cost: FourDVarCost, x0, p, eta=None) -> list[np.ndarray]:
    """``t_k = R_k^-1/2 (H_k(x_k) - y_k)`` for each slot (``R^-1/2 e = R^T/2 R^-1 e``)."""
    trajectory = cost.trajectory(x0, p, eta, n_steps=cost.last_observed_step, context="departures")
    return [slot.covariance.sqrt_t(slot.covariance.solve(slot.operator.apply(trajectory[slot.step]) - slot.values))
            for slot in cost.slots]


class _Reweighted(CovarianceBase):
    """``R_w = R^1/2 W^-1 R^T/2``, ``W = diag(w)``, ``w > 0``: ``R_w^-1 = R^-T/2 W R^-1/2``."""

    def __init__(self, R, w: np.ndarray):
        self.R, self.w, self.size = R, w, R.size

    def solve(self, v):
        return self.R.solve(self.R.sqrt(self.w * self.R.sqrt_t(self.R.solve(v))))  # R^-T/2 = R^-1 R^1/2, R^-1/2 = R^T/2 R^-1

    def sqrt(self, v):
        return self.R.sqrt(v / np.sqrt(self.w))

    def sqrt_t(self, v):
        return self.R.sqrt_t(v) / np.sqrt(self.w)

    def apply(self, v):
        return self.sqrt(self.sqrt_t(v))


def _reweighted(R, w: np.ndarray):
    return Diagonal(R.std / np.sqrt(w)) if isinstance(R, Diagonal) else _Reweighted(R, w)


def huber(t: np.ndarray, c: float) -> tuple[np.ndarray, np.ndarray]:
    """``(rho(t), w(t))``: the Huber norm of each normalised departure and its weight ``min(1, c / |t|)``."""
    a = np.abs(t)
    inside = a <= c
    rho = np.where(inside, 0.5 * t**2, c * a - 0.5 * c**2)
    w = np.where(inside, 1.0, c / np.where(inside, 1.0, a))
    return rho, w


class HuberNorm:
    """The nonlinear cost with the Huber ``Jo`` (module docstring), and its Gauss-Newton linearisations."""

    def __init__(self, cost: FourDVarCost, c: float):
        self.cost, self.c = cost, float(c)

    def weights(self, x0, p, eta=None) -> tuple[list[np.ndarray], float]:
        """``(w per slot, Huber Jo)`` at ``(x0, p, eta)``."""
        rho_w = [huber(t, self.c) for t in normalised_departures(self.cost, x0, p, eta)]
        return [w for _, w in rho_w], float(sum(np.sum(rho) for rho, _ in rho_w))

    def evaluate(self, x0, p, eta=None) -> CostTerms:
        """``J`` with the Huber ``Jo``."""
        Jb, Jp, _, _ = self.cost.background_terms(x0, p)
        Jm, _ = self.cost.model_error_terms(eta)
        _, Jo = self.weights(x0, p, eta)
        return CostTerms(Jb, Jp, Jo, Jm)

    def linearise(self, x0, p, eta=None, **options) -> tuple[IncrementalCost, tuple]:
        """``(Jq, (terms, gradient) at 0)``: ``Jq`` with the reweighted ``R`` at ``(x0, p, eta)``, ``terms.Jo`` the Huber one."""
        weights, Jo = self.weights(x0, p, eta)
        jq, (terms, gradient) = self.reweighted(weights).linearise(x0, p, eta, **options)
        return jq, (CostTerms(terms.Jb, terms.Jp, Jo, terms.Jm), gradient)

    def reweighted(self, weights: list[np.ndarray]) -> FourDVarCost:
        """The cost with each ``R_k`` reweighted by ``w_k``."""
        return with_slots(self.cost, [ObservationSlot(slot.step, slot.values, slot.operator, _reweighted(slot.covariance, w))
                                      for slot, w in zip(self.cost.slots, weights)])


def with_slots(cost: FourDVarCost, slots) -> FourDVarCost:
    """``cost`` with these observation slots, all else (window, background, covariances) the same."""
    return FourDVarCost(cost.model, slots, cost.xb, B=cost.B, pb=cost.pb, P=cost.P, n_steps=cost.n_steps, Q=cost.Q,
                        model_error_every=cost.every)
