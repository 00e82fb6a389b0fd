"""Quasi-static minimisation reaches the global minimum of a long window where Gauss-Newton
from the background stops in a secondary one."""

from __future__ import annotations

import numpy as np
import pytest

from fourdvar import FourDVar
from fourdvar.covariances import Diagonal
from fourdvar.quasistatic import solve_quasi_static, stage_lengths
from models import Lorenz96
from observations import Identity, synthetic_observations


def test_stage_lengths_grow_to_the_window():
    assert stage_lengths(48, 8) == [8, 16, 24, 32, 40, 48]
    assert stage_lengths(20, 8) == [8, 16, 20]
    assert stage_lengths(5, 8) == [5]
    with pytest.raises(ValueError, match="stage_steps must be at least 1"):
        stage_lengths(10, 0)


def test_quasi_static_stages_find_the_minimum_that_a_direct_solve_misses_on_a_long_window():
    rng = np.random.default_rng(0)
    model = Lorenz96(40)
    x = model.forecast(8 + rng.standard_normal(40), np.empty(0), 1000)[-1]
    L = 48  # 12 observation times 4 steps apart: 2.4 time units, several Lyapunov times
    truth = model.forecast(x, np.empty(0), L)
    obs = synthetic_observations(truth, list(range(4, L + 1, 4)), Identity(n_state=40), 1.0, rng)
    xb = truth[0] + 0.5 * rng.standard_normal(40)
    B = Diagonal(0.5, size=40)
    direct = FourDVar(model, obs, xb=xb, B=B, n_steps=L).solve(outer_loops=8)
    staged = solve_quasi_static(model, obs, xb, B, np.empty(0), None, "state", L, 8, outer_loops=20)
    assert staged.success and [stage[0] for stage in staged.stages] == [8, 16, 24, 32, 40, 48]
    n_obs = 12 * 40
    assert abs(2 * staged.final.J / n_obs - 1) < 0.15  # a minimum that fits the data as it should
    assert direct.final.J > 2 * staged.final.J  # the direct solve is stuck far above it (negative control)
    rmse = lambda x0: np.sqrt(np.mean((x0 - truth[0]) ** 2))
    assert rmse(staged.x0) < 0.5 * rmse(direct.x0)
