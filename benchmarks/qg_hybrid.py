"""The hybrid QG + ConvNet experiment (``configs/qg_hybrid.yaml``) on several seeds, scored from its result files.

Each seed is one ``fourdvar run`` of the config (a child process, one at a time): the
online tendency hybrid and, as its comparison runs, the physics model alone, the perfect
(truth) model, the network fitted offline to the true missing tendency and kept fixed,
and the resolvent hybrid learned online.  The score of each is its analysis RMSE
averaged over the last half of the windows (``rmse_analysis*`` of the result file), and
the share of the physics-to-perfect gap it closes, ``(physics - run) / (physics - perfect)``.
The run's CPU time (the child's) and the load average around it are recorded: the
machine may be shared.  ``--spinup`` runs each seed's truth for twice the config's
spin-up (the same model and initial std, its own random draw) and checks that the
spin-up ends on the plateau of the upper-layer PV RMS (:func:`spinup_plateau`).

    nice python benchmarks/qg_hybrid.py [--seeds 1 2 3] [--output DIR] [--spinup] [--no-record]

With ``--output DIR`` a seed whose result file ``DIR/qg_hybrid_seedS.nc`` is already
there is scored without running again.  The table goes to the "QG hybrid: learned
missing drag" section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import xarray as xr

HERE = os.path.dirname(os.path.abspath(__file__))
# run as a script, this folder leads sys.path, and its models.py would shadow the models package
sys.path[:] = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != HERE]

from fourdvar.app.config import load_config
from fourdvar.app.results import config_of
from fourdvar.registry import build_model

_spec = importlib.util.spec_from_file_location("results", os.path.join(HERE, "results.py"))
_results = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_results)
record = _results.record

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "qg_hybrid.yaml"
SECTION = "QG hybrid: learned missing drag"
#: the columns of the table: the result file's suffix of ``rmse_analysis`` for each run
RUNS = {"physics": "_physics", "perfect": "_perfect", "online tendency": "", "online resolvent": "_resolvent", "offline": "_offline"}
GAP_TARGET, MINUTES_TARGET = 0.70, 15.0


def run_seed(seed: int, output: Path, config: Path = CONFIG) -> dict:
    """``fourdvar run`` of ``config`` for ``seed`` into ``output``; its wall and CPU minutes and the load around it."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg")
    load_before, cpu_before, started = os.getloadavg()[0], resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run([sys.executable, "-m", "fourdvar", "run", str(config), "--seed", str(seed), "--output", str(output),
                    "--overwrite", "--quiet"], cwd=output.parent, env=env, check=True, stdout=subprocess.DEVNULL)
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    timing = {"wall_minutes": (time.perf_counter() - started) / 60, "cpu_minutes": cpu / 60,
              "load_before": load_before, "load_after": os.getloadavg()[0]}
    output.with_suffix(".json").write_text(json.dumps(timing))
    return timing


def run_or_reuse(seed: int, output: Path, config: Path = CONFIG) -> tuple[Path, dict]:
    """``output`` and its timing: the result file kept from an earlier call when its timing is beside it, else :func:`run_seed`."""
    if output.exists() and output.with_suffix(".json").exists():
        return output, json.loads(output.with_suffix(".json").read_text())
    return output, run_seed(seed, output, config)


