"""The truth spin-up runs in stretches: the same last state as one forecast, to the bit, its
diagnostics at the steps asked, and memory bounded by a stretch, not by the spin-up's length.
The least sizes a model's options imply are lower bounds of what the built model holds."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from conftest import CONFIGS

from fourdvar.app.config import load_config
from fourdvar.app.plan import SPINUP_STRETCH, spin_up
from fourdvar.app.sizes import least_sizes
from fourdvar.registry import build_model
from fourdvar.window import DivergenceError, forecast

L96 = {"type": "lorenz96", "n_state": 40}


def l96_start(n: int = 40) -> np.ndarray:
    return 8.0 + np.random.default_rng(1).standard_normal(n)


@pytest.mark.parametrize("n_steps", [0, 1, SPINUP_STRETCH, 2 * SPINUP_STRETCH + 37])
def test_the_streamed_spin_up_ends_on_the_forecasts_last_state_to_the_bit(n_steps):
    model, x = build_model(L96), l96_start()
    expected = forecast(model, x, np.empty(0), n_steps)[-1]
    assert np.array_equal(spin_up(model, x, np.empty(0), n_steps), expected)
    # negative control: one step fewer is another state
    if n_steps:
        assert not np.array_equal(spin_up(model, x, np.empty(0), n_steps - 1), expected)


def test_the_spin_up_diagnostic_sees_every_requested_step_of_the_trajectory():
    model, x = build_model(L96), l96_start()
    n_steps, every = 2 * SPINUP_STRETCH + 100, 300
    trajectory = forecast(model, x, np.empty(0), n_steps)
    seen = {}
    spin_up(model, x, np.empty(0), n_steps, every=every, diagnostic=lambda k, state: seen.setdefault(k, float(np.std(state))))
    assert list(seen) == list(range(every, n_steps + 1, every))
    assert all(value == float(np.std(trajectory[k])) for k, value in seen.items())


def test_the_spin_up_holds_one_stretch_not_its_trajectory():
    n, n_steps = 2000, 4 * SPINUP_STRETCH
    model, x = build_model({**L96, "n_state": n}), l96_start(n)
    bound = 3 * (SPINUP_STRETCH + 1) * n * 8  # a stretch of states, and the copies of its last one
    peaks = []
    for run in (lambda: spin_up(model, x, np.empty(0), n_steps), lambda: forecast(model, x, np.empty(0), n_steps)[-1]):
        tracemalloc.start()
        run()
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[0] < bound < peaks[1]  # the whole trajectory (the negative control) is above it


class Growing:
    """``x_k = 1.5 x_{k-1}``: from 1, the state overflows at step 1751, in the fourth stretch."""

    n_state, n_params = 2, 0

    def step(self, x, p):
        return 1.5 * x


def test_a_divergence_in_a_later_stretch_says_how_far_in_it_was():
    with pytest.raises(DivergenceError, match="at step 1751 ") as whole:
        forecast(Growing(), np.ones(2), np.empty(0), 4 * SPINUP_STRETCH)
    first = SPINUP_STRETCH * (1751 // SPINUP_STRETCH)
    with pytest.raises(DivergenceError) as streamed:
        spin_up(Growing(), np.ones(2), np.empty(0), 4 * SPINUP_STRETCH, "truth spin-up")
    assert str(streamed.value).startswith(f"truth spin-up, {first} steps in: the model state is not finite at step {1751 - first} ")
    assert str(whole.value) != str(streamed.value)


MODELS = [("qg_coarse", "model"), ("qg_coarse", "truth.model"), ("qg_hybrid", "model"), ("l96_hybrid", "model"),
          ("l96_surrogate", "model"), ("l96_two_scale", "truth.model")]


@pytest.mark.parametrize("name, key", MODELS)
def test_the_least_sizes_of_a_shipped_model_bound_the_built_model_from_below(name, key):
    config = load_config(CONFIGS / f"{name}.yaml")
    section, _, field = key.rpartition(".")
    options = (config[section] if section else config)[field]
    options = {k: v for k, v in options.items() if k not in ("params", "params_from")}
    least, model = least_sizes(options, key), build_model(options)
    assert 0 < least.n_state <= model.n_state or (least.n_state == 0 and "nx" not in options and "n_state" not in options)
    assert least.n_params <= model.n_params
    assert least.key.startswith(key) or least.largest() == 0


def test_the_least_sizes_read_grids_widths_and_nested_components():
    least = least_sizes({"type": "tendency_hybrid", "physics": {"type": "qg", "nx": 1e5},
                         "correction": {"type": "conv_surrogate", "channels": [2, 8, 2], "ny": 4, "nx": 4}}, "model")
    assert (least.n_state, least.n_params, least.activations) == (1e10, 32.0, 16 * 12.0)
    assert least.key == "model.physics.nx" and "100000 x 100000" in least.shown
    # what is not a size is left to the constructor: booleans, strings, negative or fractional numbers
    assert least_sizes({"type": "x", "nx": True, "n_state": -5, "hidden": [1.5, 2], "channels": "many"}, "model").n_state == 0
