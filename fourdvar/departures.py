"""Observation-space diagnostics of one window, as pure functions of the cost and two trajectories.

With ``d_b = y - H(x^b)`` (observation minus background forecast) and
``d_a = y - H(x^a)`` (minus analysis), over all ``m`` observations of the window::

    chi2     = 2 J_min / m                       ~ 1 when B, R and the model are consistent
    sigma_o^2 ~ d_a . d_b / m                     Desroziers et al. (2005): E[d_a d_b^T] = R
    sigma_b^2 ~ (d_b - d_a) . d_b / m             E[(H x^a - H x^b) d_b^T] = H B H^T

(in units of the observations, whitened by nothing: meant for one observation type with a
common error std).  The trajectories are those of the background and of the analysis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["WindowDepartures", "window_departures"]


@dataclass(frozen=True)
class WindowDepartures:
    """The observation-space statistics of one window (the module docstring has the formulas): ``n_obs``
    ``m``, ``chi2``, the mean and rms of ``d_b`` (``omb_*``) and of ``d_a`` (``oma_*``), and Desroziers'
    ``obs_error_std`` ``sqrt(d_a . d_b / m)`` and ``background_error_std`` ``sqrt((d_b - d_a) . d_b / m)``."""

    n_obs: int
    chi2: float
    omb_mean: float
    omb_rms: float
    oma_mean: float
    oma_rms: float
    obs_error_std: float
    background_error_std: float


def window_departures(cost, background_trajectory: np.ndarray, analysis_trajectory: np.ndarray, J_min: float) -> WindowDepartures:
    """The statistics of the module docstring for the observation slots of ``cost`` and the background
    and analysis forecasts ``(L + 1, n)`` over the window; NaN (and ``n_obs = 0``) without observations.

    Examples
    --------
    One observation of a scalar state, ``y = 1``, background ``0``, analysis ``0.5``:

    >>> from types import SimpleNamespace
    >>> from fourdvar.covariances import Diagonal
    >>> from fourdvar.interfaces import ObservationSlot
    >>> from observations import Identity
    >>> slot = ObservationSlot(0, np.array([1.0]), Identity(1), Diagonal(1.0, size=1))
    >>> d = window_departures(SimpleNamespace(slots=[slot]), np.zeros((1, 1)), np.full((1, 1), 0.5), J_min=0.25)
    >>> d.chi2, d.omb_rms, d.oma_rms, d.obs_error_std
    (0.5, 1.0, 0.5, 0.7071067811865476)
    """
    if not cost.slots:
        return WindowDepartures(0, *([np.nan] * 7))
    d_b, d_a = (np.concatenate([slot.values - slot.operator.apply(x[slot.step]) for slot in cost.slots])
                for x in (background_trajectory, analysis_trajectory))
    m = d_b.size
    return WindowDepartures(
        n_obs=m, chi2=2.0 * float(J_min) / m,
        omb_mean=float(d_b.mean()), omb_rms=float(np.sqrt(np.mean(d_b**2))),
        oma_mean=float(d_a.mean()), oma_rms=float(np.sqrt(np.mean(d_a**2))),
        obs_error_std=float(np.sqrt(max(d_a @ d_b / m, 0.0))),
        background_error_std=float(np.sqrt(max((d_b - d_a) @ d_b / m, 0.0))),
    )
