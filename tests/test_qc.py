"""Quality control: planted gross errors are rejected and recorded and leave the analysis as
good as without them; clean observations are all kept; variational QC's gradient is the
Huber norm's."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from fourdvar import FourDVar
from fourdvar.covariances import Dense, Diagonal
from fourdvar.interfaces import ObservationSlot
from fourdvar.qc import HuberNorm, QualityControl, Selected, _Reweighted
from models import Lorenz96
from observations import Identity, synthetic_observations
from tests.test_assimilation import lorenz96_twin
from tests.test_lanczos import joint_l96_problem

ABSURD = {3: (5, 1e30), 7: (11, np.nan)}  # step: (index, value)


def planted(seed=11, n_steps=10, fraction=0.05):
    """A 10-step L96 window (every variable observed at every step, std 1) with a 1e30, a NaN and
    5 % of the observations off by 10 std; its truth, background, the observations, and the planted set."""
    rng = np.random.default_rng(seed)
    x = Lorenz96(40).forecast(8.0 + rng.standard_normal(40), np.empty(0), 1000)[-1]
    truth = Lorenz96(40).forecast(x, np.empty(0), n_steps)
    clean = synthetic_observations(truth, list(range(n_steps + 1)), Identity(n_state=40), 1.0, rng)
    xb = truth[0] + rng.standard_normal(40)
    bad, without, gross = [], [], set()
    for k, slot in enumerate(clean):
        values = slot.values.copy()
        hit = rng.random(40) < fraction
        values[hit] += 10.0 * rng.choice([-1.0, 1.0], hit.sum())
        if k in ABSURD:
            index, value = ABSURD[k]
            values[index], hit[index] = value, True
        gross |= {(slot.step, int(i)) for i in np.flatnonzero(hit)}
        bad.append(ObservationSlot(slot.step, values, slot.operator, slot.covariance))
        keep = np.flatnonzero(~hit)
        without.append(ObservationSlot(slot.step, slot.values[keep], Selected(slot.operator, keep), Diagonal(1.0, size=keep.size)))
    return truth, xb, bad, without, gross


def rmse(result, truth):
    return float(np.sqrt(np.mean((result.x0 - truth[0]) ** 2)))


def test_planted_gross_errors_are_rejected_recorded_and_leave_the_analysis_unharmed():
    truth, xb, bad, without, gross = planted()
    B = Diagonal(1.0, size=40)
    reference = rmse(FourDVar(Lorenz96(40), without, xb=xb, B=B, qc=None).solve(), truth)
    result = FourDVar(Lorenz96(40), bad, xb=xb, B=B).solve()
    record = result.qc
    assert set(zip(record.step.tolist(), record.index.tolist())) == gross  # all of them, and nothing else
    reasons = dict(zip(zip(record.step.tolist(), record.index.tolist()), record.reason.tolist()))
    assert reasons[(3, 5)] == "background" and reasons[(7, 11)] == "non-finite"
    assert set(reasons.values()) <= {"background", "non-finite", "analysis"}
    assert record.n_obs == 440 and record.n_used == 440 - len(gross)
    assert result.success and abs(rmse(result, truth) / reference - 1.0) <= 0.05
    # negative control: without the checks the 10-std errors spoil the analysis (the NaN is always left out)
    unchecked = FourDVar(Lorenz96(40), bad[:3] + bad[4:], xb=xb, B=B, qc=QualityControl(background_check=None, analysis_check=None)).solve()
    assert rmse(unchecked, truth) > 1.2 * reference


@pytest.mark.parametrize("seed, n_steps", [(0, 10), (0, 20), (5, 20)])
def test_clean_observations_are_all_kept(seed, n_steps):
    problem, _ = lorenz96_twin(seed=seed, n_steps=n_steps)
    result = problem.solve(posterior_method="none")
    assert result.qc.n_rejected == 0 and result.qc.n_obs == 40 * (n_steps + 1)


def test_clean_observations_of_a_long_joint_window_are_kept_where_the_linear_background_error_falls_short():
    """Departures of 11 TL-propagated expected std occur in this clean window: the default
    background check (20) keeps them; a check at 10 would not."""
    problem = joint_l96_problem(seed=13, n_steps=20)
    assert problem.qc_record.n_rejected == 0
    assert problem.solve(posterior_method="none").qc.n_rejected == 0
    strict = joint_l96_problem(seed=13, n_steps=20)
    strict.solve(qc=QualityControl(background_check=10.0), posterior_method="none", outer_loops=1)
    assert strict.qc_record.counts()["background"] >= 1


def test_huber_gradient_is_that_of_the_huber_cost_and_jq_starts_at_it():
    truth, xb, bad, _, _ = planted()
    slots = bad[:3] + bad[4:7] + bad[8:]  # the finite ones
    problem = FourDVar(Lorenz96(40), slots, xb=xb, B=Diagonal(1.0, size=40), qc=None)
    huber = HuberNorm(problem.cost, 1.5)
    x = xb + 0.3 * np.random.default_rng(1).standard_normal(40)
    jq, (terms, gradient) = huber.linearise(x, problem.cost.pb, control=problem.control)
    J = huber.evaluate(x, problem.cost.pb).J
    assert abs(terms.J - J) <= 1e-12 * J  # Jq(0) is the Huber J
    h = np.random.default_rng(2).standard_normal(40)
    remainders = [abs(huber.evaluate(x + a * h, problem.cost.pb).J - J - a * gradient @ h) for a in (1e-3, 1e-4, 1e-5)]
    assert remainders[1] / remainders[0] < 0.02 and remainders[2] / remainders[1] < 0.02  # O(a^2)
    # negative control: the quadratic Jo's gradient is another one when gross errors are present
    _, quadratic = problem.incremental_cost(x).value_and_gradient(np.zeros(40))
    assert np.linalg.norm(quadratic - gradient) > 0.1 * np.linalg.norm(gradient)


def test_variational_qc_downweights_the_gross_errors_and_improves_the_analysis():
    truth, xb, bad, without, gross = planted()
    slots = bad[:3] + bad[4:7] + bad[8:]
    off = QualityControl(background_check=None, analysis_check=None)
    plain = FourDVar(Lorenz96(40), slots, xb=xb, B=Diagonal(1.0, size=40), qc=off).solve()
    varqc = FourDVar(Lorenz96(40), slots, xb=xb, B=Diagonal(1.0, size=40), qc=QualityControl(None, huber=1.5, analysis_check=None)).solve()
    assert varqc.success and rmse(varqc, truth) < 0.8 * rmse(plain, truth)
    weights = {(slot.step, i): w for slot, ws in zip(slots, varqc.qc.weights) for i, w in enumerate(ws)}
    assert max(weights[key] for key in gross if key in weights) < 0.2  # 10-std errors count for little
    assert varqc.qc.n_downweighted >= len([key for key in gross if key in weights])


def test_reweighted_covariance_is_r_to_the_half_w_inverse_r_to_the_half():
    rng = np.random.default_rng(0)
    M = rng.standard_normal((5, 5))
    R = Dense(M @ M.T + 5 * np.eye(5))
    w = rng.uniform(0.1, 1.0, 5)
    L = np.linalg.cholesky(R.matrix)
    Rw = L @ np.diag(1 / w) @ L.T
    reweighted, v = _Reweighted(R, w), rng.standard_normal(5)
    np.testing.assert_allclose(reweighted.solve(v), np.linalg.solve(Rw, v), rtol=1e-10)
    np.testing.assert_allclose(reweighted.apply(v), Rw @ v, rtol=1e-10)


def test_a_run_writes_each_windows_rejections_and_counts_them_in_the_headline(tmp_path):
    from fourdvar.app.diagnostics import headlines
    from fourdvar.app.plan import Plan
    from fourdvar.app.run import execute
    from tests.test_experiments import tiny

    plan = Plan.from_config(tiny(assimilation={"control": ["state"], "qc": {"background_check": 0.5}}))
    dataset = execute(plan)
    rejected = dataset["qc_rejected_background"].values
    assert rejected.sum() > 0 and dataset.sizes["rejection"] == rejected.sum()  # a check at 0.5 std rejects clean data
    assert set(dataset["qc_reason"].values.tolist()) == {"background"}
    assert np.all(np.abs(dataset["qc_departure"].values) > 0.5)
    assert headlines(plan, dataset, {})["observations_rejected"] == rejected.sum()
    dataset.to_netcdf(tmp_path / "run.nc")
    with xr.open_dataset(tmp_path / "run.nc") as written:
        assert written["qc_reason"].values.tolist() == dataset["qc_reason"].values.tolist()
    clean = execute(Plan.from_config(tiny(assimilation={"control": ["state"]})))
    assert clean.sizes.get("rejection", 0) == 0 and headlines(plan, clean, {})["observations_rejected"] == 0


def test_selected_operator_is_the_rows_of_its_operator_and_its_adjoint_passes_the_dot_product_test():
    from observations.operators import Square

    rng = np.random.default_rng(0)
    operator, keep = Square(n_state=8, indices=[1, 2, 4, 7]), np.array([0, 2, 3])  # y = x^2 at the points
    selected = Selected(operator, keep)
    x, dx, ay = rng.standard_normal(8), rng.standard_normal(8), rng.standard_normal(3)
    np.testing.assert_array_equal(selected.apply(x), operator.apply(x)[keep])
    H = selected.linearize(x)
    assert abs(H.tl(dx) @ ay - dx @ H.ad(ay)) <= 1e-12 * abs(H.tl(dx) @ ay)
    np.testing.assert_allclose(H.tl(dx), 2.0 * x[[1, 4, 7]] * dx[[1, 4, 7]], rtol=1e-14)
