"""The ``fourdvar`` command line: run, check, generate, plot, bad input, resume and Ctrl-C.

Every command runs in a temporary directory, most of them in this process
(:func:`conftest.run_command`: :func:`fourdvar.app.cli.main` with its exit status and
output), the user's own model, the crash and the Ctrl-C as ``python -m fourdvar ...``
processes with ``MPLBACKEND=Agg`` and ``OPENBLAS_NUM_THREADS=1`` (starting Python costs
about a second per command; those run together, a few at a time, :data:`WORKERS`).
The experiments are tiny (Lorenz-96 with 8 variables, windows of 4 steps, 2 cycles,
50 spin-up steps); module-scoped fixtures run the commands and the tests check what
each one did.
"""

from __future__ import annotations

import copy
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import xarray as xr
import yaml
from conftest import run_command

import fourdvar
from fourdvar.app.results import recompute_cost

WORKERS = max(2, min(8, 2 * (os.cpu_count() or 1)))
TIMEOUT = 180  # seconds for any single command
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

#: A minimal valid experiment: every test starts from it and changes a key or two.
BASE_CONFIG = {
    "seed": 1,
    "model": {"type": "lorenz96", "n_state": 8},
    "truth": {"spinup_steps": 50},
    "window": {"steps": 4, "cycles": 2},
    "assimilation": {"outer_loops": 2, "inner": {"max_iterations": 10}},
    "output": {"file": "out/result.nc"},
}
RESULT = "out/result.nc"

#: Lorenz-96 estimating its forcing: control [state, params], a shrinking P.
PARAMS_OVERRIDES = {
    "seed": 3,
    "model": {"type": "lorenz96", "n_state": 8, "estimate_forcing": True, "params": [7.0]},
    "truth.params": [8.0],
    "background.params.decay": 0.9,
    "window.cycles": 3,
    "assimilation.control": ["state", "params"],
}


# --- helpers ----------------------------------------------------------------------------------------


def make_config(overrides: dict | None = None) -> dict:
    """:data:`BASE_CONFIG` with ``{"dotted.key": value}`` overrides (missing levels are created)."""
    config = copy.deepcopy(BASE_CONFIG)
    for dotted, value in (overrides or {}).items():
        *parents, last = dotted.split(".")
        node = config
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = copy.deepcopy(value)
    return config


