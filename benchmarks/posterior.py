"""Cost of the parameters' posterior covariance per window for ``update: posterior``: dense
against low rank, on the first window of ``configs/l96_surrogate.yaml`` (40 states + 225
LocalMLP weights, 8 outer loops of at most 50 inner iterations, as the config runs them).

- dense (``inner.method: cg``): :meth:`FourDVar.params_posterior_covariance` after the
  analysis, the Hessian formed column by column (``n_x + n_p`` products, in blocks);
- low rank (``inner.method: lanczos``): :meth:`Posterior.from_lanczos_runs` over the window's
  outer loops, then its parameters' marginal (no Hessian products of its own).

Both are timed in interleaved batches (medians) and the ratio low-rank / dense printed
(target <= 1/3); the solves are timed the same way, with their Hessian products, since the
low-rank posterior needs the ``lanczos`` solve.  Also printed: how close the weights'
posterior std are to the dense ones, and those of ``result.posterior`` (at the analysis).
Run: ``python benchmarks/posterior.py [--batches 7]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os

_spec = importlib.util.spec_from_file_location("timing", os.path.join(os.path.dirname(os.path.abspath(__file__)), "timing.py"))
timing = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(timing)
_spec = importlib.util.spec_from_file_location("preconditioning", os.path.join(os.path.dirname(os.path.abspath(__file__)), "preconditioning.py"))
preconditioning = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(preconditioning)

import numpy as np  # noqa: E402

from fourdvar.posterior import Posterior  # noqa: E402

OPTIONS = dict(outer_loops=8, max_iterations=50, gradient_reduction=1e-6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=7)
    parser.add_argument("--batch-seconds", type=float, default=0.5)
    args = parser.parse_args()
    print(timing.machine_header())
    problem = preconditioning.surrogate_window()
    cg = problem.solve(method="cg", **OPTIONS)
    lz = problem.solve(method="lanczos", **OPTIONS)
    runs = [record["inner"].lanczos for record in lz.outer]

    def dense():
        return problem.params_posterior_covariance(cg.x0, cg.p)

    def low_rank():
        return Posterior.from_lanczos_runs(problem.cost, problem.control, runs).params_covariance()

    t_dense, t_low = timing.time_pair(dense, low_rank, args.batches, args.batch_seconds)
    t_cg, t_lz = timing.time_pair(lambda: problem.solve(method="cg", **OPTIONS), lambda: problem.solve(method="lanczos", posterior_method="none", **OPTIONS),
                                  args.batches, args.batch_seconds)
    n_x, n_p = problem.model.n_state, problem.model.n_params
    print(f"window 0 of l96_surrogate.yaml: {n_x} states + {n_p} weights; medians of {args.batches} interleaved batches")
    print(f"solve: cg {t_cg:.3f} s ({cg.nit} iterations, {cg.nfev} Hessian products and cost evaluations), "
          f"lanczos {t_lz:.3f} s ({lz.nit}, {lz.nfev}); final J {cg.final.J:.6g} / {lz.final.J:.6g}")
    print(f"posterior per window: dense {1e3 * t_dense:.1f} ms ({n_x + n_p} Hessian columns), "
          f"low rank {1e3 * t_low:.1f} ms (0 Hessian products); ratio low-rank / dense {t_low / t_dense:.2f} (target <= 0.33)")
    print(f"window (solve + posterior): cg + dense {t_cg + t_dense:.3f} s, lanczos + low rank {t_lz + t_low:.3f} s; "
          f"ratio {(t_lz + t_low) / (t_cg + t_dense):.2f}")
    std_dense = np.sqrt(np.diag(problem.params_posterior_covariance(lz.x0, lz.p)))  # at the same analysis
    std_low, std_ritz = low_rank().std, lz.posterior.params_covariance().std
    for name, std in (("every outer loop (block BFGS)", std_low), ("result.posterior (at the analysis)", std_ritz)):
        print(f"weights' posterior std, {name}: mean {std.mean():.4f} (dense {std_dense.mean():.4f}, prior {problem.cost.P.std.mean():.3f}); "
              f"median |low/dense - 1| {np.median(np.abs(std / std_dense - 1)):.3f}")


if __name__ == "__main__":
    main()
