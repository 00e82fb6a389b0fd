"""What a user meets through the command line: results never lost, threads, observation
files, their own model, bounded inputs and output streams.

Most cases run in-process through :func:`fourdvar.app.cli.main` (no interpreter start
per command); a Ctrl-C/SIGTERM case runs a real process.  The experiments are tiny:
Lorenz-96 with 8 variables, windows of 4 steps, 2 cycles (``test_cli.BASE_CONFIG``).
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
from threadpoolctl import threadpool_info, threadpool_limits

from fourdvar.app import cli
from fourdvar.app.atomic import temporary_name
from fourdvar.app.sweep import summary_table
from test_cli import BASE_CONFIG, write_config

FROM_FILE = {"observations.file": "obs.nc", "background.state.initial": "free_run"}
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


@pytest.fixture
def run_cli(tmp_path, monkeypatch, capsys):
    """``run_cli(*args)`` -> ``(status, stdout, stderr)`` of ``fourdvar ARGS`` run in ``tmp_path``."""
    monkeypatch.chdir(tmp_path)

    def run(*args):
        status = cli.main([str(a) for a in args])
        captured = capsys.readouterr()
        return status, captured.out, captured.err
    return run


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fourdvar: error: "), err
    return lines[0]


def observation_file(path: Path, **variables) -> None:
    """A valid observation file for ``BASE_CONFIG`` (steps 0..7, points 0 and 4), ``variables`` replaced."""
    data = {
        "value": ("obs", np.tile([1.0, -1.0], 8)), "step": ("obs", np.repeat(np.arange(8), 2)),
        "index": ("obs", np.tile([0, 4], 8)), "error_std": ("obs", np.ones(16)), "operator": ("obs", np.array(["subset"] * 16)),
    }
    attrs = {"n_state": 8}
    for key, value in variables.items():
        if key == "attrs":
            attrs = value
        elif value is None:
            del data[key]
        else:
            data[key] = value
    xr.Dataset(data, attrs=attrs).to_netcdf(path)


# --- never lose a result -----------------------------------------------------------------------------


def test_an_existing_result_is_replaced_only_with_overwrite(tmp_path, run_cli):
    write_config(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out/result.nc").write_bytes(b"a 50-cycle result")
    status, out, err = run_cli("run", "experiment.yaml")
    line = one_line(err)
    assert status == 2 and "out/result.nc exists" in line and "--overwrite" in line and out == ""
    assert (tmp_path / "out/result.nc").read_bytes() == b"a 50-cycle result"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["result.nc"]  # no checkpoint left
    status, out, err = run_cli("run", "experiment.yaml", "--overwrite", "-q")  # negative control
    assert status == 0 and (tmp_path / "out/result.nc").read_bytes()[:4] == b"\x89HDF"
    status, out, err = run_cli("generate", "experiment.yaml", "--output", "out/result.nc")
    assert status == 2 and "--overwrite" in one_line(err)


def interrupted_run(run_cli, monkeypatch, after_cycles: int = 1, *args):
    """``run --cycles 3`` stopped by Ctrl-C after ``after_cycles`` windows; returns its status and stderr."""
    original = cli.Progress.__call__

    def progress(self, outcome, recorder):
        original(self, outcome, recorder)
        if outcome.cycle + 1 == after_cycles:
            raise KeyboardInterrupt
    monkeypatch.setattr(cli.Progress, "__call__", progress)
    status, out, err = run_cli("run", "experiment.yaml", "--cycles", "3", *args)
    monkeypatch.setattr(cli.Progress, "__call__", original)
    return status, err


def test_a_checkpoint_is_kept_until_resume_or_restart_says_what_to_do(tmp_path, run_cli, monkeypatch):
    write_config(tmp_path)
    status, err = interrupted_run(run_cli, monkeypatch)
    checkpoint = tmp_path / "out/result.checkpoint"
    assert status == 130 and "--resume" in err
    saved = {p.name: p.read_bytes() for p in checkpoint.iterdir()}
    assert list(saved) == ["cycle_000000.nc"]
    status, out, err = run_cli("run", "experiment.yaml", "--cycles", "3")
    line = one_line(err)
    assert status == 2 and "1 completed windows" in line and "--resume" in line and "--restart" in line
    assert {p.name: p.read_bytes() for p in checkpoint.iterdir()} == saved
    status, out, err = run_cli("run", "experiment.yaml", "--cycles", "3", "--restart", "-q")  # negative control
    assert status == 0 and not checkpoint.exists()
    assert xr.load_dataset(tmp_path / "out/result.nc").sizes["cycle"] == 3


def test_the_next_run_removes_every_temporary_killed_writers_left(tmp_path, run_cli, monkeypatch):
    write_config(tmp_path)
    interrupted_run(run_cli, monkeypatch)
    checkpoint = tmp_path / "out/result.checkpoint"
    leftovers = [temporary_name(checkpoint / "cycle_000001.nc"), temporary_name(tmp_path / "out/result.nc")]
    for path in leftovers:
        path.write_bytes(b"half a file")
    keep = tmp_path / "out/.notes.tmp"  # not a temporary of ours
    keep.write_text("mine")
    status, out, err = run_cli("run", "experiment.yaml", "--cycles", "3", "--resume", "-q")
    assert status == 0, err
    assert not any(path.exists() for path in leftovers) and keep.exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".notes.tmp", "result.nc"]


def _from_a_terminal() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a background shell job starts with SIGINT ignored


def test_ctrl_c_ends_a_sweep_in_one_line_keeping_finished_members(tmp_path):
    """Ctrl-C at a terminal reaches the whole process group, the embedded cluster's workers included."""
    config = write_config(tmp_path, {"sweep": {"seed": list(range(1, 9))}})
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", MPLBACKEND="Agg")
    process = subprocess.Popen([sys.executable, "-m", "fourdvar", "sweep", str(config), "--output", "out", "--workers", "1", "-q"],
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, preexec_fn=_from_a_terminal)
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline and not list((tmp_path / "out").glob("0*.nc")):
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=60)
    finished = list((tmp_path / "out").glob("0*.nc"))
    assert process.returncode == 130, err
    assert err.strip().splitlines() == [err.strip()] and "Traceback" not in err, err
    assert f"{len(finished)} of 8 member results are kept" in err and "--resume" in err
    assert 1 <= len(finished) < 8 and all(xr.load_dataset(path).attrs["complete"] == 1 for path in finished)


