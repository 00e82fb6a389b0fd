"""Running a plan: the cycled windows, the comparison runs, the diagnostics.

:func:`execute` runs one :class:`~fourdvar.app.plan.Plan` from its first window
(or from a checkpoint) to its result dataset.  Everything a window hands to the
next is one :class:`CyclingState` (``xb``, ``pb``, ``B``, ``P``), saved with each
window in the checkpoint and restored as one, so a resumed run computes the same
numbers as an uninterrupted one.  Comparison runs are independent executions of
their own plans; the diagnostics are functions of the result datasets
(:mod:`fourdvar.app.diagnostics`).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import xarray as xr

from ..covariances import Dense, Diagonal
from ..cycling import CycleState, CyclingRule, WindowOutcome, WindowSolver, cycle_windows
from ..options import SolverOptions
from ..posterior import LowRankCovariance
from ..window import DivergenceError, forecast
from .checkpoint import Checkpoint, CheckpointError
from .diagnostics import comparison_variables, correction_variables, diagnostics
from .ensemble_run import add_member_variables, member_row, plan_ensemble
from .fitting import fit_tendency
from .plan import Plan, resolved_states
from .results import ResultRecorder, config_text, write_atomic

__all__ = ["CyclingState", "execute", "run_to_file", "RunDiverged"]


class RunDiverged(DivergenceError):
    """A forecast diverged during a run; the message names the cycle."""


@dataclass(frozen=True)
class CyclingState(CycleState):
    """What cycle ``cycle`` starts from (:class:`fourdvar.cycling.CycleState`): the background
    ``(xb, pb)``, the covariances ``B``, ``P`` the policies build on, and an ensemble's members."""

    @classmethod
    def initial(cls, plan: Plan) -> "CyclingState":
        return cls(0, plan.xb0, plan.pb0, plan.B0, plan.P0)

    def variables(self) -> dict:
        """The state as NetCDF variables (``state_*``), exactly: stds and matrices, not summaries."""
        data = {"state_xb": (("x",), self.xb), "state_pb": (("param",), self.pb), "state_B_std": (("x",), np.broadcast_to(self.B.std, self.xb.shape))}
        if isinstance(self.P, Dense):
            data["state_P"] = (("param", "param_"), self.P.matrix)
        elif isinstance(self.P, LowRankCovariance):  # limited memory: C0^1/2 (I + U diag(lam) U^T) C0^1/2, C0 diagonal
            data.update(state_P_base_std=(("param",), self.P.base.std), state_P_vectors=(("param", "rank"), self.P.U),
                        state_P_values=(("rank",), self.P.lam))
        elif self.P is not None:
            data["state_P_std"] = (("param",), np.broadcast_to(self.P.std, self.pb.shape))
        if self.members is not None:
            data["state_members"] = (("member", "x"), self.members)
            if self.pb.size:
                data["state_member_params"] = (("member", "param"), self.member_params)
        return data

    @classmethod
    def from_dataset(cls, dataset: xr.Dataset, plan: Plan) -> "CyclingState":
        B = plan.B0.with_std(dataset["state_B_std"].values) if plan.method.B_policy.adaptive else plan.B0
        if "state_P" in dataset:
            P = Dense(dataset["state_P"].values)
        elif "state_P_base_std" in dataset:
            P = LowRankCovariance(Diagonal(dataset["state_P_base_std"].values), dataset["state_P_vectors"].values, dataset["state_P_values"].values)
        elif "state_P_std" in dataset:
            P = Diagonal(dataset["state_P_std"].values)
        else:
            P = None
        pb = dataset["state_pb"].values if "state_pb" in dataset else np.zeros(0)
        members = dataset["state_members"].values if "state_members" in dataset else None
        member_params = dataset["state_member_params"].values if "state_member_params" in dataset else None  # else pb
        return cls(int(dataset.attrs["cycle"]) + 1, dataset["state_xb"].values, pb, B, P, members, member_params)


