"""The typed configuration: every shipped configuration resolves into frozen objects that
write back the same resolved dict and the same result-file text; each field names its
YAML key; a sweep member, a comparison run and a command-line override give the typed
values they set; a plan is built from the objects by its constructor."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from pathlib import Path

import pytest

from fourdvar.app.config import ConfigError, load_config, resolve_config
from fourdvar.app.experiment import Component, Experiment, FrozenMap, Settings, experiment_of
from fourdvar.app.plan import Plan
from fourdvar.app.results import config_text
from fourdvar.app.sweep import Sweep

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SHIPPED = sorted([*CONFIGS.glob("*.yaml"), *CONFIGS.glob("sweeps/*.yaml")])

TINY = {
    "seed": 4, "model": {"type": "lorenz96", "n_state": 8, "dt": 0.05}, "truth": {"spinup_steps": 50},
    "observations": {"every": 2, "operator": [{"type": "subset", "indices": "all"}, {"type": "identity"}], "error_std": 0.7},
    "background": {"state": {"error_std": 0.5, "correlation": {"type": "gaussian", "length_scale": 1.5}}},
    "window": {"steps": 4, "cycles": 2},
    "assimilation": {"outer_loops": 2, "inner": {"method": "lanczos", "max_iterations": 7}, "qc": {"huber": 1.5}},
    "compare": [{"name": "weak", "model": {"type": "lorenz96", "n_state": 8, "dt": 0.05, "forcing": 7.0},
                 "background": {"state": {"error_std": 2.0}}, "assimilation": {"outer_loops": 1}}],
}


def settings_objects(settings: Settings):
    """``settings`` and every settings object inside it."""
    yield settings
    for spec in dataclasses.fields(settings):
        value = getattr(settings, spec.name)
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, Settings):
                yield from settings_objects(item)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_configuration_round_trips_to_the_same_dict_and_text(path):
    config = load_config(path)
    experiment = experiment_of(copy.deepcopy(config))
    again = experiment.to_dict()
    assert again == config and list(again) == list(config)
    assert config_text(experiment) == config_text(config)
    assert experiment_of(again) == experiment


def test_every_object_is_frozen_and_its_free_form_mappings_read_only():
    experiment = experiment_of(resolve_config(copy.deepcopy(TINY)))
    objects = list(settings_objects(experiment))
    assert len(objects) > 20
    for settings in objects:
        name = next(spec.name for spec in dataclasses.fields(settings))
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(settings, name, None)
    model = experiment.problem.model
    assert isinstance(model.spec, FrozenMap)
    with pytest.raises(TypeError):
        model.spec["n_state"] = 9
    options = model.options()
    options["n_state"] = 9  # a plain copy: the experiment keeps its value
    assert experiment.problem.model.get("n_state") == 8
    assert pickle.loads(pickle.dumps(experiment)) == experiment


def test_fields_hold_the_typed_values_and_name_their_yaml_keys():
    experiment = experiment_of(resolve_config(copy.deepcopy(TINY)))
    problem, method = experiment.problem, experiment.method
    assert (problem.seed, problem.truth.spinup_steps, problem.R_std, problem.B.error_std) == (4, 50, 0.7, 0.5)
    assert (problem.B.correlation.type, problem.B.correlation.length_scale, problem.Q.correlation.type) == ("gaussian", 1.5, None)
    assert [op.type for op in problem.observations.operators] == ["subset", "identity"]
    assert [op.path for op in problem.observations.operators] == ["observations.operator[0]", "observations.operator[1]"]
    assert method.control == ("state",) and method.window.stride == 4 and method.window.span == 8
    assert (method.solver.method, method.solver.max_iterations, method.qc.huber) == ("lanczos", 7, 1.5)
    assert problem.B.key("vertical") == "background.state.correlation.vertical"
    assert problem.B.correlation.key("length_scale") == "background.state.correlation.length_scale"
    assert problem.Q.correlation.key("type") == "model_error.correlation.type"
    assert method.solver.key("method") == "assimilation.inner.method"
    assert method.B_policy.key("min_std") == "background.state.adaptive_min_std"
    assert method.P_policy.key("noise_std") == "background.params.noise_std"
    assert method.key("control") == "assimilation.control" and experiment.output.key("file") == "output.file"


def test_solver_options_are_the_keywords_of_the_solve():
    method = experiment_of(resolve_config(copy.deepcopy(TINY))).method
    options = method.solver.options()
    qc = options.pop("qc")
    assert (qc.background_check, qc.analysis_check, qc.huber) == (20.0, 5.0, 1.5)
    assert options == {"outer_loops": 2, "method": "lanczos", "max_iterations": 7, "gradient_reduction": 1e-6, "transform": True,
                       "backtracking": True, "tolerance": 1e-8, "preconditioner": None, "posterior_rank": None, "posterior_method": "none"}
    accurate = experiment_of(resolve_config({**copy.deepcopy(TINY), "assimilation": {"inner": {"method": "lanczos"}, "posterior_accuracy": 0.1}}))
    assert {key: accurate.method.solver.options()[key] for key in ("posterior_method", "posterior_accuracy")} == {"posterior_method": "auto", "posterior_accuracy": 0.1}


def test_a_comparison_run_gets_its_model_and_overrides_and_no_ensemble():
    config = resolve_config({**copy.deepcopy(TINY), "ensemble": {"members": 3}, "diagnostics": {"forecast_skill": True}})
    experiment = experiment_of(config)
    [run] = experiment.compare
    other = experiment.comparison(run)
    assert run.name == "weak" and run.fit_correction is None
    assert other.problem.model.get("forcing") == 7.0 and other.problem.B.error_std == 2.0 and other.method.solver.outer_loops == 1
    assert other.method.ensemble.members == 0 and not other.diagnostics.forecast_skill and other.compare == ()
    assert other.problem.observations == experiment.problem.observations and other.method.window == experiment.method.window


def test_a_sweep_member_and_a_command_line_override_give_the_typed_values(tmp_path):
    raw = {**copy.deepcopy(TINY), "compare": [], "sweep": {"seed": [1, 2], "assimilation.inner.max_iterations": [3, 9]}}
    sweep = Sweep(raw, "typed", output=tmp_path / "out")
    typed = [experiment_of(member.config) for member in sweep.members]
    assert [(e.problem.seed, e.method.solver.max_iterations) for e in typed] == [(1, 3), (1, 9), (2, 3), (2, 9)]
    assert all(e.sweep == {} and e.output.file == str(m.output) for e, m in zip(typed, sweep.members))
    base = experiment_of(resolve_config(copy.deepcopy(TINY)))
    changed = base.with_keys({"window.cycles": 5, "seed": 11})
    assert (changed.method.window.cycles, changed.problem.seed, base.method.window.cycles) == (5, 11, 2)
    assert changed.with_output("elsewhere.nc").output.file == "elsewhere.nc" and changed.output.file == base.output.file
    with pytest.raises(ConfigError, match=r"^window\.cycles: must be >= 1, got 0$"):
        base.with_keys({"window.cycles": 0})


def test_a_plan_is_built_by_its_constructor_from_the_typed_objects():
    config = resolve_config(copy.deepcopy(TINY))
    experiment = experiment_of(config)
    plan = Plan(experiment)
    assert isinstance(plan.experiment, Experiment) and plan.config == config and plan.comparisons[0].plan.method.solver.outer_loops == 1
    assert plan.control == ("state",) and plan.shift == 4 and plan.span == 8 and plan.B0.std[0] == 0.5
    assert plan.comparisons[0].plan.B0.std[0] == 2.0 and plan.comparisons[0].plan.truth is plan.truth
    again = Plan.from_config(config)
    assert (again.xb0 == plan.xb0).all() and again.experiment == experiment
    copied = plan.with_initial_params(plan.pb0 + 1.0, fit_loss=0.25)
    assert copied.fit_loss == 0.25 and plan.fit_loss is None and (copied.pb0 == plan.pb0 + 1.0).all()


def test_a_missing_key_of_an_unresolved_dict_is_named():
    with pytest.raises(ConfigError, match=r"^title: missing key"):
        experiment_of({"seed": 1})
    assert isinstance(Component.of({"type": "identity"}, "observations.operator").spec, FrozenMap)


def test_check_plan_reads_the_plan_and_warns_when_given_the_old_config_argument(tmp_path):
    from fourdvar.app.checking import check_plan

    config = resolve_config({**copy.deepcopy(TINY), "compare": []})
    plan = Plan.from_config(config)
    lines = []
    with pytest.deprecated_call(match="check_plan"):
        old = check_plan(plan, config, n_steps=2, write=lines.append)
    assert check_plan(plan, n_steps=2, write=lines.append) == old and old["FAIL"] == 0 and old["PASS"] > 0
