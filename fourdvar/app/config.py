"""Experiment configuration: the YAML schema, its defaults and its validation.

:func:`load_config` reads a YAML file and returns the *resolved* configuration: a
plain dict with every default filled in, which is what a result file records.
Every problem is a :class:`ConfigError` naming the file, the key path, what was
expected and what was found; an unknown key suggests the nearest valid one.

The schema below is the single source of the keys, their defaults and their
documentation (``configs/README.md`` is checked against it by the tests).
Model and operator mappings are free-form here (``type`` plus the class's
constructor keywords); they are checked when the objects are built.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
import reprlib

import yaml

__all__ = ["ConfigError", "Field", "SCHEMA", "load_config", "resolve_config", "schema_keys"]


class ConfigError(ValueError):
    """A configuration problem; ``str()`` is the one line the command line prints."""


def short(value, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters: a message never prints a huge value in full."""
    text = reprlib_repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def reprlib_repr(value) -> str:
    """A repr that stops early on deep or long containers (an alias bomb included)."""
    limits = reprlib.Repr()
    limits.maxlevel, limits.maxlist, limits.maxdict, limits.maxstring, limits.maxother = 3, 8, 8, 80, 80
    return limits.repr(value)


# --- YAML ---------------------------------------------------------------------------------------

#: The most nodes a configuration may expand to once its aliases are followed.
MAX_NODES = 100_000

#: YAML 1.2 floats: ``1e6``, ``1.0e6`` and ``-1E-3`` are numbers (YAML 1.1 wants a sign and a dot).
_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.VERBOSE,
)


