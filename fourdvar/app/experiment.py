"""A cycled 4D-Var experiment built from a resolved configuration (:mod:`fourdvar.config`).

:class:`Experiment` turns the configuration into objects, through the registry
and the engine's public API only: the forecast model, the truth run and its
observations (or an observation file), the backgrounds and covariances.  Its
:meth:`Experiment.run` cycles the windows, checkpointing after each one, and
returns the result as an :class:`xarray.Dataset` (:mod:`fourdvar.results`).

Every random draw comes from a stream derived from ``seed`` and its purpose, so
the same configuration and seed give the same numbers, and a resumed run the
same numbers as an uninterrupted one.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Callable

import numpy as np
import xarray as xr

from .config import ConfigError, comparison_config
from ..covariances import Diagonal, PeriodicCorrelation
from ..cycling import cycle
from .diagnostics import forecast_skill
from .fitting import fit_tendency
from ..registry import RegistryError, build_model, build_operator, observation_set_class
from .results import ResultRecorder
from ..window import DivergenceError, forecast

__all__ = ["Experiment", "build_component"]

# independent random streams, one per purpose
_TRUTH_STATE, _TRUTH_PARAMS, _OBSERVATIONS, _BACKGROUND, _MODEL_PARAMS = range(5)


def build_component(spec: dict, path: str, builder=build_model, **extra):
    """Build a model/operator from its mapping; any failure becomes a :class:`ConfigError` at ``path``."""
    options = {key: value for key, value in spec.items() if key not in ("params", "params_from")}
    try:
        return builder({**options, **extra})
    except RegistryError as error:
        raise ConfigError(f"{path}.type: {error}") from None
    except TypeError as error:
        raise ConfigError(f"{path}: {error}") from None
    except ValueError as error:
        raise ConfigError(f"{path}: {error}") from None


class Experiment:
    """Everything one configuration describes, built and checked before any long computation."""

    def __init__(self, config: dict, base_dir: str | Path = ".", shared: "Experiment | None" = None):
        """``shared``: an experiment whose truth run and observations this one reuses
        (a comparison run on the same data)."""
        self.config = config
        self.base_dir = Path(base_dir)
        self.seed = config["seed"]
        self.n_steps = config["window"]["steps"]
        self.n_cycles = config["window"]["cycles"]
        self.model = build_component(config["model"], "model")
        self.control = config["assimilation"]["control"]
        if "params" in self.control and self.model.n_params == 0:
            raise ConfigError(f"assimilation.control: 'params' is in the control but the model {self.model!r} has no parameters")
        self.pb0 = self._initial_params()
        self.from_file = config["observations"]["file"] is not None
        self.forecast_steps = self._forecast_steps()
        if shared is not None:
            self.truth, self.observations = shared.truth, shared.observations
        else:
            self.truth = None if self.from_file else self._truth_run()
            self.observations = self._read_observations() if self.from_file else self._generate_observations()
        self.B0 = self._state_covariance(config["background"]["state"]["error_std"])
        self.P0 = self._params_covariance() if self.model.n_params else None
        self.xb0 = self._initial_background()

    # --- building -------------------------------------------------------------------------

    def rng(self, purpose: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, purpose])

    def path(self, name: str) -> Path:
        path = Path(name)
        return path if path.is_absolute() else self.base_dir / path

    def _initial_params(self) -> np.ndarray:
        spec = self.config["model"]
        n = self.model.n_params
        if "params" in spec and "params_from" in spec:
            raise ConfigError("model: give either 'params' or 'params_from', not both")
        if "params_from" in spec:
            p = _params_from_result(self.path(spec["params_from"]), "model.params_from")
        elif "params" in spec:
            p = np.atleast_1d(np.asarray(spec["params"], dtype=float))
        else:
            return self.model.init_params(self.rng(_MODEL_PARAMS))
        if p.shape != (n,):
            raise ConfigError(f"model.params: the model has {n} parameters, got {p.size}")
        return p

    def _truth_run(self) -> dict:
        spec = self.config["truth"]
        model = build_component(spec["model"], "truth.model")
        if spec["params"] is not None:
            params = np.atleast_1d(np.asarray(spec["params"], dtype=float))
            if params.shape != (model.n_params,):
                raise ConfigError(f"truth.params: the truth model has {model.n_params} parameters, got {params.size}")
        else:
            params = model.init_params(self.rng(_TRUTH_PARAMS))
        state_slice = slice(*spec["state_slice"]) if spec["state_slice"] else slice(None)
        n_represented = len(range(model.n_state)[state_slice])
        if n_represented != self.model.n_state:
            raise ConfigError(
                f"truth.model: its state ({model.n_state} values, {n_represented} after truth.state_slice) "
                f"does not match the forecast model's n_state = {self.model.n_state}"
            )
        rng = self.rng(_TRUTH_STATE)
        x = spec["initial_mean"] + spec["initial_std"] * rng.standard_normal(model.n_state)
        substeps = spec["substeps"]
        try:
            x = forecast(model, x, params, spec["spinup_steps"] * substeps, context="truth spin-up")[-1]
            # the forecasts of the skill diagnostics run past the last window
            full = forecast(model, x, params, (self.n_cycles * self.n_steps + self.forecast_steps) * substeps, context="truth run")[::substeps]
        except DivergenceError as error:
            raise ConfigError(f"truth: {error}") from None
        same_model = spec["model"].get("type") == self.config["model"].get("type") and model.n_params == self.model.n_params
        return {
            "model": model, "params": params if same_model else None, "trajectory": full[:, state_slice],
            "state_slice": state_slice, "last_full_state": full[-1], "model_params": params,
        }

    def _forecast_steps(self) -> int:
        diagnostics = self.config["diagnostics"]
        if not diagnostics["forecast_skill"]:
            return 0
        if self.from_file:
            raise ConfigError("diagnostics.forecast_skill: needs a truth run, but the observations come from a file")
        dt = getattr(self.model, "dt", None)
        if dt is None:
            raise ConfigError(f"diagnostics.forecast_skill: the model {self.model!r} has no time step 'dt' to convert steps to Lyapunov times")
        return int(np.ceil(diagnostics["forecast_lyapunov_times"] * diagnostics["lyapunov_time"] / dt))

    def _operator_specs(self) -> list[dict]:
        specs = self.config["observations"]["operator"]
        return specs if isinstance(specs, list) else [specs]

    def _generate_observations(self):
        obs_config = self.config["observations"]
        n = self.model.n_state
        specs = self._operator_specs()
        operators = [
            build_component(spec, "observations.operator" + (f"[{i}]" if len(specs) > 1 else ""), build_operator, n_state=n)
            for i, spec in enumerate(specs)
        ]
        last = self.n_cycles * self.n_steps + (1 if self.config["window"]["observations_at_end"] else 0)
        steps = list(range(obs_config["offset"], last, obs_config["every"]))
        position = {step: i for i, step in enumerate(steps)}
        return observation_set_class().synthetic(
            self.truth["trajectory"], steps, lambda step: operators[position[step] % len(operators)],
            obs_config["error_std"], self.rng(_OBSERVATIONS),
        )

    def _read_observations(self):
        path = self.path(self.config["observations"]["file"])
        try:
            observations = observation_set_class().from_netcdf(path, n_state=self.model.n_state)
        except FileNotFoundError:
            raise ConfigError(f"observations.file: {path}: no such file") from None
        except (ValueError, OSError) as error:
            raise ConfigError(f"observations.file: {error}") from None
        last = self.n_cycles * self.n_steps
        if len(observations) and observations.steps[-1] >= last:
            raise ConfigError(f"observations.file: {path}: step {observations.steps[-1]} lies beyond the {self.n_cycles} windows of {self.n_steps} steps")
        return observations

    def _state_covariance(self, std):
        correlation = self.config["background"]["state"]["correlation"]
        n = self.model.n_state
        if correlation["type"] is None:
            return Diagonal(std, size=n)
        try:
            return PeriodicCorrelation(n, correlation["length_scale"], std=std, shape=correlation["type"])
        except ValueError as error:
            raise ConfigError(f"background.state.correlation: {error}") from None

    def _params_covariance(self):
        std = np.asarray(self.config["background"]["params"]["error_std"], dtype=float)
        n = self.model.n_params
        if std.ndim == 1 and std.shape != (n,):
            raise ConfigError(f"background.params.error_std: the model has {n} parameters, got {std.size} values")
        return Diagonal(np.broadcast_to(std, (n,)).copy())

    def _initial_background(self) -> np.ndarray:
        choice = self.config["background"]["state"]["initial"]
        if choice == "free_run":
            return self._free_run()
        if self.truth is None:
            raise ConfigError(
                f"background.state.initial: '{choice}' needs a truth run, but the observations come from a file "
                "(observations.file); use 'free_run'"
            )
        truth = self.truth["trajectory"]
        if choice == "truth_mean":
            return np.full(self.model.n_state, truth[: self.n_cycles * self.n_steps + 1].mean())
        return truth[0] + self.B0.sample(self.rng(_BACKGROUND))

    def _free_run(self) -> np.ndarray:
        """A state of the forecast model's own climate: a spun-up run from a random state."""
        spec = self.config["truth"]
        rng = self.rng(_BACKGROUND)
        x = spec["initial_mean"] + spec["initial_std"] * rng.standard_normal(self.model.n_state)
        try:
            return forecast(self.model, x, self.pb0, spec["spinup_steps"], context="background free run")[-1]
        except DivergenceError as error:
            raise ConfigError(f"background.state.initial: {error}") from None

    # --- policies ---------------------------------------------------------------------------------

    def params_policy(self, c: int, P):
        config = self.config["background"]["params"]
        std0 = np.broadcast_to(np.asarray(config["error_std"], dtype=float), (self.model.n_params,))
        return P.with_std(np.maximum(std0 * config["decay"] ** c, config["floor"]) if config["floor"] > 0 else std0 * config["decay"] ** c)

    def background_policy(self, c: int, xb: np.ndarray, pb: np.ndarray, slots, B):
        """Adaptive B: the error variance from the innovations at the window's first
        observed step, ``sigma_b^2 = mean(d^2) - mean(sigma_o^2)``, blended with the
        previous variance with weight ``adaptive_weight`` and clipped to the bounds."""
        state = self.config["background"]["state"]
        if not state["adaptive"] or not len(slots):
            return B
        first = min(slots, key=lambda slot: slot.step)
        x_first = forecast(self.model, xb, pb, first.step, context=f"cycle {c}, adaptive B")[-1]
        d = first.values - first.operator.apply(x_first)
        estimate = max(float(np.mean(d**2) - np.mean(first.covariance.std**2)), 0.0)
        weight = state["adaptive_weight"] if c > 0 else 1.0
        variance = weight * estimate + (1 - weight) * float(np.mean(B.std)) ** 2
        std = float(np.clip(np.sqrt(variance), state["adaptive_min_std"], state["adaptive_max_std"]))
        return B.with_std(std)

    # --- running ------------------------------------------------------------------------------------

    def windows(self, start_cycle: int):
        at_end = self.config["window"]["observations_at_end"]
        for c in range(start_cycle, self.n_cycles):
            slots = self.observations.window(c * self.n_steps, self.n_steps, include_end=at_end)
            yield type(slots)(slot for slot in slots if slot.step > 0) if at_end else slots

    def run(
        self,
        checkpoint: Callable[[xr.Dataset], None] | None = None,
        resume_from: xr.Dataset | None = None,
        progress: Callable[[int, int, object, ResultRecorder], None] | None = None,
        progress_message: Callable[[str], None] | None = None,
    ) -> xr.Dataset:
        """Cycle all windows; ``checkpoint(dataset)`` after each; continue ``resume_from`` if given."""
        recorder = ResultRecorder(self)
        xb, pb, B = self.xb0, self.pb0, self.B0
        start = 0
        posterior = self.config["background"]["params"]["update"] == "posterior" and "params" in self.control
        P = self.P0
        if resume_from is not None:
            start, xb, pb = recorder.restore(resume_from)
            if self.config["background"]["state"]["adaptive"]:  # the adaptive policy builds on the last window's B
                B = self.B0.with_std(recorder.rows[-1]["background_std"])
            if posterior:  # the propagated P of the next window
                P = recorder.P_next
        inner = self.config["assimilation"]["inner"]
        cycles = cycle(
            self.model, self.windows(start), xb, B, pb, P, control=self.control, n_steps=self.n_steps,
            start_cycle=start, background_policy=self.background_policy,
            params_policy=None if posterior else self.params_policy,
            params_noise_std=self.config["background"]["params"]["noise_std"] if posterior else None,
            outer_loops=self.config["assimilation"]["outer_loops"], method=inner["method"],
            max_iterations=inner["max_iterations"], gradient_reduction=inner["gradient_reduction"],
            transform=self.config["assimilation"]["transform"], backtracking=self.config["assimilation"]["backtracking"],
            tolerance=self.config["assimilation"]["tolerance"], preconditioner=self.config["assimilation"]["preconditioner"],
            posterior_rank=self.config["assimilation"]["posterior_rank"],
            quasi_static_steps=self.config["assimilation"]["quasi_static_steps"],
            max_cost_per_obs=self.config["assimilation"]["max_cost_per_obs"],
        )
        started = time.perf_counter()
        for outcome in cycles:
            recorder.add(outcome)
            if checkpoint is not None:
                checkpoint(recorder.dataset(complete=False))
            if progress is not None:
                progress(outcome.cycle, self.n_cycles, outcome, recorder)
        dataset = recorder.dataset(complete=True)
        self._add_diagnostics(dataset, progress_message)
        dataset.attrs["run_seconds"] = round(time.perf_counter() - started, 3)
        return dataset

    # --- diagnostics: comparison runs, forecast skill, headline numbers -------------------------------

    def _add_diagnostics(self, dataset: xr.Dataset, message: Callable[[str], None] | None) -> None:
        half = slice(self.n_cycles // 2, None)
        headline = {}
        if "rmse_analysis" in dataset:
            headline["rmse_analysis_last_half"] = float(dataset["rmse_analysis"].values[half].mean())
            burn_in = slice(self.config["diagnostics"]["burn_in_cycles"], None)
            headline["rmse_filter_after_burn_in"] = float(dataset["rmse_filter"].values[burn_in].mean())
        if "chi2" in dataset:
            headline["chi2_mean"] = float(np.nanmean(dataset["chi2"].values))
            for key in ("desroziers_obs_std", "desroziers_background_std"):
                headline[f"{key}_mean"] = float(np.sqrt(np.nanmean(dataset[key].values ** 2)))
        if self.forecast_steps:
            headline.update(self._skill_headlines(self, dataset, ""))
        if "J_rejected" in dataset:
            headline["windows_rejected"] = int(np.isfinite(dataset["J_rejected"].values).sum())
        for entry in self.config["compare"]:
            if message:
                message(f"comparison run '{entry['name']}'")
            other = Experiment(comparison_config(self.config, entry), base_dir=self.base_dir, shared=self)
            name = entry["name"]
            if "fit_correction" in entry:
                other.pb0, dataset.attrs[f"fit_loss_{name}"] = self._fit_correction(other.model, other.pb0, entry["fit_correction"], name)
            result = other.run()
            for key in ("rmse_analysis", "rmse_background", "J_final"):
                if key in result:
                    dataset[f"{key}_{name}"] = (("cycle",), result[key].values, {**result[key].attrs, "long_name": f"{result[key].attrs['long_name']} ({name})"})
            if "rmse_analysis" in result:
                headline[f"rmse_analysis_last_half_{name}"] = float(result["rmse_analysis"].values[half].mean())
            if self.forecast_steps:
                headline.update(self._skill_headlines(other, result, f"_{name}"))
            dataset.attrs[f"model_{name}"] = repr(other.model)
        gap = self.config["gap"]
        if gap["baseline"] is not None and "rmse_analysis_last_half" in headline:
            baseline = headline[f"rmse_analysis_last_half_{gap['baseline']}"]
            reference = headline[f"rmse_analysis_last_half_{gap['reference']}"]
            headline["gap_closed"] = (baseline - headline["rmse_analysis_last_half"]) / (baseline - reference)
        for key, value in headline.items():
            dataset.attrs[f"headline_{key}"] = round(value, 6)

    def _fit_correction(self, model, p0: np.ndarray, options: dict, name: str) -> tuple[np.ndarray, float]:
        """Fit ``model.correction``'s tendency offline to the truth's unresolved tendency
        on a stretch of truth after the experiment; returns the full parameter vector
        and the final loss."""
        from .config import FIT_KEYS

        options = {**FIT_KEYS, **options}
        truth = self.truth
        if self.truth is None or not hasattr(truth["model"], "unresolved_tendency"):
            raise ConfigError(f"compare[{name}].fit_correction: the truth model has no 'unresolved_tendency' to fit to")
        correction = getattr(model, "correction", None)
        if correction is None or not hasattr(correction, "tendency"):
            raise ConfigError(f"compare[{name}].fit_correction: the model has no 'correction' with a 'tendency' (use a hybrid with a local_mlp)")
        substeps = self.config["truth"]["substeps"]
        full = forecast(truth["model"], truth["last_full_state"], truth["model_params"], options["samples"] * options["spacing"] * substeps)
        samples = full[:: options["spacing"] * substeps][1:]
        states = samples[:, truth["state_slice"]]
        targets = np.array([truth["model"].unresolved_tendency(x) for x in samples])
        n_phys = model.n_params - correction.n_params
        p_corr, loss = fit_tendency(correction.tendency, states, targets, p0[n_phys:], options["max_iterations"])
        return np.concatenate([p0[:n_phys], p_corr]), loss

    def _skill_headlines(self, experiment: "Experiment", dataset: xr.Dataset, suffix: str) -> dict:
        """Skill in Lyapunov times from truth states (final parameters) and from the analyses."""
        diagnostics = self.config["diagnostics"]
        truth, n = self.truth, self.forecast_steps
        sigma = float(truth["trajectory"][: self.n_cycles * self.n_steps + 1].std())
        options = dict(dt=experiment.model.dt, sigma_clim=sigma, lyapunov_time=diagnostics["lyapunov_time"], threshold=diagnostics["skill_threshold"])
        final_params = dataset["params_analysis"].values[-1] if "params_analysis" in dataset else experiment.pb0
        independent = self.independent_truth
        starts = range(0, diagnostics["forecast_starts"] * diagnostics["forecast_spacing"], diagnostics["forecast_spacing"])
        from_truth = forecast_skill(
            experiment.model, [independent[s] for s in starts], [final_params] * len(starts),
            [independent[s : s + n + 1] for s in starts], **options,
        )
        cycles = range(self.n_cycles // 2, self.n_cycles)
        L = self.n_steps
        params = [dataset["params_analysis"].values[c] if "params_analysis" in dataset else experiment.pb0 for c in cycles]
        from_analyses = forecast_skill(
            experiment.model, [dataset["analysis"].values[c, 0] for c in cycles], params,
            [truth["trajectory"][c * L : c * L + n + 1] for c in cycles], **options,
        )
        return {f"skill_from_truth{suffix}": from_truth.lyapunov_times, f"skill_from_analyses{suffix}": from_analyses.lyapunov_times}

    @functools.cached_property
    def independent_truth(self) -> np.ndarray:
        """A stretch of truth after everything the experiment saw, for skill from truth states."""
        diagnostics = self.config["diagnostics"]
        length = diagnostics["forecast_starts"] * diagnostics["forecast_spacing"] + self.forecast_steps
        truth, substeps = self.truth, self.config["truth"]["substeps"]
        full = forecast(truth["model"], truth["last_full_state"], truth["model_params"], length * substeps)[::substeps]
        return full[:, truth["state_slice"]]


def _params_from_result(path: Path, key: str) -> np.ndarray:
    """The analysed parameters of the last cycle of a result file."""
    try:
        with xr.open_dataset(path, engine="netcdf4") as ds:
            if "params_analysis" not in ds:
                raise ConfigError(f"{key}: {path} has no variable 'params_analysis' (not a result file with parameters)")
            return ds["params_analysis"].isel(cycle=-1).values.astype(float)
    except FileNotFoundError:
        raise ConfigError(f"{key}: {path}: no such file") from None
    except OSError as error:
        raise ConfigError(f"{key}: {path}: cannot read ({error})") from None

