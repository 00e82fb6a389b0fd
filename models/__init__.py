"""Concrete forecast models with hand-coded tangent-linear and adjoint steps.

Registered with the engine through the ``fourdvar.models`` entry points in
``pyproject.toml``: ``mlp``, ``lorenz96``, ``lorenz96_two_scale``, ``local_mlp``, ``hybrid``, ``qg``,
``conv_surrogate``, ``tendency_hybrid``, ``linear_damping``, ``bottom_drag``, ``qg_coarse_grained``.
"""

from .convnet import ConvNet, ConvSurrogate
from .damping import BottomDrag, LinearDamping
from .hybrid import Hybrid, TendencyHybrid
from .local_mlp import LocalMLP
from .lorenz96 import Lorenz96
from .lorenz96_two_scale import Lorenz96TwoScale
from .mlp import MLP
from .qg import QG
from .qg_coarse import CoarseGrainedQG

__all__ = ["MLP", "Lorenz96", "Lorenz96TwoScale", "LocalMLP", "Hybrid", "QG", "ConvNet", "ConvSurrogate", "TendencyHybrid", "LinearDamping", "BottomDrag", "CoarseGrainedQG"]
