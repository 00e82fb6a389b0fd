"""Desroziers estimates recover the error stds used to make the data, on average over windows."""

from __future__ import annotations

import numpy as np

from fourdvar import FourDVar
from fourdvar.covariances import Diagonal
from fourdvar.departures import window_departures
from models import Lorenz96
from observations import Identity, synthetic_observations


def test_desroziers_estimates_and_chi2_match_the_errors_that_made_the_data():
    rng = np.random.default_rng(0)
    model = Lorenz96(40)
    x = model.forecast(8.0 + rng.standard_normal(40), np.empty(0), 1000)[-1]
    obs_std, background_std = 0.5, 0.8
    stats = []
    for _ in range(6):
        truth = model.forecast(x, np.empty(0), 4)
        obs = synthetic_observations(truth, [0, 2, 4], Identity(n_state=40), obs_std, rng)
        xb = truth[0] + background_std * rng.standard_normal(40)
        problem = FourDVar(model, obs, xb=xb, B=Diagonal(background_std, size=40))
        result = problem.solve()
        stats.append(window_departures(problem.cost, model.forecast(xb, np.empty(0), 4), model.forecast(result.x0, np.empty(0), 4), result.final.J))
        x = truth[-1]
    chi2 = np.mean([s.chi2 for s in stats])
    sigma_o = np.sqrt(np.mean([s.obs_error_std**2 for s in stats]))
    assert abs(chi2 - 1.0) < 0.15
    assert abs(sigma_o - obs_std) < 0.1 * obs_std
    assert all(s.oma_rms < s.omb_rms for s in stats)
    sigma_b0 = np.sqrt(np.mean([s.background_error_std**2 for s in stats]))
    assert sigma_b0 > 0.5 * background_std  # at step 0 B applies; later steps grow it
    # negative control: the O-B spread alone (a wrong estimate of sigma_o) fails the same tolerance
    assert abs(np.sqrt(np.mean([s.omb_rms**2 for s in stats])) - obs_std) > 0.1 * obs_std


def test_a_window_without_observations_is_assimilated_and_its_departures_are_nan():
    """A gap in the data: the analysis is the background, the statistics are undefined (NaN), nothing raises."""
    from fourdvar.covariances import Diagonal
    from fourdvar.cycling import assimilate_window
    from models import Lorenz96

    xb = 8.0 + np.random.default_rng(0).standard_normal(40)
    outcome = assimilate_window(Lorenz96(40), [], xb, Diagonal(1.0, size=40), np.empty(0), None, "state", 5)
    np.testing.assert_array_equal(outcome.x0, xb)
    assert outcome.departures.n_obs == 0 and np.isnan(outcome.departures.chi2)
