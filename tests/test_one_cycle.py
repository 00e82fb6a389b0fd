"""One cycling loop for single runs and ensembles: an ensemble estimating the parameters or the
model error runs from the command line and resumes bit for bit; quasi-static stages in weak
constraint reach the direct solve's minimum; without members the loop gives, bit for bit, the
numbers of the separate single-run loop it replaced (stored in ``data/one_cycle_reference.npz``,
written by ``python tests/test_one_cycle.py`` run on main at 18f4899 with that tree first on
``PYTHONPATH``); the solver options as one object or as keywords are the same solve; every
executor gives the same members."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

from fourdvar.app import cli
from fourdvar.app.config import load_config, resolve_config
from fourdvar.app.plan import Plan
from fourdvar.app.results import recompute_cost
from fourdvar.app.run import execute

REFERENCE = Path(__file__).parent / "data" / "one_cycle_reference.npz"
CONFIGS = sorted((Path(__file__).parent.parent / "configs").rglob("*.yaml"))

BASE = {
    "title": "one cycle", "seed": 4, "model": {"type": "lorenz96", "n_state": 12, "forcing": 8.0, "dt": 0.05},
    "truth": {"spinup_steps": 200},
    "observations": {"every": 2, "operator": {"type": "subset", "indices": "all"}, "error_std": 1.0},
    "background": {"state": {"error_std": 0.7}}, "window": {"steps": 8, "cycles": 3},
    "assimilation": {"outer_loops": 3, "inner": {"method": "lanczos", "max_iterations": 30}},
    "output": {"checkpoint": False},
}
PARAMS = {  # the forcing learned with P propagated, an adaptive B, the cost check, overlapping windows
    "model": {"type": "lorenz96", "n_state": 12, "forcing": 7.0, "dt": 0.05, "estimate_forcing": True},
    "truth": {"spinup_steps": 200, "model": {"type": "lorenz96", "n_state": 12, "forcing": 8.0, "dt": 0.05}},
    "background": {"state": {"error_std": 0.7, "adaptive": True, "adaptive_weight": 0.5},
                   "params": {"error_std": 1.0, "update": "posterior", "noise_std": 0.05}},
    "window": {"steps": 8, "shift": 4, "cycles": 3},
    "assimilation": {"control": ["state", "params"], "outer_loops": 3, "max_cost_per_obs": 2.0,
                     "inner": {"method": "lanczos", "max_iterations": 30}},
}
WEAK = {  # weak constraint, two sub-windows per window
    "truth": {"spinup_steps": 200, "model_error_std": 0.1, "model_error_every": 4},
    "model_error": {"every": 4, "error_std": 0.1},
    "assimilation": {"control": ["state", "model_error"], "outer_loops": 3, "inner": {"method": "cg", "max_iterations": 40}},
}
STAGED = {  # quasi-static stages, P on a schedule
    "model": PARAMS["model"], "truth": PARAMS["truth"],
    "background": {"state": {"error_std": 0.7}, "params": {"error_std": 1.0, "decay": 0.8}},
    "window": {"steps": 12, "cycles": 3},
    "assimilation": {"control": ["state", "params"], "outer_loops": 3, "quasi_static_steps": 5,
                     "inner": {"method": "lanczos", "max_iterations": 30}},
}
REFERENCE_RUNS = {"params": PARAMS, "weak": WEAK, "staged": STAGED}
REFERENCE_VARIABLES = ("analysis", "params_analysis", "J_final", "model_error", "background_std", "params_std")
ENSEMBLE = {"members": 3, "hybrid_weight": 0.5, "localization": 2.0, "inflation": 1.1}


def config(*changes: dict) -> dict:
    merged = copy.deepcopy(BASE)
    for change in changes:
        merged.update(copy.deepcopy(change))
    return merged


def reference_numbers(name: str) -> dict:
    dataset = execute(Plan.from_config(resolve_config(config(REFERENCE_RUNS[name]), name=name)))
    return {f"{name}_{key}": dataset[key].values for key in REFERENCE_VARIABLES if key in dataset}


@pytest.mark.parametrize("name", sorted(REFERENCE_RUNS))
def test_without_members_the_loop_gives_the_numbers_of_the_single_run_loop_bit_for_bit(name):
    stored = np.load(REFERENCE)
    numbers = reference_numbers(name)
    assert sorted(numbers) == sorted(key for key in stored.files if key.startswith(f"{name}_"))
    for key, values in numbers.items():
        np.testing.assert_array_equal(values, stored[key], err_msg=key)


# --- ensembles through the command line, interrupted and resumed -------------------------------------


class StopAfter:
    """A progress report that interrupts the run after window ``windows`` (as Ctrl-C would)."""

    windows = 1

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, outcome, recorder):
        if outcome.cycle + 1 == self.windows:
            raise KeyboardInterrupt


def run_and_resume(tmp_path, monkeypatch, experiment: dict, stop_after: int) -> tuple[xr.Dataset, xr.Dataset]:
    """The result of an uninterrupted run (members on threads) and of the same run interrupted
    after ``stop_after`` windows and resumed from its checkpoint (members serially)."""
    path, output = tmp_path / "experiment.yaml", tmp_path / "result.nc"
    path.write_text(yaml.safe_dump({**experiment, "output": {"checkpoint": True}}))
    command = ["run", str(path), "-o", str(output), "-q"]
    assert cli.main([*command, "--executor", "threads", "--workers", "2"]) == cli.EXIT_OK
    whole = xr.load_dataset(output)
    output.unlink()
    StopAfter.windows = stop_after
    with monkeypatch.context() as patch:
        patch.setattr(cli, "Progress", StopAfter)
        assert cli.main([*command, "--executor", "serial"]) == cli.EXIT_INTERRUPTED
    assert not output.exists() and len(list(output.with_suffix(".checkpoint").glob("cycle_*.nc"))) == stop_after
    assert cli.main([*command, "--executor", "serial", "--resume"]) == cli.EXIT_OK
    return whole, xr.load_dataset(output)


def assert_cost_recomputed(dataset: xr.Dataset) -> None:
    """The result file alone gives each window's stored J (its B the hybrid of the members' backgrounds)."""
    for c in range(dataset.sizes["cycle"]):
        assert recompute_cost(dataset, c).J == pytest.approx(float(dataset["J_final"].values[c]), rel=1e-10)


def assert_identical(a: xr.Dataset, b: xr.Dataset) -> None:
    assert set(a.variables) == set(b.variables)
    for name in a.variables:
        assert np.array_equal(a[name].values, b[name].values, equal_nan=a[name].dtype.kind == "f"), name
    strip = lambda attrs: {k: v for k, v in attrs.items() if k not in ("created", "run_seconds")}  # noqa: E731
    assert strip(a.attrs) == strip(b.attrs)


def test_an_ensemble_estimating_state_and_parameters_runs_and_resumes_bit_for_bit(tmp_path, monkeypatch):
    whole, resumed = run_and_resume(tmp_path, monkeypatch, config(PARAMS, {"ensemble": ENSEMBLE}), stop_after=1)
    assert_identical(whole, resumed)
    assert_cost_recomputed(whole)
    assert whole.sizes["member"] == 3 and np.all(whole["spread_background"].values > 0)
    forcing = whole["params_analysis"].values[:, 0]
    assert abs(forcing[-1] - 8.0) < abs(7.0 - 8.0) - 0.2  # the control learns the forcing (truth 8, first guess 7)
    assert np.array_equal(whole["params_background"].values[1:], whole["params_analysis"].values[:-1])


def test_an_ensemble_with_model_error_in_quasi_static_stages_runs_and_resumes_bit_for_bit(tmp_path, monkeypatch):
    staged_weak = {**WEAK, "assimilation": {**WEAK["assimilation"], "quasi_static_steps": 3}}
    whole, resumed = run_and_resume(tmp_path, monkeypatch, config(staged_weak, {"ensemble": ENSEMBLE}), stop_after=2)
    assert_identical(whole, resumed)
    assert_cost_recomputed(whole)
    assert whole["model_error"].shape[1:] == (2, 12) and np.abs(whole["model_error"].values).max() > 1e-3


# --- the engine: members' parameters, weak-constraint stages, solver options, executors --------------


def l96_windows(n=12, steps=6, cycles=2, forcing=8.0, seed=0):
    from models import Lorenz96
    from observations import Identity, synthetic_observations

    rng = np.random.default_rng(seed)
    truth_model, model = Lorenz96(n, forcing=forcing), Lorenz96(n, forcing=7.0, estimate_forcing=True)
    x_true = truth_model.forecast(forcing + rng.standard_normal(n), np.empty(0), 300)[-1]
    truth = truth_model.forecast(x_true, np.empty(0), steps * cycles)
    obs = synthetic_observations(truth, list(range(1, steps * cycles, 2)), Identity(n_state=n), 1.0, rng)
    windows = [obs.window(c * steps, steps, include_end=False) for c in range(cycles)]
    return model, windows, x_true + 0.5 * rng.standard_normal(n)


def test_each_member_cycles_its_own_parameters_and_the_control_its_own():
    from fourdvar.covariances import Diagonal
    from fourdvar.eda import eda_cycle

    model, windows, xb = l96_windows(cycles=3)
    run = list(eda_cycle(model, windows, xb, Diagonal(0.5, size=12), np.array([7.0]), Diagonal(1.0, size=1), n_members=3,
                         weight=0.5, localization=2.0, seed=2, control="both", n_steps=6, outer_loops=2, max_iterations=30))
    for previous, current in zip(run, run[1:]):
        assert np.array_equal(current.control.pb, previous.control.p)
        for before, now in zip(previous.members, current.members):
            assert np.array_equal(now.pb, before.p)
    first_draws = np.array([m.pb[0] for m in run[0].members])
    assert np.all(first_draws != 7.0) and np.std(first_draws) > 0.3  # pb + P^1/2 w', P = 1
    assert np.std([m.p[0] for m in run[-1].members]) > 0  # the members' perturbed observations keep them apart


def test_quasi_static_stages_in_weak_constraint_reach_the_minimum_of_the_direct_solve():
    """Stages of 3 steps on a window of 8 with a forcing every 4 steps: the stages estimate 1, 2,
    then 2 forcings (the last partly inside the stage), and end at the minimum of the whole
    window's weak-constraint cost that the direct solve finds."""
    from fourdvar import FourDVar
    from fourdvar.covariances import Diagonal
    from fourdvar.quasistatic import solve_quasi_static

    model, windows, xb = l96_windows(steps=8, cycles=1, forcing=7.0)
    B, Q, slots = Diagonal(0.5, size=12), Diagonal(0.1, size=12), windows[0]
    options = dict(outer_loops=20, tolerance=1e-12, max_iterations=60, gradient_reduction=1e-8)
    direct = FourDVar(model, slots, xb=xb, B=B, pb=np.array([7.0]), control=["state", "model_error"], n_steps=8, Q=Q,
                      model_error_every=4).solve(**options)
    staged = solve_quasi_static(model, slots, xb, B, np.array([7.0]), None, ["state", "model_error"], 8, 3, Q=Q,
                                model_error_every=4, **options)
    assert [length for length, *_ in staged.stages] == [3, 6, 8]
    assert staged.model_error.shape == (2, 12) and np.abs(staged.model_error).max() > 1e-3
    assert staged.final.J == pytest.approx(direct.final.J, rel=1e-9)
    np.testing.assert_allclose(staged.x0, direct.x0, rtol=0, atol=1e-6)
    np.testing.assert_allclose(staged.model_error, direct.model_error, rtol=0, atol=1e-6)
    one_forcing = FourDVar(model, slots, xb=xb, B=B, pb=np.array([7.0]), control=["state", "model_error"], n_steps=8, Q=Q).solve(**options)
    assert abs(one_forcing.final.J - direct.final.J) > 1e-3 * direct.final.J  # the sub-windows matter: a negative control


