"""Broken inputs and faults through the command line.

Each case runs in its own directory holding a valid configuration, a previous
result at the output path and whatever the case needs.  A broken case must end with
exit status 2 (1 for a divergence, as documented), exactly one line on stderr
naming the problem, no traceback, nothing on stdout, and the directory exactly as
it was (no file created, changed, removed or re-moded).  A valid case must succeed.
Most cases run in this process (:func:`conftest.run_command`); those that need a
process of their own run as ``python -m fourdvar`` (a file-size limit, the working
directory on ``sys.path``, a configuration naming code that must never run, Python's
own recursion limit), concurrently, a few at a time, meanwhile.
"""

from __future__ import annotations

import fcntl
import os
import resource
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import xarray as xr
import yaml
from conftest import run_command

WORKERS = max(2, min(8, 2 * (os.cpu_count() or 1)))
TIMEOUT = 180
RESULT = "out/result.nc"
PREVIOUS = b"a previous result that a failed run must leave alone\n"

BASE = {
    "seed": 1,
    "model": {"type": "lorenz96", "n_state": 8},
    "truth": {"spinup_steps": 50},
    "window": {"steps": 4, "cycles": 2},
    "assimilation": {"outer_loops": 2, "inner": {"max_iterations": 10}},
    "output": {"file": RESULT},
}
HYBRID = {"type": "hybrid", "physics": {"type": "lorenz96", "n_state": 8}, "correction": {"type": "local_mlp", "n_state": 8, "hidden": [3]}}


def config(**changes) -> dict:
    """:data:`BASE` with ``{"dotted__key": value}`` changes (``None`` removes the key)."""
    result = yaml.safe_load(yaml.safe_dump(BASE))
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = result
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return result


def text(**changes) -> str:
    return yaml.safe_dump(config(**changes), sort_keys=False)


# --- files the cases put in their directory --------------------------------------------------------------


def observation_file(directory: Path, name: str = "obs.nc", **values) -> None:
    """A valid observation file of the base configuration's truth (steps 0..7), with
    ``values`` replacing variables (``value=..., error_std=...``)."""
    steps = np.repeat(np.arange(8), 2)
    data = {
        "value": (("obs",), np.tile([1.0, -1.0], 8)),
        "step": (("obs",), steps.astype(np.int64)),
        "index": (("obs",), np.tile([0, 4], 8).astype(np.int64)),
        "error_std": (("obs",), np.ones(16)),
        "operator": (("obs",), np.array(["subset"] * 16)),
    }
    for key, value in values.items():
        data[key] = (("obs",), np.broadcast_to(value, (16,)).copy())
    xr.Dataset(data, attrs={"n_state": 8}).to_netcdf(directory / name)


def a_result(directory: Path, name: str = "first.nc", **variables) -> None:
    ds = xr.Dataset({"analysis": (("cycle", "step", "x"), np.zeros((2, 5, 8))), **variables})
    ds.to_netcdf(directory / name)


