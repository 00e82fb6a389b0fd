"""BLAS/OpenMP threads of the command line: ``fourdvar run`` on the shipped configurations.

The quick start, ``fourdvar run configs/l96_state.yaml``, runs in a fresh process
each time, three ways, interleaved and repeated (medians and their ratios, one run):

* ``default``: the command as a user types it, no thread variable set (the command
  line picks the thread count per problem size, :data:`fourdvar.app.cli.THREADED_STATE_SIZE`);
* ``pinned``: ``OPENBLAS_NUM_THREADS=OMP_NUM_THREADS=MKL_NUM_THREADS=1`` set by the user;
* ``library``: ``--threads 0``, the BLAS/OpenMP libraries' own count (one per core):
  what the command did before it chose.

Nothing is pinned to a core here: what is measured is threads contending for the
machine's cores with the other jobs that run on it (the case of a shared 2-core
machine).  ``--busy`` starts one more CPU-bound process for the duration, so there
is always a second job.  ``--configs NAME ...`` times one run of each named
shipped configuration with the default threads instead (the times the READMEs
quote), in a section of its own.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from results import record  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")
WAYS = {
    "default": ([], {}),
    "pinned": ([], {name: "1" for name in THREAD_VARIABLES}),
    "library": (["--threads", "0"], {}),
}


def run_seconds(config: Path, extra: list[str], variables: dict, directory: Path) -> float:
    """Wall time of one ``fourdvar run`` in a fresh process (imports included), as a user sees it."""
    environment = {name: value for name, value in os.environ.items() if name not in THREAD_VARIABLES}
    environment.update(variables, MPLBACKEND="Agg")
    output = directory / f"{config.stem}.nc"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fourdvar", "run", str(config), "--output", str(output), "--overwrite", "--quiet", *extra],
                   check=True, env=environment, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def busy_job():
    """A second CPU-bound job for the duration of the measurement."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def quick_start(repeats: int, directory: Path) -> str:
    config = ROOT / "configs" / "l96_state.yaml"
    times = {way: [] for way in WAYS}
    for _ in range(repeats):
        for way, (extra, variables) in WAYS.items():
            times[way].append(run_seconds(config, extra, variables, directory))
            print(f"{way}: {times[way][-1]:.2f} s", flush=True)
    median = {way: statistics.median(values) for way, values in times.items()}
    lines = [f"`fourdvar run configs/l96_state.yaml` (50 windows), wall time of a fresh process, median of {repeats} interleaved rounds; "
             "the ratio is the median over rounds of each round's time / its pinned time:", "",
             "| threads | median | runs | / pinned |", "|---|---|---|---|"]
    for way, values in times.items():
        ratio = statistics.median(value / pinned for value, pinned in zip(values, times["pinned"]))
        lines.append(f"| {way} | {median[way]:.2f} s | {', '.join(f'{v:.2f}' for v in values)} | {ratio:.2f}x |")
    return "\n".join(lines)


def shipped(names: list[str], directory: Path) -> str:
    lines = ["One run of each shipped configuration, default threads, wall time of a fresh process:", "",
             "| configuration | wall time |", "|---|---|"]
    for name in names:
        seconds = run_seconds(ROOT / "configs" / f"{name}.yaml", [], {}, directory)
        print(f"{name}: {seconds:.1f} s", flush=True)
        lines.append(f"| `{name}.yaml` | {seconds:.1f} s |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--busy", action="store_true", help="run one more CPU-bound process meanwhile")
    parser.add_argument("--configs", nargs="*", default=[], help="time these shipped configurations once each (names without .yaml)")
    args = parser.parse_args()
    job = busy_job() if args.busy else None
    load = os.getloadavg()[0]
    try:
        with tempfile.TemporaryDirectory() as directory:
            body = shipped(args.configs, Path(directory)) if args.configs else quick_start(args.repeats, Path(directory))
    finally:
        if job is not None:
            job.kill()
            job.wait()
    body += f"\n\nLoad average at the start: {load:.1f} on {os.cpu_count()} cores" + ("; one more CPU-bound job ran throughout (--busy)." if args.busy else ".")
    print(body)
    record("Run time of the shipped configurations" if args.configs else "Threads of the command line", body)


if __name__ == "__main__":
    main()
