"""The ``ensemble:`` block of a cycled run: an ensemble of data assimilations beside the control.

:func:`ensemble_cycles` runs :func:`fourdvar.eda.eda_cycle` with the experiment's
settings (members on the cluster through ``map_members``) and yields the
control's window outcomes, so the control is recorded as any run's; the
:class:`EnsembleRecorder` keeps what the members add to the result file:

    member_background          (cycle, member, x)   each member's background at the window start
    member_analysis            (cycle, member, x)   each member's analysis at the window start
    member_forecast_end        (cycle, member, x)   each member's analysis forecast to the window end
                                                     (its next background; a resumed run restarts from it)
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

from ..eda import eda_cycle

__all__ = ["EnsembleRecorder", "ensemble_cycles"]

_ENSEMBLE_SEED_PURPOSE = 11  # the EDA's random streams, apart from the experiment's others


def _spread(states: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.var(states, axis=0, ddof=1))))


class EnsembleRecorder:
    """The members' part of the result file, one row per window."""

    def __init__(self, experiment):
        self.experiment = experiment
        self.rows: list[dict] = []

    def add(self, window) -> None:
        self.rows.append({
            "background": np.stack([m.xb for m in window.members]),
            "analysis": np.stack([m.x0 for m in window.members]),
            "forecast_end": np.stack([m.analysis_trajectory[-1] for m in window.members]),
        })

    def restore(self, dataset: xr.Dataset) -> np.ndarray:
        """Reload the rows of a checkpoint; the members' backgrounds of the next window."""
        n = int(dataset.attrs["completed_cycles"])
        for c in range(n):
            self.rows.append({key: dataset[f"member_{key}"].values[c] for key in ("background", "analysis", "forecast_end")})
        return self.rows[-1]["forecast_end"].copy()

    def add_to(self, dataset: xr.Dataset) -> xr.Dataset:
        """``dataset`` with the members' variables (and, when complete, headline numbers) added."""
        if not self.rows:
            return dataset
        units = {"units": self.experiment.config.get("units", "1")}
        for key, text in (("background", "background at the window start"), ("analysis", "analysis at the window start"),
                          ("forecast_end", "analysis forecast to the window end (the next background)")):
            dataset[f"member_{key}"] = (("cycle", "member", "x"), np.stack([row[key] for row in self.rows]), {"long_name": f"each member's {text}", **units})
        dataset["spread_background"] = (("cycle",), [_spread(row["background"]) for row in self.rows], {"long_name": "ensemble spread of the members' backgrounds at the window start", **units})
        dataset["spread_analysis"] = (("cycle",), [_spread(row["analysis"]) for row in self.rows], {"long_name": "ensemble spread of the members' analyses at the window start", **units})
        if "truth" in dataset:
            mean = np.stack([row["background"].mean(axis=0) for row in self.rows])
            error = np.sqrt(np.mean((mean - dataset["truth"].values[:, 0]) ** 2, axis=1))
            dataset["rmse_ensemble_mean_background"] = (("cycle",), error, {"long_name": "RMSE of the members' mean background at the window start", **units})
        dataset = dataset.assign_coords(member=np.arange(1, self.rows[0]["background"].shape[0] + 1))
        return dataset

    def add_headlines(self, dataset: xr.Dataset) -> None:
        half = slice(len(self.rows) // 2, None)
        spread = float(dataset["spread_background"].values[half].mean())
        dataset.attrs["headline_spread_background_last_half"] = round(spread, 6)
        if "rmse_ensemble_mean_background" in dataset:
            error = float(dataset["rmse_ensemble_mean_background"].values[half].mean())
            dataset.attrs["headline_rmse_ensemble_mean_background_last_half"] = round(error, 6)
            dataset.attrs["headline_spread_skill"] = round(spread / error, 6) if error > 0 else float("nan")


def ensemble_cycles(experiment, recorder: EnsembleRecorder, start: int, xb, B_static, pb, member_backgrounds=None, map_members=map, **solve_options):
    """The control's :class:`~fourdvar.cycling.WindowOutcome` of each window of an EDA, each window's
    members recorded in ``recorder`` before its control is yielded."""
    settings = experiment.config["ensemble"]
    windows = eda_cycle(
        experiment.model, experiment.windows(start), xb, B_static, pb, None,
        n_members=settings["members"], weight=settings["hybrid_weight"], localization=settings["localization"],
        perturb=settings["perturb"], seed=int(np.random.SeedSequence([experiment.seed, _ENSEMBLE_SEED_PURPOSE]).generate_state(1)[0]),
        control=experiment.control, n_steps=experiment.n_steps, start_cycle=start, member_backgrounds=member_backgrounds,
        map_members=map_members, **solve_options,
    )
    for window in windows:
        recorder.add(window)
        yield window.control
