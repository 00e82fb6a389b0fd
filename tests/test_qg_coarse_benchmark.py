"""The coarse-grained QG benchmark (benchmarks/qg_coarse.py): where a quantity reaches its plateau, and its verdict."""

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


def _verdict(physics, online, offline):
    score = {"physics": physics, "online tendency": online, "online resolvent": online, "offline": offline}
    timing = {"cpu_minutes": 1.0, "wall_minutes": 1.0, "load_before": 0.0, "load_after": 0.0}
    return benchmark.table({1: (score, timing)})[1]


def test_an_online_run_beats_an_offline_fit_only_when_the_fit_beats_the_physics():
    assert _verdict(physics=8.0, online=6.0, offline=7.0) == []
    assert any("worse than offline" in failure for failure in _verdict(physics=8.0, online=7.0, offline=6.0))
    unstable = _verdict(physics=8.0, online=7.0, offline=20.0)
    assert len(unstable) == 1 and "no reference" in unstable[0]
    assert any("no better than physics" in failure for failure in _verdict(physics=6.0, online=6.5, offline=20.0))
