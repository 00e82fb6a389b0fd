"""Filter RMSE of ``configs/l96_sakov2008.yaml`` with 4-, 8- and 16-interval windows on 3 seeds.

Each run goes through the application layer as ``fourdvar run`` would (no checkpoint);
the variants change ``window.steps``, ``window.shift``, the background std, the
burn-in (so that the score covers the window ends at observation times 101-1000) and
the cycle count (windows up to observation time 1000).  Prints one line per run and a
table of means.
Run: ``python benchmarks/sakov2008.py [intervals[:std[:shift]] ...]`` (e.g. ``4:0.4:4``: windows of
4 intervals end to end with B std 0.4; the shift is in observation intervals).
"""

from __future__ import annotations

import copy
import importlib.util
import os
import sys
import time

_spec = importlib.util.spec_from_file_location("timing", os.path.join(os.path.dirname(os.path.abspath(__file__)), "timing.py"))
timing = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(timing)

import numpy as np  # noqa: E402

from fourdvar.app.config import load_config, resolve_config  # noqa: E402
from fourdvar.app.plan import Plan  # noqa: E402
from fourdvar.app.run import execute  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMES, BURN_IN_TIMES = 1000, 100  # observation times in all; the first ones left out of the score
VARIANTS = {  # intervals: (background std, quasi-static steps per stage, shift in observation intervals)
    4: (0.2, 8, 2),
    8: (0.15, 8, 4),
    16: (0.35, 8, 16),
}


def config_for(intervals: int, seed: int, std: float | None = None, shift: int | None = None) -> dict:
    """The config for windows of ``intervals`` observation intervals, starting every ``shift``
    intervals; ``window.cycles`` and ``diagnostics.burn_in_cycles`` make the windows end at
    observation times ``intervals, intervals + shift, ..., <= 1000`` and the score cover those after 100."""
    config = copy.deepcopy(load_config(os.path.join(ROOT, "configs", "l96_sakov2008.yaml")))
    default_std, stage, default_shift = VARIANTS[intervals]
    std = default_std if std is None else std
    shift = default_shift if shift is None else shift
    config["seed"] = seed
    config["window"]["steps"] = 4 * intervals
    config["window"]["shift"] = 4 * shift
    config["window"]["cycles"] = (TIMES - intervals) // shift + 1
    config["background"]["state"]["error_std"] = std
    config["assimilation"]["quasi_static_steps"] = stage
    config["diagnostics"]["burn_in_cycles"] = (BURN_IN_TIMES - intervals) // shift + 1
    return resolve_config(config, name=f"sakov2008_{intervals}")


if __name__ == "__main__":
    print(timing.machine_header())
    wanted = []
    for arg in sys.argv[1:]:
        fields = arg.split(":") + [""] * 2
        wanted.append((int(fields[0]), float(fields[1]) if fields[1] else None, int(fields[2]) if fields[2] else None))
    seeds = [int(seed) for seed in os.environ.get("SEEDS", "1,2,3").split(",")]
    table = {}
    for intervals, std, shift in wanted or [(intervals, None, None) for intervals in VARIANTS]:
        config = config_for(intervals, seeds[0], std, shift)
        std, shift = config["background"]["state"]["error_std"], config["window"]["shift"] // 4
        for seed in seeds:
            started = time.perf_counter()
            dataset = execute(Plan.from_config(config_for(intervals, seed, std, shift)))
            seconds = time.perf_counter() - started
            rmse = dataset.attrs["headline_rmse_filter_after_burn_in"]
            table.setdefault((intervals, shift, std), []).append((rmse, seconds))
            print(f"{intervals:2d} intervals, shift {shift:2d}, B std {std}, seed {seed}: filter RMSE {rmse:.4f}, "
                  f"chi2 {dataset.attrs['headline_chi2_mean']:.2f}, {config['window']['cycles']} windows, {seconds:.0f} s", flush=True)
    print(f"\nintervals | shift | B std | filter RMSE, seeds {'/'.join(map(str, seeds))} | mean | run time (s)")
    for (intervals, shift, std), rows in table.items():
        print(f"{intervals:9d} | {shift:5d} | {std:5.2f} | {' / '.join(f'{r:.3f}' for r, _ in rows)} | {np.mean([r for r, _ in rows]):.3f} | "
              f"{' / '.join(f'{s:.0f}' for _, s in rows)}")
