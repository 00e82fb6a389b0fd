"""The least sizes a model's options imply, read before the model is built.

A constructor given ``nx: 100000`` or a layer of a billion channels allocates for minutes
before it could be refused; :func:`least_sizes` reads the options alone, by the conventions
the application already relies on, and gives lower bounds of what the model will hold:

    n_state      >= the option ``n_state``, and >= nx * ny of a 2-D grid (``ny`` defaults to ``nx``)
    n_params     >= sum_i w_i w_{i+1} of an integer list w (a network's layer widths: the weights
                    of dense layers, a convolution's of 1 x 1 kernels)
    activations  >= (nx * ny) sum_i w_i per step for widths over a grid (channels at every point)

An observation operator's ``stations`` (a number of points drawn at random) is the least
number of values it observes per step (:func:`least_observed`).

A nested component (a mapping with its own ``type``: a hybrid's physics and correction) adds
its parameters and activations; its state bounds the whole one's.  The plan puts these bounds
into the same memory estimate it applies once the model is built
(:meth:`fourdvar.app.plan.Plan.memory_terms`), so an option is refused only when even the least
run it implies cannot fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

__all__ = ["Sizes", "least_observed", "least_sizes"]


@dataclass(frozen=True)
class Sizes:
    """Lower bounds of a model's ``n_state``, ``n_params`` and activations per step, with the
    option that sets the largest of them (``key``, e.g. ``model.nx``, and its value shown)."""

    n_state: float = 0.0
    n_params: float = 0.0
    activations: float = 0.0
    key: str = ""
    shown: str = ""

    def largest(self) -> float:
        return max(self.n_state, self.n_params, self.activations)


def _size(value) -> float | None:
    """``value`` as a size: a positive whole number (``1e9`` included), else ``None`` (the constructor judges it)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) and value >= 1 and value == int(value) else None


def _widths(value) -> list[float] | None:
    """An integer list of at least two sizes (a network's layer widths), else ``None``."""
    if not isinstance(value, (list, tuple)) or len(value) < 2:
        return None
    sizes = [_size(item) for item in value]
    return None if any(size is None for size in sizes) else sizes


def least_sizes(options: Mapping, path: str) -> Sizes:
    """The :class:`Sizes` a component's ``options`` imply at least (module docstring); ``path`` its YAML key."""
    nx, ny = _size(options.get("nx")), _size(options.get("ny"))
    grid = nx * (ny or nx) if nx else 0.0
    candidates = [Sizes(n_state=grid, key=f"{path}.nx", shown=f"{options.get('nx')} (a grid of {nx:.0f} x {(ny or nx):.0f})")] if nx else []
    n_state = _size(options.get("n_state"))
    if n_state:
        candidates.append(Sizes(n_state=n_state, key=f"{path}.n_state", shown=f"{n_state:.0f} state values"))
    n_params = activations = 0.0
    for key, value in options.items():
        widths = _widths(value)
        if widths is not None:
            weights = sum(a * b for a, b in zip(widths, widths[1:]))
            per_step = grid * sum(widths)
            n_params, activations = n_params + weights, activations + per_step
            candidates.append(Sizes(n_params=weights, activations=per_step, key=f"{path}.{key}", shown=f"layer widths {value}"))
        elif isinstance(value, Mapping) and "type" in value:
            inner = least_sizes(value, f"{path}.{key}")
            n_params, activations = n_params + inner.n_params, activations + inner.activations
            candidates.append(inner)
    if not candidates:
        return Sizes()
    top = max(candidates, key=Sizes.largest)
    return Sizes(max(c.n_state for c in candidates), n_params, activations, top.key, top.shown)


def least_observed(options: Mapping) -> float:
    """The least number of values an observation operator's ``options`` observe per step: its ``stations``, else 0."""
    return _size(options.get("stations")) or 0.0
