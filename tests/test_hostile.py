"""A hostile user's inputs through the command line: each is refused in one line naming the key,
file or argument, with exit status 2, before any computation, and leaves the directory as it was.

Every case runs in its own directory holding a small valid configuration and a previous result
at the output path (:func:`refused`), run with ``--overwrite`` so that the refusal is the case's own
(without it the existing result is refused first, before the plan runs the truth); the cases are
mutations of that configuration, output paths that name something else, files that would expand to
more memory than any machine has.
The ensemble's member parameters and the ``--executor`` choice are checked on one small run.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import xarray as xr
import yaml
from conftest import run_command

PREVIOUS = b"a previous result that a refused command must leave alone\n"
BASE = {
    "seed": 1,
    "model": {"type": "lorenz96", "n_state": 8},
    "truth": {"spinup_steps": 20},
    "observations": {"every": 2},
    "window": {"steps": 4, "cycles": 2},
    "assimilation": {"outer_loops": 1, "inner": {"max_iterations": 5}},
    "output": {"file": "out.nc"},
}
#: The forcing estimated: a model with one parameter in the control.
PARAMS = {"model": {"type": "lorenz96", "n_state": 8, "forcing": 7.0, "estimate_forcing": True},
          "truth.model": {"type": "lorenz96", "n_state": 8}, "assimilation.control": ["state", "params"]}
#: A hybrid with a learned correction and a two-scale truth: a comparison run can fit the correction offline.
HYBRID = {"model": {"type": "hybrid", "physics": {"type": "lorenz96", "n_state": 8, "forcing": 10.0},
                    "correction": {"type": "local_mlp", "n_state": 8, "half_width": 2, "hidden": [3]}},
          "truth.model": {"type": "lorenz96_two_scale", "n_slow": 8, "n_fast_per_slow": 4, "forcing": 10.0, "dt": 0.005},
          "truth.substeps": 10, "truth.state_slice": [0, 8]}


def write_config(directory: Path, changes: dict) -> None:
    """:data:`BASE` with the dotted ``changes`` set, as ``c.yaml``, and a previous result ``out.nc``."""
    config = yaml.safe_load(yaml.safe_dump(BASE))
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = config
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    (directory / "c.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (directory / "out.nc").write_bytes(PREVIOUS)


def snapshot(directory: Path) -> dict:
    """Every path below ``directory`` with its content (files), or ``None`` (directories)."""
    return {path.relative_to(directory).as_posix(): path.read_bytes() if path.is_file() and not path.is_symlink() else None
            for path in sorted(directory.rglob("*"))}


def refused(directory: Path, *args, words: tuple) -> str:
    """Run ``fourdvar ARGS`` in ``directory``: exit 2, one line on stderr holding ``words``,
    nothing on stdout, nothing created, changed or removed; returns the line."""
    before = snapshot(directory)
    result = run_command(*args, cwd=directory)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stdout == ""
    missing = [word for word in words if word not in lines[0]]
    assert not missing, f"{lines[0]!r} lacks {missing}"
    assert snapshot(directory) == before
    return lines[0]


def bomb(path: Path, variable: str = "params_analysis") -> None:
    """A NetCDF file of a few kB whose variables would take 32 EiB once read (fill values, no data)."""
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("cycle", 1)
        nc.createDimension("param", 2**31 - 1)
        nc.createDimension("a", 2**31 - 1)
        nc.createVariable(variable, "f8", ("cycle", "param"), zlib=True, chunksizes=(1, 1 << 16), fill_value=1.0)
        nc.createVariable("junk", "f8", ("a", "param"), zlib=True, chunksizes=(1 << 8, 1 << 8), fill_value=0.0)


# --- keys whose values break the run only after its first windows, or never return -------------------------

CASES = {
    "climatology_of_a_nonlinear_operator": ({"observations.climatology_every": 4, "observations.operator": {"type": "square"}},
                                            ("observations.climatology_every", "Square")),
    "observations_after_the_last_window": ({"observations.offset": 1000}, ("observations.offset", "1000", "no observation")),
    "random_walk_std_overflows": ({**PARAMS, "background.params.update": "posterior", "background.params.noise_std": 1e300},
                                  ("background.params.noise_std", "1e+100")),
    "random_walk_floor_overflows": ({**PARAMS, "background.params.update": "posterior", "background.params.noise_floor": 1e300},
                                    ("background.params.noise_floor", "1e+100")),
    "random_walk_decay_overflows": ({**PARAMS, "background.params.update": "posterior", "background.params.noise_decay": 1e300,
                                     "window.cycles": 3}, ("background.params.noise_decay", "window 2", "1e598")),
    "schedule_std_overflows": ({**PARAMS, "background.params.decay": 1e300, "window.cycles": 3}, ("background.params.decay", "1e600")),
    "schedule_std_underflows": ({**PARAMS, "background.params.decay": 1e-300, "window.cycles": 3},
                                ("background.params.decay", "1e-600", "background.params.floor")),
    "schedule_floor_overflows": ({**PARAMS, "background.params.floor": 1e300}, ("background.params.floor", "1e+100")),
    "inflation_overflows": ({"ensemble.members": 2, "ensemble.inflation": 1e300}, ("ensemble.inflation", "at most 1e+100")),
    "model_error_sub_window_exhausts_memory": ({"assimilation.control": ["state", "model_error"], "model_error.every": 10**12},
                                              ("model_error.every", "GiB")),
    "truth_model_error_sub_window_exhausts_memory": ({"truth.model_error_std": 0.1, "truth.model_error_every": 10**15},
                                                    ("truth.model_error_every", "GiB")),
    # the memory check comes before the model is probed at a state of 8 GB (51 s, then "Allocation failed")
    "a_state_of_a_billion_values": ({"model.n_state": 10**9}, ("model.n_state", "GiB", "1000000000 state values")),
    # the sizes are read before a constructor allocates its grids or its layers (minutes, then an allocation failure)
    "a_grid_of_ten_billion_points": ({"model": {"type": "qg", "nx": 100000}}, ("model.nx", "100000 x 100000", "GiB")),
    "a_truth_grid_beyond_memory": ({"truth.model": {"type": "qg", "nx": 10**6}}, ("truth.model.nx", "1000000 x 1000000", "GiB")),
    "a_layer_of_a_billion_channels": ({"model": {"type": "conv_surrogate", "channels": [2, 10**9, 2], "activations": ["tanh", "identity"],
                                                   "ny": 8, "nx": 8}}, ("model.channels", "1000000000", "GiB")),
    "a_hybrids_dense_layer_of_a_billion": ({"model": {"type": "hybrid", "physics": {"type": "lorenz96", "n_state": 8},
                                                      "correction": {"type": "mlp", "layer_sizes": [8, 10**9, 8], "activations": ["tanh", "identity"]}}},
                                           ("model.correction.layer_sizes", "GiB")),
    "a_trillion_stations": ({"model": {"type": "qg", "nx": 16}, "observations.operator": {"type": "points", "stations": 10**12}},
                            ("observations.operator.stations", "1000000000000 stations", "GiB")),
    # a constructor that allocates nothing: its parameters are counted before they are drawn
    "a_hidden_layer_of_ten_billion": ({"model": {"type": "local_mlp", "n_state": 8, "hidden": [10**10]}}, ("model:", "parameters", "GiB")),
    "offline_fit_exhausts_memory": ({**HYBRID, "compare": [{"name": "fit", "fit_correction": {"samples": 10**12}}]},
                                    ("compare[fit]", "fit_correction", "1000000000000 samples", "GiB")),
    "comparison_overrides_not_a_mapping": ({"compare": [{"name": "a", "assimilation": [1]}]}, ("compare[0].assimilation", "mapping", "[1]")),
    "seed_beyond_64_bits": ({"seed": 10**30}, ("seed", "below 2^63")),
    "operator_size_unlike_the_model": ({"observations.operator": {"type": "random_subset", "n_state": 20, "fraction": 0.5}},
                                       ("observations.operator.n_state", "20", "model gives 8")),
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_value_that_would_break_the_run_later_is_refused_first(name, tmp_path):
    changes, words = CASES[name]
    write_config(tmp_path, changes)
    refused(tmp_path, "run", "c.yaml", "--executor", "serial", "--overwrite", words=("c.yaml", *words))


@pytest.mark.parametrize("sweep, words", [
    ({"seed": [10**30, 1]}, ("sweep member seed=", "below 2^63")),
    ({"seed": list(range(1000)), "window.steps": list(range(1, 1001))}, ("sweep", "1000 x 1000 = 1000000 members", "at most 10000")),
])
def test_a_sweep_that_would_fail_late_or_never_start_is_refused_first(sweep, words, tmp_path):
    write_config(tmp_path, {"sweep": sweep})
    refused(tmp_path, "sweep", "c.yaml", "--executor", "serial", words=("c.yaml", *words))


def test_the_schedule_and_walk_checks_pass_what_the_shipped_configurations_use(tmp_path):
    """Negative control: a floor keeps a decaying std in range, and a walk that decays stays."""
    from fourdvar.app.config import ConfigError, resolve_config

    for changes in ({"decay": 1e-300, "floor": 0.05}, {"update": "posterior", "noise_std": 0.008, "noise_decay": 0.986, "noise_floor": 0.001}):
        config = {**BASE, "model": PARAMS["model"], "assimilation": {"control": ["state", "params"]},
                  "window": {"steps": 4, "cycles": 500}, "background": {"params": changes}}
        resolve_config(config)
    with pytest.raises(ConfigError, match="background.params.decay"):
        resolve_config({**config, "background": {"params": {"decay": 0.5}}})  # 0.5^499: below 1e-100


# --- command-line arguments and output paths ----------------------------------------------------------------


def test_directions_beyond_the_maximum_are_refused(tmp_path):
    write_config(tmp_path, {})
    refused(tmp_path, "check", "c.yaml", "--directions", "100000000000", words=("--directions", "at most 1000"))


@pytest.mark.parametrize("output", ["newdir/", "results/new/"])
def test_an_output_ending_in_a_separator_is_a_directory_not_a_file_name(output, tmp_path):
    write_config(tmp_path, {})
    refused(tmp_path, "run", "c.yaml", "--output", output, words=("--output", output, "a directory"))
    write_config(tmp_path, {"output.file": output})
    refused(tmp_path, "run", "c.yaml", words=("c.yaml", "output.file", "a directory"))


def test_an_output_named_like_its_checkpoint_directory_is_refused(tmp_path):
    write_config(tmp_path, {})
    refused(tmp_path, "run", "c.yaml", "--output", "result.checkpoint", words=("--output: result.checkpoint", "may not end in .checkpoint"))


def test_an_output_hard_linked_to_an_input_is_that_input(tmp_path):
    write_config(tmp_path, {})
    os.link(tmp_path / "c.yaml", tmp_path / "linked.nc")
    refused(tmp_path, "run", "c.yaml", "--output", "linked.nc", "--overwrite", words=("--output", "linked.nc", "is an input"))
    refused(tmp_path, "generate", "c.yaml", "--output", "linked.nc", "--overwrite", words=("--output", "linked.nc", "is an input"))


def test_resume_onto_an_existing_result_is_one_line(tmp_path):
    write_config(tmp_path, {})
    refused(tmp_path, "run", "c.yaml", "--resume", words=("out.nc exists", "--overwrite"))


def test_restart_onto_an_existing_result_keeps_the_checkpoint(tmp_path):
    """Refused for the existing result, ``--restart`` discards no window of the interrupted run."""
    write_config(tmp_path, {})
    (tmp_path / "out.checkpoint").mkdir()
    (tmp_path / "out.checkpoint" / "cycle_000000.nc").write_bytes(b"a window of an interrupted run")
    refused(tmp_path, "run", "c.yaml", "--restart", words=("out.nc exists", "--overwrite"))


# --- files that would expand beyond memory ------------------------------------------------------------------


def test_params_from_a_file_that_expands_beyond_memory_is_refused_unread(tmp_path):
    write_config(tmp_path, {**PARAMS, "model": {**PARAMS["model"], "params_from": "bomb.nc"}})
    bomb(tmp_path / "bomb.nc")
    refused(tmp_path, "run", "c.yaml", "--overwrite", words=("model.params_from", "bomb.nc", "GiB"))


def test_params_from_with_the_wrong_number_of_parameters_is_refused_unread(tmp_path):
    write_config(tmp_path, {**PARAMS, "model": {**PARAMS["model"], "params_from": "wide.nc"}})
    xr.Dataset({"params_analysis": (("cycle", "param"), np.ones((2, 3)))}).to_netcdf(tmp_path / "wide.nc")
    refused(tmp_path, "run", "c.yaml", "--overwrite", words=("model.params_from", "wide.nc", "3 values", "1 parameters"))


def test_an_observation_file_that_expands_beyond_memory_is_refused_unread(tmp_path):
    write_config(tmp_path, {"observations.file": "bomb.nc", "background.state.initial": "free_run"})
    bomb(tmp_path / "bomb.nc", "value")
    refused(tmp_path, "run", "c.yaml", "--overwrite", words=("observations.file", "bomb.nc", "GiB"))


def test_plot_of_a_file_that_expands_beyond_memory_is_refused_unread(tmp_path):
    write_config(tmp_path, {})
    bomb(tmp_path / "bomb.nc", "analysis")
    refused(tmp_path, "plot", "bomb.nc", words=("RESULT", "bomb.nc", "GiB"))


# --- an ensemble with its parameters in the control ---------------------------------------------------------


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory, request):
    """A 3-member EDA estimating the forcing, its members one after another (``--executor serial``),
    with the Dask fork server watched: it must not start."""
    from fourdvar.app import cluster

    directory = tmp_path_factory.mktemp("ensemble")
    write_config(directory, {**PARAMS, "ensemble": {"members": 3, "localization": 2.0}, "window.cycles": 3})
    (directory / "out.nc").unlink()
    started = []
    patch = pytest.MonkeyPatch()
    patch.setattr(cluster, "start_worker_server", lambda *args: started.append(args))
    try:
        result = run_command("run", "c.yaml", "--executor", "serial", "--quiet", cwd=directory)
    finally:
        patch.undo()
    assert result.returncode == 0, result.stderr
    with xr.open_dataset(directory / "out.nc") as dataset:
        return dataset.load(), started


def test_the_members_parameters_are_in_the_result_file(ensemble_run):
    dataset, _ = ensemble_run
    background, analysis = dataset["member_params_background"], dataset["member_params_analysis"]
    for variable in (background, analysis):
        assert variable.dims == ("cycle", "member", "param") and variable.shape == (3, 3, 1)
        assert variable.attrs["units"] == dataset["params_analysis"].attrs["units"]
        assert variable.attrs["long_name"].startswith("each member's ")
    # each member's analysed parameters are its next background (no parameter inflation), exactly
    np.testing.assert_array_equal(background.values[1:], analysis.values[:-1])
    # the members start from the control's background perturbed with P, and learn apart
    assert np.ptp(background.values[0, :, 0]) > 0.1
    assert not np.allclose(analysis.values[:, 0], dataset["params_analysis"].values)


def test_the_serial_executor_starts_no_dask_fork_server(ensemble_run):
    _, started = ensemble_run
    assert started == []



# --- what is already there is refused before the truth runs -----------------------------------------------

#: A spin-up of minutes: a refusal that came after the plan's truth run would not return in seconds.
LONG_SPINUP = {"truth.spinup_steps": 10**7}


@pytest.mark.parametrize("args, words", [
    (("run", "c.yaml"), ("out.nc exists", "--overwrite")),
    (("run", "c.yaml", "--resume"), ("out.nc exists", "--overwrite")),
    (("generate", "c.yaml", "--output", "out.nc"), ("out.nc exists", "--overwrite")),
    (("run", "c.yaml", "--output", "new.nc"), ("new.checkpoint holds 1 completed windows", "--resume", "--restart")),
])
def test_an_existing_result_or_checkpoint_is_refused_before_the_truth_runs(tmp_path, args, words):
    write_config(tmp_path, LONG_SPINUP)
    (tmp_path / "new.checkpoint").mkdir()
    (tmp_path / "new.checkpoint" / "cycle_000000.nc").write_bytes(b"a window of an interrupted run")
    started = time.perf_counter()
    refused(tmp_path, *args, words=words)
    assert time.perf_counter() - started < 5
