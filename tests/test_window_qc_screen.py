"""A window solved with the solver options' quality control is screened with that quality
control only: the background check (a blocked TL sweep of the window) runs once per problem
when it is on, never when it is off, and the analysis is the same either way when it rejects
nothing."""

from __future__ import annotations

import numpy as np
import pytest

import fourdvar.qc as qc
from fourdvar.covariances import Diagonal
from fourdvar.cycling import WindowSolver
from fourdvar.options import SolverOptions
from fourdvar.qc import QualityControl
from models import Lorenz96
from observations import Subset, synthetic_observations


@pytest.fixture
def window():
    rng = np.random.default_rng(3)
    model = Lorenz96(20)
    truth = model.forecast(model.forecast(8 + rng.standard_normal(20), np.empty(0), 500)[-1], np.empty(0), 8)
    obs = synthetic_observations(truth, range(1, 9), Subset(20, np.arange(0, 20, 2)), 0.5, rng)
    return model, list(obs), truth[0] + 0.3 * rng.standard_normal(20)


@pytest.fixture
def checks(monkeypatch):
    """The number of background checks run."""
    calls = []
    original = qc.background_departures
    monkeypatch.setattr(qc, "background_departures", lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


@pytest.mark.parametrize("stages", [None, 4])
def test_the_background_check_runs_only_when_the_options_ask_for_it(window, checks, stages):
    model, slots, xb = window
    B, n_problems = Diagonal(0.3, size=20), 1 if stages is None else 3  # the whole window, and one per stage
    analyses = {}
    for check in (20.0, None):
        checks.clear()
        options = SolverOptions(outer_loops=4, qc=QualityControl(background_check=check))
        solver = WindowSolver(model, "state", 8, options, quasi_static_steps=stages)
        _, result = solver.solve(slots, xb, B, np.empty(0), None, solver.control)
        assert len(checks) == (n_problems if check else 0)
        assert result.qc.n_rejected == 0
        analyses[check] = result.x0
    np.testing.assert_array_equal(analyses[20.0], analyses[None])
