"""Cost of writing one window's checkpoint late in a run relative to early in it.

    python benchmarks/checkpoint.py            # 10 and 500 windows
    python benchmarks/checkpoint.py --quick    # smoke test (10 and 50)

A run saves each completed window as its own file in the checkpoint directory
(:class:`fourdvar.app.checkpoint.Checkpoint`), so saving window ``n`` should cost
the same whatever ``n``.  We take one real window of a Lorenz-96 run (40 variables,
5 steps, 3 outer loops), fill two checkpoint directories with 9 and with 499 copies
of it, and time, batch against batch, saving the next window into each (the file
is removed between calls).  The ratio late / early is the number the issue asks
for; 1 means a constant cost per window.

For comparison the script times the scheme it replaces, rewriting the whole
result dataset after every window (``ResultRecorder.dataset`` + ``write_atomic``),
at the same two lengths: that ratio grows with the run.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

# The shared timing module, loaded by path; loading it takes this folder off sys.path
# and pins BLAS to one thread (see benchmarks/timing.py), so it comes first.
_spec = importlib.util.spec_from_file_location("benchmark_timing", os.path.join(os.path.dirname(os.path.abspath(__file__)), "timing.py"))
timing = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(timing)

from fourdvar.app.checkpoint import Checkpoint  # noqa: E402
from fourdvar.app.config import resolve_config  # noqa: E402
from fourdvar.app.plan import Plan  # noqa: E402
from fourdvar.app.results import ResultRecorder, config_text, write_atomic  # noqa: E402
from fourdvar.app.run import execute  # noqa: E402

CONFIG = {
    "seed": 1,
    "model": {"type": "lorenz96", "n_state": 40},
    "truth": {"spinup_steps": 100},
    "window": {"steps": 5, "cycles": 1},
    "assimilation": {"outer_loops": 3, "inner": {"max_iterations": 20}},
}


def one_window():
    """``(plan, row, state)`` of one real window."""
    plan = Plan.from_config(resolve_config(CONFIG, name="benchmark"))
    captured = []
    execute(plan, on_window=lambda row, state: captured.append((row, state)))
    return plan, *captured[0]


def filled_checkpoint(directory: Path, n_before: int, row, state, text: str) -> Checkpoint:
    checkpoint = Checkpoint(directory / "result.nc")
    checkpoint.acquire()
    for cycle in range(n_before):
        checkpoint.save(row, state.variables(), cycle, text)
    return checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 and 50 windows, fewer batches")
    args = parser.parse_args()
    early, late = 10, 50 if args.quick else 500
    n_batches, batch_seconds = (3, 0.05) if args.quick else (9, 0.3)

    print(timing.machine_header())
    plan, row, state = one_window()
    text = config_text(plan.config)
    with tempfile.TemporaryDirectory() as root:
        root = Path(root)
        checkpoints = {n: filled_checkpoint(root / f"n{n}", n - 1, row, state, text) for n in (early, late)}

        def save(n):
            checkpoint = checkpoints[n]
            target = checkpoint.directory / f"cycle_{n - 1:06d}.nc"

            def call():
                checkpoint.save(row, state.variables(), n - 1, text)
                target.unlink()
            return call

        per_window = timing.time_pair(save(early), save(late), n_batches, batch_seconds)

        def rewrite(n):
            recorder = ResultRecorder(plan.with_initial_params(plan.pb0, n_cycles=n, truth=None))  # no truth to slice
            recorder.rows.extend([row] * n)
            target = root / f"whole{n}.nc"
            return lambda: write_atomic(recorder.dataset(complete=False), target)

        whole = timing.time_pair(rewrite(early), rewrite(late), n_batches, batch_seconds)
        for checkpoint in checkpoints.values():
            checkpoint.remove()

    print(f"\nsaving the checkpoint of window n (median of {n_batches} interleaved batches)")
    print(f"{'scheme':<34}{f'n = {early}':>12}{f'n = {late}':>12}{'ratio':>9}")
    print(f"{'one file per window (this run)':<34}{per_window[0] * 1e3:>10.2f}ms{per_window[1] * 1e3:>10.2f}ms{per_window[1] / per_window[0]:>8.2f}x")
    print(f"{'whole result rewritten (before)':<34}{whole[0] * 1e3:>10.2f}ms{whole[1] * 1e3:>10.2f}ms{whole[1] / whole[0]:>8.2f}x")
    print(f"\nratio of write time at {late} windows / at {early} windows: {per_window[1] / per_window[0]:.2f}")


if __name__ == "__main__":
    sys.exit(main())
