"""Sweeps: members expanded from dotted keys and validated before anything runs; the
sweep on the embedded cluster equals the same members run serially, bit for bit; the
summary holds every member's headline numbers along the sweep's dimensions; and
`fourdvar sweep --resume` of a half-finished sweep runs only what is missing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
from conftest import run_command

from fourdvar.app.atomic import temporary_name
from fourdvar.app.config import ConfigError
from fourdvar.app.sweep import SUMMARY_FILE, Sweep, run_sweep, summary_table
from test_cluster import assert_same_result

BASE = {
    "title": "sweep test", "seed": 1, "model": {"type": "lorenz96", "n_state": 40}, "truth": {"spinup_steps": 500},
    "observations": {"every": 4, "operator": {"type": "subset", "indices": "all"}, "error_std": 1.0},
    "background": {"state": {"error_std": 1.0}}, "window": {"steps": 8, "cycles": 6},
    "assimilation": {"control": ["state"], "outer_loops": 2, "inner": {"max_iterations": 30}},
}
SWEEP = {"seed": [1, 2], "background.state.error_std": [0.5, 1.0]}


def write_config(directory: Path, sweep=SWEEP, **changes) -> Path:
    path = directory / "sweep.yaml"
    path.write_text(yaml.safe_dump({**BASE, **changes, "sweep": sweep}, sort_keys=False))
    return path


def test_members_are_the_cartesian_product_with_the_dotted_keys_set(tmp_path):
    sweep = Sweep.from_file(write_config(tmp_path), output=tmp_path / "out")
    assert sweep.shape == (2, 2) and len(sweep.members) == 4
    assert [(m.config["seed"], m.config["background"]["state"]["error_std"]) for m in sweep.members] == [(1, 0.5), (1, 1.0), (2, 0.5), (2, 1.0)]
    assert len({m.output for m in sweep.members}) == 4 and all(m.output.parent == tmp_path / "out" for m in sweep.members)
    assert all(m.config["output"]["file"] == str(m.output) and "sweep" in m.config and m.config["sweep"] == {} for m in sweep.members)


@pytest.mark.parametrize("sweep, message", [
    ({"background.state.error_stdd": [0.5]}, "sweep member background.state.error_stdd=0.5: background.state.error_stdd: unknown key"),
    ({"background.state.error_std": [0.5, -1.0]}, "sweep member background.state.error_std=-1.0: background.state.error_std: must be positive"),
    ({"seed": []}, "sweep.seed: expected a non-empty list"),
    ({"output.file": ["a.nc"]}, "expected a dotted key of the configuration other than sweep, output and compare"),
])
def test_an_invalid_member_is_refused_before_anything_runs(tmp_path, sweep, message):
    with pytest.raises(ConfigError, match=message.replace("+", r"\+").replace(".", r"\.")):
        Sweep.from_file(write_config(tmp_path, sweep=sweep), output=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_sweep_on_the_embedded_cluster_equals_the_serial_sweep_bit_for_bit(tmp_path):
    sweep = Sweep.from_file(write_config(tmp_path), output=tmp_path / "out")
    outcomes, summary = run_sweep(sweep, n_workers=2)
    assert all(o.ok for o in outcomes)
    shutil.move(tmp_path / "out", tmp_path / "cluster")
    serial_outcomes, serial_summary = run_sweep(sweep, serial=True)
    assert all(o.ok and not o.worker for o in serial_outcomes)
    for member in sweep.members:
        assert_same_result(member.output, tmp_path / "cluster" / member.output.name)
        with xr.open_dataset(member.output) as result:
            assert result.attrs["sweep_seed"] == member.settings["seed"]
            assert result.attrs["sweep_background.state.error_std"] == member.settings["background.state.error_std"]
            headline = result.attrs["headline_rmse_analysis_last_half"]
        at = dict(zip(sweep.keys, member.settings.values()))
        assert float(summary["rmse_analysis_last_half"].sel(at)) == headline
    xr.testing.assert_identical(summary, serial_summary)
    assert summary["rmse_analysis_last_half"].dims == ("seed", "background.state.error_std")
    table = summary_table(summary)
    values = summary["rmse_analysis_last_half"].sel({"background.state.error_std": 0.5}).values
    assert f"{values.mean():.4g} +- {values.std(ddof=1):.2g}" in table and "over 2 seeds" in table


def test_resume_of_a_half_finished_sweep_runs_only_the_missing_members(tmp_path):
    config = write_config(tmp_path)
    first = run_command("sweep", str(config), "--output", "out", "--workers", "2", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    out = tmp_path / "out"
    files = sorted(p for p in out.glob("*.nc") if p.name != SUMMARY_FILE)
    complete = {p.name: p.read_bytes() for p in files}
    for path in files[1::2]:  # half the members "never finished": no file, a killed attempt's temporary
        path.unlink()
        temporary_name(path).write_bytes(b"half")
    stamps = {p.name: p.stat().st_mtime_ns for p in files[::2]}

    refused = run_command("sweep", str(config), "--output", "out", cwd=tmp_path)
    assert refused.returncode == 2 and "--resume" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1

    resumed = run_command("sweep", str(config), "--output", "out", "--workers", "2", "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stderr.count("skipped (done before)") == 2 and "(2 done before)" in resumed.stderr
    assert {p.name: p.stat().st_mtime_ns for p in files[::2]} == stamps
    assert sorted(p.name for p in out.iterdir()) == sorted([*complete, SUMMARY_FILE])  # no temporaries
    for path in files[1::2]:
        assert_same_result(path, _bytes_to_file(complete[path.name], tmp_path / f"before_{path.name}"))


def _bytes_to_file(data: bytes, path: Path) -> Path:
    path.write_bytes(data)
    return path


def test_run_refuses_a_sweep_configuration_and_sweep_a_plain_one(tmp_path):
    config = write_config(tmp_path)
    run = run_command("run", str(config), cwd=tmp_path)
    assert run.returncode == 2 and "fourdvar sweep" in run.stderr and len(run.stderr.strip().splitlines()) == 1
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(BASE))
    sweep = run_command("sweep", str(plain), cwd=tmp_path)
    assert sweep.returncode == 2 and "no sweep block" in sweep.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.yaml", "sweep.yaml"]


def test_a_sweep_through_scheduler_and_two_workers_survives_a_worker_killed_midway(tmp_path):
    """`dask scheduler` + 2 `dask worker` on 127.0.0.1; `fourdvar sweep --scheduler`; worker w0 is
    killed while it runs a member; every member is delivered, identical to the serial sweep."""
    import time

    from distributed import Client

    from test_cluster import _stop, _wait_for, start_scheduler_and_workers

    config = write_config(tmp_path, sweep={"seed": [1, 2, 3, 4, 5, 6]}, window={"steps": 8, "cycles": 16})
    address, processes = start_scheduler_and_workers(tmp_path)
    try:
        assert address.startswith("tcp://127.0.0.1:")
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
            victim = next(a for a, info in client.scheduler_info()["workers"].items() if info["name"] == "w0")
            sweep_process = subprocess.Popen([sys.executable, "-m", "fourdvar", "sweep", str(config), "--output", "out", "--scheduler", address],
                                             cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                             env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
            _wait_for(lambda: client.processing([victim]).get(victim) or sweep_process.poll() is not None, 120, "w0 never ran a member")
            lost = client.processing([victim]).get(victim, ())
            _stop(processes[1])  # w0, midway through a member
            stdout, stderr = sweep_process.communicate(timeout=300)
        assert len(lost) >= 1 and processes[1].poll() is not None  # members were assigned to it, one running
        assert sweep_process.returncode == 0, stderr
        assert stderr.count("member ") == 6 and "FAILED" not in stderr
    finally:
        for process in reversed(processes):
            _stop(process)
    shutil.move(tmp_path / "out", tmp_path / "cluster")
    sweep = Sweep.from_file(config, output=tmp_path / "out")
    run_sweep(sweep, serial=True)
    assert sorted(p.name for p in (tmp_path / "cluster").iterdir()) == sorted(p.name for p in (tmp_path / "out").iterdir())  # no temporaries
    for member in sweep.members:
        assert_same_result(member.output, tmp_path / "cluster" / member.output.name)


def test_the_shipped_sweep_validates_every_member_before_running():
    path = Path(__file__).resolve().parents[1] / "configs" / "sweeps" / "l96_sakov2008_eda_sweep.yaml"
    assert path.read_text().startswith("#")
    sweep = Sweep.from_file(path)
    assert sweep.keys == ["seed"] and sweep.shape == (3,)
    window = lambda m: m.config["window"]  # noqa: E731
    assert {(m.config["seed"], (window(m)["cycles"] - 1) * window(m)["shift"] + window(m)["steps"]) for m in sweep.members} == {(s, 4000) for s in (1, 2, 3)}
    assert all(window(m)["observations_at_end"] and m.config["diagnostics"]["burn_in_cycles"] == 49 for m in sweep.members)
    assert all(m.config["ensemble"]["members"] == 20 and m.config["compare"][0]["name"] == "static" for m in sweep.members)
    assert sweep.directory.name == "l96_sakov2008_eda_sweep"
