"""Inner iterations with and without the spectral preconditioner, outer loops >= 2.

Each outer loop's Lanczos is run to the same gradient reduction (1e-6 relative; the
outer tolerance is set to 0 so that it does not end inner loops early) for a fixed
number of outer loops.  The preconditioned run (``preconditioner="spectral"``) multiplies
onto ``S``, from the second outer loop's Lanczos on, the limited-memory preconditioner of
ALL its Ritz pairs (``H = (I - V Theta^-1 V^T Â)(I - Â V Theta^-1 V^T) + V Theta^-1 V^T`` on
``Â = S^T A S``, in symmetric square-root form, see :mod:`fourdvar.lanczos`), and drops ``S``
when the first Hessian product of the next inner loop shows it stale.  Counted: Hessian-vector
products (TL + AD sweeps) per inner loop, the product lost to a dropped ``S`` included, and
Lanczos iterations (without it).  Windows:

* joint L96: n = 40, 20 steps, all observed every step, forcing estimated (F_b = 7, truth 8);
* the first learning window of ``configs/l96_surrogate.yaml`` (state + 225 LocalMLP weights).
  There the Hessian changes by factors of 2-10 from one outer loop to the next (the weights
  start untrained, increments are cut to 1/4-1/8 by backtracking): even the exact inverse
  of the previous outer loop's Hessian as preconditioner more than doubles the iterations
  (printed as the ceiling, from dense Hessians), so no preconditioner from earlier outer loops
  can save any; the stale test drops it, at one Hessian product per outer loop;
* window 60 of the same experiment, its background cycled with the configuration's own
  settings (the network has learned; the Hessian settles after a few outer loops).

Prints per-outer-loop counts and the reduction over outer loops >= 2, and for each window the
ceiling: the iterations when each inner loop is preconditioned by the exact inverse square
root of the previous outer loop's (dense) Hessian, the best any preconditioner built from
earlier outer loops can do.
Run: ``python benchmarks/preconditioning.py`` (about 30 s, most of it cycling to window 60).
"""

from __future__ import annotations

import importlib.util
import os
import sys

_spec = importlib.util.spec_from_file_location("timing", os.path.join(os.path.dirname(os.path.abspath(__file__)), "timing.py"))
timing = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(timing)

import numpy as np  # noqa: E402

from fourdvar import FourDVar  # noqa: E402
from fourdvar.app.config import load_config  # noqa: E402
from fourdvar.covariances import Diagonal  # noqa: E402
from fourdvar.cycling import cycle  # noqa: E402
from fourdvar.lanczos import SpectralFactor, SpectralPreconditioner, lanczos  # noqa: E402
from fourdvar.app.plan import Plan  # noqa: E402
from models import Lorenz96  # noqa: E402
from observations import Identity, synthetic_observations  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def joint_l96_window(seed: int = 0, n_steps: int = 20) -> FourDVar:
    rng = np.random.default_rng(seed)
    x = Lorenz96(40).forecast(8.0 + rng.standard_normal(40), np.empty(0), 1000)[-1]
    truth = Lorenz96(40).forecast(x, np.empty(0), n_steps)
    obs = synthetic_observations(truth, list(range(n_steps + 1)), Identity(n_state=40), 1.0, rng)
    return FourDVar(Lorenz96(40, forcing=7.0, estimate_forcing=True), obs, xb=truth[0] + rng.standard_normal(40),
                    B=Diagonal(1.0, size=40), pb=np.array([7.0]), P=Diagonal(1.0, size=1), control="both")


def surrogate_window(window: int = 0) -> FourDVar:
    """Window ``window`` of ``configs/l96_surrogate.yaml``, its background from cycling the windows
    before it with the configuration's own settings."""
    plan = Plan.from_config(load_config(os.path.join(ROOT, "configs", "l96_surrogate.yaml")), base_dir=ROOT)
    xb, B, pb, P = plan.xb0, plan.B0, plan.pb0, plan.P0
    if window:
        outcomes = cycle(plan.model, (plan.window_slots(c) for c in range(window + 1)), xb, B, pb, P, control=plan.control,
                         n_steps=plan.n_steps, background_policy=plan.background_policy,
                         params_noise_std=plan.config["background"]["params"]["noise_std"],
                         max_cost_per_obs=plan.config["assimilation"]["max_cost_per_obs"], **plan.solver_options)
        last = list(outcomes)[-1]
        xb, B, pb, P = last.xb, last.B, last.pb, last.P
    return FourDVar(plan.model, plan.window_slots(window), xb=xb, B=B, pb=pb, P=P, control=plan.control, n_steps=plan.n_steps)


