"""Compiled kernels: numba's ``njit`` with its on-disk cache, a cache that never fails a run.

The first call of a kernel compiles it and writes the machine code next to the module
(``__pycache__``) so that later processes load it instead of compiling.  That write is
an optimisation: on a full disk, under a file-size limit (``ulimit -f``) or in a
read-only tree it is skipped, and the run goes on with the code compiled in memory.
"""

from __future__ import annotations

from numba import njit


def compiled(function):
    """``njit(cache=True)(function)`` whose cache writes may fail without failing the call."""
    dispatcher = njit(cache=True)(function)
    cache = dispatcher._cache  # numba's FunctionCache: save_overload(signature, compile result)
    save = cache.save_overload

    def save_if_possible(signature, data):
        try:
            save(signature, data)
        except OSError:
            pass

    cache.save_overload = save_if_possible
    return dispatcher
