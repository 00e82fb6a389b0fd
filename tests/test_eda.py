"""The ensemble of data assimilations: perturbed observations with covariance R, the
control equal to a plain cycled 4D-Var while the ensemble has no spread, the next
window's B built from the members' background forecasts, and results independent of
the order in which members run."""

from __future__ import annotations

import numpy as np
import pytest

from fourdvar.covariances import Diagonal
from fourdvar.cycling import cycle
from fourdvar.eda import eda_cycle, inflate, perturb_observations
from fourdvar.ensemble import HybridEnsembleCovariance
from fourdvar.interfaces import ObservationSlot
from models import Lorenz96
from observations import Identity, synthetic_observations

N_STEPS, CYCLES, MEMBERS = 4, 3, 4


SHIFT = 2


def l96_setup(seed=0, shift=N_STEPS):
    rng = np.random.default_rng(seed)
    model = Lorenz96(40)
    x_true = model.forecast(8.0 + rng.standard_normal(40), np.empty(0), 500)[-1]
    truth = model.forecast(x_true, np.empty(0), N_STEPS * CYCLES)
    obs = synthetic_observations(truth, list(range(0, N_STEPS * CYCLES, 2)), Identity(n_state=40), 1.0, rng)
    windows = [new_observations(obs.window(c * shift, N_STEPS, include_end=False), 0 if c == 0 else N_STEPS - shift) for c in range(CYCLES)]
    return model, windows, x_true + rng.standard_normal(40)


def new_observations(slots, first_new):
    """The slots of an overlapping window after the previous window's end (step ``first_new`` on)."""
    return [slot for slot in slots if slot.step >= first_new]


def run_eda(perturb=("observations", "background"), map_members=map, shift=N_STEPS, **options):
    model, windows, xb = l96_setup(shift=shift)
    return list(eda_cycle(model, windows, xb, Diagonal(0.7, size=40), np.empty(0), None, n_members=MEMBERS, weight=0.5,
                          localization=3.0, perturb=perturb, seed=7, n_steps=N_STEPS, map_members=map_members,
                          shift=shift, outer_loops=2, max_iterations=40, **options))


def test_perturbed_observations_have_the_observation_error_covariance():
    std = np.linspace(0.5, 2.0, 5)
    slot = ObservationSlot(0, np.zeros(5), Identity(n_state=5), Diagonal(std))
    rng = np.random.default_rng(0)
    draws = np.array([perturb_observations([slot], rng)[0].values for _ in range(20000)])
    assert np.allclose(draws.std(axis=0), std, rtol=0.03)  # sampling error of a std ~ 0.5 %
    assert np.abs(np.corrcoef(draws.T) - np.eye(5)).max() < 0.05


@pytest.mark.parametrize("stages", [{}, {"quasi_static_steps": 2}])
def test_the_control_is_a_plain_4dvar_while_the_ensemble_has_no_spread(stages):
    windows = run_eda(perturb=("observations",), **stages)
    model, obs_windows, xb = l96_setup()
    plain = next(cycle(model, obs_windows, xb, Diagonal(0.7, size=40), np.empty(0), None, n_steps=N_STEPS, outer_loops=2, max_iterations=40, **stages))
    assert windows[0].B.__class__ is Diagonal  # no spread yet: the static B alone
    assert np.array_equal(windows[0].control.x0, plain.x0)
    if stages:  # every 4D-Var of the window grew it in quasi-static stages of 2 steps
        assert all([length for length, *_ in outcome.result.stages] == [2, 4] for outcome in [windows[0].control, *windows[0].members])
    member_analyses = np.array([m.x0 for m in windows[0].members])
    assert np.all(np.std(member_analyses, axis=0) > 0)  # the perturbed observations made them differ
    assert isinstance(windows[1].B, HybridEnsembleCovariance)


def test_the_next_window_b_comes_from_the_members_background_forecasts():
    windows = run_eda()
    for previous, current in zip(windows, windows[1:]):
        forecasts = np.array([m.analysis_trajectory[-1] for m in previous.members])
        assert np.array_equal(current.B.perturbations, forecasts - forecasts.mean(axis=0))
        assert np.array_equal(np.array([m.xb for m in current.members]), forecasts)
        assert np.array_equal(current.control.xb, previous.control.analysis_trajectory[-1])
    assert windows[0].background_spread.shape == (N_STEPS + 1,) and np.all(windows[0].background_spread > 0)