def compare(name: str, problem: FourDVar, outer_loops: int, max_iterations: int) -> float:
    options = dict(method="lanczos", outer_loops=outer_loops, max_iterations=max_iterations, gradient_reduction=1e-6, tolerance=0.0)
    runs = {pre: problem.solve(preconditioner=pre, **options) for pre in ("none", "spectral")}
    print(f"\n{name}: per inner loop, Hessian products / Lanczos iterations (gradient reduced by 1e-6 each; max {max_iterations})")
    for pre, result in runs.items():
        counts = [f"{record['inner'].nfev}/{record['inner'].nit}" for record in result.outer]
        reasons = {record["inner"].reason for record in result.outer}
        dropped = sum(record["inner"].lanczos.stale for record in result.outer)
        print(f"  {pre:9s} {' '.join(counts)}  final J {result.final.J:.10g}  stopped by: {', '.join(sorted(reasons))}"
              f"{f'; S dropped as stale in {dropped} loop(s)' if dropped else ''}")
    for count in ("nfev", "nit"):
        later = {pre: sum(getattr(record["inner"], count) for record in result.outer[1:]) for pre, result in runs.items()}
        reduction = 1.0 - later["spectral"] / later["none"]
        what = "Hessian products" if count == "nfev" else "Lanczos iterations"
        print(f"  outer loops >= 2: {later['none']} -> {later['spectral']} {what}, {100 * reduction:.1f} % fewer")
    return reduction


def ceiling(problem: FourDVar, outer_loops: int) -> None:
    """The best any preconditioner from the previous outer loop can do: Lanczos iterations when
    each inner loop is preconditioned by the exact ``A_{m-1}^-1/2`` of the previous one (dense
    Hessians, along the unpreconditioned run's linearisation points)."""
    options = dict(method="lanczos", max_iterations=200, gradient_reduction=1e-6, tolerance=0.0, preconditioner="none")
    points = [(problem.cost.xb, problem.cost.pb)] + [
        (result.x0, result.p) for result in (problem.solve(outer_loops=m, **options) for m in range(1, outer_loops))]
    counts, previous = {"none": 0, "exact previous": 0}, None
    for m, (x, p) in enumerate(points):
        jq = problem.incremental_cost(x, p)
        A, g = jq.hessian_matrix(), jq.value_and_gradient(np.zeros(jq.size))[1]
        reduced = lambda j, u, norm: norm <= 1e-6 * np.linalg.norm(g)  # noqa: B023
        if m:
            counts["none"] += lanczos(lambda v: A @ v, g, 200, reduced).nit  # noqa: B023
            counts["exact previous"] += lanczos(lambda v: A @ v, g, 200, reduced, preconditioner=previous).nit  # noqa: B023
        theta, V = np.linalg.eigh(A)
        previous = SpectralPreconditioner(jq.size).extended(SpectralFactor(V, theta))  # A^-1/2
    reduction = 1.0 - counts["exact previous"] / counts["none"]
    print(f"  ceiling, each inner loop preconditioned by the exact inverse square root of the previous Hessian:\n"
          f"  outer loops >= 2: {counts['none']} -> {counts['exact previous']} Lanczos iterations, {100 * reduction:.1f} % fewer")


if __name__ == "__main__":
    print(timing.machine_header())
    for name, problem, outer_loops in (
        ("joint L96 (n = 40, 20 steps, forcing estimated)", joint_l96_window(), 6),
        ("l96_surrogate.yaml, window 0 (state + LocalMLP weights)", surrogate_window(), 8),
        ("l96_surrogate.yaml, window 60 (cycled to it)", surrogate_window(60), 8),
    ):
        compare(name, problem, outer_loops, max_iterations=200)
        ceiling(problem, outer_loops)
