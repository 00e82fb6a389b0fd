"""The experiment machinery behind issue 5: weights as artefacts, truth sub-stepping,
forecast skill, offline correction fits, comparison runs and the gap headline."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest

from fourdvar.app.config import ConfigError, resolve_config
from fourdvar.app.diagnostics import forecast_skill
from fourdvar.app.checkpoint import Checkpoint
from fourdvar.app.fitting import fit_tendency
from fourdvar.app.plan import Plan
from fourdvar.app.results import write_atomic
from fourdvar.app.run import CyclingState, execute
from models import LocalMLP, Lorenz96, Lorenz96TwoScale

TINY = {
    "seed": 3,
    "model": {"type": "hybrid", "physics": {"type": "lorenz96", "n_state": 12, "dt": 0.05},
              "correction": {"type": "local_mlp", "n_state": 12, "hidden": [4], "integrator": "rk4", "state_scale": 4.0}},
    "truth": {"model": {"type": "lorenz96", "n_state": 12, "dt": 0.05, "extra_amplitude": 2.0}, "spinup_steps": 100},
    "observations": {"every": 1, "error_std": 1.0},
    "background": {"state": {"error_std": 0.5}, "params": {"error_std": 0.5}},
    "window": {"steps": 5, "cycles": 3},
    "assimilation": {"control": ["state", "params"], "outer_loops": 2, "inner": {"method": "cg", "max_iterations": 10}},
}


class Stop(Exception):
    pass


def checkpointed_windows(plan, directory, stop_after=None):
    """Run ``plan`` through a real checkpoint in ``directory``, killed (an exception) after
    ``stop_after`` windows; returns what ``--resume`` reads back: ``(rows, state)``."""
    checkpoint = Checkpoint(directory / "result.nc")
    checkpoint.acquire()

    def save(row, state):
        checkpoint.save(row, state.variables(), state.cycle - 1, "config")
        if state.cycle == stop_after:
            raise Stop

    try:
        execute(plan, on_window=save)
    except Stop:
        pass
    windows = checkpoint.load("config")
    checkpoint.release()
    return [row for row, _ in windows], CyclingState.from_dataset(windows[-1][1], plan)


def tiny(**changes):
    config = copy.deepcopy(TINY)
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            config[section][name] = value
        else:
            config[section] = value
    return resolve_config(config, name="tiny")


def test_analysed_weights_load_back_as_a_models_parameters(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = Plan.from_config(tiny())
    result = execute(first)
    write_atomic(result, "first.nc")
    model = {**TINY["model"], "params_from": "first.nc"}
    second = Plan.from_config(tiny(model=model))
    np.testing.assert_array_equal(second.pb0, result["params_analysis"].values[-1])
    assert not np.array_equal(second.pb0, first.pb0)  # learning moved them
    with pytest.raises(ConfigError, match="model.params_from: .*missing.nc: no such file"):
        Plan.from_config(tiny(model={**TINY["model"], "params_from": "missing.nc"}))


def test_truth_substeps_record_every_kth_step_of_a_finer_truth():
    config = tiny(model={"type": "lorenz96", "n_state": 8, "dt": 0.05}, assimilation={"control": ["state"]},
                  truth={"model": {"type": "lorenz96_two_scale", "n_slow": 8, "n_fast_per_slow": 4, "dt": 0.005},
                         "substeps": 10, "state_slice": [0, 8], "spinup_steps": 20})
    experiment = Plan.from_config(config)
    # the same truth, integrated here step by step at dt = 0.005
    two_scale = Lorenz96TwoScale(n_slow=8, n_fast_per_slow=4, dt=0.005)
    x = 0.0 + 1.0 * np.random.default_rng([3, 0]).standard_normal(40)
    x = two_scale.forecast(x, np.empty(0), 20 * 10)[-1]
    fine = two_scale.forecast(x, np.empty(0), 3 * 5 * 10)
    np.testing.assert_allclose(experiment.truth["trajectory"], fine[::10, :8], rtol=0, atol=1e-12)
    assert experiment.truth["trajectory"].shape == (3 * 5 + 1, 8)


def test_forecast_skill_of_the_perfect_model_is_the_full_length_and_persistence_is_short():
    model = Lorenz96(40)
    truth = model.forecast(8 + np.random.default_rng(0).standard_normal(40), np.empty(0), 1500)[500:]
    sigma = truth.std()
    starts = list(range(0, 500, 50))
    segments = [truth[s : s + 61] for s in starts]
    perfect = forecast_skill(model, [truth[s] for s in starts], [np.empty(0)] * len(starts), segments, dt=0.05, sigma_clim=sigma, lyapunov_time=0.61)
    assert perfect.lyapunov_times == pytest.approx(60 * 0.05 / 0.61)  # never exceeds the threshold
    persistence = LocalMLP(40)  # zero output: x_{k+1} = x_k
    skill = forecast_skill(persistence, [truth[s] for s in starts], [np.zeros(persistence.n_params)] * len(starts), segments, dt=0.05, sigma_clim=sigma, lyapunov_time=0.61)
    assert skill.lyapunov_times < 0.5
    assert skill.error_curve[0] == 0.0 and skill.error_curve[-1] > 0.5


def test_offline_fit_recovers_a_known_network_tendency():
    rng = np.random.default_rng(5)
    teacher = LocalMLP(20, hidden=[6], init_output_scale=1.0, state_scale=4.0)
    student = LocalMLP(20, hidden=[6], state_scale=4.0)
    p_true = teacher.init_params(rng)
    states = 8 + 4 * rng.standard_normal((60, 20))
    targets = np.array([teacher.tendency.evaluate(x, p_true) for x in states])
    p0 = student.init_params(rng)
    initial = 0.5 * np.mean(np.sum(targets**2, axis=1))
    p, loss = fit_tendency(student.tendency, states, targets, p0, max_iterations=300)
    assert loss < 1e-3 * initial


def test_offline_fit_does_not_depend_on_the_units_of_the_tendency():
    """The same teacher and student ConvNet, their tendency of order 1 and of order 1e-12:
    the fit lowers the loss alike (without the scaling, L-BFGS-B stops at once on 1e-24)."""
    from models import ConvNet

    rng = np.random.default_rng(6)
    template = ConvNet([1, 3, 1], 3, ["tanh", "identity"], ny=5, nx=5)
    p_true, p0 = template.init_params(rng), template.init_params(rng)
    states = rng.standard_normal((20, template.n_in))
    relative = []
    for scale in (1.0, 1e-12):
        net = ConvNet([1, 3, 1], 3, ["tanh", "identity"], ny=5, nx=5, output_scale=scale)
        targets = np.array([net.apply(x, p_true) for x in states])
        initial = 0.5 * np.mean(np.sum(targets**2, axis=1))
        relative.append(fit_tendency(net, states, targets, p0, max_iterations=200)[1] / initial)
    assert max(relative) < 1e-2 and abs(relative[1] - relative[0]) < 0.1 * relative[0], relative


def test_comparison_runs_share_truth_and_observations_and_give_the_gap_closed():
    config = tiny(compare=[
        {"name": "physics", "model": {"type": "lorenz96", "n_state": 12, "dt": 0.05}, "assimilation": {"control": ["state"]}},
        {"name": "perfect", "model": {"type": "lorenz96", "n_state": 12, "dt": 0.05, "extra_amplitude": 2.0}, "assimilation": {"control": ["state"]}},
    ], gap={"baseline": "physics", "reference": "perfect"})
    result = execute(Plan.from_config(config))
    for name in ("physics", "perfect"):
        assert result[f"rmse_analysis_{name}"].shape == (3,)
    h = {key.removeprefix("headline_"): value for key, value in result.attrs.items() if key.startswith("headline_")}
    expected = (h["rmse_analysis_last_half_physics"] - h["rmse_analysis_last_half"]) / (h["rmse_analysis_last_half_physics"] - h["rmse_analysis_last_half_perfect"])
    assert h["gap_closed"] == pytest.approx(expected, abs=1e-5)
    assert h["rmse_analysis_last_half"] == pytest.approx(float(result["rmse_analysis"].values[1:].mean()), abs=1e-6)


def test_comparison_configuration_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"compare\[0\]\.modle: unknown key; did you mean 'model'"):
        tiny(compare=[{"name": "a", "modle": {"type": "lorenz96"}}])
    with pytest.raises(ConfigError, match="gap.baseline: no comparison run named 'physics'"):
        tiny(gap={"baseline": "physics", "reference": "perfect"})
    with pytest.raises(ConfigError, match=r"fit_correction.samples: expected a positive integer"):
        tiny(compare=[{"name": "a", "fit_correction": {"samples": 0}}])


def test_resumed_run_with_smoothed_adaptive_background_equals_uninterrupted_run(tmp_path):
    config = tiny(background={"state": {"error_std": 0.5, "adaptive": True, "adaptive_weight": 0.3}, "params": {"error_std": 0.5, "decay": 0.9}},
                  window={"steps": 5, "cycles": 4})
    full = execute(Plan.from_config(config))
    after_two = checkpointed_windows(Plan.from_config(config), tmp_path, stop_after=2)  # as if killed after two windows
    assert len(after_two[0]) == 2 and after_two[1].cycle == 2
    resumed = execute(Plan.from_config(config), resume=after_two)
    for name in ("analysis", "background_std", "params_analysis", "J_final"):
        np.testing.assert_array_equal(resumed[name].values, full[name].values)
    assert len(set(np.round(full["background_std"].values, 12))) > 1  # the adaptive std did change


def test_a_joint_analysis_above_max_cost_per_obs_is_redone_with_the_weights_fixed():
    joint = {"control": ["state", "params"], "outer_loops": 2, "inner": {"method": "cg", "max_iterations": 10}}
    accepted = execute(Plan.from_config(tiny(assimilation={**joint, "max_cost_per_obs": 1e6})))
    assert np.all(np.isnan(accepted["J_rejected"].values)) and accepted.attrs["headline_windows_rejected"] == 0
    assert not np.allclose(accepted["params_analysis"].values[-1], accepted["params_background"].values[0])

    # a threshold no analysis can meet: every window is redone state-only, the weights never move
    rejected = execute(Plan.from_config(tiny(assimilation={**joint, "max_cost_per_obs": 1e-9})))
    np.testing.assert_allclose(rejected["J_rejected"].values[0], accepted["J_final"].values[0], rtol=1e-12)
    assert np.all(rejected["J_rejected"].values > 0) and rejected.attrs["headline_windows_rejected"] == 3
    np.testing.assert_array_equal(rejected["params_analysis"].values, rejected["params_background"].values)
    np.testing.assert_array_equal(rejected["params_analysis"].values[-1], rejected["params_background"].values[0])
    assert np.all(rejected["Jp_final"].values == 0.0)
    # ... and the state analysis is exactly that of 4D-Var on the state alone
    state_only = execute(Plan.from_config(tiny(assimilation={**joint, "control": ["state"]})))
    np.testing.assert_allclose(rejected["analysis"].values, state_only["analysis"].values, rtol=0, atol=1e-12)

    with pytest.raises(ConfigError, match="max_cost_per_obs: applies only with control"):
        tiny(assimilation={**joint, "control": ["state"], "max_cost_per_obs": 1.0})


def test_propagated_params_covariance_is_the_posterior_and_a_resumed_run_continues_it(tmp_path):
    config = tiny(background={"state": {"error_std": 0.5}, "params": {"error_std": 0.5, "update": "posterior", "noise_std": 0.02}})
    full = execute(Plan.from_config(config))
    # P of each window after the first: the previous window's posterior + q^2 I, so its std drops below the prior's
    assert full["params_std"].values[0] == 0.5
    assert np.all(full["params_std"].values[1:] < 0.5)
    P_next = full["params_covariance_next"].values
    np.testing.assert_allclose(P_next, P_next.T, rtol=0, atol=1e-14)
    assert np.all(np.linalg.eigvalsh(P_next) >= 0.02**2 * (1 - 1e-9))
    # interrupted after 2 windows, resumed: the same numbers as the uninterrupted run
    partial = checkpointed_windows(Plan.from_config(tiny(background=config["background"], window={"steps": 5, "cycles": 2})), tmp_path)
    resumed = execute(Plan.from_config(config), resume=partial)
    np.testing.assert_allclose(resumed["params_analysis"].values, full["params_analysis"].values, rtol=0, atol=1e-12)
    np.testing.assert_allclose(resumed["params_covariance_next"].values, P_next, rtol=0, atol=1e-12)

    with pytest.raises(ConfigError, match="decay and floor belong to update: schedule"):
        tiny(background={"params": {"update": "posterior", "decay": 0.9}})


def test_limited_memory_propagated_covariance_round_trips_through_a_checkpoint(tmp_path):
    """With the lanczos inner method, P of the next window is a diagonal updated in low rank
    (never an n_p x n_p matrix); written to the checkpoint and read back, a resumed run
    continues exactly as the uninterrupted one."""
    background = {"state": {"error_std": 0.5}, "params": {"error_std": 0.5, "update": "posterior", "noise_std": 0.02}}
    assimilation = {"control": ["state", "params"], "outer_loops": 3, "inner": {"method": "lanczos", "max_iterations": 30}}
    config = tiny(background=background, assimilation=assimilation)
    full = execute(Plan.from_config(config))
    assert "params_covariance_next" not in full and full["params_covariance_next_vectors"].ndim == 2
    assert np.all(full["params_std"].values[1:] < 0.5)
    partial_plan = Plan.from_config(tiny(background=background, assimilation=assimilation, window={"steps": 5, "cycles": 2}))
    rows, state = checkpointed_windows(partial_plan, tmp_path)
    resumed = execute(Plan.from_config(config), resume=(rows, state))
    np.testing.assert_allclose(resumed["params_analysis"].values, full["params_analysis"].values, rtol=0, atol=1e-12)
    for key in ("base_std", "values"):
        np.testing.assert_allclose(resumed[f"params_covariance_next_{key}"].values, full[f"params_covariance_next_{key}"].values, rtol=0, atol=1e-12)
    # negative control: resumed with the low-rank part of P dropped, the run continues differently
    prior_only = dataclasses.replace(state, P=type(state.P)(state.P.base, state.P.U, np.zeros_like(state.P.lam)))
    diverged = execute(Plan.from_config(config), resume=(rows, prior_only))
    assert np.max(np.abs(diverged["params_analysis"].values[-1] - full["params_analysis"].values[-1])) > 1e-8


def test_observations_at_the_window_end_from_an_offset_and_the_filter_rmse():
    config = tiny(observations={"every": 2, "offset": 2, "error_std": 1.0}, window={"steps": 4, "cycles": 3, "observations_at_end": True},
                  assimilation={"control": ["state"], "outer_loops": 2, "inner": {"method": "lanczos"}}, diagnostics={"burn_in_cycles": 1})
    plan = Plan.from_config(config)
    assert [[slot.step for slot in plan.window_slots(c)] for c in range(3)] == [[2, 4], [2, 4], [2, 4]]
    dataset = execute(plan)
    truth, analysis = dataset["truth"].values, dataset["analysis"].values
    filter_rmse = np.sqrt(np.mean((analysis[:, -1] - truth[:, -1]) ** 2, axis=1))
    np.testing.assert_allclose(dataset["rmse_filter"].values, filter_rmse, rtol=1e-12)
    assert dataset.attrs["headline_rmse_filter_after_burn_in"] == pytest.approx(filter_rmse[1:].mean(), abs=1e-6)
    assert np.all(dataset["chi2"].values > 0) and "headline_desroziers_obs_std_mean" in dataset.attrs
    default = Plan.from_config(tiny(window={"steps": 4, "cycles": 2}))
    assert [[slot.step for slot in default.window_slots(c)] for c in range(2)] == [[0, 1, 2, 3], [0, 1, 2, 3]]

def test_overlapping_windows_assimilate_each_observation_once_from_the_previous_analysis(tmp_path):
    """window.shift 4 < steps 8: window c starts at step 4c from the previous analysis at its
    step 4 and takes only the observations after the previous window's end."""
    config = tiny(observations={"every": 2, "offset": 2, "error_std": 1.0},
                  window={"steps": 8, "cycles": 4, "shift": 4, "observations_at_end": True},
                  assimilation={"control": ["state"], "outer_loops": 3, "inner": {"method": "lanczos"}}, diagnostics={"burn_in_cycles": 1})
    plan = Plan.from_config(config)
    assert plan.span == 20 and [plan.window_start(c) for c in range(4)] == [0, 4, 8, 12]
    slots = [[slot.step for slot in plan.window_slots(c)] for c in range(4)]
    assert slots == [[2, 4, 6, 8], [6, 8], [6, 8], [6, 8]]
    assimilated = sorted(plan.window_start(c) + step for c in range(4) for step in slots[c])
    assert assimilated == list(plan.observations.steps)  # every observation, each once
    full = execute(plan)
    analysis, background, truth = full["analysis"].values, full["background"].values, full["truth"].values
    np.testing.assert_array_equal(background[1:, 0], analysis[:-1, 4])  # from the previous analysis at step shift
    assert np.max(np.abs(background[1:, 0] - analysis[:-1, -1])) > 1e-3  # not its end, as windows end to end would
    for c in range(4):
        np.testing.assert_array_equal(truth[c], plan.truth["trajectory"][4 * c : 4 * c + 9])
    np.testing.assert_allclose(full["rmse_filter"].values, np.sqrt(np.mean((analysis[:, -1] - truth[:, -1]) ** 2, axis=1)), rtol=1e-12)
    assert full.attrs["window_shift"] == 4
    # interrupted after 2 windows and resumed: the uninterrupted run, exactly
    resumed = execute(Plan.from_config(config), resume=checkpointed_windows(Plan.from_config(config), tmp_path, stop_after=2))
    np.testing.assert_array_equal(resumed["analysis"].values, analysis)
    with pytest.raises(ConfigError, match=r"window.shift: at most window.steps = 8 \(windows may overlap, not leave gaps\), got 9"):
        tiny(window={"steps": 8, "cycles": 2, "shift": 9})
    with pytest.raises(ConfigError, match="window.shift"):
        tiny(window={"steps": 8, "cycles": 2, "shift": 0})