def execute(
    plan: Plan,
    resume: tuple[list[dict], CyclingState] | None = None,
    on_window: Callable[[dict, CyclingState], None] | None = None,
    progress: Callable[[WindowOutcome, ResultRecorder], None] | None = None,
    message: Callable[[str], None] | None = None,
    map_members: Callable = map,
    comparison_progress: Callable[[str, int], Callable] | None = None,
) -> xr.Dataset:
    """Run ``plan`` and return its result dataset.

    ``resume``: the recorded windows and the state after them (from a checkpoint).
    ``on_window(row, state)`` after each window (the checkpoint); ``progress(outcome,
    recorder)`` then.  ``message``: where to say which comparison run starts.
    ``map_members(function, tasks)`` runs an ensemble's members of each window (the
    builtin ``map``: one after another here; :func:`fourdvar.app.cluster.distributed_map`
    on a Dask cluster).  ``comparison_progress(name, n_cycles)``: the ``progress`` of
    the comparison run ``name``.
    Floating-point warnings are silenced; a divergence raises :class:`RunDiverged`
    naming the cycle.
    """
    started = time.perf_counter()
    with np.errstate(all="ignore"):
        dataset = _cycles(plan, resume, on_window, progress, map_members)
        results = {}
        for comparison in plan.comparisons:
            other = comparison.plan
            if message:
                message(f"comparison run '{comparison.name}': {other.n_cycles} cycles of {other.n_steps} steps, control {'+'.join(other.control)}, {type(other.model).__name__}")
            comparison_started = time.perf_counter()
            if comparison.fit_correction is not None:
                other = _with_fitted_correction(plan, other, comparison)
            progress_of_comparison = comparison_progress(comparison.name, other.n_cycles) if comparison_progress else None
            results[comparison.name] = (other, _cycles(other, None, None, progress_of_comparison))
            if message:
                message(_comparison_summary(comparison.name, results[comparison.name][1], time.perf_counter() - comparison_started))
            dataset = dataset.assign(comparison_variables(comparison.name, results[comparison.name][1]))
            dataset.attrs[f"model_{comparison.name}"] = repr(other.model)
            if comparison.fit_correction is not None:
                dataset.attrs[f"fit_loss_{comparison.name}"] = other.fit_loss
        headline, curves = diagnostics(plan, dataset, results)
        dataset = dataset.assign(curves).assign(correction_variables(plan, dataset))
        dataset.attrs.update({f"headline_{key}": round(value, 6) for key, value in headline.items()})
    dataset.attrs["run_seconds"] = round(time.perf_counter() - started, 3)
    return dataset


def run_to_file(plan: Plan, resume: bool = False, progress=None, message: Callable[[str], None] | None = None,
                map_members: Callable = map, comparison_progress: Callable[[str, int], Callable] | None = None,
                overwrite: bool = False, restart: bool = False) -> xr.Dataset:
    """Run ``plan`` to its file ``plan.output`` through a checkpoint (what ``fourdvar run`` does).

    Holds the output's lock (:class:`~fourdvar.app.checkpoint.Checkpoint`) while it
    runs, saves every window, continues the windows already saved when ``resume``,
    writes the result atomically and removes the checkpoint (``output.checkpoint: false``:
    saves none).  Nothing is lost without being asked: an existing ``plan.output`` is
    replaced only with ``overwrite``, the windows of an interrupted run are continued
    with ``resume`` or discarded with ``restart``, and refused otherwise.  Raises
    :class:`~fourdvar.app.checkpoint.CheckpointError` (one of those refusals, locked,
    unreadable, another configuration), :class:`RunDiverged` or
    :class:`~fourdvar.app.results.WriteError`; an interruption leaves the saved
    windows for ``resume``.  ``map_members`` and ``comparison_progress``: as for :func:`execute`.
    """
    say = message or (lambda line: None)
    text = config_text(plan.experiment)
    checkpoint = Checkpoint(plan.output)
    checkpoint.acquire()
    try:
        windows = _saved_windows(plan, checkpoint, text, resume)
        _refuse_replacing(checkpoint, resume, restart, overwrite)  # again under the lock: before the checkpoint is touched or a word is said
        saved = _resume_point(plan, checkpoint, windows, say)
        save = (lambda row, state: checkpoint.save(row, state.variables(), state.cycle - 1, text)) if plan.experiment.output.checkpoint else None
        dataset = execute(plan, resume=saved, on_window=save, progress=progress, message=message,
                          map_members=map_members, comparison_progress=comparison_progress)
        write_atomic(dataset, plan.output)
        checkpoint.remove()
    finally:
        checkpoint.release()
    return dataset


def check_replacing(output: Path, resume: bool = False, restart: bool = False, overwrite: bool = False) -> None:
    """Refuse, with a :class:`~fourdvar.app.checkpoint.CheckpointError`, a run on an output another run is
    writing, or one that would replace the existing result ``output`` without ``overwrite`` or start again
    over an interrupted run's windows without ``resume`` or ``restart``; takes no lock and reads names
    only, so the command line asks it before the plan is built."""
    checkpoint = Checkpoint(output)
    checkpoint.check_free()  # a run in progress is not an interrupted one
    _refuse_replacing(checkpoint, resume, restart, overwrite)


def _refuse_replacing(checkpoint: Checkpoint, resume: bool = False, restart: bool = False, overwrite: bool = False) -> None:
    if not (resume or restart) and checkpoint.count():
        raise CheckpointError(f"{checkpoint.directory} holds {checkpoint.count()} completed windows of an interrupted run; "
                              "add --resume to continue it, or --restart to discard them and start again")
    if checkpoint.output.exists() and not overwrite:
        raise CheckpointError(f"{checkpoint.output} exists (an earlier result); add --overwrite to replace it, or choose another --output")