def test_sigterm_ends_a_command_as_ctrl_c_does(tmp_path, run_cli, monkeypatch):
    from fourdvar.app import run as run_module

    write_config(tmp_path)
    monkeypatch.setattr(run_module, "run_to_file", lambda *a, **k: os.kill(os.getpid(), signal.SIGTERM))
    status, out, err = run_cli("run", "experiment.yaml", "-q")
    assert status == 130 and err.strip() == f"interrupted; completed cycles are saved in {Path('out/result.checkpoint')}; continue with --resume"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored after the command


# --- threads ----------------------------------------------------------------------------------------------


def blas_threads() -> int:
    return max(info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas")


def test_one_blas_thread_for_a_small_problem_unless_the_user_says(tmp_path, run_cli, monkeypatch):
    from fourdvar.app import run as run_module

    write_config(tmp_path)
    seen, original = [], run_module.execute
    monkeypatch.setattr(run_module, "execute", lambda *a, **k: (seen.append(blas_threads()), original(*a, **k))[1])
    for name in THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with threadpool_limits(2):  # the libraries' own count on a 2-core machine
        assert run_cli("run", "experiment.yaml", "-q")[0] == 0
        assert run_cli("run", "experiment.yaml", "-q", "--overwrite", "--threads", "2")[0] == 0
        monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
        assert run_cli("run", "experiment.yaml", "-q", "--overwrite")[0] == 0
        assert blas_threads() == 2  # restored after each command
    assert seen == [1, 2, 2]


@pytest.mark.parametrize("n_state, n_params, control, expected", [
    (1999, 0, ["state"], 1), (2000, 0, ["state"], 2), (40, 5000, ["state", "params"], 2), (40, 5000, ["state"], 1),
])
def test_a_large_state_or_parameter_vector_keeps_the_libraries_threads(monkeypatch, n_state, n_params, control, expected):
    from types import SimpleNamespace

    for name in THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with threadpool_limits(2):
        threads = cli.Threads(None)
        threads.fit(SimpleNamespace(model=SimpleNamespace(n_state=n_state, n_params=n_params), control=control))
        try:
            assert blas_threads() == expected
        finally:
            if threads.limiter is not None:
                threads.limiter.restore_original_limits()


# --- observation files -----------------------------------------------------------------------------------


def test_csv_observations_with_times_are_assimilated_and_off_grid_times_refused(tmp_path, run_cli):
    rows = ["time,location,value,error"] + [f"{k * 0.05:.2f},{i},{v},1.0" for k in range(8) for i, v in ((0, 1.0), (4, -1.0))]
    (tmp_path / "obs.csv").write_text("\n".join(rows) + "\n")
    write_config(tmp_path, {**FROM_FILE, "observations.file": "obs.csv"})
    status, out, err = run_cli("run", "experiment.yaml", "-q")
    assert status == 0, err
    result = xr.load_dataset(tmp_path / "out/result.nc")
    assert result["obs_step"].values.tolist() == np.repeat(np.arange(8), 2).tolist()
    (tmp_path / "obs.csv").write_text("\n".join([*rows, "0.14,2,0.5,1.0"]) + "\n")
    status, out, err = run_cli("run", "experiment.yaml", "--overwrite")
    line = one_line(err)
    assert status == 2 and "0.14 " in line and "dt = 0.05" in line and "observations.nearest_step: true" in line
    write_config(tmp_path, {**FROM_FILE, "observations.file": "obs.csv", "observations.nearest_step": True})
    assert run_cli("run", "experiment.yaml", "--overwrite", "-q")[0] == 0  # negative control
    result = xr.load_dataset(tmp_path / "out/result.nc")
    assert result["obs_step"].values[result["obs_index"].values == 2].tolist() == [3]  # 0.14 / 0.05 = 2.8


@pytest.mark.parametrize("change, words", [
    ({"attrs": {"n_state": np.array([8, 8])}}, ("attribute 'n_state'", "one positive integer")),
    ({"operator": ("obs", np.array(["tanh"] * 16)), "scale": ("n_scale", np.ones(3))}, ("'scale'", "single dimension")),
    ({"value": ("obs", np.r_[np.nan, np.ones(15)])}, ("'value'", "non-finite", "position 0")),
    ({"error_std": ("obs", np.r_[np.ones(15), -1.0])}, ("'error_std'", "> 0", "position 15")),
    ({"step": ("obs", np.repeat(np.arange(8), 2) + 1)}, ("step 8", "beyond")),
    ({"step": None, "time": ("obs", np.repeat(np.arange(8), 2) * 0.05 + 1.0)}, ("step 27", "beyond")),
    ({"index": ("obs", np.tile([0, 4], 8).reshape(2, 8)), "step": ("obs", np.arange(16))}, ("'index'", "single dimension")),
])
def test_a_bad_observation_file_is_one_line(tmp_path, run_cli, change, words):
    if "index" in change:
        change = {**change, "index": (("a", "b"), change["index"][1])}
    observation_file(tmp_path / "obs.nc", **change)
    write_config(tmp_path, FROM_FILE)
    status, out, err = run_cli("run", "experiment.yaml")
    line = one_line(err)
    assert status == 2 and "observations.file" in line and all(word in line for word in words), line
    assert not (tmp_path / "out").exists()


def times_file(path: Path, variable: str, units: str | None) -> None:
    """:func:`observation_file` with ``time`` (model time, dt = 0.05) instead of ``step``, or ``step``, carrying ``units``."""
    values = np.repeat(np.arange(8), 2) * (0.05 if variable == "time" else 1)
    observation_file(path, **{"step": None, variable: ("obs", values, {} if units is None else {"units": units})})


@pytest.mark.parametrize("variable, units, words", [
    ("time", "hours since 2000-01-01", ("'time'", "'hours since 2000-01-01'", "calendar date", "dt = 0.05")),
    ("time", "days since 2000-01-01 00:00:00 +0:00", ("'time'", "calendar date", "start of cycle 0")),
    ("time", "seconds", ("'time'", "'seconds'", "duration", "dt = 0.05")),
    ("step", "hours since 2000-01-01", ("'step'", "calendar date", "model steps")),
    ("step", "days", ("'step'", "'days'", "duration", "model steps")),
])
def test_an_observation_time_with_cf_time_units_is_refused_not_decoded(tmp_path, run_cli, variable, units, words):
    times_file(tmp_path / "obs.nc", variable, units)
    write_config(tmp_path, FROM_FILE)
    status, out, err = run_cli("run", "experiment.yaml")
    line = one_line(err)
    assert status == 2 and "observations.file: obs.nc" in line and all(word in line for word in words), line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("variable, units", [("time", None), ("time", "1"), ("step", "1")])
def test_observation_times_without_time_units_are_read_as_model_time(tmp_path, run_cli, variable, units):
    """Negative control of the refusal: the same numbers without CF time units are assimilated at steps 0 .. 7."""
    times_file(tmp_path / "obs.nc", variable, units)
    write_config(tmp_path, FROM_FILE)
    status, out, err = run_cli("run", "experiment.yaml", "-q")
    assert status == 0, err
    assert xr.load_dataset(tmp_path / "out/result.nc")["obs_step"].values.tolist() == np.repeat(np.arange(8), 2).tolist()


def test_a_csv_where_netcdf_is_expected_says_so(tmp_path, run_cli):
    (tmp_path / "result.nc").write_text("time,location,value,error\n0,1,2,3\n")
    status, out, err = run_cli("plot", "result.nc")
    assert status == 2 and "a CSV (text) file; a NetCDF file is expected here" in one_line(err)


def test_generate_writes_what_run_reads_with_observations_at_the_window_end(tmp_path, run_cli):
    write_config(tmp_path, {"window.observations_at_end": True, "observations.every": 2})
    status, out, err = run_cli("generate", "experiment.yaml", "--output", "obs.nc")
    assert status == 0 and out.startswith("wrote obs.nc") and err == ""
    assert xr.load_dataset(tmp_path / "obs.nc")["step"].values.max() == 8  # the last window's end
    write_config(tmp_path, {"window.observations_at_end": True, **FROM_FILE})
    status, out, err = run_cli("run", "experiment.yaml", "-q")
    assert status == 0, err
    write_config(tmp_path, FROM_FILE)  # negative control: without observations_at_end step 8 is outside
    assert "step 8 lies beyond" in one_line(run_cli("run", "experiment.yaml", "--overwrite")[2])


# --- the user's own model -------------------------------------------------------------------------------

USER_MODEL = '''
import numpy as np
from models.lorenz96 import Lorenz96


class Mine(Lorenz96):
    """Lorenz-96 whose step or tangent linear may be broken."""

    def step(self, x, p):
        y = super().step(x, p)
        return {step}

    def linearize(self, x, p):
        linear = super().linearize(x, p)

        class Linearization:
            def tl(self, dx, dp):
                dy = linear.tl(dx, dp)
                return {tl}

            def ad(self, ax):
                return linear.ad(ax)
        return Linearization()
'''


@pytest.mark.parametrize("step, tl, words", [
    ("y", "dy", None),
    ("y[:-1]", "dy", "model: Mine.step returned shape (7,), expected (8,)"),
    ("y.astype(np.complex128)", "dy", "model: Mine.step returned dtype complex128, expected float64"),
    ("y", "dy[:4]", "model: Mine.linearize(...).tl returned shape (4,), expected (8,)"),
])
def test_a_model_beside_the_configuration_is_found_and_its_shapes_checked(tmp_path, run_cli, step, tl, words):
    (tmp_path / "mine").mkdir()
    module = f"l96mine_{abs(hash((step, tl)))}"  # a module of its own for each case (imports are cached)
    (tmp_path / "mine" / f"{module}.py").write_text(USER_MODEL.format(step=step, tl=tl))
    write_config(tmp_path / "mine", {"model": {"type": f"{module}:Mine", "n_state": 8}, "truth.model": {"type": "lorenz96", "n_state": 8}})
    status, out, err = run_cli("run", "mine/experiment.yaml", "-q")
    if words is None:
        assert status == 0, err
    else:
        assert status == 2 and words in one_line(err), err


def test_a_missing_model_module_names_where_it_looked_and_the_fix_uncut(tmp_path, run_cli):
    directory = tmp_path / ("a_rather_long_directory_name_" * 4)
    write_config(directory, {"model": {"type": "l63model:Lorenz63"}})
    status, out, err = run_cli("run", directory / "experiment.yaml")
    line = one_line(err)
    assert status == 2 and f"looked in {directory}" in line
    assert line.endswith("put l63model.py beside the configuration, or add the directory holding l63model.py to PYTHONPATH, "
                         "or install it as a package")


# --- bounded inputs -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, overrides, words", [
    (("run",), {"truth.spinup_steps": 1e12}, ("truth.spinup_steps", "1e+12 model steps", "more than the 1e+08")),
    (("run",), {"truth.spinup_steps": 10**7, "truth.substeps": 100}, ("truth.spinup_steps", "1e+07 x 100 substeps = 1e+09 model steps")),
    (("run",), {"diagnostics.forecast_skill": True, "diagnostics.forecast_starts": 1e9}, ("diagnostics.forecast_starts", "GiB")),
    (("run",), {"ensemble.members": 1e9}, ("ensemble.members", "GiB")),
    (("check", "--window-steps", "1000000000"), {}, ("--window-steps", "GiB")),
])
def test_memory_is_checked_for_spinup_diagnostics_ensembles_and_checks(tmp_path, run_cli, args, overrides, words):
    write_config(tmp_path, overrides)
    started = time.perf_counter()
    status, out, err = run_cli(*args, "experiment.yaml")
    line = one_line(err)
    assert status == 2 and all(word in line for word in words), line
    assert time.perf_counter() - started < 10 and not (tmp_path / "out").exists()


