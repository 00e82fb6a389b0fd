"""A random subset of the grid points observed, drawn again every ``move_every`` steps or fixed.

``RandomSubset(n_state, fraction=None, count=None, seed=0, move_every=None)`` observes
``p`` distinct grid points (``count``, or ``round(fraction * n_state)``) drawn uniformly
without replacement.  The points observed at model step ``t`` are::

    i(t) = sort(choice(n_state, p, replace=False))   drawn from the stream (seed, t // move_every)

so the same seed gives the same networks, and ``move_every: 1`` draws a new subset at
every observation time (the layout of Brajard et al. 2020, their ``sample: random``);
without ``move_every`` the subset drawn from ``(seed, 0)`` is kept at every step (a
fixed network).  :meth:`RandomSubset.at_step` gives the operator of step ``t``, a plain
:class:`~observations.operators.Subset` (so observation files store it as ``subset``).
The operator itself observes ``i(0)``; TL and AD are the subset's gather and scatter.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from .operators import Subset, _check_n_state

__all__ = ["RandomSubset", "random_indices"]


def random_indices(n_state: int, count: int, seed: int, draw: int) -> np.ndarray:
    """The ``count`` sorted distinct points of draw number ``draw`` from ``seed``."""
    rng = np.random.default_rng([seed, draw])
    return np.sort(rng.choice(n_state, size=count, replace=False))


def _count(n_state: int, fraction: Any, count: Any) -> int:
    if (fraction is None) == (count is None):
        raise ValueError("random_subset operator: give the observed fraction (fraction: 0.5) or the number of points (count: 20), one of them")
    if count is not None:
        if isinstance(count, bool) or not isinstance(count, numbers.Integral) or not 1 <= count <= n_state:
            raise ValueError(f"random_subset operator: count must be an integer in [1, n_state={n_state}], got {count!r}")
        return int(count)
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0 < fraction <= 1:
        raise ValueError(f"random_subset operator: fraction must be a number in (0, 1], got {fraction!r}")
    return max(1, int(round(fraction * n_state)))


def _non_negative_int(value: Any, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"random_subset operator: {what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class RandomSubset(Subset):
    """``RandomSubset(n_state, fraction=None, count=None, seed=0, move_every=None)``:
    ``p`` random grid points, the same at every step or drawn again every ``move_every``
    steps (module docstring).

    ::

        NL   y  = x[i(t)]        TL   dy = dx[i(t)]        AD   ax = 0;  ax[i(t)] += ay

    Examples
    --------
    >>> H = RandomSubset(40, fraction=0.5, seed=3, move_every=1)
    >>> H.n_obs, H.at_step(7).n_obs
    (20, 20)
    >>> bool((H.at_step(7).indices == H.at_step(7).indices).all())
    True
    """

    name = "random_subset"

    def __init__(self, n_state: int, fraction: float | None = None, count: int | None = None, seed: int = 0,
                 move_every: int | None = None):
        n_state = _check_n_state(n_state, "random_subset operator")
        self.count = _count(n_state, fraction, count)
        self.fraction = fraction
        self.seed = _non_negative_int(seed, "seed", 0)
        self.move_every = None if move_every is None else _non_negative_int(move_every, "move_every", 1)
        super().__init__(n_state, random_indices(n_state, self.count, self.seed, 0))

    def indices_at(self, step: int) -> np.ndarray:
        """``i(step)``: the points observed at model step ``step``."""
        draw = 0 if self.move_every is None else int(step) // self.move_every
        return self.indices if draw == 0 else random_indices(self.n_state, self.count, self.seed, draw)

    def at_step(self, step: int) -> Subset:
        """The operator observing at model step ``step``: a :class:`Subset` of ``i(step)``."""
        return Subset(self.n_state, self.indices_at(step))

    def to_spec(self) -> dict:
        size = {"count": self.count} if self.fraction is None else {"fraction": self.fraction}
        return {"type": self.name, "n_state": self.n_state, **size, "seed": self.seed, "move_every": self.move_every}

    def __repr__(self) -> str:
        how = "fixed" if self.move_every is None else f"drawn again every {self.move_every} steps"
        return f"RandomSubset(n_state={self.n_state}, {self.count} points, seed={self.seed}, {how})"
