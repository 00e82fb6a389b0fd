"""Weak- against strong-constraint gradients on the same window, the forcing at zero.

One 20-step window, all variables observed every 2 steps (identity, std 0.5),
``B = I``; the weak-constraint cost adds ``Q = 0.1^2 I`` with a forcing per
sub-window of 5 steps (4 sub-windows) at ``eta = 0``, so both costs have the same
trajectory and the same ``J``.  Timed, interleaved, medians of batches:

    nonlinear     FourDVarCost.gradient(xb, pb)  against  .gradient(xb, pb, eta=0)
                  (linearise the window, one AD sweep)
    incremental   IncrementalCost.value_and_gradient(u), control [state]  against
                  [state, model_error] (one TL and one AD sweep; warmed up, so a
                  window that stores its step Jacobians has them)

The target: the weak gradient within 1.3x of the strong one (the ratio of the
medians of single calls, strong and weak alternated).  The script also
checks that the two give the same state gradient (to round-off).

    taskset -c 1 python benchmarks/weak_gradient.py [--seconds 4] [--no-record]
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
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from fourdvar.cost import FourDVarCost, IncrementalCost  # noqa: E402
from fourdvar.covariances import Diagonal  # noqa: E402
from fourdvar.interfaces import ObservationSlot  # noqa: E402
from fourdvar.window import forecast  # noqa: E402
from models import LocalMLP, Lorenz96  # noqa: E402
from observations import Identity  # noqa: E402

TARGET = 1.3
N_STEPS, EVERY, OBS_EVERY = 20, 5, 2
CASES = (
    ("lorenz96", 40, lambda: Lorenz96(n_state=40)),
    ("lorenz96", 400, lambda: Lorenz96(n_state=400)),
    ("local_mlp [5,32,1] rk4", 40, lambda: LocalMLP(n_state=40, hidden=[32], half_width=2, integrator="rk4", init_output_scale=1.0)),
)


def costs(model, seed: int = 0):
    """``(strong, weak, xb, pb)`` on the same observations of a truth run."""
    rng = np.random.default_rng(seed)
    n = model.n_state
    p = model.init_params(rng)
    x = forecast(model, 3.0 * rng.standard_normal(n) + 2.0, p, 100)[-1]
    truth = forecast(model, x, p, N_STEPS)
    R = Diagonal(0.5, size=n)
    slots = [ObservationSlot(k, truth[k] + R.sample(rng), Identity(n_state=n), R) for k in range(0, N_STEPS + 1, OBS_EVERY)]
    B = Diagonal(1.0, size=n)
    xb = x + B.sample(rng)
    strong = FourDVarCost(model, slots, xb, B=B, pb=p, n_steps=N_STEPS)
    weak = FourDVarCost(model, slots, xb, B=B, pb=p, n_steps=N_STEPS, Q=Diagonal(0.1, size=n), model_error_every=EVERY)
    return strong, weak, xb, p


def interleaved(strong, weak, seconds: float) -> tuple[float, float, float]:
    """``(median strong s, median weak s, their ratio)`` over single calls alternated for about
    ``seconds``: each pair runs back to back, so that the load of the shared machine hits both
    sides alike, and the medians leave out the calls a preemption lengthened."""
    start = time.perf_counter()
    strong(), weak()
    pairs = max(31, int(seconds / max(time.perf_counter() - start, 1e-9)))
    times = np.empty((pairs, 2))
    for i in range(pairs):
        t0 = time.perf_counter()
        strong()
        t1 = time.perf_counter()
        weak()
        times[i] = t1 - t0, time.perf_counter() - t1
    t_strong, t_weak = np.median(times, axis=0)
    return float(t_strong), float(t_weak), float(t_weak / t_strong)


def measure(model, seconds: float) -> dict:
    strong, weak, xb, p = costs(model)
    eta = np.zeros((weak.n_sub, model.n_state))
    gx_strong, gx_weak = strong.gradient(xb, p)[1], weak.gradient(xb, p, eta)[1]
    jq_strong = IncrementalCost(strong, xb, p, control=["state"])
    jq_weak = IncrementalCost(weak, xb, p, control=["state", "model_error"], eta=eta)
    rng = np.random.default_rng(1)
    u_strong = 0.1 * rng.standard_normal(jq_strong.size)
    u_weak = np.concatenate([u_strong, np.zeros(jq_weak.size - jq_strong.size)])
    for _ in range(5):  # past the sweep on which a window stores its step Jacobians
        g_strong, g_weak = jq_strong.value_and_gradient(u_strong)[1], jq_weak.value_and_gradient(u_weak)[1]
    nonlinear = interleaved(lambda: strong.gradient(xb, p), lambda: weak.gradient(xb, p, eta), seconds)
    incremental = interleaved(lambda: jq_strong.value_and_gradient(u_strong), lambda: jq_weak.value_and_gradient(u_weak), seconds)
    return {
        "nonlinear": nonlinear, "incremental": incremental,
        "difference": max(float(np.linalg.norm(gx_weak - gx_strong) / np.linalg.norm(gx_strong)),
                          float(np.linalg.norm(g_weak[: jq_strong.size] - g_strong) / np.linalg.norm(g_strong))),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="time spent on each comparison")
    parser.add_argument("--no-record", action="store_true", help="print only; leave benchmarks/RESULTS.md alone")
    args = parser.parse_args(argv)
    lines = [timing.machine_header(), "load average over 1 / 5 / 15 min at the start: " + " / ".join(f"{x:.1f}" for x in os.getloadavg()),
             f"window {N_STEPS} steps, forcing per {EVERY} steps at zero, target weak / strong <= {TARGET}", "",
             f"{'model':<24} {'n':>4}  {'gradient':<11} {'strong ms':>9} {'weak ms':>9} {'weak/strong':>11}  verdict   |g_weak - g_strong| / |g_strong|"]
    worst = 0.0
    for label, n, make in CASES:
        result = measure(make(), args.seconds)
        for kind in ("nonlinear", "incremental"):
            t_strong, t_weak, ratio = result[kind]
            worst = max(worst, ratio)
            lines.append(f"{label:<24} {n:>4}  {kind:<11} {1e3 * t_strong:>9.3f} {1e3 * t_weak:>9.3f} {ratio:>11.2f}  "
                         f"{'PASS' if ratio <= TARGET else 'FAIL':<8}  {result['difference']:.1e}")
        print(lines[-2], lines[-1], sep="\n", flush=True)
    lines += ["", f"largest weak / strong: {worst:.2f} (target {TARGET})"]
    body = "\n".join(lines)
    print(lines[-1])
    if not args.no_record:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from results import record

        record("weak-constraint gradient", "```\n" + body + "\n```", command="taskset -c 1 python benchmarks/weak_gradient.py")
    return 0 if worst <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