def test_solver_options_as_one_object_or_as_keywords_are_the_same_solve():
    from fourdvar import FourDVar
    from fourdvar.covariances import Diagonal
    from fourdvar.options import SolverOptions

    model, windows, xb = l96_windows(cycles=1)
    problem = lambda: FourDVar(model, windows[0], xb=xb, B=Diagonal(0.5, size=12), pb=np.array([7.0]), n_steps=6)  # noqa: E731
    by_keywords = problem().solve(outer_loops=2, max_iterations=7)
    by_object = problem().solve(options=SolverOptions(outer_loops=2, max_iterations=7))
    assert np.array_equal(by_keywords.x0, by_object.x0) and by_keywords.final.J == by_object.final.J
    assert not np.array_equal(problem().solve(outer_loops=2, max_iterations=3).x0, by_object.x0)  # the options reach the solve
    with pytest.raises(TypeError, match="outer_loop"):
        problem().solve(outer_loop=2)
    import pickle

    from fourdvar.options import AS_BUILT
    assert pickle.loads(pickle.dumps(SolverOptions())).qc is AS_BUILT  # a member on another process keeps the problem's QC


@pytest.mark.parametrize("kind", ["threads"])
def test_every_executor_runs_the_members_of_a_window_as_the_serial_one(kind):
    from fourdvar.app.cluster import Executor
    from fourdvar.covariances import Diagonal
    from fourdvar.eda import eda_cycle

    model, windows, xb = l96_windows(cycles=2)

    def run(executor):
        with executor:
            return list(eda_cycle(model, windows, xb, Diagonal(0.5, size=12), np.array([7.0]), None, n_members=2, weight=0.5,
                                  localization=2.0, n_steps=6, map_members=executor.map, outer_loops=2, max_iterations=20))

    serial, other = run(Executor("serial")), run(Executor(kind, workers=2))
    for a, b in zip(serial, other, strict=True):
        for x, y in zip([a.control, *a.members], [b.control, *b.members], strict=True):
            assert np.array_equal(x.analysis_trajectory, y.analysis_trajectory)


