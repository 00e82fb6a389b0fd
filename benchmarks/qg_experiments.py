"""The two-layer QG twin experiments, run from their configs and scored from the result files.

``configs/qg_state.yaml``: cycled 4D-Var against 3D-Var on the same truth and
observations (the same config with windows of one observation interval, so each
window assimilates the observations of its first step alone, cycled, with its own
B std, the best of ``THREE_D_VAR_STDS`` on the first seed) and against the free
run (the first background forecast through the whole experiment).  The score is
the streamfunction RMSE of the analysis trajectory (each window's analysis and its
forecast to the next window), over the steps of the second half of the experiment.

``configs/qg_params.yaml``: the relative error of the analysed bottom drag ``rek``
of the last window, from a first guess 50 % off.

Each run is ``fourdvar run`` (in this process), its wall time measured.  Results go
to ``benchmarks/RESULTS.md`` (sections "QG twin experiments: state" and "...: bottom drag").
Run: ``taskset -c 1 nice python benchmarks/qg_experiments.py [state] [params] [--seeds 1 2 3] [--output DIR]``
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import xarray as xr
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
# run as a script, this folder leads sys.path, and its models.py would shadow the models package
sys.path[:] = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != HERE]

from fourdvar.app import cli
from fourdvar.app.config import load_raw
from fourdvar.app.results import config_of
from fourdvar.registry import build_model
from fourdvar.window import forecast

_spec = importlib.util.spec_from_file_location("results", os.path.join(HERE, "results.py"))
_results = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_results)
record = _results.record

ROOT = Path(__file__).resolve().parent.parent
STATE, PARAMS = ROOT / "configs" / "qg_state.yaml", ROOT / "configs" / "qg_params.yaml"
THREE_D_VAR_STDS = (2.5e-7, 5.0e-7, 1.0e-6)  # background.state.error_std tried for 3D-Var


def _set(raw: dict, dotted: str, value) -> None:
    *path, last = dotted.split(".")
    for key in path:
        raw = raw.setdefault(key, {})
    raw[last] = value


def run(config: Path, seed: int, output: Path, **overrides) -> tuple[xr.Dataset, str]:
    """``fourdvar run config --seed seed`` with ``overrides`` (dotted keys); the result and its
    run time, wall / CPU seconds (the CPU time is this process's: the machine is shared)."""
    raw = copy.deepcopy(load_raw(config))
    for dotted, value in overrides.items():
        _set(raw, dotted.replace("__", "."), value)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / config.name
        path.write_text(yaml.safe_dump(raw))
        start, cpu = time.perf_counter(), time.process_time()
        messages = io.StringIO()
        with contextlib.redirect_stderr(messages):
            status = cli.main(["run", str(path), "--output", str(output), "--seed", str(seed), "--quiet"])
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    if status != 0:
        raise SystemExit(f"fourdvar run {config.name} (seed {seed}, {overrides}) failed with status {status}: {messages.getvalue().strip()}")
    with xr.open_dataset(output) as ds:
        return ds.load(), (wall, cpu)


def _model(ds: xr.Dataset):
    spec = {key: value for key, value in config_of(ds)["model"].items() if key not in ("params", "params_from")}
    return build_model(spec)


def _streamfunction(model, states: np.ndarray) -> np.ndarray:
    return np.array([model.streamfunction(x) for x in states])


def streamfunction_scores(ds: xr.Dataset) -> dict[str, float]:
    """Streamfunction RMSE over the steps of the second half: the analysis trajectory and the free run."""
    model = _model(ds)
    L, n = int(ds.attrs["window_steps"]), ds.sizes["cycle"]
    analysis = ds["analysis"].values[:, :L].reshape(n * L, -1)  # each window's steps 0 .. L-1: every step once
    truth = ds["truth"].values[:, :L].reshape(n * L, -1)
    half = slice(n * L // 2, n * L)
    p = ds["params_background"].values[0] if "params_background" in ds else np.zeros(model.n_params)
    free = forecast(model, ds["background"].values[0, 0], p, n * L - 1)
    psi_truth = _streamfunction(model, truth[half])

    def rmse(states):
        return float(np.sqrt(np.mean((_streamfunction(model, states) - psi_truth) ** 2)))

    return {"analysis": rmse(analysis[half]), "free run": rmse(free[half]), "truth std": float(psi_truth.std())}


def state_experiment(seeds, directory: Path) -> tuple[str, list[str]]:
    raw = load_raw(STATE)
    every, steps, cycles = raw["observations"]["every"], raw["window"]["steps"], raw["window"]["cycles"]
    three_d_var = {"window__steps": every, "window__cycles": cycles * steps // every}
    lines, failures = [], []
    scores = {}
    # 3D-Var's own B: the best std on the first seed
    trials = {}
    for std in THREE_D_VAR_STDS:
        ds, _ = run(STATE, seeds[0], directory / f"qg_3dvar_std{std:g}_seed{seeds[0]}.nc", **three_d_var,
                    background__state__error_std=std)
        trials[std] = streamfunction_scores(ds)["analysis"]
    best = min(trials, key=trials.get)
    lines.append("3D-Var B std tried on seed %d: %s; kept %g" % (seeds[0], ", ".join(f"{s:g}: {r:.1f}" for s, r in trials.items()), best))
    lines.append("")
    lines.append("| seed | 4D-Var run time, wall / CPU (s) | 4D-Var psi RMSE | 3D-Var psi RMSE | 4D-Var / 3D-Var | free run psi RMSE | truth psi std |")
    lines.append("|---|---|---|---|---|---|---|")
    for seed in seeds:
        ds4, seconds = run(STATE, seed, directory / f"qg_state_seed{seed}.nc")
        ds3, _ = run(STATE, seed, directory / f"qg_3dvar_seed{seed}.nc", **three_d_var, background__state__error_std=best)
        s4, s3 = streamfunction_scores(ds4), streamfunction_scores(ds3)
        ratio = s4["analysis"] / s3["analysis"]
        scores[seed] = (seconds, s4, s3, ratio)
        lines.append(f"| {seed} | {seconds[0]:.0f} / {seconds[1]:.0f} | {s4['analysis']:.1f} | {s3['analysis']:.1f} | {ratio:.2f} | "
                     f"{s4['free run']:.0f} | {s4['truth std']:.0f} |")
        if min(seconds) > 300:
            failures.append(f"qg_state seed {seed}: {min(seconds):.0f} s > 300 s")
        if ratio > 0.7:
            failures.append(f"qg_state seed {seed}: 4D-Var / 3D-Var = {ratio:.2f} > 0.70")
        if max(s4["analysis"], s3["analysis"]) > 0.2 * s4["free run"]:
            failures.append(f"qg_state seed {seed}: an analysis RMSE above 0.2 x the free run's")
    return "\n".join(lines), failures


def params_experiment(seeds, directory: Path) -> tuple[str, list[str]]:
    raw = load_raw(PARAMS)
    true_rek = raw["truth"]["model"]["rek"]
    lines = ["| seed | run time, wall / CPU (s) | first guess rek | analysed rek, last window | its relative error | mean over the second half | its relative error |",
             "|---|---|---|---|---|---|---|"]
    failures = []
    for seed in seeds:
        ds, seconds = run(PARAMS, seed, directory / f"qg_params_seed{seed}.nc")
        rek = ds["params_analysis"].values[:, 0]
        first, last, mean = float(ds["params_background"].values[0, 0]), float(rek[-1]), float(rek[rek.size // 2 :].mean())
        error, mean_error = abs(last - true_rek) / true_rek, abs(mean - true_rek) / true_rek
        lines.append(f"| {seed} | {seconds[0]:.0f} / {seconds[1]:.0f} | {first:.4g} | {last:.4g} | {error:.3f} | {mean:.4g} | {mean_error:.3f} |")
        if error > 0.05:
            failures.append(f"qg_params seed {seed}: rek of the last window off by {100 * error:.1f} % > 5 %")
    return f"true rek = {true_rek:.4g} s^-1\n\n" + "\n".join(lines), failures


SECTIONS = {
    "state": ("QG twin experiments: state", state_experiment,
              "`configs/qg_state.yaml`: streamfunction RMSE (m^2 s^-1) of the analysis trajectory over the steps of the second "
              "half; 3D-Var is the same config with windows of one observation interval and its own B std."),
    "params": ("QG twin experiments: bottom drag", params_experiment,
               "`configs/qg_params.yaml`: the bottom drag rek from a first guess 50 % too large."),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("experiments", nargs="*", help="state and/or params (default: both)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--output", default=None, help="directory for the result files (default: a temporary one)")
    parser.add_argument("--no-record", action="store_true", help="print only; leave RESULTS.md as it is")
    args = parser.parse_args(argv)
    unknown = set(args.experiments) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown experiment {sorted(unknown)[0]!r}; choose from {', '.join(SECTIONS)}")
    failures = []
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(args.output or scratch)
        directory.mkdir(parents=True, exist_ok=True)
        for name in args.experiments or list(SECTIONS):
            section, experiment, intro = SECTIONS[name]
            table, missed = experiment(args.seeds, directory)
            verdict = "targets met" if not missed else "targets missed: " + "; ".join(missed)
            print(f"{table}\n{verdict}", flush=True)
            if not args.no_record:
                record(section, f"{intro}\n\n{table}\n\n{verdict}")
            failures += missed
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
