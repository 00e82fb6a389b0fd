"""Name -> class tables for models and observation operators.

The engine never imports ``models`` or ``observations`` by name.  Concrete
classes reach it in one of three ways, tried in this order:

1. ``register_model("name")`` / ``register_operator("name")`` called by user code;
2. the entry-point groups ``fourdvar.models`` and ``fourdvar.operators`` of any
   installed distribution (this project's own models are found this way, and a
   user's package can add entries to the same groups);
3. a dotted reference ``"package.module:ClassName"``, imported on demand, so a
   model in a user's own module works from YAML without registering anything: the
   module is looked for on ``sys.path`` and then in the directories of
   :func:`search_directories` (the command line gives the configuration's own).

A component is built from a mapping whose ``type`` names the class and whose
other keys are the constructor's keyword arguments.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import importlib
import inspect
import os
import sys
from importlib.metadata import entry_points
from typing import Any, Callable, Mapping

__all__ = [
    "RegistryError", "register_model", "register_operator", "model_class", "operator_class", "build_model",
    "build_operator", "available_models", "available_operators", "observation_set_class", "registered_names_only",
    "search_directories",
]

_GROUPS = {"model": "fourdvar.models", "operator": "fourdvar.operators",
           "observation set": "fourdvar.observation_sets"}
#: The methods a class must have to be built as a model or an operator (the interfaces of
#: :mod:`fourdvar.interfaces`): a ``type`` naming anything else is refused before it is called.
_METHODS = {
    "model": ("step", "linearize", "init_params"),
    "operator": ("apply", "apply_tl", "apply_ad", "linearize"),
}
_REGISTERED: dict[str, dict[str, type]] = {"model": {}, "operator": {}}
_IMPORTS_ALLOWED = contextvars.ContextVar("fourdvar_registry_imports_allowed", default=True)
_SEARCHED = contextvars.ContextVar("fourdvar_registry_searched", default=())
#: Directories a "cannot import" message lists before it says how many more it looked in.
_LISTED = 3


@contextlib.contextmanager
def _setting(variable: contextvars.ContextVar, value):
    """Within this block, ``variable`` is ``value``."""
    token = variable.set(value)
    try:
        yield
    finally:
        variable.reset(token)


def search_directories(directories):
    """Within this block, a ``module:Class`` whose module is not on ``sys.path`` is also looked
    for in ``directories`` (``module.py`` or a package ``module/``); the one holding it is
    added to ``sys.path``."""
    return _setting(_SEARCHED, tuple(os.path.abspath(directory) for directory in directories))


def _shown(name: str, limit: int = 80) -> str:
    text = repr(name)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


class RegistryError(LookupError):
    """A ``type`` that names no known or importable class."""


def _register(kind: str, name: str) -> Callable[[type], type]:
    def decorator(cls: type) -> type:
        _REGISTERED[kind][name] = cls
        return cls

    return decorator


def register_model(name: str) -> Callable[[type], type]:
    """Class decorator: make ``cls`` available as ``type: name``."""
    return _register("model", name)


def register_operator(name: str) -> Callable[[type], type]:
    """Class decorator: make an observation operator available as ``type: name``."""
    return _register("operator", name)


def _entry_points(kind: str) -> dict:
    return {ep.name: ep for ep in entry_points(group=_GROUPS[kind])}


def _available(kind: str) -> list[str]:
    return sorted(set(_REGISTERED[kind]) | set(_entry_points(kind)))


def available_models() -> list[str]:
    """The model names ``type:`` can take: registered names and installed entry points, sorted.

    >>> "lorenz96" in available_models()
    True
    """
    return _available("model")


def available_operators() -> list[str]:
    """The observation-operator names ``type:`` can take, found as :func:`available_models` finds the models'.

    >>> "subset" in available_operators()
    True
    """
    return _available("operator")


def _import_reference(reference: str, kind: str) -> type:
    module_name, _, attribute = reference.partition(":")
    top = module_name.split(".")[0]
    try:
        module = _import(module_name, top)
    except ImportError as error:
        interpreter = tuple(os.path.abspath(prefix) for prefix in {sys.prefix, sys.base_prefix})
        looked = list(dict.fromkeys([*_SEARCHED.get(), *(os.path.abspath(entry or os.curdir) for entry in sys.path)]))
        looked = [path for path in looked if not path.startswith(interpreter)]
        listed = ", ".join(looked[:_LISTED]) + (f" and {len(looked) - _LISTED} more" if len(looked) > _LISTED else "")
        cause = "" if isinstance(error, ModuleNotFoundError) and error.name == top else f" ({' '.join(str(error).split())[:160]})"
        raise RegistryError(
            f"{kind} type {_shown(reference)}: cannot import module {_shown(module_name)}{cause}; looked in "
            f"{listed or 'no directory of yours'} and the installed packages; put {top}.py beside the configuration, "
            f"or add the directory holding {top}.py to PYTHONPATH, or install it as a package"
        ) from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise RegistryError(f"{kind} type {_shown(reference)}: module {_shown(module_name)} has no attribute {_shown(attribute)}") from None


def _import(module_name: str, top: str):
    """Import ``module_name``; if its top-level package is missing, from a directory of :func:`search_directories`."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != top:
            raise
        for directory in _SEARCHED.get():
            if os.path.isfile(os.path.join(directory, top + ".py")) or os.path.isfile(os.path.join(directory, top, "__init__.py")):
                if directory not in sys.path:
                    sys.path.insert(0, directory)
                importlib.invalidate_caches()
                return importlib.import_module(module_name)
        raise


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _checked(kind: str, name: str, cls) -> type:
    """``cls`` if it is a class implementing the ``kind`` interface; refused otherwise."""
    if not isinstance(cls, type):
        raise RegistryError(f"{kind} type {_shown(name)} is not a class (a {type(cls).__name__}); it must name {_article(kind)} {kind} class")
    missing = [method for method in _METHODS[kind] if not callable(getattr(cls, method, None))]
    if missing:
        raise RegistryError(f"{kind} type {_shown(name)} is not {_article(kind)} {kind} class: it has no {', '.join(missing)}")
    return cls


