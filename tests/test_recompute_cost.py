"""recompute_cost: the result file alone gives back the J each window stored, through the
covariances each window recorded (for every shipped configuration: in test_configs, on the
runs it makes), and the parameters' names and prior and posterior std each window records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from conftest import SHIPPED_CYCLES, shortened

from fourdvar.app.config import ConfigError, resolve_config
from fourdvar.app.plan import Plan
from fourdvar.app.results import recompute_cost
from fourdvar.app.run import execute

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
CYCLES = SHIPPED_CYCLES


def small(name: str, output: Path) -> dict:
    """The shortened shipped configuration ``name`` (:func:`conftest.shortened`) without comparison runs."""
    raw = shortened(name)
    for key in ("compare", "gap", "diagnostics"):
        raw.pop(key, None)
    raw["output"] = {"file": str(output), "checkpoint": False}
    return resolve_config(raw)


def test_each_window_records_its_parameters_names_and_their_prior_and_posterior_std(tmp_path):
    """l96_forcing with P on a schedule: the posterior std is computed for the record; with
    ``update: posterior`` the cycling computes it, and the next window's prior is it plus q^2."""
    schedule = small("l96_forcing", tmp_path / "a.nc")
    schedule["background"]["params"]["names"] = ["F"]
    propagated = small("l96_forcing", tmp_path / "b.nc")
    propagated["background"]["params"].update(update="posterior", noise_std=0.1)
    a, b = (execute(Plan.from_config(config, base_dir=CONFIGS)) for config in (schedule, propagated))
    assert list(a["param_name"].values) == ["F"] and "param_name" not in b
    np.testing.assert_allclose(a["params_background_std"].values[:, 0], [max(0.8**c, 0.05) for c in range(CYCLES)], rtol=1e-15)
    posterior = a["params_analysis_std"].values[:, 0]
    assert np.all((0 < posterior) & (posterior < a["params_background_std"].values[:, 0]))
    np.testing.assert_allclose(b["params_analysis_std"].values[0], posterior[0], rtol=1e-10)  # the same first window
    np.testing.assert_allclose(b["params_background_std"].values[1:] ** 2, b["params_analysis_std"].values[:-1] ** 2 + 0.1**2, rtol=1e-12)
    assert np.isfinite(b["params_covariance"].values[1:]).all()  # dense P propagated (cg): recorded, and the cost recomputed from it
    for c in (1, 2):
        assert b["Jp_final"].values[c] > 0
        assert recompute_cost(b, c, base_dir=CONFIGS).J == pytest.approx(float(b["J_final"].values[c]), rel=1e-10, abs=0)
    named_by_the_model = Plan.from_config(small("l96_forcing", tmp_path / "c.nc"), base_dir=CONFIGS)
    named_by_the_model.model.param_names = ("forcing",)
    assert list(execute(named_by_the_model)["param_name"].values) == ["forcing"]
    schedule["background"]["params"]["names"] = ["F", "G"]
    with pytest.raises(ConfigError, match=r"^background.params.names: the model has 1 parameters, got 2 names$"):
        Plan.from_config(schedule, base_dir=CONFIGS)


def test_a_checkpoint_keeps_what_each_window_recorded(tmp_path):
    """The low-rank P of each window, through a checkpoint file and back (a resumed run's record)."""
    from fourdvar.app.results import config_text, window_dataset, window_row

    plan = Plan.from_config(small("l96_surrogate", tmp_path / "r.nc"), base_dir=CONFIGS)
    saved = []
    execute(plan, on_window=lambda row, state: saved.append((row, state)))
    for c, (row, state) in enumerate(saved):
        window_dataset(row, c, state.variables(), config_text(plan.config)).to_netcdf(tmp_path / f"{c}.nc")
        back = window_row(xr.load_dataset(tmp_path / f"{c}.nc"))["recorded"]
        assert sorted(back) == sorted(row["recorded"])
        for name, array in row["recorded"].items():
            np.testing.assert_array_equal(back[name], array, err_msg=name)
    assert saved[-1][0]["recorded"]["params_covariance_vectors"].shape[1] > 0
