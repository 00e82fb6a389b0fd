"""Climatological pseudo-observations of the grid points a layout leaves unobserved.

With a learned model and the same points unobserved at every step, nothing ties those
points to the system's climate: the joint analysis of state and weights can move them
out of the observed range, where the network saturates and tells them apart from the
observed points, and they drift away for good.  The observations themselves give the
climate of a homogeneous system such as Lorenz-96::

    mu      = mean of all observed values y
    sigma_c = sqrt(var(y) - mean(sigma_o^2))          (the truth's spread, noise removed)

and at every ``every``-th step (each window's first step when ``every`` is the window
length) the points the slot there leaves out are added as pseudo-observations
``y_i = mu`` with error std ``sigma_c``: a weak prior, one per unobserved point and window,
that only forbids the climate to be left.  The slot's operator becomes the subset of
its points and the unobserved ones, in increasing order.
"""

from __future__ import annotations

import numpy as np

from fourdvar.covariances import Diagonal
from fourdvar.interfaces import ObservationSlot

from .operators import Subset

__all__ = ["climatology", "with_climatology"]


def climatology(slots) -> tuple[float, float]:
    """``(mu, sigma_c)`` of the observed values of subset-type ``slots`` (module docstring)."""
    values = np.concatenate([slot.values for slot in slots])
    noise = np.concatenate([np.broadcast_to(slot.covariance.std, slot.values.shape) for slot in slots]) ** 2
    spread = values.var() - noise.mean()
    if spread <= 0:
        raise ValueError(f"climatology: the observed values vary less than their noise (variance {values.var():.3g}, noise {noise.mean():.3g})")
    return float(values.mean()), float(np.sqrt(spread))


def _check(slot) -> None:
    if not isinstance(slot.operator, Subset) or not isinstance(slot.covariance, Diagonal):
        raise ValueError(f"climatology: the slot at step {slot.step} has a {type(slot.operator).__name__} operator and a "
                         f"{type(slot.covariance).__name__} R; climatological pseudo-observations need subsets of the grid with a diagonal R")


def with_climatology(observations, every: int):
    """``observations`` with the climatological pseudo-observations added at the steps
    ``0, every, 2 every, ...`` (a set of the same class)."""
    if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
        raise ValueError(f"climatology: every must be an integer >= 1, got {every!r}")
    slots = list(observations)
    for slot in slots:
        _check(slot)
    mu, sigma_c = climatology(slots)
    return type(observations)([_with_unobserved(slot, mu, sigma_c) if slot.step % every == 0 else slot for slot in slots])


def _with_unobserved(slot, mu: float, sigma_c: float) -> ObservationSlot:
    """The slot with every point it leaves out observed as ``mu`` with std ``sigma_c``."""
    n = slot.operator.n_state
    seen = slot.operator.indices
    unseen = np.setdiff1d(np.arange(n), seen)
    if unseen.size == 0:
        return slot
    indices = np.concatenate([seen, unseen])
    order = np.argsort(indices)
    values = np.concatenate([slot.values, np.full(unseen.size, mu)])[order]
    std = np.concatenate([np.broadcast_to(slot.covariance.std, seen.shape), np.full(unseen.size, sigma_c)])[order]
    return ObservationSlot(slot.step, values, Subset(n, indices[order]), Diagonal(std))
