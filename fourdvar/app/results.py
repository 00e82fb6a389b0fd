"""The result file of a cycled experiment: an :class:`xarray.Dataset` that explains itself.

Dimensions: ``cycle``, ``step`` (0 .. L within a window), ``x`` (grid index),
``param``, ``outer`` (outer loops), ``iteration`` (inner iterations, 0 = start),
``obs``.  Variables (``long_name`` and ``units`` on each):

    truth, background, analysis            (cycle, step, x)   trajectories over each window
    params_background, params_analysis     (cycle, param)     (models with parameters)
    params_truth                           (param)            (when the truth model is the same model)
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

import contextlib
import errno
import glob
import os
import resource
import secrets
import signal
import threading
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import xarray as xr
import yaml

from .. import __version__
from ..cost import CostTerms, FourDVarCost
from ..covariances import Dense
from ..posterior import LowRankCovariance

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

__all__ = ["ResultRecorder", "WriteError", "write_atomic", "remove_temporaries", "recompute_cost", "config_of", "config_text",
           "window_dataset", "window_row"]


def _rms(a: np.ndarray, axis=None) -> np.ndarray:
    return np.sqrt(np.mean(a**2, axis=axis))


def _mean_std(covariance) -> float:
    return float(np.mean(covariance.std)) if covariance is not None and covariance.size else np.nan


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
        })
        self.P_next = outcome.P_next
        return self.rows[-1]

    # --- the dataset ----------------------------------------------------------------------------

    def dataset(self, complete: bool) -> xr.Dataset:
        exp = self.plan
        n_cycles, L = len(self.rows), exp.n_steps
        n_outer = exp.config["assimilation"]["outer_loops"]
        n_iter = 1 + max((len(o["J"]) - 1 for row in self.rows for o in row["outer"]), default=0)
        data = {}

        def var(name, dims, values, long_name, units="1"):
            data[name] = (dims, np.asarray(values), {"long_name": long_name, "units": units})

        state_units = exp.config.get("units", "1")
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
        if exp.config["background"]["params"]["update"] == "posterior" and isinstance(self.P_next, LowRankCovariance):
            long_name = "parameter error covariance P the next window starts from (update: posterior), limited memory C0^1/2 (I + U diag(lam) U^T) C0^1/2"
            var("params_covariance_next_base_std", ("param",), self.P_next.base.std, f"{long_name}: std of the diagonal C0")
            var("params_covariance_next_vectors", ("param", "rank"), self.P_next.U, f"{long_name}: orthonormal U")
            var("params_covariance_next_values", ("rank",), self.P_next.lam, f"{long_name}: lam")
        elif exp.config["background"]["params"]["update"] == "posterior" and self.P_next is not None:
            matrix = self.P_next.matrix if isinstance(self.P_next, Dense) else np.diag(self.P_next.std**2)
            data["params_covariance_next"] = (("param", "param_"), matrix, {"long_name": "parameter error covariance P the next window starts from (update: posterior)", "units": "1"})
        if exp.Q0 is not None:
            var("model_error", ("cycle", "sub_window", "x"), [r["model_error"] for r in self.rows],
                f"analysed model-error forcing eta_j, added after every step of sub-window j ({exp.model_error_every} steps)", state_units)
            var("Jm_final", ("cycle",), [r["final"].Jm for r in self.rows], "nonlinear Jm (model-error term) at the analysis")
        if exp.truth is not None and exp.truth.get("model_error") is not None:
            forcing = np.stack([exp.truth["model_error"][exp.window_start(c) : exp.window_start(c) + L + 1] for c in range(n_cycles)])
            forcing[:, 0] = np.nan  # no forcing of this window before its first step
            var("model_error_truth", ("cycle", "step", "x"), forcing, "the truth's model-error forcing added after each step", state_units)
        if exp.config["assimilation"]["max_cost_per_obs"] is not None:
            var("J_rejected", ("cycle",), [r["rejected_cost"] for r in self.rows], "J of a joint analysis rejected for exceeding max_cost_per_obs (NaN: accepted)")

        at_end = exp.config["window"]["observations_at_end"]
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
            "title": exp.config["title"] or "fourdvar experiment",
            "fourdvar_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config": config_text(exp.config),
            "model": repr(exp.model),
            "window_steps": L,
            "window_shift": exp.shift,
            "completed_cycles": n_cycles,
            "total_cycles": exp.n_cycles,
            "complete": int(complete),
            "control": ",".join(exp.control),
        }
        if hasattr(exp.model, "dt"):
            attrs["dt"] = float(exp.model.dt)
        attrs.update(grid_attributes(exp.model))
        if exp.Q0 is not None:
            attrs["model_error_every"] = exp.model_error_every
        return xr.Dataset(data, coords=coords, attrs=attrs)


def grid_attributes(model) -> dict:
    """``grid_nx, grid_ny, grid_L, grid_W`` of a model on a 2-D grid (for the maps); empty otherwise."""
    if not all(hasattr(model, name) for name in ("nx", "ny", "L", "W")):
        return {}
    return {"grid_nx": int(model.nx), "grid_ny": int(model.ny), "grid_L": float(model.L), "grid_W": float(model.W)}


# --- one window, as a checkpoint stores it ---------------------------------------------------------

_COST_KEYS = ("J", "Jb", "Jp", "Jo", "gradient_norm")
#: An ensemble's per-window arrays (member, x), kept in a row beside the control's (see :mod:`fourdvar.app.ensemble_run`).
MEMBER_KEYS = ("member_background", "member_analysis", "member_forecast_end")


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
        **{key: (("member", "x"), row[key]) for key in MEMBER_KEYS if key in row},  # an ensemble's members
        **{f"departures_{key}": ((), row["departures"][key]) for key in DEPARTURE_VARIABLES},
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
    }


# --- writing files -----------------------------------------------------------------------------------


class WriteError(OSError):
    """A file could not be written; ``str()`` is one line naming the path and why."""


def temporary_name(path: Path) -> Path:
    """A fresh hidden name beside ``path`` for writing it atomically (``.NAME.XXXXXXXX.tmp``)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def remove_temporaries(path: Path) -> list[Path]:
    """Delete what killed writers of ``path`` left behind (its ``.NAME.*.tmp`` files)."""
    removed = []
    if path.parent.is_dir():
        for leftover in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
            if len(leftover.name) == len(path.name) + 14:  # ".", name, ".", 8 hex digits, ".tmp"
                leftover.unlink(missing_ok=True)
                removed.append(leftover)
    return removed


