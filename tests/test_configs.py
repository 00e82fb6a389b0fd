"""Every shipped configuration validates, passes `fourdvar check`, and runs (shortened).

Shortened: a truth spin-up of at most 100 steps (the shipped ones run up to 15,000, to the
developed flow the headline numbers need; the checks and the cycling need a valid truth
only) and a few windows, with short loops and few members (:func:`conftest.shortened`),
through the command line in this process; its result file alone gives back the J each
window stored (:func:`fourdvar.app.results.recompute_cost`).
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from conftest import CONFIGS, ROOT, SHIPPED, SHIPPED_CYCLES, run_command, write_shortened

from fourdvar.app.config import load_config, schema_keys
from fourdvar.app.results import recompute_cost

CONFIG_PATHS = [CONFIGS / f"{name}.yaml" for name in SHIPPED]


def test_configs_are_shipped():
    assert len(CONFIG_PATHS) >= 5


@pytest.mark.parametrize("path", CONFIG_PATHS, ids=lambda p: p.stem)
def test_shipped_config_validates_and_starts_with_a_comment(path):
    config = load_config(path)
    assert path.read_text().startswith("#"), "each config opens with a comment saying what it shows"
    assert config["output"]["file"].endswith(f"{path.stem}.nc")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_passes_fourdvar_check(name, tmp_path):
    result = run_command("check", write_shortened(name, tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert result.stdout.rstrip().endswith(" 0 failed, 0 inconclusive")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_runs_shortened(name, shipped_run):
    result, output = shipped_run(name)
    assert result.returncode == 0, result.stderr
    with xr.open_dataset(output) as ds:
        assert ds.attrs["completed_cycles"] == SHIPPED_CYCLES and ds.attrs["complete"] == 1
        assert ds["J_final"].shape == (SHIPPED_CYCLES,)
        assert (ds["J_final"] < ds["J_outer"].isel(outer=0)).all()  # each window's analysis lowered the cost


# --- the result file alone gives back the J each window stored (fourdvar.app.results.recompute_cost) -----


def result_file(shipped_run, name: str) -> xr.Dataset:
    """Only the result file of the shortened shipped ``name`` (:func:`conftest.shipped_run`)."""
    result, output = shipped_run(name)
    assert result.returncode == 0, result.stderr
    return xr.load_dataset(output)


@pytest.mark.parametrize("name", SHIPPED)
def test_recompute_cost_gives_the_stored_cost(name, shipped_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ds = result_file(shipped_run, name)
    for c in range(SHIPPED_CYCLES):
        terms = recompute_cost(ds, c, base_dir=CONFIGS)
        assert terms.J == pytest.approx(float(ds["J_final"].values[c]), rel=1e-10, abs=0), f"cycle {c}"
        for key in ("Jb", "Jp", "Jo"):
            assert getattr(terms, key) == pytest.approx(float(ds[f"{key}_final"].values[c]), rel=1e-10, abs=1e-12), f"cycle {c} {key}"


def test_recompute_cost_reads_the_propagated_P_not_the_policy(shipped_run, tmp_path, monkeypatch):
    """Negative control: without the recorded P, the policy's P (the initial one) gives another Jp."""
    monkeypatch.chdir(tmp_path)
    ds = result_file(shipped_run, "l96_surrogate")
    assert ds["params_covariance_vectors"].dims == ("cycle", "param", "window_rank")
    assert np.isnan(ds["params_covariance_base_std"].values[0]).all()  # the first window: the diagonal P0
    assert np.isfinite(ds["params_covariance_base_std"].values[1:]).all()  # later ones: propagated, low rank
    stripped = ds.drop_vars(["params_covariance_base_std", "params_covariance_vectors", "params_covariance_values", "params_background_std"])
    for c in (1, 2):
        stored = float(ds["Jp_final"].values[c])
        assert recompute_cost(ds, c, base_dir=CONFIGS).Jp == pytest.approx(stored, rel=1e-10)
        assert abs(recompute_cost(stripped, c, base_dir=CONFIGS).Jp - stored) > 1e-3 * stored


def test_every_key_has_a_description_and_the_docs_generate_the_table():
    from fourdvar.app.config import schema_markdown

    table = schema_markdown()
    for key, field in schema_keys():
        assert f"`{key}`" in table and field.doc
    assert "print(schema_markdown())" in (ROOT / "docs" / "guide" / "configuration.md").read_text()