def with_files(**files) -> Callable[[Path], None]:
    def setup(directory: Path) -> None:
        for name, content in files.items():
            path = directory / name.replace("__", "/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return setup


def alias_bomb() -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    return "\n".join(lines) + "\n" + text()


def hand_edited_checkpoint(directory: Path) -> None:
    (directory / "out" / "result.checkpoint").mkdir()
    (directory / "out" / "result.checkpoint" / "cycle_000000.nc").write_bytes(b"CDF\x01 edited by hand")


def checkpoint_of_another_config(directory: Path) -> None:
    checkpoint = directory / "out" / "result.checkpoint"
    checkpoint.mkdir()
    ds = xr.Dataset({"state_xb": (("x",), np.zeros(8))}, attrs={"cycle": 0, "config": "seed: 99\n"})
    ds["analysis"] = (("step", "x"), np.zeros((5, 8)))
    ds.to_netcdf(checkpoint / "cycle_000000.nc")


# --- the cases --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    args: tuple
    words: tuple = ()  # what the one line must contain
    config: str | bytes | None = None  # experiment.yaml (default: the base configuration)
    setup: Callable[[Path], None] | None = None
    status: int = 2
    limit_file_size: int | None = None  # bytes: the process's RLIMIT_FSIZE, SIGXFSZ ignored (a full disk)
    changes_allowed: tuple = ()  # paths a successful case may create or change
    process: bool = False  # through a real ``python -m fourdvar`` process (always with limit_file_size)


#: With --overwrite: the previous result is refused first without it (before the plan runs the truth), and must outlive every case.
RUN = ("run", "experiment.yaml", "--overwrite")
GENERATE = ("generate", "experiment.yaml")
CHECK = ("check", "experiment.yaml")
FROM_FILE = {"observations__file": "obs.nc", "background__state__initial": "free_run"}

CASES: dict[str, Case] = {
    # data that must never be overwritten
    "output_exists_without_overwrite": Case(("run", "experiment.yaml"), ("out/result.nc exists", "add --overwrite to replace it")),
    "generate_output_exists_without_overwrite": Case((*GENERATE, "--output", RESULT), ("out/result.nc exists", "--overwrite")),
    "checkpoint_without_resume_or_restart": Case((*RUN, "--overwrite"), ("1 completed windows", "--resume", "--restart"),
                                                 setup=with_files(**{"out__result.checkpoint__cycle_000000.nc": b"a window"})),
    "output_is_the_config": Case((*RUN, "--output", "experiment.yaml"), ("--output", "experiment.yaml", "input of this run")),
    "output_file_key_is_the_config": Case(RUN, ("output.file", "experiment.yaml", "input of this run"), text(output__file="experiment.yaml")),
    "output_is_the_observation_file": Case((*RUN, "--output", "obs.nc"), ("--output", "obs.nc", "input of this run"), text(**FROM_FILE), observation_file),
    "output_is_a_symlink_to_the_config": Case((*RUN, "--output", "link.nc"), ("link.nc", "input of this run"),
                                              setup=lambda d: (d / "link.nc").symlink_to("experiment.yaml")),
    "output_is_params_from": Case((*RUN, "--output", "first.nc"), ("first.nc", "input of this run"),
                                  text(model={**HYBRID, "params_from": "first.nc"}), lambda d: a_result(d)),
    "output_empty_string": Case((*RUN, "--output", ""), ("--output", "the path is empty")),
    "generate_output_is_the_config": Case((*GENERATE, "--output", "experiment.yaml"), ("experiment.yaml", "input of this run")),
    "generate_output_empty": Case((*GENERATE, "--output", ""), ("the path is empty",)),
    "output_is_a_directory": Case((*RUN, "--output", "out"), ("--output", "out", "is a directory")),
    "output_under_proc": Case((*RUN, "--output", "/proc/self/result.nc"), ("/proc", "system tree")),
    "output_under_dev": Case((*RUN, "--output", "/dev/null"), ("/dev", "system tree")),
    "output_name_300_characters": Case((*RUN, "--output", "r" * 300 + ".nc"), ("file name is too long",)),
    "output_path_5000_characters": Case((*RUN, "--output", "a/" * 2500 + "r.nc"), ("--output", "the path is too long")),
    "output_dangling_symlink": Case((*RUN, "--output", "dangling.nc"), ("dangling.nc", "dangling symbolic link"),
                                    setup=lambda d: (d / "dangling.nc").symlink_to("nowhere/else.nc")),
    "output_parent_is_a_file": Case((*RUN, "--output", "blocker/result.nc"), ("blocker", "not a directory"), setup=with_files(blocker="a file\n")),
    "output_is_a_fifo": Case((*RUN, "--output", "fifo.nc"), ("fifo.nc", "not a regular file"), setup=lambda d: os.mkfifo(d / "fifo.nc")),
    "checkpoint_name_taken_by_a_file": Case(RUN, ("result.checkpoint", "not a directory"), setup=lambda d: (d / "out" / "result.checkpoint").write_text("x")),
    "check_validates_the_output_too": Case(CHECK, ("output.file", "experiment.yaml", "input of this run"), text(output__file="experiment.yaml")),
    # mistakes that used to surface only after the computation
    "compare_entry_typo": Case(RUN, ("compare[0].modle", "did you mean 'model'"), text(compare=[{"name": "a", "modle": {"type": "lorenz96"}}])),
    "compare_unknown_model_type": Case(RUN, ("compare[a]", "model.type", "lorenz69"), text(compare=[{"name": "a", "model": {"type": "lorenz69"}}])),
    "compare_model_of_another_size": Case(RUN, ("compare[a]", "n_state = 6", "main run", "n_state = 8"), text(compare=[{"name": "a", "model": {"type": "lorenz96", "n_state": 6}}])),
    "compare_bad_assimilation_value": Case(RUN, ("compare[a]", "assimilation.outer_loops", ">= 1"), text(compare=[{"name": "a", "assimilation": {"outer_loops": 0}}])),
    "compare_fit_without_correction": Case(RUN, ("compare[a]", "fit_correction"), text(compare=[{"name": "a", "fit_correction": {}}])),
    "compare_typo_fails_check_too": Case(CHECK, ("compare[0].modle",), text(compare=[{"name": "a", "modle": {"type": "lorenz96"}}])),
    "diagnostics_typo": Case(RUN, ("diagnostics.forecast_skil", "did you mean 'forecast_skill'"), text(diagnostics={"forecast_skil": True})),
    "diagnostics_skill_without_truth": Case(RUN, ("diagnostics.forecast_skill", "file"), text(diagnostics={"forecast_skill": True}, **FROM_FILE), observation_file),
    "gap_names_no_comparison": Case(RUN, ("gap.baseline", "physics"), text(gap={"baseline": "physics", "reference": "perfect"})),
    "gap_between_a_run_and_itself": Case(RUN, ("gap.reference", "same run"),
                                         text(compare=[{"name": "a"}], gap={"baseline": "a", "reference": "a"})),
    # unreadable configurations
    "config_latin1": Case(RUN, ("experiment.yaml", "not UTF-8", "0xe9"), "title: caf\xe9\n".encode("latin-1") + text().encode()),
    "config_binary": Case(RUN, ("experiment.yaml", "binary"), b"\x89HDF\r\n\x1a\n\x00\x00\x00binary"),
    "config_missing": Case(("run", "missing.yaml"), ("missing.yaml", "no such file")),
    "config_is_a_directory": Case(("run", "out"), ("out", "is a directory")),
    "config_empty": Case(RUN, ("model", "missing required key"), ""),
    "config_is_a_list": Case(RUN, ("top level", "expected a mapping"), "- 1\n- 2\n"),
    "config_yaml_syntax": Case(RUN, ("YAML syntax error", "line 3"), "seed: 1\nmodel: {type: lorenz96\n"),
    "config_duplicate_key": Case(RUN, ("duplicate key 'seed'", "line 2"), "seed: 1\nseed: 2\n" + text(seed=None)),
    "config_alias_bomb": Case(RUN, ("expands to", "nodes"), alias_bomb()),
    "config_huge_value_cut": Case(RUN, ("title: expected a string",), text(title=list(range(20000)))),
    "config_deeply_nested": Case(RUN, ("experiment.yaml", "nested too deeply"), "model: " + "[" * 5000 + "]" * 5000 + "\n", process=True),
    "model_type_20000_characters": Case(RUN, ("model.type", "unknown model type", "..."), text(model={"type": "x" * 20000})),
    "config_unknown_key": Case(RUN, ("windw", "did you mean 'window'"), text(windw={"steps": 2})),
    # values that make no sense
    "seed_minus_one_option": Case((*RUN, "--seed", "-1"), ("--seed", "expected an integer >= 0")),
    "seed_minus_one_key": Case(RUN, ("seed", ">= 0"), text(seed=-1)),
    "seed_not_integer": Case(RUN, ("seed", "integer"), text(seed=1.5)),
    "cycles_absurd": Case((*RUN, "--cycles", "1000000000000"), ("window.cycles", "GiB")),
    "cycles_zero": Case((*RUN, "--cycles", "0"), ("--cycles", "positive integer")),
    "params_abc": Case(RUN, ("model.params", "numbers", "'abc'"), text(model={**HYBRID, "params": "abc"})),
    "params_nan": Case(RUN, ("model.params", "finite"), "model: {type: lorenz96, n_state: 8, estimate_forcing: true, params: [.nan]}\n" + text(model=None)),
    "params_wrong_length": Case(RUN, ("model.params", "1 parameters", "got 3"), text(model={"type": "lorenz96", "n_state": 8, "estimate_forcing": True, "params": [1, 2, 3]})),
    "params_error_std_inf": Case(RUN, ("background.params.error_std", "finite"), "background: {params: {error_std: .inf}}\n" + text()),
    "obs_std_underflows": Case(RUN, ("observations.error_std", "underflow"), text(observations={"error_std": 1e300})),
    "obs_std_tiny": Case(RUN, ("observations.error_std", "overflow"), text(observations={"error_std": 1e-300})),
    "obs_std_inf": Case(RUN, ("observations.error_std", "finite"), "observations: {error_std: .inf}\n" + text()),
    "obs_value_overflows_cost": Case(RUN, ("cost J", "first background"), text(**FROM_FILE), lambda d: observation_file(d, value=1e30)),
    "obs_file_std_underflows": Case(RUN, ("observations.file", "error_std"), text(**FROM_FILE), lambda d: observation_file(d, error_std=1e300)),
    "obs_file_missing": Case(RUN, ("observations.file", "obs.nc", "no such file"), text(**FROM_FILE)),
    "obs_file_not_netcdf": Case(RUN, ("observations.file", "obs.nc"), text(**FROM_FILE), with_files(**{"obs.nc": "not netcdf"})),
    "initial_std_zero": Case(RUN, ("truth.initial_std", "positive"), text(truth={"initial_std": 0})),
    "window_steps_zero": Case(RUN, ("window.steps", ">= 1"), text(window={"steps": 0, "cycles": 2})),
    "control_unknown": Case(RUN, ("assimilation.control", "weights"), text(assimilation={"control": ["weights"]})),
    "control_params_without_params": Case(RUN, ("assimilation.control", "no parameters"), text(assimilation={"control": ["state", "params"]})),
    "state_slice_mismatch": Case(RUN, ("truth.model", "truth.state_slice"), text(truth={"state_slice": [0, 4]})),
    "n_state_negative": Case(RUN, ("model",), text(model={"type": "lorenz96", "n_state": -3})),
    "params_from_not_a_result": Case(RUN, ("model.params_from", "first.nc"), text(model={**HYBRID, "params_from": "first.nc"}), with_files(**{"first.nc": "text"})),
    "params_from_without_params": Case(RUN, ("model.params_from", "params_analysis"), text(model={**HYBRID, "params_from": "first.nc"}), lambda d: a_result(d)),
    # code that must not run
    "type_subprocess_run": Case(RUN, ("model.type", "subprocess:run", "not a class"), text(model={"type": "subprocess:run", "args": ["touch", "PWNED"]}), process=True),
    "type_builtins_dict": Case(RUN, ("model.type", "builtins:dict", "not a model class"), text(model={"type": "builtins:dict"})),
    "type_in_hybrid_physics": Case(RUN, ("model.type", "subprocess:run"), text(model={**HYBRID, "physics": {"type": "subprocess:run", "args": ["touch", "PWNED"]}}), process=True),
    "operator_type_is_a_model": Case(RUN, ("observations.operator", "not an operator class"), text(observations={"operator": {"type": "models.lorenz96:Lorenz96"}})),
    "operator_unknown": Case(RUN, ("observations.operator", "idnetity"), text(observations={"operator": {"type": "idnetity"}})),
    "users_observations_py_shadows": Case(RUN, ("observations.py", "shadows", "rename"), setup=with_files(**{"observations.py": "x = 1\n"}), process=True),
    "users_models_py_shadows": Case(RUN, ("models.py", "shadows", "rename"), setup=with_files(**{"models.py": "x = 1\n"}), process=True),
    # generate
    "generate_linear_operator": Case(GENERATE, ("observations.operator", "observation file"),
                                     text(observations={"operator": {"type": "linear", "matrix": [[1.0] * 8]}})),
    "generate_with_observation_file": Case(GENERATE, ("observations.file", "nothing to generate"), text(**FROM_FILE), observation_file),
    # checkpoints, locks, disks
    "resume_hand_edited_checkpoint": Case((*RUN, "--resume"), ("cycle_000000.nc", "not a readable checkpoint"), setup=hand_edited_checkpoint),
    "resume_other_config": Case((*RUN, "--resume"), ("--resume", "different configuration"), setup=checkpoint_of_another_config),
    "file_size_limit": Case((*RUN, "--overwrite"), ("cannot write", "result.checkpoint/cycle_000000.nc", "ulimit -f"), limit_file_size=2000),
    # plot
    "plot_text_file": Case(("plot", "experiment.yaml"), ("RESULT", "experiment.yaml", "not a readable NetCDF")),
    "plot_missing_file": Case(("plot", "missing.nc"), ("missing.nc", "no such file")),
    "plot_directory": Case(("plot", "out"), ("out", "not a file")),
    "plot_empty_file": Case(("plot", "empty.nc"), ("empty.nc", "not a readable NetCDF"), setup=with_files(**{"empty.nc": b""})),
    "plot_observation_file": Case(("plot", "obs.nc"), ("obs.nc", "not a fourdvar result"), setup=observation_file),
    "plot_analysis_of_wrong_shape": Case(("plot", "odd.nc"), ("odd.nc", "not a fourdvar result"),
                                         setup=lambda d: xr.Dataset({"analysis": (("a",), np.zeros(3))}).to_netcdf(d / "odd.nc")),
    "plot_result_without_figures": Case(("plot", "empty_grid.nc", "--output", "figs"), ("empty_grid.nc", "nothing to plot"),
                                        setup=lambda d: xr.Dataset({"analysis": (("cycle", "step", "x"), np.zeros((2, 5, 0)))}).to_netcdf(d / "empty_grid.nc")),
    "plot_output_path_too_long": Case(("plot", "first.nc", "--output", "d" * 300), ("--output", "too long"), setup=lambda d: a_result(d)),
    "plot_output_is_a_file": Case(("plot", "first.nc", "--output", "experiment.yaml"), ("--output", "not a directory"), setup=lambda d: a_result(d)),
    # divergence: exit 1, the place named
    "divergence_names_the_cycle": Case((*RUN, "--overwrite"), ("the run diverged", "cycle 0", "outer loop 0", "step"),
                                       text(model={"type": "lorenz96", "n_state": 8, "dt": 0.5}, truth={"spinup_steps": 50, "model": {"type": "lorenz96", "n_state": 8}}), status=1),
    # valid inputs succeed cleanly
    "yaml_1_2_floats_run": Case((*RUN, "--overwrite"), config="observations: {error_std: 1e0}\nbackground: {state: {error_std: 1.0e0}}\n" + text(), status=0,
                                changes_allowed=(RESULT,)),
}


# --- running them -------------------------------------------------------------------------------------------


def snapshot(directory: Path) -> dict:
    """Every entry under ``directory``: kind, bytes, mode (symlinks as their target)."""
    state = {}
    for path in sorted(directory.rglob("*")):
        key = str(path.relative_to(directory))
        if "__pycache__" in path.parts:
            continue
        info = path.lstat()
        if path.is_symlink():
            state[key] = ("link", os.readlink(path))
        elif path.is_dir():
            state[key] = ("dir", info.st_mode)
        elif path.is_file():
            state[key] = ("file", path.read_bytes(), info.st_mode, info.st_mtime_ns)
        else:
            state[key] = ("other", info.st_mode)
    return state


def fault(limit_file_size: int | None):
    def prepare():
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if limit_file_size is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_size, limit_file_size))
    return prepare