@contextlib.contextmanager
def interrupts_deferred():
    """Hold SIGINT and SIGTERM until the block ends, then act on them as usual.

    A KeyboardInterrupt raised in the middle of a NetCDF write can leave the process
    hung at exit (3 of 20 Ctrl-C's sent at random moments to a loop of writes did):
    the write finishes first, then the interrupt is raised.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = {sig: signal.signal(sig, lambda number, frame: received.append(number)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(received):
            signal.raise_signal(sig)


def write_atomic(dataset: xr.Dataset, path: str | Path) -> Path:
    """Write NetCDF to a temporary file beside ``path``, then rename it into place.

    A crash leaves either the old file or the new one, never half a file.  The file
    is created with the mode the umask gives; a failed write (a full disk, say) is a
    :class:`WriteError` naming the path, the space needed and the space free.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_name(path)
    try:
        with interrupts_deferred():
            dataset.to_netcdf(temporary, engine="netcdf4")
            os.replace(temporary, path)
    except (OSError, RuntimeError) as error:
        temporary.unlink(missing_ok=True)
        raise _write_error(path, dataset, error) from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def _write_error(path: Path, dataset: xr.Dataset, error: Exception) -> WriteError:
    needed = dataset.nbytes
    try:
        status = os.statvfs(path.parent)
        free = status.f_bavail * status.f_frsize
    except OSError:
        free = None
    full = getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or (free is not None and free < needed + (1 << 16))
    if full:
        space = f"needs about {_size(needed)}, {_size(free) if free is not None else 'unknown'} free"
        return WriteError(errno.ENOSPC, f"cannot write {path}: no space left on the device ({space})")
    reason = getattr(error, "strerror", None) or " ".join(str(error).split())[:200]
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY:
        reason += f" (the file-size limit, ulimit -f, is {_size(limit)})"
    return WriteError(getattr(error, "errno", None) or errno.EIO, f"cannot write {path}: {reason}")


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def config_text(config: dict) -> str:
    """The resolved configuration as the YAML a result file stores (read back by :func:`config_of`)."""
    return yaml.safe_dump(config, sort_keys=False)


def config_of(dataset: xr.Dataset) -> dict:
    """The resolved configuration stored in a result file."""
    return yaml.safe_load(dataset.attrs["config"])


def recompute_cost(dataset: xr.Dataset, cycle: int, base_dir: str | Path = ".", allow_imports: bool = False):
    """Rebuild the plan from the file's configuration and evaluate the nonlinear
    cost of the stored analysis of ``cycle``; returns :class:`fourdvar.cost.CostTerms`.

    Uses only the file: the configuration (with its seed) regenerates the truth and
    the observations; the background, the covariances and the analysis are read back.
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
    B = plan.state_covariance_with_mean_std(float(row["background_std"]))
    P = plan.params_policy(cycle, plan.P0) if "params" in plan.control else None
    slots = plan.window_slots(cycle)
    cost = FourDVarCost(plan.model, slots, xb, B=B, pb=pb, P=P, n_steps=plan.n_steps, Q=plan.Q0, model_error_every=plan.model_error_every)
    x0 = row["analysis"].values[0]
    p = row["params_analysis"].values if "params_analysis" in dataset else plan.pb0
    return cost.evaluate(x0, p, row["model_error"].values if "model_error" in dataset else None)