def write_config(directory: Path, overrides: dict | None = None, name: str = "experiment.yaml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(yaml.safe_dump(make_config(overrides), sort_keys=False))
    return path


def cli_env(pythonpath: Path | None = None) -> dict:
    env = dict(os.environ, MPLBACKEND="Agg", OPENBLAS_NUM_THREADS="1")
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def cli(*args, cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m fourdvar ARGS`` in ``cwd`` and wait for it."""
    return subprocess.run(
        [sys.executable, "-m", "fourdvar", *map(str, args)], cwd=cwd, env=cli_env(pythonpath),
        capture_output=True, text=True, timeout=TIMEOUT,
    )


def _as_from_a_terminal() -> None:
    # A shell starts background jobs with SIGINT ignored, and an ignored signal stays
    # ignored across exec: Python then never raises KeyboardInterrupt. Give the child the
    # default disposition a command typed at a terminal has, wherever the tests run.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_cli(*args, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "fourdvar", *map(str, args)], cwd=cwd, env=cli_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_as_from_a_terminal,
    )


@dataclass
class Job:
    args: tuple
    cwd: Path
    pythonpath: Path | None = None  # a real process with this on its PYTHONPATH
    process: bool = False  # a real ``python -m fourdvar`` process (else in this process)
    result: subprocess.CompletedProcess | None = field(default=None, repr=False)


def run_jobs(jobs: dict[str, Job]) -> dict[str, Job]:
    """Run independent commands: the real processes concurrently, the in-process ones
    meanwhile one after another; each job gets its ``result``."""

    def one(job: Job) -> None:
        job.result = cli(*job.args, cwd=job.cwd, pythonpath=job.pythonpath)

    processes = [job for job in jobs.values() if job.process or job.pythonpath is not None]
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        started = [pool.submit(one, job) for job in processes]
        for job in jobs.values():
            if job not in processes:
                job.result = run_command(*job.args, cwd=job.cwd)
        for future in started:
            future.result()
    return jobs


def describe(result: subprocess.CompletedProcess) -> str:
    return f"exit status {result.returncode}\n--- stdout:\n{result.stdout}\n--- stderr:\n{result.stderr}"


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, describe(result)
    assert "Traceback" not in result.stderr, describe(result)


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (relative path -> bytes)."""
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def completed_cycles(checkpoint: Path) -> int | None:
    """The number of windows in the checkpoint directory, or None while there is none."""
    if not checkpoint.is_dir():
        return None
    return len(list(checkpoint.glob("cycle_*.nc"))) or None


def assert_same_result(a: xr.Dataset, b: xr.Dataset) -> None:
    """All variables equal (NaN == NaN), attributes equal except the wall-clock ones."""
    assert sorted(a.data_vars) == sorted(b.data_vars)
    assert dict(a.sizes) == dict(b.sizes)
    for name in list(a.data_vars) + list(a.coords):
        assert a[name].dims == b[name].dims, name
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    ignored = ("created", "run_seconds")
    assert {k: v for k, v in a.attrs.items() if k not in ignored} == {k: v for k, v in b.attrs.items() if k not in ignored}


# --- a user's own model, plugged in as type: "mymodels:MyModel" ------------------------------------

USER_MODELS = '''\
"""A user's model outside the project: x_next = a * x (no parameters)."""
import numpy as np

from fourdvar import ModelBase


class DecayLinearization:
    def __init__(self, a, x, adjoint_factor):
        self.a, self.adjoint_factor = a, adjoint_factor
        self.output = a * x

    def tl(self, dx, dp):
        return self.a * np.asarray(dx, dtype=float)

    def ad(self, ax):
        return self.adjoint_factor * self.a * np.asarray(ax, dtype=float), np.zeros(0)


class MyModel(ModelBase):
    adjoint_factor = 1.0

    def __init__(self, n_state=8, a=0.95):
        self.n_state, self.n_params, self.a = int(n_state), 0, float(a)

    def step(self, x, p):
        return self.a * np.asarray(x, dtype=float)

    def linearize(self, x, p):
        return DecayLinearization(self.a, np.asarray(x, dtype=float), self.adjoint_factor)


class MyWrongModel(MyModel):
    """The same model with a deliberately wrong adjoint (2 a instead of a)."""

    adjoint_factor = 2.0
'''


# --- fixtures: commands run together -------------------------------------------------------------


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """``fourdvar generate`` of the base configuration: truth and observations of 2 windows."""
    directory = tmp_path_factory.mktemp("generate")
    write_config(directory)
    result = run_command("generate", "experiment.yaml", "--output", "observations.nc", cwd=directory)
    assert_ok(result)
    path = directory / "observations.nc"
    assert path.exists(), describe(result)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory, generated) -> dict[str, Job]:
    """Valid commands, each in its own directory, run concurrently."""
    jobs: dict[str, Job] = {}

    def job(name: str, *args, overrides=None, user_models=False) -> None:
        directory = tmp_path_factory.mktemp(name)
        write_config(directory, overrides)
        if user_models:
            (directory / "mymodels.py").write_text(USER_MODELS)
        jobs[name] = Job(args, directory, directory if user_models else None)

    job("base", "run", "experiment.yaml")
    job("repeat", "run", "experiment.yaml")
    job("seed7", "run", "experiment.yaml", "--cycles", "3", "--seed", "7")
    job("seed8", "run", "experiment.yaml", "--cycles", "3", "--seed", "8")
    job("params", "run", "experiment.yaml", overrides=PARAMS_OVERRIDES)
    job("check", "check", "experiment.yaml")
    job("user_check", "check", "experiment.yaml", overrides={"model.type": "mymodels:MyModel"}, user_models=True)
    job("user_wrong_check", "check", "experiment.yaml", overrides={"model.type": "mymodels:MyWrongModel"}, user_models=True)
    job("user_run", "run", "experiment.yaml", overrides={"model.type": "mymodels:MyModel"}, user_models=True)
    job("from_file", "run", "experiment.yaml",
        overrides={"observations.file": str(generated), "background.state.initial": "free_run"})
    return run_jobs(jobs)


@pytest.fixture(scope="module")
def plots(runs, generated) -> dict[str, Job]:
    """``fourdvar plot`` of a result without parameters, one with, and of a non-result file."""
    jobs = {
        "base": Job(("plot", RESULT, "--output", "figures"), runs["base"].cwd),
        "params": Job(("plot", RESULT, "--output", "figures"), runs["params"].cwd),
        "not_a_result": Job(("plot", generated.name, "--output", "figures"), generated.parent),
    }
    return run_jobs(jobs)


# --- bad input ---------------------------------------------------------------------------------------------

DUMMY_RESULT = b"a previous result that a failed run must leave alone\n"


def _nan_observation_file(directory: Path, generated: Path) -> None:
    ds = xr.load_dataset(generated)
    value = ds["value"].values.copy()
    value[5] = np.nan
    ds["value"] = (ds["value"].dims, value, ds["value"].attrs)
    ds.to_netcdf(directory / "nan_obs.nc")


def _wrong_size_observation_file(directory: Path, generated: Path) -> None:
    ds = xr.load_dataset(generated)
    ds.attrs["n_state"] = 12
    ds.to_netcdf(directory / "obs_n12.nc")


@dataclass(frozen=True)
class BadCase:
    config: dict | str | None  # overrides of BASE_CONFIG, raw YAML text, or None for no config file
    words: tuple[str, ...]  # what the one-line message must contain
    args: tuple = ("run", "experiment.yaml", "--overwrite")  # the previous result is refused first without it, and must outlive every case
    setup: Callable[[Path, Path], None] | None = None  # (case directory, generated observation file)
    process: bool = False  # through a real ``python -m fourdvar`` process (else in this process)


RUN_TO_RESULT = ("run", "experiment.yaml", "--output", RESULT)
FROM_FILE = {"background.state.initial": "free_run"}

BAD_CASES = {
    "missing_config_file": BadCase(None, ("missing.yaml", "no such file"), ("run", "missing.yaml", "--output", RESULT)),
    "yaml_syntax_error": BadCase(
        "seed: 1\nmodel: {type: lorenz96, n_state: 8}\nwindow: {steps: 4, cycles: [1, 2}\n",
        ("experiment.yaml", "YAML syntax error", "line 3"), RUN_TO_RESULT),
    "unknown_key": BadCase({"windw": {"steps": 4}}, ("experiment.yaml", "windw", "unknown key", "did you mean 'window'"), process=True),
    "unknown_nested_key": BadCase({"assimilation.inner.max_iteration": 5},
                                  ("experiment.yaml", "assimilation.inner.max_iteration", "did you mean 'max_iterations'")),
    "wrong_type": BadCase({"window.steps": "ten"}, ("experiment.yaml", "window.steps", "integer", "'ten'")),
    "negative_obs_error_std": BadCase({"observations.error_std": -1},
                                      ("experiment.yaml", "observations.error_std", "positive", "-1")),
    "zero_background_error_std": BadCase({"background.state.error_std": 0},
                                         ("experiment.yaml", "background.state.error_std", "positive", "0")),
    "zero_length_scale": BadCase({"background.state.correlation": {"type": "gaussian", "length_scale": 0}},
                                 ("experiment.yaml", "background.state.correlation.length_scale", "positive", "0")),
    "window_steps_zero": BadCase({"window.steps": 0}, ("experiment.yaml", "window.steps", ">= 1", "0")),
    "observation_index_outside_grid": BadCase({"observations.operator": {"type": "subset", "indices": [0, 99]}},
                                              ("experiment.yaml", "observations.operator", "99", "n_state=8")),
    "nan_in_observation_file": BadCase({"observations.file": "nan_obs.nc", **FROM_FILE},
                                       ("experiment.yaml", "observations.file", "nan_obs.nc", "'value'", "nan"),
                                       setup=_nan_observation_file),
    "observation_file_for_other_state_size": BadCase({"observations.file": "obs_n12.nc", **FROM_FILE},
                                                     ("experiment.yaml", "observations.file", "obs_n12.nc", "n_state=12", "n_state=8"),
                                                     setup=_wrong_size_observation_file),
    "truth_state_size_mismatch": BadCase({"truth.model": {"type": "lorenz96", "n_state": 10}},
                                         ("experiment.yaml", "truth.model", "10", "n_state = 8")),
    "unknown_model_type": BadCase({"model.type": "lorenz69"},
                                  ("experiment.yaml", "model.type", "'lorenz69'", "did you mean 'lorenz96'")),
    "unimportable_model_class": BadCase({"model.type": "no_such_module:Model"},
                                        ("experiment.yaml", "model.type", "no_such_module")),
    "wrong_model_keyword": BadCase({"model.n_stat": 8}, ("experiment.yaml", "model", "n_stat")),
    "output_directory_not_writable": BadCase({"output.file": "blocker/sub/result.nc"},
                                             ("experiment.yaml", "output.file", "blocker")),
    "generate_unknown_key": BadCase({"observatons": {"every": 2}},
                                    ("experiment.yaml", "observatons", "did you mean 'observations'"),
                                    ("generate", "experiment.yaml", "--output", RESULT)),
}


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory, generated) -> dict[str, tuple[Job, dict[str, bytes]]]:
    """Each bad case in its own directory, with a previous result at the output path; run concurrently."""
    jobs, before = {}, {}
    for name, case in BAD_CASES.items():
        directory = tmp_path_factory.mktemp(name)
        if isinstance(case.config, str):
            (directory / "experiment.yaml").write_text(case.config)
        elif isinstance(case.config, dict):
            write_config(directory, case.config)
        if case.setup is not None:
            case.setup(directory, generated)
        if name == "output_directory_not_writable":
            (directory / "blocker").write_text("a regular file where a directory is expected\n")
        else:
            (directory / "out").mkdir()
            (directory / RESULT).write_bytes(DUMMY_RESULT)
        before[name] = snapshot(directory)
        jobs[name] = Job(case.args, directory, process=case.process)
    run_jobs(jobs)
    return {name: (jobs[name], before[name]) for name in jobs}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_one_line_exit_2_nothing_written(case, bad_runs):
    job, before = bad_runs[case]
    result = job.result
    assert result.returncode == 2, describe(result)
    assert "Traceback" not in result.stderr, describe(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, describe(result)
    assert lines[0].startswith("fourdvar: error: "), describe(result)
    assert result.stdout == "", describe(result)
    # nothing new, nothing changed: no partial output, no checkpoint, the previous result intact
    assert snapshot(job.cwd) == before
    if case != "output_directory_not_writable":
        assert (job.cwd / RESULT).read_bytes() == DUMMY_RESULT


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_message_names_the_problem(case, bad_runs):
    job, _ = bad_runs[case]
    message = job.result.stderr.strip()
    missing = [word for word in BAD_CASES[case].words if word not in message]
    assert not missing, f"the message {message!r} does not contain {missing}"


# --- version, help, command-line arguments -------------------------------------------------------------

HELP_OPTIONS = {
    (): ["run", "check", "generate", "plot", "--version"],
    ("run",): ["config", "--output", "--cycles", "--seed", "--resume", "--quiet"],
    ("check",): ["config", "--seed", "--window-steps", "--directions"],
    ("generate",): ["config", "--output", "--cycles", "--seed"],
    ("plot",): ["result", "--output"],
}


@pytest.fixture(scope="module")
def argument_runs(tmp_path_factory) -> dict[str, Job]:
    directory = tmp_path_factory.mktemp("arguments")
    write_config(directory)
    jobs = {"version": Job(("--version",), directory)}
    for command in HELP_OPTIONS:
        jobs["help " + " ".join(command)] = Job((*command, "--help"), directory)
    jobs["cycles_zero"] = Job(("run", "experiment.yaml", "--cycles", "0"), directory, process=True)
    return run_jobs(jobs)


def test_version(argument_runs):
    result = argument_runs["version"].result
    assert_ok(result)
    assert result.stdout.strip() == f"fourdvar {fourdvar.__version__}"


def test_an_in_process_command_leaves_no_state_behind(tmp_path, monkeypatch):
    """What :func:`conftest.run_command` promises: after a run in this process the working
    directory, environment, ``sys.path``, warnings filters, BLAS threads, signal handlers and
    pyplot figures are as before (the figures of ``fourdvar plot`` are not pyplot's)."""
    import warnings

    import matplotlib.pyplot as plt
    from threadpoolctl import threadpool_info, threadpool_limits

    def state():
        return (os.getcwd(), dict(os.environ), list(sys.path), list(warnings.filters), threadpool_info(),
                signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM), plt.get_fignums())

    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)  # the command limits BLAS to one thread meanwhile
    write_config(tmp_path)
    with threadpool_limits(2):
        before = state()
        assert run_command("run", "experiment.yaml", cwd=tmp_path).returncode == 0
        assert state() == before