def environment(directory: Path) -> dict:
    return dict(os.environ, MPLBACKEND="Agg", OPENBLAS_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")


@dataclass
class Outcome:
    result: subprocess.CompletedProcess
    directory: Path
    before: dict
    after: dict = field(default_factory=dict)


def prepare_case(name: str, case: Case, root: Path) -> tuple[Path, dict]:
    directory = root / name
    (directory / "out").mkdir(parents=True)
    (directory / RESULT).write_bytes(PREVIOUS)
    content = text() if case.config is None else case.config
    (directory / "experiment.yaml").write_bytes(content if isinstance(content, bytes) else content.encode())
    if case.setup is not None:
        case.setup(directory)
    return directory, snapshot(directory)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, Outcome]:
    root = tmp_path_factory.mktemp("battery")
    prepared = {name: prepare_case(name, case, root) for name, case in CASES.items()}

    def one(name: str) -> tuple[str, Outcome]:
        case, (directory, before) = CASES[name], prepared[name]
        if in_process(case):
            result = run_command(*case.args, cwd=directory)
        else:
            result = subprocess.run(
                [sys.executable, "-m", "fourdvar", *case.args], cwd=directory, env=environment(directory),
                capture_output=True, text=True, timeout=TIMEOUT, preexec_fn=fault(case.limit_file_size),
            )
        return name, Outcome(result, directory, before, snapshot(directory))

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        processes = pool.map(one, [name for name, case in CASES.items() if not in_process(case)])
        here = [one(name) for name, case in CASES.items() if in_process(case)]
        return dict([*here, *processes])


