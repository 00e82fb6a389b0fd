"""fourdvar: incremental 4D-Var with hand-coded tangent-linear and adjoint models.

The public API for one window::

    from fourdvar import FourDVar
    result = FourDVar(model, observations, xb=xb, B=B, pb=pb, P=P, control="both").solve()

Building blocks: :mod:`fourdvar.covariances` (B, P, R) and
:mod:`fourdvar.covariances2d` (on a periodic 2-D grid), :mod:`fourdvar.cost`
(``J`` and ``Jq``), :mod:`fourdvar.minimize` (inner and outer loops),
:mod:`fourdvar.checks` (adjoint, Taylor and gradient tests) and
:mod:`fourdvar.registry` (models and operators by name).
"""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("fourdvar")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

from . import checks, covariances, covariances2d, registry
from .assimilation import FourDVar
from .cost import Control, CostTerms, FourDVarCost, IncrementalCost
from .interfaces import Covariance, Model, ObservationOperator, ObservationSlot
from .minimize import AssimilationResult, minimize_4dvar, minimize_inner
from .model import ModelBase
from .options import SolverOptions
from .registry import build_model, build_operator, register_model, register_operator
from .window import DivergenceError, ForcedWindowLinearization, WindowLinearization, forced_forecast, forecast

__all__ = ["__version__", "FourDVar", "AssimilationResult", "SolverOptions", "FourDVarCost", "IncrementalCost",
           "CostTerms", "Control", "minimize_4dvar", "minimize_inner", "WindowLinearization",
           "ForcedWindowLinearization", "forecast", "forced_forecast", "DivergenceError", "checks", "covariances",
           "covariances2d", "registry", "Model", "ModelBase", "ObservationOperator", "ObservationSlot", "Covariance",
           "build_model", "build_operator", "register_model", "register_operator"]