def scores(output: Path, runs: dict[str, str] = RUNS) -> dict[str, float]:
    """Analysis RMSE over the last half of the windows of each run of one result file."""
    with xr.open_dataset(output) as ds:
        half = slice(ds.sizes["cycle"] // 2, None)
        return {name: float(ds[f"rmse_analysis{suffix}"].values[half].mean()) for name, suffix in runs.items()}


def gap_closed(score: dict[str, float], name: str) -> float:
    return (score["physics"] - score[name]) / (score["physics"] - score["perfect"])


def spinup_levels(seed: int, every: int = 500) -> str:
    """The truth's PV RMS of each layer every ``every`` steps of its spin-up (the config's model, length and initial std)."""
    truth = load_config(CONFIG)["truth"]
    model = build_model(truth["model"])
    x = truth["initial_std"] * np.random.default_rng(seed).standard_normal(model.n_state)
    p = model.init_params(np.random.default_rng(seed))
    levels = []
    for step in range(1, truth["spinup_steps"] + 1):
        x = model.step(x, p)
        if step % every == 0:
            q1, q2 = x.reshape(2, -1).std(axis=1)
            levels.append(f"{step}: {q1:.2e} / {q2:.2e}")
    return f"seed {seed}, PV RMS upper / lower (s^-1) — " + "; ".join(levels)


def spinup_plateau(seed: int, block: int = 1000) -> str:
    """Whether the truth's spin-up ends on its statistical plateau.

    The truth runs twice the config's spin-up; its upper-layer PV RMS is averaged over
    blocks of ``block`` steps.  The blocks after the spin-up give the plateau (mean and
    std of the block means).  The PV RMS reaches the plateau at the end of the first
    block whose mean is within two of those stds of the plateau's mean; the spin-up
    has settled when it lasts at least twice that long.
    """
    truth = load_config(CONFIG)["truth"]
    model = build_model(truth["model"])
    x = truth["initial_std"] * np.random.default_rng(seed).standard_normal(model.n_state)
    p = model.init_params(np.random.default_rng(seed))
    n_blocks = 2 * truth["spinup_steps"] // block
    levels = np.zeros(n_blocks)
    for step in range(n_blocks * block):
        x = model.step(x, p)
        levels[step // block] += x.reshape(2, -1)[0].std() / block
    plateau = levels[n_blocks // 2:]
    reached = block * (1 + int(np.argmax(np.abs(levels - plateau.mean()) <= 2 * plateau.std())))
    settled = 2 * reached <= truth["spinup_steps"]
    return (f"seed {seed}, upper-layer PV RMS (s^-1) per {block} steps: " + " ".join(f"{v:.2e}" for v in levels)
            + f"; plateau after the spin-up {plateau.mean():.2e} +- {plateau.std():.1e}, reached at step {reached}: "
            + (f"settled (spin-up {truth['spinup_steps']} >= 2 x {reached})" if settled else f"NOT settled (spin-up {truth['spinup_steps']} < 2 x {reached})"))


def perfect_trend(output: Path) -> float:
    """The perfect model's analysis RMSE over the last half of the windows over that of the first half (window 0 left
    out, its background is the initial draw): near 1 when the assimilation is in a steady regime."""
    with xr.open_dataset(output) as ds:
        rmse = ds["rmse_analysis_perfect"].values[1:]
        return float(rmse[len(rmse) // 2:].mean() / rmse[: len(rmse) // 2].mean())


def learned_errors(output: Path, max_iterations: int = 200) -> dict[str, float]:
    """The online tendency network against the true missing tendency and against an offline fit of the same network.

    On the result file's independent truth states (``correction_state``, ``correction_truth``,
    ``correction_learned``): the RMS error of the online network's last weights in the lower
    layer and its (spurious) upper-layer output, both relative to the missing term's RMS in the
    lower layer.  The offline fit is redone here on the first half of those states (from the run's
    initial weights, as the ``offline`` run fits its own stretch of truth) and scored on the
    second half; ``weights`` is ``|p_online - p_offline| / |p_offline|``.

    The figures repeat to the last digit on one commit (no random draw here; BLAS threads do not
    change them).  The fit stops at ``max_iterations`` in a weight space with many equivalent
    minima, so a change of the ConvNet's summation order moves its weights (``weights``) by a
    few %, and the tendency errors in their last digit.  With a zero-started output layer and a
    zero upper-layer target, the fit never changes the upper layer's output weights: its upper
    output is zero exactly.
    """
    from fourdvar.app.fitting import fit_tendency

    with xr.open_dataset(output) as ds:
        states, missing, learned = (ds[name].values for name in ("correction_state", "correction_truth", "correction_learned"))
        model = build_model(config_of(ds)["model"])
        n_physics = model.n_params - model.correction.n_params
        initial, online = ds["params_background"].values[0, n_physics:], ds["params_analysis"].values[-1, n_physics:]
    half = len(states) // 2
    offline, _ = fit_tendency(model.correction.tendency, states[:half], missing[:half], initial, max_iterations)
    fitted = np.array([model.correction.tendency.evaluate(x, offline) for x in states[half:]])

    def layers(f):
        return f.reshape(len(f), 2, -1)

    scale = np.sqrt(np.mean(layers(missing)[:, 1] ** 2))
    return {"online lower": float(np.sqrt(np.mean((layers(learned - missing)[:, 1]) ** 2)) / scale),
            "online upper": float(np.sqrt(np.mean(layers(learned)[:, 0] ** 2)) / scale),
            "offline lower": float(np.sqrt(np.mean((layers(fitted - missing[half:])[:, 1]) ** 2)) / scale),
            "offline upper": float(np.sqrt(np.mean(layers(fitted)[:, 0] ** 2)) / scale),
            "weights": float(np.linalg.norm(online - offline) / np.linalg.norm(offline))}


def learning_table(errors: dict[int, dict[str, float]]) -> str:
    """The markdown table of :func:`learned_errors` of each seed."""
    lines = ["| seed | online: lower-layer error | online: upper-layer output | offline: lower-layer error | offline: upper-layer output | weights online - offline |",
             "|---|---|---|---|---|---|"]
    for seed, e in errors.items():
        lines.append(f"| {seed} | {e['online lower']:.2f} | {e['online upper']:.2f} | {e['offline lower']:.2f} | {e['offline upper']:.2f} | {e['weights']:.2f} |")
    return "\n".join(lines)


def table(rows: dict[int, tuple[dict, dict]], trends: dict[int, float] | None = None) -> tuple[str, list[str]]:
    """The markdown table of ``rows`` (seed: scores, timing) and the targets missed; ``trends``: :func:`perfect_trend` of each seed."""
    trends = trends or {}
    lines = ["| seed | physics | perfect | online tendency | online resolvent | offline | % gap closed: tendency / resolvent / offline | perfect: 2nd / 1st half | CPU min (wall, load) |",
             "|---|---|---|---|---|---|---|---|---|"]
    failures = []
    for seed, (score, timing) in rows.items():
        closed = {name: gap_closed(score, name) for name in ("online tendency", "online resolvent", "offline")}
        cells = " | ".join(f"{score[name]:.3e}" for name in RUNS)
        percent = " / ".join(f"{100 * value:.0f}" for value in closed.values())
        trend = f"{trends[seed]:.2f}" if seed in trends else "-"
        lines.append(f"| {seed} | {cells} | {percent} | {trend} | {timing['cpu_minutes']:.1f} ({timing['wall_minutes']:.1f}, "
                     f"{timing['load_before']:.1f}-{timing['load_after']:.1f}) |")
        if closed["online tendency"] < GAP_TARGET:
            failures.append(f"seed {seed}: online tendency closes {100 * closed['online tendency']:.0f} % of the gap < {100 * GAP_TARGET:.0f} %")
        if score["online tendency"] > score["offline"]:
            failures.append(f"seed {seed}: online tendency {score['online tendency']:.3e} worse than offline {score['offline']:.3e}")
        if timing["cpu_minutes"] > MINUTES_TARGET:
            failures.append(f"seed {seed}: {timing['cpu_minutes']:.1f} CPU minutes > {MINUTES_TARGET:.0f}")
    return "\n".join(lines), failures


def seeds_parser(doc: str, spinup_help: str) -> argparse.ArgumentParser:
    """The options of a benchmark that runs its config on several seeds: ``--seeds``, ``--output``, ``--spinup``, ``--no-record``."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--output", default=None, help="directory for the result files, kept (default: a temporary one)")
    parser.add_argument("--spinup", action="store_true", help=spinup_help)
    parser.add_argument("--no-record", action="store_true", help="print only; leave RESULTS.md as it is")
    return parser


def seed_results(seeds, output: str | None, stem: str, config: Path = CONFIG, runs: dict[str, str] = RUNS):
    """``(seed, result file, scores, timing)`` of each seed, run or reused (:func:`run_or_reuse`) in the directory
    ``output`` (kept) or a temporary one (gone once the loop ends); each seed's scores printed as it comes."""
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(output or scratch).resolve()
        directory.mkdir(parents=True, exist_ok=True)
        for seed in seeds:
            result, timing = run_or_reuse(seed, directory / f"{stem}_seed{seed}.nc", config)
            score = scores(result, runs)
            print(f"seed {seed}: " + ", ".join(f"{name} {value:.3e}" for name, value in score.items()), flush=True)
            yield seed, result, score, timing


def window_of(result: Path) -> dict:
    """The ``window`` section of the configuration stored in a result file."""
    with xr.open_dataset(result) as ds:
        return config_of(ds)["window"]


def main(argv=None) -> int:
    args = seeds_parser(__doc__, "check first that each seed's truth spin-up ends on its plateau (spinup_plateau)").parse_args(argv)
    spinups = [spinup_plateau(seed) for seed in args.seeds] if args.spinup else []
    for line in spinups:
        print(line, flush=True)
    rows, trends, errors, window = {}, {}, {}, None
    for seed, output, score, timing in seed_results(args.seeds, args.output, "qg_hybrid"):
        rows[seed], trends[seed], errors[seed] = (score, timing), perfect_trend(output), learned_errors(output)
        window = window or window_of(output)
    text, failures = table(rows, trends)
    verdict = "targets met" if not failures else "targets missed: " + "; ".join(failures)
    intro = (f"`configs/qg_hybrid.yaml` ({window['cycles']} windows of {window['steps']} steps): analysis RMSE of the PV "
             "(s^-1) averaged over the last half of the windows; % of the physics-to-perfect gap closed; the perfect model's "
             "analysis RMSE over the second half of the windows / over the first (window 0 left out; 1: steady); "
             "CPU minutes of the whole run (all five runs), wall minutes and the 1-minute load average before-after.")
    learning = ("What the online tendency network learned (its last weights), on independent truth states, RMS relative to "
                "the missing term's in the lower layer: its error there, its output in the upper layer (where nothing is "
                "missing), the same for an offline fit of the same network (on half of those states, scored on the other "
                "half), and the distance of the online weights from the offline ones, relative to the offline ones' norm.\n\n"
                + learning_table(errors))
    body = "\n\n".join([intro, text, verdict, learning] + (["Truth spin-up:\n\n" + "\n".join(f"- {line}" for line in spinups)] if spinups else []))
    print(f"{text}\n{verdict}\n{learning_table(errors)}", flush=True)
    if not args.no_record:
        record(SECTION, body)
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