def in_process(case: Case) -> bool:
    return not case.process and case.limit_file_size is None


def describe(result: subprocess.CompletedProcess) -> str:
    return f"exit status {result.returncode}\n--- stdout:\n{result.stdout}\n--- stderr:\n{result.stderr}"


def test_the_battery_is_large():
    assert len(CASES) >= 60
    assert sum(case.status == 2 for case in CASES.values()) >= 60


@pytest.mark.parametrize("name", list(CASES))
def test_case(name, outcomes):
    case, outcome = CASES[name], outcomes[name]
    result = outcome.result
    assert result.returncode == case.status, describe(result)
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr, describe(result)
    if case.status == 0:
        changed = {key for key in set(outcome.before) | set(outcome.after) if outcome.before.get(key) != outcome.after.get(key)}
        assert changed <= set(case.changes_allowed), changed
        assert (outcome.directory / RESULT).read_bytes()[:4] == b"\x89HDF"
        return
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, describe(result)
    assert lines[0].startswith(("fourdvar: error: ", "fourdvar run: error: ")), describe(result)
    missing = [word for word in case.words if word not in lines[0]]
    assert not missing, f"{lines[0]!r} lacks {missing}"
    assert len(lines[0]) < 400, lines[0]
    assert result.stdout == "", describe(result)
    assert outcome.after == outcome.before, "files were created, changed or removed"
    assert (outcome.directory / RESULT).read_bytes() == PREVIOUS
    assert not (outcome.directory / "PWNED").exists()