def test_solver_keys_are_checked_before_anything_runs():
    with pytest.raises(ConfigError, match="assimilation.preconditioner: spectral needs inner.method lanczos, not cg"):
        tiny(assimilation={"control": ["state"], "preconditioner": "spectral", "inner": {"method": "cg"}})
    with pytest.raises(ConfigError, match="lanczos works in the transformed control variables"):
        tiny(assimilation={"control": ["state"], "transform": False, "inner": {"method": "lanczos"}})
    with pytest.raises(ConfigError, match="assimilation.tolerance"):
        tiny(assimilation={"control": ["state"], "tolerance": -1.0})


def test_reading_a_result_file_never_imports_what_its_config_names(tmp_path, monkeypatch):
    """A result file someone sent: recompute_cost builds registered names only, unless asked."""
    from fourdvar.app.results import config_text, recompute_cost

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "sent_module.py").write_text(
        "import pathlib\npathlib.Path('IMPORTED').write_text('code ran')\n"
        "from models import Lorenz96 as Model\n"
    )
    config = tiny(model={"type": "lorenz96", "n_state": 12}, truth={"model": {"type": "lorenz96", "n_state": 12}, "spinup_steps": 50},
                  assimilation={"control": ["state"], "outer_loops": 1, "inner": {"max_iterations": 5}}, window={"steps": 5, "cycles": 1})
    result = execute(Plan.from_config(config))
    assert recompute_cost(result, 0).J == pytest.approx(float(result["J_final"].values[0]), rel=1e-12)  # registered names: fine

    for field in ("model", "truth"):
        doctored = result.copy()
        edited = copy.deepcopy(config)
        if field == "model":
            edited["model"] = {"type": "sent_module:Model", "n_state": 12}
        else:
            edited["truth"]["model"] = {"type": "hybrid", "physics": {"type": "sent_module:Model", "n_state": 12},
                                        "correction": {"type": "local_mlp", "n_state": 12}}
        doctored.attrs["config"] = config_text(edited)
        with pytest.raises(ConfigError, match=r"model.type: .*'sent_module:Model': importing modules named in this input is not allowed"):
            recompute_cost(doctored, 0)
        assert not (tmp_path / "IMPORTED").exists()
    # negative control: asked explicitly, the module is imported (and its code runs)
    recompute_cost(doctored, 0, allow_imports=True)
    assert (tmp_path / "IMPORTED").read_text() == "code ran"
