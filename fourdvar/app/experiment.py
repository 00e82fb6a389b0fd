"""The resolved configuration as frozen, typed objects.

:func:`experiment_of` turns the dict of :func:`~fourdvar.app.config.resolve_config`
into one :class:`Experiment`:

- :class:`Problem`, what is assimilated: the truth (its model, spin-up and model
  error), the forecast model, the observations (operator, network, noise ``R``,
  times or file) and the covariances ``B``, ``P`` and ``Q``;
- :class:`Method`, how: the windows and their shift, the control blocks, the
  solver options as one :class:`Solver` (outer and inner loops, tolerances,
  transform, preconditioner, posterior, QC), the cycling policies of ``B`` and
  ``P``, the quasi-static stages and the ensemble;
- the output, the diagnostics, the comparison runs and the sweep.

Every object is a frozen dataclass; each field is read from one key of the schema
(its name below the object's ``path``, or the ``key`` its metadata gives), and
:meth:`Settings.key` returns that dotted key for messages.  :meth:`Experiment.to_dict`
writes the fields back in the schema's order, so ``experiment_of(config).to_dict()
== config`` and the result file records the same text.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .config import FIT_KEYS, SCHEMA, ConfigError, comparison_config, load_config, resolve_config

__all__ = [
    "Experiment", "Problem", "Method", "Truth", "Observations", "StateCovariance", "ParamsCovariance",
    "ModelErrorCovariance", "Correlation", "Window", "Solver", "QC", "AdaptiveB", "ParamsPolicy", "Ensemble",
    "Output", "Diagnostics", "Gap", "Component", "ComparisonRun", "FrozenMap", "Settings", "experiment_of", "load_experiment",
]


class FrozenMap(Mapping):
    """A read-only mapping: the free-form part of a configuration (constructor keywords, overrides)."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping = ()):
        self._data = dict(data)

    def __getitem__(self, key):
        """The value of ``key``."""
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(tuple(self._data.items()))

    def __repr__(self) -> str:
        return f"FrozenMap({self._data!r})"

    def __reduce__(self):
        return FrozenMap, (self._data,)


