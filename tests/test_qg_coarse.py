"""The coarse-grained QG truth: the spectral coarse-graining, the eddy forcing, and the truth the app builds from it."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from conftest import run_command
from fourdvar.app.config import resolve_config
from fourdvar.app.plan import Plan
from models.qg_coarse import CoarseGrainedQG

NONE = np.empty(0)
FINE, COARSE = 64, 16


def truth_model(coarsening: str = "sharp") -> CoarseGrainedQG:
    return CoarseGrainedQG(coarse_nx=COARSE, nx=FINE, L=5e5, U1=0.05, dt=1800.0, coarsening=coarsening)


def coarse_field(rng, radius: int = 2, amplitude: float = 1e-5) -> np.ndarray:
    """A random coarse PV field ``(2, 16, 16)`` of the wavenumbers ``|k|, |l| <= radius`` (index units)."""
    spectrum = np.zeros((2, COARSE, COARSE // 2 + 1), complex)
    rows = np.r_[0 : radius + 1, COARSE - radius : COARSE]
    spectrum[:, rows, : radius + 1] = rng.standard_normal((2, rows.size, radius + 1)) + 1j * rng.standard_normal((2, rows.size, radius + 1))
    return amplitude * np.fft.irfft2(spectrum, s=(COARSE, COARSE))


def refined(model: CoarseGrainedQG, q: np.ndarray) -> np.ndarray:
    """The coarse fields ``q`` on the fine grid by spectral interpolation (zero padding), flat."""
    spectrum = np.zeros((2, FINE, FINE // 2 + 1), complex)
    spectrum[:, model.rows, : COARSE // 2 + 1] = np.fft.rfft2(q) * (FINE / COARSE) ** 2
    return np.fft.irfft2(spectrum, s=(FINE, FINE)).reshape(-1)


@pytest.mark.parametrize("coarsening", ["sharp", "gaussian"])
def test_coarse_graining_a_field_of_the_coarse_wavenumbers_returns_it_filtered(coarsening):
    model, rng = truth_model(coarsening), np.random.default_rng(0)
    q = coarse_field(rng, radius=COARSE // 2 - 1)  # every coarse wavenumber but the Nyquist ones
    G = model.spectral_weights * (FINE / COARSE) ** 2
    expected = np.fft.irfft2(G * np.fft.rfft2(q), s=(COARSE, COARSE))
    np.testing.assert_allclose(model.resolved_state(refined(model, q)), expected.reshape(-1), rtol=0, atol=1e-15 * np.abs(q).max())
    # within the sharp filter's pass band the field comes back exactly; the Gaussian damps it
    low = coarse_field(rng, radius=2)
    error = np.abs(model.resolved_state(refined(model, low)) - low.reshape(-1)).max() / np.abs(low).max()
    assert error < 1e-14 if coarsening == "sharp" else error > 0.05


def test_coarse_graining_keeps_the_mean_and_removes_the_unresolved_wavenumbers():
    model, rng = truth_model(), np.random.default_rng(1)
    y, x = np.meshgrid(np.arange(FINE), np.arange(FINE), indexing="ij")
    fine_only = np.cos(2 * np.pi * (COARSE // 2 + 3) * x / FINE) * np.sin(2 * np.pi * 11 * y / FINE)  # above the coarse Nyquist
    assert np.abs(model.resolved_state(np.stack([fine_only, 2 * fine_only]).reshape(-1))).max() < 1e-15
    states = rng.standard_normal((3, model.n_state))  # a block of states, each layer's mean kept
    coarse = model.resolved_state(states)
    assert coarse.shape == (3, model.coarse.n_state)
    np.testing.assert_allclose(coarse.reshape(3, 2, -1).mean(axis=-1), states.reshape(3, 2, -1).mean(axis=-1), rtol=1e-12)
    np.testing.assert_allclose(coarse[1], model.resolved_state(states[1]), rtol=0, atol=1e-15)


def test_eddy_forcing_of_a_fine_state_that_is_itself_coarse_is_zero_to_round_off():
    """Fields of wavenumbers up to 2 (of 8 on the coarse grid): their products stay within the sharp
    filter's pass band, so the fine and the coarse tendencies agree; a field with fine scales has
    an eddy forcing of the size of the tendency (negative control)."""
    model, rng = truth_model(), np.random.default_rng(2)
    q = coarse_field(rng)
    f_coarse = model.coarse.tendency(q.reshape(-1), NONE)
    assert np.abs(model.unresolved_tendency(refined(model, q))).max() < 1e-13 * np.abs(f_coarse).max()
    x = 1e-5 * rng.standard_normal(model.n_state)
    S, f = model.unresolved_tendency(x), model.coarse.tendency(model.resolved_state(x), NONE)
    assert np.linalg.norm(S) > 0.1 * np.linalg.norm(f)


def test_eddy_forcing_is_the_missing_tendency_of_the_coarse_grained_fine_run():
    """``(C q(t + h) - C q(t - h)) / 2h = f_c(C q(t)) + S(q(t)) + O(h^2)`` along the fine run (no filter); without
    ``S`` the coarse tendency misses it by the size of ``S`` (negative control)."""
    rng, h = np.random.default_rng(3), 60.0
    model = CoarseGrainedQG(coarse_nx=COARSE, nx=FINE, L=5e5, U1=0.05, dt=h, filterfac=0.0)
    run = model.forecast(refined(model, coarse_field(rng, radius=4)) + 2e-6 * rng.standard_normal(model.n_state), NONE, 2)
    rate = (model.resolved_state(run[2]) - model.resolved_state(run[0])) / (2 * h)
    S = model.unresolved_tendency(run[1])
    f = model.coarse.tendency(model.resolved_state(run[1]), NONE)
    assert np.linalg.norm(rate - f - S) < 1e-6 * np.linalg.norm(S)
    assert np.linalg.norm(rate - f) > 0.5 * np.linalg.norm(S)


def test_the_coarse_steps_missing_tendency_completes_its_step_to_the_coarse_grained_fine_run():
    """``C Phi_f^2(q) = M_c(C q) + dt_c S_step(q)`` with ``dt_c = 2 dt_f``: the coarse step, filter included,
    completed by ``S_step``; without it, it misses by ``dt_c |S_step|`` (negative control)."""
    model = CoarseGrainedQG(coarse_nx=COARSE, nx=FINE, L=5e5, U1=0.05, dt=1800.0, missing="step", coarse_dt=3600.0)
    rng = np.random.default_rng(5)
    x = refined(model, coarse_field(rng, radius=4)) + 2e-6 * rng.standard_normal(model.n_state)
    fine = model.forecast(x, NONE, 2)[-1]
    coarse_step = model.coarse.step(model.resolved_state(x), NONE)
    S_step = model.unresolved_tendency(x)
    assert model.coarse.dt == 3600.0 and model.substeps == 2
    np.testing.assert_allclose(coarse_step + 3600.0 * S_step, model.resolved_state(fine), rtol=0, atol=1e-14 * np.abs(fine).max())
    assert np.linalg.norm(model.resolved_state(fine) - coarse_step) > 1e-3 * np.linalg.norm(fine)


def test_the_coarse_steps_missing_tendency_tends_to_the_eddy_forcing_without_filters():
    """Without the filters ``S_step = S + O(dt)``: the difference halves with the time step.  With the
    filters the coarse step also misses the damping of the smallest resolved scales, beside ``S``
    (negative control)."""
    rng = np.random.default_rng(6)
    options = dict(coarse_nx=COARSE, nx=FINE, L=5e5, U1=0.05, filterfac=0.0)
    x = refined(truth_model(), coarse_field(rng, radius=4)) + 2e-6 * rng.standard_normal(2 * FINE * FINE)
    S = CoarseGrainedQG(**options).unresolved_tendency(x)
    gaps = [np.linalg.norm(CoarseGrainedQG(dt=h, coarse_dt=2 * h, missing="step", **options).unresolved_tendency(x) - S) / np.linalg.norm(S)
            for h in (400.0, 200.0)]
    assert gaps[0] < 0.005 and abs(gaps[0] / gaps[1] - 2.0) < 0.05
    filtered = {**options, "filterfac": 23.6}
    S_filtered = CoarseGrainedQG(**filtered).unresolved_tendency(x)
    S_step = CoarseGrainedQG(dt=200.0, coarse_dt=400.0, missing="step", **filtered).unresolved_tendency(x)
    assert np.linalg.norm(S_step - S_filtered) > 10 * np.linalg.norm(S_filtered)


def test_a_coarse_grained_qg_model_refuses_wrong_options():
    with pytest.raises(ValueError, match="coarse_nx must be an even integer >= 4 below the fine grid's 64, got 15"):
        CoarseGrainedQG(coarse_nx=15, nx=64)
    with pytest.raises(ValueError, match="coarse_nx must be an even integer >= 4 below the fine grid's 64, got 64"):
        CoarseGrainedQG(coarse_nx=64, nx=64)
    with pytest.raises(ValueError, match="coarsening must be one of sharp, gaussian, got 'box'"):
        CoarseGrainedQG(coarse_nx=16, nx=64, coarsening="box")
    with pytest.raises(ValueError, match="estimates no parameters"):
        CoarseGrainedQG(coarse_nx=16, nx=64, estimate=["rek"])
    with pytest.raises(ValueError, match="missing must be one of eddy_forcing, step, got 'drag'"):
        CoarseGrainedQG(coarse_nx=16, nx=64, missing="drag")
    for coarse_dt in (5000.0, 1800.0, "7200", True):
        with pytest.raises(ValueError, match=f"coarse_dt must be a whole number of fine steps dt = 3600 s, got {coarse_dt!r}"):
            CoarseGrainedQG(coarse_nx=16, nx=64, dt=3600.0, coarse_dt=coarse_dt)


QG_COARSE = {"type": "qg", "nx": COARSE, "L": 5e5, "U1": 0.05, "dt": 3600.0}
CONFIG = {
    "seed": 4,
    "model": QG_COARSE,
    "truth": {"model": {"type": "qg_coarse_grained", "coarse_nx": COARSE, "nx": FINE, "L": 5e5, "U1": 0.05, "dt": 1800.0},
              "substeps": 2, "spinup_steps": 3, "initial_std": 1e-6},
    "observations": {"every": 2, "operator": {"type": "points", "stations": 20, "seed": 1, "layer": "all"}, "error_std": 1e-7},
    "background": {"state": {"error_std": 5e-7}},
    "window": {"steps": 4, "cycles": 2},
    "assimilation": {"control": ["state"], "outer_loops": 1, "inner": {"method": "lanczos", "max_iterations": 5}},
}


def test_the_truth_the_app_records_is_the_coarse_grained_fine_run():
    plan = Plan.from_config(resolve_config(yaml.safe_load(yaml.safe_dump(CONFIG)), name="coarse"))
    model = truth_model()
    x = 1e-6 * np.random.default_rng([4, 0]).standard_normal(model.n_state)
    x = model.forecast(x, NONE, 3 * 2)[-1]
    fine = model.forecast(x, NONE, 2 * 4 * 2)
    np.testing.assert_allclose(plan.truth["trajectory"], model.resolved_state(fine[::2]), rtol=0, atol=1e-20)
    assert plan.truth["trajectory"].shape == (2 * 4 + 1, 2 * COARSE * COARSE)
    assert np.abs(plan.truth["trajectory"] - fine[::2].reshape(-1, 2, FINE, FINE)[:, :, ::4, ::4].reshape(9, -1)).max() > 0


def test_a_coarse_grained_truth_whose_coarse_step_is_the_forecast_models_builds():
    config = yaml.safe_load(yaml.safe_dump(CONFIG))
    config["truth"]["model"].update(missing="step", coarse_dt=3600.0)
    plan = Plan.from_config(resolve_config(config, name="coarse"))
    assert plan.truth["model"].unresolved_dt == plan.model.dt == 3600.0
    assert truth_model().unresolved_dt is None  # the eddy forcing is per unit time, whatever the step


@pytest.mark.parametrize("change, expected", [
    ({"coarse_nx": 15}, "truth.model: CoarseGrainedQG: coarse_nx must be an even integer >= 4 below the fine grid's 64, got 15"),
    ({"coarse_nx": 8}, "truth.model: its state (8192 values, 128 after its resolved_state) does not match the forecast model's n_state = 512"),
    ({"coarsening": "box"}, "truth.model: CoarseGrainedQG: coarsening must be one of sharp, gaussian, got 'box'"),
    ({"state_slice": [0, 512]}, "truth.state_slice: the truth model"),
    ({"missing": "step", "coarse_dt": 1800.0}, "truth.model: its unresolved tendency is per model step of 1800 s (coarse_dt), the forecast model's dt is 3600 s"),
    ({"missing": "step"}, "truth.model: its unresolved tendency is per model step of 1800 s (coarse_dt), the forecast model's dt is 3600 s"),
])
def test_a_wrong_coarse_grained_truth_stops_the_run_with_one_line_and_status_2(tmp_path, change, expected):
    config = yaml.safe_load(yaml.safe_dump(CONFIG))
    if "state_slice" in change:
        config["truth"].update(change)
    else:
        config["truth"]["model"].update(change)
    (tmp_path / "coarse.yaml").write_text(yaml.safe_dump(config))
    result = run_command("run", "coarse.yaml", "--output", "out.nc", "--quiet", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and expected in result.stderr and "coarse.yaml" in result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["coarse.yaml"]
