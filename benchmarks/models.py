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

Why the dense MLP cannot reach 3x (measured on the 2-core box, one thread):

* A single-column dense MLP step is two matrix-vector products (GEMVs) and
  little else: at n = 400 one GEMV over a 400 x 401 matrix takes ~26 us, the
  step ~65-75 us.  Through a stored linearisation the TL needs four GEMVs
  (``W_i da`` and ``dW_i a_{i-1}`` per layer: ``dW`` is new every call, so it
  must be read), ~105 us, and the AD two more (``W_i^T az_i``) plus the two
  weight adjoints ``aW_i = az_i a_{i-1}^T``, each a full 400 x 401 matrix
  written into the fresh ``ap`` (BLAS ``dgemm``, ~64 us each), ~185 us.  That is
  six matrix reads and two matrix writes against the step's two reads: the
  floor is ~4x, and we measure ~4.3-4.6x.
* At n = 2000 each matrix is 32 MB, as big as the whole L3, so every pass runs
  at DRAM speed, and the 64 MB ``ap`` is a fresh mapping each call whose
  pages the kernel must fault in and zero: writes cost ~2-4x a read here, and
  the ratio is ~8-9x.
* The remedy is not in the single step: over a window the weight adjoints of
  all steps are one GEMM after the sweep (PERFORMANCE.md, item 1), which is the
  cost function's business.

At n = 40 a LocalMLP stores each stage's Jacobians (``n x (2h+1)`` and
``n x n_params``, built on the third one-vector TL/AD call) and its TL/AD are a
few calls instead of the layer-by-layer products; the ``layered`` rows time the
layer-by-layer path on the same case.

The local network's ratio is well below 1 because its step is dominated by
``np.tanh`` (~14 ns per element without AVX-512: ~1.8 ms of the 2 ms step at
n = 4000), which the stored linearisation does not repeat.
"""

from __future__ import annotations

import importlib.util
import os

# The shared timing module, loaded by path; loading it takes this folder off sys.path
# and pins BLAS to one thread (see benchmarks/timing.py), so it comes first.
_spec = importlib.util.spec_from_file_location("benchmark_timing", os.path.join(os.path.dirname(os.path.abspath(__file__)), "timing.py"))
timing = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(timing)
import argparse  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from fourdvar import build_model  # noqa: E402
from models.local_mlp import LocalNetworkTendencyLinearization  # noqa: E402

NETWORK_TARGET = 3.0
LORENZ96_TARGET = 4.0
MIN_SIZE_FOR_TARGET = 400


@dataclass
class Case:
    label: str
    size: int
    spec: dict[str, Any]
    target: float | None  # None: reported, not judged
    explicit_jacobians: bool = True  # False: a LocalMLP's TL/AD layer by layer even on a small grid


def _target(size: int, target: float) -> float | None:
    return target if size >= MIN_SIZE_FOR_TARGET else None


def cases() -> list[Case]:
    out = []
    for n in (40, 400, 4000):
        spec = {"type": "lorenz96", "n_state": n, "estimate_forcing": True}
        out.append(Case("lorenz96 (rk4, F estimated)", n, spec, _target(n, LORENZ96_TARGET)))
    # The dense MLP misses 3x by construction at n >= 400: see the module docstring.
    for n in (40, 400, 2000):
        spec = {"type": "mlp", "layer_sizes": [n, n, n], "activations": ["tanh", "identity"], "residual": True}
        out.append(Case(f"mlp residual [{n},{n},{n}]", n, spec, _target(n, NETWORK_TARGET)))
    for integrator in ("euler", "rk4"):
        for n in (40, 400, 4000):
            spec = {"type": "local_mlp", "n_state": n, "hidden": [32], "half_width": 2,
                    "integrator": integrator, "init_output_scale": 1.0}
            out.append(Case(f"local_mlp [5,32,1] {integrator}", n, spec, _target(n, NETWORK_TARGET)))
            if n == 40:  # the same, without the stored Jacobians (the path for large grids)
                out.append(Case(f"local_mlp [5,32,1] {integrator} layered", n, spec, None, explicit_jacobians=False))
    n = 400
    spec = {
        "type": "hybrid",
        "physics": {"type": "lorenz96", "n_state": n, "estimate_forcing": True},
        "correction": {"type": "local_mlp", "n_state": n, "hidden": [32], "half_width": 2, "init_output_scale": 1.0},
    }
    out.append(Case("hybrid lorenz96 + local_mlp euler", n, spec, _target(n, LORENZ96_TARGET)))
    return out


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
    if case.explicit_jacobians:
        lin = model.linearize(x, p)
    else:
        saved = LocalNetworkTendencyLinearization.EXPLICIT_JACOBIAN_SIZE
        LocalNetworkTendencyLinearization.EXPLICIT_JACOBIAN_SIZE = 0
        try:
            lin = model.linearize(x, p)
        finally:
            LocalNetworkTendencyLinearization.EXPLICIT_JACOBIAN_SIZE = saved

    def step():
        return model.step(x, p)

    def tl_ad():
        lin.tl(dx, dp)
        return lin.ad(ax)

    return timing.time_pair(step, tl_ad, n_batches, batch_seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few short batches: a smoke test, not a measurement")
    parser.add_argument("--default-malloc", action="store_true", help="leave glibc's malloc thresholds alone")
    parser.add_argument("--only", default="", metavar="TEXT", help="run only the cases whose label contains TEXT")
    args = parser.parse_args(argv)
    n_batches, batch_seconds = (3, 0.01) if args.quick else (7, 0.1)

    print(timing.machine_header())
    print("malloc: default" if args.default_malloc else timing.fix_malloc_thresholds())
    print(f"median of {n_batches} interleaved batches of ~{batch_seconds} s each; linearize() not counted")
    print()
    columns = f"{'model':<34} {'n':>5} {'step us':>10} {'TL+AD us':>10} {'ratio':>6} {'target':>6}  met"
    print(columns)
    print("-" * len(columns))
    all_met = True
    for case in cases():
        if args.only not in case.label:
            continue
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
