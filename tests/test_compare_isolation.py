"""A comparison run never changes the main run's numbers.

The main run and its comparison runs share the truth, the observations and the seed; each
comparison is its own plan (model, backgrounds, covariances) run after the main run. The
main run's result variables and headline numbers, the forecast skill among them, are
therefore the same bit for bit with or without ``compare:`` and whatever its order; a
different seed changes them (the negative control: the comparison below sees a change).
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
import yaml
from conftest import run_command

L96 = {"type": "lorenz96", "n_state": 20, "forcing": 8.0, "dt": 0.05}
#: a surrogate learned online, as configs/l96_surrogate.yaml on a small grid: state and weights
#: in the control, the weights' posterior P carried from window to window, adaptive B, skill
CONFIG = {
    "title": "learned surrogate beside its comparison runs",
    "seed": 1,
    "model": {"type": "local_mlp", "n_state": 20, "half_width": 2, "hidden": [6], "activation": "tanh", "dt": 0.05,
              "integrator": "rk4", "state_offset": 2.0, "state_scale": 4.0},
    "truth": {"model": L96, "spinup_steps": 100},
    "observations": {"every": 1, "operator": {"type": "identity"}, "error_std": 1.0},
    "background": {"state": {"error_std": 1.0, "adaptive": True, "adaptive_min_std": 0.3, "adaptive_weight": 0.3},
                   "params": {"error_std": 0.5, "update": "posterior", "noise_std": 0.008, "noise_decay": 0.99, "noise_floor": 0.001}},
    "window": {"steps": 5, "cycles": 3},
    "assimilation": {"control": ["state", "params"], "outer_loops": 2, "inner": {"method": "lanczos", "max_iterations": 8}},
    "diagnostics": {"forecast_skill": True, "forecast_starts": 4, "forecast_spacing": 5, "forecast_lyapunov_times": 1.0},
}
#: one comparison with another model, one with the same model and its own weights' covariances
COMPARE = [
    {"name": "perfect", "model": L96, "background": {"state": {"adaptive": False, "error_std": 0.5}}, "assimilation": {"control": ["state"]}},
    {"name": "wider", "background": {"params": {"error_std": 1.0, "noise_std": 0.02}}},
]
NAMES = [entry["name"] for entry in COMPARE]


def _run(directory, **changes) -> xr.Dataset:
    """``fourdvar run`` of :data:`CONFIG` with ``changes`` (top-level keys) in ``directory``: the result."""
    directory.mkdir()
    config = directory / "config.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, **changes}, sort_keys=False))
    output = directory / "result.nc"
    done = run_command("run", config, "--output", output, "--quiet", cwd=directory)
    assert done.returncode == 0, done.stderr
    with xr.open_dataset(output) as stored:
        return stored.load()


def _main_run(ds: xr.Dataset) -> dict:
    """The main run's variables (their dims, attributes and bytes) and headline numbers: everything
    of the result except what the comparison runs add (suffixed by their names, and the gap closed)."""
    own = {name: (variable.dims, variable.attrs, variable.dtype.str, variable.values.tobytes())
           for name, variable in ds.variables.items() if not name.endswith(tuple(f"_{run}" for run in NAMES))}
    own.update({key: value for key, value in ds.attrs.items()
                if key.startswith("headline_") and not key.endswith(tuple(f"_{run}" for run in NAMES))})
    return own


def _differing(a: dict, b: dict) -> list[str]:
    return sorted(key for key in a.keys() | b.keys() if key not in a or key not in b or not _equal(a[key], b[key]))


def _equal(x, y) -> bool:
    return type(x) is type(y) and (x == y or (isinstance(x, float) and np.isnan(x) and np.isnan(y)))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """The main run alone, with both comparisons in either order, and alone on another seed."""
    top = tmp_path_factory.mktemp("compare_isolation")
    return {
        "alone": _run(top / "alone"),
        "compared": _run(top / "compared", compare=COMPARE),
        "reversed": _run(top / "reversed", compare=COMPARE[::-1]),
        "seed 2": _run(top / "seed2", seed=2),
    }


def test_the_comparison_runs_ran(results):
    for key in ("compared", "reversed"):
        ds = results[key]
        for name in NAMES:
            assert ds[f"rmse_analysis_{name}"].sizes["cycle"] == CONFIG["window"]["cycles"]
            assert np.isfinite(ds.attrs[f"headline_skill_from_truth_{name}"])
    assert not any(name.endswith(f"_{run}") for name in results["alone"].variables for run in NAMES)
    # each comparison's numbers are its own, whatever the order
    for name in NAMES:
        np.testing.assert_array_equal(results["compared"][f"rmse_analysis_{name}"], results["reversed"][f"rmse_analysis_{name}"])


def test_the_main_run_is_the_same_bit_for_bit_with_comparison_runs_in_any_order(results):
    alone = _main_run(results["alone"])
    assert {"analysis", "params_analysis", "forecast_rmse_from_truth", "headline_skill_from_truth",
            "headline_skill_from_analyses", "headline_rmse_analysis_last_half"} <= alone.keys()
    assert _differing(alone, _main_run(results["compared"])) == []
    assert _differing(alone, _main_run(results["reversed"])) == []


def test_negative_control_another_seed_changes_the_main_run(results):
    changed = _differing(_main_run(results["alone"]), _main_run(results["seed 2"]))
    assert {"analysis", "params_analysis", "forecast_rmse_from_truth", "headline_skill_from_truth"} <= set(changed)
