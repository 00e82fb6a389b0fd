"""Filter RMSE of ``configs/l96_sakov2008.yaml`` with 4-, 8- and 16-interval windows on 3 seeds.

Each run goes through the application layer as ``fourdvar run`` would (no checkpoint);
the 8- and 16-interval variants change ``window.steps``, the background std, the
burn-in (so that the score covers observation times ~101-1000) and the cycle count
(1000 observation times in all).  Prints one line per run and a table of means.
Run: ``python benchmarks/sakov2008.py [intervals[:std] ...]`` (e.g. ``4:0.5`` tries another background std).
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
VARIANTS = {  # intervals: (background std, quasi-static steps per stage)
    4: (0.4, 8),
    8: (0.35, 8),
    16: (0.3, 8),
}


def config_for(intervals: int, seed: int, std: float | None = None) -> dict:
    config = copy.deepcopy(load_config(os.path.join(ROOT, "configs", "l96_sakov2008.yaml")))
    default_std, stage = VARIANTS[intervals]
    std = default_std if std is None else std
    steps = 4 * intervals
    config["seed"] = seed
    config["window"]["steps"] = steps
    config["window"]["cycles"] = 1000 // intervals
    config["background"]["state"]["error_std"] = std
    config["assimilation"]["quasi_static_steps"] = stage
    config["diagnostics"]["burn_in_cycles"] = int(np.ceil(100 / intervals))
    return resolve_config(config, name=f"sakov2008_{intervals}")


if __name__ == "__main__":
    print(timing.machine_header())
    wanted = [(int(arg.split(":")[0]), float(arg.split(":")[1]) if ":" in arg else None) for arg in sys.argv[1:]]
    table = {}
    for intervals, std in wanted or [(intervals, None) for intervals in VARIANTS]:
        for seed in (1, 2, 3):
            started = time.perf_counter()
            dataset = execute(Plan.from_config(config_for(intervals, seed, std)))
            seconds = time.perf_counter() - started
            rmse = dataset.attrs["headline_rmse_filter_after_burn_in"]
            table.setdefault((intervals, std or VARIANTS[intervals][0]), []).append((rmse, seconds))
            print(f"{intervals:2d} intervals (B std {std or VARIANTS[intervals][0]}), seed {seed}: filter RMSE {rmse:.3f}, chi2 {dataset.attrs['headline_chi2_mean']:.2f}, "
                  f"{seconds:.0f} s", flush=True)
    print("\nintervals | B std | filter RMSE, seeds 1/2/3 | mean | run time (s)")
    for (intervals, std), rows in table.items():
        print(f"{intervals:9d} | {std:5.2f} | {' / '.join(f'{r:.3f}' for r, _ in rows)} | {np.mean([r for r, _ in rows]):.3f} | "
              f"{' / '.join(f'{s:.0f}' for _, s in rows)}")