CHECKPOINT_EDITS = {
    "cycle attribute 99": (lambda ds: ds.attrs.update(cycle=99), ("'cycle' attribute is 99", "window 1")),
    "NaN in state_xb": (lambda ds: ds["state_xb"].values.__setitem__(3, np.nan), ("'state_xb' holds a non-finite value",)),
    "NaN in the analysis": (lambda ds: ds["analysis"].values.__setitem__((0, 2), np.nan), ("'analysis' holds a non-finite value",)),
}


def test_a_checkpoint_window_is_checked_before_a_resume_trusts_it(tmp_path, run_cli, monkeypatch):
    write_config(tmp_path)
    interrupted_run(run_cli, monkeypatch, 2)
    window = tmp_path / "out/result.checkpoint/cycle_000001.nc"
    saved = window.read_bytes()
    for name, (edit, words) in CHECKPOINT_EDITS.items():
        dataset = xr.load_dataset(window)
        edit(dataset)
        dataset.to_netcdf(window)
        status, out, err = run_cli("run", "experiment.yaml", "--cycles", "3", "--resume")
        line = one_line(err)
        assert status == 2 and "cycle_000001.nc" in line and "--restart" in line and all(word in line for word in words), (name, line)
        assert not (tmp_path / "out/result.nc").exists()
        window.write_bytes(saved)
    status, out, err = run_cli("run", "experiment.yaml", "--cycles", "3", "--resume", "-q")  # negative control: untouched
    assert status == 0 and xr.load_dataset(tmp_path / "out/result.nc").sizes["cycle"] == 3