def test_console_script_points_at_main():
    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts.get("fourdvar") == "fourdvar.app.cli:main"


@pytest.mark.parametrize("command", list(HELP_OPTIONS), ids=lambda c: " ".join(c) or "fourdvar")
def test_help(command, argument_runs):
    result = argument_runs["help " + " ".join(command)].result
    assert_ok(result)
    assert result.stdout.startswith("usage: fourdvar")
    missing = [word for word in HELP_OPTIONS[command] if word not in result.stdout]
    assert not missing, f"help of {command} does not mention {missing}:\n{result.stdout}"


def test_bad_command_line_argument_exits_2(argument_runs):
    case = "cycles_zero"
    result = argument_runs[case].result
    assert result.returncode == 2, describe(result)
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("fourdvar run: error: argument")
    assert not (argument_runs[case].cwd / RESULT).exists()


# --- fourdvar run ---------------------------------------------------------------------------------------------


def test_run_writes_documented_result(runs):
    job = runs["base"]
    assert_ok(job.result)
    assert "wrote out/result.nc" in job.result.stdout and "cycle 2/2" in job.result.stderr
    assert not (job.cwd / "out" / "result.checkpoint").exists(), "the checkpoint is removed after a complete run"
    assert not list((job.cwd / "out").glob(".*.tmp")), "no temporary files are left"
    ds = xr.load_dataset(job.cwd / RESULT)
    n_cycles, L, n = 2, 4, 8
    for name in ("truth", "background", "analysis"):
        assert ds[name].dims == ("cycle", "step", "x"), name
        assert ds[name].shape == (n_cycles, L + 1, n), name
        assert np.all(np.isfinite(ds[name].values)), name
    for name in ("J", "Jb", "Jp", "Jo", "gradient_norm"):
        assert ds[name].dims == ("cycle", "outer", "iteration"), name
        assert ds[name].sizes["cycle"] == n_cycles and ds[name].sizes["outer"] == 2, name
        assert ds[name].sizes["iteration"] <= 10 + 1, name
        assert np.all(np.isfinite(ds[name].values[:, :, 0])), name
    for name in ("rmse_analysis", "rmse_background", "J_final", "Jb_final", "Jo_final"):
        assert ds[name].dims == ("cycle",) and np.all(np.isfinite(ds[name].values)), name
    assert ds["obs_value"].dims == ("obs",)
    assert ds["obs_value"].size == n_cycles * L * n  # identity, every step of both windows
    for name, variable in ds.data_vars.items():
        assert "long_name" in variable.attrs, name
        if variable.dtype.kind in "fiu":
            assert "units" in variable.attrs, name
    # the analysis fits better than the background, and the cost goes down within each window
    assert np.all(ds["J_final"].values < ds["J"].values[:, 0, 0])
    assert ds.attrs["fourdvar_version"] == fourdvar.__version__
    assert int(ds.attrs["complete"]) == 1
    assert int(ds.attrs["completed_cycles"]) == n_cycles
    config = yaml.safe_load(ds.attrs["config"])
    assert config["window"] == {"steps": L, "cycles": n_cycles, "shift": None, "observations_at_end": False}
    assert config["seed"] == 1
    assert config["model"] == {"type": "lorenz96", "n_state": n}
    assert config["truth"]["spinup_steps"] == 50
    assert config["background"]["state"]["error_std"] == 1.0  # defaults are recorded too