def freeze(value):
    """``value`` with every list a tuple and every mapping a :class:`FrozenMap`, recursively."""
    if isinstance(value, Mapping):
        return FrozenMap({key: freeze(item) for key, item in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(item) for item in value)
    return value


def thaw(value):
    """The inverse of :func:`freeze`: plain lists and dicts, as the YAML schema has them."""
    if isinstance(value, (Component, ComparisonRun)):
        return value.as_dict()
    if isinstance(value, Mapping):
        return {key: thaw(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return [thaw(item) for item in value]
    return value


def setting(key: str | None = None, convert=None):
    """A field read from the dotted ``key`` below its object's path (default: the field's
    name); ``convert(value, path)`` builds it (default: :func:`freeze`).  A field without
    it is read at its name and frozen."""
    return field(metadata={"key": key, "convert": convert})


def section(cls, key: str | None = None):
    """A field holding the settings object ``cls`` built at ``key`` (``""``: the same level)."""
    return field(metadata={"key": key, "section": cls})


def _join(path: str, key: str) -> str:
    return ".".join(part for part in (path, key) if part)


def _values(cls) -> list:
    """The fields of a settings class that hold configuration values (all but ``path``), each
    with its key below the object's path."""
    return [(spec, spec.name if spec.metadata.get("key") is None else spec.metadata["key"])
            for spec in fields(cls) if spec.name != "path"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """A frozen group of configuration values; ``path``: its YAML key (``""``: the top level)."""

    path: str = field(default="", repr=False, compare=False)

    def key(self, name: str) -> str:
        """The dotted YAML key of field ``name``, e.g. ``background.state.error_std``."""
        return _join(self.path, next(key for spec, key in _values(self) if spec.name == name))


def _build(cls, config: dict, path: str):
    """The settings object ``cls`` of the resolved ``config`` at ``path``, its sections built in turn."""
    values = {}
    for spec, key in _values(cls):
        where = _join(path, key)
        if spec.metadata.get("section") is not None:
            values[spec.name] = _build(spec.metadata["section"], config, where)
        else:
            convert = spec.metadata.get("convert") or (lambda value, _: freeze(value))
            values[spec.name] = convert(_lookup(config, where), where)
    return cls(path=path, **values)


def _lookup(config: dict, key: str):
    """The value at the dotted ``key``; a :class:`ConfigError` naming it when it is absent."""
    node = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"{key}: missing key (not a resolved configuration)")
        node = node[part]
    return node


def _flatten(settings: Settings, out: dict) -> dict:
    """``{dotted key: plain value}`` of every field of ``settings`` and its sections."""
    for spec, key in _values(settings):
        value = getattr(settings, spec.name)
        if spec.metadata.get("section") is not None:
            _flatten(value, out)
        else:
            out[_join(settings.path, key)] = thaw(value)
    return out


def _nest(schema: dict, flat: dict, prefix: str = "") -> dict:
    """The flat values as the nested dict of the schema, in the schema's order."""
    return {key: _nest(entry, flat, f"{prefix}{key}.") if isinstance(entry, dict) else flat.pop(f"{prefix}{key}")
            for key, entry in schema.items()}


# --- free-form parts: components and comparison runs -----------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Component(Settings):
    """A model or an observation operator: ``type`` (registry name or ``module:Class``) and
    its constructor keywords, checked when it is built; a model may add ``params`` or ``params_from``."""

    spec: FrozenMap

    @classmethod
    def of(cls, value, path: str) -> "Component":
        """The component of the mapping ``value`` given at the YAML key ``path``."""
        return cls(path=path, spec=freeze(value))

    @property
    def type(self) -> str:
        """The registry name or ``module:Class``."""
        return self.spec["type"]

    def has(self, key: str) -> bool:
        """Whether the mapping gives ``key``."""
        return key in self.spec

    def get(self, key: str, default=None):
        """The plain value of ``key`` (``default`` when absent)."""
        return thaw(self.spec[key]) if key in self.spec else default

    def options(self) -> dict:
        """The constructor's mapping: ``type`` and its keywords, without ``params``/``params_from``."""
        return {key: thaw(value) for key, value in self.spec.items() if key not in ("params", "params_from")}

    def as_dict(self) -> dict:
        """The mapping as the YAML gives it."""
        return thaw(self.spec)


def _components(value, path: str):
    """One :class:`Component`, or a tuple of them used in turn (the form the YAML gives)."""
    if isinstance(value, list):
        return tuple(Component.of(item, f"{path}[{i}]" if len(value) > 1 else path) for i, item in enumerate(value))
    return Component.of(value, path)


@dataclass(frozen=True, slots=True, kw_only=True)
class ComparisonRun(Settings):
    """One entry of ``compare:``: its ``name``, the keys it overrides and its offline fit."""

    spec: FrozenMap

    @property
    def name(self) -> str:
        """The run's name (its result variables end in ``_<name>``)."""
        return self.spec["name"]

    @property
    def fit_correction(self) -> dict | None:
        """The options of the offline fit of the model's correction (defaults filled in), or ``None``."""
        return {**FIT_KEYS, **thaw(self.spec["fit_correction"])} if "fit_correction" in self.spec else None

    @property
    def params_from(self):
        """``model.params_from`` of the entry, or ``None``."""
        model = self.spec.get("model")
        return model.get("params_from") if isinstance(model, Mapping) else None

    def as_dict(self) -> dict:
        """The entry as the YAML gives it."""
        return thaw(self.spec)


def _comparisons(value, path: str) -> tuple:
    return tuple(ComparisonRun(path=f"{path}[{i}]", spec=freeze(entry)) for i, entry in enumerate(value))


# --- the problem -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Truth(Settings):
    """The truth run: its model, parameters, spin-up and stochastic model error."""

    model: Component = setting(convert=Component.of)
    params: Any
    spinup_steps: int
    initial_mean: float
    initial_std: float
    state_slice: tuple | None
    substeps: int
    model_error_std: float
    model_error_every: int | None

    @property
    def state_part(self) -> slice:
        """The part of the truth state the forecast model represents."""
        return slice(*self.state_slice) if self.state_slice else slice(None)


@dataclass(frozen=True, slots=True, kw_only=True)
class Observations(Settings):
    """Generated observations (``every``, ``offset``, ``operator``, ``R = error_std^2 I``) or a ``file``."""

    file: str | None
    nearest_step: bool
    every: int
    offset: int
    operator: Any = setting(convert=_components)
    error_std: float
    climatology_every: int | None

    @property
    def operators(self) -> tuple:
        """The operators used in turn at successive observation times."""
        return self.operator if isinstance(self.operator, tuple) else (self.operator,)


@dataclass(frozen=True, slots=True, kw_only=True)
class Correlation(Settings):
    """``gaussian`` or ``soar`` correlation on the periodic grid (``type`` ``None``: diagonal)."""

    type: str | None
    length_scale: float


@dataclass(frozen=True, slots=True, kw_only=True)
class StateCovariance(Settings):
    """``B``: the state's background error std, its layers and correlation, and the first background."""

    error_std: float
    layer_scale: Any
    correlation: Correlation = section(Correlation)
    vertical: tuple | None = setting("correlation.vertical")
    initial: str
    initial_std: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ParamsCovariance(Settings):
    """``P``: the parameters' background error std (scalar or one per parameter) and their names."""

    error_std: Any
    names: tuple | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelErrorCovariance(Settings):
    """``Q``: the std of each sub-window forcing ``eta_j``, its correlation and the sub-window length."""

    every: int | None
    error_std: float
    correlation: Correlation = section(Correlation)


@dataclass(frozen=True, slots=True, kw_only=True)
class Problem(Settings):
    """What is assimilated: truth, forecast model, observations and the covariances B, P, R, Q."""

    seed: int
    model: Component = setting(convert=Component.of)
    truth: Truth = section(Truth)
    observations: Observations = section(Observations)
    B: StateCovariance = section(StateCovariance, "background.state")
    P: ParamsCovariance = section(ParamsCovariance, "background.params")
    Q: ModelErrorCovariance = section(ModelErrorCovariance, "model_error")

    @property
    def R_std(self) -> float:
        """The observation error std of generated observations (``R = R_std^2 I``)."""
        return self.observations.error_std


# --- the method --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Window(Settings):
    """``cycles`` windows of ``steps`` steps, ``shift`` steps apart (``None``: end to end)."""

    steps: int
    cycles: int
    shift: int | None
    observations_at_end: bool

    @property
    def stride(self) -> int:
        """Steps from one window's start to the next."""
        return self.shift or self.steps

    @property
    def span(self) -> int:
        """Steps from the first window's start to the last one's end."""
        return (self.cycles - 1) * self.stride + self.steps


@dataclass(frozen=True, slots=True, kw_only=True)
class QC(Settings):
    """Quality control: background check, analysis check and Huber norm (``None``: off)."""

    background_check: float | None
    analysis_check: float | None
    huber: float | None

    def quality_control(self):
        """The engine's :class:`~fourdvar.qc.QualityControl` of these settings."""
        from ..qc import QualityControl

        return QualityControl(background_check=self.background_check, analysis_check=self.analysis_check, huber=self.huber)


@dataclass(frozen=True, slots=True, kw_only=True)
class Solver(Settings):
    """The options of one window's solve: outer and inner loops, tolerances, transform,
    preconditioner, posterior and QC."""

    outer_loops: int
    tolerance: float
    method: str = setting("inner.method")
    max_iterations: int = setting("inner.max_iterations")
    gradient_reduction: float = setting("inner.gradient_reduction")
    transform: bool
    backtracking: bool
    preconditioner: str | None
    posterior_rank: int | None
    posterior_accuracy: float | None
    qc: QC = section(QC)

    def options(self) -> dict:
        """The keywords of :meth:`fourdvar.FourDVar.solve`: the one place that maps
        ``assimilation:`` keys to solver options."""
        accuracy = {} if self.posterior_accuracy is None else {"posterior_accuracy": self.posterior_accuracy}
        return {
            "outer_loops": self.outer_loops, "method": self.method, "max_iterations": self.max_iterations,
            "gradient_reduction": self.gradient_reduction, "transform": self.transform, "backtracking": self.backtracking,
            "tolerance": self.tolerance, "preconditioner": self.preconditioner, "posterior_rank": self.posterior_rank,
            "qc": self.qc.quality_control(), "posterior_method": "none" if self.posterior_accuracy is None else "auto", **accuracy,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class AdaptiveB(Settings):
    """The cycling policy of B: re-estimated from the innovations at each window start, or fixed."""

    adaptive: bool
    min_std: float = setting("adaptive_min_std")
    max_std: float = setting("adaptive_max_std")
    weight: float = setting("adaptive_weight")


@dataclass(frozen=True, slots=True, kw_only=True)
class ParamsPolicy(Settings):
    """The cycling policy of P: ``schedule`` (``max(std decay^c, floor)``) or ``posterior`` (+ ``q_c^2 I``,
    ``q_c = max(noise_std noise_decay^c, noise_floor)``)."""

    update: str
    decay: float
    floor: float
    noise_std: float
    noise_decay: float
    noise_floor: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Ensemble(Settings):
    """The ensemble of data assimilations (``members`` 0: none) and the hybrid B it gives."""

    members: int
    perturb: tuple
    hybrid_weight: float
    localization: float
    inflation: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Method(Settings):
    """How it is assimilated: windows, control blocks, solver, cycling policies, stages, ensemble."""

    window: Window = section(Window)
    control: tuple = setting("assimilation.control")
    solver: Solver = section(Solver, "assimilation")
    quasi_static_steps: int | None = setting("assimilation.quasi_static_steps")
    cost_spike: float | None = setting("assimilation.cost_spike")
    max_cost_per_obs: float | None = setting("assimilation.max_cost_per_obs")
    B_policy: AdaptiveB = section(AdaptiveB, "background.state")
    P_policy: ParamsPolicy = section(ParamsPolicy, "background.params")
    ensemble: Ensemble = section(Ensemble)

    @property
    def qc(self) -> QC:
        """The quality control, part of the solver options."""
        return self.solver.qc


# --- output, diagnostics and the experiment ----------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Output(Settings):
    """The result file and whether a checkpoint is written after every window."""

    file: str
    checkpoint: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Diagnostics(Settings):
    """The headline's burn-in and the forecast-skill measurement."""

    burn_in_cycles: int
    forecast_skill: bool
    lyapunov_time: float
    skill_threshold: float
    forecast_lyapunov_times: float
    forecast_starts: int
    forecast_spacing: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Gap(Settings):
    """The comparison runs whose analysis-RMSE gap the experiment closes (both ``None``: none)."""

    baseline: str | None
    reference: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Experiment(Settings):
    """One resolved configuration: :class:`Problem`, :class:`Method`, output, diagnostics,
    comparison runs and sweep."""

    title: str
    problem: Problem = section(Problem, "")
    method: Method = section(Method, "")
    output: Output = section(Output)
    diagnostics: Diagnostics = section(Diagnostics)
    compare: tuple = setting(convert=_comparisons)
    gap: Gap = section(Gap)
    sweep: FrozenMap

    def to_dict(self) -> dict:
        """The resolved configuration: the dict :func:`experiment_of` was built from, key for
        key and in the schema's order (a result file stores it as YAML)."""
        flat = _flatten(self, {})
        nested = _nest(SCHEMA, flat)
        if flat:  # a field outside the schema: a bug in the classes above
            raise KeyError(f"not in the schema: {', '.join(flat)}")
        return nested

    def with_keys(self, settings: Mapping[str, Any]) -> "Experiment":
        """The experiment with the dotted keys ``settings`` set (``{"window.cycles": 4}``),
        validated whole again (a :class:`ConfigError` names the key)."""
        config = self.to_dict()
        for key, value in settings.items():
            *parents, last = key.split(".")
            node = config
            for part in parents:
                node = node[part]
            node[last] = value
        return experiment_of(resolve_config(config))

    def with_output(self, file: str) -> "Experiment":
        """The experiment writing its result to ``file`` (``output.file``)."""
        return dataclasses.replace(self, output=dataclasses.replace(self.output, file=file))

    def comparison(self, run: ComparisonRun) -> "Experiment":
        """The experiment of comparison run ``run``: its model and overridden keys on this one."""
        return experiment_of(comparison_config(self.to_dict(), run.as_dict()))

    def declared_inputs(self) -> list[str]:
        """The files the configuration reads, as given: observation file and ``params_from``s."""
        files = [self.problem.observations.file, self.problem.model.get("params_from")]
        files += [run.params_from for run in self.compare]
        return [name for name in files if isinstance(name, str) and name]


def experiment_of(config: dict | Experiment) -> Experiment:
    """The typed objects of a resolved configuration (:func:`~fourdvar.app.config.resolve_config`)."""
    if isinstance(config, Experiment):
        return config
    return _build(Experiment, config, "")


def load_experiment(path) -> Experiment:
    """Read, validate and resolve a YAML experiment file into its typed objects; raises
    :class:`~fourdvar.app.config.ConfigError`."""
    return experiment_of(load_config(path))
