"""A sweep of 8 shortened runs: the embedded 2-worker Dask cluster against one run after another.

    python benchmarks/sweep.py            # 3 rounds of members of 1000 windows, about 3 minutes on an idle machine
    python benchmarks/sweep.py --quick    # 1 round of shorter runs (smoke test)

The members are Lorenz-96 state-estimation runs (n = 40, all observed every 4
steps, windows of 8 steps), seeds 1-8, each an ordinary run writing its result
file.  Each round times

    serial    the 8 members executed in this process, one after another
    cluster   the same 8 members through ``run_members`` on an embedded cluster of
              2 single-threaded worker processes, the cluster's start and stop included,
              in a fresh process each round (imports done, as here), so that every
              round pays for starting the fork server the workers come from

the two alternating, so that a slow patch of the machine hits both; the table
shows the median per round and the ratio serial / cluster (target >= 1.7 on 2
cores).  Every cluster file is checked equal, bit for bit, to the serial one.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_spec = importlib.util.spec_from_file_location("timing", os.path.join(os.path.dirname(os.path.abspath(__file__)), "timing.py"))
timing = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(timing)

import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from fourdvar.app.cluster import PROVENANCE_ATTRIBUTES, Member, embedded_cluster, execute_member, run_config, run_members  # noqa: E402
from fourdvar.app.config import resolve_config  # noqa: E402


def member_config(seed: int, cycles: int) -> dict:
    return resolve_config({
        "seed": seed, "model": {"type": "lorenz96", "n_state": 40}, "truth": {"spinup_steps": 500},
        "observations": {"every": 4, "operator": {"type": "subset", "indices": "all"}, "error_std": 1.0},
        "background": {"state": {"error_std": 1.0}}, "window": {"steps": 8, "cycles": cycles},
        "assimilation": {"control": ["state"], "outer_loops": 3, "inner": {"max_iterations": 50}},
    }, name=f"sweep_seed{seed}")


def sweep_members(directory: Path, cycles: int) -> list[Member]:
    return [Member(f"seed{s}", directory / f"seed{s}.nc", functools.partial(run_config, member_config(s, cycles)), {"sweep_seed": s})
            for s in range(1, 9)]


def serial(directory: Path, cycles: int) -> tuple[float, list[float]]:
    """Seconds of the whole, and of each member."""
    started = time.perf_counter()
    seconds = []
    for member in sweep_members(directory, cycles):
        outcome = execute_member(member)
        assert outcome.ok
        seconds.append(outcome.seconds)
    return time.perf_counter() - started, seconds


def packed(seconds: list[float], n_workers: int = 2) -> float:
    """When the last of these members would end on ``n_workers`` workers at no cost of their own:
    each member, in order, to the worker free first (as the scheduler hands them out)."""
    free_at = [0.0] * n_workers
    for duration in seconds:
        free_at[free_at.index(min(free_at))] += duration
    return max(free_at)


def on_cluster(directory: Path, cycles: int) -> float:
    started = time.perf_counter()
    with embedded_cluster(2) as client:
        assert all(outcome.ok for outcome in run_members(sweep_members(directory, cycles), client=client))
    return time.perf_counter() - started


def on_cluster_in_new_process(directory: Path, cycles: int) -> float:
    """:func:`on_cluster` in a new Python process: nothing of an earlier round's cluster is left to reuse."""
    result = subprocess.run([sys.executable, os.path.abspath(__file__), "--cluster-round", str(directory), "--cycles", str(cycles)],
                            check=True, capture_output=True, text=True)
    return float(result.stdout.split()[-1])


def same_files(a: Path, b: Path) -> bool:
    for name in sorted(p.name for p in a.glob("*.nc")):
        with xr.open_dataset(a / name) as x, xr.open_dataset(b / name) as y:
            if any(not np.array_equal(x[v].values, y[v].values, equal_nan=True) for v in x.variables if x[v].dtype.kind == "f"):
                return False
            if {k: v for k, v in x.attrs.items() if k not in PROVENANCE_ATTRIBUTES} != {k: v for k, v in y.attrs.items() if k not in PROVENANCE_ATTRIBUTES}:
                return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cycles", type=int, default=1000, help="windows per member (a member of 1000 takes about 4 s here)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cluster-round", metavar="DIR", help=argparse.SUPPRESS)  # one timed cluster round, in its own process
    args = parser.parse_args()
    if args.cluster_round:
        print(on_cluster(Path(args.cluster_round), args.cycles))
        return
    rounds, cycles = (1, 10) if args.quick else (args.rounds, args.cycles)
    print(timing.machine_header())
    print(f"8 members of {cycles} windows; {rounds} rounds, serial and cluster alternating")
    serial_times, cluster_times, bounds = [], [], []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
            total, seconds = serial(Path(a), cycles)
            serial_times.append(total)
            bounds.append(packed(seconds))
            cluster_times.append(on_cluster_in_new_process(Path(b), cycles))
            identical = same_files(Path(a), Path(b))
        print(f"  round: serial {serial_times[-1]:6.2f} s   cluster {cluster_times[-1]:6.2f} s   identical files: {identical}"
              f"   (members {min(seconds):.2f}-{max(seconds):.2f} s; packed on 2 workers at no cost {bounds[-1]:.2f} s)", flush=True)
        if not identical:
            sys.exit("the cluster's result files differ from the serial ones")
    s, c = statistics.median(serial_times), statistics.median(cluster_times)
    print(f"median: serial {s:.2f} s, cluster (2 workers, start and stop included) {c:.2f} s, ratio {s / c:.2f}x (target >= 1.7)")
    b = statistics.median(bounds)
    print(f"a cluster costing nothing would take {b:.2f} s (ratio {s / b:.2f}x): this one's cost is {c - b:.2f} s")


if __name__ == "__main__":
    main()
