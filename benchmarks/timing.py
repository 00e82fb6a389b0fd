"""Timing helpers shared by the benchmark scripts: medians of interleaved batches.

The scripts load this module by path before anything else, and loading it sets
them up: it takes this folder off ``sys.path`` (run as a script, the folder comes
first, and ``benchmarks/models.py`` would shadow the ``models`` package) and pins
BLAS to one thread unless the environment says otherwise.
"""

from __future__ import annotations

import ctypes
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != _HERE]
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
for _name in THREAD_VARIABLES:
    os.environ.setdefault(_name, "1")


def machine_header() -> str:
    """numpy and Python versions, CPU count and the BLAS thread settings, for a benchmark's output."""
    import numpy as np  # after the thread variables are set

    threads = ", ".join(f"{name}={os.environ.get(name)}" for name in THREAD_VARIABLES)
    return f"numpy {np.__version__}, python {platform.python_version()}, {os.cpu_count()} cpus\nthreads: {threads}"


def fix_malloc_thresholds() -> str:
    """Stop glibc from moving its mmap and trim thresholds while we measure.

    By default glibc serves a block of 128 KiB or more with a fresh ``mmap`` (and
    gives it back on ``free``) until a freed block raises the threshold, and it
    returns the top of the heap to the system once more than twice that is free.
    Temporaries of ~1 MB (a 32 x 4000 hidden layer) then cost hundreds of page
    faults per call or none, depending on what ran before: the local network at
    n = 4000 measured anywhere from 0.4x to 1.0x.  In a 4D-Var window the stored
    linearisations sit on the heap and TL/AD sweeps do not fault (measured), so we
    fix the thresholds to get that state reproducibly.  Blocks above 32 MiB (the
    2000-wide MLP's weight adjoint) are still mapped afresh each call.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return "malloc: default (not glibc)"
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    ok = libc.mallopt(M_MMAP_THRESHOLD, 32 << 20) and libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)
    return "malloc: glibc mmap threshold 32 MiB, trim threshold 1 GiB" if ok else "malloc: default (mallopt failed)"


def _calls_per_batch(fn: Callable[[], Any], batch_seconds: float, clock: Callable[[], float] = time.perf_counter) -> int:
    """How many calls of ``fn`` take about ``batch_seconds``."""
    calls = 1
    while True:
        start = clock()
        for _ in range(calls):
            fn()
        elapsed = clock() - start
        if elapsed >= batch_seconds / 4:
            return max(1, int(calls * batch_seconds / elapsed))
        calls *= 4


def _batch_time(fn: Callable[[], Any], calls: int, clock: Callable[[], float] = time.perf_counter) -> float:
    start = clock()
    for _ in range(calls):
        fn()
    return (clock() - start) / calls


def time_pair(first: Callable[[], Any], second: Callable[[], Any], n_batches: int, batch_seconds: float,
              clock: Callable[[], float] = time.perf_counter) -> tuple[float, float]:
    """Median seconds per call of ``first`` and of ``second``, batches interleaved
    so that a slow patch of the machine hits both; ``clock`` ``time.process_time`` counts
    the process's CPU seconds instead of the wall clock's."""
    first_calls = _calls_per_batch(first, batch_seconds, clock)
    second_calls = _calls_per_batch(second, batch_seconds, clock)
    first_times, second_times = [], []
    for _ in range(n_batches):
        first_times.append(_batch_time(first, first_calls, clock))
        second_times.append(_batch_time(second, second_calls, clock))
    return statistics.median(first_times), statistics.median(second_times)