def test_overlapping_windows_start_the_control_and_every_member_from_their_analysis_at_step_shift():
    windows = run_eda(shift=SHIFT)
    for previous, current in zip(windows, windows[1:]):
        at_shift = np.array([m.analysis_trajectory[SHIFT] for m in previous.members])
        assert np.array_equal(np.array([m.xb for m in current.members]), at_shift)
        assert np.array_equal(current.B.perturbations, at_shift - at_shift.mean(axis=0))
        assert np.array_equal(current.control.xb, previous.control.analysis_trajectory[SHIFT])
        at_end = np.array([m.analysis_trajectory[-1] for m in previous.members])
        assert np.abs(at_end - at_shift).max() > 1e-2  # not the window end, as windows end to end would give


def test_a_shifted_eda_without_perturbations_has_the_control_of_the_shifted_4dvar():
    """No perturbation, no spread (4 equal members: their mean is exact): every window uses
    the static B, and the control is the plain shifted cycle, bit for bit."""
    windows = run_eda(perturb=(), shift=SHIFT)
    model, obs_windows, xb = l96_setup(shift=SHIFT)
    plain = list(cycle(model, obs_windows, xb, Diagonal(0.7, size=40), np.empty(0), None, n_steps=N_STEPS, shift=SHIFT, outer_loops=2, max_iterations=40))
    assert all(window.B.__class__ is Diagonal for window in windows)
    for window, outcome in zip(windows, plain, strict=True):
        assert np.array_equal(window.control.x0, outcome.x0) and np.array_equal(window.control.xb, outcome.xb)
    assert not np.array_equal(windows[-1].control.x0, run_eda(perturb=())[-1].control.x0)  # the shift matters


def test_inflation_spreads_the_members_about_their_mean():
    states = np.random.default_rng(1).standard_normal((5, 40))
    inflated = inflate(states, 1.5)
    assert np.allclose(inflated.mean(axis=0), states.mean(axis=0), rtol=0, atol=1e-14)
    assert np.allclose(inflated - inflated.mean(axis=0), 1.5 * (states - states.mean(axis=0)), rtol=0, atol=1e-14)
    assert inflate(states, 1.0) is states  # rho = 1 leaves the members bit for bit


def test_an_inflated_eda_starts_each_window_from_the_inflated_member_forecasts():
    rho = 1.3
    windows, plain = run_eda(inflation=rho), run_eda()
    for previous, current in zip(windows, windows[1:]):
        forecasts = np.array([m.analysis_trajectory[-1] for m in previous.members])
        spread = forecasts - forecasts.mean(axis=0)
        np.testing.assert_allclose(current.B.perturbations, rho * spread, rtol=0, atol=1e-13)
        np.testing.assert_allclose(np.array([m.xb for m in current.members]), forecasts.mean(axis=0) + rho * spread, rtol=0, atol=1e-13)
    # the first window inflates the initial draws too: rho times the spread of the run without inflation
    ratio = np.linalg.norm(windows[0].B.perturbations) / np.linalg.norm(plain[0].B.perturbations)
    assert ratio == pytest.approx(rho, rel=1e-12)


def test_the_order_in_which_members_run_does_not_change_any_number():
    def reversed_map(function, tasks):
        return list(reversed([function(task) for task in reversed(list(tasks))]))

    forward, backward = run_eda(), run_eda(map_members=reversed_map)
    for a, b in zip(forward, backward):
        for x, y in zip([a.control, *a.members], [b.control, *b.members]):
            assert np.array_equal(x.x0, y.x0) and np.array_equal(x.analysis_trajectory, y.analysis_trajectory)


@pytest.mark.parametrize("bad", [dict(perturb=("winds",)), dict(n_members=1), dict(inflation=0.9), dict(shift=0), dict(shift=2)])
def test_bad_ensemble_settings_are_refused(bad):
    model, windows, xb = l96_setup()
    options = dict(n_members=MEMBERS, weight=0.5, localization=3.0) | bad
    with pytest.raises(ValueError):
        next(eda_cycle(model, windows, xb, Diagonal(0.7, size=40), np.empty(0), None, **options))
