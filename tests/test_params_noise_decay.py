"""The random walk of the propagated parameter covariance, ``P_{c+1} = P^a_c + q_c^2 I`` with
``q_c = max(q d^c, q_min)``: each window adds its own ``q_c``, and the configuration keys
``noise_decay`` and ``noise_floor`` reach the rule and round-trip through the typed objects."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from fourdvar.app.config import ConfigError, resolve_config
from fourdvar.app.experiment import experiment_of
from fourdvar.app.plan import Plan
from fourdvar.app.run import _method
from fourdvar.covariances import Diagonal
from fourdvar.cycling import CyclingRule, cycle
from models import Lorenz96
from observations import Identity, synthetic_observations

N, STEPS, CYCLES = 8, 4, 4


def decayed_outcomes(q, decay, floor):
    """Four dense-posterior windows of a Lorenz-96 twin whose forcing is the one parameter."""
    rng = np.random.default_rng(3)
    model = Lorenz96(N, estimate_forcing=True)
    truth = model.forecast(8.0 + rng.standard_normal(N), np.array([8.0]), 200 + STEPS * CYCLES)[200:]
    windows = [synthetic_observations(truth[c * STEPS: (c + 1) * STEPS + 1], [0, 2, 4], Identity(n_state=N), 0.5, rng)
               for c in range(CYCLES)]
    return list(cycle(model, windows, truth[0] + 0.5 * rng.standard_normal(N), Diagonal(0.5, size=N), np.array([7.0]),
                      Diagonal(1.0, size=1), control=["state", "params"], n_steps=STEPS, method="cg", outer_loops=1,
                      max_iterations=30, params_noise_std=q, params_noise_decay=decay, params_noise_floor=floor))


def test_each_window_adds_its_own_decayed_random_walk_to_the_posterior():
    q, decay, floor = 0.2, 0.5, 0.04
    expected = [0.2, 0.1, 0.05, 0.04]  # max(0.2 * 0.5^c, 0.04)
    for c, outcome in enumerate(decayed_outcomes(q, decay, floor)):
        added = outcome.P_next.matrix - outcome.params_posterior
        np.testing.assert_allclose(added, [[expected[c] ** 2]], rtol=1e-10, atol=0)
    # negative control: without the decay every window adds q^2, which the last window's P would not match
    constant = decayed_outcomes(q, 1.0, 0.0)[-1]
    np.testing.assert_allclose(constant.P_next.matrix - constant.params_posterior, [[q**2]], rtol=1e-10, atol=0)
    assert abs(q**2 - expected[-1] ** 2) > 0.03


def test_the_rule_defaults_leave_the_random_walk_constant():
    rule = CyclingRule(params_noise_std=0.003)
    assert [rule.noise_std(c) for c in (0, 1, 299)] == [0.003, 0.003, 0.003]


def test_noise_decay_and_floor_round_trip_through_the_typed_config_to_the_rule():
    config = {"seed": 1, "model": {"type": "lorenz96", "n_state": N, "dt": 0.05, "estimate_forcing": True}, "truth": {"spinup_steps": 50},
              "background": {"params": {"error_std": 0.5, "update": "posterior", "noise_std": 0.01, "noise_decay": 0.99, "noise_floor": 0.002}},
              "window": {"steps": 4, "cycles": 2}, "assimilation": {"control": ["state", "params"]}}
    resolved = resolve_config(copy.deepcopy(config))
    policy = experiment_of(resolved).method.P_policy
    assert (policy.noise_std, policy.noise_decay, policy.noise_floor) == (0.01, 0.99, 0.002)
    assert policy.key("noise_decay") == "background.params.noise_decay"
    _, rule = _method(Plan.from_config(resolved))
    assert rule.noise_std(10) == 0.01 * 0.99**10 and rule.noise_std(1000) == 0.002
    defaults = experiment_of(resolve_config({k: v for k, v in copy.deepcopy(config).items() if k != "background"})).method.P_policy
    assert (defaults.noise_decay, defaults.noise_floor) == (1.0, 0.0)
    with pytest.raises(ConfigError, match="noise_decay and noise_floor belong to update: posterior"):
        resolve_config({**copy.deepcopy(config), "background": {"params": {"update": "schedule", "noise_decay": 0.99}}})
