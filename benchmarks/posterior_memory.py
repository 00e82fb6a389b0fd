"""Peak memory of ``update: posterior`` on a network of realistic size: a residual MLP with
more than 100k weights (40 -> 300 -> 300 -> 40, tanh) learned online as the whole model of
Lorenz-96 (n = 40), cycling 5 windows with the weights' covariance propagated in low rank.

It runs the real code path, ``fourdvar run`` on a configuration written to a temporary
directory, in a child process, and prints the number of weights, the child's peak resident
memory (``getrusage(RUSAGE_CHILDREN).ru_maxrss``), the time per window and the rank of the
propagated ``P``.  A dense ``n_p x n_p`` matrix would take ``8 n_p^2`` bytes (105 GB here).
Run: ``python benchmarks/posterior_memory.py [--cycles 5] [--width 300] [--rank 200]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import subprocess
import sys
import tempfile
import time

_spec = importlib.util.spec_from_file_location("timing", os.path.join(os.path.dirname(os.path.abspath(__file__)), "timing.py"))
timing = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(timing)

import xarray as xr  # noqa: E402

LIMIT_GIB = 2.0

CONFIG = """\
title: residual MLP ({width} wide, two hidden layers) learned online, P propagated in low rank
seed: 1
model: {{type: mlp, layer_sizes: [40, {width}, {width}, 40], activations: [tanh, tanh, identity], residual: true}}
truth:
  model: {{type: lorenz96, n_state: 40, forcing: 8.0, dt: 0.05}}
  spinup_steps: 1000
observations: {{every: 1, operator: {{type: identity}}, error_std: 1.0}}
background:
  state: {{error_std: 1.0}}
  params: {{error_std: 0.01, update: posterior, noise_std: 0.001}}
window: {{steps: 10, cycles: {cycles}}}
assimilation:
  control: [state, params]
  outer_loops: 3
  posterior_rank: {rank}
  inner: {{method: lanczos, max_iterations: 50, gradient_reduction: 1.0e-6}}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--width", type=int, default=300)
    parser.add_argument("--rank", type=int, default=200, help="assimilation.posterior_rank")
    args = parser.parse_args()
    print(timing.machine_header())
    with tempfile.TemporaryDirectory() as directory:
        config = os.path.join(directory, "mlp_posterior.yaml")
        output = os.path.join(directory, "mlp_posterior.nc")
        with open(config, "w") as file:
            file.write(CONFIG.format(width=args.width, cycles=args.cycles, rank=args.rank))
        started = time.perf_counter()
        completed = subprocess.run([sys.executable, "-m", "fourdvar", "run", config, "--output", output],
                                   capture_output=True, text=True, cwd=directory)
        elapsed = time.perf_counter() - started
        if completed.returncode:
            sys.exit(f"fourdvar run failed ({completed.returncode}):\n{completed.stderr[-2000:]}")
        peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 2**30  # ru_maxrss: KiB on Linux
        with xr.open_dataset(output) as result:
            n_params = result.sizes["param"]
            rank = result.sizes.get("rank", 0)
            nits = result["inner_iterations"].values.sum(axis=1)
            rmse = result["rmse_analysis"].values if "rmse_analysis" in result else None
    print(f"residual MLP 40-{args.width}-{args.width}-40: {n_params} weights "
          f"(a dense P would be {8 * n_params**2 / 1e9:.0f} GB)")
    print(f"{args.cycles} windows with update: posterior (lanczos, posterior_rank {args.rank}): "
          f"peak resident memory {peak_gib:.2f} GiB (limit {LIMIT_GIB:g} GiB: {'OK' if peak_gib < LIMIT_GIB else 'EXCEEDED'})")
    print(f"time per window {elapsed / args.cycles:.1f} s (whole run {elapsed:.1f} s, start-up and truth included); "
          f"inner iterations per window {[int(n) for n in nits]}; rank of the propagated P {rank}")
    if rmse is not None:
        print(f"analysis RMSE per window {[round(float(value), 3) for value in rmse]}")


if __name__ == "__main__":
    main()