def test_run_cycles_and_seed_override(runs):
    for name, seed in (("seed7", 7), ("seed8", 8)):
        assert_ok(runs[name].result)
        ds = xr.load_dataset(runs[name].cwd / RESULT)
        config = yaml.safe_load(ds.attrs["config"])
        assert config["window"]["cycles"] == 3 and config["seed"] == seed
        assert ds.sizes["cycle"] == 3 and int(ds.attrs["complete"]) == 1
    truth7 = xr.load_dataset(runs["seed7"].cwd / RESULT)["truth"].values
    truth8 = xr.load_dataset(runs["seed8"].cwd / RESULT)["truth"].values
    assert not np.allclose(truth7, truth8), "different seeds must give different truths"


def test_run_is_reproducible(runs):
    assert_ok(runs["base"].result)
    assert_ok(runs["repeat"].result)
    assert_same_result(xr.load_dataset(runs["base"].cwd / RESULT), xr.load_dataset(runs["repeat"].cwd / RESULT))


@pytest.mark.parametrize("name", ["base", "params"])
def test_result_file_alone_recomputes_the_cost(name, runs, tmp_path, monkeypatch):
    job = runs[name]
    assert_ok(job.result)
    (tmp_path / "copy.nc").write_bytes((job.cwd / RESULT).read_bytes())  # only the result file, nothing else
    monkeypatch.chdir(tmp_path)
    ds = xr.load_dataset("copy.nc")
    if name == "params":
        assert "params_analysis" in ds and ds["params_analysis"].dims == ("cycle", "param")
        assert np.all(ds["Jp_final"].values > 0)
        assert np.all(np.diff(ds["params_std"].values) < 0)  # decay 0.9 shrinks P
    for c in range(ds.sizes["cycle"]):
        terms = recompute_cost(ds, c)
        stored = float(ds["J_final"].values[c])
        assert terms.J == pytest.approx(stored, rel=1e-10), f"cycle {c}"
        for key in ("Jb", "Jp", "Jo"):
            assert getattr(terms, key) == pytest.approx(float(ds[f"{key}_final"].values[c]), rel=1e-10, abs=1e-12), f"cycle {c} {key}"