def registered_names_only():
    """Within this block, ``module:Class`` references are refused (nested ones, such as a
    hybrid's ``physics``, included): only registered and installed names build.  For
    input from an untrusted source, such as a result file someone sent."""
    return _setting(_IMPORTS_ALLOWED, False)


def _lookup(kind: str, name: str) -> type:
    return _checked(kind, name, _find(kind, name))


def _find(kind: str, name: str) -> type:
    if not isinstance(name, str) or not name:
        raise RegistryError(f"{kind} type must be a non-empty string, got {_shown(name)}")
    if ":" in name:
        if not _IMPORTS_ALLOWED.get():
            raise RegistryError(f"{kind} type {_shown(name)}: importing modules named in this input is not allowed here")
        return _import_reference(name, kind)
    if name in _REGISTERED[kind]:
        return _REGISTERED[kind][name]
    points = _entry_points(kind)
    if name in points:
        return _load(points[name], f"{kind} type {name!r}")
    known = _available(kind)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise RegistryError(
        f"unknown {kind} type {_shown(name)}{hint} (known: {', '.join(known) or 'none'}; "
        f"or give 'package.module:ClassName')"
    )


def model_class(name: str) -> type:
    """The model class called ``name``: a registered name, an entry point or ``"package.module:Class"``; a
    :class:`RegistryError` when it names no known or importable class with the model interface.

    >>> model_class("lorenz96")
    <class 'models.lorenz96.Lorenz96'>
    """
    return _lookup("model", name)


def operator_class(name: str) -> type:
    """The observation-operator class called ``name``, resolved and checked as :func:`model_class` does.

    >>> operator_class("identity")
    <class 'observations.operators.Identity'>
    """
    return _lookup("operator", name)


def _build(kind: str, spec: Any) -> Any:
    if not isinstance(spec, Mapping):
        raise TypeError(f"a {kind} is given as a mapping with a 'type' key, got {type(spec).__name__}")
    if "type" not in spec:
        raise KeyError(f"{kind} mapping has no 'type' key (keys: {', '.join(map(str, spec)) or 'none'})")
    options = {key: value for key, value in spec.items() if key != "type"}
    cls = _lookup(kind, spec["type"])
    _check_options(cls, options)
    return cls(**options)


def _check_options(cls: type, options: Mapping[str, Any]) -> None:
    """A ``TypeError`` naming an option ``cls`` does not take and the closest one it does
    (before ``cls(**options)`` would say only "unexpected keyword argument")."""
    try:
        parameters = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):  # no signature to read: the call itself will tell
        return
    if any(parameter.kind is parameter.VAR_KEYWORD for parameter in parameters):
        return
    known = [parameter.name for parameter in parameters if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)]
    for key in options:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(f"{cls.__name__} has no option {str(key)[:60]!r}{hint} (its options: {', '.join(known) or 'none'})")


def build_model(spec: Mapping[str, Any]) -> Any:
    """``{"type": "lorenz96", "n_state": 40}`` -> ``Lorenz96(n_state=40)``, the class checked before it is called."""
    return _build("model", spec)


def build_operator(spec: Mapping[str, Any]) -> Any:
    """``{"type": "subset", "indices": [0, 2]}`` -> the operator instance (checked as :func:`build_model`)."""
    return _build("operator", spec)


def observation_set_class(name: str = "default") -> type:
    """The observation-set class (reading, writing, windowing and generating observations), found through
    the ``fourdvar.observation_sets`` entry points."""
    points = _entry_points("observation set")
    if name not in points:
        raise RegistryError(f"no observation-set class {name!r} is installed (entry-point group fourdvar.observation_sets)")
    return _load(points[name], f"observation-set class {name!r}")


def _load(point, what: str) -> type:
    """Load an entry point; a user's module that shadows its package is named in one line."""
    try:
        return point.load()
    except ImportError as error:
        package = point.value.partition(":")[0].split(".")[0]
        module = sys.modules.get(package)
        if module is not None and not hasattr(module, "__path__"):
            raise RegistryError(
                f"{what}: your file {getattr(module, '__file__', package)} shadows the installed package "
                f"{package!r}; rename it (or run from another directory)"
            ) from None
        raise RegistryError(f"{what}: cannot load {point.value!r} ({' '.join(str(error).split())[:160]})") from None