class StrictLoader(yaml.SafeLoader):
    """Safe YAML that refuses duplicate keys and reads YAML 1.2 floats."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:  # an unhashable key: PyYAML reports it
                continue
            if first is not key_node:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {short(key)} (first at line {first.start_mark.line + 1})", key_node.start_mark
                )
        return super().construct_mapping(node, deep=deep)


StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:float"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def _expanded_size(node, sizes: dict) -> int:
    """Nodes in ``node`` with every alias followed (shared nodes counted once per use)."""
    if id(node) in sizes:
        return sizes[id(node)]
    sizes[id(node)] = 1  # a cycle counts once; PyYAML refuses recursive aliases anyway
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(child, sizes) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(key, sizes) + _expanded_size(value, sizes) for key, value in node.value)
    else:
        size = 1
    sizes[id(node)] = size
    return size


def parse_yaml(text: str):
    """Parse one YAML document with :class:`StrictLoader`; an alias bomb is refused
    before anything is built from it."""
    loader = StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node, {})
        if size > MAX_NODES:
            raise ConfigError(f"the document expands to {size:.3g} nodes once its aliases are followed (at most {MAX_NODES})")
        return loader.construct_document(node)
    finally:
        loader.dispose()


REQUIRED = object()


@dataclass(frozen=True)
class Field:
    """One key of the schema: its kind, default, documentation and check.

    ``kind`` is one of ``int``, ``float``, ``bool``, ``str``, ``number_or_list``,
    ``component``, ``components``, ``str_list`` and ``any``; ``check(value)`` returns
    ``None`` or what is wrong; ``choices`` lists the allowed values; ``nullable`` allows
    ``null``.  :func:`schema_markdown` documents every field.
    """

    kind: str  # int, float, bool, str, number_or_list, component, components, str_list, any
    default: Any
    doc: str
    check: Callable[[Any], str | None] | None = None
    choices: tuple | None = None
    nullable: bool = False


def _positive(value) -> str | None:
    values = value if isinstance(value, list) else [value]
    return None if all(v > 0 for v in values) else "must be positive"


def _non_negative(value) -> str | None:
    return None if value >= 0 else "must be >= 0"


def _at_least_one(value) -> str | None:
    return None if value >= 1 else "must be >= 1"


#: Standard deviations outside this range make 1/std^2 (R^-1, B^-1, P^-1) underflow to 0
#: or overflow, and with it the cost: the problem would no longer mean anything.
STD_RANGE = (1e-100, 1e100)


def _std(value) -> str | None:
    values = value if isinstance(value, list) else [value]
    low, high = STD_RANGE
    if not all(v > 0 for v in values):
        return "must be positive"
    if all(low <= v <= high for v in values):
        return None
    return f"must lie between {low:g} and {high:g} (1/std^2 would {'overflow' if min(values) < low else 'underflow'} and the cost lose its meaning)"


def _walk_std(value) -> str | None:
    high = STD_RANGE[1]
    return None if 0 <= value <= high else f"must lie between 0 and {high:g} (its square is added to P)"


def _fraction(value) -> str | None:
    return None if 0 < value < 1 else "must be between 0 and 1 (exclusive)"


SCHEMA: dict[str, Any] = {
    "title": Field("str", "", "a one-line description, copied into the result file"),
    "seed": Field("int", 0, "seed of every random draw (truth, observations, background, initial weights)", lambda v: _non_negative(v) or (None if v < 2**63 else "must be below 2^63 (a 64-bit integer, as result files store it)")),
    "model": Field("component", REQUIRED, "the forecast model: `type` (registry name or `module:Class`) and its constructor keywords; optional `params` (initial parameter values) or `params_from` (a result file whose analysed parameters to start from)"),
    "truth": {
        "model": Field("component", None, "the model that makes the truth run (default: the forecast model)", nullable=True),
        "params": Field("number_or_list", None, "parameters of the truth model (default: its `init_params`)", nullable=True),
        "spinup_steps": Field("int", 1000, "steps run from the initial state before cycle 0", _non_negative),
        "initial_mean": Field("float", 0.0, "mean of the random initial state of the spin-up"),
        "initial_std": Field("float", 1.0, "standard deviation of the random initial state of the spin-up", _std),
        "state_slice": Field("int_list", None, "`[start, stop]`: the part of the truth state the forecast model represents (default: all of it; a truth model with a `resolved_state`, such as `qg_coarse_grained`, maps its state to the forecast model's itself)", nullable=True),
        "substeps": Field("int", 1, "truth steps per model step: the truth model integrates with its own dt and is recorded every `substeps` of its steps", _at_least_one),
        "model_error_std": Field("float", 0.0, "stochastic model error of the truth: one forcing drawn from N(0, model_error_std^2 I) per sub-window of `truth.model_error_every` steps, added after every truth step in it (after the spin-up); 0: none", _non_negative),
        "model_error_every": Field("int", None, "sub-window length of the truth's model error (default: `model_error.every`, else the window length)", _at_least_one, nullable=True),
    },
    "observations": {
        "file": Field("str", None, "an observation file, NetCDF or CSV (docs/observation_files.md; steps or times counted from the start of cycle 0); replaces generated observations", nullable=True),
        "nearest_step": Field("bool", False, "an observation file's times that fall between model steps go to the nearest step (false: refused)"),
        "every": Field("int", 1, "observe every `every` model steps (generated observations)", _at_least_one),
        "offset": Field("int", 0, "the first observation time, in model steps from the start of cycle 0 (generated observations at offset, offset + every, ...)", _non_negative),
        "operator": Field("components", {"type": "identity"}, "the observation operator, or a list of operators used in turn at successive observation times"),
        "error_std": Field("float", 1.0, "observation error standard deviation (R = error_std^2 I)", _std),
        "climatology_every": Field("int", None, "every this many steps (the window length: each window's first step) the points left unobserved there are observed as the climatological mean of all observations, with their climatological std (noise removed) as error std: a weak prior that keeps unobserved points from leaving the climate (a learned model with a fixed subset observed); none: no such pseudo-observations", _at_least_one, nullable=True),
    },
    "background": {
        "state": {
            "error_std": Field("float", 1.0, "background error standard deviation of the state", _std),
            "layer_scale": Field("number_or_list", None, "a model on a 2-D grid (`nx`, `ny`): the std of layer i is error_std * layer_scale[i], one value per layer; none: error_std in every layer", _positive, nullable=True),
            "correlation": {
                "type": Field("str", None, "`gaussian` or `soar` correlation on the periodic grid (the model's 2-D grid when it has `nx` and `ny`: per layer, by 2-D FFT); none for a diagonal B", choices=("gaussian", "soar"), nullable=True),
                "length_scale": Field("float", 2.0, "correlation length scale in grid points", _positive),
                "vertical": Field("any", None, "a model on a 2-D grid: the correlation between its layers, a symmetric positive-definite matrix with ones on its diagonal (e.g. `[[1, 0.5], [0.5, 1]]`); none: layers uncorrelated", nullable=True),
            },
            "initial": Field("str", "perturbed_truth", "cycle 0 background: `perturbed_truth` (truth + a draw from B), `truth_mean` (the truth's mean value everywhere) or `free_run` (a spun-up state of the forecast model itself; the choice when observations come from a file)", choices=("perturbed_truth", "truth_mean", "free_run")),
            "initial_std": Field("float", None, "with `initial: perturbed_truth`: the std of B's draw added to the truth (the same correlation); none: error_std. Comparing runs with different B stds, it keeps their first background the same", _std, nullable=True),
            "adaptive": Field("bool", False, "re-estimate the state error std at each window start from the innovations there (useful while a learned model is still poor)"),
            "adaptive_min_std": Field("float", 0.1, "lower bound of the adaptive std", _std),
            "adaptive_max_std": Field("float", 10.0, "upper bound of the adaptive std", _std),
            "adaptive_weight": Field("float", 1.0, "weight w of the new estimate: variance = w * estimate + (1 - w) * previous variance (1: no memory; smaller values smooth the noisy estimate over cycles)", lambda v: None if 0 < v <= 1 else "must be in (0, 1]"),
        },
        "params": {
            "error_std": Field("number_or_list", 1.0, "parameter error standard deviation (scalar, or one per parameter)", _std),
            "decay": Field("float", 1.0, "factor applied to the parameter std after each cycle (< 1 shrinks P over the cycles, > 1 inflates it)", _positive),
            "floor": Field("float", 0.0, "the parameter std never goes below this", _non_negative),
            "update": Field("str", "schedule", "how P changes from window to window: `schedule` (diagonal, std = max(error_std * decay^c, floor)) or `posterior` (P of the next window = the parameters' Gauss-Newton posterior covariance after this one, marginal over the state, + noise_std^2 I: what each window taught accumulates, as in a Kalman filter; with `inner.method: lanczos` in low rank from the outer loops' Lanczos runs, no extra Hessian products and never an `n_p x n_p` matrix; with `cg` or `lbfgs` dense, one TL+AD sweep per control element per window)", choices=("schedule", "posterior")),
            "noise_std": Field("float", 0.01, "with `update: posterior`: std of the random walk added to the parameters' covariance after each window (keeps them learning)", _walk_std),
            "noise_decay": Field("float", 1.0, "with `update: posterior`: the random walk's std after window c is max(noise_std * noise_decay^c, noise_floor) (< 1: learn fast early, settle late)", _positive),
            "noise_floor": Field("float", 0.0, "with `update: posterior`: the random walk's std never goes below this", _walk_std),
            "names": Field("str_list", None, "the parameters' names in the result file and the figures, one per parameter (default: the model's `param_names`, else p[0], p[1], ...)", nullable=True),
        },
    },
    "model_error": {
        "every": Field("int", None, "weak constraint (`model_error` in the control): steps per sub-window, each with its own forcing eta_j added after every model step in it (default: the window length, one forcing per window)", _at_least_one, nullable=True),
        "error_std": Field("float", 0.1, "model-error standard deviation of each eta_j (Q = error_std^2 times the correlation)", _std),
        "correlation": {
            "type": Field("str", None, "`gaussian` or `soar` correlation of Q on the periodic grid; none for a diagonal Q", choices=("gaussian", "soar"), nullable=True),
            "length_scale": Field("float", 2.0, "correlation length scale of Q in grid points", _positive),
        },
    },
    "window": {
        "steps": Field("int", 10, "model steps per assimilation window", _at_least_one),
        "cycles": Field("int", 1, "number of consecutive windows", _at_least_one),
        "shift": Field("int", None, "steps from one window's start to the next; less than `steps`: overlapping windows, each starting from the previous analysis at its step `shift` and assimilating only the observations after the previous window's end (each observation once); none: `steps`, windows end to end", _at_least_one, nullable=True),
        "observations_at_end": Field("bool", False, "a window takes the observations at steps (start, start + steps], its end included and its start left to the previous window; false: [start, start + steps)"),
    },
    "assimilation": {
        "control": Field("str_list", ["state"], "what 4D-Var estimates: `[state]`, `[params]` or `[state, params]`, with `model_error` added for weak constraint (e.g. `[state, model_error]`, `[state, params, model_error]`; see `model_error`)", choices=("state", "params", "model_error")),
        "outer_loops": Field("int", 3, "maximum outer loops (relinearisations) per window; they stop earlier once J is within `tolerance` of its minimum", _at_least_one),
        "tolerance": Field("float", 1.0e-8, "stop the outer loops when J is within this (relative) of its minimum: 1/2 |grad J|^2 <= tolerance J in control variables, or the last Gauss-Newton increment's predicted decrease <= tolerance J", _non_negative),
        "preconditioner": Field("str", None, "`spectral`: each inner loop preconditioned by the Ritz pairs of the previous ones (needs `inner.method: lanczos`; its default there), or `none`", choices=("none", "spectral"), nullable=True),
        "quasi_static_steps": Field("int", None, "quasi-static minimisation (Pires et al. 1996): grow the window by this many steps per stage, each stage warm-started from the last; none: the whole window at once", _at_least_one, nullable=True),
        "posterior_rank": Field("int", None, "Ritz pairs kept per outer loop for the preconditioner and the propagated P, and the rank of that P (`update: posterior` with `lanczos`: P takes 8 n_p r bytes, so cap it for a large network); none: all of them", _at_least_one, nullable=True),
        "transform": Field("bool", True, "minimise in the preconditioned variables v = B^-1/2 dx0, w = P^-1/2 dp"),
        "backtracking": Field("bool", True, "halve an outer-loop increment while it would raise the nonlinear cost (safeguarded Gauss-Newton); false: always add the full increment"),
        "cost_spike": Field("float", 10.0, "with `state` and `params` in the control: a window whose J / n_obs exceeds this times the median of the earlier windows' (from the fourth window on) is redone with the parameters fixed, which then carry over unchanged (a window that did not fit its observations teaches the parameters nothing); none: no check", _positive, nullable=True),
        "posterior_accuracy": Field("float", None, "with `inner.method: lanczos`: write each window's analysis-error std of the state (`analysis_std`, the Gauss-Newton posterior at the analysis), its std accurate to this (relative); none: not computed", _positive, nullable=True),
        "qc": {
            "background_check": Field("float", 20.0, "reject an observation whose innovation exceeds this many times its expected std sqrt(diag(H B H^T + R)), B carried to the observation time by the TL model (a value such as 1e30 always fails); none: no background check", _positive, nullable=True),
            "analysis_check": Field("float", 5.0, "after each window's solve, reject an observation whose departure from the analysis exceeds this many observation-error std, and solve on without it; none: no analysis check", _positive, nullable=True),
            "huber": Field("float", None, "variational QC: Jo is the Huber norm of the normalised departures, quadratic inside +-huber and linear outside (e.g. 1.5); none: quadratic Jo", _positive, nullable=True),
        },
        "max_cost_per_obs": Field("float", None, "with `state` and `params` in the control: a window whose analysis cost J exceeds this times its number of observations (J is about half that number at a good minimum) is redone with the parameters fixed, which then carry over unchanged; none: no check", _positive, nullable=True),
        "inner": {
            "method": Field("str", "lbfgs", "inner minimiser: `lbfgs` (scipy L-BFGS-B), `cg` (conjugate gradients) or `lanczos` (CG keeping its Lanczos vectors: Ritz pairs for the spectral preconditioner and the low-rank posterior)", choices=("lbfgs", "cg", "lanczos")),
            "max_iterations": Field("int", 50, "maximum inner iterations per outer loop", _at_least_one),
            "gradient_reduction": Field("float", 1.0e-6, "stop the inner loop when |grad Jq| <= this * its initial value (or as small as the outer tolerance needs, or at round-off)", _fraction),
        },
    },
    "output": {
        "file": Field("str", None, "result NetCDF file (default: `results/<config name>.nc`)", nullable=True),
        "checkpoint": Field("bool", True, "write a checkpoint after every window (for --resume); false: none, for fast runs of many short windows"),
    },
    "diagnostics": {
        "burn_in_cycles": Field("int", 0, "windows left out of the filter-RMSE headline (spin-up of the cycling)", _non_negative),
        "forecast_skill": Field("bool", False, "measure forecast skill (needs a truth run): from truth states on an independent stretch of the truth, and from the analyses of the last half of the cycles"),
        "lyapunov_time": Field("float", 0.61, "one Lyapunov time in model time units (0.61 for Lorenz-96 with F = 8)", _positive),
        "skill_threshold": Field("float", 0.5, "a forecast is valid while its RMSE / the truth's climatological std stays below this", _positive),
        "forecast_lyapunov_times": Field("float", 6.0, "length of each skill forecast, in Lyapunov times", _positive),
        "forecast_starts": Field("int", 50, "number of truth start times for the skill from truth states", _at_least_one),
        "forecast_spacing": Field("int", 25, "model steps between those start times", _at_least_one),
    },
    "ensemble": {
        "members": Field("int", 0, "members of an ensemble of data assimilations (EDA) cycled beside the control 4D-Var: each window, each member runs 4D-Var from its own background with perturbed observations, and their background forecasts give the next window a flow-dependent B; 0: no ensemble, else at least 2; comparison runs (`compare:`) are plain 4D-Vars with the static B", lambda v: None if v == 0 or v >= 2 else "must be 0 or >= 2"),
        "perturb": Field("str_list", ["observations", "background"], "what the members perturb: `observations` (y + a draw from R, every window) and/or `background` (the members start from xb + a draw from the static B)", choices=("observations", "background")),
        "hybrid_weight": Field("float", 0.5, "beta in B = (1 - beta) B_static + beta B_ensemble", lambda v: None if 0 <= v < 1 else "must be in [0, 1)"),
        "localization": Field("float", 4.0, "length scale (grid points) of the Gaussian correlation whose Schur product localises the ensemble covariance", _positive),
        "inflation": Field("float", 1.0, "multiplicative inflation rho: before each window the members' backgrounds are spread about their mean, mean + rho (xb_m - mean), giving B and the members more spread (for an ensemble whose spread falls short of its error, `spread_skill` < 1); 1: none", lambda v: "must be >= 1" if v < 1 else (None if v <= STD_RANGE[1] else f"must be at most {STD_RANGE[1]:g}")),
    },
    "sweep": Field("sweep", {}, "`fourdvar sweep` runs one member per combination: dotted keys (`seed`, `background.state.error_std`, ...) mapped to lists of values, their cartesian product"),
    "compare": Field("comparisons", [], "other 4D-Var runs on the same truth and observations, each `{name, model, background, assimilation, fit_correction}` (all but `name` optional; `model` replaces the model, the others override keys; `fit_correction: {samples: 500, spacing: 4, max_iterations: 500}` fits the model's correction offline to the truth model's `unresolved_tendency` and keeps it fixed); their RMSE, cost and skill go into the result file"),
    "gap": {
        "baseline": Field("str", None, "name of the comparison run that lacks what is learned (e.g. the physics model alone)", nullable=True),
        "reference": Field("str", None, "name of the comparison run with the perfect model; the result records the fraction of the baseline-to-reference analysis-RMSE gap the experiment closes", nullable=True),
    },
}

COMPARISON_KEYS = ("name", "model", "background", "assimilation", "fit_correction")
FIT_KEYS = {"samples": 500, "spacing": 4, "max_iterations": 500}


def schema_keys(schema: dict = SCHEMA, prefix: str = "") -> list[tuple[str, Field]]:
    """Every ``(dotted.key, Field)`` of the schema, in order."""
    keys = []
    for key, entry in schema.items():
        path = f"{prefix}{key}"
        if isinstance(entry, dict):
            keys.extend(schema_keys(entry, path + "."))
        else:
            keys.append((path, entry))
    return keys


# --- validation -------------------------------------------------------------------------------


def _type_name(value) -> str:
    return "null" if value is None else type(value).__name__


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _coerce(field: Field, value, path: str):
    """``value`` as the field's type, or an error message."""
    if value is None:
        if field.nullable:
            return None
        raise ConfigError(f"{path}: expected {field.kind.replace('_', ' ')}, got null")
    kind = field.kind
    if kind == "int":
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"{path}: expected an integer, got {short(value)} ({_type_name(value)})")
        value = int(value)
    elif kind == "float":
        if not _is_number(value):
            raise ConfigError(f"{path}: expected a number, got {short(value)} ({_type_name(value)})")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{path}: expected a finite number, got {short(value)}")
    elif kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {short(value)} ({_type_name(value)})")
    elif kind == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {short(value)} ({_type_name(value)})")
    elif kind == "number_or_list":
        if _is_number(value):
            value = float(value)
        elif isinstance(value, list) and value and all(_is_number(v) for v in value):
            value = [float(v) for v in value]
        else:
            raise ConfigError(f"{path}: expected a number or a list of numbers, got {short(value)}")
        if not all(math.isfinite(v) for v in (value if isinstance(value, list) else [value])):
            raise ConfigError(f"{path}: expected finite numbers, got {short(value)}")
    elif kind == "int_list":
        if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
            raise ConfigError(f"{path}: expected [start, stop] (two integers), got {short(value)}")
    elif kind == "str_list":
        if isinstance(value, str):
            value = [value]
        if not (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
            raise ConfigError(f"{path}: expected a list of names, got {short(value)}")
    elif kind == "component":
        _check_component(value, path)
        value = copy.deepcopy(value)
    elif kind == "comparisons":
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list of comparison runs, got {short(value)} ({_type_name(value)})")
        names = set()
        for i, item in enumerate(value):
            where = f"{path}[{i}]"
            if not isinstance(item, dict):
                raise ConfigError(f"{where}: expected a mapping with a 'name', got {short(item)}")
            for key in item:
                if key not in COMPARISON_KEYS:
                    raise _unknown_key(key, COMPARISON_KEYS, where)
            name = item.get("name")
            if not isinstance(name, str) or not name.isidentifier():
                raise ConfigError(f"{where}.name: expected a name made of letters, digits and '_', got {short(name)}")
            if name in names:
                raise ConfigError(f"{where}.name: {short(name)} is used twice")
            names.add(name)
            if "model" in item:
                _check_component(item["model"], f"{where}.model")
            for section in ("background", "assimilation"):
                if section in item and not isinstance(item[section], dict):
                    raise ConfigError(f"{where}.{section}: expected a mapping of the keys to override, got {short(item[section])} ({_type_name(item[section])})")
            if "fit_correction" in item:
                fit = item["fit_correction"]
                if not isinstance(fit, dict):
                    raise ConfigError(f"{where}.fit_correction: expected a mapping, got {short(fit)}")
                for key, setting in fit.items():
                    if key not in FIT_KEYS:
                        raise _unknown_key(key, FIT_KEYS, f"{where}.fit_correction")
                    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
                        raise ConfigError(f"{where}.fit_correction.{key}: expected a positive integer, got {short(setting)}")
        value = copy.deepcopy(value)
    elif kind == "sweep":
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping of dotted keys to lists of values, got {short(value)} ({_type_name(value)})")
        for key, values in value.items():
            if not isinstance(key, str) or not key or key.split(".")[0] in ("sweep", "output", "compare"):
                raise ConfigError(f"{path}: {short(key)}: expected a dotted key of the configuration other than sweep, output and compare")
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{path}.{key}: expected a non-empty list of values, got {short(values)}")
            if len({repr(v) for v in values}) != len(values):
                raise ConfigError(f"{path}.{key}: a value is listed twice")
        value = copy.deepcopy(value)
    elif kind == "components":
        items = value if isinstance(value, list) else [value]
        if not items:
            raise ConfigError(f"{path}: expected a mapping with a 'type' key or a non-empty list of them, got []")
        for i, item in enumerate(items):
            _check_component(item, f"{path}[{i}]" if isinstance(value, list) else path)
        value = copy.deepcopy(value)
    if field.choices is not None:
        bad = [v for v in (value if isinstance(value, list) else [value]) if v not in field.choices]
        if bad:
            raise ConfigError(f"{path}: expected one of {', '.join(map(str, field.choices))}, got {short(bad[0])}")
    if field.check is not None and (problem := field.check(value)):
        raise ConfigError(f"{path}: {problem}, got {short(value)}")
    return value


def _check_component(value, path: str) -> None:
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: expected a mapping with a 'type' key, got {short(value)} ({_type_name(value)})")
    if "type" not in value:
        raise ConfigError(f"{path}: missing key 'type' (the registry name or 'module:Class')")
    if not isinstance(value["type"], str):
        raise ConfigError(f"{path}.type: expected a string, got {short(value['type'])}")


def _unknown_key(key, known, path: str) -> ConfigError:
    where = f"{path}." if path else ""
    close = difflib.get_close_matches(str(key)[:100], list(known), n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else f" (valid keys: {', '.join(known)})"
    return ConfigError(f"{where}{short(key) if not isinstance(key, str) or len(key) > 60 else key}: unknown key{hint}")


def _resolve(schema: dict, values: Any, path: str) -> dict:
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path or 'top level'}: expected a mapping, got {short(values)} ({_type_name(values)})")
    for key in values:
        if key not in schema:
            raise _unknown_key(key, schema, path)
    resolved = {}
    for key, entry in schema.items():
        key_path = f"{path}.{key}" if path else key
        if isinstance(entry, dict):
            resolved[key] = _resolve(entry, values.get(key), key_path)
        elif key in values:
            resolved[key] = _coerce(entry, values[key], key_path)
        elif entry.default is REQUIRED:
            raise ConfigError(f"{key_path}: missing required key")
        else:
            resolved[key] = copy.deepcopy(entry.default)
    return resolved


def resolve_config(raw: Any, name: str = "experiment") -> dict:
    """Validate a parsed YAML mapping and fill in every default."""
    config = _resolve(SCHEMA, raw, "")
    if config["truth"]["model"] is None:
        config["truth"]["model"] = {k: v for k, v in config["model"].items() if k not in ("params", "params_from")}
    if config["output"]["file"] is None:
        config["output"]["file"] = f"results/{name}.nc"
    state = config["background"]["state"]
    if state["adaptive_min_std"] > state["adaptive_max_std"]:
        raise ConfigError("background.state.adaptive_min_std: must not exceed adaptive_max_std")
    params = config["background"]["params"]
    if params["update"] == "posterior" and (params["decay"] != 1.0 or params["floor"] != 0.0):
        raise ConfigError("background.params: decay and floor belong to update: schedule; with update: posterior, P comes from the data (noise_std keeps it from collapsing)")
    if params["update"] == "schedule" and (params["noise_decay"] != 1.0 or params["noise_floor"] != 0.0):
        raise ConfigError("background.params: noise_decay and noise_floor belong to update: posterior (they shape its random walk); with update: schedule use decay and floor")
    if "params" in config["assimilation"]["control"] and (problem := _params_std_over_cycles(params, config["window"]["cycles"])):
        raise ConfigError(problem)
    if config["assimilation"]["max_cost_per_obs"] is not None and not {"state", "params"} <= set(config["assimilation"]["control"]):
        raise ConfigError("assimilation.max_cost_per_obs: applies only with control [state, params] (model_error may be added): "
                          "it redoes a joint analysis with the parameters fixed, and without both there is no joint analysis")
    if config["truth"]["model_error_std"] > 0 and config["truth"]["substeps"] != 1:
        raise ConfigError("truth.model_error_std: the truth's model error is added after every model step; it needs truth.substeps: 1")
    shift = config["window"]["shift"]
    if shift is not None and shift > config["window"]["steps"]:
        raise ConfigError(f"window.shift: at most window.steps = {config['window']['steps']} (windows may overlap, not leave gaps), got {shift}")
    assimilation = config["assimilation"]
    if assimilation["preconditioner"] == "spectral" and assimilation["inner"]["method"] != "lanczos":
        raise ConfigError(f"assimilation.preconditioner: spectral needs inner.method lanczos, not {assimilation['inner']['method']} (its Ritz pairs come from the Lanczos inner loops)")
    if assimilation["inner"]["method"] == "lanczos" and not assimilation["transform"]:
        raise ConfigError("assimilation.inner.method: lanczos works in the transformed control variables; it needs transform: true")
    names = [entry["name"] for entry in config["compare"]]
    for key in ("baseline", "reference"):
        name = config["gap"][key]
        if name is not None and name not in names:
            raise ConfigError(f"gap.{key}: no comparison run named {short(name)} (compare names: {', '.join(names) or 'none'})")
    if (config["gap"]["baseline"] is None) != (config["gap"]["reference"] is None):
        raise ConfigError("gap: give both 'baseline' and 'reference', or neither")
    if config["gap"]["baseline"] is not None and config["gap"]["baseline"] == config["gap"]["reference"]:
        raise ConfigError(f"gap.reference: the same run as gap.baseline ({short(config['gap']['baseline'])}); the gap between them is zero")
    return config


def _params_std_over_cycles(params: dict, cycles: int) -> str | None:
    """What takes the parameters' std out of :data:`STD_RANGE` by the last window, or ``None``:
    ``max(error_std decay^c, floor)`` (schedule) or the random walk ``max(noise_std noise_decay^c,
    noise_floor)`` (posterior), ``c = 0 .. cycles - 1``, compared in log10 (the powers may overflow)."""
    low, high = (math.log10(bound) for bound in STD_RANGE)
    last = cycles - 1
    if params["update"] == "posterior":
        if params["noise_std"] == 0 or params["noise_decay"] <= 1:
            return None
        peak = math.log10(params["noise_std"]) + last * math.log10(params["noise_decay"])
        return None if peak <= high else (f"background.params.noise_decay: the random walk's std after window {last} would be "
                                          f"noise_std * noise_decay^{last} = 1e{peak:.0f}, above {STD_RANGE[1]:g} (its square is added to P)")
    stds = params["error_std"] if isinstance(params["error_std"], list) else [params["error_std"]]
    ends = [math.log10(std) + last * math.log10(params["decay"]) for std in stds]
    floor = math.log10(params["floor"]) if params["floor"] > 0 else -math.inf
    if floor > high:
        return f"background.params.floor: must lie between 0 and {STD_RANGE[1]:g}, got {params['floor']:g}"
    extreme = max(ends) if params["decay"] > 1 else min(ends)
    if low <= max(extreme, floor) <= high:
        return None
    hint = "" if extreme > high else "; give background.params.floor"
    return (f"background.params.decay: the parameter std after window {last} would be error_std * decay^{last} = 1e{extreme:.0f}, "
            f"outside [{STD_RANGE[0]:g}, {STD_RANGE[1]:g}] (1/std^2 would lose its meaning){hint}")


def comparison_config(config: dict, entry: dict) -> dict:
    """The resolved configuration of one comparison run: ``config`` with the entry's
    ``model`` replacing the model and its ``background``/``assimilation`` keys overriding."""
    merged = copy.deepcopy(config)
    merged["compare"], merged["gap"] = [], {"baseline": None, "reference": None}
    merged["ensemble"] = {**merged["ensemble"], "members": 0}  # a comparison is a plain 4D-Var (with the static B)
    merged["diagnostics"] = {**merged["diagnostics"], "forecast_skill": False}  # measured by the main experiment
    if "model" in entry:
        merged["model"] = copy.deepcopy(entry["model"])
    for section in ("background", "assimilation"):
        if section in entry:
            merged[section] = _deep_merge(merged[section], entry[section])
    if not {"state", "params"} <= set(merged["assimilation"]["control"]):
        merged["assimilation"]["max_cost_per_obs"] = None  # a check of joint analyses only
    return resolve_config(merged)


def _deep_merge(base: dict, override) -> dict:
    if not isinstance(override, dict):
        return override
    merged = dict(base)
    for key, value in override.items():
        merged[key] = _deep_merge(base[key], value) if isinstance(base.get(key), dict) and isinstance(value, dict) else copy.deepcopy(value)
    return merged


#: A configuration is a short text file; anything larger is not one.
MAX_CONFIG_BYTES = 1 << 20


def read_text(path: Path, what: str = "") -> str:
    """The UTF-8 text of a small file, or a :class:`ConfigError` saying why not."""
    prefix = f"{what}: " if what else ""
    try:
        if path.is_dir():
            raise ConfigError(f"{prefix}{path}: is a directory, not a YAML file")
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{prefix}{path}: no such file") from None
    except OSError as error:
        raise ConfigError(f"{prefix}{path}: cannot read ({error.strerror})") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{prefix}{path}: larger than {MAX_CONFIG_BYTES >> 20} MiB, the limit of a configuration file; "
                          "large data belong in files it names (observations.file, model.params_from)")
    if b"\0" in data:
        raise ConfigError(f"{prefix}{path}: a binary file (it contains NUL bytes), not a YAML configuration")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ConfigError(f"{prefix}{path}: not UTF-8 text (byte 0x{data[error.start]:02x} at line {line}); save it as UTF-8") from None


