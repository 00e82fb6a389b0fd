"""The hybrid QG + ConvNet experiment against a coarse-grained truth (``configs/qg_coarse.yaml``) on several seeds.

Each seed is one ``fourdvar run`` of the config (a child process, one at a time): the
online tendency hybrid and, as its comparison runs, the physics model alone, the network
fitted offline to the eddy forcing and kept fixed, and the resolvent hybrid learned online.
There is no perfect model at the coarse resolution: the score of each run is its analysis
RMSE averaged over the last half of the windows (``rmse_analysis*`` of the result file) and
its improvement over the physics model, ``(physics - run) / physics``.  The run's CPU time
(the child's) and the load average around it are recorded: the machine may be shared.
``--spinup`` prints the fine truth's kinetic energy along its spin-up for each seed (the
config's model, spin-up length and initial std, its own random draw), to show that it settles.

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


def spinup_levels(seed: int, every: int = 500) -> str:
    """The fine truth's kinetic energy every ``every`` model steps of its spin-up (the config's model, length and initial std)."""
    truth = load_config(CONFIG)["truth"]
    model = build_model(truth["model"])
    x = truth["initial_std"] * np.random.default_rng(seed).standard_normal(model.n_state)
    levels = []
    for step in range(1, truth["spinup_steps"] + 1):
        for _ in range(truth["substeps"]):
            x = model.step(x, np.empty(0))
        if step % every == 0:
            levels.append(f"{step}: {kinetic_energy(model, x):.2e}")
    return f"seed {seed}, kinetic energy of the fine run (m^2 s^-2) — " + "; ".join(levels)


def table(rows: dict[int, tuple[dict, dict]]) -> tuple[str, list[str]]:
    lines = ["| seed | physics | online tendency | online resolvent | offline | % better than physics: tendency / resolvent / offline | CPU min (wall, load) |",
             "|---|---|---|---|---|---|---|"]
    failures = []
    for seed, (score, timing) in rows.items():
        better = [100 * (score["physics"] - score[name]) / score["physics"] for name in ("online tendency", "online resolvent", "offline")]
        cells = " | ".join(f"{score[name]:.3e}" for name in RUNS)
        lines.append(f"| {seed} | {cells} | {' / '.join(f'{value:.0f}' for value in better)} | {timing['cpu_minutes']:.1f} "
                     f"({timing['wall_minutes']:.1f}, {timing['load_before']:.1f}-{timing['load_after']:.1f}) |")
        if score["online tendency"] > score["offline"]:
            failures.append(f"seed {seed}: online tendency {score['online tendency']:.3e} worse than offline {score['offline']:.3e}")
        if timing["cpu_minutes"] > MINUTES_TARGET:
            failures.append(f"seed {seed}: {timing['cpu_minutes']:.1f} CPU minutes > {MINUTES_TARGET:.0f}")
    return "\n".join(lines), failures


def main(argv=None) -> int:
    args = qg_hybrid.seeds_parser(__doc__, "print the fine truth's spin-up energy of each seed first").parse_args(argv)
    spinups = []
    for seed in args.seeds if args.spinup else []:
        spinups.append(spinup_levels(seed))
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
