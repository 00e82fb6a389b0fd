"""Analyses users can trust: the posterior std against the dense inverse Hessian, the outer
loops' stopping, and quality control on planted gross errors.

1. Posterior: L96 n = 40, every variable observed at every step (R = I, B = I), seeds 11-13;
   10-step state windows and 20-step joint state + forcing windows.  ``result.posterior``'s std
   against ``sqrt(diag(A^-1))``, ``A`` the dense Hessian at the analysis, for the default
   ``solve()``, inner loops to round-off (``gradient_reduction=1e-12``), and the posterior's
   own Lanczos forced (``posterior_method="lanczos"``, the route of a control larger than
   ``DENSE_POSTERIOR_SIZE``), with its error estimate; the extra cost is the time of the
   default ``solve()`` over ``solve(posterior_method="none")`` (interleaved medians).
2. Stopping: joint state + forcing windows of 10, 20 and 30 steps (forcing background 7,
   truth 8, P = 1): ``success`` and ``J`` against the independent minimum (the lowest of scipy
   L-BFGS-B on the nonlinear J with gtol 1e-12 and a solve to tolerance 1e-15).
3. QC: 10-step state windows with one observation of 1e30, one NaN and 5 % of the observations
   off by 10 observation-error std: the analysis RMSE of the default ``solve()`` over that of the
   run without the bad observations; and the rejections on the clean windows.

Run: ``taskset -c 1 python benchmarks/posterior_accuracy.py``.
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
from fourdvar.interfaces import ObservationSlot  # noqa: E402
from fourdvar.qc import Selected  # noqa: E402
from models import Lorenz96  # noqa: E402
from observations import Identity, synthetic_observations  # noqa: E402

SEEDS = (11, 12, 13)
ABSURD = {3: (5, 1e30), 7: (11, np.nan)}  # step: (index, value) of the absurd observations planted


def twin(seed: int, n_steps: int):
    """``(truth trajectory, xb, observations)``: every variable at every step, std 1."""
    rng = np.random.default_rng(seed)
    x = Lorenz96(40).forecast(8.0 + rng.standard_normal(40), np.empty(0), 1000)[-1]
    truth = Lorenz96(40).forecast(x, np.empty(0), n_steps)
    obs = synthetic_observations(truth, list(range(n_steps + 1)), Identity(n_state=40), 1.0, rng)
    return truth, truth[0] + rng.standard_normal(40), list(obs)


def state_window(seed: int, n_steps: int = 10) -> FourDVar:
    _, xb, obs = twin(seed, n_steps)
    return FourDVar(Lorenz96(40), obs, xb=xb, B=Diagonal(1.0, size=40))


def joint_window(seed: int, n_steps: int) -> FourDVar:
    _, xb, obs = twin(seed, n_steps)
    return FourDVar(Lorenz96(40, forcing=7.0, estimate_forcing=True), obs, xb=xb, B=Diagonal(1.0, size=40),
                    pb=np.array([7.0]), P=Diagonal(1.0, size=1), control="both")


def dense_std(problem: FourDVar, result) -> np.ndarray:
    """``sqrt(diag(A^-1))`` at the analysis (B = I, P = I: control and physical variables agree)."""
    A = problem.incremental_cost(result.x0, result.p).hessian_matrix()
    return np.sqrt(np.diag(np.linalg.inv(A)))


def posterior_error(problem: FourDVar, **options) -> tuple[float, object]:
    result = problem.solve(**options)
    posterior = result.posterior
    std = np.concatenate([posterior.std_x0] + ([posterior.std_p] if posterior.std_p is not None else []))
    return float(np.max(np.abs(std / dense_std(problem, result) - 1.0))), posterior


def independent_minimum(problem: FourDVar) -> float:
    cost, joint = problem.cost, problem.control.params

    def fun(u):
        terms, gx, gp = cost.gradient(u[:40], u[40:] if joint else cost.pb)
        return terms.J, np.concatenate([gx, gp]) if joint else gx

    u0 = np.concatenate([cost.xb, cost.pb]) if joint else cost.xb
    scipy_J = scipy.optimize.minimize(fun, u0, jac=True, method="L-BFGS-B", options={"gtol": 1e-12, "ftol": 0.0, "maxiter": 20000}).fun
    return min(scipy_J, problem.solve(tolerance=1e-15, outer_loops=100, posterior_method="none").final.J)


def planted(seed: int, n_steps: int = 10, fraction: float = 0.05):
    """``(truth, xb, observations with the gross errors, observations without the bad ones)``."""
    truth, xb, obs = twin(seed, n_steps)
    rng = np.random.default_rng(100 + seed)
    bad, without = [], []
    for k, slot in enumerate(obs):
        values = slot.values.copy()
        hit = rng.random(values.size) < fraction
        values[hit] += 10.0 * rng.choice([-1.0, 1.0], hit.sum())
        if k in ABSURD:
            index, value = ABSURD[k]
            values[index], hit[index] = value, True
        bad.append(ObservationSlot(slot.step, values, slot.operator, slot.covariance))
        keep = np.flatnonzero(~hit)
        without.append(ObservationSlot(slot.step, slot.values[keep], Selected(slot.operator, keep), Diagonal(1.0, size=keep.size)))
    return truth, xb, bad, without


def rmse(result, truth) -> float:
    return float(np.sqrt(np.mean((result.x0 - truth[0]) ** 2)))


def main() -> None:
    lines = [timing.machine_header(), "", "### 1. Posterior std against the dense inverse Hessian at the analysis", "",
             "| window | seed | default solve() | inner loops to round-off | posterior Lanczos: error (estimate, pairs/converged) | extra cost of the default posterior |",
             "|---|---|---|---|---|---|"]
    ratios = []
    for kind, build in (("state, 10 steps", lambda s: state_window(s)), ("state + forcing, 20 steps", lambda s: joint_window(s, 20))):
        for seed in SEEDS:
            problem = build(seed)
            default, _ = posterior_error(problem)
            tight, _ = posterior_error(problem, gradient_reduction=1e-12)
            lanczos, posterior = posterior_error(problem, posterior_method="lanczos")
            t_none, t_default = timing.time_pair(lambda: problem.solve(posterior_method="none"), problem.solve, n_batches=5, batch_seconds=0.3)
            ratios.append(t_default / t_none - 1.0)
            lines.append(f"| {kind} | {seed} | {default:.1e} | {tight:.1e} | {lanczos:.1e} ({posterior.std_error:.1e}, "
                         f"{posterior.pairs}/{posterior.converged}) | {100 * (t_default / t_none - 1):.0f} % |")
    lines += ["", f"median extra cost of the posterior: {100 * np.median(ratios):.0f} % of the solve (target <= 50 %)", "",
              "### 2. Stopping: joint state + forcing windows, default solve()", "",
              "| steps | seed | success | outer loops | (J - J_min) / J_min | message |", "|---|---|---|---|---|---|"]
    for n_steps in (10, 20, 30):
        for seed in SEEDS:
            problem = joint_window(seed, n_steps)
            result = problem.solve(posterior_method="none")
            J_min = independent_minimum(problem)
            lines.append(f"| {n_steps} | {seed} | {result.success} | {len(result.outer)} | {(result.final.J - J_min) / J_min:.1e} | {result.message} |")
    lines += ["", "### 3. Quality control: 1e30, a NaN and 5 % of the observations off by 10 std (10-step state windows)", "",
              "| seed | RMSE without the bad obs | default QC | ratio | no background/analysis check (NaN only) | rejected (planted) | clean window: rejected |",
              "|---|---|---|---|---|---|---|"]
    from fourdvar.qc import QualityControl

    for seed in SEEDS:
        truth, xb, bad, without = planted(seed)
        B = Diagonal(1.0, size=40)
        reference = rmse(FourDVar(Lorenz96(40), without, xb=xb, B=B, qc=None).solve(), truth)
        checked = FourDVar(Lorenz96(40), bad, xb=xb, B=B).solve()
        unchecked = rmse(FourDVar(Lorenz96(40), bad, xb=xb, B=B, qc=QualityControl(background_check=None, analysis_check=None)).solve(), truth)
        planted_count = sum(slot.values.size for slot in bad) - sum(slot.values.size for slot in without)
        clean = state_window(seed).solve().qc.n_rejected
        lines.append(f"| {seed} | {reference:.4f} | {rmse(checked, truth):.4f} | {rmse(checked, truth) / reference:.3f} | "
                     f"{unchecked:.4f} | {checked.qc.n_rejected} ({planted_count}) | {clean} |")
    body = "\n".join(lines)
    print(body)
    results.record("Posterior accuracy, stopping and quality control", body,
                   command="taskset -c 1 python benchmarks/posterior_accuracy.py")


if __name__ == "__main__":
    main()
