"""The headline numbers of the shipped experiments, as ``fourdvar run`` prints them.

    python benchmarks/experiments.py [CONFIG ...] [--seed S]

Runs each configuration of ``configs/`` (default: the ones that take about a minute or
less; name others, e.g. ``l96_weak_hybrid``, to add them) through the real command line,
one after another, into a scratch directory, and records its headline numbers (the
``headline_*`` attributes of the result file) and wall time in the "Shipped experiments"
section of ``benchmarks/RESULTS.md``.  ``configs/README.md`` cites that section.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import xarray as xr

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("results", ROOT / "benchmarks" / "results.py")
results = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(results)

DEFAULT = ["l96_state", "l96_forcing", "l96_sparse_nonlinear", "l96_sakov2008", "l96_surrogate",
           "l96_surrogate_sparse", "l96_hybrid", "l96_two_scale", "l96_weak"]
def run(name: str, seed: int, work: Path) -> tuple[dict, float, int]:
    output = work / f"{name}.nc"
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fourdvar", "run", str(ROOT / "configs" / f"{name}.yaml"), "--seed", str(seed),
                    "--output", str(output), "--quiet"], cwd=work, env=env, check=True)
    seconds = time.perf_counter() - started
    with xr.open_dataset(output) as ds:
        headline = {key[len("headline_"):]: float(value) for key, value in ds.attrs.items() if key.startswith("headline_")}
        cycles = int(ds.attrs["completed_cycles"])
    return headline, seconds, cycles


def row(name: str, headline: dict, seconds: float, cycles: int) -> str:
    numbers = "; ".join(f"{key} {value:.4g}" for key, value in headline.items())
    return f"| `{name}.yaml` | {cycles} | {numbers} | {seconds:.0f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="*", default=DEFAULT, help="configuration names in configs/ (without .yaml)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    lines = [f"Seed {args.seed}; every headline number of the result file (`fourdvar run` prints them at the end); "
             "wall time of the whole run, comparison runs included, one run at a time.", "",
             "| configuration | windows | headline numbers | wall time (s) |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as work:
        for name in args.configs:
            headline, seconds, cycles = run(name, args.seed, Path(work))
            lines.append(row(name, headline, seconds, cycles))
            print(lines[-1], flush=True)
    command = "python benchmarks/experiments.py" + ("" if args.configs == DEFAULT else " " + " ".join(args.configs))
    results.record("Shipped experiments", "\n".join(lines), command=command + ("" if args.seed == 1 else f" --seed {args.seed}"))


if __name__ == "__main__":
    main()
