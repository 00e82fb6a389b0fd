"""Every shipped configuration validates, passes `fourdvar check`, and runs (shortened).

Shortened: a truth spin-up of at most 100 steps (the shipped ones run up to 15,000, to the
developed flow the headline numbers need; the checks and the cycling need a valid truth
only) and a few windows, through the command line in this process. The run is the
session's :func:`shipped_run`, which test_recompute_cost reads too.
"""

from __future__ import annotations

import pytest
import xarray as xr
from conftest import CONFIGS, ROOT, SHIPPED, SHIPPED_CYCLES, SHIPPED_PARAMS, run_command, write_shortened

from fourdvar.app.config import load_config, schema_keys

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


@pytest.mark.parametrize("name", SHIPPED_PARAMS)
def test_shipped_config_runs_shortened(name, shipped_run):
    result, output = shipped_run(name)
    assert result.returncode == 0, result.stderr
    with xr.open_dataset(output) as ds:
        assert ds.attrs["completed_cycles"] == SHIPPED_CYCLES and ds.attrs["complete"] == 1
        assert ds["J_final"].shape == (SHIPPED_CYCLES,)
        assert (ds["J_final"] < ds["J_outer"].isel(outer=0)).all()  # each window's analysis lowered the cost


def test_every_key_has_a_description_and_the_docs_generate_the_table():
    from fourdvar.app.config import schema_markdown

    table = schema_markdown()
    for key, field in schema_keys():
        assert f"`{key}`" in table and field.doc
    assert "print(schema_markdown())" in (ROOT / "docs" / "guide" / "configuration.md").read_text()
