"""The spin-up rule of the coarse-grained QG benchmark (benchmarks/qg_coarse.py): where a quantity reaches its plateau."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

_spec = importlib.util.spec_from_file_location("qg_coarse_benchmark", Path(__file__).resolve().parent.parent / "benchmarks" / "qg_coarse.py")
benchmark = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(benchmark)


def test_a_ramp_onto_a_plateau_reaches_it_at_the_first_block_within_two_stds():
    levels = np.array([1.0, 2.0, 3.0, 4.7, 5.0, 5.0, 5.1, 4.9, 5.0, 5.2, 4.8, 5.0])
    mean, std, reached = benchmark.plateau(levels, spinup_blocks=6)
    after = levels[6:]
    assert mean == after.mean() and std == after.std()
    assert abs(mean - 5.0) < 1e-14 and abs(std - np.sqrt(0.1 / 6)) < 1e-14
    assert reached == 5  # 4.7 lies 2.3 stds below 5.0; the next block, 5.0, is the first within two


def test_a_quantity_still_growing_after_the_spin_up_reaches_its_plateau_late():
    levels = np.linspace(1.0, 12.0, 12)
    mean, std, reached = benchmark.plateau(levels, spinup_blocks=6)
    assert abs(mean - 9.5) < 1e-14
    assert abs(std - np.sqrt(35 / 12)) < 1e-14
    assert reached == 7  # 6.0 lies 2.05 stds below 9.5, 7.0 within two: past the spin-up's 6 blocks
    assert 2 * reached > 6  # not settled
