"""The observation layouts of the Brajard et al. 2020 set-up (a random subset drawn again
at every observation time, or a fixed one) and the configuration that uses them."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import yaml

from fourdvar.app.config import resolve_config
from fourdvar.app.plan import Plan
from fourdvar.app.run import execute
from fourdvar.registry import build_operator
from fourdvar.window import forecast
from observations import ObservationSet, RandomSubset, Subset, synthetic_observations
from observations.climatology import climatology

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("fraction, count", [(1.0, 40), (0.75, 30), (0.5, 20), (0.4, 16)])
def test_a_fraction_observes_that_many_distinct_points_at_every_step(fraction, count):
    H = RandomSubset(40, fraction=fraction, seed=2, move_every=1)
    for step in (0, 1, 7, 500):
        indices = H.at_step(step).indices
        assert indices.size == count and np.unique(indices).size == count
        assert indices.min() >= 0 and indices.max() < 40 and np.all(np.diff(indices) > 0)
    assert RandomSubset(40, count=count, seed=2).n_obs == count


def test_the_subset_is_drawn_again_at_every_step_and_covers_the_grid():
    H = RandomSubset(40, fraction=0.5, seed=2, move_every=1)
    draws = np.array([H.at_step(step).indices for step in range(200)])
    changed = [not np.array_equal(a, b) for a, b in zip(draws, draws[1:])]
    assert all(changed)
    hits = np.bincount(draws.ravel(), minlength=40) / 200  # each point observed about half the time
    assert hits.min() > 0.35 and hits.max() < 0.65
    negative = RandomSubset(40, fraction=0.5, seed=2)  # no move_every: the same points at every step
    assert all(np.array_equal(negative.at_step(step).indices, negative.indices) for step in range(50))


def test_move_every_keeps_the_subset_for_that_many_steps():
    H = RandomSubset(40, count=10, seed=4, move_every=5)
    assert all(np.array_equal(H.at_step(step).indices, H.indices) for step in range(5))
    assert all(np.array_equal(H.at_step(step).indices, H.at_step(5).indices) for step in range(5, 10))
    assert not np.array_equal(H.at_step(4).indices, H.at_step(5).indices)


def test_the_draws_are_reproducible_from_the_seed():
    a, b = (RandomSubset(40, fraction=0.5, seed=7, move_every=1) for _ in range(2))
    c = RandomSubset(40, fraction=0.5, seed=8, move_every=1)
    for step in (0, 3, 99):
        np.testing.assert_array_equal(a.at_step(step).indices, b.at_step(step).indices)
    assert not all(np.array_equal(a.at_step(s).indices, c.at_step(s).indices) for s in range(10))


def test_the_operator_of_a_step_is_the_gather_with_its_transpose_as_adjoint():
    H = RandomSubset(40, fraction=0.4, seed=3, move_every=1).at_step(11)
    assert type(H) is Subset
    rng = np.random.default_rng(0)
    x, dx, ay = rng.standard_normal(40), rng.standard_normal(40), rng.standard_normal(16)
    np.testing.assert_array_equal(H.apply(x), x[H.indices])
    lhs, rhs = H.apply_tl(x, dx) @ ay, dx @ H.apply_ad(x, ay)
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs)


@pytest.mark.parametrize("keywords, message", [
    ({"fraction": 1.5}, "fraction must be a number in (0, 1]"),
    ({"fraction": 0.5, "count": 20}, "one of them"),
    ({}, "one of them"),
    ({"count": 41}, "count must be an integer in [1, n_state=40]"),
    ({"fraction": 0.5, "move_every": 0}, "move_every must be an integer >= 1"),
])
def test_bad_layouts_are_refused_naming_the_key(keywords, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        RandomSubset(40, **keywords)


def test_the_registry_builds_it_from_a_yaml_spec():
    H = build_operator({"type": "random_subset", "n_state": 40, "fraction": 0.5, "seed": 2, "move_every": 1})
    assert isinstance(H, RandomSubset) and H.n_obs == 20


def _plan(operator: dict, cycles: int = 2):
    config = yaml.safe_load((ROOT / "configs" / "l96_brajard2020.yaml").read_text())
    config["observations"]["operator"] = operator
    config["window"]["cycles"] = cycles
    config["diagnostics"]["forecast_skill"] = False
    config["truth"]["spinup_steps"] = 100
    config["model"] = config["truth"]["model"]  # the layout is what is tested: the cheap model
    config["assimilation"]["control"] = ["state"]
    config["background"].pop("params")
    return Plan.from_config(resolve_config(copy.deepcopy(config)))


def test_the_configuration_observes_a_new_random_half_at_every_step_and_the_file_keeps_it(tmp_path):
    spec = yaml.safe_load((ROOT / "configs" / "l96_brajard2020.yaml").read_text())["observations"]["operator"]
    plan = _plan(spec)
    H = build_operator({**spec, "n_state": 40})
    slots = list(plan.observations)
    assert [slot.step for slot in slots] == list(range(40))  # every step of two 20-step windows
    for slot in slots:
        np.testing.assert_array_equal(slot.operator.indices, H.indices_at(slot.step))
    noise = np.concatenate([slot.values - plan.truth["trajectory"][slot.step, slot.operator.indices] for slot in slots])
    assert 0.85 < noise.std() < 1.15  # error std 1 on 800 draws
    plan.observations.to_netcdf(tmp_path / "obs.nc")
    back = ObservationSet.from_netcdf(tmp_path / "obs.nc", n_state=40)
    for slot, again in zip(slots, back):
        np.testing.assert_array_equal(slot.operator.indices, again.operator.indices)


# --- the fixed half: climatological pseudo-observations of the unobserved points -------------


def test_the_pseudo_observations_are_the_observed_climate_at_the_unobserved_points_every_so_many_steps():
    rng = np.random.default_rng(5)
    truth = 2.0 + 3.0 * rng.standard_normal((41, 40))
    observed = synthetic_observations(truth, range(41), {"type": "subset", "indices": {"step": 2}}, 0.5, rng)
    mu, sigma_c = climatology(list(observed))
    y = np.concatenate([slot.values for slot in observed])
    assert mu == pytest.approx(y.mean(), rel=1e-12) and sigma_c == pytest.approx(np.sqrt(y.var() - 0.25), rel=1e-12)
    assert abs(mu - 2.0) < 0.2 and abs(sigma_c - 3.0) < 0.2  # the truth's climate, noise removed
    augmented = observed.with_climatology(20)
    for slot, before in zip(augmented, observed):
        if slot.step % 20:
            np.testing.assert_array_equal(slot.operator.indices, before.operator.indices)
            np.testing.assert_array_equal(slot.values, before.values)
            continue
        np.testing.assert_array_equal(slot.operator.indices, np.arange(40))
        np.testing.assert_array_equal(slot.values[0::2], before.values)  # the real observations kept
        np.testing.assert_array_equal(slot.values[1::2], np.full(20, mu))
        np.testing.assert_array_equal(slot.covariance.std, np.tile([0.5, sigma_c], 20))
    assert [slot.step for slot in augmented if slot.operator.n_obs == 40] == [0, 20, 40]
    with pytest.raises(ValueError, match="every must be an integer >= 1"):
        observed.with_climatology(0)


#: the weights' P of the fixed half (configs/l96_brajard2020.yaml's comments): a small first P, a larger decaying walk
SLOW_START = {"error_std": 0.1, "noise_std": 0.03, "noise_decay": 0.99}


def _fixed_half(cycles: int, seed: int = 1, params: dict | None = None, **assimilation):
    """A fixed half observed (the even points), the unobserved half observed as the climate
    every 5 steps; the odd points' analysis RMSE in the last window, the RMS error after
    5 steps of the learned and of the untrained network (zero output: persistence) from
    truth states of the run, and the weights' step |p_c - p_{c-1}| of each window."""
    config = yaml.safe_load((ROOT / "configs" / "l96_brajard2020.yaml").read_text())
    config["observations"]["operator"] = {"type": "subset", "indices": {"start": 0, "stop": 40, "step": 2}}
    config["observations"]["climatology_every"] = 5
    config["assimilation"].update(assimilation)
    config["background"]["params"].update(params or {})
    config["window"]["cycles"] = cycles
    config["seed"] = seed
    config["truth"]["spinup_steps"] = 100
    config["diagnostics"]["forecast_skill"] = False
    plan = Plan.from_config(resolve_config(config))
    with np.errstate(all="ignore"):
        dataset = execute(plan)
    error = dataset["analysis"].values - dataset["truth"].values
    truth = dataset["truth"].values.reshape(-1, 40)
    starts = truth[:-5:5]

    def five_steps(p):
        ends = np.array([forecast(plan.model, x0, p, 5)[-1] for x0 in starts])
        return np.sqrt(np.mean((ends - truth[5::5][: len(starts)]) ** 2))

    weights = np.vstack([plan.pb0, dataset["params_analysis"].values])
    odd = np.sqrt(np.mean(error[-1, :, 1::2] ** 2))
    steps = np.linalg.norm(np.diff(weights, axis=0), axis=1)
    return odd, five_steps(weights[-1]), five_steps(plan.pb0), steps


