"""The hybrid QG + ConvNet experiment against a coarse-grained truth (``configs/qg_coarse.yaml``) on several seeds.

Each seed is one ``fourdvar run`` of the config (a child process, one at a time): the
online tendency hybrid and, as its comparison runs, the physics model alone, the network
fitted offline to the eddy forcing and kept fixed, and the resolvent hybrid learned online.
There is no perfect model at the coarse resolution: the score of each run is its analysis
RMSE averaged over the last half of the windows (``rmse_analysis*`` of the result file) and
its improvement over the physics model, ``(physics - run) / physics``.  The run's CPU time
(the child's) and the load average around it are recorded: the machine may be shared.
``--spinup`` runs each seed's fine truth for twice the config's spin-up (the config's model and
initial std, its own random draw) and checks that the spin-up ends on the plateau of its
kinetic energy (:func:`spinup_plateau`).

    nice python benchmarks/qg_coarse.py [--seeds 1 2 3] [--output DIR] [--spinup] [--no-record]

With ``--output DIR`` a seed whose result file ``DIR/qg_coarse_seedS.nc`` is already there
is scored without running again.  The table goes to the "QG hybrid: coarse-grained truth"
section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np

# loaded by path first: it takes this folder off sys.path (its models.py would shadow the models package)
# and loads results.py, whose record this script uses too
_spec = importlib.util.spec_from_file_location("qg_hybrid", os.path.join(os.path.dirname(os.path.abspath(__file__)), "qg_hybrid.py"))
qg_hybrid = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(qg_hybrid)
record = qg_hybrid.record

from fourdvar.app.config import load_config  # noqa: E402
from fourdvar.registry import build_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "qg_coarse.yaml"
SECTION = "QG hybrid: coarse-grained truth"
#: the columns of the table: the result file's suffix of ``rmse_analysis`` for each run
RUNS = {"physics": "_physics", "online tendency": "", "online resolvent": "_resolvent", "offline": "_offline"}
MINUTES_TARGET = 15.0


def kinetic_energy(model, x: np.ndarray) -> float:
    """``sum_n (H_n / H) mean(u_n^2 + v_n^2) / 2`` of a QG state (m^2 s^-2), ``H_2 = H_1 / delta``."""
    ph = model.spectrum.rfft2(model.streamfunction(x))
    u, v = model.spectrum.irfft2(-model.il * ph), model.spectrum.irfft2(model.ik * ph)
    layer = 0.5 * np.mean(u**2 + v**2, axis=(1, 2))
    return float((layer[0] * model.delta + layer[1]) / (1.0 + model.delta))


def plateau(levels: np.ndarray, spinup_blocks: int) -> tuple[float, float, int]:
    """``(mean, std, reached)`` of a quantity's block means ``levels``, of which the first ``spinup_blocks`` are the spin-up.

    The blocks after the spin-up give the plateau, the mean and std of their means; the quantity
    reaches it at the end of the first block whose mean is within two of those stds of the
    plateau's mean (``reached``, in blocks).  The rule of ``qg_hybrid.spinup_plateau``.
    """
    after = levels[spinup_blocks:]
    mean, std = float(after.mean()), float(after.std())
    return mean, std, 1 + int(np.argmax(np.abs(levels - mean) <= 2 * std))


def spinup_plateau(seed: int, block: int = 1000, every: int = 10) -> str:
    """Whether the fine truth's spin-up ends on the plateau of its kinetic energy.

    The fine truth (the config's model, initial std and substeps, its own random draw) runs
    twice the config's spin-up; its kinetic energy, every ``every`` model steps, is averaged
    over blocks of ``block`` model steps.  The spin-up has settled when it lasts at least
    twice as long as the energy takes to reach its plateau (:func:`plateau`).  The energy,
    held by the largest scales, is the slowest quantity of the run to settle.
    """
    truth = load_config(CONFIG)["truth"]
    model, spinup, substeps = build_model(truth["model"]), truth["spinup_steps"], truth["substeps"]
    x = truth["initial_std"] * np.random.default_rng(seed).standard_normal(model.n_state)
    n_blocks = 2 * spinup // block
    energy = np.zeros(n_blocks * block // every)
    for sample in range(energy.size):
        for _ in range(every * substeps):
            x = model.step(x, np.empty(0))
        energy[sample] = kinetic_energy(model, x)
    levels = energy.reshape(n_blocks, -1).mean(axis=1)
    mean, std, reached = plateau(levels, n_blocks // 2)
    reached *= block
    verdict = (f"settled (spin-up {spinup} >= 2 x {reached})" if 2 * reached <= spinup
               else f"NOT settled (spin-up {spinup} < 2 x {reached})")
    return (f"seed {seed}, kinetic energy of the fine run (m^2 s^-2) per {block} model steps: " + " ".join(f"{v:.2e}" for v in levels)
            + f"; plateau after the spin-up {mean:.2e} +- {std:.1e}, reached at step {reached}: {verdict}")


def table(rows: dict[int, tuple[dict, dict]]) -> tuple[str, list[str]]:
    lines = ["| seed | physics | online tendency | online resolvent | offline | % better than physics: tendency / resolvent / offline | CPU min (wall, load) |",
             "|---|---|---|---|---|---|---|"]
    failures = []
    for seed, (score, timing) in rows.items():
        better = [100 * (score["physics"] - score[name]) / score["physics"] for name in ("online tendency", "online resolvent", "offline")]
        cells = " | ".join(f"{score[name]:.3e}" for name in RUNS)
        lines.append(f"| {seed} | {cells} | {' / '.join(f'{value:.0f}' for value in better)} | {timing['cpu_minutes']:.1f} "
                     f"({timing['wall_minutes']:.1f}, {timing['load_before']:.1f}-{timing['load_after']:.1f}) |")
        if score["online tendency"] >= score["physics"]:
            failures.append(f"seed {seed}: online tendency {score['online tendency']:.3e} no better than physics {score['physics']:.3e}")
        if score["offline"] >= score["physics"]:
            failures.append(f"seed {seed}: the offline fit {score['offline']:.3e} is worse than physics {score['physics']:.3e}, "
                            "so it is no reference for the online one")
        elif score["online tendency"] > score["offline"]:
            failures.append(f"seed {seed}: online tendency {score['online tendency']:.3e} worse than offline {score['offline']:.3e}")
        if timing["cpu_minutes"] > MINUTES_TARGET:
            failures.append(f"seed {seed}: {timing['cpu_minutes']:.1f} CPU minutes > {MINUTES_TARGET:.0f}")
    return "\n".join(lines), failures


def main(argv=None) -> int:
    args = qg_hybrid.seeds_parser(__doc__, "check first that each seed's fine truth spin-up ends on the plateau of its kinetic energy (spinup_plateau)").parse_args(argv)
    spinups = []
    for seed in args.seeds if args.spinup else []:
        spinups.append(spinup_plateau(seed))
        print(spinups[-1], flush=True)
    rows, window = {}, None
    for seed, output, score, timing in qg_hybrid.seed_results(args.seeds, args.output, "qg_coarse", CONFIG, RUNS):
        rows[seed] = (score, timing)
        window = window or qg_hybrid.window_of(output)
    text, failures = table(rows)
    verdict = "targets met" if not failures else "targets missed: " + "; ".join(failures)
    intro = (f"`configs/qg_coarse.yaml` ({window['cycles']} windows of {window['steps']} steps; truth 128 x 128 coarse-grained "
             "to the 32 x 32 model): analysis RMSE of the PV (s^-1) averaged over the last half of the windows; its improvement "
             "over the physics model in %; CPU minutes of the whole run (all four runs and the fine truth), wall minutes and the "
             "1-minute load average before-after.")
    body = "\n\n".join([intro, text, verdict] + (["Truth spin-up:\n\n" + "\n".join(f"- {line}" for line in spinups)] if spinups else []))
    print(f"{text}\n{verdict}", flush=True)
    if not args.no_record:
        record(SECTION, body)
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
