"""What the API reference documents: its pages, their modules and the public names.

Shared by ``docs/gen_pages.py`` (which writes the reference pages when the site is
built) and ``tests/test_docs.py`` (which checks that every public name is on a page
with a docstring of its own).

A *public name* of a package is a name in its ``__all__`` (or, without one, a
non-underscore class or function its ``__init__`` defines or imports); a public name
of a module is a name in the module's ``__all__`` (or, without one, a non-underscore
class or function defined in the module).  Every module whose dotted name has no
part starting with an underscore is on a page.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
from types import ModuleType

#: page -> (title, package, what the page covers)
PAGES = {
    "engine": ("Engine", "fourdvar", "The engine: interfaces, covariances, costs, windows, minimisation, "
               "posterior, cycling, ensembles and checks. It knows no concrete model, YAML, NetCDF or Dask."),
    "app": ("Application", "fourdvar.app", "The application layer: configuration, plans, runs and sweeps, "
            "result files, diagnostics, figures and the command line."),
    "models": ("Models", "models", "Concrete forecast models with hand-coded tangent-linear and adjoint steps."),
    "observations": ("Observations", "observations", "Observation operators with TL and AD, and observation sets."),
}


def page_modules(page: str) -> list[str]:
    """The dotted names of the modules documented on ``page``, the package first."""
    package = PAGES[page][1]
    root = importlib.import_module(package)
    names = [package]
    for info in pkgutil.walk_packages(root.__path__, package + "."):
        parts = info.name.split(".")
        if any(part.startswith("_") for part in parts):
            continue
        if page == "engine" and info.name.startswith("fourdvar.app"):
            continue
        names.append(info.name)
    return names


def is_package(module: ModuleType) -> bool:
    return hasattr(module, "__path__")


def public_names(module: ModuleType) -> list[str]:
    """The public names of a package or module (see the module docstring)."""
    declared = getattr(module, "__all__", None)
    if declared is not None:
        return [name for name in declared if not name.startswith("__")]
    return [
        name for name, value in vars(module).items()
        if not name.startswith("_") and (inspect.isclass(value) or inspect.isfunction(value))
        and (is_package(module) or getattr(value, "__module__", None) == module.__name__)
    ]


def needs_docstring(value) -> bool:
    """Classes, functions and modules carry a docstring; constants are described by their module."""
    return inspect.isclass(value) or inspect.isroutine(value) or inspect.ismodule(value)


def own_docstring(value) -> str:
    """The object's own docstring (not one inherited from a base class), stripped."""
    doc = value.__dict__.get("__doc__") if inspect.isclass(value) else getattr(value, "__doc__", None)
    if inspect.isclass(value) and dataclasses.is_dataclass(value) and (doc or "").startswith(f"{value.__name__}("):
        return ""  # the signature dataclasses write when the class has no docstring
    return (doc or "").strip()


def home_module(value, fallback: str) -> str:
    """The module whose page documents ``value``: where it is defined."""
    if inspect.ismodule(value):
        return value.__name__
    return getattr(value, "__module__", None) or fallback


def summary(value) -> str:
    """The first line of the object's own docstring."""
    text = own_docstring(value)
    return text.splitlines()[0] if text else ""


def undocumented(module: ModuleType) -> list[str]:
    """The public names of ``module`` (classes, functions, modules) without a docstring of their own."""
    return [
        f"{module.__name__}.{name}" for name in public_names(module)
        if needs_docstring(getattr(module, name)) and not own_docstring(getattr(module, name))
    ]
