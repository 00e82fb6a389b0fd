"""The ``ensemble:`` block of a cycled run: an ensemble of data assimilations beside the control.

:func:`plan_ensemble` is the member strategy of the plan's cycling loop
(:class:`fourdvar.ensemble.Ensemble`; the members run through the run's ``map_members``,
e.g. on the Dask cluster); the control's outcome is recorded as any run's, and
:func:`member_row` adds the members' arrays to its row (so a checkpoint keeps
them, and the checkpoint's state keeps each member's next background, its analysis
forecast to the next window's start: the window end, or step ``window.shift`` of
overlapping windows).
:func:`add_member_variables` puts into the result file:

    member_background          (cycle, member, x)   each member's background at the window start
                                                     (its previous analysis forecast to step ``window.shift``,
                                                     after ``ensemble.inflation``)
    member_analysis            (cycle, member, x)   each member's analysis at the window start
    member_params_background   (cycle, member, param)  each member's background parameters (parameters in the control)
    member_params_analysis     (cycle, member, param)  each member's analysed parameters (parameters in the control)
    member_forecast_end        (cycle, member, x)   each member's analysis forecast to the window end
                                                     (its next background, before inflation, when the
                                                     windows are end to end)
    spread_background          (cycle)   sqrt(mean_i var_m) of the members' backgrounds at the window start
    spread_analysis            (cycle)   the same for their analyses
    rmse_ensemble_mean_background (cycle)  RMSE of the members' mean background at the window start

and the headline numbers ``spread_background_last_half``,
``rmse_ensemble_mean_background_last_half`` and their ratio ``spread_skill``
(1 for an ensemble whose spread matches the error of its mean).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from ..ensemble import Ensemble

__all__ = ["plan_ensemble", "member_row", "add_member_variables"]

_ENSEMBLE_SEED_PURPOSE = 11  # the EDA's random streams, apart from the plan's others


def _spread(states: np.ndarray) -> np.ndarray:
    """``sqrt(mean_i var_m)`` over the member axis (-2) of ``states``."""
    return np.sqrt(np.mean(np.var(states, axis=-2, ddof=1), axis=-1))


def member_row(window, params: bool = False) -> dict:
    """The members' arrays of one :class:`fourdvar.cycling.CycledWindow`, for the control's row (none without
    members); with ``params`` (the parameters in the control) their background and analysed parameters too."""
    if not window.members:
        return {}
    row = {
        "member_background": np.stack([m.xb for m in window.members]),
        "member_analysis": np.stack([m.x0 for m in window.members]),
        "member_forecast_end": np.stack([m.analysis_trajectory[-1] for m in window.members]),
    }
    if params:
        row.update(member_params_background=np.stack([m.pb for m in window.members]), member_params_analysis=np.stack([m.p for m in window.members]))
    return row


def plan_ensemble(plan) -> Ensemble:
    """The members of the plan's ``ensemble:`` block (none: ``members: 0``), their random streams apart from the plan's others."""
    settings = plan.config["ensemble"]
    if not settings["members"]:
        return Ensemble()
    seed = int(np.random.SeedSequence([plan.seed, _ENSEMBLE_SEED_PURPOSE]).generate_state(1)[0])
    return Ensemble(settings["members"], settings["hybrid_weight"], settings["localization"], settings["perturb"], seed, settings["inflation"])


def add_member_variables(dataset: xr.Dataset, rows: list[dict], units: str = "1") -> xr.Dataset:
    """``dataset`` with the members' variables and headline numbers (rows without members: unchanged)."""
    if not rows or "member_background" not in rows[0]:
        return dataset
    attrs = {"units": units}
    for key, text in (("background", "background at the window start"), ("analysis", "analysis at the window start"),
                      ("forecast_end", "analysis forecast to the window end (the next background, for windows end to end)")):
        dataset[f"member_{key}"] = (("cycle", "member", "x"), np.stack([row[f"member_{key}"] for row in rows]), {"long_name": f"each member's {text}", **attrs})
    for key, text in (("params_background", "background (first guess) parameters"), ("params_analysis", "analysed parameters")):
        if f"member_{key}" in rows[0]:
            dataset[f"member_{key}"] = (("cycle", "member", "param"), np.stack([row[f"member_{key}"] for row in rows]), {"long_name": f"each member's {text}", "units": "1"})
    backgrounds = dataset["member_background"].values
    dataset["spread_background"] = (("cycle",), _spread(backgrounds), {"long_name": "ensemble spread of the members' backgrounds at the window start", **attrs})
    dataset["spread_analysis"] = (("cycle",), _spread(dataset["member_analysis"].values), {"long_name": "ensemble spread of the members' analyses at the window start", **attrs})
    half = slice(len(rows) // 2, None)
    spread = float(dataset["spread_background"].values[half].mean())
    dataset.attrs["headline_spread_background_last_half"] = round(spread, 6)
    if "truth" in dataset:
        error = np.sqrt(np.mean((backgrounds.mean(axis=1) - dataset["truth"].values[:, 0]) ** 2, axis=1))
        dataset["rmse_ensemble_mean_background"] = (("cycle",), error, {"long_name": "RMSE of the members' mean background at the window start", **attrs})
        mean_error = float(error[half].mean())
        dataset.attrs["headline_rmse_ensemble_mean_background_last_half"] = round(mean_error, 6)
        dataset.attrs["headline_spread_skill"] = round(spread / mean_error, 6) if mean_error > 0 else float("nan")
    return dataset.assign_coords(member=np.arange(1, backgrounds.shape[1] + 1))