def _saved_windows(plan: Plan, checkpoint: Checkpoint, text: str, resume: bool) -> list | None:
    """The checkpoint's windows to continue from, checked (``[]``: none there), or ``None`` without ``resume``;
    changes nothing."""
    if not resume:
        return None
    windows = checkpoint.load(text)
    if len(windows) > plan.n_cycles:
        raise CheckpointError(f"{checkpoint.directory} holds {len(windows)} windows, more than the {plan.n_cycles} cycles of this run; use --restart to discard them")
    return windows


def _resume_point(plan: Plan, checkpoint: Checkpoint, windows: list | None, say) -> tuple | None:
    """The rows and the state to continue from, or ``None`` for a fresh start (an earlier run's windows discarded)."""
    if windows is None:
        checkpoint.clear()
        return None
    if not windows:
        say(f"--resume: no checkpoint in {checkpoint.directory}; starting from cycle 0")
        return None
    say(f"resuming from {checkpoint.directory}: {len(windows)} of {plan.n_cycles} cycles done")
    return [row for row, _ in windows], CyclingState.from_dataset(windows[-1][1], plan)


def _method(plan: Plan) -> tuple[WindowSolver, CyclingRule]:
    """How the plan solves each window and passes from one window to the next."""
    assimilation, params = plan.config["assimilation"], plan.config["background"]["params"]
    posterior = params["update"] == "posterior" and "params" in plan.control
    solver = WindowSolver(plan.model, plan.control, plan.n_steps, SolverOptions(**plan.solver_options),
                          plan.Q0, plan.model_error_every, assimilation["quasi_static_steps"])
    rule = CyclingRule(plan.shift, plan.background_policy, None if posterior else plan.params_policy,
                       assimilation["max_cost_per_obs"], assimilation["cost_spike"], params["noise_std"] if posterior else None,
                       params["noise_decay"], params["noise_floor"])
    return solver, rule


def _cycles(plan: Plan, resume, on_window, progress, map_members=map) -> xr.Dataset:
    recorder = ResultRecorder(plan)
    state = CyclingState.initial(plan)
    if resume is not None:
        rows, state = resume
        recorder.rows.extend(rows)
        recorder.P_next = state.P
    state = dataclasses.replace(state, cost_history=tuple(0.5 * row["departures"]["chi2"] for row in recorder.rows if not np.isfinite(row["rejected_cost"])))
    windows = (plan.window_slots(c) for c in range(state.cycle, plan.n_cycles))
    solver, rule = _method(plan)
    current = state.cycle
    try:
        for window in cycle_windows(solver, windows, state, rule, plan_ensemble(plan), map_members):
            row = recorder.add(window.control)
            row.update(member_row(window, "params" in plan.control))
            if on_window is not None:
                on_window(row, window.next)
            if progress is not None:
                progress(window.control, recorder)
            current = window.next.cycle
            del window  # not held while the next window runs
    except DivergenceError as error:
        text = str(error)
        raise RunDiverged(text if text.startswith(f"cycle {current}") else f"cycle {current}: {text}") from None
    return add_member_variables(recorder.dataset(complete=True), recorder.rows, plan.units)


def _comparison_summary(name: str, result: xr.Dataset, seconds: float) -> str:
    """``comparison run 'NAME' done: C cycles in T s, analysis RMSE (last half) R``."""
    line = f"comparison run '{name}' done: {result.sizes['cycle']} cycles in {seconds:.1f} s"
    if "rmse_analysis" in result:
        line += f", analysis RMSE (last half) {float(result['rmse_analysis'].values[result.sizes['cycle'] // 2:].mean()):.4g}"
    return line


def _with_fitted_correction(plan: Plan, other: Plan, comparison) -> Plan:
    """``other`` with its correction's parameters fitted offline to the truth model's
    unresolved tendency, on a stretch of truth after the experiment."""
    options, truth, model = comparison.fit_correction, plan.truth, other.model
    substeps = plan.problem.truth.substeps
    full = forecast(truth["model"], truth["last_full_state"], truth["model_params"], options["samples"] * options["spacing"] * substeps)
    samples = full[:: options["spacing"] * substeps][1:]
    states = resolved_states(truth, samples)
    targets = np.array([truth["model"].unresolved_tendency(x) for x in samples])
    n_phys = model.n_params - model.correction.n_params
    p_corr, loss = fit_tendency(model.correction.tendency, states, targets, other.pb0[n_phys:], options["max_iterations"])
    return other.with_initial_params(np.concatenate([other.pb0[:n_phys], p_corr]), fit_loss=loss)
