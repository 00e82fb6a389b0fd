"""The result file of a cycled experiment: an :class:`xarray.Dataset` that explains itself.

Dimensions: ``cycle``, ``step`` (0 .. L within a window), ``x`` (grid index),
``param``, ``outer`` (outer loops), ``iteration`` (inner iterations, 0 = start),
``obs``.  Variables (``long_name`` and ``units`` on each):

    truth, background, analysis            (cycle, step, x)   trajectories over each window
    params_background, params_analysis     (cycle, param)     (models with parameters)
    params_truth                           (param)            (when the truth model is the same model)
    param_name                             (param)            the parameters' names (background.params.names, or the model's param_names)
    params_background_std, params_analysis_std (cycle, param) std of P the window used and of its posterior P^a
    background_error_std                   (cycle, x)         std of B the window used (its static part with an ensemble)
    params_covariance_*                    (cycle, ...)       P the window used, limited-memory or dense, when propagated (update: posterior)
    model_error_background_std             (cycle, x)         std of Q (weak constraint)
    J, Jb, Jp, Jo, gradient_norm           (cycle, outer, iteration)   inner-loop Jq, NaN-padded
    J_outer                                (cycle, outer)     nonlinear J at each linearisation point
    inner_iterations, step_length          (cycle, outer)     (step_length: fraction of the increment kept)
    J_final, Jb_final, Jp_final, Jo_final  (cycle)            nonlinear J at the analysis
    rmse_background, rmse_analysis         (cycle)            against the truth at the window start
    rmse_background_window, rmse_analysis_window (cycle)      ... averaged over the window's states
    background_std, params_std             (cycle)            mean std of B and P used in the window
    obs_value, obs_step, obs_index, obs_error_std (obs)       the observations (steps from cycle 0)
    obs_x, obs_y                           (obs)              station positions (gridded 2-D point operators)
    rmse_analysis_end                      (cycle)            analysis RMSE at the window end
    model_error                            (cycle, sub_window, x)  analysed forcing eta_j (weak constraint)
    Jm_final                               (cycle)            nonlinear model-error term at the analysis (weak constraint)
    model_error_truth                      (cycle, step, x)   the truth's forcing added after each step (truth.model_error_std > 0)

Attributes: the resolved configuration as YAML (``config``), ``fourdvar_version``,
``window_steps``, ``window_shift`` (steps between window starts), ``dt`` (when the model has one),
``grid_nx``, ``grid_ny``, ``grid_L``, ``grid_W`` (a model on a 2-D grid), ``model``, ``completed_cycles``,
``complete`` (1 when every cycle ran).  The file alone is enough to rebuild the
experiment and recompute the cost of any analysis (:func:`recompute_cost`).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import xarray as xr
import yaml

from .. import __version__
from ..assimilation import FourDVar
from ..cost import CostTerms, FourDVarCost
from ..covariances import Dense
from ..eda import ensemble_covariance
from ..interfaces import declared
from ..posterior import DENSE_POSTERIOR_SIZE, LowRankCovariance

DEPARTURE_VARIABLES = {  # WindowDepartures field -> (result variable, long_name)
    "chi2": ("chi2", "2 J_min / n_obs (about 1 when B, R and the model are consistent)"),
    "omb_mean": ("omb_mean", "mean observation minus background forecast"),
    "omb_rms": ("omb_rms", "rms observation minus background forecast"),
    "oma_mean": ("oma_mean", "mean observation minus analysis forecast"),
    "oma_rms": ("oma_rms", "rms observation minus analysis forecast"),
    "obs_error_std": ("desroziers_obs_std", "Desroziers estimate of the observation error std, sqrt(d_a . d_b / m)"),
    "background_error_std": ("desroziers_background_std", "Desroziers estimate of the background error std in observation space, sqrt((d_b - d_a) . d_b / m)"),
}
from ..registry import registered_names_only
from .atomic import WriteError, interrupts_deferred, remove_temporaries, temporary_name, write_atomic  # noqa: F401  (re-exported)
from .experiment import Experiment

__all__ = ["ResultRecorder", "WriteError", "write_atomic", "remove_temporaries", "recompute_cost", "config_of", "config_text",
           "window_dataset", "window_row"]


def _rms(a: np.ndarray, axis=None) -> np.ndarray:
    return np.sqrt(np.mean(a**2, axis=axis))


def _mean_std(covariance) -> float:
    return float(np.mean(covariance.std)) if covariance is not None and covariance.size else np.nan


#: What each window used, recorded per cycle: name -> (dimensions after ``cycle``, long_name).
#: ``B`` and ``Q`` keep the structure the configuration gives them (their correlation) and
#: record their std; ``P`` is recorded in full when it is not a diagonal (propagated with
#: ``update: posterior``): limited memory ``C0^1/2 (I + U diag(lam) U^T) C0^1/2`` or dense.
#: A hybrid ensemble ``B`` is rebuilt from the members' backgrounds (``member_background``).
RECORDED_COVARIANCES = {
    "background_error_std": (("x",), "std of the state background error covariance B used in the window (its static part with an ensemble)"),
    "params_background_std": (("param",), "std of the parameter background error covariance P used in the window"),
    "params_analysis_std": (("param",), "std of the parameters' posterior error covariance P^a after the window (Gauss-Newton, marginal over the state)"),
    "params_covariance_base_std": (("param",), "P used in the window, limited memory C0^1/2 (I + U diag(lam) U^T) C0^1/2: std of the diagonal C0 (NaN: P diagonal)"),
    "params_covariance_vectors": (("param", "window_rank"), "P used in the window, limited memory: orthonormal U (NaN columns: beyond this window's rank)"),
    "params_covariance_values": (("window_rank",), "P used in the window, limited memory: lam (NaN: beyond this window's rank)"),
    "params_covariance": (("param", "param_"), "P used in the window, dense (NaN: P diagonal)"),
    "model_error_background_std": (("x",), "std of the model-error covariance Q used in the window"),
}
#: At most this many parameters get their posterior std computed for the result when the
#: cycling does not compute it (n_x + n_p Hessian products per window).
POSTERIOR_STD_MAX_PARAMS = 8


#: P's :meth:`~fourdvar.covariances.CovarianceBase.record` keys (limited memory or dense) -> result variable
P_RECORD = {"base.std": "params_covariance_base_std", "vectors": "params_covariance_vectors", "values": "params_covariance_values",
            "matrix": "params_covariance"}


def covariance_record(B, P, Q, posterior=None) -> dict:
    """The arrays of :data:`RECORDED_COVARIANCES` that rebuild the covariances one window used,
    from each covariance's ``record()``: B's std (its static part's for a hybrid ensemble B, whose
    ensemble part the members' backgrounds give), P's std with its limited-memory or dense form,
    the std of P^a and of Q."""
    b = B.record()
    record = {"background_error_std": b.get("static.std", b["std"])}
    if P is not None:
        p = P.record()
        record["params_background_std"] = p["std"]
        record.update({name: p[key] for key, name in P_RECORD.items() if key in p})
    if posterior is not None:
        variance = np.diag(posterior) if isinstance(posterior, np.ndarray) else posterior.variance()
        record["params_analysis_std"] = np.sqrt(np.maximum(variance, 0.0))
    if Q is not None:
        record["model_error_background_std"] = Q.record()["std"]
    return record


def recorded_covariances(plan, row: xr.Dataset):
    """``(B, P, Q)`` of one cycle of a result file (``row``: the dataset at that cycle), rebuilt
    from what the window recorded (:func:`covariance_record`) on the structures of ``plan``."""
    B = plan.B0.with_std(row["background_error_std"].values if _recorded(row, "background_error_std") else float(row["background_std"]))
    ensemble = plan.method.ensemble
    if ensemble.members and "member_background" in row:
        B = ensemble_covariance(B, row["member_background"].values, ensemble.hybrid_weight, ensemble.localization)
    P = _recorded_P(plan, row) if "params" in plan.control else None
    Q = plan.Q0
    if Q is not None and _recorded(row, "model_error_background_std"):
        Q = Q.with_std(row["model_error_background_std"].values)
    return B, P, Q


def _recorded(row: xr.Dataset, name: str) -> bool:
    """Whether this window recorded ``name`` (NaN: another form, or a window resumed from an older checkpoint)."""
    return name in row and bool(np.isfinite(row[name].values).all())


def _recorded_P(plan, row: xr.Dataset):
    """P from its record: limited memory (NaN columns beyond the window's rank dropped), dense, or its std."""
    p = {key: row[name].values for key, name in P_RECORD.items() if name in row}
    if _recorded(row, "params_covariance_base_std"):
        kept = np.isfinite(p["values"])
        return LowRankCovariance.from_record({**p, "vectors": p["vectors"][:, kept], "values": p["values"][kept]})
    if _recorded(row, "params_covariance"):
        return Dense.from_record(p)
    if _recorded(row, "params_background_std"):
        return plan.P0.with_std(row["params_background_std"].values)
    return plan.params_policy(int(row["cycle"]), plan.P0)  # a window written without the record


def _stacked(arrays: list) -> np.ndarray:
    """The per-cycle arrays (``None``: none that cycle) on a new first axis, NaN-padded to the largest."""
    present = [np.asarray(a) for a in arrays if a is not None]
    out = np.full((len(arrays), *np.max([a.shape for a in present], axis=0)), np.nan)
    for c, a in enumerate(arrays):
        if a is not None:
            out[(c, *map(slice, np.shape(a)))] = a
    return out


class ResultRecorder:
    """Collects :class:`fourdvar.cycling.WindowOutcome` objects and builds the dataset."""

    def __init__(self, plan):
        self.plan = plan
        self.rows: list[dict] = []
        self.P_next = None  # the parameter covariance of the next window (written with update: posterior)

    def add(self, outcome) -> dict:
        """Record one window; returns its row."""
        result = outcome.result
        self.rows.append({
            "background": outcome.background_trajectory,
            "analysis": outcome.analysis_trajectory,
            "params_background": outcome.pb,
            "params_analysis": outcome.p,
            "outer": [
                {"J": r["inner"].J, "Jb": r["inner"].Jb, "Jp": r["inner"].Jp, "Jo": r["inner"].Jo,
                 "gradient_norm": r["inner"].gradient_norm, "J_outer": r["J"], "nit": r["inner"].nit,
                 "step_length": r.get("step_length", 1.0)}
                for r in result.outer
            ],
            "final": result.final,
            "background_std": _mean_std(outcome.B),
            "params_std": _mean_std(outcome.P),
            "rejected_cost": np.nan if outcome.rejected_cost is None else outcome.rejected_cost,
            "model_error": outcome.model_error,
            "departures": {key: float(getattr(outcome.departures, key)) for key in DEPARTURE_VARIABLES},
            "qc": qc_row(result.get("qc")),
            **({} if result.get("posterior") is None else {"analysis_std": result.posterior.std_x0}),
            "recorded": covariance_record(outcome.B, outcome.P if "params" in self.plan.control else None, self.plan.Q0,
                                          self._posterior(outcome)),
        })
        self.P_next = outcome.P_next
        return self.rows[-1]

    def _posterior(self, outcome):
        """The parameters' posterior covariance after ``outcome``'s window: the cycling's, else
        computed here for a few parameters (``None`` for many, a rejected window or no parameters)."""
        exp = self.plan
        if outcome.params_posterior is not None or "params" not in exp.control:
            return outcome.params_posterior
        if outcome.rejected_cost is not None or not 0 < exp.model.n_params <= POSTERIOR_STD_MAX_PARAMS:
            return None
        posterior = outcome.result.get("posterior")
        if posterior is not None and posterior.std_p is not None:  # the solve's own, at its analysis
            return np.diag(posterior.std_p**2)
        if exp.model.n_state + exp.model.n_params > DENSE_POSTERIOR_SIZE:  # one Hessian product per control value: too dear
            return None
        problem = FourDVar(exp.model, exp.window_slots(outcome.cycle), xb=outcome.xb, B=outcome.B, pb=outcome.pb, P=outcome.P,
                           control=exp.control, n_steps=exp.n_steps, Q=exp.Q0, model_error_every=exp.model_error_every)
        eta = outcome.model_error if outcome.model_error.shape[0] else None
        return problem.params_posterior_covariance(outcome.x0, outcome.p, eta)

    # --- the dataset ----------------------------------------------------------------------------

    def dataset(self, complete: bool) -> xr.Dataset:
        exp = self.plan
        n_cycles, L = len(self.rows), exp.n_steps
        method = exp.method
        n_outer = max(method.solver.outer_loops, max((len(row["outer"]) for row in self.rows), default=0))
        n_iter = 1 + max((len(o["J"]) - 1 for row in self.rows for o in row["outer"]), default=0)
        data = {}

        def var(name, dims, values, long_name, units="1"):
            data[name] = (dims, np.asarray(values), {"long_name": long_name, "units": units})

        state_units = exp.units
        var("background", ("cycle", "step", "x"), [r["background"] for r in self.rows], "background forecast over the window", state_units)
        var("analysis", ("cycle", "step", "x"), [r["analysis"] for r in self.rows], "analysis forecast over the window", state_units)
        if exp.truth is not None:
            truth = np.stack([exp.truth["trajectory"][exp.window_start(c) : exp.window_start(c) + L + 1] for c in range(n_cycles)])
            var("truth", ("cycle", "step", "x"), truth, "truth over the window", state_units)
            analysis, background = data["analysis"][1], data["background"][1]
            var("rmse_background", ("cycle",), _rms(background[:, 0] - truth[:, 0], axis=1), "background RMSE at the window start", state_units)
            var("rmse_analysis", ("cycle",), _rms(analysis[:, 0] - truth[:, 0], axis=1), "analysis RMSE at the window start", state_units)
            var("rmse_background_window", ("cycle",), _rms(background - truth, axis=(1, 2)), "background RMSE over the window", state_units)
            var("rmse_analysis_window", ("cycle",), _rms(analysis - truth, axis=(1, 2)), "analysis RMSE over the window", state_units)
            var("rmse_analysis_end", ("cycle",), _rms(analysis[:, -1] - truth[:, -1], axis=1), "analysis RMSE at the window end (the next background)", state_units)
            var("rmse_filter", ("cycle",), _rms(analysis[:, -1] - truth[:, -1], axis=1), "analysis RMSE at the window end (filter)", state_units)
        if exp.model.n_params:
            var("params_background", ("cycle", "param"), [r["params_background"] for r in self.rows], "background (first guess) parameters")
            var("params_analysis", ("cycle", "param"), [r["params_analysis"] for r in self.rows], "analysed parameters")
            if exp.truth is not None and exp.truth["params"] is not None:
                var("params_truth", ("param",), exp.truth["params"], "parameters of the truth model")
            names = exp.problem.P.names or declared(exp.model, "param_names")
            if names is not None:
                var("param_name", ("param",), np.array(names, dtype=str), "name of each parameter (background.params.names, else the model's param_names)")

        def padded(key):
            array = np.full((n_cycles, n_outer, n_iter), np.nan)
            for c, row in enumerate(self.rows):
                for o, record in enumerate(row["outer"]):
                    array[c, o, : len(record[key])] = record[key]
            return array

        for key, long_name in [("J", "incremental cost Jq"), ("Jb", "Jq background term"), ("Jp", "Jq parameter term"),
                               ("Jo", "Jq observation term"), ("gradient_norm", "norm of the gradient of Jq (control space)")]:
            var(key, ("cycle", "outer", "iteration"), padded(key), f"{long_name} per inner iteration")
        def per_outer(key, fill):  # outer loops stop when converged: the ones not run are left at fill
            return [[o[key] for o in r["outer"]] + [fill] * (n_outer - len(r["outer"])) for r in self.rows]

        var("J_outer", ("cycle", "outer"), per_outer("J_outer", np.nan), "nonlinear cost J at each outer loop's linearisation point (NaN: not run, converged before)")
        var("step_length", ("cycle", "outer"), per_outer("step_length", np.nan), "fraction of the outer-loop increment kept (backtracking)")
        var("inner_iterations", ("cycle", "outer"), np.array(per_outer("nit", 0), dtype=np.int64), "inner iterations per outer loop")
        for key in ("Jb", "Jp", "Jo"):
            var(f"{key}_final", ("cycle",), [getattr(r["final"], key) for r in self.rows], f"nonlinear {key} at the analysis")
        var("J_final", ("cycle",), [r["final"].J for r in self.rows], "nonlinear cost J at the analysis")
        var("background_std", ("cycle",), [r["background_std"] for r in self.rows], "mean background error std of the state (B)", state_units)
        var("params_std", ("cycle",), [r["params_std"] for r in self.rows], "mean parameter error std (P)")
        for key, (name, long_name) in DEPARTURE_VARIABLES.items():
            var(name, ("cycle",), [r["departures"][key] for r in self.rows], long_name)
        for name, (dims, long_name) in RECORDED_COVARIANCES.items():
            arrays = [r["recorded"].get(name) for r in self.rows]
            if any(a is not None for a in arrays):
                var(name, ("cycle", *dims), _stacked(arrays), long_name, "1" if name.startswith("params") else state_units)
        posterior_update = method.P_policy.update == "posterior"
        P_next = self.P_next.record() if posterior_update and self.P_next is not None else {}
        if "vectors" in P_next:
            long_name = "parameter error covariance P the next window starts from (update: posterior), limited memory C0^1/2 (I + U diag(lam) U^T) C0^1/2"
            var("params_covariance_next_base_std", ("param",), P_next["base.std"], f"{long_name}: std of the diagonal C0")
            var("params_covariance_next_vectors", ("param", "rank"), P_next["vectors"], f"{long_name}: orthonormal U")
            var("params_covariance_next_values", ("rank",), P_next["values"], f"{long_name}: lam")
        elif P_next:
            matrix = P_next["matrix"] if "matrix" in P_next else np.diag(P_next["std"] ** 2)
            data["params_covariance_next"] = (("param", "param_"), matrix, {"long_name": "parameter error covariance P the next window starts from (update: posterior)", "units": "1"})
        if exp.Q0 is not None:
            var("model_error", ("cycle", "sub_window", "x"), [r["model_error"] for r in self.rows],
                f"analysed model-error forcing eta_j, added after every step of sub-window j ({exp.model_error_every} steps)", state_units)
            var("Jm_final", ("cycle",), [r["final"].Jm for r in self.rows], "nonlinear Jm (model-error term) at the analysis")
        if exp.truth is not None and exp.truth.get("model_error") is not None:
            forcing = np.stack([exp.truth["model_error"][exp.window_start(c) : exp.window_start(c) + L + 1] for c in range(n_cycles)])
            forcing[:, 0] = np.nan  # no forcing of this window before its first step
            var("model_error_truth", ("cycle", "step", "x"), forcing, "the truth's model-error forcing added after each step", state_units)
        if {"state", "params"} <= set(exp.control) and (method.max_cost_per_obs is not None or method.cost_spike is not None):
            var("J_rejected", ("cycle",), [r["rejected_cost"] for r in self.rows], "J of a joint analysis rejected for exceeding max_cost_per_obs or cost_spike (NaN: accepted)")
        if all("analysis_std" in r for r in self.rows) and self.rows:
            var("analysis_std", ("cycle", "x"), [r["analysis_std"] for r in self.rows], "analysis-error std of the initial state (Gauss-Newton posterior at the analysis)", state_units)
        data.update(qc_variables(self.rows))

        at_end = method.window.observations_at_end
        obs = exp.observations.window(0, exp.window_start(n_cycles - 1) + L if n_cycles else 0, include_end=at_end)
        obs = type(obs)(slot for slot in obs if slot.step > 0) if at_end else obs
        obs_ds = obs.to_dataset() if len(obs) else None
        if obs_ds is not None:
            for name in ("value", "step", "index", "error_std", "x", "y")[: 6 if "x" in obs_ds else 4]:
                data[f"obs_{name}"] = (("obs",), obs_ds[name].values, dict(obs_ds[name].attrs))
            data["obs_operator"] = (("obs",), obs_ds["operator"].values.astype(str), {**obs_ds["operator"].attrs, "units": "1"})

        coords = {"cycle": np.arange(n_cycles), "step": np.arange(L + 1), "x": np.arange(exp.model.n_state),
                  "outer": np.arange(n_outer), "iteration": np.arange(n_iter)}
        if exp.model.n_params:
            coords["param"] = np.arange(exp.model.n_params)
        if exp.Q0 is not None:
            coords["sub_window"] = np.arange(data["model_error"][1].shape[1])
        attrs = {
            "title": exp.experiment.title or "fourdvar experiment",
            "fourdvar_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config": config_text(exp.experiment),
            "model": repr(exp.model),
            "window_steps": L,
            "window_shift": exp.shift,
            "completed_cycles": n_cycles,
            "total_cycles": exp.n_cycles,
            "complete": int(complete),
            "control": ",".join(exp.control),
        }
        if declared(exp.model, "dt") is not None:
            attrs["dt"] = float(exp.model.dt)
        attrs.update(grid_attributes(exp.model))
        if exp.Q0 is not None:
            attrs["model_error_every"] = exp.model_error_every
        return xr.Dataset(data, coords=coords, attrs=attrs)


def grid_attributes(model) -> dict:
    """``grid_nx, grid_ny, grid_L, grid_W`` of a model on a 2-D grid (for the maps); empty otherwise."""
    if any(declared(model, name) is None for name in ("nx", "ny", "L", "W")):
        return {}
    return {"grid_nx": int(model.nx), "grid_ny": int(model.ny), "grid_L": float(model.L), "grid_W": float(model.W)}


# --- one window, as a checkpoint stores it ---------------------------------------------------------

_COST_KEYS = ("J", "Jb", "Jp", "Jo", "gradient_norm")
#: An ensemble's per-window arrays and their dimensions, kept in a row beside the control's (see :mod:`fourdvar.app.ensemble_run`).
MEMBER_KEYS = {"member_background": ("member", "x"), "member_analysis": ("member", "x"), "member_forecast_end": ("member", "x"),
               "member_params_background": ("member", "param"), "member_params_analysis": ("member", "param")}


QC_KEYS = ("step", "index", "value", "departure", "reason")


def qc_row(record) -> dict:
    """A window's quality-control record (:class:`fourdvar.qc.QCRecord`) as arrays: one entry per
    observation rejected, and the number VarQC down-weighted."""
    if record is None:
        return {"step": np.zeros(0, dtype=np.int64), "index": np.zeros(0, dtype=np.int64), "value": np.zeros(0),
                "departure": np.zeros(0), "reason": np.zeros(0, dtype=str), "downweighted": 0}
    return {"step": record.step.astype(np.int64), "index": record.index.astype(np.int64), "value": record.value,
            "departure": record.departure, "reason": record.reason.astype(str), "downweighted": record.n_downweighted}


def qc_variables(rows: list[dict]) -> dict:
    """The observations quality control rejected, window by window: a ``rejection`` dimension
    (cycle, step, index in the slot, value, departure, reason) and the counts per cycle."""
    qc = [row.get("qc") or qc_row(None) for row in rows]
    reasons = np.concatenate([q["reason"] for q in qc]).astype(str) if qc else np.zeros(0, dtype=str)

    def attrs(long_name):
        return {"long_name": long_name, "units": "1"}

    data = {
        "qc_cycle": (("rejection",), np.concatenate([np.full(q["reason"].size, c, dtype=np.int64) for c, q in enumerate(qc)] or [np.zeros(0, dtype=np.int64)]), attrs("window of each observation rejected by quality control")),
        "qc_step": (("rejection",), np.concatenate([q["step"] for q in qc] or [np.zeros(0, dtype=np.int64)]), attrs("its step in the window")),
        "qc_index": (("rejection",), np.concatenate([q["index"] for q in qc] or [np.zeros(0, dtype=np.int64)]), attrs("its index among the observations of that step")),
        "qc_value": (("rejection",), np.concatenate([q["value"] for q in qc] or [np.zeros(0)]), attrs("its value")),
        "qc_departure": (("rejection",), np.concatenate([q["departure"] for q in qc] or [np.zeros(0)]), attrs("its departure (background or analysis) over its expected std; NaN for a non-finite value")),
        "qc_reason": (("rejection",), reasons, attrs("why: non-finite, background (check) or analysis (check)")),
        "qc_downweighted": (("cycle",), np.array([q["downweighted"] for q in qc], dtype=np.int64), attrs("observations variational QC down-weighted at the analysis")),
    }
    for reason in ("non-finite", "background", "analysis"):
        name = f"qc_rejected_{reason.replace('-', '')}"
        data[name] = (("cycle",), np.array([int(np.sum(q["reason"] == reason)) for q in qc], dtype=np.int64), attrs(f"observations rejected ({reason})"))
    return data


def window_dataset(row: dict, cycle: int, state_variables: dict, config: str) -> xr.Dataset:
    """One recorded window and the cycling state after it, exactly (a checkpoint file)."""
    n_outer = len(row["outer"])
    n_iter = max((len(o["J"]) for o in row["outer"]), default=1)
    costs = {key: np.full((n_outer, n_iter), np.nan) for key in _COST_KEYS}
    for o, record in enumerate(row["outer"]):
        for key in _COST_KEYS:
            costs[key][o, : len(record[key])] = record[key]
    data = {
        "background": (("step", "x"), row["background"]),
        "analysis": (("step", "x"), row["analysis"]),
        "params_background": (("param",), row["params_background"]),
        "params_analysis": (("param",), row["params_analysis"]),
        **{key: (("outer", "iteration"), costs[key]) for key in _COST_KEYS},
        "J_outer": (("outer",), [o["J_outer"] for o in row["outer"]]),
        "inner_iterations": (("outer",), np.array([o["nit"] for o in row["outer"]], dtype=np.int64)),
        "step_length": (("outer",), [o["step_length"] for o in row["outer"]]),
        "final": (("term",), [row["final"].Jb, row["final"].Jp, row["final"].Jo, row["final"].Jm]),
        "model_error": (("sub_window", "x"), row["model_error"]),
        "background_std": ((), row["background_std"]),
        "params_std": ((), row["params_std"]),
        "rejected_cost": ((), row["rejected_cost"]),
        **{key: (dims, row[key]) for key, dims in MEMBER_KEYS.items() if key in row},  # an ensemble's members
        **{f"departures_{key}": ((), row["departures"][key]) for key in DEPARTURE_VARIABLES},
        **{f"qc_{key}": (("rejection",), row["qc"][key]) for key in QC_KEYS},
        "qc_downweighted": ((), row["qc"]["downweighted"]),
        **({"analysis_std": (("x",), row["analysis_std"])} if "analysis_std" in row else {}),
        **{f"recorded_{name}": (RECORDED_COVARIANCES[name][0], a) for name, a in row["recorded"].items()},
        **state_variables,
    }
    return xr.Dataset(data, attrs={"cycle": cycle, "config": config, "fourdvar_version": __version__})


def window_row(dataset: xr.Dataset) -> dict:
    """The row of :func:`window_dataset`'s window (for :class:`ResultRecorder`)."""
    outer = []
    for o in range(dataset.sizes["outer"]):
        nit = int(dataset["inner_iterations"].values[o])
        record = {key: list(dataset[key].values[o, : nit + 1]) for key in _COST_KEYS}
        record.update(J_outer=float(dataset["J_outer"].values[o]), nit=nit, step_length=float(dataset["step_length"].values[o]))
        outer.append(record)
    return {
        "background": dataset["background"].values,
        "analysis": dataset["analysis"].values,
        "params_background": dataset["params_background"].values,
        "params_analysis": dataset["params_analysis"].values,
        "outer": outer,
        "final": CostTerms(*(float(v) for v in dataset["final"].values)),
        "model_error": dataset["model_error"].values,
        "background_std": float(dataset["background_std"].values),
        "params_std": float(dataset["params_std"].values),
        "rejected_cost": float(dataset["rejected_cost"].values),
        **{key: dataset[key].values for key in MEMBER_KEYS if key in dataset},
        "departures": {key: float(dataset[f"departures_{key}"].values) for key in DEPARTURE_VARIABLES},
        "qc": {**{key: dataset[f"qc_{key}"].values for key in QC_KEYS}, "downweighted": int(dataset["qc_downweighted"].values)},
        **({"analysis_std": dataset["analysis_std"].values} if "analysis_std" in dataset else {}),
        "recorded": {name: dataset[f"recorded_{name}"].values for name in RECORDED_COVARIANCES if f"recorded_{name}" in dataset},
    }


# --- writing files: fourdvar.app.atomic (re-exported here) -------------------------------------------


def config_text(config) -> str:
    """The resolved configuration (the dict, or its :class:`~fourdvar.app.experiment.Experiment`)
    as the YAML a result file stores (read back by :func:`config_of`)."""
    return yaml.safe_dump(config.to_dict() if isinstance(config, Experiment) else config, sort_keys=False)


def config_of(dataset: xr.Dataset) -> dict:
    """The resolved configuration stored in a result file."""
    return yaml.safe_load(dataset.attrs["config"])


def recompute_cost(dataset: xr.Dataset, cycle: int, base_dir: str | Path = ".", allow_imports: bool = False):
    """Rebuild the plan from the file's configuration and evaluate the nonlinear
    cost of the stored analysis of ``cycle``; returns :class:`fourdvar.cost.CostTerms`.

    Uses only the file: the configuration (with its seed) regenerates the truth and
    the observations; the background, the analysis and the covariances the window
    used (:func:`recorded_covariances`: B, P in low-rank or dense form, a hybrid's
    ensemble, Q) are read back.
    The configuration names the classes to build; only registered and installed
    names are built unless ``allow_imports`` (a file from someone you trust whose
    configuration names ``module:Class``).
    """
    from .plan import Plan

    config = config_of(dataset)
    if allow_imports:
        plan = Plan.from_config(config, base_dir=base_dir)
    else:
        with registered_names_only():
            plan = Plan.from_config(config, base_dir=base_dir)
    row = dataset.isel(cycle=cycle)
    xb = row["background"].values[0]
    pb = row["params_background"].values if "params_background" in dataset else plan.pb0
    B, P, Q = recorded_covariances(plan, row)
    slots = plan.window_slots(cycle)
    cost = FourDVarCost(plan.model, slots, xb, B=B, pb=pb, P=P, n_steps=plan.n_steps, Q=Q, model_error_every=plan.model_error_every)
    x0 = row["analysis"].values[0]
    p = row["params_analysis"].values if "params_analysis" in dataset else plan.pb0
    return cost.evaluate(x0, p, row["model_error"].values if "model_error" in dataset else None)
