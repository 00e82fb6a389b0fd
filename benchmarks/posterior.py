"""Cost of the parameters' posterior covariance per window: dense (one Hessian product per
control element) against the low-rank one from the Lanczos Ritz pairs.

On the first window of ``configs/l96_surrogate.yaml`` (40 states + the LocalMLP weights):
the dense ``FourDVar.params_posterior_covariance`` after the analysis, and
``result.posterior.params_covariance()`` after a ``lanczos`` solve (no Hessian products of
its own).  Also prints how close the low-rank std is to the dense one.
Run: ``python benchmarks/posterior.py``.
"""

from __future__ import annotations

import importlib.util
import os
import time

_spec = importlib.util.spec_from_file_location("timing", os.path.join(os.path.dirname(os.path.abspath(__file__)), "timing.py"))
timing = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(timing)
_spec = importlib.util.spec_from_file_location("preconditioning", os.path.join(os.path.dirname(os.path.abspath(__file__)), "preconditioning.py"))
preconditioning = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(preconditioning)

import numpy as np  # noqa: E402

if __name__ == "__main__":
    print(timing.machine_header())
    problem = preconditioning.surrogate_window()
    options = dict(outer_loops=8, max_iterations=50, gradient_reduction=1e-6)
    started = time.perf_counter()
    cg = problem.solve(method="cg", **options)
    t_cg = time.perf_counter() - started
    started = time.perf_counter()
    dense = problem.params_posterior_covariance(cg.x0, cg.p)
    t_dense = time.perf_counter() - started
    started = time.perf_counter()
    lz = problem.solve(method="lanczos", preconditioner="none", **options)
    t_lz = time.perf_counter() - started
    started = time.perf_counter()
    low_rank = lz.posterior.params_covariance()
    t_low = time.perf_counter() - started
    std_dense, std_low = np.sqrt(np.diag(dense)), low_rank.std
    print(f"n_params {problem.model.n_params}: solve cg {t_cg:.2f} s, lanczos {t_lz:.2f} s; final J {cg.final.J:.6g} / {lz.final.J:.6g}")
    print(f"posterior: dense {t_dense:.2f} s ({problem.model.n_state + problem.model.n_params} Hessian products), "
          f"low rank {t_low:.3f} s (rank {low_rank.rank}); ratio {t_low / t_dense:.3f}")
    print(f"std of the weights: prior {problem.cost.P.std.mean():.3f}, dense posterior {std_dense.mean():.4f}, low rank {std_low.mean():.4f}; "
          f"median |low/dense - 1| {np.median(np.abs(std_low / std_dense - 1)):.3f}")