@pytest.mark.parametrize("sweep, words", [
    ({"background.state.error_std": [1, 1.0]}, ("same configuration",)),
    ({"window": [{"steps": 4}], "window.steps": [4, 5]}, ("window and window.steps",)),
])
def test_sweep_members_are_distinct_configurations(tmp_path, run_cli, sweep, words):
    write_config(tmp_path, {"sweep": sweep})
    status, out, err = run_cli("sweep", "experiment.yaml")
    line = one_line(err)
    assert status == 2 and all(word in line for word in words), line


def test_a_sweep_never_writes_its_summary_over_a_file_it_reads(tmp_path, run_cli):
    observation_file(tmp_path / "summary.nc")
    before = (tmp_path / "summary.nc").read_bytes()
    write_config(tmp_path, {**FROM_FILE, "observations.file": "summary.nc", "sweep": {"seed": [1, 2]}})
    status, out, err = run_cli("sweep", "experiment.yaml", "--output", ".")
    assert status == 2 and "summary.nc is an input of this run" in one_line(err)
    assert (tmp_path / "summary.nc").read_bytes() == before


def test_an_unreachable_scheduler_is_one_line_and_leaves_no_directory(tmp_path, run_cli, monkeypatch):
    from fourdvar.app import cluster

    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT", "0.5s")
    write_config(tmp_path, {"sweep": {"seed": [1, 2]}, "window.cycles": 1})
    status, out, err = run_cli("sweep", "experiment.yaml", "--scheduler", "tcp://127.0.0.1:9", "-q")
    assert status == 1 and "--scheduler: cannot reach tcp://127.0.0.1:9" in one_line(err)
    write_config(tmp_path, {"ensemble.members": 2, "window.cycles": 1})
    status, out, err = run_cli("run", "experiment.yaml", "--scheduler", "tcp://127.0.0.1:9", "-q")
    assert status == 1 and "--scheduler: cannot reach tcp://127.0.0.1:9" in one_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiment.yaml"]


