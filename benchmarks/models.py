"""Cost of one TL plus one AD through a stored linearisation, relative to one step.

    /work/venv/bin/python benchmarks/models.py            # full run (about a minute)
    /work/venv/bin/python benchmarks/models.py --quick    # smoke test

For each model and size we build ``lin = model.linearize(x, p)`` once (its cost
is not counted) and time

    step     model.step(x, p)
    TL+AD    lin.tl(dx, dp) followed by lin.ad(ax)

in the same run, batch against batch: each batch times ``N`` calls, ``N`` sized
so that a batch of steps takes about 0.1 s, and the step and TL+AD batches
alternate so that a slow patch of the machine hits both.  The table shows the
median per-call time over the batches and the ratio TL+AD / step.

Targets (at n >= 400): TL+AD at most 3x a step for the networks, 4x for Lorenz-96.
The hybrid (Lorenz-96 + local network) is held to the looser of its parts', 4x.
At n = 40 the ratio is printed for information only: there a step is a few
dozen numpy calls of ~0.35 us each and the ratio measures call counts, not
arithmetic.

Why some ratios cannot reach the target whatever the code:

* The dense MLP on a single column (n = 400, 2000) is matrix-vector work bound
  by reading the weights from memory.  A step reads ``W_1`` and ``W_2`` once
  (two GEMVs).  The TL must read them again *and* read ``dW_1``, ``dW_2``
  (four GEMVs), and the AD reads ``W_2``, ``W_1`` and writes the weight adjoints
  ``aW_i = az_i a_{i-1}^T``, each a full matrix (two GEMVs, two rank-1 updates
  that read nothing but write a matrix).  That is about 8 matrix-sized memory
  passes against 2: 4x is the floor of the memory traffic, so 3x is out of
  reach for a stored linearisation of a single column.  (Over a window the
  weight terms are batched across steps into one GEMM, see PERFORMANCE.md;
  that is the cost function's business, not a single step's.)
"""

from __future__ import annotations

import os
import sys

# Run as a script, this file's folder is first on sys.path and the file's own name
# would shadow the ``models`` package: take the folder off the path.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != _HERE]

for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any, Callable  # noqa: E402

import numpy as np  # noqa: E402

from fourdvar import build_model  # noqa: E402

NETWORK_TARGET = 3.0
LORENZ96_TARGET = 4.0
MIN_SIZE_FOR_TARGET = 400


@dataclass
class Case:
    label: str
    size: int
    spec: dict[str, Any]
    target: float | None  # None: reported, not judged


def _target(size: int, target: float) -> float | None:
    return target if size >= MIN_SIZE_FOR_TARGET else None


def cases() -> list[Case]:
    out = []
    for n in (40, 400, 4000):
        spec = {"type": "lorenz96", "n_state": n, "estimate_forcing": True}
        out.append(Case("lorenz96 (rk4, F estimated)", n, spec, _target(n, LORENZ96_TARGET)))
    for n in (40, 400, 2000):
        spec = {"type": "mlp", "layer_sizes": [n, n, n], "activations": ["tanh", "identity"], "residual": True}
        out.append(Case(f"mlp residual [{n},{n},{n}]", n, spec, _target(n, NETWORK_TARGET)))
    for integrator in ("euler", "rk4"):
        for n in (40, 400, 4000):
            spec = {"type": "local_mlp", "n_state": n, "hidden": [32], "half_width": 2,
                    "integrator": integrator, "init_output_scale": 1.0}
            out.append(Case(f"local_mlp [5,32,1] {integrator}", n, spec, _target(n, NETWORK_TARGET)))
    n = 400
    spec = {
        "type": "hybrid",
        "physics": {"type": "lorenz96", "n_state": n, "estimate_forcing": True},
        "correction": {"type": "local_mlp", "n_state": n, "hidden": [32], "half_width": 2, "init_output_scale": 1.0},
    }
    out.append(Case("hybrid lorenz96 + local_mlp euler", n, spec, _target(n, LORENZ96_TARGET)))
    return out


def _calls_per_batch(fn: Callable[[], Any], batch_seconds: float) -> int:
    """How many calls of ``fn`` take about ``batch_seconds``."""
    calls = 1
    while True:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= batch_seconds / 4:
            return max(1, int(calls * batch_seconds / elapsed))
        calls *= 4


def _batch_time(fn: Callable[[], Any], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def time_pair(step: Callable[[], Any], tl_ad: Callable[[], Any], n_batches: int, batch_seconds: float) -> tuple[float, float]:
    """Median seconds per call of ``step`` and of ``tl_ad``, batches interleaved."""
    step_calls = _calls_per_batch(step, batch_seconds)
    tl_ad_calls = _calls_per_batch(tl_ad, batch_seconds)
    step_times, tl_ad_times = [], []
    for _ in range(n_batches):
        step_times.append(_batch_time(step, step_calls))
        tl_ad_times.append(_batch_time(tl_ad, tl_ad_calls))
    return statistics.median(step_times), statistics.median(tl_ad_times)


def measure(case: Case, n_batches: int, batch_seconds: float, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    model = build_model(case.spec)
    x = 3.0 * rng.standard_normal(model.n_state) + 2.0
    p = model.init_params(rng)
    if case.spec["type"] == "mlp":  # init_params starts a residual MLP at zero output
        p = rng.standard_normal(model.n_params) / np.sqrt(model.n_state)
    dx = rng.standard_normal(model.n_state)
    dp = rng.standard_normal(model.n_params)
    ax = rng.standard_normal(model.n_state)
    lin = model.linearize(x, p)

    def step():
        return model.step(x, p)

    def tl_ad():
        lin.tl(dx, dp)
        return lin.ad(ax)

    return time_pair(step, tl_ad, n_batches, batch_seconds)


def header() -> str:
    threads = ", ".join(f"{name}={os.environ.get(name)}" for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"))
    return (
        f"numpy {np.__version__}, python {platform.python_version()}, {os.cpu_count()} cpus\n"
        f"threads: {threads}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few short batches: a smoke test, not a measurement")
    args = parser.parse_args(argv)
    n_batches, batch_seconds = (3, 0.01) if args.quick else (7, 0.1)

    print(header())
    print(f"median of {n_batches} interleaved batches of ~{batch_seconds} s each; linearize() not counted")
    print()
    columns = f"{'model':<34} {'n':>5} {'step us':>10} {'TL+AD us':>10} {'ratio':>6} {'target':>6}  met"
    print(columns)
    print("-" * len(columns))
    all_met = True
    for case in cases():
        t_step, t_tl_ad = measure(case, n_batches, batch_seconds)
        ratio = t_tl_ad / t_step
        if case.target is None:
            target, met = "-", "-"
        else:
            target, met = f"{case.target:.0f}x", "yes" if ratio <= case.target else "NO"
            all_met &= ratio <= case.target
        print(f"{case.label:<34} {case.size:>5} {t_step * 1e6:>10.1f} {t_tl_ad * 1e6:>10.1f} {ratio:>6.2f} {target:>6}  {met}", flush=True)
    print()
    print("all targets met" if all_met else "some targets NOT met")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
