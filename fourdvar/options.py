"""The options of a 4D-Var solve as one frozen object, :class:`SolverOptions`.

One object travels from the caller through :meth:`fourdvar.FourDVar.solve`, the
cycling loop (:mod:`fourdvar.cycling`), the ensemble's members and the quasi-static
stages (:mod:`fourdvar.quasistatic`) to :func:`fourdvar.minimize.minimize_4dvar`::

    options = SolverOptions(outer_loops=3, max_iterations=40)
    FourDVar(...).solve(options=options)
    FourDVar(...).solve(outer_loops=3, max_iterations=40)        # the same solve
    options.replace(tolerance=1e-5)                              # a stage's looser target
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

from .posterior import POSTERIOR_METHODS

__all__ = ["SolverOptions", "AS_BUILT", "PRECONDITIONERS"]

PRECONDITIONERS = ("none", "spectral")


class _AsBuilt:
    """The quality control a problem was built with: one instance, kept one through pickling."""

    def __reduce__(self) -> str:
        return "AS_BUILT"

    __repr__ = __reduce__


AS_BUILT = _AsBuilt()


@dataclass(frozen=True)
class SolverOptions:
    """How one window is minimised, checked when made; :func:`fourdvar.minimize.minimize_4dvar` documents
    each option.  ``tolerance``: the relative accuracy of ``J`` the outer loops stop at;
    ``posterior_accuracy``: the relative error of the posterior std a posterior Lanczos is run to;
    ``qc``: a :class:`fourdvar.qc.QualityControl` other than the problem was built with, or ``None``
    for none (default :data:`AS_BUILT`).

    Examples
    --------
    >>> options = SolverOptions(outer_loops=3)
    >>> options.replace(tolerance=1e-5).outer_loops, options.tolerance
    (3, 1e-08)
    >>> SolverOptions.of(options, max_iterations=20).max_iterations
    20
    """

    outer_loops: int = 50
    method: str = "lanczos"
    max_iterations: int = 50
    gradient_reduction: float = 1e-2
    transform: bool = True
    callback: Callable | None = None
    backtracking: bool = True
    tolerance: float = 1e-8
    preconditioner: str | None = None
    posterior_rank: int | None = None
    posterior_method: str = "auto"
    posterior_accuracy: float = 0.01
    posterior_iterations: int | None = None
    qc: object = AS_BUILT

    def __post_init__(self):
        if self.outer_loops < 1:
            raise ValueError(f"outer_loops must be at least 1, got {self.outer_loops}")
        if not self.tolerance >= 0:
            raise ValueError(f"tolerance must be >= 0, got {self.tolerance}")
        if self.preconditioner not in PRECONDITIONERS + (None,):
            choices = ", ".join(PRECONDITIONERS)
            raise ValueError(f"unknown preconditioner {self.preconditioner!r}; choose one of {choices}")
        if self.preconditioner == "spectral" and self.method != "lanczos":
            raise ValueError(f"preconditioner 'spectral' needs method 'lanczos', not {self.method!r}")
        if self.method == "lanczos" and not self.transform:
            raise ValueError("method 'lanczos' works in the transformed control variables: it needs transform=True")
        if self.posterior_rank is not None and self.posterior_rank < 1:
            raise ValueError(f"posterior_rank must be at least 1, got {self.posterior_rank}")
        methods = ", ".join(POSTERIOR_METHODS + ("none",))
        if self.posterior_method not in POSTERIOR_METHODS + ("none",):
            raise ValueError(f"unknown posterior method {self.posterior_method!r}; choose one of {methods}")
        if not self.posterior_accuracy > 0:
            raise ValueError(f"posterior_accuracy must be > 0, got {self.posterior_accuracy}")

    def replace(self, **changes) -> "SolverOptions":
        """These options with ``changes``; a name that is no option raises ``TypeError`` naming it."""
        unknown = sorted(set(changes) - set(self.names()))
        if unknown:
            raise TypeError(f"unknown solver option(s) {', '.join(unknown)}; the options are: {', '.join(self.names())}")
        return dataclasses.replace(self, **changes)

    def problem_qc(self) -> dict:
        """The keyword that builds a problem with this quality control (``{}`` when :data:`AS_BUILT`),
        so that its observations are screened once, as they are solved."""
        return {} if self.qc is AS_BUILT else {"qc": self.qc}

    @classmethod
    def of(cls, options: "SolverOptions | None" = None, **changes) -> "SolverOptions":
        """``options`` (default: the defaults) with the keyword ``changes`` (every driver takes both forms)."""
        if options is not None and not isinstance(options, SolverOptions):
            raise TypeError(f"options must be a SolverOptions, got {type(options).__name__}")
        return (options or cls()).replace(**changes)

    @classmethod
    def names(cls) -> list[str]:
        """The options' names, in order."""
        return [field.name for field in dataclasses.fields(cls)]