def test_plot_onto_a_full_disk_leaves_no_directory(tmp_path, run_cli, monkeypatch):
    from fourdvar.app import plotting

    write_config(tmp_path)
    assert run_cli("run", "experiment.yaml", "-q")[0] == 0

    def full_disk(dataset, output, *args, **kwargs):
        Path(output).mkdir(parents=True, exist_ok=True)
        (Path(output) / "cost.png").write_bytes(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(plotting, "plot_results", full_disk)
    status, out, err = run_cli("plot", "out/result.nc", "--output", "figures/new")
    assert status == 2 and "No space left on device" in one_line(err)
    assert not (tmp_path / "figures").exists()


def test_a_large_configuration_is_refused_naming_the_limit(tmp_path, run_cli):
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(BASE_CONFIG) + "# padding\n" * 600_000)
    status, out, err = run_cli("run", "experiment.yaml")
    line = one_line(err)
    assert status == 2 and "1 MiB" in line and "observations.file" in line


# --- streams ---------------------------------------------------------------------------------------------------


def test_results_go_to_stdout_progress_to_stderr_and_quiet_silences_progress_only(tmp_path, run_cli):
    write_config(tmp_path, {"model": {"type": "lorenz96", "n_state": 8, "estimate_forcing": True, "params": [7.0]},
                            "truth.params": [8.0], "assimilation.control": ["state", "params"]})
    status, out, err = run_cli("run", "experiment.yaml")
    assert status == 0 and "cycle 2/2" in err and "wrote" not in err
    lines = out.splitlines()
    assert lines[0].startswith("wrote out/result.nc (2 cycles, ") and any(line.startswith("rmse_analysis") for line in lines)
    estimate = xr.load_dataset(tmp_path / "out/result.nc")["params_analysis"].values[-1, 0]
    assert f"parameters (last analysis): p[0] = {estimate:.4g}" in lines
    status, quiet_out, quiet_err = run_cli("run", "experiment.yaml", "--quiet", "--overwrite")
    assert status == 0 and quiet_err == "" and quiet_out.splitlines()[1:] == lines[1:]


def test_the_sweep_table_fits_100_columns_and_names_where_the_rest_is():
    names = [f"a_rather_long_headline_number_{i}" for i in range(12)] + ["rmse_analysis_last_half"]
    shape = (3, 2)
    summary = xr.Dataset({name: (("seed", "background.state.error_std"), np.random.default_rng(i).random(shape)) for i, name in enumerate(names)},
                         coords={"seed": [1, 2, 3], "background.state.error_std": [0.5, 1.0]})
    table = summary_table(summary)
    assert max(len(line) for line in table.splitlines()) <= 100
    assert table.splitlines()[0].split()[:2] == ["background.state.error_std", "rmse_analysis_last_half"]
    assert "more headline numbers in summary.nc" in table.splitlines()[-1]
    wide = summary_table(summary, width=10_000)  # negative control: every column when there is room
    assert max(len(line) for line in wide.splitlines()) > 100 and "more headline numbers" not in wide