# --- resume after a crash, and Ctrl-C ---------------------------------------------------------------------------

RESUME_CYCLES = 6


def _long_overrides(outer_loops: int) -> dict:
    """Slow enough per cycle (~0.1-0.3 s) to stop the run between two checkpoints."""
    return {
        "model.n_state": 40,
        "window.steps": 5,
        "window.cycles": RESUME_CYCLES,
        "assimilation.outer_loops": outer_loops,
        "assimilation.inner.max_iterations": 50,
        "assimilation.inner.gradient_reduction": 1e-9,
    }


def _interrupt_between_checkpoints(directory: Path, sig: int):
    """Start the run, send ``sig`` once 1 <= completed_cycles < total.

    Returns ``(run directory, returncode, stdout, stderr, config overrides)``, or None if
    every run finished before it could be stopped (each retry makes the run longer; a
    run that finished normally although signalled counts as not stopped).
    """
    for outer_loops in (3, 8, 20):
        attempt = directory / f"outer{outer_loops}"
        overrides = _long_overrides(outer_loops)
        write_config(attempt, overrides)
        process = start_cli("run", "experiment.yaml", cwd=attempt)
        checkpoint = attempt / "out" / "result.checkpoint"
        deadline = time.monotonic() + TIMEOUT
        signalled = False
        try:
            while process.poll() is None and time.monotonic() < deadline:
                done = completed_cycles(checkpoint)
                if done is not None and 1 <= done < RESUME_CYCLES:
                    process.send_signal(sig)
                    signalled = True
                    break
                time.sleep(0.05)
            stdout, stderr = process.communicate(timeout=TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        if signalled and process.returncode != 0:  # 0: the signal came too late, the run had finished
            return attempt, process.returncode, stdout, stderr, overrides
    return None


def test_resume_after_crash_equals_uninterrupted_run(tmp_path):
    stopped = _interrupt_between_checkpoints(tmp_path / "crashed", signal.SIGKILL)
    assert stopped is not None, "every run finished before it could be killed between two checkpoints"
    directory, returncode, _, _, overrides = stopped
    assert returncode == -signal.SIGKILL
    assert not (directory / RESULT).exists(), "a crashed run leaves no result file"
    done = completed_cycles(directory / "out" / "result.checkpoint")
    assert done is not None and 1 <= done < RESUME_CYCLES

    reference = tmp_path / "reference"
    write_config(reference, overrides)
    jobs = run_jobs({
        "resume": Job(("run", "experiment.yaml", "--resume"), directory, process=True),
        "reference": Job(("run", "experiment.yaml"), reference),
    })
    resumed = jobs["resume"].result
    assert_ok(resumed)
    assert_ok(jobs["reference"].result)
    assert f"{done} of {RESUME_CYCLES} cycles done" in resumed.stderr, resumed.stderr
    assert not (directory / "out" / "result.checkpoint").exists()
    result = xr.load_dataset(directory / RESULT)
    assert int(result.attrs["complete"]) == 1 and result.sizes["cycle"] == RESUME_CYCLES
    assert_same_result(result, xr.load_dataset(reference / RESULT))


def test_ctrl_c_saves_checkpoint_and_hints_resume(tmp_path):
    stopped = _interrupt_between_checkpoints(tmp_path, signal.SIGINT)
    assert stopped is not None, "every run finished before it could be interrupted between two checkpoints"
    directory, returncode, _, stderr, _ = stopped
    assert returncode == 130, stderr
    assert "continue with --resume" in stderr
    assert "Traceback" not in stderr
    assert not (directory / RESULT).exists()
    done = completed_cycles(directory / "out" / "result.checkpoint")
    assert done is not None and 1 <= done < RESUME_CYCLES


# --- fourdvar check --------------------------------------------------------------------------------------------


def _verdicts(stdout: str) -> dict[str, str]:
    """test name -> PASS/FAIL from the tables."""
    verdicts = {}
    for line in stdout.splitlines():
        match = re.match(r"^(\S.*?)(?:\s+\S+){4}\s+(PASS|FAIL|INCONCLUSIVE)\s*$", line)
        if match:
            verdicts.setdefault(match.group(1), match.group(2))
    return verdicts


def _summary(stdout: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+) passed, (\d+) failed, (\d+) inconclusive", stdout.strip().splitlines()[-1])
    assert match, f"the output does not end with 'N passed, M failed, K inconclusive':\n{stdout}"
    assert int(match.group(3)) == 0, stdout
    return int(match.group(1)), int(match.group(2))


def test_check_passes_on_valid_config(runs):
    result = runs["check"].result
    assert_ok(result)
    verdicts = _verdicts(result.stdout)
    assert "adjoint, one step" in verdicts and "gradient of J (Taylor)" in verdicts
    assert set(verdicts.values()) == {"PASS"}
    passed, failed = _summary(result.stdout)
    assert failed == 0 and passed == result.stdout.count(" PASS") > 0


def test_check_user_model_with_wrong_adjoint_fails(runs):
    result = runs["user_wrong_check"].result
    assert result.returncode == 1, describe(result)
    assert "Traceback" not in result.stderr
    assert "== model MyWrongModel" in result.stdout
    verdicts = _verdicts(result.stdout)
    assert verdicts["adjoint, one step"] == "FAIL"
    assert verdicts["tangent-linear, one step"] == "PASS"  # only the adjoint is wrong
    passed, failed = _summary(result.stdout)
    assert failed >= 1 and failed == result.stdout.count(" FAIL")


def test_user_model_plugs_in_without_editing_the_project(runs):
    check = runs["user_check"].result
    assert_ok(check)
    assert "== model MyModel" in check.stdout
    assert set(_verdicts(check.stdout).values()) == {"PASS"}
    assert _summary(check.stdout)[1] == 0
    run = runs["user_run"].result
    assert_ok(run)
    ds = xr.load_dataset(runs["user_run"].cwd / RESULT)
    assert ds.attrs["model"].startswith("MyModel(")
    assert ds["analysis"].shape == (2, 5, 8)
    assert np.all(np.isfinite(ds["J_final"].values))


# --- fourdvar generate --------------------------------------------------------------------------------------


def test_generate_writes_observations_a_run_can_read(generated, runs):
    data = xr.load_dataset(generated)
    for name in ("value", "step", "index", "error_std", "operator"):
        assert data[name].dims == ("obs",), name
    assert int(data.attrs["n_state"]) == 8
    assert data["truth"].shape == (2 * 4 + 1, 8)
    assert np.all(np.isfinite(data["value"].values))

    job = runs["from_file"]
    assert_ok(job.result)
    result = xr.load_dataset(job.cwd / RESULT)
    assert "truth" not in result  # the truth is unknown when the observations come from a file
    np.testing.assert_array_equal(result["obs_value"].values, data["value"].values)
    np.testing.assert_array_equal(result["obs_step"].values, data["step"].values)
    assert yaml.safe_load(result.attrs["config"])["observations"]["file"] == str(generated)
    assert np.all(np.isfinite(result["analysis"].values))


# --- fourdvar plot --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, figures", [
    ("base", {"cost.png", "rmse.png", "obs.png", "hovmoller.png", "timeseries.png"}),
    ("params", {"cost.png", "rmse.png", "obs.png", "hovmoller.png", "timeseries.png", "params.png"}),
])
def test_plot_writes_pngs(name, figures, plots):
    job = plots[name]
    assert_ok(job.result)
    directory = job.cwd / "figures"
    assert {path.name for path in directory.glob("*.png")} == figures
    for figure in figures:
        assert (directory / figure).read_bytes()[:8] == PNG_SIGNATURE, figure
    assert {Path(line).name for line in job.result.stdout.split()} == figures