def test_a_negative_control_of_the_snapshot(tmp_path):
    """The directory comparison sees a new file, a changed byte and a changed mode."""
    (tmp_path / "a").write_bytes(b"1")
    before = snapshot(tmp_path)
    os.chmod(tmp_path / "a", 0o600)
    assert snapshot(tmp_path) != before
    (tmp_path / "b").write_bytes(b"")
    assert set(snapshot(tmp_path)) == {"a", "b"}


def test_a_second_run_on_a_locked_output_is_refused(tmp_path):
    """While a run holds the output's checkpoint, another run on it exits 2 and touches nothing."""
    directory, before = prepare_case("locked", Case(RUN), tmp_path)
    checkpoint = directory / "out" / "result.checkpoint"
    checkpoint.mkdir()
    before = snapshot(directory)
    holder = os.open(checkpoint, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(holder, fcntl.LOCK_EX)  # as the first run does (a lock of its own open file, even in this process)
    try:
        result = run_command(*RUN, cwd=directory)
    finally:
        os.close(holder)
    assert result.returncode == 2, describe(result)
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "another fourdvar run is writing out/result.nc" in result.stderr
    assert snapshot(directory) == before
    # negative control: once the lock is released the same command runs
    done = run_command(*RUN, "-q", "--overwrite", cwd=directory)
    assert done.returncode == 0, describe(done)
    assert not checkpoint.exists()


def test_results_are_created_with_the_umask_mode(tmp_path):
    directory, _ = prepare_case("umask", Case(RUN), tmp_path)
    (directory / RESULT).unlink()
    for umask, mode in ((0o022, 0o644), (0o027, 0o640)):
        previous = os.umask(umask)
        try:
            result = run_command(*RUN, "-q", "--overwrite", cwd=directory)
        finally:
            os.umask(previous)
        assert result.returncode == 0, describe(result)
        assert (directory / RESULT).stat().st_mode & 0o777 == mode


# --- SIGKILL storms ------------------------------------------------------------------------------------------

STORM = {**BASE, "model": {"type": "lorenz96", "n_state": 40}, "window": {"steps": 5, "cycles": 8},
         "background": {"state": {"adaptive": True, "adaptive_weight": 0.5}},
         "assimilation": {"outer_loops": 3, "inner": {"max_iterations": 40, "gradient_reduction": 1e-9}}}


def windows_done(directory: Path) -> int:
    return len(list((directory / "out" / "result.checkpoint").glob("cycle_*.nc")))


def temporaries(directory: Path) -> list[Path]:
    return [path for path in directory.rglob("*.tmp")]


def kill_during(directory: Path, when: str, rng: np.random.Generator) -> dict:
    """Start ``run --resume --overwrite`` (a run of the storm may finish before its kill);
    SIGKILL it while it writes a checkpoint window (``when ==
    "write"``: as soon as a temporary file appears) or at a random moment of its cycles."""
    process = subprocess.Popen([sys.executable, "-m", "fourdvar", *RUN, "--resume", "--overwrite", "-q"], cwd=directory,
                               env=environment(directory), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    start = windows_done(directory)
    deadline = time.monotonic() + TIMEOUT
    caught_writing = False
    try:
        if when == "write":
            checkpoint = directory / "out" / "result.checkpoint"
            while process.poll() is None and time.monotonic() < deadline:
                if checkpoint.is_dir() and any(checkpoint.glob(".*.tmp")):
                    caught_writing = True
                    break
                time.sleep(0.0005)
        else:
            while process.poll() is None and windows_done(directory) <= start and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.3))
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return {"caught_writing": caught_writing, "killed": process.returncode == -signal.SIGKILL, "windows": windows_done(directory)}


