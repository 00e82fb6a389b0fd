"""Forecast skill: how long a model's forecasts stay close to the truth.

For forecasts ``x^f_k`` started at ``m`` times and the truth ``x^t_k`` over the
same leads ``k``::

    e(k) = rms_i(x^f_k - x^t_k) / sigma_clim           normalised error at lead k
    T    = dt * min{k : e(k) > threshold}               valid time of one forecast
    skill = mean over the m starts of T / lyapunov_time

``sigma_clim`` is the truth's climatological standard deviation (over time and
grid).  A forecast that never exceeds the threshold counts with its full length,
so the skill is a lower bound when forecasts are too short.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..window import DivergenceError, forecast

__all__ = ["ForecastSkill", "forecast_skill"]


@dataclass
class ForecastSkill:
    """Mean valid time in Lyapunov times, and the mean normalised error per lead."""

    lyapunov_times: float
    valid_times: np.ndarray  # per start, in Lyapunov times
    error_curve: np.ndarray  # mean e(k), k = 0 .. n_steps
    lead_lyapunov: np.ndarray  # the leads of error_curve, in Lyapunov times


def forecast_skill(model, starts, params, truth_segments, dt: float, sigma_clim: float, lyapunov_time: float, threshold: float = 0.5) -> ForecastSkill:
    """Skill of ``model`` from the initial states ``starts[i]`` (parameters ``params[i]``)
    against ``truth_segments[i]`` (shape ``(n_steps + 1, n_state)``, from the same time)."""
    n_steps = truth_segments[0].shape[0] - 1
    errors = np.empty((len(starts), n_steps + 1))
    for i, (x0, p, truth) in enumerate(zip(starts, params, truth_segments)):
        try:
            trajectory = forecast(model, x0, p, n_steps)
            errors[i] = np.sqrt(np.mean((trajectory - truth) ** 2, axis=1)) / sigma_clim
        except DivergenceError:  # a forecast that blows up is invalid from where it stops being finite
            errors[i] = np.inf
            errors[i, 0] = np.sqrt(np.mean((x0 - truth[0]) ** 2)) / sigma_clim
    exceeded = errors > threshold
    first = np.where(exceeded.any(axis=1), exceeded.argmax(axis=1), n_steps)
    valid = first * dt / lyapunov_time
    finite = np.where(np.isfinite(errors), errors, np.nan)
    with np.errstate(all="ignore"):
        curve = np.nanmean(finite, axis=0)
    return ForecastSkill(float(valid.mean()), valid, curve, np.arange(n_steps + 1) * dt / lyapunov_time)