def load_config(path: str | Path) -> dict:
    """Read, validate and resolve a YAML experiment file; raises :class:`ConfigError`."""
    path = Path(path)
    raw = load_raw(path)
    try:
        return resolve_config(raw, name=path.stem)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def load_raw(path: str | Path):
    """The parsed YAML of an experiment file, before validation (a sweep sets keys in it per member)."""
    path = Path(path)
    text = read_text(path)
    try:
        raw = parse_yaml(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{path}: YAML syntax error{where}: {problem}") from None
    except (ConfigError, RecursionError) as error:
        problem = error if isinstance(error, ConfigError) else "nested too deeply"
        raise ConfigError(f"{path}: {problem}") from None
    return raw


def _format_default(field: Field) -> str:
    if field.default is REQUIRED:
        return "required"
    if field.default is None:
        return "none"
    return "`" + yaml.safe_dump(field.default, default_flow_style=True).strip().removesuffix("...").strip() + "`"


def schema_markdown() -> str:
    """The table of every key, its default and its meaning (``configs/README.md`` holds it)."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for key, field in schema_keys():
        meaning = field.doc + (f" (one of: {', '.join(map(str, field.choices))})" if field.choices and "`" not in field.doc else "")
        lines.append(f"| `{key}` | {_format_default(field)} | {meaning} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(schema_markdown())
