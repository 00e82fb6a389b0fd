"""A plan: everything a resolved configuration describes, built and checked in full
before any cycle runs.

:class:`Plan` turns the typed configuration (:class:`~fourdvar.app.experiment.Experiment`:
its :class:`~fourdvar.app.experiment.Problem` and :class:`~fourdvar.app.experiment.Method`;
:meth:`Plan.from_config` from the resolved dict) into objects, through the registry
and the engine's public API only: the forecast model, the truth run and its
observations (or an observation file), the backgrounds and covariances, one plan
per comparison run (on the same truth and observations), the diagnostics'
requirements and the output target.  Any problem is a :class:`ConfigError`,
raised before anything is computed or written; ``fourdvar check`` and
``fourdvar run`` build the same plan.  Running it is :func:`fourdvar.app.run.execute`.

Every random draw comes from a stream derived from ``seed`` and its purpose, so
the same configuration and seed give the same numbers, and a resumed run the
same numbers as an uninterrupted one.
"""

from __future__ import annotations

import copy
import inspect
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cost import FourDVarCost
from ..covariances import Diagonal, PeriodicCorrelation
from ..covariances2d import PeriodicCorrelation2D
from ..interfaces import declared
from ..registry import RegistryError, build_model, build_operator, observation_set_class, operator_class
from ..window import DivergenceError, forecast, n_sub_windows, sub_window_forcing
from .config import STD_RANGE, ConfigError, short
from .experiment import ComparisonRun, Component, Correlation, Experiment, Method, Problem, experiment_of
from .sizes import Sizes, least_observed, least_sizes

__all__ = ["Plan", "Comparison", "build_component", "check_output", "check_netcdf_size", "spin_up", "MAX_COST", "MAX_SPINUP_STEPS", "MEMORY_FRACTION"]

# independent random streams, one per purpose
_TRUTH_STATE, _TRUTH_PARAMS, _OBSERVATIONS, _BACKGROUND, _MODEL_PARAMS, _TRUTH_MODEL_ERROR = range(6)

#: The cost at the first background beyond which the problem has no meaning in float64:
#: an O(1) change of J would be below its rounding error (J * 1e-16) long before this.
MAX_COST = 1e20
#: A plan whose arrays would take more than this fraction of the machine's memory is refused.
MEMORY_FRACTION = 0.5
#: Model steps a spin-up runs at a time: it holds one such stretch of states, never its whole trajectory.
SPINUP_STRETCH = 500
#: The longest spin-up, in model steps (``truth.spinup_steps`` times ``truth.substeps``).
MAX_SPINUP_STEPS = 10**8


def build_component(spec: Component | dict, path: str, builder=build_model, **extra):
    """Build a model/operator from its :class:`~fourdvar.app.experiment.Component` (or mapping);
    any failure becomes a :class:`ConfigError` at ``path``."""
    options = spec.options() if isinstance(spec, Component) else {key: value for key, value in spec.items() if key not in ("params", "params_from")}
    for key, value in extra.items():
        if key in options and options[key] != value:
            raise ConfigError(f"{path}.{key}: {options[key]!r}, but the model gives {value!r}; leave it out (it is taken from the model)")
    try:
        return builder({**options, **extra})
    except RegistryError as error:  # bounded by the registry, and never cut where it names the fix
        raise ConfigError(f"{path}.type: {error}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply") from None
    except Exception as error:  # a constructor refusing its arguments, whatever it raises
        raise ConfigError(f"{path}: {_cut(error)}") from None


def _cut(error: Exception, limit: int = 200) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class Comparison:
    """Another 4D-Var run on the plan's truth and observations."""

    name: str
    plan: "Plan"
    fit_correction: dict | None  # options of the offline fit of the model's correction, or None


