"""How often the consistency suite says anything but PASS on correct models.

    python benchmarks/check_verdicts.py [SEEDS]      # default 20 seeds

Runs ``check_model`` and ``check_cost`` of :mod:`fourdvar.checks` on correct models
over ``SEEDS`` seeds each: the Lorenz-63 with parameters of ``tests/test_checks.py``
over 40- and 200-step windows, Lorenz-96 (forcing estimated) over 60- and 160-step
windows, and residual MLPs (relu, tanh, softplus) over 30-step windows; prints the
count of each verdict per case and every verdict that is not PASS.  The test suite
runs the 50-seed version of the shorter windows; this script is the wider survey.
"""

from __future__ import annotations

import collections
import importlib.util
import os
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("timing", os.path.join(_HERE, "timing.py"))
timing = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(timing)  # takes benchmarks/ off sys.path, pins BLAS threads

import numpy as np  # noqa: E402

from fourdvar import checks  # noqa: E402
from models import MLP  # noqa: E402

_spec = importlib.util.spec_from_file_location("test_checks", os.path.join(_HERE, "..", "tests", "test_checks.py"))
cases = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cases)


def survey(n_seeds: int):
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    others = []

    def record(case, seed, results):
        for result in results:
            counts[case][result.status] += 1
            if not result.passed:
                others.append(f"{case} seed {seed}: {result}")

    for seed in range(n_seeds):
        for steps in (40, 200):
            cost, xb, pb, rng = cases.l63_cost(seed, n_steps=steps)
            record(f"lorenz63, {steps} steps", seed,
                   checks.check_model(cost.model, xb, pb, rng, n_steps=steps) + checks.check_cost(cost, xb, pb, ["state", "params"], rng))
        for steps in (60, 160):
            cost, xb, pb, rng = cases.l96_cost(seed, n_steps=steps)
            record(f"lorenz96, {steps} steps", seed,
                   checks.check_model(cost.model, xb, pb, rng, n_steps=steps) + checks.check_cost(cost, xb, pb, ["state", "params"], rng))
        rng = np.random.default_rng(seed)
        for activation in ("relu", "tanh", "softplus"):
            model = MLP([8, 16, 8], [activation, "identity"], residual=True)
            p = 0.7 * rng.standard_normal(model.n_params) / np.sqrt(8)
            record(f"mlp {activation}, 30 steps", seed, checks.check_model(model, rng.standard_normal(8), p, rng, n_steps=30))
    return counts, others


def main() -> None:
    n_seeds = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    print(timing.machine_header())
    start = time.perf_counter()
    counts, others = survey(n_seeds)
    print(f"{n_seeds} seeds, {time.perf_counter() - start:.0f} s")
    print(f"{'case':<24} {'PASS':>6} {'FAIL':>6} {'INCONCLUSIVE':>12}")
    for case, counter in counts.items():
        print(f"{case:<24} {counter[checks.PASS]:>6} {counter[checks.FAIL]:>6} {counter[checks.INCONCLUSIVE]:>12}")
    total = sum(sum(c.values()) for c in counts.values())
    print(f"{total} checks, {len(others)} not PASS")
    for line in others:
        print(line)


if __name__ == "__main__":
    main()
