"""Every shipped configuration validates, passes `fourdvar check`, and runs (shortened)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
import xarray as xr

from fourdvar.app.config import load_config, schema_keys

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
ENV = {**os.environ, "MPLBACKEND": "Agg", "OPENBLAS_NUM_THREADS": "1"}


def fourdvar(*args, cwd):
    return subprocess.run([sys.executable, "-m", "fourdvar", *map(str, args)], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)


def test_configs_are_shipped():
    assert len(CONFIGS) >= 5


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_config_validates_and_starts_with_a_comment(path):
    config = load_config(path)
    assert path.read_text().startswith("#"), "each config opens with a comment saying what it shows"
    assert config["output"]["file"].endswith(f"{path.stem}.nc")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_config_passes_fourdvar_check(path, tmp_path):
    result = fourdvar("check", path, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert result.stdout.rstrip().endswith(" 0 failed, 0 inconclusive")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_config_runs_shortened(path, tmp_path):
    output = tmp_path / "result.nc"
    result = fourdvar("run", path, "--cycles", 2, "--output", output, "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with xr.open_dataset(output) as ds:
        assert ds.attrs["completed_cycles"] == 2 and ds.attrs["complete"] == 1
        assert ds["J_final"].shape == (2,)
        assert (ds["J_final"] < ds["J_outer"].isel(outer=0)).all()  # each window's analysis lowered the cost


def test_every_key_has_a_description_and_the_docs_generate_the_table():
    from fourdvar.app.config import schema_markdown

    table = schema_markdown()
    for key, field in schema_keys():
        assert f"`{key}`" in table and field.doc
    assert "print(schema_markdown())" in (ROOT / "docs" / "guide" / "configuration.md").read_text()