class Plan:
    """Everything one configuration describes, built and cross-checked; nothing run yet.

    ``Plan(experiment, base_dir, output, shared)`` builds it from the typed configuration
    (:class:`~fourdvar.app.experiment.Experiment`); :meth:`from_config` from the resolved
    dict.  Attributes: ``experiment`` (with ``problem`` and ``method``), ``model``,
    ``control``, ``n_steps``, ``n_cycles``, ``shift``, ``span``, ``truth`` (``None`` with an
    observation file), ``observations``, ``xb0``, ``pb0``, ``B0``, ``P0``, ``Q0`` and
    ``model_error_every`` (weak constraint; ``None`` otherwise), ``forecast_steps``
    (length of the skill forecasts, 0 without), ``comparisons`` and ``output``.
    """

    #: The units of the state in the result file (the schema has no key for them).
    units = "1"

    def __init__(self, experiment: Experiment | dict, base_dir: str | Path = ".", output: Path | None = None,
                 shared: "Plan | None" = None):
        """``output``: the result file (checked by :meth:`from_config`); ``shared``: a plan
        whose truth run and observations this one reuses (a comparison run on the same data)."""
        self.experiment = experiment_of(experiment)
        self.base_dir = Path(base_dir)
        self.output = output
        self.fit_loss = None  # the offline fit's loss of a comparison run with fit_correction
        problem, window = self.problem, self.method.window
        self.seed = problem.seed
        self.n_steps, self.n_cycles, self.shift, self.span = window.steps, window.cycles, window.stride, window.span
        self.from_file = problem.observations.file is not None
        self._check_run_length()
        self._check_least_sizes()  # from the models' options, before any is built
        self.model = build_component(problem.model, "model")
        if shared is not None and self.model.n_state != shared.model.n_state:
            raise ConfigError(
                f"model: n_state = {self.model.n_state}, but the main run's model has n_state = {shared.model.n_state} "
                "(a comparison run shares its truth and observations)"
            )
        self.control = self.method.control
        if "params" in self.control and self.model.n_params == 0:
            raise ConfigError(f"{self.method.key('control')}: 'params' is in the control but the model {self.model!r} has no parameters")
        self.forecast_steps = self._forecast_steps()
        self._check_memory()  # before anything of the model's size is allocated
        self._check_least_observations()
        self.pb0 = self._initial_params()
        _probe(self.model, self.pb0, problem.truth.initial_mean)
        if shared is not None:
            self.truth, self.observations = shared.truth, shared.observations
        else:
            self.truth = None if self.from_file else self._truth_run()
            self.observations = self._read_observations() if self.from_file else self._generate_observations()
            if problem.observations.climatology_every is not None:
                self.observations = self._with_climatology(problem.observations)
        self.B0 = self._state_covariance(problem.B.error_std)
        self.P0 = self._params_covariance() if self.model.n_params else None
        self.Q0 = self._model_error_covariance() if "model_error" in self.control else None
        self.model_error_every = (problem.Q.every or self.n_steps) if self.Q0 is not None else None
        self.xb0 = self._initial_background()
        self._check_cost()
        self.comparisons = tuple(self._comparison(run) for run in self.experiment.compare)

    @classmethod
    def from_config(cls, config: dict | Experiment, base_dir: str | Path = ".", output: str | Path | None = None,
                    inputs: tuple = (), shared: "Plan | None" = None) -> "Plan":
        """The plan of a resolved configuration (the dict, or its :class:`Experiment`).

        ``output``: the result file, checked (not written) against ``inputs`` (the
        configuration file) and every file the plan reads.  ``shared``: a plan whose
        truth run and observations this one reuses (a comparison run on the same data).
        """
        experiment = experiment_of(config)
        if output is not None:
            output = check_output(output, [*inputs, *cls.declared_inputs(experiment, base_dir)])
        return cls(experiment, base_dir, output, shared)

    @staticmethod
    def declared_inputs(config: dict | Experiment, base_dir: str | Path = ".") -> list[Path]:
        """Every file the configuration reads (observation file, ``params_from``, its
        comparison runs' included), without reading any."""
        return [Path(base_dir) / name for name in experiment_of(config).declared_inputs()]

    @property
    def problem(self) -> Problem:
        """What is assimilated: truth, model, observations, covariances."""
        return self.experiment.problem

    @property
    def method(self) -> Method:
        """How it is assimilated: windows, control, solver, policies, ensemble."""
        return self.experiment.method

    @property
    def config(self) -> dict:
        """The resolved configuration as a plain dict (the text a result file records)."""
        return self.experiment.to_dict()

    # --- building -------------------------------------------------------------------------

    def rng(self, purpose: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, purpose])

    def path(self, name: str) -> Path:
        path = Path(name)
        return path if path.is_absolute() else self.base_dir / path

    @property
    def solver_options(self) -> dict:
        """The keywords of :meth:`fourdvar.FourDVar.solve` this configuration sets
        (:meth:`~fourdvar.app.experiment.Solver.options`)."""
        return self.method.solver.options()

    def with_initial_params(self, pb0: np.ndarray, **attributes) -> "Plan":
        """A copy of the plan starting from the parameters ``pb0`` (and with ``attributes`` set)."""
        plan = copy.copy(self)
        plan.pb0 = np.asarray(pb0, dtype=float)
        for name, value in attributes.items():
            setattr(plan, name, value)
        return plan

    def _initial_params(self) -> np.ndarray:
        spec = self.problem.model
        n = self.model.n_params
        if spec.has("params") and spec.has("params_from"):
            raise ConfigError("model: give either 'params' or 'params_from', not both")
        if spec.has("params_from"):
            source = spec.get("params_from")
            if not isinstance(source, str) or not source:
                raise ConfigError(f"model.params_from: expected the path of a result file, got {short(source)}")
            p = _params_from_result(self.path(source), "model.params_from", n)
        elif spec.has("params"):
            p = _finite_vector(spec.get("params"), "model.params")
        else:
            return self.model.init_params(self.rng(_MODEL_PARAMS))
        if p.shape != (n,):
            raise ConfigError(f"model.params: the model has {n} parameters, got {p.size}")
        return p

    def _check_run_length(self) -> None:
        """Refuse a spin-up longer than :data:`MAX_SPINUP_STEPS` model steps (it holds one stretch
        of states at a time, so its length is bounded by time, not memory)."""
        truth = self.problem.truth
        steps = truth.spinup_steps * max(truth.substeps, 1)
        if steps > MAX_SPINUP_STEPS:
            given = f"{truth.spinup_steps:.6g} x {truth.substeps} substeps = {steps:.3g}" if truth.substeps > 1 else f"{truth.spinup_steps:.6g}"
            raise ConfigError(f"{truth.key('spinup_steps')}: {given} model steps, more than the {MAX_SPINUP_STEPS:.0e} a spin-up may run "
                              "(a spin-up settles within thousands)")

    def _check_least_sizes(self) -> None:
        """Refuse model options whose least run cannot fit in memory: :meth:`memory_terms` at the
        least state, parameters and activations the options imply (:func:`~fourdvar.app.sizes.least_sizes`),
        before a constructor allocates anything of that size.  When a model of one value would not
        fit either, another key is to blame: the check once the models are built names it."""
        model = least_sizes(self.problem.model.options(), self.problem.model.path)
        truth = least_sizes(self.problem.truth.model.options(), self.problem.truth.model.path) if not self.from_file else Sizes()
        terms = self.memory_terms(model.n_state, truth.n_state, model.n_params)
        needed = 8 * (sum(terms.values()) + (self.n_steps + 1) * model.activations)
        if needed > memory_available() and 8 * sum(self.memory_terms(1, 1).values()) <= memory_available():
            top = max((model, truth), key=Sizes.largest)
            raise ConfigError(f"{top.key}: {top.shown}: {self.n_cycles} windows of {self.n_steps} steps need at least {needed / 2**30:.3g} GiB "
                              f"(the truth run, the results and the model's values); this machine allows {memory_available() / 2**30:.3g} GiB")

    def _check_least_observations(self) -> None:
        """Refuse generated observations whose least count (an operator's ``stations`` at every observed
        step: values, error stds and the stations' positions) cannot fit in memory, before an operator draws them."""
        spec = self.problem.observations
        if self.from_file:
            return
        steps = len(range(spec.offset, self.span + (1 if self.method.window.observations_at_end else 0), spec.every))
        operators = spec.operators  # used in turn at successive observed steps
        values = [least_observed(o.options()) * (2 * len(range(i, steps, len(operators))) + 2) for i, o in enumerate(operators)]
        needed = 8 * sum(values)
        if needed > memory_available():
            operator = operators[int(np.argmax(values))]
            raise ConfigError(f"{operator.path}.stations: {least_observed(operator.options()):.0f} stations at {steps} observed steps need at least "
                              f"{needed / 2**30:.3g} GiB for the observations; this machine allows {memory_available() / 2**30:.3g} GiB")

    def _check_memory(self) -> None:
        """Refuse a plan whose arrays would not fit in memory: the spin-ups, the truth run,
        the skill forecasts, an ensemble's members, the parameters and the result arrays."""
        n_truth = 0
        if not self.from_file:
            self._truth_model = build_component(self.problem.truth.model, "truth.model")
            n_truth = self._truth_model.n_state
        terms = self.memory_terms(self.model.n_state, n_truth, self.model.n_params, self.forecast_steps)
        needed = 8 * sum(terms.values())
        available = memory_available()
        if needed > available:
            key, _ = max(terms.items(), key=lambda item: item[1])
            raise ConfigError(
                f"{key}: {self.n_cycles} windows of {self.n_steps} steps of {self.model.n_state} state values"
                f"{f' and {self.model.n_params} parameters' if self.model.n_params else ''} need about {needed / 2**30:.3g} GiB "
                f"for the truth run and the results; this machine allows {available / 2**30:.3g} GiB"
            )

    def memory_terms(self, n: float, n_truth: float, n_params: float = 0.0, forecast_steps: int = 0) -> dict[str, float]:
        """The float64 values the run holds at once, by the configuration key that sets each: a
        model of ``n`` state values and ``n_params`` parameters, a truth of ``n_truth``, skill
        forecasts of ``forecast_steps``."""
        truth, solver = self.problem.truth, self.method.solver
        substeps, spinup = truth.substeps, truth.spinup_steps
        inner = solver.max_iterations + 1
        diagnostics, members = self.experiment.diagnostics, self.method.ensemble.members
        starts = diagnostics.forecast_starts if forecast_steps else 0
        return {
            "truth.spinup_steps": float(min(spinup * substeps, SPINUP_STRETCH) + 1) * max(n_truth, n),  # a stretch of the spin-ups
            "window.cycles": float(self.span + forecast_steps) * substeps * n_truth  # the truth run
            + 3.0 * self.n_cycles * (self.n_steps + 1) * n  # background, analysis and truth per window
            + 5.0 * self.n_cycles * solver.outer_loops * inner,  # cost per inner iteration
            "diagnostics.forecast_starts": float(starts) * (diagnostics.forecast_spacing * substeps * n_truth + 2 * (forecast_steps + 1) * n),
            "ensemble.members": float(members) * (3 * self.n_cycles * n + 4 * (self.n_steps + 1) * n),
            # a forcing per step, repeated from its sub-windows' (whole sub-windows: up to one more than the run needs)
            "model_error.every": float(self.problem.Q.every or 0) * n if "model_error" in self.method.control else 0.0,
            "truth.model_error_every": float(truth.model_error_every or self.problem.Q.every or 0) * n_truth if truth.model_error_std > 0 else 0.0,
            "model": (2.0 * self.n_cycles + 4) * n_params,  # background, analysis and their covariances' stds per window
        }

    def window_start(self, c: int) -> int:
        """The step at which window ``c`` starts, ``c * shift``."""
        return c * self.shift

    def window_slots(self, c: int, n_steps: int | None = None):
        """The observations window ``c`` assimilates, steps from its start: ``[start, start + L)``,
        or ``(start, start + L]`` with ``window.observations_at_end``; of overlapping windows
        (``shift < L``) only those after the previous window's end.  ``n_steps``: windows of
        that length instead, end to end (default: the plan's windows)."""
        at_end = self.method.window.observations_at_end
        if n_steps is None:
            start, length, first_new = self.window_start(c), self.n_steps, (0 if c == 0 else self.n_steps - self.shift)
        else:
            start, length, first_new = c * n_steps, n_steps, 0
        slots = self.observations.window(start, length, include_end=at_end)
        return type(slots)(slot for slot in slots if (slot.step > first_new if at_end else slot.step >= first_new))

    def _check_cost(self) -> None:
        """Refuse values that make the cost meaningless: J at the first background must be
        finite and below :data:`MAX_COST`."""
        slots = self.window_slots(0)
        if not len(slots):
            return
        P = self.P0 if "params" in self.control else None
        cost = FourDVarCost(self.model, slots, self.xb0, B=self.B0, pb=self.pb0, P=P, n_steps=self.n_steps)
        try:
            with np.errstate(all="ignore"):
                J = cost.evaluate(self.xb0, self.pb0).J
        except DivergenceError:
            return  # the model diverges from this background: the run says where
        if not (math.isfinite(J) and J <= MAX_COST):
            raise ConfigError(
                f"observations: the cost J at the first background is {J:.3g} (at most {MAX_COST:g} has a meaning "
                "in float64); check the observation values, their error_std and the background"
            )

    def _comparison(self, run: ComparisonRun) -> Comparison:
        name = run.name
        try:
            plan = Plan(self.experiment.comparison(run), self.base_dir, shared=self)
            fit = run.fit_correction
            if fit is not None:
                self._check_fit(plan.model)
                self._check_fit_memory(fit)
            if self.forecast_steps and declared(plan.model, "dt") is None:
                raise ConfigError(f"model: {plan.model!r} has no time step 'dt' for the forecast skill (diagnostics.forecast_skill)")
        except ConfigError as error:
            raise ConfigError(f"compare[{name}]: {error}") from None
        return Comparison(name, plan, fit)

    def _check_fit(self, model) -> None:
        if self.truth is None or declared(self.truth["model"], "unresolved_tendency") is None:
            raise ConfigError("fit_correction: the truth model has no 'unresolved_tendency' to fit to")
        correction = declared(model, "correction")
        if correction is None or declared(correction, "tendency") is None:
            raise ConfigError("fit_correction: the model has no 'correction' with a 'tendency' (use a hybrid with a local_mlp)")

    def _check_fit_memory(self, fit: dict) -> None:
        """Refuse an offline fit whose stretch of truth (``samples`` states ``spacing`` steps apart) would not fit in memory."""
        needed = 8.0 * (fit["samples"] * fit["spacing"] * self.problem.truth.substeps + 1) * self._truth_model.n_state
        if needed > memory_available():
            raise ConfigError(f"fit_correction: {fit['samples']} samples {fit['spacing']} steps apart need about {needed / 2**30:.3g} GiB "
                              f"of truth run; this machine allows {memory_available() / 2**30:.3g} GiB")

    def _truth_run(self) -> dict:
        spec = self.problem.truth
        model = self._truth_model
        if spec.params is not None:
            params = np.atleast_1d(np.asarray(spec.params, dtype=float))
            if params.shape != (model.n_params,):
                raise ConfigError(f"truth.params: the truth model has {model.n_params} parameters, got {params.size}")
        else:
            params = model.init_params(self.rng(_TRUTH_PARAMS))
        state_slice = spec.state_part
        resolves = declared(model, "resolved_state") is not None
        if resolves and spec.state_slice:
            raise ConfigError(f"truth.state_slice: the truth model {model!r:.80} gives the forecast model's part of its state "
                              "itself (resolved_state); leave truth.state_slice out")
        n_represented = model.resolved_state(np.zeros(model.n_state)).size if resolves else len(range(model.n_state)[state_slice])
        if n_represented != self.model.n_state:
            raise ConfigError(
                f"truth.model: its state ({model.n_state} values, {n_represented} after "
                f"{'its resolved_state' if resolves else 'truth.state_slice'}) does not match the forecast model's n_state = {self.model.n_state}"
            )
        step_dt, dt = declared(model, "unresolved_dt"), declared(self.model, "dt")
        if step_dt is not None and dt is not None and not math.isclose(step_dt, dt):
            raise ConfigError(f"truth.model: its unresolved tendency is per model step of {step_dt:g} s (coarse_dt), the forecast model's dt is {dt:g} s")
        rng = self.rng(_TRUTH_STATE)
        x = spec.initial_mean + spec.initial_std * rng.standard_normal(model.n_state)
        substeps = spec.substeps
        n_run = (self.span + self.forecast_steps) * substeps  # the skill forecasts run past the last window
        eta, every = self._truth_model_error(model.n_state, n_run)
        try:
            x = spin_up(model, x, params, spec.spinup_steps * substeps, "truth spin-up")
            if eta is None:
                full = forecast(model, x, params, n_run, context="truth run")[::substeps]
            else:  # substeps == 1 (checked with the configuration)
                full = forecast(model, x, params, n_run, context="truth run", forcing=sub_window_forcing(eta, every, n_run))
        except DivergenceError as error:
            raise ConfigError(f"truth: {error}") from None
        same_model = spec.model.type == self.problem.model.type and model.n_params == self.model.n_params
        truth = {"model": model, "params": params if same_model else None, "state_slice": state_slice,
                 "last_full_state": full[-1], "model_params": params}
        return {**truth, "trajectory": resolved_states(truth, full),
                "model_error": None if eta is None else resolved_states(truth, _per_step(eta, every, n_run))}

    def _truth_model_error(self, n_state: int, n_run: int):
        """``(eta, every)``: the truth's stochastic forcing, one draw per sub-window, or ``(None, None)``."""
        spec = self.problem.truth
        if spec.model_error_std == 0:
            return None, None
        every = spec.model_error_every or self.problem.Q.every or self.n_steps
        eta = spec.model_error_std * self.rng(_TRUTH_MODEL_ERROR).standard_normal((n_sub_windows(n_run, every), n_state))
        return eta, every

    def _forecast_steps(self) -> int:
        diagnostics = self.experiment.diagnostics
        if not diagnostics.forecast_skill:
            return 0
        if self.from_file:
            raise ConfigError("diagnostics.forecast_skill: needs a truth run, but the observations come from a file")
        dt = declared(self.model, "dt")
        if dt is None:
            raise ConfigError(f"diagnostics.forecast_skill: the model {self.model!r} has no time step 'dt' to convert steps to Lyapunov times")
        return int(np.ceil(diagnostics.forecast_lyapunov_times * diagnostics.lyapunov_time / dt))

    def _generate_observations(self):
        obs_config = self.problem.observations
        n = self.model.n_state
        operators = [build_component(spec, spec.path, build_operator, n_state=n, **self._model_for(spec)) for spec in obs_config.operators]
        last = self.span + (1 if self.method.window.observations_at_end else 0)
        steps = list(range(obs_config.offset, last, obs_config.every))
        if not steps:
            raise ConfigError(f"{obs_config.key('offset')}: {obs_config.offset} lies beyond the {self.n_cycles} windows of {self.n_steps} steps "
                              f"(their last observable step is {last - 1}); no observation would be made")
        position = {step: i for i, step in enumerate(steps)}
        return observation_set_class().synthetic(
            self.truth["trajectory"], steps, lambda step: _at_step(operators[position[step] % len(operators)], step),
            obs_config.error_std, self.rng(_OBSERVATIONS),
        )

    def _with_climatology(self, spec):
        """The observations with the climatological pseudo-observations of ``climatology_every``."""
        try:
            return self.observations.with_climatology(spec.climatology_every)
        except ValueError as error:
            raise ConfigError(f"{spec.key('climatology_every')}: {_cut(error)}") from None

    def _model_for(self, spec: Component) -> dict:
        """``{"model": the forecast model}`` for an operator whose constructor takes ``model``
        (one that observes a diagnostic of the model, or needs its grid); ``{}`` otherwise."""
        try:
            parameters = inspect.signature(operator_class(spec.type)).parameters
        except (RegistryError, TypeError, ValueError):
            return {}  # building it names the problem
        return {"model": self.model} if "model" in parameters and not spec.has("model") else {}

    def _read_observations(self):
        path = self.path(self.problem.observations.file)
        if path.is_file():
            check_netcdf_size(path, "observations.file")
            check_time_units(path, "observations.file", declared(self.model, "dt"))
        try:
            observations = observation_set_class().from_file(path, n_state=self.model.n_state, dt=declared(self.model, "dt"),
                                                             nearest_step=self.problem.observations.nearest_step)
        except FileNotFoundError:
            raise ConfigError(f"observations.file: {path}: no such file") from None
        except (ValueError, OSError) as error:
            raise ConfigError(f"observations.file: {_cut(error, 300)}") from None
        low, high = STD_RANGE
        for slot in observations:
            std = np.asarray(declared(slot.covariance, "std"))
            if not np.all((std >= low) & (std <= high)):
                raise ConfigError(f"observations.file: {path}: an error_std at step {slot.step} lies outside [{low:g}, {high:g}] (1/std^2 would lose its meaning)")
        at_end = self.method.window.observations_at_end
        last = self.span + (1 if at_end else 0)  # the last step a window assimilates, plus one
        if len(observations) and observations.steps[-1] >= last:
            raise ConfigError(f"observations.file: {path}: step {observations.steps[-1]} lies beyond the {self.n_cycles} windows of {self.n_steps} steps "
                              f"(steps {1 if at_end else 0} to {last - 1} with window.observations_at_end: {str(at_end).lower()})")
        return observations

    def _state_covariance(self, std):
        B = self.problem.B
        return self._covariance(B.correlation, std, B.path, B.layer_scale, B.vertical)

    def _model_error_covariance(self):
        Q = self.problem.Q
        return self._covariance(Q.correlation, Q.error_std, Q.path)

    def _grid(self) -> tuple[int, int, int] | None:
        """``(n_fields, ny, nx)`` of a model on a 2-D grid (attributes ``nx``, ``ny``), else ``None``."""
        nx, ny = declared(self.model, "nx"), declared(self.model, "ny")
        if not (isinstance(nx, int) and isinstance(ny, int) and nx > 0 and ny > 0 and self.model.n_state % (nx * ny) == 0):
            return None
        return self.model.n_state // (nx * ny), ny, nx

    def _covariance(self, correlation: Correlation, std, path: str, layer_scale=None, vertical=None):
        """A diagonal covariance, or the correlation on the model's grid: 2-D per layer
        (``layer_scale``, ``vertical``) for a model with ``nx`` and ``ny``, 1-D otherwise."""
        n, grid = self.model.n_state, self._grid()
        if grid is None and (layer_scale is not None or vertical is not None):
            key = "layer_scale" if layer_scale is not None else "correlation.vertical"
            raise ConfigError(f"{path}.{key}: needs a model on a 2-D grid (attributes nx and ny); {self.model!r} has none")
        if grid is not None:
            n_fields = grid[0]
            scale = np.ones(n_fields) if layer_scale is None else np.atleast_1d(np.asarray(layer_scale, dtype=float))
            if scale.shape != (n_fields,):
                raise ConfigError(f"{path}.layer_scale: the model has {n_fields} layers, got {scale.size} values")
            std = float(std) * scale
        if correlation.type is None:
            if vertical is not None:
                raise ConfigError(f"{path}.correlation.vertical: needs a horizontal correlation (correlation.type gaussian or soar)")
            return Diagonal(np.repeat(std, n // np.size(std)), size=n)
        try:
            if grid is not None:
                return PeriodicCorrelation2D(grid[2], grid[1], correlation.length_scale, std=std,
                                             shape=correlation.type, n_fields=grid[0], vertical=vertical)
            return PeriodicCorrelation(n, correlation.length_scale, std=std, shape=correlation.type)
        except ValueError as error:
            raise ConfigError(f"{path}.correlation: {error}") from None

    def _params_covariance(self):
        std = np.asarray(self.problem.P.error_std, dtype=float)
        n = self.model.n_params
        names = self.problem.P.names
        if names is not None and len(names) != n:
            raise ConfigError(f"background.params.names: the model has {n} parameters, got {len(names)} names")
        if std.ndim == 1 and std.shape != (n,):
            raise ConfigError(f"background.params.error_std: the model has {n} parameters, got {std.size} values")
        return Diagonal(np.broadcast_to(std, (n,)).copy())

    def _initial_background(self) -> np.ndarray:
        choice = self.problem.B.initial
        if choice == "free_run":
            return self._free_run()
        if self.truth is None:
            raise ConfigError(
                f"background.state.initial: '{choice}' needs a truth run, but the observations come from a file "
                "(observations.file); use 'free_run'"
            )
        truth = self.truth["trajectory"]
        if choice == "truth_mean":
            return np.full(self.model.n_state, truth[: self.span + 1].mean())
        initial_std = self.problem.B.initial_std
        B = self.B0 if initial_std is None else self._state_covariance(initial_std)
        return truth[0] + B.sample(self.rng(_BACKGROUND))

    def _free_run(self) -> np.ndarray:
        """A state of the forecast model's own climate: a spun-up run from a random state."""
        spec = self.problem.truth
        rng = self.rng(_BACKGROUND)
        x = spec.initial_mean + spec.initial_std * rng.standard_normal(self.model.n_state)
        try:
            return spin_up(self.model, x, self.pb0, spec.spinup_steps, "background free run")
        except DivergenceError as error:
            raise ConfigError(f"background.state.initial: {error}") from None

    # --- policies ---------------------------------------------------------------------------------

    def params_policy(self, c: int, P):
        """The schedule of P: std = max(error_std * decay^c, floor)."""
        policy = self.method.P_policy
        std0 = np.broadcast_to(np.asarray(self.problem.P.error_std, dtype=float), (self.model.n_params,))
        decayed = std0 * policy.decay**c
        return P.with_std(np.maximum(decayed, policy.floor) if policy.floor > 0 else decayed)

    def background_policy(self, c: int, xb: np.ndarray, pb: np.ndarray, slots, B):
        """Adaptive B: the error variance from the innovations at the window's first
        observed step, ``sigma_b^2 = mean(d^2) - mean(sigma_o^2)``, blended with the
        previous variance with weight ``adaptive_weight`` and clipped to the bounds."""
        policy = self.method.B_policy
        if not policy.adaptive or not len(slots):
            return B
        first = min(slots, key=lambda slot: slot.step)
        x_first = forecast(self.model, xb, pb, first.step, context=f"cycle {c}, adaptive B")[-1]
        d = first.values - first.operator.apply(x_first)
        estimate = max(float(np.mean(d**2) - np.mean(first.covariance.std**2)), 0.0)
        weight = policy.weight if c > 0 else 1.0
        variance = weight * estimate + (1 - weight) * float(np.mean(B.std)) ** 2
        std = float(np.clip(np.sqrt(variance), policy.min_std, policy.max_std))
        return self.state_covariance_with_mean_std(std)

    def state_covariance_with_mean_std(self, std: float):
        """``B0`` with its std profile scaled to the mean ``std`` (the layers of a 2-D grid keep
        their ``layer_scale``; a uniform profile becomes ``std`` everywhere)."""
        profile = np.asarray(self.B0.std)
        if np.all(profile == profile[0]):
            return self.B0.with_std(std)
        return self.B0.with_std(profile * (std / profile.mean()))


def resolved_states(truth: dict, states: np.ndarray) -> np.ndarray:
    """The forecast model's part of truth states ``(..., n_truth)``: the truth model's ``resolved_state``
    (a coarse-graining) when it has one, else the columns ``truth.state_slice``."""
    resolve = declared(truth["model"], "resolved_state")
    return states[..., truth["state_slice"]] if resolve is None else resolve(states)


def spin_up(model, x: np.ndarray, p: np.ndarray, n_steps: int, context: str = "", every: int = 0, diagnostic=None) -> np.ndarray:
    """``x_n`` of ``x_k = M(x_{k-1}, p)`` from ``x_0 = x``: :func:`~fourdvar.window.forecast`'s last state to the
    bit, run in stretches of at most :data:`SPINUP_STRETCH` steps, so that it holds one stretch, not the
    trajectory.  ``diagnostic(k, x_k)`` is called at every step ``k`` that is a multiple of ``every`` (> 0): a
    spin-up check's values (an energy, an RMS) without its states."""
    done, x = 0, np.asarray(x, dtype=float)
    while True:
        stretch = min(SPINUP_STRETCH, n_steps - done, (every - done % every) if every else SPINUP_STRETCH)
        where = f"{context}, {done} steps in" if done else context  # the step of a divergence counts from the stretch's start
        x = forecast(model, x, p, stretch, context=where)[-1].copy()
        done += stretch
        if every and done % every == 0 and done:
            diagnostic(done, x)
        if done == n_steps:
            return x


def _at_step(operator, step: int):
    """The operator observing at ``step``: its ``at_step(step)`` (another for a network that moves)."""
    return declared(operator, "at_step")(step)


def memory_available() -> float:
    """Bytes a plan may use: :data:`MEMORY_FRACTION` of the machine's memory."""
    return MEMORY_FRACTION * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_netcdf_size(path: Path, what: str) -> None:
    """Refuse a NetCDF file whose variables would not fit in memory once read (a small
    compressed file can expand to any size); its header alone is read.  A file that is not
    NetCDF is left to its reader to name."""
    import netCDF4

    try:
        with netCDF4.Dataset(path) as nc:
            needed = sum(math.prod(v.shape) * _item_size(v.dtype) for v in nc.variables.values())
    except OSError:
        return
    if needed > memory_available():
        raise ConfigError(f"{what}: {path}: its variables take {needed / 2**30:.3g} GiB once read; this machine allows {memory_available() / 2**30:.3g} GiB")


#: The variables an observation file is read from (docs/observation_files.md).
OBSERVATION_VARIABLES = ("value", "step", "time", "index", "error_std", "operator", "scale", "x", "y")
#: CF units of a duration (UDUNITS names and abbreviations): a reader may decode them into time deltas.
_DURATIONS = {"d", "day", "days", "h", "hr", "hrs", "hour", "hours", "min", "mins", "minute", "minutes", "s", "sec", "secs",
              "second", "seconds", "ms", "msec", "millisecond", "milliseconds", "us", "usec", "microsecond", "microseconds",
              "ns", "nanosecond", "nanoseconds"}


def check_time_units(path: Path, what: str, dt: float | None) -> None:
    """Refuse an observation file whose variables carry CF time units (``hours since 2000-01-01``,
    ``seconds``): xarray decodes them into dates or time deltas, while the format reads ``time``
    as a plain number in the unit of the model's ``dt``, from the start of cycle 0, which no
    calendar can say.  Only the header is read; a file that is not NetCDF is left to its reader."""
    import netCDF4

    try:
        with netCDF4.Dataset(path) as nc:
            units = {name: nc.variables[name].getncattr("units") for name in OBSERVATION_VARIABLES
                     if name in nc.variables and "units" in nc.variables[name].ncattrs()}
    except OSError:
        return
    for name, unit in units.items():
        text = str(unit).strip()
        date, duration = " since " in f" {text.lower()} ", text.lower() in _DURATIONS
        if date or duration:
            expected = {"time": f"the model time from the start of cycle 0 in the unit of the model's dt{'' if dt is None else f' = {dt:g}'}",
                        "step": "model steps from the start of cycle 0"}.get(name, "plain numbers")
            raise ConfigError(f"{what}: {path}: variable {name!r} has units {short(text, 60)}, CF units of a {'calendar date' if date else 'duration'} "
                              f"that xarray decodes; expected {expected}, without time units (convert it, then remove 'units' or set it to '1')")


def _item_size(dtype) -> int:
    """Bytes per value of a NetCDF variable (strings and variable-length values: a pointer's 8)."""
    try:
        return np.dtype(dtype).itemsize or 8
    except TypeError:
        return 8


def _probe(model, p: np.ndarray, level: float) -> None:
    """One ``step``, ``tl`` and ``ad`` of ``model`` at a constant state: each must return
    float arrays of the shapes the engine needs; else a :class:`ConfigError` naming the method."""
    n = model.n_state
    x = np.full(n, float(level))
    name = type(model).__name__

    def checked(method: str, call, expected: tuple):
        try:
            with np.errstate(all="ignore"):
                value = call()
        except DivergenceError:
            raise
        except Exception as error:
            raise ConfigError(f"model: {name}.{method} failed at a constant state: {_cut(error, 160)}") from None
        array = np.asarray(value) if not isinstance(value, np.ndarray) else value
        if array.shape != expected:
            raise ConfigError(f"model: {name}.{method} returned shape {array.shape}, expected {expected}")
        if array.dtype.kind != "f":
            raise ConfigError(f"model: {name}.{method} returned dtype {array.dtype}, expected float64")
        return array

    try:
        checked("step", lambda: model.step(x, p), (n,))
        linear = model.linearize(x, p)
        checked("linearize(...).tl", lambda: linear.tl(np.ones(n), np.ones_like(p)), (n,))
        adjoint = linear.ad(np.ones(n))
        if not (isinstance(adjoint, tuple) and len(adjoint) == 2):
            raise ConfigError(f"model: {name}.linearize(...).ad returned {type(adjoint).__name__}, expected a pair (ax, ap)")
        checked("linearize(...).ad [ax]", lambda: adjoint[0], (n,))
        checked("linearize(...).ad [ap]", lambda: adjoint[1], p.shape)
    except DivergenceError:
        return  # a model that diverges from a constant state: the runs say where


def _per_step(eta: np.ndarray, every: int, n_run: int) -> np.ndarray:
    """The forcing added after each step ``k = 1 .. n_run``, as rows ``k``; row 0 (no forcing) is NaN."""
    per_step = np.full((n_run + 1, eta.shape[1]), np.nan)
    per_step[1:] = eta[(np.arange(1, n_run + 1) - 1) // every]
    return per_step


def _finite_vector(value, key: str) -> np.ndarray:
    try:
        vector = np.atleast_1d(np.asarray(value, dtype=float))
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected a number or a list of numbers, got {short(value)}") from None
    if vector.ndim != 1:
        raise ConfigError(f"{key}: expected a flat list of numbers, got {short(value)}")
    if not np.all(np.isfinite(vector)):
        raise ConfigError(f"{key}: expected finite numbers, got {short(value)}")
    return vector


def _params_from_result(path: Path, key: str, n: int) -> np.ndarray:
    """The ``n`` analysed parameters of the last cycle of a result file (only those values are read)."""
    import xarray as xr

    if not path.is_file():
        raise ConfigError(f"{key}: {path}: no such file" if not path.exists() else f"{key}: {path}: not a file")
    check_netcdf_size(path, key)
    try:
        with xr.open_dataset(path, engine="netcdf4") as ds:
            if "params_analysis" not in ds or "cycle" not in ds["params_analysis"].dims or not ds.sizes["cycle"]:
                raise ConfigError(f"{key}: {path} has no variable 'params_analysis' over cycles (not a result file with parameters)")
            last = ds["params_analysis"].isel(cycle=-1)
            if last.size != n:  # checked before reading: the file may hold anything
                raise ConfigError(f"{key}: {path}: 'params_analysis' holds {last.size} values per cycle; the model has {n} parameters")
            p = last.values.astype(float)
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as error:
        raise ConfigError(f"{key}: {path}: not a readable result file ({_cut(error, 120)})") from None
    return _finite_vector(p, key)


# --- the output target --------------------------------------------------------------------------------

#: Where results never belong: kernel and device file systems.
_SYSTEM_TREES = ("/proc", "/sys", "/dev")
#: Characters the output name must leave for the names derived from it (checkpoints, temporaries).
_DERIVED_SUFFIX = len(".checkpoint") + len("..XXXXXXXX.tmp") + 2
_PATH_MAX = 4096  # Linux; checked before the file system is asked anything


def _check_path(text: str, what: str) -> tuple[Path, Path, str]:
    """``(path, absolute path, its short form)`` if ``text`` names a place to write at all."""
    if not text.strip():
        raise ConfigError(f"{what}: the path is empty")
    if "\0" in text:
        raise ConfigError(f"{what}: the path contains a NUL character")
    path = Path(text)
    absolute = Path(os.path.abspath(path))
    shown = shown_path(text)
    check_not_home_shorthand(text, what)
    if any(absolute == Path(tree) or Path(tree) in absolute.parents for tree in _SYSTEM_TREES):
        raise ConfigError(f"{what}: {shown} lies under {absolute.parts[0]}{absolute.parts[1]}, a system tree, not a place for results")
    return path, absolute, shown


def shown_path(text: str, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters from its start: the file name is the part the user recognises."""
    return text if len(text) <= limit else "..." + text[3 - limit:]


def check_not_home_shorthand(text: str, what: str) -> None:
    """Refuse a path that starts with ``~``: no shell expanded it, so it would name a directory ``~``
    in the working directory (which the NetCDF library, expanding it, would not write to)."""
    if Path(text).parts[:1] and Path(text).parts[0].startswith("~"):
        raise ConfigError(f"{what}: {shown_path(text)} starts with '~', which is not expanded here; give the path itself (e.g. {short(os.path.expanduser(text), 80)})")


def _writable_ancestor(absolute: Path, shown: str, what: str) -> Path:
    """The nearest existing ancestor of ``absolute``: it must be a writable directory."""
    directory = absolute.parent
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    if not directory.is_dir():
        raise ConfigError(f"{what}: cannot write {shown}: {directory} is not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError(f"{what}: cannot write {shown}: directory {directory} is not writable")
    return directory


def _same_file(a, b) -> bool:
    """Whether ``a`` and ``b`` both exist and are one file (a hard link included)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_directory(path: Path | str, what: str = "output") -> Path:
    """``path`` if figures can be written into it (it may not exist yet)."""
    try:
        return _check_directory(path, what)
    except OSError as error:
        raise ConfigError(f"{what}: {shown_path(os.fspath(path))}: {error.strerror}") from None


def _check_directory(path: Path | str, what: str) -> Path:
    path, absolute, shown = _check_path(os.fspath(path), what)
    if path.is_symlink() and not path.exists():
        raise ConfigError(f"{what}: {shown} is a dangling symbolic link")
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what}: {shown} exists and is not a directory")
    if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{what}: directory {shown} is not writable")
    _writable_ancestor(absolute, shown, what)
    return path


def check_output(path: Path | str, inputs=(), what: str = "output") -> Path:
    """``path`` if a result can be written there without harming anything; a
    :class:`ConfigError` saying why not otherwise.  Nothing is created."""
    try:
        return _check_output(path, inputs, what)
    except OSError as error:  # what the file system says about a path it cannot even look up
        raise ConfigError(f"{what}: {shown_path(os.fspath(path))}: {error.strerror}") from None


def _check_output(path: Path | str, inputs, what: str) -> Path:
    path, absolute, shown = _check_path(os.fspath(path), what)
    if absolute.suffix == ".checkpoint":
        raise ConfigError(f"{what}: {shown}: a result may not end in .checkpoint, the suffix of its checkpoint directory")
    if len(os.fsencode(absolute)) > _PATH_MAX - _DERIVED_SUFFIX:
        raise ConfigError(f"{what}: {shown}: the path is too long ({len(os.fsencode(absolute))} bytes)")
    directory = absolute.parent
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    name_max = os.pathconf(directory, "PC_NAME_MAX") if directory.is_dir() else 255
    path_max = os.pathconf(directory, "PC_PATH_MAX") if directory.is_dir() else 4096
    too_long = next((part for part in absolute.parts if len(part.encode()) > name_max), None)
    if too_long is not None or len(absolute.name.encode()) > name_max - _DERIVED_SUFFIX:
        raise ConfigError(f"{what}: {shown}: a file name is too long ({len((too_long or absolute.name).encode())} bytes; at most {name_max - _DERIVED_SUFFIX} here)")
    if len(os.fsencode(absolute)) > path_max - _DERIVED_SUFFIX:
        raise ConfigError(f"{what}: {shown}: the path is too long ({len(os.fsencode(absolute))} bytes)")
    if path.is_symlink() and not path.exists():
        raise ConfigError(f"{what}: {shown} is a dangling symbolic link (to {short(os.readlink(path), 80)})")
    if path.exists():
        if path.is_dir():
            raise ConfigError(f"{what}: {shown} is a directory; give a file name")
        if not path.is_file():
            raise ConfigError(f"{what}: {shown} exists and is not a regular file")
        if not os.access(path, os.W_OK):
            raise ConfigError(f"{what}: {shown} exists and is read-only")
    _writable_ancestor(absolute, shown, what)
    real = os.path.realpath(absolute)
    for source in inputs:
        if source is not None and (os.path.realpath(source) == real or _same_file(source, absolute)):
            raise ConfigError(f"{what}: {shown} is an input of this run ({os.fspath(source)[:80]}); it would be overwritten")
    checkpoint = absolute.with_name(absolute.stem + ".checkpoint")
    if checkpoint.exists() and not checkpoint.is_dir():
        raise ConfigError(f"{what}: {shown}: its checkpoint {checkpoint.name} exists and is not a directory")
    return path
