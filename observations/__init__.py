"""Observation operators with hand-coded TL and AD, and observation data sets.

Registered with the engine through the ``fourdvar.operators`` entry points in
``pyproject.toml``: ``identity``, ``subset``, ``random_subset``, ``linear``, ``square``, ``tanh``, and for
gridded 2-D states ``points``, ``grid_subset``, ``streamfunction_points``.
This package imports the engine (``fourdvar``) and never ``models``.
"""

from .grid2d import GridSubset, Points, PointOperator, StreamfunctionPoints
from .obsset import FILE_OPERATORS, ObservationSet, synthetic_observations
from .random_subset import RandomSubset
from .operators import (
    Identity,
    Linear,
    LinearLinearization,
    OperatorBase,
    PointwiseLinearization,
    PointwiseOperator,
    Square,
    Subset,
    Tanh,
    operator_from_spec,
    resolve_indices,
)

__all__ = [
    "Identity",
    "Subset",
    "RandomSubset",
    "Linear",
    "Square",
    "Tanh",
    "Points",
    "GridSubset",
    "StreamfunctionPoints",
    "PointOperator",
    "OperatorBase",
    "PointwiseOperator",
    "PointwiseLinearization",
    "LinearLinearization",
    "operator_from_spec",
    "resolve_indices",
    "ObservationSet",
    "synthetic_observations",
    "FILE_OPERATORS",
]
