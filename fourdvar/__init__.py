"""fourdvar: incremental 4D-Var with hand-coded tangent-linear and adjoint models."""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("fourdvar")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

from . import checks, registry
from .interfaces import Covariance, Model, ObservationOperator
from .model import ModelBase
from .registry import build_model, build_operator, register_model, register_operator

__all__ = [
    "__version__",
    "checks",
    "registry",
    "Model",
    "ModelBase",
    "ObservationOperator",
    "Covariance",
    "build_model",
    "build_operator",
    "register_model",
    "register_operator",
]
