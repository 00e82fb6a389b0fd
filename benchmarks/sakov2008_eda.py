"""Filter RMSE of the hybrid EDA-4D-Var on DAPPER's sakov2008 set-up, 4- and 8-interval windows, seeds 1-3.

Runs ``configs/l96_sakov2008_eda.yaml`` (4 intervals) and ``configs/l96_sakov2008_eda_8.yaml``
(8 intervals), overlapping windows shifted by half their length, as ``fourdvar run`` would (no
checkpoint), the members of each window on an embedded Dask cluster (``--workers``, default 2)
or one after another (``--serial``). Each run carries its own static-B 4D-Var on the same
observations and windows (``compare: static``, the static B of ``configs/l96_sakov2008.yaml``). Prints one line
per run, then the table of ``docs/guide/settings.md``: filter RMSE (the analysis at each window's
end) over observation times 101-1000, hybrid and static B, and the wall time of each run.

Run: ``python benchmarks/sakov2008_eda.py [--serial | --workers N] [--cycles C] [--seeds 1 2 3] [intervals ...]``
(``--cycles`` shortens the runs, the burn-in kept, for a quick look).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import time

_spec = importlib.util.spec_from_file_location("timing", os.path.join(os.path.dirname(os.path.abspath(__file__)), "timing.py"))
timing = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(timing)

import numpy as np  # noqa: E402

from fourdvar.app.cluster import distributed_map, embedded_cluster  # noqa: E402
from fourdvar.app.config import load_config, resolve_config  # noqa: E402
from fourdvar.app.plan import Plan  # noqa: E402
from fourdvar.app.run import execute  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {4: "l96_sakov2008_eda.yaml", 8: "l96_sakov2008_eda_8.yaml"}


def config_for(intervals: int, seed: int, cycles: int | None = None) -> dict:
    config = load_config(os.path.join(ROOT, "configs", CONFIGS[intervals]))
    config["seed"] = seed
    if cycles is not None:
        config["window"]["cycles"] = cycles
    return resolve_config(config, name=f"sakov2008_eda_{intervals}")


def measure(intervals: int, seed: int, cycles: int | None, map_members) -> dict:
    plan = Plan.from_config(config_for(intervals, seed, cycles))
    started = time.perf_counter()
    dataset = execute(plan, map_members=map_members)
    seconds = time.perf_counter() - started
    attrs = dataset.attrs
    return {"hybrid": attrs["headline_rmse_filter_after_burn_in"], "static": attrs["headline_rmse_filter_after_burn_in_static"],
            "spread_skill": attrs["headline_spread_skill"], "chi2": attrs["headline_chi2_mean"], "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("intervals", nargs="*", type=int, default=sorted(CONFIGS), choices=sorted(CONFIGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--cycles", type=int, default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--serial", action="store_true")
    args = parser.parse_args()
    print(timing.machine_header())
    print("members:", "one after another" if args.serial else f"embedded Dask cluster, {args.workers} workers")
    table = {}
    with contextlib.ExitStack() as stack:
        map_members = map if args.serial else distributed_map(stack.enter_context(embedded_cluster(args.workers)))
        for intervals in args.intervals:
            for seed in args.seeds:
                row = measure(intervals, seed, args.cycles, map_members)
                table.setdefault(intervals, []).append(row)
                print(f"{intervals} intervals, seed {seed}: filter RMSE hybrid {row['hybrid']:.3f}, static B {row['static']:.3f}, "
                      f"spread-skill {row['spread_skill']:.2f}, chi2 {row['chi2']:.2f}, {row['seconds']:.0f} s", flush=True)
    seeds = "/".join(map(str, args.seeds))
    print(f"\n| window (obs intervals) | hybrid EDA-4D-Var, seeds {seeds} | mean | static B, seeds {seeds} | mean | run time (s) |")
    print("|---|---|---|---|---|---|")
    for intervals, rows in table.items():
        column = {key: " / ".join(f"{row[key]:.3f}" for row in rows) for key in ("hybrid", "static")}
        mean = {key: np.mean([row[key] for row in rows]) for key in ("hybrid", "static")}
        seconds = " / ".join(f"{row['seconds']:.0f}" for row in rows)
        print(f"| {intervals} | {column['hybrid']} | {mean['hybrid']:.3f} | {column['static']} | {mean['static']:.3f} | {seconds} |")


if __name__ == "__main__":
    main()