def assert_same_result(a: xr.Dataset, b: xr.Dataset) -> None:
    assert sorted(a.data_vars) == sorted(b.data_vars)
    for name in a.data_vars:
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)  # bit for bit (NaN == NaN)
    wall_clock = {"created", "run_seconds"}
    assert {k: v for k, v in a.attrs.items() if k not in wall_clock} == {k: v for k, v in b.attrs.items() if k not in wall_clock}


def test_sigkill_storm_then_resume_is_bit_identical_and_leaves_no_temporaries(tmp_path):
    reference, stormed = tmp_path / "reference", tmp_path / "stormed"
    for directory in (reference, stormed):
        directory.mkdir()
        (directory / "experiment.yaml").write_text(yaml.safe_dump(STORM, sort_keys=False))
    background = subprocess.Popen([sys.executable, "-m", "fourdvar", *RUN, "-q"], cwd=reference, env=environment(reference),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    rng = np.random.default_rng(0)
    kills = [kill_during(stormed, when, rng) for when in ("write", "cycle", "write", "cycle", "write", "write")]
    assert sum(kill["killed"] for kill in kills) >= 4, kills
    assert any(kill["caught_writing"] and kill["killed"] for kill in kills), kills  # at least one kill mid-write
    finish = subprocess.run([sys.executable, "-m", "fourdvar", *RUN, "--resume", "--overwrite"], cwd=stormed, env=environment(stormed),
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert finish.returncode == 0, describe(finish)
    _, errors = background.communicate(timeout=TIMEOUT)
    assert background.returncode == 0, errors
    assert not temporaries(stormed), temporaries(stormed)
    assert not (stormed / "out" / "result.checkpoint").exists()
    assert_same_result(xr.load_dataset(stormed / RESULT), xr.load_dataset(reference / RESULT))
    assert "resuming from" in finish.stderr or kills[-1]["windows"] == 0


def test_write_error_on_a_full_disk_names_the_path_and_the_space(tmp_path, monkeypatch):
    """ENOSPC from the NetCDF writer (monkeypatched, as a full disk raises it) is one line."""
    import errno

    from fourdvar.app import results

    def full_disk(self, path, **options):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(xr.Dataset, "to_netcdf", full_disk)
    dataset = xr.Dataset({"a": (("x",), np.zeros(1000))})
    with pytest.raises(results.WriteError) as error:
        results.write_atomic(dataset, tmp_path / "out" / "r.nc")
    message = error.value.strerror
    assert message.startswith(f"cannot write {tmp_path / 'out' / 'r.nc'}: no space left on the device (needs about 7.8 KiB, ")
    assert message.endswith(" free)") and "\n" not in message
    assert not list((tmp_path / "out").iterdir())  # the partial temporary is gone


def test_the_checkpoint_benchmark_runs_and_prints_its_ratio():
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "checkpoint.py"
    result = subprocess.run([sys.executable, str(script), "--quick"], capture_output=True, text=True, timeout=TIMEOUT,
                            env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))
    assert result.returncode == 0, describe(result)
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("ratio of write time at 50 windows / at 10 windows: ")
    assert float(last.rpartition(" ")[2]) > 0