def test_a_sweep_on_threads_equals_the_serial_sweep_bit_for_bit(tmp_path):
    import shutil

    from fourdvar.app.cluster import Executor
    from fourdvar.app.sweep import Sweep, run_sweep
    from test_cluster import assert_same_result

    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**config({"window": {"steps": 8, "cycles": 2}}), "sweep": {"seed": [1, 2]}}))
    sweep = Sweep.from_file(path, output=tmp_path / "out")
    threaded, _ = run_sweep(sweep, executor=Executor("threads", workers=2))
    shutil.move(tmp_path / "out", tmp_path / "threads")
    serial, _ = run_sweep(sweep, executor=Executor("serial"))
    assert all(outcome.ok for outcome in [*threaded, *serial])
    for member in sweep.members:
        assert_same_result(member.output, tmp_path / "threads" / member.output.name)
    with pytest.raises(AssertionError):  # negative control: the two seeds differ
        assert_same_result(sweep.members[0].output, sweep.members[1].output)


def test_a_scheduler_for_another_executor_is_refused_before_any_computation(tmp_path, capsys):
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(config({"ensemble": ENSEMBLE})))
    status = cli.main(["run", str(path), "-o", str(tmp_path / "r.nc"), "--executor", "threads", "--scheduler", "tcp://127.0.0.1:9"])
    error = capsys.readouterr().err.strip()
    assert status == cli.EXIT_BAD_INPUT and error.count("\n") == 0 and "--scheduler" in error and "--executor dask" in error
    assert list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.stem)
def test_every_shipped_configuration_resolves(path):
    assert load_config(path)["title"]


if __name__ == "__main__":  # the stored reference, from the single-run loop on the tree first on PYTHONPATH
    import fourdvar

    print(f"writing {REFERENCE} from {fourdvar.__file__}", file=sys.stderr)
    np.savez_compressed(REFERENCE, **{k: v for name in REFERENCE_RUNS for k, v in reference_numbers(name).items()})
