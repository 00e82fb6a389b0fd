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

from ..interfaces import declared
from ..window import DivergenceError, forecast
from .plan import resolved_states

CHI2_FAR_ABOVE_1 = 4.0  # a window whose 2 J / n_obs exceeds this is reported loudly

__all__ = ["ForecastSkill", "forecast_skill", "comparison_variables", "headlines", "diagnostics", "correction_variables", "independent_truth"]


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


# --- the diagnostics of a run: functions of its plan and result datasets ------------------------------


def comparison_variables(name: str, result) -> dict:
    """The comparison run ``name``'s RMSE and cost per cycle, as variables of the main result."""
    return {
        f"{key}_{name}": (("cycle",), result[key].values, {**result[key].attrs, "long_name": f"{result[key].attrs['long_name']} ({name})"})
        for key in ("rmse_analysis", "rmse_background", "J_final", "rmse_filter", "rmse_analysis_end", "rmse_analysis_window") if key in result
    }


def headlines(plan, dataset, comparisons: dict) -> dict:
    """The headline numbers of a run (see :func:`diagnostics`)."""
    return diagnostics(plan, dataset, comparisons)[0]


def diagnostics(plan, dataset, comparisons: dict) -> tuple[dict, dict]:
    """The headline numbers of a run and the forecast-error curves behind its skill.

    Headlines: analysis RMSE over the last half of the cycles, the filter RMSE (window
    end) after ``diagnostics.burn_in_cycles``, the forecast skill, rejected windows,
    the same for each comparison run and the fraction of the
    baseline-to-reference gap closed.  Curves (with ``forecast_steps``): the forecast
    RMSE per lead, from truth states and from analyses, of this run's model and of
    each comparison's, as result variables ``forecast_rmse_from_{truth,analyses}[_name]``
    on a ``lead`` dimension.  ``comparisons``: name -> (plan, dataset).
    """
    half = slice(plan.n_cycles // 2, None)
    burn_in = slice(plan.experiment.diagnostics.burn_in_cycles, None)
    headline, curves = {}, {}
    if "rmse_analysis" in dataset:
        headline["rmse_analysis_last_half"] = float(dataset["rmse_analysis"].values[half].mean())
        headline["rmse_filter_after_burn_in"] = float(dataset["rmse_filter"].values[burn_in].mean())
    if "chi2" in dataset:
        headline["chi2_mean"] = float(np.nanmean(dataset["chi2"].values))
        for key in ("desroziers_obs_std", "desroziers_background_std"):
            headline[f"{key}_mean"] = float(np.sqrt(np.nanmean(dataset[key].values ** 2)))
    weak = plan.Q0 is not None or plan.problem.truth.model_error_std > 0  # where the window end matters most
    if weak:
        headline.update(_end_and_window_rmse(dataset, half, ""))
    if plan.forecast_steps:
        headline.update(skill_headlines(plan, plan, dataset, "", curves))
    if "J_rejected" in dataset:
        headline["windows_rejected"] = int(np.isfinite(dataset["J_rejected"].values).sum())
    if "qc_reason" in dataset:
        headline["observations_rejected"] = int(dataset.sizes.get("rejection", 0))
    if "chi2" in dataset:
        headline[f"windows_chi2_above_{CHI2_FAR_ABOVE_1:g}"] = int(np.sum(dataset["chi2"].values > CHI2_FAR_ABOVE_1))
    for name, (other, result) in comparisons.items():
        if "rmse_analysis" in result:
            headline[f"rmse_analysis_last_half_{name}"] = float(result["rmse_analysis"].values[half].mean())
            headline[f"rmse_filter_after_burn_in_{name}"] = float(result["rmse_filter"].values[burn_in].mean())
        if weak:
            headline.update(_end_and_window_rmse(result, half, f"_{name}"))
        if plan.forecast_steps:
            headline.update(skill_headlines(plan, other, result, f"_{name}", curves))
    gap = plan.experiment.gap
    if gap.baseline is not None and "rmse_analysis_last_half" in headline:
        baseline = headline[f"rmse_analysis_last_half_{gap.baseline}"]
        reference = headline[f"rmse_analysis_last_half_{gap.reference}"]
        headline["gap_closed"] = (baseline - headline["rmse_analysis_last_half"]) / (baseline - reference)
    return headline, curves


def _end_and_window_rmse(dataset, half: slice, suffix: str) -> dict:
    """The analysis RMSE at the window end and over the window, averaged over the last half of the cycles."""
    return {f"{key}_last_half{suffix}": float(dataset[key].values[half].mean())
            for key in ("rmse_analysis_end", "rmse_analysis_window") if key in dataset}


def skill_headlines(plan, run_plan, dataset, suffix: str, curves: dict | None = None) -> dict:
    """Skill in Lyapunov times of ``run_plan``'s model, from truth states (final
    parameters) and from the analyses of the last half of the cycles.  ``curves``, if
    given, receives the mean forecast RMSE per lead, ``sigma_clim * e(k)``, of both."""
    diagnostics = plan.experiment.diagnostics
    truth, n = plan.truth, plan.forecast_steps
    sigma = float(truth["trajectory"][: plan.span + 1].std())
    options = dict(dt=run_plan.model.dt, sigma_clim=sigma, lyapunov_time=diagnostics.lyapunov_time, threshold=diagnostics.skill_threshold)
    final_params = dataset["params_analysis"].values[-1] if "params_analysis" in dataset else run_plan.pb0
    independent = independent_truth(plan)
    starts = range(0, diagnostics.forecast_starts * diagnostics.forecast_spacing, diagnostics.forecast_spacing)
    from_truth = forecast_skill(
        run_plan.model, [independent[s] for s in starts], [final_params] * len(starts),
        [independent[s : s + n + 1] for s in starts], **options,
    )
    cycles = range(plan.n_cycles // 2, plan.n_cycles)
    params = [dataset["params_analysis"].values[c] if "params_analysis" in dataset else run_plan.pb0 for c in cycles]
    from_analyses = forecast_skill(
        run_plan.model, [dataset["analysis"].values[c, 0] for c in cycles], params,
        [truth["trajectory"][plan.window_start(c) : plan.window_start(c) + n + 1] for c in cycles], **options,
    )
    if curves is not None:
        units = plan.units
        label = f" ({suffix[1:]})" if suffix else ""
        curves["lead"] = (("lead",), np.arange(n + 1), {"long_name": "forecast lead", "units": "model steps"})
        for source, skill, where in (("truth", from_truth, "truth states after the experiment, final parameters"),
                                     ("analyses", from_analyses, "the analyses of the last half of the cycles")):
            curves[f"forecast_rmse_from_{source}{suffix}"] = (("lead",), sigma * skill.error_curve, {
                "long_name": f"mean forecast RMSE against the truth per lead, from {where}{label}", "units": units,
                "lyapunov_time": diagnostics.lyapunov_time, "forecasts": len(skill.valid_times)})
    return {f"skill_from_truth{suffix}": from_truth.lyapunov_times, f"skill_from_analyses{suffix}": from_analyses.lyapunov_times}


def independent_truth(plan) -> np.ndarray:
    """A stretch of truth after everything the experiment saw, for skill from truth states
    (computed once per plan)."""
    cached = getattr(plan, "_independent_truth", None)
    if cached is not None:
        return cached
    diagnostics = plan.experiment.diagnostics
    length = diagnostics.forecast_starts * diagnostics.forecast_spacing + plan.forecast_steps
    truth, substeps = plan.truth, plan.problem.truth.substeps
    full = forecast(truth["model"], truth["last_full_state"], truth["model_params"], length * substeps)[::substeps]
    plan._independent_truth = resolved_states(truth, full)
    return plan._independent_truth


#: states of the independent truth on which a learned correction is compared with the missing term
CORRECTION_SAMPLES = 50
CORRECTION_SPACING = 4  # model steps between them


def correction_variables(plan, dataset) -> dict:
    """A learned correction against the tendency the model misses, on truth states the
    experiment never saw (empty unless the model has a ``correction`` with a ``tendency``
    and the truth provides the missing term).

    The missing term at a truth state is the truth model's ``unresolved_tendency`` when it
    has one, else ``f_truth(x) - f_physics(x)`` (the same state, both tendencies known).
    Stored on ``(correction_sample, x)``: the states, the missing term, and the
    correction's tendency with the first background's and the last analysis's weights.
    """
    model, truth = plan.model, plan.truth
    correction, physics = declared(model, "correction"), declared(model, "physics")
    if truth is None or correction is None or declared(correction, "tendency") is None:
        return {}
    substeps, stride = plan.problem.truth.substeps, CORRECTION_SPACING
    full = forecast(truth["model"], truth["last_full_state"], truth["model_params"], CORRECTION_SAMPLES * stride * substeps)
    full_states = full[:: stride * substeps][1:]
    states = resolved_states(truth, full_states)
    final = dataset["params_analysis"].values[-1] if "params_analysis" in dataset else plan.pb0
    physics_params, weights = model.split(final)
    unresolved = declared(truth["model"], "unresolved_tendency")
    if unresolved is not None:
        missing = np.array([unresolved(x) for x in full_states])
    elif declared(truth["model"], "tendency") is not None and physics is not None and declared(physics, "tendency") is not None \
            and full_states.shape[1] == model.n_state:
        missing = np.array([truth["model"].tendency.evaluate(x, truth["model_params"]) - physics.tendency.evaluate(x, physics_params)
                            for x in full_states])
    else:
        return {}
    _, first_weights = model.split(plan.pb0)
    learned = np.array([correction.tendency.evaluate(x, weights) for x in states])
    initial = np.array([correction.tendency.evaluate(x, first_weights) for x in states])
    units = plan.units
    rate = f"{units} per model time unit" if units != "1" else "1"
    dims = ("correction_sample", "x")
    return {
        "correction_state": (dims, states, {"long_name": f"truth states after the experiment, {stride} steps apart, where the correction is compared", "units": units}),
        "correction_truth": (dims, missing, {"long_name": "tendency the model misses (the truth's unresolved tendency)", "units": rate}),
        "correction_learned": (dims, learned, {"long_name": "tendency of the learned correction, weights of the last analysis", "units": rate}),
        "correction_initial": (dims, initial, {"long_name": "tendency of the correction, weights of the first background", "units": rate}),
    }