def test_plot_rejects_a_file_that_is_not_a_result(plots):
    job = plots["not_a_result"]
    result = job.result
    assert result.returncode == 2, describe(result)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "not a fourdvar result file" in lines[0] and "observations.nc" in lines[0]
    assert not (job.cwd / "figures").exists()


@pytest.mark.parametrize("checkpoint", [True, False])
def test_ctrl_c_message_says_whether_anything_was_saved(checkpoint, tmp_path, monkeypatch, capsys):
    import fourdvar.app.run as run_module
    from fourdvar.app import cli as cli_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "run_to_file", interrupted)
    monkeypatch.chdir(tmp_path)
    write_config(tmp_path, {"output": {"checkpoint": checkpoint}})
    assert cli_module.main(["run", "experiment.yaml", "--quiet"]) == 130
    stderr = capsys.readouterr().err
    assert ("continue with --resume" in stderr) is checkpoint
    assert ("nothing was saved" in stderr) is not checkpoint


def test_an_interrupt_during_a_result_write_waits_for_the_write(tmp_path, monkeypatch):
    """Ctrl-C inside a NetCDF write lands after it: the file is whole, then KeyboardInterrupt."""
    import signal as signals

    import fourdvar.app.results as results

    to_netcdf = xr.Dataset.to_netcdf

    def interrupted_write(self, *args, **kwargs):
        signals.raise_signal(signals.SIGINT)  # as if the user pressed Ctrl-C now
        return to_netcdf(self, *args, **kwargs)

    monkeypatch.setattr(xr.Dataset, "to_netcdf", interrupted_write)
    dataset = xr.Dataset({"x": ("i", np.arange(5.0))})
    inherited = signals.signal(signals.SIGINT, signals.default_int_handler)  # Python's own, whatever a background job inherits
    try:
        with pytest.raises(KeyboardInterrupt):
            results.write_atomic(dataset, tmp_path / "out.nc")
        assert signals.getsignal(signals.SIGINT) is signals.default_int_handler
    finally:
        signals.signal(signals.SIGINT, inherited)
    with xr.open_dataset(tmp_path / "out.nc") as written:
        assert np.array_equal(written["x"].values, np.arange(5.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nc"]