def test_with_a_fixed_half_observed_the_weights_learn_when_each_window_is_grown_quasi_statically():
    # seed 1, 8 windows.  Each window grown 10 steps, then 20 (quasi_static_steps: 10): the
    # learned network's 5-step error is 0.38 of the untrained one's (1.45 against 3.84) and
    # the unobserved points' analysis RMSE 1.4 (their climatological std 3.6).  The whole
    # window at once, the joint state-and-weights minimisation falls into a basin where the
    # unobserved half serves the fit as free latent variables: 0.57 of the untrained error,
    # unobserved RMSE 2.5; over 30 windows it stays there (about 0.8, RMSE 3-5) while the
    # grown windows go on learning (about 0.2, RMSE 0.7).
    odd, learned, untrained, _ = _fixed_half(8, quasi_static_steps=10)
    assert learned < 0.45 * untrained and odd < 2.0
    odd, learned, untrained, _ = _fixed_half(8)
    assert learned > 0.45 * untrained and odd > 2.0


def test_with_a_fixed_half_observed_a_small_first_P_keeps_the_weights_steps_to_what_the_state_can_follow():
    # seed 2, on which the configuration's first P (std 0.5 a weight) settles where the
    # unobserved half is a free latent variable (150 windows: unobserved RMSE 3-7, skill 0.25).
    # There the first window moves the 225 weights by 8.5, the next ones by 4-5, while the
    # unobserved points are still at their climatological error (RMSE 3-4): the network is
    # fitted to states the analysis has not found.  With a first P of std 0.1 and a random
    # walk 0.03 decaying as 0.99^c the steps are 2.4 then about 1, and the network improves
    # at every window (5-step error 0.84-0.86 of the untrained one's); over 150 windows it
    # learns on seeds 1, 2 and 3 (benchmarks/RESULTS.md, the fixed-half row).
    odd, learned, untrained, steps = _fixed_half(4, seed=2, params=SLOW_START, quasi_static_steps=10)
    assert steps[0] < 3.0 and steps[1:].max() < 1.5
    assert learned < 0.9 * untrained and odd < 5.0  # learning, and the unobserved half inside the climate
    _, _, _, fast = _fixed_half(2, seed=2, quasi_static_steps=10)
    assert fast[0] > 7.0 and fast[1] > 4.0
