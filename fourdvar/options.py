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

from .minimize import DEFAULT_OUTER_LOOPS, DEFAULT_TOLERANCE, POSTERIOR_ACCURACY

__all__ = ["SolverOptions", "AS_BUILT"]


class _AsBuilt:
    """The quality control a problem was built with: one instance, kept one through pickling."""

    def __reduce__(self) -> str:
        return "AS_BUILT"

    __repr__ = __reduce__


AS_BUILT = _AsBuilt()


@dataclass(frozen=True)
class SolverOptions:
    """How one window is minimised; :func:`fourdvar.minimize.minimize_4dvar` documents each option.

    ``qc``: a :class:`fourdvar.qc.QualityControl` other than the problem was built with, or
    ``None`` for none (default :data:`AS_BUILT`).

    Examples
    --------
    >>> options = SolverOptions(outer_loops=3)
    >>> options.replace(tolerance=1e-5).outer_loops, options.tolerance
    (3, 1e-08)
    >>> SolverOptions.of(options, max_iterations=20).max_iterations
    20
    """

    outer_loops: int = DEFAULT_OUTER_LOOPS
    method: str = "lanczos"
    max_iterations: int = 50
    gradient_reduction: float = 1e-2
    transform: bool = True
    callback: Callable | None = None
    backtracking: bool = True
    tolerance: float = DEFAULT_TOLERANCE
    preconditioner: str | None = None
    posterior_rank: int | None = None
    posterior_method: str = "auto"
    posterior_accuracy: float = POSTERIOR_ACCURACY
    posterior_iterations: int | None = None
    qc: object = AS_BUILT

    def replace(self, **changes) -> "SolverOptions":
        """These options with ``changes``; a name that is no option raises ``TypeError`` naming it."""
        unknown = sorted(set(changes) - set(self.names()))
        if unknown:
            raise TypeError(f"unknown solver option(s) {', '.join(unknown)}; the options are: {', '.join(self.names())}")
        return dataclasses.replace(self, **changes)

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

    def minimize_keywords(self) -> dict:
        """The keywords of :func:`fourdvar.minimize.minimize_4dvar` (every option but ``qc``)."""
        return {name: getattr(self, name) for name in self.names() if name != "qc"}
