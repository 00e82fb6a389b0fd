"""Default ``FourDVar.solve()`` against scipy L-BFGS-B on the nonlinear cost, to the same minimum.

L96 n = 40, a 10-step window, every variable observed at every step (R = I), B = I,
state control.  Reference: ``scipy.optimize.minimize(method="L-BFGS-B")`` on ``J`` with the
project's own ``FourDVarCost.gradient`` (gtol 1e-11).  The true minimum is the lowest J
of a tightly converged run of each.  Prints medians of interleaved batches and each
method's relative distance to the true minimum in J (target: within 1e-6); the ratio is
also given for ``solve(posterior_method="none")``, the solve without the posterior at the analysis.
Run: ``python benchmarks/speed.py``.
"""

from __future__ import annotations

import importlib.util
import os

_here = os.path.dirname(os.path.abspath(__file__))
for _name in ("timing", "results"):
    _spec = importlib.util.spec_from_file_location(_name, os.path.join(_here, f"{_name}.py"))
    globals()[_name] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(globals()[_name])

import numpy as np  # noqa: E402
import scipy.optimize  # noqa: E402

from fourdvar import FourDVar  # noqa: E402
from fourdvar.covariances import Diagonal  # noqa: E402
from models import Lorenz96  # noqa: E402
from observations import Identity, synthetic_observations  # noqa: E402


def window(seed: int, n_steps: int = 10) -> FourDVar:
    rng = np.random.default_rng(seed)
    x = Lorenz96(40).forecast(8.0 + rng.standard_normal(40), np.empty(0), 1000)[-1]
    truth = Lorenz96(40).forecast(x, np.empty(0), n_steps)
    obs = synthetic_observations(truth, list(range(n_steps + 1)), Identity(n_state=40), 1.0, rng)
    return FourDVar(Lorenz96(40), obs, xb=truth[0] + rng.standard_normal(40), B=Diagonal(1.0, size=40))


def scipy_lbfgs(problem: FourDVar, gtol: float = 1e-11) -> float:
    cost = problem.cost

    def fun(x):
        terms, gx, _ = cost.gradient(x, cost.pb)
        return terms.J, gx

    return scipy.optimize.minimize(fun, cost.xb, jac=True, method="L-BFGS-B", options={"gtol": gtol, "ftol": 0.0, "maxiter": 10000}).fun


def main() -> None:
    lines = [timing.machine_header(), "",
             f"{'seed':>4} {'solve() ms':>11} {'L-BFGS-B ms':>12} {'ratio':>6} {'solve dJ/J':>11} {'L-BFGS-B dJ/J':>14} outer loops, inner iterations"]
    ratios, bare_ratios = [], []
    for seed in range(3):
        problem = window(seed)
        J_true = min(problem.solve(tolerance=1e-15, outer_loops=30).final.J, scipy_lbfgs(problem, gtol=1e-13))
        result = problem.solve()
        J_scipy = scipy_lbfgs(problem)
        t_solve, t_scipy = timing.time_pair(problem.solve, lambda: scipy_lbfgs(problem), n_batches=7, batch_seconds=0.3)
        t_bare, t_scipy_2 = timing.time_pair(lambda: problem.solve(posterior_method="none"), lambda: scipy_lbfgs(problem), n_batches=7, batch_seconds=0.3)
        ratios.append(t_solve / t_scipy)
        bare_ratios.append(t_bare / t_scipy_2)
        lines.append(f"{seed:>4} {1e3 * t_solve:>11.1f} {1e3 * t_scipy:>12.1f} {t_solve / t_scipy:>6.2f} "
                     f"{(result.final.J - J_true) / J_true:>11.1e} {(J_scipy - J_true) / J_true:>14.1e} "
                     f"{len(result.outer)}, {[record['inner'].nit for record in result.outer]} ({result.message})")
    lines.append(f"median time ratio solve() / scipy L-BFGS-B: {np.median(ratios):.2f} "
                 f"(without the posterior, solve(posterior_method='none'): {np.median(bare_ratios):.2f})")
    body = "\n".join(lines)
    print(body)
    results.record("Speed: solve() against scipy L-BFGS-B", "```\n" + body + "\n```", command="taskset -c 1 python benchmarks/speed.py")


if __name__ == "__main__":
    main()
